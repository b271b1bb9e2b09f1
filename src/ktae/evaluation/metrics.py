"""Statistics of sampled evaluation runs: pass@k, majority vote, bootstrap intervals, a paired test.

Problems are the unit of every interval and test: a benchmark's N samples of one problem are not
independent draws of the benchmark, so resampling and sign flips act on whole problems, and
several benchmarks are strata (resampled separately; the average weights each benchmark equally,
as the accuracy average does).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
SIGN_FLIP_DRAWS = 100_000
# Below this many problems that differ, the sign-flip test enumerates all 2^m sign patterns.
EXACT_SIGN_FLIP_MAX = 16
_CHUNK = 1_000  # resamples (or sign flips) drawn at once: memory stays chunk x problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with ``c`` correct among ``n`` samples: 1 − C(n−c, k)/C(n, k).

    The probability that k samples drawn without replacement from the n include a correct one.
    Computed in exact integer arithmetic and rounded once, so it is exact to float64 for every
    n ≥ k ≥ 1 and 0 ≤ c ≤ n (no cancellation when the value is tiny, no overflow when n is large).
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    total = math.comb(n, k)
    return float(Fraction(total - math.comb(n - c, k), total))


def check_ks(ks: Sequence[int], max_samples: int) -> list[int]:
    """The k of pass@k / maj@k, validated: integers >= 1, none above the most samples any benchmark has."""
    ks = list(ks)
    if not ks:
        raise ValueError("no k given for pass@k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"pass@k needs integers k >= 1, got {k!r}")
        if k > max_samples:
            raise ValueError(
                f"pass@{k} needs at least {k} samples per problem; the most any benchmark has is {max_samples}"
            )
    return sorted(set(ks))


def group_answers(
    answers: Sequence[str | None], correct: Sequence[bool], equivalent: Callable[[str, str], bool]
) -> list[int | None]:
    """Groups of equivalent answers among one problem's samples, numbered by first appearance.

    Correct answers all equal the reference, so they form one group; a wrong answer joins the group
    of the first earlier wrong answer that is identical or ``equivalent(answer, earlier)``, else
    starts its own. ``None`` (no answer) belongs to no group, unless it was graded correct (a grader
    that reads whole responses can find an answer where extraction found none). ``equivalent`` is only
    asked about pairs of distinct wrong answers, later answer first.
    """
    if len(answers) != len(correct):
        raise ValueError(f"got {len(answers)} answers but {len(correct)} verdicts")
    groups: list[int | None] = []
    leaders: list[tuple[str, int]] = []  # (first answer of a wrong group, group id)
    correct_group = None
    count = 0
    for answer, right in zip(answers, correct):
        if right:
            if correct_group is None:
                correct_group, count = count, count + 1
            groups.append(correct_group)
            continue
        if answer is None:
            groups.append(None)
            continue
        found = next((g for leader, g in leaders if leader == answer or equivalent(answer, leader)), None)
        if found is None:
            found, count = count, count + 1
            leaders.append((answer, found))
        groups.append(found)
    return groups


def majority_correct(groups: Sequence[int | None], correct: Sequence[bool]) -> bool:
    """Whether the majority vote of these samples is right: the largest answer group wins, a tie goes
    to the group that appears first among them; no answer at all is wrong."""
    counts: dict[int, int] = {}
    for group in groups:
        if group is not None:
            counts[group] = counts.get(group, 0) + 1  # dicts keep first-appearance order
    if not counts:
        return False
    winner = max(counts, key=lambda group: counts[group])  # the first of the largest
    return any(right for group, right in zip(groups, correct) if group == winner)


def maj_at_k(groups: Sequence[int | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem from n >= k samples: the mean of ``majority_correct`` over the n // k
    disjoint runs of k consecutive samples. Samples are independent draws, so each run is an
    unbiased estimate; using them all lowers the variance (maj@1 is then the accuracy)."""
    n = len(groups)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n, got k={k}, n={n}")
    blocks = range(0, n - n % k, k)
    return sum(majority_correct(groups[i : i + k], correct[i : i + k]) for i in blocks) / len(blocks)


def _strata(values_by_stratum: Sequence[Sequence[float]]) -> list[np.ndarray]:
    strata = [np.asarray(v, dtype=np.float64) for v in values_by_stratum]
    if not strata or any(s.ndim != 1 or s.size == 0 for s in strata):
        raise ValueError("every stratum needs at least one value")
    if not all(np.isfinite(s).all() for s in strata):
        raise ValueError("values must be finite")
    return strata


