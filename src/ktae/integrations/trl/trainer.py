"""`KTAEGRPOTrainer`: TRL's `GRPOTrainer` with token-level KTAE advantages and DAPO's dynamic sampling.

One generation round, top to bottom (``_generate_and_score_round``):

1. TRL generates, scores and computes its rollout-level advantages (``super()._generate_and_score_completions``);
   the rewards of the whole batch are gathered across processes on the way (``_calculate_rewards``).
2. KTAE needs complete groups. Global row r belongs to group r // num_generations. When each process
   holds whole groups (its row count is a multiple of num_generations) the process computes them
   alone; otherwise the completions are padded and gathered, so every process sees every group.
3. Each token's advantage is the rollout-level advantage plus the key-token bonus
   (``ktae.compute_ktae_advantages`` with base "none"): TRL's own rollout-level advantage, whatever
   ``scale_rewards``, ``multi_objective_aggregation`` and ``reward_weights`` made it, or the KTAE base
   named by ``ktae_rollout_advantage``. Each process keeps its slice, which TRL's ``_compute_loss``
   uses per token as it is (with any ``loss_type`` and ``top_entropy_quantile``).
4. Metrics (``ktae/*``, ktae.integrations.signals) go through TRL's ``_metrics``, and the most credited
   and blamed tokens as a table to the W&B / trackio / TensorBoard loggers of ``report_to``; every
   ``ktae_log_rollouts_steps`` steps whole groups go to ``<output_dir>/rollouts.jsonl``
   (`ktae.run_folder.RolloutRecord` lines) and the most credited and blamed tokens
   (`ktae.reports.keytokens.rank_key_tokens`) to ``<output_dir>/key_tokens.jsonl``.

When training starts, the KTAE settings the run trains with, resolved (`ktae.run_folder.KTAESettings`),
go to ``<output_dir>/ktae_settings.json``, from which reports recompute the logged rollouts' advantages.

With ``dynamic_sampling`` (DAPO), rounds repeat on extra prompt batches until every process has
enough groups whose rollouts do not all score alike, at most ``max_num_gen_batches`` rounds.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback
from trl import GRPOTrainer

from ktae import (
    KeyTokenValues,
    compute_ktae_advantages,
    compute_ktae_advantages_with_values,
    compute_rollout_advantages,
)
from ktae.integrations.signals import bonus_metrics, bonus_sums, log_key_token_table, top_key_tokens
from ktae.integrations.trl.config import KTAEGRPOConfig
from ktae.integrations.trl.model_card import TRAINING_FIELDS, RunDescription, algorithm_name, model_card
from ktae.models import decode_token, ignored_token_ids, model_vocab_size
from ktae.run_folder import (
    KEY_TOKENS_FILE,
    ROLLOUTS_FILE,
    TRL_STD_EPSILON,
    KTAESettings,
    RolloutRecord,
    append_jsonl,
    drop_steps_after,
    write_atomic,
    write_ktae_settings,
)

logger = logging.getLogger(__name__)

STATE_FILE = "ktae_trainer_state.json"

# How the generation outputs of several dynamic-sampling rounds are padded to one width.
_RIGHT_PADDED = {
    "completion_ids",
    "completion_mask",
    "advantages",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
}
_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_NEEDS_MAP_STYLE = "dynamic_sampling draws extra prompts by index: it needs a map-style train_dataset"


@dataclass
class GroupRows:
    """Rows of complete groups that one process can see.

    ids, mask: [R, T] completion ids and loss mask (bool); rows: [R] global row numbers;
    local: [B] positions in these R rows of this process's own B rows.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor
    local: torch.Tensor


@runtime_checkable
class MapStyleDataset(Protocol):
    """Rows by index, as dynamic sampling draws its extra prompts (a `datasets.Dataset`, for one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def prompt_text(prompt: Any) -> str:
    """A dataset prompt (string or chat messages) as one string."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _output_folder(args: TrainingArguments) -> Path:
    """``args.output_dir`` as a path."""
    assert args.output_dir is not None  # TrainingArguments.__post_init__ replaces None with its default folder
    return Path(args.output_dir)


