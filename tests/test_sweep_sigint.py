"""Ctrl-C on a real ``voiceaudit sweep`` (a subprocess) of two cells against a loopback
Realtime server, as on ``voiceaudit run``: the first SIGINT lets the turn in flight finish
and starts no new turn and no new cell; a second cuts the turn in flight (a failed turn of
kind ``interrupted``). Both exit 130 with the manifest written, the cell's trace closed
``interrupted`` with every finished turn, and the cell not started marked so.

The server (``test_run_faults.FaultServer``) holds back its reply to the run's turn 1, so
the test knows the turn is in flight when it sends the signal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_run_faults import FaultServer
from test_run_faults_sigint import _wait_for_reply_held

from voiceaudit.errors import ExitCode
from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow


def _sweep(url: str, audio: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voiceaudit", "sweep", str(audio), "--target", url,
         "--protocol", "realtime", "--network", "direct", "--network", "lan",
         "--turns", "4", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _cells(out: Path) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = json.loads((out / "sweep.json").read_text())["cells"]
    return cells


@pytest.fixture
def audio(realdata: Path) -> Path:
    return realdata / "speech" / "pocketsphinx_cards_003.wav"


def test_first_ctrl_c_finishes_the_turn_and_starts_no_cell(audio: Path, tmp_path: Path) -> None:
    server = FaultServer()
    server.delay_s, server.delay_from = 1.5, 1
    out = tmp_path / "sweep"
    with server:
        run = _sweep(server.url, audio, out)
        _wait_for_reply_held(server, run)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED, (run.returncode, stderr)
    assert "the turns in flight finish" in stderr
    first, second = _cells(out)
    assert first["status"] == "interrupted" and second["status"] == "not run (interrupted)"
    tr = read_trace(out / first["dir"] / "trace.jsonl")
    assert tr.complete and tr.end is not None and tr.end.reason == "interrupted"
    ends = {e.turn: e.attrs for e in tr.events if e.name == "turn.end"}
    assert sorted(ends) == [0, 1] and ends[0]["ok"] and ends[1]["ok"], ends
    assert server.connections == 1  # the second cell never connected
    assert (out / "sweep-report.md").is_file()


def test_second_ctrl_c_cuts_the_turn_in_flight(audio: Path, tmp_path: Path) -> None:
    server = FaultServer()
    server.delay_s, server.delay_from = 60.0, 1  # turn 1 would wait a minute
    out = tmp_path / "sweep"
    with server:
        run = _sweep(server.url, audio, out)
        _wait_for_reply_held(server, run)
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)
        run.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, stderr = run.communicate(timeout=120)
        took = time.monotonic() - t0
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED, (run.returncode, stderr)
    assert "the turns in flight are cut" in stderr
    # cut, not waited for: well before the minute the reply was held (one-sided)
    assert took < 30, took
    first, second = _cells(out)
    assert first["status"] == "interrupted" and second["status"] == "not run (interrupted)"
    tr = read_trace(out / first["dir"] / "trace.jsonl")
    assert tr.complete and tr.end is not None and tr.end.reason == "interrupted"
    ends = {e.turn: e.attrs for e in tr.events if e.name == "turn.end"}
    assert sorted(ends) == [0, 1]
    assert ends[0]["ok"] is True
    assert ends[1]["ok"] is False and ends[1]["failure"] == "interrupted"
