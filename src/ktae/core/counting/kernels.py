"""The "cpu-kernels" counting backend: numba kernels for CPU tensors.

On the CPU, a sort of every masked token (the "sort" backend) is dominated by memory traffic.
These kernels visit each token twice instead, with one scratch table per worker indexed by token
id that stays in cache: groups run in parallel, each group counts its tokens into the table, then
resets the entries it touched. The table has one entry per id in 0..max id, so ids are compacted
first (one sort) when their range is large for the batch (``table_fits``): memory stays bounded by
the batch, never by the value of an id.

numba is optional (the "fast" extra): without it this module still imports, to keep track of forks
for ``ktae.core.counting``, and ``unavailable_reason`` says how to install it.

Processes and threads: kernel launches are serialised by a lock (numba's workqueue threading
layer aborts on concurrent launches); in a forked child, ``unavailable_reason`` says whether
numba's threading layer survived the fork (``ktae.core.counting``).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch

from ktae.core.counting.base import Counts, Pairs

try:
    import numba

    HAS_NUMBA = True
except ModuleNotFoundError:
    HAS_NUMBA = False

_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel(function: _F) -> _F:
    """A parallel numba kernel; without numba the plain function, which never runs (``unavailable_reason``)."""
    return cast(_F, numba.njit(parallel=True, cache=True, nogil=True)(function)) if HAS_NUMBA else function


def _inline(function: _F) -> _F:
    """A numba function inlined into the kernels that call it (the plain function without numba)."""
    return cast(_F, numba.njit(inline="always")(function)) if HAS_NUMBA else function


# numpy views of the tensors the kernels read and write. numba compiles for the arguments' actual
# dtypes; these annotations are for readers and the type checker.
Ids: TypeAlias = npt.NDArray[np.integer[Any]]  # token ids of any integer dtype
Int64s: TypeAlias = npt.NDArray[np.int64]
Int32s: TypeAlias = npt.NDArray[np.int32]
Bools: TypeAlias = npt.NDArray[np.bool_]
Floats: TypeAlias = npt.NDArray[np.floating[Any]]


@_kernel
def _scan_masked(responses: Ids, mask: Bools, lengths: Int64s) -> tuple[int, int]:
    """(smallest, largest) token id over the masked positions, (0, -1) when there are none;
    lengths[r] receives the number of masked positions of row r."""
    rows = responses.shape[0]
    lows = np.zeros(rows, np.int64)
    highs = np.full(rows, -1, np.int64)
    for r in numba.prange(rows):
        low, high, count = 0, -1, 0
        for j in range(responses.shape[1]):
            if mask[r, j]:
                t = responses[r, j]
                count += 1
                if t < low:
                    low = t
                if t > high:
                    high = t
        lows[r], highs[r], lengths[r] = low, high, count
    return lows.min() if rows else 0, highs.max() if rows else -1


@_inline
def _count_group(
    responses: Ids,
    mask: Bools,
    rows: Int64s,
    correct: Bools,
    slot: Int32s,
    token: Int64s,
    a: Int64s,
    b: Int64s,
    f_true: Int64s,
    f_false: Int64s,
    last_row: Int64s,
) -> None:
    """Count one group's rows into entries 0.. of the output slices (first-seen order).

    slot[t] is token t's entry, -1 when unseen; the entries' slots are reset to -1 before returning.
    last_row[e] is the last row entry e was counted in, to count rows (presence) besides occurrences.
    """
    k = 0
    for r in rows:
        is_correct = correct[r]
        for j in range(responses.shape[1]):
            if not mask[r, j]:
                continue
            t = responses[r, j]
            e = slot[t]
            if e < 0:
                e = k
                slot[t] = k
                k += 1
                token[e] = t
                a[e] = 0
                b[e] = 0
                f_true[e] = 0
                f_false[e] = 0
                last_row[e] = -1
            first_in_row = last_row[e] != r
            last_row[e] = r
            if is_correct:
                f_true[e] += 1
                a[e] += first_in_row
            else:
                f_false[e] += 1
                b[e] += first_in_row
    for e in range(k):
        slot[token[e]] = -1


@_inline
def _distinct_in_group(responses: Ids, mask: Bools, rows: Int64s, slot: Int32s, seen: Int64s) -> int:
    """Number of distinct tokens of one group; marks them in slot and resets it before returning."""
    k = 0
    for r in rows:
        for j in range(responses.shape[1]):
            if mask[r, j]:
                t = responses[r, j]
                if slot[t] < 0:
                    slot[t] = 0
                    seen[k] = t
                    k += 1
    for e in range(k):
        slot[seen[e]] = -1
    return k


@_kernel
def _distinct_tokens(
    responses: Ids,
    mask: Bools,
    rows_by_group: Int64s,
    group_ptr: Int64s,
    counted: Bools,
    vocab: int,
    workers: int,
    scratch_len: int,
    entries: Int64s,
) -> None:
    """entries[g] = number of distinct masked tokens of group g (0 for groups not counted)."""
    num_groups = group_ptr.shape[0] - 1
    slots = np.full((workers, vocab), -1, np.int32)
    seen = np.empty((workers, scratch_len), np.int64)
    for w in numba.prange(workers):
        for g in range(w, num_groups, workers):
            entries[g] = (
                _distinct_in_group(responses, mask, rows_by_group[group_ptr[g] : group_ptr[g + 1]], slots[w], seen[w])
                if counted[g]
                else 0
            )


@_kernel
def _count_groups(
    responses: Ids,
    mask: Bools,
    rows_by_group: Int64s,
    group_ptr: Int64s,
    entry_ptr: Int64s,
    correct: Bools,
    vocab: int,
    workers: int,
    scratch_len: int,
    group: Int64s,
    token: Int64s,
    a: Int64s,
    b: Int64s,
    f_true: Int64s,
    f_false: Int64s,
) -> None:
    """Count each group's distinct tokens into its range [entry_ptr[g], entry_ptr[g + 1]) of the outputs.

    Worker w takes groups w, w + workers, ... with its own scratch tables.
    """
    num_groups = group_ptr.shape[0] - 1
    slots = np.full((workers, vocab), -1, np.int32)
    last_row = np.empty((workers, scratch_len), np.int64)
    for w in numba.prange(workers):
        for g in range(w, num_groups, workers):
            e0, e1 = entry_ptr[g], entry_ptr[g + 1]
            group[e0:e1] = g
            if e1 > e0:
                _count_group(
                    responses,
                    mask,
                    rows_by_group[group_ptr[g] : group_ptr[g + 1]],
                    correct,
                    slots[w],
                    token[e0:e1],
                    a[e0:e1],
                    b[e0:e1],
                    f_true[e0:e1],
                    f_false[e0:e1],
                    last_row[w],
                )


@_inline
def _write_group(
    responses: Ids, mask: Bools, rows: Int64s, token: Int64s, value: Floats, rollout: Floats, slot: Int32s, out: Floats
) -> None:
    """Write one group's rows: rollout advantage plus the value of each token's entry."""
    for e in range(token.shape[0]):
        slot[token[e]] = e
    for r in rows:
        for j in range(responses.shape[1]):
            if mask[r, j]:
                e = slot[responses[r, j]]
                out[r, j] = rollout[r] + (value[e] if e >= 0 else 0.0)
            else:
                out[r, j] = 0.0
    for e in range(token.shape[0]):
        slot[token[e]] = -1


@_kernel
def _write_advantages(
    responses: Ids,
    mask: Bools,
    rows_by_group: Int64s,
    group_ptr: Int64s,
    entry_ptr: Int64s,
    token: Int64s,
    value: Floats,
    rollout: Floats,
    vocab: int,
    workers: int,
    out: Floats,
) -> None:
    """out[r, j] = rollout[r] + value of token responses[r, j] in r's group, 0 where mask is 0."""
    num_groups = group_ptr.shape[0] - 1
    slots = np.full((workers, vocab), -1, np.int32)
    for w in numba.prange(workers):
        for g in range(w, num_groups, workers):
            e0, e1 = entry_ptr[g], entry_ptr[g + 1]
            _write_group(
                responses,
                mask,
                rows_by_group[group_ptr[g] : group_ptr[g + 1]],
                token[e0:e1],
                value[e0:e1],
                rollout,
                slots[w],
                out,
            )


