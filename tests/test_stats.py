"""Statistics: percentiles, exact bootstrap intervals against scipy's resampling, flags,
Mann-Whitney U and Holm."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from voiceaudit.analysis.stats import (
    as_sorted,
    holm,
    mann_whitney,
    mean_ci,
    percentile,
    percentile_ci,
    summarize,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=200), st.sampled_from([0, 1, 50, 90, 95, 99, 100]))
def test_percentile_is_numpys_linear_percentile(values: list[float], q: int) -> None:
    x = as_sorted(values)
    assert percentile(x, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.sampled_from([50, 90, 95, 99]))
def test_interval_brackets_the_percentile(values: list[float], q: int) -> None:
    x = as_sorted(values)
    lo, hi = percentile_ci(x, q)
    est = percentile(x, q)
    assert x[0] <= lo <= est + 1e-9 * max(1.0, abs(est))
    assert est - 1e-9 * max(1.0, abs(est)) <= hi <= x[-1]


@pytest.mark.parametrize(("n", "q"), [(30, 50), (200, 50), (200, 90), (500, 95), (1000, 99)])
def test_exact_bootstrap_matches_scipy_resampling(n: int, q: int) -> None:
    rng = np.random.default_rng(n + q)
    x = rng.lognormal(6.0, 0.4, n)
    lo, hi = percentile_ci(as_sorted(x), q)
    res = sps.bootstrap(
        (x,),
        lambda v, axis: np.percentile(v, q, axis=axis),
        method="percentile",
        n_resamples=20_000,
        rng=np.random.default_rng(1),
        vectorized=True,
    )
    width = hi - lo
    # Monte Carlo error of 20,000 resamples is a small fraction of the interval width.
    assert lo == pytest.approx(res.confidence_interval.low, abs=0.06 * width)
    assert hi == pytest.approx(res.confidence_interval.high, abs=0.06 * width)


def test_mean_interval_is_students_t() -> None:
    x = np.random.default_rng(3).normal(500, 40, 60)
    lo, hi = mean_ci(as_sorted(x))  # type: ignore[misc]
    ref = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (lo, hi) == pytest.approx(ref, rel=1e-9)
    assert mean_ci(as_sorted([1.0])) is None


def test_summary_figures_and_intervals() -> None:
    x = np.random.default_rng(4).lognormal(6.5, 0.3, 2000)
    s = summarize(x, abs_tolerance=5.0)
    assert s is not None
    assert s.n == 2000
    assert s.p50 == pytest.approx(np.percentile(x, 50))
    assert s.p99 == pytest.approx(np.percentile(x, 99))
    assert (s.min, s.max) == (x.min(), x.max())
    assert s.mean == pytest.approx(x.mean())
    assert set(s.ci95) == {"mean", "p50", "p90", "p95", "p99"}
    assert s.unreliable == {}
    d = s.to_dict()
    assert set(d) == {"n", "mean", "p50", "p90", "p95", "p99", "min", "max", "ci95", "unreliable"}


def test_p99_from_twenty_turns_is_unreliable() -> None:
    x = np.random.default_rng(5).normal(700, 50, 20)
    s = summarize(x, abs_tolerance=5.0)
    assert s is not None
    assert "p99" in s.unreliable and "too few samples: 20" in s.unreliable["p99"]
    assert "p99 needs at least 500" in s.unreliable["p99"]
    assert "p50" not in s.unreliable


def test_wide_interval_is_unreliable() -> None:
    # 60 samples, half near 300 and half near 1500: the median is anywhere in between.
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(300, 5, 30), rng.normal(1500, 5, 30)])
    s = summarize(x, abs_tolerance=5.0)
    assert s is not None
    assert s.unreliable["p50"].startswith("wide 95% interval")


def test_a_tight_tiny_figure_is_not_called_wide() -> None:
    x = np.random.default_rng(7).normal(0.2, 0.05, 300).clip(0)
    s = summarize(x, abs_tolerance=5.0)
    assert s is not None and "p50" not in s.unreliable and "mean" not in s.unreliable


def test_no_values() -> None:
    assert summarize([]) is None
    assert summarize([float("nan")]) is None


def test_mann_whitney_agrees_with_scipy() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(600, 50, 80), rng.normal(560, 50, 90)
    d = mann_whitney(a, b)
    assert d is not None
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert d.u == ref.statistic and d.p_value == pytest.approx(ref.pvalue)
    assert d.significant() and d.prob_a_greater > 0.6


def test_mann_whitney_on_equal_samples() -> None:
    d = mann_whitney([5.0] * 10, [5.0] * 12)
    assert d is not None and d.p_value == 1.0 and not d.significant()
    same = np.random.default_rng(9).normal(0, 1, 50)
    d2 = mann_whitney(same, same)
    assert d2 is not None and d2.p_value == 1.0 and d2.prob_a_greater == 0.5
    assert mann_whitney([], [1.0]) is None


def test_holm() -> None:
    # m = 4: thresholds .0125, .0167, .025, .05 in p order
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.001, 0.01, 0.02, 0.04]) == [True, True, True, True]
    assert holm([]) == []
