"""Exports: Chrome trace-event JSON (checked against the trace-event format's rules) and
OTLP/JSON (parsed with opentelemetry-proto's JSON mapping)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.cli import run as cli
from voiceaudit.clock import NS_PER_MS, NS_PER_S, Anchor
from voiceaudit.exports import export_document, export_trace
from voiceaudit.model import Header, Span
from voiceaudit.trace_io import Trace, TraceWriter, read_trace

MS = NS_PER_MS
MONO0 = 10_000 * NS_PER_S
WALL0 = 1_795_000_000 * NS_PER_S


def probe_trace(path: Path, *, overlap: bool = False) -> Trace:
    """A trace as the probe writes it: two sessions, a failed turn, imported spans.

    ``overlap``: turn 1 starts while turn 0's reply is still playing (reply.end later
    than the next turn.start), which a trace-event viewer cannot nest on one track.
    """
    header = Header(
        run_id="exp1",
        voiceaudit_version="test",
        target={"protocol": "pipecat-websocket", "url": "ws://127.0.0.1:8765/"},
        host={"hostname": "h"},
        clock={"name": "monotonic", "resolution_ns": 1},
        anchors=(Anchor(wall_ns=WALL0, mono_ns=MONO0, uncertainty_ns=100),),
    )
    with TraceWriter(path, header) as w:
        for si, sid in enumerate(("s0", "s1")):
            base = MONO0 + si * 50 * MS
            w.event(sid, None, base, "probe", "session", "session.connect_start", {"url": "ws://x"})
            w.event(sid, None, base + 3 * MS, "probe", "session", "session.connected")
            t = base + 10 * MS
            for turn in range(3):
                start = t
                w.event(
                    sid,
                    turn,
                    start,
                    "probe",
                    "turn",
                    "turn.start",
                    {
                        "audio": "a.wav",
                        "rate": 16000,
                        "n_samples": 32000,
                        "speech_start_sample": 3200,
                        "speech_end_sample": 28800,
                        "warmup": turn == 0,
                        "speed": 1.0,
                    },
                )
                for i in range(100):
                    w.event(
                        sid,
                        turn,
                        start + (i + 1) * 20 * MS,
                        "probe",
                        "input",
                        "input.frame",
                        {
                            "i": i,
                            "a": i * 320,
                            "b": (i + 1) * 320,
                            "sched_ns": start + (i + 1) * 20 * MS,
                        },
                    )
                end = start + 1800 * MS
                w.event(sid, turn, end, "probe", "input", "input.speech_end", {"sample": 28800})
                w.event(
                    sid,
                    turn,
                    end + 2 * MS,
                    "probe",
                    "input",
                    "input.speech_end_sent",
                    {"frame": 89},
                )
                if turn == 2 and sid == "s1":
                    w.event(
                        sid,
                        turn,
                        end + 15 * NS_PER_S,
                        "probe",
                        "turn",
                        "turn.end",
                        {"ok": False, "reason": "timeout: no reply", "warmup": False},
                    )
                    w.commit()
                    t = end + 16 * NS_PER_S
                    continue
                marks = [
                    ("endpoint", "endpointing", 300),
                    ("transcript.final", "transcription", 420),
                    ("llm.request", "model", 425),
                    ("llm.first_token", "model", 560),
                    ("tts.request", "synthesis", 700),
                    ("tts.first_byte", "synthesis", 780),
                ]
                for name, stage, dt in marks:
                    w.event(sid, turn, end + dt * MS, "pipeline", stage, name, {"raw": name})
                fb = end + 790 * MS
                for c in range(10):
                    w.event(
                        sid,
                        turn,
                        fb + c * 20 * MS,
                        "probe",
                        "reply",
                        "reply.chunk",
                        {
                            "bytes": 1280,
                            "samples": 640,
                            "offset": c * 640,
                            "rate": 16000,
                            "wire_bytes": 1300,
                        },
                    )
                w.event(sid, turn, fb, "probe", "reply", "reply.first_byte")
                w.event(
                    sid, turn, fb, "probe", "reply", "reply.playout_start", {"model": "immediate"}
                )
                w.event(
                    sid,
                    turn,
                    fb + 250 * MS,
                    "probe",
                    "reply",
                    "reply.underrun",
                    {"gap_ns": 30 * MS},
                )
                reply_end = fb + 430 * MS
                w.event(sid, turn, reply_end, "probe", "reply", "reply.end", {"samples": 6400})
                silence = 40 * MS * (turn + 1)
                w.event(
                    sid,
                    turn,
                    fb + silence,
                    "probe",
                    "reply",
                    "reply.audible",
                    {"sample": 640 * (turn + 1), "onset_ms": 40.0 * (turn + 1)},
                )
                turn_end = fb + (200 if overlap and turn == 0 else 500) * MS
                w.event(
                    sid,
                    turn,
                    turn_end,
                    "probe",
                    "turn",
                    "turn.end",
                    {"ok": True, "warmup": turn == 0, "voice_to_voice_ns": fb + silence - end},
                )
                w.write(
                    Span(
                        sid,
                        turn,
                        end + 310 * MS,
                        end + 420 * MS,
                        "import",
                        "transcription",
                        "pipecat.stt",
                        {"framework": "pipecat", "metrics.ttfb": 0.1},
                    )
                )
                w.write(
                    Span(
                        sid,
                        turn,
                        end + 700 * MS,
                        reply_end,
                        "import",
                        "synthesis",
                        "pipecat.tts",
                        {"framework": "pipecat", "nested": {"a": [1, 2]}},
                    )
                )
                w.commit()
                t = turn_end + (10 if overlap and turn == 0 else 700) * MS
            w.event(sid, None, t, "probe", "session", "session.closed")
    return read_trace(path)


# -- trace-event format --------------------------------------------------------------------


_PHASES = {"X", "i", "I", "C", "M", "B", "E", "b", "e", "n"}
_METADATA = {"process_name", "thread_name", "thread_sort_index", "process_sort_index"}


def _no_nan(text: str) -> Any:
    def bad(c: str) -> None:
        raise AssertionError(f"{c} is not JSON")

    return json.loads(text, parse_constant=bad)


def check_trace_event_format(doc: Any) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Structure rules of the Trace Event Format (JSON object form); returns X slices by
    track. Fails on the first violation."""
    assert isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    threads: dict[tuple[int, int], str] = {}
    slices: dict[tuple[int, int], list[dict[str, Any]]] = {}
    used: set[tuple[int, int]] = set()
    for ev in doc["traceEvents"]:
        assert isinstance(ev, dict), ev
        ph = ev.get("ph")
        assert ph in _PHASES, ev
        assert isinstance(ev.get("pid"), int), ev
        assert isinstance(ev.get("name"), str) and ev["name"], ev
        if "args" in ev:
            assert isinstance(ev["args"], dict), ev
        if ph == "M":
            assert ev["name"] in _METADATA, ev
            if ev["name"] == "thread_name":
                key = (ev["pid"], ev["tid"])
                assert key not in threads, f"thread {key} named twice"
                threads[key] = ev["args"]["name"]
            continue
        ts = ev.get("ts")
        assert isinstance(ts, int | float) and ts >= 0, ev
        if ph == "C":
            assert ev["args"] and all(isinstance(v, int | float) for v in ev["args"].values()), ev
            continue
        assert isinstance(ev.get("tid"), int), ev
        used.add((ev["pid"], ev["tid"]))
        if ph == "X":
            assert isinstance(ev.get("dur"), int | float) and ev["dur"] >= 0, ev
            slices.setdefault((ev["pid"], ev["tid"]), []).append(ev)
        elif ph in ("i", "I"):
            assert ev.get("s", "t") in ("g", "p", "t"), ev
    assert used <= set(threads), f"tracks without a thread_name: {used - set(threads)}"
    assert len(set(threads.values())) == len(threads), "two tracks share a name"
    # complete events on one track must nest (disjoint or contained), in ns to be exact
    for key, evs in slices.items():
        spans = sorted(
            ((round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000), e["name"]) for e in evs),
            key=lambda s: (s[0], s[1] != s[0], -s[1]),
        )
        stack: list[tuple[int, int, str]] = []
        for s in spans:
            while stack and stack[-1][1] <= s[0]:
                stack.pop()
            if stack:
                assert s[1] <= stack[-1][1], f"{threads[key]}: {s} overlaps {stack[-1]}"
            stack.append(s)
    return slices


