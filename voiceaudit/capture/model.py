"""The results of a network-path analysis: frozen records, JSON in and out.

Naming: every absolute time is an integer number of nanoseconds in a field that ends in
``_at_ns`` (wall clock as captured, or the probe's monotonic clock once the report has
been mapped with :func:`voiceaudit.capture.align.to_probe_clock`); every duration ends in
``_ns``; ``None`` means "not seen". RTP figures are in milliseconds (floats), because that
is how Wireshark reports them and they are compared with Wireshark's figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

#: Version of the JSON layout ``voiceaudit net --format json`` writes.
NET_SCHEMA = "voiceaudit.net/1"


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 6)


def _round(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(v, nd)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of a set of durations (ns): exact count/min/max/mean, percentiles from a
    bounded, evenly thinned sample (exact while ``count`` <= ``sample_limit``)."""

    count: int
    min_ns: int | None
    max_ns: int | None
    mean_ns: float | None
    p50_ns: int | None
    p90_ns: int | None
    p99_ns: int | None
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "min_ms": _ms(self.min_ns),
            "p50_ms": _ms(self.p50_ns),
            "p90_ms": _ms(self.p90_ns),
            "p99_ms": _ms(self.p99_ns),
            "max_ms": _ms(self.max_ns),
            "mean_ms": None if self.mean_ns is None else round(self.mean_ns / 1e6, 6),
            "percentiles_exact": self.exact,
        }


EMPTY_DISTRIBUTION = Distribution(0, None, None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class RtpStream:
    """One RTP stream, keyed like Wireshark's: (src, dst, SSRC)."""

    ssrc: int
    src: str
    dst: str
    payload_type: int
    payload_types: tuple[int, ...]
    payload_names: tuple[str, ...]
    packets: int
    expected: int
    lost: int
    min_delta_ms: float | None
    mean_delta_ms: float | None
    max_delta_ms: float | None
    min_jitter_ms: float | None
    mean_jitter_ms: float | None
    max_jitter_ms: float | None
    max_skew_ms: float | None
    clock_rate: int | None
    sequence_errors: int
    problem: bool
    start_at_ns: int
    end_at_ns: int
    #: Wireshark's stream duration: first packet to the last packet in timestamp order.
    duration_ns: int
    first_frame: int
    max_delta_frame: int | None
    setup: str

    @property
    def ssrc_hex(self) -> str:
        return f"0x{self.ssrc:08X}"

    @property
    def lost_percent(self) -> float:
        return self.lost * 100.0 / self.expected if self.expected else 0.0

    def to_dict(self, origin_ns: int) -> dict[str, Any]:
        return {
            "ssrc": self.ssrc_hex,
            "src": self.src,
            "dst": self.dst,
            "payload_type": self.payload_type,
            "payload_types": list(self.payload_types),
            "payload_names": list(self.payload_names),
            "packets": self.packets,
            "expected": self.expected,
            "lost": self.lost,
            "lost_percent": round(self.lost_percent, 3),
            "min_delta_ms": _round(self.min_delta_ms),
            "mean_delta_ms": _round(self.mean_delta_ms),
            "max_delta_ms": _round(self.max_delta_ms),
            "min_jitter_ms": _round(self.min_jitter_ms),
            "mean_jitter_ms": _round(self.mean_jitter_ms),
            "max_jitter_ms": _round(self.max_jitter_ms),
            "max_skew_ms": _round(self.max_skew_ms),
            "clock_rate": self.clock_rate,
            "sequence_errors": self.sequence_errors,
            "problem": self.problem,
            "start_at_ns": self.start_at_ns,
            "end_at_ns": self.end_at_ns,
            "start_s": round((self.start_at_ns - origin_ns) / 1e9, 9),
            "end_s": round((self.end_at_ns - origin_ns) / 1e9, 9),
            "duration_ms": _ms(self.duration_ns),
            "first_frame": self.first_frame,
            "max_delta_frame": self.max_delta_frame,
            "setup": self.setup,
        }


@dataclass(frozen=True, slots=True)
class TcpEvent:
    """A moment in a TCP connection worth costing: a retransmission or a zero window.

    ``sender`` is the endpoint whose segment it is; ``delay_ns`` is, for a
    retransmission, the time since the original transmission (``None`` if the original
    was not in the capture), and for a zero window, how long the window stayed shut.
    """

    kind: str
    at_ns: int
    sender: str
    seq: int
    length: int
    delay_ns: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at_ns": self.at_ns,
            "sender": self.sender,
            "seq": self.seq,
            "length": self.length,
            "delay_ms": _ms(self.delay_ns),
        }


