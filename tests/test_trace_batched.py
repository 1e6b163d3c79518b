"""Trace schema version 2: a turn's reply chunks and input frames as one batched event each.

The batched form must say exactly what the per-chunk and per-frame events of version 1
said: the same observations written either way give the same report, and unbatching a
version 2 trace gives back the version 1 events. Malformed arrays are refused by every
reader with a line number.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from voiceaudit import trace_io
from voiceaudit.analysis import build_report
from voiceaudit.analysis.synthetic import TurnSpec, write_trace
from voiceaudit.analysis.turns import TurnObs, collect_trace
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode, TraceError
from voiceaudit.model import Event, unbatch
from voiceaudit.trace_io import read_trace, scan_trace


def _specs(seed: int) -> list[TurnSpec]:
    rng = random.Random(seed)
    out = []
    for i in range(24):
        out.append(
            TurnSpec(
                frames=rng.random() < 0.5,
                endpointing_ms=rng.uniform(200, 900),
                first_token_ms=rng.uniform(50, 900),
                onset_ms=rng.choice([5.0, 250.0]),
                chunk_ms=rng.choice([20.0, 40.0, 100.0]),
                first_chunk_ms=rng.choice([None, 600.0]),
                delivery_x=rng.choice([0.7, 1.5, 4.0]),
                wire_factor=rng.choice([1.0, 1.37]),
                underrun_gaps_ms=rng.choice([(), (30.0, 12.5)]),
                speech_to_speech=rng.random() < 0.2,
                server_times=rng.random() < 0.7,
                warmup=i == 0,
            )
        )
    return [*out, TurnSpec(ok=False, reason="boom")]


def _report(path: Path | Any) -> dict[str, Any]:
    d = build_report([path]).to_dict()
    for src in d["sources"]:
        src.pop("path", None)
        src.pop("schema", None)
    return d


@pytest.mark.parametrize("seed", [1, 2])
def test_both_versions_of_the_same_observations_give_the_same_report(
    tmp_path: Path, seed: int
) -> None:
    v1 = write_trace(tmp_path / "v1.jsonl", _specs(seed), sessions=3, version=1)
    v2 = write_trace(tmp_path / "v2.jsonl", _specs(seed), sessions=3, version=2)
    assert read_trace(v1).header.schema == "voiceaudit.trace/1"
    assert read_trace(v2).header.schema == "voiceaudit.trace/2"
    # far fewer lines, same report, through the fast reader and the public one
    assert len(v2.read_text().splitlines()) < len(v1.read_text().splitlines()) / 3
    fast1, fast2 = _report(v1), _report(v2)
    assert fast1 == fast2
    assert _report(read_trace(v2)) == fast2
    # the report has chunk-based findings to compare (not just empty lists)
    kinds = {f["kind"] for f in fast2["findings"]}
    assert {"large_audio_buffer", "encoding_overhead", "audio_underrun"} <= kinds


def test_unbatching_gives_back_the_version_1_events(tmp_path: Path) -> None:
    v1 = write_trace(tmp_path / "v1.jsonl", _specs(3), sessions=2, version=1)
    v2 = write_trace(tmp_path / "v2.jsonl", _specs(3), sessions=2, version=2)
    old = list(read_trace(v1).events)
    new = list(read_trace(v2).events)
    assert any(e.name == "reply.chunks" for e in new)
    assert any(e.name == "input.frames" for e in new)
    assert not any(e.name in ("reply.chunk", "input.frame") for e in new)
    assert [u for e in new for u in unbatch(e)] == old


def test_turn_shortcuts_agree_with_the_chunks() -> None:
    obs = TurnObs("s", 0)
    attrs = {
        "dt_ns": [5, 0, 9],  # written out of arrival order
        "samples": [480, 960, 240],
        "bytes": [960, 1920, 480],
        "wire_bytes": [1300, None, 700],
        "peak": [0.5, None, 1],
        "rate": 24000,
        "offset": 100,
    }
    obs.add("reply.chunks", "probe", "reply", 1000, attrs)
    first = obs.first_chunk()
    chunks = obs.chunks
    assert first == chunks[0]
    assert first is not None and (first.t_ns, first.samples, first.offset) == (1000, 960, 580)
    assert [c.t_ns for c in chunks] == [1000, 1005, 1009]
    assert [c.offset for c in chunks] == [580, 100, 1540]
    assert [c.peak for c in chunks] == [None, 0.5, 1.0]
    assert obs.chunk_count == 3
    known = [c for c in chunks if c.wire_bytes is not None]
    assert (
        obs.audio_and_wire_bytes()
        == (
            sum(c.bytes or 0 for c in known),
            sum(c.wire_bytes or 0 for c in known),
        )
        == (1440, 2000)
    )
    # a version 1 chunk in the same turn: the shortcuts fall back to the full list
    obs.add("reply.chunk", "probe", "reply", 990, {"samples": 10, "bytes": 20, "rate": 24000})
    assert obs.first_chunk() == obs.chunks[0] and obs.chunks[0].t_ns == 990
    assert obs.chunk_count == 4


GOOD_CHUNKS: dict[str, Any] = {
    "dt_ns": [0, 20_000_000],
    "samples": [480, 480],
    "bytes": [960, 960],
    "wire_bytes": [1300, 1300],
    "rate": 24000,
}


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        ("reply.chunks", {"dt_ns": 5}, "attrs.dt_ns must be a list"),
        ("reply.chunks", {"samples": [480]}, "attrs.samples must have one element per item"),
        ("reply.chunks", {"bytes": [960, 9.5]}, "attrs.bytes must hold integers"),
        ("reply.chunks", {"bytes": [960, True]}, "attrs.bytes must hold integers"),
        ("reply.chunks", {"samples": None}, "attrs.samples must be a list"),
        ("reply.chunks", {"wire_bytes": [1, "x"]}, "attrs.wire_bytes must hold integers or nulls"),
        ("reply.chunks", {"rate": 0}, "attrs.rate must be a positive integer"),
        ("reply.chunks", {"rate": None}, "attrs.rate must be a positive integer"),
        ("reply.chunks", {"peak": [0.1]}, "attrs.peak must be a list of numbers"),
        ("reply.chunks", {"offset": "0"}, "attrs.offset must be an integer"),
        ("input.frames", {}, "attrs.dt_ns must be a list"),
    ],
)
@pytest.mark.parametrize("reader", ["read_trace", "scan_fast", "scan_json"])
def test_malformed_batches_are_refused_with_the_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    change: dict[str, Any],
    needle: str,
    reader: str,
) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec(), TurnSpec()])
    lines = path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if '"reply.chunks"' in line)
    ev = json.loads(lines[i])
    ev["name"] = name
    ev["attrs"] = {**GOOD_CHUNKS, **change} if name == "reply.chunks" else change
    lines[i] = json.dumps(ev)
    path.write_text("\n".join(lines) + "\n")
    if reader == "scan_json":
        monkeypatch.setattr(trace_io, "_FAST_DECODE", trace_io._loads)
    with pytest.raises(TraceError) as info:
        if reader == "read_trace":
            read_trace(path)
        else:
            scan_trace(path, lambda *a: None)
    assert f"{name}: {needle}" in info.value.message
    assert info.value.line == i + 1
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_a_malformed_batch_is_one_line_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec()])
    text = re.sub(r'"samples":\[\d+', '"samples":["x"', path.read_text(), count=1)
    path.write_text(text)
    assert run(["report", str(path)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "reply.chunks: attrs.samples must hold integers" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_events_from_the_in_memory_path_match(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", _specs(4)[:6])
    c = collect_trace(read_trace(path))
    for obs in c.turns.values():
        for ch in obs.chunks:
            assert isinstance(ch.t_ns, int) and ch.rate == 24000
        names = [n for n, _, _ in obs.events()]
        if obs.chunks:
            assert names.count("reply.chunk") == obs.chunk_count
    assert all(isinstance(e, Event) for e in read_trace(path).events)
