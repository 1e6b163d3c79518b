"""Marks from different clocks, against a real run: ``voiceaudit run --impair delay=60ms
--capture`` against a Realtime server that sends only the protocol's standard events (no
server times), then ``voiceaudit report``.

The server runs in its own thread and event loop; it answers 20 ms after
``response.created`` with its first audio delta, so ``response.created`` *arrives* at the
probe 40 ms after that audio left the server. Placed at their arrival, the server's marks
would push the capture's ``reply.on_wire`` out of order and the whole 2 x 60 ms into
endpointing; placed at their departure on the wire (the server's leg of the proxy), the
ledger's ``transport`` is the 60 ms downlink delay plus what the probe's host adds, and
equals the network section's ``wire_to_app_ms``.

The server knows its own voice-to-voice: from the instant the speech end reached it (the
arrival of the input chunk carrying the last speech sample, less the audio after that
sample in the chunk) to its write of the first reply audio. The caller's voice-to-voice is
that plus the 60 ms each way. A busy machine can only add time (a late read, a late
proxy send), so each bound that a busy machine could break is checked on the quickest
turn, and the other side on every turn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from servers import EnergyEndpointer, LoopbackServer, appended_pcm, capture_marks

from voiceaudit.cli import run
from voiceaudit.errors import ExitCode
from voiceaudit.trace_io import read_trace

pytestmark = capture_marks()

MS = 1_000_000
RATE = 24000
DELAY_MS = 60
TURNS = 3
#: the server's pause between response.created and its first audio delta (s)
AUDIO_AFTER_CREATED_S = 0.02


class Server(LoopbackServer):
    """Standard GA events only; per turn, when it wrote its first audio delta, and the
    arrival and sample range of every input chunk (per connection)."""

    def __init__(self) -> None:
        #: per connection: (arrival ns, first sample, end sample) of each input chunk
        self.chunks: list[list[tuple[int, int, int]]] = []
        #: per turn (in order): monotonic ns just before the first audio delta was written
        self.first_audio: list[int] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        chunks: list[tuple[int, int, int]] = []
        self.chunks.append(chunks)
        pos = 0
        vad = EnergyEndpointer(RATE)
        replying: asyncio.Task[None] | None = None

        async def send(ev: dict[str, Any]) -> None:
            await ws.send_str(json.dumps(ev))

        async def reply() -> None:
            await send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 0})
            await send({"type": "input_audio_buffer.committed", "item_id": "i"})
            await asyncio.sleep(0.05)
            await send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": "i",
                    "transcript": "seven of clubs",
                }
            )
            await send({"type": "response.created", "response": {"id": "r"}})
            await send({"type": "response.output_audio_transcript.delta", "delta": "You"})
            await asyncio.sleep(AUDIO_AFTER_CREATED_S)
            n = RATE * 300 // 1000
            x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE) * 32767
            pcm = x.astype("<i2").tobytes()
            for i in range(0, len(pcm), 4800):
                d = base64.b64encode(pcm[i : i + 4800]).decode()
                if i == 0:
                    self.first_audio.append(time.monotonic_ns())
                await send({"type": "response.output_audio.delta", "delta": d})
            await send({"type": "response.output_audio.done"})
            await send({"type": "response.done", "response": {"status": "completed"}})

        async for msg in ws:
            ev = json.loads(msg.data)
            if ev["type"] == "session.update":
                await send({"type": "session.created", "session": {}})
            elif ev["type"] == "input_audio_buffer.append":
                x = appended_pcm(ev)
                chunks.append((time.monotonic_ns(), pos, pos + x.size))
                pos += x.size
                vad.feed(x)
                if vad.turn_ended and (replying is None or replying.done()):
                    vad.reset()
                    replying = asyncio.ensure_future(reply())
        if replying is not None and not replying.done():
            await replying
        return ws

    def speech_end_seen(self, conn: int, sample: int) -> int:
        """When the input's sample ``sample`` (the first after the speech) reached the
        server: the chunk carrying the sample before it, less the audio after it."""
        for at, a, b in self.chunks[conn]:
            if a < sample <= b:
                return at - (b - sample) * 1_000_000_000 // RATE
        raise AssertionError(f"sample {sample} never arrived")


@pytest.fixture(scope="module")
def recorded(
    tmp_path_factory: pytest.TempPathFactory, realdata: Path
) -> tuple[Path, Server, dict[str, Any]]:
    out = tmp_path_factory.mktemp("clocks") / "run"
    audio = realdata / "speech" / "pocketsphinx_cards_003.wav"
    with Server() as server:
        rc = run(
            [
                "run",
                str(audio),
                "--target",
                f"ws://127.0.0.1:{server.port}/v1/realtime",
                "--turns",
                str(TURNS),
                "--gap-ms",
                "200",
                "--impair",
                f"delay={DELAY_MS}ms",
                "--capture",
                "--out",
                str(out),
            ]
        )
    assert rc == ExitCode.OK
    assert (out / "capture.pcapng").is_file()
    report = out / "report.json"
    assert run(["report", str(out / "trace.jsonl"), "--format", "json", "-o", str(report)]) == 0
    return out, server, json.loads(report.read_text())


def test_transport_is_the_downlink_delay_and_equals_wire_to_app(
    recorded: tuple[Path, Server, dict[str, Any]],
) -> None:
    _, _, rep = recorded
    turns = rep["turns"]
    assert len(turns) == TURNS and all(t["ok"] for t in turns), turns
    w2a = {(t["session"], t["turn"]): t["wire_to_app_ms"] for t in rep["network"]["turns"]}
    transports = []
    for t in turns:
        seg = {s["segment"]: s["ms"] for s in t["ledger"]}
        assert "transport" in seg, t["ledger"]
        assert "unexplained" not in seg, t["ledger"]
        # the wire mark is on the path, and the server's marks are at their departure
        assert "reply.on_wire" in t["marks"] and not t.get("off_path"), t
        assert t["clock"] == "wire", t
        assert seg["transport"] == pytest.approx(w2a[(t["session"], t["turn"])], abs=0.002)
        assert seg["transport"] >= DELAY_MS - 5, seg
        transports.append(seg["transport"])
    assert min(transports) <= DELAY_MS + 5, transports


def test_voice_to_voice_is_the_servers_own_figure_plus_both_directions(
    recorded: tuple[Path, Server, dict[str, Any]],
) -> None:
    out, server, rep = recorded
    trace = read_trace(out / "trace.jsonl")
    starts = [e for e in trace.events if e.name == "turn.start" and e.source == "probe"]
    assert len(starts) == TURNS and len(server.first_audio) == TURNS
    assert len(server.chunks) == 1, "one connection for the whole run"
    over = []
    for t, start, sent in zip(rep["turns"], starts, server.first_audio, strict=True):
        a = start.attrs
        seen = server.speech_end_seen(0, a["session_sample_offset"] + a["speech_end_sample"])
        own_ms = (sent - seen) / MS
        over.append(t["voice_to_voice_ms"] - own_ms - 2 * DELAY_MS)
    # never less than both directions' delay (the reply's tone is audible from its first
    # sample); the quickest turn within 5 ms of them
    assert min(over) >= -5, over
    assert min(over) <= 5, over


def test_without_the_capture_the_downlink_stays_in_the_stages_and_the_report_says_so(
    recorded: tuple[Path, Server, dict[str, Any]], tmp_path: Path
) -> None:
    out, _, rep = recorded
    bare = tmp_path / "run"
    bare.mkdir()
    for name in ("trace.jsonl", "impairment.jsonl"):  # no capture.pcapng
        shutil.copy(out / name, bare / name)
    report = bare / "report.json"
    assert run(["report", str(bare / "trace.jsonl"), "--format", "json", "-o", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert any("impairment proxy" in w and "--capture" in w for w in doc["warnings"])
    extra = []
    for with_cap, without in zip(rep["turns"], doc["turns"], strict=True):
        seg = {s["segment"]: s["ms"] for s in without["ledger"]}
        cap = {s["segment"]: s["ms"] for s in with_cap["ledger"]}
        assert "transport" not in seg and without["clock"] == "arrival"
        # speech_stopped's own trip down is in endpointing: at least the 60 ms
        extra.append(seg["endpointing"] - cap["endpointing"])
        assert without["voice_to_voice_ms"] == with_cap["voice_to_voice_ms"]
    assert min(extra) >= DELAY_MS - 1, extra
    assert min(extra) <= DELAY_MS + 5, extra
