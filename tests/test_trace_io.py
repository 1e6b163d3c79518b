"""Trace writer/reader: round trips, crash safety, tolerance and clear errors."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceaudit.clock import Anchor, FakeClock, take_anchor
from voiceaudit.errors import ExitCode, NoDataError, TraceError
from voiceaudit.model import SCHEMA, Event, Header, Span, record_from_dict
from voiceaudit.trace_io import TraceWriter, read_trace, read_traces


def make_header(run_id: str = "r1") -> Header:
    clock = FakeClock(wall_offset_ns=1_700_000_000 * 10**9)
    return Header(
        run_id=run_id,
        voiceaudit_version="0.0.test",
        target={"protocol": "realtime", "url": "ws://127.0.0.1:1/v1/realtime"},
        host={"hostname": "test"},
        clock={"name": clock.name, "resolution_ns": 1},
        anchors=(take_anchor(clock),),
    )


def write_turns(path: Path, turns: int, *, close: bool = True) -> None:
    w = TraceWriter(path, make_header())
    for t in range(turns):
        w.event("s0", t, 1000 * t, "probe", "turn", "turn.start", {"audio": "a.wav"})
        w.event("s0", t, 1000 * t + 500, "pipeline", "endpointing", "endpoint")
        w.event("s0", t, 1000 * t + 900, "probe", "turn", "turn.end", {"ok": True})
        w.commit()
    if close:
        w.close("complete", anchor=Anchor(2, 3))


# -- round trips --------------------------------------------------------------------------

events = helpers.events(helpers.json_values(), st.text(min_size=1, max_size=30))


@given(events)
def test_event_round_trips_through_json(ev: Event) -> None:
    assert record_from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


@given(st.integers(0, 2**62), st.integers(0, 2**40))
def test_span_round_trips(start: int, dur: int) -> None:
    sp = Span("s", 3, start, start + dur, "import", "llm", "llm", {"metrics.ttfb": 0.25})
    assert record_from_dict(json.loads(json.dumps(sp.to_dict()))) == sp


@settings(max_examples=25, deadline=None)
@given(st.lists(events, max_size=30))
def test_file_round_trip(tmp_path_factory: pytest.TempPathFactory, evs: list[Event]) -> None:
    path = tmp_path_factory.mktemp("rt") / "trace.jsonl"
    with TraceWriter(path, make_header()) as w:
        for ev in evs:
            w.write(ev)
    tr = read_trace(path)
    assert tr.complete
    assert list(tr.events) == evs
    assert tr.end is not None and tr.end.counts["events"] == len(evs)


def test_gzip_trace_is_read(tmp_path: Path) -> None:
    plain = tmp_path / "t.jsonl"
    write_turns(plain, 3)
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    tr = read_trace(gz)
    assert tr.complete and len(tr.finished_turns()) == 3
    assert tr.anchors[-1] == Anchor(2, 3)


def test_directory_of_traces(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_turns(tmp_path / name / "trace.jsonl", 2)
    traces = read_traces([tmp_path])
    assert [len(t.finished_turns()) for t in traces] == [2, 2]


def test_secrets_never_reach_disk(tmp_path: Path) -> None:
    key = "sk-test-0123456789abcdef"
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, make_header(), secrets=[key]) as w:
        w.event("s", 0, 1, "pipeline", "error", "error", {"message": f"bad key {key}"})
    text = path.read_text()
    assert key not in text
    assert "[redacted]" in text


# -- incomplete traces keep finished turns -------------------------------------------------


def test_trace_without_end_is_incomplete_but_usable(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_turns(path, 4, close=False)
    tr = read_trace(path)
    assert not tr.complete
    assert len(tr.finished_turns()) == 4
    assert any("cut short" in w for w in tr.warnings)


def test_cut_short_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_turns(path, 2, close=False)
    with path.open("a") as f:
        f.write('{"type":"event","session":"s0","tu')
    tr = read_trace(path)
    assert len(tr.finished_turns()) == 2


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    plain = tmp_path / "t.jsonl"
    write_turns(plain, 200, close=True)
    data = gzip.compress(plain.read_bytes())
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(data[: len(data) * 2 // 3])
    tr = read_trace(gz)
    assert not tr.complete
    assert 0 < len(tr.finished_turns()) < 200
    assert any("ends early" in w for w in tr.warnings)


_KILLED_WRITER = r"""
import sys, time
from voiceaudit.clock import MonotonicClock, take_anchor
from voiceaudit.model import Header
from voiceaudit.trace_io import TraceWriter
clock = MonotonicClock()
h = Header(run_id="kill", voiceaudit_version="t", target={}, host={},
           clock={"name": "monotonic", "resolution_ns": 1}, anchors=(take_anchor(clock),))
