import json
import sys
import threading
import time

import pytest
from equivalence_cases import ADVERSARIAL_PREDICTIONS, CASES

from ktae.rewards import AnswerChecker, Verdict, check_answer, is_equivalent
from ktae.rewards.equivalence import run_with_deadline


def test_table_is_large_and_balanced():
    assert len(CASES) >= 150
    assert sum(expected for *_, expected in CASES) >= 60
    assert sum(not expected for *_, expected in CASES) >= 60


def test_equivalence_table(checker):
    verdicts = checker.verdicts([p for _, p, _ in CASES], [r for r, _, _ in CASES])
    wrong = [(r, p, e, v) for (r, p, e), v in zip(CASES, verdicts) if v.equivalent != e]
    assert not wrong, "\n".join(f"{r!r} vs {p!r}: expected {e}, got {v}" for r, p, e, v in wrong)
    assert all(v.status == "ok" for v in verdicts)


def test_every_suite_reference_equals_itself(checker, math_eval_dir):
    """No reference answer of the five suites is lost to a parser failure or a timeout."""
    answers = [
        json.loads(line)["answer"]
        for path in sorted(math_eval_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(answers) == 30 + 83 + 500 + 272 + 675
    refs = [a for a in answers if not (isinstance(a, str) and a.isdigit())]  # integers are covered by the table
    predictions = [a if isinstance(a, str) else a[0] for a in refs]
    verdicts = checker.verdicts(predictions, refs)
    failed = [(p, v) for p, v in zip(predictions, verdicts) if not v.equivalent]
    assert not failed, failed[:10]


@pytest.fixture(params=["in-process", "workers"])
def any_checker(request, checker):
    if request.param == "workers":
        yield checker
    else:
        with AnswerChecker(num_workers=0) as in_process:
            in_process.check(["1"], ["1"])  # loads the parser: its imports are no check's time
            yield in_process


def test_adversarial_predictions_get_a_quick_verdict(any_checker):
    timeout_s = 1.0
    for prediction in ADVERSARIAL_PREDICTIONS:
        start = time.monotonic()
        (verdict,) = any_checker.verdicts([prediction], ["5"], timeout_s=timeout_s)
        elapsed = time.monotonic() - start
        assert verdict.equivalent is False, prediction[:50]
        assert verdict.status in ("ok", "timeout", "error")
        # the check's own timer, else the parent's hard deadline (timeout + 1 s), plus slack
        assert elapsed < timeout_s + 3.0, (prediction[:50], elapsed)
    # the checker still works after all that
    assert any_checker.check(["\\frac{1}{2}"], ["0.5"]) == [True]


def test_no_answer_and_blank_are_not_equivalent(checker):
    assert checker.verdicts([None, "", "   "], ["1", "1", "1"]) == [Verdict(False, "no_answer")] * 3
    assert check_answer(None, ["1"]) is False


def test_in_process_checking_refuses_other_threads():
    errors = []

    def target():
        try:
            run_with_deadline("1", ["1"], 1.0)
        except ValueError as e:
            errors.append(str(e))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


def test_any_of_a_list_of_references(checker):
    assert checker.check(["10/13"], [["\\arcsin{\\frac{1}{1.3}}", "\\frac{10}{13}"]]) == [True]
    assert checker.check(["7"], [["1", "2"]]) == [False]


def test_bad_inputs_are_named():
    with AnswerChecker(num_workers=0) as checker:
        with pytest.raises(ValueError, match="2 answers but 1 references"):
            checker.check(["1", "2"], ["1"])
        with pytest.raises(TypeError, match="reference answer"):
            checker.check(["1"], [[]])
        with pytest.raises(TypeError, match="answer 0 must be a str"):
            checker.check([1], ["1"])
    with pytest.raises(ValueError, match="num_workers"):
        AnswerChecker(num_workers=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        AnswerChecker(timeout_s=0)


@pytest.mark.parametrize("a, b", [("007", "7"), ("+5", "5"), ("-0", "0"), ("1000", "999"), (" 3 ", "3"), ("-12", "12")])
def test_integer_fast_path_agrees_with_math_verify(a, b):
    from math_verify import verify

    from ktae.rewards.equivalence import _parse

    through_parser = any(verify(g, p, timeout_seconds=None) for g in _parse(b) for p in _parse(a))
    assert check_answer(a, [b]) == through_parser


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("12", ["12"]),
        (" 9.6\n", ["9.6"]),
        (142.0, ["142"]),  # an integral float is the integer
        (142, ["142"]),
        (-4.0, ["-4"]),
        (0.5, ["0.5"]),
        (1e-05, ["1e-05"]),
        ([["9.6\n"]], ["9.6"]),  # nested lists flatten to the accepted answers
        ([["1.9", "1.9"], [["2"]], 3.0], ["1.9", "2", "3"]),
        (("a", ["b"]), ["a", "b"]),
    ],
)
def test_references_as_users_have_them(reference, expected):
    from ktae.rewards.equivalence import normalize_references

    assert normalize_references(reference) == expected


def test_references_from_numpy_and_deep_nesting():
    import numpy as np

    from ktae.rewards.equivalence import MAX_REFERENCE_DEPTH, normalize_references

    assert normalize_references(np.array([1.0, 2.5])) == ["1", "2.5"]
    assert normalize_references(np.float64(3.0)) == ["3"]
    deep: object = "7"
    for _ in range(MAX_REFERENCE_DEPTH):
        deep = [deep]
    assert normalize_references(deep) == ["7"]
    for _ in range(100_000):  # far deeper than Python's recursion limit: refused by name, in a short line
        deep = [deep]
    with pytest.raises(ValueError, match=f"nests lists more than {MAX_REFERENCE_DEPTH} deep") as refused:
        normalize_references(deep)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    "reference, error, message",
    [
        ([], TypeError, "at least one answer"),
        ([[], [[]]], TypeError, "at least one answer"),
        (None, TypeError, "got NoneType"),
        ({"answer": "1"}, TypeError, "got dict"),
        (True, TypeError, "bool"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        (["1", " "], ValueError, "blank"),
        (["1", "\u200b\ufeff"], ValueError, "blank"),  # invisible characters only
    ],
)
def test_bad_references_are_named(reference, error, message):
    from ktae.rewards.equivalence import normalize_references

    with pytest.raises(error, match=message):
        normalize_references(reference)


def test_numeric_and_nested_references_are_checked(checker):
    answers = ["142", "142", "9.6", "3.3\\times10^{-10}", "143"]
    references = [142.0, [142.0], [["9.6\n"]], [["3.3 \\times 10^{-10}\n", "3.3e-10\n"]], 142.0]
    assert checker.check(answers, references) == [True, True, True, True, False]


HUGE = ["2^{2005}", "3^{4000}", "10^{5000}", "1000!"]


def test_huge_values_compare_exactly(checker):
    """Beyond a float (~1.8e308): the same text always matches; equal values match; others do not."""
    pairs = [(a, a, True) for a in HUGE] + [
        ("2^{2005}", "2 \\cdot 2^{2004}", True),
        ("2^{2005}", "4^{1002} \\cdot 2", True),
        ("1000!", "1000 \\cdot 999!", True),
        ("2^{2005}", "2^{2005}+1", False),
        ("2^{2005}+1", "2^{2005}", False),
        ("10^{5000}", "10^{4999}", False),
        ("3^{4000}", "3^{3999}", False),
    ]
    verdicts = checker.verdicts([p for _, p, _ in pairs], [r for r, _, _ in pairs], timeout_s=30.0)
    assert [v.equivalent for v in verdicts] == [e for *_, e in pairs], verdicts


def test_numbers_agree_in_unbounded_floats():
    from sympy import Integer, factorial

    from ktae.rewards.equivalence import _numbers_agree

    big = Integer(2) ** 2005
    assert _numbers_agree(big, big) and _numbers_agree(factorial(1000), factorial(1000))
    assert not _numbers_agree(big, Integer(2) ** 2006)
    assert not _numbers_agree(Integer(10) ** 5000, Integer(10) ** 4999)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e300, "soon", None])
