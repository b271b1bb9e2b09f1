import json

import pytest

from ktae.evaluation import comparison_table, load_reference_rows, load_results


@pytest.mark.parametrize("source", ["paper", "README.md", "reference_scores.json"])
def test_reference_rows_of_the_packaged_suites(source, math_eval_dir):
    rows = load_reference_rows(source if source == "paper" else math_eval_dir / source)
    assert len(rows) == 8
    grpo = rows[0]
    assert grpo["label"] == "Qwen2.5-Math-1.5B + GRPO"
    assert grpo["results"] == {"aime24": 16.7, "amc23": 51.8, "math500": 76.0, "minerva": 22.1, "olympiadbench": 36.3}
    assert grpo["avg"] == 40.6
    for row in rows:  # the published averages are the means of the five (unrounded) columns
        assert row["avg"] == pytest.approx(sum(row["results"].values()) / 5, abs=0.1)


def test_no_reference_table(tmp_path):
    # a table that merely mentions a benchmark in its body is no reference table
    (tmp_path / "README.md").write_text("# nothing\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n| math500 | AIME24 |\n")
    with pytest.raises(ValueError, match="no table with benchmark columns"):
        load_reference_rows(tmp_path / "README.md")


def test_reference_rows_from_a_json_file(tmp_path):
    row = {"label": "my baseline", "results": {"aime24": 10.0}, "avg": 10.0}
    (tmp_path / "ref.json").write_text(json.dumps({"rows": [row]}))
    assert load_reference_rows(tmp_path / "ref.json") == [row]
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"results": {}}]}))
    with pytest.raises(ValueError, match="row 0 needs a 'label'"):
        load_reference_rows(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="expected"):
        load_reference_rows(tmp_path / "empty.json")


def test_comparison_table_orders_benchmarks_and_marks_missing(tmp_path):
    a = {"label": "run-a", "results": {"math500": 50.0, "aime24": 10.0}, "avg": 30.0}
    b = {"label": "run-b", "results": {"minerva": 20.0}, "avg": 20.0}
    assert comparison_table([a, b]).splitlines() == [
        "| model | AIME24 | MATH500 | Minerva | avg |",
        "| --- | --- | --- | --- | --- |",
        "| run-a | 10.0 | 50.0 | – | 30.0 |",
        "| run-b | – | – | 20.0 | 20.0 |",
    ]


def test_load_results_validates(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="not a ktae eval results file"):
        load_results(tmp_path / "x.json")
    (tmp_path / "r.json").write_text(json.dumps({"model": "m", "results": {}}))
    assert load_results(tmp_path / "r.json")["label"] == "m"
