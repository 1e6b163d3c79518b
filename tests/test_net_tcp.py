"""TCP, HTTP and WebSocket timing on captures built with known delays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voiceaudit.capture import NetReport, analyze_capture
from voiceaudit.capture.synth import CaptureBuilder, tcp_segment, ws_frame

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
C, S = "10.0.0.1", "10.0.0.2"


def run(b: CaptureBuilder, tmp_path: Path, **kw: object) -> NetReport:
    p = tmp_path / "c.pcapng"
    b.write(p)
    return analyze_capture(p, **kw)  # type: ignore[arg-type]


def test_connect_time_and_lost_syn(tmp_path: Path) -> None:
    b = CaptureBuilder()
    b.flow(C, 40000, S, 443).handshake(T0, T0 + 31 * MS, T0 + 31 * MS + 200_000)
    # A second connection whose first SYN is lost: retried after 1 s.
    b.add(T0 + 5 * MS, tcp_segment(C, 40001, S, 443, 7000, 0, 0x02, mss=1460))
    b.add(T0 + 1005 * MS, tcp_segment(C, 40001, S, 443, 7000, 0, 0x02, mss=1460))
    b.add(T0 + 1025 * MS, tcp_segment(S, 443, C, 40001, 9000, 7001, 0x12, mss=1400))
    b.add(T0 + 1025 * MS + 50_000, tcp_segment(C, 40001, S, 443, 7001, 9001, 0x10))
    r = run(b, tmp_path)
    a, lost = r.tcp_connections
    assert a.connect_ns == 31 * MS + 200_000 and a.syn_retransmits == 0
    assert lost.connect_ns == 1020 * MS + 50_000 and lost.syn_retransmits == 1
    assert (lost.client, lost.server) == (f"{C}:40001", f"{S}:443")
    assert (lost.client_mss, lost.server_mss) == (1460, 1400)


def test_retransmission_delay(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    seq = f.cseq
    f.send(T0 + 10 * MS, True, b"x" * 500)
    # No ACK: the same bytes again 210 ms later, then the ACK.
    b.add(T0 + 220 * MS, tcp_segment(C, 40000, S, 80, seq, f.sseq, 0x18, b"x" * 500))
    b.add(T0 + 221 * MS, f.ack_segment(False))
    r = run(b, tmp_path)
    (c,) = r.tcp_connections
    assert c.retransmissions == 1
    (ev,) = [e for e in c.events if e.kind == "retransmission"]
    assert ev.delay_ns == 210 * MS and ev.sender == f"{C}:40000" and ev.length == 500
    # Karn: the retransmitted segment gives no RTT sample; the handshake ACKs are the rest.
    assert all(v is None or v < 200 * MS for v in (c.ack_rtt.max_ns,))


def test_zero_window_duration(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    f.send(T0 + 5 * MS, False, b"y" * 1000)
    b.add(T0 + 6 * MS, tcp_segment(C, 40000, S, 80, f.cseq, f.sseq, 0x10, win=0))
    b.add(T0 + 156 * MS, tcp_segment(C, 40000, S, 80, f.cseq, f.sseq, 0x10, win=8192))
    r = run(b, tmp_path)
    (c,) = r.tcp_connections
    assert c.zero_windows == 1
    (ev,) = [e for e in c.events if e.kind == "zero_window"]
    assert ev.at_ns == T0 + 6 * MS and ev.delay_ns == 150 * MS and ev.sender == f"{C}:40000"


def test_ack_rtt_distribution(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    delays = [3, 5, 7, 9, 11, 13, 15, 17, 19, 21]
    t = T0 + 10 * MS
    for d in delays:
        f.send(t, True, b"q" * 100, ack_at=t + d * MS)
        t += 50 * MS
    r = run(b, tmp_path)
    (c,) = r.tcp_connections
    rtt = c.ack_rtt
    # One sample per acknowledged data segment (the handshake is timed by connect_ns).
    assert rtt.count == 10 and rtt.exact
    assert (rtt.min_ns, rtt.max_ns) == (3 * MS, 21 * MS)
    assert rtt.p50_ns == 11 * MS and rtt.p90_ns == 19 * MS
    assert rtt.mean_ns == pytest.approx(12 * MS)


def _stall_flow(
    tmp_path: Path,
    *,
    ack_after: int,
    release_after: int,
    ack_data: bytes = b"",
    second: int = 100,
) -> NetReport:
    """D1 leaves, the peer ACKs it ``ack_after`` ns later (carrying ``ack_data``), and the
    next small segment leaves ``release_after`` ns after that ACK."""
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    t1 = T0 + 10 * MS
    f.send(t1, True, b"h" * 100)
    ta = t1 + ack_after
    if ack_data:
        f.send(ta, False, ack_data)
    else:
        b.add(ta, f.ack_segment(False))
    f.send(ta + release_after, True, b"b" * second, ack_at=ta + release_after + 40 * MS)
    return run(b, tmp_path)


def test_small_write_stall_found(tmp_path: Path) -> None:
    r = _stall_flow(tmp_path, ack_after=40 * MS, release_after=60_000)
    (c,) = r.tcp_connections
    (s,) = c.small_write_stalls
    assert s.sender == f"{C}:40000" and s.length == 100
    assert s.ack_delay_ns == 40 * MS
    assert s.held_ns == 40 * MS + 60_000
    assert s.first_unacked_at_ns == T0 + 10 * MS


def test_small_write_stall_released_by_the_peers_data(tmp_path: Path) -> None:
    """The ACK rides on the peer's own stream; the writes that piled up leave at once."""
    r = _stall_flow(
        tmp_path, ack_after=18 * MS, release_after=25_000, ack_data=b"m" * 640, second=1000
    )
    (s,) = r.tcp_connections[0].small_write_stalls
    assert s.ack_carried_data and s.length == 1000
    assert (s.ack_delay_ns, s.held_ns) == (18 * MS, 18 * MS + 25_000)


