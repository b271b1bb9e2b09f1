"""CPU mode of the launcher: verl's own training loop on a machine without accelerators.

``python -m ktae.integrations.verl trainer.device=cpu actor_rollout_ref.model.path=... ...`` runs the
whole loop of verl 0.9.1 (Ray driver, agent loop, reward, old/ref log-probs, advantage, FSDP2 actor
update over gloo, weight sync) on CPU processes, to try recipes and debug configs with a small local
model. It is not a way to train real models fast. What it needs, and where it lives:

- settings where verl's defaults are a GPU machine's (`CPU_DEFAULTS`: the transformers rollout,
  FSDP2, one rank, one process where verl starts several), set unless the command line names them;

- a ``cpu`` platform registered with verl's ``PlatformRegistry`` (gloo, the CPU's RNG, no device
  memory) and chosen in every Ray process by verl's ``VERL_PLATFORM=cpu``;
- a transformers-backed rollout registered with verl's rollout registries as ``hf``
  (:mod:`ktae.integrations.verl.cpu_rollout`); verl 0.9.1 ships rollouts for vLLM, SGLang and
  TensorRT-LLM only;
- verl's FSDP engine, which verl registers for cuda/npu only and which runs on CPU under FSDP2:
  ``VERL_ENGINE_DEVICE=cuda``, verl's own override of the engine lookup;
- two patches of verl 0.9.1 internals (`PATCHES`), applied only in this mode's Ray processes,
  and only on that verl version (the TRL value-head probe, which GPU runs need too, is the plugin's
  own: :mod:`ktae.integrations.verl.compat`);
- Ray settings: logical CPUs for the actors of verl that keep one (a 2-core laptop would otherwise
  leave them waiting forever) and one logical GPU per FSDP rank (verl's resource pools ask for GPUs).

:func:`fill_cpu_defaults` and :func:`prepare_cpu_config` complete and check the config in the launching process,
before Ray starts; this module, named first in the Ray processes' ``VERL_USE_EXTERNAL_MODULES``,
registers the platform and the rollout and applies the patches in each of them on ``import verl``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import sys
from collections.abc import Callable, Collection, Mapping
from contextlib import contextmanager

import torch
import verl
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.fsdp import CPUOffloadPolicy
from verl.plugin.platform import PlatformBase, PlatformRegistry
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplicaRegistry

#: ``trainer.device`` value that turns the mode on.
CPU_DEVICE = "cpu"
#: ``actor_rollout_ref.rollout.name`` of the transformers rollout.
CPU_ROLLOUT = "hf"
#: The verl release whose internals `PATCHES` change.
SUPPORTED_VERL = "0.9.1"
#: Imported by every Ray process of a CPU run, first in ``VERL_USE_EXTERNAL_MODULES``.
WORKER_MODULE = __name__
#: The environment of a CPU run's Ray processes (besides ``VERL_USE_EXTERNAL_MODULES``).
CPU_ENV = {"VERL_PLATFORM": CPU_DEVICE, "VERL_ENGINE_DEVICE": "cuda"}
#: FSDP1 needs device parameters (``sync_module_states``); FSDP2 runs on CPU.
CPU_STRATEGY = "fsdp2"
CPU_ATTENTION = "sdpa"
#: The rollout's log-prob modes it reproduces (vLLM's names): after or before temperature and top-k/p.
CPU_LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
#: What ``trainer.device=cpu`` sets unless the command line names the key: what the mode needs where
#: verl's defaults are a GPU machine's (a rollout name to choose, FSDP1, 8 ranks, tensor-parallel
#: rollouts of 2), and one process where verl starts several, each of which spends seconds of a
#: laptop's CPU importing verl; inductor compiles for longer than a small model computes (the
#: reference model follows the actor's use_torch_compile).
CPU_DEFAULTS: dict[str, object] = {
    "actor_rollout_ref.rollout.name": CPU_ROLLOUT,
    "actor_rollout_ref.actor.strategy": CPU_STRATEGY,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "trainer.n_gpus_per_node": 1,
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "reward.num_workers": 1,
    "actor_rollout_ref.actor.use_torch_compile": False,
}
#: Ray CPUs verl's actors keep: the TransferQueue controller and each storage unit one, each FSDP
#: rank's placement-group bundle three (verl's ResourcePoolManager.max_colocate_count). Its other
#: actors (TaskRunner, agent-loop and reward workers, load balancer) keep none once placed.
TRANSFER_QUEUE_CONTROLLER_CPUS = 1
CPUS_PER_RANK = 3


# --- the platform --------------------------------------------------------------------------------


class CPUDeviceModule:
    """What verl calls on ``torch.cuda`` through ``get_torch_device()``, for a process without accelerators.

    Streams, events and device queries are ``torch.cpu``'s; device-memory queries report nothing
    allocated and the host's memory; RNG calls act on the CPU generator. Anything else raises
    AttributeError, so a verl call this mode does not cover fails by name instead of doing nothing.
    """

    is_available = staticmethod(torch.cpu.is_available)
    device_count = staticmethod(torch.cpu.device_count)
    current_device = staticmethod(torch.cpu.current_device)
    set_device = staticmethod(torch.cpu.set_device)
    synchronize = staticmethod(torch.cpu.synchronize)
    current_stream = staticmethod(torch.cpu.current_stream)
    stream = staticmethod(torch.cpu.stream)
    Stream = torch.cpu.Stream
    Event = torch.cpu.Event
    get_rng_state = staticmethod(torch.get_rng_state)
    set_rng_state = staticmethod(torch.set_rng_state)
    manual_seed = staticmethod(torch.manual_seed)
    manual_seed_all = staticmethod(torch.manual_seed)

    @staticmethod
    def empty_cache() -> None:
        """Nothing is cached outside the host's allocator."""

    @staticmethod
    def ipc_collect() -> None:
        """No device IPC handles exist."""

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device=None) -> None:
        """There is no device memory to cap."""

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    @staticmethod
    def memory_reserved(device=None) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(device=None) -> int:
        return 0

    @staticmethod
    def max_memory_reserved(device=None) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        """No peaks are tracked."""

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        """(available, total) bytes of host memory."""
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @staticmethod
    def get_device_name(device=None) -> str:
        return platform.processor() or CPU_DEVICE