w = TraceWriter(sys.argv[1], h)
turn = 0
while True:
    for i in range(50):
        w.event("s0", turn, clock.now_ns(), "probe", "input", "input.frame",
                {"i": i, "pad": "x" * 200})
    w.event("s0", turn, clock.now_ns(), "probe", "turn", "turn.end", {"ok": True})
    w.commit()
    print(turn, flush=True)
    turn += 1
    # the next turn's records sit in the buffer, half-written, when the kill lands
    for i in range(30):
        w.event("s0", turn, clock.now_ns(), "probe", "input", "input.frame",
                {"i": i, "pad": "y" * 200})
    time.sleep(0.01)
"""


def test_sigkill_mid_write_keeps_every_finished_turn(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.monotonic() + 30
    while committed < 5 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 5, "writer did not get going"
    tr = read_trace(path)
    assert not tr.complete
    turns = {t for _, t in tr.finished_turns()}
    # Every turn reported committed before the kill is on disk, whole.
    assert set(range(committed + 1)) <= turns
    for t in range(committed + 1):
        frames = [e for e in tr.turn_events("s0", t) if e.name == "input.frame"]
        # turn 0 has its 50 frames; later turns also the 30 buffered before their commit
        assert len(frames) == (50 if t == 0 else 80)


# -- garbage is refused with a clear error -------------------------------------------------


def garbage_trace(tmp_path: Path, kind: str) -> Path:
    """A trace file (or a path with none) that is not a readable trace, of this kind."""
    p = tmp_path / "trace.jsonl"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(os.urandom(4096))
    elif kind == "truncated_gzip":
        p = tmp_path / "trace.jsonl.gz"
        p.write_bytes(gzip.compress(b'{"type":"header"' + b" " * 5000)[:20])
    elif kind == "wrong_shape":
        p.write_text('[1, 2, 3]\n{"type": "event"}\n')
    elif kind == "event_first":
        ev = Event("s", 0, 1, "probe", "turn", "turn.start")
        p.write_text(json.dumps(ev.to_dict()) + "\n")
    elif kind == "bad_middle":
        write_turns(p, 2)
        lines = p.read_text().splitlines()
        lines.insert(2, "{not json")
        p.write_text("\n".join(lines) + "\n")
    elif kind == "newer_schema":
        h = make_header().to_dict()
        h["schema"] = "voiceaudit.trace/99"
        p.write_text(json.dumps(h) + "\n")
    elif kind == "missing":
        p = tmp_path / "nope.jsonl"
    return p


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("empty", "empty file"),
        ("binary", "not"),
        ("truncated_gzip", "cut short"),
        ("wrong_shape", "not a voiceaudit trace"),
        ("event_first", "first record must be a header"),
        ("bad_middle", ":3: invalid record"),
        ("newer_schema", "newer voiceaudit"),
        ("missing", "no such file"),
    ],
)
def test_garbage_gives_trace_error(tmp_path: Path, kind: str, needle: str) -> None:
    p = garbage_trace(tmp_path, kind)
    with pytest.raises(TraceError) as info:
        read_trace(p)
    assert needle in info.value.message
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_directory_without_traces(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NoDataError):
        read_traces([tmp_path])


def test_schema_constant() -> None:
    assert SCHEMA == "voiceaudit.trace/2"
