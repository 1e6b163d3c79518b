"""Telemetry importers: real Pipecat exports (with their real capture), hand-built
LiveKit / old-Pipecat / OpenAI fixtures, clock alignment with known offsets, errors."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import refuses_missing_and_directory
from pipecat_capture import captured_turns, realdata
from pipecat_capture import write_trace as write_capture_trace

from voiceaudit.clock import NS_PER_MS, NS_PER_S, Anchor
from voiceaudit.imports import (
    TelemetryError,
    format_table,
    framework_vs_heard,
    import_telemetry,
    measured_voice_to_voice,
    write_trace,
)
from voiceaudit.model import Header
from voiceaudit.trace_io import Trace, TraceWriter, read_trace

MS = NS_PER_MS


def tel(name: str) -> Path:
    return realdata() / "telemetry" / name


# -- real Pipecat 1.14 exports ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["pipecat-1.14.0_ws_spans.jsonl", "pipecat-1.14.0_webrtc_spans.jsonl"]
)
def test_real_pipecat_export_imports(name: str) -> None:
    r = import_telemetry(tel(name))
    assert r.framework == "pipecat"
    assert r.format == "otel-span-json"
    assert r.alignment is None  # no trace: the framework's own clock
    names = sorted({s.name for s in r.spans})
    assert names == ["pipecat.conversation", "pipecat.stt", "pipecat.tts", "pipecat.turn"]
    assert len(r.spans) == 8
    by_metric: dict[str, list[int]] = {}
    for m in r.measures:
        by_metric.setdefault(m.metric, []).append(m.value_ns)
    # three replies, each with Pipecat's TTS TTFB; one folded turn with one latency
    assert len(by_metric["tts_ttfb"]) == 3
    assert len(by_metric["user_bot_latency"]) == 1
    raw = [json.loads(line) for line in tel(name).read_text().splitlines()]
    turn = next(d for d in raw if d["name"] == "turn")
    assert by_metric["user_bot_latency"][0] == round(
        turn["attributes"]["turn.user_bot_latency_seconds"] * NS_PER_S
    )
    tts = [d for d in raw if d["name"] == "tts"]
    assert sorted(by_metric["tts_ttfb"]) == sorted(
        round(d["attributes"]["metrics.ttfb"] * NS_PER_S) for d in tts
    )
    # Pipecat folded three exchanges into one turn span: said, not hidden
    assert any("folded 3 replies" in w for w in r.warnings)
    # turns without a trace are the framework's replies, in order
    assert sorted({m.turn for m in r.measures if m.metric == "tts_ttfb"}) == [0, 1, 2]
    # marks derived from the spans, on the framework's wall clock
    ev = {e.name for e in r.events}
    assert {"speech_started", "transcript.final", "tts.request", "tts.first_byte", "tts.done"} <= ev
    first_tts = min(tts, key=lambda d: d["start_time"])
    req = min(e.t_ns for e in r.events if e.name == "tts.request")
    fb = min(e.t_ns for e in r.events if e.name == "tts.first_byte")
    assert fb - req == round(first_tts["attributes"]["metrics.ttfb"] * NS_PER_S)


def test_content_is_dropped_unless_kept() -> None:
    path = tel("pipecat-1.14.0_ws_spans.jsonl")
    dropped = import_telemetry(path)
    assert dropped.dropped_content == 6  # 3 transcripts + 3 reply texts
    for rec in (*dropped.spans, *dropped.events):
        assert "transcript" not in rec.attrs and "text" not in rec.attrs
    kept = import_telemetry(path, keep_content=True)
    assert kept.dropped_content == 0
    texts = [s.attrs["transcript"] for s in kept.spans if s.name == "pipecat.stt"]
    assert texts[0].startswith("let on what")


def test_real_export_against_its_real_capture() -> None:
    """The ws export and the loopback capture of the same session, read with tshark."""
    turns = captured_turns(realdata() / "pcap" / "pipecat-1.14.0_websocket_lo.pcapng")
    assert len(turns) == 3
    tr = _capture_trace(turns)
    r = import_telemetry(tel("pipecat-1.14.0_ws_spans.jsonl"), trace=tr)
    a = r.alignment
    assert a is not None
    # same host (loopback target): the anchors are trusted, not "corrected"
    assert a.status == "anchors" and a.residual_ns == 0
    assert a.lower_ns is not None and a.upper_ns is not None
    assert a.lower_ns <= 0 <= a.upper_ns
    # the capture's client spoke over the bot: later replies started after audio was
    # already arriving (the rest of an earlier reply); said, not papered over
    assert a.violations == ("s0/1", "s0/2")
    assert all(s.session == "s0" for s in r.spans)
    conv = [s for s in r.spans if s.name == "pipecat.conversation"]
    assert len(conv) == 1 and conv[0].turn is None  # session-wide
    # the one turn span that folded all three exchanges starts with the first
    assert [s.turn for s in r.spans if s.name == "pipecat.turn"] == [0]
    tts_turns = sorted(s.turn for s in r.spans if s.name == "pipecat.tts")
    assert tts_turns == [0, 1, 2]
    rows = framework_vs_heard(r, tr)
    heard = measured_voice_to_voice(tr)
    ubl = [x for x in rows if x.metric == "user_bot_latency"]
    assert len(ubl) == 1 and ubl[0].turn == 2
    assert ubl[0].measured_ns == heard[("s0", 2)]
    assert ubl[0].difference_ns == heard[("s0", 2)] - ubl[0].reported_ns
    assert ubl[0].reported_ns > 4 * NS_PER_S > 2 * heard[("s0", 2)]  # Pipecat says 4.4 s
    assert ubl[0].note is not None and "folded" in ubl[0].note
    first = next(x for x in rows if x.metric == "tts_ttfb" and x.turn == 0)
    # request -> first audible on loopback: TTFB plus a few ms of transport
    assert first.measured_ns is not None and first.aligned
    assert 0 <= first.measured_ns - first.reported_ns < 20 * MS
    assert "user_bot_latency" in format_table(rows)


def _capture_trace(turns: Any, target: str = "ws://127.0.0.1:8766/") -> Trace:
    import tempfile

    d = Path(tempfile.mkdtemp())
    p = write_capture_trace(d / "trace.jsonl", turns)
    if target != "ws://127.0.0.1:8766/":
        text = p.read_text().replace("ws://127.0.0.1/", target, 1)
        p = d / "trace2.jsonl"
        p.write_text(text)
    return read_trace(p)


# -- synthetic sessions with known truth -----------------------------------------------------


def iso(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // NS_PER_S, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % NS_PER_S) // 1000:06d}Z"


def span_json(
    name: str,
    trace_id: str,
    span_id: str,
    parent: str | None,
    start: int,
    end: int,
    attrs: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "context": {"trace_id": "0x" + trace_id, "span_id": "0x" + span_id, "trace_state": "[]"},
        "kind": "SpanKind.INTERNAL",
        "parent_id": None if parent is None else "0x" + parent,
        "start_time": iso(start),
        "end_time": iso(end),
        "status": {"status_code": "UNSET"},
        "attributes": attrs,
        "events": [],
        "links": [],
        "resource": {"attributes": {"service.name": "bot"}, "schema_url": ""},
    }


WALL0 = 1_795_000_000 * NS_PER_S  # a wall-clock time; the trace's monotonic clock is elsewhere
MONO0 = 5_000 * NS_PER_S


class Session:
    """A probe session with known timing and the server's own view of it.

    Per turn: speech ends at ``end``; the server hears it 2 ms later, its VAD stops after
    ``vad`` ms, transcript after ``stt`` ms, LLM first token after ``llm`` ms, TTS first
    byte after ``tts`` ms, audio reaches the probe 3 ms later with ``silence`` ms of
    leading silence before the first audible sample.
    """

    def __init__(self, n: int = 3, *, silence_ms: tuple[int, ...] = (0, 0, 0)) -> None:
        self.turns: list[dict[str, int]] = []
        t = MONO0 + NS_PER_S
        for i in range(n):
            start = t
            end = start + 2 * NS_PER_S
            srv_end = end + 2 * MS
            vad_stop = srv_end + 300 * MS
            transcript = vad_stop + 150 * MS
            llm_start = transcript + 5 * MS
            llm_first = llm_start + 120 * MS
            tts_start = llm_first + 4 * MS
            tts_first = tts_start + 90 * MS
            first_byte = tts_first + 3 * MS
            audible = first_byte + (silence_ms[i] if i < len(silence_ms) else 0) * MS
            self.turns.append(
                {
                    "start": start,
                    "end": end,
                    "end_sent": end + 1 * MS,
                    "vad_stop": vad_stop,
                    "transcript": transcript,
                    "llm_start": llm_start,
                    "llm_first": llm_first,
                    "tts_start": tts_start,
                    "tts_first": tts_first,
                    "first_byte": first_byte,
                    "audible": audible,
                    "reply_end": audible + 2 * NS_PER_S,
                    "stt_start": start + 200 * MS,
                }
            )
            t = audible + 4 * NS_PER_S

    def write_trace(self, path: Path, *, target: str = "ws://127.0.0.1:8765/") -> Trace:
        header = Header(
            run_id="synthetic",
            voiceaudit_version="test",
            target={"protocol": "pipecat-websocket", "url": target},
            host={},
            clock={"name": "monotonic", "resolution_ns": 1},
            anchors=(Anchor(wall_ns=WALL0, mono_ns=MONO0, uncertainty_ns=500),),
        )
        with TraceWriter(path, header) as w:
            w.event("s0", None, MONO0, "probe", "session", "session.connected")
            for i, t in enumerate(self.turns):
                w.event("s0", i, t["start"], "probe", "turn", "turn.start", {"warmup": i == 0})
                w.event("s0", i, t["end"], "probe", "input", "input.speech_end")
                w.event("s0", i, t["end_sent"], "probe", "input", "input.speech_end_sent")
                w.event("s0", i, t["first_byte"], "probe", "reply", "reply.first_byte")
                w.event("s0", i, t["audible"], "probe", "reply", "reply.audible")
                w.event(
                    "s0",
                    i,
                    t["reply_end"],
                    "probe",
                    "turn",
                    "turn.end",
                    {"ok": True, "warmup": i == 0, "voice_to_voice_ns": t["audible"] - t["end"]},
                )
            w.event(
                "s0", None, self.turns[-1]["reply_end"] + MS, "probe", "session", "session.closed"
            )
        return read_trace(path)

    def wall(self, mono: int, shift: int) -> int:
        return mono - MONO0 + WALL0 + shift

    def pipecat_spans(
        self, *, shift: int = 0, old_names: bool = False, fold: bool = False
    ) -> list[dict[str, Any]]:
        """Pipecat spans for this session; ``shift`` = how far the bot's clock is ahead."""
        w = lambda m: self.wall(m, shift)  # noqa: E731
        trace_id = "ab" * 16
        conv = "c0" * 8
        out = [
            span_json(
                "conversation",
                trace_id,
                conv,
                None,
                w(MONO0),
                w(self.turns[-1]["reply_end"]),
                {"conversation.id": "conv-1", "conversation.type": "voice"},
            )
        ]
        turns = [self.turns] if fold else [[t] for t in self.turns]
        for k, group in enumerate(turns):
            tid = f"{k + 1:016x}"
            last = group[-1]
            out.append(
                span_json(
                    "turn",
                    trace_id,
                    tid,
                    conv,
                    w(group[0]["stt_start"]),
                    w(last["reply_end"]),
                    {
                        "turn.number": k + 1,
                        "turn.user_bot_latency_seconds": (
                            last["first_byte"] - 3 * MS - (last["vad_stop"] - 300 * MS)
                        )
                        / NS_PER_S,
                        "turn.was_interrupted": False,
                    },
                )
            )
            for j, t in enumerate(group):
                sid = f"{k + 1:06x}{j:06x}"
                prov = "gen_ai.system" if old_names else "gen_ai.provider.name"
                stt, llm, tts = (
                    ("stt_pocketsphinxsttservice", "llm_ruleresponder", "tts_espeakttsservice")
                    if old_names
                    else ("stt", "llm", "tts")
                )
                out.append(
                    span_json(
                        stt,
                        trace_id,
                        sid + "0001",
                        tid,
                        w(t["stt_start"]),
                        w(t["transcript"]),
                        {
                            prov: "pocketsphinx",
                            "metrics.ttfb": (t["transcript"] - (t["vad_stop"] - 300 * MS))
                            / NS_PER_S,
                            "transcript": "secret words",
                            "is_final": True,
                        },
                    )
                )
                out.append(
                    span_json(
                        llm,
                        trace_id,
                        sid + "0002",
                        tid,
                        w(t["llm_start"]),
                        w(t["tts_start"] + 500 * MS),
                        {
                            prov: "rules",
                            "metrics.ttfb": (t["llm_first"] - t["llm_start"]) / NS_PER_S,
                            "output": "the answer",
                        },
                    )
                )
                out.append(
                    span_json(
                        tts,
                        trace_id,
                        sid + "0003",
                        tid,
                        w(t["tts_start"]),
                        w(t["reply_end"] - NS_PER_S),
                        {
                            prov: "espeak",
                            "metrics.ttfb": (t["tts_first"] - t["tts_start"]) / NS_PER_S,
                            "text": "the answer",
                        },
                    )
                )
        return out


