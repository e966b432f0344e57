"""Paired significance tests: scipy agreement, hand-computed values, exact enumeration, Bonferroni."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from sbmoe.evaluation.significance import TESTS, bonferroni, paired_t_test, randomization_test

A = [0.5, 0.6, 0.7, 0.8, 0.9]
B = [0.4, 0.6, 0.5, 0.7, 0.6]


def test_t_test_matches_scipy():
    a = [0.31, 0.52, 0.47, 0.66, 0.12, 0.80, 0.45]
    b = [0.30, 0.41, 0.49, 0.60, 0.10, 0.71, 0.40]
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert paired_t_test(A, B) == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12)


def test_t_test_by_hand():
    # d = a - b = [0.1, 0.0, 0.2, 0.1, 0.3]; mean(d) = 0.7 / 5 = 0.14
    # squared deviations: 0.04^2 + 0.14^2 + 0.06^2 + 0.04^2 + 0.16^2
    #                   = 0.0016 + 0.0196 + 0.0036 + 0.0016 + 0.0256 = 0.052
    # sample variance = 0.052 / (5 - 1) = 0.013; sd = sqrt(0.013) = 0.1140175
    # t = 0.14 / (0.1140175 / sqrt(5)) = 2.745626; 4 degrees of freedom; p = 2 * P(T > t)
    t = 0.14 / (math.sqrt(0.013) / math.sqrt(5))
    assert t == pytest.approx(2.745626, abs=1e-6)
    expected = 2 * stats.t.sf(t, df=4)
    assert expected == pytest.approx(0.0516, abs=1e-3)
    assert paired_t_test(A, B) == pytest.approx(expected, rel=1e-9)
    assert paired_t_test(B, A) == pytest.approx(expected, rel=1e-9)  # two-sided: symmetric


def test_identical_inputs_give_one():
    values = [0.2, 0.4, 0.4, 0.9]
    assert paired_t_test(values, list(values)) == 1.0
    assert randomization_test(values, list(values)) == 1.0


def test_constant_shift_gives_zero():
    a = [0.11, 0.52, 0.37, 0.9]
    assert paired_t_test([v + 0.31 for v in a], a) == 0.0  # rounding makes the differences unequal


def test_randomization_exact_enumeration():
    # n = 5 < log2(10_000): scipy enumerates all 2^5 = 32 sign patterns, as done here by hand.
    d = np.array(A) - np.array(B)
    observed = abs(d.mean())
    flips = [abs(np.mean(d * np.array(signs))) for signs in itertools.product((1, -1), repeat=5)]
    assert len(flips) == 32
    # |mean| >= observed: the identity and the all-flipped pattern, and any pattern flipping only the
    # zero difference (2 more) -> 4 of 32.
    exact = sum(f >= observed - 1e-12 for f in flips) / 32
    assert exact == pytest.approx(4 / 32)
    assert randomization_test(A, B) == pytest.approx(exact, rel=1e-12)


def test_randomization_close_to_t_test_on_large_normal_sample():
    rng = np.random.default_rng(7)
    a = rng.normal(0.5, 0.2, size=300)
    noise = rng.normal(0.0, 0.2, size=300)
    b = a + noise - noise.mean() + 0.02  # mean difference exactly -0.02: t about -1.7
    p_t = paired_t_test(a, b)
    p_r = randomization_test(a, b, n_resamples=10_000, seed=3)
    assert 0.01 < p_t < 0.5  # a moderate p, where agreement is meaningful
    assert p_r == pytest.approx(p_t, abs=0.02)
    assert randomization_test(a, b, n_resamples=10_000, seed=3) == p_r  # seeded: reproducible


def test_bonferroni():
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert bonferroni([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([1.5])


@pytest.mark.parametrize("test", sorted(TESTS))
def test_bad_lengths_raise(test):
    with pytest.raises(ValueError, match="differ in length"):
        TESTS[test]([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        TESTS[test]([0.1], [0.2])
    with pytest.raises(ValueError, match="nan"):
        TESTS[test]([0.1, float("nan")], [0.2, 0.3])