@pytest.mark.parametrize(
    "ack_after, release_after, ack_data, second",
    [
        (5 * MS, 60_000, b"", 100),  # the ACK came quickly: nothing was held
        (40 * MS, 30 * MS, b"", 100),  # the next write came long after the ACK
        (40 * MS, 60_000, b"reply", 100),  # the peer answered: one message, the app's reply
        (40 * MS, 1 * MS, b"reply", 1000),  # too slow after the peer's data for the kernel
    ],
)
def test_small_write_stall_not_found(
    tmp_path: Path, ack_after: int, release_after: int, ack_data: bytes, second: int
) -> None:
    r = _stall_flow(
        tmp_path, ack_after=ack_after, release_after=release_after, ack_data=ack_data, second=second
    )
    assert r.tcp_connections[0].small_write_stalls == ()


def test_http_streaming_response_times(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 8080)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    body = json.dumps({"model": "m", "stream": True}).encode()
    req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    f.send(T0 + 10 * MS, True, req)
    f.send(T0 + 11 * MS, True, body, ack_at=T0 + 12 * MS)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    f.send(T0 + 131 * MS, False, head)
    ev = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(ev), ev)
    f.send(T0 + 161 * MS, False, chunk[:7])  # a chunk cut across two segments
    f.send(T0 + 162 * MS, False, chunk[7:])
    f.send(T0 + 311 * MS, False, chunk + b"0\r\n\r\n", ack_at=T0 + 312 * MS)
    r = run(b, tmp_path)
    (x,) = r.http_exchanges
    assert (x.method, x.target, x.status, x.chunked) == ("POST", "/v1/chat/completions", 200, True)
    assert x.content_type == "text/event-stream"
    assert x.request_at_ns == T0 + 10 * MS and x.request_end_at_ns == T0 + 11 * MS
    assert x.first_byte_ns == 120 * MS
    assert x.first_data_ns == 150 * MS
    assert x.complete_ns == 300 * MS
    assert x.body_bytes == 2 * len(ev)


