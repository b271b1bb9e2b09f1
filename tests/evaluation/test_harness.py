import json

import pytest

from ktae.evaluation import EvalSettings, Generation, score_benchmark, summarize
from ktae.evaluation.report import results_table
from ktae.rewards import AnswerChecker


def test_pathological_responses_never_stop_scoring():
    examples = [
        {"problem": f"p{i}", "answer": a} for i, a in enumerate(["204", "\\frac{1}{2}", "5", "5", "5", ["1", "2"]])
    ]
    texts = [
        "... so \\boxed{204}",
        "it is \\boxed{0.5}",
        "\\boxed{10^{10^{10^{10}}}}",  # would never finish without a time limit
        "\\boxed{" * 100_000,  # enormous and malformed: no answer
        "\ud800 lone surrogate \\boxed{5}",  # not encodable as UTF-8
        "\\boxed{2}",
    ]
    generations = [Generation(t, num_tokens=10 * (i + 1), finish_reason="stop") for i, t in enumerate(texts)]
    with AnswerChecker(num_workers=1, timeout_s=1.0) as checker:
        records = score_benchmark("demo", examples, ["prompt"] * 6, generations, checker)
    assert [r["correct"] for r in records] == [True, True, False, False, True, True]
    assert records[2]["check"] == "timeout"
    assert records[3]["extracted"] is None and records[3]["check"] == "no_answer"
    "".join(json.dumps(r) + "\n" for r in records)  # every record serializes

    results = summarize({"demo": records}, EvalSettings(model="m"))
    assert results["results"] == {"demo": 100.0 * 4 / 6}
    assert results["formatted"] == {"demo": 100.0 * 5 / 6}
    assert results["avg_lens"] == {"demo": 35.0} and results["max_lens"] == {"demo": 60}
    assert results["avg"] == results["results"]["demo"]
    assert "| demo | 6 | 1 | 66.7 | [33.3, 100.0] | 83.3 | 35 | 60 | 0.0 |" in results_table(results)


def test_lengths_and_truncation_not_known_are_left_out_not_counted_as_zero():
    """Re-scored outputs may carry the text only (no token count, no finish reason)."""
    examples = [{"problem": f"p{i}", "answer": "1"} for i in range(4)]
    known = [Generation("\\boxed{1}", 30, "length"), Generation("\\boxed{2}", 10, "stop")]
    unknown = [Generation("\\boxed{1}", None, None), Generation("\\boxed{1}", None, None)]
    with AnswerChecker(num_workers=0, timeout_s=60) as checker:
        records = score_benchmark("demo", examples, ["q"] * 4, known + unknown, checker)
        text_only = score_benchmark("demo", examples, ["q"] * 4, unknown + unknown, checker)
    assert [(r["num_tokens"], r["finish_reason"]) for r in records[2:]] == [(None, None)] * 2
    results = summarize({"demo": records}, EvalSettings(model="m"))
    assert (results["avg_lens"], results["max_lens"], results["truncated"]) == (
        {"demo": 20},
        {"demo": 30},
        {"demo": 50},
    )
    assert results["per_problem"]["demo"][3]["truncated"] == [None]
    results = summarize({"demo": text_only}, EvalSettings(model="m"))
    assert (results["avg_lens"], results["max_lens"], results["truncated"]) == ({"demo": None},) * 3
    assert "| demo | 4 | 1 | 100.0 | [100.0, 100.0] | 100.0 | – | – | – |" in results_table(results)