def write_jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def test_known_hidden_delay_shows_as_the_difference(tmp_path: Path) -> None:
    """Leading silence Pipecat cannot see: 0 / 350 / 700 ms injected per turn."""
    s = Session(silence_ms=(0, 350, 700))
    tr = s.write_trace(tmp_path / "trace.jsonl")
    r = import_telemetry(write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans()), trace=tr)
    assert r.alignment is not None and r.alignment.status == "anchors"
    assert r.alignment.violations == ()
    rows = {(x.turn, x.metric): x for x in framework_vs_heard(r, tr)}
    base = rows[(0, "user_bot_latency")].difference_ns
    assert base is not None
    for turn, silence in ((1, 350), (2, 700)):
        d = rows[(turn, "user_bot_latency")].difference_ns
        assert d == base + silence * MS  # exact: both sides are durations
    # Pipecat's user_bot_latency starts at VAD stop - stop_secs = server hearing the end
    # (2 ms after the true end) and ends at its "bot started speaking" (3 ms before the
    # probe's first byte): 5 ms of difference when there is no silence.
    assert base == 5 * MS
    # stage sum = stt + llm + tts TTFBs; the caller waits for more than that
    ss = rows[(0, "stage_sum")]
    t = s.turns[0]
    assert ss.reported_ns == (t["transcript"] - t["vad_stop"] + 300 * MS) + 120 * MS + 90 * MS
    assert ss.measured_ns == t["audible"] - t["end"]
    # aligned rows: speech end -> final transcript, synthesis request -> audible
    assert rows[(0, "stt_ttfb")].measured_ns == t["transcript"] - t["end"]
    assert rows[(2, "tts_ttfb")].measured_ns == s.turns[2]["audible"] - s.turns[2]["tts_start"]
    assert rows[(0, "llm_ttfb")].measured_ns is None
    assert rows[(0, "user_bot_latency")].warmup and not rows[(1, "user_bot_latency")].warmup


