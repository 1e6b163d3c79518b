"""Put framework telemetry on the probe's clock and on its sessions and turns.

Framework telemetry is stamped with the framework host's wall clock; a probe trace is on
the probe's monotonic clock, with (wall, monotonic) anchors taken at its start and end.
The anchors map one onto the other (:class:`~voiceaudit.clock.ClockMap`, drift included).
That is exact when the framework runs on the probe's host. When it runs elsewhere its
wall clock may be off; the *residual* offset is then estimated from causality:

- whatever the server did in reply to a turn (model request, synthesis start) happened
  after the frame carrying the caller's last speech sample left the probe, and
- what it produced before the reply (synthesis start, first synthesized byte) happened
  before the first reply byte reached the probe.

Each matched turn bounds the offset from both sides; the bounds are intersected. If zero
is inside them the anchors are trusted as they are (residual 0, and the interval says
how large an error would still go unnoticed). Otherwise the turns are matched by order
instead of by time, the offset is set to the middle of the feasible interval, and turns
are matched by time again with it.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from voiceaudit.clock import NS_PER_MS, NS_PER_S
from voiceaudit.imports.base import Telemetry
from voiceaudit.model import Event, Span
from voiceaudit.trace_io import Trace

#: beyond this the telemetry is probably from another run; say so
SUSPICIOUS_OFFSET_NS = 60 * NS_PER_S


@dataclass(frozen=True, slots=True)
class HeardTurn:
    """What the probe observed of one turn (monotonic ns; None when it did not happen)."""

    session: str
    turn: int
    start_ns: int
    speech_end_ns: int | None
    speech_end_sent_ns: int | None
    first_byte_ns: int | None
    audible_ns: int | None
    voice_to_voice_ns: int | None
    ok: bool
    warmup: bool


def heard_turns(trace: Trace) -> list[HeardTurn]:
    """Every turn of the trace that started, in (session, turn) order."""
    acc: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in trace.events:
        if ev.source != "probe" or ev.turn is None:
            continue
        d = acc.setdefault((ev.session, ev.turn), {})
        name = ev.name
        if name == "turn.start":
            d["start"] = ev.t_ns
            d["warmup"] = bool(ev.attrs.get("warmup", False))
        elif name == "input.speech_end":
            d["speech_end"] = ev.t_ns
        elif name == "input.speech_end_sent":
            d["speech_end_sent"] = ev.t_ns
        elif name == "reply.first_byte":
            d.setdefault("first_byte", ev.t_ns)
        elif name == "reply.audible":
            d.setdefault("audible", ev.t_ns)
        elif name == "turn.end":
            d["ok"] = bool(ev.attrs.get("ok", False))
            v = ev.attrs.get("voice_to_voice_ns")
            if isinstance(v, int) and not isinstance(v, bool):
                d["v2v"] = v
            d.setdefault("warmup", bool(ev.attrs.get("warmup", False)))
    out = []
    for (session, turn), d in sorted(acc.items()):
        if "start" not in d:
            continue
        v2v = d.get("v2v")
        if v2v is None and d.get("ok") and "audible" in d and "speech_end" in d:
            v2v = d["audible"] - d["speech_end"]
        out.append(
            HeardTurn(
                session=session,
                turn=turn,
                start_ns=d["start"],
                speech_end_ns=d.get("speech_end"),
                speech_end_sent_ns=d.get("speech_end_sent", d.get("speech_end")),
                first_byte_ns=d.get("first_byte"),
                audible_ns=d.get("audible"),
                voice_to_voice_ns=v2v if d.get("ok", False) else None,
                ok=bool(d.get("ok", False)),
                warmup=bool(d.get("warmup", False)),
            )
        )
    return out


@dataclass(frozen=True)
class ClockAlignment:
    """How framework wall-clock times were put on the probe's monotonic clock."""

    #: "anchors" (residual 0: the anchors are trusted), "corrected" (a residual offset was
    #: estimated and applied), "inconsistent" (no offset satisfies every turn; best effort),
    #: "forced" (the user gave the offset), "unchecked" (no turn gave a bound)
    status: str
    residual_ns: int
    #: the feasible interval for the residual offset (None: unbounded on that side)
    lower_ns: int | None
    upper_ns: int | None
    drift_ppm: float
    anchor_uncertainty_ns: int
    turns_used: int
    matched_by: str  # "time" or "order"
    #: turns ("session/turn") whose framework events fall outside the chosen offset
    violations: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "residual_ns": self.residual_ns,
            "lower_ns": self.lower_ns,
            "upper_ns": self.upper_ns,
            "drift_ppm": round(self.drift_ppm, 3),
            "anchor_uncertainty_ns": self.anchor_uncertainty_ns,
            "turns_used": self.turns_used,
            "matched_by": self.matched_by,
            "violations": list(self.violations),
        }

    def describe(self) -> str:
        def ms(v: int | None) -> str:
            return "…" if v is None else f"{v / NS_PER_MS:+.1f}"

        window = f"[{ms(self.lower_ns)}, {ms(self.upper_ns)}] ms"
        n = f"{self.turns_used} turn{'s' if self.turns_used != 1 else ''}"
        if self.status == "anchors":
            text = (
                "framework clock mapped through the trace's anchors; residual offset 0 ms "
                f"(the turns allow {window}, from {n})"
            )
            if self.violations:
                text += f"; not consistent with turn(s) {', '.join(self.violations)}"
            return text
        if self.status == "corrected":
            return (
                f"framework clock is off: residual offset {self.residual_ns / NS_PER_MS:+.1f} ms "
                f"applied (feasible {window}, from {n}, matched by {self.matched_by})"
            )
        if self.status == "forced":
            return (
                f"residual offset {self.residual_ns / NS_PER_MS:+.1f} ms applied as given "
                f"(the turns allow {window}, from {n})"
            )
        if self.status == "inconsistent":
            return (
                f"framework clock cannot be reconciled with every turn; best-effort residual "
                f"offset {self.residual_ns / NS_PER_MS:+.1f} ms ({window}, from {n})"
            )
        return "framework clock mapped through the trace's anchors; no turn to check it against"


