"""KTAE as a verl advantage estimator: ``algorithm.adv_estimator=ktae``.

The advantage is verl's own estimator ``algorithm.ktae.base`` (grpo by default), called with the
arguments verl would pass it, plus the key-token bonus on the response tokens:
A[i, t] = base[i, t] + v(group of i, token at t) * mask[i, t].

verl calls a registered estimator with ``token_level_rewards``, ``response_mask``, ``index`` (the uid of
each rollout's prompt) and ``config`` (the ``algorithm`` section), but not with the response token ids
KTAE's contingency tables need. The KTAE trainers (``ktae.integrations.verl.trainer``) fetch them and
hand them over with :func:`response_tokens` around verl's own advantage step; a caller may also pass
``responses=`` directly. Importing this module registers the estimator; verl imports it in every
process through the ``verl.plugins`` entry point or ``VERL_USE_EXTERNAL_MODULES``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from ktae import KeyTokenValues, compute_ktae_advantages, compute_ktae_advantages_with_values
from ktae.integrations.signals import bonus_metrics, bonus_sums
from ktae.integrations.verl.config import (
    DEFAULT_BASE,
    KTAE_ESTIMATOR,
    base_estimator,
    ktae_base_from_algorithm,
    ktae_config_from_algorithm,
)


@dataclasses.dataclass
class ResponseTokens:
    """What the trainer hands to the estimator for one advantage step, and what the estimator hands back.

    responses: [B, T] token ids, rows in the order of the batch verl builds (right-padded);
    uids: [B] the uid of each row, checked against verl's ``index`` (None skips the check);
    ignore_token_ids: the tokenizer's pad and end-of-sequence ids (`ktae.models.ignored_token_ids`);
    with_values: also hand back the key-token values behind the bonus (for the key-token table);
    vocab_size: the model's vocabulary size (`ktae.models.model_vocab_size`): the estimator refuses a
    response id at or above it by name (None: no bound).
    Filled by the estimator: ``metrics`` (``ktae/*``, see ktae.integrations.signals), ``scores`` [B]
    (the summed token-level rewards that decided correctness) and, with ``with_values``, ``values``.
    """

    responses: torch.Tensor
    uids: np.ndarray | None
    ignore_token_ids: tuple[int, ...]
    with_values: bool = False
    vocab_size: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    scores: torch.Tensor | None = None
    values: KeyTokenValues | None = None


_RESPONSE_TOKENS: contextvars.ContextVar[ResponseTokens | None] = contextvars.ContextVar(
    "ktae_response_tokens", default=None
)


@contextlib.contextmanager
def response_tokens(
    responses: torch.Tensor,
    uids=None,
    ignore_token_ids=(),
    with_values: bool = False,
    vocab_size: int | None = None,
) -> Iterator[ResponseTokens]:
    """Make ``responses`` [B, T] available to the ``ktae`` estimator while verl computes advantages."""
    tokens = ResponseTokens(
        responses=responses,
        uids=None if uids is None else np.asarray(uids, dtype=object),
        ignore_token_ids=tuple(int(t) for t in ignore_token_ids),
        with_values=with_values,
        vocab_size=vocab_size,
    )
    reset = _RESPONSE_TOKENS.set(tokens)
    try:
        yield tokens
    finally:
        _RESPONSE_TOKENS.reset(reset)


def _current_tokens(responses, response_mask: torch.Tensor, index) -> ResponseTokens:
    tokens = _RESPONSE_TOKENS.get()
    if responses is not None:
        tokens = ResponseTokens(
            responses=responses,
            uids=None,
            ignore_token_ids=tokens.ignore_token_ids if tokens else (),
            vocab_size=tokens.vocab_size if tokens else None,
        )
    if tokens is None:
        raise RuntimeError(
            "algorithm.adv_estimator=ktae needs the response token ids, which stock verl does not pass to "
            "advantage estimators: launch training with `python -m ktae.integrations.verl <verl overrides>` "
            "(its trainer provides them), or call the estimator inside ktae.integrations.verl.response_tokens(...)"
        )
    if tuple(tokens.responses.shape) != tuple(response_mask.shape):
        raise ValueError(
            f"responses {tuple(tokens.responses.shape)} and response_mask {tuple(response_mask.shape)} "
            "must have the same [batch, response length] shape"
        )
    if tokens.uids is not None and not np.array_equal(tokens.uids, np.asarray(index, dtype=object)):
        raise ValueError(
            "the response tokens given to the ktae estimator are not in the order of the batch (uids differ)"
        )
    return tokens


def compute_base_advantage(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config,
    **inputs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's estimator ``name`` with the arguments verl's ``compute_advantage`` would pass it.

    grpo gets verl's grpo call (rewards, mask, uids, ``norm_adv_by_std_in_grpo``); every other estimator
    gets the rewards, mask, algorithm config, uids and the optional ``inputs`` (``reward_baselines``).
    Returns verl's (advantages [B, T], returns [B, T]).
    """
    estimator = base_estimator(name, supplied=inputs)
    if name == DEFAULT_BASE:
        normalize_by_std = config.get("norm_adv_by_std_in_grpo", True) if config is not None else True
        return estimator(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            norm_adv_by_std_in_grpo=normalize_by_std,
        )
    return estimator(
        token_level_rewards=token_level_rewards, response_mask=response_mask, config=config, index=index, **inputs
    )


@register_adv_est(KTAE_ESTIMATOR)
def compute_ktae_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config=None,
    responses: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``algorithm.ktae.base`` advantages plus the key-token bonus (outcome reward: the score of a
    rollout is its summed rewards).

    Args:
        token_level_rewards: [B, T] float, the reward at each response token (verl puts it on the last).
        response_mask: [B, T] 0/1, 1 on response tokens.
        index: [B] numpy object array, the prompt uid of each rollout (its group).
        config: verl's ``algorithm`` config; KTAE's options under ``algorithm.ktae``.
        responses: [B, T] token ids; by default those set by :func:`response_tokens`.
        kwargs: the other inputs verl passes (``reward_baselines`` when the batch has them), for the base.
    Returns:
        advantages [B, T] float32; returns [B, T]: the base's returns, or the advantages where the base
        returns its advantages as returns (verl's outcome estimators: grpo, rloo, opo, gpg...).
    """
    if index is None:
        raise ValueError("algorithm.adv_estimator=ktae needs the prompt uid of each rollout (index), got None")
    tokens = _current_tokens(responses, response_mask, index)
    base_advantages, base_returns = compute_base_advantage(
        ktae_base_from_algorithm(config), token_level_rewards, response_mask, index, config, **kwargs
    )
    started = time.perf_counter()
    ktae_config = ktae_config_from_algorithm(config, ignore_token_ids=tokens.ignore_token_ids)
    scores = token_level_rewards.sum(dim=-1)
    responses = tokens.responses.to(response_mask.device)
    inputs = (responses, response_mask, scores, index)
    if tokens.with_values:  # one count for the bonus and the key-token table (its statistics timed with the bonus)
        bonus, tokens.values = compute_ktae_advantages_with_values(
            *inputs, config=ktae_config, vocab_size=tokens.vocab_size
        )
    else:
        bonus = compute_ktae_advantages(*inputs, config=ktae_config, vocab_size=tokens.vocab_size)
    advantages = base_advantages + bonus
    tokens.metrics.update(bonus_metrics(bonus_sums(bonus, response_mask, scores > ktae_config.correct_threshold)))
    tokens.metrics["ktae/seconds"] = time.perf_counter() - started
    tokens.scores = scores
    return advantages, advantages if base_returns is base_advantages else base_returns
