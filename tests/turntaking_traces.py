"""Traces with turn-taking events of known values, written with the real TraceWriter.

Each turn is a synthetic turn (voiceaudit.analysis.synthetic: known ledger, known
voice-to-voice) plus the turn-taking events a scenario run writes (docs/trace-format.md,
"Turn-taking events"; the probe's writer is voiceaudit/probe/conversation.py) with values
chosen by the test: a barge-in's stop latency and its split, cut-ins with their pause, a
sound that stopped the reply, a truncate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from voiceaudit.analysis.synthetic import TurnSpec, lay_out, schedule, synthetic_header, turn_events
from voiceaudit.model import Event
from voiceaudit.trace_io import TraceWriter

MS = 1_000_000
RATE = 16000
CLEAN = TurnSpec()
#: voice-to-voice of CLEAN (12 + 300 + 80 + 5 + 150 + 20 + 60 + 1 + 0 + 10 ms)
CLEAN_V2V_MS = 638.0


@dataclass(frozen=True)
class TTurn:
    """One turn: its synthetic spec, extra ``turn.start`` attributes, and turn-taking
    events as (name, ms after the turn's speech end, attrs)."""

    spec: TurnSpec = CLEAN
    start: dict[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, float, dict[str, Any]], ...] = ()


def barge_in(
    onset_ms: float,
    stop_ms: float,
    server_ms: float | None,
    in_flight_ms: float | None,
    client_buffer_ms: float,
    *,
    stopped: bool = True,
    cut: bool | None = True,
    opens_turn: int | None = None,
    kind: str = "interrupt",
    false_interruption: bool | None = None,
    clip: str = "03_lights",
    heard_after_ms: float = 123.0,
) -> tuple[tuple[str, float, dict[str, Any]], ...]:
    """``input.overlap`` and ``reply.stop`` of one overlap, ``onset_ms`` after the speech
    end (the times are filled in by :func:`write_tt_trace`: ``onset_ns`` is relative)."""
    received_ms = stop_ms - client_buffer_ms
    ov = {
        "kind": kind,
        "clip": clip,
        "after_reply_ms": 700,
        "wanted_ns": ("rel", onset_ms - 5),
        "start_ns": ("rel", onset_ms - 200),
        "onset_ns": ("rel", onset_ms),
        "end_ns": ("rel", onset_ms + 900),
        "opens_turn": opens_turn,
    }
    stop: dict[str, Any] = {
        "kind": kind,
        "onset_ns": ("rel", onset_ms),
        "stop_ns": round(stop_ms * MS),
        "server_ns": None if server_ms is None else round(server_ms * MS),
        "in_flight_ns": None if in_flight_ms is None else round(in_flight_ms * MS),
        "received_ns": round(received_ms * MS),
        "client_buffer_ns": round(client_buffer_ms * MS),
        "heard_after_ms": heard_after_ms,
        "cut": cut,
        "stopped": stopped,
    }
    if kind == "sound":
        stop["false_interruption"] = false_interruption
    return (("input.overlap", onset_ms, ov), ("reply.stop", onset_ms + stop_ms, stop))


def cut_in(
    pause_index: int | None,
    pause_ms: float | None,
    before_speech_end_ms: float,
    after_pause_start_ms: float | None,
    *,
    audible: bool = True,
) -> tuple[str, float, dict[str, Any]]:
    at = -before_speech_end_ms
    return (
        "reply.cut_in",
        at,
        {
            "pause_index": pause_index,
            "pause_ms": pause_ms,
            "pause_start_ns": None
            if after_pause_start_ms is None
            else ("rel", at - after_pause_start_ms),
            "after_pause_start_ns": None
            if after_pause_start_ms is None
            else round(after_pause_start_ms * MS),
            "before_speech_end_ns": round(before_speech_end_ms * MS),
            "endpoint_ns": None if audible else ("rel", at),
            "audible": audible,
            "heard_ns": ("rel", at) if audible else None,
        },
    )


def truncate(audio_end_ms: float, heard_ms: float) -> tuple[str, float, dict[str, Any]]:
    return (
        "reply.truncate",
        1000.0,
        {
            "item_id": "item_1",
            "audio_end_ms": audio_end_ms,
            "heard_ms": heard_ms,
            "unclaimed_ms": round(heard_ms - audio_end_ms, 3),
            "signal_ns": ("rel", 990.0),
        },
    )