@dataclass(frozen=True)
class AssignedMeasure:
    """A framework number, placed on a probe (session, turn) when one matched."""

    framework: str
    session: str
    turn: int | None
    metric: str
    value_ns: int
    label: str
    t_ns: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field, by name."""
        return asdict(self)


@dataclass
class Placement:
    """Where everything went: sessions, exchange → turn, and the clock."""

    sessions: dict[str, str] = field(default_factory=dict)
    #: (conversation, exchange index) -> probe turn
    turns: dict[tuple[str, int], int] = field(default_factory=dict)
    residual_ns: int = 0


def exchange_of(tel: Telemetry, conv: str, anchor: int, group: str | None) -> int | None:
    """Index of the reply an item belongs to: its group's reply, else the next reply."""
    replies = tel.replies.get(conv, [])
    if not replies:
        return None
    if group is not None:
        hits = [i for i, (_, g) in enumerate(replies) if g == group]
        if len(hits) == 1:
            return hits[0]
    times = [t for t, _ in replies]
    return bisect.bisect_left(times, anchor)


class Aligner:
    """Maps one :class:`Telemetry` onto one trace."""

    def __init__(self, tel: Telemetry, trace: Trace) -> None:
        self.tel = tel
        self.trace = trace
        self.map = trace.clock_map()
        self.heard = heard_turns(trace)
        self.by_session: dict[str, list[HeardTurn]] = {}
        for h in self.heard:
            self.by_session.setdefault(h.session, []).append(h)
        self.session_span = self._session_spans()
        self.warnings: list[str] = []
        self.loopback = is_loopback(trace.header.target.get("url"))

    def mono(self, wall_ns: int) -> int:
        return self.map.wall_to_mono(wall_ns)

    def _session_spans(self) -> dict[str, tuple[int, int]]:
        spans: dict[str, tuple[int, int]] = {}
        for ev in self.trace.events:
            lo, hi = spans.get(ev.session, (ev.t_ns, ev.t_ns))
            spans[ev.session] = (min(lo, ev.t_ns), max(hi, ev.t_ns))
        return spans

    # -- sessions -------------------------------------------------------------------------

    def _conv_extent(self, conv: str, residual: int) -> tuple[int, int] | None:
        ts = [
            t for it in self.tel.items if it.conversation == conv for t in (it.start_ns, it.end_ns)
        ]
        if not ts:
            return None
        return self.mono(min(ts)) + residual, self.mono(max(ts)) + residual

    def match_sessions(self, residual: int, by_order: bool) -> dict[str, str]:
        convs = [c for c in self.tel.conversations if self._conv_extent(c, 0) is not None]
        sessions = [s for s in self.by_session]
        if not convs or not sessions:
            return {}
        if len(convs) == 1 and len(sessions) == 1:
            return {convs[0]: sessions[0]}
        if by_order:
            convs.sort(key=lambda c: self._conv_extent(c, 0) or (0, 0))
            sessions.sort(key=lambda s: self.session_span[s][0])
            return dict(zip(convs, sessions, strict=False))
        out: dict[str, str] = {}
        taken: set[str] = set()
        scored = []
        for c in convs:
            ext = self._conv_extent(c, residual)
            assert ext is not None
            for s in sessions:
                lo, hi = self.session_span[s]
                overlap = min(ext[1], hi) - max(ext[0], lo)
                if overlap > 0:
                    scored.append((overlap, c, s))
        for _, c, s in sorted(scored, reverse=True):
            if c not in out and s not in taken:
                out[c] = s
                taken.add(s)
        return out

    # -- turns ------------------------------------------------------------------------------

    def turn_at(self, session: str, t_mono: int) -> int | None:
        turns = self.by_session.get(session, [])
        starts = [h.start_ns for h in turns]
        i = bisect.bisect_right(starts, t_mono) - 1
        return turns[i].turn if i >= 0 else None

    def answered_turn(self, session: str, t_mono: int) -> int | None:
        """The turn a reply begun at ``t_mono`` answers: the last one whose speech had
        ended by then (a reply cannot answer speech still to come)."""
        turns = self.by_session.get(session, [])
        done = [h for h in turns if h.speech_end_sent_ns is not None]
        ends = [h.speech_end_sent_ns for h in done if h.speech_end_sent_ns is not None]
        i = bisect.bisect_right(ends, t_mono) - 1
        if i >= 0:
            return done[i].turn
        return self.turn_at(session, t_mono)

    def match_turns(
        self, sessions: dict[str, str], residual: int, by_order: bool
    ) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for conv, session in sessions.items():
            replies = self.tel.replies.get(conv, [])
            if by_order:
                answered = [h for h in self.by_session.get(session, []) if h.first_byte_ns]
                for k, h in enumerate(answered[: len(replies)]):
                    out[(conv, k)] = h.turn
                continue
            for k, (t, _) in enumerate(replies):
                turn = self.answered_turn(session, self.mono(t) + residual)
                if turn is not None:
                    out[(conv, k)] = turn
        return out

    # -- the offset ------------------------------------------------------------------------

    def intervals(
        self, sessions: dict[str, str], turns: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], tuple[int | None, int | None]]:
        """Per probe turn, the residual offsets its framework events allow."""
        heard = {(h.session, h.turn): h for h in self.heard}
        out: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        for c in self.tel.constraints:
            session = sessions.get(c.conversation)
            if session is None:
                continue
            k = exchange_of(self.tel, c.conversation, c.anchor, None)
            if k is None or (c.conversation, k) not in turns:
                continue
            h = heard.get((session, turns[(c.conversation, k)]))
            if h is None:
                continue
            lo, hi = out.get((h.session, h.turn), (None, None))
            t = self.mono(c.t_ns)
            if c.kind == "after_speech_end" and h.speech_end_sent_ns is not None:
                b = h.speech_end_sent_ns - t
                lo = b if lo is None else max(lo, b)
            elif c.kind == "before_reply" and h.first_byte_ns is not None:
                b = h.first_byte_ns - t
                hi = b if hi is None else min(hi, b)
            else:
                continue
            out[(h.session, h.turn)] = (lo, hi)
        return out

    def solve(self, clock: str | int = "auto") -> tuple[Placement, ClockAlignment]:
        """Place the telemetry. ``clock``: ``auto`` (estimate a residual offset, except on
        loopback), ``anchors`` (trust the anchors), or a residual offset in ns to apply."""
        drift = self.map.drift_ppm
        unc = max((a.uncertainty_ns for a in self.map.anchors), default=0)

        def result(
            residual: int, status: str, by: str, sessions: dict[str, str]
        ) -> tuple[Placement, ClockAlignment]:
            turns = self.match_turns(sessions, residual, by_order=False)
            iv = self.intervals(sessions, turns)
            lo, hi = _intersect(v for v in iv.values() if _inside(residual, *v))
            bad = [
                f"{s}/{t}" for (s, t), (a, b) in sorted(iv.items()) if not _inside(residual, a, b)
            ]
            if bad and status != "inconsistent":
                self.warnings.append(
                    "framework events fall outside the turn they answer at the chosen clock "
                    f"offset in turn{'s' if len(bad) > 1 else ''} {', '.join(bad)} (a reply "
                    "that started after audio was already arriving, e.g. the rest of an "
                    "earlier reply)"
                )
            if status in ("anchors", "unchecked") and not iv:
                status = "unchecked"
            return (
                Placement(sessions, turns, residual),
                ClockAlignment(status, residual, lo, hi, drift, unc, len(iv), by, tuple(bad)),
            )

        if isinstance(clock, int) and not isinstance(clock, bool):
            sessions = self.match_sessions(clock, by_order=False) or self.match_sessions(
                clock, by_order=True
            )
            return result(clock, "forced", "time", sessions)
        sessions = self.match_sessions(0, by_order=False)
        if clock == "anchors" or self.loopback:
            # Same host, same wall clock: the anchors are exact; violations are attribution
            # problems (overlapping replies), not clock error.
            return result(0, "anchors", "time", sessions)
        turns = self.match_turns(sessions, 0, by_order=False)
        iv = self.intervals(sessions, turns)
        best, covered, _, _ = _best_point(iv.values())
        if not iv or _count(0, iv.values()) >= covered:
            return result(0, "anchors", "time", sessions)
        # The anchors put the framework's events outside the turns they answer: match by
        # order, estimate the offset, then match by time with it.
        sessions_o = self.match_sessions(0, by_order=True)
        turns_o = self.match_turns(sessions_o, 0, by_order=True)
        iv_o = self.intervals(sessions_o, turns_o)
        cand, covered_o, _, _ = _best_point(iv_o.values())
        if cand is None or covered_o <= _count(0, iv.values()):
            cand = best
        if cand is None:
            return result(0, "unchecked", "time", sessions)
        sessions2 = self.match_sessions(cand, by_order=False) or sessions_o
        turns2 = self.match_turns(sessions2, cand, by_order=False)
        iv2 = self.intervals(sessions2, turns2)
        refined, covered2, _, _ = _best_point(iv2.values())
        if refined is not None and covered2 > _count(cand, iv2.values()):
            cand = refined
        ok = _count(cand, iv2.values()) == len(iv2)
        if abs(cand) > SUSPICIOUS_OFFSET_NS:
            self.warnings.append(
                f"the framework clock differs from the trace's by {cand / NS_PER_S:+.1f} s: "
                "is this telemetry from the same run?"
            )
        if not ok:
            self.warnings.append(
                "no single clock offset puts every framework event inside the turn it answers; "
                "the framework-vs-heard figures that depend on alignment are approximate"
            )
        return result(cand, "corrected" if ok else "inconsistent", "order", sessions2)


