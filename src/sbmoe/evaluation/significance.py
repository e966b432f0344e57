"""Paired significance tests over per-query metric values, and the Bonferroni correction.

The authors' tooling (ranx) compares two systems with a two-sided paired t-test on the per-query values
of one metric and corrects for the number of comparisons with Bonferroni; the paired randomisation
(sign-flip) test is offered as the distribution-free alternative.

Both tests take two equally long sequences `a`, `b` (one value per query, in the same query order) and
return a two-sided p-value. Identical inputs give p = 1.0 (no evidence of a difference), not nan.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert a pair of per-query value sequences: [n], [n] with n >= 2, all finite."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"paired test: expected two 1-d sequences, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"paired test: the two samples differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2:
        raise ValueError(f"paired test: needs at least 2 paired values, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired test: the samples contain nan or infinite values")
    return x, y


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of mean(a - b) = 0 (`scipy.stats.ttest_rel`).

    t = mean(d) / (sd(d) / sqrt(n)) with d = a - b and sd the sample standard deviation, n - 1 degrees of
    freedom. Identical inputs give 1.0; a constant non-zero difference (sd = 0, up to rounding) gives 0.0,
    the limit scipy reaches for an exactly constant shift, without its precision-loss warning.
    """
    x, y = _paired(a, b)
    d = x - y
    spread = float(np.ptp(d))
    if spread <= 1e-12 * float(np.max(np.abs(d))):
        # Every difference equal (up to rounding): sd = 0, t = 0/0 (identical) or +-inf (a constant shift).
        return 1.0 if not d.any() else 0.0
    return float(stats.ttest_rel(x, y).pvalue)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)


# scipy >= 1.15 names the generator argument `rng`; older versions call it `random_state`.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"


def randomization_test(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value of the paired randomisation (sign-flip) test of the mean difference.

    Under the null hypothesis each pair (a_i, b_i) is exchangeable, so the sign of each difference is
    flipped at random (`scipy.stats.permutation_test(permutation_type="samples")`). When 2^n <=
    `n_resamples` all sign patterns are enumerated and the p-value is exact; otherwise `n_resamples`
    random patterns are drawn from a generator seeded with `seed`, so the result is reproducible.
    Identical inputs give 1.0.
    """
    x, y = _paired(a, b)
    if n_resamples < 1:
        raise ValueError(f"randomization test: n_resamples must be >= 1, got {n_resamples}")
    if np.array_equal(x, y):
        return 1.0
    result = stats.permutation_test(
        (x, y),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return float(min(1.0, result.pvalue))


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values: min(1, p * m) with m = len(p_values)."""
    m = len(p_values)
    adjusted = []
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"bonferroni: p-values must lie in [0, 1], got {p!r}")
        adjusted.append(min(1.0, float(p) * m))
    return adjusted


TESTS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "t-test": paired_t_test,
    "randomization": randomization_test,
}
# How each test is named in reports.
TEST_NAMES = {"t-test": "paired t-test", "randomization": "paired randomization test"}
