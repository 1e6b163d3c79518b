"""Live captures on loopback with dumpcap: real servers inject known delays, the analysis
recovers them, and the application's own clock agrees within a few milliseconds."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voiceaudit.capture import analyze_capture
from voiceaudit.capture.align import first_reply_on_wire, network_events, to_probe_clock
from voiceaudit.capture.dumpcap import (
    Dumpcap,
    capture_filter,
    capture_rights_problem,
    interface_for,
    plan_capture,
)
from voiceaudit.capture.tcp import StallParams
from voiceaudit.errors import EnvironmentProblem, ExitCode, UsageError

MS = 1_000_000

pytestmark = [
    pytest.mark.capture,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
    pytest.mark.skipif(capture_rights_problem() is not None, reason="no capture rights here"),
]


def listener() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    return srv, srv.getsockname()[1]


# ------------------------------------------------------------------ TCP connect


_SO_ATTACH_FILTER, _SO_DETACH_FILTER = 26, 27


def _drop_every_packet(sock: socket.socket) -> ctypes.Array[ctypes.c_char]:
    """A classic BPF program 'ret #0' on a listening socket: the kernel drops its SYNs."""
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    sock.setsockopt(
        socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(insn))
    )
    return insn


def test_connect_time_of_a_lost_syn(tmp_path: Path) -> None:
    srv, port = listener()
    keep = _drop_every_packet(srv)
    measured: dict[str, int] = {}

    def client() -> None:
        c = socket.socket()
        t = time.monotonic_ns()
        c.connect(("127.0.0.1", port))
        measured["connect"] = time.monotonic_ns() - t
        c.close()

    out = tmp_path / "connect.pcapng"
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}"):
        th = threading.Thread(target=client)
        th.start()
        time.sleep(0.3)  # the first SYN is dropped; the kernel retries after its 1 s RTO
        srv.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
        th.join(10)
        srv.accept()[0].close()
    del keep
    (c,) = analyze_capture(out).tcp_connections
    assert c.syn_retransmits >= 1
    assert c.connect_ns is not None
    # From the first SYN (not the retransmitted one, which would give well under a
    # millisecond): Linux's initial retransmission timeout is 1 s.
    assert c.connect_ns >= 1000 * MS
    # The client's own clock brackets the wire: the first SYN leaves inside connect(),
    # after its clock was read, and the handshake's last ACK leaves before connect()
    # returns (the woken thread waits for the socket lock the kernel holds while it
    # sends it). How much later the thread then runs is the machine's business, so the
    # difference is one-sided; an analysis that ended the handshake at a later packet
    # (the client's FIN, after close()) fails it.
    assert c.connect_ns <= measured["connect"], (c.connect_ns, measured["connect"])


# ------------------------------------------------------------------ small writes


#: Linux ``SO_TIMESTAMPNS`` / ``SCM_TIMESTAMPNS`` (``socket`` does not name them): the
#: kernel's receive time (CLOCK_REALTIME, like the capture's) of the data each recvmsg
#: returns.
_SO_TIMESTAMPNS = 35


def _recv_stamped(sock: socket.socket) -> tuple[bytes, int]:
    """One recvmsg: the bytes and the kernel's receive time of the last segment in them."""
    data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(16))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", payload[:16])
            return data, sec * 1_000_000_000 + nsec
    raise AssertionError("no receive timestamp")