def ns(ev: dict[str, Any], key: str = "dur") -> int:
    return round(ev[key] * 1000)


@pytest.mark.parametrize("overlap", [False, True])
def test_perfetto_export_follows_the_trace_event_format(tmp_path: Path, overlap: bool) -> None:
    tr = probe_trace(tmp_path / "trace.jsonl", overlap=overlap)
    out = export_trace(tr, "perfetto", tmp_path / "t.perfetto.json")
    doc = _no_nan(out.read_text())
    slices = check_trace_event_format(doc)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    for s in ("s0", "s1"):
        assert {f"{s} turns", f"{s} input", f"{s} reply", f"{s} marks"} <= names
        assert {f"{s} pipecat.stt", f"{s} pipecat.tts"} <= names
    if overlap:  # the reply still playing into the next turn went to a second lane
        assert "s0 reply (2)" in names or "s0 turns (2)" in names
    t0 = min(e.t_ns for e in tr.events)
    all_x = [e for evs in slices.values() for e in evs]
    v2v = [e for e in all_x if e["name"] == "voice-to-voice"]
    assert len(v2v) == 5  # 6 turns, one failed
    for v in v2v:
        start, end = ns(v, "ts"), ns(v, "ts") + ns(v)
        segs = [
            e
            for e in all_x
            if e["cat"] == "ledger"
            and e["tid"] == v["tid"]
            and e["name"] != "voice-to-voice"
            and start <= ns(e, "ts")
            and ns(e, "ts") + ns(e) <= end
        ]
        # the ledger segments tile voice-to-voice exactly
        assert sum(ns(e) for e in segs) == ns(v)
        assert {e["name"] for e in segs} >= {
            "endpointing",
            "transcription",
            "aggregation",
            "transport",
        }
    # the values are the trace's: voice-to-voice of s0 turn 1 = 790 ms + 80 ms silence
    turn1 = next(e for e in all_x if e["name"] == "turn 1" and e["args"]["session"] == "s0")
    assert turn1["args"]["voice_to_voice_ms"] == 870.0
    sil = [e for e in all_x if e["name"] == "leading_silence"]
    assert sorted({ns(e) for e in sil}) == [40 * MS, 80 * MS, 120 * MS]
    failed = [e for e in all_x if e["name"].endswith("FAILED")]
    assert len(failed) == 1 and failed[0]["args"]["reason"].startswith("timeout")
    # instants for marks (no per-frame flood), counters for the reply buffer
    instants = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert any(e["name"] == "tts.first_byte" for e in instants)
    assert any(e["name"] == "underrun" for e in instants)
    assert not any(e["name"] in ("input.frame", "reply.chunk") for e in instants)
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert {e["name"] for e in counters} == {"s0 reply buffered (ms)", "s1 reply buffered (ms)"}
    # 10 chunks of 40 ms arriving every 20 ms: 400 ms received, 180 ms played at the last
    last = [e for e in counters if e["name"] == "s0 reply buffered (ms)"][:11]
    assert last[9]["args"]["ms"] == pytest.approx(400 - 180)
    assert min(e["ts"] for e in doc["traceEvents"] if "ts" in e) == 0
    assert doc["metadata"]["voiceaudit.t0_monotonic_ns"] == t0
    nested = next(e for e in all_x if e["name"] == "pipecat.tts")
    assert json.loads(nested["args"]["nested"]) == {"a": [1, 2]}


