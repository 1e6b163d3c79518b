"""`voiceaudit run --capture`: dumpcap records the target's traffic next to the trace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voiceaudit.capture import analyze_capture
from voiceaudit.cli import run
from voiceaudit.model import unbatch
from voiceaudit.trace_io import read_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
]


def test_run_capture_records_the_session(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = run(["run", "--capture", "--turns", "1", "--out", str(out), "--gap-ms", "100"])
    assert rc == 0
    trace = read_trace(out / "trace.jsonl")
    cap = trace.header.config["capture"]
    assert cap["file"] == "capture.pcapng" and cap["interface"] == "lo"
    report = analyze_capture(out / "capture.pcapng")
    [ws] = report.websocket_sessions
    assert ws.target == "/v1/realtime"
    # the capture brackets the whole run: every audio frame the probe sent is on the wire
    frames = [u for e in trace.events for u in unbatch(e) if u.name == "input.frame"]
    assert frames and not any(e.name == "input.frame" for e in trace.events)  # batched
    assert ws.opcodes_from_client.get(1, 0) >= len(frames)
