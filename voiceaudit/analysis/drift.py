"""Long calls: voice-to-voice by turn index and over time, and a test for drift.

Latency that drifts over a long call or a long run (caches filling, context growing,
leaks) is a known failure of real agents. :func:`drift_view` takes each turn's run,
session, turn index, speech-end time and voice-to-voice (``None`` for a failed turn) and
gives:

- voice-to-voice by turn index, across sessions (n, p50, p95), the indices grouped into
  at most :data:`MAX_INDEX_ROWS` equal ranges;
- voice-to-voice over time, in :data:`WINDOWS` equal windows from the run's start (the
  first speech end of its run): n, p50, p95 and the failed turns;
- two trend tests of voice-to-voice, against the time since the run's start and against
  the turn index: Spearman's rank correlation (its p-value) and the Theil-Sen slope with
  its 95 % interval, in ms per minute and ms per turn.

A ``drift`` finding is raised (:func:`drift_finding`) when, on either axis, the rank
correlation is significant at p < :data:`ALPHA` / 2 (Bonferroni over the two axes, so the
finding's false-alarm rate stays under :data:`ALPHA`), the slope's 95 % interval excludes
0, and the change the slope makes over the run (slope x duration, or x the span of turn
indices) is at least :data:`MIN_CHANGE_MS`; never with fewer than :data:`MIN_TURNS` ok
turns. The finding's cost is that change. docs/report-format.md ("Long calls") documents
it; recordings read into traces (analysis/recording.py) get the same view.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

#: No trend test and no ``drift`` finding with fewer ok turns than this.
MIN_TURNS = 20
#: The finding's significance level (split over the two axes, time and turn index).
ALPHA = 0.01
#: The least change over the run (ms) a drift finding needs: a significant but smaller
#: trend is shown, not raised.
MIN_CHANGE_MS = 50.0
#: Windows of time the run is cut into (equal, from its start to its last speech end).
WINDOWS = 10
#: At most this many rows of the by-turn-index table (indices grouped in equal ranges).
MAX_INDEX_ROWS = 12
#: A trend is called a step, not a drift, when the best single step (two levels, each
#: its side's median) leaves less than this share of the line's absolute deviations.
STEP_RATIO = 0.8
#: Turns each side of a step must have at least.
MIN_STEP_SIDE = 5
#: Theil-Sen is quadratic in the turns: above this many, it is computed on this many
#: turns evenly spaced along the axis (Spearman's test always uses every turn).
MAX_THEIL_SEN = 2000

NS_PER_MIN = 60 * 10**9


class DriftTurn(NamedTuple):
    """One finished turn as the drift view needs it."""

    run_id: str
    session: str
    turn: int
    #: speech end on the run's clock (ns); None: the turn has no speech end
    t_ns: int | None
    #: voice-to-voice (ns); None: a failed turn
    v2v_ns: int | None


@dataclass(frozen=True)
class DriftRow:
    """One row of a drift table: a range of turn indices or a window of time."""

    #: first and last turn index, or the window's start and end (s from the run's start)
    start: float
    end: float
    n: int
    p50_ms: float | None
    p95_ms: float | None
    failures: int

    def to_dict(self, by: str) -> dict[str, Any]:
        """``by`` ``turn``: ``turn_from``/``turn_to``; ``time``: ``from_s``/``to_s``."""
        if by == "turn":
            d: dict[str, Any] = {"turn_from": int(self.start), "turn_to": int(self.end)}
        else:
            d = {"from_s": round(self.start, 3), "to_s": round(self.end, 3)}
        d.update(
            {
                "n": self.n,
                "p50_ms": _r(self.p50_ms),
                "p95_ms": _r(self.p95_ms),
                "failures": self.failures,
            }
        )
        return d


@dataclass(frozen=True)
class Trend:
    """Voice-to-voice against one axis: Spearman's test and the Theil-Sen slope."""

    #: ``time`` (slope in ms per minute) or ``turn`` (ms per turn)
    axis: str
    n: int
    rho: float
    p: float
    slope: float
    low: float
    high: float
    #: the axis's span over the run (minutes, or turn indices)
    span: float
    #: (where on the axis, change ms) of a single step that fits better than the line
    #: (see STEP_RATIO): a shift, not a gradual drift; None: the line fits as well
    step: tuple[float, float] | None = None
    #: the Theil-Sen line's value (ms) at 0 on the axis (the run's start, or turn 0)
    intercept: float = 0.0

    @property
    def unit(self) -> str:
        return "ms/min" if self.axis == "time" else "ms/turn"

    @property
    def change_ms(self) -> float:
        """What the slope adds over the run: slope x span."""
        return self.slope * self.span

    @property
    def significant(self) -> bool:
        """p < ALPHA/2 and the slope's 95 % interval excludes 0."""
        return self.p < ALPHA / 2 and (self.low > 0 or self.high < 0)

    @property
    def drifts(self) -> bool:
        """Significant, the change over the run is at least MIN_CHANGE_MS, and gradual
        (no single step fits better)."""
        return self.significant and abs(self.change_ms) >= MIN_CHANGE_MS and self.step is None

    def describe(self) -> str:
        """``+3.02 ms/turn (95% CI 2.80 to 3.25), Spearman rho 0.91, p 1e-12, +178 ms
        over 59 turns``."""
        over = f"{self.span:.1f} min" if self.axis == "time" else f"{self.span:g} turns"
        text = (
            f"{self.slope:+.2f} {self.unit} (95% CI {self.low:.2f} to {self.high:.2f}), "
            f"Spearman rho {self.rho:.2f}, p {_fmt_p(self.p)}, "
            f"{self.change_ms:+.0f} ms over {over}"
        )
        if self.step is not None:
            at = f"{self.step[0]:.1f} min" if self.axis == "time" else f"turn {self.step[0]:g}"
            text += f"; a step of {self.step[1]:+.0f} ms at {at} fits better (not gradual)"
        return text

    def to_dict(self) -> dict[str, Any]:
        per = "per_min" if self.axis == "time" else "per_turn"
        return {
            "n": self.n,
            "spearman_rho": round(self.rho, 4),
            "p": self.p,
            f"slope_ms_{per}": round(self.slope, 4),
            f"slope_ms_{per}_ci95": [round(self.low, 4), round(self.high, 4)],
            "intercept_ms": round(self.intercept, 3),
            "span": round(self.span, 4),
            "change_ms": round(self.change_ms, 3),
            "significant": self.significant,
            "step": None
            if self.step is None
            else {"at": round(self.step[0], 4), "change_ms": round(self.step[1], 3)},
            "drift": self.drifts,
        }


