"""The synthetic arithmetic task: deterministic, self-consistent worked solutions, validated knobs."""

import re

import pytest

from ktae.data.synthetic import (
    ALPHABET,
    BOXED,
    HEDGE,
    HEDGE_LINE,
    ArithmeticTask,
    make_arithmetic_dataset,
    solve,
)
from ktae.rewards import accuracy_reward, extract_answer

STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def _check_steps(prompt: str, completion: str, answer: str) -> None:
    """Every line of the worked solution is a correct step of the prompt's chain, in order."""
    terms = re.findall(r"[+-]?\d+", prompt.rstrip("="))
    *steps, boxed = completion.split("\n")
    assert len(steps) == len(terms) - 1
    value = int(terms[0])
    for line, term in zip(steps, terms[1:]):
        left, op, right, result = STEP.match(line).groups()
        assert int(left) == value and op + right == term
        value = value + int(right) if op == "+" else value - int(right)
        assert int(result) == value
    assert boxed == f"{BOXED}{value}}}" and answer == str(value)


def test_rows_are_consistent_and_checkable():
    task = ArithmeticTask(min_terms=2, max_terms=5, max_operand=20, operations="+-")
    data = make_arithmetic_dataset(300, seed=3, task=task)
    assert data.column_names == ["prompt", "answer", "completion"]
    for row in data:
        _check_steps(row["prompt"], row["completion"], row["answer"])
        assert set(row["prompt"] + row["completion"].replace(BOXED, "")) <= set(ALPHABET)
        assert extract_answer(row["completion"]) == row["answer"]
    assert accuracy_reward(data["completion"], answer=data["answer"]) == [1.0] * len(data)


def test_knobs_bound_the_problems():
    task = ArithmeticTask(min_terms=3, max_terms=3, max_operand=4, operations="-")
    data = make_arithmetic_dataset(200, seed=0, task=task)
    for prompt in data["prompt"]:
        operands = [int(x) for x in re.findall(r"\d+", prompt)]
        assert len(operands) == 3 and all(1 <= x <= 4 for x in operands)
        assert "+" not in prompt
    answers = [int(a) for a in data["answer"]]  # a - b - c with a, b, c in 1..4 lies in -7..2
    assert -7 <= min(answers) < 0 < max(answers) <= 2


def test_direct_answer_rate_mixes_bare_answers_in():
    data = make_arithmetic_dataset(400, seed=1, task=ArithmeticTask(direct_answer_rate=0.5))
    bare = [c == f"{BOXED}{a}}}" for c, a in zip(data["completion"], data["answer"])]
    assert 150 < sum(bare) < 250  # about half
    for row, is_bare in zip(data, bare):
        if not is_bare:
            _check_steps(row["prompt"], row["completion"], row["answer"])
    every = make_arithmetic_dataset(20, seed=1, task=ArithmeticTask(direct_answer_rate=1.0))
    assert all(c.startswith(BOXED) for c in every["completion"])


def test_hedge_rate_puts_hedge_lines_after_steps():
    task = ArithmeticTask(hedge_rate=0.5)
    assert task.alphabet == (*ALPHABET, HEDGE) and ArithmeticTask().alphabet == ALPHABET
    data = make_arithmetic_dataset(400, seed=2, task=task)
    counts = []
    for row in data:
        lines = row["completion"].split("\n")
        assert lines[0] != HEDGE_LINE  # hedges follow steps, never open the solution
        counts.append(lines.count(HEDGE_LINE))
        without = "\n".join(line for line in lines if line != HEDGE_LINE)
        _check_steps(row["prompt"], without, row["answer"])
        assert set(row["prompt"] + row["completion"].replace(BOXED, "")) <= set(task.alphabet)
        assert extract_answer(row["completion"]) == row["answer"]
    # a geometric count per step, mean rate / (1 - rate) = 1, over 2 or 3 steps: about 2.5 per row
    assert 2.0 < sum(counts) / len(counts) < 3.0 and max(counts) >= 6 and min(counts) == 0


def test_knobs_at_zero_keep_the_default_rows():
    # rows of a task without hedges draw nothing for them: the default job's data stays as it was
    plain = make_arithmetic_dataset(30, seed=4).to_list()
    assert plain == make_arithmetic_dataset(30, seed=4, task=ArithmeticTask(hedge_rate=0.0)).to_list()
    assert not any(HEDGE in row["completion"] for row in plain)


def test_same_seed_same_rows_other_seed_other_rows():
    a = make_arithmetic_dataset(50, seed=7)
    assert a.to_list() == make_arithmetic_dataset(50, seed=7).to_list()
    assert a.to_list() != make_arithmetic_dataset(50, seed=8).to_list()


def test_solve_folds_left_to_right():
    text, value = solve([7, 5, 3], ["+", "-"])
    assert (text, value) == ("7+5=12\n12-3=9\n\\boxed{9}", 9)
    with pytest.raises(ValueError, match="one operator"):
        solve([1, 2], [])
    assert solve([7, 5, 3], ["+", "-"], hedges=[2, 0]) == (
        f"7+5=12\n{HEDGE_LINE}\n{HEDGE_LINE}\n12-3=9\n\\boxed{{9}}",
        9,
    )
    with pytest.raises(ValueError, match="one hedge count per step"):
        solve([7, 5, 3], ["+", "-"], hedges=[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_terms": 1}, "min_terms must be >= 2"),
        ({"min_terms": 4, "max_terms": 3}, "max_terms"),
        ({"max_operand": 0}, "max_operand"),
        ({"operations": "*"}, "unknown operator"),
        ({"operations": ""}, "non-empty"),
        ({"direct_answer_rate": 1.5}, "direct_answer_rate"),
        ({"hedge_rate": 1.0}, "hedge_rate must be a number in \\[0, 1\\)"),
        ({"hedge_rate": -0.1}, "hedge_rate"),
        ({"hedge_rate": True}, "hedge_rate"),
    ],
)
def test_bad_knobs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(**kwargs)


def test_bad_sizes():
    with pytest.raises(TypeError, match="max_terms must be an int"):
        ArithmeticTask(max_terms=4.5)
    with pytest.raises(ValueError, match="size must be a positive int"):
        make_arithmetic_dataset(0)
