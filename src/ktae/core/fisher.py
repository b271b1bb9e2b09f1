"""Exact two-sided Fisher p-values for every 2x2 table a group can produce, in float64.

A group with n_T correct and n_F incorrect rollouts admits only (n_T + 1) * (n_F + 1) tables
(a, b), so the p-values are computed once per distinct (n_T, n_F) pair and looked up per token,
instead of once per (group, token).
"""

from __future__ import annotations

import torch

# Relative tolerance deciding which tables are "as extreme" as the observed one (as R and scipy).
TIE_RTOL = 1e-7


def _log_binom(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def fisher_pvalue_tables(n_true: torch.Tensor, n_false: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided Fisher p-values of all tables of several margins.

    n_true, n_false: [P] int64 margins (column totals: correct and incorrect rollouts).
    Returns (p_value, is_one): flat float64 / bool tensors holding, for margin pair i, its
    (n_true[i] + 1) * (n_false[i] + 1) tables in row-major (a, b) order starting at
    ``table_offsets(n_true, n_false)[i]``. ``is_one`` is True where every table of the same row
    margin a + b is at least as extreme, i.e. p = 1 exactly (decided by counting, not rounding).
    """
    device = n_true.device
    n_true = n_true.to(torch.int64)
    n_false = n_false.to(torch.int64)
    n = n_true + n_false
    kmax = int(n_true.max()) + 1 if n_true.numel() else 1

    # One row per (pair, R1) with R1 = a + b in 0..n; columns k = 0..kmax-1.
    rows_per_pair = n + 1
    pair_of_row = torch.repeat_interleave(torch.arange(len(n), device=device), rows_per_pair)
    row_start = torch.cumsum(rows_per_pair, 0) - rows_per_pair
    r1 = torch.arange(len(pair_of_row), device=device) - row_start[pair_of_row]
    nt, nf, nn = (x[pair_of_row].double()[:, None] for x in (n_true, n_false, n))
    r1f = r1.double()[:, None]
    k = torch.arange(kmax, device=device, dtype=torch.float64)[None, :]
    valid = (k <= torch.minimum(r1f, nt)) & (k >= r1f - nf)
    log_pmf = (
        _log_binom(nt, torch.minimum(k, nt))
        + _log_binom(nf, torch.minimum((r1f - k).clamp(min=0), nf))
        - _log_binom(nn, r1f)
    )
    pmf = torch.where(valid, torch.exp(log_pmf), torch.zeros((), dtype=torch.float64, device=device))

    # p(a) = sum of pmf(k) over k with pmf(k) <= pmf(a) * (1 + tol): sort each row, accumulate, search.
    sorted_pmf, _ = torch.sort(torch.where(valid, pmf, torch.full_like(pmf, float("inf"))), dim=1)
    cumulative = torch.cumsum(torch.where(torch.isinf(sorted_pmf), 0.0, sorted_pmf), dim=1)
    threshold = (pmf * (1 + TIE_RTOL)).contiguous()
    count = torch.searchsorted(sorted_pmf.contiguous(), threshold, right=True)  # how many k are as extreme
    p_row = torch.gather(cumulative, 1, (count - 1).clamp(min=0)).clamp(max=1.0)
    one_row = count == valid.sum(dim=1, keepdim=True)
    p_row = torch.where(one_row, torch.ones_like(p_row), p_row)

    # Lay the (R1, k) rows out as (a, b) tables: a = k, b = R1 - k.
    sizes = (n_true + 1) * (n_false + 1)
    pair_of_entry = torch.repeat_interleave(torch.arange(len(n), device=device), sizes)
    local = torch.arange(int(sizes.sum()), device=device) - table_offsets(n_true, n_false)[pair_of_entry]
    width = n_false[pair_of_entry] + 1
    a, b = local // width, local % width
    row = row_start[pair_of_entry] + a + b
    return p_row[row, a], one_row[row, a]


def table_offsets(n_true: torch.Tensor, n_false: torch.Tensor) -> torch.Tensor:
    """Start of each margin pair's tables in the flat layout of ``fisher_pvalue_tables``. [P] int64."""
    sizes = (n_true.to(torch.int64) + 1) * (n_false.to(torch.int64) + 1)
    return torch.cumsum(sizes, 0) - sizes
