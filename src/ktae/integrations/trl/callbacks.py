"""Trainer callbacks that fill a run folder (layout: docs/training.md, "Run folder").

- ``GreedyAccuracyCallback``: greedy accuracy on a held-out set every few steps (``eval/accuracy``),
  optionally stopping training once a target is reached (the warm start uses that).
- ``RunLogCallback``: every logged step as one JSON line in ``metrics.jsonl``, with the run folder's
  short names (``reward``, ``accuracy``, ``completion_length``) added beside TRL's own (TensorBoard,
  through ``report_to``, sees them too); ``curves.png`` at the end of training.
- ``AtomicCheckpointCallback``: moves each checkpoint the trainer has finished writing into
  ``checkpoints/`` with one ``os.replace``, so ``checkpoints/checkpoint-N`` is always complete.

All file writes happen on the main process only.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import ProgressCallback, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME as TRAINER_STATE_FILE

from ktae.run_folder import (
    CHECKPOINTS_DIR,
    CURVES_FILE,
    KEY_TOKENS_FILE,
    METRICS_FILE,
    append_jsonl,
    checkpoint_step,
    drop_steps_after,
    is_metric_value,
    list_checkpoints,
    move_aside,
    read_jsonl,
)

logger = logging.getLogger(__name__)


def add_short_names(record: dict) -> dict:
    """Add the run folder's short names beside TRL's metric names, in place.

    ``accuracy`` is the share of correct rollouts: the mean of ``accuracy_reward`` (1/0), or of
    ``dapo_reward`` (+1/-1) mapped to [0, 1].
    """
    if "reward" not in record:
        return record
    if "completions/mean_length" in record:
        record.setdefault("completion_length", record["completions/mean_length"])
    if "rewards/accuracy_reward/mean" in record:
        record.setdefault("accuracy", record["rewards/accuracy_reward/mean"])
    elif "rewards/dapo_reward/mean" in record:
        record.setdefault("accuracy", (record["rewards/dapo_reward/mean"] + 1.0) / 2.0)
    return record


@torch.no_grad()
def greedy_completions(
    model, tokenizer, prompts: Sequence, max_new_tokens: int | None, batch_size: int = 256
) -> list[str]:
    """Greedy completions of ``prompts`` (strings, or chat messages rendered with the tokenizer's
    chat template), decoded without special tokens; ``max_new_tokens=None``: the model's generation config decides."""
    from ktae.data.templates import render_prompt

    prompts = [render_prompt(p, tokenizer) for p in prompts]
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    texts = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return texts


def greedy_accuracy(model, tokenizer, dataset, max_new_tokens: int | None, batch_size: int = 256) -> float:
    """Share of ``dataset`` rows (``prompt``, ``answer``) whose greedy completion is right."""
    from ktae.rewards import accuracy_reward

    completions = greedy_completions(model, tokenizer, dataset["prompt"], max_new_tokens, batch_size)
    scores = accuracy_reward(completions, answer=dataset["answer"])
    return float(sum(scores) / len(scores))


