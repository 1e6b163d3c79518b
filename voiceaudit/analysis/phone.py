"""Phone paths and agents that speak first: the carrier's buffer, send-ahead, barge-in
through ``clear``, mark honesty, key presses, the greeting, and the path a result is on.

A carrier target (docs/phone.md) plays the bot's audio at real time from its own buffer
and reports each piece of reply audio once it has played: a ``reply.chunks`` element's
time is when the carrier put it on the line (plus the carrier's ``fixed_delay_ms``), and
its ``queued_ns`` how long it waited in the carrier's buffer after it arrived, so its
arrival at the carrier is ``t - fixed delay - queued_ns``. The carrier's marks
(``carrier.start``, ``carrier.clear``, ``carrier.mark``, ``carrier.mark_echo``,
``carrier.dtmf``, ``carrier.wrong_stream``) say what the bot asked of it. From these,
per turn (:class:`PhoneTurn`):

send-ahead
    how far the bot's audio ran ahead of the carrier's playout: the largest
    ``queued_ns`` over the reply, and the first chunk's (the reply's wait behind audio
    queued before it: the ledger's ``carrier_buffer``).
barge-in through the carrier (:class:`CarrierBargeIn`)
    for each ``reply.stop`` of kind ``interrupt``: the caller's onset, the bot's first
    ``carrier.clear`` at or after it (``clear_ns``, from the onset), the last sample
    heard (``reply.stop``'s ``stop_ns``), and the *deaf window*: the audio already queued
    at the onset, from the chunks that had arrived by then (how long the caller would
    hear the bot's queued audio whatever the bot did next, unless it clears).
mark honesty (:class:`MarkCheck`)
    for each echoed mark (not echoed by a clear): the reply audio the bot sent after the
    mark that was heard after the echo. An honest mark follows the audio it marks; a
    mark sent before it is echoed while that audio is still to be heard.

Session level (:class:`Greeting`): ``greeting.wait``/``greeting.audible``/
``greeting.end``/``greeting.none`` give each session's greeting latency (the bot's first
audible greeting sample after the call's media began), or that no greeting came.

Path (:func:`target_path`): every result is labelled by the path it was measured on,
``phone``, ``webrtc``, ``websocket``, ``http`` or ``in-process``: the trace header's
``target.path``, or for an older trace inferred from its protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voiceaudit.analysis.stats import FloatArray, Summary, as_sorted, summarize
from voiceaudit.analysis.turns import PROBE, SessionObs, TurnObs
from voiceaudit.analysis.turntaking import INTERRUPT, STOP

PATHS: tuple[str, ...] = ("phone", "webrtc", "websocket", "http", "in-process", "recording")
#: Protocols of traces written before the header said its path: where they were measured.
_PROTOCOL_PATHS: dict[str, str] = {
    "webrtc": "webrtc",
    "cascade": "http",
    "python": "in-process",
    "twilio": "phone",
    "telnyx": "phone",
    "plivo": "phone",
    "exotel": "phone",
    "vonage": "phone",
    "recording": "recording",
}

CARRIER_START = "carrier.start"
CLEAR = "carrier.clear"
MARK = "carrier.mark"
MARK_ECHO = "carrier.mark_echo"
DTMF = "carrier.dtmf"
WRONG_STREAM = "carrier.wrong_stream"
CARRIER_EVENTS: tuple[str, ...] = (CARRIER_START, CLEAR, MARK, MARK_ECHO, DTMF, WRONG_STREAM)

GREETING_WAIT = "greeting.wait"
GREETING_AUDIBLE = "greeting.audible"
GREETING_END = "greeting.end"
GREETING_NONE = "greeting.none"
GREETING_EVENTS: tuple[str, ...] = (GREETING_WAIT, GREETING_AUDIBLE, GREETING_END, GREETING_NONE)


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _num(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def target_path(target: Mapping[str, Any]) -> str:
    """The path a trace's target was measured on: its header's ``target.path`` when it is
    one of :data:`PATHS`, else from its protocol (``webrtc`` → webrtc, ``cascade`` →
    http, ``python`` → in-process, a carrier → phone, anything else → websocket)."""
    p = target.get("path")
    if type(p) is str and p in PATHS:
        return p
    proto = target.get("protocol")
    return _PROTOCOL_PATHS.get(proto, "websocket") if type(proto) is str else "websocket"


def path_declared(target: Mapping[str, Any]) -> bool:
    """The header says the path itself (traces written since issue 24)."""
    p = target.get("path")
    return type(p) is str and p in PATHS


# -- the carrier, per turn ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarrierStart:
    """A session's ``carrier.start``: the dialect and the fixed delay the run added."""

    dialect: str | None
    fixed_delay_ns: int

    @classmethod
    def find(cls, obs: TurnObs | None, session: SessionObs | None) -> CarrierStart | None:
        """The session's ``carrier.start`` (session level, else in the turn)."""
        attrs: dict[str, Any] | None = None
        if session is not None:
            for name, _, a in session.events:
                if name == CARRIER_START:
                    attrs = a
                    break
        if attrs is None and obs is not None:
            occ = obs.first(CARRIER_START)
            attrs = None if occ is None else occ[2]
        if attrs is None:
            return None
        fixed = _num(attrs.get("fixed_delay_ms"))
        dialect = attrs.get("dialect")
        return cls(
            dialect if type(dialect) is str else None,
            0 if fixed is None or fixed < 0 else round(fixed * 1e6),
        )