def test_small_write_stalls_match_the_server_clock(tmp_path: Path) -> None:
    srv, port = listener()
    # Per exchange, the server's view of the two writes: (kernel receive time, bytes) of
    # each recvmsg. Kernel receive times, not the time recv() returned in Python: how
    # late the server thread is scheduled after a segment arrives is not the stall (on a
    # loaded machine it moved the server's figure 10 ms off the wire's).
    rounds: list[list[tuple[int, int]]] = []

    def server() -> None:
        a, _ = srv.accept()
        a.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        for _ in range(6):
            got, reads = 0, []
            while got < 200:
                data, at = _recv_stamped(a)
                reads.append((at, len(data)))
                got += len(data)
            rounds.append(reads)
            a.sendall(b"r" * 50)
        a.close()

    out = tmp_path / "stall.pcapng"
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}"):
        th = threading.Thread(target=server)
        th.start()
        c = socket.create_connection(("127.0.0.1", port))  # Nagle on (the default)
        for _ in range(6):
            c.send(b"h" * 100)  # write, write, read: the classic Nagle + delayed ACK trap
            c.send(b"b" * 100)
            got = b""
            while len(got) < 50:
                got += c.recv(4096)
            time.sleep(0.05)
        c.close()
        th.join(10)
    assert len(rounds) == 6
    (conn,) = analyze_capture(out).tcp_connections
    stalls = conn.small_write_stalls
    assert len(stalls) >= 3
    # Each stall is one exchange's second write, released when the server's delayed ACK
    # arrived: it reached the server's socket (kernel receive time of the read that
    # completed the exchange) when the capture saw it leave. Both are kernel times of one
    # loopback packet, microseconds apart whatever the load, so 1 ms is ample; a stall
    # timed at the ACK, or at the wrong segment, is 40 ms or more away.
    matched: dict[int, int] = {}
    for s in stalls:
        assert s.sender == conn.client and s.length == 100
        assert s.held_ns >= 35 * MS  # Linux's delayed ACK: at least 40 ms
        (i,) = [i for i, r in enumerate(rounds) if abs(r[-1][0] - s.released_at_ns) < MS]
        matched[i] = s.held_ns
    assert len(matched) == len(stalls)  # one stall per exchange at most
    for i, reads in enumerate(rounds):
        if reads[0][1] >= 200:
            # The server thread first ran after both writes were in: its clock saw no
            # gap to compare (a stall here is checked by its release time above only).
            continue
        gap = reads[-1][0] - reads[0][0]  # first write in -> second write in
        if gap > 20 * MS:  # the server delayed its ACK: every such hold is a stall ...
            assert i in matched, (i, gap, matched)
            assert abs(matched[i] - gap) < MS, (i, gap, matched[i])
        else:  # ... and an exchange the server acknowledged at once has none
            assert i not in matched, (i, gap, matched)


def _unacked(sock: socket.socket) -> int:
    """``tcpi_unacked`` of Linux's ``struct tcp_info``: segments sent and not yet ACKed."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


def _delayed_ack_reader(srv: socket.socket, received: list[int]) -> threading.Thread:
    """A thread that accepts one connection on ``srv`` and reads it to the end with delayed
    ACKs (no quick-ACK phase: not a permanent setting, so set before every read), noting
    each read's length in ``received``."""

    def serve() -> None:
        a, _ = srv.accept()
        while True:
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            data = a.recv(4096)
            if not data:
                break
            received.append(len(data))
        a.close()

    th = threading.Thread(target=serve)
    th.start()
    return th


