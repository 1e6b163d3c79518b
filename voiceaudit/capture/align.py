"""Put a capture's packet times on the probe's clock, and turn a report into trace events.

Packet timestamps are wall-clock time (the kernel's CLOCK_REALTIME when the packet was
captured); the probe's marks are ``time.monotonic_ns()``. The clock anchors recorded around
the capture (:class:`voiceaudit.capture.dumpcap.DumpcapResult.anchors`, or a trace
header's anchors) give a :class:`~voiceaudit.clock.ClockMap` between the two.

- :func:`to_probe_clock` returns a copy of a :class:`NetReport` whose every absolute time
  (every field named ``at_ns`` or ending in ``_at_ns``) is on the monotonic clock.
  Durations do not change.
- :func:`network_events` flattens a report into :class:`voiceaudit.model.Event` records
  (``source="network"``, ``turn=None``): the wire marks the latency ledger joins to turns
  (first reply byte on the wire, connection setup, stalls, retransmissions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from voiceaudit.capture.model import NetReport
from voiceaudit.clock import Anchor, ClockMap
from voiceaudit.model import Event

T = TypeVar("T")


def _map_obj(obj: T, cm: ClockMap) -> T:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name == "at_ns" or f.name.endswith("_at_ns"):
            if isinstance(v, int):
                changes[f.name] = cm.wall_to_mono(v)
        elif isinstance(v, tuple) and v and dataclasses.is_dataclass(v[0]):
            changes[f.name] = tuple(_map_obj(x, cm) for x in v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            changes[f.name] = _map_obj(v, cm)
    return dataclasses.replace(obj, **changes) if changes else obj  # type: ignore[type-var,unused-ignore]


def _attrs(obj: object, *names: str) -> dict[str, Any]:
    """``{name: obj.name}`` for each of ``names``, in that order (an event's attributes)."""
    return {name: getattr(obj, name) for name in names}


def clock_map(anchors: Sequence[Anchor] | ClockMap) -> ClockMap:
    return anchors if isinstance(anchors, ClockMap) else ClockMap(tuple(anchors))


def to_probe_clock(report: NetReport, anchors: Sequence[Anchor] | ClockMap) -> NetReport:
    """The same report with every absolute time mapped wall clock -> probe monotonic clock."""
    if report.clock == "monotonic":
        return report
    cm = clock_map(anchors)
    mapped = _map_obj(report, cm)
    first = report.first_at_ns
    last = report.last_at_ns
    return dataclasses.replace(
        mapped,
        clock="monotonic",
        first_at_ns=None if first is None else cm.wall_to_mono(first),
        last_at_ns=None if last is None else cm.wall_to_mono(last),
    )


def network_events(report: NetReport, *, session: str = "network") -> list[Event]:
    """Wire marks of a report as trace events, in time order.

    Times are the report's (map it with :func:`to_probe_clock` first to join a trace).
    Event names: ``tcp.syn``, ``tcp.established``, ``tcp.retransmission``,
    ``tcp.zero_window``, ``tcp.small_write_stall``, ``tls.client_hello``, ``tls.done``,
    ``http.request``, ``http.first_byte``, ``http.first_data``, ``http.end``,
    ``ws.upgrade_request``, ``ws.upgraded``, ``ws.frame``, ``rtp.first_packet``,
    ``rtp.last_packet``, ``stun.request``, ``stun.response``.
    """
    ev: list[Event] = []

    def add(t: int | None, name: str, **attrs: Any) -> None:
        if t is not None:
            ev.append(Event(session, None, t, "network", "transport", name, attrs))

    for c in report.tcp_connections:
        conn = _attrs(c, "client", "server")
        add(c.syn_at_ns, "tcp.syn", **conn)
        add(c.established_at_ns, "tcp.established", connect_ns=c.connect_ns, **conn)
        for e in c.events:
            add(e.at_ns, f"tcp.{e.kind}", **_attrs(e, "sender", "length", "delay_ns"), **conn)
        for s in c.small_write_stalls:
            stall = _attrs(s, "sender", "held_ns", "ack_delay_ns", "first_unacked_at_ns", "length")
            add(s.released_at_ns, "tcp.small_write_stall", **stall, **conn)
    for h in report.tls_handshakes:
        conn = _attrs(h, "client", "server", "transport")
        add(h.client_hello_at_ns, "tls.client_hello", **conn)
        add(h.done_at_ns, "tls.done", handshake_ns=h.handshake_ns, **conn)
    for x in report.http_exchanges:
        conn = _attrs(x, "client", "server", "method", "target", "stream_id")
        add(x.request_at_ns, "http.request", **conn)
        add(x.response_at_ns, "http.first_byte", status=x.status, **conn)
        add(x.first_data_at_ns, "http.first_data", **conn)
        add(x.response_end_at_ns, "http.end", body_bytes=x.body_bytes, **conn)
    for w in report.websocket_sessions:
        conn = _attrs(w, "client", "server")
        add(w.upgrade_request_at_ns, "ws.upgrade_request", **conn)
        add(w.upgrade_response_at_ns, "ws.upgraded", upgrade_ns=w.upgrade_ns, **conn)
        for f in w.frames:
            frame = _attrs(f, "from_client", "opcode", "payload_len", "event")
            add(f.at_ns, "ws.frame", **frame, first_at_ns=f.start_at_ns, **conn)
    for rs in report.rtp_streams:
        st = {"src": rs.src, "dst": rs.dst, "ssrc": rs.ssrc_hex}
        add(rs.start_at_ns, "rtp.first_packet", **st)
        add(rs.end_at_ns, "rtp.last_packet", packets=rs.packets, **st)
    for t in report.stun_transactions:
        st = _attrs(t, "client", "server", "method")
        add(t.request_at_ns, "stun.request", **st)
        add(t.response_at_ns, "stun.response", rtt_ns=t.rtt_ns, **st)
    ev.sort(key=lambda e: e.t_ns)
    return ev


def first_reply_on_wire(
    report: NetReport,
    *,
    after_at_ns: int,
    server: str | None = None,
    events: Sequence[str] | None = None,
) -> int | None:
    """When the server's first application bytes at or after ``after_at_ns`` hit the wire.

    Looks at WebSocket data frames from the server (the segment carrying the frame's first
    byte; with ``events``, only JSON messages of those types, e.g.
    ``("response.output_audio.delta",)``) and HTTP response first bytes. With the probe's
    own time of first reply byte, ``probe_time - first_reply_on_wire(...)`` is the
    ``wire_to_app`` lag of the ledger's transport segment.
    """
    best: int | None = None
    for w in report.websocket_sessions:
        if server is not None and w.server != server:
            continue
        for f in w.frames:
            if f.from_client or f.opcode not in (0, 1, 2) or f.start_at_ns < after_at_ns:
                continue
            if events is not None and f.event not in events:
                continue
            if best is None or f.start_at_ns < best:
                best = f.start_at_ns
            break
    if events is None:
        for x in report.http_exchanges:
            if server is not None and x.server != server:
                continue
            t = x.response_at_ns
            if t is not None and t >= after_at_ns and (best is None or t < best):
                best = t
    return best
