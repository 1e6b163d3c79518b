"""The receive thread (voiceaudit/targets/rxstamp.py) changes when bytes are timed, never
what the transport does with them: order, flow control, EOF, resets, TLS and UDP behave
as with the loop reading, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from servers import HandlerServer

from voiceaudit.targets import rxstamp
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.websocket import PcmWebSocketTarget

MS = 1_000_000


def test_kernel_stamp_mapping() -> None:
    mono, wall = 5_000_000_000, 1_700_000_000_000_000_000

    def anc(wall_ns: int) -> list[tuple[int, int, bytes]]:
        data = struct.pack("@qq", wall_ns // 1_000_000_000, wall_ns % 1_000_000_000)
        return [(socket.SOL_SOCKET, rxstamp.SO_TIMESTAMPNS, data)]

    # 3 ms before the read, on the monotonic clock
    assert rxstamp.kernel_stamp(anc(wall - 3 * MS), mono, wall) == mono - 3 * MS
    assert rxstamp.kernel_stamp(anc(0), mono, wall) is None  # not stamped
    assert rxstamp.kernel_stamp(anc(wall + MS), mono, wall) is None  # after the read
    assert rxstamp.kernel_stamp(anc(wall - 20_000 * MS), mono, wall) is None  # a clock step
    assert rxstamp.kernel_stamp([], mono, wall) is None


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.failures: list[str] = []
        self.failed = asyncio.Event()

    def mark(self, *a: Any, **k: Any) -> None:
        pass

    def reply_audio(self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int) -> None:
        self.chunks.append((t_ns, pcm16))

    def reply_done(self, t_ns: int) -> None:
        pass

    def fail(self, reason: str) -> None:
        self.failures.append(reason)
        self.failed.set()


def test_clock_pair_rereads_a_pair_the_thread_was_interrupted_in() -> None:
    """A wall-clock read that comes 130 µs after its monotonic read (the thread lost the GIL
    between them) would map every kernel stamp 130 µs early: the pair is read again, and
    the wall clock's instant is the midpoint of the monotonic reads around it."""
    offset = 1_700_000_000_000_000_000  # wall minus monotonic, constant
    mono = iter([1_000, 131_000, 200_000, 200_800])
    walls = iter([131_000 + offset, 200_400 + offset])
    now, wall = rxstamp.clock_pair(lambda: next(mono), lambda: next(walls))
    assert (now, wall) == (200_400, 200_400 + offset)
    assert wall - now == offset  # the first pair's midpoint would be 65 µs off


def test_a_flood_held_back_by_flow_control_arrives_whole_and_in_order() -> None:
    """40 messages of 200 KB at once (aiohttp's queue pauses reading at 128 KiB, so the
    tap's pause and resume are exercised), read slowly: every byte, in order; each
    message's arrival is before it was read and not before the previous one's."""
    n, size = 40, 200_000

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for k in range(n):
            await ws.send_bytes(bytes([k]) * size)
        await ws.close()
        return ws

    async def main() -> tuple[_Sink, list[int], bool]:
        server = HandlerServer(handler, "/pcm")
        url = await server.start()
        sink = _Sink()
        read_at: list[int] = []
        session: Any = PcmWebSocketTarget(TargetConfig(url=url, protocol="websocket")).session(sink)
        original = session.on_binary

        def slow(t_ns: int, data: bytes) -> None:
            read_at.append(time.monotonic_ns())
            original(t_ns, data)
            time.sleep(0.005)  # a slow reader: the socket backs up

        session.on_binary = slow
        await session.open()
        tapped = session._stamped is not None
        await asyncio.wait_for(sink.failed.wait(), 60)  # the server closes at the end
        await session.close()
        await server.stop()
        return sink, read_at, tapped

    sink, read_at, tapped = asyncio.run(main())
    assert tapped
    assert [c[1] for c in sink.chunks] == [bytes([k]) * size for k in range(n)]
    stamps = [c[0] for c in sink.chunks]
    assert stamps == sorted(stamps)
    assert all(s <= r for s, r in zip(stamps, read_at, strict=True))
    assert sink.failures == ["target closed the connection (code 1000)"]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_connection_the_server_drops_fails_the_turn_as_before(how: str) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"\x00\x01" * 100)
        await asyncio.sleep(0.1)
        if how == "close":
            await ws.close()
        else:
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # RST
        return ws

    async def main() -> tuple[_Sink, bool]:
        server = HandlerServer(handler, "/pcm")
        url = await server.start()
        sink = _Sink()
        session: Any = PcmWebSocketTarget(TargetConfig(url=url, protocol="websocket")).session(sink)
        await session.open()
        tapped = session._stamped is not None
        await asyncio.wait_for(sink.failed.wait(), 10)
        await session.close()
        await server.stop()
        return sink, tapped

    sink, tapped = asyncio.run(main())
    assert tapped
    assert len(sink.chunks) == 1
    assert len(sink.failures) == 1
    expected = "target closed the connection" if how == "close" else "target closed"
    assert sink.failures[0].startswith(expected) or "connection lost" in sink.failures[0]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)),
            *("-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_is_read_through_the_tap(tmp_path: Path) -> None:
    """Under TLS the socket transport under asyncio's SSL transport is tapped: the
    decrypted stream is whole, and its arrivals come from the receive thread."""
    cert, key = _self_signed(tmp_path)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context()
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    payload = os.urandom(300_000)

    async def main() -> tuple[bytes, int, int]:
        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            for i in range(0, len(payload), 10_000):
                w.write(payload[i : i + 10_000])
                await w.drain()
                await asyncio.sleep(0.001)
            w.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
        stamps: list[int] = []

        def deliver(stamp: int, data: bytes, feed: Any) -> None:
            stamps.append(stamp)
            feed()

        tap = rxstamp.tap(writer.transport, deliver)
        assert tap is not None
        got = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        server.close()
        await server.wait_closed()
        return got, len(stamps), tap.kernel_stamped

    got, chunks, kernel = asyncio.run(main())
    assert got == payload
    assert chunks > 0
    if os.uname().sysname == "Linux":
        assert kernel > 0


def test_udp_datagrams_keep_their_own_arrival_across_a_stall() -> None:
    """Each datagram carries its own kernel arrival, even when the loop stood still
    while several came in (what WebRTC's RTP relies on)."""

    class Proto(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: list[tuple[bytes, Any]] = []

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.append((data, addr))

    async def main() -> tuple[list[tuple[bytes, Any]], list[int], list[int], tuple[str, int]]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        stamps: list[int] = []

        def deliver(stamp: int, data: bytes, feed: Any) -> None:
            stamps.append(stamp)
            feed()

        assert rxstamp.tap(transport, deliver) is not None
        addr = transport.get_extra_info("sockname")
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.bind(("127.0.0.1", 0))
        sent: list[int] = []
        # the loop stands still while five datagrams come in, 10 ms apart
        for k in range(5):
            sent.append(time.monotonic_ns())
            out.sendto(bytes([k]), addr)
            time.sleep(0.01)
        await asyncio.sleep(0.05)
        src = out.getsockname()
        out.close()
        transport.close()
        await asyncio.sleep(0)
        return proto.got, stamps, sent, src

    got, stamps, sent, src = asyncio.run(main())
    assert [g[0] for g in got] == [bytes([k]) for k in range(5)]
    assert all(g[1] == src for g in got)
    # each at its own sending, not all when the loop came back (the machine may add a
    # little: one-sided, and far below the 10 ms between them)
    late = [(s - t) / MS for s, t in zip(stamps, sent, strict=True)]
    assert all(0 <= d < 5 for d in late), (late, stamps, sent)
