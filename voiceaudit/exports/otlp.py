"""OpenTelemetry OTLP/JSON (``TracesData``): ship voiceaudit's results to any tracing backend.

One OpenTelemetry trace per session: a ``voiceaudit.session`` root span, a
``voiceaudit.turn`` span per turn, and under each turn one span per latency-ledger
segment (``voiceaudit.segment``, named after the segment) plus the spans sources reported
(imported framework telemetry, under their own names). Marks are span events on their
turn (or session) span. Every attribute is in the ``voiceaudit.*`` namespace.

Encoding follows the OTLP/JSON rules: lower-camel-case field names, trace and span ids
as lower-case hex (not base64), 64-bit integers as decimal strings, enums as integers.
Times are Unix nanoseconds: the trace's monotonic times mapped through its anchors. Ids
are derived from the run id, so exporting a trace twice gives the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from voiceaudit import __version__
from voiceaudit.clock import ClockMap
from voiceaudit.exports.common import BULK, SessionView, TurnView, scalar_attrs, sessions_of
from voiceaudit.model import Event, Span
from voiceaudit.trace_io import Trace

SPAN_KIND_INTERNAL = 1
STATUS_OK = 1
STATUS_ERROR = 2


def _id(n_bytes: int, *parts: object) -> str:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return h[:n_bytes].hex()


def any_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [any_value(x) for x in v]}}
    return {"stringValue": str(v)}


def attributes(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in d.items() if v is not None]


class _Exporter:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.map: ClockMap = trace.clock_map()
        self.run = trace.header.run_id
        self.spans: list[dict[str, Any]] = []

    def wall(self, mono: int) -> str:
        return str(self.map.mono_to_wall(mono))

    def span(
        self,
        trace_id: str,
        span_id: str,
        parent: str | None,
        name: str,
        start: int,
        end: int,
        attrs: dict[str, Any],
        events: Sequence[Event] = (),
        error: str | None = None,
    ) -> None:
        d: dict[str, Any] = {
            "traceId": trace_id,
            "spanId": span_id,
            "name": name,
            "kind": SPAN_KIND_INTERNAL,
            "startTimeUnixNano": self.wall(start),
            "endTimeUnixNano": self.wall(max(start, end)),
            "attributes": attributes(attrs),
        }
        if parent is not None:
            d["parentSpanId"] = parent
        if events:
            d["events"] = [
                {
                    "timeUnixNano": self.wall(e.t_ns),
                    "name": e.name,
                    "attributes": attributes(
                        {
                            "voiceaudit.source": e.source,
                            "voiceaudit.stage": e.stage,
                            **{f"voiceaudit.attr.{k}": v for k, v in scalar_attrs(e.attrs).items()},
                        }
                    ),
                }
                for e in sorted(events, key=lambda e: e.t_ns)
                if e.name not in BULK
            ]
        d["status"] = {"code": STATUS_ERROR, "message": error} if error else {}
        self.spans.append(d)

    def source_span(self, trace_id: str, parent: str, sp: Span) -> None:
        self.span(
            trace_id,
            _id(8, self.run, "span", sp.session, sp.turn, sp.name, sp.start_ns, sp.end_ns),
            parent,
            sp.name,
            sp.start_ns,
            sp.end_ns,
            {
                "voiceaudit.source": sp.source,
                "voiceaudit.stage": sp.stage,
                "voiceaudit.session": sp.session,
                "voiceaudit.turn": sp.turn,
                **{f"voiceaudit.attr.{k}": v for k, v in scalar_attrs(sp.attrs).items()},
            },
        )

    def session(self, sv: SessionView) -> None:
        trace_id = _id(16, self.run, "session", sv.session)
        root = _id(8, self.run, "session", sv.session)
        lo, hi = sv.extent
        ok = [t for t in sv.turns.values() if t.ok]
        self.span(
            trace_id,
            root,
            None,
            "voiceaudit.session",
            lo,
            hi,
            {
                "voiceaudit.run_id": self.run,
                "voiceaudit.session": sv.session,
                "voiceaudit.turns": len(sv.turns),
                "voiceaudit.turns_ok": len(ok),
            },
            sv.events,
        )
        for sp in sv.spans:
            self.source_span(trace_id, root, sp)
        for tv in sorted(sv.turns.values(), key=lambda t: t.turn):
            self.turn(trace_id, root, tv)

    def turn(self, trace_id: str, parent: str, tv: TurnView) -> None:
        sid = _id(8, self.run, "turn", tv.session, tv.turn)
        lo, hi = tv.extent
        attrs: dict[str, Any] = {
            "voiceaudit.run_id": self.run,
            "voiceaudit.session": tv.session,
            "voiceaudit.turn": tv.turn,
            "voiceaudit.ok": tv.ok,
            "voiceaudit.warmup": tv.warmup,
            "voiceaudit.audio": tv.audio,
            "voiceaudit.voice_to_voice_ns": tv.voice_to_voice_ns,
            "voiceaudit.voice_to_voice_ms": (
                None if tv.voice_to_voice_ns is None else round(tv.voice_to_voice_ns / 1e6, 3)
            ),
            "voiceaudit.failure_reason": tv.reason,
            "voiceaudit.ledger_problem": tv.ledger_problem,
        }
        error = tv.reason if tv.ok is False else None
        self.span(trace_id, sid, parent, "voiceaudit.turn", lo, hi, attrs, tv.events, error)
        for seg in tv.segments:
            self.span(
                trace_id,
                _id(8, self.run, "segment", tv.session, tv.turn, seg.name, seg.start_ns),
                sid,
                seg.name,
                seg.start_ns,
                seg.end_ns,
                {
                    "voiceaudit.segment": seg.name,
                    "voiceaudit.segment.ns": seg.end_ns - seg.start_ns,
                    "voiceaudit.segment.from": seg.start_mark,
                    "voiceaudit.segment.to": seg.end_mark,
                    "voiceaudit.segment.covers": list(seg.covers) or None,
                    "voiceaudit.session": tv.session,
                    "voiceaudit.turn": tv.turn,
                },
            )
        for sp in tv.spans:
            self.source_span(trace_id, sid, sp)


def to_otlp(trace: Trace) -> dict[str, Any]:
    """The trace as an OTLP/JSON ``TracesData`` document."""
    ex = _Exporter(trace)
    for sv in sessions_of(trace):
        ex.session(sv)
    h = trace.header
    resource = {
        "service.name": "voiceaudit",
        "service.version": h.voiceaudit_version,
        "voiceaudit.run_id": h.run_id,
        "voiceaudit.schema": h.schema,
        "voiceaudit.target.protocol": h.target.get("protocol"),
        "voiceaudit.target.url": h.target.get("url"),
        "host.name": h.host.get("hostname"),
    }
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes(resource)},
                "scopeSpans": [
                    {
                        "scope": {"name": "voiceaudit", "version": __version__},
                        "spans": ex.spans,
                    }
                ],
            }
        ]
    }
