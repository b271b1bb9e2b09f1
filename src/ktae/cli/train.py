"""Train GRPO/DAPO with or without KTAE (default: a tiny CPU job, no downloads).

``ktae train`` with no arguments builds a tiny transformer and tokenizer locally, warm-starts it
by supervised training on the synthetic arithmetic task until it solves part of it, then runs
GRPO+KTAE with `KTAEGRPOTrainer` and logs the accuracy as it rises. ``ktae train --config
recipe.yaml [key=value ...]`` runs any recipe; ``ktae train --resume RUN_DIR`` continues a killed
run from its last checkpoint. One job, top to bottom, in ``prepare_job`` then ``PreparedJob.train``:

1. options: the built-in defaults, then the recipe, then ``key=value`` overrides, validated by
   ``ktae.integrations.trl.config.config_from_dict`` (unknown keys and bad values raise a ValueError);
2. model and tokenizer: ``model_name_or_path: tiny`` builds them (``tiny_*`` keys), anything else
   is a hub id, a local folder, a ``.gguf`` file or ``smollm2`` (`ktae.models`); a real model's job
   starts from `REAL_MODEL_JOB` instead of the tiny defaults;
3. data: ``dataset_name: synthetic`` draws the arithmetic task and ``word_problems`` the same
   arithmetic told in English, as chat prompts (``task_*`` keys); anything else is loaded with
   ``datasets`` and must have ``prompt`` and ``answer`` columns;
4. warm start (``warm_start_max_steps > 0``): SFT until greedy accuracy reaches the target, saved to
   ``RUN_DIR/warm_start``;
5. RL: ``KTAEGRPOTrainer`` with the run-folder callbacks; checkpoints land atomically in
   ``RUN_DIR/checkpoints``.

The run folder (``ktae.run_folder``) is locked for the whole job: a second ``ktae train`` on it is
refused. ``config.yaml`` is written once everything before the first RL step has worked, so a
failed start leaves nothing that blocks running the same command again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ktae.data.synthetic import ArithmeticTask
from ktae.integrations.trl.tiny import TinyModelConfig
from ktae.integrations.trl.warmstart import WarmStartConfig
from ktae.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    WARM_START_DIR,
    RunFolderInUse,
    RunFolderLock,
    checkpoint_step,
    list_checkpoints,
    read_jsonl,
    unpublished_checkpoints,
    write_atomic,
)

if TYPE_CHECKING:
    from ktae.integrations.trl import KTAEGRPOTrainer

TINY_MODEL = "tiny"
SYNTHETIC_DATASET = "synthetic"
WORD_PROBLEMS_DATASET = "word_problems"
REWARDS = ("accuracy", "dapo")

# Job keys of their own sections, one per dataclass: task_* (synthetic task), tiny_* (tiny model
# sizes), warm_start_* (supervised warm start). Each key is the dataclass field with the prefix.
SECTIONS = {"task_": ArithmeticTask, "tiny_": TinyModelConfig, "warm_start_": WarmStartConfig}
OTHER_JOB_KEYS = {
    "task_seed": "seed of the synthetic prompts (training and held-out), apart from the training seed",
    "task_train_size": "prompts drawn for training (synthetic task)",
    "task_eval_size": "held-out prompts for the greedy accuracy (synthetic task)",
    "eval_accuracy_steps": "measure greedy accuracy on the held-out prompts every this many RL steps (0 = never)",
    "keep_checkpoints": "how many of the newest checkpoints to keep (null = all)",
}
# Job keys that hold counts: (smallest value, whether null is allowed).
JOB_COUNTS = {
    "task_train_size": (1, False),
    "task_eval_size": (1, False),
    "eval_accuracy_steps": (0, False),
    "keep_checkpoints": (1, True),
    "max_train_samples": (1, True),
}

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
    # Plain SGD: on this task Adam (lr 1e-4 to 1e-3) moved the tiny policy away (KL up) without
    # raising its accuracy, as its per-weight normalisation gives the noise of a small RL batch
    # full-sized steps; SGD's steps follow the gradient's size (docs/experiment.md).
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
#: bf16 on a GPU that supports it (`default_job` fills it in). One-step problems and temperature 0.7:
#: SmolLM2-135M-Instruct gets about a quarter of its sampled responses right within 24 tokens, and about
#: a tenth with two-step problems allowed or at temperature 1 (benchmarks/word_problems.py measures).
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
}


def default_job(model_name_or_path: Any) -> dict[str, Any]:
    """The built-in job for a model: `DEFAULT_JOB` for the tiny model, with `REAL_MODEL_JOB` for any other."""
    if model_name_or_path in (None, TINY_MODEL):
        return dict(DEFAULT_JOB)
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {**DEFAULT_JOB, **REAL_MODEL_JOB, "bf16": bf16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="recipe YAML (default: the built-in tiny CPU job)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, values read as YAML (max_steps=20)"
    )
    parser.add_argument("--output-dir", type=Path, help="run folder (default: runs/<timestamp>)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (reads RUN_DIR/config.yaml)",
    )


def run(args: argparse.Namespace) -> int:
    lock = None  # held until the job ends; the kernel drops it if the process dies
    try:
        try:
            if args.resume is not None:
                if args.config is not None or args.output_dir is not None:
                    raise ValueError(
                        "--resume RUN_DIR takes the run's own config.yaml and folder: drop --config/--output-dir"
                    )
                run_dir = args.resume
                if not (run_dir / CONFIG_FILE).is_file():
                    raise ValueError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
                lock = RunFolderLock(run_dir).acquire()
                options = resolve_options(_read_recipe(run_dir / CONFIG_FILE), args.overrides)
                finished = finished_step(run_dir, options.get("max_steps", -1))
                if finished is not None:
                    print(
                        f"[ktae train] {run_dir} is finished: it trained all {finished} steps. "
                        f"Nothing to resume; to train on, raise max_steps (--resume {run_dir} max_steps=N)."
                    )
                    return 0
            else:
                recipe = _read_recipe(args.config) if args.config is not None else {}
                if args.config is None:
                    from ktae.integrations.trl.config import parse_overrides

                    defaults = default_job(parse_overrides(args.overrides).get("model_name_or_path"))
                else:
                    defaults = None
                options = resolve_options(recipe, args.overrides, defaults=defaults)
                run_dir = args.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
                lock = RunFolderLock(run_dir).acquire()
                if (run_dir / CONFIG_FILE).exists():
                    raise ValueError(
                        f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another folder"
                    )
            job = prepare_job(options, run_dir, resume=args.resume is not None)
        except (
            ValueError,
            OSError,
            ImportError,
            yaml.YAMLError,
            RunFolderInUse,
        ) as error:  # OSError: files, hubs out of reach
            print(f"ktae train: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(job.train(), indent=2))
        return 0
    finally:
        if lock is not None:
            lock.release()


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"recipe {path} not found")
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values, got {type(loaded).__name__}")
    return dict(loaded or {})


def finished_step(run_dir: str | os.PathLike, max_steps: int) -> int | None:
    """The step of the run's newest checkpoint when it has trained all its steps, else None.

    ``max_steps=-1`` (train epochs): the step count the run computed, as its checkpoint recorded it.
    """
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    target = max_steps if max_steps > 0 else state["max_steps"]
    return state["global_step"] if state["global_step"] >= target else None


def job_keys() -> set[str]:
    """Every recipe key that is not a KTAEGRPOConfig field."""
    from ktae.integrations.trl.config import JOB_KEYS

    keys = set(JOB_KEYS) | set(OTHER_JOB_KEYS)
    for prefix, cls in SECTIONS.items():
        keys |= {prefix + f.name for f in dataclasses.fields(cls)}
    return keys


def resolve_options(
    recipe: Mapping[str, Any], overrides: Sequence[str] = (), defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """defaults, then recipe, then ``key=value`` overrides; validated (a bad key or value raises ValueError)."""
    from ktae.integrations.trl.config import parse_overrides

    options = {**(defaults or {}), **recipe, **parse_overrides(overrides)}
    build_trainer_config(options, output_dir="unused")  # validates every key and value now, before any work
    for prefix, cls in SECTIONS.items():
        section(options, prefix, cls)
    for name, (minimum, nullable) in JOB_COUNTS.items():
        value = options.get(name)
        if name not in options or (value is None and nullable):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            null = " (or null)" if nullable else ""
            raise ValueError(f"{name} must be an integer >= {minimum}{null}, got {value!r}")
    reward = options.get("reward")
    if reward is not None and reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
    return options


def section(options: Mapping[str, Any], prefix: str, cls):
    """The dataclass ``cls`` built from the ``prefix``-ed keys of ``options`` (its own checks apply)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    given = {k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix) and k[len(prefix) :] in names}
    try:
        return cls(**given)
    except TypeError as error:
        raise ValueError(f"bad {prefix}* option: {error}") from None


