"""ktae: Key-token Advantage Estimation for GRPO and DAPO.

The estimator core is framework-agnostic (torch tensors in, torch tensors out, CPU or GPU);
trainer integrations live under ``ktae.integrations``.
"""

from ktae.core.config import KTAEConfig
from ktae.core.estimator import (
    KeyTokenValues,
    TokenStatistics,
    collect_token_statistics,
    compute_key_token_values,
    compute_ktae_advantages,
    key_token_values_from_statistics,
    merge_token_statistics,
)
from ktae.core.rollout import ROLLOUT_ADVANTAGES, compute_rollout_advantages

__version__ = "0.1.0"

__all__ = [
    "KTAEConfig",
    "KeyTokenValues",
    "ROLLOUT_ADVANTAGES",
    "TokenStatistics",
    "collect_token_statistics",
    "compute_key_token_values",
    "compute_ktae_advantages",
    "compute_rollout_advantages",
    "key_token_values_from_statistics",
    "merge_token_statistics",
    "__version__",
]
