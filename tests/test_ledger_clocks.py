"""Marks from different clocks: arrival-stamped, server-stamped and wire-stamped marks.

A Realtime server that sends only the standard events, behind a 60 ms downlink: each event
arrives 60 ms after it left. The capture's ``reply.on_wire`` is when the first reply audio
left the server. Placed at their arrival, the server's marks come after it (and push it off
the path); placed at their frames' departure (``wire_t_ns``, from a joined capture), the
downlink is all in ``transport``, exactly.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from voiceaudit.analysis.ledger import TurnWire, _in_order, ledger_from_obs, place_on_wire
from voiceaudit.analysis.turns import TurnObs
from voiceaudit.model import Event

MS = 1_000_000
T0 = 10**12
DOWN = 60.0
#: when each standard event left the server (ms after speech end)
SENT = {
    "endpoint": 500.0,
    "transcript.final": 550.0,
    "response.created": 560.0,
    "reply_text.first": 565.0,
}
ON_WIRE = 580.0  # the first reply audio left the server
FIRST_BYTE = ON_WIRE + DOWN


def _obs(wire: TurnWire | int | None = None, *, sent: dict[str, float] = SENT) -> TurnObs:
    """The turn as the probe recorded it: pipeline marks at their arrival."""
    obs = TurnObs("s", 0)
    evs = [
        Event("s", 0, T0, "probe", "input", "input.speech_end"),
        Event("s", 0, T0 + 10 * MS, "probe", "input", "input.speech_end_sent"),
        Event("s", 0, T0 + round(FIRST_BYTE * MS), "probe", "reply", "reply.first_byte"),
        Event("s", 0, T0 + round(FIRST_BYTE * MS), "probe", "reply", "reply.playout_start"),
        Event("s", 0, T0 + round((FIRST_BYTE + 2) * MS), "probe", "reply", "reply.audible"),
    ]
    for name, ms in sent.items():
        evs.append(Event("s", 0, T0 + round((ms + DOWN) * MS), "pipeline", "x", name))
    for e in evs:
        obs.add_event(e)
    if wire is not None:
        place_on_wire(obs, wire)
    return obs


def _departures(names: tuple[str, ...] = tuple(SENT)) -> dict[tuple[str, int], int]:
    """(name, arrival) -> departure of the marks ``names``."""
    return {(n, T0 + round((SENT[n] + DOWN) * MS)): T0 + round(SENT[n] * MS) for n in names}


def _segments(led) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s.name: s.ns / MS for s in led.segments}


def test_arrival_stamped_marks_push_the_wire_mark_off_the_path() -> None:
    # What the issue saw: no transport, the downlink inside the stages before it.
    led = ledger_from_obs(_obs(T0 + round(ON_WIRE * MS)))
    seg = _segments(led)
    assert "transport" not in seg
    assert seg["first_audio"] == pytest.approx(FIRST_BYTE - (SENT["reply_text.first"] + DOWN))
    # its reason names the mark it conflicts with and by how much
    assert [(o.name, o.why) for o in led.off_path] == [
        ("reply.on_wire", "out of order: 45.0 ms before reply_text.first")
    ]


def test_marks_at_their_departure_put_the_downlink_in_transport() -> None:
    led = ledger_from_obs(_obs(TurnWire(T0 + round(ON_WIRE * MS), _departures())))
    assert led.clock == "wire" and not led.off_path and not led.notes
    assert _segments(led) == {
        "input_framing": 10.0,
        "endpointing": 490.0,
        "transcription": 50.0,
        "response_start": 10.0,
        "model_first_text": 5.0,
        "first_audio": 15.0,
        "transport": DOWN,
        "playout_wait": 0.0,
        "leading_silence": 2.0,
    }
    assert sum(s.ns for s in led.segments) == led.voice_to_voice_ns
    # the arrival is kept in the trace's own attributes; --arrival-times still uses it
    forced = ledger_from_obs(
        _obs(TurnWire(T0 + round(ON_WIRE * MS), _departures())), mark_time="arrival"
    )
    assert forced.clock == "mixed" and "transport" not in _segments(forced)


def test_a_mark_whose_frame_was_not_found_stays_at_arrival_with_a_note() -> None:
    deps = _departures(("endpoint", "transcript.final", "response.created"))
    led = ledger_from_obs(_obs(TurnWire(T0 + round(ON_WIRE * MS), deps)))
    assert led.clock == "mixed"
    # reply_text.first arrived after the audio left: it is the one that gives way
    assert [o.name for o in led.off_path] == ["reply.on_wire"]
    assert led.notes == (
        "reply_text.first at arrival (no server time, no frame found in the capture), "
        "beside marks placed where the server sent them: the downlink delay is in the "
        "stages they end",
    )
    # without the late one, the wire mark is on the path and the note names nobody
    obs = _obs(TurnWire(T0 + round(ON_WIRE * MS), deps), sent={**SENT})
    del obs.marks["reply_text.first"]
    led = ledger_from_obs(obs)
    assert _segments(led)["transport"] == DOWN and not led.notes


def test_server_time_wins_over_the_wire_time() -> None:
    obs = _obs()
    t, src, a = obs.marks["endpoint"][0]
    obs.marks["endpoint"][0] = (t, src, {**a, "server_t_ns": T0 + 480 * MS})
    place_on_wire(obs, TurnWire(T0 + round(ON_WIRE * MS), _departures()))
    led = ledger_from_obs(obs)
    assert _segments(led)["endpointing"] == pytest.approx(470.0)
    assert led.clock == "mixed"  # server and wire times: both the server's end
    assert not led.notes


def test_a_wire_time_is_never_after_the_arrival() -> None:
    # A capture time mapped a little after the probe's arrival (the clock mapping's error)
    # counts as the arrival.
    arrival = T0 + round((SENT["endpoint"] + DOWN) * MS)
    obs = _obs(TurnWire(None, {("endpoint", arrival): arrival + MS // 2}))
    assert obs.marks["endpoint"][0][2]["wire_t_ns"] == arrival


def test_a_bare_wire_time_is_the_wire_mark_alone() -> None:
    obs = _obs(T0 + round(ON_WIRE * MS))
    assert [o[0] for o in obs.marks["reply.on_wire"]] == [T0 + round(ON_WIRE * MS)]
    assert all("wire_t_ns" not in o[2] for o in obs.marks["endpoint"])


# -- the out-of-order rule ----------------------------------------------------------------


def _cands(times: list[int]) -> list[tuple[int, str, int, str]]:
    return [(i + 2, f"m{i + 2}", t, "arrival") for i, t in enumerate(times)]


def test_of_two_equally_long_orders_the_later_stage_is_kept() -> None:
    # endpoint 200, transcript 100, request 400, first token 300: four orders of two marks
    # each; the one kept holds the latest stage (the first token), then the latest that
    # fits before it (the transcript).
    kept = _in_order(_cands([200, 100, 400, 300]))
    assert [c[0] for c in kept] == [3, 5]


def test_the_kept_order_is_the_largest_and_prefers_later_stages_everywhere() -> None:
    # Against every order of up to six marks on four distinct times: the kept set is in
    # order, no larger one is, and of the equally large ones none holds a later stage
    # where they first differ counting back from the reply.
    for n in range(1, 7):
        for times in itertools.product(range(4), repeat=n):
            cands = _cands(list(times))
            kept = [c[0] for c in _in_order(cands)]
            ok = [
                s
                for r in range(n + 1)
                for s in itertools.combinations([c[0] for c in cands], r)
                if all(times[a - 2] <= times[b - 2] for a, b in itertools.pairwise(s))
            ]
            best = max(len(s) for s in ok)
            assert len(kept) == best, (times, kept)
            assert max(sorted(s, reverse=True) for s in ok if len(s) == best) == sorted(
                kept, reverse=True
            ), (times, kept)


# -- the capture join: which frame carried each mark, and where it left the server --------


def _ws(client: str, server: str, frames: list[tuple[int, str | None, int]]) -> Any:
    """A WebSocket session whose server sent ``frames`` ((ms, event, length) each)."""
    from voiceaudit.capture.model import WebSocketFrame, WebSocketSession

    fr = tuple(
        WebSocketFrame(t * MS, t * MS, False, 1, True, False, False, n, ev) for t, ev, n in frames
    )
    return WebSocketSession(
        client, server, "/v1/realtime", 0, None, None, None, False, len(fr), fr, False,
        {}, {1: len(fr)}, 0, 0, None, None,
    )  # fmt: skip


def _net(*sessions: Any) -> Any:
    from voiceaudit.capture.model import NetReport

    return NetReport(
        "c.pcapng", "pcapng", 0, None, None, (1,), False, (), False, (), None,
        websocket_sessions=tuple(sessions), clock="monotonic",
    )  # fmt: skip


#: (ms on the server's leg, event, length) of each frame of one reply
REPLY = [
    (40, "input_audio_buffer.speech_stopped", 64),
    (100, "response.created", 53),
    (101, "response.output_audio_transcript.delta", 66),
    (102, "response.output_audio_transcript.delta", 66),
    (120, "response.output_audio.delta", 1000),
    (121, "response.output_audio.delta", 1000),
    (140, "response.done", 80),
]
#: what the probe read (ms) and the mark it made: 60 ms + 0.2 ms after the server sent it
READ = [
    (100.2, "endpoint", "input_audio_buffer.speech_stopped"),
    (160.2, "response.created", "response.created"),
    (161.2, "reply_text.first", "response.output_audio_transcript.delta"),
    (180.2, "reply.first_byte", None),
    (200.2, "response.done", "response.done"),
]


def _trace(sessions: dict[str, tuple[str, float]]) -> Any:
    """A trace's events: per session (its probe end, its offset in ms), one turn."""
    from types import SimpleNamespace

    evs = []
    for s, (local, off) in sessions.items():
        evs.append(Event(s, None, 0, "probe", "session", "session.connected", {"local": local}))
        evs.append(Event(s, 0, round(off * MS), "probe", "turn", "turn.start"))
        for ms, name, raw in READ:
            t = round((ms + off) * MS)
            if raw is None:
                evs.append(Event(s, 0, t, "probe", "reply", name))
            else:
                evs.append(Event(s, 0, t, "pipeline", "x", name, {"raw": raw}))
    return SimpleNamespace(events=evs)


