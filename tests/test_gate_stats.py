"""The gate's statistics: turns needed per figure, the exact order-statistic bootstrap,
the one-sided tests with the allowance in the null hypothesis, Holm, and the decision
rule's false-alarm rate and power on skewed latency-like samples (fixed seeds: the
figures below are deterministic, not flaky)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from voiceaudit.analysis.significance import (
    Figure,
    Increase,
    bootstrap_greater,
    holm_adjusted,
    mann_whitney_greater,
    resample_mean,
    resample_percentile,
)
from voiceaudit.analysis.stats import holm, percentile
from voiceaudit.gate.evaluate import required_turns

P = Figure.parse


def _fig(name: str) -> Figure:
    f = P(name)
    assert f is not None
    return f


@pytest.mark.parametrize(
    ("figure", "min_turns", "needed"),
    [
        ("p50", None, 10),
        ("p90", None, 50),
        ("p95", None, 100),
        ("p99", None, 500),
        ("p99.9", None, 5000),
        ("p10", None, 50),
        ("mean", None, 5),
        ("max", None, 5),
        ("p50", 20, 20),
        ("p95", 20, 20),
        ("p95", 10, 20),  # never below one turn beyond the percentile
        ("p99", 20, 100),
        ("p99.9", 20, 1000),
        ("p90", 3, 10),
        ("max", 3, 3),
        ("mean", 30, 30),
    ],
)
def test_required_turns(figure: str, min_turns: int | None, needed: int) -> None:
    assert required_turns(_fig(figure), min_turns) == needed


def test_figures() -> None:
    assert P("p95") == Figure("p95", 95.0)
    assert P("p99.9") == Figure("p99.9", 99.9)
    assert P("mean") == Figure("mean")
    for bad in ("p0", "p100", "p", "p-5", "median", "P95", "p95.", "p050.5x"):
        assert P(bad) is None, bad


# -- the bootstrap sampler is the bootstrap -----------------------------------------------


@pytest.mark.parametrize("q", [50.0, 90.0, 95.0, 37.5, 99.0])
@pytest.mark.parametrize("n", [7, 20, 61])
def test_order_statistic_sampler_matches_brute_force_resampling(q: float, n: int) -> None:
    """The Beta shortcut draws from the same distribution as resampling the values and
    taking numpy's percentile (two-sample KS test on 20,000 draws each, fixed seeds)."""
    rng = np.random.default_rng(n * 1000 + int(q * 10))
    x = np.sort(np.round(rng.lognormal(7.0, 0.3, n), 1))  # rounded: ties too
    fast = resample_percentile(x, q, 20_000, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, n, size=(20_000, n))
    slow = np.percentile(x[idx], q, axis=1)
    # the same interpolated value can differ in its last bit between the two formulas
    fast, slow = np.round(fast, 6), np.round(slow, 6)
    res = sps.ks_2samp(fast, slow)
    assert res.pvalue > 0.001, (q, n, res)
    assert abs(np.mean(fast) - np.mean(slow)) < 0.05 * np.std(slow) + 1e-9


def test_order_statistic_sampler_is_o1_in_n() -> None:
    x = np.sort(np.random.default_rng(0).lognormal(7.0, 0.3, 1_000_000))
    draws = resample_percentile(x, 95.0, 10_000, np.random.default_rng(1))
    # the bootstrap spread of p95 of a million values is tiny around the p95 itself
    assert abs(np.median(draws) - percentile(x, 95.0)) < 0.002 * percentile(x, 95.0)


def test_mean_resampling_matches_theory() -> None:
    rng = np.random.default_rng(3)
    x = rng.lognormal(7.0, 0.4, 200)
    draws = resample_mean(x, 20_000, np.random.default_rng(4))
    se = np.std(x) / np.sqrt(len(x))
    assert abs(np.mean(draws) - np.mean(x)) < 0.05 * se
    assert abs(np.std(draws) - se) < 0.05 * se
    big = rng.lognormal(7.0, 0.4, 6_000)  # above EXACT_MEAN_MAX_N: the normal limit
    d2 = resample_mean(big, 10_000, np.random.default_rng(5))
    assert abs(np.std(d2) - np.std(big) / np.sqrt(6_000)) < 0.05 * np.std(big) / np.sqrt(6_000)


# -- the tests ------------------------------------------------------------------------------


