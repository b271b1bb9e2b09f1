"""The "sort" counting backend: one stable sort of (group, token) keys; any device."""

from __future__ import annotations

import torch

from ktae.core.config import INT64_MAX
from ktae.core.counting.base import Counts, Pairs


def scan(responses: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(smallest id, largest id, lengths [B]) over the masked positions; (0, -1) when none."""
    lengths = mask.sum(dim=1)
    if not bool(mask.any()):
        return 0, -1, lengths
    masked = responses[mask]
    return int(masked.min()), int(masked.max()), lengths


def _segment_sums(values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` [N] beginning at ``starts`` [K] (sorted, starts[0] = 0)."""
    cumulative = torch.cumsum(values, 0, dtype=torch.int64)
    ends = torch.cat([starts[1:], starts.new_tensor([values.shape[0]])]) - 1
    before = torch.cat([cumulative.new_zeros(1), cumulative[starts[1:] - 1]])
    return cumulative[ends] - before


def _count_sorted(
    responses: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, correct: torch.Tensor, vocab: int, num_groups: int
) -> tuple[Pairs, torch.Tensor]:
    """Per-(group, token) counts of the masked tokens.

    Returns ((group, token, a, b, f_true, f_false) [K], segment [N]: the pair of each masked position
    in row-major order).
    """
    rows = torch.repeat_interleave(torch.arange(responses.shape[0], device=responses.device), mask.sum(dim=1))
    tokens = responses[mask].to(torch.int64)
    ids = None
    if num_groups * vocab > INT64_MAX:
        # group * vocab + token would overflow int64: key the compacted ids instead.
        ids, tokens = torch.unique(tokens, return_inverse=True)
        vocab = len(ids)
    # A stable sort keeps positions of one (group, token) in row order, so a new rollout inside a
    # segment shows as a change of row. int32 keys sort markedly faster when they fit.
    key = group[rows] * vocab + tokens
    sorted_key, order = torch.sort(key if num_groups * vocab >= 2**31 else key.to(torch.int32), stable=True)
    sorted_rows = rows[order]
    new_key = torch.ones_like(sorted_key, dtype=torch.bool)
    new_key[1:] = sorted_key[1:] != sorted_key[:-1]
    new_row = new_key.clone()
    new_row[1:] |= sorted_rows[1:] != sorted_rows[:-1]
    sorted_correct = correct[sorted_rows]

    starts = torch.nonzero(new_key).flatten()
    occurrences = torch.diff(starts, append=starts.new_tensor([tokens.shape[0]]))
    f_true = _segment_sums(sorted_correct, starts)
    presence = _segment_sums(new_row, starts)
    a = _segment_sums(new_row & sorted_correct, starts)
    pair_key = sorted_key[starts].to(torch.int64)
    segment = torch.empty_like(order)
    segment[order] = torch.cumsum(new_key, 0) - 1
    token = pair_key % vocab
    return (
        pair_key // vocab,
        token if ids is None else ids[token],
        a,
        presence - a,
        f_true,
        occurrences - f_true,
    ), segment


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
    """Per-(group, token) counts of the counted groups (see ``Counts``).

    responses [B, T], mask [B, T] bool with ids in [0, vocab) on it; lengths [B] from ``scan``.
    """
    token_mask = mask & counted[group][:, None]
    if bool(token_mask.any()):
        pairs, segment = _count_sorted(responses, token_mask, group, correct, vocab, num_groups)
    else:
        group, token, a, b, f_true, f_false = (torch.zeros(0, dtype=torch.int64, device=mask.device) for _ in range(6))
        pairs = (group, token, a, b, f_true, f_false)
        segment = torch.zeros(0, dtype=torch.int64, device=mask.device)

    def place(values: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
        advantages = torch.where(mask, rollout.float()[:, None], 0.0)
        advantages[token_mask] += values.float()[segment]
        return advantages

    return Counts(*pairs, lengths, place)
