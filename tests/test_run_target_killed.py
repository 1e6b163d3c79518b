"""A target killed mid-run (SIGKILL to the server process): the run goes on, every later turn
fails with a reason, nothing prints a traceback, and the trace keeps the finished turns."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from servers import serve, start_run

from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow


def test_server_killed_mid_run(tmp_path: Path) -> None:
    with serve(asr_workers=None, timeout=60, stop_s=30) as server:
        run, trace = start_run(
            tmp_path / "run",
            *("--target", server.realtime, "--turns", "4", "--timeout", "3", "--gap-ms", "100"),
            first_turn_s=60,
        )
        os.kill(server.proc.pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert run.returncode == 0, (run.returncode, stderr)  # one turn succeeded
    tr = read_trace(trace)
    assert tr.complete
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert len(ends) == 4
    assert ends[0].attrs["ok"]
    assert not any(e.attrs["ok"] for e in ends[1:])
    assert all(e.attrs["reason"] for e in ends[1:])
    assert "failed" in stdout