def test_a_late_write_right_after_a_delayed_ack_is_no_stall(tmp_path: Path) -> None:
    """A caller that streams small frames with TCP_NODELAY and writes one frame late, just
    after the peer's delayed ACK: on the wire that is a delayed ACK followed at once by
    one write's worth of bytes, the classic Nagle stall's signature, but the kernel held
    nothing. (A starved caller's microphone frame did this in test_capture_reference's
    setup, recorded with the caller's write times: the write began 0.48 ms after the ACK
    and was on the wire 32 us later.) The sender's other frames show it has Nagle off."""
    srv, port = listener()
    received: list[int] = []
    out = tmp_path / "late.pcapng"
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}"):
        th = _delayed_ack_reader(srv, received)
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.05)
        for _ in range(5):
            c.send(b"a" * 300)  # two frames back to back: the second leaves while the
            c.send(b"a" * 300)  # first is unacknowledged, which Nagle never allows
            time.sleep(0.01)
            c.send(b"p" * 300)  # one frame: the peer delays its ACK (40 ms or more) ...
            deadline = time.monotonic() + 2
            while _unacked(c) and time.monotonic() < deadline:
                pass
            c.send(b"s" * 300)  # ... and the next frame is written the moment it arrives
            time.sleep(0.01)
        c.send(b"z" * 300)
        c.send(b"z" * 300)
        time.sleep(0.05)
        c.close()
        th.join(10)
    assert sum(received) == 5 * 4 * 300 + 2 * 300
    # How soon after the ACK this thread got to write is up to the scheduler (on a loaded
    # machine often more than the 2 ms a pure-ACK release may take), so the release
    # window is widened to 50 ms for the comparison; it changes nothing else.
    wide = 50 * MS
    # Without the Nagle-off evidence (no segment counts as small), the late frames pass
    # for stalls: the false positive, and the proof that the capture holds the case.
    (old,) = analyze_capture(
        out, stall=StallParams(release_ns=wide, nagle_small_bytes=0)
    ).tcp_connections
    assert len(old.small_write_stalls) >= 1
    assert all(s.length == 300 and s.ack_delay_ns >= 15 * MS for s in old.small_write_stalls)
    # The detector sees the back-to-back frames before and after: Nagle is off, no stall,
    # with the wide window and with the default one.
    (conn,) = analyze_capture(out, stall=StallParams(release_ns=wide)).tcp_connections
    assert conn.small_write_stalls == ()
    (conn,) = analyze_capture(out).tcp_connections
    assert conn.small_write_stalls == ()


def test_a_late_write_of_the_probes_nagle_off_socket_is_no_stall(tmp_path: Path) -> None:
    """The same late write, by a caller whose frames never give the Nagle-off evidence away
    (one frame in flight at a time, as the probe's 1335-byte Realtime frames are at 20 ms
    and above the detector's 1200-byte "small"): the capture alone reads it as a stall.
    The trace's ``session.connected`` names the probe's end of the connection and its
    TCP_NODELAY, and the report's capture join counts it apart, not as a stall."""
    from voiceaudit.analysis.network import join_capture
    from voiceaudit.clock import MonotonicClock, take_anchor
    from voiceaudit.model import Header
    from voiceaudit.targets.base import socket_facts
    from voiceaudit.trace_io import TraceWriter, read_trace

    srv, port = listener()
    received: list[int] = []
    out = tmp_path / "late.pcapng"
    clock = MonotonicClock()
    traces = {}
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}"):
        th = _delayed_ack_reader(srv, received)
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        facts = socket_facts(c)
        assert facts == {
            "local": f"127.0.0.1:{c.getsockname()[1]}",
            "remote": f"127.0.0.1:{port}",
            "tcp_nodelay": True,
        }
        anchor = take_anchor(clock)
        start = clock.now_ns()
        time.sleep(0.05)
        for _ in range(5):
            c.send(b"p" * 300)  # the peer delays its ACK (40 ms or more) ...
            deadline = time.monotonic() + 2
            while _unacked(c) and time.monotonic() < deadline:
                pass
            c.send(b"s" * 300)  # ... and the next frame is written the moment it arrives
            time.sleep(0.01)
        time.sleep(0.05)
        end = clock.now_ns()
        c.close()
        th.join(10)
        for name, attrs in (("old", None), ("new", facts)):
            traces[name] = tmp_path / f"{name}.jsonl"
            w = TraceWriter(traces[name], Header("r", "test", {}, {}, {}, (anchor,)))
            w.event("s0", None, start, "probe", "session", "session.connected", attrs)
            w.event("s0", 0, start, "probe", "turn", "turn.start")
            w.event("s0", 0, end, "probe", "turn", "turn.end", {"ok": True})
            w.close(anchor=take_anchor(clock))
    assert sum(received) == 5 * 2 * 300
    # the release window widened as in the test above (this thread's writes may come late)
    wide = StallParams(release_ns=50 * MS)
    # A trace without the socket's facts (written before they were recorded): stalls.
    (old,) = join_capture(read_trace(traces["old"]), out, stall=wide).turns
    assert old.stalls >= 1 and old.stalls_ruled_out == 0
    assert [f["kind"] for f in join_capture(read_trace(traces["old"]), out, stall=wide).findings()]
    # With them: the same candidates, none counted, no finding.
    join = join_capture(read_trace(traces["new"]), out, stall=wide)
    (new,) = join.turns
    assert new.stalls == 0 and new.stall_held_ns == 0
    assert new.stalls_ruled_out == old.stalls
    assert join.findings() == []
    assert join.to_dict()["turns"][0]["small_write_stalls_ruled_out"] == old.stalls
    assert "not counted: " in join.render_text()