@dataclass(frozen=True, slots=True)
class CarrierChunk:
    """One piece of reply audio as the carrier played it (carrier time: without the fixed
    delay)."""

    #: when it arrived at the carrier
    arrival_ns: int
    #: when it started playing (arrival + queued)
    play_ns: int
    #: its audio's length as played
    dur_ns: int

    @property
    def end_ns(self) -> int:
        return self.play_ns + self.dur_ns


def _dur_ns(samples: Any, rate: Any) -> int:
    if type(samples) is int and type(rate) is int and rate > 0 and samples >= 0:
        return samples * 1_000_000_000 // rate
    return 0


def carrier_chunks(obs: TurnObs, fixed_ns: int = 0) -> list[CarrierChunk]:
    """The turn's reply chunks that say how long they were queued (``queued_ns``), in
    play order; a malformed ``queued_ns`` column (not a list of the chunks' length, or an
    element that is not a non-negative integer) leaves those chunks out."""
    out: list[CarrierChunk] = []
    for t, a in obs.raw_chunks:
        q = a.get("queued_ns")
        if type(q) is int and q >= 0:
            play = t - fixed_ns
            out.append(CarrierChunk(play - q, play, _dur_ns(a.get("samples"), a.get("rate"))))
    for t, a in obs.batches:
        qs = a.get("queued_ns")
        dt = a["dt_ns"]
        if type(qs) is not list or len(qs) != len(dt):
            continue
        rate = a["rate"]
        for d, n, q in zip(dt, a["samples"], qs, strict=True):
            if type(q) is int and q >= 0:
                play = t + d - fixed_ns
                out.append(CarrierChunk(play - q, play, _dur_ns(n, rate)))
    out.sort(key=lambda c: c.play_ns)
    return out


