"""`ktae train`: a scaled-down default job end to end, kill and resume, and the errors users hit first."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktae.cli import main
from ktae.reports import build_report

# The default job, scaled down to seconds: a 1-layer model, a handful of SFT and RL steps.
SMALL = [
    "tiny_hidden_size=32",
    "tiny_intermediate_size=64",
    "tiny_num_hidden_layers=1",
    "tiny_num_attention_heads=2",
    "tiny_num_key_value_heads=1",
    "task_train_size=256",
    "task_eval_size=16",
    "warm_start_max_steps=4",
    "warm_start_eval_steps=2",
    "warm_start_batch_size=16",
    "num_generations=4",
    "per_device_train_batch_size=8",
    "max_completion_length=16",
    "eval_accuracy_steps=2",
    "ktae_log_rollouts_steps=1",
    "keep_checkpoints=null",
]


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _tensorboard_steps(run_dir: Path, tag: str = "train/reward") -> list[int]:
    """Steps of a scalar as TensorBoard shows it (events purged on resume left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_small_default_job_fills_the_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *SMALL, "max_steps=3", "save_steps=2"]) == 0
    summary = json.loads(_printed_summary(capsys))
    assert summary["steps"] == 3

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["max_steps"] == 3 and config["ktae"] is True and config["beta"] == 0.001  # algo-resolved
    # the KTAE settings it trained with, resolved: the tiny tokenizer's pad and eos ids, TRL's std + 1e-4 base
    settings = json.loads((run_dir / "ktae_settings.json").read_text())
    assert (settings["ktae"], settings["exact_base"], settings["rollout_advantage"]) == (
        True,
        True,
        "TRL's own (scale_rewards=group)",
    )
    estimator = settings["estimator"]
    assert (estimator["ignore_token_ids"], estimator["rollout_advantage"], estimator["epsilon"]) == (
        [0, 1],
        "grpo",
        1e-4,
    )
    # so a report of the run recomputes the advantages it trained on
    report = build_report(run_dir, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Recomputed advantages match those logged" in report and "differ from" not in report
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "reward",
        "accuracy",
        "completion_length",
        "kl",
        "clip_ratio/region_mean",
        "ktae/large_bonus_share",
        "ktae/bonus_mean_incorrect",
        "ktae/time_share",
        "step_time",
    ):
        assert key in records[-1], key
    assert 0.0 <= records[-1]["accuracy"] <= 1.0
    # measured before the first update (logged with step 1), then every 2 steps and at the end
    assert [r["step"] for r in records if "eval/accuracy" in r] == [1, 2, 3]

    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rollouts} == {1, 2, 3}
    for r in rollouts:
        assert "".join(r["tokens"]) == r["response"] and len(r["advantages"]) == len(r["token_ids"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert (run_dir / "checkpoints" / "checkpoint-3" / "model.safetensors").is_file()
    assert not list(run_dir.glob("checkpoint-*"))  # every checkpoint was published into checkpoints/
    assert (run_dir / "warm_start" / "model.safetensors").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "curves.png").stat().st_size > 0

    # the model card names KTAE, the base model, the algorithm and its settings, and the final accuracy
    card = (run_dir / "README.md").read_text()
    final_accuracy = [r["eval/accuracy"] for r in records if "eval/accuracy" in r][-1]
    assert "# run\n" in card
    assert "from a tiny model built locally on the synthetic arithmetic task" in card
    assert "with GRPO+KTAE" in card and "Algorithm: **GRPO+KTAE**" in card
    assert "KTAE: A Model-Free Algorithm to Key-Tokens Advantage Estimation in Mathematical Reasoning" in card
    assert "https://arxiv.org/abs/2505.16826" in card and "@article{sun2025ktae," in card
    assert (
        "| `alpha` | 1 |" in card
        and "| `rollout_advantage` | TRL's own (scale_rewards=group) |" in card
        and "| `beta` | 0.001 |" in card
    )
    assert "| `optim` | sgd |" in card and "| `epsilon_high` | 0.2 |" in card
    assert "| `ignore_token_ids` | 0, 1 |" in card  # pad and end-of-sequence ids of the tiny tokenizer
    assert f"Held-out greedy accuracy: **{final_accuracy:.1%}** at step 3" in card
    assert "warm-started by supervised fine-tuning" in card
    assert "None" not in card and "DeepSeekMath" not in card and "huggingface.co/tiny" not in card


def test_config_file_with_overrides_runs_a_recipe_alone(tmp_path, capsys):
    recipe = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in SMALL)}
    recipe.update(
        model_name_or_path="tiny",
        dataset_name="synthetic",
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        bf16=False,
        report_to="none",
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(path), "--output-dir", str(run_dir), "ktae=false", "algo=dapo"]) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    # the recipe alone: none of the built-in job's options (its SGD optimizer) crept in
    assert config["ktae"] is False and config["algo"] == "dapo" and "optim" not in config
    assert config["beta"] == 0.0 and config["epsilon_high"] == 0.28 and config["dynamic_sampling"] is True
    assert _steps(run_dir / "metrics.jsonl") == [1, 2]
    assert "ktae/large_bonus_share" not in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads(_printed_summary(capsys))["checkpoints"] == ["checkpoint-2"]
    card = (run_dir / "README.md").read_text()
    assert "with DAPO, using" in card and "Algorithm: **DAPO**" in card and "KTAE settings" not in card
    assert "| `epsilon_high` | 0.28 |" in card and "| `dynamic_sampling` | True |" in card
    assert "Held-out greedy accuracy" in card and "None" not in card


