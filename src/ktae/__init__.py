"""ktae: Key-token Advantage Estimation for GRPO and DAPO.

The estimator core is framework-agnostic (torch tensors in, torch tensors out, CPU or GPU);
trainer integrations live under ``ktae.integrations``. The names below are imported on first use,
so ``import ktae.rewards`` (in answer-checking and verl reward workers) does not load torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "KTAEConfig": "ktae.core.config",
    "KeyTokenValues": "ktae.core.estimator",
    "TokenStatistics": "ktae.core.estimator",
    "collect_token_statistics": "ktae.core.estimator",
    "compute_key_token_values": "ktae.core.estimator",
    "compute_ktae_advantages": "ktae.core.estimator",
    "key_token_values_from_statistics": "ktae.core.estimator",
    "merge_token_statistics": "ktae.core.estimator",
    "ROLLOUT_ADVANTAGES": "ktae.core.rollout",
    "compute_rollout_advantages": "ktae.core.rollout",
    "get_rollout_advantage": "ktae.core.rollout",
    "register_rollout_advantage": "ktae.core.rollout",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ktae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
