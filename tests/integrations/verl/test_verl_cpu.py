"""The launcher's CPU mode (ktae.integrations.verl.cpu): its start-up checks and settings, the platform,
the patches of verl's internals (in fresh processes, as Ray starts them), and the launcher refusing a
config the mode cannot run before Ray starts. The training loop itself runs in test_verl_demo.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import verl
from omegaconf import OmegaConf
from tests.integrations.verl.children import finish
from verl.plugin.platform import PlatformRegistry

from ktae.integrations.verl import cpu
from ktae.integrations.verl.compat import value_head_available
from ktae.integrations.verl.cpu import (
    CPU_ENV,
    PATCHES,
    SUPPORTED_VERL,
    WORKER_MODULE,
    CPUPlatform,
    VerlPatch,
    check_verl_version,
)
from ktae.integrations.verl.main import PLUGIN_MODULE, prepare_config

# A config the CPU mode runs, as a user writes it (docs/verl.md): the mode's defaults do the rest.
CPU_RUN = [
    "trainer.device=cpu",
    "algorithm.adv_estimator=ktae",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
]

# Each config the mode cannot run, with the override its error names.
BAD_CPU_RUNS = {
    "vllm rollout": (["actor_rollout_ref.rollout.name=vllm"], "actor_rollout_ref.rollout.name=hf"),
    "no rollout": (["actor_rollout_ref.rollout.name=???"], "actor_rollout_ref.rollout.name=hf"),
    "FSDP1": (["actor_rollout_ref.actor.strategy=fsdp"], "actor_rollout_ref.actor.strategy=fsdp2"),
    "FSDP1 reference": (
        ["actor_rollout_ref.ref.strategy=fsdp"],
        r"actor_rollout_ref.ref.strategy is 'fsdp'",
    ),
    "flash attention": (
        ["+actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2"],
        "cannot run flash_attention_2",
    ),
    "critic": (["algorithm.adv_estimator=gae", "critic.enable=True"], "trains without a critic"),
    "tensor parallel rollout": (
        ["actor_rollout_ref.rollout.tensor_model_parallel_size=3"],
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    ),
    "async trainer": (["trainer.v1.trainer_mode=colocate_async"], "trainer.v1.trainer_mode=sync"),
    "nccl weight sync": (
        ["actor_rollout_ref.rollout.checkpoint_engine.backend=nccl"],
        "checkpoint_engine.backend=naive",
    ),
    "raw logits": (["actor_rollout_ref.rollout.logprobs_mode=raw_logits"], "logprobs_mode='raw_logits'"),
    "no rank": (["trainer.n_gpus_per_node=0"], "trainer.n_gpus_per_node >= 1"),
    "LoRA": (["actor_rollout_ref.model.lora_rank=8"], "LoRA"),
    "too few CPUs": (  # the controller, one storage unit, a rank's bundle of 3: one fewer hangs verl
        [
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
            "trainer.n_gpus_per_node=1",
            "ray_kwargs.ray_init.num_cpus=4",
        ],
        "needs 5 logical CPUs",
    ),
    "too few GPUs": (["trainer.n_gpus_per_node=2", "+ray_kwargs.ray_init.num_gpus=1"], "needs 2 logical GPUs"),
}


@pytest.fixture(autouse=True)
def no_external_modules_in_the_shell(monkeypatch):
    monkeypatch.delenv("VERL_USE_EXTERNAL_MODULES", raising=False)


def prepared(compose, overrides: list[str]):
    """The config as the launcher runs it: composed from the command line, then prepared."""
    config = compose(overrides)
    prepare_config(config, overrides)
    return config


def test_prepare_config_adds_the_cpu_modes_settings(compose):
    config = compose(CPU_RUN)
    assert prepare_config(config, CPU_RUN) == cpu.CPU_DEFAULTS  # the command line names none of them
    assert config.trainer.device == "cpu"
    for key, value in cpu.CPU_DEFAULTS.items():
        assert OmegaConf.select(config, key) == value, key
    assert config.actor_rollout_ref.ref.strategy == "fsdp2"  # verl's: the actor's
    assert config.actor_rollout_ref.ref.use_torch_compile is False
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    ray_init = config.ray_kwargs.ray_init
    # the TransferQueue controller, one storage unit, one rank of 3
    assert ray_init.num_cpus == 1 + 1 + 3
    assert ray_init.num_gpus == 1
    env_vars = ray_init.runtime_env.env_vars
    assert env_vars.VERL_PLATFORM == "cpu" and env_vars.VERL_ENGINE_DEVICE == "cuda"
    # the CPU module first: its patches must run before verl imports the modules they change
    assert f"{WORKER_MODULE},{PLUGIN_MODULE}" == env_vars.VERL_USE_EXTERNAL_MODULES
    assert config.trainer.v1.trainer_mode == "ktae_sync"


def test_prepare_config_keeps_the_users_cpu_settings(compose):
    overrides = [
        *CPU_RUN,
        "trainer.n_gpus_per_node=2",
        "ray_kwargs.ray_init.num_cpus=40",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=3",
        "++actor_rollout_ref.actor.use_torch_compile=True",
    ]
    config = compose(overrides)
    settings = prepare_config(config, overrides)
    assert "trainer.n_gpus_per_node" not in settings and "actor_rollout_ref.actor.use_torch_compile" not in settings
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "eager"
    assert config.trainer.n_gpus_per_node == 2
    assert config.transfer_queue.backend.SimpleStorage.num_data_storage_units == 3
    assert config.actor_rollout_ref.actor.use_torch_compile is True
    assert config.ray_kwargs.ray_init.num_cpus == 40
    assert config.ray_kwargs.ray_init.num_gpus == 2


def test_cpu_defaults_are_verls_own_keys(compose):
    """Each default replaces a value verl's config has (a renamed key would add a setting verl ignores)."""
    config = compose([])
    for key in cpu.CPU_DEFAULTS:
        section, _, name = key.rpartition(".")
        # keys(), not `in`: rollout.name's value is verl's ??? (unset), which `in` reports as absent
        assert name in list(OmegaConf.select(config, section).keys()), key


