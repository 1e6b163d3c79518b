"""What every renderer shares: labels, number formatting, which turns to show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voiceaudit.analysis.compare import FindingComparison, MetricComparison, RateComparison
from voiceaudit.analysis.drift import ALPHA, MIN_CHANGE_MS
from voiceaudit.analysis.findings import UNCOSTED
from voiceaudit.analysis.ledger import (
    ALL_SEGMENTS,
    CARRIER_BUFFER,
    FIXED_DELAY,
    UNEXPLAINED,
    Segment,
)
from voiceaudit.analysis.phone import CLEAR_LATENCY, GREETING_LATENCY
from voiceaudit.analysis.report import (
    AUDIO_FORMAT_SOURCES,
    FAILURES,
    VOICE_TO_VOICE,
    Report,
    TurnReport,
)
from voiceaudit.analysis.stats import Summary, as_sorted, percentile
from voiceaudit.analysis.turntaking import (
    BARGE_IN_STOP,
    CUT_IN_RATE,
    FALSE_INTERRUPTION_RATE,
    INTERRUPT,
    RESPONSE_TO_INTERRUPTION,
    SPLIT_LABELS,
    ReplyStop,
)
from voiceaudit.failures import FAILURE_LABELS
from voiceaudit.pacing_stats import BROKE_NS

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
    CARRIER_BUFFER: "carrier buffer",
    FIXED_DELAY: "fixed delay",
    "playout_wait": "playout wait",
    "leading_silence": "leading silence",
    UNEXPLAINED: "unexplained",
    BARGE_IN_STOP: "barge-in stop latency",
    RESPONSE_TO_INTERRUPTION: "response to interruption",
    CUT_IN_RATE: "cut-in rate",
    FALSE_INTERRUPTION_RATE: "false-interruption rate",
    GREETING_LATENCY: "greeting latency",
    CLEAR_LATENCY: "barge-in onset to clear",
    FAILURES: "failed turns (all kinds)",
    **{f"{FAILURES}.{k}": v for k, v in FAILURE_LABELS.items()},
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
    CARRIER_BUFFER: "#c49c94",
    FIXED_DELAY: "#f7b6d2",
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


#: What the reports print for the cost of a finding the trace cannot cost.
NOT_MEASURED = "not measured"


def fmt_cost(kind: str, ms: float, unit: str = "") -> str:
    """A finding's cost in ms (``unit`` appended), or "not measured" for a kind the trace
    cannot cost (:data:`~voiceaudit.analysis.findings.UNCOSTED`, costed 0 ms)."""
    return NOT_MEASURED if kind in UNCOSTED else fmt_ms(ms) + unit


def signed_ms(x: float | None) -> str:
    """A difference in ms with its sign (``+12.3``, ``-4.00``, ``0.00``), ``-`` for none."""
    if x is None:
        return "-"
    return ("+" if x > 0 else "") + fmt_ms(x)


def finding_comparison_cells(f: FindingComparison) -> tuple[str, str, str]:
    """A, B (ms per turn, with the turns in brackets) and B - A of a compared finding; a
    kind the trace cannot cost reads "not measured" with its turns."""
    if f.kind in UNCOSTED:
        return (f"{NOT_MEASURED} ({f.a_turns})", f"{NOT_MEASURED} ({f.b_turns})", NOT_MEASURED)
    return (
        f"{fmt_ms(f.a_per_turn_ms)} ({f.a_turns})",
        f"{fmt_ms(f.b_per_turn_ms)} ({f.b_turns})",
        signed_ms(f.b_per_turn_ms - f.a_per_turn_ms),
    )


#: Columns of a comparison's latency table (its cells: :func:`metric_comparison_cells`).
METRIC_COMPARISON_COLUMNS: tuple[str, ...] = (
    "metric",
    "A p50",
    "B p50",
    "Δ p50",
    "A mean",
    "B mean",
    "Δ mean",
    "p (Holm)",
    "verdict",
)
#: Columns of a comparison's rate table (its cells: :func:`rate_comparison_cells`).
RATE_COMPARISON_COLUMNS: tuple[str, ...] = (
    "rate",
    "A",
    "A 95% CI",
    "B",
    "B 95% CI",
    "Δ",
    "p (Holm)",
    "verdict",
)
#: Columns of a comparison's failure table: a rate table's, named by failure kind.
FAILURE_COMPARISON_COLUMNS: tuple[str, ...] = ("failure", *RATE_COMPARISON_COLUMNS[1:])


def fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def fmt_pct(x: float) -> str:
    """A fraction as a percentage: ``12.5%``, ``0.0%``, ``0.05%``."""
    pct = x * 100
    return f"{pct:.1f}%" if pct >= 0.1 or x == 0 else f"{pct:.2g}%"


def metric_comparison_cells(m: MetricComparison) -> list[str]:
    """The cells of :data:`METRIC_COMPARISON_COLUMNS` for one compared metric."""
    return [
        label(m.metric),
        fmt_ms(None if m.a is None else m.a.p50),
        fmt_ms(None if m.b is None else m.b.p50),
        signed_ms(m.diff_p50_ms),
        fmt_ms(None if m.a is None else m.a.mean),
        fmt_ms(None if m.b is None else m.b.mean),
        signed_ms(m.diff_mean_ms),
        fmt_p(m.p_adjusted),
        m.verdict,
    ]


def rate_comparison_cells(r: RateComparison) -> list[str]:
    """The cells of :data:`RATE_COMPARISON_COLUMNS` for one compared rate: each side as
    ``12.5% (1/8)`` with its Wilson interval, B - A in percentage points."""
    d = r.to_dict()

    def side(v: dict[str, Any] | None) -> tuple[str, str]:
        if v is None:
            return "-", "-"
        lo, hi = v["ci95"]
        ci = f"{fmt_pct(lo)[:-1]}\u2013{fmt_pct(hi)}"
        return f"{fmt_pct(v['rate'])} ({v['count']}/{v['of']})", ci

    diff = r.diff
    return [
        label(r.metric),
        *side(d["a"]),
        *side(d["b"]),
        "-" if diff is None else f"{'+' if diff > 0 else ''}{diff * 100:.1f} pp",
        fmt_p(r.p_adjusted),
        r.verdict,
    ]


def finding_label(kind: str, ns: int, sign: str = "") -> str:
    """``kind 12.3 ms`` for one turn's finding (``sign`` before the figure), or
    ``kind (cost not measured)``."""
    if kind in UNCOSTED:
        return f"{kind} (cost {NOT_MEASURED})"
    return f"{kind} {sign}{fmt_ms(ns / 1e6)} ms"


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
    """``s0 #3`` (``run/s0 #3`` of several runs); a key-press turn says so: ``s0 #3 (key
    press 1)``, its voice-to-voice being the bot's reaction time to the key."""
    base = f"{t.session} #{t.turn}"
    if t.dtmf is not None:
        base += f" (key press {t.dtmf})"
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


