"""Statistics for latency samples: percentiles with bootstrap intervals, comparisons.

Reusable on its own (the report and the gate both use it); it knows nothing about traces.
Values are plain numbers in whatever unit the caller uses (the report passes milliseconds).

Percentiles
    ``numpy.percentile``'s default (linear interpolation between order statistics,
    Hyndman & Fan type 7), the figure most tools print.

Confidence intervals for percentiles
    The *percentile bootstrap* interval, computed exactly instead of by resampling: the
    k-th smallest value of a resample of ``n`` values is at most ``x[j]`` exactly when at
    least ``k`` of the ``n`` draws are among the ``j`` smallest, so
    ``P(x*_(k) <= x_(j)) = P(Binomial(n, j/n) >= k)``. Inverting that distribution at
    2.5 % and 97.5 % gives the interval that ``scipy.stats.bootstrap(method="percentile")``
    converges to as the number of resamples grows (the tests check the two agree). It is
    deterministic (reports stay byte-for-byte stable) and costs a few microseconds per
    figure whatever ``n`` is, where resampling 100,000 turns 10,000 times would take
    minutes. Type-7 interpolation between two order statistics is carried over to the
    interval bounds.

Confidence interval for the mean
    Student's t interval (``scipy.special.stdtrit``).

Reliability
    A figure is *unreliable* when there are too few samples beyond it (fewer than
    :data:`MIN_TAIL` values above a percentile, or fewer than :data:`MIN_N_MEAN` values for
    a mean) or when its 95 % interval is wide: wider than :data:`WIDE_REL` of the value
    and wider than the caller's absolute tolerance.

Comparison
    Mann-Whitney U (two-sided, ``scipy.stats.mannwhitneyu``), with the common-language
    effect size (the probability that a value from A exceeds one from B) and Holm's
    step-down correction when several metrics are compared at once.

Proportions
    The Wilson score interval of a rate (95 %), and Fisher's exact test (two-sided,
    ``scipy.stats.fisher_exact``) of two rates: exact at the small counts a rate of
    cut-ins or false interruptions has, where a chi-squared test is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

#: Percentiles every summary reports.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
#: A percentile needs at least this many samples above it to be trusted.
MIN_TAIL = 5
#: A mean needs at least this many samples to be trusted.
MIN_N_MEAN = 5
#: An interval wider than this fraction of its value is "wide".
WIDE_REL = 0.25

FloatArray = npt.NDArray[np.float64]


Values = Iterable[float] | npt.NDArray[Any]


def as_sorted(values: Values) -> FloatArray:
    """The finite values, as a sorted float64 array."""
    if isinstance(values, np.ndarray):
        arr: FloatArray = np.array(values, dtype=np.float64)
    else:
        arr = np.array(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    arr.sort()
    return arr


def _rank(n: int, q: float) -> tuple[int, float]:
    """Where the ``q``-th percentile (type 7) sits among ``n`` sorted values: the index
    at or below it and the fraction of the way on to the next."""
    if n == 0:
        raise ValueError("no values")
    h = (n - 1) * q / 100.0
    k = math.floor(h)
    return k, h - k


def percentile(sorted_values: FloatArray, q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, linear interpolation (type 7)."""
    n = len(sorted_values)
    k, g = _rank(n, q)
    lo = float(sorted_values[k])
    if g == 0.0 or k + 1 >= n:
        return lo
    return lo + g * (float(sorted_values[k + 1]) - lo)


