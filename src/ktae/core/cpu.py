"""CPU kernels for the per-(group, token) counts and for writing the advantages back.

On the CPU, a sort of every masked token (the device-agnostic path in ``ktae.core.estimator``) is
dominated by memory traffic. These numba kernels visit each token twice instead, with one
vocabulary-sized scratch table per thread that stays in cache: groups run in parallel, each group
counts its tokens into the table, then resets the entries it touched.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_KERNEL = dict(parallel=True, cache=True, nogil=True)


@numba.njit(**_KERNEL)
def _masked_token_range(responses, mask):
    """(smallest, largest) token id over the masked positions; (0, -1) when there are none."""
    rows = responses.shape[0]
    lows = np.zeros(rows, np.int64)
    highs = np.full(rows, -1, np.int64)
    for r in numba.prange(rows):
        low, high = 0, -1
        for j in range(responses.shape[1]):
            if mask[r, j]:
                t = responses[r, j]
                if t < low:
                    low = t
                if t > high:
                    high = t
        lows[r], highs[r] = low, high
    return lows.min() if rows else 0, highs.max() if rows else -1


@numba.njit(inline="always")
def _count_group(responses, mask, rows, correct, slot, token, a, b, f_true, f_false, last_row):
    """Count one group's rows into entries 0.. of the output slices; returns how many entries.

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
    return k


@numba.njit(**_KERNEL)
def _count_groups(responses, mask, rows_by_group, group_ptr, token_ptr, correct, counted, vocab, workers,
                  token, a, b, f_true, f_false, entries):
    """Count each counted group's distinct tokens into its slice [token_ptr[g], ...) of the outputs.

    entries[g] receives the number of distinct tokens of group g, in first-seen order.
    Worker w takes groups w, w + workers, ... with its own scratch tables.
    """
    num_groups = group_ptr.shape[0] - 1
    slots = np.full((workers, vocab), -1, np.int32)
    last_row = np.empty(token.shape[0], np.int64)
    for w in numba.prange(workers):
        for g in range(w, num_groups, workers):
            if not counted[g]:
                entries[g] = 0
                continue
            s = token_ptr[g]
            entries[g] = _count_group(
                responses, mask, rows_by_group[group_ptr[g]:group_ptr[g + 1]], correct, slots[w],
                token[s:], a[s:], b[s:], f_true[s:], f_false[s:], last_row[s:],
            )


@numba.njit(**_KERNEL)
def _compact(sources, token_ptr, entry_ptr, targets):
    """Close the gaps: group g's entries move from token_ptr[g] to entry_ptr[g] in each target."""
    for g in numba.prange(entry_ptr.shape[0] - 1):
        s, e0, e1 = token_ptr[g], entry_ptr[g], entry_ptr[g + 1]
        for i in range(len(sources)):
            targets[i][e0:e1] = sources[i][s:s + e1 - e0]


@numba.njit(inline="always")
def _write_group(responses, mask, rows, token, value, rollout, slot, out):
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


@numba.njit(**_KERNEL)
def _write_advantages(responses, mask, rows_by_group, group_ptr, entry_ptr, token, value, rollout, vocab, workers,
                      out):
    """out[r, j] = rollout[r] + value of token responses[r, j] in r's group, 0 where mask is 0."""
    num_groups = group_ptr.shape[0] - 1
    slots = np.full((workers, vocab), -1, np.int32)
    for w in numba.prange(workers):
        for g in range(w, num_groups, workers):
            e0, e1 = entry_ptr[g], entry_ptr[g + 1]
            _write_group(
                responses, mask, rows_by_group[group_ptr[g]:group_ptr[g + 1]], token[e0:e1], value[e0:e1], rollout,
                slots[w], out,
            )


def _workers(num_groups: int) -> int:
    # A few chunks per thread balance uneven groups; each worker owns vocabulary-sized scratch.
    return max(1, min(num_groups, 4 * numba.get_num_threads()))


def masked_token_range(responses: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(smallest, largest) token id over masked positions of CPU tensors [B, T]; (0, -1) if none."""
    low, high = _masked_token_range(responses.numpy(), mask.numpy())
    return int(low), int(high)


def group_layout(group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ordered by group and each group's start in that order. [B] int64, [G + 1] int64."""
    rows_by_group = torch.argsort(group, stable=True)
    group_ptr = torch.zeros(num_groups + 1, dtype=torch.int64)
    group_ptr[1:] = torch.cumsum(torch.bincount(group, minlength=num_groups), 0)
    return rows_by_group, group_ptr


def count_tokens(
    responses: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    correct: torch.Tensor,
    counted: torch.Tensor,
    vocab: int,
) -> tuple[torch.Tensor, ...]:
    """Per-(group, token) counts of the counted groups, grouped by group.

    responses, mask: [B, T]; group, correct: [B]; counted: [G] bool (groups to count).
    Returns (group, token, a, b, f_true, f_false) [K] int64 and entry_ptr [G + 1] (each group's range).
    """
    num_groups = counted.shape[0]
    rows_by_group, group_ptr = group_layout(group, num_groups)
    lengths = torch.zeros(num_groups, dtype=torch.int64).index_add_(0, group, mask.sum(dim=1))
    token_ptr = torch.cumsum(lengths, 0) - lengths
    capacity = int(lengths.sum())
    gapped = [np.empty(capacity, np.int64) for _ in range(5)]
    entries = np.empty(num_groups, np.int64)
    _count_groups(
        responses.numpy(), mask.numpy(), rows_by_group.numpy(), group_ptr.numpy(), token_ptr.numpy(),
        correct.numpy(), counted.numpy(), vocab, _workers(num_groups), *gapped, entries,
    )
    entries = torch.from_numpy(entries)
    entry_ptr = torch.zeros(num_groups + 1, dtype=torch.int64)
    entry_ptr[1:] = torch.cumsum(entries, 0)
    compact = [np.empty(int(entry_ptr[-1]), np.int64) for _ in range(5)]
    _compact(numba.typed.List(gapped), token_ptr.numpy(), entry_ptr.numpy(), numba.typed.List(compact))
    entry_group = torch.repeat_interleave(torch.arange(num_groups), entries)
    return (entry_group, *(torch.from_numpy(x) for x in compact), entry_ptr)


def write_advantages(
    responses: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    entry_ptr: torch.Tensor,
    token: torch.Tensor,
    value: torch.Tensor,
    rollout: torch.Tensor,
    vocab: int,
) -> torch.Tensor:
    """[B, T] float32 advantages from per-entry values laid out by ``count_tokens``."""
    out = torch.empty(responses.shape, dtype=torch.float32)
    rows_by_group, group_ptr = group_layout(group, entry_ptr.shape[0] - 1)
    _write_advantages(
        responses.numpy(), mask.numpy(), rows_by_group.numpy(), group_ptr.numpy(), entry_ptr.numpy(),
        token.numpy(), value.to(torch.float32).numpy(), rollout.to(torch.float32).numpy(), vocab,
        _workers(entry_ptr.shape[0] - 1), out.numpy(),
    )
    return out
