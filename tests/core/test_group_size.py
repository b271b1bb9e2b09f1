"""Large groups: memory and time follow the batch, not n_T x n_F of a group (issue 21)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

from ktae import KTAEConfig, compute_key_token_values, compute_ktae_advantages
from ktae.core import estimator
from tests.core.reference import random_batch
from tests.core.test_reference import CONFIGS, check

SRC = Path(__file__).resolve().parents[2] / "src"

# One group of 20,000 rollouts of 4 tokens, under an address-space cap of 1 GiB above what the process
# holds after a warm-up call. Every table of its margins (n_T ~ n_F ~ 10,000) would need 10^8 entries
# of float64 per statistic; the tables its 9 tokens hold need about 10^5 Fisher terms in all.
CHILD = r"""
import json, resource, sys
import numpy as np, torch
from ktae import compute_key_token_values, compute_ktae_advantages

rng = np.random.default_rng(3)
size = 20_000
correct = rng.random(size) < 0.5
responses = rng.integers(0, 8, size=(size, 4))
responses[:, 0] = np.where(rng.random(size) < np.where(correct, 0.6, 0.4), 8, responses[:, 0])  # goes with success
responses = torch.from_numpy(responses)
mask = torch.ones(size, 4, dtype=torch.bool)
scores = torch.from_numpy(correct.astype(np.float32))
group = torch.zeros(size, dtype=torch.int64)
compute_ktae_advantages(responses[:8], mask[:8], scores[:8], group[:8])  # compile the kernels, start threads

with open("/proc/self/status") as status:
    size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size_kib * 1024 + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
advantages = compute_ktae_advantages(responses, mask, scores, group)
values = compute_key_token_values(responses, mask, scores, group)
print(json.dumps({
    "finite": bool(torch.isfinite(advantages).all()),
    "records": [{k: r[k] for k in ("token", "a", "b", "c", "d", "p_value", "value")} for r in values.to_records()],
}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the address space from /proc (Linux)")
def test_a_group_of_20000_rollouts_fits_in_1_gib_and_matches_scipy():
    # One thread each, so that no thread stack or malloc arena is reserved under the cap on a many-core machine.
    single = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
    env = {**os.environ, "PYTHONPATH": str(SRC), **single}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"]
    records = result["records"]
    assert len(records) == 9
    for r in records:
        assert r["a"] + r["c"] > 9000 and r["b"] + r["d"] > 9000
        expected = fisher_exact([[r["a"], r["b"]], [r["c"], r["d"]]]).pvalue
        assert r["p_value"] == pytest.approx(expected, abs=1e-9, rel=1e-9), r
    strong = next(r for r in records if r["token"] == 8)
    assert strong["p_value"] < 1e-100 and strong["value"] > 0


@pytest.fixture
def present_tables_only(monkeypatch):
    """Make the estimator compute only the tables the pairs hold, as it does for large groups."""
    monkeypatch.setattr(estimator, "_computes_every_table", lambda terms, tokens: False)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "weights", "dr_grpo", "rloo-ignore"])
def test_present_tables_match_the_reference(backend, seed, cfg, present_tables_only):
    check(*random_batch(seed), cfg, backend)


def test_edge_groups_with_present_tables(backend, present_tables_only):
    # groups with one outcome and empty responses read the neutral table
    responses = torch.tensor([[1, 2, 3], [1, 1, 2], [2, 3, 0], [4, 4, 4], [0, 0, 0], [5, 6, 5], [5, 7, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0]]).bool()
    scores = torch.tensor([1.0, 1, 1, 0, 0, 1, 0])
    check(responses, mask, scores, [0, 1, 1, 2, 2, 3, 3], KTAEConfig(), backend)


def test_both_layouts_give_the_same_values(monkeypatch):
    responses, mask, scores, groups = random_batch(4, num_groups=12, max_group=24, max_len=40, vocab=60)
    every = compute_key_token_values(responses, mask, scores, groups)
    adv_every = compute_ktae_advantages(responses, mask, scores, groups)
    monkeypatch.setattr(estimator, "_computes_every_table", lambda terms, tokens: False)
    present = compute_key_token_values(responses, mask, scores, groups)
    adv_present = compute_ktae_advantages(responses, mask, scores, groups)
    for name in ("a", "b", "p_value", "fisher", "info_gain", "h", "tf", "value"):
        np.testing.assert_allclose(getattr(present, name), getattr(every, name), rtol=1e-12, atol=1e-15, err_msg=name)
    torch.testing.assert_close(adv_present, adv_every, rtol=0, atol=1e-6)