class GreedyAccuracyCallback(TrainerCallback):
    """Greedy accuracy on ``dataset`` at step 0 and every ``every_steps`` steps, logged as ``eval/accuracy``.

    ``stop_at``: stop training once the accuracy reaches it (None: never). ``history`` keeps
    (step, accuracy) pairs. Place it before ``RunLogCallback`` so that the value joins the log
    record of its step.
    """

    def __init__(self, tokenizer, dataset, every_steps: int, max_new_tokens: int | None, stop_at: float | None = None):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.every_steps = every_steps
        self.max_new_tokens = max_new_tokens
        self.stop_at = stop_at
        self.history: list[tuple[int, float]] = []
        self._pending: float | None = None

    def _measure(self, step: int, model) -> float:
        accuracy = greedy_accuracy(model, self.tokenizer, self.dataset, self.max_new_tokens)
        self.history.append((step, accuracy))
        self._pending = accuracy
        return accuracy

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._measure(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = state.global_step >= state.max_steps
        if state.global_step % self.every_steps == 0 or last:
            accuracy = self._measure(state.global_step, model)
            control.should_log = True  # so the value is written with this step
            if self.stop_at is not None and accuracy >= self.stop_at:
                control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and logs is not None:
            logs["eval/accuracy"] = self._pending
            self._pending = None


class RunLogCallback(TrainerCallback):
    """Writes ``metrics.jsonl`` per logged step and ``curves.png`` at the end.

    Adds the short names to the step's logs in place, so that callbacks after it (the trackers of
    ``report_to``, placed last by `move_trackers_last`) log them too. On resume, records past the
    resumed step are dropped first, so a step killed after its log line but before its checkpoint is
    logged once, by the resumed run.
    """

    def __init__(self, run_dir: str | os.PathLike, curve_labels: Sequence[str] | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.curve_labels = curve_labels

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        drop_steps_after(self.metrics_path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # the end-of-training summary is no step's record (it stays in trainer_state.json)
        add_short_names(logs)
        record = {"step": state.global_step}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = value
        if len(record) > 1:
            append_jsonl(self.metrics_path, [record])

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            try:
                write_curves(self.run_dir)
            except OSError as error:  # a full disk: the run itself is complete, its curves can be drawn later
                logger.warning(
                    "could not write %s (%s); `ktae viz --run %s` draws the curves",
                    self.run_dir / CURVES_FILE,
                    error,
                    self.run_dir,
                )


def move_trackers_last(trainer) -> None:
    """Place the callbacks of the ``report_to`` trackers (W&B, TensorBoard, MLflow, ...) after all others.

    transformers puts them first, so they would log a step's record before the callbacks that add to it
    in place (`RunLogCallback`'s short names, the benchmark figures) have run; their own order is kept.
    """
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    trackers = tuple(INTEGRATION_TO_CALLBACK.values())
    for callback in [c for c in trainer.callback_handler.callbacks if isinstance(c, trackers)]:
        trainer.remove_callback(callback)
        trainer.add_callback(callback)


def write_curves(run_dir: Path) -> Path | None:
    """``run_dir/curves.png`` from its metrics.jsonl (the project's one curve plotter picks the metrics)."""
    from ktae.reports.curves import plot_runs

    if not (run_dir / METRICS_FILE).is_file():
        return None
    return plot_runs([run_dir], run_dir / CURVES_FILE)


class AtomicCheckpointCallback(TrainerCallback):
    """Publishes the trainer's ``output_dir/checkpoint-N`` as ``run_dir/checkpoints/checkpoint-N`` atomically.

    Hugging Face's trainer writes a checkpoint's files one by one into its final folder; a kill
    midway leaves a folder that looks like a checkpoint. This callback runs once the trainer
    has written everything (``on_save``) and renames the folder into ``checkpoints/`` in one
    ``os.replace``, so resume only ever sees complete checkpoints. ``keep``: how many of the
    newest checkpoints to keep (None: all), besides the best one (``state.best_global_step``).
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int | None = None):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.run_dir = Path(run_dir)
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        # Every process writes its part (its RNG state; its shard under DeepSpeed or FSDP): wait for all of them.
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not written.is_dir():
            return
        target_root = self.run_dir / CHECKPOINTS_DIR
        target_root.mkdir(parents=True, exist_ok=True)
        target = target_root / written.name
        if os.path.lexists(target):  # resumed from an earlier step: the resume skipped this one as damaged
            aside = move_aside(target, ".damaged")
            logger.warning("%s, skipped as damaged when the run resumed, was moved to %s", target, aside)
        best = state.best_model_checkpoint
        if best is not None and Path(best) == written:  # the trainer named the best checkpoint where it wrote it
            state.best_model_checkpoint = str(target)
            state.save_to_json(str(written / TRAINER_STATE_FILE))
        os.replace(written, target)
        if self.keep is not None:  # the best checkpoint (benchmark validation) stays too
            for old in list_checkpoints(self.run_dir)[: -self.keep]:
                if checkpoint_step(old) != state.best_global_step:
                    shutil.rmtree(old)


#: What the progress line shows per logged step: (metric, label, format).
PROGRESS_FIELDS = (
    ("reward", "reward", "{:.3f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("eval/accuracy", "eval_acc", "{:.3f}"),
    ("completion_length", "len", "{:.1f}"),
    ("kl", "kl", "{:.4f}"),
    ("clip_ratio/region_mean", "clip", "{:.3f}"),
    ("ktae/large_bonus_share", "ktae>0.5", "{:.3f}"),
    ("ktae/bonus_mean_correct", "bonus+", "{:+.3f}"),
    ("ktae/bonus_mean_incorrect", "bonus-", "{:+.3f}"),
    ("step_time", "step_s", "{:.2f}"),
    ("ktae/time_share", "ktae_time", "{:.1%}"),
)


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"1 h 40 min"``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


#: After this many steps of a session the time estimate is printed again, from the steps after the first
#: (the first also pays for one-off work: compiling kernels, filling caches).
ESTIMATE_AGAIN_AT = 5


class MetricsProgressCallback(ProgressCallback):
    """Hugging Face's progress bar, with one compact line of the main metrics per logged step.

    When the trainer has written new key tokens (``key_tokens.jsonl`` in ``run_dir``), the line is
    followed by the most credited and blamed tokens with their total bonus (`rank_key_tokens`). The time
    the run will take is said when it starts (the step count), after its first step and after
    `ESTIMATE_AGAIN_AT` steps (the time per step and the total), and on every step line (``eta``).
    """

    def __init__(self, run_dir: str | os.PathLike | None = None):
        super().__init__()
        self.key_tokens_path = Path(run_dir) / KEY_TOKENS_FILE if run_dir is not None else None
        self._key_tokens_seen = 0
        self._step_ends: list[float] = []  # this session's start, then the end of each step

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self._step_ends = [time.perf_counter()]
        if state.is_world_process_zero and self.training_bar is not None:
            left = state.max_steps - state.global_step
            self.training_bar.write(f"[ktae train] {left} steps to train; the time they take follows the first")

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self._step_ends.append(time.perf_counter())
        done = len(self._step_ends) - 1
        if state.is_world_process_zero and self.training_bar is not None and done in (1, ESTIMATE_AGAIN_AT):
            pace = self._seconds_per_step()
            left = state.max_steps - state.global_step
            which = "step 1" if done == 1 else f"steps 2-{done}"
            self.training_bar.write(
                f"[ktae train] {state.max_steps} steps at ~{format_duration(pace)}/step ({which} of this session): "
                f"about {format_duration(pace * state.max_steps)} in all, {format_duration(pace * left)} to go"
            )

    def _seconds_per_step(self) -> float:
        """Mean wall time of this session's steps after the first (the first alone until there are others)."""
        ends = self._step_ends
        return (ends[-1] - ends[1]) / (len(ends) - 2) if len(ends) > 2 else ends[-1] - ends[0]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        record = add_short_names(dict(logs))
        shown = [
            f"{label} " + fmt.format(record[key])
            for key, label, fmt in PROGRESS_FIELDS
            if is_metric_value(record.get(key))
        ]
        if shown:
            if len(self._step_ends) > 1:
                shown.append(f"eta {format_duration(self._seconds_per_step() * (state.max_steps - state.global_step))}")
            self.training_bar.write(f"step {state.global_step:>4} | " + " | ".join(shown))
        else:  # the end-of-training summary and other non-step logs
            self.training_bar.write(str({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}))
        line = self._new_key_tokens()
        if line:
            self.training_bar.write(line)

    def _new_key_tokens(self) -> str | None:
        if self.key_tokens_path is None or not self.key_tokens_path.exists():
            return None
        records = read_jsonl(self.key_tokens_path)
        if len(records) <= self._key_tokens_seen:
            return None
        self._key_tokens_seen = len(records)
        latest = records[-1]

        def describe(entries):
            return " ".join(f"{e['token']!r}{e['total']:+.2f}" for e in entries[:5]) or "-"

        credited, blamed = describe(latest.get("credited", [])), describe(latest.get("blamed", []))
        return f"      key tokens @ step {latest['step']} (total bonus): credited {credited} | blamed {blamed}"