def _inside(x: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or lo <= x) and (hi is None or x <= hi)


def _count(x: int, intervals: Iterable[tuple[int | None, int | None]]) -> int:
    return sum(1 for lo, hi in intervals if _inside(x, lo, hi))


def _intersect(
    intervals: Iterable[tuple[int | None, int | None]],
) -> tuple[int | None, int | None]:
    lo: int | None = None
    hi: int | None = None
    for a, b in intervals:
        if a is not None:
            lo = a if lo is None else max(lo, a)
        if b is not None:
            hi = b if hi is None else min(hi, b)
    return lo, hi


def _best_point(
    intervals: Iterable[tuple[int | None, int | None]],
) -> tuple[int | None, int, int | None, int | None]:
    """The middle of the region covered by the most intervals: (point, count, lo, hi)."""
    ivs = list(intervals)
    if not ivs:
        return None, 0, None, None
    edges = sorted({e for a, b in ivs for e in (a, b) if e is not None})
    if not edges:
        return 0, len(ivs), None, None
    # candidate regions: each edge, and the gaps between/around edges
    best: tuple[int, int | None, int | None] | None = None
    probes: list[tuple[int | None, int | None]] = [(None, edges[0])]
    probes += [(e, e) for e in edges]
    probes += list(itertools.pairwise(edges))
    probes += [(edges[-1], None)]
    for lo, hi in probes:
        x = _middle(lo, hi)
        assert x is not None
        n = _count(x, ivs)
        if best is None or n > best[0]:
            best = (n, lo, hi)
    assert best is not None
    n, lo, hi = best
    # widen to the whole region with that coverage
    lo2, hi2 = _intersect([iv for iv in ivs if _inside(_middle(lo, hi) or 0, *iv)])
    return _middle(lo2, hi2), n, lo2, hi2


