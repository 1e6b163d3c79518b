"""Captures of the reference pipeline (``voiceaudit serve``) with its network injections:
``connect-delay`` shows as connection setup on the wire, ``small-writes`` as Nagle stalls,
and a server without injections shows neither."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from test_reference_support import CARDS_001, load_speech, need_realdata, pcm_turn, serve_many

from voiceaudit.capture import analyze_capture
from voiceaudit.capture.align import to_probe_clock
from voiceaudit.capture.dumpcap import Dumpcap, capture_rights_problem

MS = 1_000_000

pytestmark = [
    pytest.mark.capture,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
    pytest.mark.skipif(capture_rights_problem() is not None, reason="no capture rights here"),
]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_reference_injections_on_the_wire(tmp_path: Path) -> None:
    need_realdata()
    speech = load_speech(CARDS_001, 16_000)
    configs = [[], ["--inject", "connect-delay=200ms"], ["--inject", "small-writes"]]
    with serve_many(configs) as (base, delayed, small):
        ports = [_port(s.url) for s in (base, delayed, small)]
        out = tmp_path / "capture.pcapng"
        filt = " or ".join(f"tcp port {p}" for p in ports)
        with Dumpcap(out, interface="lo", capture_filter=filt) as cap:

            async def drive() -> tuple[int, int]:
                async with aiohttp.ClientSession() as cs:
                    t0 = time.monotonic_ns()
                    async with cs.ws_connect(delayed.ws + "/v1/pcm"):
                        connect = time.monotonic_ns() - t0
                base_turn = await pcm_turn(base.ws, speech, speed=2.0)
                # A burst is held until the caller's next microphone frame carries the ACK,
                # and only holds of 15 ms or more are stalls. With 20 ms frames that needs
                # a burst in the first 5 ms after a frame: 27 of 60 replies had no stall,
                # and 2 of 20 runs (and one CI run) none in all three. With 30 ms frames
                # (a common VAD frame size) 2 of 120 replies had none, under two busy
                # cores (40 runs, none without a stall).
                small_turns = [
                    await pcm_turn(small.ws, speech, speed=2.0, open_mic_frame_ms=30)
                    for _ in range(3)
                ]
                assert base_turn.frames and all(t.frames for t in small_turns)
                return connect, small_turns[0].frames[0][0]

            client_connect, first_reply = asyncio.run(drive())
        assert cap.result is not None
        report = analyze_capture(out)

    def sessions(port: int) -> list:  # type: ignore[type-arg]
        return [w for w in report.websocket_sessions if w.server.endswith(f":{port}")]

    # connect-delay=200ms holds a new connection's first response: on the wire it is the
    # WebSocket upgrade; the TCP handshake itself stays at loopback speed.
    (slow,) = sessions(ports[1])
    # Never less than the injected 200 ms; above, the client's own clock bounds it (it
    # sent the request after it started timing and had the 101 before it stopped), not
    # a fixed margin: the server's 200 ms sleep can only end late, and a loaded machine
    # once made it 250.06 ms. Timing the upgrade to a later packet (the close that
    # follows) fails the bound.
    assert slow.upgrade_ns is not None and 200 * MS <= slow.upgrade_ns < client_connect
    (conn,) = [c for c in report.tcp_connections if c.server.endswith(f":{ports[1]}")]
    assert conn.connect_ns is not None and conn.connect_ns < 5 * MS
    (quick,) = sessions(ports[0])
    assert quick.upgrade_ns is not None and quick.upgrade_ns < 100 * MS

    # small-writes: TCP_NODELAY off and 64-byte writes; the client's delayed ACKs hold them.
    def stalls(port: int) -> list:  # type: ignore[type-arg]
        return [
            s
            for c in report.tcp_connections
            if c.server.endswith(f":{port}")
            for s in c.small_write_stalls
        ]

    # The reply is written in one burst: the first piece leaves, the rest piles up behind
    # it until the caller's ACK (on its next microphone frame) and leaves in one segment.
    # Every stall is the small-writes server's: the caller (TCP_NODELAY) is never held,
    # on either connection. A caller starved of CPU did once write a frame just after a
    # late pure ACK from the server (its write began 0.48 ms after the ACK and was on the
    # wire 32 us later: an application's late write, not a kernel hold); the detector
    # tells the two apart by the caller's other frames, which show Nagle off.
    held = stalls(ports[2])
    assert held, "no small-write stall on the small-writes connection"
    assert all(s.sender.endswith(f":{ports[2]}") for s in held), held
    assert stalls(ports[0]) == []
    assert all(s.ack_delay_ns >= 15 * MS and 15 * MS <= s.held_ns < 500 * MS for s in held)
    # Many 64-byte writes held together: every stall more than one piece, and at least
    # one more than a whole 20 ms reply message (10 pieces and its header). A stall holds
    # what the server wrote before the ACK came, and Nagle holds the server's JSON events
    # (written whole) like its audio: at the end of a reply, a stall can hold just the
    # last events (turn_done alone: 248 bytes; 3 of 178 stalls in a loop under two busy
    # cores, and why holding every stall to 640 bytes failed about one run in 40), so
    # only the largest is held to the message size. A stall timed at a lone piece or a
    # frame header fails the first.
    assert all(s.length > 64 for s in held), [s.length for s in held]
    assert max(s.length for s in held) > 10 * 64 + 4, [s.length for s in held]
    # On the probe's clock the stalls fall inside the reply the client received.
    mono = to_probe_clock(report, cap.result.anchors)
    released = sorted(
        s.released_at_ns
        for c in mono.tcp_connections
        if c.server.endswith(f":{ports[2]}")
        for s in c.small_write_stalls
    )
    assert released[0] >= first_reply - 1_000 * MS
