"""Supervised warm start: TRL's ``SFTTrainer`` on worked solutions until the model solves part of the task.

RL with verifiable rewards only learns from groups that hold both right and wrong rollouts, so a
model that never solves a problem gets no signal. The warm start trains on the ``prompt`` ->
``completion`` pairs of the synthetic task (loss on the completion only), measures greedy
accuracy on a held-out set every few steps, and stops as soon as it reaches the target, leaving
room for RL to improve on it.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ktae.integrations.trl.callbacks import GreedyAccuracyCallback
from ktae.models import save_pretrained_atomically


@dataclass(frozen=True)
class WarmStartConfig:
    """Options of the supervised warm start.

    max_steps: upper bound on optimizer steps (0: no warm start); target_accuracy: stop once greedy accuracy on the
    held-out set reaches it; eval_steps: how often to measure it.
    """

    max_steps: int = 0
    target_accuracy: float = 0.3
    eval_steps: int = 50
    learning_rate: float = 3e-3
    batch_size: int = 64
    max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ValueError(f"warm start max_steps must be >= 0, got {self.max_steps}")
        if not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError(f"warm start target_accuracy must be in [0, 1], got {self.target_accuracy}")
        if self.eval_steps < 1:
            raise ValueError(f"warm start eval_steps must be >= 1, got {self.eval_steps}")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"warm start {name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"warm start learning_rate must be a finite number >= 0, got {self.learning_rate}")

    def to_dict(self) -> dict:
        return asdict(self)


def warm_start(
    model,
    tokenizer,
    train_dataset,
    eval_dataset,
    output_dir: str | os.PathLike,
    config: WarmStartConfig,
    use_cpu: bool = False,
):
    """Train ``model`` in place by SFT; save it and the tokenizer to ``output_dir`` atomically.

    train_dataset: columns ``prompt`` and ``completion``; eval_dataset: ``prompt`` and ``answer``.
    ``use_cpu``: the RL job's (building a trainer's config sets up the processes, as that config says).
    Returns the list of (step, greedy accuracy) measured along the way.
    """
    from trl import SFTConfig, SFTTrainer

    for name, dataset, needed in (
        ("train", train_dataset, ("prompt", "completion")),
        ("eval", eval_dataset, ("prompt", "answer")),
    ):
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise ValueError(f"warm start {name} dataset lacks column(s) {missing}; it has {dataset.column_names}")

    output_dir = Path(output_dir)
    work_dir = output_dir.with_name(output_dir.name + ".tmp")
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(50, config.max_steps // 10),
        weight_decay=0.0,
        logging_steps=config.eval_steps,
        save_strategy="no",
        report_to="none",
        bf16=False,  # TRL defaults to bf16; the tiny model trains in float32 on any device
        seed=config.seed,
        completion_only_loss=True,
        dataset_num_proc=None,
        use_cpu=use_cpu,
    )
    accuracy = GreedyAccuracyCallback(
        tokenizer,
        eval_dataset,
        every_steps=config.eval_steps,
        max_new_tokens=config.max_new_tokens,
        stop_at=config.target_accuracy,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
        callbacks=[accuracy],
    )
    trainer.train()
    # Under `accelerate launch` every process trains (data parallel) and measures the same accuracy; one saves.
    if trainer.accelerator.is_main_process:
        save_pretrained_atomically(trainer.model, tokenizer, output_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    return accuracy.history
