"""The stock math-verify grader (``--grader math-verify``): TRL's accuracy reward's verdicts, under our time
limits and worker processes, never evaluating text as code."""

import json
import time
from pathlib import Path

import pytest

from ktae.rewards import AnswerChecker, Verdict
from ktae.rewards.equivalence import GRADERS, get_grader, normalize_references, run_with_deadline
from ktae.rewards.math_verify_grader import check_response

RELEASED = Path(__file__).parents[1] / "evaluation" / "data" / "released_outputs.json"

# (response, references, stock verdict): where stock math-verify and ours part ways, and why
CASES = [
    ("so $x = \\boxed{\\frac{1}{2}}$", ["0.5"], True),
    # math-verify rounds numbers to 6 decimals: every pair of tiny numbers is equal (ours: 1e-4 relative)
    ("\\boxed{2.61 \\times 10^{-19}}", ["2.45 \\times 10^{-19}"], True),
    ("\\boxed{4.416\\times10^{-27}}", ["1.325\\times10^{-27}"], True),
    # no percent both ways, no ordinal suffixes, no plain scientific notation (ours: all three)
    ("\\boxed{62.5\\%}", ["0.625"], False),
    ("the $\\boxed{12^{\\text{th}}}$ term", ["12"], False),
    ("\\boxed{10^{-5}}", ["1e-5"], False),
    # its own extraction: an answer after "final answer is" without a box counts (ours: no answer) ...
    ("The final answer is $5$.", ["5"], True),
    # ... all boxed answers of a response together make a set (ours: the last one)
    ("first \\boxed{5}, then \\boxed{7}", ["7"], False),
    # but a plain-text answer does not: the answer must be LaTeX
    ("which reduces to 3/4.", ["\\frac{3}{4}"], False),
]


@pytest.mark.parametrize("response, references, expected", CASES)
def test_stock_verdicts(response, references, expected):
    assert check_response(response, references) is expected


def test_verdicts_are_trls_accuracy_reward():
    """On every response of the released sample and every case above, the verdict of TRL's own reward,
    given the reference boxed as its solution."""
    from trl.rewards import accuracy_reward

    pairs = [(r, refs) for r, refs, _ in CASES]
    for record in json.loads(RELEASED.read_text()):
        pairs += [(output, normalize_references(record["gt"])) for output in record["model_output"]]
    for response, references in pairs:
        trl = any(accuracy_reward([[{"content": response}]], [f"\\boxed{{{ref}}}"])[0] for ref in references)
        assert check_response(response, references) is trl, (response, references)


def test_stock_grader_reads_whole_responses():
    assert GRADERS["math-verify"].reads_response and not GRADERS["ktae"].reads_response
    stock = get_grader("math-verify")
    assert stock.prediction("so \\boxed{2}", "2") == "so \\boxed{2}"
    assert get_grader("ktae").prediction("so \\boxed{2}", "2") == "2"
    with pytest.raises(ValueError, match="unknown grader 'sympy'; choose one of ktae, math-verify"):
        get_grader("sympy")
    with pytest.raises(ValueError, match="unknown grader"):
        AnswerChecker(grader="sympy")


def test_nothing_is_evaluated_as_code(monkeypatch):
    """math-verify's plain-expression extractor runs sympy.parse_expr, an eval: it is never reached."""
    import math_verify.parser

    evaluated = []
    monkeypatch.setattr(math_verify.parser, "parse_expr", lambda text, **kwargs: evaluated.append(text))
    math_verify.parser.parse_expr_cached.cache_clear()
    for response in ("The answer is 3*4+1", "answer: 2**10", "The final answer is 13. I hope it is correct"):
        assert check_response(response, ["13"]) is False
        assert run_with_deadline(response, ["1024"], 5.0, "math-verify") == Verdict(False)
    assert evaluated == []


@pytest.mark.parametrize("workers", [0, 1])
def test_time_limit_holds(workers):
    """Answers math-verify would compute for ages get a timeout verdict within the limit, in-process or in a worker."""
    with AnswerChecker(num_workers=workers, timeout_s=0.5, grader="math-verify") as checker:
        assert checker.check(["\\boxed{2}"], ["2"]) == [True]  # the worker is up
        for response in ("\\boxed{(10^{100})!}", "\\boxed{10^{10^{10^{10}}}}", "\\boxed{2^{3^{4^{5}}}}"):
            start = time.monotonic()
            assert checker.verdicts([response], ["1"]) == [Verdict(False, "timeout")]
            assert time.monotonic() - start < 4


def test_checker_grades_with_its_grader():
    responses = [r for r, _, _ in CASES]
    references = [refs for _, refs, _ in CASES]
    with AnswerChecker(num_workers=1, timeout_s=10.0, grader="math-verify") as checker:
        assert checker.grader == "math-verify"
        assert checker.check(responses, references) == [expected for *_, expected in CASES]
