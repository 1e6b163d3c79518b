"""Barge-in against a real Pipecat 1.14 bot: it is interrupted, and its stop latency is
reported (issue 14).

The bot (tests/pipecat_bot.py, offline: Silero VAD, PocketSphinx, a rule-based
responder, eSpeak NG over Pipecat's WebSocket server transport) gives long replies
(``--long-reply``, 8-10 s) that its output transport sends at real time. The scenario
asks a real recorded question and, 800 ms into the reply as the caller hears it, talks
over it with another real recording. With interruptions on (Pipecat's default) Silero VAD
starts the caller's turn, Pipecat broadcasts an ``InterruptionFrame`` and its output
transport drops the rest of the reply; with ``--no-interruptions`` the same bot plays the
reply to its end over the caller. The probe's barge-in stop latency (``reply.stop``
``stop_ns``, report ``turn_taking``) must tell the two apart.

Bounds are one-sided: a busy machine can make Pipecat slower to stop, never the reply
shorter (its audio is paced by its duration).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pipecat_capture import realdata
from servers import PipecatBot

from voiceaudit.cli import run as cli
from voiceaudit.clock import NS_PER_MS, NS_PER_S
from voiceaudit.model import Event
from voiceaudit.trace_io import read_trace

#: real speech: a LibriVox sentence (2.99 s) asked, a card name (1.96 s) said over the reply
QUESTION = "pocketsphinx_sense_and_sensibility_01_austen_64kb-0880.wav"
BARGE_IN = "pocketsphinx_cards_002.wav"
AFTER_REPLY_MS = 800


def scenario(tmp: Path, speech: Path) -> Path:
    q = json.dumps(str(speech / QUESTION))  # a TOML basic string
    b = json.dumps(str(speech / BARGE_IN))
    f = tmp / "barge-in.toml"
    f.write_text(
        "# a question, and 800 ms into its reply the caller talks over it\n"
        "[[session]]\n"
        'name = "barge-in"\n\n'
        "[[session.turn]]\n"
        f"say = {q}\n"
        f"interrupt = {{ after_reply_ms = {AFTER_REPLY_MS}, say = {b} }}\n"
    )
    return f


def run_scenario(
    file: Path, bot: PipecatBot, out: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    rc = cli(
        [
            "run",
            "--scenario",
            str(file),
            "--target",
            bot.url,
            "--protocol",
            "pipecat-websocket",
            "--out",
            str(out),
            # without interruptions the bot answers the barge-in only after the whole
            # first reply: give that reply time
            "--timeout",
            "60",
            "--json",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    # the bot ends its pipeline when the client disconnects
    assert bot.proc.wait(timeout=60) == 0, bot.log_tail()
    summary: dict[str, Any] = json.loads(text[text.index("{") :])
    assert summary["ok"] == 2, summary  # the question, and the barge-in as a turn of its own
    return summary


def report(out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli(["report", str(out), "--format", "json"]) == 0
    text = capsys.readouterr().out
    doc: dict[str, Any] = json.loads(text[text.index("{") :])
    return doc


def one(events: Sequence[Event], name: str) -> Event:
    found = [e for e in events if e.name == name]
    assert len(found) == 1, [(e.name, e.turn, e.attrs) for e in found]
    return found[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_pipecat_bot_stops_when_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pipecat", reason="pipecat-ai is a test dependency")
    file = scenario(tmp_path, realdata() / "speech")
    # both bots load their models at once; each serves one client and exits
    bots = [
        PipecatBot(
            tmp_path / f"bot-{name}.log",
            *("--spans", str(tmp_path / f"bot-{name}.spans.jsonl"), "--long-reply", f"--{name}"),
        )
        for name in ("interruptions", "no-interruptions")
    ]
    try:
        on, off = bots
        on.wait_ready()
        off.wait_ready()
        s_on = run_scenario(file, on, tmp_path / "on", capsys)
        s_off = run_scenario(file, off, tmp_path / "off", capsys)
    finally:
        for bot in bots:
            bot.stop()

    # -- interruptions on: Pipecat cut the reply --------------------------------------
    ev = read_trace(tmp_path / "on" / "trace.jsonl").events
    overlap = one(ev, "input.overlap")
    assert overlap.turn == 0 and overlap.attrs["kind"] == "interrupt"
    assert overlap.attrs["opens_turn"] == 1
    onset = overlap.attrs["onset_ns"]
    stop = one(ev, "reply.stop")
    assert stop.turn == 0 and stop.attrs["kind"] == "interrupt"
    assert stop.attrs["onset_ns"] == onset
    stop_ns = stop.attrs["stop_ns"]
    assert isinstance(stop_ns, int) and stop_ns > 0
    # the target said so (Pipecat's interruption frame), and the reply stopped
    assert stop.attrs["cut"] is True and stop.attrs["stopped"] is True
    assert stop.attrs["received_ns"] > 0 and stop.attrs["client_buffer_ns"] >= 0
    # one `interrupted` mark, after the caller's speech began: the protobuf interruption
    # frame. Pipecat's other signals (its RTVI bot-interrupted twin, and the interruption
    # it broadcasts at the first turn's start, while the bot is silent) are `interruption`.
    cut = one([e for e in ev if e.source == "pipeline"], "interrupted")
    assert cut.stage == "endpointing" and cut.attrs["raw"] == "InterruptionFrame"
    assert cut.t_ns > onset
    others = [e for e in ev if e.name == "interruption"]
    assert {e.attrs["raw"] for e in others} == {"InterruptionFrame", "bot-interrupted"}
    assert all(e.t_ns < onset or e.attrs["repeat"] for e in others)
    # no reply audio after Pipecat's interruption frame, until the answer to the barge-in
    replies = [e for e in ev if e.name == "reply.audible"]
    assert [e.turn for e in replies] == [0, 1]
    assert replies[1].t_ns > cut.t_ns
    starts = {e.turn: e.attrs for e in ev if e.name == "turn.start"}
    assert starts[1]["interrupts_turn"] == 0

    # -- the same bot without interruptions: the reply is heard to its end -------------
    ev_off = read_trace(tmp_path / "off" / "trace.jsonl").events
    assert not [e for e in ev_off if e.name in ("interrupted", "interruption")]
    stop_off = one(ev_off, "reply.stop")
    assert stop_off.turn == 0 and stop_off.attrs["kind"] == "interrupt"
    assert stop_off.attrs["cut"] is None and stop_off.attrs["stopped"] is False
    remaining = stop_off.attrs["stop_ns"]
    # the rest of an 8-10 s reply, played at real time, after 0.8 s + the speech onset
    assert remaining > 3 * NS_PER_S
    # the interrupted reply stopped well before its end
    assert stop_ns < remaining
    assert stop.attrs["heard_after_ms"] < stop_off.attrs["heard_after_ms"]

    # -- what the CLI reports ---------------------------------------------------------
    assert s_on["turn_taking"]["barge_ins"] == 1
    assert s_on["turn_taking"]["stop_ms"]["max"] == pytest.approx(stop_ns / NS_PER_MS, abs=0.01)
    assert s_off["turn_taking"]["stop_ms"]["max"] == pytest.approx(remaining / NS_PER_MS, abs=0.01)
    tt = report(tmp_path / "on", capsys)["turn_taking"]
    b = tt["barge_ins"]
    assert (b["n"], b["stopped"], b["not_stopped"], b["cut_reported"]) == (1, 1, 0, 1)
    assert b["stop_ms"]["max"] == pytest.approx(stop_ns / NS_PER_MS, abs=0.01)
    assert b["stop_ms"]["min"] > 0
    assert tt["response_to_interruption"]["voice_to_voice_ms"]["n"] == 1
    tt_off = report(tmp_path / "off", capsys)["turn_taking"]
    b_off = tt_off["barge_ins"]
    assert (b_off["n"], b_off["stopped"], b_off["not_stopped"]) == (1, 0, 1)
    assert b_off["stop_ms"]["max"] == pytest.approx(remaining / NS_PER_MS, abs=0.01)
    assert b["stop_ms"]["max"] < b_off["stop_ms"]["max"]
