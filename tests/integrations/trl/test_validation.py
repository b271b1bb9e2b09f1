"""Benchmark validation during training (`ktae.integrations.trl.validation`): the harness on the policy in
training, its figures logged with their step, the run's template and response limit, the best checkpoint kept."""

import json

import pytest
import yaml
from tests.cli.test_train import SMALL

from ktae.cli import main
from ktae.evaluation.harness import EvalSettings
from ktae.integrations.trl import validation
from ktae.integrations.trl.job import JobArguments
from ktae.integrations.trl.validation import BenchmarkCallback, benchmark_metrics, metric_names

JOB = [*SMALL, "warm_start_max_steps=0", "eval_accuracy_steps=0", "template=plain"]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_benchmarks_run_before_every_few_steps_and_after_training(tmp_path, suites, capsys):
    run = tmp_path / "run"
    benchmark = ["benchmark_suites=aime24,amc23", f"benchmark_data_dir={suites}", "benchmark_eval_steps=2"]
    sampled = ["benchmark_samples=2", "benchmark_temperature=1.0", "benchmark_limit=2"]
    context = "tiny_max_position_embeddings=96"
    assert main(["train", "--output-dir", str(run), *JOB, *benchmark, *sampled, context, "max_steps=3"]) == 0
    out = capsys.readouterr().out
    # said up front, then each evaluation's time and what is left
    assert (
        "[ktae train] benchmarks aime24, amc23 (2 problems each, 2 sample(s) per problem, up to 16 new tokens) "
        f"at 3 steps (0, 2, 3): {run / 'benchmarks'}/step-N" in out
    )
    assert "benchmarks at step 0: avg 0.0% (" in out and "2 more: about" in out
    assert (  # the data, said up front
        "[ktae train] data: the synthetic arithmetic task (ktae.data.synthetic), the built-in job's (256 training "
        "prompts, 16 held-out); dataset_name=... (or --config RECIPE) trains on your data" in out
    )
    summary = json.loads(out[out.rindex("\n{\n") :])

    results = {
        step: json.loads((run / "benchmarks" / f"step-{step}" / "results.json").read_text()) for step in (0, 2, 3)
    }
    assert sorted(p.name for p in (run / "benchmarks").iterdir()) == ["step-0", "step-2", "step-3"]
    assert summary["benchmark_avg"] == [[step, results[step]["avg"]] for step in (0, 2, 3)]
    for step, result in results.items():
        # the run's settings: its template and response limit, the model's context, the sampling asked
        settings = result["settings"]
        assert (settings["template"], settings["max_new_tokens"], settings["max_model_len"]) == ("plain", 16, 96)
        assert (settings["samples"], settings["temperature"], settings["limit"]) == (2, 1.0, 2)
        assert result["model"] == f"tiny step {step}" and result["num_examples"] == {"aime24": 2, "amc23": 2}
        responses = (run / "benchmarks" / f"step-{step}" / "responses" / "aime24.jsonl").read_text().splitlines()
        assert len(responses) == 4 and all(0 < json.loads(r)["num_tokens"] <= 16 for r in responses)
        assert json.loads(responses[0])["prompt"].startswith("1+2=\nPlease reason step by step")
    # Logged with their step (step 0's with step 1, before the first update), every figure the harness reports.
    records = {r["step"]: r for r in _records(run)}
    for logged_at, step in ((1, 0), (2, 2), (3, 3)):
        logged = {k: v for k, v in records[logged_at].items() if k.startswith("benchmark/")}
        assert logged == benchmark_metrics(results[step])
        assert sorted(logged) == sorted(metric_names(["aime24", "amc23"], 2))
    assert {"benchmark/pass@2", "benchmark/maj@2", "benchmark/aime24/pass@2"} <= set(records[2])


