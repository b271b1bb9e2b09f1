import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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
    answers = [json.loads(line)["answer"] for path in sorted(math_eval_dir.glob("*.jsonl")) for line in open(path)]
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


def test_hard_deadline_kills_a_stuck_worker():
    """A worker that cannot run its own timer (here: stopped) is killed and replaced."""
    import os
    import signal

    with AnswerChecker(num_workers=1, timeout_s=0.5) as checker:
        assert checker.check(["2"], ["2"]) == [True]
        (worker,) = checker._idle
        os.kill(worker.process.pid, signal.SIGSTOP)
        start = time.monotonic()
        assert checker.verdicts(["2"], ["2"]) == [Verdict(False, "timeout")]
        assert time.monotonic() - start < 5
        assert worker.process.poll() is not None  # killed
        assert checker.check(["2"], ["2"]) == [True]  # a fresh worker took over


def test_worker_that_cannot_start_is_an_error(monkeypatch):
    monkeypatch.setattr("sys.executable", "false")  # exits at once, before its ready line
    with AnswerChecker(num_workers=1) as checker:
        with pytest.raises(RuntimeError, match="exited while starting"):
            checker.check(["1"], ["1"])


def test_is_equivalent_from_threads():
    """verl scores from a thread pool, where signal-based timeouts cannot run."""
    pairs = [("\\frac{1}{2}", "0.5", True), ("3", "x=3", True), ("2", "3", False), ("62.5\\%", "0.625", True)] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: is_equivalent(c[0], c[1]), pairs))
    assert results == [expected for *_, expected in pairs]


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
