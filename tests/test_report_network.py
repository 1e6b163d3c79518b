"""`voiceaudit report` joins the run's packet capture: wire-to-app lag per turn, and the
small-write stalls the reference pipeline's `small-writes` injection provokes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voiceaudit.capture import analyze_capture
from voiceaudit.cli import run
from voiceaudit.trace_io import read_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
]


def _record(out: Path, *inject: str) -> None:
    args = ["run", "--capture", "--turns", "2", "--gap-ms", "200", "--out", str(out)]
    for spec in inject:
        args += ["--inject", spec]
    assert run(args) == 0


def _network(out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert run(["report", str(out / "trace.jsonl"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    net = data["network"]
    assert isinstance(net, dict)
    return net


def test_clean_run_wire_to_app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _record(tmp_path / "clean")
    net = _network(tmp_path / "clean", capsys)
    turns = net["turns"]
    assert isinstance(turns, list) and len(turns) == 2
    for t in turns:
        # the reply's first audio delta was seen on the wire, before the probe got it
        assert t["wire_to_app_ms"] is not None
        assert 0 <= t["wire_to_app_ms"] < 50
        assert t["small_write_stalls"] == 0
    # The probe's end of its WebSocket, Nagle off (asyncio's default), is in the trace, and it
    # is the client of the capture's connection to the server: a late write of its own
    # would be counted apart (test_capture_dumpcap), never as a stall.
    trace = read_trace(tmp_path / "clean" / "trace.jsonl")
    (conn,) = [e.attrs for e in trace.events if e.name == "session.connected"]
    assert conn["tcp_nodelay"] is True
    capture = analyze_capture(tmp_path / "clean" / "capture.pcapng")
    assert [(c.client, c.server) for c in capture.tcp_connections if c.client == conn["local"]] == [
        (conn["local"], conn["remote"])
    ]
    findings = net["findings"]
    assert isinstance(findings, list)
    # Nothing is held up on a clean loopback run. The one thing a busy machine can put on
    # this wire is the sender kernel's tail-loss probe: a reply segment resent a few ms
    # after the original because the probe's ACK came late (seen here: a 999-byte segment
    # resent after 4.3 ms, then one ACK covering both). Nothing was lost, so no resend
    # waited for a retransmission timeout (Linux's minimum: 200 ms).
    assert [f for f in findings if f["kind"] != "retransmission"] == [], findings
    assert all(f["ms"] < 200 for f in findings), findings


def test_small_writes_show_as_stalls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _record(tmp_path / "small", "small-writes")
    net = _network(tmp_path / "small", capsys)
    turns = net["turns"]
    assert isinstance(turns, list)
    stalls = sum(t["small_write_stalls"] for t in turns)
    held = sum(t["small_write_stall_ms"] for t in turns)
    assert stalls >= 1
    # Nagle holds the next small write until the peer's delayed ACK: ~40 ms on Linux
    assert 20 <= held / stalls <= 250
    findings = net["findings"]
    assert isinstance(findings, list)
    costed = [f for f in findings if f["kind"] == "small_write_stall"]
    assert sum(f["ms"] for f in costed) == pytest.approx(held, abs=0.01)