def counts_line(report: Report) -> str:
    """``12 turns: 10 ok, 1 failed, 1 warm-up; 10 in the statistics`` (and the unfinished)."""
    c = report.counts
    line = (
        f"{c['turns']} turns: {c['ok']} ok, {c['failed']} failed, {c['warmup']} warm-up; "
        f"{c['in_statistics']} in the statistics"
    )
    if c["unfinished"]:
        line += f"; {c['unfinished']} unfinished (left out)"
    return line


def target_line(report: Report) -> str:
    """The targets measured; each with its path (``phone path``) when the report shows
    paths (:attr:`~voiceaudit.analysis.report.Report.phone`)."""
    parts = []
    show_path = report.phone is not None
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
        if show_path:
            parts[-1] += f" ({report.paths.get(s.run_id, '?')} path)"
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


# -- long calls (drift) ---------------------------------------------------------------------

DRIFT_TURN_HEAD = ["turn index", "turns", "p50 ms", "p95 ms", "failed"]
DRIFT_TIME_HEAD = ["window (s)", "turns", "p50 ms", "p95 ms", "failed"]


def drift_rows(report: Report, by: str) -> list[list[str]]:
    """Voice-to-voice by turn index (``by`` ``turn``) or over time (``time``), one row per
    range of indices or window (empty: the report has no drift view)."""
    view = report.drift
    if view is None:
        return []
    rows = []
    for r in view.by_turn if by == "turn" else view.over_time:
        if by == "turn":
            a, b = int(r.start), int(r.end)
            where = str(a) if a == b else f"{a}-{b}"
        else:
            where = f"{r.start:.0f}-{r.end:.0f}"
        rows.append([where, str(r.n), fmt_ms(r.p50_ms), fmt_ms(r.p95_ms), str(r.failures)])
    return rows