@pytest.mark.parametrize("shift_ms", [3700, -2500, 250])
def test_remote_clock_offset_is_recovered(tmp_path: Path, shift_ms: int) -> None:
    """A bot on another host whose clock is off: the residual offset is estimated."""
    s = Session(n=4)
    tr = s.write_trace(tmp_path / "trace.jsonl", target="wss://bot.example.com/ws")
    shift = shift_ms * MS
    r = import_telemetry(
        write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans(shift=shift)), trace=tr
    )
    a = r.alignment
    assert a is not None and a.status == "corrected"
    assert a.lower_ns is not None and a.upper_ns is not None
    assert a.lower_ns <= -shift <= a.upper_ns
    # the estimate is the middle of what the turns allow
    assert abs(a.residual_ns + shift) <= (a.upper_ns - a.lower_ns) // 2 + 1
    assert sorted(x.turn for x in r.spans if x.name == "pipecat.tts") == [0, 1, 2, 3]
    assert "residual offset" in a.describe()
    # durations compared without alignment are unaffected by the clock
    rows = [x for x in framework_vs_heard(r, tr) if x.metric == "user_bot_latency"]
    assert [x.difference_ns for x in rows] == [5 * MS] * 4


def test_same_clock_on_remote_target_needs_no_correction(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl", target="wss://bot.example.com/ws")
    r = import_telemetry(write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans()), trace=tr)
    assert r.alignment is not None
    assert r.alignment.status == "anchors" and r.alignment.residual_ns == 0


