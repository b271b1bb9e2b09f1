"""The properties docs/spec.md lists, checked on random batches drawn by hypothesis."""

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from ktae import (
    KTAEConfig,
    collect_token_statistics,
    compute_key_token_values,
    compute_ktae_advantages,
    key_token_values_from_statistics,
    merge_token_statistics,
)
from tests.core.reference import random_batch

seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=25, deadline=None)


def batch(seed):
    rng = np.random.default_rng(seed)
    return random_batch(seed, num_groups=int(rng.integers(1, 6)), max_group=6, max_len=10, vocab=8)


def values_by_key(responses, mask, scores, groups, cfg=None):
    kv = compute_key_token_values(responses, mask, scores, groups, config=cfg or KTAEConfig())
    return {(r["group"], r["token"]): r["value"] for r in kv.to_records()}


@SETTINGS
@given(seeds)
def test_swapping_labels_negates_values(seed):
    responses, mask, scores, groups = batch(seed)
    before = values_by_key(responses, mask, scores, groups)
    after = values_by_key(responses, mask, 1 - scores, groups)
    assert before.keys() == after.keys()
    for key in before:
        assert abs(after[key] + before[key]) < 1e-12


@SETTINGS
@given(seeds, st.randoms(use_true_random=False))
def test_permuting_rollouts_permutes_outputs(seed, rnd):
    responses, mask, scores, groups = batch(seed)
    perm = list(range(responses.shape[0]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm, dtype=torch.long)
    adv = compute_ktae_advantages(responses, mask, scores, groups)
    permuted = compute_ktae_advantages(responses[perm], mask[perm], scores[perm], np.asarray(groups)[perm.numpy()])
    torch.testing.assert_close(permuted, adv[perm], atol=1e-6, rtol=0)


@SETTINGS
@given(seeds)
def test_separate_calls_per_group_equal_one_call(seed):
    responses, mask, scores, groups = batch(seed)
    groups = np.asarray(groups)
    adv = compute_ktae_advantages(responses, mask, scores, groups)
    for g in np.unique(groups):
        rows = torch.from_numpy(np.nonzero(groups == g)[0])
        alone = compute_ktae_advantages(responses[rows], mask[rows], scores[rows], groups[rows.numpy()])
        torch.testing.assert_close(alone, adv[rows], atol=1e-6, rtol=0)


@SETTINGS
@given(seeds, st.floats(0.1, 3.0))
def test_masked_positions_zero_and_values_bounded(seed, top):
    responses, mask, scores, groups = batch(seed)
    cfg = KTAEConfig(top=top)
    adv = compute_ktae_advantages(responses, mask, scores, groups, config=cfg)
    assert (adv[~mask] == 0).all()
    values = torch.tensor(list(values_by_key(responses, mask, scores, groups, cfg).values()) or [0.0])
    # |v| < top exactly; in float64 tanh rounds to 1 once |k| > ~38 (the spec's "saturates").
    assert (values.abs() <= top).all()


@SETTINGS
@given(seeds, st.integers(2, 4))
def test_shards_add_up_to_the_whole_batch(seed, num_shards):
    responses, mask, scores, groups = batch(seed)
    shard_of_row = np.arange(responses.shape[0]) % num_shards
    shards = []
    for s in range(num_shards):
        rows = np.nonzero(shard_of_row == s)[0]
        if len(rows):
            shards.append(collect_token_statistics(responses[rows], mask[rows], scores[rows], np.asarray(groups)[rows]))
    merged = key_token_values_from_statistics(merge_token_statistics(shards))
    whole = compute_key_token_values(responses, mask, scores, groups)
    as_dict = lambda kv: {(r["group"], r["token"]): r for r in kv.to_records()}  # noqa: E731
    assert as_dict(merged) == as_dict(whole)


@SETTINGS
@given(seeds)
def test_disabled_ktae_is_the_rollout_advantage(seed):
    responses, mask, scores, groups = batch(seed)
    plain = compute_ktae_advantages(responses, mask, scores, groups, config=KTAEConfig(top=0.0))
    no_weights = compute_ktae_advantages(responses, mask, scores, groups, config=KTAEConfig(alpha=0.0, beta_ig=0.0))
    from ktae import compute_rollout_advantages

    rollout = compute_rollout_advantages(scores, groups)
    expected = torch.where(mask, rollout[:, None], 0.0)
    assert torch.equal(plain, expected) and torch.equal(no_weights, expected)