def test_perfetto_reply_level_from_saved_audio(tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    tr = probe_trace(tmp_path / "trace.jsonl")
    d = tmp_path / "reply_audio"
    d.mkdir()
    x = np.zeros(6400, dtype=np.float32)
    x[640:] = 0.5 * np.sin(np.arange(6400 - 640) * 0.2)
    soundfile.write(str(d / "s0-t0.wav"), x, 16000, subtype="PCM_16")
    doc = export_document(tr, "perfetto")
    check_trace_event_format(doc)
    lvl = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["name"] == "s0 reply level"]
    assert len(lvl) == 20  # 20 ms windows over 400 ms
    assert lvl[0]["args"]["dBFS"] == -120.0  # silence first
    assert -10 < lvl[5]["args"]["dBFS"] < -8  # a 0.5 sine: -9 dBFS


# -- OTLP/JSON ---------------------------------------------------------------------------------


def _parse_otlp(doc: dict[str, Any]) -> Any:
    """Parse with opentelemetry-proto's generated classes and protobuf's JSON mapping.

    OTLP/JSON writes ids as hex where protobuf's generic mapping expects base64 for bytes;
    OTLP receivers convert, and so does this (the only difference from the generic mapping).
    """
    from google.protobuf.json_format import Parse
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    doc = json.loads(json.dumps(doc))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return Parse(json.dumps(doc), TracesData(), ignore_unknown_fields=False)


