"""``python -m ktae.integrations.verl <verl overrides>``: verl's PPO/GRPO/DAPO training with KTAE.

The same Hydra config and overrides as ``python -m verl.trainer.main_ppo`` (verl's ppo_trainer config,
plus ``algorithm.ktae.*``). With ``algorithm.adv_estimator=ktae`` the KTAE settings are checked here,
before Ray starts, and the run uses the ``ktae_<mode>`` trainer of the chosen
``trainer.v1.trainer_mode``; any other estimator runs verl's trainer unchanged (the baselines), or,
with ``trainer.ktae_rollouts_dir``, the KTAE trainer, whose advantage step for it is verl's.
DAPO is the same trainer with ``algorithm.filter_groups``, clip-higher and the dapo reward manager
(recipes/verl/dapo.sh): verl 0.9.1 runs DAPO in its main trainer. ``trainer.device=cpu`` runs the
whole loop on CPU processes (:mod:`ktae.integrations.verl.cpu`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from ktae.integrations.verl.config import KTAE_TRAINER_MODES, validate_ktae_run
from ktae.integrations.verl.cpu import WORKER_MODULE, fill_cpu_defaults, is_cpu_run, prepare_cpu_config

# Imported by every Ray process that imports verl (belt and braces beside the verl.plugins entry
# point and KTAETaskRunner): registers the ktae estimator.
PLUGIN_MODULE = "ktae.integrations.verl"
EXTERNAL_MODULES = "VERL_USE_EXTERNAL_MODULES"


def _modules(value) -> list[str]:
    return [module.strip() for module in str(value or "").split(",") if module.strip()]


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys Hydra overrides name (``key=v``, ``+key=v``, ``++key=v``, ``~key``)."""
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def prepare_config(config: DictConfig, overrides: Sequence[str] = ()) -> dict[str, object]:
    """Check the config (KTAE's settings and verl's own) and point it at the KTAE trainer; raises ValueError.

    Runs in the launching process, before Ray: a bad setting fails at start-up, not mid-run. The Ray
    processes import the modules of ``VERL_USE_EXTERNAL_MODULES`` from the launching shell and from
    ``ray_kwargs.ray_init.runtime_env.env_vars``, then this plugin (the runtime env's value replaces
    the shell's in Ray's processes, so both are merged into it); with ``trainer.device=cpu``, the CPU
    mode's settings for the keys ``overrides`` (the command line's) leave unnamed, its module first
    and its environment (:mod:`ktae.integrations.verl.cpu`). Returns the CPU mode's settings it set.
    """
    if not config.trainer.get("use_v1", True):
        raise ValueError(
            "python -m ktae.integrations.verl runs verl's v1 trainer; remove trainer.use_v1=False "
            "(verl's legacy trainer is deprecated)"
        )
    with open_dict(config):
        runtime_env = config.ray_kwargs.ray_init.runtime_env
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    cpu_settings = fill_cpu_defaults(config, override_keys(overrides)) if is_cpu_run(config) else {}
    cpu_env = prepare_cpu_config(config, env_vars) if is_cpu_run(config) else {}
    ktae_config = validate_ktae_run(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    with open_dict(config):
        modules = [
            *([WORKER_MODULE] if cpu_env else []),
            *_modules(os.environ.get(EXTERNAL_MODULES)),
            *_modules(env_vars.get(EXTERNAL_MODULES)),
            PLUGIN_MODULE,
        ]
        env_vars[EXTERNAL_MODULES] = ",".join(dict.fromkeys(modules))
        env_vars.update(cpu_env)
        mode = config.trainer.v1.trainer_mode
        # A baseline runs verl's trainer itself, unless it logs rollouts as KTAE runs do.
        if mode in KTAE_TRAINER_MODES and (ktae_config is not None or config.trainer.get("ktae_rollouts_dir")):
            config.trainer.v1.trainer_mode = KTAE_TRAINER_MODES[mode]
    return cpu_settings


@hydra.main(config_path="conf", config_name="ktae_trainer", version_base=None)
def main(config: DictConfig) -> None:
    if not is_cpu_run(config):  # verl's detection knows no CPU platform and would switch to cuda
        auto_set_device(config)
    cpu_settings = prepare_config(config, HydraConfig.get().overrides.task)
    if cpu_settings:
        print(
            "trainer.device=cpu sets " + " ".join(f"{key}={value}" for key, value in cpu_settings.items()), flush=True
        )
    # Imported here: the trainer module pulls in verl's whole v1 trainer stack.
    from ktae.integrations.verl.trainer import KTAETaskRunner

    run_ppo(config, task_runner_class=KTAETaskRunner)