def stratified_mean(values_by_stratum: Sequence[Sequence[float]]) -> float:
    """The mean over strata of each stratum's mean (each benchmark weighs the same)."""
    return float(np.mean([s.mean() for s in _strata(values_by_stratum)]))


def bootstrap_ci(
    values_by_stratum: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stratified_mean``: each resample draws, within every stratum,
    as many values as it holds, with replacement. A value is one problem's mean over its samples,
    so a problem's samples stay together."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    strata = _strata(values_by_stratum)
    rng = np.random.default_rng(seed)
    statistics = np.zeros(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        for values in strata:
            picks = rng.integers(0, values.size, size=(size, values.size))
            statistics[start : start + size] += values[picks].mean(axis=1)
    statistics /= len(strata)
    alpha = 1 - confidence
    low, high = np.quantile(statistics, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """B − A over the same problems: the difference of ``stratified_mean``s, its paired bootstrap
    interval and the two-sided p-value of a sign-flip test (``method`` says which form ran)."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    num_problems: int
    num_differing: int  # problems whose mean correctness differs between the runs


def sign_flip_p_value(
    values_by_stratum: Sequence[Sequence[float]], *, draws: int = SIGN_FLIP_DRAWS, seed: int = 0
) -> tuple[float, str]:
    """Two-sided p-value of the paired sign-flip (permutation) test of "mean difference = 0".

    Under the null hypothesis the two runs' results on a problem are exchangeable, so each
    problem's difference is as likely with either sign. The statistic is ``stratified_mean`` of the
    differences. Exact when all differing problems carry the same weight and size (binary
    correctness with one sample per problem: the exact McNemar test) or when at most
    ``EXACT_SIGN_FLIP_MAX`` problems differ; otherwise ``draws`` random sign patterns, p = (1 + hits) / (1 + draws).
    """
    strata = _strata(values_by_stratum)
    terms = np.concatenate([s / (s.size * len(strata)) for s in strata])
    terms = terms[terms != 0]
    m = terms.size
    if m == 0:
        return 1.0, "sign-flip: no problem differs"
    observed = abs(terms.sum())
    tolerance = 1e-9 * np.abs(terms).max()  # sums of the same terms in another order may differ in the last bits
    magnitudes = np.abs(terms)
    if np.all(np.abs(magnitudes - magnitudes[0]) <= tolerance):
        # every term is ±t: the statistic is t (2X − m) with X ~ Binomial(m, 1/2)
        gap = abs(int((terms > 0).sum()) * 2 - m)
        hits = sum(math.comb(m, x) for x in range(m + 1) if abs(2 * x - m) >= gap)
        return float(Fraction(hits, 2**m)), "exact sign test (McNemar)"
    if m <= EXACT_SIGN_FLIP_MAX:
        signs = 1 - 2 * ((np.arange(2**m)[:, None] >> np.arange(m)) & 1)
        flipped = np.abs(signs @ terms)
        return float(np.mean(flipped >= observed - tolerance)), f"exact sign-flip over 2^{m} patterns"
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, draws, _CHUNK):
        size = min(_CHUNK, draws - start)
        signs = rng.integers(0, 2, size=(size, m), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ terms) >= observed - tolerance).sum())
    return (1 + hits) / (1 + draws), f"sign-flip, {draws} random flips"


def paired_comparison(
    a_by_stratum: Sequence[Sequence[float]],
    b_by_stratum: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    draws: int = SIGN_FLIP_DRAWS,
    seed: int = 0,
) -> PairedComparison:
    """Compare run B with run A on the same problems (value i of a stratum is problem i in both runs)."""
    a, b = _strata(a_by_stratum), _strata(b_by_stratum)
    if [s.size for s in a] != [s.size for s in b]:
        raise ValueError(f"the runs pair {[s.size for s in a]} with {[s.size for s in b]} problems")
    differences = [y - x for x, y in zip(a, b)]
    low, high = bootstrap_ci(differences, confidence=confidence, resamples=resamples, seed=seed)
    p_value, method = sign_flip_p_value(differences, draws=draws, seed=seed)
    return PairedComparison(
        difference=stratified_mean(differences),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        method=method,
        num_problems=sum(d.size for d in differences),
        num_differing=int(sum((d != 0).sum() for d in differences)),
    )


def verdict_in_words(comparison: PairedComparison, alpha: float = 0.05) -> str:
    """ "B is better", "B is worse" or "no significant difference", at level ``alpha``."""
    if comparison.p_value < alpha and comparison.difference > 0:
        return f"B is better (p < {alpha:g})"
    if comparison.p_value < alpha and comparison.difference < 0:
        return f"B is worse (p < {alpha:g})"
    return f"no significant difference at {alpha:g}"