def test_http_pipelined_keepalive_and_100_continue(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    f.send(T0 + 10 * MS, True, two)
    f.send(T0 + 30 * MS, False, b"HTTP/1.1 100 Continue\r\n\r\n")
    f.send(T0 + 40 * MS, False, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    f.send(T0 + 55 * MS, False, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    r = run(b, tmp_path)
    a, c = r.http_exchanges
    assert (a.target, a.status, a.first_byte_ns, a.body_bytes) == ("/a", 200, 30 * MS, 3)
    assert (c.target, c.status, c.first_byte_ns) == ("/b", 404, 45 * MS)


def test_websocket_upgrade_and_frames(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 8765)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    f.send(
        T0 + 5 * MS,
        True,
        b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: a\r\n\r\n",
    )
    f.send(T0 + 85 * MS, False, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    up = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}).encode()
    f.send(T0 + 90 * MS, True, ws_frame(1, up, mask=b"\x01\x02\x03\x04"))
    # Three frames in one segment, then a frame whose header is cut across segments.
    ev = json.dumps({"type": "response.output_audio.delta", "delta": "BBBB"}).encode()
    f.send(T0 + 300 * MS, False, ws_frame(1, ev) + ws_frame(2, b"\0" * 300) + ws_frame(9, b""))
    big = ws_frame(2, b"\1" * 70_000)
    f.send(T0 + 310 * MS, False, big[:1])
    f.send(T0 + 311 * MS, False, big[1:5000])
    f.send(T0 + 320 * MS, False, big[5000:])
    f.send(T0 + 400 * MS, True, ws_frame(8, b"\x03\xe8", mask=b"abcd"))
    r = run(b, tmp_path)
    (w,) = r.websocket_sessions
    assert w.target == "/v1/realtime"
    assert w.upgrade_ns == 80 * MS
    frames = [(f.from_client, f.opcode, f.payload_len, f.event) for f in w.frames]
    assert frames == [
        (True, 1, len(up), "input_audio_buffer.append"),
        (False, 1, len(ev), "response.output_audio.delta"),
        (False, 2, 300, None),
        (False, 9, 0, None),
        (False, 2, 70_000, None),
        (True, 8, 2, None),
    ]
    one_segment = [f.at_ns for f in w.frames[1:4]]
    assert one_segment == [T0 + 300 * MS] * 3
    assert (w.frames[4].start_at_ns, w.frames[4].at_ns) == (T0 + 310 * MS, T0 + 320 * MS)
    assert w.first_server_data_at_ns == T0 + 300 * MS
    assert w.close_at_ns == T0 + 400 * MS
    assert w.opcodes_from_server == {1: 1, 2: 2, 9: 1}
    assert not w.lost_sync
    (x,) = r.http_exchanges
    assert x.status == 101


def test_out_of_order_segments_are_put_back_in_order(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    f.send(T0 + 10 * MS, True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    s0 = f.sseq
    b.add(T0 + 50 * MS, tcp_segment(S, 80, C, 40000, s0 + 20, f.cseq, 0x18, resp[20:]))
    b.add(T0 + 51 * MS, tcp_segment(S, 80, C, 40000, s0, f.cseq, 0x18, resp[:20]))
    r = run(b, tmp_path)
    (x,) = r.http_exchanges
    assert x.status == 200 and x.body_bytes == 10
    assert x.response_at_ns == T0 + 51 * MS and x.response_end_at_ns == T0 + 51 * MS


def test_capture_started_mid_connection(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 80)
    f.send(T0, True, b"\0")  # a keep-alive byte first: not part of any message
    f.send(T0 + 10 * MS, True, b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
    f.send(T0 + 25 * MS, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    r = run(b, tmp_path)
    (c,) = r.tcp_connections
    assert c.connect_ns is None and c.protocol == "http"
    (x,) = r.http_exchanges
    assert (x.target, x.first_byte_ns) == ("/late", 15 * MS)


def test_port_reuse_makes_two_connections(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f1 = b.flow(C, 40000, S, 80, cseq=100)
    f1.handshake(T0, T0 + MS, T0 + 2 * MS)
    f1.close(T0 + 10 * MS)
    f2 = b.flow(C, 40000, S, 80, cseq=90_000)
    f2.handshake(T0 + 500 * MS, T0 + 503 * MS, T0 + 504 * MS)
    r = run(b, tmp_path)
    assert [c.connect_ns for c in r.tcp_connections] == [2 * MS, 4 * MS]


def test_decode_as_forces_a_protocol(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 9999)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    # A server that speaks first (no request bytes to recognise) on an odd port.
    f.send(T0 + 5 * MS, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    plain = run(b, tmp_path)
    assert plain.tcp_connections[0].protocol is None
    forced = run(b, tmp_path, decode_as=["tcp.port==9999,http"])
    assert forced.tcp_connections[0].protocol == "http"
    assert forced.decode_as == ("tcp.port==9999,http",)


def test_probe_clock_maps_every_absolute_time(tmp_path: Path) -> None:
    """Mapping a report onto the probe's clock moves every absolute time, the events' and
    the WebSocket frames' ``at_ns`` too (not only fields named ``*_at_ns``)."""
    import dataclasses

    from voiceaudit.capture.align import network_events, to_probe_clock
    from voiceaudit.clock import Anchor

    b = CaptureBuilder()
    f = b.flow(C, 40000, S, 8765)
    f.handshake(T0, T0 + MS, T0 + 2 * MS)
    f.send(T0 + 5 * MS, True, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
    f.send(T0 + 85 * MS, False, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    seq = f.sseq
    f.send(T0 + 300 * MS, False, ws_frame(2, b"\0" * 300))
    # The same frame again 210 ms later: a retransmission (a TcpEvent with at_ns).
    b.add(
        T0 + 510 * MS, tcp_segment(S, 8765, C, 40000, seq, f.cseq, 0x18, ws_frame(2, b"\0" * 300))
    )
    r = run(b, tmp_path)
    offset = 123 * MS
    mono = to_probe_clock(r, [Anchor(wall_ns=T0, mono_ns=T0 - 10**18 + offset)])
    shift = T0 - 10**18 + offset - T0

    def times(obj: object, out: list[tuple[str, int]]) -> list[tuple[str, int]]:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for fl in dataclasses.fields(obj):
                v = getattr(obj, fl.name)
                if (fl.name == "at_ns" or fl.name.endswith("_at_ns")) and isinstance(v, int):
                    out.append((fl.name, v))
                elif isinstance(v, tuple):
                    for x in v:
                        times(x, out)
                else:
                    times(v, out)
        return out

    before, after = times(r, []), times(mono, [])
    assert {n for n, _ in before} >= {"at_ns", "syn_at_ns", "start_at_ns"}
    assert len(before) == len(after)
    for (n, v), (n2, v2) in zip(before, after, strict=True):
        assert n == n2 and v2 - v == shift, (n, v, v2)
    (c,) = mono.tcp_connections
    (rt,) = [e for e in c.events if e.kind == "retransmission"]
    assert rt.at_ns == T0 + 510 * MS + shift
    frames = [e for e in network_events(mono) if e.name == "ws.frame"]
    assert frames and all(e.t_ns < T0 for e in frames)  # on the probe's clock now