def _shifted(
    frames: list[tuple[int, str | None, int]], ms: int
) -> list[tuple[int, str | None, int]]:
    return [(t + ms, ev, n) for t, ev, n in frames]


def test_each_mark_is_placed_at_its_frame_on_the_servers_leg() -> None:
    from voiceaudit.analysis.network import frame_departures

    # Two sessions in lockstep through the proxy (5 ms apart): the same frames on all
    # four legs, so only the proxy's record says which upstream leg is whose.
    trace = _trace({"s0": ("127.0.0.1:1000", 0.0), "s1": ("127.0.0.1:2000", 5.0)})
    net = _net(
        _ws("127.0.0.1:1000", "127.0.0.1:9000", _shifted(REPLY, 60)),
        _ws("127.0.0.1:2000", "127.0.0.1:9000", _shifted(REPLY, 65)),
        _ws("127.0.0.1:3000", "127.0.0.1:8000", REPLY),
        _ws("127.0.0.1:4000", "127.0.0.1:8000", _shifted(REPLY, 5)),
    )
    legs = {"127.0.0.1:1000": "127.0.0.1:3000", "127.0.0.1:2000": "127.0.0.1:4000"}
    departed, first_audio = frame_departures(trace, net, legs)
    for s, off in (("s0", 0), ("s1", 5)):
        got = {name: (arrival / MS, dep / MS) for name, arrival, dep in departed[(s, 0)]}
        assert got == {
            "endpoint": (100.2 + off, 40 + off),
            "response.created": (160.2 + off, 100 + off),
            # the first of the two deltas: the one read first
            "reply_text.first": (161.2 + off, 101 + off),
            "response.done": (200.2 + off, 140 + off),
        }
        assert first_audio[(s, 0)] == (120 + off) * MS


