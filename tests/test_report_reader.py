"""The report's fast trace reader (``trace_io.scan_trace``) reads exactly what
``read_trace`` reads: same events, same errors, same warnings, with or without orjson."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceaudit import trace_io
from voiceaudit.analysis import build_report
from voiceaudit.analysis.synthetic import TurnSpec, synthetic_header, write_trace
from voiceaudit.errors import TraceError
from voiceaudit.model import Event
from voiceaudit.trace_io import TraceWriter, read_trace, scan_trace


def scanned(path: Path, skip: tuple[str, ...] = ()) -> tuple[list[Event], Any]:
    got: list[Event] = []

    def on_event(*fields: Any) -> None:
        got.append(Event(*fields))

    info = scan_trace(path, on_event, skip=skip)
    return got, info


@pytest.fixture(params=["fast", "json"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the fast decoder (orjson when installed) and with the json module."""
    if request.param == "json":
        monkeypatch.setattr(trace_io, "_FAST_DECODE", trace_io._loads)
    return str(request.param)


events = helpers.events(
    helpers.json_values(text=12, items=3, keys=6, leaves=8, floats=True),
    st.sampled_from(["endpoint", "reply.chunk", "input.frame", 'x\u00e9"y', "turn.end"]),
    text=8,
    turns=1000,
    t_ns=2**63,
    stage=8,
    keys=6,
    attrs=4,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(events, max_size=25))
def test_same_events_as_read_trace(
    tmp_path_factory: pytest.TempPathFactory, evs: list[Event]
) -> None:
    path = tmp_path_factory.mktemp("scan") / "t.jsonl"
    with TraceWriter(path, synthetic_header()) as w:
        for ev in evs:
            w.write(ev)
    got, info = scanned(path)
    tr = read_trace(path)  # odd events (a turn ended twice, absurd times) warn in both
    assert got == list(tr.events) == evs
    assert info.complete and info.warnings == tr.warnings


@pytest.mark.parametrize(
    ("version", "name", "n"), [(1, "input.frame", 300), (2, "input.frames", 2)]
)
def test_skipped_events_are_counted_not_decoded(
    tmp_path: Path, version: int, name: str, n: int
) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec(frames=True)] * 2, version=version)
    got, info = scanned(path, skip=(name,))
    full = read_trace(path).events
    assert got == [e for e in full if e.name != name]
    assert info.skipped == {name: n} == {name: sum(1 for e in full if e.name == name)}


def test_integers_beyond_64_bits_are_read_as_the_json_module_reads_them(
    tmp_path: Path, decoder: str
) -> None:
    big = 2**64 + 5  # orjson alone would make this a float
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, synthetic_header()) as w:
        w.event("s", 0, big, "probe", "turn", "turn.start", {"n": 1})
    got, _ = scanned(path)
    assert got == list(read_trace(path).events)
    assert type(got[0].t_ns) is int and got[0].t_ns == big


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("middle", ":3: invalid record"),
        ("float_time", ":3: invalid record: field 't_ns' must be an integer"),
        ("bool_turn", "must be an integer or null, not a boolean"),
    ],
)
def test_same_errors_as_read_trace(tmp_path: Path, damage: str, needle: str, decoder: str) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec()])
    lines = path.read_text().splitlines()
    ev = json.loads(lines[3])
    if damage == "middle":
        bad = "{not json"
    elif damage == "float_time":
        bad = json.dumps({**ev, "t_ns": 1.5})
    else:
        bad = json.dumps({**ev, "turn": True})
    lines.insert(2, bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as slow:
        read_trace(path)
    with pytest.raises(TraceError) as fast:
        scanned(path)
    assert fast.value.message == slow.value.message
    assert needle in fast.value.message


def test_same_warnings_for_a_cut_short_trace(tmp_path: Path, decoder: str) -> None:
    path = write_trace(tmp_path / "t.jsonl", [TurnSpec()] * 2, close=False)
    with path.open("a") as f:
        f.write('{"type":"event","session":"s0","turn":2,"t_')
    got, info = scanned(path)
    slow = read_trace(path)
    assert got == list(slow.events)
    assert info.warnings == slow.warnings
    assert any("cut short" in w for w in info.warnings)


def test_both_decoders_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_trace(
        tmp_path / "t.jsonl",
        [TurnSpec(), TurnSpec(aggregation_ms=183.0, frames=True), TurnSpec(ok=False, reason="x")],
    )
    fast = build_report([path]).to_json()
    monkeypatch.setattr(trace_io, "_FAST_DECODE", trace_io._loads)
    assert build_report([path]).to_json() == fast