def build_trainer_config(options: Mapping[str, Any], output_dir: str | os.PathLike):
    """`KTAEGRPOConfig` of the trainer fields of ``options`` (job keys set aside)."""
    from ktae.integrations.trl.config import config_from_dict

    trainer_options = {**options, "output_dir": str(output_dir)}
    return config_from_dict(trainer_options, job_keys())[0]


def load_model_and_tokenizer(options: Mapping[str, Any]):
    name = options.get("model_name_or_path")
    if name is None:
        raise ValueError("model_name_or_path is missing: a hub id, a local folder, a .gguf file, 'smollm2' or 'tiny'")
    if name == TINY_MODEL:
        from ktae.integrations.trl.tiny import build_model, build_tokenizer

        # A task that adds characters (hedges) gets them in its tokenizer; the default task's stays as it was.
        tokenizer = build_tokenizer(section(options, "task_", ArithmeticTask).alphabet)
        return build_model(
            tokenizer, section(options, "tiny_", TinyModelConfig), seed=options.get("seed", 0)
        ), tokenizer
    from ktae.models import load_causal_lm, load_tokenizer, resolve_special_tokens

    tokenizer = load_tokenizer(name, resolve=False)
    print(f"[ktae train] tokenizer of {name}: {resolve_special_tokens(tokenizer).describe()}")
    return load_causal_lm(name, tokenizer, dtype=options.get("torch_dtype") or "auto"), tokenizer


