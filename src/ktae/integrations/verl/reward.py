"""verl custom reward functions from :mod:`ktae.rewards` (the paper's boxed-answer math rewards).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`` once
per rollout, with the decoded response and the ``reward_model.ground_truth`` of the parquet row. Use:

    reward.custom_reward_function.path=pkg://ktae.integrations.verl.reward
    reward.custom_reward_function.name=compute_score        # 1 correct, 0 otherwise (GRPO)
    reward.custom_reward_function.name=compute_dapo_score   # +1 / -1 (DAPO)

DAPO's overlong shaping is verl's ``dapo`` reward manager's (``reward.reward_manager.name=dapo`` with
``+reward.reward_kwargs.overlong_buffer_cfg.*`` and ``+reward.reward_kwargs.max_resp_len``): it adds
``min(0, -(length - (max_resp_len - len)) / len * penalty_factor)`` to the score, the same penalty as
``ktae.rewards.make_overlong_penalty``. ``acc`` (1.0/0.0) is the metric for ``algorithm.filter_groups``.
"""

from __future__ import annotations

from ktae.rewards import accuracy_reward, dapo_reward


def _answers(ground_truth) -> str | list[str]:
    # parquet gives a list column back as a numpy array
    return ground_truth if isinstance(ground_truth, str) else [str(answer) for answer in ground_truth]


def _result(score: float) -> dict:
    return {"score": float(score), "acc": float(score > 0)}


def compute_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> dict:
    """1.0 when the last boxed answer of ``solution_str`` equals ``ground_truth`` (a string or a list), else 0.0."""
    return _result(accuracy_reward([solution_str], answer=[_answers(ground_truth)])[0])


def compute_dapo_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> dict:
    """DAPO's reward: +1.0 for a correct boxed answer, -1.0 otherwise (verl's dapo manager adds the overlong penalty)."""
    return _result(dapo_reward([solution_str], answer=[_answers(ground_truth)])[0])