@dataclass(frozen=True, slots=True)
class CarrierBargeIn:
    """One barge-in over a reply played by the carrier (times from the caller's onset)."""

    #: the caller's onset (probe clock)
    onset_ns: int
    #: the last reply sample heard - the onset (``reply.stop``'s stop latency)
    stop_ns: int
    #: the bot's first ``carrier.clear`` at or after the onset - the onset (None: none)
    clear_ns: int | None
    #: reply audio heard after the onset (``reply.stop``'s ``heard_after_ms``)
    heard_after_ms: float | None
    #: audio already queued at the onset, from the chunks that had arrived by then (None:
    #: the chunks do not say how long they were queued)
    deaf_window_ns: int | None
    #: the queued audio the clear dropped (its ``dropped_ms``)
    dropped_ms: float | None
    #: this reply's audio heard after the onset, from the carrier's chunks (None: they do
    #: not say how long they were queued)
    reply_heard_ns: int | None = None
    #: the clear found the reply still playing or queued at the carrier (its ``playing``,
    #: or audio dropped): it cut this reply even when it came after the last audible
    #: sample (between two words, the carrier still playing quiet samples)
    clear_cut: bool = False

    @property
    def after_clear_ns(self) -> int | None:
        """The clear's arrival to the last sample heard (None without a clear)."""
        return None if self.clear_ns is None else self.stop_ns - self.clear_ns

    @property
    def heard_ns(self) -> int:
        """Reply audio the caller heard after the onset: from this reply's chunks, else
        ``reply.stop``'s ``heard_after_ms``, else its stop latency."""
        if self.reply_heard_ns is not None:
            return self.reply_heard_ns
        if self.heard_after_ms is not None:
            return round(self.heard_after_ms * 1e6)
        return max(0, self.stop_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stop_ms": self.stop_ns / 1e6,
            "clear_ms": _ms(self.clear_ns),
            "after_clear_ms": _ms(self.after_clear_ns),
            "heard_after_ms": self.heard_after_ms,
            "deaf_window_ms": _ms(self.deaf_window_ns),
            "dropped_ms": self.dropped_ms,
            "reply_heard_after_ms": _ms(self.reply_heard_ns),
        }


#: Without a mark to end it, a reply's audio ends at the first chunk that arrived after the
#: onset this long after the chunk before it: the bot's next reply (a reply streamed at
#: real time sends a chunk every 20 ms; a next reply waits for the caller's speech).
REPLY_GAP_NS = 250_000_000


def reply_chunks(
    chunks: list[CarrierChunk], onset_ns: int, mark_arrivals: Iterable[int]
) -> list[CarrierChunk]:
    """The chunks of the reply the caller barged in on, out of a turn's chunks (which
    may also hold the bot's next reply, played on by a carrier that was still playing
    this one): those that arrived before the bot's first mark after this reply's first
    chunk (an honest mark follows its reply; an early one precedes the next), else before
    the first chunk that arrived after the onset :data:`REPLY_GAP_NS` after the one
    before it."""
    if not chunks:
        return []
    by_arrival = sorted(chunks, key=lambda c: c.arrival_ns)
    first = by_arrival[0].arrival_ns
    later = [m for m in mark_arrivals if m > first]
    if later:
        bound = min(later)
        return [c for c in chunks if c.arrival_ns < bound]
    out = [by_arrival[0]]
    for prev, c in itertools.pairwise(by_arrival):
        if c.arrival_ns > onset_ns and c.arrival_ns - prev.arrival_ns > REPLY_GAP_NS:
            break
        out.append(c)
    return sorted(out, key=lambda c: c.play_ns)


def heard_after(
    chunks: Iterable[CarrierChunk], onset_ns: int, fixed_ns: int, last_ns: int | None = None
) -> int:
    """The chunks' audio heard (carrier play + the fixed delay) after ``onset_ns`` and,
    with ``last_ns`` (the last audible sample heard), not after it: the silence that ends
    a reply is not heard audio."""
    total = 0
    for c in chunks:
        end = c.end_ns + fixed_ns
        if last_ns is not None:
            end = min(end, last_ns)
        start = max(c.play_ns + fixed_ns, onset_ns)
        if end > start:
            total += end - start
    return total


def deaf_window(
    chunks: Iterable[CarrierChunk],
    onset_ns: int,
    clear: tuple[int, float | None] | None = None,
) -> int | None:
    """Audio already queued at the carrier at ``onset_ns``: from the chunks that had
    arrived by then, the end of their playout - the onset (0 when it had all played;
    None without such a chunk). A clear (``(arrival, dropped_ms)``) cut the played
    chunks short: when no chunk that played arrived after the onset, the queue the clear
    dropped is the rest of the one at the onset, so its end was the clear's arrival +
    ``dropped_ms``."""
    cs = list(chunks)
    ends = [c.end_ns for c in cs if c.arrival_ns <= onset_ns]
    if not ends:
        return None
    end = max(ends)
    if clear is not None:
        t_clear, dropped_ms = clear
        if dropped_ms is not None and not any(onset_ns < c.arrival_ns <= t_clear for c in cs):
            end = max(end, t_clear + round(dropped_ms * 1e6))
    return max(0, end - onset_ns)