def drift_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) of the trend tests: against time, against turn index, and the
    verdict (empty: the report has no drift view)."""
    view = report.drift
    if view is None:
        return []
    out = []
    for name, tr in (("over time", view.time), ("by turn index", view.turn)):
        out.append((name, "not tested (the axis does not vary)" if tr is None else tr.describe()))
    d = view.drift
    if d is not None:
        verdict = (
            f"drift: {d.change_ms:+.0f} ms over the run "
            f"({'time' if d.axis == 'time' else 'turn index'}; finding raised)"
        )
    else:
        verdict = (
            f"no drift (a finding needs p < {ALPHA / 2:g} on an axis, a 95% interval "
            f"without 0 and a change of at least {MIN_CHANGE_MS:g} ms)"
        )
    out.append(("verdict", verdict))
    return out


# -- turn-taking (scenario runs) ------------------------------------------------------------

#: At most this many turn-taking events are listed in terminal and Markdown output.
MAX_TURN_TAKING_LISTED = 50

#: The finding kinds an event row of each type can carry.
_STOP_KINDS = ("no_barge_in", "slow_barge_in_stop", "barge_in_client_buffer")


@dataclass(frozen=True)
class TurnTakingRow:
    """One turn-taking event of one turn, for the per-event table."""

    turn: str
    what: str
    #: the event's headline figure in ms (stop latency, how early a cut-in was, …)
    ms: float | None
    detail: str
    #: findings this event raised, as "kind +N ms"
    findings: tuple[str, ...] = ()


def _pct(num: int, den: int) -> str:
    return f"{num}/{den}" + ("" if den == 0 else f" ({num / den * 100:.0f}%)")


def split_text(b: ReplyStop) -> str:
    """``server stop 150 + in flight 30 + client buffer 240 ms`` (the parts sum to the
    stop latency), or "split unknown"."""
    parts = b.split
    if not parts:
        return "split unknown"
    return " + ".join(f"{SPLIT_LABELS[k]} {fmt_ms(v / 1e6)}" for k, v in parts.items()) + " ms"


def _matching(
    t: TurnReport, kinds: Sequence[str], key: str, value: float | None
) -> tuple[str, ...]:
    """The turn's findings of ``kinds`` whose evidence has ``key`` == ``value``."""
    return tuple(
        finding_label(f.kind, f.ns, "+")
        for f in t.findings
        if f.kind in kinds and value is not None and f.evidence.get(key) == value
    )


def _stop_row(t: TurnReport, tid: str, s: ReplyStop) -> TurnTakingRow:
    stop_ms = round(s.stop_ns / 1e6, 3)
    bits = [split_text(s)]
    if s.heard_after_ms is not None:
        bits.append(f"{fmt_ms(s.heard_after_ms)} ms of reply heard after the onset")
    if s.cut is not None:
        bits.append("the protocol said: cut" if s.cut else "the protocol said: completed")
    if s.kind == INTERRUPT:
        what = "barge-in" if s.stopped is not False else "barge-in (not stopped)"
        if s.clip is not None:
            bits.append(f"speech: {s.clip}")
        return TurnTakingRow(
            tid, what, stop_ms, "; ".join(bits), _matching(t, _STOP_KINDS, "stop_ms", stop_ms)
        )
    what = "sound" + (f" ({s.clip})" if s.clip is not None else "")
    if s.false_interruption is True:
        bits.insert(0, "false interruption: the sound stopped the reply")
    elif s.false_interruption is False:
        bits.insert(0, "the reply went on")
    else:
        bits.insert(0, "whether the sound stopped the reply: unknown")
    found = _matching(t, ("false_interruption",), "stop_ms", stop_ms)
    return TurnTakingRow(tid, what, stop_ms, "; ".join(bits), found)


