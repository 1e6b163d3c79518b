"""Side-by-side comparison of two reports (two pipelines or two configurations).

For voice-to-voice, every segment either side has and the turn-taking latencies
(``barge_in.stop_latency``, ``response_to_interruption``) when either side has them, the
difference B - A of the mean and of the median, and whether the two samples differ
significantly: Mann-Whitney U (two-sided). For the turn-taking rates (``cut_in.rate``,
``false_interruption.rate``) when either side has them: each side's count, rate and
Wilson 95 % interval, the difference B - A, and Fisher's exact test (two-sided). The
failed turns the same way, as a share of each side's measured turns: overall
(``failures``) and per failure kind (``failures.KIND``), when either side has a failed
turn (a kind: when either side has one of it). One Holm correction covers every test of
the comparison, at ``alpha``; the p-values shown are the
Holm-adjusted ones, so each is compared with ``alpha`` as its verdict is. A difference
that is not significant is shown as such, never as a win.
Metadata that differs between the two (target, configuration, host, audio set) is
listed, so a comparison that is not like for like says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from voiceaudit import __version__
from voiceaudit.analysis.ledger import ALL_SEGMENTS
from voiceaudit.analysis.phone import CLEAR_LATENCY, GREETING_LATENCY
from voiceaudit.analysis.report import FAILURE_METRICS, FAILURES, VOICE_TO_VOICE, Report
from voiceaudit.analysis.significance import holm_adjusted
from voiceaudit.analysis.stats import (
    Difference,
    FloatArray,
    Summary,
    as_sorted,
    fisher_exact,
    mann_whitney,
    summarize,
    wilson_interval,
)
from voiceaudit.analysis.turntaking import (
    BARGE_IN_STOP,
    CUT_IN_RATE,
    FALSE_INTERRUPTION_RATE,
    RESPONSE_TO_INTERRUPTION,
)

COMPARISON_SCHEMA = "voiceaudit.comparison/1"


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    a: Summary | None
    b: Summary | None
    test: Difference | None
    significant: bool
    #: the Holm-adjusted p-value (over every test of the comparison)
    p_adjusted: float | None = None

    @property
    def diff_mean_ms(self) -> float | None:
        return None if self.a is None or self.b is None else self.b.mean - self.a.mean

    @property
    def diff_p50_ms(self) -> float | None:
        return None if self.a is None or self.b is None else self.b.p50 - self.a.p50

    @property
    def verdict(self) -> str:
        """``faster``/``slower`` (B against A), ``no significant difference``, or why not."""
        if self.a is None or self.b is None:
            return "only in A" if self.b is None else "only in B"
        if self.test is None:
            return "not tested"
        if not self.significant:
            return "no significant difference"
        d = self.diff_p50_ms
        if d is None or d == 0:
            d = self.diff_mean_ms or 0.0
        return "B slower" if d > 0 else "B faster"

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {
            "metric": self.metric,
            "a": None if self.a is None else self.a.to_dict(),
            "b": None if self.b is None else self.b.to_dict(),
            "diff_mean_ms": r(self.diff_mean_ms),
            "diff_p50_ms": r(self.diff_p50_ms),
            "mann_whitney": None
            if self.test is None
            else {
                "u": self.test.u,
                "p_value": self.test.p_value,
                "prob_a_greater": round(self.test.prob_a_greater, 4),
                "p_adjusted": self.p_adjusted,
            },
            "significant": self.significant,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class RateComparison:
    """A turn-taking rate on both sides: ``(count, of)`` (``None``: the side has no
    denominator, e.g. no scripted pause), Fisher's exact test when both have one."""

    metric: str
    a: tuple[int, int] | None
    b: tuple[int, int] | None
    #: two-sided Fisher's exact p-value, and Holm-adjusted over the comparison's tests
    p_value: float | None
    p_adjusted: float | None
    significant: bool

    @staticmethod
    def _rate(side: tuple[int, int] | None) -> float | None:
        return None if side is None else side[0] / side[1]

    @property
    def rate_a(self) -> float | None:
        return self._rate(self.a)

    @property
    def rate_b(self) -> float | None:
        return self._rate(self.b)

    @property
    def diff(self) -> float | None:
        """B - A, as a fraction (0.1 is 10 percentage points)."""
        ra, rb = self.rate_a, self.rate_b
        return None if ra is None or rb is None else rb - ra

    @property
    def verdict(self) -> str:
        """``B higher``/``B lower`` (both rates count what goes wrong), ``no significant
        difference``, or why not."""
        if self.a is None or self.b is None:
            return "only in A" if self.b is None else "only in B"
        if not self.significant:
            return "no significant difference"
        return "B higher" if (self.diff or 0.0) > 0 else "B lower"

    def to_dict(self) -> dict[str, Any]:
        def side(v: tuple[int, int] | None) -> dict[str, Any] | None:
            if v is None:
                return None
            lo, hi = wilson_interval(*v)
            return {
                "count": v[0],
                "of": v[1],
                "rate": round(v[0] / v[1], 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }

        return {
            "metric": self.metric,
            "a": side(self.a),
            "b": side(self.b),
            "diff": None if self.diff is None else round(self.diff, 4),
            "fisher_exact": None
            if self.p_value is None
            else {"p_value": self.p_value, "p_adjusted": self.p_adjusted},
            "significant": self.significant,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class FindingComparison:
    kind: str
    a_turns: int
    a_per_turn_ms: float
    b_turns: int
    b_per_turn_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": {"turns": self.a_turns, "per_turn_ms": round(self.a_per_turn_ms, 3)},
            "b": {"turns": self.b_turns, "per_turn_ms": round(self.b_per_turn_ms, 3)},
            "diff_per_turn_ms": round(self.b_per_turn_ms - self.a_per_turn_ms, 3),
        }


@dataclass(frozen=True)
class Comparison:
    a: Report
    b: Report
    alpha: float
    metrics: tuple[MetricComparison, ...]
    rates: tuple[RateComparison, ...]
    findings: tuple[FindingComparison, ...]
    #: metadata that differs: what → (A's value, B's value)
    differences: dict[str, tuple[Any, Any]]
    warnings: tuple[str, ...]
    #: failed turns overall and per kind, as rates of the measured turns (empty when
    #: neither side has a failed turn)
    failures: tuple[RateComparison, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARISON_SCHEMA,
            "voiceaudit_version": __version__,
            "alpha": self.alpha,
            "a": {"label": self.a.label, **self.a.to_dict(turns=False)},
            "b": {"label": self.b.label, **self.b.to_dict(turns=False)},
            "metrics": [m.to_dict() for m in self.metrics],
            "rates": [r.to_dict() for r in self.rates],
            "failures": [r.to_dict() for r in self.failures],
            "findings": [f.to_dict() for f in self.findings],
            "differences": {k: {"a": a, "b": b} for k, (a, b) in self.differences.items()},
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"


def _one(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def target_key(target: dict[str, Any]) -> dict[str, Any]:
    """A target without what changes from run to run on its own (a loopback port)."""
    out = dict(target)
    url = out.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port is not None:
            out["url"] = urlunsplit(parts._replace(netloc=parts.hostname))
    return out


def _metadata(a: Report, b: Report) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}

    def side(r: Report, get: Any) -> Any:
        vals = {json.dumps(get(s), sort_keys=True) for s in r.sources}
        one = _one(vals)
        return json.loads(one) if one is not None else "(several)"

    for what, get in (
        ("target", lambda s: target_key(s.target)),
        ("host", lambda s: s.host.get("hostname")),
    ):
        va, vb = side(a, get), side(b, get)
        if va != vb:
            out[what] = (va, vb)
    ca = side(a, lambda s: s.config)
    cb = side(b, lambda s: s.config)
    if isinstance(ca, dict) and isinstance(cb, dict):
        for k in sorted(set(ca) | set(cb)):
            if ca.get(k) != cb.get(k):
                out[f"config.{k}"] = (ca.get(k), cb.get(k))
    # results of different paths (phone, WebRTC, WebSocket) are reported apart
    pa, pb = sorted(set(a.paths.values())), sorted(set(b.paths.values()))
    if pa != pb:
        out["path"] = (pa, pb)
    # audio in another format (8 kHz G.711 against 24 kHz PCM) is not like for like
    fa = sorted({f.describe() for f in a.audio_formats})
    fb = sorted({f.describe() for f in b.audio_formats})
    if fa != fb:
        out["audio_format"] = (fa, fb)
    aa = sorted({t.audio for t in a.stats_turns if t.audio is not None})
    ab = sorted({t.audio for t in b.stats_turns if t.audio is not None})
    if aa != ab:
        out["audio"] = (aa, ab)
    return out


def _turn_taking_metrics(r: Report) -> dict[str, FloatArray]:
    tt = r.turn_taking
    return {} if tt is None else tt.latency_metrics()


def _rate_counts(r: Report) -> dict[str, tuple[int, int]]:
    tt = r.turn_taking
    return {} if tt is None or not r.stats_turns else tt.rate_counts()


def _failure_sides(
    a: Report, b: Report
) -> list[tuple[str, tuple[int, int] | None, tuple[int, int] | None]]:
    """(metric, A's (failed, measured turns), B's) for ``failures`` and each kind either
    side has, in FAILURE_METRICS order; empty when neither side has a failed turn."""
    fa, fb = a.failures.rate_counts(), b.failures.rate_counts()

    def any_failed(name: str) -> bool:
        return any(side is not None and side[0] > 0 for side in (fa.get(name), fb.get(name)))

    if not any_failed(FAILURES):
        return []
    return [
        (name, fa.get(name), fb.get(name))
        for name in FAILURE_METRICS
        if name == FAILURES or any_failed(name)
    ]


def _summary(r: Report, metric: str) -> Summary | None:
    """The report's own summary of a latency metric (a turn-taking one: its summary in
    the report's ``turn_taking`` block), None when the side has no value."""
    if metric == BARGE_IN_STOP:
        return None if r.turn_taking is None else r.turn_taking.stop_summary
    if metric == RESPONSE_TO_INTERRUPTION:
        return None if r.turn_taking is None else r.turn_taking.response_summary
    if metric in (GREETING_LATENCY, CLEAR_LATENCY):
        ph = r.phone
        if ph is None:
            return None
        return summarize(ph.latency_metrics().get(metric, as_sorted([])), abs_tolerance=5.0)
    return r.summary.get(metric)


def _phone_metrics(r: Report) -> dict[str, FloatArray]:
    ph = r.phone
    return {} if ph is None else ph.latency_metrics()


def compare(a: Report, b: Report, *, alpha: float = 0.05) -> Comparison:
    """Compare report B against report A."""
    names = [VOICE_TO_VOICE, *ALL_SEGMENTS]
    present = [n for n in names if n in a.summary or n in b.summary]
    samples = [(n, a.metric_values[n], b.metric_values[n]) for n in present]
    tta, ttb = _turn_taking_metrics(a), _turn_taking_metrics(b)
    empty = as_sorted([])
    for n in (BARGE_IN_STOP, RESPONSE_TO_INTERRUPTION):
        if n in tta or n in ttb:
            samples.append((n, tta.get(n, empty), ttb.get(n, empty)))
    pha, phb = _phone_metrics(a), _phone_metrics(b)
    for n in (GREETING_LATENCY, CLEAR_LATENCY):
        if n in pha or n in phb:
            samples.append((n, pha.get(n, empty), phb.get(n, empty)))
    tests = [mann_whitney(va, vb) if len(va) and len(vb) else None for _, va, vb in samples]
    ra, rb = _rate_counts(a), _rate_counts(b)
    rate_sides = [
        (n, ra.get(n), rb.get(n))
        for n in (CUT_IN_RATE, FALSE_INTERRUPTION_RATE)
        if n in ra or n in rb
    ]
    # failures in the same family: a comparison that shows them tests them
    fail_sides = _failure_sides(a, b)
    n_rates = len(rate_sides)
    rate_sides += fail_sides
    rate_p = [
        fisher_exact(*sa, *sb) if sa is not None and sb is not None else None
        for _, sa, sb in rate_sides
    ]
    # one Holm family: every latency test, then every rate test, then the failures
    raw = [t.p_value if t is not None else None for t in tests] + rate_p
    tested = {i: p for i, p in enumerate(raw) if p is not None}
    adjusted = dict(zip(tested, holm_adjusted(list(tested.values())), strict=True))
    metrics = tuple(
        MetricComparison(
            n,
            _summary(a, n),
            _summary(b, n),
            tests[i],
            i in adjusted and adjusted[i] < alpha,
            adjusted.get(i),
        )
        for i, (n, _, _) in enumerate(samples)
    )
    off = len(samples)
    all_rates = tuple(
        RateComparison(
            n,
            sa,
            sb,
            rate_p[j],
            adjusted.get(off + j),
            off + j in adjusted and adjusted[off + j] < alpha,
        )
        for j, (n, sa, sb) in enumerate(rate_sides)
    )
    rates, failures = all_rates[:n_rates], all_rates[n_rates:]
    fa = {f.kind: f for f in a.findings}
    fb = {f.kind: f for f in b.findings}
    kinds = sorted(
        set(fa) | set(fb),
        key=lambda k: (
            -max(fa[k].per_turn_ms if k in fa else 0.0, fb[k].per_turn_ms if k in fb else 0.0)
        ),
    )
    findings = tuple(
        FindingComparison(
            k,
            fa[k].turns if k in fa else 0,
            fa[k].per_turn_ms if k in fa else 0.0,
            fb[k].turns if k in fb else 0,
            fb[k].per_turn_ms if k in fb else 0.0,
        )
        for k in kinds
    )
    differences = _metadata(a, b)
    warnings: list[str] = []
    if "host" in differences:
        warnings.append("A and B were measured on different machines")
    if "audio" in differences:
        warnings.append("A and B replayed different audio: the comparison is not like for like")
    if "path" in differences:
        warnings.append(
            f"A was measured on the {'/'.join(differences['path'][0])} path, B on the "
            f"{'/'.join(differences['path'][1])} path: the difference includes what each path adds"
        )
    if "audio_format" in differences:
        warnings.append("A and B used different audio formats: the comparison is not like for like")
    for side, r in (("A", a), ("B", b)):
        if not r.stats_turns:
            warnings.append(f"{side} has no successful turns to compare")
    for side, r in (("A", a), ("B", b)):
        ft = r.failures
        if ft.failed:
            warnings.append(
                f"{side}: {ft.failed} of {ft.of} turns failed; they are in neither side's "
                "latency figures (see the failure table)"
            )
    return Comparison(a, b, alpha, metrics, rates, findings, differences, tuple(warnings), failures)
