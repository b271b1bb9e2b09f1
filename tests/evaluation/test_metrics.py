import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from ktae.evaluation import metrics
from ktae.evaluation.metrics import (
    bootstrap_ci,
    group_answers,
    maj_at_k,
    majority_correct,
    paired_comparison,
    pass_at_k,
    sign_flip_p_value,
    verdict_in_words,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == float(brute_force_pass_at_k(n, c, k)), (n, c, k)


def test_pass_at_k_is_exact_where_floats_cancel_or_overflow():
    assert pass_at_k(10**6, 1, 1) == 1e-6  # 1 - (1 - 1e-6) in floats would lose digits
    assert pass_at_k(2000, 1, 1000) == 0.5
    assert pass_at_k(5000, 3, 1) == 3 / 5000
    # C(2000, 1000) overflows float64; the exact ratio does not
    expected = 1 - Fraction(math.comb(1990, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == float(expected)
    assert pass_at_k(np.int64(4), np.int64(1), np.int64(2)) == 0.5


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1), (3.0, 1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises((ValueError, TypeError)):
        pass_at_k(n, c, k)


def test_check_ks():
    assert metrics.check_ks([8, 1, 8], 32) == [1, 8]
    with pytest.raises(ValueError, match="pass@64 needs at least 64 samples"):
        metrics.check_ks([1, 64], 32)
    for bad in ([0], [-2], [1.5], [True], []):
        with pytest.raises(ValueError):
            metrics.check_ks(bad, 32)


def test_answer_groups_and_majority_vote():
    asked = []

    def equivalent(answer, earlier):
        asked.append((answer, earlier))
        return {answer, earlier} == {"1/3", "2/6"}

    answers = ["1/3", None, "0.5", "2/6", "1/3", "7", "1/2"]
    correct = [False, False, True, False, False, False, True]
    groups = group_answers(answers, correct, equivalent)
    assert groups == [0, None, 1, 0, 0, 2, 1]
    assert ("1/3", "1/3") not in asked  # identical answers need no check
    assert all(a != b for a, b in asked)
    assert not majority_correct(groups, correct)  # 1/3 ≡ 2/6 three times beats the right answer twice
    assert majority_correct(groups[:3], correct[:3]) is False  # 1 vote each: the first group wins the tie
    assert majority_correct([1, 0], [True, False]) is True  # ties go to the group seen first here
    assert majority_correct(groups[1:3], correct[1:3]) is True
    assert majority_correct([None, None], [False, False]) is False
    # a response graded correct where extraction found no answer (--grader math-verify) joins the right group
    assert group_answers([None, "0.5", "3"], [True, True, False], equivalent) == [0, 0, 1]
    # maj@k: the mean over disjoint runs of k samples; maj@1 is the accuracy, maj@n the full vote
    assert maj_at_k(groups, correct, 1) == sum(correct) / len(correct)
    assert maj_at_k(groups, correct, 7) == 0.0
    assert maj_at_k(groups, correct, 2) == 1 / 3  # [1/3, -] wrong, [0.5, 2/6] a tie won by 0.5, [1/3, 7] wrong
    assert maj_at_k(groups, correct, 3) == 0.0  # the 7th sample is left out of the two runs of 3
    with pytest.raises(ValueError, match="maj@k needs"):
        maj_at_k(groups, correct, 8)


def test_bootstrap_of_a_constant_has_zero_width():
    assert bootstrap_ci([[0.25] * 40]) == (0.25, 0.25)
    assert bootstrap_ci([[1.0] * 5, [0.0] * 30]) == (0.5, 0.5)  # strata: benchmarks weigh the same


def test_bootstrap_of_bernoulli_problems_matches_the_binomial():
    """Resampling n 0/1 problems with p̂ correct: the bootstrap mean is exactly Binomial(n, p̂)/n,
    of standard error sqrt(p̂(1 − p̂)/n)."""
    n, p = 200, 0.3
    values = np.zeros(n)
    values[: int(p * n)] = 1
    np.random.default_rng(1).shuffle(values)
    low, high = bootstrap_ci([values], resamples=20_000, seed=3)
    exact_low, exact_high = stats.binom.ppf([0.025, 0.975], n, p) / n
    assert abs(low - exact_low) <= 1 / n and abs(high - exact_high) <= 1 / n
    assert (high - low) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.1)
    assert bootstrap_ci([values], seed=3) == bootstrap_ci([values], seed=3)  # seeded


def test_paired_test_finds_a_planted_improvement():
    a = np.zeros(100)
    a[:30] = 1
    b = a.copy()
    b[30:50] = 1  # B also solves 20 problems A misses, and loses none
    result = paired_comparison([a], [b])
    assert result.difference == pytest.approx(0.2)
    assert result.method == "exact sign test (McNemar)"
    assert result.p_value == pytest.approx(stats.binomtest(20, 20).pvalue, rel=1e-12)  # 2 / 2^20
    assert result.ci_low > 0 and result.num_differing == 20
    assert verdict_in_words(result) == "B is better (p < 0.05)"
    assert verdict_in_words(paired_comparison([b], [a])) == "B is worse (p < 0.05)"


def test_paired_test_of_equal_runs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 80).astype(float)
    same = paired_comparison([a], [a.copy()])
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0, 0, 0, 1.0)
    assert verdict_in_words(same) == "no significant difference at 0.05"
    # as many wins as losses: McNemar's exact p of 10 against 10
    b = a.copy()
    flip = np.flatnonzero(a == 1)[:10].tolist() + np.flatnonzero(a == 0)[:10].tolist()
    b[flip] = 1 - b[flip]
    balanced = paired_comparison([a], [b])
    assert balanced.difference == 0 and balanced.p_value == 1.0
    assert balanced.ci_low < 0 < balanced.ci_high


def test_sign_flip_with_samples_exact_and_random_agree_with_enumeration():
    rng = np.random.default_rng(5)
    differences = rng.integers(-4, 5, 18) / 4  # 4 samples a problem: differences of mean correctness
    differences[differences == 0] = 0.25
    observed = abs(differences.sum())
    patterns = np.array(list(itertools.product([1, -1], repeat=differences.size)))
    exact = np.mean(np.abs(patterns @ differences) >= observed - 1e-12)
    p_random, method = sign_flip_p_value([differences], draws=200_000, seed=0)
    assert method == "sign-flip, 200000 random flips"
    assert p_random == pytest.approx(exact, abs=0.005)
    p_exact, method = sign_flip_p_value([differences[:12]])
    assert method == "exact sign-flip over 2^12 patterns"
    patterns = np.array(list(itertools.product([1, -1], repeat=12)))
    assert p_exact == np.mean(np.abs(patterns @ differences[:12]) >= abs(differences[:12].sum()) - 1e-12)


def test_paired_test_with_samples_and_two_benchmarks():
    rng = np.random.default_rng(2)
    a = [rng.integers(0, 9, 30) / 8, rng.integers(0, 9, 200) / 8]  # avg@8 per problem on two benchmarks
    better = [np.minimum(s + 0.25, 1) for s in a]
    result = paired_comparison(a, better, draws=20_000)
    assert result.difference > 0 and result.p_value < 0.001 and result.ci_low > 0
    noise = [np.clip(s + rng.choice([-0.125, 0.125], s.size), 0, 1) for s in a]
    result = paired_comparison(a, noise, draws=20_000)
    assert result.p_value > 0.05 and result.ci_low < result.difference < result.ci_high
    with pytest.raises(ValueError, match="pair"):
        paired_comparison(a, [a[0]])
