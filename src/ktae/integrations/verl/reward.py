"""verl custom reward functions: the paper's boxed-answer math rewards of :mod:`ktae.rewards`.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`` once
per rollout, with the decoded response and the ``reward_model.ground_truth`` of the parquet row:

    reward.custom_reward_function.path=pkg://ktae.integrations.verl.reward
    reward.custom_reward_function.name=compute_score        # 1 correct, 0 otherwise (GRPO)
    reward.custom_reward_function.name=compute_dapo_score   # +1 / -1 (DAPO)

Both return ``{"score", "acc", "pred"}``; ``acc`` is the metric of ``algorithm.filter_groups``.
DAPO's overlong shaping is verl's ``dapo`` reward manager's (``reward.reward_manager.name=dapo`` with
``+reward.reward_kwargs.overlong_buffer_cfg.*`` and ``+reward.reward_kwargs.max_resp_len``): it adds
the same penalty as ``ktae.rewards.make_overlong_penalty`` to the score.
"""

from __future__ import annotations

from ktae.rewards import compute_score


def compute_dapo_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> dict:
    """DAPO's rule-based reward: +1.0 for a correct boxed answer, -1.0 otherwise."""
    return compute_score(data_source, solution_str, ground_truth, extra_info, **{"incorrect_score": -1.0, **kwargs})


__all__ = ["compute_dapo_score", "compute_score"]