def test_mann_whitney_takes_the_allowance_into_the_null() -> None:
    rng = np.random.default_rng(7)
    a = rng.lognormal(7.0, 0.03, 40)
    ten = Increase(relative=0.10)
    # 20 % slower: beyond a 10 % allowance, significant
    assert mann_whitney_greater(a, a * 1.20 + rng.normal(0, 1, 40), ten).p_value < 0.01
    # 5 % slower: certainly slower, but within the allowance: not significant
    assert mann_whitney_greater(a, a * 1.05, ten).p_value > 0.5
    # against a zero allowance the same 5 % is significant
    assert mann_whitney_greater(a, a * 1.05, Increase(relative=0.0)).p_value < 0.01
    # absolute allowances
    assert mann_whitney_greater(a, a + 30.0, Increase(absolute_ms=50.0)).p_value > 0.5
    assert mann_whitney_greater(a, a + 300.0, Increase(absolute_ms=50.0)).p_value < 1e-6
    # identical constant samples: nothing to see
    same = np.full(10, 5.0)
    assert mann_whitney_greater(same, same, ten).p_value > 0.99
    assert mann_whitney_greater(same, same, Increase(relative=0.0)).p_value == 1.0
    desc = mann_whitney_greater(a, a, ten).description
    assert "Mann-Whitney U" in desc and "one-sided" in desc and "+10%" in desc


@pytest.mark.parametrize("figure", ["p50", "p90", "mean"])
def test_bootstrap_takes_the_allowance_into_the_null(figure: str) -> None:
    rng = np.random.default_rng(11)
    a = np.sort(rng.lognormal(7.0, 0.2, 60))
    fig = _fig(figure)
    ten = Increase(relative=0.10)
    assert bootstrap_greater(a, np.sort(a * 1.3), fig, ten).p_value < 0.01
    assert bootstrap_greater(a, np.sort(a * 1.05), fig, ten).p_value > 0.5
    assert bootstrap_greater(a, np.sort(a * 0.8), fig, ten).p_value > 0.99
    r1 = bootstrap_greater(a, np.sort(a * 1.12), fig, ten)
    r2 = bootstrap_greater(a, np.sort(a * 1.12), fig, ten)
    assert r1 == r2  # seeded: the same verdict every time
    assert f"bootstrap on the {figure}" in r1.description


def test_holm_adjusted_agrees_with_the_step_down_rule() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        m = int(rng.integers(1, 6))
        ps = list(rng.uniform(0, 0.05, m) ** rng.uniform(0.5, 2))
        alpha = float(rng.choice([0.01, 0.05]))
        adj = holm_adjusted(ps)
        assert [p < alpha for p in adj] == holm(ps, alpha)
        assert all(a >= p for a, p in zip(adj, ps, strict=True))


# -- the decision rule: false alarms and power ---------------------------------------------


def _latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Voice-to-voice-like values: a lognormal bulk around 1.1 s and a slow tail (one
    turn in twenty is up to seconds slower, as when speech recognition falls behind)."""
    bulk = rng.lognormal(np.log(1100), 0.08, n)
    tail = rng.random(n) < 0.05
    return np.where(tail, bulk + rng.exponential(900, n), bulk)


def _regressed(a: np.ndarray, b: np.ndarray, figure: Figure, method: str) -> bool:
    """The gate's rule for one metric: over the allowance and significant at 0.01."""
    ten = Increase(relative=0.10)
    va, vb = (percentile(np.sort(v), figure.q) if figure.q else float(np.mean(v)) for v in (a, b))
    if vb <= ten.allowed(va):
        return False
    if method == "mann-whitney":
        p = mann_whitney_greater(a, b, ten).p_value
    else:
        p = bootstrap_greater(np.sort(a), np.sort(b), figure, ten, resamples=2000).p_value
    return p < 0.01


@pytest.mark.parametrize(("figure", "method"), [("p50", "mann-whitney"), ("p90", "bootstrap")])
def test_no_false_alarms_when_nothing_changed(figure: str, method: str) -> None:
    """400 comparisons of two samples from one distribution (n = 10 and n = 40 a side):
    the gate calls at most the nominal 1 % of them regressions. With the allowance in
    the null hypothesis it calls none."""
    rng = np.random.default_rng(2024)
    fig = _fig(figure)
    alarms = 0
    for i in range(400):
        n = 10 if i % 2 else 40
        alarms += _regressed(_latencies(rng, n), _latencies(rng, n), fig, method)
    assert alarms <= 4, alarms


@pytest.mark.parametrize(
    ("figure", "method", "n"), [("p50", "mann-whitney", 20), ("p90", "bootstrap", 200)]
)
def test_a_real_slowdown_is_found(figure: str, method: str, n: int) -> None:
    """The same samples with 400 ms added to every turn of B (about +35 %): found nearly
    always, by the median's test from 20 turns a side; a tail percentile needs far more
    turns (with 40 a side the p90 bootstrap finds it only about half the time: that is
    the price of never crying wolf on a noisy tail)."""
    rng = np.random.default_rng(99)
    fig = _fig(figure)
    found = sum(
        _regressed(_latencies(rng, n), _latencies(rng, n) + 400.0, fig, method) for _ in range(100)
    )
    assert found >= 90, found
