"""Golden reports: the committed sample traces (recorded by voiceaudit against its
reference pipeline, see sample_traces/README.md) must keep producing exactly the
committed reports.

After an intended change of the report, regenerate the goldens and review the diff:

    VOICEAUDIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from voiceaudit.cli import run

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_traces"
UPDATE = os.environ.get("VOICEAUDIT_UPDATE_GOLDEN") == "1"
CASES = sorted(d.name for d in SAMPLES.iterdir() if (d / "trace.jsonl.gz").is_file())
FORMATS = {"report.txt": "terminal", "report.md": "markdown", "report.json": "json"}

#: What each injected sample must show, whatever the recording: every ok turn has it.
EXPECTED_FINDING = {
    "leading-silence": "leading_silence",
    "sentence-aggregation": "sentence_aggregation",
    "whole-result-handoff": "whole_result_handoff",
    "large-audio-buffer": "large_audio_buffer",
    "slow-audio": "audio_underrun",
    "slow-first-token": "slow_first_token",
    "clean-realtime": "encoding_overhead",
}


def _report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    monkeypatch.chdir(ROOT)  # paths in the reports are relative to the repository
    code = run(["report", *args])
    out, _ = capsys.readouterr()
    return code, out


def _check(golden: Path, text: str) -> None:
    if UPDATE:
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} is missing: regenerate with VOICEAUDIT_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8"), f"{golden} changed"


def test_there_are_samples() -> None:
    assert {"clean", "failed-turns", *EXPECTED_FINDING} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("golden", list(FORMATS))
def test_golden_report(
    name: str, golden: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = f"sample_traces/{name}/trace.jsonl.gz"
    code, out = _report(capsys, monkeypatch, trace, "-f", FORMATS[golden])
    assert code in (0, 1)
    _check(SAMPLES / name / golden, out)


def test_golden_comparison(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = "sample_traces/clean/trace.jsonl.gz", "sample_traces/sentence-aggregation/trace.jsonl.gz"
    for suffix, fmt in (("txt", "terminal"), ("json", "json")):
        code, out = _report(capsys, monkeypatch, a, b, "-f", fmt)
        assert code == 0
        _check(SAMPLES / f"compare-clean-sentence-aggregation.{suffix}", out)


@pytest.mark.parametrize("name", sorted(EXPECTED_FINDING))
def test_each_sample_shows_its_injection(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _report(capsys, monkeypatch, f"sample_traces/{name}/trace.jsonl.gz", "-f", "json")
    doc = json.loads(out)
    ok = [t for t in doc["turns"] if t["ok"]]
    assert code == 0 and ok
    for t in ok:
        assert EXPECTED_FINDING[name] in {f["kind"] for f in t["findings"]}, t["turn"]


def test_clean_sample_has_no_findings_and_failed_sample_lists_failures(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = _report(capsys, monkeypatch, "sample_traces/clean/trace.jsonl.gz", "-f", "json")
    assert json.loads(out)["findings"] == []
    _, out = _report(capsys, monkeypatch, "sample_traces/failed-turns/trace.jsonl.gz", "-f", "json")
    doc = json.loads(out)
    assert doc["counts"]["failed"] >= 1
    assert all(f["reason"] for f in doc["failed_turns"])
