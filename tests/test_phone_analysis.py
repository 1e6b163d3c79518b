"""Phone paths and agents that speak first: every figure recovered exactly from a trace.

The traces are written with the real TraceWriter and hold exactly the events of the
issue-24 contract (/work/helpers/PHONE.md: ``reply.chunks`` with ``queued_ns``, the
``carrier.*`` marks, ``greeting.*``, ``turn.start`` ``dtmf``, the header's
``target.path``), with delays the test chooses: a carrier buffer, a fixed delay, a burst
reply that runs ahead of the playout, a barge-in with no clear, a late clear, a mark sent
before the audio it should follow, a key press, a greeting. The carrier's playout is laid
out here by its rule (a message plays when it arrives if nothing is playing, else right
after the audio queued before it), independently of voiceaudit's carrier model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.analysis import build_report, compare
from voiceaudit.analysis.phone import CLEAR_LATENCY, GREETING_LATENCY, target_path
from voiceaudit.analysis.synthetic import synthetic_header
from voiceaudit.gate.evaluate import metric_values
from voiceaudit.report import Format, render
from voiceaudit.trace_io import TraceWriter

MS = 1_000_000
RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
FIXED_MS = 40
T0 = 10**12


def header(run_id: str, path: str | None = "phone", protocol: str = "twilio") -> Any:
    h = synthetic_header(run_id, {"frame_ms": 20, "warmup": 0})
    target: dict[str, Any] = {"protocol": protocol, "url": "ws://127.0.0.1/media-stream"}
    if path is not None:
        target["path"] = path
    return replace(h, target=target)


def playout(arrivals: list[int], samples: list[int]) -> list[int]:
    """Carrier time each chunk starts playing (the carrier's rule, written out here)."""
    out = []
    end = 0
    for a, n in zip(arrivals, samples, strict=True):
        start = max(a, end)
        out.append(start)
        end = start + n * 10**9 // RATE
    return out


@dataclass
class Turn:
    """One turn heard through the carrier: speech end, the reply's chunks (arrival at the
    carrier, samples), silent chunks at its start, carrier marks and turn-taking events."""

    speech_end: int
    arrivals: list[int]
    samples: list[int]
    silent_chunks: int = 0
    queued_before_ns: int = 0
    pipeline: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    probe: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=dict)
    #: played chunks cut by a clear: chunk index -> samples that played
    cut: dict[int, int] = field(default_factory=dict)
    dropped_after: int | None = None

    def plays(self) -> list[int]:
        p = playout(self.arrivals, self.samples)
        return [t + self.queued_before_ns for t in p]