def test_logical_cpus_count_what_verls_actors_keep(compose):
    config = prepared(
        compose,
        [
            *CPU_RUN,
            "trainer.n_gpus_per_node=2",
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=2",
            "actor_rollout_ref.rollout.agent.num_workers=3",  # placed, they keep none
            "reward.num_workers=2",
        ],
    )
    assert cpu.logical_cpus(config) == 1 + 2 + 3 * 2


@pytest.mark.parametrize("case", sorted(BAD_CPU_RUNS))
def test_bad_cpu_run_fails_with_the_setting_to_change(compose, case):
    overrides, message = BAD_CPU_RUNS[case]
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        prepared(compose, [*CPU_RUN, *overrides])


def test_cpu_run_refuses_a_runtime_env_that_contradicts_it(compose):
    with pytest.raises(ValueError, match="sets VERL_PLATFORM=cpu for the Ray processes"):
        prepared(compose, [*CPU_RUN, "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=nvidia"])


def test_gpu_runs_are_untouched_by_the_cpu_mode(compose):
    overrides = [arg for arg in CPU_RUN if not arg.startswith("trainer.device")]
    config = compose(overrides)
    assert prepare_config(config, overrides) == {}
    assert config.actor_rollout_ref.actor.strategy == "fsdp" and config.trainer.n_gpus_per_node == 8
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert "VERL_PLATFORM" not in env_vars and env_vars.VERL_USE_EXTERNAL_MODULES == PLUGIN_MODULE
    assert "attn_implementation" not in config.actor_rollout_ref.model.override_config
    assert config.ray_kwargs.ray_init.num_cpus is None


def test_cpu_mode_refuses_another_verl_version(compose, monkeypatch):
    check_verl_version(SUPPORTED_VERL)
    with pytest.raises(ValueError, match=r"patches verl 0\.9\.1 internals .*installed verl is 0\.10\.0"):
        check_verl_version("0.10.0")
    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(ValueError, match=r"installed verl is 0\.9\.2"):
        prepared(compose, CPU_RUN)


# --- defect 11: the user's own plugin modules reach the Ray processes ----------------------------


def test_prepare_config_merges_the_shells_external_modules(compose, monkeypatch):
    """Ray's runtime env replaces the shell's VERL_USE_EXTERNAL_MODULES in its processes: the launcher
    must carry the user's modules over, not drop them."""
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "my_plugin, other_plugin")
    config = prepared(
        compose,
        [
            *CPU_RUN,
            "algorithm.adv_estimator=grpo",
            "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=from_config",
        ],
    )
    modules = config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES
    assert modules == f"{WORKER_MODULE},my_plugin,other_plugin,from_config,{PLUGIN_MODULE}"


# --- the platform ------------------------------------------------------------------------------


def test_cpu_platform_is_registered_and_chosen_by_name_only():
    assert PlatformRegistry.get("cpu") is CPUPlatform
    platform = CPUPlatform()
    assert not platform.is_platform_available(use_smi_check=True)  # never auto-detected
    assert (platform.device_name, platform.communication_backend_name()) == ("cpu", "gloo")
    assert platform.current_device() == torch.device("cpu")
    assert torch.zeros(2).to(platform.current_device()).device.type == "cpu"
    assert platform.ray_resource_options(1) == {"num_gpus": 1}


