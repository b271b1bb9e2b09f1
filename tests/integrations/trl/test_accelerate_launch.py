"""recipes/accelerate/*.yaml (DDP, ZeRO-2, ZeRO-3, FSDP) as accelerate reads them, and ``accelerate launch -m ktae
train`` with the DDP config on two CPU processes (gloo): one run folder, every step logged once, a checkpoint
holding both processes' RNG states, resume, and the warning when the recipe was sized for another process count."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from tests.cli.test_train import SMALL
from tests.integrations.trl.test_trl_distributed import free_port

from ktae.integrations.trl.config import KTAEGRPOConfig
from ktae.integrations.trl.job import batch_report, check_launch

ACCELERATE = Path(__file__).resolve().parents[3] / "recipes" / "accelerate"


def launch_arguments(name: str, *extra: str):
    """accelerate launch's own reading of a config file: (arguments, the config)."""
    parsed = launch_command_parser().parse_args(["--config_file", str(ACCELERATE / f"{name}.yaml"), *extra, "x.py"])
    arguments, config, _ = _validate_launch_command(parsed)
    return arguments, config


def test_the_configs_are_the_four_layouts_for_eight_processes():
    assert sorted(p.stem for p in ACCELERATE.glob("*.yaml")) == ["ddp", "fsdp", "zero2", "zero3"]
    for name in ("ddp", "fsdp", "zero2", "zero3"):
        arguments, config = launch_arguments(name)
        assert (arguments.num_processes, arguments.mixed_precision, config.num_machines) == (8, "bf16", 1)
    assert launch_arguments("ddp")[0].multi_gpu


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_the_zero_configs_give_deepspeed_plugins_of_their_stage(name, stage):
    # What `accelerate launch` hands each process (environment variables), read back by accelerate's plugin
    # (the deepspeed package itself is not needed for that).
    arguments, config = launch_arguments(name)
    assert arguments.use_deepspeed
    arguments.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)
    _, environment = prepare_deepspeed_cmd_env(arguments)
    with mock.patch.dict(os.environ, environment):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert (plugin.zero_stage, zero["offload_optimizer"]["device"], zero["offload_param"]["device"]) == (
        stage,
        "none",
        "none",
    )
    assert plugin.zero3_init_flag == (stage == 3) and zero["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)


def test_the_fsdp_config_gives_a_full_shard_plugin():
    arguments, _ = launch_arguments("fsdp")
    assert arguments.use_fsdp
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(arguments)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.cpu_ram_efficient_loading


def test_the_batch_report_warns_when_the_launch_has_another_process_count(tmp_path):
    config = KTAEGRPOConfig(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=16, gradient_accumulation_steps=4
    )
    config.num_generations = 8
    assert batch_report(config, 2, None) == [
        "[ktae train] 2 process(es) x per_device_train_batch_size 16 x gradient_accumulation_steps 4 = 128 "
        "rollouts per optimizer step (16 prompts x num_generations 8)"
    ]
    assert batch_report(config, 2, 2) == batch_report(config, 2, None)
    warning = batch_report(config, 2, 8)[1]
    assert "sized for 8 processes (intended_num_processes), this launch has 2" in warning
    assert "takes 128 rollouts instead of 512" in warning and "gradient_accumulation_steps x processes = 32" in warning


def test_a_launch_training_cannot_see_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"2 processes were launched .* training sees 1: .* set use_cpu=true"):
        check_launch(1)
    check_launch(2)


def _launch(*arguments: str, returncode: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "ddp.yaml")]
    command += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run(
        [*command, "-m", "ktae", "train", *arguments], capture_output=True, text=True, timeout=600, env=environment
    )
    assert completed.returncode == returncode, completed.stderr[-4000:]
    return completed


def test_a_folder_the_main_process_refuses_stops_every_process(tmp_path):
    # The main process alone claims the run folder; the others must not train on (and wait for it forever).
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    # torchrun reports a failed process as exit code 1; each process printed its refusal (and exited with 2)
    failed = _launch("--output-dir", str(run), *SMALL, "use_cpu=true", "max_steps=1", returncode=1)
    refusals = [line for line in failed.stderr.splitlines() if line.startswith("ktae train: error:")]
    # Every process that got to say something gave the main process's reason (torchrun may stop the other
    # process once one has exited), none another one of its own.
    assert refusals and all("holds files ktae did not write ('notes.txt')" in line for line in refusals)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "mine\n"


def test_ddp_config_launches_two_cpu_processes_and_resumes(tmp_path, suites):
    run = tmp_path / "run"
    job = [*SMALL, "warm_start_max_steps=2", "use_cpu=true", "save_steps=1", "intended_num_processes=8"]
    # benchmarks shared out over the processes: 3 problems, one process generates 2 and the other 1 (and 1 again)
    benchmark = ["benchmark_suites=aime24", f"benchmark_data_dir={suites}", "benchmark_eval_steps=1", "template=plain"]
    job += [*benchmark, "tiny_max_position_embeddings=96"]
    out = _launch("--output-dir", str(run), *job, "max_steps=1").stdout
    # The start-up lines, printed once (by the main process): the batch of a step and the warning.
    assert (
        out.count(
            "[ktae train] 2 process(es) x per_device_train_batch_size 8 x gradient_accumulation_steps 1 = "
            "16 rollouts per optimizer step (4 prompts x num_generations 4)"
        )
        == 1
    )
    assert out.count("sized for 8 processes (intended_num_processes), this launch has 2") == 1
    assert out.count('"run_dir"') == 1
    checkpoint = run / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer

    resumed = _launch("--resume", str(run), "max_steps=2").stdout
    assert f"resuming from {checkpoint}" in resumed
    summary = json.loads(resumed[resumed.rindex("\n{\n") :])
    assert summary["steps"] == 2 and summary["checkpoints"] == ["checkpoint-1", "checkpoint-2"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rollouts}) == [1, 2]
    assert not list(run.glob("checkpoint-*"))  # every checkpoint published
    assert sorted(p.name for p in (run / "benchmarks").iterdir()) == ["step-0", "step-1", "step-2"]
    assert out.count("benchmarks at step 0") == out.count("benchmarks at step 1") == 1
    for step in (0, 1, 2):
        lines = (run / "benchmarks" / f"step-{step}" / "responses" / "aime24.jsonl").read_text().splitlines()
        responses = [json.loads(line) for line in lines]
        assert [(r["index"], r["problem"]) for r in responses] == [(0, "1+2="), (1, "2+2="), (2, "3+4=")]
        assert all(0 < r["num_tokens"] <= 16 for r in responses)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "benchmark/aime24" in r] == [1, 2]
