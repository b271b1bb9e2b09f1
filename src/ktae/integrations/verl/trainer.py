"""verl's v1 PPO trainers with the response token ids handed to the ``ktae`` estimator.

verl's ``_compute_advantage`` reads uids, masks and rewards from its TransferQueue, but not the
response tokens. Each KTAE trainer subclasses one of verl's (sync, colocate_async, separate_async),
fetches the tokens of the same rows, and runs verl's own advantage step inside
:func:`~ktae.integrations.verl.estimator.response_tokens`. The trainers are registered with verl's
trainer registry as ``ktae_<mode>``; :class:`KTAETaskRunner` (verl's TaskRunner, run by the launcher)
imports this module in the Ray process where the trainer lives.

With ``trainer.ktae_rollouts_dir`` set, the trainer also appends the first
``trainer.ktae_rollout_groups_per_step`` prompt groups of every step to ``<dir>/rollouts.jsonl``, the
format ``ktae viz`` reads (token ids, decoded pieces and the per-token advantages training used).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import ray
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, register_trainer

from ktae.integrations.verl.config import (
    KTAE_ESTIMATOR,
    KTAE_TRAINER_MODES,
    ktae_config_from_algorithm,
    validate_ktae_run,
)
from ktae.integrations.verl.estimator import response_tokens
from ktae.models import ignored_token_ids
from ktae.reports.text import merge_pieces, tokenizer_piece_style

ROLLOUTS_FILE = "rollouts.jsonl"


class KTAETrainerMixin:
    """Runs verl's advantage step with the batch's response token ids available to the ktae estimator.

    ``base_trainer_mode`` is the verl mode the trainer runs as: the config is set back to it, so every
    mode-dependent part of verl (replay buffer, refill, checkpoint) behaves exactly as in that mode.
    """

    base_trainer_mode: str

    def __init__(self, config: DictConfig):
        validate_ktae_run(config)
        with open_dict(config):
            config.trainer.v1.trainer_mode = self.base_trainer_mode
        super().__init__(config)

    def _compute_advantage(self, batch, metrics: dict):
        if self.config.algorithm.adv_estimator != KTAE_ESTIMATOR:
            return super()._compute_advantage(batch, metrics)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "responses"])
        responses = data["responses"]
        if responses.is_nested:  # TransferQueue returns a plain tensor when all responses have one length
            responses = responses.to_padded_tensor(padding=0)  # masked out: the value is never read
        uids = np.array(data.pop("uid").tolist(), dtype=object)
        with response_tokens(responses, uids=uids, ignore_token_ids=ignored_token_ids(self.tokenizer)):
            result = super()._compute_advantage(batch, metrics)
        if self.config.trainer.get("ktae_rollouts_dir"):
            self._log_rollouts(batch)
        return result

    @functools.cached_property
    def _piece_style(self) -> str:
        return tokenizer_piece_style(self.tokenizer)

    def _log_rollouts(self, batch) -> None:
        """Append this step's first prompt groups, whole, to rollouts.jsonl (contracts: RUN_DIR/rollouts.jsonl)."""
        fields = ["uid", "prompts", "responses", "rm_scores", "advantages"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        uids = data.pop("uid").tolist()
        logged = set(list(dict.fromkeys(uids))[: self.config.trainer.get("ktae_rollout_groups_per_step", 4)])
        threshold = ktae_config_from_algorithm(self.config.algorithm).correct_threshold
        special = self.tokenizer.all_special_tokens
        columns = [data[name].unbind(0) for name in ("prompts", "responses", "rm_scores", "advantages")]
        records = []
        for uid, prompt, response, rewards, advantages in zip(uids, *columns):
            if uid not in logged:
                continue
            token_ids = response.tolist()
            pieces = merge_pieces(self.tokenizer.convert_ids_to_tokens(token_ids), self._piece_style, special)
            score = float(rewards.sum())
            records.append({
                "step": self.global_steps,
                "group": uid,
                "prompt": self.tokenizer.decode(prompt.tolist(), skip_special_tokens=True),
                "response": "".join(pieces),
                "token_ids": token_ids,
                "tokens": pieces,
                "score": score,
                "correct": score > threshold,
                "advantages": advantages.tolist(),
            })
        directory = Path(self.config.trainer.ktae_rollouts_dir)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ROLLOUTS_FILE, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)


@register_trainer(KTAE_TRAINER_MODES["sync"])
class KTAEPPOTrainerSync(KTAETrainerMixin, PPOTrainerSync):
    base_trainer_mode = "sync"


@register_trainer(KTAE_TRAINER_MODES["colocate_async"])
class KTAEPPOTrainerColocateAsync(KTAETrainerMixin, PPOTrainerColocateAsync):
    base_trainer_mode = "colocate_async"


@register_trainer(KTAE_TRAINER_MODES["separate_async"])
class KTAEPPOTrainerSeparateAsync(KTAETrainerMixin, PPOTrainerSeparateAsync):
    base_trainer_mode = "separate_async"


@ray.remote
class KTAETaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's TaskRunner, importing this module in its Ray process before it looks the trainer up.

    Ray ships the actor class by value, so the import has to happen when ``run`` executes.
    """

    def run(self, config: DictConfig):
        import ktae.integrations.verl.trainer  # noqa: F401  registers the ktae_<mode> trainers here

        return super().run(config)
