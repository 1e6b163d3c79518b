"""wire-to-app against a known delay: the reply's first audio is on the wire, but the probe's
application reads it only after its event loop was held for a known time.

A Realtime-protocol server (its own thread and event loop) sends a marker event and, right
behind it, the reply's audio. The probe's handler sleeps HOLD_MS on the marker, so the audio
waits in the socket. The probe's arrival times are the kernel's receive timestamps, so the
hold must not be in the report's wire-to-app (recovered from a real dumpcap capture): the
audio arrived when it crossed the wire, whatever the application did then. Both clocks of
this process bracket the wire time: the server stamps the audio delta just before writing
it and the next event just after (a loopback packet passes the capture inside the send),
and the probe stamps its hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from helpers import serve_local

from voiceaudit.analysis.network import join_capture
from voiceaudit.capture.dumpcap import Dumpcap
from voiceaudit.data import bundled_dir
from voiceaudit.probe.runner import ProbeOptions, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.realtime import RealtimeSession, RealtimeTarget
from voiceaudit.trace_io import read_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
]

HOLD_MS = 80
RATE = 24000
#: per answer, the server's clock just before it wrote the audio delta and just after
WRITTEN: list[tuple[int, int]] = []


async def _handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    appends = 0
    async for msg in ws:
        ev = json.loads(msg.data)
        if ev["type"] == "session.update":
            await ws.send_json({"type": "session.updated", "session": {}})
        elif ev["type"] == "input_audio_buffer.append":
            appends += 1
            if appends == 100:  # 2 s of input heard (the utterance lasts 1.84 s): answer
                n = RATE * 300 // 1000
                pcm = (0.3 * np.cos(2 * np.pi * 440 * np.arange(n) / RATE) * 32767).astype("<i2")
                await ws.send_json({"type": "x.test.hold"})
                d = base64.b64encode(pcm.tobytes()).decode()
                before = time.monotonic_ns()
                await ws.send_json({"type": "response.output_audio.delta", "delta": d})
                WRITTEN.append((before, time.monotonic_ns()))
                await ws.send_json({"type": "response.done", "response": {}})
                appends = 0
    return ws


def _serve(port_box: list[int], stop: threading.Event) -> None:
    async def main() -> None:
        runner, port = await serve_local("/v1/realtime", _handler)
        port_box.append(port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


def test_wire_to_app_leaves_out_a_held_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RealtimeSession.on_text
    holds: list[tuple[int, int]] = []
    WRITTEN.clear()

    def holding(self: RealtimeSession, t: int, data: str) -> None:
        original(self, t, data)
        if "x.test.hold" in data:
            start = time.monotonic_ns()
            time.sleep(HOLD_MS / 1000)  # the application is busy; the socket fills
            holds.append((start, time.monotonic_ns()))

    monkeypatch.setattr(RealtimeSession, "on_text", holding)
    port_box: list[int] = []
    stop = threading.Event()
    server = threading.Thread(target=_serve, args=(port_box, stop), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not port_box and time.monotonic() < deadline:
            time.sleep(0.01)
        port = port_box[0]
        trace = tmp_path / "trace.jsonl"
        cap = Dumpcap(
            tmp_path / "capture.pcapng", interface="lo", capture_filter=f"tcp port {port}"
        )
        cap.start()
        try:
            cfg = TargetConfig(url=f"ws://127.0.0.1:{port}/v1/realtime", protocol="realtime")
            utt = load_utterances([bundled_dir() / "03_lights.wav"])
            res = asyncio.run(
                run_probe(RealtimeTarget(cfg), utt, ProbeOptions(turns=2, gap_ms=100), trace)
            )
        finally:
            cap.stop()
    finally:
        stop.set()
        server.join(timeout=10)
    assert all(t.ok for t in res.turns), res.turns
    net = join_capture(read_trace(trace), tmp_path / "capture.pcapng")
    assert len(net.turns) == 2 and len(WRITTEN) == 2 and len(holds) == 2
    for t, (before, after), (hold_start, hold_end) in zip(net.turns, WRITTEN, holds, strict=True):
        w2a = t.wire_to_app_ns
        assert w2a is not None and t.wire_ns is not None and t.app_ns is not None
        # the audio delta's own packet (the marker left before it, response.done after),
        # on the probe's clock
        assert before <= t.wire_ns <= after, (before, t.wire_ns, after)
        # Its arrival is the kernel's, not the held application's: never before the wire
        # time, and none of the hold in between (a busy machine cannot put the hold there).
        assert 0 <= w2a < HOLD_MS * 1_000_000 // 2, w2a / 1e6
        if after <= hold_start:
            assert t.app_ns < hold_end
    # The report's ledger takes the wire time as its reply.on_wire cut: transport (first
    # audio on the wire to the probe's arrival) is exactly the wire-to-app lag, and the
    # segments still sum to voice-to-voice.
    from voiceaudit.analysis import build_report

    lag = {(t.session, t.turn): t.wire_to_app_ns for t in net.turns}
    report = build_report([read_trace(trace)], wire_marks=net.wire_marks())
    assert len(report.stats_turns) == 2
    for tr in report.stats_turns:
        seg = tr.ledger.by_name()
        assert [m.name for m in tr.ledger.marks][-4] == "reply.on_wire", tr.ledger.marks
        assert seg["transport"] == lag[(tr.session, tr.turn)]
        assert sum(seg.values()) == tr.voice_to_voice_ns