def turn_taking_rows(report: Report) -> list[TurnTakingRow]:
    """Every turn-taking event, turn by turn in report order: barge-ins and sounds over
    the turn's reply (stop latency and its split), cut-ins (with the pause), truncation
    (told vs heard) and the response to an interruption (the turn's voice-to-voice)."""
    rows: list[TurnTakingRow] = []
    for t in report.turns:
        tt = t.turn_taking
        if tt is None:
            continue
        tid = turn_id(t, report.multi_run)
        if not t.ok:
            tid += " (failed)"
        if tt.interrupts_turn is not None:
            v2v = t.voice_to_voice_ns
            rows.append(
                TurnTakingRow(
                    tid,
                    "response to interruption",
                    None if v2v is None else v2v / 1e6,
                    f"voice-to-voice of this turn, which talked over the reply of turn "
                    f"#{tt.interrupts_turn}",
                )
            )
        for s in tt.stops:
            rows.append(_stop_row(t, tid, s))
        for c in tt.cut_ins:
            early = round(c.before_speech_end_ns / 1e6, 3)
            if c.pause_ms is None:
                where = "before any pause"
            else:
                n = "" if c.pause_index is None else f" {c.pause_index + 1}"
                where = f"in pause{n} of {fmt_ms(c.pause_ms)} ms"
                if c.after_pause_start_ns is not None:
                    where += f", {fmt_ms(c.after_pause_start_ns / 1e6)} ms into it"
            how = "reply heard" if c.audible else "turn ended by the target, no reply heard"
            detail = f"{where}; {how}; {fmt_ms(early)} ms before the speech end"
            found = _matching(t, ("cut_in",), "before_speech_end_ms", early)
            rows.append(TurnTakingRow(tid, "cut-in", early, detail, found))
        for tr in tt.truncates:
            heard = "-" if tr.heard_ms is None else fmt_ms(tr.heard_ms)
            detail = (
                f"told the server {fmt_ms(tr.audio_end_ms)} ms played, heard {heard} ms "
                "(ms: heard - told)"
            )
            found = _matching(t, ("truncation_mismatch",), "audio_end_ms", tr.audio_end_ms)
            rows.append(TurnTakingRow(tid, "truncation", tr.unclaimed_ms, detail, found))
    return rows


TURN_TAKING_HEAD = ["turn", "event", "ms", "detail", "findings"]


def turn_taking_figures(report: Report) -> list[tuple[str, Summary]]:
    """(label, summary) of the turn-taking latencies: barge-in stop latency, the
    responses to an interruption and, beside them, the other turns' voice-to-voice."""
    tt = report.turn_taking
    if tt is None:
        return []
    out = []
    for name, s in (
        ("barge-in stop latency", tt.stop_summary),
        ("response to interruption", tt.response_summary),
        ("other turns' voice-to-voice", tt.ordinary_summary if tt.response_summary else None),
    ):
        if s is not None:
            out.append((name, s))
    return out


