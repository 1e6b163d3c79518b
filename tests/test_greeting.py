"""The target's greeting (voiceaudit.probe.greeting): a bot that speaks first is heard
before the caller's first turn, and its greeting latency is measured.

The fake bot here speaks raw PCM over a WebSocket (the ``websocket`` protocol): it greets
``GREET_MS`` after the connection opens with 100 ms of digital silence then a tone, sent at
once (so the playout model alone decides when each sample is heard), ends it with
``turn_done``, and answers each caller turn the same way. It records on the shared monotonic
clock when it sent each greeting and reply, which is the truth the probe's figures must
match: the greeting's first audible sample is heard ``100 ms`` after the greeting arrived,
which is no earlier than it was sent (a one-sided bound: the machine can only add time).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from servers import EnergyEndpointer, HandlerServer

from voiceaudit.trace_io import read_trace

RATE = 16000
MS = 1_000_000
GREET_MS = 300
#: in-flight and scheduling allowance for a one-sided check on loopback
SLACK_NS = 60 * MS


def _tone(ms: int, lead_ms: int = 100) -> bytes:
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return bytes(RATE * lead_ms // 1000 * 2) + x.tobytes()


class Bot:
    """``delays_ms``: reply ``k`` waits ``delays_ms[k % len]`` after the caller's turn ends
    (a known delay the figures must carry)."""

    def __init__(self, *, greet: bool, delays_ms: tuple[int, ...] = ()) -> None:
        self.greet = greet
        self.delays_ms = delays_ms
        self.connected: list[int] = []
        self.greeted: list[int] = []
        self.replies: list[int] = []

    async def handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connected.append(time.monotonic_ns())
        if self.greet:
            await asyncio.sleep(GREET_MS / 1000)
            self.greeted.append(time.monotonic_ns())
            await ws.send_bytes(_tone(600))
            await ws.send_str(json.dumps({"type": "turn_done"}))
        ep = EnergyEndpointer(RATE)
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            ep.feed(np.frombuffer(msg.data, "<i2").astype(np.float64))
            if ep.turn_ended:
                ep.reset()
                if self.delays_ms:
                    k = len(self.replies) % len(self.delays_ms)
                    await asyncio.sleep(self.delays_ms[k] / 1000)
                self.replies.append(time.monotonic_ns())
                await ws.send_bytes(_tone(400))
                await ws.send_str(json.dumps({"type": "turn_done"}))
        return ws


def _run(url: str, out: Path, *extra: str) -> int:
    from voiceaudit.cli import run
    from voiceaudit.data import bundled_dir

    return run(
        [
            "run",
            str(bundled_dir() / "06_thanks.wav"),
            "--target",
            url,
            "--protocol",
            "websocket",
            "--turns",
            "2",
            "--gap-ms",
            "200",
            "--out",
            str(out),
            *extra,
        ]
    )


def _events(trace: Any, name: str) -> list[Any]:
    return [e for e in trace.events if e.name == name]


def test_greeting_latency_is_measured_and_the_first_turn_waits_for_it(tmp_path: Path) -> None:
    bot = Bot(greet=True)
    with HandlerServer(bot.handler, "/pcm") as server:
        rc = _run(server.url, tmp_path / "run", "--greeting-wait", "3s")
    assert rc == 0
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    (wait,) = _events(tr, "greeting.wait")
    (audible,) = _events(tr, "greeting.audible")
    (end,) = _events(tr, "greeting.end")
    assert not _events(tr, "greeting.none")
    (connected,) = _events(tr, "session.connected")
    assert wait.turn is None and audible.turn is None
    assert wait.t_ns == connected.t_ns  # the websocket protocol has no media start of its own
    assert wait.attrs["wait_ns"] == 3000 * MS
    # truth: the first audible sample is 100 ms into the greeting, which left the bot at
    # bot.greeted[0]
    truth = bot.greeted[0] + 100 * MS
    assert 0 <= audible.t_ns - truth < SLACK_NS
    assert audible.attrs["latency_ns"] == audible.t_ns - wait.t_ns
    assert audible.attrs["sample"] == pytest.approx(RATE // 10, abs=RATE // 1000)
    # the whole greeting (700 ms) is heard, then the gap, then the first turn
    assert end.attrs["samples"] == RATE * 700 // 1000
    assert end.t_ns - audible.t_ns == pytest.approx(600 * MS, abs=2 * MS)
    starts = sorted(e.t_ns for e in _events(tr, "turn.start"))
    assert starts[0] >= end.t_ns + 200 * MS
    # the greeting is no turn's reply: both turns have their own
    ends = _events(tr, "turn.end")
    assert len(ends) == 2 and all(e.attrs["ok"] for e in ends)
    assert tr.header.target["path"] == "websocket"


def test_no_greeting_is_said_and_the_turns_go_on(tmp_path: Path) -> None:
    bot = Bot(greet=False)
    with HandlerServer(bot.handler, "/pcm") as server:
        rc = _run(server.url, tmp_path / "run", "--greeting-wait", "500ms")
    assert rc == 0
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    (none,) = _events(tr, "greeting.none")
    (wait,) = _events(tr, "greeting.wait")
    assert none.attrs["waited_ns"] >= 500 * MS  # one-sided: it waited at least that long
    assert none.t_ns - wait.t_ns == none.attrs["waited_ns"]
    assert not _events(tr, "greeting.audible")
    assert min(e.t_ns for e in _events(tr, "turn.start")) >= none.t_ns + 200 * MS
    assert all(e.attrs["ok"] for e in _events(tr, "turn.end"))


def test_by_default_a_websocket_target_is_not_waited_for(tmp_path: Path) -> None:
    bot = Bot(greet=False)
    with HandlerServer(bot.handler, "/pcm") as server:
        rc = _run(server.url, tmp_path / "run")
    assert rc == 0
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    assert not [e for e in tr.events if e.name.startswith("greeting.")]


def test_greeting_wait_must_be_a_duration(tmp_path: Path) -> None:
    rc = _run("ws://127.0.0.1:9/pcm", tmp_path / "run", "--greeting-wait", "soon")
    assert rc == 2


def test_a_scenario_waits_for_the_greeting_too(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'greeting_wait_ms = 3000\n[[session]]\n[[session.turn]]\nsay = "06_thanks"\n'
    )
    bot = Bot(greet=True)
    with HandlerServer(bot.handler, "/pcm") as server:
        from voiceaudit.cli import run

        rc = run(
            [
                "run",
                "--scenario",
                str(scenario),
                "--target",
                server.url,
                "--protocol",
                "websocket",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert rc == 0
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    (audible,) = _events(tr, "greeting.audible")
    (end,) = _events(tr, "greeting.end")
    assert 0 <= audible.t_ns - (bot.greeted[0] + 100 * MS) < SLACK_NS
    (start,) = _events(tr, "turn.start")
    assert start.t_ns >= end.t_ns  # the caller spoke after the greeting had been heard
    (turn_end,) = _events(tr, "turn.end")
    assert turn_end.attrs["ok"]


def test_a_key_press_turn_on_a_protocol_without_dtmf_fails_with_the_reason(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[session]]\n[[session.turn]]\ndtmf = "1"\n')
    bot = Bot(greet=False)
    with HandlerServer(bot.handler, "/pcm") as server:
        from voiceaudit.cli import run

        rc = run(
            [
                "run",
                "--scenario",
                str(scenario),
                "--target",
                server.url,
                "--protocol",
                "websocket",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert rc == 1  # no turn succeeded
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    (turn_end,) = _events(tr, "turn.end")
    assert not turn_end.attrs["ok"]
    assert "cannot send DTMF" in turn_end.attrs["reason"]


def test_the_next_turn_waits_until_the_reply_has_been_heard(tmp_path: Path) -> None:
    """The bot sends each 500 ms reply at once, far faster than it plays: the caller hears
    it to its end before the gap and the next turn start (docs/run.md, --gap-ms)."""
    bot = Bot(greet=False)
    with HandlerServer(bot.handler, "/pcm") as server:
        rc = _run(server.url, tmp_path / "run")
    assert rc == 0
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    (end0,) = [e for e in _events(tr, "reply.end") if e.turn == 0]
    (start1,) = [e for e in _events(tr, "turn.start") if e.turn == 1]
    (chunks0,) = [e for e in _events(tr, "reply.chunks") if e.turn == 0]
    assert end0.t_ns - chunks0.t_ns >= 490 * MS  # heard for as long as it lasts
    assert start1.t_ns >= end0.t_ns + 200 * MS