@PlatformRegistry.register(platform=CPU_DEVICE)
class CPUPlatform(PlatformBase):
    """verl's platform for CPU processes: gloo collectives, the CPU's RNG, no device memory.

    Never auto-detected: ``VERL_PLATFORM=cpu`` selects it (the CPU mode sets it for every Ray process).
    Ray placement still asks for ``GPU`` resources, because verl's resource pools always do; the
    CPU mode declares one logical GPU per FSDP rank.
    """

    _device_module = CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return CPU_DEVICE

    @property
    def vendor_name(self) -> str:
        return CPU_DEVICE

    @property
    def device_module(self):
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # chosen by name only: a GPU box without a working driver must not fall back to it

    def current_device(self):
        # verl moves tensors to get_device_id(); an int there would mean cuda:<int>.
        return torch.device(CPU_DEVICE)

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        """One device: nothing to select."""

    def synchronize(self, device_index: int | None = None) -> None:
        """CPU work is synchronous."""

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """The CUDA caching allocator's settings do not apply."""

    def empty_cache(self) -> None:
        """Nothing is cached outside the host's allocator."""

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the logical GPUs; torch's CPU build ignores it

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        """No device profiler."""

    def profiler_stop(self) -> None:
        """No device profiler."""

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


# --- the rollout -------------------------------------------------------------------------------


def _load_replica():
    from ktae.integrations.verl.cpu_rollout import TransformersReplica

    return TransformersReplica


# verl's registries of rollout engines: the replica (the servers the agent loop sends requests to)
# and the adapter in each actor worker (weight sync). Loaded lazily, as verl loads its own engines.
RolloutReplicaRegistry.register(CPU_ROLLOUT, _load_replica)
_ROLLOUT_REGISTRY[(CPU_ROLLOUT, "async")] = "ktae.integrations.verl.cpu_rollout.TransformersServerAdapter"


# --- the patches -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerlPatch:
    """One change to a verl 0.9.1 internal, and why the CPU mode needs it.

    Replaces ``module.attribute`` with ``make(original)``. The modules in ``importers`` bind the
    attribute by name when they are imported, so the patch must run before them: the CPU mode
    applies it on ``import verl``, and refuses by name if one was imported earlier.
    """

    name: str
    why: str
    module: str
    attribute: str
    importers: tuple[str, ...]
    make: Callable[[Callable], object]

    def apply(self) -> None:
        early = [name for name in self.importers if name in sys.modules]
        if early:
            raise RuntimeError(
                f"CPU mode patch {self.name!r} must run before verl imports {', '.join(early)}: name "
                f"{WORKER_MODULE} first in VERL_USE_EXTERNAL_MODULES"
            )
        module = importlib.import_module(self.module)
        original = getattr(module, self.attribute, None)
        if original is None:
            raise RuntimeError(
                f"CPU mode patch {self.name!r}: verl {verl.__version__} has no {self.module}.{self.attribute} "
                f"(the patch is written for verl {SUPPORTED_VERL})"
            )
        setattr(module, self.attribute, self.make(original))