def test_cpu_device_module_answers_verls_calls_and_refuses_others():
    device = CPUPlatform().device_module
    assert device.is_available() and device.device_count() == 1
    assert device.memory_allocated() == 0 and device.max_memory_reserved() == 0
    available, total = device.mem_get_info()
    assert 0 < available <= total
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)  # the CPU generator: a restored state repeats the draws
    with device.stream(device.current_stream()):
        device.synchronize()
    with pytest.raises(AttributeError):
        device.caching_allocator_alloc  # noqa: B018 (an attribute verl does not use must not be a silent no-op)


# --- the patches -------------------------------------------------------------------------------


def test_each_patch_says_why():
    assert [patch.name for patch in PATCHES] == ["gloo process group", "unpinned ref offload"]
    assert all(len(patch.why) > 60 for patch in PATCHES)


def test_patch_refuses_to_run_after_verl_bound_its_target():
    patch = VerlPatch("test", "why", "verl.utils.distributed", "initialize_global_process_group_ray", ("ktae",), str)
    with pytest.raises(RuntimeError, match="must run before verl imports ktae"):
        patch.apply()


def test_patch_refuses_a_verl_without_its_target():
    patch = VerlPatch("test", "why", "verl.utils.distributed", "no_such_function", (), str)
    with pytest.raises(RuntimeError, match=r"verl 0\.9\.1 has no verl\.utils\.distributed\.no_such_function"):
        patch.apply()


PATCHED_PROCESS = """
import os, sys
import verl
from verl.utils.device import get_device_id, get_device_name, get_torch_device
from verl.workers.engine_workers import initialize_global_process_group_ray
from verl.workers.engine.fsdp import transformer_impl
from verl.models.transformers import monkey_patch
from verl.utils import model as verl_model
from transformers import Qwen2Config, Qwen2ForCausalLM
import torch.distributed as dist

print("ref offload pins", transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory, flush=True)
print("trl", monkey_patch.is_trl_available(), verl_model.is_trl_available(), flush=True)
tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1))
monkey_patch.apply_monkey_patch(tiny)  # what verl does to every model it builds
print("model built", flush=True)
print("device", get_device_name(), get_device_id(), type(get_torch_device()).__name__, flush=True)
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
initialize_global_process_group_ray()  # verl's call, with no backend: gloo on CPU
print("process group", dist.get_backend(), dist.get_world_size())
dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def patched_processes(repo_root):
    """A Ray process of a CPU run (VERL_PLATFORM=cpu, the CPU module first), and one of a GPU run."""
    base = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    cpu_env = {**base, **CPU_ENV, "VERL_USE_EXTERNAL_MODULES": f"{WORKER_MODULE},{PLUGIN_MODULE}"}
    gpu_env = {**base, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", PATCHED_PROCESS, str(_free_port())],
            env=env,
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, env in (("cpu", cpu_env), ("gpu", gpu_env))
    }
    return finish(procs)


def test_cpu_runs_ray_processes_get_the_platform_and_the_patches(patched_processes):
    returncode, stdout, stderr = patched_processes["cpu"]
    assert returncode == 0, stderr[-3000:]
    assert "device cpu cpu CPUDeviceModule" in stdout
    assert "ref offload pins False" in stdout
    assert "trl False False" in stdout
    assert "model built" in stdout
    assert "process group cpu:gloo 1" in stdout


def test_other_processes_keep_verls_own_code(patched_processes):
    """Without the CPU mode's environment nothing is patched (and on a machine without CUDA, verl's
    own device calls then fail); the plugin's value-head probe holds in every process, so verl builds
    its models beside TRL 1.x."""
    _, stdout, _ = patched_processes["gpu"]
    assert "ref offload pins True" in stdout
    assert f"trl {value_head_available()} {value_head_available()}" in stdout
    assert "model built" in stdout
    assert "device cpu" not in stdout


# --- the launcher, as a user runs it ----------------------------------------------------------


@pytest.fixture(scope="module")
def launched(repo_root):
    """`python -m ktae.integrations.verl` with each config the CPU mode refuses, run together."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    cases = {name: BAD_CPU_RUNS[name] for name in ("vllm rollout", "FSDP1", "flash attention")}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "ktae.integrations.verl", *CPU_RUN, *overrides],
            env={**env, "HYDRA_FULL_ERROR": "0"},
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (overrides, _) in cases.items()
    }
    return finish(procs)


@pytest.mark.parametrize("case", ["vllm rollout", "FSDP1", "flash attention"])
def test_launcher_refuses_a_config_the_cpu_mode_cannot_run_before_ray_starts(launched, case):
    returncode, stdout, stderr = launched[case]
    assert returncode != 0
    assert BAD_CPU_RUNS[case][1] in stderr
    assert "ray init" not in stdout.lower()