@dataclass(frozen=True)
class DriftView:
    """Voice-to-voice by turn index and over time, and the two trend tests."""

    turns: int
    duration_s: float
    by_turn: tuple[DriftRow, ...]
    over_time: tuple[DriftRow, ...]
    #: None: fewer than MIN_TURNS ok turns, or the axis does not vary
    time: Trend | None
    turn: Trend | None

    @property
    def drift(self) -> Trend | None:
        """The trend that raises the finding (the larger change of the two), if any."""
        hits = [t for t in (self.time, self.turn) if t is not None and t.drifts]
        return max(hits, key=lambda t: abs(t.change_ms)) if hits else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "duration_s": round(self.duration_s, 3),
            "min_turns": MIN_TURNS,
            "alpha": ALPHA,
            "min_change_ms": MIN_CHANGE_MS,
            "windows": WINDOWS,
            "by_turn": [r.to_dict("turn") for r in self.by_turn],
            "over_time": [r.to_dict("time") for r in self.over_time],
            "trend": {
                "time": None if self.time is None else self.time.to_dict(),
                "turn": None if self.turn is None else self.turn.to_dict(),
            },
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"


def _row(start: float, end: float, vals: list[float], failures: int) -> DriftRow:
    if not vals:
        return DriftRow(start, end, 0, None, None, failures)
    p50, p95 = np.percentile(np.asarray(vals), [50, 95])
    return DriftRow(start, end, len(vals), float(p50), float(p95), failures)


