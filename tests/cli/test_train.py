"""`ktae train`: a scaled-down default job end to end, kill and resume, and the errors users hit first."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktae.cli import main

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


def test_small_default_job_fills_the_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *SMALL, "max_steps=3", "save_steps=2"]) == 0
    summary = json.loads(_printed_summary(capsys))
    assert summary["steps"] == 3

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["max_steps"] == 3 and config["ktae"] is True and config["beta"] == 0.001  # algo-resolved
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward", "accuracy", "completion_length", "kl", "clip_ratio/region_mean", "ktae/large_bonus_share",
                "ktae/bonus_mean_incorrect", "ktae/time_share", "step_time"):
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
    assert "| `alpha` | 1 |" in card and "| `rollout_advantage` | grpo |" in card and "| `beta` | 0.001 |" in card
    assert "| `optim` | sgd |" in card and "| `epsilon_high` | 0.2 |" in card
    assert "| `ignore_token_ids` | 0, 1 |" in card  # pad and end-of-sequence ids of the tiny tokenizer
    assert f"Held-out greedy accuracy: **{final_accuracy:.1%}** at step 3" in card
    assert "warm-started by supervised fine-tuning" in card
    assert "None" not in card and "DeepSeekMath" not in card and "huggingface.co/tiny" not in card


def test_config_file_with_overrides_runs_a_recipe_alone(tmp_path, capsys):
    recipe = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in SMALL)}
    recipe.update(model_name_or_path="tiny", dataset_name="synthetic", max_steps=2, save_steps=2, logging_steps=1, bf16=False, report_to="none")
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


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "ktae", "train", "--output-dir", str(run_dir), *SMALL, "max_steps=500", "save_steps=2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "checkpoint-2").is_dir():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _steps(run_dir / "metrics.jsonl")[:2] == [1, 2]
    resumed_from = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())

    assert main(["train", "--resume", str(run_dir), "max_steps=5"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{resumed_from}'}" in out
    # every step logged exactly once, the killed run's and the resumed run's
    assert _steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert set(_steps(run_dir / "rollouts.jsonl")) == {1, 2, 3, 4, 5}
    state = json.loads((run_dir / "checkpoints" / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2, 3, 4, 5]
    assert not list(run_dir.glob("checkpoint-*"))


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


def test_unreachable_hub_dataset_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["train", "--output-dir", str(tmp_path / "run"), "dataset_name=nobody/no-such-dataset-ktae"])
    assert code == 2
    assert "nobody/no-such-dataset-ktae" in capsys.readouterr().err
