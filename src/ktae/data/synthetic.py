"""Synthetic arithmetic task: chains of small additions/subtractions with worked solutions.

Generated locally and deterministically from a seed, so the default ``ktae train`` job, the tests
and the KTAE comparison need no download. A problem is a chain such as ``7+5-3=``; its worked
solution folds the chain left to right, one step per line, and ends with the answer boxed:

    prompt      "7+5-3="
    completion  "7+5=12\\n12-3=9\\n\\boxed{9}"
    answer      "9"

Difficulty knobs: the number of terms (each term adds one step to get right), the largest
operand, and the operators. ``direct_answer_rate`` makes that share of the worked solutions bare
answers (``\\boxed{9}`` with no steps), as real fine-tuning data mixes worked and short answers: a
model warm-started on such a mix guesses some answers in one go, which a small model gets wrong
far more often than when it works step by step, and RL has a strategy to discover. ``hedge_rate``
puts hedge lines (``~~~~``, "wait, let me check") after steps, each followed by another with the same
chance: they carry nothing, but they lengthen the response, so a model that hedges often runs past a
response limit before boxing its answer. Columns follow the project's prompt datasets (``prompt``,
``answer``) plus ``completion``, the worked solution a supervised warm start trains on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: Every character a problem or its worked solution can contain, besides the ``\boxed{`` marker and
#: the hedge character (only in tasks with hedges: `ArithmeticTask.alphabet`).
ALPHABET = tuple("0123456789+-=\n{}")
BOXED = "\\boxed{"
HEDGE = "~"
#: One hedge line: a step's worth of characters that say nothing.
HEDGE_LINE = HEDGE * 4
_OPERATIONS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y}


@dataclass(frozen=True)
class ArithmeticTask:
    """Difficulty of the synthetic task.

    min_terms, max_terms: number of operands in a chain (a chain of n terms takes n - 1 steps).
    max_operand: operands are drawn uniformly from 1..max_operand.
    operations: the operators to draw from, a string over "+-".
    direct_answer_rate: share of rows whose ``completion`` is the bare boxed answer, no steps.
    hedge_rate: chance that a hedge line (`HEDGE_LINE`) follows a step line, and again after each
        hedge line (a geometric count per step, mean hedge_rate / (1 - hedge_rate)); below 1.
    """

    min_terms: int = 3
    max_terms: int = 4
    max_operand: int = 9
    operations: str = "+"
    direct_answer_rate: float = 0.0
    hedge_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_terms", "max_terms", "max_operand"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ArithmeticTask.{name} must be an int, got {value!r}")
        if self.min_terms < 2:
            raise ValueError(f"ArithmeticTask.min_terms must be >= 2, got {self.min_terms}")
        if self.max_terms < self.min_terms:
            raise ValueError(f"ArithmeticTask.max_terms ({self.max_terms}) must be >= min_terms ({self.min_terms})")
        if self.max_operand < 1:
            raise ValueError(f"ArithmeticTask.max_operand must be >= 1, got {self.max_operand}")
        if not isinstance(self.operations, str) or not self.operations:
            raise ValueError(f"ArithmeticTask.operations must be a non-empty string over '+-', got {self.operations!r}")
        rate = self.direct_answer_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"ArithmeticTask.direct_answer_rate must be a number in [0, 1], got {rate!r}")
        rate = self.hedge_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"ArithmeticTask.hedge_rate must be a number in [0, 1), got {rate!r}")
        unknown = sorted(set(self.operations) - set(_OPERATIONS))
        if unknown:
            raise ValueError(f"ArithmeticTask.operations has unknown operator(s) {unknown}; use '+' and '-'")

    @property
    def alphabet(self) -> tuple[str, ...]:
        """Every character the task's prompts and completions can hold, besides ``\\boxed{``."""
        return (*ALPHABET, HEDGE) if self.hedge_rate > 0 else ALPHABET

    def to_dict(self) -> dict:
        return asdict(self)


def solve(operands: Sequence[int], operators: Sequence[str], hedges: Sequence[int] | None = None) -> tuple[str, int]:
    """Worked solution of ``operands[0] op[0] operands[1] ...`` folded left to right.

    hedges: how many hedge lines follow each step line (default none).
    Returns (completion text, final value).
    """
    if len(operators) != len(operands) - 1:
        raise ValueError("need exactly one operator between each pair of operands")
    hedges = [0] * len(operators) if hedges is None else hedges
    if len(hedges) != len(operators):
        raise ValueError("need one hedge count per step")
    value = operands[0]
    lines = []
    for op, operand, count in zip(operators, operands[1:], hedges):
        result = _OPERATIONS[op](value, operand)
        lines.append(f"{value}{op}{operand}={result}")
        lines.extend([HEDGE_LINE] * count)
        value = result
    lines.append(f"{BOXED}{value}}}")
    return "\n".join(lines), value


def sample_problem(rng: random.Random, task: ArithmeticTask) -> dict[str, str]:
    """One problem as a row: ``prompt``, ``answer``, ``completion``."""
    n_terms = rng.randint(task.min_terms, task.max_terms)
    operands = [rng.randint(1, task.max_operand) for _ in range(n_terms)]
    operators = [rng.choice(task.operations) for _ in range(n_terms - 1)]
    expression = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(operators, operands[1:]))
    hedges = None
    if task.hedge_rate > 0:  # drawn only then, so that the rows of tasks without hedges stay as they were
        hedges = [_geometric(rng, task.hedge_rate) for _ in operators]
    completion, value = solve(operands, operators, hedges)
    if rng.random() < task.direct_answer_rate:
        completion = f"{BOXED}{value}}}"
    return {"prompt": f"{expression}=", "answer": str(value), "completion": completion}


def _geometric(rng: random.Random, rate: float) -> int:
    """How many times in a row a draw of chance ``rate`` succeeds."""
    count = 0
    while rng.random() < rate:
        count += 1
    return count


def make_arithmetic_dataset(size: int, seed: int = 0, task: ArithmeticTask | None = None):
    """A ``datasets.Dataset`` of ``size`` problems drawn with ``seed`` (same seed, same rows).

    Use different seeds for training and evaluation sets; with small ``max_operand`` the two can
    share problems, as any draw from a small space does.
    """
    from datasets import Dataset

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    task = task or ArithmeticTask()
    rng = random.Random(seed)
    rows = [sample_problem(rng, task) for _ in range(size)]
    return Dataset.from_list(rows)
