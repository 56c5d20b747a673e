"""Statistics over seeds: a mean with its bootstrap interval, and two methods compared seed by seed.

A sweep runs every method with the same seeds, and the same seed gives each method the same
initial weights and data order, so the runs pair up: the comparison is over the per-seed
differences (method - baseline), not over two independent samples. With the handful of seeds a
study can afford (5 to 10), the tests are the distribution-free ones: a percentile bootstrap of the
mean (Efron and Tibshirani, 1993, Section 13.3) and the Wilcoxon signed-rank test of the
differences. Pure functions of numbers; deterministic (the bootstrap draws from a seeded Generator,
so a report rebuilt from the same runs prints the same intervals).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy

CONFIDENCE = 0.95
RESAMPLES = 9999  # scipy.stats.bootstrap's default
SEED = 0
# Fewest values with an interval: the percentile bootstrap of 2 values spans little more than their min and max
# (every resample mean lies between them), which is no 95% interval (issue 27 read "[8.967, 9.081] (n=2)").
MIN_INTERVAL_N = 3
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Estimate:
    """The mean of a sample and its bootstrap confidence interval (None where the sample cannot give one)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Paired:
    """Method vs baseline over the same seeds: the mean difference (method - baseline), its interval, the p-value."""

    n: int  # pairs
    diff: Estimate
    p_value: float | None  # Wilcoxon signed-rank (two-sided by default); None where it is undefined (see `note`)
    note: str = ""


def _values(sample: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(sample, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: the sample has a non-finite value")
    return x


def bootstrap_ci(
    sample: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None for fewer than MIN_INTERVAL_N values.

    The same draws as `scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))`:
    `resamples` rows of n indices drawn with replacement, the mean of each row, and the
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those means. Percentile rather than
    scipy's default BCa: BCa's acceleration is undefined when every resample has the same mean (a
    cell whose seeds all counted 0 spikes), which the percentile interval reports as [0, 0].
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence}")
    x = _values(sample, "bootstrap_ci")
    if len(x) < MIN_INTERVAL_N:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def mean_ci(sample: Sequence[float], **kw) -> Estimate:
    """Mean and bootstrap interval (`bootstrap_ci`'s keywords); no values: mean None; one value: no interval."""
    x = _values(sample, "mean_ci")
    ci = bootstrap_ci(x, **kw)
    return Estimate(len(x), float(x.mean()) if len(x) else None, *(ci or (None, None)))


def smallest_wilcoxon_p(n: int, alternative: str = "two-sided") -> float:
    """The smallest p the exact signed-rank test can give with n nonzero differences: every difference with one sign
    has probability 0.5**n under the null; two-sided counts both signs."""
    one = 0.5**n
    return one if alternative in ("less", "greater") else min(1.0, 2 * one)


def too_few_pairs(n: int, alternative: str = "two-sided") -> str:
    """A note when n pairs cannot reach p < SIGNIFICANCE whatever they are, else ''."""
    floor = smallest_wilcoxon_p(n, alternative)
    return f"n too small: p >= {floor:.3g} whatever the data" if floor > SIGNIFICANCE else ""


def paired_comparison(
    method: Sequence[float], baseline: Sequence[float], *, alternative: str = "two-sided", **kw
) -> Paired:
    """`method[i]` and `baseline[i]` are the same seed's runs. The mean of method - baseline, its interval, Wilcoxon's p.

    The p-value is `scipy.stats.wilcoxon`'s on the differences (zero differences dropped, its
    default `zero_method="wilcox"`), two-sided unless `alternative` is "less" (the method's values
    are smaller) or "greater": a pre-registered directional hypothesis (docs/PROXY.md). With n pairs
    and no ties, the smallest two-sided p is 2 / 2**n (0.0625 for 5 seeds, 0.002 for 10): fewer
    seeds cannot reach p < 0.05 two-sided; one-sided, 5 seeds reach 1 / 32 = 0.031 when every
    difference has the predicted sign. Undefined, and None with a note, for fewer than 2 pairs or
    when every difference is zero; where n cannot reach p < 0.05 the p is kept and the note says "n too small".
    """
    a, b = _values(method, "paired_comparison"), _values(baseline, "paired_comparison")
    if a.shape != b.shape:
        raise ValueError(f"paired_comparison: {len(a)} values against {len(b)}; pairs need one of each")
    d = a - b
    diff = mean_ci(d, **kw)
    if len(d) < 2:
        return Paired(len(d), diff, None, f"{len(d)} pair{'' if len(d) == 1 else 's'}: no test")
    if not np.any(d):
        return Paired(len(d), diff, None, "all differences are zero: no test")
    p = float(_scipy.wilcoxon(d, alternative=alternative).pvalue)
    if math.isnan(p):
        return Paired(len(d), diff, None, "Wilcoxon's p is undefined for these differences")
    return Paired(len(d), diff, p, too_few_pairs(int(np.count_nonzero(d)), alternative))
