"""Fisher p-values against scipy and against exact rational arithmetic."""

import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

from ktae.core.fisher import fisher_pvalue_tables, table_offsets
from tests.core.reference import fisher_two_sided


def lookup(n_true, n_false):
    """All (a, b) p-values of the given margins as {(nt, nf, a, b): (p, is_one)}."""
    nt = torch.tensor(n_true)
    nf = torch.tensor(n_false)
    p, one = fisher_pvalue_tables(nt, nf)
    offsets = table_offsets(nt, nf)
    out = {}
    for i, (t, f) in enumerate(zip(n_true, n_false)):
        for a in range(t + 1):
            for b in range(f + 1):
                e = int(offsets[i]) + a * (f + 1) + b
                out[(t, f, a, b)] = (float(p[e]), bool(one[e]))
    return out


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
    margins = sorted(margins)
    nt = torch.tensor([m[0] for m in margins])
    nf = torch.tensor([m[1] for m in margins])
    p, one = fisher_pvalue_tables(nt, nf)
    offsets = table_offsets(nt, nf)
    checked = 0
    for i, (t, f) in enumerate(margins):
        # every mirror-image/tie table of the margin and random ones
        cells = {(int(rng.integers(0, t + 1)), int(rng.integers(0, f + 1))) for _ in range(25)}
        cells |= {(0, 0), (t, f), (t // 2, f // 2), (t, 0), (0, f)}
        for a, b in cells:
            e = int(offsets[i]) + a * (f + 1) + b
            expected = fisher_exact([[a, b], [t - a, f - b]]).pvalue
            assert float(p[e]) == pytest.approx(expected, abs=1e-9), (t, f, a, b)
            if bool(one[e]):
                assert expected == pytest.approx(1.0, abs=1e-9)
            checked += 1
    assert checked > 500


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
