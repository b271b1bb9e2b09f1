"""Verifiable math rewards: answer extraction, time-limited equivalence, reward functions."""

from ktae.rewards.checker_pool import AnswerChecker, default_checker, is_equivalent
from ktae.rewards.equivalence import DEFAULT_GRADER, DEFAULT_TIMEOUT_S, GRADERS, Verdict, check_answer
from ktae.rewards.extraction import extract_answer, extract_boxed
from ktae.rewards.functions import accuracy_reward, compute_score, dapo_reward, make_overlong_penalty, score_responses

__all__ = [
    "DEFAULT_GRADER",
    "DEFAULT_TIMEOUT_S",
    "GRADERS",
    "AnswerChecker",
    "Verdict",
    "accuracy_reward",
    "check_answer",
    "compute_score",
    "dapo_reward",
    "default_checker",
    "extract_answer",
    "extract_boxed",
    "is_equivalent",
    "make_overlong_penalty",
    "score_responses",
]
