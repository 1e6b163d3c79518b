"""The latency ledger: voice-to-voice cut into consecutive segments at every mark.

For one turn, the interval from ``input.speech_end`` (the instant the last speech sample
was spoken, from the recording) to ``reply.audible`` (the instant the first audible reply
sample would be heard) is cut at each stage mark the trace holds. The segments are
consecutive and non-overlapping, so they sum *exactly* (in integer nanoseconds) to
voice-to-voice. A segment is named after the stage it measures and exists only when
both of its marks exist; time between two marks that are not neighbours in the chain
below (because a mark in between is missing) is ``unexplained``, with the stages it
spans listed in ``covers``. Unexplained time is never spread over known stages, and no
mark is ever invented.

The chain (segment = from the previous present mark to this one):

==========================  ================================  ==========================
mark                        alternatives                      segment ending at it
==========================  ================================  ==========================
``input.speech_end``        (probe)                           (start)
``input.speech_end_sent``   (probe)                           ``input_framing``
``endpoint``                ``committed``                     ``endpointing``
``transcript.final``                                          ``transcription``
``llm.request``             ``response.created``              ``handoff`` /
                                                              ``response_start``
``llm.first_token``         ``reply_text.first``              ``model_first_token`` /
                                                              ``model_first_text``
``tts.request``                                               ``aggregation``
``tts.first_byte``                                            ``synthesis_first_byte``
``reply.on_wire``           ``audio.first_sent``              ``first_audio``
``reply.first_byte``        (probe)                           ``transport``
``reply.playout_start``     (probe)                           ``playout_wait``
``reply.audible``           (probe)                           ``leading_silence``
==========================  ================================  ==========================

A segment is named for the mark that ends it: ``response.created`` ends a
``response_start`` (the protocol's own "the response began"), ``reply_text.first`` (the
first delta of the reply's text or audio transcript) a ``model_first_text``.

The first reply audio leaving the server (``reply.on_wire``: its first packet in a
capture joined to the trace; ``audio.first_sent``: the target's own word that it handed
the audio to its socket) splits what comes before it (``first_audio``: from the last
stage the server reported to its first reply audio on the wire) from ``transport`` (the
wire and the probe's socket and event loop). Without such a mark the two are one
segment: ``transport`` when it starts at a first audio byte or token (``tts.first_byte``,
or a speech-to-speech model's ``llm.first_token``), ``first_audio`` when it starts at the
response or its first text (the model still had to make the audio).

Through a phone carrier (:func:`with_carrier`, applied by the report where the reply's
chunks carry ``queued_ns``), the segment that ends at ``reply.first_byte`` (the carrier
putting the first chunk on the line, its fixed delay included) is cut at the chunk's
arrival at the carrier (``carrier.arrival``) and where it began to play
(``carrier.playing``): ``carrier_buffer`` (its wait behind audio queued before it) and
``fixed_delay`` (the carrier's ``fixed_delay_ms``, where not 0). Both marks are derived
from the recorded ``queued_ns`` and fixed delay, not invented.

Speech-to-speech turns (``response.created`` but no ``llm.request``, ``tts.request`` or
``tts.first_byte``) have no synthesis stage: their model's first token *is* audio. So
``llm.first_token → reply.first_byte`` is the ``transport``, ``reply_text.first →
reply.first_byte`` (or ``response.created → reply.first_byte`` when no first text or
token was seen) the ``first_audio``, and ``endpoint → response.created`` the
``response_start`` (or ``endpoint → transcript.final → response.created`` when an input
transcript came before the response; one that came after it, as a side channel, is off
the path).

Which clock (see docs/report-format.md, "Which clock")
    A pipeline mark's ``t_ns`` is when the probe *received* the message carrying it; when
    the target reports its own monotonic time on the same host it is in
    ``attrs.server_t_ns``. The ledger places pipeline marks at ``server_t_ns`` when it is
    usable, because arrival time adds the notification's own transport and queueing to
    the stage before it (a ``tts.first_byte`` notice that travels with the audio would
    make ``transport`` zero). On one host both clocks are CLOCK_MONOTONIC, so a server
    time is never later than its arrival; a turn in which any mark the ledger reads has a
    server time later than its arrival (a different host or clock) uses arrival times for
    all its marks (wire times where a capture gave them), with a note.
    With a capture joined to the trace (:func:`place_on_wire`), a pipeline mark without a
    server time is placed at ``attrs.wire_t_ns``: when the WebSocket frame that carried
    it left the server on the wire (the server's leg of an impairment proxy, else where
    the capture saw it), so the server's marks and ``reply.on_wire`` are on one axis
    instead of arrival-stamped marks meeting wire-stamped ones: the downlink is then all
    in ``transport``. Without a capture an arrival-stamped mark carries the downlink delay
    into the stage it ends, which the ledger cannot split off.
    ``mark_time="arrival"`` forces arrival times.

Repeated and out-of-order marks
    A mark that occurs several times (a premature ``endpoint`` mid-utterance, several
    ``llm.request`` for tool calls) is taken at its earliest occurrence at or after speech
    end (by time, whatever the order of the file). Marks before speech end or after the
    first audible sample cannot bound a segment and are listed as ``off_path`` with the
    reason. When the remaining marks are
    not in chain order in time (a ``transcript.final`` after ``llm.request``: the model
    started on a partial transcript), the ledger keeps the largest set of marks that is
    in order; of two equally large sets, the one that keeps the later stage where they
    first differ, counting back from the reply. The rest are ``off_path``: "out of order:
    N ms after X" (X: the nearest later stage kept that came before it), else "N ms
    before X" (the nearest earlier stage kept that came after it). ``reply.on_wire``
    never displaces a stage mark: it is kept only where it fits between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from voiceaudit.analysis.turns import PROBE, Occurrence, TurnObs
from voiceaudit.model import Event

MarkTime = Literal["auto", "arrival"]

SPEECH_END = "input.speech_end"
AUDIBLE = "reply.audible"

#: Stable segment identifiers, in chain order: the default name of the segment ending at
#: each chain boundary (see ``RENAMED`` for the names some end marks give instead).
SEGMENTS: tuple[str, ...] = (
    "input_framing",
    "endpointing",
    "transcription",
    "handoff",
    "model_first_token",
    "aggregation",
    "synthesis_first_byte",
    "first_audio",
    "transport",
    "playout_wait",
    "leading_silence",
)
#: End mark -> the name of the segment it ends, where it is not the boundary's default:
#: a segment is named for what ends it.
RENAMED: dict[str, str] = {
    "response.created": "response_start",
    "reply_text.first": "model_first_text",
}
#: Chain boundaries: the mark names that can stand at each, first choice first. Index
#: ``i`` (1..11) ends segment ``SEGMENTS[i - 1]`` (or its ``RENAMED`` name).
BOUNDARIES: tuple[tuple[str, ...], ...] = (
    (SPEECH_END,),
    ("input.speech_end_sent",),
    ("endpoint", "committed"),
    ("transcript.final",),
    ("llm.request", "response.created"),
    ("llm.first_token", "reply_text.first"),
    ("tts.request",),
    ("tts.first_byte",),
    ("reply.on_wire", "audio.first_sent"),
    ("reply.first_byte",),
    ("reply.playout_start",),
    (AUDIBLE,),
)
UNEXPLAINED = "unexplained"
#: The segments a phone carrier adds before ``reply.first_byte`` (see :func:`with_carrier`):
#: the reply's first audio waiting in the carrier's buffer behind audio queued before
#: it, and the carrier's fixed delay (``fixed_delay_ms``, where not 0).
CARRIER_BUFFER = "carrier_buffer"
FIXED_DELAY = "fixed_delay"
CARRIER_SEGMENTS: tuple[str, ...] = (CARRIER_BUFFER, FIXED_DELAY)
#: The derived marks that bound them: the first chunk's arrival at the carrier, and when
#: the carrier began playing it (before its fixed delay).
CARRIER_ARRIVAL = "carrier.arrival"
CARRIER_PLAYING = "carrier.playing"
#: Every segment name a ledger can hold, in chain order (``unexplained`` last): each
#: boundary's default name, then the names its alternative marks give; the carrier's
#: segments after ``transport``.
ALL_SEGMENTS: tuple[str, ...] = (
    *(
        name
        for i in range(1, len(BOUNDARIES))
        for name in (
            SEGMENTS[i - 1],
            *(RENAMED[m] for m in BOUNDARIES[i] if m in RENAMED),
            *(CARRIER_SEGMENTS if SEGMENTS[i - 1] == "transport" else ()),
        )
    ),
    UNEXPLAINED,
)
_N = len(BOUNDARIES)
_PROBE_BOUNDARIES = frozenset({0, 1, 9, 10, 11})
#: (chain index, mark names, probe boundary?) of the boundaries _pick looks for
_PICK_ORDER = tuple((i, BOUNDARIES[i], i in _PROBE_BOUNDARIES) for i in range(1, _N - 1))
_S2S_SKIPPED = frozenset({6, 7})
#: marks after which the reply's first audio byte is already made (so what follows up to
#: the probe is transport); after the others the model still had to make the audio
_AUDIO_MADE = frozenset({"tts.first_byte", "llm.first_token"})
#: marks that give way to the stage marks when they are out of order with them: the
#: capture's first reply audio on the wire refines the chain but never displaces a stage
#: (a cascade's own ``tts.first_byte`` is read by voiceaudit after the bytes crossed the
#: wire, so the two are never in chain order there)
_YIELDING = frozenset({"reply.on_wire"})


def segment_bounds(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The marks that can start and end segment ``name`` (a chain segment)."""
    if name == CARRIER_BUFFER:
        return (CARRIER_ARRIVAL,), (CARRIER_PLAYING,)
    if name == FIXED_DELAY:
        return (CARRIER_PLAYING,), ("reply.first_byte",)
    for i in range(1, _N):
        if SEGMENTS[i - 1] == name:
            ends = tuple(m for m in BOUNDARIES[i] if m not in RENAMED)
            return BOUNDARIES[i - 1], ends
    for mark, seg in RENAMED.items():
        if seg == name:
            i = next(i for i, b in enumerate(BOUNDARIES) if mark in b)
            return BOUNDARIES[i - 1], (mark,)
    raise KeyError(name)