@dataclass(frozen=True, slots=True)
class SmallWriteStall:
    """A small segment held back until the peer's (delayed) ACK: Nagle + delayed ACK.

    The previous data segment left at ``first_unacked_at_ns``; the peer acknowledged it
    only at ``ack_at_ns``; this segment followed at ``released_at_ns``. ``held_ns`` is the
    longest the application's write can have waited in the kernel (from the previous
    segment to this one).
    """

    sender: str
    first_unacked_at_ns: int
    ack_at_ns: int
    released_at_ns: int
    held_ns: int
    ack_delay_ns: int
    length: int
    seq: int
    #: The releasing ACK rode on the peer's data rather than being a (delayed) pure ACK.
    ack_carried_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "ack_carried_data": self.ack_carried_data,
            "first_unacked_at_ns": self.first_unacked_at_ns,
            "ack_at_ns": self.ack_at_ns,
            "released_at_ns": self.released_at_ns,
            "held_ms": _ms(self.held_ns),
            "ack_delay_ms": _ms(self.ack_delay_ns),
            "length": self.length,
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class TcpConnection:
    client: str
    server: str
    first_at_ns: int
    last_at_ns: int
    syn_at_ns: int | None
    synack_at_ns: int | None
    established_at_ns: int | None
    #: SYN -> SYN/ACK -> ACK, from the first SYN (so a lost SYN's retry time counts).
    connect_ns: int | None
    syn_retransmits: int
    client_mss: int | None
    server_mss: int | None
    packets: int
    bytes_to_server: int
    bytes_to_client: int
    ack_rtt: Distribution
    retransmissions: int
    zero_windows: int
    events: tuple[TcpEvent, ...]
    small_write_stalls: tuple[SmallWriteStall, ...]
    protocol: str | None
    fin_at_ns: int | None
    rst_at_ns: int | None
    events_truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "protocol": self.protocol,
            "first_at_ns": self.first_at_ns,
            "last_at_ns": self.last_at_ns,
            "syn_at_ns": self.syn_at_ns,
            "synack_at_ns": self.synack_at_ns,
            "established_at_ns": self.established_at_ns,
            "connect_ms": _ms(self.connect_ns),
            "syn_retransmits": self.syn_retransmits,
            "client_mss": self.client_mss,
            "server_mss": self.server_mss,
            "packets": self.packets,
            "bytes_to_server": self.bytes_to_server,
            "bytes_to_client": self.bytes_to_client,
            "ack_rtt": self.ack_rtt.to_dict(),
            "retransmissions": self.retransmissions,
            "zero_windows": self.zero_windows,
            "small_write_stalls": [s.to_dict() for s in self.small_write_stalls],
            "events": [e.to_dict() for e in self.events],
            "events_truncated": self.events_truncated,
            "fin_at_ns": self.fin_at_ns,
            "rst_at_ns": self.rst_at_ns,
        }


@dataclass(frozen=True, slots=True)
class TlsHandshake:
    """A TLS (over TCP) or DTLS (over UDP) handshake, ClientHello to both Finished."""

    transport: str
    client: str
    server: str
    version: str | None
    sni: str | None
    alpn: tuple[str, ...]
    client_hello_at_ns: int
    server_hello_at_ns: int | None
    done_at_ns: int | None
    #: ClientHello -> ServerHello (one round trip plus the server's think time).
    server_hello_ns: int | None
    #: ClientHello -> the later of the two Finished messages (TLS 1.3: the client's).
    handshake_ns: int | None
    hello_retry: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "client": self.client,
            "server": self.server,
            "version": self.version,
            "sni": self.sni,
            "alpn": list(self.alpn),
            "client_hello_at_ns": self.client_hello_at_ns,
            "server_hello_at_ns": self.server_hello_at_ns,
            "done_at_ns": self.done_at_ns,
            "server_hello_ms": _ms(self.server_hello_ns),
            "handshake_ms": _ms(self.handshake_ns),
            "hello_retry": self.hello_retry,
        }