def turn_taking_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) of the report-level turn-taking summary: barge-ins and their split,
    cut-in rate (by pause length), false-interruption rate, truncation, and the
    response to interruption against the other turns."""
    tt = report.turn_taking
    if tt is None:
        return []
    out: list[tuple[str, str]] = []
    b = tt.barge_ins
    if b:
        stopped = sum(1 for s in b if s.stopped is not False)
        text = f"{len(b)}, stopped {_pct(stopped, len(b))}"
        st = tt.stop_summary
        if st is not None:
            text += f"; stop latency p50 {fmt_ms(st.p50)} ms, p95 {fmt_ms(st.p95)} ms"
        out.append(("barge-ins", text))
        p50 = tt.split_p50_ms()
        n = tt.split_n()
        if n["server"] == len(b):
            del p50["received"]  # = server stop + in flight, for every barge-in
        parts = [
            f"{SPLIT_LABELS[k]} {fmt_ms(v)} ms" + ("" if n[k] == len(b) else f" (of {n[k]})")
            for k, v in p50.items()
            if v is not None
        ]
        if parts:
            out.append(("stop latency split (p50)", ", ".join(parts)))
    if tt.cut_in_turns:
        rate = f"{_pct(tt.turns_cut_in, tt.cut_in_turns)} of the turns with pauses"
        if tt.by_pause:
            rate += "; by pause: " + ", ".join(
                f"{fmt_ms(p.pause_ms)} ms {p.cut_ins}/{p.pauses}" for p in tt.by_pause
            )
        if tt.before_any_pause:
            rate += f"; {tt.before_any_pause} before any pause"
        out.append(("cut-in rate", rate))
    if tt.sounds:
        if tt.sounds_known:
            text = (
                f"{_pct(tt.false_interruptions, tt.sounds_known)} of the sounds stopped the reply"
            )
        else:
            text = "unknown (the protocol did not say whether the reply stopped)"
        if tt.sounds_known < len(tt.sounds):
            text += f"; {len(tt.sounds) - tt.sounds_known} of {len(tt.sounds)} sounds unknown"
        out.append(("false-interruption rate", text))
    unclaimed = tt.unclaimed_ms()
    if tt.truncates:
        text = f"{len(tt.truncates)} truncate(s)"
        if len(unclaimed):
            text += (
                f"; heard - told: p50 {fmt_ms(percentile(unclaimed, 50))} ms, "
                f"min {fmt_ms(float(unclaimed[0]))} ms, max {fmt_ms(float(unclaimed[-1]))} ms"
            )
        out.append(("truncation", text))
    resp, other = tt.response_summary, tt.ordinary_summary
    if resp is not None:
        text = f"voice-to-voice p50 {fmt_ms(resp.p50)} ms over {resp.n} turn(s)"
        if other is not None:
            d = resp.p50 - other.p50
            sign = "+" if d > 0 else ""
            text += f"; other turns p50 {fmt_ms(other.p50)} ms (difference {sign}{fmt_ms(d)} ms)"
        out.append(("response to interruption", text))
    return out


# -- failures and audio formats ---------------------------------------------------------------

#: Columns of the failure table (its cells: :func:`failure_rows`).
FAILURE_HEAD = ["failure", "turns", "share", "warm-up", "first reason"]


def failure_banner(report: Report) -> str | None:
    """The warning a report with failed turns opens with; None when no turn failed."""
    ft = report.failures
    if not ft.failed and not ft.warmup:
        return None
    kinds = ", ".join(f"{r.label} {r.turns}" for r in ft.rows if r.turns)
    if ft.failed:
        share = "" if ft.share is None else f" ({fmt_pct(ft.share)})"
        text = f"{ft.failed} of {ft.of} turns failed{share}: {kinds}"
    else:
        text = "no measured turn failed"
    if ft.warmup and not report.options.include_warmup:
        text += f"; {ft.warmup} warm-up turn(s) failed too"
    return f"FAILURES: {text}; failed turns are left out of the statistics"


def failure_rows(report: Report) -> list[list[str]]:
    """One row per failure kind that occurred: label, turns, share of the measured
    turns, failed warm-ups, the first reason seen."""
    ft = report.failures
    return [
        [
            r.label,
            str(r.turns),
            "-" if not ft.of else fmt_pct(r.turns / ft.of),
            str(r.warmup),
            r.example or "",
        ]
        for r in ft.present()
    ]


def failure_note(report: Report) -> str:
    """What the failure table's share is of."""
    ft = report.failures
    what = (
        "every finished turn"
        if report.options.include_warmup
        else "every finished turn but the warm-ups"
    )
    text = f"Share of the {ft.of} measured turns ({what}"
    if report.unfinished:
        text += f", and {len(report.unfinished)} cut short, counted as interrupted"
    return text + ")"


def failed_turn_line(t: TurnReport, multi_run: bool) -> str:
    """``s0 #3 [reply cut]: connection reset; voice-to-voice 412 ms (informative: reply
    cut, not in the statistics)`` for the failed-turn lists."""
    warm = " (warm-up)" if t.warmup else ""
    kind = "" if t.failure is None else f" [{FAILURE_LABELS[t.failure]}]"
    line = f"{turn_id(t, multi_run)}{warm}{kind}: {t.reason}"
    return line + informative_text(t, "; ")


def failed_turn_lines(report: Report) -> tuple[list[str], int]:
    """The failed-turn list (:func:`failed_turn_line`, at most :data:`MAX_FAILED_LISTED`)
    and how many failed turns it leaves out."""
    failed = report.failed_turns
    listed = [failed_turn_line(t, report.multi_run) for t in failed[:MAX_FAILED_LISTED]]
    return listed, len(failed) - len(listed)


def informative_text(t: TurnReport, sep: str = "") -> str:
    """``voice-to-voice 412 ms (informative: reply cut, not in the statistics)``, or ""."""
    if t.informative_ns is None:
        return ""
    return (
        f"{sep}voice-to-voice {fmt_ms(t.informative_ns / 1e6)} ms "
        f"({t.informative_label}, not in the statistics)"
    )


