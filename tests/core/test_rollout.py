import numpy as np
import pytest
import torch

from ktae import (
    ROLLOUT_ADVANTAGES,
    KTAEConfig,
    compute_key_token_values,
    compute_ktae_advantages,
    compute_rollout_advantages,
    get_rollout_advantage,
    register_rollout_advantage,
)
from tests.core.reference import rollout_advantages


@pytest.mark.parametrize("method", sorted(ROLLOUT_ADVANTAGES))
def test_matches_reference_on_ragged_interleaved_groups(method):
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(6), [1, 2, 3, 5, 8, 16]))
    scores = rng.normal(size=len(groups))
    got = compute_rollout_advantages(torch.from_numpy(scores), groups, method=method, epsilon=1e-6)
    assert got.dtype == torch.float32
    for g in np.unique(groups):
        rows = np.nonzero(groups == g)[0]
        expected = rollout_advantages(list(scores[rows]), method, 1e-6)
        np.testing.assert_allclose(got[rows].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_grpo_conventions():
    # identical scores give 0; a single rollout uses mean 0 and std 1 (verl's convention)
    adv = compute_rollout_advantages(torch.tensor([1.0, 1.0, 0.7]), ["a", "a", "b"])
    assert adv[0] == 0 and adv[1] == 0
    assert adv[2].item() == pytest.approx(0.7 / (1 + 1e-6))


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown rollout advantage 'ppo'"):
        compute_rollout_advantages(torch.ones(2), [0, 0], method="ppo")


@pytest.fixture
def scratch_name():
    """A registry name that the test may take; freed afterwards."""
    name = "test_median_baseline"
    yield name
    ROLLOUT_ADVANTAGES.pop(name, None)


def test_a_registered_base_is_usable_by_name(scratch_name):
    @register_rollout_advantage(scratch_name)
    def median_baseline(scores, group, num_groups, epsilon):
        medians = torch.stack([scores[group == g].median() for g in range(num_groups)])
        return scores - medians[group]

    assert get_rollout_advantage(scratch_name) is median_baseline
    assert register_rollout_advantage(scratch_name)(median_baseline) is median_baseline  # same function: fine
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0, 5.0])
    got = compute_rollout_advantages(scores, [0, 0, 0, 1, 1], method=scratch_name)
    assert got.tolist() == [
        1.0,
        0.0,
        0.0,
        0.0,
        3.0,
    ]  # torch's median of an even count is the lower middle

    # KTAEConfig accepts the name, and the estimator adds the key-token values to this base
    config = KTAEConfig(rollout_advantage=scratch_name)
    responses = torch.tensor([[3, 4], [3, 5], [6, 5], [3, 4], [3, 3]])
    mask = torch.ones_like(responses, dtype=torch.bool)
    bonus = compute_ktae_advantages(responses, mask, scores, [0, 0, 0, 1, 1], KTAEConfig(rollout_advantage="none"))
    advantages = compute_ktae_advantages(responses, mask, scores, [0, 0, 0, 1, 1], config)
    torch.testing.assert_close(advantages, got[:, None] + bonus)


def test_a_second_function_under_a_taken_name_is_refused(scratch_name):
    register_rollout_advantage(scratch_name)(lambda scores, group, num_groups, epsilon: scores)
    with pytest.raises(ValueError, match=f"rollout advantage '{scratch_name}' is already registered"):
        register_rollout_advantage(scratch_name)(lambda scores, group, num_groups, epsilon: -scores)
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_rollout_advantage("grpo")(lambda scores, group, num_groups, epsilon: scores)


def test_unknown_names_list_the_registered_ones(scratch_name):
    register_rollout_advantage(scratch_name)(lambda scores, group, num_groups, epsilon: scores)
    with pytest.raises(
        ValueError,
        match=f"unknown rollout advantage 'ppo'; choose one of grpo, dr_grpo, rloo, none, {scratch_name}",
    ):
        get_rollout_advantage("ppo")
    with pytest.raises(
        ValueError,
        match=f"unknown rollout_advantage 'ppo'; choose one of .*{scratch_name}",
    ):
        KTAEConfig(rollout_advantage="ppo")


def test_none_base_leaves_the_bonus_alone():
    responses = torch.tensor([[3, 4, 0], [3, 5, 5], [6, 5, 0], [3, 4, 4]])
    mask = responses != 0
    scores, groups = torch.tensor([1.0, 0.0, 0.0, 1.0]), [0, 0, 0, 0]
    bonus = compute_ktae_advantages(responses, mask, scores, groups, KTAEConfig(rollout_advantage="none"))
    values = {
        (r["group"], r["token"]): r["value"]
        for r in compute_key_token_values(responses, mask, scores, groups).to_records()
    }
    expected = torch.tensor(
        [[values[(0, int(t))] if m else 0.0 for t, m in zip(row, row_mask)] for row, row_mask in zip(responses, mask)]
    )
    torch.testing.assert_close(bonus, expected.float())
    assert (bonus != 0).any()
