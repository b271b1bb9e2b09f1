"""``python -m ktae.integrations.verl <verl overrides>``: verl's PPO/GRPO/DAPO training with KTAE.

The same Hydra config and overrides as ``python -m verl.trainer.main_ppo`` (verl's ppo_trainer config,
plus ``algorithm.ktae.*``). With ``algorithm.adv_estimator=ktae`` the KTAE settings are checked here,
before Ray starts, and the run uses the ``ktae_<mode>`` trainer of the chosen
``trainer.v1.trainer_mode``; any other estimator runs verl's trainer unchanged (the baselines).
DAPO is the same trainer with ``algorithm.filter_groups``, clip-higher and the dapo reward manager
(recipes/verl/dapo.sh): verl 0.9.1 runs DAPO in its main trainer.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from ktae.integrations.verl.config import KTAE_TRAINER_MODES, validate_ktae_run

# Imported by every Ray process that imports verl (belt and braces beside the verl.plugins entry
# point and KTAETaskRunner): registers the ktae estimator.
PLUGIN_MODULE = "ktae.integrations.verl"


def prepare_config(config: DictConfig) -> None:
    """Check the config (KTAE's settings and verl's own) and point it at the KTAE trainer; raises ValueError.

    Runs in the launching process, before Ray: a bad setting fails at start-up, not mid-run.
    """
    if not config.trainer.get("use_v1", True):
        raise ValueError(
            "python -m ktae.integrations.verl runs verl's v1 trainer; remove trainer.use_v1=False "
            "(verl's legacy trainer is deprecated)"
        )
    ktae_config = validate_ktae_run(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    with open_dict(config):
        runtime_env = config.ray_kwargs.ray_init.runtime_env
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
        env_vars = runtime_env.env_vars
        modules = [m for m in env_vars.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
        env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join(dict.fromkeys([*modules, PLUGIN_MODULE]))
        mode = config.trainer.v1.trainer_mode
        if ktae_config is not None and mode in KTAE_TRAINER_MODES:
            config.trainer.v1.trainer_mode = KTAE_TRAINER_MODES[mode]


@hydra.main(config_path="conf", config_name="ktae_trainer", version_base=None)
def main(config: DictConfig) -> None:
    auto_set_device(config)
    prepare_config(config)
    # Imported here: the trainer module pulls in verl's whole v1 trainer stack.
    from ktae.integrations.verl.trainer import KTAETaskRunner

    run_ppo(config, task_runner_class=KTAETaskRunner)
