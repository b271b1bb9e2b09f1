"""KTAE options in a verl config (``algorithm.ktae.*``) and the start-up checks of a KTAE run.

Everything here is plain OmegaConf: the launcher calls :func:`validate_ktae_run` before Ray starts,
so a bad setting fails in seconds, not after the first rollout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from ktae import KTAEConfig

KTAE_ESTIMATOR = "ktae"

# verl's v1 trainer modes and the KTAE trainer registered for each (ktae.integrations.verl.trainer).
KTAE_TRAINER_MODES = {
    "sync": "ktae_sync",
    "colocate_async": "ktae_colocate_async",
    "separate_async": "ktae_separate_async",
}


def _options(section) -> dict:
    if section is None:
        return {}
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    if isinstance(section, Mapping):
        return dict(section)
    raise TypeError(f"algorithm.ktae must be a mapping of KTAE options, got {section!r}")


def ktae_config_from_algorithm(algorithm, ignore_token_ids: Iterable[int] = ()) -> KTAEConfig:
    """The KTAEConfig of a verl ``algorithm`` config (DictConfig, dict or verl's AlgoConfig).

    ``algorithm.ktae.ignore_token_ids`` left null takes ``ignore_token_ids`` (the tokenizer's pad and
    end-of-sequence ids); ``rollout_advantage`` left null follows ``algorithm.norm_adv_by_std_in_grpo``
    (grpo when True, dr_grpo when False). Unknown keys raise a ValueError naming them.
    """
    if algorithm is None:
        raise ValueError("adv_estimator=ktae needs the verl algorithm config (config=...), got None")
    getter = algorithm.get if hasattr(algorithm, "get") else lambda key, default=None: getattr(algorithm, key, default)
    options = _options(getter("ktae", None))
    normalize_by_std = bool(getter("norm_adv_by_std_in_grpo", True))
    if options.get("ignore_token_ids") is None:
        options["ignore_token_ids"] = tuple(ignore_token_ids)
    if options.get("rollout_advantage") is None:
        options["rollout_advantage"] = "grpo" if normalize_by_std else "dr_grpo"
    elif options["rollout_advantage"] == "grpo" and not normalize_by_std:
        raise ValueError(
            "algorithm.ktae.rollout_advantage=grpo divides by the group's std, but "
            "algorithm.norm_adv_by_std_in_grpo=False asks not to: set algorithm.ktae.rollout_advantage=dr_grpo "
            "(or leave it null)"
        )
    return KTAEConfig.from_dict(options)


def validate_ktae_run(config: DictConfig) -> KTAEConfig | None:
    """Check a whole verl config for a KTAE run; returns its KTAEConfig, or None for other estimators.

    Raises ValueError for: unknown or invalid ``algorithm.ktae`` keys, one rollout per prompt
    (``actor_rollout_ref.rollout.n < 2``: KTAE compares the rollouts of a prompt) and v1 trainer
    modes without a KTAE trainer.
    """
    if config.algorithm.adv_estimator != KTAE_ESTIMATOR:
        return None
    ktae_config = ktae_config_from_algorithm(config.algorithm)
    n = config.actor_rollout_ref.rollout.n
    if n < 2:
        raise ValueError(
            f"algorithm.adv_estimator=ktae needs several rollouts per prompt to compare, got "
            f"actor_rollout_ref.rollout.n={n}; set actor_rollout_ref.rollout.n to 2 or more (the paper uses 16)"
        )
    mode = config.trainer.v1.trainer_mode
    if mode not in KTAE_TRAINER_MODES and mode not in KTAE_TRAINER_MODES.values():
        raise ValueError(
            f"algorithm.adv_estimator=ktae supports trainer.v1.trainer_mode in {sorted(KTAE_TRAINER_MODES)}, got {mode!r}"
        )
    return ktae_config