@_kernel
def _pair_values(
    group: Int64s,
    token: Int64s,
    a: Int64s,
    b: Int64s,
    f_true: Int64s,
    f_false: Int64s,
    offset: Int64s,
    width: Int64s,
    b_step: Int64s,
    scale_true: Floats,
    scale_false: Floats,
    strength: Floats,
    h: Floats,
    ignored: Int64s,
    gamma: float,
    top: float,
    k1_plus_1: float,
    eps: float,
    out: Floats,
) -> None:
    """The per-pair part of ``ktae.core.estimator._values`` and ``_term_frequency``, fused in one pass."""
    for i in numba.prange(token.shape[0]):
        g = group[i]
        if ignored.shape[0] and ignored[np.searchsorted(ignored, token[i]) % ignored.shape[0]] == token[i]:
            out[i] = 0.0
            continue
        e = offset[g] + a[i] * width[g] + b[i] * b_step[g]
        s_true = f_true[i] * k1_plus_1 / (f_true[i] + scale_true[g])
        s_false = f_false[i] * k1_plus_1 / (f_false[i] + scale_false[g])
        tf = s_true / (s_false + eps) - s_false / (s_true + eps)
        out[i] = top * np.tanh(strength[e] * (h[e] + gamma * tf) / 2)


# Smallest id range given a table whatever the batch: 2**18 int32 entries (1 MiB per worker) cover
# the vocabularies of current language models.
TABLE_MIN_IDS = 2**18

