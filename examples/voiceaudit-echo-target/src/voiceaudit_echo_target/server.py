"""A server of the ``echo-plugin`` protocol (see the package's docstring), to try the plugin
against and to test it with.

    python -m voiceaudit_echo_target.server [--port P] [--delay-ms MS] [--truth FILE]

prints ``echo-server listening ws://127.0.0.1:P/echo`` on stdout when ready. Each turn
ends at the client's ``commit`` (or after ``--silence-ms`` of quiet after speech); the
server sends ``committed``, waits ``--delay-ms`` (a known delay, for tests to recover),
then echoes the turn's speech from its first audible 20 ms frame on, paced at real time.
``--error`` answers every turn with an ``error`` event instead.

``--truth FILE`` appends one JSON line per turn: ``turn``, ``rate``, ``frame_samples``,
``end_ns`` (when the turn ended: the commit's arrival, or the last quiet frame's),
``committed_ns`` and ``audio_sent_ns`` (when each reply frame was handed to the socket),
all ``time.monotonic_ns()``, the clock a probe on the same host reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

FRAME_MS = 20
#: a 20 ms frame whose RMS is above this (of 32767) is speech
SPEECH_RMS = 300.0


@dataclass
class EchoConfig:
    """How the server behaves."""

    delay_ms: int = 0
    silence_ms: int = 500
    error: bool = False
    truth: Path | None = None


class _Turn:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.pcm = bytearray()
        self.speech = False
        self.quiet_ms = 0

    def feed(self, data: bytes) -> None:
        self.pcm += data
        x = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float64)
        loud = x.size > 0 and float(np.sqrt(np.mean(x * x))) > SPEECH_RMS
        if loud:
            self.speech, self.quiet_ms = True, 0
        elif self.speech:
            self.quiet_ms += 1000 * x.size // self.rate

    def reply_frames(self) -> list[bytes]:
        """The turn's audio in 20 ms frames, from the first audible one on."""
        n = self.rate * FRAME_MS // 1000 * 2
        frames = [bytes(self.pcm[i : i + n]) for i in range(0, len(self.pcm) - n + 1, n)]
        for k, f in enumerate(frames):
            x = np.frombuffer(f, "<i2").astype(np.float64)
            if float(np.sqrt(np.mean(x * x))) > SPEECH_RMS:
                return frames[k:]
        return []


async def _handle(request: web.Request) -> web.StreamResponse:
    cfg: EchoConfig = request.app["echo_config"]
    try:
        rate = int(request.query.get("rate", "16000"))
    except ValueError:
        raise web.HTTPBadRequest(text="rate must be a whole number") from None
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(json.dumps({"type": "ready", "rate": rate}))
    turn = _Turn(rate)
    number = 0
    replying: asyncio.Task[None] | None = None

    async def reply(t: _Turn, n: int, end_ns: int) -> None:
        committed_ns = time.monotonic_ns()
        await ws.send_str(json.dumps({"type": "committed"}))
        if cfg.error:
            await ws.send_str(json.dumps({"type": "error", "message": "echo refused (--error)"}))
            return
        await asyncio.sleep(cfg.delay_ms / 1000)
        await ws.send_str(json.dumps({"type": "reply.start"}))
        sent: list[int] = []
        t0 = time.monotonic()
        for k, frame in enumerate(t.reply_frames()):
            # real-time pacing on an absolute schedule (no drift)
            await asyncio.sleep(max(0.0, t0 + k * FRAME_MS / 1000 - time.monotonic()))
            sent.append(time.monotonic_ns())
            await ws.send_bytes(frame)
        await ws.send_str(json.dumps({"type": "reply.done"}))
        if cfg.truth is not None:
            record = {
                "turn": n,
                "rate": t.rate,
                "frame_samples": t.rate * FRAME_MS // 1000,
                "end_ns": end_ns,
                "committed_ns": committed_ns,
                "audio_sent_ns": sent,
            }
            with cfg.truth.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def end_turn(end_ns: int) -> None:
        nonlocal turn, number, replying
        if replying is not None and not replying.done():
            return
        replying = asyncio.create_task(reply(turn, number, end_ns))
        number += 1
        turn = _Turn(rate)

    try:
        async for msg in ws:
            now = time.monotonic_ns()
            busy = replying is not None and not replying.done()
            if msg.type == WSMsgType.BINARY:
                if busy:
                    continue  # what the caller says over the echo is not the next turn
                turn.feed(msg.data)
                if turn.speech and turn.quiet_ms >= cfg.silence_ms:
                    end_turn(now)
            elif msg.type == WSMsgType.TEXT:
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "commit" and not busy and turn.pcm:
                    end_turn(now)
                elif kind != "commit":
                    await ws.send_str(
                        json.dumps({"type": "error", "message": f"unknown message {kind!r}"})
                    )
    finally:
        if replying is not None:
            replying.cancel()
            with contextlib.suppress(BaseException):
                await replying
    return ws


def make_app(config: EchoConfig) -> web.Application:
    """The aiohttp application: the protocol at ``GET /echo``."""
    app = web.Application()
    app["echo_config"] = config
    app.router.add_get("/echo", _handle)
    return app


async def start(config: EchoConfig, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Serve in the running loop; returns ``(runner, url)`` (``await runner.cleanup()``)."""
    runner = web.AppRunner(make_app(config))
    await runner.setup()
    sock = socket.socket()
    sock.bind((host, port))
    await web.SockSite(runner, sock).start()
    return runner, f"ws://{host}:{sock.getsockname()[1]}/echo"


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m voiceaudit_echo_target.server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--silence-ms", type=int, default=500)
    p.add_argument("--error", action="store_true")
    p.add_argument("--truth", type=Path)
    a = p.parse_args(argv)
    cfg = EchoConfig(a.delay_ms, a.silence_ms, a.error, a.truth)

    async def serve() -> None:
        runner, url = await start(cfg, a.host, a.port)
        print(f"echo-server listening {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