def test_samples_are_grouped_by_the_grading_checker():
    """Two problems x 4 samples: equivalent wrong answers vote together, as the checker that grades says."""
    examples = [{"problem": "p0", "answer": "\\frac{1}{2}"}, {"problem": "p1", "answer": "7"}]
    texts = ["\\boxed{\\frac{1}{3}}", "\\boxed{0.5}", "\\boxed{\\frac{2}{6}}", "no answer"]  # problem 0
    texts += ["\\boxed{7}", "\\boxed{8}", "\\boxed{7.0}", "\\boxed{9}"]  # problem 1
    generations = [
        Generation(t, num_tokens=4 + i, finish_reason="length" if i == 3 else "stop") for i, t in enumerate(texts)
    ]
    with AnswerChecker(num_workers=0, timeout_s=60) as checker:  # first parses import sympy: slow on a busy machine
        records = score_benchmark("demo", examples, ["a", "b"], generations, checker, samples=4)
    assert [(r["index"], r["sample"]) for r in records] == [(i, s) for i in range(2) for s in range(4)]
    assert [r["answer_group"] for r in records] == [0, 1, 0, None, 0, 1, 0, 2]
    results = summarize({"demo": records}, EvalSettings(model="m", samples=4, temperature=1.0), pass_k=[1, 2, 4])
    assert results["results"]["demo"] == 37.5 and results["samples"] == {"demo": 4}
    # pass@k of problem 0 (1 of 4 right) and problem 1 (2 of 4 right): 1 - C(4 - c, k) / C(4, k)
    assert results["pass_at_k"]["demo"] == pytest.approx({"1": 37.5, "2": 50 * (1 / 2 + 5 / 6), "4": 100.0})
    # maj@4: 1/3 ≡ 2/6 outvotes 0.5 on problem 0; 7 ≡ 7.0 wins on problem 1
    assert results["maj_at_k"]["demo"]["4"] == 50.0
    assert results["truncated"]["demo"] == 12.5 and results["formatted"]["demo"] == 87.5
    assert results["avg_pass_at_k"] == results["pass_at_k"]["demo"]
    with pytest.raises(ValueError, match="need 8 responses"):
        score_benchmark("demo", examples, ["a", "b"], generations[:7], checker, samples=4)


def test_stock_grader_grades_whole_responses_and_groups_boxed_answers():
    """--grader math-verify: math-verify reads each response itself (an unboxed "final answer is" counts);
    wrong answers are grouped by it too; the grader is in the results' settings."""
    examples = [{"problem": "p0", "answer": "\\frac{1}{2}"}]
    texts = [
        "The final answer is $\\frac{1}{2}$.",
        "\\boxed{\\frac{1}{3}}",
        "\\boxed{\\frac{2}{6}}",
        "\\boxed{62.5\\%}",
    ]
    generations = [Generation(t, num_tokens=4, finish_reason="stop") for t in texts]
    settings = EvalSettings(model="m", samples=4, temperature=1.0)
    graded = {}
    for grader in ("ktae", "math-verify"):
        with AnswerChecker(num_workers=0, timeout_s=60, grader=grader) as checker:
            records = score_benchmark("demo", examples, ["a"], generations, checker, samples=4)
        graded[grader] = records
        results = summarize({"demo": records}, settings, grader=grader)
        assert results["settings"]["grader"] == grader
    # ours finds no answer in the first response (no box); math-verify does, and it is right
    assert [r["correct"] for r in graded["ktae"]] == [False, False, False, False]
    assert [r["correct"] for r in graded["math-verify"]] == [True, False, False, False]
    assert [r["extracted"] for r in graded["math-verify"]] == [None, "\\frac{1}{3}", "\\frac{2}{6}", "62.5\\%"]
    assert [r["answer_group"] for r in graded["math-verify"]] == [0, 1, 1, 2]  # 1/3 and 2/6: one group


def test_resuming_under_another_grader_is_refused(tmp_path):
    from dataclasses import asdict

    from ktae.evaluation.eval_folder import write_settings
    from ktae.evaluation.harness import _resumable

    settings = EvalSettings(model="m")
    write_settings(tmp_path, asdict(settings))  # a run from before graders had names: ktae's
    assert _resumable(tmp_path, settings, "ktae")
    with pytest.raises(ValueError, match="its settings differ in grader"):
        _resumable(tmp_path, settings, "math-verify")
    write_settings(tmp_path, {**asdict(settings), "grader": "math-verify"})
    assert _resumable(tmp_path, settings, "math-verify")