def test_forced_offset(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl")
    path = write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans(shift=900 * MS))
    r = import_telemetry(path, trace=tr, clock=-900 * MS)
    assert r.alignment is not None and r.alignment.status == "forced"
    assert r.alignment.violations == ()
    req = sorted(e.t_ns for e in r.events if e.name == "tts.request")
    assert req == [t["tts_start"] for t in s.turns]


def test_old_pipecat_span_names_and_folded_turn(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl")
    spans = s.pipecat_spans(old_names=True, fold=True)
    r = import_telemetry(write_jsonl(tmp_path / "old.jsonl", spans), trace=tr)
    assert r.framework == "pipecat"
    assert {x.name for x in r.spans} >= {"pipecat.stt", "pipecat.llm", "pipecat.tts"}
    metrics = sorted((m.turn, m.metric) for m in r.measures)
    assert metrics.count((0, "llm_ttfb")) == 1 and (2, "tts_ttfb") in metrics
    # one turn span over three exchanges: its latency belongs to the last reply
    ubl = [m for m in r.measures if m.metric == "user_bot_latency"]
    assert len(ubl) == 1 and ubl[0].turn == 2 and ubl[0].note and "folded 3" in ubl[0].note
    assert any(m.label.endswith("stt_pocketsphinxsttservice (pocketsphinx)") for m in r.measures)


def _otlp(spans: list[dict[str, Any]], *, base64_ids: bool = False) -> dict[str, Any]:
    """The same spans as OTLP/JSON (hex ids per the OTLP spec, or protobuf's base64)."""
    from voiceaudit.exports.otlp import any_value  # OTLP's AnyValue, as the export writes it
    from voiceaudit.imports.base import parse_iso_ns

    def idv(h: str | None) -> str | None:
        if h is None:
            return None
        h = h.removeprefix("0x")
        return base64.b64encode(bytes.fromhex(h)).decode() if base64_ids else h

    out = []
    for s in spans:
        d = {
            "traceId": idv(s["context"]["trace_id"]),
            "spanId": idv(s["context"]["span_id"]),
            "name": s["name"],
            "kind": 1,
            "startTimeUnixNano": str(parse_iso_ns(s["start_time"])),
            "endTimeUnixNano": parse_iso_ns(s["end_time"]),
            "attributes": [{"key": k, "value": any_value(v)} for k, v in s["attributes"].items()],
        }
        if s["parent_id"]:
            d["parentSpanId"] = idv(s["parent_id"])
        out.append(d)
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "bot"}}]
                },
                "scopeSpans": [{"scope": {"name": "pipecat"}, "spans": out}],
            }
        ]
    }


