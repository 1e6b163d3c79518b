"""What every renderer shares: labels, number formatting, which turns to show."""

from __future__ import annotations

from typing import Any

from voiceaudit.analysis.ledger import ALL_SEGMENTS, UNEXPLAINED, Segment
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report, TurnReport
from voiceaudit.analysis.stats import Summary
from voiceaudit.probe.pacing import BROKE_NS

#: Human labels for metrics (identifiers stay the JSON keys).
LABELS: dict[str, str] = {
    VOICE_TO_VOICE: "voice-to-voice",
    "input_framing": "input framing",
    "endpointing": "endpointing",
    "transcription": "transcription",
    "handoff": "handoff",
    "response_start": "response start",
    "model_first_token": "model first token",
    "model_first_text": "model first text",
    "aggregation": "aggregation",
    "synthesis_first_byte": "synthesis first byte",
    "first_audio": "first audio byte",
    "transport": "transport",
    "playout_wait": "playout wait",
    "leading_silence": "leading silence",
    UNEXPLAINED: "unexplained",
}

#: One colour per segment (matplotlib and rich both take these hex strings).
COLOURS: dict[str, str] = {
    "input_framing": "#9e9e9e",
    "endpointing": "#1f77b4",
    "transcription": "#17becf",
    "handoff": "#bcbd22",
    "response_start": "#dbdb8d",
    "model_first_token": "#ff7f0e",
    "model_first_text": "#ffbb78",
    "aggregation": "#d62728",
    "synthesis_first_byte": "#9467bd",
    "first_audio": "#c5b0d5",
    "transport": "#8c564b",
    "playout_wait": "#7f7f7f",
    "leading_silence": "#e377c2",
    UNEXPLAINED: "#2b2b2b",
}

#: Columns of every summary table.
COLUMNS: tuple[str, ...] = ("n", "mean", "p50", "p90", "p95", "p99", "min", "max")
#: Mark placed after a figure that should not be trusted.
UNRELIABLE_MARK = "~"
#: At most this many failed turns are listed in terminal and Markdown output.
MAX_FAILED_LISTED = 50
#: At most this many turns are listed in the HTML per-turn table.
MAX_TURNS_LISTED = 500


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def summary_cells(s: Summary) -> list[tuple[str, bool]]:
    """(text, unreliable) per column of :data:`COLUMNS`."""
    out: list[tuple[str, bool]] = [(str(s.n), False)]
    for f in COLUMNS[1:]:
        out.append((fmt_ms(s.get(f)), f in s.unreliable))
    return out


def metric_rows(report: Report) -> list[tuple[str, Summary]]:
    """(metric, summary) for voice-to-voice then every segment present, in chain order."""
    rows = []
    for name in (VOICE_TO_VOICE, *ALL_SEGMENTS):
        s = report.summary.get(name)
        if s is not None:
            rows.append((name, s))
    return rows


def segment_label(s: Segment) -> str:
    if s.name == UNEXPLAINED and s.covers:
        return f"unexplained ({' / '.join(label(c) for c in s.covers)})"
    return label(s.name)


def turn_id(t: TurnReport, multi_run: bool) -> str:
    base = f"{t.session} #{t.turn}"
    return f"{t.run_id}/{base}" if multi_run else base


def representative_turns(report: Report, limit: int = 4) -> list[tuple[str, TurnReport]]:
    """The fastest, median, p90 and slowest turns of the statistics (distinct ones)."""
    ts = sorted(
        (t for t in report.stats_turns if t.voice_to_voice_ns is not None),
        key=lambda t: (t.voice_to_voice_ns, t.session, t.turn),
    )
    if not ts:
        return []
    n = len(ts)
    picks = [
        ("fastest", 0),
        ("median", (n - 1) // 2),
        ("p90", min(n - 1, round(0.9 * (n - 1)))),
        ("slowest", n - 1),
    ]
    out: list[tuple[str, TurnReport]] = []
    seen: set[int] = set()
    for name, i in picks:
        if i not in seen:
            seen.add(i)
            out.append((name, ts[i]))
    return out[:limit]


def unreliable_notes(report: Report) -> list[str]:
    """One line per unreliable figure of voice-to-voice (the headline metric)."""
    s = report.summary.get(VOICE_TO_VOICE)
    if s is None:
        return []
    return [f"{k}: {why}" for k, why in s.unreliable.items()]


def target_line(report: Report) -> str:
    parts = []
    for s in report.sources:
        t: dict[str, Any] = s.target
        proto = t.get("protocol") or "?"
        url = t.get("url") or ""
        imp = s.config.get("impairment")
        if isinstance(imp, dict):
            # The probe connected to the impairment proxy; name the real target and the
            # network it was given.
            real = imp.get("target") or url
            net = imp.get("profile") or imp.get("spec") or "?"
            parts.append(f"{proto} {real} through the impairment proxy ({net})")
        else:
            parts.append(f"{proto} {url}".strip())
    uniq = list(dict.fromkeys(parts))
    return "; ".join(uniq)


def pacing_line(report: Report) -> str | None:
    """How late the probe sent its frames: p99 and the worst frame, and the turns whose
    pacing broke; None when the traces do not say."""
    ps = report.pacing
    if ps is None:
        return None
    w = ps.worst
    where = f"{turn_id(w, report.multi_run)}"
    if w.pacing is not None and w.pacing.frame is not None:
        where += f" frame {w.pacing.frame}"
    parts = []
    if ps.p99_ns is not None:
        parts.append(f"p99 {ps.p99_ns / 1e6:.1f} ms")
    if ps.frames == 0:  # traces written before input.pacing
        where += "; the trace times no other frame"
        parts.append(f"speech-end frame up to {fmt_ms(ps.worst_ns / 1e6)} ms late ({where})")
    else:
        parts.append(f"worst frame {fmt_ms(ps.worst_ns / 1e6)} ms late ({where})")
    broke = f"{len(ps.broke)} turn(s) with a frame over {BROKE_NS / 1e6:g} ms late (marked)"
    parts.append(broke if ps.broke else "no turn broke")
    return "probe pacing: " + ", ".join(parts)


CONCURRENCY_HEAD = ["sessions", "turns", "p50 ms", "p95 ms", "p (Holm)", ""]


def concurrency_rows(report: Report) -> list[list[str]]:
    """The latency-vs-concurrency table: one row per level (empty with one level)."""
    view = report.concurrency
    if view is None:
        return []
    rows = []
    for lv in view.levels:
        if lv.concurrency == view.baseline:
            note = "baseline"
        elif lv.p_value is None:
            note = f"not tested (< {view.min_turns} turns)"
        elif lv.concurrency == view.knee:
            note = "knee"
        else:
            note = "above" if lv.above else ""
        p = "" if lv.p_value is None else f"{lv.p_value:.3g}"
        rows.append(
            [str(lv.concurrency), str(lv.turns), fmt_ms(lv.p50_ms), fmt_ms(lv.p95_ms), p, note]
        )
    return rows


def knee_line(report: Report) -> str | None:
    """The knee in one sentence (None with one concurrency level)."""
    view = report.concurrency
    return None if view is None else view.describe_knee()
