"""Ground truth for the probe itself: an in-process pipeline whose reply time is known.

The pipeline below ends the user's turn after 200 ms of silence, then answers with a
reply that starts with LEAD_MS of digital silence. It stamps the instant it emits the
reply audio (``tts.first_byte``), so the true voice-to-voice is
``tts.first_byte + LEAD_MS - speech_end`` with no transport in between. The probe must
recover it to well under a millisecond, and the endpoint to within a frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from voiceaudit.clock import NS_PER_MS
from voiceaudit.data import bundled_dir
from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.python import Emitter, PythonTarget
from voiceaudit.trace_io import read_trace

LEAD_MS = 120
SILENCE_MS = 200


async def known_delay_pipeline(frames: AsyncIterator[bytes], emit: Emitter) -> None:
    rate = emit.rate
    heard_speech = False
    quiet = 0
    noise_floor = 0.0
    reply_task: asyncio.Task[None] | None = None

    async def reply(delay_ms: int) -> None:
        await asyncio.sleep(delay_ms / 1000)
        n = rate * 400 // 1000
        toneburst = (0.3 * np.cos(2 * np.pi * 300 * np.arange(n) / rate) * 32767).astype("<i2")
        pcm = bytes(rate * LEAD_MS // 1000 * 2) + toneburst.tobytes()
        emit.mark("tts.first_byte", "synthesis")
        emit.audio(pcm)
        emit.done()

    async for f in frames:
        x = np.frombuffer(f, "<i2").astype(np.float64)
        level = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
        if noise_floor == 0.0:
            noise_floor = max(level, 1.0)
        if level > 8 * noise_floor + 100:
            heard_speech = True
            quiet = 0
        elif heard_speech:
            quiet += len(x)
            if quiet * 1000 >= SILENCE_MS * rate:
                heard_speech = False
                quiet = 0
                emit.mark("endpoint", "endpointing")
                reply_task = asyncio.create_task(reply(37))
    if reply_task is not None:
        reply_task.cancel()


def run_pipeline(pipeline: str, trace: Path, opts: ProbeOptions) -> RunResult:
    """The probe against ``python://PIPELINE`` at 16 kHz, replaying two bundled
    utterances (continuous synthesized sentences ending on digital silence)."""
    files = [bundled_dir() / name for name in ("03_lights.wav", "05_joke.wav")]
    cfg = TargetConfig(url=f"python://{pipeline}", protocol="python", options={"rate": "16000"})
    return asyncio.run(run_probe(PythonTarget(cfg), load_utterances(files), opts, trace))


def test_probe_recovers_known_voice_to_voice(tmp_path: Path) -> None:
    # Continuous synthesized sentences ending on digital silence: no pause inside them
    # that the crude level detector above could take for the end of the turn.
    trace = tmp_path / "trace.jsonl"
    res = run_pipeline("test_probe_python:known_delay_pipeline", trace, ProbeOptions(gap_ms=100))
    assert [t.ok for t in res.turns] == [True, True], res.turns
    tr = read_trace(trace)
    for _, turn in tr.finished_turns():
        evs = {e.name: e for e in tr.turn_events("s0", turn)}
        speech_end = evs["input.speech_end"].t_ns
        truth = evs["tts.first_byte"].t_ns + LEAD_MS * NS_PER_MS - speech_end
        measured = evs["reply.audible"].t_ns - speech_end
        assert abs(measured - truth) < NS_PER_MS // 2, (measured, truth)
        assert evs["reply.audible"].attrs["onset_ms"] == LEAD_MS
        # the endpoint fired after 200 ms of silence, give or take one 20 ms frame and the
        # pipeline's own level detector on the recording's tail
        endpointing = evs["endpoint"].t_ns - speech_end
        assert 100 * NS_PER_MS <= endpointing <= 300 * NS_PER_MS
        # the frame carrying the last speech sample: its lateness is the one its frame
        # record gives (how late a busy machine made it is the pacing report's business)
        sent = evs["input.speech_end_sent"].attrs
        frames = evs["input.frames"].attrs
        k = sent["frame"]
        assert sent["late_ns"] == frames["dt_ns"][k] - frames["sched_dt_ns"][k] >= 0