@pytest.mark.parametrize("base64_ids", [False, True])
def test_otlp_json_matches_span_json(tmp_path: Path, base64_ids: bool) -> None:
    raw = [json.loads(x) for x in tel("pipecat-1.14.0_ws_spans.jsonl").read_text().splitlines()]
    p = tmp_path / "spans.otlp.json"
    p.write_text(json.dumps(_otlp(raw, base64_ids=base64_ids)))
    a = import_telemetry(p)
    b = import_telemetry(tel("pipecat-1.14.0_ws_spans.jsonl"))
    assert a.format == "otlp-json"
    assert [(m.metric, m.value_ns, m.turn) for m in a.measures] == [
        (m.metric, m.value_ns, m.turn) for m in b.measures
    ]
    assert [(s.name, s.start_ns, s.end_ns) for s in a.spans] == [
        (s.name, s.start_ns, s.end_ns) for s in b.spans
    ]


def test_console_exporter_pretty_json_and_gzip(tmp_path: Path) -> None:
    """ConsoleSpanExporter prints span.to_json() (indented) one after another."""
    raw = [json.loads(x) for x in tel("pipecat-1.14.0_ws_spans.jsonl").read_text().splitlines()]
    p = tmp_path / "console.txt"
    p.write_text("".join(json.dumps(o, indent=4) + "\n" for o in raw))
    g = tmp_path / "spans.json.gz"
    g.write_bytes(gzip.compress(json.dumps(raw).encode()))  # a JSON array, gzipped
    for path in (p, g):
        r = import_telemetry(path)
        assert len(r.spans) == 8 and len(r.measures) == 4


# -- LiveKit ------------------------------------------------------------------------------------