def load_datasets(options: Mapping[str, Any]):
    """(train, held-out eval or None) prompt datasets with ``prompt`` and ``answer`` columns."""
    name = options.get("dataset_name")
    if name is None:
        raise ValueError(
            f"dataset_name is missing: a hub id, a local path, {SYNTHETIC_DATASET!r} or {WORD_PROBLEMS_DATASET!r}"
        )
    if name in (SYNTHETIC_DATASET, WORD_PROBLEMS_DATASET):
        from ktae.data.synthetic import make_arithmetic_dataset
        from ktae.data.word_problems import make_word_problem_dataset

        make = make_arithmetic_dataset if name == SYNTHETIC_DATASET else make_word_problem_dataset
        task = section(options, "task_", ArithmeticTask)
        seed = options.get("task_seed") or 0
        train = make(options.get("task_train_size") or 16000, seed=2 * seed + 1, task=task)
        held_out = make(options.get("task_eval_size") or 200, seed=2 * seed + 2, task=task)
        return train, held_out
    from ktae.data import MATH_TRAIN_HUB_ID, load_math_train, load_prompt_dataset

    # Both loaders name the file/row and the missing field when a row lacks the problem or answer.
    loader = load_math_train if name == MATH_TRAIN_HUB_ID else load_prompt_dataset
    common: dict[str, Any] = {"template": options.get("template") or "qwen_math", "name": options.get("dataset_config")}
    train = loader(
        name, split=options.get("dataset_train_split") or "train", limit=options.get("max_train_samples"), **common
    )
    test_split = options.get("dataset_test_split")
    held_out = loader(name, split=test_split, **common) if test_split else None
    return train, held_out