def test_time_limits_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="timeout_s must be"):
        AnswerChecker(timeout_s=bad)
    with pytest.raises(ValueError, match="timeout_s must be"):
        run_with_deadline("1", ["1"], bad)
    if bad is not None:  # None is "the checker's own limit" for these
        with AnswerChecker(num_workers=0) as checker, pytest.raises(ValueError, match="timeout_s must be"):
            checker.verdicts(["1"], ["1"], timeout_s=bad)
        with pytest.raises(ValueError, match="timeout_s must be"):
            is_equivalent("1", "1", timeout_s=bad)


def test_a_timeout_during_the_first_check_leaves_the_parser_working():
    """The first in-process check imports the parser; a timer firing inside those imports must not
    leave a parser that fails on every later answer. Fresh interpreters, the timer firing at
    different points of the imports."""
    import subprocess

    script = (
        "import sys\n"
        "from ktae.rewards.equivalence import run_with_deadline\n"
        "run_with_deadline('\\\\frac{1}{2}', ['0.5'], float(sys.argv[1]))\n"
        "print(run_with_deadline('x+1', ['1+x'], 60.0).equivalent)\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script, limit], stdout=subprocess.PIPE, text=True)
        for limit in ("0.3", "1.0", "2.0")
    ]
    assert [run.communicate(timeout=300)[0].strip() for run in runs] == ["True"] * 3