# ------------------------------------------------------------------ TLS (and its key log)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_handshake_delay_and_decrypted_first_byte(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    srv, port = listener()
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    handshake_delay, reply_delay = 150 * MS, 120 * MS
    server_t: dict[str, int] = {}

    def server() -> None:
        raw, _ = srv.accept()
        # The delay starts once the ClientHello is in (the client may be slow to send it:
        # a delay counted from accept() showed as 148.8 ms on the wire on a busy machine).
        raw.recv(1, socket.MSG_PEEK)
        server_t["hello_in"] = time.monotonic_ns()
        time.sleep(handshake_delay / 1e9)  # the server is slow to answer the ClientHello
        server_t["handshake_start"] = time.monotonic_ns()
        with sctx.wrap_socket(raw, server_side=True) as tls:
            req = b""
            while b"\r\n\r\n" not in req:
                req += tls.recv(4096)
            server_t["request_in"] = time.monotonic_ns()
            time.sleep(reply_delay / 1e9)
            server_t["reply_out"] = time.monotonic_ns()
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")

    keylog = tmp_path / "keys.log"
    cctx = ssl.create_default_context()
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.keylog_filename = str(keylog)  # what SSLKEYLOGFILE does
    out = tmp_path / "tls.pcapng"
    measured: dict[str, int] = {}
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}"):
        th = threading.Thread(target=server)
        th.start()
        raw = socket.create_connection(("127.0.0.1", port))
        t = time.monotonic_ns()
        tls = cctx.wrap_socket(raw, server_hostname="localhost")
        measured["handshake"] = time.monotonic_ns() - t
        t = time.monotonic_ns()
        tls.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tls.recv(1)
        measured["first_byte"] = time.monotonic_ns() - t
        tls.close()
        th.join(10)
    plain = analyze_capture(out)
    (h,) = plain.tls_handshakes
    assert h.version == "TLS 1.3" and h.sni == "localhost"
    assert h.handshake_ns is not None and h.server_hello_ns is not None
    # Every bound below is one application clock bracketing the wire, so the machine's
    # load (which only delays the threads that read the clocks) cannot break one, and an
    # analysis that timed the wrong packet would. The server's clock from below: the
    # ClientHello was in before its delay began and the ServerHello left after it ended,
    # so an analysis that measured less than the injected delay (from a later packet, or
    # to an earlier one) fails here.
    assert handshake_delay <= server_t["handshake_start"] - server_t["hello_in"]
    assert server_t["handshake_start"] - server_t["hello_in"] <= h.server_hello_ns
    # The client's clock from above: the ClientHello left inside wrap_socket, and the
    # client sent its Finished (TLS 1.3: the end of the handshake) after the ServerHello
    # arrived and before wrap_socket returned. Key generation before the ClientHello and
    # certificate checks after the server's flight are the client's CPU time, not
    # network: how much they add depends on the load, so the bracket is one-sided.
    assert h.server_hello_ns < h.handshake_ns <= measured["handshake"]
    assert plain.http_exchanges == ()  # encrypted: nothing to read without the keys

    decrypted = analyze_capture(out, keylog=keylog)
    (x,) = decrypted.http_exchanges
    assert (x.method, x.target, x.status, x.decrypted) == ("GET", "/slow", 200, True)
    assert x.first_byte_ns is not None
    # Request's last byte -> response's first byte, bracketed the same way: from below by
    # the server (it had the whole request before its delay, and answered after it), from
    # above by the client (sendall began before the request left; recv returned after the
    # answer came). Taking the wrong record for the answer (the server's session tickets
    # come before its delay) fails the lower bound.
    assert reply_delay <= server_t["reply_out"] - server_t["request_in"]
    assert server_t["reply_out"] - server_t["request_in"] <= x.first_byte_ns
    assert x.first_byte_ns <= measured["first_byte"]


