"""Exact two-sided Fisher p-values of 2x2 tables, in float64.

A table (a, b) with column totals n_T (correct rollouts) and n_F (incorrect ones) has row total
R = a + b; its p-value sums the hypergeometric probabilities P(k), over the L = min(R, n_T) -
max(0, R - n_F) + 1 tables k of the same margins, that are at most P(a). ``fisher_pvalues`` costs
the sum of L over the tables asked for, and L <= R + 1: a table of a token present in R rollouts
costs at most one more than that token's occurrences, so the tables of a batch's tokens cost at most
its masked tokens plus its (group, token) pairs, whatever the size of a group.
"""

from __future__ import annotations

import torch

# Relative tolerance deciding which tables are "as extreme" as the observed one (as R and scipy).
TIE_RTOL = 1e-7


def support_sizes(n_true: torch.Tensor, n_false: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L of each table: the number of tables with its margins (the k of its p-value's sum). [C] int64."""
    r = a.to(torch.int64) + b.to(torch.int64)
    return torch.minimum(r, n_true.to(torch.int64)) - (r - n_false.to(torch.int64)).clamp(min=0) + 1


def fisher_pvalues(
    n_true: torch.Tensor, n_false: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided Fisher p-values of the tables [[a, b], [n_true - a, n_false - b]].

    n_true, n_false, a, b: [C] integers with 0 <= a <= n_true and 0 <= b <= n_false.
    Returns (p_value [C] float64, is_one [C] bool). ``is_one`` is True where every table of the same
    margins is at least as extreme, i.e. p = 1 exactly (decided by counting, not rounding).
    Memory and time: O(C + sum of ``support_sizes``).
    """
    device = n_true.device
    n_true, n_false, a, b = (x.to(torch.int64) for x in (n_true, n_false, a, b))
    n, r = n_true + n_false, a + b
    low = (r - n_false).clamp(min=0)
    length = support_sizes(n_true, n_false, a, b)

    # log k! for every k a table needs, once: lgamma of the same doubles as lgamma(k + 1) would take.
    largest = int(n.max()) if n.numel() else 0
    log_factorial = torch.lgamma(torch.arange(largest + 1, device=device, dtype=torch.float64) + 1)

    def log_binom(m: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return log_factorial[m] - log_factorial[j] - log_factorial[m - j]

    def log_pmf(table: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """log P(k) of hypergeometric tables with the margins of ``table`` (indices into the [C] inputs)."""
        return log_binom(n_true[table], k) + log_binom(n_false[table], r[table] - k) - log_binom(n[table], r[table])

    # Every table k of every requested table's margins, flat: table c owns L[c] consecutive entries.
    table = torch.repeat_interleave(torch.arange(len(n), device=device), length)
    start = torch.cumsum(length, 0) - length
    k = low[table] + torch.arange(len(table), device=device) - start[table]
    pmf = torch.exp(log_pmf(table, k))
    observed = torch.exp(log_pmf(torch.arange(len(n), device=device), a))

    # p(a) = sum of P(k) over the k with P(k) <= P(a) * (1 + tol); p = 1 where every k qualifies.
    as_extreme = pmf <= observed[table] * (1 + TIE_RTOL)
    p_value = torch.zeros(len(n), dtype=torch.float64, device=device).index_add_(
        0, table, torch.where(as_extreme, pmf, 0.0)
    )
    counted = torch.zeros(len(n), dtype=torch.int64, device=device).index_add_(0, table, as_extreme.long())
    is_one = counted == length
    return torch.where(is_one, 1.0, p_value.clamp(max=1.0)), is_one
