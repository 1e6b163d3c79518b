"""Framework vs heard: what the framework reported next to what the caller heard.

For each probe turn the framework reported on, one row per framework number:

=======================  =================================================  ============
framework metric         measured by voiceaudit                             aligned?
=======================  =================================================  ============
user_bot_latency (Pipecat), e2e_latency (LiveKit),
response_latency (OpenAI event log)
                         voice-to-voice: speech end → first audible reply   no
stt_ttfb, transcription_delay
                         speech end → the framework's final transcript      yes
end_of_turn_delay, end_of_utterance_delay
                         speech end → the framework's end-of-turn decision  yes
tts_ttfb                 synthesis request → first audible reply            yes
llm_ttfb, llm_ttft       (no outside view of the model's first token)
stage sum                voice-to-voice                                     no
=======================  =================================================  ============

"aligned" rows subtract a framework timestamp (mapped onto the probe's clock) from a probe
one, so they are only as good as the clock alignment; the others compare two durations
and need no alignment at all. ``difference = measured - reported``: positive means the
caller waited longer than the framework says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voiceaudit.clock import NS_PER_MS
from voiceaudit.imports.align import AssignedMeasure, HeardTurn, heard_turns
from voiceaudit.imports.loader import ImportResult
from voiceaudit.trace_io import Trace

#: framework metrics that claim to be the whole user→bot delay
HEADLINE = {"user_bot_latency", "e2e_latency", "response_latency"}

#: the per-stage numbers a framework user would add up, per framework
STAGE_SUMS: dict[str, tuple[tuple[str, ...], ...]] = {
    # each inner tuple: alternatives for one stage (first present wins)
    "pipecat": (("stt_ttfb",), ("llm_ttfb",), ("tts_ttfb",)),
    "livekit": (("end_of_turn_delay", "end_of_utterance_delay"), ("llm_ttft",), ("tts_ttfb",)),
}

_ORDER = [
    "user_bot_latency",
    "e2e_latency",
    "response_latency",
    "stage_sum",
    "stt_ttfb",
    "transcription_delay",
    "end_of_turn_delay",
    "end_of_utterance_delay",
    "eou_endpointing_delay",
    "llm_ttfb",
    "llm_ttft",
    "tts_ttfb",
]


@dataclass(frozen=True)
class ComparisonRow:
    session: str
    turn: int
    framework: str
    metric: str
    #: what the framework calls it, e.g. "turn.user_bot_latency_seconds on span turn"
    label: str
    reported_ns: int
    measured_ns: int | None
    #: what voiceaudit measured for it, e.g. "voice-to-voice (speech end → first audible)"
    measured_label: str | None
    #: the measured value uses framework timestamps mapped onto the probe's clock
    aligned: bool
    note: str | None = None
    warmup: bool = False

    @property
    def difference_ns(self) -> int | None:
        return None if self.measured_ns is None else self.measured_ns - self.reported_ns

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "turn": self.turn,
            "framework": self.framework,
            "metric": self.metric,
            "label": self.label,
            "reported_ns": self.reported_ns,
            "measured_ns": self.measured_ns,
            "difference_ns": self.difference_ns,
            "measured_label": self.measured_label,
            "aligned": self.aligned,
            "note": self.note,
            "warmup": self.warmup,
        }


def measured_voice_to_voice(trace: Trace) -> dict[tuple[str, int], int]:
    """Voice-to-voice per (session, turn) from a trace: ``turn.end`` attrs
    ``voice_to_voice_ns``, else ``reply.audible - input.speech_end``."""
    return {
        (h.session, h.turn): h.voice_to_voice_ns
        for h in heard_turns(trace)
        if h.voice_to_voice_ns is not None
    }


def _first_import_event(
    results: Sequence[ImportResult], session: str, turn: int, name: str
) -> int | None:
    ts = [
        e.t_ns
        for r in results
        if r.alignment is not None
        for e in r.events
        if e.session == session and e.turn == turn and e.name == name
    ]
    return min(ts) if ts else None


def framework_vs_heard(
    results: ImportResult | Sequence[ImportResult],
    trace: Trace,
    *,
    measured: Mapping[tuple[str, int], int] | None = None,
) -> list[ComparisonRow]:
    """The rows of the "framework vs heard" table for one trace.

    ``results`` are imports placed on ``trace`` (``import_telemetry(…, trace=trace)``);
    imports placed on another trace are ignored. ``measured`` overrides the voice-to-voice
    figures (by default they come from the trace, as :func:`measured_voice_to_voice`).
    """
    rs = [results] if isinstance(results, ImportResult) else list(results)
    rs = [r for r in rs if r.alignment is not None and r.trace_path == trace.path]
    heard = {(h.session, h.turn): h for h in heard_turns(trace)}
    v2v = dict(measured) if measured is not None else measured_voice_to_voice(trace)
    # first value of each metric per turn (a reply in several sentences has several TTFBs)
    per_turn: dict[tuple[str, int, str, str], list[AssignedMeasure]] = {}
    for r in rs:
        for m in r.measures:
            if m.turn is None:
                continue
            per_turn.setdefault((m.session, m.turn, m.framework, m.metric), []).append(m)
    rows: list[ComparisonRow] = []
    turns = sorted({(s, t, f) for (s, t, f, _) in per_turn})
    for session, turn, fw in turns:
        h = heard.get((session, turn))
        measured_v2v = v2v.get((session, turn))
        warm = h.warmup if h is not None else False
        firsts: dict[str, AssignedMeasure] = {}
        counts: dict[str, int] = {}
        for (s, t, f, metric), ms in per_turn.items():
            if (s, t, f) == (session, turn, fw):
                firsts[metric] = min(ms, key=lambda m: m.t_ns)
                counts[metric] = len(ms)
        for metric, m in firsts.items():
            value, label, aligned = _measured_for(metric, h, measured_v2v, rs, session, turn)
            notes = [m.note] if m.note else []
            if counts[metric] > 1:
                notes.append(f"{counts[metric]} values in this turn; the first is shown")
            rows.append(
                ComparisonRow(
                    session,
                    turn,
                    fw,
                    metric,
                    m.label,
                    m.value_ns,
                    value,
                    label,
                    aligned,
                    "; ".join(notes) or None,
                    warm,
                )
            )
        stage_row = _stage_sum(fw, firsts, measured_v2v, session, turn, warm)
        if stage_row is not None:
            rows.append(stage_row)
    rank = {m: i for i, m in enumerate(_ORDER)}
    rows.sort(key=lambda r: (r.session, r.turn, r.framework, rank.get(r.metric, 99), r.metric))
    return rows


def _measured_for(
    metric: str,
    h: HeardTurn | None,
    v2v: int | None,
    rs: Sequence[ImportResult],
    session: str,
    turn: int,
) -> tuple[int | None, str | None, bool]:
    if metric in HEADLINE:
        return v2v, "voice-to-voice (speech end → first audible reply)", False
    if h is None:
        return None, None, False
    if metric in ("stt_ttfb", "transcription_delay"):
        t = _first_import_event(rs, session, turn, "transcript.final")
        if t is None or h.speech_end_ns is None:
            return None, None, True
        return t - h.speech_end_ns, "speech end → final transcript", True
    if metric in ("end_of_turn_delay", "end_of_utterance_delay"):
        t = _first_import_event(rs, session, turn, "endpoint")
        if t is None:
            t = _first_import_event(rs, session, turn, "committed")
        if t is None or h.speech_end_ns is None:
            return None, None, True
        return t - h.speech_end_ns, "speech end → end-of-turn decision", True
    if metric == "tts_ttfb":
        t = _first_import_event(rs, session, turn, "tts.request")
        if t is None or h.audible_ns is None:
            return None, None, True
        return h.audible_ns - t, "synthesis request → first audible reply", True
    return None, None, False


def _stage_sum(
    fw: str,
    firsts: Mapping[str, AssignedMeasure],
    v2v: int | None,
    session: str,
    turn: int,
    warm: bool,
) -> ComparisonRow | None:
    stages = STAGE_SUMS.get(fw)
    if stages is None:
        return None
    parts: list[AssignedMeasure] = []
    for alternatives in stages:
        m = next((firsts[a] for a in alternatives if a in firsts), None)
        if m is not None:
            parts.append(m)
    if len(parts) < 2:
        return None
    names = " + ".join(p.metric for p in parts)
    missing = len(stages) - len(parts)
    note = f"{missing} stage{'s' if missing > 1 else ''} not reported" if missing else None
    return ComparisonRow(
        session,
        turn,
        fw,
        "stage_sum",
        f"sum of stage metrics ({names})",
        sum(p.value_ns for p in parts),
        v2v,
        "voice-to-voice (speech end → first audible reply)",
        False,
        note,
        warm,
    )


def _ms(ns: int | None) -> str:
    return "—" if ns is None else f"{ns / NS_PER_MS:.0f}"


def format_table(rows: Iterable[ComparisonRow]) -> str:
    """A plain-text table (for terminals and logs); renderers may do their own."""
    header = (
        "session",
        "turn",
        "framework metric",
        "reported ms",
        "measured ms",
        "diff ms",
        "measured as",
    )
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        diff = r.difference_ns
        lines.append(
            (
                r.session,
                str(r.turn) + (" (warm-up)" if r.warmup else ""),
                f"{r.framework} {r.metric}",
                _ms(r.reported_ns),
                _ms(r.measured_ns),
                "—" if diff is None else f"{diff / NS_PER_MS:+.0f}",
                (r.measured_label or "—")
                + (" [aligned]" if r.aligned and r.measured_ns is not None else ""),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    right = {3, 4, 5}
    out = []
    for row in lines:
        cells = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
