"""One-sided tests of "B got slower than A by more than an allowance".

The gate calls a regression only when the current run (B) is slower than the baseline
(A) by more than ``max_increase`` *and* that is significant. Both tests below take the
allowance into the null hypothesis: H0 is "B is at most A plus the allowance", so a
significant result says "slower by more than the allowance", not merely "slower". That
keeps a 2 % drift measured on thousands of turns from failing a 10 % budget, and it is
what makes repeated baseline-against-itself comparisons stay quiet (docs/ci.md).

Mann-Whitney U
    One-sided (``alternative="greater"``) on the per-turn values of B against the
    baseline's per-turn values with the allowance applied (each multiplied by 1.10 for
    "10%", or plus 50 ms for "50ms"). Tests a shift of the whole distribution; the
    natural test for the median and the mean of latency, whose distributions are skewed.

Percentile bootstrap
    The bootstrap distribution of ``q(B*) - allowed(q(A*))`` from independent resamples
    of A and B; the p-value is the share of resamples where it is at most 0. For a
    percentile it samples the resampled order statistics directly: the k-th smallest of
    ``n`` uniform draws is Beta(k, n-k+1), so the k-th smallest of a resample of the
    sorted values is ``x[floor(n * U)]`` with U ~ Beta(k, n-k+1), and the next one above
    it is found from the minimum of the remaining ``n-k`` draws. That is the exact
    bootstrap distribution of a type-7 percentile, in O(resamples) time whatever ``n``
    is. Means are resampled directly (or from the normal limit above 5,000 values).
    Seeded, so a gate's verdict on the same traces never changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Bootstrap resamples per comparison.
RESAMPLES = 10_000
#: Seed of the bootstrap's generator (verdicts are reproducible).
SEED = 20_240_607
#: Above this many values a resampled mean is drawn from its normal limit.
EXACT_MEAN_MAX_N = 5_000

#: "50ms" or "0.05s" (group 1 the number, group 2 the unit)
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*$")
#: "10%" (group 1 the number)
PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")
_PERCENTILE_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class Figure:
    """What is taken of a metric's per-turn values: ``mean``, ``min``, ``max`` or ``pQ``."""

    name: str
    #: the percentile (0 < q < 100) for ``pQ``, else None
    q: float | None = None

    @classmethod
    def parse(cls, text: str) -> Figure | None:
        if text in ("mean", "min", "max"):
            return cls(text)
        m = _PERCENTILE_RE.match(text)
        if m is None:
            return None
        q = float(m.group(1))
        if not 0 < q < 100:
            return None
        return cls(text, q)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Increase:
    """How much slower than the baseline is allowed: a fraction or a duration."""

    #: 0.10 for "10%"; None when absolute
    relative: float | None = None
    #: milliseconds for "50ms"; None when relative
    absolute_ms: float | None = None

    def allowed(self, baseline: float) -> float:
        """The largest value that is not a regression against ``baseline``."""
        if self.relative is not None:
            return baseline * (1.0 + self.relative)
        assert self.absolute_ms is not None
        return baseline + self.absolute_ms

    def __str__(self) -> str:
        if self.relative is not None:
            return f"+{number_text(self.relative * 100)}%"
        assert self.absolute_ms is not None
        return f"+{number_text(self.absolute_ms)} ms"


def parse_increase(text: str) -> Increase | None:
    """ "10%" or "50ms" (or "0.05s"); None when it is neither."""
    m = PERCENT_RE.match(text)
    if m is not None:
        return Increase(relative=float(m.group(1)) / 100.0)
    d = DURATION_RE.match(text)
    if d is not None:
        x = float(d.group(1))
        return Increase(absolute_ms=x if d.group(2) == "ms" else x * 1000.0)
    return None


def number_text(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.0f}"


Method = Literal["mann-whitney", "bootstrap", "fisher-exact"]


@dataclass(frozen=True)
class TestResult:
    method: Method
    #: one-sided p-value of H0 "B <= allowed(A)"
    p_value: float
    #: what exactly was tested, for the output
    description: str


def mann_whitney_greater(a: FloatArray, b: FloatArray, increase: Increase) -> TestResult:
    """One-sided Mann-Whitney U: is B stochastically greater than A with the allowance?"""
    from scipy.stats import mannwhitneyu

    shifted = np.asarray([increase.allowed(float(x)) for x in a], dtype=np.float64)
    desc = f"Mann-Whitney U, one-sided, against the baseline {increase}"
    if len(a) == 0 or len(b) == 0:
        return TestResult("mann-whitney", 1.0, desc)
    both = np.concatenate([shifted, b])
    if np.all(both == both[0]):
        return TestResult("mann-whitney", 1.0, desc)
    p = float(mannwhitneyu(b, shifted, alternative="greater").pvalue)
    return TestResult("mann-whitney", 1.0 if math.isnan(p) else p, desc)


def resample_percentile(
    sorted_values: FloatArray, q: float, size: int, rng: np.random.Generator
) -> FloatArray:
    """``size`` draws of the type-7 ``q``-th percentile of a bootstrap resample."""
    n = len(sorted_values)
    h = (n - 1) * q / 100.0
    k = math.floor(h)
    g = h - k
    # the (k+1)-th smallest of n uniforms (1-based order statistic k+1)
    u1 = rng.beta(k + 1, n - k, size)
    i1 = np.minimum((u1 * n).astype(np.int64), n - 1)
    lo = sorted_values[i1]
    if g == 0.0 or k + 2 > n:
        return lo
    # the next order statistic: the smallest of the n-k-1 draws above u1
    u2 = u1 + (1.0 - u1) * rng.beta(1, n - k - 1, size)
    i2 = np.minimum((u2 * n).astype(np.int64), n - 1)
    return lo + g * (sorted_values[i2] - lo)


def resample_mean(values: FloatArray, size: int, rng: np.random.Generator) -> FloatArray:
    """``size`` draws of the mean of a bootstrap resample."""
    n = len(values)
    if n > EXACT_MEAN_MAX_N:
        sd = float(np.std(values)) / math.sqrt(n)
        return rng.normal(float(np.mean(values)), sd, size)
    out = np.empty(size, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, size, chunk):
        m = min(chunk, size - start)
        idx = rng.integers(0, n, size=(m, n))
        out[start : start + m] = values[idx].mean(axis=1)
    return out


def bootstrap_greater(
    a: FloatArray,
    b: FloatArray,
    figure: Figure,
    increase: Increase,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> TestResult:
    """Percentile bootstrap of ``figure(B) - allowed(figure(A))``; ``a`` and ``b`` sorted."""
    desc = f"bootstrap on the {figure}, one-sided, against the baseline {increase}"
    if len(a) == 0 or len(b) == 0:
        return TestResult("bootstrap", 1.0, desc)
    rng = np.random.default_rng(seed)
    if figure.q is not None:
        sa = resample_percentile(a, figure.q, resamples, rng)
        sb = resample_percentile(b, figure.q, resamples, rng)
    elif figure.name == "mean":
        sa = resample_mean(a, resamples, rng)
        sb = resample_mean(b, resamples, rng)
    else:
        raise ValueError(f"no bootstrap for {figure}")
    if increase.relative is not None:
        allowed = sa * (1.0 + increase.relative)
    else:
        assert increase.absolute_ms is not None
        allowed = sa + increase.absolute_ms
    not_greater = int(np.count_nonzero(sb - allowed <= 0.0))
    return TestResult("bootstrap", (1 + not_greater) / (resamples + 1), desc)


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (compare each with alpha)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
