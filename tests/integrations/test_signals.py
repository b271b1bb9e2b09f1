"""The metrics every integration reports (ktae.integrations.signals), from their summed parts."""

import pytest
import torch

from ktae.integrations.signals import bonus_metrics, bonus_sums


def test_bonus_means_by_outcome_and_the_large_bonus_share():
    bonus = torch.tensor([[0.6, 0.1, 9.0], [-0.2, -0.7, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    metrics = bonus_metrics(bonus_sums(bonus, mask, torch.tensor([True, False])))
    assert metrics == pytest.approx(
        {"ktae/large_bonus_share": 2 / 5, "ktae/bonus_mean_correct": 0.35, "ktae/bonus_mean_incorrect": -0.3}
    )


@pytest.mark.parametrize("correct", [True, False])
def test_a_mean_without_rollouts_of_its_outcome_is_left_out(correct):
    bonus, mask = torch.tensor([[0.2, -0.4]]), torch.ones(1, 2)
    metrics = bonus_metrics(bonus_sums(bonus, mask, torch.tensor([correct])))
    kept, left_out = ("correct", "incorrect") if correct else ("incorrect", "correct")
    assert metrics == pytest.approx({"ktae/large_bonus_share": 0.0, f"ktae/bonus_mean_{kept}": -0.1})
    assert f"ktae/bonus_mean_{left_out}" not in metrics


def test_sums_of_shards_give_the_metrics_of_the_whole_batch():
    bonus = torch.tensor([[0.6, 0.1], [-0.2, -0.7], [0.3, 0.0]])
    mask, correct = torch.tensor([[1, 1], [1, 0], [1, 1]]), torch.tensor([True, False, True])
    shards = bonus_sums(bonus[:1], mask[:1], correct[:1]) + bonus_sums(bonus[1:], mask[1:], correct[1:])
    assert bonus_metrics(shards) == pytest.approx(bonus_metrics(bonus_sums(bonus, mask, correct)))
