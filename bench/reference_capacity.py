#!/usr/bin/env python3
"""How many concurrent realtime sessions does ``voiceaudit serve`` sustain on this machine
before its own stage latencies grow by 20%?

Starts ``voiceaudit serve`` (default configuration: two recognition workers) as a
subprocess with a ground-truth file, then runs rounds of N concurrent OpenAI-Realtime
sessions (N = 1, 2, 3, …). Each session behaves like a caller: it speaks a real recording
at real-time pace, waits for the reply, listens to it (its audio duration), pauses, and
speaks again, for ``max(2, ceil(--min-turns / N))`` turns. Sessions start at random
offsets so they do not speak in lockstep.

The figures come from the server's own ground truth (its monotonic clock), per turn:

* ``asr``       vad_stop → asr_done: recognizer finalization after the endpoint
* ``synth``     tts_request → tts_first_audio: first synthesized audio
* ``send``      tts_first_audio → first_audio_sent: framing and the socket write
* ``processing`` the sum: the server's own work between the endpoint and the first
  reply byte, leaving out the scripted responder's configured waits (time to first
  token, token rate), which do not depend on load.

The capacity is the largest N whose median processing latency stays within 1.2x of the
one-session median, with every turn answered (the 90th percentile is printed too; with
ten-odd turns per round it is too noisy to decide on).

Run:  .venv/bin/python bench/reference_capacity.py [--max-sessions 10] [--min-turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("VOICEAUDIT_REALDATA", ROOT.parent / "shared" / "realdata"))
RECORDINGS = [
    "pocketsphinx_cards_001.wav",
    "pocketsphinx_cards_002.wav",
    "pocketsphinx_cards_003.wav",
    "pocketsphinx_cards_005.wav",
    "speechrecognition_english.wav",
    "pocketsphinx_sense_and_sensibility_01_austen_64kb-0880.wav",
]


def load(name: str) -> np.ndarray:
    from voiceaudit.audio import read_audio

    return np.asarray(read_audio(REALDATA / "speech" / name, rate=24000).samples, np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def start_server(truth: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "voiceaudit", "serve", "--port", "0"]
    cmd += ["--asr-workers", str(workers), "--ground-truth", str(truth)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("voiceaudit-serve listening "):
        proc.kill()
        raise SystemExit("voiceaudit serve did not start")
    return proc, line.split()[-1].replace("http://", "ws://") + "/v1/realtime"


async def caller(
    url: str, speeches: list[np.ndarray], turns: int, rng: random.Random
) -> tuple[str, int]:
    """One session: speak, wait for the reply, listen to it, pause; ``turns`` times."""
    await asyncio.sleep(rng.uniform(0, 1.5))
    answered = 0
    async with aiohttp.ClientSession() as cs, cs.ws_connect(url) as ws:
        created = json.loads((await ws.receive()).data)
        session_id = str(created["session"]["id"])
        for _ in range(turns):
            speech = speeches[rng.randrange(len(speeches))]
            audio = np.concatenate([speech, np.zeros(24000, dtype=np.float32)])
            done = asyncio.Event()
            reply = [0]  # samples of reply audio

            async def listen(done: asyncio.Event = done, reply: list[int] = reply) -> None:
                async for msg in ws:
                    ev = json.loads(msg.data)
                    if ev["type"] == "response.output_audio.delta":
                        reply[0] += len(base64.b64decode(ev["delta"])) // 2
                    elif ev["type"] == "response.done":
                        done.set()
                        return

            listener = asyncio.create_task(listen())
            start = time.monotonic()
            for n, k in enumerate(range(0, audio.size, 480), start=1):
                if done.is_set():
                    break
                chunk = base64.b64encode(pcm16(audio[k : k + 480])).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            try:
                await asyncio.wait_for(listener, timeout=30)
                answered += 1
            except TimeoutError:
                break
            # The caller listens to the reply, then thinks for a moment.
            await asyncio.sleep(reply[0] / 24000 + rng.uniform(0.2, 0.6))
    return session_id, answered


def stage_latencies(records: list[dict[str, Any]], sessions: set[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"asr": [], "synth": [], "send": [], "processing": []}
    for r in records:
        if r.get("record") != "turn" or r["session_id"] not in sessions:
            continue
        m = r["marks"]
        need = ("vad_stop", "asr_done", "tts_request", "tts_first_audio", "first_audio_sent")
        if r["status"] != "completed" or any(m[k] is None for k in need):
            continue
        asr = (m["asr_done"] - m["vad_stop"]) / 1e6
        synth = (m["tts_first_audio"] - m["tts_request"]) / 1e6
        send = (m["first_audio_sent"] - m["tts_first_audio"]) / 1e6
        out["asr"].append(asr)
        out["synth"].append(synth)
        out["send"].append(send)
        out["processing"].append(asr + synth + send)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-sessions", type=int, default=10)
    ap.add_argument(
        "--min-turns",
        type=int,
        default=10,
        help="turns per round at least (each session does max(2, ceil(this / N)))",
    )
    ap.add_argument("--asr-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    speeches = [load(n) for n in RECORDINGS]
    truth = Path(tempfile.mkdtemp(prefix="va-capacity-")) / "truth.jsonl"
    proc, url = start_server(truth, args.asr_workers)
    from voiceaudit.reference import read_ground_truth

    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"server: {url} ({args.asr_workers} recognition workers)")
    print()
    print(" sessions  turns   processing p50/p90 ms   asr p50/p90 ms   synth p50   send p50")
    base: tuple[float, float] | None = None
    capacity = 0
    rng = random.Random(args.seed)
    try:
        n = 1
        while n <= args.max_sessions:
            rngs = [random.Random(rng.random()) for _ in range(n)]
            turns = max(2, -(-args.min_turns // n))

            async def round_(
                n: int = n, rngs: list[random.Random] = rngs, turns: int = turns
            ) -> list[Any]:
                return await asyncio.gather(
                    *(caller(url, speeches, turns, rngs[i]) for i in range(n))
                )

            results = asyncio.run(round_())
            time.sleep(0.3)  # the last records are written as the responses finish
            sessions = {sid for sid, _ in results}
            answered = sum(a for _, a in results)
            lat = stage_latencies(read_ground_truth(truth), sessions)
            p50, p90 = pct(lat["processing"], 50), pct(lat["processing"], 90)
            print(
                f" {n:8d}  {answered:3d}/{n * turns:<3d}"
                f"  {p50:10.1f} / {p90:7.1f}"
                f"   {pct(lat['asr'], 50):6.1f} / {pct(lat['asr'], 90):6.1f}"
                f"   {statistics.median(lat['synth']) if lat['synth'] else float('nan'):8.2f}"
                f"   {statistics.median(lat['send']) if lat['send'] else float('nan'):7.2f}",
                flush=True,
            )
            if base is None:
                base = (p50, p90)
            ok = answered == n * turns and p50 <= 1.2 * base[0]
            if not ok:
                break
            capacity = n
            n += 1 if n < 4 else 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print()
    assert base is not None
    print(
        f"capacity: {capacity} concurrent realtime sessions before the server's own "
        f"median processing latency grows by 20% (one session: p50 {base[0]:.1f} ms, "
        f"p90 {base[1]:.1f} ms)"
    )
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
