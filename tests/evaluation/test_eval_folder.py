"""The evaluation folder: one layout of results.json for generated and re-scored outputs, written by one writer,
and results files of both earlier layouts still read."""

import json
from dataclasses import asdict, fields

import pytest

from ktae.cli import main
from ktae.evaluation import EvalSettings, summarize
from ktae.evaluation.eval_folder import (
    RESULTS_FILE,
    SETTINGS_FILE,
    earlier_outputs,
    read_responses,
    read_results,
    read_settings,
    remove_outputs,
    responses_path,
    results_json,
    write_agreement,
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


def _finished_run(folder, benchmarks=("aime24",), agreement=False):
    records = {name: [{**r, "benchmark": name} for r in _records([True, False])] for name in benchmarks}
    write_eval_folder(folder, summarize(records, EvalSettings(model="m"), resamples=100), records)
    if agreement:
        write_agreement(folder, {"all": {}}, "# agreement\n")
    return folder


def test_a_used_folder_holds_one_run_afterwards(tmp_path):
    """A finished run's files are the earlier run's (results.json, settings.json, agreement.*, the responses
    results.json lists): a new run removes them, results.json last."""
    run = _finished_run(tmp_path / "run", ("aime24", "math500"), agreement=True)
    write_settings(run, {"model": "m"})
    (run / "responses" / ".aime24.jsonl.abcd_123").write_text("left by a killed write")
    earlier = earlier_outputs(run)
    assert sorted(p.relative_to(run).as_posix() for p in earlier) == [
        "agreement.json",
        "agreement.md",
        "responses/.aime24.jsonl.abcd_123",
        "responses/aime24.jsonl",
        "responses/math500.jsonl",
        "results.json",
        "settings.json",
    ]
    assert all(p.exists() for p in earlier)  # nothing changes until the new run writes
    remove_outputs(earlier)
    assert [p.name for p in run.rglob("*")] == ["responses"]
    assert earlier_outputs(tmp_path / "new") == [] and earlier_outputs(run) == []


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda run: (run / "notes.txt").write_text("mine"),
            r"holds files that are not an evaluation's \('notes.txt'\)",
        ),
        (lambda run: (run / "responses" / "x.csv").write_text("mine"), r"\('responses/x.csv'\)"),
        (lambda run: (run / "responses" / "link.jsonl").symlink_to(run / "results.json"), r"'responses/link.jsonl'"),
        (lambda run: (run / "settings.json").symlink_to("/etc/hostname"), r"\('settings.json'\)"),
        (
            lambda run: (run / "responses" / "amc23.jsonl").write_text("{}\n"),
            "responses its results.json does not list",
        ),
        (
            lambda run: (run / "results.json").unlink(),
            r"holds an evaluation that did not finish \('responses/aime24.jsonl'",
        ),
    ],
)
def test_a_folder_with_files_of_others_is_refused_and_left_alone(tmp_path, make, message):
    run = _finished_run(tmp_path / "run")
    make(run)
    before = sorted((p, p.lstat().st_size) for p in run.rglob("*"))
    with pytest.raises(ValueError, match=message):
        earlier_outputs(run)
    assert sorted((p, p.lstat().st_size) for p in run.rglob("*")) == before


def test_resuming_keeps_the_folder_and_an_unfinished_run_says_how(tmp_path):
    run = tmp_path / "run"
    write_settings(run, {"model": "m"})
    (run / "responses").mkdir()
    (run / "responses" / "aime24.jsonl").write_text("{}\n")
    assert earlier_outputs(run, resume=True) == []
    with pytest.raises(ValueError, match=r"did not finish .*: resume it \(--resume, the same settings\), delete"):
        earlier_outputs(run)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(results=[1]), "field 'results' must be an object of benchmarks, got list"),
        (lambda r: r["results"].update(aime24="x"), "field 'results' of aime24 must be a number in"),
        (lambda r: r["results"].update(aime24=3350.0), r"field 'results' of aime24 must be a number in \[0, 100\]"),
        (lambda r: r["results"].update({"../x": 1.0}), r"field 'results': '../x' is not a benchmark name"),
        (lambda r: r.update(avg="x"), r"field 'avg' must be a number in \[0, 100\], got 'x'"),
        (lambda r: r.update(avg=None, model=[1]), "field 'model' must be a string"),
        (lambda r: r["num_examples"].update(aime24=-1), "field 'num_examples' of aime24 must be a number in"),
        (lambda r: r["per_problem"].update(aime24=5), "field 'per_problem' of aime24 must be a list"),
        (lambda r: r["per_problem"]["aime24"][0].pop("key"), r"per_problem' of aime24\[0\]: field 'key' must be"),
        (
            lambda r: r["per_problem"]["aime24"][1].update(correct=[]),
            r"aime24\[1\]: field 'correct' must be a non-empty",
        ),
        (lambda r: r["per_problem"]["aime24"][1].update(id="0"), r"aime24\[1\]: field 'id' must be an integer"),
        (lambda r: r["responses"].update(aime24="../../etc/passwd"), "field 'responses' of aime24 must be"),
    ],
)
def test_results_files_are_checked_when_read(tmp_path, change, message):
    results = summarize({"aime24": _records([True, False])}, EvalSettings(model="m"), resamples=100)
    change(results)
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=message) as refused:
        read_results(path)
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)


def test_damaged_files_of_the_folder_are_named(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text('{"model": "m",')
    with pytest.raises(ValueError, match=rf"{tmp_path / SETTINGS_FILE}: not valid JSON"):
        read_settings(tmp_path)
    (tmp_path / SETTINGS_FILE).write_text('{"model": "m", "model": "n"}')
    with pytest.raises(ValueError, match="duplicate key 'model'"):
        read_settings(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("not json")
    with pytest.raises(ValueError, match=rf"{tmp_path / RESULTS_FILE}: not valid JSON"):
        read_results(tmp_path / RESULTS_FILE)
    path = responses_path(tmp_path, "aime24")
    records = _records([True])
    path.parent.mkdir()
    path.write_text(json.dumps({k: v for k, v in records[0].items() if k != "correct"}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: field 'correct' must be bool, got nothing"):
        read_responses(path)
    with pytest.raises(ValueError, match="is not a benchmark name"):
        responses_path(tmp_path, "../up")
