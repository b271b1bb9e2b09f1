"""verl's v1 PPO trainers with the response token ids handed to the ``ktae`` estimator.

verl's ``_compute_advantage`` reads uids, masks and rewards from its TransferQueue, but not the
response tokens. Each KTAE trainer subclasses one of verl's (sync, colocate_async, separate_async),
fetches the tokens of the same rows, and runs verl's own advantage step inside
:func:`~ktae.integrations.verl.estimator.response_tokens`. The trainers are registered with verl's
trainer registry as ``ktae_<mode>``; :class:`KTAETaskRunner` (verl's TaskRunner, run by the launcher)
imports this module in the Ray process where the trainer lives.
"""

from __future__ import annotations

import numpy as np
import ray
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, register_trainer

from ktae.integrations.verl.config import KTAE_ESTIMATOR, KTAE_TRAINER_MODES, validate_ktae_run
from ktae.integrations.verl.estimator import response_tokens, tokenizer_ignore_token_ids


class KTAETrainerMixin:
    """Runs verl's advantage step with the batch's response token ids available to the ktae estimator.

    ``base_trainer_mode`` is the verl mode the trainer runs as: the config is set back to it, so every
    mode-dependent part of verl (replay buffer, refill, checkpoint) behaves exactly as in that mode.
    """

    base_trainer_mode: str

    def __init__(self, config: DictConfig):
        self.ktae_config = validate_ktae_run(config)
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
        with response_tokens(responses, uids=uids, ignore_token_ids=tokenizer_ignore_token_ids(self.tokenizer)):
            return super()._compute_advantage(batch, metrics)


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
