"""The probe against targets that misbehave: every failure is a failed turn with a reason,
no traceback, and a readable trace that keeps every finished turn.

The servers here are real aiohttp WebSocket servers on loopback that speak the OpenAI
Realtime protocol and then misbehave on purpose, one way each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from servers import LoopbackServer

from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.realtime import RealtimeTarget
from voiceaudit.trace_io import read_trace

RATE = 24000
PLANTED_KEY = "sk-planted-DO-NOT-LEAK-4242"


def tone(ms: int, lead_ms: int = 0) -> bytes:
    n = RATE * ms // 1000
    x = (0.3 * np.cos(2 * np.pi * 440 * np.arange(n) / RATE) * 32767).astype("<i2")
    return bytes(RATE * lead_ms // 1000 * 2) + x.tobytes()


class ScriptedServer(LoopbackServer):
    """A Realtime-protocol server that answers after `answer_after` appends, then misbehaves."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.auth_headers: list[str] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        self.connections += 1
        self.auth_headers.append(request.headers.get("Authorization", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "session": {}})
        appends = 0
        turn_done = False
        async for msg in ws:
            ev = json.loads(msg.data)
            if ev["type"] == "session.update":
                if self.mode == "mute":
                    continue
                await ws.send_json({"type": "session.updated", "session": {}})
            elif ev["type"] == "input_audio_buffer.append":
                appends += 1
                if appends < 60 or turn_done:
                    continue
                # 1.2 s of input audio (60 frames of 20 ms) heard: answer or misbehave
                if self.mode == "silent":
                    continue
                if self.mode == "garbage":
                    await ws.send_str("this is {not json")
                    continue
                if self.mode == "close":
                    await ws.close()
                    break
                if self.mode == "error":
                    await ws.send_json(
                        {"type": "error", "error": {"message": f"bad key {PLANTED_KEY}"}}
                    )
                    continue
                if self.mode == "empty":  # a reply with no audio at all
                    await ws.send_json({"type": "response.created", "response": {}})
                    await ws.send_json(
                        {"type": "response.done", "response": {"status": "completed"}}
                    )
                    appends = 0
                    continue
                turn_done = True
                await ws.send_json({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1})
                await ws.send_json({"type": "response.created", "response": {}})
                # "zeros": a reply of digital silence, nothing the caller can hear
                pcm = bytes(2 * RATE * 400 // 1000) if self.mode == "zeros" else tone(300, 100)
                for i in range(0, len(pcm), 4800):
                    d = base64.b64encode(pcm[i : i + 4800]).decode()
                    await ws.send_json({"type": "response.output_audio.delta", "delta": d})
                await ws.send_json({"type": "response.done", "response": {"status": "completed"}})
                if self.mode == "die_after_one":
                    await ws.close()
                    await self.stop()
                    break
                appends = 0
                turn_done = False
        return ws


@pytest.fixture
def utterance(realdata: Path) -> list[Path]:
    return [realdata / "speech" / "pocketsphinx_cards_003.wav"]


async def _run(
    mode: str, audio: list[Path], trace: Path, turns: int = 2
) -> tuple[RunResult, ScriptedServer]:
    server = ScriptedServer(mode)
    url = await server.start()
    try:
        cfg = TargetConfig(
            url=url, protocol="realtime", api_key_env="VA_PLANTED_KEY", connect_timeout_s=1.0
        )
        opts = ProbeOptions(turns=turns, timeout_s=1.5, idle_s=0.3, gap_ms=50)
        res = await run_probe(RealtimeTarget(cfg), load_utterances(audio), opts, trace)
    finally:
        await server.stop()
    return res, server


@pytest.mark.parametrize(
    ("mode", "reason", "kind"),
    [
        ("silent", "timeout: no reply audio", "timeout"),
        ("garbage", "protocol: malformed event", "protocol_violation"),
        ("close", "target closed the connection", "reply_cut"),
        ("error", "target error", "target_error"),
        ("empty", "no reply: the target ended its reply without audio", "no_reply"),
        ("zeros", "reply audio is silent", "no_reply"),
    ],
)
def test_misbehaving_target_gives_failed_turns(
    mode: str,
    reason: str,
    kind: str,
    utterance: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VA_PLANTED_KEY", PLANTED_KEY)
    trace = tmp_path / "trace.jsonl"
    res, _ = asyncio.run(_run(mode, utterance, trace))
    assert len(res.turns) == 2
    assert all(not t.ok for t in res.turns)
    assert all(t.reason is not None and reason in t.reason for t in res.turns), res.turns
    tr = read_trace(trace)
    assert tr.complete
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert [e.attrs["ok"] for e in ends] == [False, False]
    assert [e.attrs["failure"] for e in ends] == [kind, kind]
    assert [t.failure for t in res.turns] == [kind, kind]
    text = trace.read_text()
    assert PLANTED_KEY not in text


def test_good_turns_are_measured_and_key_never_written(
    utterance: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VA_PLANTED_KEY", PLANTED_KEY)
    trace = tmp_path / "trace.jsonl"
    res, server = asyncio.run(_run("ok", utterance, trace, turns=2))
    assert [t.ok for t in res.turns] == [True, True]
    # the key was sent to the target, and only there
    assert server.auth_headers == [f"Bearer {PLANTED_KEY}"]
    assert PLANTED_KEY not in trace.read_text()
    tr = read_trace(trace)
    audible = [e for e in tr.events if e.name == "reply.audible"]
    # the reply carries 100 ms of digital silence before the tone
    assert [e.attrs["onset_ms"] for e in audible] == [100.0, 100.0]


def test_target_that_dies_mid_run(utterance: list[Path], tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    res, _ = asyncio.run(_run("die_after_one", utterance, trace, turns=3))
    assert res.turns[0].ok
    assert not any(t.ok for t in res.turns[1:])
    assert all(t.reason is not None for t in res.turns[1:])
    tr = read_trace(trace)
    assert [t for _, t in tr.finished_turns()] == [0, 1, 2]


def test_unreachable_target_is_a_target_error(utterance: list[Path], tmp_path: Path) -> None:
    from voiceaudit.errors import TargetError

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    cfg = TargetConfig(url=f"ws://127.0.0.1:{port}/v1/realtime", protocol="realtime")
    with pytest.raises(TargetError):
        asyncio.run(
            run_probe(
                RealtimeTarget(cfg),
                load_utterances(utterance),
                ProbeOptions(turns=1),
                tmp_path / "t.jsonl",
            )
        )
    # the trace still exists, closed, with the failed turn in it
    tr = read_trace(tmp_path / "t.jsonl")
    assert tr.end is not None and tr.end.reason == "error"
    (end,) = [e for e in tr.events if e.name == "turn.end"]
    assert end.attrs["failure"] == "connect_failed"
    assert end.attrs["reason"].startswith("connect failed: cannot connect")
