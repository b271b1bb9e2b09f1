"""Step 3 of the estimator: count each (group, token) pair of a batch, with one of two backends.

- ``"cpu-kernels"`` (``ktae.core.counting.kernels``): numba kernels with a scratch table per worker
  indexed by token id; CPU tensors only. Fastest on the CPU.
- ``"sort"`` (``ktae.core.counting.sort``): one stable sort of (group, token) keys; any device.
- ``"auto"``: the kernels for CPU tensors when the ids' range is small for the batch (at most
  max(2**18, masked tokens)) and the kernels can run in this process, the sort otherwise.

Both give identical counts. Memory is bounded by the batch, never by the value of an id: above
that range the kernels compact the ids first, and the sort keys compacted ids when
(group, token) keys would overflow int64.

Threads and processes: calls from several threads are safe (kernel launches take turns). In a
forked child (multiprocessing's "fork", DataLoader workers) torch runs on one thread
(``fork_safe_threads``) and "auto" counts by sorting, unless numba's fork-safe workqueue or tbb
layer ran in the parent, in which case the kernels still serve.
"""

from __future__ import annotations

import operator

import torch

from ktae.core.counting import kernels, sort
from ktae.core.counting.base import Backend, Counts

BACKENDS = ("auto", "cpu-kernels", "sort")

__all__ = ["BACKENDS", "Counts", "check_backend", "count_tokens", "fork_safe_threads"]


def fork_safe_threads() -> None:
    """In a forked child, run torch on one intra-op thread, as PyTorch's DataLoader workers do.

    GNU OpenMP threads that ran in the parent (torch's intra-op pool, numba's omp layer) do not exist
    in the child, and a parallel region there would wait for them forever. Call before any torch op.
    """
    if kernels.forked and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


def check_backend(backend: str, vocab_size: int | None, device: torch.device) -> None:
    """Refuse an unknown backend name, a backend that cannot count tensors on ``device`` here, or a
    vocab_size that is not a positive int."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown counting backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cpu-kernels" and device.type != "cpu":
        raise ValueError(f"backend 'cpu-kernels' needs CPU tensors, but responses are on {device}")
    if backend == "cpu-kernels" and kernels.unavailable_reason():
        raise RuntimeError(f"backend 'cpu-kernels' cannot run: {kernels.unavailable_reason()}")
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not hasattr(vocab_size, "__index__"):
            raise TypeError(f"vocab_size must be an int or None, got {vocab_size!r}")
        if operator.index(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")


def _backend(backend: str, device: torch.device) -> Backend:
    """The module of a checked backend name ("auto" resolved for ``device``)."""
    if backend == "sort" or device.type != "cpu" or kernels.unavailable_reason():
        return sort
    return kernels


def count_tokens(
    responses: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    correct: torch.Tensor,
    counted: torch.Tensor,
    backend: str = "auto",
    vocab_size: int | None = None,
) -> Counts:
    """Counts of the groups flagged in ``counted`` [G] (the others get no pairs), checking the ids.

    responses, mask: [B, T] (mask bool); group: [B] dense group numbers < num_groups; correct: [B] bool.
    Raises ValueError for a negative id, or an id >= vocab_size, at a masked position.
    """
    check_backend(backend, vocab_size, responses.device)
    chosen = _backend(backend, responses.device)
    if chosen is kernels:
        responses = responses.contiguous()
    low, high, lengths = chosen.scan(responses, mask)
    if low < 0:
        raise ValueError(f"responses contain a negative token id ({low}) at a masked (response) position")
    if vocab_size is not None and high >= vocab_size:
        raise ValueError(
            f"responses contain token id {high} at a masked (response) position, outside the vocabulary "
            f"(vocab_size={vocab_size})"
        )
    vocab = max(high + 1, 1)
    if backend == "auto" and chosen is kernels and not kernels.table_fits(vocab, int(lengths.sum())):
        chosen = sort  # compacting the ids costs a sort anyway
    return chosen.count(responses, mask, lengths, group, num_groups, correct, counted, vocab)