@dataclass(frozen=True, slots=True)
class HttpExchange:
    """One request and its response, timed on the wire."""

    client: str
    server: str
    protocol: str
    method: str | None
    target: str | None
    status: int | None
    stream_id: int | None
    content_type: str | None
    chunked: bool
    request_at_ns: int
    request_end_at_ns: int | None
    response_at_ns: int | None
    headers_at_ns: int | None
    first_data_at_ns: int | None
    response_end_at_ns: int | None
    body_bytes: int
    decrypted: bool = False

    def _since_request(self, at_ns: int | None) -> int | None:
        """Request sent (its last byte, else its first) -> ``at_ns``."""
        if at_ns is None:
            return None
        base = self.request_at_ns if self.request_end_at_ns is None else self.request_end_at_ns
        return at_ns - base

    @property
    def first_byte_ns(self) -> int | None:
        """Request sent (its last byte) -> first byte of the response."""
        return self._since_request(self.response_at_ns)

    @property
    def first_data_ns(self) -> int | None:
        """Request sent -> first byte of the response body."""
        return self._since_request(self.first_data_at_ns)

    @property
    def complete_ns(self) -> int | None:
        """Request sent -> last byte of the response (Wireshark's ``http.time``)."""
        return self._since_request(self.response_end_at_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "protocol": self.protocol,
            "decrypted": self.decrypted,
            "method": self.method,
            "target": self.target,
            "status": self.status,
            "stream_id": self.stream_id,
            "content_type": self.content_type,
            "chunked": self.chunked,
            "request_at_ns": self.request_at_ns,
            "request_end_at_ns": self.request_end_at_ns,
            "response_at_ns": self.response_at_ns,
            "headers_at_ns": self.headers_at_ns,
            "first_data_at_ns": self.first_data_at_ns,
            "response_end_at_ns": self.response_end_at_ns,
            "first_byte_ms": _ms(self.first_byte_ns),
            "first_data_ms": _ms(self.first_data_ns),
            "complete_ms": _ms(self.complete_ns),
            "body_bytes": self.body_bytes,
        }


@dataclass(frozen=True, slots=True)
class WebSocketFrame:
    """One WebSocket frame; ``at_ns`` is the segment that completed it."""

    at_ns: int
    start_at_ns: int
    from_client: bool
    opcode: int
    fin: bool
    rsv1: bool
    masked: bool
    payload_len: int
    #: The ``"type"`` of a JSON text message (e.g. ``response.output_audio.delta``).
    event: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_ns": self.at_ns,
            "start_at_ns": self.start_at_ns,
            "from_client": self.from_client,
            "opcode": self.opcode,
            "fin": self.fin,
            "rsv1": self.rsv1,
            "masked": self.masked,
            "payload_len": self.payload_len,
            "event": self.event,
        }


@dataclass(frozen=True, slots=True)
class WebSocketSession:
    client: str
    server: str
    target: str | None
    upgrade_request_at_ns: int
    upgrade_request_end_at_ns: int | None
    upgrade_response_at_ns: int | None
    #: Upgrade request sent -> 101 response (Wireshark's ``http.time`` of the 101).
    upgrade_ns: int | None
    compressed: bool
    frames_total: int
    frames: tuple[WebSocketFrame, ...]
    frames_truncated: bool
    opcodes_from_client: dict[int, int]
    opcodes_from_server: dict[int, int]
    bytes_from_client: int
    bytes_from_server: int
    first_server_data_at_ns: int | None
    close_at_ns: int | None
    lost_sync: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "target": self.target,
            "upgrade_request_at_ns": self.upgrade_request_at_ns,
            "upgrade_request_end_at_ns": self.upgrade_request_end_at_ns,
            "upgrade_response_at_ns": self.upgrade_response_at_ns,
            "upgrade_ms": _ms(self.upgrade_ns),
            "compressed": self.compressed,
            "frames_total": self.frames_total,
            "frames_truncated": self.frames_truncated,
            "opcodes_from_client": {str(k): v for k, v in sorted(self.opcodes_from_client.items())},
            "opcodes_from_server": {str(k): v for k, v in sorted(self.opcodes_from_server.items())},
            "bytes_from_client": self.bytes_from_client,
            "bytes_from_server": self.bytes_from_server,
            "first_server_data_at_ns": self.first_server_data_at_ns,
            "close_at_ns": self.close_at_ns,
            "lost_sync": self.lost_sync,
            "frames": [f.to_dict() for f in self.frames],
        }