# ------------------------------------------------------------------ HTTP and WebSocket


def test_http_first_byte_and_websocket_upgrade(tmp_path: Path) -> None:
    from aiohttp import ClientSession, WSMsgType, web

    first_byte_delay, upgrade_delay, chunk_gap = 120 * MS, 80 * MS, 50 * MS
    DELTA = '{"type":"response.output_audio.delta","delta":"AAAA"}'

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(first_byte_delay / 1e9)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.sleep(chunk_gap / 1e9)
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(upgrade_delay / 1e9)  # slow to accept the upgrade
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                # the frame is written to the socket inside send_str, before its first await
                measured["delta_written"] = time.monotonic_ns()
                await ws.send_str(DELTA)
                await ws.send_bytes(b"\0" * 3000)
        return ws

    measured: dict[str, int] = {}

    async def main(port_box: list[int], ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_get("/ws", ws_handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        port_box.append(port)
        ready.set()
        await asyncio.sleep(0.2)  # dumpcap starts in the other thread
        async with ClientSession() as s:
            t = time.monotonic_ns()
            async with s.get(f"http://127.0.0.1:{port}/slow") as r:
                measured["headers"] = time.monotonic_ns() - t
                await r.read()
            t = time.monotonic_ns()
            async with s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                measured["ws_connect"] = time.monotonic_ns() - t
                measured["ws_sent"] = time.monotonic_ns()
                await ws.send_str('{"type":"response.create"}')
                first = await ws.receive()
                measured["ws_first"] = time.monotonic_ns()
                assert first.type == WSMsgType.TEXT
                await ws.receive()
        await runner.cleanup()

    port_box: list[int] = []
    ready = threading.Event()
    result: list[BaseException] = []

    def loop_thread() -> None:
        try:
            asyncio.run(main(port_box, ready))
        except BaseException as exc:  # surfaced below
            result.append(exc)
            ready.set()

    out = tmp_path / "http.pcapng"
    th = threading.Thread(target=loop_thread)
    th.start()
    assert ready.wait(10)
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port_box[0]}") as cap:
        th.join(30)
    assert not result, result
    report = analyze_capture(out)
    (x,) = [x for x in report.http_exchanges if x.target == "/slow"]
    assert x.status == 200 and x.content_type == "text/event-stream"
    assert x.first_byte_ns is not None and x.first_data_ns is not None and x.complete_ns
    # From below by the server's sleep (it had the request before it began); from above by
    # the client, whose own figure also holds its connection setup. A busy machine only
    # delays the client's clock reading, so the bracket holds whatever the load, and an
    # analysis that took the second chunk (50 ms after the headers) for the first byte
    # fails it.
    assert first_byte_delay <= x.first_byte_ns < measured["headers"]
    assert x.complete_ns - x.first_data_ns >= chunk_gap
    (w,) = report.websocket_sessions
    assert w.target == "/ws" and w.upgrade_ns is not None
    assert upgrade_delay <= w.upgrade_ns < measured["ws_connect"]  # bracketed the same way
    server_frames = [(f.opcode, f.payload_len) for f in w.frames if not f.from_client]
    assert server_frames[:2] == [(1, len(DELTA)), (2, 3000)]
    events = [f.event for f in w.frames if f.event]
    assert events[:2] == ["response.create", "response.output_audio.delta"]

    # On the probe's clock: the first server frame hit the wire before the client saw it.
    mono = to_probe_clock(report, cap.result.anchors if cap.result else ())
    assert mono.clock == "monotonic"
    wire = first_reply_on_wire(
        mono, after_at_ns=measured["ws_sent"], events=("response.output_audio.delta",)
    )
    assert wire is not None
    # Bracketed by the two clocks of this process: the server stamped the frame just before
    # writing it to the socket, the client read its clock after receive() returned. A
    # mapping off by more than that window (well under a millisecond on an idle machine;
    # load only widens it) or the wrong frame fails here.
    assert measured["delta_written"] <= wire <= measured["ws_first"]
    names = {e.name for e in network_events(mono)}
    assert {"tcp.syn", "http.first_byte", "ws.upgraded", "ws.frame"} <= names


# ------------------------------------------------------------------ clock mapping


def test_packet_times_map_onto_the_monotonic_clock(tmp_path: Path) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: list[int] = []
    out = tmp_path / "clock.pcapng"
    with Dumpcap(out, interface="lo", capture_filter=f"udp port {port}") as cap:
        for i in range(20):
            pkt = struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0xC10C) + b"\xd5" * 160
            sent.append(time.monotonic_ns())
            tx.sendto(pkt, ("127.0.0.1", port))
            time.sleep(0.02)
    assert cap.result is not None and len(cap.result.anchors) == 2
    report = analyze_capture(out, decode_as=[f"udp.port=={port},rtp"])
    (s,) = report.rtp_streams
    assert s.packets == 20 and s.setup == "DECODE AS"
    mono = to_probe_clock(report, cap.result.anchors)
    (ms,) = mono.rtp_streams
    assert abs(ms.start_at_ns - sent[0]) < 2 * MS
    assert abs(ms.end_at_ns - sent[-1]) < 2 * MS
    assert ms.duration_ns == s.duration_ns  # durations do not move