def _printed_summary(capsys) -> str:
    """The JSON summary ``ktae train`` prints last."""
    out = capsys.readouterr().out
    return out[out.rindex('{\n  "run_dir"') :]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, capsys, caplog):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "ktae",
        "train",
        "--output-dir",
        str(run_dir),
        *SMALL,
        "max_steps=500",
        "save_steps=2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / ".lock").is_file():
            assert process.poll() is None and time.monotonic() < deadline, "the run did not lock its folder"
            time.sleep(0.1)
        # a second writer is refused while the run holds its folder, naming the holder
        capsys.readouterr()
        assert main(["train", "--output-dir", str(run_dir), *SMALL]) == 2
        while not (run_dir / "checkpoints" / "checkpoint-2").is_dir():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        assert main(["train", "--resume", str(run_dir)]) == 2
        assert capsys.readouterr().err.count(f"being written by another process (pid {process.pid})") == 2
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _steps(run_dir / "metrics.jsonl")[:2] == [1, 2]
    resumed_from = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    for name in ("metrics.jsonl", "rollouts.jsonl"):  # as a kill during an append leaves them
        with open(run_dir / name, "a") as log:
            log.write('{"step": 3, "tok')

    final = max(5, resumed_from + 2)  # a loaded machine may have let the killed run go past step 3
    steps = list(range(1, final + 1))
    assert main(["train", "--resume", str(run_dir), f"max_steps={final}"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{resumed_from}'}" in out
    # every step logged exactly once, the killed run's and the resumed run's
    assert _steps(run_dir / "metrics.jsonl") == steps
    assert set(_steps(run_dir / "rollouts.jsonl")) == set(steps)
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{final}" / "trainer_state.json").read_text())
    assert state["global_step"] == final
    assert [h["step"] for h in state["log_history"] if "reward" in h] == steps
    assert not list(run_dir.glob("checkpoint-*"))
    assert "metrics.jsonl: dropped a torn last line" in caplog.text
    assert "rollouts.jsonl: dropped a torn last line" in caplog.text
    # TensorBoard shows every step once: the checkpoint's step kept, the killed run's later steps purged
    assert _tensorboard_steps(run_dir) == steps

    # a finished run is not trained further
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert f"is finished: it trained all {final} steps" in capsys.readouterr().out
    assert _steps(run_dir / "metrics.jsonl") == steps
    assert max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir()) == final


def test_resume_before_the_first_checkpoint_logs_every_step_once(tmp_path, capsys):
    run_dir = tmp_path / "run"
    job = [*SMALL, "max_steps=1", "eval_accuracy_steps=0", "warm_start_max_steps=0"]
    # the run folder is --output-dir, never a key (TRL's output_dir): refused, not silently ignored
    assert main(["train", f"output_dir={run_dir}", *job]) == 2
    assert "output_dir: the run folder is --output-dir RUN_DIR, not a key" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["train", "--output-dir", str(run_dir), *job]) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "output_dir" not in config
    assert main(["train", "--resume", str(run_dir), f"output_dir={tmp_path / 'elsewhere'}"]) == 2
    assert f"output_dir: --resume {run_dir} continues the run in its own folder" in capsys.readouterr().err
    # a config.yaml of an older ktae that kept the output_dir it ignored: still ignored, and dropped on resume
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "output_dir": "/somewhere/else"}))
    # as if killed after step 1 was logged, while its checkpoint was being written
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "checkpoint-1").mkdir()
    (run_dir / "checkpoint-1" / "model.safetensors").write_bytes(b"half")
    (run_dir / ".ktae_run").unlink()  # as a folder written before the marker existed: its config.yaml is enough
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "resuming from the start" in capsys.readouterr().out
    assert _steps(run_dir / "metrics.jsonl") == [1]
    assert set(_steps(run_dir / "rollouts.jsonl")) == {1} and len(_steps(run_dir / "rollouts.jsonl")) == 8
    assert _steps(run_dir / "key_tokens.jsonl") == [1]
    assert _tensorboard_steps(run_dir) == [1]
    assert _tensorboard_steps(run_dir, "train/accuracy") == [1]  # TensorBoard sees the short names too
    assert not (run_dir / "checkpoint-1").exists()  # its own half-written checkpoint, cleaned up
    assert "output_dir" not in yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.mark.parametrize(
    "override, message",
    [
        ("learnin_rate=0.1", "learnin_rate"),
        ("learning_rate=fast", "learning_rate"),
        ("num_generations=1", "num_generations must be >= 2 with ktae on"),
        ("algo=ppo", "unknown algo"),
        ("task_operations=x", "unknown operator"),
        ("warm_start_target_accuracy=2", "target_accuracy"),
        ("reward=f1", "unknown reward"),
        ("ktae_epsilon=0", "epsilon must be > 0"),
        ("ktae_top=1e39", "top must be below"),
        ("ktae_ignore_token_ids=[1.5]", "ignore_token_ids must hold ints"),
        ("max_steps=-5", "max_steps must be >= 1"),
        ("max_steps=0", "max_steps must be >= 1"),
        ("save_steps=0", "save_steps must be > 0"),
        ("per_device_train_batch_size=0", "per_device_train_batch_size must be >= 1"),
        ("max_completion_length=-1", "max_completion_length must be >= 1"),
        ("learning_rate=-0.1", "learning_rate must be a finite number >= 0"),
        ("temperature=.nan", "temperature must be a finite number >= 0.01"),
        ("temperature=1e-320", "temperature must be a finite number >= 0.01, got 1e-320"),
        ("task_train_size=0", "task_train_size must be an integer >= 1"),
        ("keep_checkpoints=0", "keep_checkpoints must be an integer >= 1 (or null)"),
        ("tiny_hidden_size=-8", "tiny model hidden_size must be an integer >= 1"),
        ("warm_start_batch_size=0", "warm start batch_size must be >= 1"),
    ],
)
def test_bad_key_or_value_is_named(tmp_path, capsys, override, message):
    assert main(["train", "--output-dir", str(tmp_path / "run"), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_dataset_without_answers_is_refused(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1="}) + "\n" for i in range(4)))
    code = main(["train", "--output-dir", str(tmp_path / "run"), f"dataset_name={data}", "warm_start_max_steps=0"])
    assert code == 2
    assert "missing field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()  # the folder stays free for a corrected run


def test_resume_needs_a_run_folder_and_a_run_folder_is_not_overwritten(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("max_steps: 1\n")
    assert main(["train", "--output-dir", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("- max_steps\n- 1\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "config.yaml: a recipe is a mapping of keys to values, got list" in capsys.readouterr().err


def test_a_start_that_fails_after_work_began_leaves_the_folder_free(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(4)))
    command = ["train", "--output-dir", str(tmp_path / "run"), *SMALL, f"dataset_name={data}"]
    for _ in range(2):  # the same command again meets the same error, not "already holds a run"
        assert main(command) == 2
        assert "the warm start measures accuracy on held-out prompts" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unreachable_hub_dataset_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["train", "--output-dir", str(tmp_path / "run"), "dataset_name=nobody/no-such-dataset-ktae"])
    assert code == 2
    assert "nobody/no-such-dataset-ktae" in capsys.readouterr().err


def test_a_lock_that_links_elsewhere_is_refused_and_its_target_kept(tmp_path, capsys):
    important = tmp_path / "important"
    important.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("max_steps: 1\nbf16: false\n")  # valid: the lock is what is refused
    (run_dir / ".lock").symlink_to(important)
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"{run_dir / '.lock'} is a symbolic link, not a regular file: refused" in capsys.readouterr().err
    assert important.read_text() == "precious\n"


def _laughs(levels: int = 6) -> str:
    """YAML whose aliases expand to 9**levels values (a billion laughs, scaled down to stay cheap if expanded)."""
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nlearning_rate: *a{levels}\n"


def test_yaml_aliases_are_refused_before_anything_expands_them(tmp_path, capsys):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(_laughs())
    assert main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: aliases (*name) are refused: write the value out (line 2, column 10)" in err
    assert len(err) < 300  # one line, not the expansion
    value = "[" + ", ".join(["[" + ", ".join(["&x lol"] + ["*x"] * 8) + "]"]) + "]"
    assert main(["train", "--output-dir", str(tmp_path / "b"), f"learning_rate={value}"]) == 2
    err = capsys.readouterr().err
    assert "override learning_rate: aliases (*name) are refused" in err and len(err) < 300
    run_dir = tmp_path / "run"  # a run's config.yaml is read the same way
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(_laughs())
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'config.yaml'}: aliases (*name) are refused" in err and len(err) < 300
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path, capsys):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("max_steps: 10\nlearning_rate: 0.1\nmax_steps: 20\n")
    assert main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    assert f"{recipe}: key 'max_steps' given twice (line 3, column 1)" in capsys.readouterr().err


def test_a_bad_value_is_quoted_short_in_the_error(tmp_path, capsys):
    big = "[" + ", ".join(["12345678"] * 20_000) + "]"
    assert main(["train", "--output-dir", str(tmp_path / "run"), f"learning_rate={big}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ktae train: error: learning_rate must be a number, got [12345678, 12345678, ")
    assert len(err) < 300


def test_a_folder_holding_files_ktae_did_not_write_is_refused_and_left_as_it_was(tmp_path, capsys):
    output = tmp_path / "hf_output"  # a Hugging Face trainer's folder: its checkpoint, card and log
    (output / "checkpoint-500").mkdir(parents=True)
    (output / "checkpoint-500" / "model.safetensors").write_bytes(b"weights")
    (output / "README.md").write_text("my model card")
    (output / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    before = sorted((str(p), p.read_bytes() if p.is_file() else None) for p in output.rglob("*"))
    assert main(["train", "--output-dir", str(output), *SMALL, "max_steps=1"]) == 2
    assert f"{output} holds files ktae did not write ('README.md', 'checkpoint-500', 'metrics.jsonl')" in (
        capsys.readouterr().err
    )
    assert sorted((str(p), p.read_bytes() if p.is_file() else None) for p in output.rglob("*")) == before


def test_resume_refuses_run_files_that_are_not_regular_files_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("max_steps: 1\nbf16: false\n")
    (run_dir / "metrics.jsonl").symlink_to("/dev/zero")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"{run_dir / 'metrics.jsonl'} is a symbolic link, not a regular file: refused" in capsys.readouterr().err
    (run_dir / "metrics.jsonl").unlink()
    os.mkfifo(run_dir / "rollouts.jsonl")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "rollouts.jsonl is a FIFO (named pipe), not a regular file: refused" in capsys.readouterr().err


def test_resume_falls_back_past_damaged_checkpoints_and_keeps_them(tmp_path, capsys, caplog):
    run_dir = tmp_path / "run"
    job = [*SMALL, "max_steps=3", "save_steps=1", "eval_accuracy_steps=0", "warm_start_max_steps=0"]
    assert main(["train", "--output-dir", str(run_dir), *job]) == 0
    checkpoints = run_dir / "checkpoints"
    weights = checkpoints / "checkpoint-3" / "model.safetensors"
    with open(weights, "r+b") as handle:  # as a disk that filled up mid-copy leaves it
        handle.truncate(weights.stat().st_size // 2)
    truncated = weights.read_bytes()
    (checkpoints / "checkpoint-2" / "trainer_state.json").unlink()
    capsys.readouterr()

    assert main(["train", "--resume", str(run_dir)]) == 0  # not "finished": its step-3 checkpoint is unusable
    out = capsys.readouterr().out
    assert (
        f"skipped {checkpoints / 'checkpoint-3'}, which cannot be resumed from (model.safetensors: Error while "
        "deserializing header: incomplete metadata, file not fully covered); it is left as it is"
    ) in out
    skipped = f"skipped {checkpoints / 'checkpoint-2'}, which cannot be resumed from (trainer_state.json is missing)"
    assert skipped in out
    assert f"resuming from {checkpoints / 'checkpoint-1'}" in out
    assert _steps(run_dir / "metrics.jsonl") == [1, 2, 3]
    # the resumed run's checkpoints took their places; the damaged ones were moved aside, not deleted
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-2.damaged",
        "checkpoint-3",
        "checkpoint-3.damaged",
    ]
    assert (checkpoints / "checkpoint-3.damaged" / "model.safetensors").read_bytes() == truncated
    aside = f"{checkpoints / 'checkpoint-3'}, skipped as damaged when the run resumed, was moved to {checkpoints}"
    assert aside in caplog.text
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "is finished: it trained all 3 steps" in capsys.readouterr().out


def _train_process(run_dir: Path, *options: str, file_size_limit: int | None = None) -> subprocess.Popen:
    """``ktae train`` in its own process group (as a terminal runs it); ``file_size_limit``: writes beyond it
    fail as on a full disk (EFBIG instead of ENOSPC)."""

    def limit_file_size() -> None:
        if file_size_limit is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    command = [sys.executable, "-m", "ktae", "train", "--output-dir", str(run_dir), *SMALL, *options]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=limit_file_size,
    )


def test_ctrl_c_stops_the_run_with_one_line_saying_how_to_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    process = _train_process(run_dir, "max_steps=500", "save_steps=2", "warm_start_max_steps=0")
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "checkpoint-2").is_dir():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
        _out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130
    stopped = (
        "ktae train: stopped (Ctrl-C); the run keeps its complete checkpoints; continue it with: "
        f"ktae train --resume {run_dir}"
    )
    assert stopped in err.splitlines(), err  # one line (the progress bar may redraw itself after it)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    from ktae.run_folder import RunFolderLock

    RunFolderLock(run_dir).acquire().release()  # the lock was released (the process is gone anyway)
    resumed_from = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert main(["train", "--resume", str(run_dir), f"max_steps={resumed_from + 1}"]) == 0
    assert _steps(run_dir / "metrics.jsonl") == list(range(1, resumed_from + 2))


def test_a_full_disk_while_saving_is_one_named_line_and_the_run_stays_resumable(tmp_path):
    # the warm start's model (41 KB) does not fit: nothing had started, the same command starts again
    run_dir = tmp_path / "warm"
    process = _train_process(run_dir, "max_steps=2", file_size_limit=20_000)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 2, err
    [last] = [line for line in err.splitlines() if line.startswith("ktae train: error:")]  # among progress bars
    assert last.startswith(f"ktae train: error: could not save the model to {run_dir / 'warm_start.saving'} (")
    assert last.endswith("File too large (os error 27))") and "Traceback" not in err, err
    assert not (run_dir / "warm_start.saving").exists() and not (run_dir / "config.yaml").exists()

    # a checkpoint does not fit (the model does, 41 KB; Adam's state, twice its size, does not)
    run_dir = tmp_path / "checkpoint"
    adam = ["optim=adamw_torch", "warm_start_max_steps=0", "save_steps=1"]
    process = _train_process(run_dir, "max_steps=2", *adam, file_size_limit=60_000)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 2, err
    [last] = [line for line in err.splitlines() if line.startswith("ktae train: error:")]  # among progress bars
    assert last.startswith(f"ktae train: error: could not save the checkpoint {run_dir / 'checkpoint-1'} ("), err
    assert last.endswith(f"the run keeps its complete checkpoints; continue it with: ktae train --resume {run_dir}")
    assert "Traceback" not in err
    assert (run_dir / "checkpoint-1").is_dir()  # half-written: the resume removes it, and trains from the start
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert _steps(run_dir / "metrics.jsonl") == [1, 2] and not (run_dir / "checkpoint-1").exists()

    # curves.png (about 100 KB) does not fit: the run is complete, says so, and prints its summary
    run_dir = tmp_path / "curves"
    process = _train_process(run_dir, "max_steps=2", "warm_start_max_steps=0", file_size_limit=60_000)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert json.loads(out[out.rindex('{\n  "run_dir"') :])["steps"] == 2
    assert f"could not write {run_dir / 'curves.png'} ([Errno 27] File too large" in err
    assert f"`ktae viz --run {run_dir}` draws the curves" in err


def test_ctrl_c_before_the_run_started_says_to_run_the_command_again(tmp_path, capsys, monkeypatch):
    import ktae.integrations.trl.job as job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "prepare_job", interrupted)
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *SMALL]) == 130
    assert capsys.readouterr().err == (
        f"ktae train: stopped (Ctrl-C); no run had started yet: run the command again (--output-dir {run_dir} "
        "starts it in the same folder)\n"
    )
    from ktae.run_folder import start_run_folder

    start_run_folder(run_dir).release()  # released, and still a folder the same command may start in
