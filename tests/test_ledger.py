"""The latency ledger: known delays recovered exactly, invariants for any set of marks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import with_attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceaudit.analysis import ALL_SEGMENTS, SEGMENTS, UNEXPLAINED, build_ledger, build_report
from voiceaudit.analysis.synthetic import TurnSpec, lay_out, turn_events, write_trace
from voiceaudit.model import Event
from voiceaudit.trace_io import read_trace

MS = 1_000_000
T0 = 10**12


def ledger_of(spec: TurnSpec, **kw: object):  # type: ignore[no-untyped-def]
    return build_ledger(turn_events(spec, "s0", 0, T0), **kw)  # type: ignore[arg-type]


def by_name(ledger) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s.name: s.ns / MS for s in ledger.segments}


# -- known delays come back exactly ------------------------------------------------------


def test_every_stage_recovered_exactly_with_server_times() -> None:
    spec = TurnSpec(
        framing_ms=13.5,
        endpointing_ms=412.0,
        transcription_ms=97.25,
        handoff_ms=3.0,
        first_token_ms=233.0,
        aggregation_ms=183.0,
        synthesis_ms=71.0,
        transport_ms=2.5,
        send_wait_ms=0.75,
        playout_ms=40.0,
        onset_ms=300.0,
        notify_ms=7.0,
    )
    led = ledger_of(spec)
    assert led.clock == "server"
    assert by_name(led) == {
        "input_framing": 13.5,
        "endpointing": 412.0,
        "transcription": 97.25,
        "handoff": 3.0,
        "model_first_token": 233.0,
        "aggregation": 183.0,
        "synthesis_first_byte": 71.0,
        "first_audio": 0.75,
        "transport": 1.75,
        "playout_wait": 40.0,
        "leading_silence": 300.0,
    }
    assert [s.name for s in led.segments] == list(SEGMENTS)
    assert sum(s.ns for s in led.segments) == led.voice_to_voice_ns
    lay = lay_out(spec, T0)
    assert led.voice_to_voice_ns == lay.times["reply.audible"] - lay.speech_end


def test_arrival_times_shift_each_notice_delay_into_the_stage_before() -> None:
    # Without server times every pipeline mark is late by its notification delay (7 ms):
    # endpointing gains it, transport loses it, the stages in between are unchanged.
    spec = TurnSpec(notify_ms=7.0, server_times=False, transport_ms=10.0)
    led = ledger_of(spec)
    assert led.clock == "arrival"
    got = by_name(led)
    assert got["endpointing"] == pytest.approx(300.0 + 7.0)
    assert got["transcription"] == pytest.approx(80.0)
    assert got["transport"] == pytest.approx(10.0 - 7.0)
    assert sum(s.ns for s in led.segments) == led.voice_to_voice_ns


def test_arrival_times_can_be_forced() -> None:
    spec = TurnSpec(notify_ms=7.0, transport_ms=10.0)
    assert by_name(ledger_of(spec))["transport"] == pytest.approx(10.0)
    forced = ledger_of(spec, mark_time="arrival")
    assert forced.clock == "arrival"
    assert by_name(forced)["transport"] == pytest.approx(3.0)


def test_server_time_after_its_arrival_means_another_clock() -> None:
    evs = turn_events(TurnSpec(notify_ms=5.0), "s0", 0, T0)
    # One mark claims a server time 1 s after it arrived: not this host's clock.
    bad = with_attrs(evs, "llm.request", {"server_t_ns": lambda e: e.t_ns + 1000 * MS})
    led = build_ledger(bad)
    assert led.clock == "arrival"
    assert any("not this host's monotonic clock" in n for n in led.notes)
    assert by_name(led)["endpointing"] == pytest.approx(305.0)


# -- missing marks: unexplained, never spread ---------------------------------------------


def test_missing_mark_gives_unexplained_covering_the_stages_between() -> None:
    spec = TurnSpec(transcription_ms=90.0, handoff_ms=15.0, drop=frozenset({"transcript.final"}))
    led = ledger_of(spec)
    unexplained = [s for s in led.segments if s.name == UNEXPLAINED]
    assert len(unexplained) == 1
    u = unexplained[0]
    assert u.ns == 105 * MS  # exactly transcription + handoff, not split between them
    assert u.covers == ("transcription", "handoff")
    assert (u.start, u.end) == ("endpoint", "llm.request")
    names = [s.name for s in led.segments]
    assert "transcription" not in names and "handoff" not in names
    assert by_name(led)["model_first_token"] == pytest.approx(150.0)
    assert sum(s.ns for s in led.segments) == led.voice_to_voice_ns


def test_black_box_speech_to_speech_turn() -> None:
    # Realtime-style: endpoint, response.created, reply marks; no first-token mark, and
    # the input transcript arrives after the reply started.
    spec = TurnSpec(
        speech_to_speech=True,
        endpointing_ms=520.0,
        handoff_ms=30.0,
        first_token_ms=None,
        transport_ms=410.0,
        s2s_transcript_after_ms=-200.0,
        server_times=False,
        notify_ms=0.0,
    )
    led = ledger_of(spec)
    assert led.speech_to_speech
    segs = [(s.name, s.ns / MS, s.covers) for s in led.segments]
    assert segs == [
        ("input_framing", 12.0, ()),
        ("endpointing", 520.0, ()),
        ("response_start", 30.0, ()),
        # no first text or token: response start to the first audio byte at the probe
        ("first_audio", 410.0, ()),
        ("playout_wait", 0.0, ()),
        ("leading_silence", 10.0, ()),
    ]
    late = [o for o in led.off_path if o.name == "transcript.final"]
    assert [o.why for o in late] == [
        "out of order: 210.0 ms after response.created"
        " (a speech-to-speech model's input transcript is a side channel)"
    ]


def test_speech_to_speech_transcript_before_the_response_is_on_the_path() -> None:
    # A realtime server that transcribes before it responds (the reference pipeline does)
    spec = TurnSpec(
        speech_to_speech=True,
        handoff_ms=200.0,
        s2s_transcript_after_ms=None,
        extra_marks=(("transcript.final", 12.0 + 300.0 + 150.0, {"text": "hi"}),),
        server_times=False,
        notify_ms=0.0,
    )
    got = by_name(ledger_of(spec))
    assert got["transcription"] == pytest.approx(150.0)
    assert got["response_start"] == pytest.approx(50.0)


def test_speech_to_speech_with_first_audio_token_mark() -> None:
    spec = TurnSpec(speech_to_speech=True, first_token_ms=350.0, transport_ms=4.0)
    got = by_name(ledger_of(spec))
    assert got["model_first_token"] == pytest.approx(350.0)
    assert got["transport"] == pytest.approx(4.0)
    assert "synthesis_first_byte" not in got and "aggregation" not in got


def _realtime_turn(marks: dict[str, float], *, wire_ms: float | None = None) -> list[Event]:
    """A turn of probe marks plus pipeline marks at ``marks`` (ms after speech end, arrival
    times), and the first reply audio on the wire ``wire_ms`` after speech end."""
    t0 = T0
    evs = [
        Event("s", 0, t0, "probe", "input", "input.speech_end"),
        Event("s", 0, t0 + 10 * MS, "probe", "input", "input.speech_end_sent"),
        Event("s", 0, t0 + 900 * MS, "probe", "reply", "reply.first_byte"),
        Event("s", 0, t0 + 900 * MS, "probe", "reply", "reply.playout_start"),
        Event("s", 0, t0 + 905 * MS, "probe", "reply", "reply.audible"),
    ]
    for name, ms in marks.items():
        evs.append(Event("s", 0, t0 + round(ms * MS), "pipeline", "x", name))
    if wire_ms is not None:
        evs.append(Event("s", 0, t0 + round(wire_ms * MS), "network", "transport", "reply.on_wire"))
    return evs


STANDARD = {"endpoint": 500.0, "transcript.final": 600.0, "response.created": 600.5}
#: a cascade's marks up to its synthesis request (ms after speech end)
CASCADE = {
    "endpoint": 500.0,
    "transcript.final": 600.0,
    "llm.request": 601.0,
    "llm.first_token": 800.0,
    "tts.request": 840.0,
}


def test_realtime_standard_events_split_the_reply() -> None:
    # response.created, the first transcript delta, the first audio delta: each a cut.
    led = build_ledger(_realtime_turn({**STANDARD, "reply_text.first": 850.0}))
    assert led.speech_to_speech
    assert [(s.name, s.ns / MS) for s in led.segments] == [
        ("input_framing", 10.0),
        ("endpointing", 490.0),
        ("transcription", 100.0),
        ("response_start", 0.5),
        ("model_first_text", 249.5),
        ("first_audio", 50.0),
        ("playout_wait", 0.0),
        ("leading_silence", 5.0),
    ]


def test_first_reply_audio_on_the_wire_is_the_transport_cut() -> None:
    led = build_ledger(_realtime_turn({**STANDARD, "reply_text.first": 850.0}, wire_ms=898.5))
    got = by_name(led)
    assert got["first_audio"] == pytest.approx(48.5)
    assert got["transport"] == pytest.approx(1.5)
    assert led.segments[-3].start == "reply.on_wire"
    # A cascade's server-side handoff to its socket is the same cut when there is no capture
    cascade = {**CASCADE, "tts.first_byte": 842.0, "audio.first_sent": 843.0}
    got = by_name(build_ledger(_realtime_turn(cascade)))
    assert (got["synthesis_first_byte"], got["first_audio"], got["transport"]) == (
        pytest.approx(2.0),
        pytest.approx(1.0),
        pytest.approx(57.0),
    )
    # and the capture's time wins over the server's word when both are there
    got = by_name(build_ledger(_realtime_turn(cascade, wire_ms=844.0)))
    assert (got["first_audio"], got["transport"]) == (pytest.approx(2.0), pytest.approx(56.0))


def test_a_wire_mark_out_of_order_gives_way_to_the_stage_marks() -> None:
    # A cascade reads its own tts.first_byte after the bytes crossed the wire: the
    # capture's time must not displace the stage mark (nor turn it into unexplained).
    cascade = {**CASCADE, "tts.first_byte": 899.0}
    led = build_ledger(_realtime_turn(cascade, wire_ms=898.0))
    got = by_name(led)
    assert UNEXPLAINED not in got
    assert got["synthesis_first_byte"] == pytest.approx(59.0)
    assert got["transport"] == pytest.approx(1.0)
    assert [(o.name, o.why.split(":")[0]) for o in led.off_path] == [
        ("reply.on_wire", "out of order")
    ]


def test_without_a_departure_mark_first_audio_and_transport_are_one_segment() -> None:
    # after a first audio byte the rest is transport; after the first text it is the model's
    cascade = CASCADE
    got = by_name(build_ledger(_realtime_turn({**cascade, "tts.first_byte": 842.0})))
    assert got["transport"] == pytest.approx(58.0) and "first_audio" not in got
    token = build_ledger(_realtime_turn({**STANDARD, "llm.first_token": 850.0}))
    assert by_name(token)["transport"] == pytest.approx(50.0)
    # a cascade without its synthesis marks still has unexplained time, never a name
    led = build_ledger(_realtime_turn(cascade))
    u = [s for s in led.segments if s.name == UNEXPLAINED]
    assert [x.covers for x in u] == [("synthesis_first_byte", "first_audio", "transport")]


# -- out of order, repeated, early and late marks -----------------------------------------


def test_transcript_after_model_request_is_off_path() -> None:
    # The model was asked on a partial transcript: the final one came 40 ms later.
    spec = TurnSpec(drop=frozenset({"transcript.final"}))
    evs = turn_events(spec, "s0", 0, T0)
    req = next(e for e in evs if e.name == "llm.request")
    st_req = req.attrs["server_t_ns"]
    evs.append(
        Event(
            "s0",
            0,
            st_req + 41 * MS,
            "pipeline",
            "transcription",
            "transcript.final",
            {"server_t_ns": st_req + 40 * MS, "text": "hi"},
        )
    )
    led = build_ledger(evs)
    off = {o.name: o.why for o in led.off_path}
    assert off == {"transcript.final": "out of order: 40.0 ms after llm.request"}
    u = next(s for s in led.segments if s.name == UNEXPLAINED)
    assert u.covers == ("transcription", "handoff") and u.ns == (80 + 5) * MS
    assert "llm.request" in [m.name for m in led.marks]
    assert sum(s.ns for s in led.segments) == led.voice_to_voice_ns
    assert all(s.ns >= 0 for s in led.segments)


def test_premature_endpoint_then_real_one() -> None:
    spec = TurnSpec(endpointing_ms=300.0)
    evs = turn_events(spec, "s0", 0, T0)
    ep = next(e for e in evs if e.name == "endpoint")
    early = ep.attrs["server_t_ns"] - 1500 * MS  # mid-utterance pause
    evs.insert(
        0, Event("s0", 0, early + MS, "pipeline", "endpointing", "endpoint", {"server_t_ns": early})
    )
    led = build_ledger(evs)
    assert by_name(led)["endpointing"] == pytest.approx(300.0)
    assert any("before speech end" in n for n in led.notes)


def test_only_a_premature_endpoint() -> None:
    spec = TurnSpec(drop=frozenset({"endpoint", "committed"}))
    evs = turn_events(spec, "s0", 0, T0)
    speech_end = next(e.t_ns for e in evs if e.name == "input.speech_end")
    evs.append(Event("s0", 0, speech_end - 200 * MS, "pipeline", "endpointing", "endpoint"))
    led = build_ledger(evs)
    assert [o.why for o in led.off_path if o.name == "endpoint"] == ["200.0 ms before speech end"]
    u = next(s for s in led.segments if s.name == UNEXPLAINED)
    assert u.covers == ("endpointing", "transcription")
    assert u.ns == (300 + 80) * MS


def test_committed_stands_in_for_a_missing_endpoint() -> None:
    spec = TurnSpec(drop=frozenset({"endpoint"}))
    led = ledger_of(spec)
    assert "committed" in [m.name for m in led.marks]
    assert by_name(led)["endpointing"] == pytest.approx(300.2)


def test_ledger_does_not_depend_on_event_order() -> None:
    evs = turn_events(TurnSpec(partials=5), "s0", 0, T0)
    ref = build_ledger(evs)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(evs)
        assert build_ledger(evs) == ref


# -- turns that have no ledger ------------------------------------------------------------


def test_failed_turn_is_listed_with_its_reason(tmp_path: Path) -> None:
    p = write_trace(
        tmp_path / "t.jsonl",
        [TurnSpec(), TurnSpec(ok=False, reason="target closed the connection"), TurnSpec()],
    )
    rep = build_report([p])
    assert rep.counts["failed"] == 1 and rep.counts["in_statistics"] == 2
    (failed,) = rep.failed_turns
    assert (failed.turn, failed.reason) == (1, "target closed the connection")
    assert failed.voice_to_voice_ns is None
    assert failed.ledger.problem is not None
    doc = rep.to_dict()
    assert doc["failed_turns"] == [
        {
            "session": "s0",
            "turn": 1,
            "warmup": False,
            "reason": "target closed the connection",
            "failure": "reply_cut",  # an old trace's reason, classified (voiceaudit.failures)
        }
    ]
    t1 = doc["turns"][1]
    assert t1["ok"] is False and t1["voice_to_voice_ms"] is None and t1["ledger"] == []
    assert t1["marks"]["endpoint"] == pytest.approx(12.0 + 300.0)


def test_reply_before_speech_end_fails_the_turn() -> None:
    evs = turn_events(TurnSpec(), "s0", 0, T0)
    speech_end = next(e.t_ns for e in evs if e.name == "input.speech_end")
    evs = [
        Event(e.session, e.turn, speech_end - 80 * MS, e.source, e.stage, e.name, e.attrs)
        if e.name == "reply.audible"
        else e
        for e in evs
    ]
    led = build_ledger(evs)
    assert led.voice_to_voice_ns is None and led.segments == ()
    assert led.problem is not None and "80.0 ms before speech end" in led.problem


def test_ok_turn_without_audible_reply_is_failed(tmp_path: Path) -> None:
    p = write_trace(tmp_path / "t.jsonl", [TurnSpec(drop=frozenset({"reply.audible"}))])
    rep = build_report([p])
    (t,) = rep.turns
    assert not t.ok and t.reason is not None and "reply.audible" in t.reason


# -- invariants for any set of marks ------------------------------------------------------

MARK_NAMES = [
    ("input.speech_end_sent", "probe"),
    ("endpoint", "pipeline"),
    ("committed", "pipeline"),
    ("transcript.final", "pipeline"),
    ("llm.request", "pipeline"),
    ("response.created", "pipeline"),
    ("llm.first_token", "pipeline"),
    ("tts.request", "pipeline"),
    ("tts.first_byte", "pipeline"),
    ("reply_text.first", "pipeline"),
    ("audio.first_sent", "pipeline"),
    ("reply.on_wire", "network"),
    ("reply.first_byte", "probe"),
    ("reply.playout_start", "probe"),
]

mark_sets = st.lists(
    st.tuples(
        st.sampled_from(MARK_NAMES),
        st.integers(-500 * MS, 3000 * MS),
        st.one_of(st.none(), st.integers(-600 * MS, 3000 * MS)),
    ),
    max_size=14,
)


@settings(max_examples=400, deadline=None)
@given(mark_sets, st.integers(0, 2500 * MS))
def test_segments_are_consecutive_non_negative_and_sum_to_voice_to_voice(
    marks: list[tuple[tuple[str, str], int, int | None]], v2v: int
) -> None:
    t0 = T0
    evs = [
        Event("s", 0, t0, "probe", "input", "input.speech_end"),
        Event("s", 0, t0 + v2v, "probe", "reply", "reply.audible"),
    ]
    for (name, source), dt, server_dt in marks:
        attrs = {} if server_dt is None else {"server_t_ns": t0 + server_dt}
        evs.append(Event("s", 0, t0 + dt, source, "x", name, attrs))
    led = build_ledger(evs)
    assert led.voice_to_voice_ns == v2v
    assert sum(s.ns for s in led.segments) == v2v
    assert all(s.ns >= 0 for s in led.segments)
    assert all(s.name in ALL_SEGMENTS for s in led.segments)
    # consecutive: each segment starts at the mark the previous one ended at
    chain = [m.name for m in led.marks]
    assert chain[0] == "input.speech_end" and chain[-1] == "reply.audible"
    times = [m.t_ns for m in led.marks]
    assert times == sorted(times)
    named = [s for s in led.segments if s.name != UNEXPLAINED]
    assert len({s.name for s in named}) == len(named)  # a named stage at most once
    for s in led.segments:
        if s.name == UNEXPLAINED:
            assert len(s.covers) >= 2 and s.ns > 0


def test_fast_reader_and_public_reader_give_the_same_report(tmp_path: Path) -> None:
    rng = random.Random(5)
    specs = [
        TurnSpec(
            endpointing_ms=rng.uniform(200, 900),
            first_token_ms=rng.uniform(50, 900),
            onset_ms=rng.choice([5.0, 250.0]),
            frames=True,
            speech_to_speech=rng.random() < 0.2,
            server_times=rng.random() < 0.7,
        )
        for _ in range(20)
    ] + [TurnSpec(ok=False, reason="boom", warmup=True)]
    p = write_trace(tmp_path / "t.jsonl", specs, sessions=3)
    fast = build_report([p])
    slow = build_report([read_trace(p)])
    a, b = fast.to_dict(), slow.to_dict()
    a["sources"][0].pop("path"), b["sources"][0].pop("path")
    assert a == b
    assert fast.sources[0].skipped == {"input.frames": 20}
