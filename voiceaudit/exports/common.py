"""What both exports need from a trace: sessions, turns, marks and each turn's ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voiceaudit.model import BATCHED, Event, Span, unbatch
from voiceaudit.trace_io import Trace

#: events too numerous to export one by one (they become counters or are summarised)
BULK = frozenset({"input.frame", "reply.chunk"})


@dataclass(frozen=True)
class SegmentSlice:
    """One ledger segment placed on the time axis."""

    name: str
    start_ns: int
    end_ns: int
    start_mark: str
    end_mark: str
    covers: tuple[str, ...] = ()


@dataclass
class TurnView:
    """One turn: its records, its outcome and its ledger, as both exports draw it."""

    session: str
    turn: int
    events: list[Event] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    start_ns: int | None = None
    end_ns: int | None = None
    ok: bool | None = None
    warmup: bool = False
    reason: str | None = None
    audio: str | None = None
    voice_to_voice_ns: int | None = None
    speech_end_ns: int | None = None
    audible_ns: int | None = None
    segments: list[SegmentSlice] = field(default_factory=list)
    ledger_problem: str | None = None
    #: ``queued_ns`` of the reply's first chunk, where a phone carrier played the reply
    #: (the ledger's ``carrier_buffer``; the batched event holds it, its unbatched
    #: per-chunk events do not)
    first_queued_ns: int | None = None

    def first(self, name: str) -> Event | None:
        return next((e for e in self.events if e.name == name and e.source == "probe"), None)

    @property
    def extent(self) -> tuple[int, int]:
        ts = [e.t_ns for e in self.events] + [t for s in self.spans for t in (s.start_ns, s.end_ns)]
        lo = min(ts) if self.start_ns is None else min(self.start_ns, *ts)
        hi = max(ts)
        return lo, max(hi, self.end_ns or hi)


@dataclass
class SessionView:
    """One session: its records outside any turn, and its turns by number."""

    session: str
    events: list[Event] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    turns: dict[int, TurnView] = field(default_factory=dict)

    @property
    def extent(self) -> tuple[int, int]:
        ts = [e.t_ns for e in self.events]
        for t in self.turns.values():
            ts.extend(t.extent)
        for s in self.spans:
            ts.extend((s.start_ns, s.end_ns))
        return min(ts), max(ts)


def ledger_segments(
    events: list[Event], carrier: tuple[int, int] | None = None
) -> tuple[list[SegmentSlice], int | None, str | None]:
    """(segments on the time axis, voice-to-voice, problem) from the analysis ledger;
    ``carrier``: (the first reply chunk's ``queued_ns``, the carrier's fixed delay ns) of a
    turn heard through a phone carrier (its ``carrier_buffer`` and ``fixed_delay``)."""
    try:
        from voiceaudit.analysis.ledger import build_ledger, with_carrier
    except ImportError:  # pragma: no cover - the analysis package is part of voiceaudit
        return [], None, "ledger unavailable"
    led = build_ledger(events)
    if carrier is not None:
        led = with_carrier(led, *carrier)
    t0 = led.t0_ns
    if led.voice_to_voice_ns is None or t0 is None:
        return [], None, led.problem
    out = []
    t = t0
    for seg in led.segments:
        out.append(SegmentSlice(seg.name, t, t + seg.ns, seg.start, seg.end, tuple(seg.covers)))
        t += seg.ns
    return out, led.voice_to_voice_ns, None


def sessions_of(trace: Trace, *, ledger: bool = True) -> list[SessionView]:
    """The trace grouped by session (in order of first appearance) and turn."""
    views: dict[str, SessionView] = {}
    events: list[Event] = []
    #: (session, turn) -> (play time, queued_ns) of the earliest chunk said to be queued
    queued: dict[tuple[str, int | None], tuple[int, int]] = {}
    for ev in trace.events:
        # Batched events (trace schema 2) are exported as the per-chunk events they hold.
        if ev.name in BATCHED:
            events += unbatch(ev)
            q = ev.attrs.get("queued_ns")
            dt = ev.attrs.get("dt_ns")
            if ev.name == "reply.chunks" and type(q) is list and type(dt) is list:
                for d, v in zip(dt, q, strict=False):
                    if type(v) is int and type(d) is int and v >= 0:
                        key = (ev.session, ev.turn)
                        old = queued.get(key)
                        if old is None or ev.t_ns + d < old[0]:
                            queued[key] = (ev.t_ns + d, v)
        else:
            events.append(ev)
    for ev in events:
        sv = views.setdefault(ev.session, SessionView(ev.session))
        if ev.turn is None:
            sv.events.append(ev)
        else:
            tv = sv.turns.setdefault(ev.turn, TurnView(ev.session, ev.turn))
            tv.events.append(ev)
    for sp in trace.spans:
        sv = views.setdefault(sp.session, SessionView(sp.session))
        if sp.turn is None:
            sv.spans.append(sp)
        else:
            sv.turns.setdefault(sp.turn, TurnView(sp.session, sp.turn)).spans.append(sp)
    for sv in views.values():
        fixed = _fixed_delay_ns(sv)
        for tv in sv.turns.values():
            q = queued.get((tv.session, tv.turn))
            tv.first_queued_ns = None if q is None else q[1]
            _fill(tv, ledger, fixed)
    return list(views.values())


def _fixed_delay_ns(sv: SessionView) -> int:
    """The session's carrier fixed delay (``carrier.start``'s ``fixed_delay_ms``; 0)."""
    for ev in [*sv.events, *(e for t in sv.turns.values() for e in t.events)]:
        if ev.name == "carrier.start":
            v = ev.attrs.get("fixed_delay_ms")
            if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
                return round(v * 1e6)
            return 0
    return 0


def _fill(tv: TurnView, ledger: bool, fixed_ns: int = 0) -> None:
    start = tv.first("turn.start")
    end = tv.first("turn.end")
    if start is not None:
        tv.start_ns = start.t_ns
        tv.warmup = bool(start.attrs.get("warmup", False))
        audio = start.attrs.get("audio")
        tv.audio = audio if isinstance(audio, str) else None
    if end is not None:
        tv.end_ns = end.t_ns
        tv.ok = bool(end.attrs.get("ok", False))
        reason = end.attrs.get("reason")
        tv.reason = reason if isinstance(reason, str) else None
        tv.warmup = tv.warmup or bool(end.attrs.get("warmup", False))
    se = tv.first("input.speech_end")
    au = tv.first("reply.audible")
    tv.speech_end_ns = None if se is None else se.t_ns
    tv.audible_ns = None if au is None else au.t_ns
    if ledger and tv.ok:
        carrier = None if tv.first_queued_ns is None else (tv.first_queued_ns, fixed_ns)
        tv.segments, tv.voice_to_voice_ns, tv.ledger_problem = ledger_segments(tv.events, carrier)
    if tv.voice_to_voice_ns is None and tv.ok and end is not None:
        v = end.attrs.get("voice_to_voice_ns")
        if isinstance(v, int) and not isinstance(v, bool):
            tv.voice_to_voice_ns = v


def scalar_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as values every exporter can carry (nested values as JSON text)."""
    import json

    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, str | bool | int | float):
            out[k] = v
        elif isinstance(v, list) and all(isinstance(x, str | bool | int | float) for x in v):
            out[k] = list(v)
        else:
            out[k] = json.dumps(v, separators=(",", ":"), default=str)
    return out
