"""Ctrl-C on a real ``voiceaudit run`` (a subprocess) against a loopback Realtime server:
the first SIGINT lets the turn in flight finish and starts no new one; a second cuts the
turn in flight, which becomes a failed turn of kind ``interrupted``. Both exit 130 with a
closed trace that keeps every finished turn.

The server (``test_run_faults.FaultServer``, in a thread of the test process) holds back its
reply to turn 1, so the test knows the turn is in flight when it sends the signal: the
server has heard that turn's speech end and not answered yet.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_faults import FaultServer

from voiceaudit.errors import ExitCode
from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow


def _run(url: str, audio: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voiceaudit", "run", str(audio), "--target", url,
         "--protocol", "realtime", "--turns", "4", "--timeout", "60", "--gap-ms", "100",
         "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_reply_held(server: FaultServer, run: subprocess.Popen[str]) -> None:
    """Until the server has heard turn 1's speech end (its reply is being held back)."""
    deadline = time.monotonic() + 120
    while server.replies < 2:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "turn 1 never reached the server"
        time.sleep(0.02)


@pytest.fixture
def audio(realdata: Path) -> Path:
    return realdata / "speech" / "pocketsphinx_cards_003.wav"


def test_first_ctrl_c_lets_the_turn_in_flight_finish(audio: Path, tmp_path: Path) -> None:
    server = FaultServer()
    server.delay_s, server.delay_from = 1.5, 1
    with server:
        run = _run(server.url, audio, tmp_path / "run")
        _wait_for_reply_held(server, run)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED, (run.returncode, stderr)
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    assert tr.complete and tr.end is not None and tr.end.reason == "interrupted"
    ends = {e.turn: e.attrs for e in tr.events if e.name == "turn.end"}
    # turn 1 was in flight: its (held-back) reply came and it finished; none started after
    assert sorted(ends) == [0, 1]
    assert ends[0]["ok"] and ends[1]["ok"], ends
    assert not [e for e in tr.events if e.name == "turn.start" and e.turn == 2]
    assert server.replies == 2
    assert "turns: 2 (ok 2, failed 0" in stdout
    assert "the turns in flight finish" in stderr


def test_second_ctrl_c_cuts_the_turn_in_flight(audio: Path, tmp_path: Path) -> None:
    server = FaultServer()
    server.delay_s, server.delay_from = 60.0, 1  # turn 1 would wait a minute
    with server:
        run = _run(server.url, audio, tmp_path / "run")
        _wait_for_reply_held(server, run)
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)
        run.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = run.communicate(timeout=120)
        took = time.monotonic() - t0
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED, (run.returncode, stderr)
    # cut, not waited for: well before the minute the reply was held (one-sided)
    assert took < 30, took
    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    assert tr.complete and tr.end is not None and tr.end.reason == "interrupted"
    ends = {e.turn: e.attrs for e in tr.events if e.name == "turn.end"}
    assert sorted(ends) == [0, 1]
    assert ends[0]["ok"] is True
    assert ends[1] == {
        "ok": False,
        "reason": "interrupted",
        "failure": "interrupted",
        "warmup": False,
    }
    assert "1 failed: 1 interrupted" in stderr
    assert "failed: s0 turn 1 (interrupted): interrupted" in stdout
