"""Traces recorded in schema version 1 (one event per reply chunk and input frame) by an
earlier voiceaudit still give the reports that voiceaudit made of them then.

``tests/data/trace-v1/<name>/`` holds a trace ``voiceaudit run`` recorded against the
reference pipeline before version 2 (they were sample traces) and its ``report.json``
as it was committed then. Chunk-based findings are among them (``encoding_overhead``,
``large_audio_buffer``), and failed turns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.cli import run
from voiceaudit.trace_io import read_trace

DATA = Path(__file__).resolve().parent / "data" / "trace-v1"
CASES = sorted(d.name for d in DATA.iterdir() if (d / "trace.jsonl.gz").is_file())


def _without_paths(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _without_paths(v) for k, v in d.items() if k != "path"}
    if isinstance(d, list):
        return [_without_paths(v) for v in d]
    if isinstance(d, str):  # a warning names the trace as it was given
        return d.split("trace.jsonl.gz: ", 1)[-1]
    return d


def test_there_are_cases() -> None:
    assert {"clean-realtime", "large-audio-buffer", "failed-turns"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_a_version_1_recording_gives_the_report_it_gave(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = DATA / name / "trace.jsonl.gz"
    tr = read_trace(trace)
    assert tr.header.schema == "voiceaudit.trace/1"
    assert any(e.name == "reply.chunk" for e in tr.events)
    code = run(["report", str(trace), "-f", "json"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    got = _without_paths(json.loads(out))
    want = _without_paths(json.loads((DATA / name / "report.json").read_text()))
    assert got == want
