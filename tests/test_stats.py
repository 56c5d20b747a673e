import numpy as np
import pytest
from scipy import stats as scipy_stats

from seqwarm import stats

# Final validation losses of two methods over the same 6 seeds (seed i in position i).
BASELINE = [4.02, 4.11, 3.95, 4.20, 4.05, 4.31]
SLW = [3.91, 4.00, 3.97, 4.04, 3.90, 4.12]


def scipy_percentile_ci(sample, seed=stats.SEED, confidence=stats.CONFIDENCE):
    res = scipy_stats.bootstrap(
        (np.asarray(sample),),
        np.mean,
        n_resamples=stats.RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("sample", [BASELINE, SLW, [0, 3, 1, 0, 7], [1.5, -2.0, 0.25]])
@pytest.mark.parametrize("seed", [0, 11])
def test_bootstrap_ci_draws_as_scipy_does(sample, seed):
    assert stats.bootstrap_ci(sample, seed=seed) == pytest.approx(scipy_percentile_ci(sample, seed), rel=1e-12)
    ninety = stats.bootstrap_ci(sample, seed=seed, confidence=0.9)
    assert ninety == pytest.approx(scipy_percentile_ci(sample, seed, 0.9), rel=1e-12)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    est = stats.mean_ci(BASELINE)
    assert est == stats.mean_ci(BASELINE)  # seeded: the same report twice
    assert est.n == 6 and est.mean == pytest.approx(np.mean(BASELINE))
    assert est.low < est.mean < est.high
    assert min(BASELINE) <= est.low and est.high <= max(BASELINE)
    assert stats.mean_ci(BASELINE, seed=1) != est  # the seed is what fixes it
    wide, narrow = stats.mean_ci(BASELINE, confidence=0.99), stats.mean_ci(BASELINE, confidence=0.5)
    assert wide.low <= est.low <= narrow.low <= narrow.high <= est.high <= wide.high


def test_mean_ci_of_small_and_constant_samples():
    assert stats.mean_ci([]) == stats.Estimate(0, None, None, None)
    assert stats.mean_ci([3.5]) == stats.Estimate(1, 3.5, None, None)  # no interval from one seed
    assert stats.mean_ci([0, 0, 0]) == stats.Estimate(3, 0.0, 0.0, 0.0)  # BCa would be undefined here
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ci([1.0, 2.0], confidence=95)


def test_paired_comparison_against_scipy():
    cmp = stats.paired_comparison(SLW, BASELINE)
    d = np.subtract(SLW, BASELINE)
    assert cmp.n == 6 and cmp.note == ""
    assert cmp.diff.mean == pytest.approx(d.mean())
    assert (cmp.diff.low, cmp.diff.high) == pytest.approx(scipy_percentile_ci(d), rel=1e-12)
    assert cmp.p_value == pytest.approx(scipy_stats.wilcoxon(SLW, BASELINE).pvalue, rel=1e-12)
    # 5 of 6 seeds better, ranks of |d|: 0.02 is the smallest (1), the only positive one: W = 1, exact
    # two-sided p = 2 * P(W <= 1) = 2 * 2 / 64.
    assert cmp.p_value == pytest.approx(4 / 64)
    # The order of the arguments flips the sign of the difference, not the test.
    flipped = stats.paired_comparison(BASELINE, SLW)
    assert flipped.diff.mean == pytest.approx(-cmp.diff.mean) and flipped.p_value == pytest.approx(cmp.p_value)


def test_one_sided_paired_comparison_halves_p_in_the_predicted_direction():
    less = stats.paired_comparison(SLW, BASELINE, alternative="less")
    assert less.p_value == pytest.approx(scipy_stats.wilcoxon(SLW, BASELINE, alternative="less").pvalue, rel=1e-12)
    assert less.p_value == pytest.approx(2 / 64)  # P(W+ <= 1), exact: half the two-sided p
    greater = stats.paired_comparison(SLW, BASELINE, alternative="greater")
    assert greater.p_value == pytest.approx(1 - 1 / 64)  # the wrong direction: P(W+ >= 1)
    # 5 seeds all in the predicted direction: 1/32, the only way 5 seeds reach p < 0.05 (docs/PROXY.md)
    five = stats.paired_comparison([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0], alternative="less")
    assert five.p_value == pytest.approx(1 / 32)


def test_paired_comparison_that_cannot_be_tested_says_why():
    none = stats.paired_comparison([], [])
    assert (none.n, none.diff.mean, none.p_value, none.note) == (0, None, None, "0 pairs: no test")
    one = stats.paired_comparison([3.0], [3.5])
    assert (one.n, one.diff, one.p_value, one.note) == (1, stats.Estimate(1, -0.5, None, None), None, "1 pair: no test")
    same = stats.paired_comparison([2, 0, 5], [2, 0, 5])
    assert (same.n, same.diff, same.p_value) == (3, stats.Estimate(3, 0.0, 0.0, 0.0), None)
    assert same.note == "all differences are zero: no test"
    # Some zero differences: dropped by Wilcoxon (zero_method="wilcox"), as scipy does.
    some = stats.paired_comparison([1, 2, 3, 5], [1, 2, 4, 7])
    assert some.n == 4 and some.p_value == pytest.approx(scipy_stats.wilcoxon([0, 0, -1, -2]).pvalue)
    with pytest.raises(ValueError, match="pairs need one of each"):
        stats.paired_comparison([1, 2], [1])


def test_two_values_have_no_interval_since_the_bootstrap_spans_their_min_and_max():
    # What scipy's percentile bootstrap gives for 2 values: their min and max, not a 95% interval (issue 27).
    assert scipy_percentile_ci([1.5, -2.0], 0) == pytest.approx((-2.0, 1.5))
    assert stats.bootstrap_ci([1.5, -2.0]) is None and stats.mean_ci([1.5, -2.0]).mean == pytest.approx(-0.25)
    assert stats.bootstrap_ci([1.5, -2.0, 0.25]) is not None


@pytest.mark.parametrize(
    "n, alternative, floor, too_small",
    [(2, "two-sided", 0.5, True), (5, "two-sided", 0.0625, True), (6, "two-sided", 0.03125, False),
     (4, "less", 0.0625, True), (5, "less", 0.03125, False)],
)  # fmt: skip
def test_wilcoxon_says_when_the_seeds_cannot_reach_significance(n, alternative, floor, too_small):
    assert stats.smallest_wilcoxon_p(n, alternative) == floor
    # The floor is what scipy's exact test gives when every difference has the same sign.
    d = -np.arange(1.0, n + 1)
    assert scipy_stats.wilcoxon(d, alternative=alternative).pvalue == pytest.approx(floor)
    cmp = stats.paired_comparison(d, np.zeros(n), alternative=alternative)
    assert cmp.p_value == pytest.approx(floor) and cmp.note.startswith("n too small") == too_small
