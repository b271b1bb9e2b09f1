"""verl's own training loop on CPU, end to end: the demo (ktae.integrations.verl.demo) runs two real
steps through the launcher's CPU mode with KTAE on two FSDP ranks and with plain GRPO on one, side
by side, from the same seed. At step 1 the weights are the initial ones in both runs, so the runs
generate the same rollouts and score them alike, and KTAE's advantages are GRPO's plus the key-token
bonus, token for token. The demo's argument checks and reward run without Ray."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from ktae import compute_ktae_advantages, compute_rollout_advantages
from ktae.data.templates import apply_template, render_prompt
from ktae.integrations.verl.config import ktae_config_from_algorithm
from ktae.integrations.verl.cpu import CPU_DEFAULTS
from ktae.integrations.verl.demo import (
    RUN_MARKER,
    build_tokenizer,
    compute_score,
    main,
    processes_of,
    stop_processes_of,
)
from ktae.integrations.verl.main import override_keys
from ktae.models import ignored_token_ids
from ktae.reports.builders import run_ktae_config
from ktae.run_folder import ROLLOUTS_FILE, read_jsonl, read_ktae_settings

RUNS = {
    # two FSDP ranks sharing one rollout replica (its tensor-parallel size), so that both runs sample
    # from one server with the same seed
    "ktae": ["trainer.n_gpus_per_node=2", "actor_rollout_ref.rollout.tensor_model_parallel_size=2"],
    "grpo": [],
}


@pytest.fixture(scope="module")
def demos(tmp_path_factory, repo_root):
    """Both demo runs, started together (their Ray clusters, temp dirs included, under tmp_path)."""
    root = tmp_path_factory.mktemp("v")
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # the demo builds everything it needs
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                *("-m", "ktae.integrations.verl.demo", "--output-dir", str(root / name)),
                *("--adv-estimator", name, "--steps", "2", *overrides),
            ],
            env=env,
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, overrides in RUNS.items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=900)
            results[name] = {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "dir": root / name}
    finally:  # a demo that hangs is killed, and so is what it started
        for name, proc in procs.items():
            proc.kill()
            proc.wait()
            stop_processes_of(str(root / name))
    return results


def summary(demos, name) -> dict:
    run = demos[name]
    log = (run["dir"] / "train.log").read_text()[-4000:] if (run["dir"] / "train.log").exists() else ""
    assert run["returncode"] == 0, f"{run['stderr'][-3000:]}\n{log}"
    return json.loads(run["stdout"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_demo_trains_every_step(demos, name):
    result = summary(demos, name)
    assert result["trained"] and result["launcher_exit_status"] == 0
    assert [step["step"] for step in result["steps"]] == [1, 2]
    for step in result["steps"]:
        assert step["actor/grad_norm"] > 0 and step["mean_abs_advantage"] > 0
        # the rollout and the actor compute the same probabilities: the weights reached the rollout
        assert step["training/rollout_probs_diff_max"] < 1e-3
        if name == "ktae":
            assert step["ktae/seconds"] > 0
            credited, blamed = step["key_tokens"]["credited"], step["key_tokens"]["blamed"]
            assert credited and blamed and credited[0][1] > 0 > blamed[0][1]
        else:
            assert step["ktae/seconds"] is None and step["key_tokens"] is None


@pytest.mark.slow
def test_the_cpu_mode_sets_what_the_command_line_leaves_out(demos):
    """The demo names none of the CPU mode's settings but the ranks of its two-rank run: the launcher
    sets the rest (the transformers rollout, FSDP2, ...) and says so."""
    summary(demos, "ktae")
    log = (demos["ktae"]["dir"] / "train.log").read_text()
    said = next(line for line in log.splitlines() if line.startswith("trainer.device=cpu sets "))
    expected = {key: value for key, value in CPU_DEFAULTS.items() if key not in override_keys(RUNS["ktae"])}
    assert said.split()[2:] == [f"{key}={value}" for key, value in expected.items()]
    assert "actor_rollout_ref.rollout.name=hf" in said and "trainer.n_gpus_per_node" not in said


def step_rollouts(demos, name, step: int) -> list[dict]:
    summary(demos, name)
    return [r for r in read_jsonl(demos[name]["dir"] / ROLLOUTS_FILE) if r["step"] == step]


def padded(records: list[dict], per_token) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The records' response token ids, their mask and ``per_token(record)`` (a value per token), padded
    on the right to the longest response."""
    length = max(len(r["token_ids"]) for r in records)
    responses = torch.zeros(len(records), length, dtype=torch.long)
    mask = torch.zeros(len(records), length)
    values = torch.zeros(len(records), length)
    for i, record in enumerate(records):
        n = len(record["token_ids"])
        responses[i, :n], mask[i, :n], values[i, :n] = torch.tensor(record["token_ids"]), 1, per_token(record)
    return responses, mask, values