def livekit_spans(s: Session, shift: int = 0) -> dict[str, Any]:
    """Hand-built LiveKit Agents spans (names and attributes as LiveKit sets them)."""
    w = lambda m: s.wall(m, shift)  # noqa: E731
    tid = "cd" * 16
    spans: list[dict[str, Any]] = [
        span_json(
            "agent_session",
            tid,
            "5e55105e55105e55",
            None,
            w(MONO0),
            w(s.turns[-1]["reply_end"]),
            {"lk.agent_name": "a"},
        )
    ]
    for i, t in enumerate(s.turns):
        sid = f"SP_{i}"
        b = f"{i + 1:02x}"
        spans += [
            span_json(
                "user_speaking",
                tid,
                b + "00000000000001",
                "5e55105e55105e55",
                w(t["stt_start"]),
                w(t["vad_stop"] - 300 * MS),
                {},
            ),
            span_json(
                "user_turn",
                tid,
                b + "00000000000002",
                "5e55105e55105e55",
                w(t["stt_start"]),
                w(t["transcript"] + 10 * MS),
                {
                    "lk.user_transcript": "secret",
                    "lk.transcription_delay": (t["transcript"] - t["vad_stop"] + 300 * MS)
                    / NS_PER_S,
                    "lk.end_of_turn_delay": (t["transcript"] + 10 * MS - t["vad_stop"] + 300 * MS)
                    / NS_PER_S,
                },
            ),
            span_json(
                "eou_detection",
                tid,
                b + "00000000000003",
                b + "00000000000002",
                w(t["transcript"]),
                w(t["transcript"] + 10 * MS),
                {"lk.eou.probability": 0.9, "lk.eou.endpointing_delay": 0.5},
            ),
            span_json(
                "agent_turn",
                tid,
                b + "00000000000004",
                "5e55105e55105e55",
                w(t["llm_start"]),
                w(t["reply_end"]),
                {
                    "lk.speech_id": sid,
                    "lk.e2e_latency": (t["first_byte"] - 3 * MS - (t["vad_stop"] - 300 * MS))
                    / NS_PER_S,
                },
            ),
            span_json(
                "llm_node",
                tid,
                b + "00000000000005",
                b + "00000000000004",
                w(t["llm_start"]),
                w(t["tts_start"] + 400 * MS),
                {
                    "lk.response.ttft": (t["llm_first"] - t["llm_start"]) / NS_PER_S,
                    "lk.response.text": "answer",
                },
            ),
            span_json(
                "llm_request",
                tid,
                b + "00000000000006",
                b + "00000000000005",
                w(t["llm_start"] + 1 * MS),
                w(t["tts_start"] + 400 * MS),
                {
                    "lk.llm_metrics": json.dumps(
                        {"ttft": 0.119, "duration": 0.5, "type": "llm_metrics"}
                    )
                },
            ),
            span_json(
                "tts_node",
                tid,
                b + "00000000000007",
                b + "00000000000004",
                w(t["tts_start"]),
                w(t["reply_end"] - NS_PER_S),
                {"lk.response.ttfb": (t["tts_first"] - t["tts_start"]) / NS_PER_S},
            ),
            span_json(
                "agent_speaking",
                tid,
                b + "00000000000008",
                b + "00000000000004",
                w(t["first_byte"] - 3 * MS),
                w(t["reply_end"]),
                {},
            ),
        ]
    return _otlp(spans)


def test_livekit_spans(tmp_path: Path) -> None:
    s = Session(silence_ms=(0, 0, 400))
    tr = s.write_trace(tmp_path / "trace.jsonl")
    p = tmp_path / "lk.json"
    p.write_text(json.dumps(livekit_spans(s)))
    r = import_telemetry(p, trace=tr)
    assert r.framework == "livekit"
    assert r.alignment is not None and r.alignment.status == "anchors"
    by = {(m.turn, m.metric): m for m in r.measures}
    t = s.turns[1]
    assert by[(1, "llm_ttft")].value_ns == t["llm_first"] - t["llm_start"]
    assert by[(1, "tts_ttfb")].value_ns == t["tts_first"] - t["tts_start"]
    assert (1, "e2e_latency") in by and (1, "end_of_turn_delay") in by
    # llm_request metrics are not counted twice when llm_node reported ttft
    assert sum(1 for m in r.measures if m.metric == "llm_ttft") == 3
    assert all(x.turn is not None for x in r.spans if x.name != "livekit.agent_session")
    rows = {(x.turn, x.metric): x for x in framework_vs_heard(r, tr)}
    assert (
        rows[(2, "e2e_latency")].difference_ns == rows[(0, "e2e_latency")].difference_ns + 400 * MS
    )
    ss = rows[(0, "stage_sum")]
    assert "end_of_turn_delay + llm_ttft + tts_ttfb" in ss.label
    eot = rows[(0, "end_of_turn_delay")]
    assert eot.aligned and eot.measured_ns == s.turns[0]["transcript"] + 10 * MS - s.turns[0]["end"]
    for rec in (*r.spans, *r.events):
        assert "lk.user_transcript" not in rec.attrs and "lk.response.text" not in rec.attrs