def _pad_width(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    return F.pad(tensor, (missing, 0) if left else (0, missing), value=value) if missing else tensor


def check_mergeable(batch: dict[str, Any]) -> None:
    """Dynamic sampling merges text batches only: image inputs add keys that are not row-wise tensors."""
    unsupported = sorted(set(batch) - _RIGHT_PADDED - _LEFT_PADDED - {"num_items_in_batch"})
    if unsupported:
        raise NotImplementedError(f"dynamic_sampling does not support batches with {unsupported} (image inputs)")


def concat_generation_batches(batches: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Stack the row-wise outputs of several generation rounds, padding prompts left and completions right.

    ``num_items_in_batch`` is dropped (the caller recounts it); see `check_mergeable` for the keys.
    """
    merged = {}
    for key in batches[0]:
        if key == "num_items_in_batch":
            continue
        parts = [b[key] for b in batches]
        if parts[0].dim() > 1:
            width = max(p.shape[1] for p in parts)
            value = pad_token_id if key in ("completion_ids", "prompt_ids") else 0
            parts = [_pad_width(p, width, value, key in _LEFT_PADDED) for p in parts]
        merged[key] = torch.cat(parts)
    return merged


class KTAEGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` for GRPO, DAPO, GRPO+KTAE and DAPO+KTAE; configure it with `KTAEGRPOConfig`.

    Takes the arguments of `GRPOTrainer`. With ``overlong_buffer_length > 0`` (DAPO's default) the
    overlong penalty (`ktae.rewards.make_overlong_penalty`) is appended to ``reward_funcs`` with weight 1.
    """

    # A constant of the class; GRPOTrainer's has no ClassVar annotation, so mypy reads an instance variable there.
    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "ktae"]  # type: ignore[misc]
    _name = "KTAE-GRPO"

    #: For the model card: the model RL started from and the training data (``ktae train`` sets it).
    run_description: RunDescription = RunDescription()

    # Narrower than TRL types them: __init__ refuses any other config; GRPOTrainer always has a model (a
    # PreTrainedModel or a PeftModel: it takes no model_init); KTAEGRPOConfig refuses num_generations=None, and
    # num_generations_eval falls back to it.
    args: KTAEGRPOConfig
    model: torch.nn.Module
    num_generations: int
    num_generations_eval: int

    def __init__(self, model, reward_funcs=None, args: KTAEGRPOConfig | None = None, *more, **kwargs):
        if args is None:
            args = KTAEGRPOConfig()
        if not isinstance(args, KTAEGRPOConfig):
            raise TypeError(f"KTAEGRPOTrainer needs a KTAEGRPOConfig, got {type(args).__name__}")
        if reward_funcs is not None and not isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [reward_funcs]
        reward_funcs = list(reward_funcs or [])
        assert args.overlong_buffer_length is not None  # KTAEGRPOConfig.__post_init__ set it from the algo
        if args.overlong_buffer_length > 0:
            from ktae.rewards import make_overlong_penalty

            assert args.max_completion_length is not None  # the config checked the buffer fits within it
            reward_funcs.append(
                make_overlong_penalty(
                    args.max_completion_length, args.overlong_buffer_length, args.overlong_penalty_factor
                )
            )
            if args.reward_weights is not None:
                reward_weights = [*args.reward_weights, 1.0]
                args = copy.copy(args)  # leave the caller's config as it is
                args.reward_weights = reward_weights
        train_dataset = kwargs.get("train_dataset", more[0] if more else None)
        if args.dynamic_sampling and train_dataset is not None and not isinstance(train_dataset, MapStyleDataset):
            raise ValueError(f"{_NEEDS_MAP_STYLE}, got {type(train_dataset).__name__}")
        super().__init__(model, reward_funcs or None, args, *more, **kwargs)
        self.ktae_config = args.ktae_config(ignore_token_ids=ignored_token_ids(self._tokenizer, self.eos_token_ids))
        self._bonus_config = dataclasses.replace(self.ktae_config, rollout_advantage="none")
        # The estimator refuses ids the policy cannot have sampled (a batch mixed up with another
        # model's tokens); the model's vocabulary, not the tokenizer's, bounds them.
        self.vocab_size = model_vocab_size(self.model)
        self.ktae_key_tokens: dict[str, list[dict]] | None = None  # latest top credited/blamed tokens
        self._key_tokens_to_log: dict[str, list[dict]] | None = None  # for the trackers, at the next log
        self._gathered_rewards_per_func: torch.Tensor | None = None
        self._ktae_seconds = 0.0
        self._rollouts_logged_at: int | None = None  # global step of the last rollout log
        self._extra_batches_drawn = 0
        self._extra_batch_indices: Iterator[list[int]] | None = None
        self.add_callback(DropLogsAfterStartStep())
        self.add_callback(KTAESettingsCallback(self.ktae_settings()))

    # ------------------------------------------------------------------------------------------
    # Scores and generation rounds

    def _calculate_rewards(
        self,
        inputs: list[dict[str, Any]],
        prompts: list[Any],
        completions: list[Any],
        completion_ids_list: list[list[int]],
    ) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func  # [N, num reward funcs], every process's rows
        return rewards_per_func

    def _gathered_scores(self) -> torch.Tensor:
        """[N] total reward of every rollout of the round (all processes); NaN where no reward function scored."""
        rewards = self._gathered_rewards_per_func
        assert rewards is not None  # TRL's _generate_and_score_completions calls _calculate_rewards every round
        scores = (rewards * self.reward_weights.to(rewards.device)).nansum(dim=1)
        return scores.masked_fill(torch.isnan(rewards).all(dim=1), float("nan"))

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.args.dynamic_sampling and self.model.training:
            return self._generate_with_dynamic_sampling(inputs)
        return self._generate_and_score_round(inputs)[0]

    def _generate_and_score_round(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], torch.Tensor]:
        """TRL's generation and scoring, then KTAE advantages, metrics and logs. Returns (batch, scores [N])."""
        batch = super()._generate_and_score_completions(inputs)
        scores = self._gathered_scores()
        mode = "train" if self.model.training else "eval"
        log_rollouts = mode == "train" and self._rollout_log_due()
        if not (self.args.ktae or log_rollouts):
            return batch, scores
        started = time.perf_counter()
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        mask = batch["completion_mask"] if "tool_mask" not in batch else batch["completion_mask"] * batch["tool_mask"]
        view = self._group_rows(batch["completion_ids"], mask, len(inputs))
        view_scores = scores[view.rows]
        # The round's most credited and blamed tokens, for the trackers' table and key_tokens.jsonl.
        table = self.args.ktae and mode == "train" and self.accelerator.is_main_process and self._key_token_backends()
        want_key_tokens = bool(table) or (self.args.ktae and log_rollouts and self.accelerator.is_main_process)
        key_tokens = None
        if self.args.ktae:
            trl_advantages = batch["advantages"]  # [B] this process's rows
            if len(view.rows) != len(view.local):  # every process's rows (collective, as the view's gather)
                trl_advantages = self.accelerator.gather(trl_advantages)
            advantages, bonus, values = self._ktae_advantages(
                view, view_scores, group_size, trl_advantages, with_values=want_key_tokens
            )
            batch["advantages"] = advantages[view.local, : batch["completion_ids"].shape[1]]
            self._log_ktae_metrics(view, view_scores, bonus, mode)
            self._ktae_seconds += time.perf_counter() - started  # ranking and logs below are not KTAE's cost
            if want_key_tokens:
                key_tokens = self._rank_key_tokens(view, view_scores, view.rows // group_size, values)
            if table:
                self._key_tokens_to_log = key_tokens
        else:  # TRL's rollout-level advantages, per token, for the rollout log
            trl_advantages = torch.tensor(list(self._logs["advantages"])[-len(scores) :], device=scores.device)
            advantages = trl_advantages[view.rows][:, None] * view.mask
        if log_rollouts:
            self._rollouts_logged_at = self.state.global_step  # on every process: the gather above is collective
            if self.accelerator.is_main_process:
                self._write_rollout_logs(view, view_scores, advantages, group_size, len(scores), key_tokens)
        return batch, scores

    def _group_rows(self, completion_ids: torch.Tensor, mask: torch.Tensor, num_local: int) -> GroupRows:
        """This process's rows when they form whole groups, else every process's rows (padded, gathered)."""
        first_row = self.accelerator.process_index * num_local
        local = torch.arange(num_local, device=completion_ids.device)
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        # Every process holds the same number of rows, so all take the same branch (the gather is collective).
        if num_local % group_size == 0:
            return GroupRows(completion_ids, mask.bool(), first_row + local, local)
        ids = self.accelerator.pad_across_processes(completion_ids, dim=1, pad_index=self._tokenizer.pad_token_id)
        mask = self.accelerator.pad_across_processes(mask, dim=1, pad_index=0)
        ids, mask = self.accelerator.gather(ids), self.accelerator.gather(mask)
        rows = torch.arange(ids.shape[0], device=ids.device)
        return GroupRows(ids, mask.bool(), rows, first_row + local)

    def _ktae_advantages(
        self,
        view: GroupRows,
        scores: torch.Tensor,
        group_size: int,
        trl_advantages: torch.Tensor,
        with_values: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, KeyTokenValues | None]:
        """KTAE advantages [R, T] of the view's rows, their key-token bonus [R, T] and, ``with_values``,
        the key-token values of the scored rows behind the bonus (from the same count; else None).

        advantage = rollout-level advantage (TRL's ``trl_advantages`` [R], or the KTAE base named by
        ``ktae_rollout_advantage``) on every response token + the bonus. Rollouts that no reward function
        scored (NaN) are left out of their group and get no bonus; TRL gives them advantage 0.
        """
        scored = ~torch.isnan(scores)
        groups = view.rows // group_size
        bonus = torch.zeros(view.ids.shape, dtype=torch.float32, device=view.ids.device)
        rollout = trl_advantages.float()
        values = None
        if scored.any():
            inputs = (view.ids[scored], view.mask[scored], scores[scored], groups[scored])
            if with_values:
                bonus[scored], values = compute_ktae_advantages_with_values(
                    *inputs, config=self._bonus_config, vocab_size=self.vocab_size
                )
            else:
                bonus[scored] = compute_ktae_advantages(*inputs, config=self._bonus_config, vocab_size=self.vocab_size)
            if self.args.ktae_rollout_advantage is not None:
                rollout = torch.zeros_like(rollout)
                rollout[scored] = compute_rollout_advantages(
                    scores[scored], groups[scored], self.args.ktae_rollout_advantage, self.ktae_config.epsilon
                )
        return rollout[:, None] * view.mask + bonus, bonus, values

    # ------------------------------------------------------------------------------------------
    # Dynamic sampling (DAPO)

    def _groups_alike(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: [groups, group_size] -> [groups] bool, True where every rollout scores alike."""
        if self.args.dynamic_sampling_metric == "correct":
            scores = (scores > self.args.ktae_correct_threshold).float()
        return (scores == scores[:, :1]).all(dim=1)

    def _generate_with_dynamic_sampling(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate rounds until each process has enough groups that do not all score alike.

        Each process fills its own quota from its own groups (no rows move between processes), so
        it stops when the process with the fewest has enough, or after ``max_num_gen_batches``
        rounds; short groups are then filled with groups that all scored alike, and
        ``dynamic_sampling/filler_group_share`` reports it.
        """
        group_size = self.num_generations
        needed = len(inputs) // group_size
        rounds: list[dict[str, Any]] = []
        # (round number, local group number) of the groups, in generation order
        informative: list[tuple[int, int]] = []
        alike: list[tuple[int, int]] = []
        while True:
            batch, scores = self._generate_and_score_round(inputs)
            check_mergeable(batch)
            local = scores.view(-1, group_size)[self.accelerator.process_index * needed :][:needed]
            for group, is_alike in enumerate(self._groups_alike(local).tolist()):
                (alike if is_alike else informative).append((len(rounds), group))
            rounds.append(batch)
            have = torch.tensor([len(informative)], device=scores.device)
            if self.accelerator.gather(have).min() >= needed or len(rounds) >= self.args.max_num_gen_batches:
                break
            inputs = self._next_extra_generation_batch()
        chosen = (informative + alike)[:needed]
        parts = []
        for number, batch in enumerate(rounds):
            rows = [row for r, g in chosen if r == number for row in range(g * group_size, (g + 1) * group_size)]
            if rows:
                index = torch.tensor(rows, device=scores.device)
                parts.append({k: v if k == "num_items_in_batch" else v[index] for k, v in batch.items()})
        merged = concat_generation_batches(parts, self._tokenizer.pad_token_id)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        filler = max(0, needed - len(informative))
        if filler:
            logger.warning(
                "dynamic sampling: %d of %d groups on process %d still score alike after %d generation batches "
                "(max_num_gen_batches); they train with little or no signal",
                filler,
                needed,
                self.accelerator.process_index,
                len(rounds),
            )
        shares = self.accelerator.gather(torch.tensor([filler / needed], device=scores.device))
        self._metrics["train"]["dynamic_sampling/gen_batches"].append(float(len(rounds)))
        self._metrics["train"]["dynamic_sampling/filler_group_share"].append(shares.mean().item())
        return merged

    def _extra_index_batches(self, num_prompts: int) -> Iterator[list[int]]:
        """Endless prompt indices for extra generation batches: this process's share of each, reshuffled every pass.

        A stream of its own (seeded from ``args.seed``), so the main dataloader's order is untouched.
        """
        assert self.args.steps_per_generation is not None  # GRPOConfig.__post_init__ sets it
        per_process = self.args.per_device_train_batch_size * self.args.steps_per_generation // self.num_generations
        per_batch = per_process * self.accelerator.num_processes
        if num_prompts < per_batch:
            raise ValueError(f"dynamic_sampling needs at least {per_batch} prompts, the dataset has {num_prompts}")
        first = self.accelerator.process_index * per_process
        for pass_number in itertools.count():
            generator = torch.Generator().manual_seed(self.args.seed + 1 + pass_number)
            order = torch.randperm(num_prompts, generator=generator).tolist()
            for start in range(0, num_prompts - per_batch + 1, per_batch):
                yield order[start + first : start + first + per_process]

    def _next_extra_generation_batch(self) -> list[dict]:
        dataset = self.train_dataset
        if not isinstance(dataset, MapStyleDataset):  # only without a train_dataset: __init__ refuses the others
            raise ValueError(_NEEDS_MAP_STYLE)
        if self._extra_batch_indices is None:
            self._extra_batch_indices = self._extra_index_batches(len(dataset))
            for _ in range(self._extra_batches_drawn):  # resume where the checkpointed run stopped
                next(self._extra_batch_indices)
        indices = next(self._extra_batch_indices)
        self._extra_batches_drawn += 1
        return [dataset[i] for i in indices for _ in range(self.num_generations)]

    # ------------------------------------------------------------------------------------------
    # Metrics and logs

    def _log_ktae_metrics(self, view: GroupRows, scores: torch.Tensor, bonus: torch.Tensor, mode: str) -> None:
        """The bonus metrics of ktae.integrations.signals over all processes."""
        correct = scores[view.local] > self.ktae_config.correct_threshold
        sums = self.accelerator.reduce(bonus_sums(bonus[view.local], view.mask[view.local], correct), reduction="sum")
        for name, value in bonus_metrics(sums).items():
            self._metrics[mode][name].append(value)

    def _key_token_backends(self) -> dict:
        """The ``report_to`` loggers that show a table: W&B and trackio modules, TensorBoard's writer."""
        report_to = self.args.report_to or []
        backends = {}
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                backends["wandb"] = wandb
        if "trackio" in report_to:
            import trackio

            backends["trackio"] = trackio
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                backends["tensorboard"] = callback.tb_writer
        return backends

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self._key_tokens_to_log is not None and self.accelerator.is_main_process:
            # W&B / trackio keep their own step, as TRL's completions table does
            backends = self._key_token_backends()
            log_key_token_table(self._key_tokens_to_log, self.state.global_step, **backends, pass_step=False)
            self._key_tokens_to_log = None

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        output = super().training_step(model, inputs, num_items_in_batch)
        if self.args.ktae and self._step % self.current_gradient_accumulation_steps == 0:
            step_time = self._metrics["train"]["step_time"][-1]
            self._metrics["train"]["ktae/seconds"].append(self._ktae_seconds)
            self._metrics["train"]["ktae/time_share"].append(self._ktae_seconds / step_time if step_time else 0.0)
            self._ktae_seconds = 0.0
        return output

    def _rollout_log_due(self) -> bool:
        """True when a multiple of ktae_log_rollouts_steps falls among the steps this generation serves.

        Once per step: with dynamic sampling, the first round's groups are logged (dropped ones included).
        """
        every = self.args.ktae_log_rollouts_steps
        step = self.state.global_step
        if every == 0 or step == self._rollouts_logged_at:
            return False
        assert self.args.steps_per_generation is not None  # GRPOConfig.__post_init__ sets it
        steps_per_round = max(
            1, self.args.steps_per_generation * self.num_iterations // self.args.gradient_accumulation_steps
        )
        return step == 0 or step // every > (step - steps_per_round) // every

    def _write_rollout_logs(
        self,
        view: GroupRows,
        scores: torch.Tensor,
        advantages: torch.Tensor,
        group_size: int,
        num_rows: int,
        key_tokens: dict[str, list[dict]] | None,
    ) -> None:
        """Append ``ktae_log_rollouts_groups`` whole groups to rollouts.jsonl, the top tokens to key_tokens.jsonl."""
        step = self.state.global_step + 1  # these rollouts make the update that ends at this step
        prompts = list(self._logs["prompt"])[-num_rows:]
        groups = view.rows // group_size
        logged = list(dict.fromkeys(groups.tolist()))[: self.args.ktae_log_rollouts_groups]
        records = []
        for position in torch.nonzero(torch.isin(groups, torch.tensor(logged, device=groups.device))).flatten():
            mask = view.mask[position]
            records.append(
                RolloutRecord.from_tokens(
                    self._tokenizer,
                    step=step,
                    group=int(groups[position]),
                    prompt=prompt_text(prompts[int(view.rows[position])]),
                    token_ids=view.ids[position][mask].tolist(),
                    score=scores[position].item(),
                    correct_threshold=self.ktae_config.correct_threshold,
                    advantages=advantages[position][mask].tolist(),
                )
            )
        output_dir = _output_folder(self.args)
        append_jsonl(output_dir / ROLLOUTS_FILE, records)
        if key_tokens is not None:
            self.ktae_key_tokens = key_tokens
            append_jsonl(output_dir / KEY_TOKENS_FILE, [{"step": step, **self.ktae_key_tokens}])

    def _rank_key_tokens(
        self, view: GroupRows, scores: torch.Tensor, groups: torch.Tensor, values: KeyTokenValues | None
    ) -> dict[str, list[dict]]:
        """The most credited and blamed tokens of the view's scored rows (`rank_key_tokens`), decoded,
        from ``values`` (their key-token values; None when no row was scored).

        Each entry: token (text), token_id, bonus (mean key-token value per occurrence), total, occurrences, groups.
        """
        scored = ~torch.isnan(scores)
        if values is None or not view.mask[scored].any():
            return {"credited": [], "blamed": []}
        decode = functools.partial(decode_token, self._tokenizer)
        return top_key_tokens(values, view.ids[scored], view.mask[scored], groups[scored], decode)

    def ktae_settings(self) -> KTAESettings:
        """The KTAE settings this trainer trains with, resolved: the ``ktae_*`` options, the ignored ids of
        the tokenizer, and the KTAE base equal to the rollout-level advantage (`ktae.run_folder.KTAESettings`).

        KTAE's own base when ``ktae_rollout_advantage`` names one (and KTAE is on); else TRL's: summed rewards
        scaled by the group's std + `TRL_STD_EPSILON` ("grpo") or not scaled ("dr_grpo"). Scaling by the
        batch's std, or normalising each reward before summing, has no KTAE equal.
        """
        if self.args.ktae and self.args.ktae_rollout_advantage is not None:
            return KTAESettings(True, self.ktae_config, f"KTAE's {self.ktae_config.rollout_advantage}", True)
        scale, aggregation = self.args.scale_rewards, self.args.multi_objective_aggregation
        exact = aggregation == "sum_then_normalize" and scale in ("group", "none")
        base = "dr_grpo" if exact and scale == "none" else "grpo"
        estimator = dataclasses.replace(self.ktae_config, rollout_advantage=base, epsilon=TRL_STD_EPSILON)
        return KTAESettings(self.args.ktae, estimator, trl_rollout_advantage(self.args), exact)

    # ------------------------------------------------------------------------------------------
    # The model card TRL writes with every checkpoint

    # TRL's BaseTrainer gives create_model_card other parameters than transformers' Trainer; this keeps TRL's.
    def create_model_card(  # type: ignore[override]
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """``<output_dir>/README.md``: KTAE's paper, the algorithm and its settings, the base model and
        the latest held-out accuracy (of a `GreedyAccuracyCallback`, when one is attached)."""
        if not self.is_world_process_zero():
            return
        from ktae.integrations.trl.callbacks import GreedyAccuracyCallback

        description = self.run_description
        if description.base_model is None:
            description = replace(description, base_model=getattr(self.model.config, "_name_or_path", None) or None)
        if dataset_name is not None:
            description = replace(description, dataset=dataset_name)
        accuracy = next(
            (c.history for c in self.callback_handler.callbacks if isinstance(c, GreedyAccuracyCallback) and c.history),
            None,
        )
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        ktae_settings = asdict(self.ktae_config) if self.args.ktae else None
        if ktae_settings is not None and self.args.ktae_rollout_advantage is None:
            # the bonus is added to TRL's own rollout-level advantage; the config's "none" is the bonus alone
            ktae_settings["rollout_advantage"] = trl_rollout_advantage(self.args)
        card = model_card(
            model_name=model_name or _output_folder(self.args).name,
            algorithm=algorithm_name(self.args.algo, self.args.ktae),
            ktae_settings=ktae_settings,
            training={name: getattr(self.args, name) for name in TRAINING_FIELDS} | {"epsilon_high": self.epsilon_high},
            steps=self.state.global_step,
            description=description,
            accuracy=accuracy,
            tags=list(dict.fromkeys([*self._tag_names, self.args.algo, *tags])),
        )
        write_atomic(_output_folder(self.args) / "README.md", card)  # never half a card

    # ------------------------------------------------------------------------------------------
    # Checkpoints: the extra-prompt stream of dynamic sampling resumes where it stopped

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:  # a full disk: safetensors and torch raise their own errors for it
            raise OSError(f"could not save the checkpoint {folder} ({error})") from error
        if self.args.should_save:
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump({"extra_generation_batches": self._extra_batches_drawn}, f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                self._extra_batches_drawn = json.load(f)["extra_generation_batches"]
            self._extra_batch_indices = None


def trl_rollout_advantage(args: KTAEGRPOConfig) -> str:
    """TRL's own rollout-level advantage, in words."""
    if args.multi_objective_aggregation != "sum_then_normalize":
        return f"TRL's own (multi_objective_aggregation={args.multi_objective_aggregation})"
    return f"TRL's own (scale_rewards={args.scale_rewards})"


class KTAESettingsCallback(TrainerCallback):
    """At train begin, writes the trainer's resolved KTAE settings to ``<output_dir>/ktae_settings.json``
    (`ktae.run_folder.KTAESettings`), where reports read them beside rollouts.jsonl."""

    def __init__(self, settings: KTAESettings):
        self.settings = settings

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            write_ktae_settings(_output_folder(args), self.settings)


class DropLogsAfterStartStep(TrainerCallback):
    """At train begin, drops the lines of rollouts.jsonl and key_tokens.jsonl after the step training starts from.

    That step is the resumed checkpoint's (0 for a fresh start): the run writes the later steps again, so
    each step is logged once even when a killed run had logged steps its last checkpoint did not keep.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            for name in (ROLLOUTS_FILE, KEY_TOKENS_FILE):
                drop_steps_after(_output_folder(args) / name, state.global_step)
