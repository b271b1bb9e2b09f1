"""The stock math-verify grader (``ktae eval --grader math-verify``): math-verify's ``parse`` and ``verify``
with their defaults, called as TRL's ``trl.rewards.accuracy_reward`` calls them, and none of our rules.

The response is read whole by math-verify's own LaTeX extraction, TRL's configuration of it: the
answer must be LaTeX (``try_extract_without_anchor=False``: in ``\\boxed{}``, or in ``$...$`` after "final
answer is" or "answer"), a ``\\boxed{}`` is tried first, and every ``\\boxed{}`` of the response is read
(``boxed="all"``: two boxed answers make a set). Each reference answer is boxed and parsed by the LaTeX
extractor with its defaults (TRL parses its ``solution`` column, typically a worked solution ending in
``\\boxed{}``); ``verify(gold, answer)`` with its defaults decides (numbers equal after rounding to 6
decimals, sets, intervals, equations, ...).

Two departures from TRL, both about safety rather than verdicts: the plain-expression extractor
(``ExprExtractionConfig``, which TRL also runs on the reference and which ``eval``s through
``sympy.parse_expr``) is left out, so that nothing this grader reads is evaluated as code (answers grouped for
maj@k are a model's answers used as references); and math-verify's own signal timeouts are off, since the
check runs under our time limit (`ktae.rewards.equivalence.run_with_deadline`) in a worker process. A
reference math-verify cannot parse makes every answer wrong (TRL leaves such an example out of training).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any


@cache
def _answer_extraction() -> list[Any]:
    """TRL's extraction of the answer from a completion (trl.rewards.accuracy_reward)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    return [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]


@lru_cache(maxsize=2048)
def _parse_reference(reference: str) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    return tuple(parse(f"\\boxed{{{reference}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None))


def check_response(response: str, references: Sequence[str]) -> bool:
    """Whether math-verify finds the answer of ``response`` (a whole response) equal to any of ``references``.

    No time limit of its own: call it through ``run_with_deadline`` or an ``AnswerChecker``.
    """
    from math_verify import parse, verify

    answer = parse(
        response, extraction_config=_answer_extraction(), extraction_mode="first_match", parsing_timeout=None
    )
    if not answer:
        return False
    for reference in references:
        gold = _parse_reference(reference)
        if gold and verify(list(gold), answer, timeout_seconds=None):
            return True
    return False


@cache
def load_parser() -> None:
    """Build this grader's extraction patterns and caches once, before any check's timer starts."""
    check_response("\\boxed{0}", ["0"])
