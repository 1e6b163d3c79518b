"""Send-time precision of the probe's pacer.

Starts a cheap WebSocket sink in a separate process on loopback, opens 1, 10 and 100
concurrent sessions that each stream 20 ms PCM frames at real-time pace through
voiceaudit's Pacer (the same code path the probe uses), and prints the distribution of
(actual send time - scheduled time).

    .venv/bin/python bench/pacing.py [--seconds 10] [--sessions 1,10,100]

Goal (issue 4): p99 <= 1 ms at 1 session and <= 2 ms at 100.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from voiceaudit.probe.pacing import Pacer

# the tests' helpers serve the bench scripts too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import serve_forever

RATE = 24000
FRAME_MS = 20


def _sink(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    serve_forever("/", handler, port_q)


async def _session(
    http: aiohttp.ClientSession, url: str, pacer: Pacer, seconds: float, lateness: list[int]
) -> None:
    async with http.ws_connect(url) as ws:
        frame = bytes(RATE * FRAME_MS // 1000 * 2)
        # Sessions start at random phases, like independent callers.
        t0 = time.monotonic_ns() + random.randint(5, 25) * 1_000_000
        n = int(seconds * 1000 / FRAME_MS)
        for k in range(1, n + 1):
            deadline = t0 + k * FRAME_MS * 1_000_000
            await pacer.wait_until(deadline)
            t = time.monotonic_ns()
            await ws.send_bytes(frame)
            lateness.append(t - deadline)


async def measure(url: str, sessions: int, seconds: float) -> np.ndarray:  # type: ignore[type-arg]
    pacer = Pacer()
    lateness: list[int] = []
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(
            *(_session(http, url, pacer, seconds, lateness) for _ in range(sessions))
        )
    return np.array(lateness, dtype=np.float64) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sessions", default="1,10,100")
    args = ap.parse_args()
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    proc = mp.Process(target=_sink, args=(q,), daemon=True)
    proc.start()
    port = q.get(timeout=10)
    url = f"ws://127.0.0.1:{port}/"
    print(f"pacer send lateness (actual - scheduled), {FRAME_MS} ms frames, {args.seconds:g} s")
    print(f"{'sessions':>8} {'frames':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'early':>6}")
    try:
        for n in (int(x) for x in args.sessions.split(",")):
            lat = asyncio.run(measure(url, n, args.seconds))
            print(
                f"{n:>8} {len(lat):>8} {np.percentile(lat, 50):8.3f} "
                f"{np.percentile(lat, 99):8.3f} {lat.max():8.3f} {int((lat < 0).sum()):>6}"
            )
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
