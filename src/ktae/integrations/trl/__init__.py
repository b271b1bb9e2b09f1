"""TRL integration: `KTAEGRPOTrainer` (GRPO, DAPO, with or without KTAE) and its `KTAEGRPOConfig`."""

from ktae.integrations.trl.config import JOB_KEYS, KTAEGRPOConfig, config_from_dict, load_config, parse_overrides
from ktae.integrations.trl.trainer import KTAEGRPOTrainer, token_pieces

__all__ = [
    "JOB_KEYS",
    "KTAEGRPOConfig",
    "KTAEGRPOTrainer",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "token_pieces",
]
