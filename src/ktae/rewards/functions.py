"""Reward functions for TRL's ``reward_funcs`` and verl's custom ``compute_score``.

TRL calls ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns)``; the answer
column is ``answer``. verl calls ``compute_score(data_source, solution_str, ground_truth,
extra_info, **reward_kwargs)`` once per response, possibly from a thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from ktae.rewards.checker_pool import AnswerChecker, default_checker
from ktae.rewards.equivalence import Reference
from ktae.rewards.extraction import extract_answer

# A completion as TRL passes it: the text, or chat messages whose last message's "content" is the text.
Completion: TypeAlias = "str | Sequence[Mapping[str, Any]]"


def completion_text(completion: Completion) -> str:
    """The text of a completion: a str, or chat messages whose last message's content is the text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
    raise TypeError(f"a completion must be a str or a list of chat messages with str content, got {completion!r:.200}")


def score_responses(
    responses: Sequence[Completion],
    answers: Sequence[Reference],
    *,
    correct: float = 1.0,
    incorrect: float = 0.0,
    checker: AnswerChecker | None = None,
) -> list[float]:
    """``correct`` where a response's extracted answer equals its reference (a str, a number or a
    list of accepted answers, see ``normalize_references``), else ``incorrect`` (also for no answer
    or a check that timed out). ``responses`` and ``answers`` are sequences, one item per response."""
    for name, value in (("completions", responses), ("answers", answers)):
        if isinstance(value, str):  # would pair each response with one character
            raise TypeError(
                f"{name} must be a list with one item per response, got a single str {value!r:.100}; "
                f"for one reference shared by every response pass [reference] * len(completions)"
            )
    if len(responses) != len(answers):
        raise ValueError(f"got {len(responses)} responses but {len(answers)} answers")
    extracted = [extract_answer(completion_text(r)) for r in responses]
    equivalent = (checker or default_checker()).check(extracted, answers)
    return [correct if ok else incorrect for ok in equivalent]


def accuracy_reward(completions: Sequence[Completion], answer: Sequence[Reference], **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 for a correct final answer, 0.0 otherwise."""
    return score_responses(completions, answer, correct=1.0, incorrect=0.0)


def dapo_reward(completions: Sequence[Completion], answer: Sequence[Reference], **kwargs: Any) -> list[float]:
    """TRL reward function: DAPO's rule-based reward, +1.0 correct, -1.0 otherwise."""
    return score_responses(completions, answer, correct=1.0, incorrect=-1.0)


class _OverlongPenalty:
    """DAPO's soft overlong punishment (its Eq. 13) scaled by ``penalty_factor``, as a TRL reward function.

    A completion of L tokens gets 0 while L <= max - buffer, then falls linearly to
    -penalty_factor at L = max, and -penalty_factor beyond. The shape is TRL's
    ``get_soft_overlong_punishment`` (imported on construction, so that ``ktae.rewards`` works
    without TRL); this adds argument checks and the factor, which verl's ``overlong_buffer_cfg``
    has too. A class, not a closure, so that it pickles (TRL may send reward functions to a
    spawned process); ``__name__`` is the key of its TRL metrics (``rewards/overlong_penalty``).
    """

    __name__ = "overlong_penalty"

    def __init__(self, max_completion_length: int, buffer_length: int, penalty_factor: float = 1.0):
        if max_completion_length <= 0:
            raise ValueError(f"max_completion_length must be > 0, got {max_completion_length}")
        if not 0 < buffer_length <= max_completion_length:
            raise ValueError(
                f"buffer_length must be in (0, max_completion_length={max_completion_length}], got {buffer_length}"
            )
        if not penalty_factor >= 0:
            raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
        try:
            from trl.rewards import get_soft_overlong_punishment
        except ImportError as e:
            raise ImportError(f"the overlong penalty is TRL's; install TRL (pip install 'ktae[trl]'): {e}") from e
        self.max_completion_length = max_completion_length
        self.buffer_length = buffer_length
        self.penalty_factor = float(penalty_factor)
        self._punishment = get_soft_overlong_punishment(max_completion_length, buffer_length)

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        return [self.penalty_factor * value for value in self._punishment(completion_ids)]


def make_overlong_penalty(
    max_completion_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> _OverlongPenalty:
    """DAPO's soft overlong punishment as a TRL reward function (see ``_OverlongPenalty``): 0 up to
    max - buffer tokens, then linear down to -penalty_factor at max, -penalty_factor beyond."""
    return _OverlongPenalty(max_completion_length, buffer_length, penalty_factor)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Reference,
    extra_info: Mapping[str, Any] | None = None,
    *,
    correct_score: float = 1.0,
    incorrect_score: float = 0.0,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward function (``custom_reward_function.path``/``name``).

    Returns {"score", "acc", "pred"} like verl's own math_dapo scorer: ``acc`` is what DAPO's
    dynamic sampling filters on, ``pred`` the extracted answer ("" when none). Set
    ``incorrect_score: -1.0`` in ``custom_reward_function.reward_kwargs`` for DAPO's reward.
    ``ground_truth`` is a str, a number, or a list/array (nested at most 16 deep) of accepted answers.
    Safe to call from any thread.
    """
    prediction = extract_answer(solution_str)
    correct = default_checker().check([prediction], [ground_truth], timeout_s)[0]
    return {"score": correct_score if correct else incorrect_score, "acc": correct, "pred": prediction or ""}