def _covers(skipped: frozenset[int]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """``[a][b]``: the named segments between chain boundaries ``a`` and ``b``."""
    applicable = [i for i in range(_N) if i not in skipped]
    return tuple(
        tuple(tuple(SEGMENTS[i - 1] for i in applicable if a < i <= b) for b in range(_N))
        for a in range(_N)
    )


_COVERS = _covers(frozenset())
_COVERS_S2S = _covers(_S2S_SKIPPED)
#: A speech-to-speech turn whose input transcript is not on the path: the model started
#: from the audio, so endpoint → response is the response start.
_COVERS_S2S_NO_TRANSCRIPT = _covers(_S2S_SKIPPED | {3})


def _merged_name(covered: tuple[str, ...], start: str, s2s: bool) -> str | None:
    """The name of the one segment between two marks whose missing marks in between
    are optional ones (the first audio leaving the server; a speech-to-speech model's
    first output), or ``None`` (the time is unexplained)."""
    if covered == ("first_audio", "transport"):
        return "transport" if start in _AUDIO_MADE else "first_audio"
    if s2s and covered in (
        ("model_first_token", "first_audio"),
        ("model_first_token", "first_audio", "transport"),
    ):
        return "first_audio"
    return None


#: Preference among sources when a pipeline mark comes from several.
_SOURCE_RANK = {"pipeline": 0, "import": 1, "network": 2}

#: Pipeline mark names whose times the findings read (besides the chain marks).
EXTRA_MARKS: tuple[str, ...] = ("llm.done", "tts.done", "audio.first_sent")
#: Probe mark names whose times the findings read (besides the chain marks).
PROBE_EXTRA_MARKS: tuple[str, ...] = ("turn.start", "input.done", "reply.end")


class Segment(NamedTuple):
    """One piece of voice-to-voice: ``ns`` long, from mark ``start`` to mark ``end``."""

    name: str
    ns: int
    start: str
    end: str
    #: for ``unexplained``: the named segments this time would belong to, had the marks
    #: between ``start`` and ``end`` been recorded
    covers: tuple[str, ...] = ()


class Mark(NamedTuple):
    """A mark placed on the ledger's time axis."""

    name: str
    t_ns: int
    #: ``server`` (attrs.server_t_ns), ``wire`` (its frame's departure in a capture, and
    #: ``reply.on_wire``), ``arrival`` (pipeline t_ns) or ``probe``
    clock: str


@dataclass(frozen=True, slots=True)
class TurnWire:
    """What a capture joined to the trace says of one turn's marks (probe clock)."""

    #: when the turn's first reply audio left the server: the ``reply.on_wire`` mark
    on_wire: int | None = None
    #: (mark name, arrival t_ns) -> when the frame that carried it left the server
    departures: Mapping[tuple[str, int], int] = field(default_factory=dict)


def place_on_wire(obs: TurnObs, wire: TurnWire | int) -> None:
    """Add a joined capture's times to a turn: ``reply.on_wire`` (source ``network``), and
    ``wire_t_ns`` on each pipeline occurrence whose frame was found (``wire`` as a bare
    int: only the ``reply.on_wire`` time)."""
    if isinstance(wire, int):
        obs.add("reply.on_wire", "network", "transport", wire, {"from": "capture"})
        return
    deps = wire.departures
    if deps:
        for name, occs in obs.marks.items():
            for i, (t, src, a) in enumerate(occs):
                d = deps.get((name, t))
                if d is not None and src != PROBE:
                    occs[i] = (t, src, {**a, "wire_t_ns": min(d, t)})
    if wire.on_wire is not None:
        obs.add("reply.on_wire", "network", "transport", wire.on_wire, {"from": "capture"})


class OffPath(NamedTuple):
    """A mark that could not bound a segment, and why."""

    name: str
    t_ns: int
    why: str


@dataclass(frozen=True, slots=True)
class Ledger:
    """The ledger of one turn.

    ``segments`` sum exactly to ``voice_to_voice_ns`` whenever it is not ``None``;
    ``problem`` says why there is no ledger otherwise. ``marks`` are the chain marks used
    (in order); ``times`` holds the chosen time of every mark the findings read.
    """

    voice_to_voice_ns: int | None
    segments: tuple[Segment, ...]
    marks: tuple[Mark, ...]
    off_path: tuple[OffPath, ...]
    times: dict[str, int]
    clock: str
    speech_to_speech: bool
    notes: tuple[str, ...]
    problem: str | None = None

    @property
    def t0_ns(self) -> int | None:
        """Speech end (the ledger's origin)."""
        return self.times.get(SPEECH_END)

    def segment_ns(self, name: str) -> int | None:
        """Total time of a segment in this turn (``None`` when absent)."""
        total: int | None = None
        for s in self.segments:
            if s.name == name:
                total = s.ns if total is None else total + s.ns
        return total

    def by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.segments:
            out[s.name] = out.get(s.name, 0) + s.ns
        return out


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


_tuple_new = tuple.__new__  # NamedTuples without their Python-level __new__ (hot path)


#: which times _placed may use: server times and wire times, wire times only, neither
_ALL_TIMES, _WIRE_TIMES, _ARRIVAL_TIMES = 2, 1, 0


def _placed(t: int, src: str, a: dict[str, object], server: int) -> tuple[int, str, bool]:
    """(time, clock, a server time later than its arrival) of one pipeline occurrence:
    its server time, else its frame's departure on the wire, else its arrival, as far
    as ``server`` allows (``reply.on_wire`` is always a wire time)."""
    if server == _ALL_TIMES:
        st = a.get("server_t_ns")
        if type(st) is int:
            return st, "server", st > t
    if server:
        wt = a.get("wire_t_ns")
        if type(wt) is int:
            return wt, "wire", False
    return t, "wire" if src == "network" else "arrival", False


def _choose(
    occs: list[Occurrence], server: int, t0: int | None
) -> tuple[int, str, int, bool] | None:
    """(time, clock, occurrences before t0, a server time later than its arrival was
    seen) of the occurrence to use: among pipeline (non-probe) occurrences of the
    best-ranked source, the earliest at or after ``t0``, else the latest one. Depends
    only on times, never on the order of the file."""
    if len(occs) == 1:  # the common case, without the loop
        t, src, a = occs[0]
        if src == PROBE:
            return None
        t, clock, bad = _placed(t, src, a, server)
        return t, clock, 0 if t0 is None or t >= t0 else 1, bad
    rank = min(_SOURCE_RANK.get(o[1], 9) for o in occs)
    before = 0
    bad = False
    best: tuple[int, str] | None = None
    latest: tuple[int, str] | None = None
    for t, src, a in occs:
        if src == PROBE or _SOURCE_RANK.get(src, 9) != rank:
            continue
        t, clock, late = _placed(t, src, a, server)
        bad = bad or late
        if t0 is None or t >= t0:
            if best is None or t < best[0]:
                best = (t, clock)
        else:
            before += 1
            if latest is None or t > latest[0]:
                latest = (t, clock)
    if best is not None:
        return best[0], best[1], before, bad
    return None if latest is None else (latest[0], latest[1], before, bad)


def _first_probe(obs: TurnObs, name: str) -> int | None:
    """The earliest probe occurrence of ``name`` (probe marks occur once per turn)."""
    occs = obs.marks.get(name)
    if not occs:
        return None
    if len(occs) == 1:  # the common case, without the loop
        o = occs[0]
        return o[0] if o[1] == PROBE else None
    best: int | None = None
    for t, src, _ in occs:
        if src == PROBE and (best is None or t < best):
            best = t
    return best


def build_ledger(events: Iterable[Event], *, mark_time: MarkTime = "auto") -> Ledger:
    """The ledger of one turn, from that turn's events (a pure function)."""
    obs: TurnObs | None = None
    for ev in events:
        if obs is None:
            obs = TurnObs(ev.session, ev.turn if ev.turn is not None else -1)
        obs.add_event(ev)
    return ledger_from_obs(obs if obs is not None else TurnObs("", -1), mark_time=mark_time)


def _pick(
    obs: TurnObs, server: int, t0: int | None, notes: list[str]
) -> tuple[dict[int, tuple[str, int, str]], dict[str, int], str | None]:
    """Each chain boundary's (mark, time, clock), the times of the other marks read, and
    the name of a mark whose server time is later than its arrival (when one is)."""
    marks = obs.marks
    picked: dict[int, tuple[str, int, str]] = {}
    bad: str | None = None
    for idx, names, probe in _PICK_ORDER:
        for name in names:
            occs = marks.get(name)
            if not occs:
                continue
            if probe:
                tp = _first_probe(obs, name)
                if tp is None:
                    continue
                picked[idx] = (name, tp, "probe")
                break
            if len(occs) == 1:
                # _choose for one occurrence, inline (the common case).
                t, src, a = occs[0]
                if src == PROBE:
                    continue
                t, clock, late = _placed(t, src, a, server)
                if late and bad is None:
                    bad = name
                # one occurrence before speech end is off the path, never noted
                picked[idx] = (name, t, clock)
                break
            got = _choose(occs, server, t0)
            if got is None:
                continue
            t, clock, before, late = got
            if late and bad is None:
                bad = name
            if before and t0 is not None and t >= t0 and name in ("endpoint", "committed"):
                notes.append(
                    f"{name} also came {before} time(s) before speech end "
                    "(the pipeline ended the turn early, then heard more speech)"
                )
            picked[idx] = (name, t, clock)
            break
    extra: dict[str, int] = {}
    for name in EXTRA_MARKS:
        occs = marks.get(name)
        if occs:
            got = _choose(occs, server, t0)
            if got is not None:
                extra[name] = got[0]
                if got[3] and bad is None:
                    bad = name
    return picked, extra, bad


def ledger_from_obs(obs: TurnObs, *, mark_time: MarkTime = "auto") -> Ledger:
    """The ledger of one turn, from its gathered observations."""
    notes: list[str] = []
    t0 = _first_probe(obs, SPEECH_END)
    t_audible = _first_probe(obs, AUDIBLE)
    picked, extra, bad = _pick(
        obs, _ALL_TIMES if mark_time != "arrival" else _ARRIVAL_TIMES, t0, notes
    )
    if bad is not None:
        # Some server time is later than its own arrival: not this host's clock.
        notes.clear()
        notes.append(
            f"{bad}: server time after its arrival, so the server clock is not this "
            "host's monotonic clock; arrival times used"
        )
        picked, extra, _ = _pick(obs, _WIRE_TIMES, t0, notes)
    times: dict[str, int] = extra
    if t0 is not None:
        times[SPEECH_END] = t0
    if t_audible is not None:
        times[AUDIBLE] = t_audible
    for name in PROBE_EXTRA_MARKS:
        tp = _first_probe(obs, name)
        if tp is not None:
            times[name] = tp
    for name, t, _ in picked.values():
        times[name] = t

    names = {v[0] for v in picked.values()}
    s2s = (
        "response.created" in names
        and "llm.request" not in names
        and not ({"tts.request", "tts.first_byte"} & names)
    )
    clocks = {c for _, _, c in picked.values() if c != "probe"}
    clock = "probe" if not clocks else clocks.pop() if len(clocks) == 1 else "mixed"

    problem: str | None = None
    if t0 is None:
        problem = "no input.speech_end mark"
    elif t_audible is None:
        problem = "no reply.audible mark (no audible reply was heard)"
    elif t_audible < t0:
        problem = (
            f"the reply was audible {_ms(t0 - t_audible)} before speech end: a late reply "
            "to an earlier turn, or the pipeline answered before the caller finished"
        )
    if problem is not None or t0 is None or t_audible is None:
        return Ledger(None, (), (), (), times, clock, s2s, tuple(notes), problem)
    t_end = t_audible

    off_path: list[OffPath] = []
    candidates: list[tuple[int, str, int, str]] = []
    for idx, (name, t, c) in picked.items():  # _pick fills it in chain order
        if s2s and idx in _S2S_SKIPPED:
            off_path.append(
                OffPath(name, t, "speech-to-speech turn: not a stage on the path to the reply")
            )
        elif t < t0:
            off_path.append(OffPath(name, t, f"{_ms(t0 - t)} before speech end"))
        elif t > t_end:
            off_path.append(OffPath(name, t, f"{_ms(t - t_end)} after the first audible sample"))
        else:
            candidates.append((idx, name, t, c))
    chain = _in_order(candidates)
    if chain is not candidates and any(c[1] in _YIELDING for c in candidates):
        chain = _yield_first(candidates)
    kept = {c[0] for c in chain} if chain is not candidates else set()
    for idx, name, t, _ in candidates if chain is not candidates else ():
        if idx not in kept:
            nxt = min(
                (c for c in chain if c[0] > idx and c[2] < t),
                key=lambda c: c[0],
                default=None,
            )
            prv = max(
                (c for c in chain if c[0] < idx and c[2] > t),
                key=lambda c: c[0],
                default=None,
            )
            if nxt is not None:
                why = f"out of order: {_ms(t - nxt[2])} after {nxt[1]}"
            elif prv is not None:
                why = f"out of order: {_ms(prv[2] - t)} before {prv[1]}"
            else:  # cannot happen: a mark left out conflicts with one kept
                why = "out of order"
            if s2s and name == "transcript.final":
                why += " (a speech-to-speech model's input transcript is a side channel)"
            off_path.append(OffPath(name, t, why))
    if len(off_path) > 1:
        off_path.sort(key=lambda o: o.t_ns)
    if "wire" in clocks and "arrival" in clocks and any(c[3] == "wire" for c in chain):
        # Stamped at the probe's end beside marks stamped where the server sent them: each
        # of these carries the downlink delay into the stage it ends.
        late = [c[1] for c in chain if c[3] == "arrival"]
        if late:
            notes.append(
                f"{', '.join(late)} at arrival (no server time, no frame found in the "
                "capture), beside marks placed where the server sent them: the downlink "
                "delay is in the stages they end"
            )

    covers = _COVERS
    if s2s:
        has_transcript = any(c[0] == 3 for c in chain)
        covers = _COVERS_S2S if has_transcript else _COVERS_S2S_NO_TRANSCRIPT
    nodes = [(0, SPEECH_END, t0, "probe"), *chain, (_N - 1, AUDIBLE, t_end, "probe")]
    segments: list[Segment] = []
    for (ia, na, ta, _), (ib, nb, tb, _) in itertools.pairwise(nodes):
        covered = covers[ia][ib]
        if len(covered) == 1:
            name = RENAMED.get(nb, covered[0])
            segments.append(_tuple_new(Segment, (name, tb - ta, na, nb, ())))
        elif (merged := _merged_name(covered, na, s2s)) is not None:
            segments.append(_tuple_new(Segment, (merged, tb - ta, na, nb, ())))
        elif tb > ta:
            segments.append(_tuple_new(Segment, (UNEXPLAINED, tb - ta, na, nb, covered)))
    chain_marks = tuple(_tuple_new(Mark, (n, t, c)) for _, n, t, c in nodes)
    return Ledger(
        t_end - t0, tuple(segments), chain_marks, tuple(off_path), times, clock, s2s, tuple(notes)
    )


def _yield_first(cands: list[tuple[int, str, int, str]]) -> list[tuple[int, str, int, str]]:
    """The in-order chain of ``cands`` where marks in ``_YIELDING`` give way: the stage
    marks are put in order first, then each yielding mark is kept only where it fits."""
    chain = _in_order([c for c in cands if c[1] not in _YIELDING])
    for c in cands:
        if c[1] not in _YIELDING:
            continue
        before = [x for x in chain if x[0] < c[0]]
        after = [x for x in chain if x[0] > c[0]]
        if all(x[2] <= c[2] for x in before) and all(c[2] <= x[2] for x in after):
            chain = [*before, c, *after]
    return chain


def _in_order(cands: list[tuple[int, str, int, str]]) -> list[tuple[int, str, int, str]]:
    """The largest subsequence of ``cands`` (sorted by chain index) whose times do not
    decrease; of equally large ones, the one that keeps the later stage at the first
    place where they differ, counting back from the reply."""
    prev = None
    for c in cands:
        if prev is not None and c[2] < prev:
            break
        prev = c[2]
    else:
        return cands  # already in order: the common case
    n = len(cands)
    latest_first = range(n - 1, -1, -1)
    for size in range(n - 1, 0, -1):
        # combinations() of the positions taken latest first yields the kept sets in
        # lexicographic order of their stages from the reply back: the first set in
        # order is the one that prefers later stages.
        for kept in itertools.combinations(latest_first, size):
            rest = [cands[i] for i in reversed(kept)]
            if all(a[2] <= b[2] for a, b in itertools.pairwise(rest)):
                return rest
    return []


def with_carrier(ledger: Ledger, queued_ns: int, fixed_ns: int = 0) -> Ledger:
    """The ledger of a turn heard through a phone carrier: the segment that ends at
    ``reply.first_byte`` (the first reply chunk put on the line, fixed delay included) is
    cut at the chunk's arrival at the carrier (``first_byte - fixed - queued``) and at
    its start of play (``first_byte - fixed``), giving ``carrier_buffer`` (``queued_ns``:
    its wait behind audio queued before it) and, where ``fixed_ns`` is not 0,
    ``fixed_delay``. Each cut is clipped to the segment, so the segments still sum
    exactly to voice-to-voice; the derived marks are ``carrier.arrival`` and
    ``carrier.playing`` (clock ``probe``: the carrier is the probe). A ledger without
    that segment is returned as it is."""
    if ledger.voice_to_voice_ns is None or queued_ns < 0 or fixed_ns < 0:
        return ledger
    idx = next((i for i, s in enumerate(ledger.segments) if s.end == "reply.first_byte"), None)
    fb = ledger.times.get("reply.first_byte")
    if idx is None or fb is None:
        return ledger
    seg = ledger.segments[idx]
    start = fb - seg.ns
    playing = max(start, fb - fixed_ns)
    arrival = max(start, min(playing, fb - fixed_ns - queued_ns))
    parts: list[Segment] = []
    if seg.name != UNEXPLAINED or arrival > start:
        parts.append(seg._replace(ns=arrival - start, end=CARRIER_ARRIVAL))
    parts.append(Segment(CARRIER_BUFFER, playing - arrival, CARRIER_ARRIVAL, CARRIER_PLAYING))
    if fixed_ns:
        parts.append(Segment(FIXED_DELAY, fb - playing, CARRIER_PLAYING, "reply.first_byte"))
    else:
        parts[-1] = parts[-1]._replace(end="reply.first_byte")
    segments = (*ledger.segments[:idx], *parts, *ledger.segments[idx + 1 :])
    marks = list(ledger.marks)
    at = next((i for i, m in enumerate(marks) if m.name == "reply.first_byte"), len(marks))
    new = [Mark(CARRIER_ARRIVAL, arrival, "probe")]
    if fixed_ns:
        new.append(Mark(CARRIER_PLAYING, playing, "probe"))
    marks[at:at] = new
    times = {**ledger.times, CARRIER_ARRIVAL: arrival, CARRIER_PLAYING: playing}
    return replace(ledger, segments=segments, marks=tuple(marks), times=times)