_lock = threading.Lock()
# Set in a forked child: numba's threading layer in the parent at the fork (None: not started).
forked = False
_layer_at_fork: str | None = None


def _after_fork_in_child() -> None:
    global _lock, forked, _layer_at_fork
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork
    try:
        layer = numba.threading_layer() if HAS_NUMBA else None
    except ValueError:  # no parallel kernel has run in this process
        layer = None
    if not forked or layer is not None:
        _layer_at_fork = layer
    forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process, or None when they can.

    After a fork only numba's fork-safe layers (workqueue, tbb) can run, and only when the parent had
    started one: GNU OpenMP (numba's omp layer, which shares its thread pool with torch's intra-op
    threads) does not survive a fork.
    """
    if not HAS_NUMBA:
        return "numba is not installed; install ktae's 'fast' extra for the CPU kernels: pip install 'ktae[fast]'"
    if forked and _layer_at_fork not in ("workqueue", "tbb"):
        return (
            f"this process was forked (numba threading layer at the fork: {_layer_at_fork or 'not started'}), "
            "and only a workqueue or tbb layer started before the fork runs in a forked child, since GNU OpenMP "
            "threads do not survive a fork; count with backend='sort' here, start workers with 'spawn', or set "
            "NUMBA_THREADING_LAYER=workqueue (or tbb) in the parent"
        )
    return None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialised(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run one kernel launch at a time in this process (numba's workqueue layer is not thread-safe)."""

    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _lock:
            return function(*args, **kwargs)

    return run


def table_fits(vocab: int, tokens: int) -> bool:
    """Whether ids 0..vocab-1 get a scratch table without compaction: at most max(TABLE_MIN_IDS, tokens)."""
    return vocab <= max(TABLE_MIN_IDS, tokens)


def _workers(num_groups: int) -> int:
    # A few chunks per thread balance uneven groups; each worker owns an id-indexed scratch table.
    return max(1, min(num_groups, 4 * numba.get_num_threads()))


@_serialised
def scan(responses: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(smallest id, largest id, lengths [B]) over the masked positions of CPU tensors [B, T];
    the ids are (0, -1) when nothing is masked in."""
    lengths = np.empty(responses.shape[0], np.int64)
    low, high = _scan_masked(responses.numpy(), mask.numpy(), lengths)
    return int(low), int(high), torch.from_numpy(lengths)


def _group_layout(group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ordered by group and each group's start in that order. [B] int64, [G + 1] int64."""
    rows_by_group = torch.argsort(group, stable=True)
    group_ptr = torch.zeros(num_groups + 1, dtype=torch.int64)
    group_ptr[1:] = torch.cumsum(torch.bincount(group, minlength=num_groups), 0)
    return rows_by_group, group_ptr


@_serialised
def _count_pairs(
    responses: torch.Tensor,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    rows_by_group: torch.Tensor,
    group_ptr: torch.Tensor,
    correct: torch.Tensor,
    counted: torch.Tensor,
    vocab: int,
) -> tuple[Pairs, torch.Tensor]:
    """(group, token, a, b, f_true, f_false) [K] int64 of the counted groups, grouped by group, and
    entry_ptr [G + 1] (each group's range)."""
    num_groups = counted.shape[0]
    workers = _workers(num_groups)
    arrays = (responses.numpy(), mask.numpy(), rows_by_group.numpy(), group_ptr.numpy())
    # Scratch for one group's distinct tokens: at most its masked tokens, at most the id range.
    cumulative = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths[rows_by_group], 0)])[group_ptr]
    scratch_len = max(1, min(int(torch.diff(cumulative).max()) if num_groups else 0, vocab))
    entries = np.empty(num_groups, np.int64)
    _distinct_tokens(*arrays, counted.numpy(), vocab, workers, scratch_len, entries)
    entry_ptr = torch.zeros(num_groups + 1, dtype=torch.int64)
    entry_ptr[1:] = torch.cumsum(torch.from_numpy(entries), 0)
    outputs = [np.empty(int(entry_ptr[-1]), np.int64) for _ in range(6)]
    _count_groups(*arrays, entry_ptr.numpy(), correct.numpy(), vocab, workers, scratch_len, *outputs)
    group, token, a, b, f_true, f_false = (torch.from_numpy(x) for x in outputs)
    return (group, token, a, b, f_true, f_false), entry_ptr