@dataclass(frozen=True, slots=True)
class StunTransaction:
    client: str
    server: str
    method: str
    request_at_ns: int
    response_at_ns: int | None
    rtt_ns: int | None
    success: bool | None
    retransmits: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "method": self.method,
            "request_at_ns": self.request_at_ns,
            "response_at_ns": self.response_at_ns,
            "rtt_ms": _ms(self.rtt_ns),
            "success": self.success,
            "retransmits": self.retransmits,
        }


@dataclass(frozen=True, slots=True)
class NetReport:
    """Everything ``analyze_capture`` found in one capture."""

    path: str
    format: str
    packets: int
    first_at_ns: int | None
    last_at_ns: int | None
    link_types: tuple[int, ...]
    truncated: bool
    warnings: tuple[str, ...]
    heuristic_rtp: bool
    decode_as: tuple[str, ...]
    tshark: str | None
    rtp_streams: tuple[RtpStream, ...] = ()
    tcp_connections: tuple[TcpConnection, ...] = ()
    tls_handshakes: tuple[TlsHandshake, ...] = ()
    http_exchanges: tuple[HttpExchange, ...] = ()
    websocket_sessions: tuple[WebSocketSession, ...] = ()
    stun_transactions: tuple[StunTransaction, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    #: "wall" as captured; "monotonic" after mapping onto the probe's clock.
    clock: str = "wall"
    analysis_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        origin = self.first_at_ns or 0
        return {
            "schema": NET_SCHEMA,
            "capture": {
                "path": self.path,
                "format": self.format,
                "packets": self.packets,
                "first_at_ns": self.first_at_ns,
                "last_at_ns": self.last_at_ns,
                "duration_s": None
                if self.first_at_ns is None or self.last_at_ns is None
                else round((self.last_at_ns - self.first_at_ns) / 1e9, 9),
                "link_types": list(self.link_types),
                "truncated": self.truncated,
                "clock": self.clock,
            },
            "options": {
                "heuristic_rtp": self.heuristic_rtp,
                "decode_as": list(self.decode_as),
                "tshark": self.tshark,
            },
            "warnings": list(self.warnings),
            "counts": dict(self.counts),
            "rtp_streams": [s.to_dict(origin) for s in self.rtp_streams],
            "tcp_connections": [c.to_dict() for c in self.tcp_connections],
            "tls_handshakes": [h.to_dict() for h in self.tls_handshakes],
            "http_exchanges": [x.to_dict() for x in self.http_exchanges],
            "websocket_sessions": [w.to_dict() for w in self.websocket_sessions],
            "stun_transactions": [t.to_dict() for t in self.stun_transactions],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def rtp_stream(self, ssrc: int, src: str | None = None, dst: str | None = None) -> RtpStream:
        """The stream with this SSRC (and endpoints, when several share it)."""
        found = [
            s
            for s in self.rtp_streams
            if s.ssrc == ssrc and (src is None or s.src == src) and (dst is None or s.dst == dst)
        ]
        if len(found) != 1:
            raise KeyError(f"{len(found)} RTP streams match SSRC 0x{ssrc:08X} {src} {dst}")
        return found[0]


def absolute_time_fields(obj: object) -> list[str]:
    """Names of the fields of a result record that hold absolute times."""
    if not is_dataclass(obj):
        return []
    return [f.name for f in fields(obj) if f.name.endswith("_at_ns")]