def test_the_best_step_is_saved_and_kept(tmp_path, suites, capsys, monkeypatch):
    # The tiny model scores 0 on any suite, so the figure the best step is chosen by is scripted (the harness
    # still runs): steps 0..4 score 10, 30, 20, 40, 5; resumed, steps 5 and 6 score 35 and 20.
    scores = iter([10.0, 30.0, 20.0, 40.0, 5.0, 35.0, 20.0])
    real = validation.benchmark_metrics
    monkeypatch.setattr(
        validation, "benchmark_metrics", lambda results: {**real(results), "benchmark/avg": next(scores)}
    )
    run = tmp_path / "run"
    benchmark = ["benchmark_suites=aime24", f"benchmark_data_dir={suites}", "benchmark_eval_steps=1"]
    best = ["keep_best_checkpoint=true", "keep_checkpoints=1", "save_steps=100"]
    assert main(["train", "--output-dir", str(run), *JOB, *benchmark, *best, "max_steps=4"]) == 0
    summary = json.loads(capsys.readouterr().out.rsplit("\n{\n", 1)[1].join(["{\n", ""]))
    best_checkpoint = str(run / "checkpoints" / "checkpoint-3")
    assert summary["best_checkpoint"] == {"step": 3, "value": 40.0, "model": best_checkpoint}
    # saved at each new best (steps 1 and 3) and at the end; keep_checkpoints=1 keeps the last and the best
    assert summary["checkpoints"] == ["checkpoint-3", "checkpoint-4"]
    state = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["best_global_step"], state["best_metric"], state["best_model_checkpoint"]) == (
        3,
        40.0,
        best_checkpoint,
    )
    # Resumed, the run compares against the best it stored: step 5's 35 is no new best (it would be the
    # first figure of a run that forgot), and the best checkpoint stays kept beside the last.
    assert main(["train", "--resume", str(run), "max_steps=6"]) == 0
    summary = json.loads(capsys.readouterr().out.rsplit("\n{\n", 1)[1].join(["{\n", ""]))
    assert summary["best_checkpoint"] == {"step": 3, "value": 40.0, "model": best_checkpoint}
    assert summary["checkpoints"] == ["checkpoint-3", "checkpoint-6"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["benchmark_suites=gsm8k"], "unknown benchmark(s) 'gsm8k'"),
        (["keep_best_checkpoint=true"], "keep_best_checkpoint needs benchmark_suites"),
        (
            ["benchmark_suites=aime24", "best_checkpoint_metric=benchmark/pass@4"],
            "'benchmark/pass@4' is not a benchmark figure of this run",
        ),
        (
            ["benchmark_suites=aime24", "benchmark_samples=2", "benchmark_temperature=0"],
            "samples = 2 needs temperature > 0",
        ),
    ],
)
def test_bad_benchmark_options_are_named_before_any_work(tmp_path, capsys, overrides, message):
    assert main(["train", "--output-dir", str(tmp_path / "run"), *JOB, *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "warm_start").exists()


def test_the_figures_name_what_the_harness_reports():
    settings = EvalSettings(model="m", samples=4, temperature=0.6)
    callback = BenchmarkCallback(settings, ["math500"], None, 10, "run", best_metric="benchmark/maj@4")
    assert callback.output_dir.as_posix() == "run/benchmarks"
    with pytest.raises(ValueError, match="best_checkpoint_metric 'benchmark/pass@8' is not logged"):
        BenchmarkCallback(settings, ["math500"], None, 10, "run", best_metric="benchmark/pass@8")
    assert JobArguments.from_options(yaml.safe_load("benchmark_suites: math500, amc23")).benchmark_suites


def test_the_trackers_log_the_benchmark_figures_and_the_short_names(tmp_path, suites, monkeypatch):
    """The trackers of report_to log each step's record after the callbacks that add to it have run:
    the benchmark figures and the short names reach W&B and TensorBoard as they reach metrics.jsonl."""
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers.integrations import WandbCallback

    seen: dict[int, dict] = {}
    wandb_on_log = WandbCallback.on_log

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if logs and "train_runtime" not in logs:  # each step's record, not the end-of-training summary
            seen[state.global_step] = dict(logs)
        return wandb_on_log(self, args, state, control, model=model, logs=logs, **kwargs)

    monkeypatch.setattr(WandbCallback, "on_log", on_log)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"
    benchmark = ["benchmark_suites=aime24", f"benchmark_data_dir={suites}", "benchmark_limit=2"]
    job = [*JOB, *benchmark, "benchmark_eval_steps=2", "max_steps=2", "report_to=[wandb,tensorboard]"]
    assert main(["train", "--output-dir", str(run), *job]) == 0

    records = {r["step"]: r for r in _records(run)}
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    for step in (1, 2):
        for name in ("benchmark/avg", "benchmark/aime24", "accuracy", "completion_length"):
            assert seen[step][name] == records[step][name], (step, name)
            # transformers' TensorBoard logger files a step's figures under train/
            (logged,) = [e.value for e in events.Scalars(f"train/{name}") if e.step == step]
            assert logged == pytest.approx(records[step][name]), (step, name)