@_serialised
def _write(
    responses: torch.Tensor,
    mask: torch.Tensor,
    rows_by_group: torch.Tensor,
    group_ptr: torch.Tensor,
    entry_ptr: torch.Tensor,
    token: torch.Tensor,
    value: torch.Tensor,
    rollout: torch.Tensor,
    vocab: int,
) -> torch.Tensor:
    """[B, T] float32 advantages from per-entry values laid out by ``_count_pairs``."""
    out = torch.empty(responses.shape, dtype=torch.float32)
    _write_advantages(
        responses.numpy(),
        mask.numpy(),
        rows_by_group.numpy(),
        group_ptr.numpy(),
        entry_ptr.numpy(),
        token.numpy(),
        value.to(torch.float32).numpy(),
        rollout.to(torch.float32).numpy(),
        vocab,
        _workers(entry_ptr.shape[0] - 1),
        out.numpy(),
    )
    return out


def count(
    responses: torch.Tensor,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    correct: torch.Tensor,
    counted: torch.Tensor,
    vocab: int,
) -> Counts:
    """Per-(group, token) counts of the counted groups (see ``Counts``); CPU tensors.

    responses [B, T] (contiguous), mask [B, T] bool with ids in [0, vocab) on it; lengths [B] from ``scan``.
    """
    ids = None
    if not table_fits(vocab, int(lengths.sum())):
        # Compact the ids to 0..distinct-1 (one sort) so the tables stay the batch's size.
        ids, compact = torch.unique(responses[mask].to(torch.int64), return_inverse=True)
        responses = torch.zeros(responses.shape, dtype=torch.int64).masked_scatter_(mask, compact)
        vocab = max(len(ids), 1)
    layout = _group_layout(group, num_groups)
    (pair_group, token, a, b, f_true, f_false), entry_ptr = _count_pairs(
        responses, mask, lengths, *layout, correct, counted, vocab
    )

    def place(values: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
        return _write(responses, mask, *layout, entry_ptr, token, values, rollout, vocab)

    token_ids = token if ids is None else ids[token]  # ``place`` reads the compacted ``token``
    return Counts(pair_group, token_ids, a, b, f_true, f_false, lengths, place, fused_values=pair_values)


@_serialised
def pair_values(
    group: torch.Tensor,
    token: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    f_true: torch.Tensor,
    f_false: torch.Tensor,
    offset: torch.Tensor,
    width: torch.Tensor,
    b_step: torch.Tensor,
    scale_true: torch.Tensor,
    scale_false: torch.Tensor,
    strength: torch.Tensor,
    h: torch.Tensor,
    ignored: torch.Tensor,
    gamma: float,
    top: float,
    k1_plus_1: float,
    eps: float,
) -> torch.Tensor:
    """Key-token value of every (group, token) pair, [K] float64; see ``_pair_values``."""
    out = np.empty(token.shape[0], np.float64)
    _pair_values(
        group.numpy(),
        token.numpy(),
        a.numpy(),
        b.numpy(),
        f_true.numpy(),
        f_false.numpy(),
        offset.numpy(),
        width.numpy(),
        b_step.numpy(),
        scale_true.double().numpy(),
        scale_false.double().numpy(),
        strength.double().numpy(),
        h.double().numpy(),
        ignored.numpy(),
        float(gamma),
        float(top),
        float(k1_plus_1),
        float(eps),
        out,
    )
    return torch.from_numpy(out)
