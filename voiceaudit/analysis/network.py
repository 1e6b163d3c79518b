"""The packet capture joined to the trace: what the wire adds to each turn.

Packet times are mapped onto the probe's monotonic clock through the trace's anchors
(:func:`voiceaudit.capture.align.to_probe_clock`). Per finished turn:

- ``wire_to_app``: the first reply audio leaving the server on the wire (the frame that
  carried the probe's first reply audio, on the server's leg of an impairment proxy; a
  Realtime audio delta, a binary WebSocket frame, the first body byte of a speech HTTP
  response) to the probe's own ``reply.first_byte``: the downlink and what the probe's
  host adds before its socket. ``voiceaudit report --pcap`` puts the wire time into the
  ledger as the ``reply.on_wire`` mark, which ends ``first_audio`` and starts
  ``transport``, and places every pipeline mark whose frame it finds at that frame's
  departure (:func:`frame_departures`), so the server's marks and ``reply.on_wire`` are
  on one axis and ``transport`` equals ``wire_to_app``. A cascade reads its own
  ``tts.first_byte`` after those bytes crossed the wire, so there the mark gives way (off
  the path) and the split stays the client's. WebRTC media is a continuous RTP stream
  (silence between replies): which packet carries the first reply audio is not visible
  without decoding it, so WebRTC turns get no wire mark.
- small-write stalls (Nagle + delayed ACK) and TCP retransmissions inside the turn, with
  the time they held data back: evidence for the ``small_write_stall`` and
  ``retransmission`` findings. A stall whose sender is the probe's own end of a
  connection that the trace says has Nagle off (``session.connected``'s ``local`` with
  ``tcp_nodelay``) cannot be one: on the wire it is a caller that wrote late just after a
  late ACK (starved of CPU), so it is counted apart (``small_write_stalls_ruled_out``),
  not as a stall;
- connections set up inside the turn (TCP connect, TLS handshake): ``connection_setup``.

WebRTC media (RTP) is reported per stream instead; its reply is a continuous stream. Where
the trace names the probe's ICE endpoints (``session.connected`` with ``transport: "udp"``),
only the streams to or from them are the run's: others in the capture are left out, with
a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceaudit.analysis.ledger import TurnWire
from voiceaudit.clock import NS_PER_MS
from voiceaudit.trace_io import Trace

if TYPE_CHECKING:
    from voiceaudit.capture.model import NetReport, WebSocketFrame
    from voiceaudit.capture.tcp import StallParams

_AUDIO_EVENTS = ("response.output_audio.delta", "response.audio.delta")
#: the probe's read of a frame, against the capture's time of it on the probe's own leg:
#: the clock mapping's slack
_SLACK_NS = NS_PER_MS
#: stands for "a reply audio frame" among the received messages matched to frames
_AUDIO = "\0audio"


@dataclass(frozen=True)
class TurnNetwork:
    session: str
    turn: int
    wire_ns: int | None
    app_ns: int | None
    stalls: int
    stall_held_ns: int
    retransmissions: int
    connects: tuple[dict[str, Any], ...]
    #: the retransmissions' delays after their originals (where the capture has those)
    retransmit_delay_ns: int = 0
    #: stall candidates of the probe's own Nagle-off sockets: not stalls
    stalls_ruled_out: int = 0
    #: (mark name, arrival t_ns, departure t_ns) of each pipeline mark of the turn whose
    #: WebSocket frame was found: when that frame left the server (see
    #: :func:`join_capture`)
    departures: tuple[tuple[str, int, int], ...] = ()

    @property
    def wire_to_app_ns(self) -> int | None:
        if self.wire_ns is None or self.app_ns is None:
            return None
        return self.app_ns - self.wire_ns

    def to_dict(self) -> dict[str, Any]:
        w2a = self.wire_to_app_ns
        return {
            "session": self.session,
            "turn": self.turn,
            "wire_to_app_ms": None if w2a is None else round(w2a / NS_PER_MS, 3),
            "small_write_stalls": self.stalls,
            "small_write_stall_ms": round(self.stall_held_ns / NS_PER_MS, 3),
            "small_write_stalls_ruled_out": self.stalls_ruled_out,
            "retransmissions": self.retransmissions,
            "retransmit_delay_ms": round(self.retransmit_delay_ns / NS_PER_MS, 3),
            "connections_in_turn": list(self.connects),
        }


@dataclass(frozen=True)
class NetworkJoin:
    capture: str
    turns: tuple[TurnNetwork, ...]
    rtp_streams: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = field(default=())

    def findings(self) -> list[dict[str, Any]]:
        """Network findings with their evidence from packets, one per turn and kind."""
        out: list[dict[str, Any]] = []
        for t in self.turns:
            where = {"session": t.session, "turn": t.turn}
            if t.stalls:
                out.append(
                    {
                        "kind": "small_write_stall",
                        **where,
                        "ms": round(t.stall_held_ns / NS_PER_MS, 3),
                        "evidence": f"{t.stalls} segment(s) held back until the peer's ACK "
                        "(Nagle + delayed ACK)",
                    }
                )
            if t.retransmissions:
                out.append(
                    {
                        "kind": "retransmission",
                        **where,
                        # at most this: a lost segment holds the byte stream until it is
                        # resent; a spurious one (a tail-loss probe) held nothing
                        "ms": round(t.retransmit_delay_ns / NS_PER_MS, 3),
                        "evidence": f"{t.retransmissions} TCP retransmission(s) in the turn, "
                        "each resent after its original by "
                        f"{t.retransmit_delay_ns / NS_PER_MS:.1f} ms in all (the most they "
                        "held the stream)",
                    }
                )
            for c in t.connects:
                out.append(
                    {
                        "kind": "connection_setup",
                        **where,
                        "ms": c["connect_ms"],
                        "evidence": f"TCP connection to {c['server']} set up inside the turn",
                    }
                )
        return out

    def wire_marks(self) -> dict[tuple[str, int], TurnWire]:
        """(session, turn) -> what the capture says of the turn's marks (probe clock): when
        its first reply audio left the server, for the ledger's ``reply.on_wire`` cut, and
        when the frame carrying each of its pipeline marks did (see :func:`join_capture`)."""
        return {
            (t.session, t.turn): TurnWire(t.wire_ns, {(n, a): d for n, a, d in t.departures})
            for t in self.turns
            if t.wire_ns is not None or t.departures
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "turns": [t.to_dict() for t in self.turns],
            "findings": self.findings(),
            "rtp_streams": list(self.rtp_streams),
            "warnings": list(self.warnings),
        }

    def render_text(self) -> str:
        lines = [f"capture: {self.capture}"]
        lines.append(
            f"{'session':<10} {'turn':>4} {'wire→app ms':>12} {'stalls':>6} {'stall ms':>9} "
            f"{'retrans':>7}  connections set up in the turn"
        )
        for t in self.turns:
            w2a = t.wire_to_app_ns
            conns = (
                ", ".join(f"{c['server']} connect {c['connect_ms']} ms" for c in t.connects) or "-"
            )
            lines.append(
                f"{t.session:<10} {t.turn:>4} "
                f"{'-' if w2a is None else f'{w2a / NS_PER_MS:.3f}':>12} {t.stalls:>6} "
                f"{t.stall_held_ns / NS_PER_MS:>9.1f} {t.retransmissions:>7}  {conns}"
            )
        for f in self.findings():
            cost = "" if f["ms"] is None else f": {f['ms']} ms"
            lines.append(
                f"finding {f['kind']} {f['session']} turn {f['turn']}{cost} — {f['evidence']}"
            )
        for s in self.rtp_streams:
            lines.append(
                f"RTP {s['ssrc']} {s['src']} → {s['dst']}: {s['packets']} packets, "
                f"lost {s['lost']}, jitter mean {s['mean_jitter_ms']} ms"
            )
        ruled_out = sum(t.stalls_ruled_out for t in self.turns)
        if ruled_out:
            lines.append(
                f"not counted: {ruled_out} stall-like pause(s) of the probe's own sockets, "
                "which have Nagle off (TCP_NODELAY): the probe wrote late (busy machine)"
            )
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines) + "\n"


def probe_nodelay_endpoints(trace: Trace) -> frozenset[str]:
    """The probe's ends (``host:port``) of connections it opened with Nagle's algorithm off,
    from ``session.connected`` (traces from before it carried them have none)."""
    return frozenset(
        str(e.attrs["local"])
        for e in _connected(trace)
        if e.attrs.get("tcp_nodelay") is True and e.attrs.get("local")
    )


def probe_endpoints(trace: Trace, transport: str) -> frozenset[str]:
    """The probe's ends of its sessions' ``transport`` (``"udp"``: WebRTC's ICE pair)
    connections, from ``session.connected``."""
    return frozenset(
        str(e.attrs["local"])
        for e in _connected(trace)
        if e.attrs.get("transport") == transport and e.attrs.get("local")
    )


def _connected(trace: Trace) -> list[Any]:
    return [e for e in trace.events if e.source == "probe" and e.name == "session.connected"]


def join_capture(
    trace: Trace,
    pcap: str | Path,
    *,
    keylog: str | Path | None = None,
    stall: StallParams | None = None,
) -> NetworkJoin:
    """``stall``: the small-write stall detector's thresholds (its defaults if None)."""
    from voiceaudit.capture import analyze_capture
    from voiceaudit.capture.align import to_probe_clock

    pcap = Path(pcap)
    if keylog is None:
        default = pcap.parent / "tls-keys.log"
        keylog = default if default.is_file() else None
    raw = analyze_capture(pcap, heuristic_rtp=True, count_marked=True, keylog=keylog, stall=stall)
    report = to_probe_clock(raw, trace.anchors)
    legs, leg_warning = proxy_legs(trace)
    departed, first_audio = frame_departures(trace, report, legs)

    server_frames: list[tuple[int, int, str | None]] = []  # (first byte at, opcode, event)
    for w in report.websocket_sessions:
        for f in w.frames:
            if not f.from_client and f.opcode in (0, 1, 2):
                server_frames.append((f.start_at_ns, f.opcode, f.event))
    has_audio_events = any(ev in _AUDIO_EVENTS for _, _, ev in server_frames)
    audio_wire = [
        t for t, op, ev in server_frames if ((ev in _AUDIO_EVENTS) if has_audio_events else op == 2)
    ]
    for x in report.http_exchanges:
        if x.target and "/audio/speech" in x.target:
            t = x.first_data_at_ns if x.first_data_at_ns is not None else x.response_at_ns
            if t is not None:
                audio_wire.append(t)
    audio_wire.sort()

    by_turn: dict[tuple[str, int], dict[str, Any]] = {}
    for e in trace.events:
        if e.turn is None or e.source != "probe":
            continue
        d = by_turn.setdefault((e.session, e.turn), {})
        if e.name in ("input.speech_end", "reply.first_byte", "turn.start", "turn.end"):
            d.setdefault(e.name, e.t_ns)

    nodelay = probe_nodelay_endpoints(trace)
    out = []
    for (session, turn), d in sorted(by_turn.items()):
        if "turn.end" not in d or "turn.start" not in d:
            continue
        start, end = d["turn.start"], d["turn.end"]
        speech_end = d.get("input.speech_end", start)
        app = d.get("reply.first_byte")
        wire = first_audio.get((session, turn))
        if wire is None and app is not None:
            # no frame matched to the probe's read (a trace that does not name the probe's
            # end of its connection, or an HTTP reply):
            # the first reply audio on the wire after speech end, and not after the probe
            # saw it (1 ms slack for the clock mapping)
            cands = [t for t in audio_wire if speech_end <= t <= app + NS_PER_MS]
            wire = cands[0] if cands else None
        if wire is not None and app is not None:
            # The probe cannot get bytes before they crossed the wire: a wire time after
            # its arrival (within the 1 ms slack) is the clock mapping's error, so it
            # counts as the arrival and wire-to-app is never negative.
            wire = min(wire, app)
        stalls = held = retrans = rdelay = ruled_out = 0
        connects = []
        for c in report.tcp_connections:
            for s in c.small_write_stalls:
                if not start <= s.released_at_ns <= end:
                    continue
                if s.sender in nodelay:
                    ruled_out += 1
                else:
                    stalls += 1
                    held += s.held_ns
            for ev in c.events:
                if ev.kind == "retransmission" and start <= ev.at_ns <= end:
                    retrans += 1
                    rdelay += ev.delay_ns or 0
            if c.established_at_ns is not None and speech_end <= c.established_at_ns <= end:
                connects.append(
                    {
                        "server": c.server,
                        "connect_ms": None
                        if c.connect_ns is None
                        else round(c.connect_ns / NS_PER_MS, 3),
                    }
                )
        out.append(
            TurnNetwork(
                session,
                turn,
                wire,
                app,
                stalls,
                held,
                retrans,
                tuple(connects),
                rdelay,
                ruled_out,
                tuple(departed.get((session, turn), ())),
            )
        )
    # RTP of the run's own media only, where the trace names the probe's ICE endpoints: a
    # loopback capture also holds any other WebRTC session on the host
    media = probe_endpoints(trace, "udp")
    streams = [s for s in report.rtp_streams if not media or s.src in media or s.dst in media]
    warnings = list(report.warnings)
    if leg_warning is not None:
        warnings.append(leg_warning)
    if len(streams) < len(report.rtp_streams):
        warnings.append(
            f"{len(report.rtp_streams) - len(streams)} RTP stream(s) of other endpoints in the "
            "capture left out (not this run's media)"
        )
    rtp = tuple(
        {
            "ssrc": s.ssrc_hex,
            "src": s.src,
            "dst": s.dst,
            "packets": s.packets,
            "lost": s.lost,
            "mean_jitter_ms": None if s.mean_jitter_ms is None else round(s.mean_jitter_ms, 3),
            "max_jitter_ms": None if s.max_jitter_ms is None else round(s.max_jitter_ms, 3),
        }
        for s in streams
    )
    return NetworkJoin(str(pcap), tuple(out), rtp, tuple(warnings))


Departures = dict[tuple[str, int], list[tuple[str, int, int]]]


def proxy_legs(trace: Trace) -> tuple[dict[str, str], str | None]:
    """(the probe's end of each connection through ``--impair``'s proxy -> the client end
    of the proxy's own connection to the target, from the impairment record next to the
    trace; a warning when the trace says it ran through the proxy and the record cannot
    be read)."""
    if not isinstance(trace.header.config.get("impairment"), dict):
        return {}, None
    from voiceaudit.errors import InputError
    from voiceaudit.impair import RECORD_NAME, read_record

    path = Path(trace.path).parent / RECORD_NAME
    try:
        recs = read_record(path)
    except InputError as exc:
        return {}, f"{exc.message}: the proxy's two legs are paired by their frames instead"
    legs = {
        str(r["client"]): str(r["upstream"])
        for r in recs
        if r.get("record") == "flow" and r.get("kind") == "tcp" and r.get("upstream")
    }
    return legs, None


def frame_departures(
    trace: Trace, report: NetReport, legs: Mapping[str, str] | None = None
) -> tuple[Departures, dict[tuple[str, int], int]]:
    """Where each message the probe read left the server, from a capture on the probe's
    clock: ((session, turn) -> [(mark name, arrival, departure)] of its pipeline marks
    that name their protocol event (``attrs.raw``), (session, turn) -> departure of the
    frame carrying its first reply audio (the probe's ``reply.first_byte``)).

    The probe's own connections are the WebSocket sessions whose client end a
    ``session.connected`` names (a trace that names none gets nothing). The messages the
    probe read on a session are matched to the server's data frames in order: each to the
    next frame of its type that the capture saw no later than the probe read it (1 ms
    slack for the clock mapping), and after the turn began. A frame's departure is its
    time on the server's leg when the capture also holds one: the impairment proxy's
    connection to the target that ``legs`` names (:func:`proxy_legs`), else a connection
    whose server sent the same frames (type, length) no later (each used once); else its
    time on the probe's own leg (a server on another host: when the frame reached this
    one).
    """
    import bisect

    owner: dict[str, str] = {}
    for e in _connected(trace):
        local = e.attrs.get("local")
        if isinstance(local, str) and e.attrs.get("transport") != "udp":
            owner[local] = e.session
    if not owner:
        return {}, {}

    def data(frames: Sequence[WebSocketFrame]) -> list[WebSocketFrame]:
        return [f for f in frames if not f.from_client and f.opcode in (1, 2)]

    named = {} if legs is None else legs
    by_client: dict[str, list[WebSocketFrame]] = {}
    others: dict[tuple[tuple[int, int, str | None], ...], list[list[WebSocketFrame]]] = {}
    for w in report.websocket_sessions:
        if w.client not in owner:
            fr = data(w.frames)
            by_client[w.client] = fr
            if fr:
                others.setdefault(_signature(fr), []).append(fr)
    # per session: (time on the probe's leg, opcode, event, departure) of each frame
    frames: dict[str, list[tuple[int, int, str | None, int]]] = {}
    for w in report.websocket_sessions:
        session = owner.get(w.client)
        fr = data(w.frames) if session is not None else []
        if session is None or not fr:
            continue
        if w.client in named:
            up = _upstream(fr, [by_client.get(named[w.client], [])])
        else:
            up = _upstream(fr, others.get(_signature(fr), ()))
            if up is not None:  # one probe connection per proxy leg
                same = others[_signature(fr)]
                same[:] = [x for x in same if x is not up]
        out = frames.setdefault(session, [])
        for k, f in enumerate(fr):
            dep = f.start_at_ns
            if up is not None and k < len(up):
                dep = min(dep, up[k].start_at_ns)
            out.append((f.start_at_ns, f.opcode, f.event, dep))

    starts: dict[tuple[str, int], int] = {}
    # per session: (arrival, file order, event type or _AUDIO, mark name, turn)
    read: dict[str, list[tuple[int, int, str, str, int]]] = {}
    for i, e in enumerate(trace.events):
        if e.turn is None or e.session not in frames:
            continue
        if e.source == "probe":
            if e.name == "turn.start":
                starts.setdefault((e.session, e.turn), e.t_ns)
            elif e.name == "reply.first_byte":
                read.setdefault(e.session, []).append((e.t_ns, i, _AUDIO, e.name, e.turn))
        elif e.source == "pipeline":
            kind = e.attrs.get("raw")
            if isinstance(kind, str):
                read.setdefault(e.session, []).append((e.t_ns, i, kind, e.name, e.turn))

    departed: Departures = {}
    first_audio: dict[tuple[str, int], int] = {}
    for session, msgs in read.items():
        seen = sorted(frames[session], key=lambda f: f[0])
        times = [f[0] for f in seen]
        audio_events = any(f[2] in _AUDIO_EVENTS for f in seen)
        j = 0
        for t, _, kind, name, turn in sorted(msgs):
            begun = starts.get((session, turn))
            k = j if begun is None else max(j, bisect.bisect_left(times, begun))
            while k < len(seen) and seen[k][0] <= t + _SLACK_NS:
                _, op, ev, dep = seen[k]
                if kind == _AUDIO:
                    hit = ev in _AUDIO_EVENTS if audio_events else op == 2
                else:
                    hit = ev == kind
                if hit:
                    if kind == _AUDIO:
                        first_audio.setdefault((session, turn), dep)
                    else:
                        departed.setdefault((session, turn), []).append((name, t, dep))
                    j = k + 1
                    break
                k += 1
    return departed, first_audio


def _signature(frames: Sequence[WebSocketFrame]) -> tuple[tuple[int, int, str | None], ...]:
    """What identifies a connection's server frames on either leg of a proxy."""
    return tuple((f.opcode, f.payload_len, f.event) for f in frames[:8])


def _upstream(
    frames: list[WebSocketFrame], legs: Sequence[list[WebSocketFrame]]
) -> list[WebSocketFrame] | None:
    """Of the other connections with the same first frames, the one whose server sent
    every frame they share no later than ``frames`` saw it and earliest (a proxy's
    upstream leg; with proxies in a chain, the first); ``None`` when there is none."""
    best: list[WebSocketFrame] | None = None
    for leg in legs:
        n = min(len(leg), len(frames))
        if (
            n
            and all(
                (a.opcode, a.payload_len, a.event) == (b.opcode, b.payload_len, b.event)
                and a.start_at_ns <= b.start_at_ns + _SLACK_NS
                for a, b in zip(leg[:n], frames[:n], strict=True)
            )
            and (best is None or leg[0].start_at_ns < best[0].start_at_ns)
        ):
            best = leg
    return best
