"""The report analyses each turn as soon as its turn.end is read (memory stays flat), and
reads the trace again when a later record could change a turn already analysed: the
result never depends on which way it went."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.analysis import build_report
from voiceaudit.analysis.synthetic import TurnSpec, write_trace
from voiceaudit.analysis.turns import SessionObs, TurnObs, collect_file
from voiceaudit.trace_io import read_trace

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (ROOT / "sample_traces").glob("*/trace.jsonl.gz"))


def _streamed(path: Path) -> tuple[list[TurnObs], Any]:
    got: list[TurnObs] = []

    def on_finished(obs: TurnObs, session: SessionObs | None) -> None:
        got.append(obs)

    _, col = collect_file(path, on_finished=on_finished)
    return got, col


def _report(src: Any) -> dict[str, Any]:
    d = build_report([src]).to_dict()
    for s in d["sources"]:
        s.pop("path", None)
    return d


def _specs() -> list[TurnSpec]:
    rng = random.Random(7)
    return [
        TurnSpec(
            endpointing_ms=rng.uniform(200, 900),
            first_token_ms=rng.uniform(50, 900),
            connect_at_ms=rng.choice([None, 40.0]),
            connect_ms=35.0,
        )
        for _ in range(12)
    ] + [TurnSpec(ok=False, reason="boom")]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.parent.name)
def test_probe_traces_stream_every_turn(path: Path) -> None:
    got, col = _streamed(path)
    assert col.disorder is None
    assert got and not col.turns  # every turn handed over, none kept
    assert len(got) == len(read_trace(path).finished_turns())


def _rewrite(path: Path, move: Any) -> None:
    """Move the lines ``move(record)`` picks to just before the end record."""
    lines = path.read_text().splitlines()
    picked = [ln for ln in lines[1:-1] if move(json.loads(ln))]
    rest = [ln for ln in lines if ln not in picked]
    path.write_text("\n".join(rest[:-1] + picked + rest[-1:]) + "\n")


def test_a_turn_record_after_its_turn_end_reads_the_trace_again(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", _specs(), sessions=2)
    before = _report(read_trace(path))
    # every endpoint mark now comes after all turns ended: the ledgers need them
    _rewrite(path, lambda d: d.get("name") == "endpoint")
    _, col = _streamed(path)
    assert col.disorder is not None and "after its turn.end" in col.disorder
    assert _report(path) == _report(read_trace(path)) == before
    assert all(
        any(s["segment"] == "endpointing" for s in t["ledger"])
        for t in _report(path)["turns"]
        if t["ok"]
    )


def test_a_late_connection_record_reads_the_trace_again(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec(), TurnSpec()])
    lines = path.read_text().splitlines()
    end = max(i for i, ln in enumerate(lines) if '"turn.end"' in ln and '"turn":0' in ln)
    t0 = json.loads(next(ln for ln in lines if '"input.speech_end"' in ln))["t_ns"]

    def ev(name: str, t: int) -> str:
        return json.dumps(
            {"type": "event", "session": "s0", "turn": None, "t_ns": t, "source": "probe",
             "stage": "session", "name": name, "attrs": {}}, separators=(",", ":"),
        )  # fmt: skip

    # A connection set up inside turn 0: started before its turn.end was written,
    # finished after (written later); then an unrelated late session mark.
    lines.insert(end, ev("ws.connect_start", t0 + 20_000_000))
    lines.insert(end + 2, ev("ws.connected", t0 + 60_000_000))
    path.write_text("\n".join(lines) + "\n")
    _, col = _streamed(path)
    assert col.disorder is not None and "ws.connected" in col.disorder
    report = _report(path)
    assert report == _report(read_trace(path))
    [cs] = [f for f in report["turns"][0]["findings"] if f["kind"] == "connection_setup"]
    assert cs["ms"] == pytest.approx(40.0)


def test_session_records_after_the_turns_they_follow_keep_streaming(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", _specs(), sessions=3)
    lines = path.read_text().splitlines()
    last_t = max(json.loads(ln).get("t_ns", 0) for ln in lines[1:-1])
    late = {"type": "event", "session": "s1", "turn": None, "t_ns": last_t + 1,
            "source": "pipeline", "stage": "other", "name": "session.closed"}  # fmt: skip
    lines.insert(len(lines) - 1, json.dumps(late))
    path.write_text("\n".join(lines) + "\n")
    got, col = _streamed(path)
    assert col.disorder is None and len(got) == len(_specs())
    assert _report(path) == _report(read_trace(path))


def test_progress_counts_the_turns_as_they_are_analysed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voiceaudit.analysis import report as report_mod

    monkeypatch.setattr(report_mod._Analyser, "PROGRESS_EVERY", 10)
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec()] * 25, sessions=2)
    seen: list[str] = []
    build_report([path], progress=seen.append)
    assert seen == [f"reading {path}", f"reading {path}: 10 turns", f"reading {path}: 20 turns"]
