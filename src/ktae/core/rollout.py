"""Rollout-level advantages: one scalar per rollout from the scores of its group.

Each estimator is a small pure function over dense group numbers, registered by name with
:func:`register_rollout_advantage` in ``ROLLOUT_ADVANTAGES`` (the names ``KTAEConfig.rollout_advantage``
accepts). A user's own base registers the same way and is then usable by name everywhere a base is named.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ktae.core.config import FLOAT32_MAX
from ktae.core.groups import GroupIndex, ScoresLike, dense_groups, group_sums, validate_scores

# fn(scores [B] float64, group [B] int64 in [0, num_groups), num_groups, epsilon) -> [B] float64,
# not finite where the scores are too large to give a finite advantage (the callers refuse them).
RolloutAdvantageFn = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]
ROLLOUT_ADVANTAGES: dict[str, RolloutAdvantageFn] = {}


def register_rollout_advantage(
    name: str,
) -> Callable[[RolloutAdvantageFn], RolloutAdvantageFn]:
    """Decorator registering a rollout-level advantage under ``name``.

    Registering the same function again is a no-op (a re-imported module); a different function
    under a taken name raises a ValueError.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a rollout advantage needs a non-empty string name, got {name!r}")

    def decorator(fn: RolloutAdvantageFn) -> RolloutAdvantageFn:
        if not callable(fn):
            raise TypeError(f"rollout advantage {name!r} must be a function, got {fn!r}")
        taken = ROLLOUT_ADVANTAGES.get(name)
        if taken is not None and taken is not fn:
            raise ValueError(
                f"rollout advantage {name!r} is already registered ({taken.__module__}.{taken.__qualname__}); "
                "choose another name"
            )
        ROLLOUT_ADVANTAGES[name] = fn
        return fn

    return decorator


def get_rollout_advantage(name: str) -> RolloutAdvantageFn:
    """The rollout-level advantage registered under ``name``; a ValueError lists the valid names."""
    if name not in ROLLOUT_ADVANTAGES:
        raise ValueError(f"unknown rollout advantage {name!r}; choose one of {', '.join(ROLLOUT_ADVANTAGES)}")
    return ROLLOUT_ADVANTAGES[name]


@register_rollout_advantage("grpo")
def grpo_advantage(scores: torch.Tensor, group: torch.Tensor, num_groups: int, epsilon: float) -> torch.Tensor:
    """GRPO: (s - mean_g) / (std_g + epsilon), Bessel-corrected std; a group of one uses mean 0, std 1.

    scores: [B] float64, group: [B] int64 in [0, num_groups) -> [B] float64; NaN in a group whose
    variance overflows float64 (|s| beyond about 1e154), where the quotient would silently be 0.
    """
    count = group_sums(torch.ones_like(scores), group, num_groups)
    mean = group_sums(scores, group, num_groups) / count
    centred = scores - mean[group]
    var = group_sums(centred * centred, group, num_groups) / (count - 1).clamp(min=1)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), torch.where(torch.isfinite(var), var.sqrt(), torch.nan))
    return (scores - mean[group]) / (std[group] + epsilon)


@register_rollout_advantage("dr_grpo")
def dr_grpo_advantage(scores: torch.Tensor, group: torch.Tensor, num_groups: int, epsilon: float) -> torch.Tensor:
    """Dr. GRPO: s - mean_g, no division by the standard deviation. [B] -> [B] float64."""
    count = group_sums(torch.ones_like(scores), group, num_groups)
    mean = group_sums(scores, group, num_groups) / count
    return scores - mean[group]


@register_rollout_advantage("rloo")
def rloo_advantage(scores: torch.Tensor, group: torch.Tensor, num_groups: int, epsilon: float) -> torch.Tensor:
    """RLOO: s - mean of the other rollouts of the group; a group of one keeps its score. [B] -> [B] float64."""
    count = group_sums(torch.ones_like(scores), group, num_groups)[group]
    total = group_sums(scores, group, num_groups)[group]
    others = (total - scores) / (count - 1).clamp(min=1)
    return torch.where(count > 1, scores - others, scores)


@register_rollout_advantage("none")
def no_rollout_advantage(scores: torch.Tensor, group: torch.Tensor, num_groups: int, epsilon: float) -> torch.Tensor:
    """No rollout-level part: 0 for every rollout, so the advantage is the key-token bonus alone.

    Integrations that take the base from their framework compute the bonus with it. [B] -> [B] float64.
    """
    return torch.zeros_like(scores)


def finite_rollout_advantages(
    scores: torch.Tensor, group: torch.Tensor, num_groups: int, method: str, epsilon: float, headroom: float = 0.0
) -> torch.Tensor:
    """The advantages [B] float64 of the base registered as ``method``, checked: a ValueError names the
    scores when one is not finite, or does not fit float32 once ``headroom`` (the largest key-token
    value that will be added) is added.

    scores: [B] finite (``validate_scores``); group: [B] int64 in [0, num_groups).
    """
    advantage = get_rollout_advantage(method)(scores.double(), group, num_groups, epsilon)
    bad = ~(advantage.abs() + headroom <= FLOAT32_MAX)  # also NaN
    if bool(bad.any()):
        where = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"scores too large for rollout_advantage={method!r}: the rollout-level advantage of rollout(s) "
            f"{where} is {advantage[where].tolist()}, not a finite float32 advantage (largest |score| "
            f"{float(scores.abs().max()):.3g}); rescale the rewards"
        )
    return advantage


def compute_rollout_advantages(
    scores: ScoresLike,
    group_index: GroupIndex,
    method: str = "grpo",
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """Rollout-level advantage of each rollout.

    scores: [B] float (a rollout's total reward); group_index: [B] ints or hashable ids.
    Returns float32 [B] on scores.device. Scores whose advantage is not finite in float32 are refused.
    """
    scores = validate_scores(scores, None)
    group, group_ids = dense_groups(group_index, scores.shape[0], scores.device)
    return finite_rollout_advantages(scores, group, len(group_ids), method, float(epsilon)).float()