def is_loopback(url: Any) -> bool:
    """Whether a target URL points at this host (then its wall clock is the probe's)."""
    if not isinstance(url, str):
        return False
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _middle(lo: int | None, hi: int | None) -> int | None:
    if lo is not None and hi is not None:
        return (lo + hi) // 2
    if lo is not None:
        return lo
    if hi is not None:
        return hi
    return None


def place(
    tel: Telemetry, trace: Trace | None, clock: str | int = "auto"
) -> tuple[
    list[Span], list[Event], list[AssignedMeasure], ClockAlignment | None, list[str], dict[str, str]
]:
    """Build the output records; with a trace, on its clock and its sessions/turns."""
    warnings: list[str] = []
    labels = _conversation_labels(tel)
    if trace is None:
        return (*_unplaced(tel, labels), None, warnings, {v: v for v in labels.values()})
    aligner = Aligner(tel, trace)
    placement, alignment = aligner.solve(clock)
    warnings.extend(aligner.warnings)
    res = placement.residual_ns
    sessions = {c: placement.sessions.get(c, labels[c]) for c in tel.conversations}
    for c in tel.conversations:
        if c not in placement.sessions:
            warnings.append(
                f"framework conversation {labels[c]} matches no session of the trace "
                "(no overlap in time)"
            )

    def where(conv: str, anchor: int, group: str | None) -> tuple[str, int | None]:
        session = sessions[conv]
        if conv not in placement.sessions:
            return session, None
        k = exchange_of(tel, conv, anchor, group)
        if k is not None and (conv, k) in placement.turns:
            return session, placement.turns[(conv, k)]
        return session, aligner.turn_at(session, aligner.mono(anchor) + res)

    spans, events, measures = _records(tel, lambda t: aligner.mono(t) + res, where)
    return spans, events, measures, alignment, warnings, {labels[c]: sessions[c] for c in sessions}


