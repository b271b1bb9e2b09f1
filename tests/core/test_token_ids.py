"""Token ids of any value: memory bounded by the batch, exact counts, ids outside vocab_size refused."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ktae import (
    collect_token_statistics,
    compute_key_token_values,
    compute_ktae_advantages,
    key_token_values_from_statistics,
    merge_token_statistics,
)
from ktae.core.counting import BACKENDS
from tests.core.reference import random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _relabelled(responses, mask, ids):
    """The batch with each id i (at masked positions) replaced by ids[i]."""
    out = responses.clone()
    out[mask] = ids[responses[mask]]
    return out


def _records(kv):
    return sorted((r["group"], r["token"], r["a"], r["b"], r["value"]) for r in kv.to_records())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("largest", [2_000_000_000, 2**61 + 5, 2**63 - 1])
def test_huge_ids_count_as_their_small_relabelling(backend, largest):
    # The same batch with ids 0..19 and with ids spread up to `largest`: same values, ids mapped.
    responses, mask, scores, groups = random_batch(7, num_groups=9, max_group=6, max_len=12, vocab=20)
    ids = torch.tensor([3 * i for i in range(19)] + [largest], dtype=torch.int64)
    huge = _relabelled(responses, mask, ids)
    expected = compute_ktae_advantages(responses, mask, scores, groups, backend=backend)
    torch.testing.assert_close(compute_ktae_advantages(huge, mask, scores, groups, backend=backend), expected)
    small = compute_key_token_values(responses, mask, scores, groups, backend=backend)
    big = compute_key_token_values(huge, mask, scores, groups, backend=backend)
    mapped = [(g, int(ids[t]), a, b, v) for g, t, a, b, v in _records(small)]
    assert _records(big) == sorted(mapped)


def test_merged_shards_with_huge_ids_keep_their_ids():
    responses, mask, scores, groups = random_batch(8, num_groups=6, max_group=6, max_len=10, vocab=12)
    ids = torch.tensor([2**62 + 7 * i for i in range(12)], dtype=torch.int64)
    huge = _relabelled(responses, mask, ids)
    whole = compute_key_token_values(huge, mask, scores, groups)
    half = responses.shape[0] // 2
    shards = [
        collect_token_statistics(huge[s], mask[s], scores[s], groups[s]) for s in (slice(0, half), slice(half, None))
    ]
    merged = key_token_values_from_statistics(merge_token_statistics(shards))
    assert _records(merged) == _records(whole)
    assert set(merged.token.tolist()) <= set(ids.tolist())


# One id of 2e9 in an 8 x 64 batch: the kernels once sized a table per worker by it (8 GB). Run it
# under an address-space limit, in a fresh interpreter.
_HUGE_ID_SCRIPT = textwrap.dedent(
    """
    import resource
    import torch
    from ktae import compute_ktae_advantages, compute_key_token_values

    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 1000, (8, 64), generator=generator)
    responses[3, 5] = 2_000_000_000
    mask = torch.ones(8, 64, dtype=torch.bool)
    scores = torch.tensor([1.0, 0.0] * 4)
    for backend in ("auto", "cpu-kernels", "sort"):
        adv = compute_ktae_advantages(responses, mask, scores, [0, 0, 0, 0, 1, 1, 1, 1], backend=backend)
        values = compute_key_token_values(responses, mask, scores, [0] * 8, backend=backend)
        assert adv.shape == (8, 64) and 2_000_000_000 in values.token.tolist()
    print("ok")
    """
)


def test_one_huge_id_needs_no_huge_table():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))
    done = subprocess.run(
        [sys.executable, "-c", _HUGE_ID_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_at_or_above_vocab_size_are_refused(backend):
    responses, mask, scores, groups = random_batch(3, num_groups=3, vocab=50)
    responses[0, 0], mask[0, 0] = 50, True
    compute_ktae_advantages(responses, mask, scores, groups, backend=backend, vocab_size=51)
    for fn in (compute_ktae_advantages, compute_key_token_values, collect_token_statistics):
        with pytest.raises(ValueError, match=r"token id 50 .*outside the vocabulary \(vocab_size=50\)"):
            fn(responses, mask, scores, groups, backend=backend, vocab_size=50)
    responses[0, 0], mask[0, 0] = 10**6, False  # off the mask: not read
    compute_ktae_advantages(responses, mask, scores, groups, backend=backend, vocab_size=50)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(backend="numba"), ValueError, "unknown counting backend 'numba'; choose one of auto, cpu-kernels, sort"),
        (dict(vocab_size=0), ValueError, "vocab_size must be >= 1"),
        (dict(vocab_size=2.5), TypeError, "vocab_size must be an int"),
        (dict(vocab_size=True), TypeError, "vocab_size must be an int"),
    ],
)
def test_bad_backend_and_vocab_size(kwargs, error, match):
    responses, mask, scores, groups = random_batch(3, num_groups=3, vocab=50)
    for fn in (compute_ktae_advantages, compute_key_token_values):
        with pytest.raises(error, match=match):
            fn(responses, mask, scores, groups, **kwargs)


def test_cpu_kernels_refuse_other_devices():
    meta = torch.zeros(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="backend 'cpu-kernels' needs CPU tensors, but responses are on meta"):
        compute_ktae_advantages(meta, meta.bool(), meta[:, 0], [0, 0], backend="cpu-kernels")
