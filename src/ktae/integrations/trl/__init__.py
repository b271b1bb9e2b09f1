"""TRL integration: `KTAEGRPOTrainer` (GRPO, DAPO, with or without KTAE), its `KTAEGRPOConfig`, and the
`ktae train` job (`ktae.integrations.trl.job`: `JobArguments`, recipes, `prepare_job`, `run_job`)."""

from ktae.integrations.trl.config import KTAEGRPOConfig
from ktae.integrations.trl.job import JOB_KEYS, JobArguments, config_from_dict, load_config, parse_overrides
from ktae.integrations.trl.trainer import KTAEGRPOTrainer
from ktae.models import token_pieces

__all__ = [
    "JOB_KEYS",
    "JobArguments",
    "KTAEGRPOConfig",
    "KTAEGRPOTrainer",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "token_pieces",
]
