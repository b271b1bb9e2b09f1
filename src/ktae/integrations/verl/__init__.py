"""KTAE for stock verl (0.9.1): ``algorithm.adv_estimator=ktae`` with ``algorithm.ktae.*`` options.

The advantage is verl's own estimator ``algorithm.ktae.base`` (grpo by default; any registered one
whose inputs KTAE can hand on) plus the key-token bonus on the response tokens.

Importing this package registers the ``ktae`` advantage estimator (verl imports it in every process
through the ``verl.plugins`` entry point) and makes verl's TRL probe ask for the value-head class
verl imports, which TRL 1.x no longer has (:mod:`ktae.integrations.verl.compat`). Train with
``python -m ktae.integrations.verl <verl overrides>``, which runs verl's PPO trainer with the KTAE
trainers of :mod:`ktae.integrations.verl.trainer` (they hand the response token ids to the
estimator). See docs/verl.md.
"""

from ktae.integrations.verl.compat import install as _install_value_head_probe
from ktae.integrations.verl.config import (
    KTAE_ESTIMATOR,
    KTAE_TRAINER_MODES,
    base_estimator,
    ktae_base_from_algorithm,
    ktae_config_from_algorithm,
    validate_ktae_run,
)
from ktae.integrations.verl.estimator import (
    compute_base_advantage,
    compute_ktae_outcome_advantage,
    response_tokens,
)

# TRL 1.x beside verl: verl's value-head probe must not report a class TRL no longer has.
_install_value_head_probe()

__all__ = [
    "KTAE_ESTIMATOR",
    "KTAE_TRAINER_MODES",
    "base_estimator",
    "compute_base_advantage",
    "compute_ktae_outcome_advantage",
    "ktae_base_from_algorithm",
    "ktae_config_from_algorithm",
    "response_tokens",
    "validate_ktae_run",
]