def _order_stat_interval(sorted_values: FloatArray, k: int, confidence: float) -> tuple[int, int]:
    """Indices (0-based) of the exact percentile-bootstrap interval of the k-th (1-based)
    order statistic."""
    from scipy.special import bdtrc  # scipy.special imports in a third of scipy.stats' time

    n = len(sorted_values)
    alpha = 1.0 - confidence
    # The bootstrap distribution of x*_(k) is concentrated within a few standard
    # deviations of k; look only there (the whole range when n is small).
    if n <= 4000:
        j = np.arange(1, n + 1)
    else:
        p = k / n
        sd = math.sqrt(n * p * (1 - p)) + 1.0
        lo_j = max(1, int(k - 10 * sd) - 2)
        hi_j = min(n, int(k + 10 * sd) + 2)
        j = np.arange(lo_j, hi_j + 1)
    cdf = bdtrc(k - 1, n, j / n)  # P(Bin(n, j/n) >= k) = P(x*_(k) <= x_(j))
    lo = int(np.searchsorted(cdf, alpha / 2, side="left"))
    hi = int(np.searchsorted(cdf, 1 - alpha / 2, side="left"))
    lo = min(lo, len(j) - 1)
    hi = min(hi, len(j) - 1)
    return int(j[lo]) - 1, int(j[hi]) - 1


def percentile_ci(
    sorted_values: FloatArray, q: float, confidence: float = 0.95
) -> tuple[float, float]:
    """The exact percentile-bootstrap interval of the ``q``-th percentile (see module doc)."""
    n = len(sorted_values)
    k, g = _rank(n, q)
    a_lo, a_hi = _order_stat_interval(sorted_values, k + 1, confidence)
    lo, hi = float(sorted_values[a_lo]), float(sorted_values[a_hi])
    if g > 0.0 and k + 2 <= n:
        b_lo, b_hi = _order_stat_interval(sorted_values, k + 2, confidence)
        lo += g * (float(sorted_values[b_lo]) - lo)
        hi += g * (float(sorted_values[b_hi]) - hi)
    return lo, hi


