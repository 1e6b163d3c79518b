"""Per-turn observations: what a trace says about each turn, gathered in one pass.

The analysis never looks at raw records twice. Events are grouped per (session, turn)
into a :class:`TurnObs` (marks by name with every occurrence, reply chunks, underruns);
session-level events (``turn`` null: connection setup and teardown) go to a per-session
list. Both the public path (a :class:`~voiceaudit.trace_io.Trace` of
:class:`~voiceaudit.model.Event` objects) and the fast path (:func:`collect_file`, which
streams decoded records without building objects) feed the same :meth:`TurnObs.add`, so
they give identical results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from voiceaudit.model import Event, Header, Span
from voiceaudit.trace_io import Trace, TraceInfo, scan_trace

PROBE = "probe"

#: Events the analysis does not use and the fast path does not decode (see
#: :func:`voiceaudit.trace_io.scan_trace`). The frame carrying the last speech sample is
#: also recorded as ``input.speech_end_sent``, which is all the ledger needs.
SKIPPED_BY_DEFAULT: frozenset[str] = frozenset({"input.frame", "input.frames"})


#: One occurrence of a named event in a turn: (t_ns, source, attrs). A plain tuple, not
#: a NamedTuple: a long trace holds millions and building a NamedTuple costs ten times more.
Occurrence = tuple[int, str, dict[str, Any]]


class ReplyChunk(NamedTuple):
    """One piece of reply audio arriving at the probe (a ``reply.chunk`` event, or one
    element of a ``reply.chunks`` event)."""

    t_ns: int
    samples: int | None
    bytes: int | None
    wire_bytes: int | None
    offset: int | None
    rate: int | None
    peak: float | None


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _num(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _batch(t_ns: int, a: dict[str, Any], offset: int) -> list[ReplyChunk]:
    """The chunks of one ``reply.chunks`` event (its arrays were checked by the reader)."""
    dt, samples, nbytes = a["dt_ns"], a["samples"], a["bytes"]
    wire = a.get("wire_bytes") or [None] * len(dt)
    peak = a.get("peak") or [None] * len(dt)
    rate = a["rate"]
    out = []
    for i, d in enumerate(dt):
        p = peak[i]
        out.append(
            ReplyChunk(
                t_ns + d,
                samples[i],
                nbytes[i],
                wire[i],
                offset,
                rate,
                None if p is None else float(p),
            )
        )
        offset += samples[i]
    return out


#: The probe event that closes a turn.
TURN_END = "turn.end"

#: Event names :meth:`TurnObs.add` does not file as plain marks (so do ``http.*`` names),
#: and ``turn.end``, which :func:`collect_file` watches for.
SPECIAL: frozenset[str] = frozenset(
    {"reply.chunks", "reply.chunk", "input.frames", "input.frame", "reply.underrun", TURN_END}
)


class TurnObs:
    """Everything recorded about one turn (mutable while gathering, read-only after)."""

    __slots__ = (
        "_chunks",
        "batches",
        "frames",
        "marks",
        "raw_chunks",
        "seq",
        "session",
        "spans",
        "turn",
        "underruns",
    )

    def __init__(self, session: str, turn: int, seq: int = 0) -> None:
        self.session = session
        self.turn = turn
        #: order of first appearance in the trace (reports list turns in this order)
        self.seq = seq
        #: every other event, by name (cascade hops as ``<stage>:<name>``), in file order
        self.marks: dict[str, list[Occurrence]] = {}
        #: (t_ns, attrs) of each reply.chunk event (schema version 1), in file order
        self.raw_chunks: list[tuple[int, dict[str, Any]]] = []
        #: (t_ns, attrs) of each reply.chunks event (schema version 2: arrays), in file order
        self.batches: list[tuple[int, dict[str, Any]]] = []
        self._chunks: list[ReplyChunk] | None = None
        #: (start ns, gap ns) of each reply.underrun
        self.underruns: list[tuple[int, int]] = []
        #: input frames seen (0 when the fast path skipped their events)
        self.frames = 0
        self.spans: list[Span] = []

    def add(self, name: str, source: str, stage: str, t_ns: int, attrs: dict[str, Any]) -> None:
        """Record one event of this turn (names not in :data:`SPECIAL` are plain marks)."""
        if name == "reply.chunks":
            self.batches.append((t_ns, attrs))
            self._chunks = None
            return
        if name == "reply.chunk":
            self.raw_chunks.append((t_ns, attrs))
            self._chunks = None
            return
        if name == "input.frames":
            self.frames += len(attrs["dt_ns"])
            return
        if name == "input.frame":
            self.frames += 1
            return
        if name == "reply.underrun":
            gap = attrs.get("gap_ns")
            if type(gap) is int and gap >= 0:
                self.underruns.append((t_ns, gap))
            return
        if name[:5] == "http.":
            name = f"{stage}:{name}"
        lst = self.marks.get(name)
        if lst is None:
            self.marks[name] = [(t_ns, source, attrs)]
        else:
            lst.append((t_ns, source, attrs))

    @property
    def chunk_count(self) -> int:
        """How many reply chunks the turn has (without building them)."""
        return len(self.raw_chunks) + sum(len(a["dt_ns"]) for _, a in self.batches)

    @property
    def chunks(self) -> list[ReplyChunk]:
        """The reply chunks, in arrival order (built on first use).

        Chunks of a ``reply.chunks`` event take their ``offset`` from the event's
        ``offset`` (0 when absent) plus the samples of the chunks before them in it.
        """
        if self._chunks is None:
            out = [
                ReplyChunk(
                    t,
                    _int(a.get("samples")),
                    _int(a.get("bytes")),
                    _int(a.get("wire_bytes")),
                    _int(a.get("offset")),
                    _int(a.get("rate")),
                    _num(a.get("peak")),
                )
                for t, a in self.raw_chunks
            ]
            for t, a in self.batches:
                out += _batch(t, a, a.get("offset", 0))
            out.sort(key=lambda c: c.t_ns)
            self._chunks = out
        return self._chunks

    def first_chunk(self) -> ReplyChunk | None:
        """The earliest reply chunk, found without building them all when possible."""
        if self._chunks is not None or self.raw_chunks or len(self.batches) != 1:
            chunks = self.chunks
            return chunks[0] if chunks else None
        t, a = self.batches[0]
        dt = a["dt_ns"]
        if not dt:
            return None
        i = dt.index(min(dt))
        peak = a.get("peak")
        wire = a.get("wire_bytes")
        p = None if peak is None else peak[i]
        return ReplyChunk(
            t + dt[i],
            a["samples"][i],
            a["bytes"][i],
            None if wire is None else wire[i],
            a.get("offset", 0) + sum(a["samples"][:i]),
            a["rate"],
            None if p is None else float(p),
        )

    def audio_and_wire_bytes(self) -> tuple[int, int]:
        """Total audio bytes and wire bytes of the reply chunks that record both."""
        audio = wire = 0
        for _, a in self.raw_chunks:
            b, w = a.get("bytes"), a.get("wire_bytes")
            if type(b) is int and type(w) is int:
                audio += b
                wire += w
        for _, a in self.batches:
            ws = a.get("wire_bytes")
            if ws is None:
                continue
            if None in ws:
                pairs = [(b, w) for b, w in zip(a["bytes"], ws, strict=True) if w is not None]
                audio += sum(b for b, _ in pairs)
                wire += sum(w for _, w in pairs)
            else:
                audio += sum(a["bytes"])
                wire += sum(ws)
        return audio, wire

    def add_event(self, ev: Event) -> None:
        self.add(ev.name, ev.source, ev.stage, ev.t_ns, ev.attrs)

    # -- convenience ---------------------------------------------------------------------

    def first(self, name: str, source: str | None = None) -> Occurrence | None:
        """The first occurrence of ``name`` (from ``source`` when given)."""
        for occ in self.marks.get(name, ()):
            if source is None or occ[1] == source:
                return occ
        return None

    def attrs(self, name: str) -> dict[str, Any]:
        """The attributes of the first occurrence of ``name`` (empty when absent)."""
        lst = self.marks.get(name)
        return lst[0][2] if lst else {}

    @property
    def finished(self) -> bool:
        return self.first("turn.end", PROBE) is not None

    def events(self) -> list[tuple[str, int, str]]:
        """(name, t_ns, source) of every mark, chunk and underrun, in time order."""
        out = [(name, o[0], o[1]) for name, occs in self.marks.items() for o in occs]
        out += [("reply.chunk", c.t_ns, PROBE) for c in self.chunks]
        out += [("reply.underrun", t, PROBE) for t, _ in self.underruns]
        out.sort(key=lambda e: e[1])
        return out


@dataclass
class SessionObs:
    """Session-level events (``turn`` null) of one session: connection setup and the like."""

    session: str
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


@dataclass
class Collected:
    """The turns and sessions of one trace (or of several, keyed apart by the caller)."""

    turns: dict[tuple[str, int], TurnObs] = field(default_factory=dict)
    sessions: dict[str, SessionObs] = field(default_factory=dict)
    #: why turns handed over early may be incomplete (see :func:`collect_file`)
    disorder: str | None = None

    def turn(self, session: str, turn: int) -> TurnObs:
        key = (session, turn)
        obs = self.turns.get(key)
        if obs is None:
            obs = self.turns[key] = TurnObs(session, turn, len(self.turns))
        return obs

    def session(self, session: str) -> SessionObs:
        s = self.sessions.get(session)
        if s is None:
            s = self.sessions[session] = SessionObs(session)
        return s

    def add_span(self, sp: Span) -> None:
        if sp.turn is None:
            self.session(sp.session).spans.append(sp)
        else:
            self.turn(sp.session, sp.turn).spans.append(sp)


def collect_events(events: Iterable[Event], spans: Iterable[Span] = ()) -> Collected:
    """Group events (and spans) into turns and sessions."""
    c = Collected()
    for ev in events:
        if ev.turn is None:
            c.session(ev.session).events.append((ev.name, ev.t_ns, ev.attrs))
        else:
            c.turn(ev.session, ev.turn).add(ev.name, ev.source, ev.stage, ev.t_ns, ev.attrs)
    for sp in spans:
        c.add_span(sp)
    return c


def collect_trace(trace: Trace) -> Collected:
    """Group the events of a trace read with :func:`~voiceaudit.trace_io.read_trace`."""
    return collect_events(trace.events, trace.spans)


#: Called with each finished turn (and its session's records so far) as soon as its
#: ``turn.end`` is read; see :func:`collect_file`.
OnFinished = Callable[[TurnObs, "SessionObs | None"], None]


def collect_file(
    path: str | os.PathLike[str],
    *,
    skip: Iterable[str] = SKIPPED_BY_DEFAULT,
    on_finished: OnFinished | None = None,
    on_header: Callable[[Header], None] | None = None,
) -> tuple[TraceInfo, Collected]:
    """The fast path: stream a trace file straight into turns (see module doc).

    With ``on_finished``, a turn is handed over as soon as its probe ``turn.end`` is read
    and forgotten (memory stays flat however long the trace). That is exact when nothing
    read later could change what is known about the turn, which holds for traces the
    probe writes: a turn's records end with its ``turn.end``, and session-level records
    come in time order. When a later record could matter (a record of a turn already
    handed over; a session-level record from before the end of such a turn's window,
    or the ``.connected`` of a connection started before it, which
    :func:`~voiceaudit.analysis.findings.connection_setup` pairs), the reason is in
    :attr:`Collected.disorder` and the caller must read the file again without
    ``on_finished``. ``Collected.turns`` then holds the unfinished turns only.
    ``on_header`` receives the header before any turn is handed over.
    """
    c = Collected()
    turns = c.turns
    last_obs: TurnObs | None = None
    special = SPECIAL
    streaming = on_finished is not None
    #: turns handed over: key -> nothing; per session, the latest end of their windows
    handed: dict[tuple[str, int], None] = {}
    window_end: dict[str, int] = {}
    seq = 0

    def late_session_record(session: str, name: str, t_ns: int, span: bool) -> None:
        end = window_end.get(session)
        if end is None or c.disorder is not None:
            return
        late = t_ns < end
        if not late and not span and name.endswith(".connected"):
            start = name[: -len("connected")] + "connect_start"
            so = c.sessions.get(session)
            late = so is not None and any(n == start and t < end for n, t, _ in so.events)
        if late:
            c.disorder = f"a session-level {name} read after a turn it may concern"

    def hand_over(obs: TurnObs) -> None:
        nonlocal last_obs
        key = (obs.session, obs.turn)
        del turns[key]
        handed[key] = None
        last_obs = None
        audible = obs.first("reply.audible", PROBE)
        if audible is not None:
            window_end[obs.session] = max(window_end.get(obs.session, audible[0]), audible[0])
        assert on_finished is not None
        on_finished(obs, c.sessions.get(obs.session))

    def on_event(
        session: str,
        turn: int | None,
        t_ns: int,
        source: str,
        stage: str,
        name: str,
        attrs: dict[str, Any],
    ) -> None:
        nonlocal last_obs, seq
        if turn is None:
            if streaming:
                late_session_record(session, name, t_ns, False)
            c.session(session).events.append((name, t_ns, attrs))
            return
        # Consecutive events mostly belong to the same turn: skip building the key then.
        obs = last_obs
        if obs is None or obs.turn != turn or obs.session != session:
            key = (session, turn)
            obs = turns.get(key)
            if obs is None:
                if key in handed and c.disorder is None:
                    c.disorder = f"a record of turn {turn} of session {session} after its turn.end"
                obs = turns[key] = TurnObs(session, turn, seq)
                seq += 1
            last_obs = obs
        if name in special or name[:5] == "http.":
            obs.add(name, source, stage, t_ns, attrs)
            if streaming and name == TURN_END and source == PROBE and c.disorder is None:
                hand_over(obs)
            return
        # TurnObs.add for a plain mark, inline: this runs for most lines of a trace.
        marks = obs.marks
        lst = marks.get(name)
        if lst is None:
            marks[name] = [(t_ns, source, attrs)]
        else:
            lst.append((t_ns, source, attrs))

    def add_span(sp: Span) -> None:
        nonlocal seq
        if streaming and sp.turn is None:
            late_session_record(sp.session, sp.name, sp.start_ns, True)
        elif streaming and (sp.session, sp.turn) in handed and c.disorder is None:
            c.disorder = f"a span of turn {sp.turn} of session {sp.session} after its turn.end"
        if sp.turn is not None and (sp.session, sp.turn) not in turns:
            turns[(sp.session, sp.turn)] = TurnObs(sp.session, sp.turn, seq)
            seq += 1
        c.add_span(sp)

    info = scan_trace(path, on_event, skip=skip, on_span=add_span, on_header=on_header)
    return info, c