@dataclass(frozen=True, slots=True)
class MarkCheck:
    """One mark the bot sent and the carrier echoed: was the audio it relies on heard?"""

    name: str | None
    #: the mark's arrival and its echo (probe clock, carrier time)
    mark_ns: int
    echo_ns: int
    #: reply audio the bot sent after the mark that was heard after the echo
    heard_after_echo_ns: int

    def to_dict(self, t0: int | None) -> dict[str, Any]:
        def rel(t: int) -> float | None:
            return None if t0 is None else (t - t0) / 1e6

        return {
            "name": self.name,
            "mark_at_ms": rel(self.mark_ns),
            "echo_at_ms": rel(self.echo_ns),
            "heard_after_echo_ms": self.heard_after_echo_ns / 1e6,
        }


def heard_after_echo(
    chunks: Iterable[CarrierChunk], mark_ns: int, echo_ns: int, until_ns: int | None = None
) -> int:
    """The audio of the chunks that arrived after the mark (and, with ``until_ns``, not
    after it), played after its echo (ns)."""
    total = 0
    for c in chunks:
        if until_ns is not None and c.arrival_ns > until_ns:
            continue
        if c.arrival_ns > mark_ns and c.end_ns > echo_ns:
            total += c.end_ns - max(c.play_ns, echo_ns)
    return total


@dataclass(frozen=True, slots=True)
class PhoneTurn:
    """What the carrier says about one turn (None for a turn without carrier data)."""

    dialect: str | None
    fixed_delay_ns: int
    #: ``queued_ns`` of the reply's first chunk: its wait behind audio queued before it
    first_queued_ns: int | None
    #: the largest ``queued_ns`` over the reply: how far its audio ran ahead of playout
    send_ahead_max_ns: int | None
    barge_ins: tuple[CarrierBargeIn, ...]
    marks: tuple[MarkCheck, ...]
    clears: int
    dtmf_sent: int
    wrong_stream: int

    @classmethod
    def from_obs(cls, obs: TurnObs, session: SessionObs | None = None) -> PhoneTurn | None:
        start = CarrierStart.find(obs, session)
        fixed = 0 if start is None else start.fixed_delay_ns
        chunks = carrier_chunks(obs, fixed)
        marks = obs.marks
        if start is None and not chunks and not any(n in marks for n in CARRIER_EVENTS):
            return None
        clears = sorted(marks.get(CLEAR, ()), key=lambda o: o[0])
        arrivals = sorted(o[0] for o in marks.get(MARK, ()))
        barge: list[CarrierBargeIn] = []
        for t, src, a in sorted(marks.get(STOP, ()), key=lambda o: o[0]):
            if src != PROBE or a.get("kind") != INTERRUPT:
                continue
            stop = _int(a.get("stop_ns"))
            onset = _int(a.get("onset_ns"))
            if stop is None:
                continue
            if onset is None:
                onset = t - stop
            # The last sample heard is heard at t (fixed delay included); the bot's clear
            # arrives at the carrier, fixed-delay earlier.
            clear = next((c for c in clears if onset <= c[0] <= max(t, onset + stop)), None)
            if clear is None:
                clear = next((c for c in clears if c[0] >= onset), None)
            dropped = None if clear is None else _num(clear[2].get("dropped_ms"))
            cut = clear is not None and (
                clear[2].get("playing") is True or (dropped is not None and dropped > 0)
            )
            cleared = clear is not None and (clear[0] - onset <= stop or cut)
            own = reply_chunks(chunks, onset, arrivals)
            barge.append(
                CarrierBargeIn(
                    onset_ns=onset,
                    stop_ns=stop,
                    clear_ns=None if clear is None else clear[0] - onset,
                    heard_after_ms=_num(a.get("heard_after_ms")),
                    deaf_window_ns=deaf_window(
                        chunks, onset, (clear[0], dropped) if cleared and clear else None
                    )
                    if chunks
                    else None,
                    dropped_ms=dropped,
                    reply_heard_ns=heard_after(own, onset, fixed, t) if own else None,
                    clear_cut=cut,
                )
            )
        # The audio a mark vouches for is what the bot sent after it up to its next mark,
        # and before the caller's next barge-in: audio sent after either is another
        # reply's (a reply to the barge-in can land in this turn's audio when the
        # carrier was still playing this one).
        onsets = sorted(b.onset_ns for b in barge)
        checks: list[MarkCheck] = []
        for t, _, a in sorted(marks.get(MARK_ECHO, ()), key=lambda o: o[0]):
            if a.get("cleared") is True:
                continue
            mark_ns = _int(a.get("mark_ns"))
            if mark_ns is None:
                continue
            bounds = [x for x in (*arrivals, *onsets) if x > mark_ns]
            name = a.get("name")
            checks.append(
                MarkCheck(
                    name if type(name) is str else None,
                    mark_ns,
                    t,
                    heard_after_echo(chunks, mark_ns, t, min(bounds) if bounds else None),
                )
            )
        queued = [c.play_ns - c.arrival_ns for c in chunks]
        return cls(
            dialect=None if start is None else start.dialect,
            fixed_delay_ns=fixed,
            first_queued_ns=queued[0] if queued else None,
            send_ahead_max_ns=max(queued) if queued else None,
            barge_ins=tuple(barge),
            marks=tuple(checks),
            clears=len(clears),
            dtmf_sent=len(marks.get(DTMF, ())),
            wrong_stream=len(marks.get(WRONG_STREAM, ())),
        )

    def to_dict(self, t0: int | None = None) -> dict[str, Any]:
        """``turns[].phone`` (docs/report-format.md)."""
        d: dict[str, Any] = {
            "dialect": self.dialect,
            "fixed_delay_ms": self.fixed_delay_ns / 1e6,
            "carrier_buffer_ms": _ms(self.first_queued_ns),
            "send_ahead_max_ms": _ms(self.send_ahead_max_ns),
            "clears": self.clears,
        }
        if self.barge_ins:
            d["barge_ins"] = [b.to_dict() for b in self.barge_ins]
        if self.marks:
            d["marks"] = [m.to_dict(t0) for m in self.marks]
        if self.dtmf_sent:
            d["dtmf_sent"] = self.dtmf_sent
        if self.wrong_stream:
            d["wrong_stream"] = self.wrong_stream
        return d


