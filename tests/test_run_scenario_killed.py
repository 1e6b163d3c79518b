"""A scenario run whose target dies (SIGKILL to the server) or that is stopped (SIGINT):
no traceback, the finished turns stay in a readable, closed trace, and every turn the
script still held is recorded as failed with a reason (or the run says it was stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Served, serve_many, start_run

from voiceaudit.errors import ExitCode
from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow

SCRIPT = """
gap_ms = 100
[[session]]
[[session.turn]]
say = "06_thanks"
repeat = 4
"""


def _start(tmp_path: Path, server: Served) -> tuple[subprocess.Popen[str], Path]:
    scenario = tmp_path / "four.toml"
    scenario.write_text(SCRIPT)
    return start_run(
        tmp_path / "run",
        *("--target", server.realtime, "--scenario", str(scenario), "--timeout", "3"),
        first_turn_s=90,
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Served]]:
    """A server for each test (one is killed), started at once: their start-up overlaps."""
    with serve_many([[], []], asr_workers=None, timeout=60, stop_s=30) as (killed, other):
        yield {"killed": killed, "other": other}


def test_target_killed_mid_scenario(tmp_path: Path, servers: dict[str, Served]) -> None:
    server = servers["killed"]
    run, trace = _start(tmp_path, server)
    os.kill(server.proc.pid, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert "failed" in stdout
    assert run.returncode == 0, (run.returncode, stderr)  # one turn succeeded
    tr = read_trace(trace)
    assert tr.complete
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert sorted(e.turn for e in ends) == [0, 1, 2, 3]
    by_turn = {e.turn: e for e in ends}
    assert by_turn[0].attrs["ok"]
    assert not any(by_turn[t].attrs["ok"] for t in (1, 2, 3))
    assert all(by_turn[t].attrs["reason"] for t in (1, 2, 3))


def test_sigint_mid_scenario_keeps_finished_turns(
    tmp_path: Path, servers: dict[str, Served]
) -> None:
    run, trace = _start(tmp_path, servers["other"])
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED
    tr = read_trace(trace)
    assert tr.complete and tr.end is not None and tr.end.reason == "interrupted"
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert ends and ends[0].turn == 0 and ends[0].attrs["ok"]
