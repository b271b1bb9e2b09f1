"""Fisher p-values against scipy and against exact rational arithmetic."""

import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

from ktae.core.fisher import fisher_pvalues, support_sizes
from tests.core.reference import fisher_two_sided


def all_tables(n_true, n_false):
    """Margins and cells of every table (a, b) of the given margins, as four [C] tensors."""
    cells = [(t, f, a, b) for t, f in zip(n_true, n_false) for a in range(t + 1) for b in range(f + 1)]
    return [torch.tensor(column) for column in zip(*cells)]


def lookup(n_true, n_false):
    """All (a, b) p-values of the given margins as {(nt, nf, a, b): (p, is_one)}."""
    nt, nf, a, b = all_tables(n_true, n_false)
    p, one = fisher_pvalues(nt, nf, a, b)
    return {(int(t), int(f), int(x), int(y)): (float(pv), bool(o)) for t, f, x, y, pv, o in zip(nt, nf, a, b, p, one)}


def test_every_table_of_small_margins_matches_exact_and_scipy():
    margins = [(t, f) for t in range(1, 13) for f in range(1, 13)]
    table = lookup([m[0] for m in margins], [m[1] for m in margins])
    for (t, f, a, b), (p, one) in table.items():
        exact, exact_one = fisher_two_sided(a, b, t - a, f - b)
        assert one == exact_one, (t, f, a, b)
        assert p == pytest.approx(exact, abs=1e-12, rel=1e-12), (t, f, a, b)
        assert p == pytest.approx(fisher_exact([[a, b], [t - a, f - b]]).pvalue, abs=1e-9), (t, f, a, b)


def test_random_tables_up_to_512_match_scipy():
    rng = np.random.default_rng(7)
    margins = {(1, 511), (511, 1), (256, 256), (128, 384), (3, 500)}
    while len(margins) < 40:
        n = int(rng.integers(2, 513))
        t = int(rng.integers(1, n))
        margins.add((t, n - t))
    tables = []
    for t, f in sorted(margins):
        # every mirror-image/tie table of the margin and random ones
        cells = {(int(rng.integers(0, t + 1)), int(rng.integers(0, f + 1))) for _ in range(25)}
        cells |= {(0, 0), (t, f), (t // 2, f // 2), (t, 0), (0, f)}
        tables += [(t, f, a, b) for a, b in sorted(cells)]
    p, one = fisher_pvalues(*(torch.tensor(column) for column in zip(*tables)))
    for (t, f, a, b), pv, is_one in zip(tables, p.tolist(), one.tolist()):
        expected = fisher_exact([[a, b], [t - a, f - b]]).pvalue
        assert pv == pytest.approx(expected, abs=1e-9), (t, f, a, b)
        if is_one:
            assert expected == pytest.approx(1.0, abs=1e-9)
    assert len(tables) > 500


def test_ties_and_p_equal_one():
    table = lookup([2, 8, 5], [2, 8, 5])
    # symmetric margins: mirror-image tables are included in the two-sided sum
    assert table[(2, 2, 1, 1)] == (1.0, True)
    assert table[(8, 8, 4, 4)] == (1.0, True)
    assert table[(2, 2, 2, 0)][0] == pytest.approx(1 / 3)
    # a table and its mirror have equal p
    assert table[(8, 8, 7, 1)][0] == pytest.approx(table[(8, 8, 1, 7)][0], rel=1e-12)
    # a token in every rollout (c = d = 0) has p = 1
    assert table[(5, 5, 5, 5)] == (1.0, True)


def test_cost_follows_the_tables_not_the_margins():
    # Margins of a million rollouts each: a table costs its support, min(R, n_T) - max(0, R - n_F) + 1,
    # so tables whose row total R is small (or near n) are cheap however large the margins.
    n = 10**6
    tables = [(n, n, 1, 0), (n, n, 0, 1), (n, n, 3, 2), (n, n, 7, 0), (n, n, n, n - 2), (n, 3, n - 1, 2)]
    nt, nf, a, b = (torch.tensor(column) for column in zip(*tables))
    assert support_sizes(nt, nf, a, b).tolist() == [2, 2, 6, 8, 3, 3]
    p, one = fisher_pvalues(nt, nf, a, b)
    for (t, f, x, y), pv, is_one in zip(tables, p.tolist(), one.tolist()):
        expected = fisher_exact([[x, y], [t - x, f - y]]).pvalue
        assert pv == pytest.approx(expected, abs=1e-9, rel=1e-9), (t, f, x, y)
        assert is_one == (expected == pytest.approx(1.0, abs=1e-12)), (t, f, x, y)
