"""KTAE options in a verl config (``algorithm.ktae.*``) and the start-up checks of a KTAE run.

Everything here is plain OmegaConf: the launcher calls :func:`validate_ktae_run` before Ray starts,
so a bad setting fails in seconds, not after the first rollout.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf
from verl.trainer.ppo import core_algos

from ktae import KTAEConfig
from ktae.run_folder import KTAESettings

KTAE_ESTIMATOR = "ktae"
DEFAULT_BASE = "grpo"

# What verl passes to any registered advantage estimator (ray_trainer.compute_advantage), and so what the
# ktae estimator receives and hands on to its base; grpo also gets norm_adv_by_std_in_grpo.
BASE_INPUTS = frozenset({"token_level_rewards", "response_mask", "index", "config"})
# Inputs verl hands only to the estimators named here, by name: under adv_estimator=ktae they never arrive.
NAMED_INPUTS = {
    "gae": ("values", "gamma", "lam"),
    "gdpo": ("non_tensor_batch", "batch"),
    "optimal_token_baseline": ("sum_pi_squared", "old_log_probs", "rollout_is_weights"),
    "tir_optimal_token_baseline": ("sum_pi_squared", "old_log_probs", "rollout_is_weights"),
}
# KTAEConfig options that only shape the core's own rollout-level base, which verl's estimator replaces.
CORE_BASE_OPTIONS = ("rollout_advantage", "epsilon")

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
        section = OmegaConf.to_container(section, resolve=True)  # a dict, for a DictConfig
    if isinstance(section, Mapping):
        return dict(section)
    raise TypeError(f"algorithm.ktae must be a mapping of KTAE options, got {section!r}")


def _algorithm_options(algorithm) -> dict:
    if algorithm is None:
        raise ValueError("adv_estimator=ktae needs the verl algorithm config (config=...), got None")
    getter = algorithm.get if hasattr(algorithm, "get") else lambda key, default=None: getattr(algorithm, key, default)
    return _options(getter("ktae", None))


def ktae_config_from_algorithm(algorithm, ignore_token_ids: Iterable[int] = ()) -> KTAEConfig:
    """The KTAEConfig of the bonus, from a verl ``algorithm`` config (DictConfig, dict or verl's AlgoConfig).

    ``algorithm.ktae.ignore_token_ids`` left null takes ``ignore_token_ids`` (the tokenizer's pad and
    end-of-sequence ids). The rollout-level part is verl's estimator ``algorithm.ktae.base``, so the
    config's own base is "none" (the bonus alone). Unknown keys raise a ValueError naming them.
    """
    options = _algorithm_options(algorithm)
    options.pop("base", None)
    core_only = [name for name in CORE_BASE_OPTIONS if options.get(name) is not None]
    if core_only:
        raise ValueError(
            f"algorithm.ktae.{core_only[0]} does not apply to verl: the rollout-level advantage is verl's own "
            "estimator, named by algorithm.ktae.base (grpo, rloo, reinforce_plus_plus, ...)"
        )
    if options.get("ignore_token_ids") is None:
        options["ignore_token_ids"] = tuple(ignore_token_ids)
    options["rollout_advantage"] = "none"
    options.pop("epsilon", None)
    return KTAEConfig.from_dict(options)


def ktae_base_from_algorithm(algorithm) -> str:
    """The verl advantage estimator KTAE adds its bonus to: ``algorithm.ktae.base``, null = grpo
    (which follows ``algorithm.norm_adv_by_std_in_grpo``, as in verl)."""
    base = _algorithm_options(algorithm).get("base")
    if base is None:
        return DEFAULT_BASE
    if not isinstance(base, str):
        raise ValueError(f"algorithm.ktae.base must be the name of a verl advantage estimator, got {base!r}")
    return base


# verl's rollout-level estimators that equal one of KTAE's bases (tests/integrations/verl/test_verl_config.py
# checks them against verl's own): its grpo forms with norm_adv_by_std_in_grpo (Dr. GRPO without), and
# its rloo forms, which scale s - mean_g by n/(n-1): s minus the mean of the other rollouts. Equal on
# groups of two or more, which is every group of a KTAE run (rollout.n >= 2); a group of one, which
# KTAE gives mean s, gets mean 0 from verl's Dr. GRPO and advantage 0 from its rloo_vectorized.
KTAE_BASE_OF_VERL = {"grpo": "grpo", "grpo_vectorized": "grpo", "rloo": "rloo", "rloo_vectorized": "rloo"}


def ktae_settings_from_config(config: DictConfig, ignore_token_ids: Iterable[int] = ()) -> KTAESettings:
    """The KTAE settings a verl run trains with (`ktae.run_folder.KTAESettings`), for reports to recompute
    its logged rollouts' advantages: the ``algorithm.ktae`` options, and as base the KTAE equal of the
    rollout-level estimator (``algorithm.ktae.base`` under KTAE, else ``algorithm.adv_estimator``).

    verl's grpo, its Dr. GRPO form and rloo have a KTAE equal; for any other estimator ``exact_base``
    is False and the estimator names KTAE's grpo, the nearest. ``ignore_token_ids`` as in
    `ktae_config_from_algorithm`.
    """
    algorithm = config.algorithm
    ktae = algorithm.adv_estimator == KTAE_ESTIMATOR
    verl_base = ktae_base_from_algorithm(algorithm) if ktae else str(algorithm.adv_estimator)
    description = f"verl's {verl_base}"
    exact = verl_base in KTAE_BASE_OF_VERL
    if not exact:
        verl_base = DEFAULT_BASE
    base = KTAE_BASE_OF_VERL[verl_base]
    if exact and base == "grpo" and not algorithm.get("norm_adv_by_std_in_grpo", True):
        base, description = "dr_grpo", f"{description} (norm_adv_by_std_in_grpo=False)"
    # verl's estimator divides by std + its own default epsilon, which no config option sets
    epsilon = inspect.signature(core_algos.get_adv_estimator_fn(verl_base)).parameters["epsilon"].default
    estimator = dataclasses.replace(
        ktae_config_from_algorithm(algorithm, ignore_token_ids), rollout_advantage=base, epsilon=epsilon
    )
    return KTAESettings(ktae=ktae, estimator=estimator, rollout_advantage=description, exact_base=exact)


def missing_base_inputs(name: str, estimator: Callable, supplied: Iterable[str] = ()) -> list[str]:
    """Inputs verl's estimator ``name`` needs that KTAE cannot hand it (``supplied``: extra ones at hand)."""
    available = BASE_INPUTS | {"norm_adv_by_std_in_grpo"} | set(supplied)
    required = [
        p.name
        for p in inspect.signature(estimator).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    named = [n for n in NAMED_INPUTS.get(name, ()) if n not in supplied]
    return list(dict.fromkeys([n for n in required if n not in available] + named))


def base_estimator(name: str, supplied: Iterable[str] = ()) -> Callable:
    """verl's registered advantage estimator ``name``, checked to be usable under KTAE; raises ValueError.

    The error names the estimators verl knows, or the inputs ``name`` needs that KTAE cannot supply.
    """
    if name == KTAE_ESTIMATOR:
        raise ValueError("algorithm.ktae.base=ktae: the base is the rollout-level estimator KTAE adds to, not KTAE")
    registry = core_algos.ADV_ESTIMATOR_REGISTRY
    if name not in registry:
        known = ", ".join(n for n in registry if n != KTAE_ESTIMATOR)
        raise ValueError(
            f"algorithm.ktae.base={name}: verl has no advantage estimator {name!r}; registered: {known} "
            "(a plugin's estimator must be imported first: VERL_USE_EXTERNAL_MODULES or a verl.plugins entry point)"
        )
    estimator = registry[name]
    missing = missing_base_inputs(name, estimator, supplied)
    if missing:
        raise ValueError(
            f"algorithm.ktae.base={name}: verl's {name} estimator needs {', '.join(missing)}, which KTAE cannot "
            f"supply (verl hands an estimator under adv_estimator=ktae only {', '.join(sorted(BASE_INPUTS))}); "
            "choose another base"
        )
    return estimator


def _import_external_modules(config: DictConfig) -> None:
    """Import the modules the run names in VERL_USE_EXTERNAL_MODULES, so their estimators are registered here too."""
    env_vars = config.get("ray_kwargs", {}).get("ray_init", {}).get("runtime_env", {}).get("env_vars") or {}
    for module in str(env_vars.get("VERL_USE_EXTERNAL_MODULES", "")).split(","):
        if module.strip():
            importlib.import_module(module.strip())


def validate_ktae_run(config: DictConfig) -> KTAEConfig | None:
    """Check a whole verl config for a KTAE run; returns its KTAEConfig, or None for other estimators.

    Raises ValueError for: unknown or invalid ``algorithm.ktae`` keys, a base verl does not know or whose
    inputs KTAE cannot supply, one rollout per prompt (``actor_rollout_ref.rollout.n < 2``: KTAE
    compares the rollouts of a prompt) and v1 trainer modes without a KTAE trainer.
    """
    if config.algorithm.adv_estimator != KTAE_ESTIMATOR:
        return None
    ktae_config = ktae_config_from_algorithm(config.algorithm)
    _import_external_modules(config)
    base_estimator(ktae_base_from_algorithm(config.algorithm))
    n = config.actor_rollout_ref.rollout.n
    if n < 2:
        raise ValueError(
            f"algorithm.adv_estimator=ktae needs several rollouts per prompt to compare, got "
            f"actor_rollout_ref.rollout.n={n}; set actor_rollout_ref.rollout.n to 2 or more (the paper uses 16)"
        )
    mode = config.trainer.v1.trainer_mode
    if mode not in KTAE_TRAINER_MODES and mode not in KTAE_TRAINER_MODES.values():
        raise ValueError(
            "algorithm.adv_estimator=ktae supports trainer.v1.trainer_mode in "
            f"{sorted(KTAE_TRAINER_MODES)}, got {mode!r}"
        )
    return ktae_config