def test_without_the_record_legs_pair_by_their_frames_and_once() -> None:
    from voiceaudit.analysis.network import frame_departures

    trace = _trace({"s0": ("127.0.0.1:1000", 0.0)})
    other = [(t, ev, n + 1) for t, ev, n in REPLY]  # another session's frames: not these
    net = _net(
        _ws("127.0.0.1:1000", "127.0.0.1:9000", _shifted(REPLY, 60)),
        _ws("127.0.0.1:5000", "127.0.0.1:8000", other),
        _ws("127.0.0.1:3000", "127.0.0.1:8000", REPLY),
    )
    departed, first_audio = frame_departures(trace, net)
    assert [d / MS for _, _, d in departed[("s0", 0)]] == [40, 100, 101, 140]
    assert first_audio[("s0", 0)] == 120 * MS
    # without a server's leg in the capture: where the capture saw the frames
    departed, first_audio = frame_departures(trace, _net(net.websocket_sessions[0]))
    assert [d / MS for _, _, d in departed[("s0", 0)]] == [100, 160, 161, 200]
    # a trace that does not name the probe's end of its connection gets nothing
    trace.events = [e for e in trace.events if e.name != "session.connected"]
    assert frame_departures(trace, net) == ({}, {})


def test_a_mark_read_before_any_frame_of_its_type_crossed_the_wire_is_not_placed() -> None:
    from voiceaudit.analysis.network import frame_departures

    trace = _trace({"s0": ("127.0.0.1:1000", 0.0)})
    # the capture's clock 2 ms late against the probe's (beyond the 1 ms slack): the
    # response.created frame was "seen" after the probe read it; the rest go on
    late = [(t + (2 if ev == "response.created" else 0), ev, n) for t, ev, n in REPLY]
    departed, _ = frame_departures(
        trace, _net(_ws("127.0.0.1:1000", "127.0.0.1:9000", _shifted(late, 60)))
    )
    assert [name for name, _, _ in departed[("s0", 0)]] == [
        "endpoint",
        "reply_text.first",
        "response.done",
    ]
