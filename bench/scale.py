"""Pacing of the real probe at 1, 50 and 200 concurrent sessions on one machine.

Starts a cheap echo target in a separate process on loopback (it answers each turn with
300 ms of tone once it has heard 200 ms of digital silence after speech), then runs
``run_probe`` at each concurrency level for a fixed time, and prints the frames' send
lateness (actual - scheduled, from the run's ``input.pacing`` summaries: p50/p99 to 0.1 ms,
rounded up; the worst frame exactly) and the probe's CPU time per session.

``--protocol websocket`` (the default): raw 16 kHz PCM frames, the reply ended by
``turn_done``. ``--protocol twilio``: paced phone sessions, voiceaudit playing the carrier
(Twilio Media Streams: 20 ms μ-law frames in JSON with base64, the line kept busy with
silence between turns, the carrier's playout modelled) toward a bot that answers each
turn with one ``media`` message and a ``mark``.

    .venv/bin/python bench/scale.py [--seconds 10] [--sessions 1,50,200] [--profile FILE]
        [--protocol websocket|twilio]

Goal (issue 13): p99 <= 2 ms at 200 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from aiohttp import WSMsgType, web

from voiceaudit.clock import NS_PER_MS
from voiceaudit.data import bundled_dir
from voiceaudit.pacing_stats import P99_GOAL_NS
from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import Utterance, load_utterances
from voiceaudit.targets.base import TargetConfig

# the tests' helpers serve the bench scripts too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import serve_forever

RATE = 16000
#: consecutive all-zero frames (20 ms) after speech that end the caller's turn
QUIET_FRAMES = 10


def _echo(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    reply = (0.3 * np.sin(2 * np.pi * 300 * np.arange(RATE * 3 // 10) / RATE) * 32767).astype("<i2")
    reply_pcm = reply.tobytes()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        speech = False
        quiet = 0
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            data: bytes = msg.data
            if data.count(0) == len(data):  # digital silence: C speed, no numpy per frame
                quiet += 1
                if speech and quiet >= QUIET_FRAMES:
                    speech = False
                    await ws.send_bytes(reply_pcm)
                    await ws.send_str('{"type": "turn_done"}')
            else:
                speech, quiet = True, 0
        return ws

    serve_forever("/v1/pcm", handler, port_q)


def _twilio_bot(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """A Twilio Media Streams bot: answers each caller turn with 300 ms of tone in one
    ``media`` message, then a ``mark``."""
    import base64
    import json

    from voiceaudit.codecs import G711_RATE, ulaw_encode

    tone = 0.3 * np.sin(2 * np.pi * 300 * np.arange(G711_RATE * 3 // 10) / G711_RATE) * 32767
    payload = base64.b64encode(ulaw_encode(tone.astype("<i2")).tobytes()).decode()
    silent = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law digital silence

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        speech = False
        quiet = 0
        sid = ""
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            ev = json.loads(msg.data)
            if ev.get("event") == "start":
                sid = ev["start"]["streamSid"]
            if ev.get("event") != "media":
                continue
            if ev["media"]["payload"] == silent:
                quiet += 1
                if speech and quiet >= QUIET_FRAMES:
                    speech = False
                    media = {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                    await ws.send_str(json.dumps(media))
                    await ws.send_str(
                        json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "r"}})
                    )
            else:
                speech, quiet = True, 0
        return ws

    serve_forever("/media-stream", handler, port_q)


async def _level(
    url: str, utts: list[Utterance], sessions: int, seconds: float, out: Path, protocol: str
) -> RunResult:
    from voiceaudit.targets.registry import get_target_class

    options = {"rate": str(RATE)} if protocol == "websocket" else {}
    cfg = TargetConfig(url=url, protocol=protocol, options=options)
    opts = ProbeOptions(sessions=sessions, turns=10_000, gap_ms=200, timeout_s=5, greeting_wait_s=0)

    async def stop_later(probe: object) -> None:
        asyncio.get_running_loop().call_later(seconds, probe.stop)  # type: ignore[attr-defined]

    target = get_target_class(protocol)(cfg)
    return await run_probe(target, utts, opts, out, on_start=stop_later)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="run time per level")
    ap.add_argument("--sessions", default="1,50,200")
    ap.add_argument("--profile", type=Path, help="cProfile the last level into this file")
    ap.add_argument("--protocol", choices=("websocket", "twilio"), default="websocket")
    args = ap.parse_args()
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    phone = args.protocol == "twilio"
    proc = mp.Process(target=_twilio_bot if phone else _echo, args=(q,), daemon=True)
    proc.start()
    path = "/media-stream" if phone else "/v1/pcm"
    url = f"ws://127.0.0.1:{q.get(timeout=10)}{path}"
    levels = [int(x) for x in args.sessions.split(",")]
    utts = load_utterances(sorted(bundled_dir().glob("*.wav")), rate=RATE)
    what = (
        "paced phone sessions (Twilio Media Streams, the carrier's playout modelled)"
        if phone
        else "raw PCM WebSocket echo"
    )
    print(f"probe pacing, {what} on loopback, 20 ms frames, {args.seconds:g} s")
    print(
        f"{'sessions':>8} {'turns':>6} {'ok':>6} {'frames':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'worst ms':>9} {'broke':>6} {'CPU ms/s/session':>17}"
    )
    last_p99: float | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, n in enumerate(levels):
                prof = cProfile.Profile() if args.profile and i == len(levels) - 1 else None
                cpu0, wall0 = time.process_time(), time.monotonic()
                if prof is not None:
                    prof.enable()
                res = asyncio.run(
                    _level(url, utts, n, args.seconds, Path(tmp) / f"{n}.jsonl", args.protocol)
                )
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(str(args.profile))
                cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                s = res.pacing_summary()
                if s is None:
                    print(f"{n:>8}  no frame sent")
                    continue
                last_p99 = s["p99_ms"]
                print(
                    f"{n:>8} {len(res.turns):>6} {len(res.ok_turns):>6} {s['frames']:>8} "
                    f"{s['p50_ms']:7.1f} "
                    f"{s['p99_ms']:7.1f} {s['worst_ms']:9.2f} {s['broke_turns']:>6} "
                    f"{cpu * 1000 / n / wall:17.2f}"
                )
    finally:
        proc.terminate()
    goal = P99_GOAL_NS / NS_PER_MS
    if last_p99 is not None:
        verdict = "met" if last_p99 <= goal else "NOT met"
        print(f"goal: p99 <= {goal:g} ms at {levels[-1]} sessions: {last_p99:.1f} ms, {verdict}")


if __name__ == "__main__":
    main()