def pauses(*lengths_ms: float, at_ms: float = 1200.0) -> list[list[int]]:
    """``turn.start.pauses`` of pauses of these lengths (samples at RATE)."""
    out = []
    at = round(at_ms * RATE / 1000)
    for length in lengths_ms:
        n = round(length * RATE / 1000)
        out.append([at, n])
        at += n + RATE // 2
    return out


def _resolve(v: Any, speech_end: int) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "rel":
        return speech_end + round(v[1] * MS)
    return v


def write_tt_trace(
    path: Path,
    turns: Sequence[TTurn],
    *,
    scenario: bool = True,
    close: bool = True,
) -> Path:
    """Write the turns (one session, in order) with the real TraceWriter."""
    config: dict[str, Any] = {"frame_ms": 20, "warmup": 0}
    if scenario:
        config["scenario"] = {"path": "talk.toml", "sha256": "0" * 64, "sessions": ["s0"]}
    w = TraceWriter(path, synthetic_header("tt", config))
    w.event("s0", None, 10**12 - 10**9, "probe", "session", "session.connect_start")
    w.event("s0", None, 10**12 - 10**8, "probe", "session", "session.connected")
    specs = [t.spec for t in turns]
    for (spec, session, turn, t0), tt in zip(schedule(specs), turns, strict=True):
        evs = turn_events(spec, session, turn, t0)
        speech_end = lay_out(spec, t0).speech_end
        out: list[Event] = []
        for ev in evs:
            if ev.name == "turn.start" and (tt.start or scenario):
                attrs = dict(ev.attrs)
                if scenario:
                    attrs.update(
                        scenario_session="s0", scenario_turn=turn, pauses=[], interrupts_turn=None
                    )
                attrs.update(tt.start)
                ev = replace(ev, attrs=attrs)
            if ev.name == "turn.end":
                for name, at_ms, a in tt.events:
                    stage = "input" if name.startswith("input.") else "reply"
                    attrs = {k: _resolve(v, speech_end) for k, v in a.items()}
                    t = speech_end + round(at_ms * MS)
                    out.append(Event(session, turn, t, "probe", stage, name, attrs))
            out.append(ev)
        for ev in out:
            w.write(ev)
        w.count("turns_ok" if spec.ok else "turns_failed")
        w.commit()
    if close:
        w.close("complete")
    return path


def rate_turns(cut: int, paused: int, stopped: int, sounds: int) -> list[TTurn]:
    """``paused`` turns with a 400 ms pause, ``cut`` of them cut into; then ``sounds``
    turns with a sound over the reply, ``stopped`` of which stopped it (the turn-taking
    rates with known counts)."""
    out = [
        TTurn(
            start={"pauses": pauses(400.0)},
            events=(cut_in(0, 400.0, 600.0, 230.0),) if k < cut else (),
        )
        for k in range(paused)
    ]
    for k in range(sounds):
        fi = k < stopped
        stop_ms = 150.0 if fi else 1900.0
        ev = barge_in(800.0, stop_ms, None, None, 40.0, kind="sound", false_interruption=fi)
        out.append(TTurn(events=ev))
    return out


def fisher_by_hand(ca: int, na: int, cb: int, nb: int, *, b_greater: bool = False) -> float:
    """Fisher's exact test from the hypergeometric law, written out (not scipy's): with
    the margins fixed, the chance of a table no likelier than the one observed
    (two-sided), or of B holding ``cb`` or more of the ``ca + cb`` events (``b_greater``)."""
    from math import comb

    k, n = ca + cb, na + nb

    def prob(x: int) -> float:  # B holds x of the k events
        return comb(nb, x) * comb(na, k - x) / comb(n, k)

    lo, hi = max(0, k - na), min(k, nb)
    if b_greater:
        return min(1.0, sum(prob(x) for x in range(cb, hi + 1)))
    seen = prob(cb)
    return min(1.0, sum(prob(x) for x in range(lo, hi + 1) if prob(x) <= seen * (1 + 1e-7)))