# ------------------------------------------------------------------ running dumpcap


def _pids_of(out: Path) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(out) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("exc", [RuntimeError("the run failed"), KeyboardInterrupt()])
def test_stops_cleanly_when_the_run_fails(tmp_path: Path, exc: BaseException) -> None:
    out = tmp_path / "stop.pcapng"
    cap = Dumpcap(out, interface="lo", capture_filter="udp port 9", flush_s=0.1)
    with pytest.raises(type(exc)), cap:
        assert _pids_of(out)
        raise exc
    assert cap.result is not None and cap.result.packets == 0
    assert _pids_of(out) == []
    # The file is whole: a readable capture (empty here).
    with pytest.raises(Exception, match="holds no packets"):
        analyze_capture(out)


def test_dumpcap_stops_when_voiceaudit_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "orphan.pcapng"
    code = (
        "import sys, time\n"
        "from voiceaudit.capture.dumpcap import Dumpcap\n"
        "Dumpcap(sys.argv[1], interface='lo', capture_filter='udp port 9').start()\n"
        "print('capturing', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"capturing"
    assert _pids_of(out)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _pids_of(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_of(out) == []
    # dumpcap was stopped, not killed: the file is a whole capture.
    with pytest.raises(Exception, match="holds no packets"):
        analyze_capture(out)


def test_no_capture_rights_says_what_to_do(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run dumpcap as an unprivileged user")
    out = tmp_path / "denied.pcapng"
    os.chmod(tmp_path, 0o777)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with pytest.raises(EnvironmentProblem) as ei, Dumpcap(out, interface="lo", command=nobody):
        pass
    assert ei.value.exit_code == ExitCode.ENVIRONMENT
    assert "permission" in ei.value.message
    assert ei.value.hint is not None
    assert "setcap cap_net_raw,cap_net_admin=eip" in ei.value.hint and "dumpcap" in ei.value.hint


def test_missing_dumpcap_bad_interface_bad_filter(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="not installed"):
        Dumpcap(tmp_path / "x.pcapng", dumpcap=str(tmp_path / "nope")).start()
    with pytest.raises(EnvironmentProblem, match="no interface named"):
        Dumpcap(tmp_path / "x.pcapng", interface="nosuchif0").start()
    with pytest.raises(UsageError, match="capture filter"):
        Dumpcap(tmp_path / "x.pcapng", capture_filter="tcp port ((").start()


def test_interface_and_filter_for_a_target() -> None:
    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("localhost") == "lo"
    assert capture_filter(["127.0.0.1"], tcp_ports=[8080]) == "(tcp port 8080)"
    assert capture_filter(["192.0.2.7"], tcp_ports=[443], all_udp=True) == (
        "(host 192.0.2.7) and (tcp port 443 or udp)"
    )
    assert capture_filter(["2001:db8::1"], udp_ports=[3478]) == (
        "(ip6 host 2001:db8::1) and (udp port 3478)"
    )
    plan = plan_capture("wss://127.0.0.1:9443/v1/realtime")
    assert (plan.interface, plan.port, plan.tls) == ("lo", 9443, True)
    assert plan.capture_filter == "(tcp port 9443)"
    plan = plan_capture("http://localhost/v1", media_udp=True)
    assert (plan.port, plan.tls, plan.capture_filter) == (80, False, "(tcp port 80 or udp)")


@pytest.fixture(autouse=True)
def _no_dumpcap_left(tmp_path: Path) -> Iterator[None]:
    yield
    assert _pids_of(tmp_path) == []


def test_a_retransmission_is_joined_to_its_turn(tmp_path: Path) -> None:
    """A reply segment the receiver's kernel drops is retransmitted after the sender's
    RTO; the report's capture join counts it in the turn whose time span holds it (the
    capture's wall-clock packet times mapped onto the probe's monotonic clock), and gives
    its delay after the original."""
    from voiceaudit.analysis.network import join_capture
    from voiceaudit.clock import MonotonicClock, take_anchor
    from voiceaudit.model import Header
    from voiceaudit.trace_io import TraceWriter, read_trace

    srv, port = listener()
    cli = socket.socket()
    out = tmp_path / "retrans.pcapng"
    trace = tmp_path / "trace.jsonl"
    clock = MonotonicClock()
    with Dumpcap(out, interface="lo", capture_filter=f"tcp port {port}") as cap:
        cli.connect(("127.0.0.1", port))
        conn, _ = srv.accept()
        writer = TraceWriter(
            trace,
            Header("r", "test", {}, {}, {}, (take_anchor(clock),)),
        )
        start = clock.now_ns()
        writer.event("s0", 0, start, "probe", "turn", "turn.start")
        writer.event("s0", 0, start, "probe", "input", "input.speech_end")
        keep = _drop_every_packet(cli)  # the client's kernel drops what arrives now
        conn.sendall(b"r" * 500)
        time.sleep(0.5)  # the sender's RTO (at least 200 ms) passes: it resends
        cli.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
        del keep
        got = b""
        while len(got) < 500:
            got += cli.recv(4096)
        writer.event("s0", 0, clock.now_ns(), "probe", "reply", "reply.first_byte")
        writer.event("s0", 0, clock.now_ns(), "probe", "turn", "turn.end", {"ok": True})
        writer.close(anchor=take_anchor(clock))
        conn.close()
        cli.close()
    srv.close()
    assert cap.result is not None
    join = join_capture(read_trace(trace), out)
    (t,) = join.turns
    assert t.retransmissions >= 1
    # Each resend came at least the minimum RTO (200 ms) after the original.
    assert t.retransmit_delay_ns >= 200 * MS * t.retransmissions
    (f,) = [f for f in join.to_dict()["findings"] if f["kind"] == "retransmission"]
    assert f["ms"] >= 200