def audio_format_lines(report: Report) -> list[str]:
    """The audio formats the sessions used: one line when all agree, else one per
    format with its sessions; empty when no trace records one."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    first: dict[tuple[Any, ...], Any] = {}
    for f in report.audio_formats:
        k = f.key()
        sid = f"{f.run_id}/{f.session}" if report.multi_run else f.session
        groups.setdefault(k, []).append(sid)
        first.setdefault(k, f)
    out = []
    for k, sessions in groups.items():
        f = first[k]
        src = AUDIO_FORMAT_SOURCES.get(f.source or "", f.source or "source not said")
        line = f"{f.describe()} ({src})"
        if len(groups) > 1:
            shown = ", ".join(sessions[:5]) + (", …" if len(sessions) > 5 else "")
            line += f": {len(sessions)} session(s): {shown}"
        out.append(line)
    return out


def _ms_range(v: Any) -> str:
    """``p50 X ms, max Y ms`` of sorted ms values."""
    return f"p50 {fmt_ms(percentile(v, 50))} ms, max {fmt_ms(float(v[-1]))} ms"


def side_paths(r: Report) -> str:
    """``phone path`` (``phone + websocket paths``) of a comparison's side."""
    ps = sorted(set(r.paths.values()))
    return f"{' + '.join(ps)} path" + ("s" if len(ps) > 1 else "")


def show_paths(a: Report, b: Report) -> bool:
    """A comparison names each side's path when either side shows paths or they differ."""
    return (
        a.phone is not None or b.phone is not None or set(a.paths.values()) != set(b.paths.values())
    )


def phone_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) of the report-level phone and greeting summary: each path's
    voice-to-voice (results of different paths apart), what the phone figures include, the
    greeting, the carrier's buffer and send-ahead, barge-ins through the carrier, mark
    honesty and key presses; empty when all there is to say is the one path (the target
    line names it)."""
    ph = report.phone
    if ph is None:
        return []
    out: list[tuple[str, str]] = []
    paths = []
    for p in ph.paths:
        v = p.voice_to_voice
        fig = (
            "no voice-to-voice"
            if v is None
            else (f"voice-to-voice p50 {fmt_ms(v.p50)} ms, p95 {fmt_ms(v.p95)} ms")
        )
        paths.append(f"{p.path}: {p.turns} turn(s), {fig}")
    out.append(("paths" if len(ph.paths) > 1 else "path", "; ".join(paths)))
    inc = ph.includes
    if inc is not None:
        out.append(("phone figures", inc))
    if ph.greetings:
        heard = len(ph.greetings) - ph.no_greeting
        text = f"heard in {_pct(heard, len(ph.greetings))} of the sessions that waited for it"
        g = ph.greeting_summary
        if g is not None:
            text += (
                f"; latency p50 {fmt_ms(g.p50)} ms, p95 {fmt_ms(g.p95)} ms, max {fmt_ms(g.max)} ms"
            )
        if ph.no_greeting:
            text += f"; no greeting in {ph.no_greeting} session(s)"
        out.append(("greeting", text))
    if ph.carrier_turns:
        text = f"{ph.carrier_turns} turn(s)"
        if ph.dialects:
            text += f" ({', '.join(ph.dialects)})"
        if len(ph.carrier_buffer_ms):
            text += f"; carrier buffer {_ms_range(ph.carrier_buffer_ms)}"
        if len(ph.send_ahead_max_ms):
            ahead = _ms_range(ph.send_ahead_max_ms)
            text += f"; send-ahead (most audio queued ahead of the playout) {ahead}"
        out.append(("carrier", text))
    if ph.barge_ins:
        n = len(ph.barge_ins)
        text = f"{n}, cleared {_pct(ph.cleared, n)}"
        if len(ph.clear_ms):
            text += f"; onset to clear {_ms_range(ph.clear_ms)}"
            after = [
                b.after_clear_ns / 1e6
                for b in ph.barge_ins
                if b.after_clear_ns is not None
                and b.clear_ns is not None
                and b.clear_ns <= b.stop_ns
            ]
            if after:
                text += f", clear to the last sample heard {_ms_range(as_sorted(after))}"
        deaf = [b.deaf_window_ns / 1e6 for b in ph.barge_ins if b.deaf_window_ns is not None]
        if deaf:
            text += f"; deaf window (audio queued at the onset) {_ms_range(as_sorted(deaf))}"
        out.append(("barge-ins through the carrier", text))
    if ph.marks:
        out.append(
            (
                "marks",
                f"{len(ph.marks)} echoed, {ph.early_marks} early (echoed while audio sent "
                "after it was still to be heard)",
            )
        )
    if len(ph.key_press_ms):
        out.append(
            (
                "key presses",
                f"{len(ph.key_press_ms)} turn(s); the bot's reaction to the key "
                f"{_ms_range(ph.key_press_ms)}",
            )
        )
    if len(out) == 1 and len(ph.paths) == 1:
        return []  # one path and nothing else: the target line names it
    return out
