"""The evaluation folder: one layout of results.json for generated and re-scored outputs, written by one writer,
and results files of both earlier layouts still read."""

import json
from dataclasses import asdict, fields

from ktae.cli import main
from ktae.evaluation import EvalSettings, summarize
from ktae.evaluation.eval_folder import (
    RESULTS_FILE,
    read_settings,
    responses_path,
    results_json,
    write_eval_folder,
    write_settings,
)
from ktae.evaluation.harness import results_settings


def _records(correct: list[bool]) -> list[dict]:
    """One sample per problem: problem i answered right or wrong."""
    return [
        {
            "benchmark": "aime24",
            "index": i,
            "sample": 0,
            "problem": f"problem {i}",
            "answer": "1",
            "extracted": "1" if right else "2",
            "correct": right,
            "check": "ok",
            "num_tokens": 5,
            "finish_reason": "stop",
            "answer_group": 0,
        }
        for i, right in enumerate(correct)
    ]


def test_generated_and_rescored_settings_have_one_layout():
    settings = EvalSettings(model="m", temperature=0.6, samples=4)
    generated = results_settings(settings, check_timeout_s=5.0)
    rescored = results_settings(
        EvalSettings(model="file"), 10.0, {"responses": ["/x/out.json"], "format": "released"}, "math-verify"
    )
    assert generated.keys() == rescored.keys()
    assert generated == {
        **asdict(settings),
        "check_timeout_s": 5.0,
        "grader": "ktae",
        "responses": None,
        "format": None,
    }
    assert rescored["grader"] == "math-verify"
    # a re-scored file names its model only: the generation settings it does not say are null, not defaults
    assert rescored["model"] == "file" and all(rescored[f.name] is None for f in fields(EvalSettings)[1:])
    assert (rescored["responses"], rescored["format"], rescored["check_timeout_s"]) == (
        ["/x/out.json"],
        "released",
        10.0,
    )


def test_the_writer_writes_responses_then_results_in_one_format(tmp_path):
    records = {"aime24": _records([True, False])}
    results = summarize(records, EvalSettings(model="m"), resamples=100, check_timeout_s=5.0)
    path = write_eval_folder(tmp_path, results, records)
    assert path == tmp_path / RESULTS_FILE and path.read_text() == results_json(results)
    assert json.loads(path.read_text()) == results
    lines = path.read_text().splitlines()
    assert sum(line.startswith('      {"id": ') for line in lines) == 2  # a per-problem record per line
    written = [json.loads(line) for line in responses_path(tmp_path, "aime24").read_text().splitlines()]
    assert written == records["aime24"]
    assert read_settings(tmp_path) is None
    write_settings(tmp_path, asdict(EvalSettings(model="m")))
    assert read_settings(tmp_path) == asdict(EvalSettings(model="m"))


def test_results_files_of_both_earlier_layouts_are_still_compared(tmp_path, capsys):
    """Before one writer: a generating run's settings were the EvalSettings alone; a re-scoring run's were the
    files read, their format and the check's time limit, and its results.json was indented throughout."""
    old_generated = summarize({"aime24": _records([i < 3 for i in range(10)])}, EvalSettings(model="a"))
    old_generated["settings"] = asdict(EvalSettings(model="a"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / RESULTS_FILE).write_text(results_json(old_generated))
    old_rescored = summarize({"aime24": _records([i < 8 for i in range(10)])}, EvalSettings(model="b"))
    old_rescored["settings"] = {"responses": ["/x/b.json"], "format": "released", "check_timeout_s": 5.0}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / RESULTS_FILE).write_text(json.dumps(old_rescored, indent=2) + "\n")
    assert main(["eval", "--compare", str(tmp_path / "a" / RESULTS_FILE), str(tmp_path / "b" / RESULTS_FILE)]) == 0
    printed = capsys.readouterr().out
    assert "| a | 30.0 | 30.0 |" in printed and "| b | 80.0 | 80.0 |" in printed
    assert "| AIME24 | 10 | 30.0 | 80.0 | +50.0 |" in printed  # paired over the per-problem records
