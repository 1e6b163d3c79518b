"""Faults in the middle of a reply are failed turns, and a session that broke or stopped
answering goes on with a fresh connection.

The server is an independent Realtime-protocol server (aiohttp, loopback) with a small
energy VAD: after the caller's speech ends it answers with 25 chunks of 40 ms of tone and
``response.done``. On one reply of the run it sends 12 of the 25 chunks and then
misbehaves, one way per test: it closes the WebSocket, resets the TCP connection, sends a
malformed event, an unexpected binary frame or an ``error`` event, or goes quiet with the
socket open. The turns before and after are good, so each test also checks that a fault
costs exactly one turn and that the next turn reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from servers import EnergyEndpointer, LoopbackServer, appended_pcm

from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.realtime import RealtimeTarget
from voiceaudit.trace_io import read_trace

RATE = 24000
CHUNK_SAMPLES = RATE * 40 // 1000
CHUNKS = 25
FAULT_AFTER = 12


def tone_chunk() -> str:
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(CHUNK_SAMPLES) / RATE)
    return base64.b64encode((x * 32767).astype("<i2").tobytes()).decode()


class FaultServer(LoopbackServer):
    """Realtime over WebSocket; reply number ``fault_at`` of the run (0-based, counted over
    every connection) misbehaves as ``mode`` after ``FAULT_AFTER`` chunks (``hang``: before
    the first). After a ``stall`` or a ``hang`` its connection never answers again; a new
    connection is answered. ``delay_s`` holds every reply back (replies ``delay_from`` on)."""

    #: a reply held back (delay_s) must not hold the server's shutdown
    shutdown_timeout = 1.0

    def __init__(self, mode: str = "none", fault_at: int = 1) -> None:
        self.mode = mode
        self.fault_at = fault_at
        self.delay_s = 0.0
        self.delay_from = 0
        self.connections = 0
        self.replies = 0
        #: set when speech of reply number k began arriving (k = len at the time)
        self.speech_seen = 0

    async def _reply(self, ws: web.WebSocketResponse, request: web.Request, n: int) -> bool:
        """Send reply ``n``; False when the connection is finished with (closed, reset,
        or dead)."""
        if n >= self.delay_from and self.delay_s:
            await asyncio.sleep(self.delay_s)
        fault = self.mode if n == self.fault_at else "none"
        if fault == "hang":
            return False
        await ws.send_json({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 0})
        await ws.send_json({"type": "response.created", "response": {"id": f"r{n}"}})
        delta = tone_chunk()
        for i in range(CHUNKS):
            if i == FAULT_AFTER and fault != "none":
                if fault == "close":
                    await ws.close()
                    return False
                if fault == "reset":
                    # SO_LINGER 0 then close: the kernel sends RST, not FIN
                    sock = request.transport.get_extra_info("socket") if request.transport else None
                    if sock is not None:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    assert request.transport is not None
                    request.transport.abort()
                    return False
                if fault == "stall":
                    return False
                if fault == "malformed":
                    await ws.send_str('{"type": "response.output_audio.delta", "delta": ')
                elif fault == "binary":
                    await ws.send_bytes(b"\x00\x01\x02\x03")
                elif fault == "error":
                    await ws.send_json(
                        {"type": "error", "error": {"message": "overloaded", "code": "busy"}}
                    )
                # ... and the rest of the reply, as if nothing had happened
            await ws.send_json({"type": "response.output_audio.delta", "delta": delta})
            await asyncio.sleep(0.01)
        await ws.send_json({"type": "response.done", "response": {"status": "completed"}})
        return True

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        self.connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "session": {}})
        alive = True
        vad = EnergyEndpointer(RATE)
        async for msg in ws:
            if msg.type != web.WSMsgType.TEXT:
                continue
            ev = json.loads(msg.data)
            if ev["type"] == "session.update":
                await ws.send_json({"type": "session.updated", "session": {}})
            elif ev["type"] == "input_audio_buffer.append" and alive:
                if vad.feed(appended_pcm(ev)):
                    self.speech_seen += 1
                if vad.turn_ended:
                    vad.reset()
                    n = self.replies
                    self.replies += 1
                    try:
                        alive = await self._reply(ws, request, n)
                    except ConnectionError:
                        break  # the probe hung up after the fault: nothing more to say
                    if ws.closed or (request.transport is None):
                        break
        return ws


@pytest.fixture
def utterance(realdata: Path) -> list[Path]:
    return [realdata / "speech" / "pocketsphinx_cards_003.wav"]


async def _run(server: FaultServer, audio: list[Path], trace: Path, turns: int) -> RunResult:
    url = await server.start()
    try:
        cfg = TargetConfig(url=url, protocol="realtime", connect_timeout_s=5.0)
        opts = ProbeOptions(turns=turns, timeout_s=2.0, idle_s=0.6, gap_ms=100)
        return await run_probe(RealtimeTarget(cfg), load_utterances(audio), opts, trace)
    finally:
        await server.stop()


def _by_turn(trace: Path, name: str) -> dict[int, Any]:
    tr = read_trace(trace)
    return {e.turn: e for e in tr.events if e.name == name and e.turn is not None}


@pytest.mark.parametrize(
    ("mode", "kind", "reason"),
    [
        ("close", "reply_cut", "target closed the connection"),
        ("reset", "reply_cut", ""),
        ("malformed", "protocol_violation", "protocol: malformed event"),
        ("binary", "protocol_violation", "protocol: unexpected binary message"),
        ("error", "target_error", "target error: overloaded"),
        ("stall", "timeout", "timeout: the reply stalled"),
    ],
)
def test_fault_mid_reply_is_a_failed_turn_and_the_next_reconnects(
    mode: str, kind: str, reason: str, utterance: list[Path], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.jsonl"
    server = FaultServer(mode, fault_at=1)
    res = asyncio.run(_run(server, utterance, trace, turns=3))

    assert [t.ok for t in res.turns] == [True, False, True], res.turns
    bad = res.turns[1]
    assert bad.failure == kind, bad
    assert bad.reason is not None and reason in bad.reason, bad.reason
    assert bad.voice_to_voice_ns is None
    # the tone was heard before the fault: an informative figure, outside the statistics
    assert bad.informative_voice_to_voice_ns is not None
    summary = res.summary()
    assert summary["voice_to_voice_ms"]["n"] == 2
    assert summary["failed_by_kind"] == {kind: 1}
    assert summary["failures"] == [
        {"session": "s0", "turn": 1, "failure": kind, "reason": bad.reason}
    ]

    tr = read_trace(trace)
    assert tr.complete
    assert [t for _, t in tr.finished_turns()] == [0, 1, 2]
    ends = _by_turn(trace, "turn.end")
    assert ends[1].attrs["ok"] is False
    assert ends[1].attrs["failure"] == kind
    assert ends[1].attrs["reason"] == bad.reason
    assert ends[1].attrs["informative_voice_to_voice_ns"] == bad.informative_voice_to_voice_ns
    assert "voice_to_voice_ns" not in ends[1].attrs
    assert ends[0].attrs["ok"] and ends[2].attrs["ok"]
    # what arrived before the fault is kept as raw observations
    chunks = _by_turn(trace, "reply.chunks")[1].attrs
    if mode in ("close", "reset", "stall"):
        assert len(chunks["dt_ns"]) == FAULT_AFTER
    else:  # the server goes on; the probe stops listening at the fault
        assert FAULT_AFTER <= len(chunks["dt_ns"]) <= CHUNKS
    # the broken connection is not used again: turn 2 runs on a new one
    starts = _by_turn(trace, "turn.start")
    assert [starts[t].session for t in (0, 1, 2)] == ["s0", "s0", "s0.1"]
    assert server.connections == 2
    closed = [e for e in tr.events if e.name == "session.closed" and e.session == "s0"]
    if kind != "timeout":
        assert closed[0].attrs["reason"] == bad.reason
    assert not [e for e in tr.events if e.name == "turn.note"]


def test_target_that_stops_answering_gets_a_fresh_connection(
    utterance: list[Path], tmp_path: Path
) -> None:
    """Turn 2 (index 1) gets no reply on a socket that stays open; the new connection is
    answered, so turns 3 and 4 are good."""
    trace = tmp_path / "trace.jsonl"
    server = FaultServer("hang", fault_at=1)
    res = asyncio.run(_run(server, utterance, trace, turns=4))
    assert [t.ok for t in res.turns] == [True, False, True, True], res.turns
    assert res.turns[1].failure == "timeout"
    assert res.turns[1].reason is not None
    assert res.turns[1].reason.startswith("timeout: no reply audio within 2 s")
    assert res.turns[1].informative_voice_to_voice_ns is None
    starts = _by_turn(trace, "turn.start")
    assert [starts[t].session for t in range(4)] == ["s0", "s0", "s0.1", "s0.1"]
    assert server.connections == 2
    ends = _by_turn(trace, "turn.end")
    assert ends[1].attrs == {
        "ok": False,
        "reason": res.turns[1].reason,
        "failure": "timeout",
        "warmup": False,
    }
    assert read_trace(trace).complete


def test_a_close_after_the_reply_is_done_keeps_the_turn(
    utterance: list[Path], tmp_path: Path
) -> None:
    """A server that closes right after ``response.done``: the reply was whole, so the turn
    is good; the close is a ``turn.note`` and the next turn reconnects."""

    class CloseAfterDone(FaultServer):
        async def _reply(self, ws: web.WebSocketResponse, request: web.Request, n: int) -> bool:
            await super()._reply(ws, request, n)
            if n == 0:
                await ws.close()
                return False
            return True

    trace = tmp_path / "trace.jsonl"
    server = CloseAfterDone()
    res = asyncio.run(_run(server, utterance, trace, turns=2))
    assert [t.ok for t in res.turns] == [True, True], res.turns
    notes = [e for e in read_trace(trace).events if e.name == "turn.note"]
    assert len(notes) <= 1  # the close may land after the turn ended (between turns)
    for note in notes:
        assert note.turn == 0
        assert note.attrs["note"].startswith("after the reply: target closed the connection")
    starts = _by_turn(trace, "turn.start")
    assert [starts[t].session for t in (0, 1)] == ["s0", "s0.1"]


@pytest.mark.parametrize(("mode", "kind"), [("close", "reply_cut"), ("hang", "timeout")])
def test_scenario_session_goes_on_on_a_new_connection(
    mode: str, kind: str, utterance: list[Path], tmp_path: Path
) -> None:
    """A scripted conversation: the faulty turn fails, and the script's next turn runs on a
    new connection (``s0.1``) instead of failing with it."""
    from voiceaudit.probe.runner import Probe
    from voiceaudit.scenario import load_scenario

    path = tmp_path / "three.toml"
    path.write_text(
        f'gap_ms = 100\n[[session]]\n[[session.turn]]\nsay = "{utterance[0]}"\nrepeat = 3\n'
    )
    script = load_scenario(path)
    trace = tmp_path / "trace.jsonl"
    server = FaultServer(mode, fault_at=1)

    async def go() -> RunResult:
        url = await server.start()
        try:
            cfg = TargetConfig(url=url, protocol="realtime", connect_timeout_s=5.0)
            opts = ProbeOptions(timeout_s=2.0, idle_s=0.6)
            return await Probe(RealtimeTarget(cfg), [], opts, trace, scenario=script).run()
        finally:
            await server.stop()

    res = asyncio.run(go())
    assert [t.ok for t in res.turns] == [True, False, True], res.turns
    assert res.turns[1].failure == kind
    starts = _by_turn(trace, "turn.start")
    assert [starts[t].session for t in (0, 1, 2)] == ["s0", "s0", "s0.1"]
    assert [starts[t].attrs["scenario_turn"] for t in (0, 1, 2)] == [0, 1, 2]
    assert _by_turn(trace, "turn.end")[1].attrs["failure"] == kind
    assert server.connections == 2
    tr = read_trace(trace)
    assert tr.complete
    closed = [e.attrs for e in tr.events if e.name == "session.closed" and e.session == "s0"]
    assert closed == ([{"reason": res.turns[1].reason}] if kind == "reply_cut" else [{}])