def test_otlp_export_parses_with_opentelemetry_proto(tmp_path: Path) -> None:
    tr = probe_trace(tmp_path / "trace.jsonl")
    out = export_trace(tr, "otlp", tmp_path / "t.otlp.json")
    doc = _no_nan(out.read_text())
    # OTLP/JSON rules: hex ids, 64-bit integers as strings
    for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        assert len(s["traceId"]) == 32 and int(s["traceId"], 16) >= 0
        assert len(s["spanId"]) == 16 and s["spanId"] == s["spanId"].lower()
        assert s["startTimeUnixNano"].isdigit() and s["endTimeUnixNano"].isdigit()
    data = _parse_otlp(doc)
    spans = list(data.resource_spans[0].scope_spans[0].spans)
    res = {kv.key: kv.value for kv in data.resource_spans[0].resource.attributes}
    assert res["service.name"].string_value == "voiceaudit"
    assert res["voiceaudit.run_id"].string_value == "exp1"
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert sorted(s.name for s in roots) == ["voiceaudit.session", "voiceaudit.session"]
    assert {len(s.trace_id) for s in spans} == {16} and {len(s.span_id) for s in spans} == {8}
    turns = [s for s in spans if s.name == "voiceaudit.turn"]
    assert len(turns) == 6
    cm = tr.clock_map()
    for t in turns:
        attrs = {kv.key: kv.value for kv in t.attributes}
        assert all(k.startswith("voiceaudit.") for k in attrs)
        assert by_id[t.parent_span_id].name == "voiceaudit.session"
        session, turn = attrs["voiceaudit.session"].string_value, attrs["voiceaudit.turn"].int_value
        start = next(
            e
            for e in tr.events
            if e.session == session and e.turn == turn and e.name == "turn.start"
        )
        assert t.start_time_unix_nano == cm.mono_to_wall(start.t_ns)
        segs = [
            s
            for s in spans
            if s.parent_span_id == t.span_id
            and any(kv.key == "voiceaudit.segment" for kv in s.attributes)
        ]
        if attrs["voiceaudit.ok"].bool_value:
            v2v = attrs["voiceaudit.voice_to_voice_ns"].int_value
            assert sum(s.end_time_unix_nano - s.start_time_unix_nano for s in segs) == v2v
            assert t.status.code == 0
            names = {e.name for e in t.events}
            assert "tts.first_byte" in names and "input.frame" not in names
        else:
            assert not segs and t.status.code == 2 and "timeout" in t.status.message
    imported = [s for s in spans if s.name in ("pipecat.stt", "pipecat.tts")]
    assert len(imported) == 10
    assert all(by_id[s.parent_span_id].name == "voiceaudit.turn" for s in imported)
    # exporting twice gives the same ids
    again = export_document(tr, "otlp")
    assert again == doc


# -- CLI -----------------------------------------------------------------------------------------


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probe_trace(tmp_path / "trace.jsonl")
    assert cli(["export", str(tmp_path), "--format", "perfetto"]) == 0
    assert (tmp_path / "trace.perfetto.json").is_file()
    assert (
        cli(["export", str(tmp_path / "trace.jsonl"), "-f", "otlp", "-o", str(tmp_path / "o.json")])
        == 0
    )
    _parse_otlp(json.loads((tmp_path / "o.json").read_text()))
    assert "wrote" in capsys.readouterr().err
    assert cli(["export", str(tmp_path / "trace.jsonl"), "-f", "svg"]) == 2
    assert "unknown format" in capsys.readouterr().err
    (tmp_path / "junk.jsonl").write_text("hello\n")
    assert cli(["export", str(tmp_path / "junk.jsonl"), "-f", "otlp"]) == 3
    err = capsys.readouterr().err
    assert "not a voiceaudit trace" in err and "Traceback" not in err


SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


@pytest.mark.parametrize(
    "trace_path",
    sorted(SAMPLES.glob("*/trace.jsonl*")),
    ids=lambda p: p.parent.name,
)
def test_exports_of_recorded_runs(trace_path: Path) -> None:
    """Every run recorded against the reference pipeline exports to valid files."""
    tr = read_trace(trace_path)
    doc = export_document(tr, "perfetto")
    slices = check_trace_event_format(_no_nan(json.dumps(doc, allow_nan=False)))
    v2v = {
        round(e["ts"] * 1000): round(e["dur"] * 1000)
        for evs in slices.values()
        for e in evs
        if e["name"] == "voice-to-voice"
    }
    t0 = doc["metadata"]["voiceaudit.t0_monotonic_ns"]
    for ev in tr.events:
        if ev.name == "turn.end" and ev.attrs.get("ok") and ev.attrs["voice_to_voice_ns"] >= 0:
            se = next(
                e.t_ns
                for e in tr.events
                if e.session == ev.session and e.turn == ev.turn and e.name == "input.speech_end"
            )
            assert v2v[se - t0] == ev.attrs["voice_to_voice_ns"]
    data = _parse_otlp(export_document(tr, "otlp"))
    turns = [s for s in data.resource_spans[0].scope_spans[0].spans if s.name == "voiceaudit.turn"]
    assert len(turns) == sum(1 for e in tr.events if e.name == "turn.start")