def _gloo_only(initialize: Callable) -> Callable:
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return initialize(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    return initialize_global_process_group_ray


@dataclasses.dataclass
class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
    """FSDP2's CPU offload without pinned host memory, which needs an accelerator to pin for."""

    def __post_init__(self) -> None:
        self.pin_memory = False


def _unpinned(policy: Callable) -> type:
    if policy is not CPUOffloadPolicy:
        raise RuntimeError(f"verl.utils.fsdp_utils.CPUOffloadPolicy is {policy!r}, not torch's FSDP2 CPUOffloadPolicy")
    return UnpinnedCPUOffloadPolicy


PATCHES = (
    VerlPatch(
        name="gloo process group",
        why="verl joins the CPU's and the device's backends as 'cpu:gloo,<device>:<backend>', which is "
        "'cpu:gloo,cpu:gloo' on CPU and torch rejects the repeated device; the CPU mode uses 'cpu:gloo'",
        module="verl.utils.distributed",
        attribute="initialize_global_process_group_ray",
        importers=("verl.workers.engine_workers",),
        make=_gloo_only,
    ),
    VerlPatch(
        name="unpinned ref offload",
        why="verl's FSDP2 engine offloads the reference model with CPUOffloadPolicy(pin_memory=True), and "
        "pinning host memory needs an accelerator",
        module="verl.utils.fsdp_utils",
        attribute="CPUOffloadPolicy",
        importers=("verl.workers.engine.fsdp.transformer_impl", "verl.workers.fsdp_workers"),
        make=_unpinned,
    ),
)


def check_verl_version(version: str | None = None) -> None:
    """Raise ValueError unless verl is the release `PATCHES` are written for."""
    version = verl.__version__ if version is None else version
    if version != SUPPORTED_VERL:
        names = ", ".join(patch.name for patch in PATCHES)
        raise ValueError(
            f"trainer.device=cpu patches verl {SUPPORTED_VERL} internals ({names}); the installed verl is "
            f"{version}. Install verl=={SUPPORTED_VERL} (pip install -e '.[verl]') for the CPU mode"
        )


def apply_patches() -> None:
    """Apply `PATCHES` in this process (a Ray process of a CPU run), once verl's version is checked."""
    try:
        check_verl_version()
    except ValueError as error:
        raise RuntimeError(str(error)) from None
    for patch in PATCHES:
        patch.apply()


# --- the launcher's part -----------------------------------------------------------------------


def is_cpu_run(config: DictConfig) -> bool:
    return config.trainer.get("device") == CPU_DEVICE


def _value(config: DictConfig, key: str):
    """The value at ``key``, None when unset (``???``) or absent."""
    return OmegaConf.select(config, key, default=None, throw_on_missing=False)


def _check(config: DictConfig) -> None:
    # imported here: verl.trainer.ppo.utils pulls in datasets, which the Ray processes importing this
    # module do not need
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    check_verl_version()
    rollout = _value(config, "actor_rollout_ref.rollout.name")
    if rollout != CPU_ROLLOUT:
        raise ValueError(
            f"trainer.device=cpu generates with the transformers rollout: set "
            f"actor_rollout_ref.rollout.name={CPU_ROLLOUT} (got {rollout!r})"
        )
    roles = ["actor"] + (["ref"] if need_reference_policy(config) else [])
    for role in roles:
        strategy = _value(config, f"actor_rollout_ref.{role}.strategy")
        if strategy != CPU_STRATEGY:
            raise ValueError(
                f"trainer.device=cpu trains with FSDP2: set actor_rollout_ref.actor.strategy={CPU_STRATEGY} "
                f"(actor_rollout_ref.{role}.strategy is {strategy!r}; FSDP1 cannot run without an accelerator)"
            )
    if need_critic(config):
        raise ValueError(
            "trainer.device=cpu trains without a critic: choose an advantage estimator that needs none "
            f"(ktae, grpo, rloo, ...), not algorithm.adv_estimator={config.algorithm.adv_estimator}"
        )
    attention = _value(config, "actor_rollout_ref.model.override_config.attn_implementation")
    if attention is not None and "flash" in str(attention):
        raise ValueError(
            f"trainer.device=cpu cannot run {attention} (a GPU kernel): set "
            f"actor_rollout_ref.model.override_config.attn_implementation={CPU_ATTENTION} (or eager)"
        )
    if _value(config, "actor_rollout_ref.model.lora_rank"):
        raise ValueError("trainer.device=cpu syncs full weights to its rollout: LoRA (lora_rank > 0) is not supported")
    if config.trainer.nnodes != 1 or config.trainer.n_gpus_per_node < 1:
        raise ValueError(
            "trainer.device=cpu runs on one machine, trainer.n_gpus_per_node FSDP ranks (CPU processes): set "
            f"trainer.nnodes=1 and trainer.n_gpus_per_node >= 1 (got {config.trainer.nnodes} and "
            f"{config.trainer.n_gpus_per_node})"
        )
    rollout = config.actor_rollout_ref.rollout
    replica = rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size
    if config.trainer.n_gpus_per_node % replica:
        raise ValueError(
            f"trainer.device=cpu runs one rollout process per replica of tensor x data x pipeline parallel "
            f"size {replica} ranks, which must divide trainer.n_gpus_per_node={config.trainer.n_gpus_per_node}: "
            "set actor_rollout_ref.rollout.tensor_model_parallel_size=1 for one per rank"
        )
    mode = config.trainer.v1.trainer_mode
    if mode != "sync":
        raise ValueError(
            f"trainer.device=cpu runs verl's sync trainer: set trainer.v1.trainer_mode=sync (got {mode!r})"
        )
    backend = _value(config, "actor_rollout_ref.rollout.checkpoint_engine.backend")
    if backend != "naive":
        raise ValueError(
            "trainer.device=cpu syncs weights inside the actor processes: set "
            f"actor_rollout_ref.rollout.checkpoint_engine.backend=naive (got {backend!r})"
        )
    logprobs_mode = _value(config, "actor_rollout_ref.rollout.logprobs_mode")
    if logprobs_mode not in CPU_LOGPROBS_MODES:
        raise ValueError(
            f"trainer.device=cpu's rollout gives log-probs in modes {', '.join(CPU_LOGPROBS_MODES)}: "
            f"actor_rollout_ref.rollout.logprobs_mode={logprobs_mode!r} is not one of them"
        )


def fill_cpu_defaults(config: DictConfig, command_line_keys: Collection[str]) -> dict[str, object]:
    """Set each of `CPU_DEFAULTS` that ``command_line_keys`` does not name; returns those set.

    A key the command line names keeps its value, and :func:`prepare_cpu_config` refuses it by name
    if the mode cannot run it (``actor_rollout_ref.actor.strategy=fsdp``, ``rollout.name=vllm``).
    """
    filled = {key: value for key, value in CPU_DEFAULTS.items() if key not in command_line_keys}
    with open_dict(config):
        for key, value in filled.items():
            OmegaConf.update(config, key, value, merge=False)
    return filled


def logical_cpus(config: DictConfig) -> int:
    """Ray CPUs a CPU run needs: what verl's actors keep, whatever the host has (a count of real
    cores would leave some of them waiting forever)."""
    storage_units = _value(config, "transfer_queue.backend.SimpleStorage.num_data_storage_units") or 0
    return TRANSFER_QUEUE_CONTROLLER_CPUS + storage_units + CPUS_PER_RANK * config.trainer.n_gpus_per_node


def prepare_cpu_config(config: DictConfig, runtime_env_vars: Mapping[str, str]) -> dict[str, str]:
    """Check a ``trainer.device=cpu`` config and add the mode's settings; raises ValueError.

    Sets ``sdpa`` attention when the config names none (verl's default is FlashAttention 2), the
    logical CPUs and GPUs of the local Ray cluster when unset (fewer than the run needs are refused),
    and returns the environment the Ray processes need (`CPU_ENV`); ``runtime_env_vars`` are the
    run's own, refused if they contradict it.
    """
    _check(config)
    for name, value in CPU_ENV.items():
        if runtime_env_vars.get(name, value) != value:
            raise ValueError(
                f"trainer.device=cpu sets {name}={value} for the Ray processes; the run's runtime_env sets "
                f"{name}={runtime_env_vars[name]}"
            )
    ray_init = config.ray_kwargs.ray_init
    needed = {"num_cpus": logical_cpus(config), "num_gpus": config.trainer.n_gpus_per_node}
    for name, count in needed.items():
        if ray_init.get(name) is not None and ray_init[name] < count:
            raise ValueError(
                f"trainer.device=cpu needs {count} logical {name[4:-1].upper()}s in Ray for this config, or "
                f"verl's actors wait for them forever: ray_kwargs.ray_init.{name}={ray_init[name]} is too few "
                "(leave it unset)"
            )
    with open_dict(config):
        override = config.actor_rollout_ref.model.override_config
        if override.get("attn_implementation") is None:
            override.attn_implementation = CPU_ATTENTION
        for name, count in needed.items():
            if ray_init.get(name) is None:
                ray_init[name] = count
    return dict(CPU_ENV)


if os.environ.get("VERL_PLATFORM") == CPU_DEVICE:  # a Ray process of a CPU run, importing verl
    apply_patches()