# Unicode forms of one answer, each against its plain form: (unicode, plain, equal).
UNICODE_CASES = [
    ("\uff13", "3", True),  # fullwidth digits
    ("\uff13.5", "3.5", True),
    ("\uff13.\uff15", "3.5", True),
    ("\uff11\uff12", "12", True),
    ("x^{\uff12}", "x^2", True),
    ("٣", "3", True),  # Arabic-Indic digits
    ("٣.5", "3.5", True),
    ("3\u200b", "3", True),  # zero-width space
    ("\u200b0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}\u200b", "\\frac{1}{2}", True),
    ("\ufeff7", "7", True),  # byte-order mark
    ("\u00ad12", "12", True),  # soft hyphen
    ("1\u200e2", "12", True),  # left-to-right mark
    ("x²", "x^2", True),  # superscripts are powers, not digits
    ("x²", "2x", False),
    ("x²", "x2", False),
    ("10⁻³", "0.001", True),
    ("a₁", "a_1", True),
    ("½", "\\frac{1}{2}", True),  # vulgar fractions
    ("3½", "3.5", True),  # a mixed number, not 31/2
    ("3½", "1.5", False),
    ("⅔", "\\frac{2}{3}", True),
    ("1\u20442", "0.5", True),  # fraction slash
    ("\uff13", "4", False),
    ("3\u200b", "4", False),
]


@pytest.mark.parametrize("prediction_side", [True, False], ids=["unicode response", "unicode reference"])
def test_unicode_forms_are_read_alike_on_both_sides(checker, prediction_side):
    """One normalisation for responses and references: a fullwidth or zero-width-spaced number is read as the
    number whether it is ``3`` or ``3.5``, and whichever side it is on."""
    unicode, plain = [c[0] for c in UNICODE_CASES], [c[1] for c in UNICODE_CASES]
    answers, references = (unicode, plain) if prediction_side else (plain, unicode)
    verdicts = checker.verdicts(answers, references)
    wrong = [(c, v) for c, v in zip(UNICODE_CASES, verdicts) if v.equivalent != c[2] or v.status != "ok"]
    assert not wrong, wrong
    # the in-process check reads them alike too
    assert [run_with_deadline(a, [r], 10.0).equivalent for a, r in zip(answers, references)] == [
        c[2] for c in UNICODE_CASES
    ]
