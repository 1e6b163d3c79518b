"""Helpers for the reference-pipeline tests (no tests here): real speech, a ``voiceaudit
serve`` subprocess (``serve``, ``serve_many``, ``Served``: from ``tests/servers.py``), and
protocol clients that record what arrives and when."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from servers import Served as Served
from servers import serve as serve
from servers import serve_many as serve_many

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("VOICEAUDIT_REALDATA", ROOT.parent / "shared" / "realdata"))
SPEECH = REALDATA / "speech"

#: Real recordings with the transcript PocketSphinx gives for them (checked in tests).
CARDS_001 = "pocketsphinx_cards_001.wav"  # "ten of clubs"
CARDS_003 = "pocketsphinx_cards_003.wav"  # "seven of clubs"
ONE_TWO_THREE = "speechrecognition_english.wav"  # "one two three", 44.1 kHz


def need_realdata() -> None:
    if not SPEECH.is_dir():
        pytest.skip(f"real speech not found at {SPEECH} (set VOICEAUDIT_REALDATA)")


def load_speech(name: str, rate: int) -> np.ndarray:
    """A real recording as float32 mono at ``rate``."""
    need_realdata()
    try:
        from voiceaudit.audio import read_audio

        return np.asarray(read_audio(SPEECH / name, rate=rate).samples, dtype=np.float32)
    except ImportError:
        import soundfile as sf
        from scipy.signal import resample_poly

        x, sr = sf.read(SPEECH / name, dtype="float32", always_2d=True)
        mono = x.mean(axis=1)
        if sr != rate:
            g = np.gcd(sr, rate)
            mono = resample_poly(mono, rate // g, sr // g)
        return np.asarray(mono, dtype=np.float32)


def onset(samples: np.ndarray, rate: int) -> int | None:
    """Index of the first audible sample (the Foundation onset detector)."""
    try:
        from voiceaudit.audio import first_audible
    except ImportError:
        return _onset_fallback(samples, rate)
    return first_audible(samples, rate)


def _onset_fallback(samples: np.ndarray, rate: int) -> int | None:
    # Until voiceaudit.audio lands: first 5 ms window whose RMS is above -40 dBFS.
    win = max(1, rate // 200)
    x = np.asarray(samples, dtype=np.float64)
    for i in range(0, max(0, x.size - win) + 1, max(1, win // 5)):
        if np.sqrt(np.mean(x[i : i + win] ** 2)) > 0.01:
            seg = np.abs(x[i : i + win])
            return i + int(np.argmax(seg > 0.01))
    return None


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


# --- the server as a subprocess: tests/servers.py (kept importable from here) ---------


# --- raw PCM WebSocket client -------------------------------------------------------------


@dataclass
class PcmTurn:
    events: list[dict[str, Any]] = field(default_factory=list)
    #: (client receive time ns, event) for JSON events
    event_times: dict[str, int] = field(default_factory=dict)
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    session_id: str = ""
    connect_ns: int = 0
    speech_end_sent_ns: int = 0

    def event(self, name: str) -> dict[str, Any]:
        for e in self.events:
            if e["type"] == name:
                return e
        raise AssertionError(f"no {name!r} event in {[e['type'] for e in self.events]}")

    @property
    def audio(self) -> np.ndarray:
        return from_pcm16(b"".join(d for _, d in self.frames))


async def pcm_turn(
    base_ws: str,
    speech: np.ndarray,
    *,
    rate: int = 16_000,
    out_rate: int | None = None,
    silence_s: float = 1.0,
    speed: float = 1.0,
    keep_sending: bool = True,
    open_mic_frame_ms: int = 20,
    timeout: float = 30.0,
) -> PcmTurn:
    """Speak ``speech`` (then silence) into ``/v1/pcm`` at real-time pace times ``speed``,
    and collect everything until ``turn_done``. After the clip the microphone stays open
    (``keep_sending``): silence in ``open_mic_frame_ms`` frames, in real time."""
    result = PcmTurn()
    url = f"{base_ws}/v1/pcm?rate={rate}" + (f"&out_rate={out_rate}" if out_rate else "")
    frame = rate // 50
    audio = np.concatenate([speech, np.zeros(int(silence_s * rate), dtype=np.float32)])
    async with aiohttp.ClientSession() as cs:
        t0 = time.monotonic_ns()
        async with cs.ws_connect(url, autoping=True) as ws:
            result.connect_ns = time.monotonic_ns() - t0

            async def send() -> None:
                start = time.monotonic()
                for n, k in enumerate(range(0, audio.size, frame), start=1):
                    await ws.send_bytes(pcm16(audio[k : k + frame]))
                    if k <= speech.size < k + frame:
                        result.speech_end_sent_ns = time.monotonic_ns()
                    delay = start + n * 0.02 / speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                quiet = bytes(rate * open_mic_frame_ms // 1000 * 2)
                while keep_sending:  # the caller's microphone stays open
                    await ws.send_bytes(quiet)
                    await asyncio.sleep(open_mic_frame_ms / 1000)

            sender = asyncio.create_task(send())
            try:
                async with asyncio.timeout(timeout):
                    async for msg in ws:
                        now = time.monotonic_ns()
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            result.frames.append((now, msg.data))
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            ev = json.loads(msg.data)
                            result.events.append(ev)
                            result.event_times.setdefault(ev["type"], now)
                            if ev["type"] == "session.started":
                                result.session_id = ev["session_id"]
                            if ev["type"] == "turn_done":
                                break
                        else:
                            break
            finally:
                sender.cancel()
                with_suppressed = asyncio.gather(sender, return_exceptions=True)
                await with_suppressed
    return result


# --- OpenAI Realtime client on raw frames (to see exactly what is sent) ------------------


@dataclass
class RealtimeTurn:
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    session_id: str = ""

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def first(self, name: str) -> tuple[int, dict[str, Any]]:
        for t, e in zip(self.times, self.events, strict=True):
            if e["type"] == name:
                return t, e
        raise AssertionError(f"no {name!r} in {self.types()}")

    def audio(self, name: str = "response.output_audio.delta") -> bytes:
        return b"".join(base64.b64decode(e["delta"]) for e in self.events if e["type"] == name)


async def realtime_turn(
    base_ws: str,
    speech_24k: np.ndarray,
    *,
    session: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    silence_s: float = 1.0,
    speed: float = 1.0,
    before: list[str] | None = None,
    timeout: float = 30.0,
) -> RealtimeTurn:
    """One spoken turn over ``/v1/realtime`` with aiohttp; returns every server event."""
    out = RealtimeTurn()
    audio = np.concatenate([speech_24k, np.zeros(int(silence_s * 24_000), dtype=np.float32)])
    async with (
        aiohttp.ClientSession() as cs,
        cs.ws_connect(f"{base_ws}/v1/realtime?model=gpt-realtime", headers=headers or {}) as ws,
    ):
        for raw in before or []:
            await ws.send_str(raw)
        if session is not None:
            await ws.send_str(json.dumps({"type": "session.update", "session": session}))

        async def send() -> None:
            start = time.monotonic()
            step = 480
            for n, k in enumerate(range(0, audio.size, step), start=1):
                chunk = base64.b64encode(pcm16(audio[k : k + step])).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                delay = start + n * 0.02 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(timeout):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    ev = json.loads(msg.data)
                    out.times.append(time.monotonic_ns())
                    out.events.append(ev)
                    out.raw.append(msg.data)
                    if ev["type"] == "session.created":
                        out.session_id = ev["session"]["id"]
                    if ev["type"] == "response.done":
                        break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return out