def test_livekit_metrics_records(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl")
    lines = []
    for i, t in enumerate(s.turns):
        sid = f"SP_{i}"
        llm_end = t["tts_start"] + 400 * MS
        tts_end = t["reply_end"] - NS_PER_S
        lines += [
            {
                "type": "eou_metrics",
                "timestamp": s.wall(t["transcript"] + 10 * MS, 0) / NS_PER_S,
                "end_of_utterance_delay": 0.46,
                "transcription_delay": 0.45,
                "speech_id": sid,
            },
            {
                "metrics": {
                    "type": "llm_metrics",
                    "timestamp": s.wall(llm_end, 0) / NS_PER_S,
                    "duration": (llm_end - t["llm_start"]) / NS_PER_S,
                    "ttft": 0.12,
                    "label": "openai",
                    "cancelled": False,
                    "speech_id": sid,
                }
            },
            {
                "type": "tts_metrics",
                "timestamp": s.wall(tts_end, 0) / NS_PER_S,
                "label": "x",
                "duration": (tts_end - t["tts_start"]) / NS_PER_S,
                "ttfb": 0.09,
                "speech_id": sid,
            },
        ]
    r = import_telemetry(write_jsonl(tmp_path / "metrics.jsonl", lines), trace=tr)
    assert r.framework == "livekit" and r.format == "livekit-metrics"
    assert r.alignment is not None and r.alignment.status == "anchors"
    got = sorted((m.turn, m.metric, m.value_ns) for m in r.measures)
    assert (0, "llm_ttft", 120 * MS) in got and (2, "tts_ttfb", 90 * MS) in got
    assert (1, "end_of_utterance_delay", 460 * MS) in got
    # request start is timestamp - duration: within float rounding of the truth
    req = sorted(e.t_ns for e in r.events if e.name == "llm.request")
    assert all(abs(a - t["llm_start"]) < 2_000 for a, t in zip(req, s.turns, strict=True))


# -- OpenAI Realtime event logs ----------------------------------------------------------------


def test_openai_realtime_event_log(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl")
    lines: list[dict[str, Any]] = [
        {
            "received_at": s.wall(MONO0, 0) / NS_PER_S,
            "event": {"type": "session.created", "session": {"id": "sess_1"}},
        },
        {
            "direction": "client",
            "t": s.wall(MONO0, 0) / NS_PER_S,
            "event": {"type": "session.update"},
        },
    ]
    for i, t in enumerate(s.turns):
        w = lambda m: round(s.wall(m, 0) / 1000)  # noqa: E731  (µs since the epoch)
        lines += [
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": 100,
                "received_at": w(t["stt_start"]),
            },
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": 2000,
                "received_at": w(t["vad_stop"]),
            },
            {"type": "input_audio_buffer.committed", "received_at": w(t["vad_stop"] + MS)},
            {
                "type": "response.created",
                "response": {"id": f"r{i}"},
                "received_at": w(t["llm_start"]),
            },
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "transcript": "hi",
                "received_at": w(t["transcript"] + 200 * MS),
            },
            {
                "type": "response.output_audio.delta",
                "delta": "AAAA",
                "received_at": w(t["first_byte"]),
            },
            {
                "type": "response.output_audio.delta",
                "delta": "AAAA",
                "received_at": w(t["first_byte"] + 50 * MS),
            },
            {
                "type": "response.done",
                "response": {"status": "completed"},
                "received_at": w(t["reply_end"] - NS_PER_S),
            },
        ]
    r = import_telemetry(write_jsonl(tmp_path / "events.jsonl", lines), trace=tr)
    assert r.framework == "openai-realtime"
    assert r.alignment is not None and r.alignment.status == "anchors"
    lat = sorted((m.turn, m.value_ns) for m in r.measures if m.metric == "response_latency")
    assert lat == [(i, t["first_byte"] - t["vad_stop"]) for i, t in enumerate(s.turns)]
    assert {e.turn for e in r.events if e.name == "transcript.final"} == {0, 1, 2}
    assert all("transcript" not in e.attrs and "delta" not in e.attrs for e in r.events)
    rows = [x for x in framework_vs_heard(r, tr) if x.metric == "response_latency"]
    assert [x.difference_ns for x in rows] == [
        t["audible"] - t["end"] - (t["first_byte"] - t["vad_stop"]) for t in s.turns
    ]


# -- output trace ---------------------------------------------------------------------------------


