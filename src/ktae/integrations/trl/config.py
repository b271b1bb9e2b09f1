"""`KTAEGRPOConfig`: TRL's `GRPOConfig` plus the algorithm switch (GRPO or DAPO) and the KTAE options.

Every option is a flat dataclass field, as in TRL (``vllm_*``, ``epsilon_high``...), so the same names
work as Python keyword arguments, command-line flags (`TrlParser`/`HfArgumentParser`) and YAML keys.
A recipe holds these fields and the job's own keys (`ktae.integrations.trl.job`, which reads recipes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from trl import GRPOConfig

from ktae.core.config import KTAEConfig
from ktae.evaluation.generation import MIN_TEMPERATURE
from ktae.safe_files import short_repr

ALGOS = ("grpo", "dapo")
DYNAMIC_SAMPLING_METRICS = ("correct", "score")

# Paper settings that `algo` fills in when the field is left unset (docs/recipes.md).
GRPO_KL_COEF = 0.001
DAPO_EPSILON_HIGH = 0.28
# DAPO's overlong buffer, as a share of the response limit: 512 of 3072 tokens in the paper.
DAPO_OVERLONG_BUFFER_SHARE = 512 / 3072

_KTAE_DEFAULTS = KTAEConfig()


@dataclass
class KTAEGRPOConfig(GRPOConfig):
    """Configuration of `KTAEGRPOTrainer`: every `trl.GRPOConfig` field, plus the fields below.

    ``algo`` picks the paper's defaults for the fields left unset (``None``); a value you set wins:

    | field | ``algo="grpo"`` | ``algo="dapo"`` |
    | --- | --- | --- |
    | ``beta`` (KL loss, k3 estimator) | 0.001 | 0.0 (no KL) |
    | ``epsilon_high`` (clip-higher) | ``epsilon`` | 0.28 |
    | ``dynamic_sampling`` | False | True |
    | ``overlong_buffer_length`` | 0 (off) | max_completion_length / 6 |

    Both keep TRL's default ``loss_type="dapo"`` (token-mean over the batch, as verl's default the
    paper ran with). With ``ktae`` on, each token's advantage is the rollout-level advantage plus the
    key-token bonus: TRL's own rollout-level advantage (every ``scale_rewards``, ``multi_objective_aggregation``
    and ``reward_weights`` setting) unless ``ktae_rollout_advantage`` names a KTAE base. ``ktae_*`` fields
    mirror `ktae.KTAEConfig` field by field; ``ktae_ignore_token_ids=None`` means the tokenizer's pad and
    end-of-sequence ids.
    """

    algo: str = field(
        default="grpo",
        metadata={"help": "Group-based RL algorithm: 'grpo' or 'dapo'. Fills in the defaults of the unset fields."},
    )
    ktae: bool = field(
        default=True,
        metadata={"help": "Replace the rollout-level advantage with the token-level KTAE advantage."},
    )
    ktae_alpha: float = field(default=_KTAE_DEFAULTS.alpha, metadata={"help": "KTAE weight of the Fisher term."})
    ktae_beta_ig: float = field(
        default=_KTAE_DEFAULTS.beta_ig, metadata={"help": "KTAE weight of the information gain term."}
    )
    ktae_gamma_tf: float = field(
        default=_KTAE_DEFAULTS.gamma_tf, metadata={"help": "KTAE weight of the term-frequency correction."}
    )
    ktae_top: float = field(
        default=_KTAE_DEFAULTS.top, metadata={"help": "Bound of the key-token bonus, |bonus| < top (0 = off)."}
    )
    ktae_correct_threshold: float = field(
        default=_KTAE_DEFAULTS.correct_threshold,
        metadata={"help": "A rollout is correct when its total reward is strictly above this."},
    )
    ktae_ignore_token_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Token ids that get no bonus. None: the tokenizer's pad and end-of-sequence ids."},
    )
    ktae_rollout_advantage: str | None = field(
        default=None,
        metadata={
            "help": "Rollout-level base the key-token bonus is added to. None: TRL's own advantage (as "
            "scale_rewards, multi_objective_aggregation and reward_weights shape it). A name: KTAE's base of that "
            "name on the total reward ('grpo', 'dr_grpo', 'rloo', or one registered with "
            "ktae.register_rollout_advantage)."
        },
    )
    ktae_epsilon: float = field(
        default=_KTAE_DEFAULTS.epsilon,
        metadata={"help": "Added to the group std in KTAE's own 'grpo' base (ktae_rollout_advantage='grpo')."},
    )
    ktae_log_rollouts_steps: int = field(
        default=10,
        metadata={"help": "Write sampled groups to <output_dir>/rollouts.jsonl every this many steps (0 = never)."},
    )
    ktae_log_rollouts_groups: int = field(
        default=4, metadata={"help": "Number of whole groups written to rollouts.jsonl at each logging step."}
    )
    dynamic_sampling: bool | None = field(
        default=None,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rollouts all score alike and generate more prompts "
            "until the batch is full. None: on for algo='dapo'."
        },
    )
    dynamic_sampling_metric: str = field(
        default="correct",
        metadata={
            "help": "What 'alike' means: 'correct' (all correct or all incorrect, as in the paper) or 'score' "
            "(all total rewards equal)."
        },
    )
    max_num_gen_batches: int = field(
        default=10,
        metadata={"help": "Dynamic sampling: the most generation batches per training batch (verl's name)."},
    )
    overlong_buffer_length: int | None = field(
        default=None,
        metadata={
            "help": "DAPO overlong reward shaping: a linear penalty over the last this-many tokens before "
            "max_completion_length (0 = off). None: 0 for grpo, max_completion_length/6 for dapo."
        },
    )
    overlong_penalty_factor: float = field(
        default=1.0, metadata={"help": "Penalty at the response limit of the overlong reward shaping."}
    )
    # Redefined from GRPOConfig so that `algo` can tell "unset" from a chosen value (a float after __post_init__).
    beta: float | None = field(  # type: ignore[assignment]  # None only until __post_init__ picks the algo's value
        default=None,
        metadata={"help": "KL loss coefficient (k3 estimator). None: 0.001 for grpo, 0.0 for dapo."},
    )

    def __post_init__(self) -> None:
        self._check_trainer_values()
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {short_repr(self.algo)}; choose one of {', '.join(ALGOS)}")
        if self.ktae and self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"KTAE compares the rollouts of a group: num_generations must be >= 2 with ktae on, "
                f"got {self.num_generations}"
            )
        dapo = self.algo == "dapo"
        if self.beta is None:
            self.beta = 0.0 if dapo else GRPO_KL_COEF
        if self.epsilon_high is None and dapo:
            self.epsilon_high = DAPO_EPSILON_HIGH
        if self.dynamic_sampling is None:
            self.dynamic_sampling = dapo
        if self.overlong_buffer_length is None:
            limit = self.max_completion_length or 0
            self.overlong_buffer_length = int(limit * DAPO_OVERLONG_BUFFER_SHARE) if dapo else 0
        self._check_own_fields()
        super().__post_init__()
        if self.ktae:
            self._check_ktae_compatibility()
        if self.dynamic_sampling:
            # ints by now: num_generations checked above, steps_per_generation set by GRPOConfig.__post_init__
            assert self.num_generations is not None and self.steps_per_generation is not None
            rows = self.per_device_train_batch_size * self.steps_per_generation
            if rows % self.num_generations:
                raise ValueError(
                    "dynamic_sampling keeps whole groups on each process: per_device_train_batch_size * "
                    f"steps_per_generation ({rows}) must be a multiple of num_generations ({self.num_generations})"
                )

    def _check_trainer_values(self) -> None:
        """`GRPOConfig` values that would fail only after the model loads, or silently train something else."""
        sizes = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations", "num_generations")
        optional_sizes = ("max_completion_length", "generation_batch_size", "steps_per_generation")
        for name in sizes + optional_sizes:
            value = getattr(self, name)
            if (value is not None or name in sizes) and (value is None or value < 1):
                raise ValueError(f"{name} must be >= 1, got {value}")
        # TrainingArguments reads any max_steps <= 0 as "train num_train_epochs epochs": only -1 says so.
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1 (or -1: train num_train_epochs epochs), got {self.max_steps}")
        if self.max_steps == -1 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"num_train_epochs must be finite and > 0 with max_steps=-1, got {self.num_train_epochs}")
        for name in ("save_steps", "logging_steps"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (a step count, or a share of the steps below 1), got {value}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be a finite number >= 0, got {self.learning_rate}")
        if not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE}, got {self.temperature}")

    def _check_own_fields(self) -> None:
        # set from the algo by __post_init__ before it calls this
        assert self.overlong_buffer_length is not None and self.beta is not None
        self.ktae_config(ignore_token_ids=())  # KTAEConfig validates every ktae_* value with a named error
        if self.dynamic_sampling_metric not in DYNAMIC_SAMPLING_METRICS:
            raise ValueError(
                f"unknown dynamic_sampling_metric {short_repr(self.dynamic_sampling_metric)}; "
                f"choose one of {', '.join(DYNAMIC_SAMPLING_METRICS)}"
            )
        minimums = {"max_num_gen_batches": 1, "ktae_log_rollouts_steps": 0, "ktae_log_rollouts_groups": 1}
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.overlong_buffer_length < 0 or (
            self.overlong_buffer_length and self.overlong_buffer_length > (self.max_completion_length or 0)
        ):
            raise ValueError(
                f"overlong_buffer_length must be in [0, max_completion_length={self.max_completion_length}], "
                f"got {self.overlong_buffer_length}"
            )
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def _check_ktae_compatibility(self) -> None:
        # A named KTAE base replaces TRL's rollout-level advantage: the TRL settings that only shape that
        # advantage would silently do nothing.
        if self.ktae_rollout_advantage is None:
            return
        ignored = {"scale_rewards": ("group", self.scale_rewards)}
        ignored["multi_objective_aggregation"] = ("sum_then_normalize", self.multi_objective_aggregation)
        for name, (default, value) in ignored.items():
            if value != default:
                raise ValueError(
                    f"ktae_rollout_advantage={short_repr(self.ktae_rollout_advantage)} replaces TRL's rollout-level "
                    f"advantage, so {name}={short_repr(value)} would have no effect: unset ktae_rollout_advantage to "
                    f"add the KTAE bonus to TRL's own advantage, or leave {name} at {default!r}"
                )

    def ktae_config(self, ignore_token_ids: Iterable[int]) -> KTAEConfig:
        """The `KTAEConfig` of the ``ktae_*`` fields; ``ignore_token_ids`` is used when the field is None.

        With ``ktae_rollout_advantage=None`` its base is "none": TRL supplies the rollout-level part.
        """
        options = {f.name: getattr(self, f"ktae_{f.name}") for f in dataclasses.fields(KTAEConfig)}
        if options["ignore_token_ids"] is None:
            options["ignore_token_ids"] = tuple(ignore_token_ids)
        if options["rollout_advantage"] is None:
            options["rollout_advantage"] = "none"
        return KTAEConfig.from_dict(options)
