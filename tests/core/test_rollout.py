import numpy as np
import pytest
import torch

from ktae import ROLLOUT_ADVANTAGES, compute_rollout_advantages
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
