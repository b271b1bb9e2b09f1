"""Bad input raises a clear error naming the problem."""

import re

import numpy as np
import pytest
import torch

from ktae import KTAEConfig, compute_key_token_values, compute_ktae_advantages, compute_rollout_advantages
from tests.core.reference import random_batch

R = torch.tensor([[1, 2, 3], [4, 5, 0]])
M = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
S = torch.tensor([1.0, 0.0])
G = [0, 0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(responses=R[0]), ValueError, r"responses must have shape \[B, T\]"),
        (dict(responses=R.float()), TypeError, "integer token ids"),
        (dict(responses=R.numpy()), TypeError, "responses must be a torch.Tensor"),
        (dict(response_mask=M[:, :2]), ValueError, "does not match responses shape"),
        (dict(response_mask=torch.tensor([[1, 2, 1], [1, 1, 0]])), ValueError, "only 0 and 1"),
        (dict(scores=torch.tensor([1.0, float("nan")])), ValueError, r"NaN or infinite score at rollout\(s\) \[1\]"),
        (dict(scores=torch.tensor([float("inf"), 0.0])), ValueError, "NaN or infinite"),
        (dict(scores=torch.tensor([1.0, 0.0, 1.0])), ValueError, "scores has 3 entries but responses has 2 rows"),
        (dict(scores=torch.ones(2, 1)), ValueError, r"scores must have shape \[B\]"),
        (dict(group_index=[0]), ValueError, "group_index has 1 entries, expected 2"),
        (dict(group_index=torch.tensor([0.0, 1.0])), TypeError, "group_index tensor must hold integers"),
        (dict(group_index=[[0], [1]]), TypeError, "hashable"),
        (dict(responses=torch.tensor([[1, -2, 3], [4, 5, 0]])), ValueError, "negative token id"),
    ],
)
@pytest.mark.parametrize("fn", [compute_ktae_advantages, compute_key_token_values])
def test_bad_input(backend, fn, kwargs, error, match):
    args = dict(responses=R, response_mask=M, scores=S, group_index=G) | kwargs
    with pytest.raises(error, match=match):
        fn(**args, backend=backend)


def test_negative_ids_outside_the_mask_are_fine(backend):
    responses = torch.tensor([[1, 2, 3], [4, 5, -100]])
    adv = compute_ktae_advantages(responses, M, S, G, backend=backend)
    assert (adv[~M] == 0).all()


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(rollout_advantage="ppo"), ValueError, "unknown rollout_advantage 'ppo'"),
        (dict(alpha=-1.0), ValueError, "alpha must be >= 0"),
        (dict(top=float("nan")), ValueError, "top must be finite"),
        (dict(gamma_tf="1"), TypeError, "gamma_tf must be a number"),
        (dict(ignore_token_ids=(1, -5)), ValueError, "ignore_token_ids must be >= 0"),
        (dict(ignore_token_ids="12"), TypeError, "ignore_token_ids must be a sequence"),
        (dict(epsilon=0.0), ValueError, "epsilon must be > 0"),
        (dict(top=1e39), ValueError, "top must be below"),
    ],
)
def test_bad_config(options, error, match):
    with pytest.raises(error, match=match):
        KTAEConfig(**options)


def test_config_from_dict():
    cfg = KTAEConfig.from_dict({"alpha": 2, "ignore_token_ids": [7, 3, 7]})
    assert cfg.alpha == 2.0 and cfg.ignore_token_ids == (3, 7)
    assert KTAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown KTAE option\(s\) \['alhpa'\]"):
        KTAEConfig.from_dict({"alhpa": 1.0})


def test_device_mismatch_is_reported():
    meta = torch.zeros(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="response_mask is on cpu but responses are on meta"):
        compute_ktae_advantages(meta, M, S, G)
    with pytest.raises(ValueError, match="scores are on cpu but responses are on meta"):
        compute_ktae_advantages(meta, M.to("meta"), S, G)


def test_numpy_int_groups_and_list_scores(backend):
    adv = compute_ktae_advantages(R, M, [1, 0], np.array([3, 3]), backend=backend)
    assert adv.shape == R.shape


@pytest.mark.parametrize(
    "group_index",
    [[1, True], [1, 1.0], [True, 1.0], ["1", 1], [np.int64(1), np.float64(1.0)]],
)
def test_mixed_group_id_types_are_refused(group_index):
    with pytest.raises(TypeError, match=r"group_index mixes id types \(.*\); use one type"):
        compute_ktae_advantages(R, M, S, group_index)


def test_nan_group_ids_are_refused():
    with pytest.raises(ValueError, match="group_index holds a NaN id"):
        compute_ktae_advantages(R, M, S, [float("nan"), float("nan")])


def test_one_kind_of_group_ids_is_fine():
    ints = compute_ktae_advantages(R, M, S, [np.int64(4), 4])  # numpy and Python ints are one kind
    for ids in (["a", "a"], [4.0, 4.0], [(1, 2), (1, 2)]):
        torch.testing.assert_close(compute_ktae_advantages(R, M, S, ids), ints)