@pytest.mark.slow
def test_same_seed_same_rollouts_and_ktae_adds_the_bonus_to_grpo(demos, compose):
    ktae, grpo = step_rollouts(demos, "ktae", 1), step_rollouts(demos, "grpo", 1)

    def rollout(record):
        return record["prompt"], tuple(record["token_ids"]), record["score"]

    assert len(ktae) == 32 and collections.Counter(map(rollout, ktae)) == collections.Counter(map(rollout, grpo))
    # identical rollouts of a prompt get identical advantages in either run, so any match is the match
    grpo_advantages = {rollout(r): torch.tensor(r["advantages"]) for r in grpo}
    assert any(a.abs().max() > 0 for a in grpo_advantages.values())  # the reward has spread

    responses, mask, difference = padded(ktae, lambda r: torch.tensor(r["advantages"]) - grpo_advantages[rollout(r)])
    prompts = list(dict.fromkeys(r["prompt"] for r in ktae))
    groups = torch.tensor([prompts.index(r["prompt"]) for r in ktae])
    scores = torch.tensor([r["score"] for r in ktae])
    tokenizer = AutoTokenizer.from_pretrained(demos["ktae"]["dir"] / "model")
    config = ktae_config_from_algorithm(compose([]).algorithm, ignore_token_ids=ignored_token_ids(tokenizer))
    bonus = compute_ktae_advantages(responses, mask, scores, groups, config=config)
    assert (bonus * mask).abs().max() > 0.1
    torch.testing.assert_close(difference, bonus * mask, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_settings_a_run_logs_recompute_its_advantages(demos, name):
    """What `ktae viz` reads beside the rollouts: every logged advantage, at every step, follows from
    the rollouts and the run's ktae_settings.json alone."""
    summary(demos, name)
    settings = read_ktae_settings(demos[name]["dir"])
    assert settings is not None and settings.ktae == (name == "ktae") and settings.exact_base
    config, notes = run_ktae_config(demos[name]["dir"])  # a report's reading: the same, noting a baseline
    assert config == settings.estimator and (notes == []) == (name == "ktae")
    for step in (1, 2):
        records = step_rollouts(demos, name, step)
        responses, mask, logged = padded(records, lambda r: torch.tensor(r["advantages"]))
        groups, scores = [r["group"] for r in records], torch.tensor([r["score"] for r in records])
        if settings.ktae:
            recomputed = compute_ktae_advantages(responses, mask, scores, groups, config=settings.estimator)
        else:
            base = compute_rollout_advantages(
                scores, groups, settings.estimator.rollout_advantage, settings.estimator.epsilon
            )
            recomputed = base[:, None] * mask
        assert logged.abs().max() > 0
        torch.testing.assert_close(logged, recomputed, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_no_process_of_a_run_outlives_it(demos, name):
    summary(demos, name)
    assert processes_of(str(demos[name]["dir"])) == []


def test_demo_tokenizer_renders_chat_as_the_project_does():
    messages = apply_template("3+4=", "qwen_math")
    tokenizer = build_tokenizer([render_prompt(messages) + "3+4=7\n\\boxed{7}<|im_end|>"])
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == render_prompt(
        messages
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tokenizer.decode(ids) == render_prompt(messages)  # byte-level BPE: decoding gives the text back


def test_demo_reward_finds_the_answer_anywhere():
    assert compute_score("ktae_demo", "x12+3y", "12") == {"score": 1.0, "acc": True}
    assert compute_score("ktae_demo", "1 2", "12") == {"score": 0.0, "acc": False}


def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep")
    for argv, message in [
        (["--output-dir", str(used)], "is not empty"),
        (["--output-dir", str(tmp_path / "new"), "--steps", "0"], "--steps must be >= 1"),
        (["--output-dir", str(tmp_path / ("long" * 20))], "too long for its sockets"),
        (["--output-dir", str(tmp_path / "new"), "--stepz", "2"], "unrecognized arguments: --stepz"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"] and (used / "mine.txt").read_text() == "keep"


def test_demo_stopped_by_its_timeout_reports_and_leaves_no_process(tmp_path_factory, capsys):
    output_dir = tmp_path_factory.mktemp("t") / "run"
    assert main(["--output-dir", str(output_dir), "--timeout", "3"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["error"].startswith("training did not finish in 3 s") and result["launcher_exit_status"] is None
    assert result["steps"] == [] and not result["trained"]
    assert processes_of(str(output_dir)) == []


def test_cleanup_ends_the_runs_processes_only(tmp_path):
    # Each child says it is running before the search: between fork and exec a child still has
    # pytest's environment, without the marker.
    sleep = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    run = str(tmp_path)
    marked = subprocess.Popen(sleep, env={**os.environ, RUN_MARKER: run}, stdout=subprocess.PIPE)
    other_run = subprocess.Popen(sleep, env={**os.environ, RUN_MARKER: run + "-other"}, stdout=subprocess.PIPE)
    unmarked = subprocess.Popen(sleep, stdout=subprocess.PIPE)
    try:
        for process in (marked, other_run, unmarked):
            assert process.stdout is not None and process.stdout.readline() == b"up\n"
        assert [p.pid for p in processes_of(run)] == [marked.pid]
        assert stop_processes_of(run) == 1
        assert marked.wait(timeout=30) is not None
        assert other_run.poll() is None and unmarked.poll() is None
    finally:
        for process in (marked, other_run, unmarked):
            process.kill()
            process.communicate()
