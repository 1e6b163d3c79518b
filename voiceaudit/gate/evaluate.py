"""Evaluate a budget against traces: every check with its evidence, pass or fail.

The gate fails closed. Loading refuses to go on without evidence (no traces, only
incomplete traces, no finished turn: :class:`~voiceaudit.errors.NoDataError`), and each
check that cannot be decided fails with the reason: a metric the traces do not have, a
percentile from too few turns ("not enough turns"), a baseline without the metric.

Checks, in this order:

``min_turns``
    the statistics hold at least this many turns.
``failed_turns``
    failed turns (and turns cut short) at most ``max``, and at most ``max_share`` of the
    finished turns.
``failures`` (in file order with the budget limits)
    failed turns of every kind (``failures``) or of one (``failures.reply_cut``) at most
    ``max``: a share of the measured turns (``"1%"``, with its Wilson interval) or a
    number of turns. The counts are the report's failure table (the same turns as
    ``failed_turns``: warm-ups left out, turns cut short counted as ``interrupted``).
budget limits
    ``METRIC.FIGURE <= LIMIT`` on the observed figure; its 95 % interval is shown, and a
    limit inside the interval is pointed out (a re-run may flip the check). The
    turn-taking rates (``cut_in.rate``, ``false_interruption.rate``) are limits too,
    ``RATE <= MAX`` with a Wilson interval; limits and rates come in file order.
Turn-taking metrics come from the report's turn-taking summary
(:attr:`~voiceaudit.analysis.report.Report.turn_taking`, the numbers ``voiceaudit report``
shows): ``barge_in.stop_latency`` is every barge-in's stop latency, ``response_to_interruption``
the voice-to-voice of the turns that talked over a reply, the rates the summary's
``cut_in_rate`` and ``false_interruption_rate``. Traces without turn-taking events (not a
scenario run) fail such checks as ``not in the traces``, like a segment no turn has.
regression
    ``METRIC.FIGURE`` of the current traces against the baseline's: a regression when
    the current figure exceeds the baseline's plus ``max_increase`` *and* a one-sided
    test (see :mod:`voiceaudit.analysis.significance`) says so at ``alpha``, Holm-corrected
    over the regression metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

# the comparison's own notion of "the same target" (a loopback port is not a difference)
from voiceaudit.analysis.compare import target_key
from voiceaudit.analysis.ledger import ALL_SEGMENTS, UNEXPLAINED, MarkTime, segment_bounds
from voiceaudit.analysis.phone import CLEAR_LATENCY, GREETING_LATENCY
from voiceaudit.analysis.report import FAILURE_METRICS, FAILURES, Report, build_report
from voiceaudit.analysis.significance import (
    Figure,
    FloatArray,
    TestResult,
    bootstrap_greater,
    holm_adjusted,
    mann_whitney_greater,
)
from voiceaudit.analysis.stats import (
    MIN_N_MEAN,
    MIN_TAIL,
    as_sorted,
    fisher_exact,
    mean_ci,
    percentile,
    percentile_ci,
    wilson_interval,
)
from voiceaudit.analysis.turntaking import (
    BARGE_IN_STOP,
    CUT_IN_RATE,
    FALSE_INTERRUPTION_RATE,
    RESPONSE_TO_INTERRUPTION,
)
from voiceaudit.errors import NoDataError, VoiceauditError
from voiceaudit.failures import FAILURE_LABELS
from voiceaudit.gate.budget import (
    DRIFT_SLOPE,
    PHONE_METRICS,
    SEGMENT_PREFIX,
    TURN_TAKING_METRICS,
    VOICE_TO_VOICE,
    Budget,
    DriftLimit,
    FailureLimit,
    KneeLimit,
    RateLimit,
    RateRegression,
    Regression,
    RegressionMetric,
)

CheckKind = Literal["turns", "failed_turns", "failures", "budget", "regression", "knee", "drift"]


@dataclass(frozen=True)
class Check:
    """One check: what was compared, the evidence, and the verdict.

    ``detail`` is the one line the summary prints; ``problem`` says why a failed check
    failed: ``over the limit``, ``regression``, ``not enough turns``, ``not in the
    traces``, ``not in the baseline``, ``no successful turns``.

    A rate check (``unit`` ``fraction``) has ``observed``, ``ci95`` and ``limit`` as
    fractions, ``n`` its denominator and ``count`` its numerator.
    """

    kind: CheckKind
    name: str
    metric: str
    passed: bool
    detail: str
    problem: str | None = None
    figure: str | None = None
    unit: str = "ms"
    observed: float | None = None
    ci95: tuple[float, float] | None = None
    limit: float | None = None
    n: int | None = None
    needed: int | None = None
    line: int | None = None
    #: regression only
    baseline: float | None = None
    baseline_ci95: tuple[float, float] | None = None
    baseline_n: int | None = None
    increase: float | None = None
    increase_share: float | None = None
    allowed: float | None = None
    method: str | None = None
    test: str | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    alpha: float | None = None
    significant: bool | None = None
    notes: tuple[str, ...] = ()
    #: rate checks only: the numerator of ``observed`` (``n`` is the denominator), and of
    #: ``baseline`` (``baseline_n``) for a rate regression
    count: int | None = None
    baseline_count: int | None = None

    @property
    def status(self) -> str:
        return "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "metric": self.metric,
            "figure": self.figure,
            "status": self.status,
            "detail": self.detail,
            "problem": self.problem,
            "unit": self.unit,
            "observed": _r(self.observed),
            "ci95": _pair(self.ci95),
            "limit": _r(self.limit),
            "n": self.n,
            "needed": self.needed,
            "line": self.line,
        }
        if self.unit == FRACTION:
            d["observed"] = _r5(self.observed)
            d["limit"] = _r5(self.limit)
            d["ci95"] = None if self.ci95 is None else [_r5(x) for x in self.ci95]
            d["count"] = self.count
        if self.kind == "regression":
            d.update(
                {
                    "baseline": _r(self.baseline),
                    "baseline_ci95": _pair(self.baseline_ci95),
                    "baseline_n": self.baseline_n,
                    "increase": _r(self.increase),
                    "increase_share": None
                    if self.increase_share is None
                    else round(self.increase_share, 5),
                    "allowed": _r(self.allowed),
                    "method": self.method,
                    "test": self.test,
                    "p_value": self.p_value,
                    "p_adjusted": self.p_adjusted,
                    "alpha": self.alpha,
                    "significant": self.significant,
                }
            )
            if self.unit == FRACTION:
                for key in ("baseline", "increase", "allowed"):
                    d[key] = _r5(getattr(self, key))
                d["baseline_ci95"] = (
                    None if self.baseline_ci95 is None else [_r5(x) for x in self.baseline_ci95]
                )
                d["baseline_count"] = self.baseline_count
        d["notes"] = list(self.notes)
        return d


#: ``Check.unit`` of the turn-taking rates
FRACTION = "fraction"


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _r5(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


def _pair(p: tuple[float, float] | None) -> list[float] | None:
    return None if p is None else [round(p[0], 3), round(p[1], 3)]


@dataclass(frozen=True)
class GateResult:
    budget: Budget
    checks: tuple[Check, ...]
    current: Report
    baseline: Report | None = None
    #: key metadata that differs between baseline and current: what → (baseline, current)
    differences: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


# -- loading traces -------------------------------------------------------------------------


def load_traces(
    paths: Sequence[str | Path],
    *,
    role: str = "traces",
    include_warmup: bool = False,
    mark_time: MarkTime = "auto",
) -> Report:
    """Build the report of ``paths`` (merged), refusing to go on without evidence."""
    if not paths:
        raise NoDataError(f"{role}: no traces given")
    try:
        report = build_report(
            list(paths), include_warmup=include_warmup, mark_time=mark_time, label=role
        )
    except VoiceauditError as exc:
        exc.message = f"{role}: {exc.message}"
        exc.args = (exc.message,)
        raise
    usable = [s for s in report.sources if s.complete and s.end_reason == "complete"]
    if not usable:
        how = sorted(
            {
                "no closing record" if not s.complete else f"ended: {s.end_reason}"
                for s in report.sources
            }
        )
        raise NoDataError(
            f"{role}: every trace is incomplete ({'; '.join(how)}): "
            f"{len(report.sources)} trace(s), none of them a finished run",
            hint="the run was cut short (Ctrl-C, a crash, a dead target): record it again",
        )
    return report


# -- metric values --------------------------------------------------------------------------


def _segment(metric: str) -> str | None:
    return metric[len(SEGMENT_PREFIX) :] if metric.startswith(SEGMENT_PREFIX) else None


def metric_values(report: Report, metric: str) -> FloatArray:
    """Sorted ms values of ``voice_to_voice``, ``segment.NAME`` (per turn) or a
    turn-taking metric: ``barge_in.stop_latency`` (per barge-in) and
    ``response_to_interruption`` (per turn that talked over a reply), from the report's
    turn-taking summary (empty for traces without turn-taking events).

    ``segment.unexplained`` is every turn's unexplained time, 0 when it has none: its
    absence is a measurement (every mark was there), not a gap in the data.
    """
    if metric == VOICE_TO_VOICE:
        return as_sorted(report.metric_values[VOICE_TO_VOICE])
    if metric in TURN_TAKING_METRICS:
        tt = report.turn_taking
        return as_sorted([]) if tt is None else tt.latency_metrics().get(metric, as_sorted([]))
    if metric in PHONE_METRICS:
        ph = report.phone
        return as_sorted([]) if ph is None else ph.latency_metrics().get(metric, as_sorted([]))
    seg = _segment(metric)
    assert seg is not None and seg in ALL_SEGMENTS, metric
    if seg == UNEXPLAINED:
        vals = [
            sum(s.ns for s in t.ledger.segments if s.name == UNEXPLAINED) / 1e6
            for t in report.stats_turns
            if t.ledger.voice_to_voice_ns is not None
        ]
        return as_sorted(vals)
    return as_sorted(report.metric_values[seg])


def _marks_of(seg: str) -> str:
    starts, ends = segment_bounds(seg)
    return f"{'/'.join(starts)} and {'/'.join(ends)}"


#: What each turn-taking metric counts (its values, or a rate's denominator).
_COUNTED: dict[str, str] = {
    BARGE_IN_STOP: "barge-ins",
    RESPONSE_TO_INTERRUPTION: "responses to an interruption",
    CUT_IN_RATE: "turns with planned pauses",
    FALSE_INTERRUPTION_RATE: "sounds over the reply",
    GREETING_LATENCY: "sessions that heard a greeting",
    CLEAR_LATENCY: "barge-ins the bot cleared",
}


def _noun(metric: str) -> str:
    if metric in FAILURE_METRICS:
        return "measured turns"
    return _COUNTED.get(metric, "turns")


def _missing_turn_taking(report: Report, metric: str, side: str) -> str:
    """Why a turn-taking metric has no values in ``report`` (over its turn-taking turns:
    failed ones included, as the report's turn-taking figures)."""
    what = _COUNTED[metric]
    tt = report.turn_taking
    if tt is None:
        return (
            f"no {what} in the {side}: they hold no turn-taking events (not a scenario run; "
            "record one with voiceaudit run --scenario FILE, docs/scenarios.md)"
        )
    head = f"no {what} in the {side}"
    of = f"{tt.turns} turn(s) with turn-taking observations"
    if metric == BARGE_IN_STOP:
        return f"{head}: {of}, no reply talked over (a scenario turn's interrupt)"
    if metric == RESPONSE_TO_INTERRUPTION:
        following = sum(
            1
            for t in report.turn_taking_turns
            if t.turn_taking is not None and t.turn_taking.interrupts_turn is not None
        )
        if following:
            return f"{head}: {following} turn(s) talked over a reply, none with a voice-to-voice"
        return f"{head}: {of}, none talked over a reply (a scenario turn's interrupt)"
    if metric == CUT_IN_RATE:
        return f"{head}: {of}, none with a pause (a scenario turn's pause)"
    if tt.sounds:
        return (
            f"{head} that the traces say stopped it or not: {len(tt.sounds)} sound(s), "
            "the target's protocol did not say whether the reply was cut"
        )
    return f"{head}: {of}, no sound over a reply (a scenario turn's sound)"


def _missing(report: Report, metric: str, side: str) -> tuple[str, str]:
    """(problem, detail) for a metric with no values."""
    if metric in FAILURE_METRICS:
        return "not enough turns", (
            f"no measured turns in the {side} (every finished turn is a warm-up)"
        )
    if not report.stats_turns:
        failed = report.counts["failed"]
        return "no successful turns", (
            f"no successful turns in the {side} to measure it ({failed} failed)"
        )
    if metric in PHONE_METRICS:
        problem = "not in the traces" if side == "traces" else "not in the baseline"
        if metric == GREETING_LATENCY:
            return problem, (
                f"no greeting heard in the {side}: no session waited for the target to "
                "speak first, or none heard a greeting (greeting.audible)"
            )
        return problem, (
            f"no barge-in in the {side} that the bot cleared through a phone carrier "
            "(carrier.clear between the caller's onset and the last sample heard)"
        )
    if metric in _COUNTED:
        problem = "not in the traces" if side == "traces" else "not in the baseline"
        return problem, _missing_turn_taking(report, metric, side)
    seg = _segment(metric)
    if seg is None:
        return f"not in the {side}", f"the {side} have no {metric} values"
    problem = "not in the traces" if side == "traces" else "not in the baseline"
    return problem, (
        f"not measured: no turn in the {side} has a {seg} segment "
        f"(it needs the marks {_marks_of(seg)})"
    )


def required_turns(figure: Figure, min_turns: int | None) -> int:
    """Turns a figure needs before the gate judges it.

    By default the report's reliability rule: a percentile needs at least
    ``MIN_TAIL`` (5) turns beyond it (p50 10, p90 50, p95 100, p99 500), a mean, min or
    max needs ``MIN_N_MEAN`` (5). ``min_turns`` replaces that with the number given,
    but never below one turn beyond the percentile (p95 20, p99 100): below that the
    "percentile" is the slowest turn.
    """
    if figure.q is None:
        return min_turns if min_turns is not None else MIN_N_MEAN
    tail = min(figure.q, 100.0 - figure.q)
    if min_turns is not None:
        return max(min_turns, math.ceil(round(100.0 / tail, 6)))
    return math.ceil(round(MIN_TAIL * 100.0 / tail, 6))


def _figure(values: FloatArray, figure: Figure) -> tuple[float, tuple[float, float] | None]:
    """(value, 95 % interval) of a figure of sorted values."""
    if figure.q is not None:
        return percentile(values, figure.q), percentile_ci(values, figure.q)
    if figure.name == "mean":
        return float(np.mean(values)), mean_ci(values)
    if figure.name == "max":
        return float(values[-1]), None
    return float(values[0]), None


def _ms(x: float) -> str:
    if x == 0:
        return "0 ms"
    if abs(x) >= 100:
        return f"{x:.0f} ms"
    if abs(x) >= 10:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" (95% CI {_ms(ci[0])[:-3]} to {_ms(ci[1])})"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _too_few(
    n: int,
    needed: int,
    figure: Figure | str,
    min_turns: int | None,
    side: str = "",
    noun: str = "turns",
) -> str:
    how = f"min_turns = {min_turns}" if min_turns is not None else "set min_turns to accept fewer"
    where = f" in the {side}" if side else ""
    return f"not enough {noun}{where}: {n}, {figure} needs at least {needed} ({how})"


# -- checks ---------------------------------------------------------------------------------


def evaluate(budget: Budget, current: Report, baseline: Report | None = None) -> GateResult:
    """Every check of ``budget`` on ``current`` (and ``baseline`` for the regressions)."""
    checks: list[Check] = []
    warnings: list[str] = list(current.warnings)
    stats_n = len(current.stats_turns)
    if budget.min_turns is not None:
        ok = stats_n >= budget.min_turns
        checks.append(
            Check(
                kind="turns",
                name=f"min_turns >= {budget.min_turns}",
                metric="min_turns",
                passed=ok,
                detail=f"{stats_n} turns in the statistics"
                + ("" if ok else f", fewer than {budget.min_turns}"),
                problem=None if ok else "not enough turns",
                unit="turns",
                observed=float(stats_n),
                limit=float(budget.min_turns),
                n=stats_n,
                line=budget.min_turns_line,
            )
        )
    if budget.failed_turns is not None:
        checks.append(_failed_turns_check(budget, current))
    if budget.knee is not None:
        checks.append(_knee_check(budget.knee, current))
    if budget.drift is not None:
        checks.append(_drift_check(budget.drift, current))
    limits: list[tuple[int | None, Check]] = []
    for limit in budget.limits:
        min_turns = limit.min_turns if limit.min_turns is not None else budget.min_turns
        limits.append(
            (
                limit.line,
                _limit_check(
                    current,
                    limit.metric,
                    limit.figure,
                    limit.limit_ms,
                    min_turns,
                    limit.line,
                    name=f"{limit.name} <= {limit.limit_ms:g} ms",
                ),
            )
        )
    for rate in budget.rates:
        min_turns = rate.min_turns if rate.min_turns is not None else budget.min_turns
        limits.append((rate.line, _rate_check(current, rate, min_turns)))
    for fl in budget.failures:
        min_turns = fl.min_turns if fl.min_turns is not None else budget.min_turns
        limits.append((fl.line, _failure_check(current, fl, min_turns)))
    # file order (stable: a table's figures share its line)
    limits.sort(key=lambda lc: math.inf if lc[0] is None else lc[0])
    checks.extend(c for _, c in limits)
    differences: dict[str, tuple[Any, Any]] = {}
    if budget.regression is not None:
        if baseline is None:
            raise NoDataError("the budget has a regression table but no baseline traces were given")
        checks.extend(_regression_checks(budget.regression, budget.min_turns, current, baseline))
        differences = metadata_differences(baseline, current)
        warnings.extend(f"baseline: {w}" for w in baseline.warnings)
        if differences:
            warnings.append(
                "baseline and current traces differ in "
                + ", ".join(differences)
                + ": the comparison may not be like for like"
            )
    incomplete = [
        s.path for s in current.sources if not (s.complete and s.end_reason == "complete")
    ]
    if incomplete:
        warnings.append(
            f"{len(incomplete)} of {len(current.sources)} traces are incomplete (cut short): "
            + ", ".join(incomplete)
        )
    own = _within_differences(current)
    if own:
        warnings.append("the traces checked differ among themselves in " + ", ".join(own))
    return GateResult(
        budget=budget,
        checks=tuple(checks),
        current=current,
        baseline=baseline,
        differences=differences,
        warnings=tuple(dict.fromkeys(warnings)),
    )


def _knee_check(limit: KneeLimit, report: Report) -> Check:
    """The knee is at ``limit.min_sessions`` or above; with no knee, the traces must have
    measured that many sessions (fail closed: no evidence is no pass)."""
    from voiceaudit.analysis.concurrency import concurrency_view

    view = concurrency_view(
        ((t.concurrency, t.voice_to_voice_ns) for t in report.stats_turns), margin=limit.margin
    )
    want = limit.min_sessions
    name = f"knee >= {want} sessions (p95 {limit.margin})"
    common: dict[str, Any] = {
        "kind": "knee",
        "name": name,
        "metric": "knee",
        "unit": "sessions",
        "limit": float(want),
        "line": limit.line,
    }
    if view is None:
        levels = {t.concurrency for t in report.stats_turns if t.concurrency is not None}
        return Check(
            passed=False,
            detail=f"{len(levels)} concurrency level(s) in the traces: no knee can be told "
            "(record a ramp: voiceaudit run --ramp)",
            problem="not in the traces",
            **common,
        )
    n = sum(lv.turns for lv in view.levels)
    if view.knee is not None:
        ok = view.knee >= want
        return Check(
            passed=ok,
            detail=view.describe_knee() + ("" if ok else f", below {want}"),
            problem=None if ok else "over the limit",
            observed=float(view.knee),
            n=n,
            **common,
        )
    ok = view.highest >= want
    return Check(
        passed=ok,
        detail=view.describe_knee()
        + ("" if ok else f"; the traces reach {view.highest} sessions, not {want}"),
        problem=None if ok else "not enough turns",
        observed=None,
        n=n,
        **common,
    )


def _drift_check(limit: DriftLimit, report: Report) -> Check:
    """Voice-to-voice grows by at most ``limit.max_ms_per_min`` ms per minute: fails when
    the Theil-Sen slope against time is significantly above it (its whole 95 % interval),
    and with too few turns or no time span (fail closed: no evidence is no pass)."""
    from voiceaudit.analysis.drift import MIN_TURNS

    want = limit.max_ms_per_min
    common: dict[str, Any] = {
        "kind": "drift",
        "name": f"{DRIFT_SLOPE} <= {want:g} ms/min",
        "metric": DRIFT_SLOPE,
        "unit": "ms/min",
        "limit": want,
        "line": limit.line,
    }
    view = report.drift
    n = len(report.stats_turns)
    if view is None:
        return Check(
            passed=False,
            detail=f"{n} turns in the statistics: a trend needs at least {MIN_TURNS}",
            problem="not enough turns",
            n=n,
            needed=MIN_TURNS,
            **common,
        )
    tr = view.time
    if tr is None:
        return Check(
            passed=False,
            detail="no trend can be told: the turns' times or voice-to-voice do not vary",
            problem="not in the traces",
            n=n,
            **common,
        )
    ok = not tr.low > want
    return Check(
        passed=ok,
        detail=tr.describe() + ("" if ok else f": significantly above {want:g} ms/min"),
        problem=None if ok else "over the limit",
        observed=tr.slope,
        ci95=(tr.low, tr.high),
        n=tr.n,
        **common,
    )


def _failed_turns_check(budget: Budget, report: Report) -> Check:
    ft = budget.failed_turns
    assert ft is not None
    inc = report.options.include_warmup
    finished = [t for t in report.turns if inc or not t.warmup]
    failed = sum(1 for t in finished if not t.ok)
    unfinished = len(report.unfinished)
    bad = failed + unfinished
    total = len(finished) + unfinished
    share = bad / total if total else 1.0
    parts = []
    ok = True
    if ft.max_count is not None:
        parts.append(f"max {ft.max_count}")
        ok = ok and bad <= ft.max_count
    if ft.max_share is not None:
        parts.append(f"max {ft.max_share * 100:g}%")
        ok = ok and share <= ft.max_share
    what = f"{failed} failed" + (f" and {unfinished} cut short" if unfinished else "")
    detail = f"{what} of {total} turns ({share * 100:.1f}%)"
    reasons = sorted({t.reason or "failed" for t in finished if not t.ok})
    if reasons and not ok:
        shown = "; ".join(reasons[:3]) + ("; …" if len(reasons) > 3 else "")
        detail += f": {shown}"
    return Check(
        kind="failed_turns",
        name=f"failed_turns ({', '.join(parts)})",
        metric="failed_turns",
        passed=ok,
        detail=detail,
        problem=None if ok else "over the limit",
        unit="turns",
        observed=float(bad),
        limit=None if ft.max_count is None else float(ft.max_count),
        n=total,
        line=ft.line,
    )


def _limit_check(
    report: Report,
    metric: str,
    figure: Figure,
    limit: float,
    min_turns: int | None,
    line: int | None,
    *,
    name: str,
) -> Check:
    values = metric_values(report, metric)
    n = len(values)
    needed = required_turns(figure, min_turns)
    base = Check(
        kind="budget",
        name=name,
        metric=metric,
        figure=figure.name,
        passed=False,
        detail="",
        limit=limit,
        n=n,
        needed=needed,
        line=line,
    )
    if n == 0:
        problem, detail = _missing(report, metric, "traces")
        return replace(base, detail=detail, problem=problem)
    value, ci = _figure(values, figure)
    over = value > limit
    shown = f"{_ms(value)}{_ci(ci)}, n={n}"
    if figure.name == "max" and over:
        # the slowest turn is over the limit whatever more turns would show
        return replace(
            base,
            observed=value,
            detail=f"{shown}: {_ms(value - limit)} over the limit",
            problem="over the limit",
        )
    if n < needed:
        return replace(
            base,
            observed=value,
            ci95=ci,
            detail=f"{_too_few(n, needed, figure, min_turns, noun=_noun(metric))}; "
            f"observed {shown}",
            problem="not enough turns",
        )
    notes: tuple[str, ...] = ()
    if ci is not None and ci[0] <= limit <= ci[1]:
        notes = ("the limit is inside the 95% interval: a re-run may flip this check",)
    if over:
        return replace(
            base,
            observed=value,
            ci95=ci,
            detail=f"{shown}: {_ms(value - limit)} over the limit",
            problem="over the limit",
            notes=notes,
        )
    return replace(
        base,
        passed=True,
        observed=value,
        ci95=ci,
        detail=f"{shown}: {_ms(limit - value)} under the limit",
        notes=notes,
    )


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%" if x * 100 >= 0.1 or x == 0 else f"{x * 100:.2g}%"


def _rate_check(report: Report, limit: RateLimit, min_turns: int | None) -> Check:
    """``RATE <= MAX`` on the report's turn-taking summary: ``cut_in.rate`` (turns cut
    into / turns with planned pauses) or ``false_interruption.rate`` (sounds that stopped
    the reply / sounds over the reply that the trace says stopped it or not)."""
    needed = min_turns if min_turns is not None else MIN_N_MEAN
    base = Check(
        kind="budget",
        name=limit.name,
        metric=limit.metric,
        passed=False,
        detail="",
        unit=FRACTION,
        limit=limit.max_rate,
        needed=needed,
        line=limit.line,
    )
    tt = report.turn_taking
    notes: list[str] = []
    what = ""
    if tt is None or not report.stats_turns:
        count, n, rate = 0, 0, None
    elif limit.metric == CUT_IN_RATE:
        count, n, rate = tt.turns_cut_in, tt.cut_in_turns, tt.cut_in_rate
        what = "turns with planned pauses cut into"
        if tt.before_any_pause:
            notes.append(
                f"{tt.before_any_pause} cut-in(s) before any planned pause: their turns "
                "count as turns with a pause"
            )
    else:
        assert limit.metric == FALSE_INTERRUPTION_RATE, limit.metric
        count, n, rate = tt.false_interruptions, tt.sounds_known, tt.false_interruption_rate
        what = "sounds over the reply stopped it"
        unknown = len(tt.sounds) - tt.sounds_known
        if unknown:
            notes.append(
                f"{unknown} of {len(tt.sounds)} sound(s) left out: the target's protocol "
                "did not say whether the reply was cut"
            )
    base = replace(base, n=n, count=count, notes=tuple(notes))
    if rate is None or n == 0:
        problem, detail = _missing(report, limit.metric, "traces")
        return replace(base, detail=detail, problem=problem)
    ci = wilson_interval(count, n)
    shown = f"{_pct(rate)} (95% CI {_pct(ci[0])[:-1]} to {_pct(ci[1])}), {count} of {n} {what}"
    base = replace(base, observed=rate, ci95=ci)
    over = rate > limit.max_rate
    if over and limit.max_rate == 0:
        # no number of further turns brings a rate above zero back to zero
        return replace(base, detail=f"{shown}: over the limit of 0%", problem="over the limit")
    if n < needed:
        return replace(
            base,
            detail=f"{_too_few(n, needed, 'a rate', min_turns, noun=_noun(limit.metric))}; "
            f"observed {shown}",
            problem="not enough turns",
        )
    if ci[0] <= limit.max_rate <= ci[1]:
        notes.append("the limit is inside the 95% interval: a re-run may flip this check")
    verdict = "over" if over else "at" if rate == limit.max_rate else "under"
    return replace(
        base,
        passed=not over,
        detail=f"{shown}: {verdict} the limit of {_pct(limit.max_rate)}",
        problem="over the limit" if over else None,
        notes=tuple(notes),
    )


def _failure_check(report: Report, limit: FailureLimit, min_turns: int | None) -> Check:
    """Failed turns (all kinds, or one) against a share of the measured turns or a count,
    from the report's failure table. A count over its limit, or a share over a limit of
    0%, fails however few turns there are (more turns cannot undo a failure); otherwise
    fewer measured turns than needed (``min_turns``, default 5) is not enough evidence."""
    ft = report.failures
    needed = min_turns if min_turns is not None else MIN_N_MEAN
    n = ft.of
    if limit.metric == FAILURES:
        count = ft.failed
        kinds = "; ".join(f"{r.label} {r.turns}" for r in ft.rows if r.turns)
        what = f"{count} of {n} measured turns failed" + (f" ({kinds})" if kinds else "")
    else:
        kind = limit.metric.split(".", 1)[1]
        row = next(r for r in ft.rows if r.kind == kind)
        count = row.turns
        what = f"{count} of {n} measured turns failed with {FAILURE_LABELS[kind]}"
        if count and row.example:
            what += f" (first: {row.example})"
    share = limit.max_share
    base = Check(
        kind="failures",
        name=limit.name,
        metric=limit.metric,
        passed=False,
        detail="",
        unit=FRACTION if share is not None else "turns",
        limit=share if share is not None else float(limit.max_count or 0),
        n=n,
        needed=needed,
        line=limit.line,
        count=count,
    )
    if n == 0:
        return replace(
            base,
            detail="no measured turns in the traces (every finished turn is a warm-up)",
            problem="not enough turns",
        )
    if share is None:
        assert limit.max_count is not None
        base = replace(base, observed=float(count))
        over = count > limit.max_count
        if over:
            return replace(
                base,
                detail=f"{what}: over the limit of {limit.max_count}",
                problem="over the limit",
            )
        if n < needed:
            return replace(
                base,
                detail=_too_few(n, needed, "a failure limit", min_turns, noun="measured turns")
                + f"; observed {what}",
                problem="not enough turns",
            )
        return replace(base, passed=True, detail=f"{what}: within the limit of {limit.max_count}")
    rate = count / n
    ci = wilson_interval(count, n)
    shown = f"{what}: {_pct(rate)} (95% CI {_pct(ci[0])[:-1]} to {_pct(ci[1])})"
    base = replace(base, observed=rate, ci95=ci)
    over = rate > share
    if over and share == 0:
        return replace(base, detail=f"{shown}: over the limit of 0%", problem="over the limit")
    if n < needed:
        return replace(
            base,
            detail=_too_few(n, needed, "a failure share", min_turns, noun="measured turns") + f"; "
            f"observed {shown}",
            problem="not enough turns",
        )
    notes: tuple[str, ...] = ()
    if ci[0] <= share <= ci[1]:
        notes = ("the limit is inside the 95% interval: a re-run may flip this check",)
    verdict = "over" if over else "at" if rate == share else "under"
    return replace(
        base,
        passed=not over,
        detail=f"{shown}: {verdict} the limit of {_pct(share)}",
        problem="over the limit" if over else None,
        notes=notes,
    )


def mw_smallest_p(n_a: int, n_b: int) -> float:
    """The smallest one-sided p-value a Mann-Whitney test of these sizes can give."""
    return 1.0 / math.comb(n_a + n_b, n_a)


def _method(reg: Regression, figure: Figure) -> str:
    if reg.test != "auto":
        return reg.test
    return "mann-whitney" if figure.name in ("mean", "p50") else "bootstrap"


def _regression_checks(
    reg: Regression, min_turns: int | None, current: Report, baseline: Report
) -> list[Check]:
    pending: list[tuple[Check, TestResult | None]] = []
    for rm in reg.metrics:
        pending.append(_regression_one(reg, rm, min_turns, current, baseline)[1:])
    for rr in reg.rates:
        pending.append(_rate_regression_one(reg, rr, min_turns, current, baseline))
    tested = [i for i, (_, t) in enumerate(pending) if t is not None]
    adjusted = holm_adjusted([pending[i][1].p_value for i in tested])  # type: ignore[union-attr]
    adj = dict(zip(tested, adjusted, strict=True))
    out: list[Check] = []
    m = len(tested)
    for i, (check, test) in enumerate(pending):
        if test is None:
            out.append(check)
            continue
        p_adj = adj[i]
        significant = p_adj < reg.alpha
        exceeded = (
            check.observed is not None
            and check.allowed is not None
            and (check.observed > check.allowed)
        )
        regressed = exceeded and significant
        holm = f" (Holm-adjusted over {m})" if m > 1 else ""
        sig = (
            f"p = {_p(p_adj)}{holm} < {reg.alpha:g}: significant"
            if significant
            else f"p = {_p(p_adj)}{holm} ≥ {reg.alpha:g}: not significant"
        )
        assert check.observed is not None and check.baseline is not None
        assert check.increase is not None
        verdict = (
            "regression"
            if regressed
            else "within the allowance"
            if not exceeded
            else "over the allowance but not significant"
        )
        if check.unit == FRACTION:
            detail = (
                f"{_pct(check.observed)} ({check.count} of {check.n}) vs baseline "
                f"{_pct(check.baseline)} ({check.baseline_count} of {check.baseline_n}): "
                f"{_pp(check.increase)}, allowed {_pp(reg.max_rate_increase)}; "
                f"{test.description}: {sig}; {verdict}"
            )
        else:
            rel = "" if check.increase_share is None else f" ({check.increase_share * 100:+.1f}%)"
            detail = (
                f"{_ms(check.observed)} vs baseline {_ms(check.baseline)}: "
                f"{'+' if check.increase >= 0 else '-'}{_ms(abs(check.increase))}{rel}, "
                f"allowed {reg.max_increase}; {test.description}: {sig}; {verdict}"
            )
        out.append(
            replace(
                check,
                passed=not regressed,
                detail=detail,
                problem="regression" if regressed else None,
                p_value=test.p_value,
                p_adjusted=p_adj,
                significant=significant,
            )
        )
    return out


def _regression_one(
    reg: Regression, rm: RegressionMetric, min_turns: int | None, current: Report, baseline: Report
) -> tuple[RegressionMetric, Check, TestResult | None]:
    method = _method(reg, rm.figure)
    base = Check(
        kind="regression",
        name=f"regression {rm.name} (allowed {reg.max_increase})",
        metric=rm.metric,
        figure=rm.figure.name,
        passed=False,
        detail="",
        line=rm.line,
        method=method,
        alpha=reg.alpha,
    )
    a = metric_values(baseline, rm.metric)
    b = metric_values(current, rm.metric)
    base = replace(base, n=len(b), baseline_n=len(a))
    if len(b) == 0:
        problem, detail = _missing(current, rm.metric, "traces")
        return rm, replace(base, detail=detail, problem=problem), None
    if len(a) == 0:
        problem, detail = _missing(baseline, rm.metric, "baseline")
        return rm, replace(base, detail=detail, problem="not in the baseline"), None
    needed = required_turns(rm.figure, min_turns)
    va, ca = _figure(a, rm.figure)
    vb, cb = _figure(b, rm.figure)
    allowed = reg.max_increase.allowed(va)
    base = replace(
        base,
        needed=needed,
        observed=vb,
        ci95=cb,
        baseline=va,
        baseline_ci95=ca,
        increase=vb - va,
        increase_share=None if va == 0 else (vb - va) / va,
        allowed=allowed,
        limit=allowed,
    )
    short = [
        _too_few(n, needed, rm.figure, min_turns, side, _noun(rm.metric))
        for n, side in ((len(b), "traces"), (len(a), "baseline"))
        if n < needed
    ]
    if short:
        return rm, replace(base, detail="; ".join(short), problem="not enough turns"), None
    family = len(reg.metrics) + len(reg.rates)
    if method == "mann-whitney" and mw_smallest_p(len(a), len(b)) * family >= reg.alpha:
        # the test could never say "regression": passing would be passing without evidence
        holm = f" (Holm over {family})" if family > 1 else ""
        return (
            rm,
            replace(
                base,
                detail=f"not enough turns to detect a regression: with {len(b)} and {len(a)} "
                f"turns the Mann-Whitney test cannot reach p < {reg.alpha:g}{holm} "
                f"(its smallest p-value is {_p(mw_smallest_p(len(a), len(b)))})",
                problem="not enough turns",
            ),
            None,
        )
    if method == "mann-whitney":
        test = mann_whitney_greater(a, b, reg.max_increase)
    else:
        test = bootstrap_greater(a, b, rm.figure, reg.max_increase)
    return rm, replace(base, test=test.description), test


def _pp(x: float) -> str:
    """A difference of two rates in percentage points: ``+7.5 pp``."""
    return f"{'+' if x >= 0 else '-'}{abs(x) * 100:.1f} pp"


def _rate_regression_one(
    reg: Regression, rr: RateRegression, min_turns: int | None, current: Report, baseline: Report
) -> tuple[Check, TestResult | None]:
    """A turn-taking rate against the baseline's: a regression when it is higher by more
    than ``max_rate_increase`` and significantly higher (one-sided Fisher's exact test,
    Holm with the other regression metrics)."""
    base = Check(
        kind="regression",
        name=f"regression {rr.name} (allowed {_pp(reg.max_rate_increase)})",
        metric=rr.metric,
        passed=False,
        detail="",
        unit=FRACTION,
        line=rr.line,
        method="fisher-exact",
        alpha=reg.alpha,
    )
    cur, bas = _rate_counts(current, rr.metric), _rate_counts(baseline, rr.metric)
    if cur is None:
        problem, detail = _missing(current, rr.metric, "traces")
        return replace(base, detail=detail, problem=problem), None
    if bas is None:
        _, detail = _missing(baseline, rr.metric, "baseline")
        return replace(base, detail=detail, problem="not in the baseline"), None
    (cb, nb), (ca, na) = cur, bas
    needed = min_turns if min_turns is not None else MIN_N_MEAN
    allowed = ca / na + reg.max_rate_increase
    base = replace(
        base,
        n=nb,
        count=cb,
        observed=cb / nb,
        ci95=wilson_interval(cb, nb),
        baseline_n=na,
        baseline_count=ca,
        baseline=ca / na,
        baseline_ci95=wilson_interval(ca, na),
        increase=cb / nb - ca / na,
        allowed=allowed,
        limit=allowed,
        needed=needed,
    )
    noun = _noun(rr.metric)
    short = [
        f"{n} {noun} in the {side}, fewer than {needed}"
        for n, side in ((nb, "traces"), (na, "baseline"))
        if n < needed
    ]
    if short:
        return replace(base, detail="; ".join(short), problem="not enough turns"), None
    family = len(reg.metrics) + len(reg.rates)
    smallest = mw_smallest_p(na, nb)  # all of one side's turns counted, none of the other's
    if smallest * family >= reg.alpha:
        holm = f" (Holm over {family})" if family > 1 else ""
        return (
            replace(
                base,
                detail=f"not enough {noun} to detect a regression: with {nb} and {na} "
                f"Fisher's exact test cannot reach p < {reg.alpha:g}{holm} "
                f"(its smallest p-value is {_p(smallest)})",
                problem="not enough turns",
            ),
            None,
        )
    p = fisher_exact(ca, na, cb, nb, b_greater=True)
    test = TestResult(
        "fisher-exact", p, "Fisher's exact test, one-sided (higher than the baseline)"
    )
    return replace(base, test=test.description), test


def _rate_counts(report: Report, metric: str) -> tuple[int, int] | None:
    if metric in FAILURE_METRICS:
        # failed turns count whether or not any turn succeeded
        return report.failures.rate_counts().get(metric)
    tt = report.turn_taking
    if tt is None or not report.stats_turns:
        return None
    return tt.rate_counts().get(metric)


# -- metadata -------------------------------------------------------------------------------


def _side(report: Report, what: str) -> Any:
    if what == "audio":
        return sorted({t.audio for t in report.stats_turns if t.audio is not None})
    if what == "audio_format":
        return sorted({f.describe() for f in report.audio_formats})
    vals: set[str] = set()
    for s in report.sources:
        if what == "target":
            v: Any = target_key(s.target)
        elif what == "protocol":
            v = s.target.get("protocol")
        elif what == "host":
            v = s.host.get("hostname")
        else:  # config.KEY
            v = s.config.get(what.split(".", 1)[1])
        vals.add(json.dumps(v, sort_keys=True))
    return json.loads(next(iter(vals))) if len(vals) == 1 else "(several)"


#: Run configuration keys that say how much was recorded, not how: never flagged.
_RUN_SIZE = frozenset({"audio", "turns", "repeat", "warmup"})


def metadata_differences(baseline: Report, current: Report) -> dict[str, tuple[Any, Any]]:
    """Key metadata that differs: protocol, target, host, audio set, run configuration."""
    out: dict[str, tuple[Any, Any]] = {}
    keys = ["protocol", "target", "host", "audio", "audio_format"]
    cfg: set[str] = set()
    for r in (baseline, current):
        for s in r.sources:
            cfg.update(k for k in s.config if k not in _RUN_SIZE)
    keys.extend(f"config.{k}" for k in sorted(cfg))
    for what in keys:
        va, vb = _side(baseline, what), _side(current, what)
        if va != vb:
            if what == "target" and "protocol" in out:
                continue  # the protocol says it
            out[what] = (va, vb)
    return out


def _within_differences(report: Report) -> list[str]:
    if len(report.sources) < 2:
        return []
    out = []
    for what in ("protocol", "target", "host"):
        if _side(report, what) == "(several)":
            out.append(what)
    return out
