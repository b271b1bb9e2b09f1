"""The vectorized estimator against the slow float64 reference, on random and edge-case batches."""

import numpy as np
import pytest
import torch

from ktae import KTAEConfig, compute_key_token_values, compute_ktae_advantages, compute_ktae_advantages_with_values
from ktae.core.counting import BACKENDS
from tests.core.reference import random_batch, reference

CONFIGS = [
    KTAEConfig(),
    KTAEConfig(alpha=0.5, beta_ig=2.0, gamma_tf=0.3, top=0.7),
    KTAEConfig(rollout_advantage="dr_grpo", correct_threshold=0.5),
    KTAEConfig(rollout_advantage="rloo", ignore_token_ids=(0, 3)),
]


def check(responses, mask, scores, groups, cfg, backend, atol=1e-5):
    expected, values = reference(responses.numpy(), mask.numpy(), scores.numpy(), list(groups), cfg)
    adv = compute_ktae_advantages(responses, mask, scores, groups, config=cfg, backend=backend)
    assert adv.dtype == torch.float32
    np.testing.assert_allclose(adv.numpy(), expected, atol=atol, rtol=0)
    kv = compute_key_token_values(responses, mask, scores, groups, config=cfg, backend=backend)
    records = {(r["group"], r["token"]): r for r in kv.to_records()}
    assert set(records) == set(values)
    for key, ref in values.items():
        got = records[key]
        assert (got["a"], got["b"], got["c"], got["d"]) == (ref["a"], ref["b"], ref["c"], ref["d"]), key
        for name in ("p_value", "fisher", "info_gain", "h", "tf"):
            if name in ref:
                assert got[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-9), (key, name)
        assert got["value"] == pytest.approx(ref["value"], abs=1e-9), key
    # both from one count: the same advantages and the same values
    adv_once, kv_once = compute_ktae_advantages_with_values(
        responses, mask, scores, groups, config=cfg, backend=backend
    )
    torch.testing.assert_close(adv_once, adv, rtol=0, atol=1e-6)
    assert kv_once.group_ids == kv.group_ids
    for name in ("group", "token", "a", "b", "c", "d", "p_value", "fisher", "info_gain", "h", "tf", "value"):
        torch.testing.assert_close(getattr(kv_once, name), getattr(kv, name), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "weights", "dr_grpo", "rloo-ignore"])
def test_random_batches(backend, seed, cfg):
    check(*random_batch(seed), cfg, backend)


@pytest.mark.parametrize("ids", ["int", "str"])
def test_interleaved_and_string_groups(backend, ids):
    check(*random_batch(11, num_groups=7, ids=ids), KTAEConfig(), backend)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "int"])
def test_id_and_mask_dtypes(backend, dtype, mask_kind):
    responses, mask, scores, groups = random_batch(3)
    mask = {"bool": mask, "float": mask.float(), "int": mask.long()}[mask_kind]
    check(responses.to(dtype), mask, scores, groups, KTAEConfig(), backend)


def test_edge_groups(backend):
    # one single-rollout group, an all-correct group, an all-wrong group, empty responses,
    # and a group where every correct rollout is empty (N_T = 0).
    responses = torch.tensor(
        [
            [1, 2, 3, 0],  # g0 single rollout
            [1, 1, 2, 0],  # g1 all correct
            [2, 3, 0, 0],
            [4, 4, 4, 4],  # g2 all wrong
            [0, 0, 0, 0],  # g2 empty
            [0, 0, 0, 0],  # g3 empty, correct
            [5, 6, 5, 0],  # g3 incorrect
            [5, 7, 0, 0],  # g3 incorrect
            [0, 0, 0, 0],  # g4 empty, incorrect
            [8, 9, 8, 9],  # g4 correct
        ]
    )
    lengths = torch.tensor([3, 3, 2, 4, 0, 0, 3, 2, 0, 4])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    scores = torch.tensor([1.0, 1, 1, 0, 0, 1, 0, 0, 0, 1])
    groups = [0, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    check(responses, mask, scores, groups, KTAEConfig(), backend)
    adv = compute_ktae_advantages(responses, mask, scores, groups, backend=backend)
    # groups with one outcome keep the rollout-level advantage on every token
    assert torch.allclose(adv[1, :3], adv[1, 0].expand(3)) and torch.allclose(adv[3], adv[3, 0].expand(4))
    assert (adv[4] == 0).all() and (adv[5] == 0).all()


def test_empty_batch_and_all_masked(backend):
    responses = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    adv = compute_ktae_advantages(responses, mask, torch.tensor([1.0, 0.0, 1.0]), [0, 0, 1], backend=backend)
    assert adv.shape == (3, 5) and (adv == 0).all()
    kv = compute_key_token_values(responses, mask, torch.tensor([1.0, 0.0, 1.0]), [0, 0, 1], backend=backend)
    assert kv.token.numel() == 0


def test_large_group(backend):
    # G = 256 rollouts in one group: exact tables up to n = 256.
    check(*random_batch(5, num_groups=1, max_group=1, max_len=6, vocab=40), KTAEConfig(), backend)
    responses, mask, scores, _ = random_batch(5, num_groups=256, max_group=1, max_len=6, vocab=40)
    groups = [0] * responses.shape[0]
    check(responses, mask, scores, groups, KTAEConfig(), backend)


def test_long_responses(backend):
    # T = 32768 tokens per response
    rng = np.random.default_rng(2)
    responses = torch.from_numpy(rng.integers(0, 5000, size=(4, 32768)))
    lengths = torch.tensor([32768, 20000, 32768, 5])
    mask = torch.arange(32768)[None, :] < lengths[:, None]
    check(responses, mask, torch.tensor([1.0, 0.0, 0.0, 1.0]), [0, 0, 0, 0], KTAEConfig(), backend)


def test_backends_agree_on_a_large_batch():
    responses, mask, scores, groups = random_batch(9, num_groups=40, max_group=16, max_len=300, vocab=3000)
    results = {name: compute_ktae_advantages(responses, mask, scores, groups, backend=name) for name in BACKENDS}
    torch.testing.assert_close(results["cpu-kernels"], results["sort"], atol=1e-6, rtol=0)
    torch.testing.assert_close(results["auto"], results["cpu-kernels"], atol=0, rtol=0)
