"""A target killed mid-run (SIGKILL to the server process): the run goes on, every later turn
fails with a reason, nothing prints a traceback, and the trace keeps the finished turns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reference_server import serve

from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow


def test_server_killed_mid_run(tmp_path: Path) -> None:
    with serve() as (server, url):
        out = tmp_path / "run"
        run = subprocess.Popen(
            [sys.executable, "-m", "voiceaudit", "run", "--target", url, "--turns", "4",
             "--timeout", "3", "--gap-ms", "100", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        trace = out / "trace.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if trace.exists() and '"turn.end"' in trace.read_text():
                break
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
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
