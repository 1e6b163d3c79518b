"""`voiceaudit report TRACE --telemetry FILE`: the framework's own numbers beside what the
caller heard, in every output format.

The trace is rebuilt from the real loopback capture of a Pipecat 1.14 session (what the
client heard, by packet time); the telemetry is the spans Pipecat itself exported for that
session. Pipecat's `turn.user_bot_latency_seconds` (~4.4 s, one turn span folding three
exchanges) disagrees with what the caller heard (~1 s): the report must show both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipecat_capture import captured_turns
from pipecat_capture import write_trace as write_capture_trace

from voiceaudit.cli import run
from voiceaudit.imports import measured_voice_to_voice
from voiceaudit.trace_io import read_trace


@pytest.fixture(scope="module")
def trace_and_spans(tmp_path_factory: pytest.TempPathFactory, realdata: Path) -> tuple[Path, Path]:
    turns = captured_turns(realdata / "pcap" / "pipecat-1.14.0_websocket_lo.pcapng")
    d = tmp_path_factory.mktemp("pipecat")
    trace = write_capture_trace(d / "trace.jsonl", turns)
    return trace, realdata / "telemetry" / "pipecat-1.14.0_ws_spans.jsonl"


def test_json_has_framework_vs_heard(
    trace_and_spans: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trace, spans = trace_and_spans
    capsys.readouterr()
    assert run(["report", str(trace), "--telemetry", str(spans), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["framework_vs_heard"]["rows"]
    assert rows and all(r["framework"] == "pipecat" for r in rows)
    measured = measured_voice_to_voice(read_trace(trace))
    latency = [r for r in rows if "user_bot_latency" in r["label"]]
    assert latency
    for r in latency:
        # what voiceaudit measured is the trace's own voice-to-voice for that turn
        assert r["measured_ns"] == measured[(r["session"], r["turn"])]
        # and Pipecat's folded turn span reports far more than the caller heard
        assert r["reported_ns"] > r["measured_ns"] + 1_000_000_000
    assert data["framework_vs_heard"]["alignment"]


@pytest.mark.parametrize("fmt", ["markdown", "terminal", "html"])
def test_section_in_text_formats(
    trace_and_spans: tuple[Path, Path], fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, spans = trace_and_spans
    capsys.readouterr()
    assert run(["report", str(trace), "--telemetry", str(spans), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "Framework vs heard" in out
    assert "user_bot_latency" in out


def test_telemetry_with_a_comparison_is_refused(
    trace_and_spans: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trace, spans = trace_and_spans
    assert run(["report", str(trace), str(trace), "--telemetry", str(spans)]) == 2
