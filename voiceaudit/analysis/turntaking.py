"""Turn-taking: barge-ins, cut-ins, sounds over the reply and truncation, per turn and
over the report.

A scenario run (``voiceaudit run --scenario FILE``) writes turn-taking events
(docs/trace-format.md, "Turn-taking events"): ``reply.stop`` (how long the reply was
still heard after the caller talked, or made a sound, over it), ``reply.cut_in`` (the
target took the turn while the caller was still speaking), ``reply.truncate`` (what the
client told a Realtime server it had played), ``input.overlap`` (the overlap as placed),
and ``turn.start`` attributes ``pauses`` and ``interrupts_turn``. :meth:`TurnTaking.from_obs`
reads them from one turn's observations (``None`` for a turn without any, which is every
turn of a plain run, so such reports do not change); :func:`summarize_turn_taking` makes
the report-level figures, and the gate's turn-taking metrics come from the same place.

The **split** of a barge-in's stop latency (onset of the caller's speech → last reply
sample heard) cuts it at two instants: the server's last reply send (when the protocol
says) and the arrival of the chunk holding the last audible sample. Each part is clipped
to the stop window, so the parts ``server`` + ``in_flight`` + ``client_buffer`` (or
``received`` + ``client_buffer`` without a server time) sum exactly to the stop latency,
like the ledger's segments sum to voice-to-voice: a reply that had fully arrived before
the caller spoke spent its whole stop latency in the client's buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceaudit.analysis.stats import FloatArray, Summary, as_sorted, percentile, summarize
from voiceaudit.analysis.turns import PROBE, TurnObs

#: The events :meth:`TurnTaking.from_obs` reads (``turn.start`` attributes aside).
STOP = "reply.stop"
CUT_IN = "reply.cut_in"
TRUNCATE = "reply.truncate"
OVERLAP = "input.overlap"
EVENTS: tuple[str, ...] = (STOP, CUT_IN, TRUNCATE, OVERLAP)

INTERRUPT = "interrupt"
SOUND = "sound"

#: Parts of a barge-in's split, in time order (``received`` stands for ``server`` +
#: ``in_flight`` when the protocol gives no server send time).
SPLIT_PARTS: tuple[str, ...] = ("server", "in_flight", "received", "client_buffer")
SPLIT_LABELS: dict[str, str] = {
    "server": "server stop",
    "in_flight": "in flight",
    "received": "until received",
    "client_buffer": "client buffer",
}

#: Tolerance of the report's summaries for ms figures (as the report's ABS_TOLERANCE_MS).
_ABS_TOLERANCE_MS = 5.0

#: The turn-taking latency metrics, by the names the gate and a comparison give them:
#: every barge-in's stop latency, and the voice-to-voice of every turn that talked over
#: a reply (the response to the interruption).
BARGE_IN_STOP = "barge_in.stop_latency"
RESPONSE_TO_INTERRUPTION = "response_to_interruption"
#: The turn-taking rates (the gate's and ``report A B``'s names): turns with planned pauses
#: that the target cut into, and sounds over the reply that stopped it.
CUT_IN_RATE = "cut_in.rate"
FALSE_INTERRUPTION_RATE = "false_interruption.rate"


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _num(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _bool(v: Any) -> bool | None:
    return v if type(v) is bool else None


def _str(v: Any) -> str | None:
    return v if type(v) is str else None


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _clip(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


@dataclass(frozen=True, slots=True)
class ReplyStop:
    """One ``reply.stop``: the reply overlapped by the caller's speech (``interrupt``,
    a barge-in) or by a short sound (``sound``), and how long it was still heard."""

    kind: str
    #: last audible reply sample heard - the overlap's onset (the stop latency)
    stop_ns: int
    onset_ns: int | None
    #: as recorded (None: the trace does not say)
    server_ns: int | None
    in_flight_ns: int | None
    received_ns: int | None
    client_buffer_ns: int | None
    heard_after_ms: float | None
    cut: bool | None
    stopped: bool | None
    #: sound only: the sound stopped the reply (None: the protocol did not say)
    false_interruption: bool | None = None
    #: from the matching ``input.overlap``
    clip: str | None = None
    after_reply_ms: float | None = None
    opens_turn: int | None = None

    @property
    def split(self) -> dict[str, int]:
        """The stop latency cut at the server's last send and the last chunk's arrival,
        each part clipped to the stop window: the values sum to ``stop_ns`` (see the
        module doc). Keys ``server``, ``in_flight``, ``client_buffer``, or ``received``
        and ``client_buffer`` without a server time; empty when the arrival is unknown."""
        stop = self.stop_ns
        received = self.received_ns
        if received is None:
            if self.client_buffer_ns is None:
                return {}
            received = stop - self.client_buffer_ns
        r = _clip(received, 0, max(0, stop))
        out: dict[str, int] = {}
        if self.server_ns is not None:
            s = _clip(self.server_ns, 0, r)
            out["server"] = s
            out["in_flight"] = r - s
        else:
            out["received"] = r
        out["client_buffer"] = stop - r
        return out

    def biggest_part(self) -> tuple[str, int] | None:
        """The part of the split that took longest (first in time order on a tie)."""
        parts = self.split
        if not parts:
            return None
        return max(parts.items(), key=lambda kv: kv[1])

    @classmethod
    def from_attrs(cls, a: dict[str, Any], overlap: dict[str, Any] | None) -> ReplyStop | None:
        kind, stop = _str(a.get("kind")), _int(a.get("stop_ns"))
        if kind is None or stop is None:
            return None
        ov = overlap or {}
        return cls(
            kind=kind,
            stop_ns=stop,
            onset_ns=_int(a.get("onset_ns")),
            server_ns=_int(a.get("server_ns")),
            in_flight_ns=_int(a.get("in_flight_ns")),
            received_ns=_int(a.get("received_ns")),
            client_buffer_ns=_int(a.get("client_buffer_ns")),
            heard_after_ms=_num(a.get("heard_after_ms")),
            cut=_bool(a.get("cut")),
            stopped=_bool(a.get("stopped")),
            false_interruption=_bool(a.get("false_interruption")),
            clip=_str(ov.get("clip")),
            after_reply_ms=_num(ov.get("after_reply_ms")),
            opens_turn=_int(ov.get("opens_turn")),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stop_ms": self.stop_ns / 1e6,
            "split_ms": {k: v / 1e6 for k, v in self.split.items()},
            "server_ms": _ms(self.server_ns),
            "in_flight_ms": _ms(self.in_flight_ns),
            "received_ms": _ms(self.received_ns),
            "client_buffer_ms": _ms(self.client_buffer_ns),
            "heard_after_ms": self.heard_after_ms,
            "cut": self.cut,
            "stopped": self.stopped,
        }
        if self.kind == SOUND:
            d["false_interruption"] = self.false_interruption
        if self.clip is not None:
            d["clip"] = self.clip
        if self.after_reply_ms is not None:
            d["after_reply_ms"] = self.after_reply_ms
        if self.kind == INTERRUPT and self.opens_turn is not None:
            d["opens_turn"] = self.opens_turn
        return d


@dataclass(frozen=True, slots=True)
class CutIn:
    """One ``reply.cut_in``: the target took the turn while the caller was still
    speaking (its reply was heard, or it ended the caller's turn, before the speech end)."""

    #: how early: speech end - the cut-in
    before_speech_end_ns: int
    pause_index: int | None
    pause_ms: float | None
    #: the cut-in - the start of the pause that triggered it
    after_pause_start_ns: int | None
    #: reply audio was heard before the speech end (None: a trace before that attribute)
    audible: bool | None
    #: the target's premature endpoint was seen
    endpointed: bool

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> CutIn | None:
        before = _int(a.get("before_speech_end_ns"))
        if before is None:
            return None
        audible = _bool(a.get("audible"))
        if audible is None and "audible" not in a:
            audible = True  # before the attribute, only heard replies were cut-ins
        return cls(
            before_speech_end_ns=before,
            pause_index=_int(a.get("pause_index")),
            pause_ms=_num(a.get("pause_ms")),
            after_pause_start_ns=_int(a.get("after_pause_start_ns")),
            audible=audible,
            endpointed=_int(a.get("endpoint_ns")) is not None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "before_speech_end_ms": self.before_speech_end_ns / 1e6,
            "pause_index": self.pause_index,
            "pause_ms": self.pause_ms,
            "after_pause_start_ms": _ms(self.after_pause_start_ns),
            "audible": self.audible,
            "endpointed": self.endpointed,
        }


@dataclass(frozen=True, slots=True)
class Truncate:
    """One ``reply.truncate``: what the client told the server it had played."""

    audio_end_ms: float
    heard_ms: float | None
    #: heard - told: audio the caller heard that the model's context says was never said
    unclaimed_ms: float | None
    item_id: str | None

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> Truncate | None:
        end = _num(a.get("audio_end_ms"))
        if end is None:
            return None
        heard = _num(a.get("heard_ms"))
        unclaimed = _num(a.get("unclaimed_ms"))
        if unclaimed is None and heard is not None:
            unclaimed = heard - end
        return cls(end, heard, unclaimed, _str(a.get("item_id")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "audio_end_ms": self.audio_end_ms,
            "heard_ms": self.heard_ms,
            "unclaimed_ms": self.unclaimed_ms,
        }


@dataclass(frozen=True, slots=True)
class TurnTaking:
    """The turn-taking observations of one turn."""

    #: this turn's speech barged in over that turn's reply (its reply is the response
    #: to the interruption)
    interrupts_turn: int | None
    #: lengths (ms) of the pauses inserted into this turn's speech, in order
    pauses_ms: tuple[float, ...]
    #: overlaps of this turn's reply (barge-ins and sounds), in time order
    stops: tuple[ReplyStop, ...]
    cut_ins: tuple[CutIn, ...]
    truncates: tuple[Truncate, ...]
    #: overlaps placed over this turn's reply (``input.overlap``), stopped or not
    overlaps: int = 0

    @property
    def barge_ins(self) -> tuple[ReplyStop, ...]:
        return tuple(s for s in self.stops if s.kind == INTERRUPT)

    @property
    def sounds(self) -> tuple[ReplyStop, ...]:
        return tuple(s for s in self.stops if s.kind == SOUND)

    @classmethod
    def from_obs(cls, obs: TurnObs) -> TurnTaking | None:
        """The turn's turn-taking, or None when it has none (a plain run's turns)."""
        marks = obs.marks
        start = obs.attrs("turn.start")
        interrupts = _int(start.get("interrupts_turn"))
        raw_pauses = start.get("pauses")
        has_events = any(n in marks for n in EVENTS)
        if not has_events and interrupts is None and not raw_pauses:
            return None
        rate = _int(start.get("rate"))
        pauses: list[float] = []
        if type(raw_pauses) is list and rate is not None and rate > 0:
            for p in raw_pauses:
                if type(p) is list and len(p) == 2 and type(p[1]) is int:
                    # as the probe rounds a cut-in's pause_ms
                    pauses.append(float(round(p[1] * 1000 / rate)))
        overlaps = [o for o in marks.get(OVERLAP, ()) if o[1] == PROBE]
        by_onset = {_int(o[2].get("onset_ns")): o[2] for o in overlaps}
        stops = []
        for _, src, a in sorted(marks.get(STOP, ()), key=lambda o: o[0]):
            if src != PROBE:
                continue
            s = ReplyStop.from_attrs(a, by_onset.get(_int(a.get("onset_ns"))))
            if s is not None:
                stops.append(s)
        stops.sort(key=lambda s: (s.onset_ns is None, s.onset_ns or 0))
        cut_ins = [
            c
            for _, src, a in sorted(marks.get(CUT_IN, ()), key=lambda o: o[0])
            if src == PROBE and (c := CutIn.from_attrs(a)) is not None
        ]
        truncates = [
            tr
            for _, src, a in sorted(marks.get(TRUNCATE, ()), key=lambda o: o[0])
            if src == PROBE and (tr := Truncate.from_attrs(a)) is not None
        ]
        if not (stops or cut_ins or truncates or overlaps or pauses) and interrupts is None:
            return None
        return cls(
            interrupts_turn=interrupts,
            pauses_ms=tuple(pauses),
            stops=tuple(stops),
            cut_ins=tuple(cut_ins),
            truncates=tuple(truncates),
            overlaps=len(overlaps),
        )

    def to_dict(self) -> dict[str, Any]:
        """``turns[].turn_taking`` (docs/report-format.md): only the keys it has."""
        d: dict[str, Any] = {}
        if self.interrupts_turn is not None:
            d["interrupts_turn"] = self.interrupts_turn
        if self.pauses_ms:
            d["pauses_ms"] = list(self.pauses_ms)
        if self.overlaps:
            d["overlaps"] = self.overlaps
        if self.barge_ins:
            d["barge_ins"] = [s.to_dict() for s in self.barge_ins]
        if self.sounds:
            d["sounds"] = [s.to_dict() for s in self.sounds]
        if self.cut_ins:
            d["cut_ins"] = [c.to_dict() for c in self.cut_ins]
        if self.truncates:
            d["truncates"] = [t.to_dict() for t in self.truncates]
        return d


# -- over the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class PauseBucket:
    """Pauses of one length and how many of them the target cut into."""

    pause_ms: float
    pauses: int
    cut_ins: int

    @property
    def rate(self) -> float:
        return self.cut_ins / self.pauses if self.pauses else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pause_ms": self.pause_ms,
            "pauses": self.pauses,
            "cut_ins": self.cut_ins,
            "rate": round(self.rate, 4),
        }


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def _median(values: Sequence[float]) -> float | None:
    return None if not values else percentile(as_sorted(values), 50)


def _summary_dict(s: Summary | None) -> dict[str, Any] | None:
    return None if s is None else s.to_dict()


@dataclass(frozen=True)
class TurnTakingSummary:
    """The report's ``turn_taking`` block: over the turns in the statistics."""

    #: turns in the statistics with any turn-taking observation
    turns: int
    barge_ins: tuple[ReplyStop, ...]
    sounds: tuple[ReplyStop, ...]
    #: turns with pauses (or a cut-in): the cut-in rate's denominator
    cut_in_turns: int
    #: of those, turns with at least one cut-in
    turns_cut_in: int
    cut_ins: tuple[CutIn, ...]
    by_pause: tuple[PauseBucket, ...]
    #: cut-ins before any pause (the target cut in without a scripted pause)
    before_any_pause: int
    #: voice-to-voice ms of the responses to an interruption, and of the other turns
    response_ms: FloatArray
    ordinary_ms: FloatArray
    truncates: tuple[Truncate, ...]

    @property
    def stop_ms(self) -> FloatArray:
        """Sorted stop latencies (ms) of the barge-ins: the gate's
        ``barge_in.stop_latency``."""
        return as_sorted([s.stop_ns / 1e6 for s in self.barge_ins])

    @property
    def not_stopped(self) -> int:
        return sum(1 for s in self.barge_ins if s.stopped is False)

    @property
    def cut_in_rate(self) -> float | None:
        return _rate(self.turns_cut_in, self.cut_in_turns)

    @property
    def sounds_known(self) -> int:
        """Sounds for which the trace says whether they stopped the reply."""
        return sum(1 for s in self.sounds if s.false_interruption is not None)

    @property
    def false_interruptions(self) -> int:
        return sum(1 for s in self.sounds if s.false_interruption is True)

    @property
    def false_interruption_rate(self) -> float | None:
        return _rate(self.false_interruptions, self.sounds_known)

    def split_p50_ms(self) -> dict[str, float | None]:
        """Median of each part of the barge-ins' splits, over those that have it;
        ``received`` is the part before the last chunk arrived (``server`` +
        ``in_flight`` where the server time is known)."""
        out: dict[str, float | None] = {}
        for part in SPLIT_PARTS:
            if part == "received":
                vals = [
                    (s.stop_ns - s.split["client_buffer"]) / 1e6 for s in self.barge_ins if s.split
                ]
            else:
                vals = [s.split[part] / 1e6 for s in self.barge_ins if part in s.split]
            out[part] = _median(vals)
        return out

    def split_n(self) -> dict[str, int]:
        n = {p: sum(1 for s in self.barge_ins if p in s.split) for p in SPLIT_PARTS}
        n["received"] = sum(1 for s in self.barge_ins if s.split)
        return n

    @property
    def stop_summary(self) -> Summary | None:
        return summarize(self.stop_ms, abs_tolerance=_ABS_TOLERANCE_MS)

    @property
    def response_summary(self) -> Summary | None:
        return summarize(self.response_ms, abs_tolerance=_ABS_TOLERANCE_MS)

    @property
    def ordinary_summary(self) -> Summary | None:
        return summarize(self.ordinary_ms, abs_tolerance=_ABS_TOLERANCE_MS)

    def latency_metrics(self) -> dict[str, FloatArray]:
        """The turn-taking latency metrics that have values: sorted ms per
        :data:`BARGE_IN_STOP` and :data:`RESPONSE_TO_INTERRUPTION`."""
        out = {BARGE_IN_STOP: self.stop_ms, RESPONSE_TO_INTERRUPTION: as_sorted(self.response_ms)}
        return {k: v for k, v in out.items() if len(v)}

    def rate_counts(self) -> dict[str, tuple[int, int]]:
        """(count, of) of the turn-taking rates that have a denominator:
        :data:`CUT_IN_RATE` (turns cut into, of the turns with planned pauses) and
        :data:`FALSE_INTERRUPTION_RATE` (sounds that stopped the reply, of the sounds the
        trace says stopped it or not)."""
        out = {
            CUT_IN_RATE: (self.turns_cut_in, self.cut_in_turns),
            FALSE_INTERRUPTION_RATE: (self.false_interruptions, self.sounds_known),
        }
        return {k: v for k, v in out.items() if v[1]}

    def unclaimed_ms(self) -> FloatArray:
        return as_sorted([t.unclaimed_ms for t in self.truncates if t.unclaimed_ms is not None])

    def to_dict(self) -> dict[str, Any]:
        """The report's ``turn_taking`` (docs/report-format.md)."""
        stop = self.stop_summary
        resp, ordinary = self.response_summary, self.ordinary_summary
        unclaimed = self.unclaimed_ms()
        d: dict[str, Any] = {
            "turns": self.turns,
            "barge_ins": {
                "n": len(self.barge_ins),
                "stopped": sum(1 for s in self.barge_ins if s.stopped is True),
                "not_stopped": self.not_stopped,
                "cut_reported": sum(1 for s in self.barge_ins if s.cut is not None),
                "stop_ms": _summary_dict(stop),
                "split_p50_ms": self.split_p50_ms(),
                "split_n": self.split_n(),
                "heard_after_p50_ms": _median(
                    [s.heard_after_ms for s in self.barge_ins if s.heard_after_ms is not None]
                ),
            },
            "cut_ins": {
                "turns": self.cut_in_turns,
                "turns_cut_in": self.turns_cut_in,
                "rate": None if self.cut_in_rate is None else round(self.cut_in_rate, 4),
                "cut_ins": len(self.cut_ins),
                "audible": sum(1 for c in self.cut_ins if c.audible),
                "by_pause": [b.to_dict() for b in self.by_pause],
                "before_any_pause": self.before_any_pause,
            },
            "sounds": {
                "n": len(self.sounds),
                "known": self.sounds_known,
                "false_interruptions": self.false_interruptions,
                "rate": None
                if self.false_interruption_rate is None
                else round(self.false_interruption_rate, 4),
            },
            "response_to_interruption": {
                "voice_to_voice_ms": _summary_dict(resp),
                "ordinary_voice_to_voice_ms": _summary_dict(ordinary),
                "p50_difference_ms": None
                if resp is None or ordinary is None
                else round(resp.p50 - ordinary.p50, 3),
            },
            "truncation": {
                "n": len(self.truncates),
                "unclaimed_p50_ms": None if not len(unclaimed) else percentile(unclaimed, 50),
                "unclaimed_min_ms": None if not len(unclaimed) else float(unclaimed[0]),
                "unclaimed_max_ms": None if not len(unclaimed) else float(unclaimed[-1]),
            },
        }
        return d


def summarize_turn_taking(
    turns: Iterable[tuple[TurnTaking | None, int | None]],
) -> TurnTakingSummary:
    """Summarise (turn-taking, voice-to-voice ns) of each turn in the statistics."""
    n = 0
    barge: list[ReplyStop] = []
    sounds: list[ReplyStop] = []
    cut_in_turns = turns_cut_in = before = 0
    cut_ins: list[CutIn] = []
    pauses: dict[float, list[int]] = {}
    response: list[float] = []
    ordinary: list[float] = []
    truncates: list[Truncate] = []
    for tt, v2v in turns:
        if tt is None:
            if v2v is not None:
                ordinary.append(v2v / 1e6)
            continue
        n += 1
        if v2v is not None:
            (response if tt.interrupts_turn is not None else ordinary).append(v2v / 1e6)
        barge.extend(tt.barge_ins)
        sounds.extend(tt.sounds)
        truncates.extend(tt.truncates)
        cut_ins.extend(tt.cut_ins)
        if tt.pauses_ms or tt.cut_ins:
            cut_in_turns += 1
            turns_cut_in += bool(tt.cut_ins)
        cut_at = {c.pause_index for c in tt.cut_ins}
        for i, length in enumerate(tt.pauses_ms):
            b = pauses.setdefault(length, [0, 0])
            b[0] += 1
            b[1] += i in cut_at
        for c in tt.cut_ins:
            if c.pause_index is None:
                before += 1
            elif not 0 <= c.pause_index < len(tt.pauses_ms) and c.pause_ms is not None:
                # a pause the turn.start does not list: file it by the cut-in's own length
                b = pauses.setdefault(c.pause_ms, [0, 0])
                b[0] += 1
                b[1] += 1
    return TurnTakingSummary(
        turns=n,
        barge_ins=tuple(barge),
        sounds=tuple(sounds),
        cut_in_turns=cut_in_turns,
        turns_cut_in=turns_cut_in,
        cut_ins=tuple(cut_ins),
        by_pause=tuple(PauseBucket(k, v[0], v[1]) for k, v in sorted(pauses.items())),
        before_any_pause=before,
        response_ms=np.asarray(sorted(response), dtype=np.float64),
        ordinary_ms=np.asarray(sorted(ordinary), dtype=np.float64),
        truncates=tuple(truncates),
    )
