"""What reading on the receive thread (voiceaudit/targets/rxstamp.py) costs and buys.

A WebSocket server in another process sends binary messages, each starting with its own
``time.monotonic_ns()`` at the write (one clock on one host). The probe's raw-PCM target
receives them twice: with its socket tapped (kernel timestamps, read on the receive
thread) and with ``VOICEAUDIT_RX_TAP=0`` (read and stamped by the loop, as before).

- ``paced``: 20 ms messages for ``--seconds``, while the loop is blocked 50 ms every
  500 ms (a stall): arrival minus write, p50/p99/max, for the messages that came during
  a stall and for the others.
- ``flood``: ``--messages`` 1920-byte messages as fast as the server writes them:
  process CPU time per message received (the receive thread's included), and the time
  a ``send_bytes`` of a 20 ms frame takes on the loop meanwhile (the send path has no
  thread hop; this shows the thread does not slow it).

    .venv/bin/python bench/rx_tap.py [--seconds 5] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.websocket import PcmWebSocketTarget

# the tests' helpers serve the bench scripts too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import serve_forever

HEAD = struct.Struct("<q")


def _server(port_q: Any, mode: str, seconds: float, messages: int) -> None:
    payload = bytes(1920)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if mode == "paced":
            t0 = time.monotonic_ns()
            k = 0
            while time.monotonic_ns() - t0 < seconds * 1e9:
                await ws.send_bytes(HEAD.pack(time.monotonic_ns()) + payload)
                k += 1
                await asyncio.sleep(max(0.0, (t0 + k * 20_000_000 - time.monotonic_ns()) / 1e9))
        else:
            for _ in range(messages):
                await ws.send_bytes(HEAD.pack(time.monotonic_ns()) + payload)
        await ws.close()
        return ws

    serve_forever("/pcm", handler, port_q)


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[int, int]] = []
        self.closed = asyncio.Event()

    def mark(self, *a: Any, **k: Any) -> None:
        pass

    def reply_audio(self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int) -> None:
        (sent,) = HEAD.unpack_from(pcm16)
        self.got.append((sent, t_ns))

    def reply_done(self, t_ns: int) -> None:
        pass

    def fail(self, reason: str) -> None:
        self.closed.set()


async def _client(port: int, mode: str) -> dict[str, Any]:
    sink = _Sink()
    target = PcmWebSocketTarget(
        TargetConfig(url=f"ws://127.0.0.1:{port}/pcm", protocol="websocket")
    )
    session = target.session(sink)
    stalls: list[tuple[int, int]] = []
    sends: list[int] = []
    await session.open()
    c0 = time.process_time_ns()

    async def staller() -> None:
        while not sink.closed.is_set():
            await asyncio.sleep(0.45)
            t0 = time.monotonic_ns()
            time.sleep(0.05)
            stalls.append((t0, time.monotonic_ns()))

    async def sender() -> None:
        frame = bytes(1920)
        while not sink.closed.is_set():
            t0 = time.perf_counter_ns()
            await session.send_audio(frame)
            sends.append(time.perf_counter_ns() - t0)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(staller() if mode == "paced" else sender())
    await sink.closed.wait()
    cpu = time.process_time_ns() - c0
    task.cancel()
    await session.close()
    lat = np.array([t - s for s, t in sink.got], dtype=np.float64) / 1e6
    in_stall = np.array([any(a <= s <= b for a, b in stalls) for s, _ in sink.got], dtype=bool)
    out: dict[str, Any] = {"messages": len(sink.got)}
    if mode == "paced":
        for name, sel in (("during a stall", in_stall), ("otherwise", ~in_stall)):
            v = lat[sel]
            if v.size:
                out[name] = (
                    f"n={v.size} p50={np.percentile(v, 50):.3f} "
                    f"p99={np.percentile(v, 99):.3f} max={v.max():.3f} ms"
                )
    else:
        out["cpu_us_per_message"] = round(cpu / 1e3 / max(1, len(sink.got)), 2)
        s = np.array(sends, dtype=np.float64) / 1e3
        out["send_bytes_us"] = f"p50={np.percentile(s, 50):.1f} p99={np.percentile(s, 99):.1f}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    for mode in ("paced", "flood"):
        for tapped in (True, False):
            os.environ["VOICEAUDIT_RX_TAP"] = "1" if tapped else "0"
            q: Any = mp.Queue()
            proc = mp.Process(target=_server, args=(q, mode, args.seconds, args.messages))
            proc.start()
            try:
                port = q.get(timeout=30)
                got = asyncio.run(_client(port, mode))
            finally:
                proc.terminate()
                proc.join()
            label = "tapped (receive thread)" if tapped else "loop-read (VOICEAUDIT_RX_TAP=0)"
            print(f"{mode:6} {label:34} {got}")


if __name__ == "__main__":
    main()
