"""ktae: Key-token Advantage Estimation for GRPO and DAPO.

The estimator core is framework-agnostic (torch tensors in, torch tensors out, CPU or GPU);
trainer integrations live under ``ktae.integrations``. The names below are imported on first use,
so ``import ktae.rewards`` (in answer-checking and verl reward workers) does not load torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see (``X as X``: re-exported); ``__getattr__`` imports at run time
    from ktae.core.config import KTAEConfig as KTAEConfig
    from ktae.core.estimator import (
        KeyTokenValues as KeyTokenValues,
        TokenStatistics as TokenStatistics,
        collect_token_statistics as collect_token_statistics,
        compute_key_token_values as compute_key_token_values,
        compute_ktae_advantages as compute_ktae_advantages,
        compute_ktae_advantages_with_values as compute_ktae_advantages_with_values,
        key_token_values_from_statistics as key_token_values_from_statistics,
        merge_token_statistics as merge_token_statistics,
    )
    from ktae.core.rollout import (
        ROLLOUT_ADVANTAGES as ROLLOUT_ADVANTAGES,
        compute_rollout_advantages as compute_rollout_advantages,
        get_rollout_advantage as get_rollout_advantage,
        register_rollout_advantage as register_rollout_advantage,
    )

__version__ = "0.1.0"

_EXPORTS = {
    "KTAEConfig": "ktae.core.config",
    "KeyTokenValues": "ktae.core.estimator",
    "TokenStatistics": "ktae.core.estimator",
    "collect_token_statistics": "ktae.core.estimator",
    "compute_key_token_values": "ktae.core.estimator",
    "compute_ktae_advantages": "ktae.core.estimator",
    "compute_ktae_advantages_with_values": "ktae.core.estimator",
    "key_token_values_from_statistics": "ktae.core.estimator",
    "merge_token_statistics": "ktae.core.estimator",
    "ROLLOUT_ADVANTAGES": "ktae.core.rollout",
    "compute_rollout_advantages": "ktae.core.rollout",
    "get_rollout_advantage": "ktae.core.rollout",
    "register_rollout_advantage": "ktae.core.rollout",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ktae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
