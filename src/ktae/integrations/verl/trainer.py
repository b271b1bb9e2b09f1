"""verl's v1 PPO trainers with the response token ids handed to the ``ktae`` estimator.

verl's ``_compute_advantage`` reads uids, masks and rewards from its TransferQueue, but not the
response tokens. Each KTAE trainer subclasses one of verl's (sync, colocate_async, separate_async),
fetches the tokens of the same rows, and runs verl's own advantage step inside
:func:`~ktae.integrations.verl.estimator.response_tokens`. The trainers are registered with verl's
trainer registry as ``ktae_<mode>``; :class:`KTAETaskRunner` (verl's TaskRunner, run by the launcher)
imports this module in the Ray process where the trainer lives.

The ``ktae/*`` metrics of each advantage step (ktae.integrations.signals) go into verl's metrics dict,
so they reach every logger in ``trainer.logger``; ``ktae/time_share`` is added once the step's time is
known, and the most credited and blamed tokens go to the W&B / trackio / TensorBoard loggers as a table
(and to verl's ``file`` logger as a JSON line).

With ``trainer.ktae_rollouts_dir`` set, the trainer also appends the first
``trainer.ktae_rollout_groups_per_step`` prompt groups of every step to ``<dir>/rollouts.jsonl``, the
format ``ktae viz`` reads (token ids, decoded pieces and the per-token advantages training used), and
writes the run's KTAE settings to ``<dir>/ktae_settings.json`` when it starts
(`~ktae.integrations.verl.config.ktae_settings_from_config`); the launcher runs baselines through these
trainers too when it is set, so their rollouts and settings are logged alike.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, register_trainer
from verl.utils.config import omega_conf_to_dataclass

from ktae.integrations.signals import KEY_TOKENS_TABLE, log_key_token_table, top_key_tokens
from ktae.integrations.verl.config import (
    KTAE_ESTIMATOR,
    KTAE_TRAINER_MODES,
    ktae_config_from_algorithm,
    ktae_settings_from_config,
    validate_ktae_run,
)
from ktae.integrations.verl.estimator import response_tokens
from ktae.models import decode_token, ignored_token_ids, model_vocab_size
from ktae.run_folder import ROLLOUTS_FILE, RolloutRecord, append_jsonl, write_ktae_settings

if TYPE_CHECKING:  # what the mixin extends: the trainers it is mixed into are verl's PPOTrainer subclasses
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer as _VerlTrainer
else:
    _VerlTrainer = object


class KTAETrainerMixin(_VerlTrainer):
    """Runs verl's advantage step with the batch's response token ids available to the ktae estimator.

    ``base_trainer_mode`` is the verl mode the trainer runs as: the config is set back to it, so every
    mode-dependent part of verl (replay buffer, refill, checkpoint) behaves exactly as in that mode.
    """

    base_trainer_mode: str
    # Set per step by the advantage steps, read by _compute_metrics: estimator seconds, latest key tokens.
    _ktae_seconds: float = 0.0
    _ktae_key_tokens: dict | None = None
    #: The model's vocabulary size (`ktae.models.model_vocab_size`), which bounds the response ids.
    vocab_size: int

    def __init__(self, config: DictConfig):
        validate_ktae_run(config)
        with open_dict(config):
            config.trainer.v1.trainer_mode = self.base_trainer_mode
        super().__init__(config)

    def _init_tokenizer(self):
        # verl's, keeping the model's vocabulary size from the same model config: it can exceed the
        # tokenizer's (padded embedding rows), and the driver process holds no model to ask.
        model_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.model)
        self.tokenizer = model_config.tokenizer
        self.processor = model_config.processor
        self.vocab_size = model_vocab_size(model_config.hf_config)
        rollouts_dir = self.config.trainer.get("ktae_rollouts_dir")
        if rollouts_dir:  # beside the rollouts, once the tokenizer (its ignored ids) is known
            settings = ktae_settings_from_config(self.config, ignored_token_ids(self.tokenizer))
            write_ktae_settings(rollouts_dir, settings)

    def _compute_advantage(self, batch, metrics: dict):
        if self.config.algorithm.adv_estimator != KTAE_ESTIMATOR:
            result = super()._compute_advantage(batch, metrics)
            if self.config.trainer.get("ktae_rollouts_dir"):  # a baseline's rollouts, to compare with KTAE's
                self._log_rollouts(batch)
            return result
        fields = ["uid", "responses", "response_mask"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        data = data.to_padded_tensor()  # padding is masked out: its value is never read
        uids = np.array(data.pop("uid").tolist(), dtype=object)
        ignore = ignored_token_ids(self.tokenizer)
        table = bool(self._key_token_backends())
        with response_tokens(
            data["responses"], uids=uids, ignore_token_ids=ignore, with_values=table, vocab_size=self.vocab_size
        ) as tokens:
            result = super()._compute_advantage(batch, metrics)
        metrics.update(tokens.metrics)
        self._ktae_seconds += tokens.metrics["ktae/seconds"]
        if tokens.values is not None:  # the values behind this step's bonus, for the key-token table
            self._ktae_key_tokens = top_key_tokens(
                tokens.values,
                data["responses"],
                data["response_mask"],
                uids,
                functools.partial(decode_token, self.tokenizer),
            )
        if self.config.trainer.get("ktae_rollouts_dir"):
            self._log_rollouts(batch)
        return result

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if self.config.algorithm.adv_estimator != KTAE_ESTIMATOR:
            return
        metrics["ktae/seconds"] = self._ktae_seconds  # every advantage step of this training step
        metrics["ktae/time_share"] = self._ktae_seconds / timing_raw["step"] if timing_raw.get("step") else 0.0
        self._ktae_seconds = 0.0
        if self._ktae_key_tokens is not None:
            backends = self._key_token_backends()
            file_logger = backends.pop("file", None)
            log_key_token_table(self._ktae_key_tokens, global_steps, **backends)
            if file_logger is not None:  # verl's JSON-lines log: the table as a line of its own
                file_logger.log({KEY_TOKENS_TABLE: self._ktae_key_tokens}, step=global_steps)
            self._ktae_key_tokens = None

    def _key_token_backends(self) -> dict:
        """The loggers of verl's Tracking that take the table: W&B and trackio modules, TensorBoard's
        writer, verl's file logger."""
        loggers = getattr(getattr(self, "logger", None), "logger", {})
        backends = {}
        if "file" in loggers:
            backends["file"] = loggers["file"]
        if loggers.get("wandb") is not None and loggers["wandb"].run is not None:
            backends["wandb"] = loggers["wandb"]
        if "trackio" in loggers:
            backends["trackio"] = loggers["trackio"].trackio
        if "tensorboard" in loggers:
            backends["tensorboard"] = loggers["tensorboard"].writer
        return backends

    def _log_rollouts(self, batch) -> None:
        """Append this step's first prompt groups, whole, to rollouts.jsonl as `RolloutRecord` lines."""
        fields = ["uid", "prompts", "responses", "rm_scores", "advantages"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        uids = data.pop("uid").tolist()
        logged = set(list(dict.fromkeys(uids))[: self.config.trainer.get("ktae_rollout_groups_per_step", 4)])
        threshold = ktae_config_from_algorithm(self.config.algorithm).correct_threshold
        columns = [data[name].unbind(0) for name in ("prompts", "responses", "rm_scores", "advantages")]
        records = []
        for uid, prompt, response, rewards, advantages in zip(uids, *columns):
            if uid not in logged:
                continue
            records.append(
                RolloutRecord.from_tokens(
                    self.tokenizer,
                    step=self.global_steps,
                    group=uid,
                    prompt=self.tokenizer.decode(prompt.tolist(), skip_special_tokens=True),
                    token_ids=response.tolist(),
                    score=float(rewards.sum()),
                    correct_threshold=threshold,
                    advantages=advantages.tolist(),
                )
            )
        append_jsonl(Path(self.config.trainer.ktae_rollouts_dir) / ROLLOUTS_FILE, records)


@register_trainer(KTAE_TRAINER_MODES["sync"])
class KTAEPPOTrainerSync(KTAETrainerMixin, PPOTrainerSync):
    base_trainer_mode = "sync"


@register_trainer(KTAE_TRAINER_MODES["colocate_async"])
class KTAEPPOTrainerColocateAsync(KTAETrainerMixin, PPOTrainerColocateAsync):
    base_trainer_mode = "colocate_async"


@register_trainer(KTAE_TRAINER_MODES["separate_async"])
class KTAEPPOTrainerSeparateAsync(KTAETrainerMixin, PPOTrainerSeparateAsync):
    base_trainer_mode = "separate_async"


if TYPE_CHECKING:  # mypy sees the class ray.remote decorated; at run time that is the class behind the actor
    _VerlTaskRunner = TaskRunnerV1
else:
    _VerlTaskRunner = TaskRunnerV1.__ray_actor_class__


@ray.remote
class KTAETaskRunner(_VerlTaskRunner):
    """verl's TaskRunner, importing this module in its Ray process before it looks the trainer up.

    Ray ships the actor class by value, so the import has to happen when ``run`` executes.
    """

    def run(self, config: DictConfig):
        import ktae.integrations.verl.trainer  # noqa: F401  registers the ktae_<mode> trainers here

        return super().run(config)