def write_phone_trace(
    path: Path,
    turns: list[Turn],
    *,
    greeting_ms: float | None = 730.0,
    run_id: str = "phone",
    target_path_: str | None = "phone",
    protocol: str = "twilio",
    fixed_ms: int = FIXED_MS,
) -> Path:
    w = TraceWriter(path, header(run_id, target_path_, protocol))
    s = "s0"
    w.event(s, None, T0 - 2000 * MS, "probe", "session", "session.connect_start")
    w.event(s, None, T0 - 1990 * MS, "probe", "session", "session.connected")
    w.event(
        s,
        None,
        T0 - 1980 * MS,
        "pipeline",
        "session",
        "carrier.start",
        {
            "dialect": protocol,
            "stream_id": "MZ1",
            "call_id": "CA1",
            "encoding": "pcmu",
            "rate": RATE,
            "fixed_delay_ms": fixed_ms,
        },
    )
    wait_t = T0 - 1980 * MS
    w.event(s, None, wait_t, "probe", "greeting", "greeting.wait", {"wait_ns": 5000 * MS})
    if greeting_ms is not None:
        lat = round(greeting_ms * MS)
        w.event(
            s,
            None,
            wait_t + lat,
            "probe",
            "greeting",
            "greeting.audible",
            {"latency_ns": lat, "first_byte_ns": lat - 10 * MS, "sample": 80, "onset_ms": 10.0},
        )
        w.event(
            s,
            None,
            wait_t + lat + 900 * MS,
            "probe",
            "greeting",
            "greeting.end",
            {"samples": 7200, "rate": RATE, "duration_ns": 900 * MS},
        )
    else:
        w.event(
            s,
            None,
            wait_t + 5000 * MS,
            "probe",
            "greeting",
            "greeting.none",
            {"waited_ns": 5000 * MS},
        )
    fixed = fixed_ms * MS
    for i, t in enumerate(turns):
        se = t.speech_end
        w.event(
            s,
            i,
            se - 1000 * MS,
            "probe",
            "turn",
            "turn.start",
            {"audio": "a.wav", "rate": 16000, "n_samples": 16000, "warmup": False, **t.start},
        )
        w.event(s, i, se, "probe", "input", "input.speech_end", {"sample": 16000})
        w.event(s, i, se + 12 * MS, "probe", "input", "input.speech_end_sent", {"late_ns": 0})
        plays = t.plays()
        played = [t.cut.get(k, n) for k, n in enumerate(t.samples)]
        keep = [k for k, n in enumerate(played) if n > 0]
        heard = [plays[k] + fixed for k in keep]
        first = heard[0]
        w.event(
            s,
            i,
            first,
            "probe",
            "reply",
            "reply.chunks",
            {
                "dt_ns": [h - first for h in heard],
                "samples": [played[k] for k in keep],
                "bytes": [2 * played[k] for k in keep],
                "wire_bytes": [played[k] for k in keep],
                "rate": RATE,
                "queued_ns": [plays[k] - t.arrivals[k] for k in keep],
            },
        )
        w.event(s, i, first, "probe", "reply", "reply.first_byte")
        w.event(
            s,
            i,
            first,
            "probe",
            "reply",
            "reply.playout_start",
            {"model": "immediate", "wait_ns": 0},
        )
        onset = t.silent_chunks * FRAME
        w.event(
            s,
            i,
            first + onset * 10**9 // RATE,
            "probe",
            "reply",
            "reply.audible",
            {"sample": onset, "onset_ms": onset * 1000 / RATE},
        )
        for name, stage, at, a in t.pipeline:
            w.event(s, i, at, "pipeline", stage, name, a)
        for name, stage, at, a in t.probe:
            w.event(s, i, at, "probe", stage, name, a)
        last = keep[-1]
        w.event(
            s,
            i,
            plays[last] + fixed + played[last] * 10**9 // RATE,
            "probe",
            "reply",
            "reply.end",
            {"samples": sum(played)},
        )
        w.event(
            s,
            i,
            plays[last] + fixed + played[last] * 10**9 // RATE + 500 * MS,
            "probe",
            "turn",
            "turn.end",
            {"ok": True, "warmup": False, "voice_to_voice_ns": first + onset * 10**9 // RATE - se},
        )
        w.count("turns_ok")
        w.commit()
    w.close("complete")
    return path


def burst(start: int, n: int, every_ms: float = 2.0) -> tuple[list[int], list[int]]:
    """``n`` 20 ms chunks arriving ``every_ms`` apart from ``start`` (a bot sending ahead)."""
    return [start + round(k * every_ms * MS) for k in range(n)], [FRAME] * n


# Turn 0: the reply's first chunk waits 150 ms behind audio queued before it (the greeting's
# tail), a burst of 10 chunks (2 ms apart: it runs ahead), 3 silent chunks, an honest mark.
S0 = T0 + 1000 * MS
A0, N0 = burst(S0 + 400 * MS, 10)
QB0 = 150 * MS
# Turn 1: a burst of 25 chunks, its mark sent 1 ms before them (mark-early); the caller
# barges in 100 ms into the reply and the bot never clears (no_clear).
S1 = T0 + 10_000 * MS
A1, N1 = burst(S1 + 300 * MS, 25)
ONSET1 = A1[0] + 100 * MS
# Turn 2: 50 chunks; barge-in 200 ms into the reply; the clear arrives 650 ms after the
# onset (late_clear); the carrier drops what was still queued.
S2 = T0 + 20_000 * MS
A2, N2 = burst(S2 + 350 * MS, 50)
ONSET2 = A2[0] + 200 * MS
CLEAR2 = ONSET2 + 650 * MS
# Turn 3: a key press; the bot answers it 300 ms after the key.
S3 = T0 + 30_000 * MS
A3, N3 = burst(S3 + 300 * MS, 5, 20.0)


def turns() -> list[Turn]:
    t0 = Turn(S0, A0, N0, silent_chunks=3, queued_before_ns=QB0)
    p0 = t0.plays()
    t0.pipeline = [
        ("carrier.mark", "transport", A0[-1] + 1 * MS, {"name": "reply-0", "queued_ms": 0.0}),
        (
            "carrier.mark_echo",
            "transport",
            p0[-1] + 20 * MS,
            {"name": "reply-0", "mark_ns": A0[-1] + 1 * MS, "cleared": False, "sent_ns": 0},
        ),
    ]
    # the bot's answer to the barge-in arrives 800 ms after the onset and is played on in
    # the same turn's audio (the carrier was still playing this reply: no quiet between)
    nxt, nn = burst(ONSET1 + 800 * MS, 10)
    t1 = Turn(S1, A1 + nxt, N1 + nn)
    p1 = t1.plays()
    mark1 = A1[0] - 1 * MS
    end_all = p1[-1] + 20 * MS
    t1.pipeline = [
        ("carrier.mark", "transport", mark1, {"name": "reply-1", "queued_ms": 0.0}),
        (
            "carrier.mark_echo",
            "transport",
            mark1,
            {"name": "reply-1", "mark_ns": mark1, "cleared": False, "sent_ns": mark1},
        ),
    ]
    # as the probe sees it: the last sample of the whole segment, the next reply's too
    stop1 = end_all + FIXED_MS * MS - ONSET1
    t1.probe = [
        (
            "input.overlap",
            "input",
            ONSET1,
            {"kind": "interrupt", "onset_ns": ONSET1, "opens_turn": 2},
        ),
        (
            "reply.stop",
            "reply",
            end_all + FIXED_MS * MS,
            {
                "kind": "interrupt",
                "onset_ns": ONSET1,
                "stop_ns": stop1,
                "heard_after_ms": stop1 / MS,
                "cut": None,
                "stopped": True,
            },
        ),
    ]
    t2 = Turn(S2, A2, N2, start={"interrupts_turn": 1})
    p2 = t2.plays()
    # chunks that began before the clear play up to it; the rest are dropped
    cut = {}
    for k, p in enumerate(p2):
        if p >= CLEAR2:
            cut[k] = 0
        elif p + 20 * MS > CLEAR2:
            cut[k] = (CLEAR2 - p) * RATE // 10**9
    t2.cut = cut
    queue_end2 = p2[-1] + 20 * MS
    stop2 = CLEAR2 + FIXED_MS * MS - ONSET2
    t2.pipeline = [
        (
            "carrier.clear",
            "transport",
            CLEAR2,
            {"dropped_ms": (queue_end2 - CLEAR2) / MS, "playing": True, "marks_echoed": 0},
        ),
    ]
    t2.probe = [
        ("input.overlap", "input", ONSET2, {"kind": "interrupt", "onset_ns": ONSET2}),
        (
            "reply.stop",
            "reply",
            CLEAR2 + FIXED_MS * MS,
            {
                "kind": "interrupt",
                "onset_ns": ONSET2,
                "stop_ns": stop2,
                "heard_after_ms": stop2 / MS,
                "cut": True,
                "stopped": True,
            },
        ),
    ]
    t3 = Turn(S3, A3, N3, start={"dtmf": "1"})
    t3.pipeline = [("carrier.dtmf", "input", S3, {"digit": "1"})]
    t3.probe = [("input.dtmf", "input", S3, {"digit": "1"})]
    return [t0, t1, t2, t3]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phone_trace(tmp_path_factory.mktemp("phone") / "phone.jsonl", turns())


@pytest.fixture(scope="module")
def doc(trace: Path) -> dict[str, Any]:
    return json.loads(build_report([trace]).to_json())


def _seg(turn: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in turn["ledger"]:
        out[s["segment"]] = out.get(s["segment"], 0) + s["ns"]
    return out


def test_ledger_carrier_buffer_and_fixed_delay(doc: dict[str, Any]) -> None:
    t0 = doc["turns"][0]
    seg = _seg(t0)
    assert seg["input_framing"] == 12 * MS
    assert seg["carrier_buffer"] == QB0
    assert seg["fixed_delay"] == FIXED_MS * MS
    assert seg["leading_silence"] == 3 * 20 * MS  # the reply's own silence stays there
    assert seg["unexplained"] == 400 * MS - 12 * MS  # up to the arrival at the carrier
    assert t0["voice_to_voice_ns"] == 400 * MS + QB0 + FIXED_MS * MS + 60 * MS
    assert sum(s["ns"] for s in t0["ledger"]) == t0["voice_to_voice_ns"]
    # nothing queued before turn 1's reply: a carrier buffer of 0
    assert _seg(doc["turns"][1])["carrier_buffer"] == 0
    assert doc["summary"]["segments"]["carrier_buffer"]["max"] == QB0 / MS


def test_send_ahead(doc: dict[str, Any]) -> None:
    p0 = doc["turns"][0]["phone"]
    assert p0["carrier_buffer_ms"] == QB0 / MS
    # the burst's last chunk arrived 18 ms after the first and plays 180 ms after it
    assert p0["send_ahead_max_ms"] == (QB0 + 180 * MS - 18 * MS) / MS
    assert p0["fixed_delay_ms"] == FIXED_MS
    assert doc["turns"][1]["phone"]["send_ahead_max_ms"] == (480 - 48)


def test_no_clear_costed_with_heard_audio(doc: dict[str, Any]) -> None:
    t1 = doc["turns"][1]
    b = t1["phone"]["barge_ins"][0]
    # 500 ms of reply, onset 100 ms in: 400 ms queued, heard with the 40 ms fixed delay
    assert b["clear_ms"] is None
    assert b["deaf_window_ms"] == 400.0
    assert b["reply_heard_after_ms"] == 440.0
    # reply.stop ran on to the end of the bot's next reply, 800 ms after the onset
    assert b["stop_ms"] == 800.0 + 200.0 + FIXED_MS
    f = [x for x in t1["findings"] if x["kind"] == "no_clear"]
    assert len(f) == 1 and f[0]["ms"] == 440.0
    assert f[0]["evidence"]["heard_after_stop_event_ms"] == 1040.0
    assert not [x for x in t1["findings"] if x["kind"] == "late_clear"]


def test_late_clear(doc: dict[str, Any]) -> None:
    t2 = doc["turns"][2]
    b = t2["phone"]["barge_ins"][0]
    assert b["clear_ms"] == 650.0
    assert b["after_clear_ms"] == FIXED_MS
    # 1 s of reply queued by the onset 200 ms in: 800 ms, though the clear cut it short
    assert b["deaf_window_ms"] == 800.0
    f = [x for x in t2["findings"] if x["kind"] == "late_clear"]
    assert len(f) == 1 and f[0]["ms"] == 650.0
    assert f[0]["evidence"]["threshold_ms"] == 500.0
    assert not [x for x in t2["findings"] if x["kind"] == "no_clear"]
    assert doc["phone"]["barge_ins"]["cleared"] == 1
    assert doc["phone"]["barge_ins"]["not_cleared"] == 1


def test_mark_honesty(doc: dict[str, Any]) -> None:
    honest = doc["turns"][0]
    assert honest["phone"]["marks"][0]["heard_after_echo_ms"] == 0.0
    assert not [x for x in honest["findings"] if x["kind"] == "mark_early"]
    early = [x for x in doc["turns"][1]["findings"] if x["kind"] == "mark_early"]
    # the whole 500 ms reply was sent after the mark and heard after its echo
    assert len(early) == 1 and early[0]["ms"] == 500.0
    assert doc["phone"]["marks"] == {"echoed": 2, "early": 1}


def test_key_press_turn(doc: dict[str, Any]) -> None:
    t3 = doc["turns"][3]
    assert t3["dtmf"] == "1" and t3["key_press"] is True
    assert t3["voice_to_voice_ns"] == 300 * MS + FIXED_MS * MS
    assert doc["phone"]["key_press"]["turns"] == 1
    assert doc["phone"]["key_press"]["reaction_ms"]["p50"] == 340.0


def test_greeting_and_path(doc: dict[str, Any], trace: Path) -> None:
    g = doc["phone"]["greeting"]
    assert g["sessions_waited"] == 1 and g["heard"] == 1 and g["none"] == 0
    assert g["latency_ms"]["p50"] == 730.0
    assert g["sessions"][0]["latency_ms"] == 730.0
    assert [p["path"] for p in doc["phone"]["paths"]] == ["phone"]
    assert doc["phone"]["paths"][0]["turns"] == 4
    assert "fixed delay of 40 ms" in doc["phone"]["includes"]
    rep = build_report([trace])
    assert list(metric_values(rep, GREETING_LATENCY)) == [730.0]
    assert list(metric_values(rep, CLEAR_LATENCY)) == [650.0]


def test_no_greeting_and_slow_greeting(tmp_path: Path) -> None:
    none = write_phone_trace(tmp_path / "none.jsonl", turns()[:1], greeting_ms=None)
    d = json.loads(build_report([none]).to_json())
    f = {x["kind"]: x for x in d["findings"]}
    assert f["no_greeting"]["turns"] == 1 and f["no_greeting"]["of"] == 1
    assert f["no_greeting"]["ms"]["max"] == 5000.0
    slow = write_phone_trace(tmp_path / "slow.jsonl", turns()[:1], greeting_ms=2600.0)
    d = json.loads(build_report([slow]).to_json())
    f = {x["kind"]: x for x in d["findings"]}
    assert f["slow_greeting"]["ms"]["max"] == 2600.0
    assert "no_greeting" not in f


def test_paths_from_protocol() -> None:
    assert target_path({"protocol": "webrtc"}) == "webrtc"
    assert target_path({"protocol": "cascade"}) == "http"
    assert target_path({"protocol": "python"}) == "in-process"
    assert target_path({"protocol": "realtime"}) == "websocket"
    assert target_path({"protocol": "realtime", "path": "phone"}) == "phone"
    assert target_path({"protocol": "realtime", "path": "nonsense"}) == "websocket"


def test_compare_paths_and_greeting(tmp_path: Path, trace: Path) -> None:
    ws = write_phone_trace(
        tmp_path / "ws.jsonl",
        turns(),
        greeting_ms=410.0,
        run_id="ws",
        target_path_="websocket",
        protocol="realtime",
        fixed_ms=0,
    )
    a, b = build_report([trace], label="phone"), build_report([ws], label="ws")
    cmp = compare(a, b)
    d = json.loads(cmp.to_json())
    assert d["differences"]["path"] == {"a": ["phone"], "b": ["websocket"]}
    g = next(m for m in d["metrics"] if m["metric"] == GREETING_LATENCY)
    assert g["diff_p50_ms"] == 410.0 - 730.0
    for fmt in Format:
        text = render(cmp, fmt)
        assert "phone" in text and "websocket" in text
        assert "greeting" in text


def test_every_format_shows_phone(trace: Path) -> None:
    rep = build_report([trace], keep_observations=True)
    for fmt in Format:
        text = render(rep, fmt)
        assert "carrier buffer" in text or "carrier_buffer" in text, fmt
        assert "greeting" in text, fmt
        assert "no_clear" in text or "no clear" in text, fmt
        assert "key press" in text or "key_press" in text, fmt
        if fmt is not Format.JSON:
            flat = " ".join(text.split())
            assert "onset to clear p50 650 ms" in flat, fmt
            assert "clear to the last sample heard p50 40.0 ms" in flat, fmt
            plain = flat.replace("**", "").replace("<b>", "").replace("</b>", "")
            assert "greeting: heard in 1/1" in plain, fmt


def test_merged_paths_reported_apart(tmp_path: Path, trace: Path) -> None:
    ws = write_phone_trace(
        tmp_path / "ws.jsonl",
        turns(),
        run_id="ws",
        target_path_=None,
        protocol="realtime",
        fixed_ms=0,
    )
    d = json.loads(build_report([trace, ws]).to_json())
    paths = {p["path"]: p for p in d["phone"]["paths"]}
    assert set(paths) == {"phone", "websocket"}
    assert [t["path"] for t in d["turns"]] == ["phone"] * 4 + ["websocket"] * 4
    assert paths["phone"]["turns"] == 4 and paths["websocket"]["turns"] == 4
    # the same turns without the 40 ms fixed delay
    assert paths["phone"]["voice_to_voice_ms"]["p50"] - paths["websocket"]["voice_to_voice_ms"][
        "p50"
    ] == pytest.approx(40.0)


def test_sweep_shows_paths_side_by_side(tmp_path: Path) -> None:
    from voiceaudit.analysis.sweep import Cell, Manifest, build_sweep_view
    from voiceaudit.report.sweep import render_sweep

    cells = [
        Cell("twilio--lan--r1", "twilio", "twilio", "lan", 1, status="ok"),
        Cell("ws--lan--r1", "ws", "websocket", "lan", 1, status="ok"),
    ]
    for c in cells:
        (tmp_path / c.dir).mkdir()
    write_phone_trace(tmp_path / cells[0].dir / "trace.jsonl", turns(), run_id="p")
    write_phone_trace(
        tmp_path / cells[1].dir / "trace.jsonl",
        turns(),
        greeting_ms=None,
        run_id="w",
        target_path_=None,
        protocol="websocket",
        fixed_ms=0,
    )
    Manifest(cells, {"repeats": 1}).write(tmp_path)
    view = build_sweep_view(tmp_path)
    d = view.to_dict()
    groups = {g["pipeline"]: g for g in d["groups"]}
    assert groups["twilio"]["path"] == "phone" and groups["ws"]["path"] == "websocket"
    assert groups["twilio"]["greeting_p50_ms"] == 730.0
    assert groups["ws"]["greeting_p50_ms"] is None
    pair = d["pairs"][0]
    assert {pair["a"]["path"], pair["b"]["path"]} == {"phone", "websocket"}
    for fmt in ("terminal", "markdown", "html", "json"):
        text = render_sweep(view, fmt, width=200)
        assert "phone" in text and "websocket" in text and "greeting" in text, fmt


def test_exports_carry_the_carrier_segments(trace: Path) -> None:
    from voiceaudit.exports.common import sessions_of
    from voiceaudit.trace_io import read_trace

    (sv,) = sessions_of(read_trace(trace))
    t0 = sv.turns[0]
    segs = {s.name: s.end_ns - s.start_ns for s in t0.segments}
    assert segs["carrier_buffer"] == QB0
    assert segs["fixed_delay"] == FIXED_MS * MS
    assert sum(s.end_ns - s.start_ns for s in t0.segments) == t0.voice_to_voice_ns


def test_gate_greeting_and_clear_latency(tmp_path: Path, trace: Path) -> None:
    from voiceaudit.gate.budget import parse_budget
    from voiceaudit.gate.evaluate import evaluate

    rep = build_report([trace])
    over = parse_budget(
        '[budget]\ngreeting_latency = { max = "700ms", min_turns = 1 }\n'
        'barge_in.clear_latency = { max = "600ms", min_turns = 1 }\n'
    )
    res = evaluate(over, rep)
    by = {c.metric: c for c in res.checks}
    assert by[GREETING_LATENCY].observed == 730.0 and not by[GREETING_LATENCY].passed
    assert by[CLEAR_LATENCY].observed == 650.0 and not by[CLEAR_LATENCY].passed
    under = parse_budget(
        '[budget]\ngreeting_latency = { max = "731ms", min_turns = 1 }\n'
        'barge_in.clear_latency = { max = "650ms", min_turns = 1 }\n'
    )
    assert evaluate(under, rep).passed
    # traces without a greeting fail the check as not in the traces
    plain = write_phone_trace(tmp_path / "none.jsonl", turns()[:1], greeting_ms=None)
    res = evaluate(under, build_report([plain]))
    by = {c.metric: c for c in res.checks}
    assert by[GREETING_LATENCY].problem == "not in the traces"
    assert "no greeting heard" in by[GREETING_LATENCY].detail


def test_plain_run_with_a_declared_path(tmp_path: Path) -> None:
    """A trace whose header names its path but has no phone, greeting or key-press event:
    the JSON labels its path, the text reports name it on the target line only."""
    from voiceaudit.analysis.synthetic import TurnSpec, schedule, turn_events

    w = TraceWriter(tmp_path / "t.jsonl", header("ws", "websocket", "realtime"))
    for spec, session, turn, t0 in schedule([TurnSpec()] * 3):
        for ev in turn_events(spec, session, turn, t0):
            w.write(ev)
    w.close("complete")
    rep = build_report([tmp_path / "t.jsonl"])
    d = json.loads(rep.to_json())
    assert [p["path"] for p in d["phone"]["paths"]] == ["websocket"]
    assert d["phone"]["includes"] is None and d["phone"]["greeting"]["sessions_waited"] == 0
    assert "late_clear_ms" in d["options"]["rules"]
    text = render(rep, Format.TERMINAL, width=120)
    assert "(websocket path)" in text
    assert "Phone and greeting" not in text


def test_malformed_phone_events_never_break_the_report(tmp_path: Path) -> None:
    """Carrier and greeting events with attributes of the wrong type, a ``queued_ns``
    column of the wrong length or with bad elements: read, never a traceback; the figures
    they would give are left out."""
    path = write_phone_trace(tmp_path / "ok.jsonl", turns())
    bad = tmp_path / "bad.jsonl"
    out = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d.get("type") == "event":
            a = d["attrs"]
            name = d["name"]
            if name == "reply.chunks" and d["turn"] == 0:
                a["queued_ns"] = a["queued_ns"][:-1]  # wrong length: no carrier figures
            elif name == "reply.chunks" and d["turn"] == 1:
                a["queued_ns"] = ["x", -5, None, *a["queued_ns"][3:]]
            elif name == "carrier.start":
                a["fixed_delay_ms"] = "forty"
            elif name == "carrier.mark_echo":
                a["mark_ns"] = "soon"
            elif name == "carrier.clear":
                a["dropped_ms"] = [1]
            elif name == "greeting.audible":
                a["latency_ns"] = "slow"
        out.append(json.dumps(d))
    bad.write_text("\n".join(out) + "\n")
    rep = build_report([bad])
    d = json.loads(rep.to_json())
    t0, t1 = d["turns"][0], d["turns"][1]
    assert t0["phone"]["carrier_buffer_ms"] is None
    assert "carrier_buffer" not in {s["segment"] for s in t0["ledger"]}
    assert t1["phone"]["fixed_delay_ms"] == 0.0
    assert "marks" not in t1["phone"]
    # the greeting's latency falls back to its time after greeting.wait
    assert d["phone"]["greeting"]["latency_ms"]["p50"] == 730.0
    for fmt in Format:
        render(rep, fmt)


def test_a_clear_between_two_words_still_cleared_the_reply() -> None:
    """The bot's clear came after the reply's last audible sample but while the carrier was
    still playing it (a quiet stretch between two words): the reply was cleared (no
    ``no_clear``); a clear after the reply had played out, with nothing left, was not."""
    from voiceaudit.analysis.findings import FindingRules, phone_findings
    from voiceaudit.analysis.phone import CarrierBargeIn, PhoneTurn, was_cleared

    def turn(b: CarrierBargeIn) -> PhoneTurn:
        return PhoneTurn("twilio", 0, 0, 0, (b,), (), 1, 0, 0)

    between = CarrierBargeIn(
        onset_ns=0,
        stop_ns=300 * MS,
        clear_ns=340 * MS,
        heard_after_ms=300.0,
        deaf_window_ns=2000 * MS,
        dropped_ms=1660.0,
        clear_cut=True,
    )
    after = replace(between, clear_ns=5000 * MS, dropped_ms=0.0, clear_cut=False)
    assert was_cleared(between) and not was_cleared(after)
    kinds = [f.kind for f in phone_findings(turn(between), FindingRules())]
    assert "no_clear" not in kinds
    late = [f for f in phone_findings(turn(after), FindingRules()) if f.kind == "no_clear"]
    assert len(late) == 1 and late[0].ns == 300 * MS