def _conversation_labels(tel: Telemetry) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, (c, facts) in enumerate(tel.conversations.items()):
        cid = facts.get("conversation_id") or facts.get("session_id")
        out[c] = (
            f"{tel.framework}:{cid}" if isinstance(cid, str) and cid else f"{tel.framework}:{i}"
        )
    return out


def _records(
    tel: Telemetry,
    clock: Callable[[int], int],
    where: Callable[[str, int, str | None], tuple[str, int | None]],
) -> tuple[list[Span], list[Event], list[AssignedMeasure]]:
    """The output records: times through ``clock``, (session, turn) from ``where``."""
    spans: list[Span] = []
    events: list[Event] = []
    for it in tel.items:
        session, turn = where(it.conversation, it.anchor_ns, it.group)
        if not it.per_turn:
            turn = None
        if it.kind == "span":
            start, end = clock(it.start_ns), clock(it.end_ns)
            spans.append(
                Span(session, turn, start, max(start, end), "import", it.stage, it.name, it.attrs)
            )
        else:
            events.append(
                Event(session, turn, clock(it.start_ns), "import", it.stage, it.name, it.attrs)
            )
    spans.sort(key=lambda s: (s.start_ns, s.end_ns))
    events.sort(key=lambda e: e.t_ns)
    measures = [
        AssignedMeasure(
            m.framework,
            *where(m.conversation, m.anchor_ns, m.group),
            m.metric,
            m.value_ns,
            m.label,
            clock(m.anchor_ns),
            m.note,
        )
        for m in tel.measures
    ]
    return spans, events, measures


def _unplaced(
    tel: Telemetry, labels: dict[str, str]
) -> tuple[list[Span], list[Event], list[AssignedMeasure]]:
    """No trace: framework wall-clock times; turns are the framework's replies, in order."""

    def where(conv: str, anchor: int, group: str | None) -> tuple[str, int | None]:
        return labels[conv], exchange_of(tel, conv, anchor, group)

    return _records(tel, lambda t: t, where)
