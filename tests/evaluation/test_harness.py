import json

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