def reward_functions(options: Mapping[str, Any]):
    from ktae.rewards import accuracy_reward, dapo_reward

    reward = options.get("reward") or ("dapo" if options.get("algo") == "dapo" else "accuracy")
    return [{"accuracy": accuracy_reward, "dapo": dapo_reward}[reward]]


@dataclasses.dataclass
class PreparedJob:
    """A job ready for its first (or resumed) RL step; ``train()`` runs it and returns a summary."""

    run_dir: Path
    trainer: KTAEGRPOTrainer
    checkpoint: str | None
    warm_history: list | None
    started: float

    def train(self) -> dict[str, Any]:
        self.trainer.train(resume_from_checkpoint=self.checkpoint)
        # Under `accelerate launch` / torchrun: leave no process group alive at exit, where gloo's
        # threads can abort a finished process. A no-op in a single process.
        self.trainer.accelerator.end_training()
        history = read_jsonl(self.run_dir / METRICS_FILE)
        return {
            "run_dir": str(self.run_dir),
            "steps": self.trainer.state.global_step,
            "warm_start_accuracy": self.warm_history,
            "eval_accuracy": [(r["step"], r["eval/accuracy"]) for r in history if "eval/accuracy" in r],
            "final_train_accuracy": next((r["accuracy"] for r in reversed(history) if "accuracy" in r), None),
            "checkpoints": [p.name for p in list_checkpoints(self.run_dir)],
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def prepare_job(options: Mapping[str, Any], run_dir: str | os.PathLike, resume: bool = False) -> PreparedJob:
    """Everything before the first RL step: run folder, data, warm start, trainer.

    User errors (a dataset without the needed fields, a bad model path) raise here, before any RL step.
    ``config.yaml`` is written last, once all of that worked.
    """
    from transformers import ProgressCallback, TrainerCallback
    from transformers.integrations import TensorBoardCallback

    from ktae.integrations.trl import KTAEGRPOTrainer
    from ktae.integrations.trl.callbacks import (
        AtomicCheckpointCallback,
        GreedyAccuracyCallback,
        MetricsProgressCallback,
        RunLogCallback,
    )
    from ktae.integrations.trl.warmstart import save_pretrained_atomically, warm_start
    from ktae.models import load_tokenizer, resolve_model_source

    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = build_trainer_config(options, run_dir)
    train_data, held_out = load_datasets(options)

    # The policy RL starts from is a model folder (TRL loads its reference model from the same path):
    # the warm-started (or freshly built tiny, or GGUF-converted) model in RUN_DIR/warm_start, else
    # model_name_or_path. A GGUF model is converted once (dequantized, safetensors), its tokens resolved.
    warm = section(options, "warm_start_", WarmStartConfig)
    warm_dir = run_dir / WARM_START_DIR
    warm_history = None
    name = options.get("model_name_or_path")
    if name is None:
        raise ValueError("model_name_or_path is missing: a hub id, a local folder, a .gguf file, 'smollm2' or 'tiny'")
    if warm.max_steps > 0 or name == TINY_MODEL or resolve_model_source(name).gguf_file is not None:
        if not (warm_dir / "config.json").is_file():  # a resumed run keeps its warm start
            model, tokenizer = load_model_and_tokenizer(options)
            if warm.max_steps > 0:
                if held_out is None:
                    raise ValueError("the warm start measures accuracy on held-out prompts: set dataset_test_split")
                print(
                    f"[ktae train] warm start: SFT until greedy accuracy >= {warm.target_accuracy:.0%} "
                    f"(at most {warm.max_steps} steps)"
                )
                warm_history = warm_start(model, tokenizer, train_data, held_out, warm_dir, warm)
                print(f"[ktae train] warm start done: (step, greedy accuracy) {warm_history}")
            else:
                save_pretrained_atomically(model, tokenizer, warm_dir)
        policy = str(warm_dir)
    else:
        policy = options["model_name_or_path"]
    tokenizer = load_tokenizer(policy)

    callbacks: list[TrainerCallback] = []
    every = options.get("eval_accuracy_steps") or 0
    if every and held_out is not None:
        callbacks.append(
            GreedyAccuracyCallback(tokenizer, held_out, every, max_new_tokens=config.max_completion_length)
        )
    callbacks += [RunLogCallback(run_dir), AtomicCheckpointCallback(run_dir, keep=options.get("keep_checkpoints"))]
    trainer = KTAEGRPOTrainer(
        model=policy,
        reward_funcs=reward_functions(options),
        args=config,
        train_dataset=train_data,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.run_description = describe_run(options, warm)
    print(
        f"[ktae train] policy {policy}: end of sequence {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), "
        f"padding {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}); generation stops at ids "
        f"{trainer.eos_token_ids}; KTAE ignores ids {list(trainer.ktae_config.ignore_token_ids)}"
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MetricsProgressCallback(run_dir))

    checkpoint = None
    if resume:
        complete = list_checkpoints(run_dir)
        checkpoint = complete[-1] if complete else None
        print(f"[ktae train] resuming from {checkpoint or 'the start (no complete checkpoint yet)'}")
    if trainer.pop_callback(TensorBoardCallback) is not None:  # report_to names tensorboard
        from torch.utils.tensorboard import SummaryWriter

        # transformers' TensorBoard logger, writing to RUN_DIR/tb, placed last so that it sees the short names
        # RunLogCallback adds. On resume, purge_step hides the events of the steps after the checkpoint (the
        # run logs them again): TensorBoard drops events at or after it that were written before.
        start = checkpoint_step(checkpoint) if checkpoint is not None else 0
        assert start is not None  # list_checkpoints returns checkpoint-N folders only
        writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start + 1 if resume else None)
        trainer.add_callback(TensorBoardCallback(writer))
    for partial in unpublished_checkpoints(run_dir):  # left by a run killed while saving
        shutil.rmtree(partial)
    resolved = {**options, **{k: getattr(config, k) for k in RESOLVED_FIELDS}}
    write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))
    return PreparedJob(run_dir, trainer, None if checkpoint is None else str(checkpoint), warm_history, started)