def dtmf_digit(obs: TurnObs) -> str | None:
    """The key a key-press turn pressed (``turn.start``'s ``dtmf``), else None."""
    d = obs.attrs("turn.start").get("dtmf")
    return d if type(d) is str and d else None


# -- the greeting, per session ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """One session's greeting: how long the caller waited for it, or that none came."""

    session: str
    #: the first audible greeting sample - the call's media start (None: no greeting)
    latency_ns: int | None
    #: the greeting's length (``greeting.end``'s ``duration_ns``)
    duration_ns: int | None
    #: ``greeting.none``: how long the probe waited for one
    waited_ns: int | None
    #: when the media began (``greeting.wait``'s time)
    wait_t_ns: int | None

    @property
    def heard(self) -> bool:
        return self.latency_ns is not None

    def to_dict(self, run_id: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {} if run_id is None else {"run_id": run_id}
        d.update(
            {
                "session": self.session,
                "latency_ms": _ms(self.latency_ns),
                "duration_ms": _ms(self.duration_ns),
                "none_waited_ms": _ms(self.waited_ns),
            }
        )
        return d

    @classmethod
    def from_session(cls, so: SessionObs) -> Greeting | None:
        """The session's greeting (None: the session did not wait for one)."""
        wait = audible = end = none = None
        for name, t, a in so.events:
            if name == GREETING_WAIT and wait is None:
                wait = (t, a)
            elif name == GREETING_AUDIBLE and audible is None:
                audible = (t, a)
            elif name == GREETING_END and end is None:
                end = (t, a)
            elif name == GREETING_NONE and none is None:
                none = (t, a)
        if wait is None and audible is None and none is None:
            return None
        latency: int | None = None
        if audible is not None:
            latency = _int(audible[1].get("latency_ns"))
            if latency is None and wait is not None:
                latency = audible[0] - wait[0]
        waited: int | None = None
        if none is not None and latency is None:
            waited = _int(none[1].get("waited_ns"))
            if waited is None and wait is not None:
                waited = none[0] - wait[0]
        return cls(
            so.session,
            latency,
            None if end is None else _int(end[1].get("duration_ns")),
            waited,
            None if wait is None else wait[0],
        )


# -- over the report --------------------------------------------------------------------

#: The phone and greeting latency metrics, by the names the gate and a comparison give
#: them: each session's greeting latency, and each barge-in's onset → the bot's clear.
GREETING_LATENCY = "greeting_latency"
CLEAR_LATENCY = "barge_in.clear_latency"
#: Tolerance of the summaries for ms figures (as the report's ABS_TOLERANCE_MS).
_ABS_TOLERANCE_MS = 5.0


def _summary(values: Iterable[float]) -> Summary | None:
    return summarize(as_sorted(list(values)), abs_tolerance=_ABS_TOLERANCE_MS)


def _sdict(s: Summary | None) -> dict[str, Any] | None:
    return None if s is None else s.to_dict()


@dataclass(frozen=True)
class PathFigures:
    """Voice-to-voice of the turns of one path (results of different paths apart)."""

    path: str
    turns: int
    voice_to_voice: Summary | None


@dataclass(frozen=True)
class PhoneSummary:
    """The report's ``phone`` block: paths, greeting, carrier, barge-ins through the
    carrier, marks and key presses (docs/report-format.md, "Phone and greeting")."""

    paths: tuple[PathFigures, ...]
    greetings: tuple[Greeting, ...]
    #: statistics' turns heard through a carrier
    carrier_turns: int
    carrier_buffer_ms: FloatArray
    send_ahead_max_ms: FloatArray
    #: the fixed delays (ms) the runs added to the phone figures
    fixed_delays_ms: tuple[float, ...]
    dialects: tuple[str, ...]
    barge_ins: tuple[CarrierBargeIn, ...]
    marks: tuple[MarkCheck, ...]
    mark_early_ms: float
    #: voice-to-voice (ms) of the key-press turns: the bot's reaction time to the key
    key_press_ms: FloatArray

    @property
    def greeting_ms(self) -> FloatArray:
        """Sorted greeting latencies (ms) of the sessions that heard one."""
        return as_sorted([g.latency_ns / 1e6 for g in self.greetings if g.latency_ns is not None])

    @property
    def greeting_summary(self) -> Summary | None:
        return summarize(self.greeting_ms, abs_tolerance=_ABS_TOLERANCE_MS)

    @property
    def clear_ms(self) -> FloatArray:
        """Sorted onset → clear (ms) of the barge-ins the bot cleared."""
        return as_sorted(
            [b.clear_ns / 1e6 for b in self.barge_ins if b.clear_ns is not None and was_cleared(b)]
        )

    @property
    def no_greeting(self) -> int:
        return sum(1 for g in self.greetings if not g.heard)

    @property
    def cleared(self) -> int:
        return sum(1 for b in self.barge_ins if was_cleared(b))

    @property
    def early_marks(self) -> int:
        return sum(1 for m in self.marks if m.heard_after_echo_ns >= self.mark_early_ms * 1e6)

    def latency_metrics(self) -> dict[str, FloatArray]:
        """The phone latency metrics that have values: sorted ms per
        :data:`GREETING_LATENCY` and :data:`CLEAR_LATENCY`."""
        out = {GREETING_LATENCY: self.greeting_ms, CLEAR_LATENCY: self.clear_ms}
        return {k: v for k, v in out.items() if len(v)}

    @property
    def includes(self) -> str | None:
        """What the phone figures include (None without a carrier)."""
        if not self.carrier_turns and not self.fixed_delays_ms:
            return None
        fixed = ", ".join(f"{v:g}" for v in self.fixed_delays_ms) or "0"
        text = (
            "heard through the carrier's playout (its buffer modelled: audio plays at real "
            "time, after the audio queued before it)"
        )
        if any(self.fixed_delays_ms):
            return (
                f"{text}, plus a fixed delay of {fixed} ms for the carrier's jitter buffer "
                "and the phone network to the handset (fixed_delay_ms)"
            )
        return (
            f"{text}; the carrier's own jitter buffer and the phone network to the handset "
            "are not included (fixed_delay_ms 0)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's ``phone`` (docs/report-format.md)."""

        def ms_summary(v: FloatArray) -> dict[str, Any] | None:
            return _sdict(summarize(v, abs_tolerance=_ABS_TOLERANCE_MS))

        deaf = [b.deaf_window_ns / 1e6 for b in self.barge_ins if b.deaf_window_ns is not None]
        after = [
            b.after_clear_ns / 1e6
            for b in self.barge_ins
            if b.after_clear_ns is not None and was_cleared(b)
        ]
        return {
            "paths": [
                {"path": p.path, "turns": p.turns, "voice_to_voice_ms": _sdict(p.voice_to_voice)}
                for p in self.paths
            ],
            "includes": self.includes,
            "greeting": {
                "sessions_waited": len(self.greetings),
                "heard": len(self.greetings) - self.no_greeting,
                "none": self.no_greeting,
                "latency_ms": _sdict(self.greeting_summary),
            },
            "carrier": {
                "turns": self.carrier_turns,
                "dialects": list(self.dialects),
                "fixed_delay_ms": list(self.fixed_delays_ms),
                "carrier_buffer_ms": ms_summary(self.carrier_buffer_ms),
                "send_ahead_max_ms": ms_summary(self.send_ahead_max_ms),
            },
            "barge_ins": {
                "n": len(self.barge_ins),
                "cleared": self.cleared,
                "not_cleared": len(self.barge_ins) - self.cleared,
                "clear_ms": ms_summary(self.clear_ms),
                "after_clear_ms": _sdict(_summary(after)),
                "deaf_window_ms": _sdict(_summary(deaf)),
            },
            "marks": {"echoed": len(self.marks), "early": self.early_marks},
            "key_press": {
                "turns": len(self.key_press_ms),
                "reaction_ms": ms_summary(self.key_press_ms),
            },
        }


def was_cleared(b: CarrierBargeIn) -> bool:
    """The bot cleared this reply: its clear came between the onset and the last sample
    heard, or later while the carrier still played or queued the reply."""
    return b.clear_ns is not None and (b.clear_ns <= b.stop_ns or b.clear_cut)


def summarize_phone(
    stats: Iterable[tuple[str, int | None, PhoneTurn | None, str | None]],
    all_turns: Iterable[PhoneTurn],
    greetings: Iterable[Greeting],
    paths: Iterable[str],
    mark_early_ms: float = 20.0,
) -> PhoneSummary:
    """The report's phone summary. ``stats``: (path, voice-to-voice ns or None, phone
    data, key) of each turn in the statistics; ``all_turns``: the phone data of every
    turn the barge-in figures are over (failed ones too, as the turn-taking figures);
    ``paths``: every path the report's runs were on."""
    by_path: dict[str, list[float]] = {p: [] for p in paths}
    buffer: list[float] = []
    ahead: list[float] = []
    keys: list[float] = []
    n_carrier = 0
    for path, v2v, pt, key in stats:
        vals = by_path.setdefault(path, [])
        if v2v is not None:
            vals.append(v2v / 1e6)
            if key is not None:
                keys.append(v2v / 1e6)
        if pt is not None:
            n_carrier += 1
            if pt.first_queued_ns is not None:
                buffer.append(pt.first_queued_ns / 1e6)
            if pt.send_ahead_max_ns is not None:
                ahead.append(pt.send_ahead_max_ns / 1e6)
    every = list(all_turns)
    return PhoneSummary(
        paths=tuple(PathFigures(p, len(v), _summary(v)) for p, v in sorted(by_path.items())),
        greetings=tuple(greetings),
        carrier_turns=n_carrier,
        carrier_buffer_ms=as_sorted(buffer),
        send_ahead_max_ms=as_sorted(ahead),
        fixed_delays_ms=tuple(sorted({p.fixed_delay_ns / 1e6 for p in every})),
        dialects=tuple(sorted({p.dialect for p in every if p.dialect is not None})),
        barge_ins=tuple(b for p in every for b in p.barge_ins),
        marks=tuple(m for p in every for m in p.marks),
        mark_early_ms=mark_early_ms,
        key_press_ms=as_sorted(keys),
    )