def test_scores_that_require_grad_are_constants(backend):
    scores = S.clone().requires_grad_(True)
    adv = compute_ktae_advantages(R, M, scores, G, backend=backend)
    assert not adv.requires_grad
    torch.testing.assert_close(adv, compute_ktae_advantages(R, M, S, G, backend=backend))
    values = compute_key_token_values(R, M, scores, G, backend=backend)
    assert not values.value.requires_grad


def test_config_as_a_mapping():
    cfg = {"top": 0.5, "ignore_token_ids": [3]}
    torch.testing.assert_close(
        compute_ktae_advantages(R, M, S, G, config=cfg),
        compute_ktae_advantages(R, M, S, G, config=KTAEConfig(top=0.5, ignore_token_ids=(3,))),
    )
    assert compute_key_token_values(R, M, S, G, config=cfg).value.abs().max() <= 0.5
    with pytest.raises(ValueError, match=r"unknown KTAE option\(s\) \['tpo'\]"):
        compute_ktae_advantages(R, M, S, G, config={"tpo": 0.5})
    with pytest.raises(TypeError, match="config must be a KTAEConfig, a mapping of its options or None, got list"):
        compute_ktae_advantages(R, M, S, G, config=[("top", 0.5)])


@pytest.mark.parametrize(
    "scores, groups, options, shown",
    [
        ([1e300, 0.0], G, {}, "[nan, nan]"),  # the variance overflows: the advantages were silently 0
        ([1e39, 0.0], G, {"rollout_advantage": "dr_grpo"}, "[5e+38, -5e+38]"),  # beyond float32: they were inf
        ([1e39, 0.0], G, {"rollout_advantage": "rloo"}, "[1e+39, -1e+39]"),
        # a lone rollout keeps its score, 3e38: a float32, but not once a key-token value of up to 1e38 is added
        ([3e38, 0.0], [0, 1], {"top": 1e38}, "[2.99999"),
    ],
)
def test_scores_whose_advantage_overflows_are_refused_by_name(backend, scores, groups, options, shown):
    scores = torch.tensor(scores, dtype=torch.float64)
    method = options.get("rollout_advantage", "grpo")
    with pytest.raises(ValueError, match=rf"scores too large for rollout_advantage='{method}'.*{re.escape(shown)}"):
        compute_ktae_advantages(R, M, scores, groups, config=options, backend=backend)


def test_largest_scores_that_fit_are_kept(backend):
    # A lone rollout keeps its score (GRPO's mean 0 and std 1); 3e38 + a value below 1 fits float32.
    adv = compute_ktae_advantages(R, M, torch.tensor([3e38, 0.0], dtype=torch.float64), [0, 1], backend=backend)
    assert torch.isfinite(adv).all() and adv[0, 0] == pytest.approx(3e38, rel=1e-5)
    # With KTAE off nothing is added to the rollout-level advantage.
    off = torch.tensor([3e38, 0.0], dtype=torch.float64)
    assert compute_ktae_advantages(R, M, off, [0, 1], config={"top": 1e38, "alpha": 0, "beta_ig": 0}).isfinite().all()


def test_rollout_advantages_that_overflow_are_refused_by_name():
    with pytest.raises(ValueError, match="scores too large for rollout_advantage='dr_grpo'"):
        compute_rollout_advantages(torch.tensor([1e39, 0.0], dtype=torch.float64), [0, 0], "dr_grpo")
    with pytest.raises(ValueError, match="scores too large for rollout_advantage='grpo'"):
        compute_rollout_advantages(torch.tensor([-1e200, 1e200], dtype=torch.float64), [0, 0], "grpo")


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(gamma_tf=1e308), "gamma_tf must be at most 5.99e"),  # h + gamma TF was NaN
        (dict(gamma_tf=-1e303), "gamma_tf must be at most 5.99e"),
        (dict(alpha=1e308, beta_ig=1e308), r"alpha \+ beta_ig must be finite"),  # the values were all 0
        (dict(ignore_token_ids=[2**70]), r"ignore_token_ids must be int64 token ids \(at most 2\*\*63 - 1\)"),
        (dict(ignore_token_ids=[2**63]), "ignore_token_ids must be int64 token ids"),
    ],
)
def test_options_whose_result_is_not_finite_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        KTAEConfig(**options)


def test_largest_options_that_fit_give_finite_values(backend):
    responses, mask, scores, groups = random_batch(2, num_groups=6, max_group=8, max_len=12, vocab=20)
    for options in (dict(gamma_tf=5.9e302), dict(gamma_tf=-5.9e302), dict(alpha=8e307, beta_ig=8e307)):
        values = compute_key_token_values(responses, mask, scores, groups, config=options, backend=backend).value
        adv = compute_ktae_advantages(responses, mask, scores, groups, config=options, backend=backend)
        assert torch.isfinite(values).all() and torch.isfinite(adv).all(), options
    largest_id = {"ignore_token_ids": [2**63 - 1]}
    assert compute_ktae_advantages(R, M, S, G, config=largest_id, backend=backend).isfinite().all()