def describe_run(options: Mapping[str, Any], warm: WarmStartConfig):
    """The model card's account of the job: the model RL started from, the data, the warm start."""
    from ktae.integrations.trl.model_card import RunDescription

    name, dataset = options.get("model_name_or_path"), options.get("dataset_name")
    notes: tuple[str, ...] = ()
    if warm.max_steps > 0:
        note = (
            "Before RL, the model was warm-started by supervised fine-tuning on the training prompts until its "
            f"held-out greedy accuracy reached {warm.target_accuracy:.0%} (at most {warm.max_steps} steps; "
            "the result is in `warm_start/`)."
        )
        notes = (note,)
    return RunDescription(
        base_model="a tiny model built locally" if name == TINY_MODEL else name,
        dataset="the synthetic arithmetic task (ktae.data.synthetic)" if dataset == SYNTHETIC_DATASET else dataset,
        notes=notes,
    )


def run_job(options: Mapping[str, Any], run_dir: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the job of ``options`` in ``run_dir``; returns a summary."""
    return prepare_job(options, run_dir, resume).train()


#: Fields whose value `algo` decides when unset: written explicitly to config.yaml.
RESOLVED_FIELDS = ("beta", "epsilon", "epsilon_high", "loss_type", "dynamic_sampling", "overlong_buffer_length")