def mean_ci(sorted_values: FloatArray, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval for the mean; ``None`` with fewer than two values."""
    n = len(sorted_values)
    if n < 2:
        return None
    from scipy.special import stdtrit  # quantile of Student's t

    m = float(np.mean(sorted_values))
    sd = float(np.std(sorted_values, ddof=1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * sd / math.sqrt(n)
    return m - half, m + half


@dataclass(frozen=True)
class Summary:
    """One metric over many samples.

    ``ci95`` maps ``mean`` and ``p50``… to a 95 % interval (``None`` when it cannot be
    computed); ``unreliable`` maps each figure that should not be trusted to the reason.
    """

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    ci95: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    unreliable: dict[str, str] = field(default_factory=dict)

    def get(self, figure: str) -> float:
        """A figure by name: ``mean``, ``p50``, ``p90``, ``p95``, ``p99``, ``min``, ``max``."""
        if figure not in FIGURES:
            raise KeyError(figure)
        value: float = getattr(self, figure)
        return value

    def to_dict(self, ndigits: int | None = 3) -> dict[str, Any]:
        def r(x: float) -> float:
            return x if ndigits is None else round(x, ndigits)

        out: dict[str, Any] = {"n": self.n}
        for f in FIGURES:
            out[f] = r(self.get(f))
        out["ci95"] = {k: None if v is None else [r(v[0]), r(v[1])] for k, v in self.ci95.items()}
        out["unreliable"] = dict(self.unreliable)
        return out


FIGURES: tuple[str, ...] = ("mean", "p50", "p90", "p95", "p99", "min", "max")


def summarize(
    values: Values,
    *,
    confidence: float = 0.95,
    abs_tolerance: float = 0.0,
) -> Summary | None:
    """Summarise samples; ``None`` when there are none.

    ``abs_tolerance`` (in the values' unit): an interval narrower than this is never
    called wide, however small the value (a 0.1 ms figure known to ±0.05 ms is fine).
    """
    x = values if isinstance(values, np.ndarray) and _is_sorted(values) else as_sorted(values)
    n = len(x)
    if n == 0:
        return None
    pct = {f"p{q}": percentile(x, q) for q in PERCENTILES}
    ci: dict[str, tuple[float, float] | None] = {"mean": mean_ci(x, confidence)}
    unreliable: dict[str, str] = {}
    mean = float(np.mean(x))
    if n < MIN_N_MEAN:
        unreliable["mean"] = f"only {n} samples"
    for q in PERCENTILES:
        name = f"p{q}"
        ci[name] = percentile_ci(x, q, confidence)
        tail = n * (100 - q) / 100.0
        if q > 50 and tail < MIN_TAIL:
            need = math.ceil(MIN_TAIL * 100 / (100 - q))
            unreliable[name] = f"too few samples: {n} (p{q} needs at least {need})"
        elif q == 50 and n < 2 * MIN_TAIL:
            unreliable[name] = f"too few samples: {n} (p50 needs at least {2 * MIN_TAIL})"
    for name, interval in ci.items():
        if name in unreliable or interval is None:
            continue
        width = interval[1] - interval[0]
        value = mean if name == "mean" else pct[name]
        if width > WIDE_REL * abs(value) and width > abs_tolerance:
            unreliable[name] = (
                f"wide 95% interval: {interval[0]:.1f} to {interval[1]:.1f} around {value:.1f}"
            )
    return Summary(
        n=n,
        mean=mean,
        p50=pct["p50"],
        p90=pct["p90"],
        p95=pct["p95"],
        p99=pct["p99"],
        min=float(x[0]),
        max=float(x[-1]),
        ci95=ci,
        unreliable=unreliable,
    )


def _is_sorted(a: npt.NDArray[Any]) -> bool:
    return a.dtype == np.float64 and (len(a) < 2 or bool(np.all(a[:-1] <= a[1:])))


@dataclass(frozen=True)
class Difference:
    """Mann-Whitney U comparison of two samples (A and B).

    ``p_value`` is two-sided. ``prob_a_greater`` is the common-language effect size:
    the chance that a random value from A exceeds a random value from B (ties count
    half); 0.5 means no tendency either way.
    """

    n_a: int
    n_b: int
    u: float
    p_value: float
    prob_a_greater: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def mann_whitney(a: Values, b: Values) -> Difference | None:
    """Two-sided Mann-Whitney U test of A against B; ``None`` if either is empty."""
    from scipy.stats import mannwhitneyu

    xa = as_sorted(a)
    xb = as_sorted(b)
    if len(xa) == 0 or len(xb) == 0:
        return None
    if np.array_equal(xa, xb) or (xa[0] == xa[-1] == xb[0] == xb[-1]):
        # Identical samples (or all values equal): no difference, p = 1 (scipy gives nan).
        u = len(xa) * len(xb) / 2.0
        return Difference(len(xa), len(xb), u, 1.0, 0.5)
    res = mannwhitneyu(xa, xb, alternative="two-sided")
    u = float(res.statistic)
    p = float(res.pvalue)
    if math.isnan(p):
        p = 1.0
    return Difference(len(xa), len(xb), u, p, u / (len(xa) * len(xb)))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down procedure: which of several tests are significant at family
    level ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m = len(p_values)
    out = [False] * m
    for rank, i in enumerate(order):
        if p_values[i] < alpha / (m - rank):
            out[i] = True
        else:
            break
    return out


#: z of a two-sided 95 % interval
Z95 = 1.959963984540054


def wilson_interval(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``count / n`` (95 % by default): unlike
    the normal approximation it stays inside [0, 1] and is usable at 0 of n or n of n."""
    assert n > 0 and 0 <= count <= n
    p = count / n
    z2 = z * z
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / den
    lo = 0.0 if count == 0 else max(0.0, centre - half)
    hi = 1.0 if count == n else min(1.0, centre + half)
    return lo, hi


def fisher_exact(
    count_a: int, n_a: int, count_b: int, n_b: int, *, b_greater: bool = False
) -> float:
    """p-value of Fisher's exact test that ``count_a / n_a`` and ``count_b / n_b`` are
    the same rate (both ``n`` > 0): two-sided, or with ``b_greater`` one-sided against
    "B's rate is higher"."""
    from scipy.stats import fisher_exact as _fisher

    assert n_a > 0 and n_b > 0 and 0 <= count_a <= n_a and 0 <= count_b <= n_b
    table = [[count_a, n_a - count_a], [count_b, n_b - count_b]]
    # B's rate higher is A's odds lower: an odds ratio (A over B) below 1
    alternative = "less" if b_greater else "two-sided"
    p = float(_fisher(table, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)