def test_write_standalone_and_merged_traces(tmp_path: Path) -> None:
    s = Session()
    tr = s.write_trace(tmp_path / "trace.jsonl")
    spans = write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans())
    alone = read_trace(write_trace(import_telemetry(spans), tmp_path / "alone.jsonl"))
    assert alone.complete and len(alone.spans) == 1 + 3 + 9
    assert alone.header.clock["name"] == "wall (imported)"
    assert alone.header.config["imports"][0]["framework"] == "pipecat"
    r = import_telemetry(spans, trace=tr)
    merged = read_trace(write_trace(r, tmp_path / "merged.jsonl", trace=tr))
    assert merged.header.run_id == tr.header.run_id
    assert len(merged.events) == len(tr.events) + len(r.events)
    assert merged.finished_turns() == tr.finished_turns()
    assert all(x.source == "import" for x in merged.spans)
    with pytest.raises(Exception, match="already exists"):
        write_trace(r, tmp_path / "merged.jsonl", trace=tr)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wireshark_sharkd_expected_sip-rtp.json", "not framework telemetry"),
        ("timetraveler_latency.ndjson", "not framework telemetry: JSON objects with keys"),
        ("timetraveler_latency-ui.json", "not framework telemetry"),
        ("livekit_lkframework_03_audio_leak.trace.jsonl", "no clock to align"),
        ("livekit_lkframework_03_audio_leak.scenario.jsonnet", "not valid JSON"),
        ("timetraveler_metrics_README.md", "not valid JSON"),
    ],
)
def test_unrelated_real_files_give_a_clear_error(name: str, message: str) -> None:
    with pytest.raises(TelemetryError, match=message) as exc:
        import_telemetry(tel(name))
    assert name in exc.value.message
    assert "\n" not in exc.value.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"[]", "empty JSON array"),
        (b"\x00\x01\xff\xfe binary", "not a text file"),
        (b'{"name": "stt", "context": {"span_id": "0x1"', "not valid JSON"),
        (b'{"type":"header","schema":"voiceaudit.trace/1"}\n', "a voiceaudit trace"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "GET /", '
            b'"traceId": "00112233445566778899aabbccddeeff", "spanId": "0011223344556677", '
            b'"startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}',
            "neither Pipecat's nor LiveKit's",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": '
            b'[{"name": "tts", "startTimeUnixNano": "x"}]}]}]}',
            "malformed OpenTelemetry JSON",
        ),
        (b'{"type": "response.created"}\n', "no receive time"),
        (b'{"type": "llm_metrics", "timestamp": "soon"}\n', "not a time"),
        (
            b'{"type": "response.created", "t": 1}\n{"hello": 1}\n',
            "record 2 is not like the others",
        ),
        (b"\x1f\x8b\x08\x00broken", "broken gzip"),
    ],
)
def test_malformed_input_gives_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(TelemetryError, match=message):
        import_telemetry(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    refuses_missing_and_directory(import_telemetry, TelemetryError, missing, "is a directory")
    with pytest.raises(TelemetryError, match="unknown telemetry format"):
        import_telemetry(tel("pipecat-1.14.0_ws_spans.jsonl"), fmt="zoom")


# -- CLI ------------------------------------------------------------------------------------------


def test_import_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voiceaudit.cli import run as cli

    s = Session(silence_ms=(0, 300, 0))
    s.write_trace(tmp_path / "trace.jsonl", target="wss://bot.example.com/")
    spans = write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans(shift=-1500 * MS))
    assert cli(["import", str(spans), "--trace", str(tmp_path / "trace.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "framework clock is off: residual offset +" in out  # the bot's clock is 1.5 s behind
    assert "framework vs heard" in out and "pipecat user_bot_latency" in out
    # a forced offset, given as a negative number of ms
    assert (
        cli(
            ["import", str(spans), "-t", str(tmp_path / "trace.jsonl"), "--clock", "1500", "--json"]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["imports"][0]["alignment"]["status"] == "forced"
    assert doc["imports"][0]["alignment"]["residual_ns"] == 1500 * MS
    diffs = [
        r["difference_ns"] for r in doc["framework_vs_heard"] if r["metric"] == "user_bot_latency"
    ]
    assert diffs == [5 * MS, 305 * MS, 5 * MS]
    assert cli(["import", str(spans), "--clock=-20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["framework_vs_heard"] == []
    assert cli(["import", str(spans), "-o", str(tmp_path / "alone.jsonl")]) == 0
    assert read_trace(tmp_path / "alone.jsonl").header.clock["name"] == "wall (imported)"
    assert cli(["import", str(spans), "--clock", "soon"]) == 2
    assert "--clock" in capsys.readouterr().err
    assert cli(["import", str(tel("timetraveler_latency.ndjson"))]) == 3
    err = capsys.readouterr().err
    assert "not framework telemetry" in err and "Traceback" not in err


def test_the_overlapping_trace_is_picked(tmp_path: Path) -> None:
    s = Session()
    right = s.write_trace(tmp_path / "right.jsonl")
    other = read_trace(tmp_path / "right.jsonl")
    # the same trace an hour later on the wall clock: a different run
    text = (
        (tmp_path / "right.jsonl")
        .read_text()
        .replace(f'"wall_ns":{WALL0}', f'"wall_ns":{WALL0 + 3600 * NS_PER_S}', 1)
    )
    (tmp_path / "later.jsonl").write_text(text)
    later = read_trace(tmp_path / "later.jsonl")
    assert later.anchors[0].wall_ns != other.anchors[0].wall_ns
    spans = write_jsonl(tmp_path / "spans.jsonl", s.pipecat_spans())
    r = import_telemetry(spans, trace=[later, right])
    assert r.trace_path == right.path
    assert r.alignment is not None and r.alignment.status == "anchors"
    assert framework_vs_heard(r, later) == []  # placed on the other trace: not its rows