def _trend(axis: str, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> Trend | None:
    n = len(x)
    if n < MIN_TURNS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy import stats  # lazily: the CLI starts without scipy

    rho, p = stats.spearmanr(x, y)
    rho, p = float(rho), float(p)
    if math.isnan(rho) or math.isnan(p):
        return None
    xs, ys = x, y
    if n > MAX_THEIL_SEN:
        order = np.argsort(x, kind="stable")
        pick = order[np.linspace(0, n - 1, MAX_THEIL_SEN).round().astype(int)]
        xs, ys = x[pick], y[pick]
    res = stats.theilslopes(ys, xs, alpha=0.95)
    slope, icpt, low, high = float(res[0]), float(res[1]), float(res[2]), float(res[3])
    line_dev = float(np.abs(ys - (icpt + slope * xs)).sum())
    step = _step(xs, ys, line_dev)
    return Trend(axis, n, rho, p, slope, low, high, float(np.ptp(x)), step, icpt)


def _step(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], line_dev: float
) -> tuple[float, float] | None:
    """The best single step of ``y`` along ``x`` (least absolute deviations from each
    side's median, at most 200 split points tried), when it leaves less than STEP_RATIO
    of ``line_dev``: (where, the change between the sides' medians)."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    n = len(ys)
    # a split falls between two different axis values, with MIN_STEP_SIDE turns a side
    cands = [k for k in range(MIN_STEP_SIDE, n - MIN_STEP_SIDE + 1) if xs[k] != xs[k - 1]]
    if not cands:
        return None
    if len(cands) > 200:
        cands = [cands[i] for i in np.linspace(0, len(cands) - 1, 200).round().astype(int)]
    best: tuple[float, int, float, float] | None = None
    for k in cands:
        a, b = float(np.median(ys[:k])), float(np.median(ys[k:]))
        dev = float(np.abs(ys[:k] - a).sum() + np.abs(ys[k:] - b).sum())
        if best is None or dev < best[0]:
            best = (dev, k, a, b)
    assert best is not None
    dev, k, a, b = best
    if dev >= STEP_RATIO * line_dev:
        return None
    return (float(xs[k - 1] + xs[k]) / 2, b - a)


def _rows(
    key: np.ndarray[Any, Any],
    ok: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    bounds: list[tuple[float, float]],
    keep_empty: bool,
) -> tuple[DriftRow, ...]:
    """One row per value of ``key`` (0 .. len(bounds) - 1): figures of its ok turns'
    ``y``, its failed turns counted; empty rows only with ``keep_empty``."""
    counts = np.bincount(key, minlength=len(bounds))
    rows = []
    for k, (a, b) in enumerate(bounds):
        if not counts[k] and not keep_empty:
            continue
        here = key == k
        vals = y[here & ok]
        rows.append(_row(a, b, vals.tolist(), int((here & ~ok).sum())))
    return tuple(rows)


def drift_view(turns: Iterable[DriftTurn]) -> DriftView | None:
    """The drift view of ``turns`` (ok ones carry a voice-to-voice, failed ones None);
    None when no ok turn has a speech-end time. Time is counted from the first speech end
    of each run (runs merged into one report keep their own clocks)."""
    pts = [t for t in turns if t.t_ns is not None]
    if not any(t.v2v_ns is not None for t in pts):
        return None
    runs: dict[str, int] = {}
    run = np.asarray([runs.setdefault(t.run_id, len(runs)) for t in pts], dtype=np.intp)
    t_ns = np.asarray([t.t_ns for t in pts], dtype=np.int64)
    start = np.full(len(runs), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(start, run, t_ns)
    el = (t_ns - start[run]) / 1e9  # seconds from the run's start
    ok = np.asarray([t.v2v_ns is not None for t in pts], dtype=bool)
    y = np.asarray([t.v2v_ns if t.v2v_ns is not None else 0 for t in pts], dtype=np.float64)
    y /= 1e6
    turn = np.asarray([t.turn for t in pts], dtype=np.int64)
    duration = float(el.max())
    # over time: WINDOWS equal windows (one, of no length, when every turn is at 0)
    width = duration / WINDOWS if duration > 0 else 0.0
    if width > 0:
        win = np.minimum((el / width).astype(np.intp), WINDOWS - 1)
        bounds = [(k * width, (k + 1) * width) for k in range(WINDOWS)]
    else:
        win = np.zeros(len(pts), dtype=np.intp)
        bounds = [(0.0, 0.0)]
    over_time = _rows(win, ok, y, bounds, keep_empty=True)
    # by turn index: at most MAX_INDEX_ROWS equal ranges, empty ones left out
    lo, hi = int(turn.min()), int(turn.max())
    step = max(1, math.ceil((hi - lo + 1) / MAX_INDEX_ROWS))
    group = ((turn - lo) // step).astype(np.intp)
    n_groups = int(group.max()) + 1
    tb = [(float(lo + g * step), float(min(hi, lo + g * step + step - 1))) for g in range(n_groups)]
    by_turn = _rows(group, ok, y, tb, keep_empty=False)
    return DriftView(
        turns=int(ok.sum()),
        duration_s=duration,
        by_turn=by_turn,
        over_time=over_time,
        time=_trend("time", el[ok] / 60.0, y[ok]),
        turn=_trend("turn", turn[ok].astype(np.float64), y[ok]),
    )
