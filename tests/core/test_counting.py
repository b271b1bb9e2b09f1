"""The counting backends without numba (the `fast` extra): "auto" sorts, "cpu-kernels" names the extra."""

import pytest
import torch

from ktae import compute_key_token_values, compute_ktae_advantages
from ktae.core.counting import kernels
from tests.core.reference import random_batch

BATCH = random_batch(6, num_groups=8, max_group=10, max_len=30, vocab=40)


@pytest.fixture
def without_numba(monkeypatch):
    """This process as if numba were not installed; the kernels fail the test if they are reached."""

    def unreachable(*args, **kwargs):
        raise AssertionError("a numba kernel ran without numba")

    monkeypatch.setattr(kernels, "HAS_NUMBA", False)
    for name in ("scan", "count", "pair_values"):
        monkeypatch.setattr(kernels, name, unreachable)


def test_auto_counts_by_sorting_without_numba(without_numba):
    sort = compute_ktae_advantages(*BATCH, backend="sort")
    torch.testing.assert_close(compute_ktae_advantages(*BATCH), sort, atol=0, rtol=0)
    auto_values = compute_key_token_values(*BATCH).value
    torch.testing.assert_close(auto_values, compute_key_token_values(*BATCH, backend="sort").value, atol=0, rtol=0)


def test_cpu_kernels_without_numba_name_the_extra(without_numba):
    assert kernels.unavailable_reason() is not None
    with pytest.raises(
        RuntimeError, match=r"'cpu-kernels' cannot run: numba is not installed.*pip install 'ktae\[fast\]'"
    ):
        compute_ktae_advantages(*BATCH, backend="cpu-kernels")
