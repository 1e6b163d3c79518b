"""Build a report: per-turn ledgers and findings, statistics, aggregated findings.

``build_report`` is the library entry point (the CLI, the gate and the exports call it);
``Report.to_dict()`` / ``Report.to_json()`` give the ``voiceaudit.report/1`` document
described in docs/report-format.md.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from voiceaudit import __version__
from voiceaudit.analysis.findings import (
    ALL_KINDS,
    ALL_TURN_KINDS,
    DRIFT_KINDS,
    GREETING_KINDS,
    Finding,
    FindingRules,
    TurnContext,
    detect,
    detect_turn_taking,
    drift_finding,
    greeting_findings,
    phone_findings,
    probe_lateness,
)
from voiceaudit.analysis.ledger import (
    ALL_SEGMENTS,
    UNEXPLAINED,
    Ledger,
    MarkTime,
    TurnWire,
    ledger_from_obs,
    place_on_wire,
    with_carrier,
)
from voiceaudit.analysis.phone import (
    Greeting,
    PhoneSummary,
    PhoneTurn,
    dtmf_digit,
    path_declared,
    summarize_phone,
    target_path,
)
from voiceaudit.analysis.stats import Summary, summarize
from voiceaudit.analysis.turns import PROBE as PROBE_SOURCE
from voiceaudit.analysis.turns import (
    SKIPPED_BY_DEFAULT,
    Collected,
    OnFinished,
    SessionObs,
    TurnObs,
    collect_file,
    collect_trace,
)
from voiceaudit.analysis.turntaking import TurnTaking, TurnTakingSummary, summarize_turn_taking
from voiceaudit.errors import NoDataError, UsageError
from voiceaudit.failures import FAILURE_KINDS, FAILURE_LABELS, failure_kind
from voiceaudit.model import Header
from voiceaudit.pacing_stats import BROKE_NS, P99_GOAL_NS, PacingHistogram
from voiceaudit.trace_io import Trace, TraceInfo, find_traces

if TYPE_CHECKING:  # the gate imports this module: its types come in lazily
    from voiceaudit.analysis.concurrency import ConcurrencyView
    from voiceaudit.analysis.drift import DriftView
    from voiceaudit.analysis.significance import Increase


def _default_knee_margin() -> Increase:
    from voiceaudit.analysis.concurrency import DEFAULT_MARGIN

    return DEFAULT_MARGIN


REPORT_SCHEMA = "voiceaudit.report/1"
VOICE_TO_VOICE = "voice_to_voice"
#: The share of measured turns that failed, as ``report A B`` and the gate name it; one
#: kind's share is ``failures.KIND`` (see :data:`FAILURE_METRICS`).
FAILURES = "failures"
FAILURE_METRICS: tuple[str, ...] = (FAILURES, *(f"{FAILURES}.{k}" for k in FAILURE_KINDS))
#: An interval narrower than this (ms) is never called wide (see stats.summarize).
ABS_TOLERANCE_MS = 5.0
#: The probe sending the speech-end frame later than this makes a turn's input suspect.
LATE_PROBE_MS = 10.0


@dataclass(frozen=True)
class ReportOptions:
    """How the report is built."""

    #: count warm-up turns in the statistics (they are always listed)
    include_warmup: bool = False
    #: ``auto``: pipeline marks at their server time when usable; ``arrival``: arrival time
    mark_time: MarkTime = "auto"
    rules: FindingRules = field(default_factory=FindingRules)
    #: keep each turn's raw observations (the HTML waterfalls need them)
    keep_observations: bool = False
    #: how far above one session's p95 the knee's level must be (see concurrency.py)
    knee_margin: Increase = field(default_factory=lambda: _default_knee_margin())

    def to_dict(self, *, turn_taking: bool = False, phone: bool = False) -> dict[str, Any]:
        """``turn_taking``: show the turn-taking thresholds too (traces that have such
        events; a plain run's report stays as it was); ``phone``: the phone ones."""
        return {
            "include_warmup": self.include_warmup,
            "mark_time": self.mark_time,
            "rules": self.rules.to_dict(turn_taking=turn_taking, phone=phone),
        }


@dataclass(frozen=True)
class SourceInfo:
    """One trace file the report read."""

    path: str
    run_id: str
    target: dict[str, Any]
    config: dict[str, Any]
    host: dict[str, Any]
    complete: bool
    end_reason: str | None
    warnings: tuple[str, ...]
    skipped: dict[str, int]
    voiceaudit_version: str

    @classmethod
    def from_info(cls, info: TraceInfo) -> SourceInfo:
        h = info.header
        return cls(
            path=info.path,
            run_id=h.run_id,
            target=dict(h.target),
            config=dict(h.config),
            host=dict(h.host),
            complete=info.complete,
            end_reason=None if info.end is None else info.end.reason,
            warnings=info.warnings,
            skipped=dict(info.skipped),
            voiceaudit_version=h.voiceaudit_version,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "run_id": self.run_id,
            "target": self.target,
            "complete": self.complete,
            "end_reason": self.end_reason,
            "voiceaudit_version": self.voiceaudit_version,
            "warnings": list(self.warnings),
        }


def _ints(v: Any) -> TypeGuard[list[int]]:
    return type(v) is list and all(type(x) is int for x in v)


@dataclass(frozen=True, slots=True)
class TurnPacing:
    """How late the probe sent a turn's frames: from its ``input.pacing`` summary of every
    frame (``source`` ``frames``), or, in a trace without one, from the speech-end frame
    alone (``speech_end_frame``)."""

    source: str
    #: the latest send after its deadline (ns) and that frame's index in the turn
    max_ns: int
    frame: int | None
    frames: int | None = None
    p50_ns: int | None = None
    p99_ns: int | None = None
    #: (bin width ns, bins, counts) of the lateness histogram
    hist: tuple[int, list[int], list[int]] | None = None

    @property
    def broke(self) -> bool:
        """A frame left more than ``BROKE_NS`` (5 ms) after its deadline."""
        return self.max_ns > BROKE_NS

    @classmethod
    def from_obs(cls, obs: TurnObs) -> TurnPacing | None:
        occ = obs.first("input.pacing", PROBE_SOURCE)
        if occ is not None:
            a = occ[2]
            mx, fr, n = a.get("max_ns"), a.get("max_frame"), a.get("frames")
            p50, p99, w = a.get("p50_ns"), a.get("p99_ns"), a.get("hist_bin_ns")
            bins, counts = a.get("hist_bins"), a.get("hist_counts")
            if (
                type(mx) is int
                and type(fr) is int
                and type(n) is int
                and type(p50) is int
                and type(p99) is int
            ):
                hist: tuple[int, list[int], list[int]] | None = None
                if (
                    type(w) is int
                    and w > 0
                    and _ints(bins)
                    and _ints(counts)
                    and len(bins) == len(counts)
                ):
                    hist = (w, bins, counts)
                return cls("frames", mx, fr, n, p50, p99, hist)
        late = probe_lateness(obs)
        if late is None:
            return None
        frame = obs.attrs("input.speech_end_sent").get("frame")
        return cls("speech_end_frame", late, frame if type(frame) is int else None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "max_ms": self.max_ns / 1e6}
        if self.source == "frames":
            d["frames"] = self.frames
            d["p50_ms"] = None if self.p50_ns is None else self.p50_ns / 1e6
            d["p99_ms"] = None if self.p99_ns is None else self.p99_ns / 1e6
        d["frame"] = self.frame
        d["broke"] = self.broke
        return d


@dataclass(frozen=True)
class PacingSummary:
    """Pacing over every finished turn of the report (warm-up and failed turns too: it is
    the probe's own health, not the target's)."""

    turns: int
    #: turns known only by their speech-end frame (traces written before ``input.pacing``)
    speech_end_only: int
    frames: int
    p50_ns: int | None
    p99_ns: int | None
    worst: TurnReport
    broke: tuple[TurnReport, ...]

    @property
    def worst_ns(self) -> int:
        assert self.worst.pacing is not None
        return self.worst.pacing.max_ns

    def to_dict(self, multi: bool) -> dict[str, Any]:
        w = self.worst
        assert w.pacing is not None
        where: dict[str, Any] = {"run_id": w.run_id} if multi else {}
        where.update({"session": w.session, "turn": w.turn, "frame": w.pacing.frame})
        return {
            "turns": self.turns,
            "speech_end_only_turns": self.speech_end_only,
            "frames": self.frames,
            "p50_ms": None if self.p50_ns is None else self.p50_ns / 1e6,
            "p99_ms": None if self.p99_ns is None else self.p99_ns / 1e6,
            "worst_ms": self.worst_ns / 1e6,
            "worst": where,
            "broke_turns": len(self.broke),
            "broke_over_ms": BROKE_NS / 1e6,
            "p99_goal_ms": P99_GOAL_NS / 1e6,
        }


def pacing_summary(turns: Iterable[TurnReport]) -> PacingSummary | None:
    hist = PacingHistogram()
    n = only = 0
    worst: TurnReport | None = None
    worst_ns = 0
    broke: list[TurnReport] = []
    for t in turns:
        p = t.pacing
        if p is None:
            continue
        n += 1
        if p.source != "frames":
            only += 1
        if p.hist is not None:
            hist.add(*p.hist)
        if worst is None or p.max_ns > worst_ns:
            worst, worst_ns = t, p.max_ns
        if p.broke:
            broke.append(t)
    if worst is None:
        return None
    return PacingSummary(
        n, only, hist.frames, hist.percentile_ns(50), hist.percentile_ns(99), worst, tuple(broke)
    )


@dataclass(frozen=True, slots=True)
class TurnReport:
    """One finished turn: its ledger, findings and status."""

    run_id: str
    session: str
    turn: int
    ok: bool
    warmup: bool
    reason: str | None
    ledger: Ledger
    findings: tuple[Finding, ...]
    audio: str | None
    text: str | None
    transcript: str | None
    obs: TurnObs | None = None
    #: how late the probe sent this turn's frames (None: the trace does not say)
    pacing: TurnPacing | None = None
    #: sessions of the run running when this turn's speech end was sent (None: not said)
    concurrency: int | None = None
    #: what the playout model made of the reply (None: no ``reply.end``)
    playout: TurnPlayout | None = None
    #: barge-ins, cut-ins, sounds and truncation (None: a turn without any, as in a
    #: plain run)
    turn_taking: TurnTaking | None = None
    #: why a failed turn failed, one of voiceaudit.failures.FAILURE_KINDS (None: ok)
    failure: str | None = None
    #: a failed turn's voice-to-voice where audio was heard before the fault: shown,
    #: labelled, never in the statistics (None: ok, or nothing audible)
    informative_ns: int | None = None
    #: what the phone carrier says of the turn (None: not heard through a carrier)
    phone: PhoneTurn | None = None
    #: a key-press turn's key: its voice-to-voice is the bot's reaction time to the key
    dtmf: str | None = None
    #: the path the turn was measured on (phone, webrtc, websocket, http, in-process)
    path: str = "websocket"

    @property
    def voice_to_voice_ns(self) -> int | None:
        """The turn's voice-to-voice; None for a failed turn (its figure, if any, is
        :attr:`informative_ns`): a fault never becomes a measurement."""
        return self.ledger.voice_to_voice_ns if self.ok else None

    @property
    def informative_label(self) -> str | None:
        """``informative: reply cut`` for a failed turn with an informative figure."""
        if self.informative_ns is None or self.failure is None:
            return None
        return f"informative: {FAILURE_LABELS[self.failure]}"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.run_id, self.session, self.turn)

    def id_dict(self, with_run_id: bool) -> dict[str, Any]:
        """The first keys of the turn's JSON: its run (``with_run_id``), session, turn."""
        d: dict[str, Any] = {"run_id": self.run_id} if with_run_id else {}
        d.update(session=self.session, turn=self.turn)
        return d

    def to_dict(self, *, with_run_id: bool = False, with_path: bool = False) -> dict[str, Any]:
        """``turns[]`` of the report (docs/report-format.md); ``with_path``: the path it was
        measured on too (a report that shows paths)."""
        v2v = self.voice_to_voice_ns
        d = self.id_dict(with_run_id)
        if with_path:
            d["path"] = self.path
        d.update(
            {
                "ok": self.ok,
                "warmup": self.warmup,
                "voice_to_voice_ms": None if v2v is None else v2v / 1e6,
                "voice_to_voice_ns": v2v,
                "ledger": [_segment_dict(s) for s in self.ledger.segments],
                "findings": [
                    {"kind": f.kind, "ms": f.ns / 1e6, "evidence": f.evidence}
                    for f in self.findings
                ],
            }
        )
        if self.reason is not None:
            d["reason"] = self.reason
        if self.failure is not None:
            d["failure"] = self.failure
        if self.informative_ns is not None:
            d["informative_voice_to_voice_ms"] = self.informative_ns / 1e6
            d["informative_voice_to_voice_ns"] = self.informative_ns
        if self.ledger.problem is not None:
            d["ledger_problem"] = self.ledger.problem
        d["clock"] = self.ledger.clock
        if self.ledger.speech_to_speech:
            d["speech_to_speech"] = True
        t0 = self.ledger.t0_ns
        if t0 is not None and self.ledger.marks:
            d["marks"] = {m.name: (m.t_ns - t0) / 1e6 for m in self.ledger.marks}
        elif t0 is not None:
            # No ledger (failed turn): every mark seen, for diagnosis.
            d["marks"] = {
                n: (t - t0) / 1e6 for n, t in sorted(self.ledger.times.items(), key=lambda x: x[1])
            }
        if self.ledger.off_path:
            d["off_path"] = [
                {
                    "mark": o.name,
                    "at_ms": None if t0 is None else (o.t_ns - t0) / 1e6,
                    "why": o.why,
                }
                for o in self.ledger.off_path
            ]
        if self.ledger.notes:
            d["notes"] = list(self.ledger.notes)
        for k in ("audio", "text", "transcript"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.pacing is not None:
            d["pacing"] = self.pacing.to_dict()
        if self.concurrency is not None:
            d["concurrency"] = self.concurrency
        if self.playout is not None:
            d["playout"] = self.playout.to_dict()
        if self.turn_taking is not None:
            d["turn_taking"] = self.turn_taking.to_dict()
        if self.phone is not None:
            d["phone"] = self.phone.to_dict(t0)
        if self.dtmf is not None:
            d["dtmf"] = self.dtmf
            d["key_press"] = True
        return d


@dataclass(frozen=True, slots=True)
class TurnPlayout:
    """A turn's caller-heard playout, from ``reply.playout_start`` and ``reply.end``: the
    latency the buffer added and the gaps the caller heard (see docs/report-format.md)."""

    model: str | None
    wait_ns: int | None
    buffer_ns: int | None
    underruns: int | None
    underrun_ns: int | None
    target_ns: int | None

    @classmethod
    def from_obs(cls, obs: TurnObs) -> TurnPlayout | None:
        end = obs.first("reply.end", PROBE_SOURCE)
        if end is None:
            return None
        occ = obs.first("reply.playout_start", PROBE_SOURCE)
        start = occ[2] if occ is not None else {}
        a = end[2]
        wait = _int(start.get("wait_ns"))
        first = obs.first("reply.first_byte", PROBE_SOURCE)
        if wait is None and occ is not None and first is not None:
            wait = occ[0] - first[0]  # a trace written before wait_ns
        return cls(
            _str(start.get("model")),
            wait,
            _int(a.get("buffer_ns")),
            _int(a.get("underruns")),
            _int(a.get("underrun_ns")),
            _int(a.get("target_ns")),
        )

    def to_dict(self) -> dict[str, Any]:
        def ms(v: int | None) -> float | None:
            return None if v is None else v / 1e6

        return {
            "model": self.model,
            "wait_ms": ms(self.wait_ns),
            "buffer_ms": ms(self.buffer_ns),
            "underruns": self.underruns,
            "underrun_ms": ms(self.underrun_ns),
            "target_ms": ms(self.target_ns),
        }


def _segment_dict(s: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"segment": s.name, "ms": s.ns / 1e6, "ns": s.ns, "from": s.start}
    d["to"] = s.end
    if s.covers:
        d["covers"] = list(s.covers)
    return d


@dataclass(frozen=True)
class FindingSummary:
    """One kind of finding over the turns in the statistics."""

    kind: str
    description: str
    turns: int
    of: int
    cost: Summary
    total_ms: float

    @property
    def share(self) -> float:
        return self.turns / self.of if self.of else 0.0

    @property
    def per_turn_ms(self) -> float:
        """Average cost over every turn in the statistics (not only affected ones)."""
        return self.total_ms / self.of if self.of else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.description,
            "turns": self.turns,
            "of": self.of,
            "share": round(self.share, 4),
            "per_turn_ms": round(self.per_turn_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "ms": self.cost.to_dict(),
        }


@dataclass(frozen=True)
class BudgetLine:
    """A segment's share of the mean voice-to-voice."""

    segment: str
    mean_ms: float
    share: float
    turns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "mean_ms": round(self.mean_ms, 3),
            "share": round(self.share, 4),
            "turns": self.turns,
        }


#: The reason an unfinished turn (no ``turn.end``) is counted with in the failure table.
UNFINISHED_REASON = "no turn.end: the run was cut short before the turn finished"


@dataclass(frozen=True)
class FailureRow:
    """One failure kind over the report's turns."""

    kind: str
    #: failed turns of this kind among the measured turns (see :class:`FailureTable`)
    turns: int
    #: failed warm-up turns of this kind (in ``turns`` only with ``--include-warmup``)
    warmup: int
    #: the first reason text of this kind (a measured turn's, else a warm-up's)
    example: str | None

    @property
    def label(self) -> str:
        return FAILURE_LABELS[self.kind]


@dataclass(frozen=True)
class FailureTable:
    """Failed turns by kind (voiceaudit.failures.FAILURE_KINDS).

    ``of``, the measured turns, is the population the gate's ``failed_turns`` and
    ``failures`` checks count: every finished turn but the warm-ups (with them, under
    ``--include-warmup``), plus every turn cut short without a ``turn.end``, which counts
    as ``interrupted``. Failed warm-up turns are counted apart (``warmup``).
    """

    of: int
    #: every kind, in the order of FAILURE_KINDS (zero counts included)
    rows: tuple[FailureRow, ...]
    #: failed turns that carry an informative voice-to-voice (audio heard before the fault)
    informative: int = 0

    @property
    def failed(self) -> int:
        return sum(r.turns for r in self.rows)

    @property
    def warmup(self) -> int:
        return sum(r.warmup for r in self.rows)

    @property
    def share(self) -> float | None:
        return self.failed / self.of if self.of else None

    def counts(self) -> dict[str, int]:
        """Failed turns per kind among the measured turns."""
        return {r.kind: r.turns for r in self.rows}

    def rate_counts(self) -> dict[str, tuple[int, int]]:
        """(failed, measured turns) per name of :data:`FAILURE_METRICS`; empty without
        measured turns."""
        if not self.of:
            return {}
        out = {FAILURES: (self.failed, self.of)}
        out.update({f"{FAILURES}.{r.kind}": (r.turns, self.of) for r in self.rows})
        return out

    def present(self) -> tuple[FailureRow, ...]:
        """The kinds with at least one failed turn (warm-ups included)."""
        return tuple(r for r in self.rows if r.turns or r.warmup)

    def to_dict(self) -> dict[str, Any]:
        share = self.share
        return {
            "of": self.of,
            "failed": self.failed,
            "share": None if share is None else round(share, 4),
            "warmup": self.warmup,
            "informative": self.informative,
            "by_kind": [
                {
                    "kind": r.kind,
                    "label": r.label,
                    "turns": r.turns,
                    "share": None if not self.of else round(r.turns / self.of, 4),
                    "warmup": r.warmup,
                    "example": r.example,
                }
                for r in self.rows
            ],
        }


def failure_table(
    turns: Iterable[TurnReport], unfinished: int, *, include_warmup: bool = False
) -> FailureTable:
    """The failure table of finished ``turns`` plus ``unfinished`` turns cut short."""
    measured = {k: 0 for k in FAILURE_KINDS}
    warm = {k: 0 for k in FAILURE_KINDS}
    example: dict[str, str] = {}
    warm_example: dict[str, str] = {}
    of = unfinished
    informative = 0
    for t in turns:
        counted = include_warmup or not t.warmup
        of += counted
        if t.ok:
            continue
        kind = t.failure or failure_kind(t.reason)
        if counted:
            measured[kind] += 1
            example.setdefault(kind, t.reason or "")
        if t.warmup:
            warm[kind] += 1
            warm_example.setdefault(kind, t.reason or "")
        informative += t.informative_ns is not None
    if unfinished:
        measured["interrupted"] += unfinished
        example.setdefault("interrupted", UNFINISHED_REASON)
    rows = tuple(
        FailureRow(k, measured[k], warm[k], example.get(k, warm_example.get(k)))
        for k in FAILURE_KINDS
    )
    return FailureTable(of, rows, informative)


#: What a session.audio_format's ``source`` means, for the reports.
AUDIO_FORMAT_SOURCES: dict[str, str] = {
    "declared": "declared by the target",
    "requested": "requested with -o input_format/output_format",
    "default": "assumed: nothing declared, 24 kHz PCM",
}


@dataclass(frozen=True)
class AudioFormat:
    """The audio format of one session: its latest ``session.audio_format`` event."""

    run_id: str
    session: str
    #: {"encoding": "pcm16"|"pcmu"|"pcma", "rate": Hz}, or None when the event lacks it
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    source: str | None

    @staticmethod
    def _side(v: Any) -> dict[str, Any] | None:
        if not isinstance(v, dict):
            return None
        enc, rate = v.get("encoding"), v.get("rate")
        if type(enc) is not str or type(rate) is not int:
            return None
        return {"encoding": enc, "rate": rate}

    @classmethod
    def from_attrs(cls, run_id: str, session: str, attrs: dict[str, Any]) -> AudioFormat:
        src = attrs.get("source")
        return cls(
            run_id,
            session,
            cls._side(attrs.get("input")),
            cls._side(attrs.get("output")),
            src if type(src) is str else None,
        )

    def key(self) -> tuple[Any, ...]:
        """What two sessions must share to have the same format."""
        return (
            json.dumps(self.input, sort_keys=True),
            json.dumps(self.output, sort_keys=True),
            self.source,
        )

    def describe(self) -> str:
        """``input pcmu 8000 Hz, output pcma 8000 Hz`` (``?`` for a side not said)."""

        def side(d: dict[str, Any] | None) -> str:
            return "?" if d is None else f"{d['encoding']} {d['rate']} Hz"

        return f"input {side(self.input)}, output {side(self.output)}"

    def to_dict(self, multi: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"run_id": self.run_id} if multi else {}
        d.update(
            {
                "session": self.session,
                "input": self.input,
                "output": self.output,
                "source": self.source,
            }
        )
        return d


def audio_formats(run_id: str, sessions: Iterable[SessionObs]) -> list[AudioFormat]:
    """The latest ``session.audio_format`` of each session that has one (by time; of
    equal times, the later in the file)."""
    out = []
    for so in sessions:
        best: tuple[int, dict[str, Any]] | None = None
        for name, t_ns, attrs in so.events:
            if name == "session.audio_format" and (best is None or t_ns >= best[0]):
                best = (t_ns, attrs)
        if best is not None:
            out.append(AudioFormat.from_attrs(run_id, so.session, best[1]))
    return out


@dataclass(frozen=True)
class Report:
    """Everything ``voiceaudit report`` says, derived from the traces."""

    sources: tuple[SourceInfo, ...]
    turns: tuple[TurnReport, ...]
    options: ReportOptions
    #: (run_id, session, turn) of turns with events but no turn.end (run cut short)
    unfinished: tuple[tuple[str, str, int], ...] = ()
    warnings: tuple[str, ...] = ()
    label: str = ""
    #: each session's audio format, where the trace records one (session.audio_format)
    audio_formats: tuple[AudioFormat, ...] = ()
    #: (run_id, greeting) of each session that waited for the target to speak first
    greetings: tuple[tuple[str, Greeting], ...] = ()

    # -- populations ---------------------------------------------------------------------

    @cached_property
    def stats_turns(self) -> tuple[TurnReport, ...]:
        """The turns the statistics are computed over: ok, and not warm-up unless asked."""
        inc = self.options.include_warmup
        return tuple(t for t in self.turns if t.ok and (inc or not t.warmup))

    @cached_property
    def failed_turns(self) -> tuple[TurnReport, ...]:
        return tuple(t for t in self.turns if not t.ok)

    @property
    def multi_run(self) -> bool:
        return len({s.run_id for s in self.sources}) > 1

    # -- statistics ----------------------------------------------------------------------

    @cached_property
    def metric_values(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """ms values of voice-to-voice and of each segment (turns where it exists)."""
        per: dict[str, list[int]] = {s: [] for s in ALL_SEGMENTS}
        unexplained = per[UNEXPLAINED]
        v2v: list[int] = []
        for t in self.stats_turns:
            v = t.ledger.voice_to_voice_ns
            if v is None:
                continue
            v2v.append(v)
            # Only unexplained can occur more than once in a ledger: sum it per turn.
            gap: int | None = None
            for s in t.ledger.segments:
                if s.name == UNEXPLAINED:
                    gap = s.ns if gap is None else gap + s.ns
                else:
                    per[s.name].append(s.ns)
            if gap is not None:
                unexplained.append(gap)
        out = {VOICE_TO_VOICE: np.asarray(v2v, dtype=np.float64) / 1e6}
        for name in ALL_SEGMENTS:
            out[name] = np.asarray(per[name], dtype=np.float64) / 1e6
        return out

    @cached_property
    def summary(self) -> dict[str, Summary]:
        """Summary per metric (``voice_to_voice`` and every segment present)."""
        out: dict[str, Summary] = {}
        for name, vals in self.metric_values.items():
            s = summarize(vals, abs_tolerance=ABS_TOLERANCE_MS)
            if s is not None:
                out[name] = s
        return out

    @cached_property
    def budget(self) -> tuple[BudgetLine, ...]:
        """Mean contribution of each segment per turn; the lines sum to mean voice-to-voice."""
        n = len(self.metric_values[VOICE_TO_VOICE])
        if n == 0:
            return ()
        total = float(self.metric_values[VOICE_TO_VOICE].sum())
        lines = []
        for name in ALL_SEGMENTS:
            vals = self.metric_values[name]
            if len(vals) == 0:
                continue
            s = float(vals.sum())
            lines.append(BudgetLine(name, s / n, s / total if total > 0 else 0.0, len(vals)))
        return tuple(lines)

    @property
    def turn_taking_turns(self) -> tuple[TurnReport, ...]:
        """The turns the turn-taking figures and findings are over: those of the
        statistics plus the failed ones (not warm-up unless asked), since a cut-in or a
        barge-in is often why a turn got no reply of its own."""
        inc = self.options.include_warmup
        return tuple(t for t in self.turns if inc or not t.warmup)

    @cached_property
    def findings(self) -> tuple[FindingSummary, ...]:
        """Findings per kind over the statistics turns (the turn-taking kinds: over
        :attr:`turn_taking_turns`), costliest per turn first."""
        of = len(self.stats_turns)
        per: dict[str, list[int]] = {}
        stats = {id(t) for t in self.stats_turns}
        for t in self.turn_taking_turns:
            acc: dict[str, int] = {}
            for f in t.findings:
                if id(t) in stats or f.kind in ALL_TURN_KINDS:
                    acc[f.kind] = acc.get(f.kind, 0) + f.ns
            for k, ns in acc.items():
                per.setdefault(k, []).append(ns)
        # The greeting's findings are per session: their share is of the sessions.
        for f in self.greeting_findings:
            per.setdefault(f.kind, []).append(f.ns)
        # Drift is one finding of the whole report (of 1).
        drift = drift_finding(self.drift)
        if drift is not None:
            per[drift.kind] = [drift.ns]
        out = []
        tt_of = len(self.turn_taking_turns)
        for kind, costs in per.items():
            arr = np.asarray(costs, dtype=np.float64) / 1e6
            s = summarize(arr, abs_tolerance=ABS_TOLERANCE_MS)
            assert s is not None
            n_of = (
                len(self.greetings)
                if kind in GREETING_KINDS
                else 1
                if kind in DRIFT_KINDS
                else tt_of
                if kind in ALL_TURN_KINDS
                else of
            )
            out.append(FindingSummary(kind, ALL_KINDS[kind], len(costs), n_of, s, float(arr.sum())))
        order = list(ALL_KINDS)
        out.sort(key=lambda f: (-f.per_turn_ms, order.index(f.kind)))
        return tuple(out)

    @cached_property
    def pacing(self) -> PacingSummary | None:
        """How late the probe sent its frames, over every finished turn."""
        return pacing_summary(self.turns)

    @cached_property
    def concurrency(self) -> ConcurrencyView | None:
        """Voice-to-voice per concurrency level and the knee; None with one level."""
        from voiceaudit.analysis.concurrency import concurrency_view

        return concurrency_view(
            ((t.concurrency, t.voice_to_voice_ns) for t in self.stats_turns),
            margin=self.options.knee_margin,
        )

    @cached_property
    def turn_taking(self) -> TurnTakingSummary | None:
        """Barge-ins, cut-ins, sounds, truncation and the responses to interruptions over
        :attr:`turn_taking_turns` (voice-to-voice from the ok ones); None when no turn has
        any (a plain run)."""
        if all(t.turn_taking is None for t in self.turns):
            return None
        return summarize_turn_taking(
            (t.turn_taking, t.voice_to_voice_ns if t.ok else None) for t in self.turn_taking_turns
        )

    @cached_property
    def drift(self) -> DriftView | None:
        """Voice-to-voice by turn index and over time and the trend tests
        (docs/report-format.md, "Long calls"); None with fewer than
        :data:`~voiceaudit.analysis.drift.MIN_TURNS` turns in the statistics, so the
        report of a short run stays as it was. Failed turns (not warm-up unless asked)
        count as failures in their window."""
        from voiceaudit.analysis.drift import MIN_TURNS, DriftTurn, drift_view

        if len(self.stats_turns) < MIN_TURNS:
            return None
        stats = {id(t) for t in self.stats_turns}
        return drift_view(
            DriftTurn(
                t.run_id,
                t.session,
                t.turn,
                t.ledger.t0_ns,
                t.voice_to_voice_ns if id(t) in stats else None,
            )
            for t in self.turn_taking_turns
            if id(t) in stats or not t.ok
        )

    @cached_property
    def greeting_findings(self) -> tuple[Finding, ...]:
        """``no_greeting`` and ``slow_greeting``, one per session at most."""
        rules = self.options.rules
        out: list[Finding] = []
        for _, g in self.greetings:
            out += greeting_findings(g, True, rules)
        return tuple(out)

    @cached_property
    def paths(self) -> dict[str, str]:
        """The path of each run (by run_id): its header's ``target.path``, or from the
        protocol for an older trace."""
        return {s.run_id: target_path(s.target) for s in self.sources}

    @cached_property
    def phone(self) -> PhoneSummary | None:
        """Paths, greeting, carrier, barge-ins through the carrier, marks and key presses
        (docs/report-format.md, "Phone and greeting"); None for traces that have none of
        them and whose header does not name its path, so their reports stay as they
        were."""
        declared = any(path_declared(s.target) for s in self.sources)
        if (
            not declared
            and not self.greetings
            and all(t.phone is None and t.dtmf is None for t in self.turns)
        ):
            return None
        return summarize_phone(
            [(t.path, t.voice_to_voice_ns, t.phone, t.dtmf) for t in self.stats_turns],
            [t.phone for t in self.turn_taking_turns if t.phone is not None],
            [g for _, g in self.greetings],
            sorted(set(self.paths.values())),
            self.options.rules.mark_early_ms,
        )

    @cached_property
    def failures(self) -> FailureTable:
        """Failed turns by kind (see :class:`FailureTable`)."""
        return failure_table(
            self.turns, len(self.unfinished), include_warmup=self.options.include_warmup
        )

    @cached_property
    def counts(self) -> dict[str, int]:
        turns = self.turns
        return {
            "turns": len(turns),
            "ok": sum(1 for t in turns if t.ok),
            "failed": sum(1 for t in turns if not t.ok),
            "warmup": sum(1 for t in turns if t.warmup),
            "in_statistics": len(self.stats_turns),
            "unfinished": len(self.unfinished),
        }

    # -- output --------------------------------------------------------------------------

    def to_dict(self, *, turns: bool = True) -> dict[str, Any]:
        """The ``voiceaudit.report/1`` document (see docs/report-format.md)."""
        multi = self.multi_run
        d: dict[str, Any] = {
            "schema": REPORT_SCHEMA,
            "voiceaudit_version": __version__,
            "sources": [s.to_dict() for s in self.sources],
            "options": self.options.to_dict(
                turn_taking=self.turn_taking is not None, phone=self.phone is not None
            ),
            "counts": self.counts,
            "summary": {
                "voice_to_voice_ms": _summary_dict(self.summary.get(VOICE_TO_VOICE)),
                "segments": {
                    name: s.to_dict() for name, s in self.summary.items() if name != VOICE_TO_VOICE
                },
                "budget": [b.to_dict() for b in self.budget],
            },
            "findings": [f.to_dict() for f in self.findings],
            "pacing": None if self.pacing is None else self.pacing.to_dict(multi),
            "failures": self.failures.to_dict(),
            "failed_turns": [_failed_dict(t, multi) for t in self.failed_turns],
            "unfinished_turns": [
                {"run_id": r, "session": s, "turn": n} for r, s, n in self.unfinished
            ],
            "warnings": list(self.warnings),
            "audio_formats": [f.to_dict(multi) for f in self.audio_formats],
        }
        if self.concurrency is not None:
            d["concurrency"] = self.concurrency.to_dict()
        if self.turn_taking is not None:
            d["turn_taking"] = self.turn_taking.to_dict()
        if self.drift is not None:
            d["drift"] = self.drift.to_dict()
        if self.phone is not None:
            d["phone"] = self.phone.to_dict()
            d["phone"]["greeting"]["sessions"] = [
                g.to_dict(run_id if multi else None) for run_id, g in self.greetings
            ]
        if turns:
            paths = self.phone is not None
            d["turns"] = [t.to_dict(with_run_id=multi, with_path=paths) for t in self.turns]
        return d

    def to_json(self, *, turns: bool = True) -> str:
        """The JSON text: indented, with one turn per line (readable, diffable, and fast:
        the per-turn lines go through the C encoder)."""
        head = json.dumps(self.to_dict(turns=False), indent=1, ensure_ascii=False)
        if not turns:
            return head + "\n"
        multi = self.multi_run
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        paths = self.phone is not None
        lines = ",\n".join(dumps(t.to_dict(with_run_id=multi, with_path=paths)) for t in self.turns)
        return head[:-2] + ',\n "turns": [\n' + lines + "\n ]\n}\n"


def _summary_dict(s: Summary | None) -> dict[str, Any] | None:
    return None if s is None else s.to_dict()


def _failed_dict(t: TurnReport, multi: bool) -> dict[str, Any]:
    d = t.id_dict(multi)
    d.update(warmup=t.warmup, reason=t.reason, failure=t.failure)
    if t.informative_ns is not None:
        d["informative_voice_to_voice_ms"] = t.informative_ns / 1e6
    return d


# -- building ------------------------------------------------------------------------------


def _bool(v: Any) -> bool | None:
    return v if type(v) is bool else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if type(v) is str else None


def turn_report(
    obs: TurnObs,
    *,
    run_id: str = "",
    options: ReportOptions | None = None,
    session_obs: Any = None,
    config: dict[str, Any] | None = None,
    path: str = "websocket",
) -> TurnReport:
    """Ledger, findings and status of one finished turn (``path``: the path it was
    measured on, :func:`~voiceaudit.analysis.phone.target_path`)."""
    opts = options or ReportOptions()
    ledger = ledger_from_obs(obs, mark_time=opts.mark_time)
    phone = PhoneTurn.from_obs(obs, session_obs if isinstance(session_obs, SessionObs) else None)
    if phone is not None and phone.first_queued_ns is not None:
        ledger = with_carrier(ledger, phone.first_queued_ns, phone.fixed_delay_ns)
    start = obs.attrs("turn.start")
    end = obs.attrs("turn.end")
    warm = _bool(start.get("warmup"))
    if warm is None:
        warm = _bool(end.get("warmup")) or False
    ok = end.get("ok") is True
    reason: str | None = None
    failure: str | None = None
    informative: int | None = None
    if not ok:
        reason = _str(end.get("reason")) or "failed (no reason recorded)"
        failure = failure_kind(reason, end.get("failure"))
        # Derived from the marks when the turn has them, else as the probe recorded it.
        informative = ledger.voice_to_voice_ns
        if informative is None:
            informative = _int(end.get("informative_voice_to_voice_ns"))
    elif ledger.problem is not None:
        ok = False
        reason = ledger.problem
        failure = failure_kind(reason)
    ctx = TurnContext(obs, ledger, opts.rules, session_obs, config or {})
    findings = detect(ctx) if ledger.voice_to_voice_ns is not None else ()
    tt = TurnTaking.from_obs(obs)
    if tt is not None:
        findings += detect_turn_taking(tt, opts.rules)
    findings += phone_findings(phone, opts.rules)
    return TurnReport(
        run_id=run_id,
        session=obs.session,
        turn=obs.turn,
        ok=ok,
        warmup=warm,
        reason=reason,
        ledger=ledger,
        findings=findings,
        audio=_str(start.get("audio")),
        text=_str(start.get("text")),
        transcript=_str(obs.attrs("transcript.final").get("text")),
        obs=obs if opts.keep_observations else None,
        pacing=TurnPacing.from_obs(obs),
        concurrency=_int(obs.attrs("input.speech_end_sent").get("concurrency")),
        playout=TurnPlayout.from_obs(obs),
        turn_taking=tt,
        failure=failure,
        informative_ns=informative,
        phone=phone,
        dtmf=dtmf_digit(obs),
        path=path,
    )


TraceInput = Trace | str | os.PathLike[str]
Progress = Callable[[str], None]


class _Analyser:
    """Turns of one trace into turn reports, as they come (see :func:`_load`)."""

    #: turns between two progress messages
    PROGRESS_EVERY = 10_000

    def __init__(
        self,
        options: ReportOptions,
        progress: Progress | None = None,
        what: str = "",
        wire: Mapping[tuple[str, int], TurnWire | int] | None = None,
    ) -> None:
        self.options = options
        #: (session, turn) -> its marks' times on the wire, from a joined capture
        self.wire = wire or {}
        self.progress = progress
        self.what = what
        self.run_id = ""
        self.config: dict[str, Any] = {}
        self.path = "websocket"
        #: (order of first appearance, report) of each finished turn
        self.done: list[tuple[int, TurnReport]] = []
        #: how late (ms) the probe sent the speech-end frame, where notably late
        self.late: list[float] = []

    def header(self, h: Header) -> None:
        self.run_id, self.config = h.run_id, h.config
        self.path = target_path(h.target)

    def analyse(self, obs: TurnObs, session_obs: SessionObs | None) -> None:
        w = self.wire.get((obs.session, obs.turn)) if self.wire else None
        if w is not None:
            place_on_wire(obs, w)
        tr = turn_report(
            obs,
            run_id=self.run_id,
            options=self.options,
            session_obs=session_obs,
            config=self.config,
            path=self.path,
        )
        self.done.append((obs.seq, tr))
        if self.progress is not None and len(self.done) % self.PROGRESS_EVERY == 0:
            self.progress(f"reading {self.what}: {len(self.done):,} turns")
        lt = probe_lateness(obs)
        if lt is not None and lt > LATE_PROBE_MS * 1e6:
            self.late.append(lt / 1e6)

    def restart(self) -> None:
        self.done.clear()
        self.late.clear()


def _load(
    item: TraceInput,
    skip: frozenset[str],
    on_header: Callable[[Header], None],
    on_finished: OnFinished,
    restart: Callable[[], None],
) -> tuple[TraceInfo, Collected]:
    """Read one trace; finished turns go to ``on_finished`` (in any order), unfinished
    ones stay in the result. ``restart`` forgets what ``on_finished`` got so far."""
    if isinstance(item, Trace):
        info = TraceInfo(item.path, item.header, item.end, item.warnings, {})
        on_header(item.header)
        col = collect_trace(item)
    else:
        # Streamed: each turn is analysed when its turn.end is read and then forgotten.
        info, col = collect_file(item, skip=skip, on_finished=on_finished, on_header=on_header)
        if col.disorder is None:
            return info, col
        # A record read late could change a turn already analysed: read it all again.
        restart()
        info, col = collect_file(item, skip=skip, on_header=on_header)
    for key, obs in list(col.turns.items()):
        if obs.finished:
            del col.turns[key]
            on_finished(obs, col.sessions.get(obs.session))
    return info, col


def build_report(
    traces: Iterable[TraceInput],
    *,
    include_warmup: bool = False,
    mark_time: MarkTime = "auto",
    rules: FindingRules | None = None,
    keep_observations: bool = False,
    progress: Progress | None = None,
    label: str = "",
    wire_marks: Mapping[tuple[str, int], TurnWire | int] | None = None,
    knee_margin: Increase | None = None,
) -> Report:
    """Build the report of one or more traces (merged into one population).

    ``traces`` are :class:`~voiceaudit.trace_io.Trace` objects or paths (files or
    directories; paths are streamed through the fast reader). Raises
    :class:`~voiceaudit.errors.NoDataError` when no turn finished. ``wire_marks``:
    (session, turn) -> what a capture joined to the trace says of the turn
    (:meth:`voiceaudit.analysis.network.NetworkJoin.wire_marks`): when its first reply
    audio left the server (its ``reply.on_wire`` mark, source ``network``; a bare int is
    that alone) and when each of its pipeline marks did (their ``wire_t_ns``).
    """
    if mark_time not in ("auto", "arrival"):
        raise UsageError(f"unknown mark time {mark_time!r} (use 'auto' or 'arrival')")
    options = ReportOptions(
        include_warmup=include_warmup,
        mark_time=mark_time,
        rules=rules or FindingRules(),
        keep_observations=keep_observations,
        knee_margin=knee_margin or _default_knee_margin(),
    )
    items: list[TraceInput] = []
    for t in traces:
        if isinstance(t, Trace):
            items.append(t)
        else:
            items.extend(find_traces(t))
    if not items:
        raise NoDataError("no traces given")
    # Reading makes millions of small objects that all stay alive: the cyclic garbage
    # collector would rescan them again and again (doubling the time) and can free none.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(items, options, progress, label, wire_marks)
    finally:
        if was_enabled:
            gc.enable()


def _build(
    items: list[TraceInput],
    options: ReportOptions,
    progress: Progress | None,
    label: str,
    wire: Mapping[tuple[str, int], TurnWire | int] | None = None,
) -> Report:
    sources: list[SourceInfo] = []
    turns: list[TurnReport] = []
    unfinished: list[tuple[str, str, int]] = []
    warnings: list[str] = []
    formats: list[AudioFormat] = []
    greetings: list[tuple[str, Greeting]] = []
    skip = SKIPPED_BY_DEFAULT
    for item in items:
        what = str(item.path if isinstance(item, Trace) else item)
        if progress is not None:
            progress(f"reading {what}")
        an = _Analyser(options, progress, what, wire)
        info, col = _load(item, skip, an.header, an.analyse, an.restart)
        done, late = an.done, an.late
        src = SourceInfo.from_info(info)
        sources.append(src)
        formats.extend(audio_formats(src.run_id, col.sessions.values()))
        for so in col.sessions.values():
            g = Greeting.from_session(so)
            if g is not None:
                greetings.append((src.run_id, g))
        warnings.extend(f"{info.path}: {w}" for w in info.warnings)
        # In the order the turns first appear in the trace, however they were analysed.
        done.sort(key=itemgetter(0))
        turns.extend(tr for _, tr in done)
        unfinished.extend(
            (src.run_id, obs.session, obs.turn)
            for obs in sorted(col.turns.values(), key=attrgetter("seq"))
        )
        if late:
            warnings.append(
                f"{info.path}: the probe sent the speech-end frame late in {len(late)} turn(s) "
                f"(up to {max(late):.1f} ms): the machine may have been overloaded"
            )
        _pacing_warnings(info.path, [tr for _, tr in done], warnings)
        if not wire and isinstance(an.config.get("impairment"), dict):
            _downlink_warning(info.path, [tr for _, tr in done], warnings)
    if unfinished:
        warnings.append(
            f"{len(unfinished)} turn(s) have no turn.end (the run was cut short) and are left out"
        )
    _check_mixed(sources, warnings)
    if not turns:
        raise NoDataError(
            "no finished turns in the traces given",
            hint="every turn was cut short, or the run stopped before the first turn ended",
        )
    return Report(
        sources=tuple(sources),
        turns=tuple(turns),
        options=options,
        unfinished=tuple(unfinished),
        warnings=tuple(warnings),
        label=label,
        audio_formats=tuple(formats),
        greetings=tuple(greetings),
    )


def _downlink_warning(path: str, turns: list[TurnReport], warnings: list[str]) -> None:
    """Say when a run through the impairment proxy has turns cut at arrival times and no
    capture joined: the downlink delay is then inside the stages, not in transport."""
    n = sum(1 for tr in turns if any(m.clock == "arrival" for m in tr.ledger.marks))
    if n:
        warnings.append(
            f"{path}: the run went through the impairment proxy, and {n} turn(s) are cut "
            "at pipeline marks stamped at their arrival: each stage they end holds the "
            "downlink delay, which only a capture splits off into transport (run with "
            "--capture, or give --pcap)"
        )


def _pacing_warnings(path: str, turns: list[TurnReport], warnings: list[str]) -> None:
    """Say when the probe could not keep its pacing (the turns are marked, and kept)."""
    ps = pacing_summary(turns)
    if ps is None:
        return
    if ps.broke:
        warnings.append(
            f"{path}: pacing broke in {len(ps.broke)} turn(s): a frame sent more than "
            f"{BROKE_NS / 1e6:g} ms after its deadline (worst {ps.worst_ns / 1e6:.1f} ms, "
            f"{ps.worst.session} turn {ps.worst.turn}); the probe could not keep up (its machine "
            "was busy, or an in-process target blocked its event loop), so the target heard "
            "late audio; those turns are marked (pacing.broke) and kept in the "
            "statistics"
        )
    if ps.p99_ns is not None and ps.p99_ns > P99_GOAL_NS:
        warnings.append(
            f"{path}: pacing p99 {ps.p99_ns / 1e6:.1f} ms is above {P99_GOAL_NS / 1e6:g} ms: "
            "the probe's machine was busy (or an in-process target held its event loop)"
        )


def _check_mixed(sources: Sequence[SourceInfo], warnings: list[str]) -> None:
    """Merged traces whose key metadata differ are flagged (never silently merged)."""
    if len(sources) < 2:
        return
    targets = {json.dumps(s.target, sort_keys=True) for s in sources}
    if len(targets) > 1:
        warnings.append(
            f"the merged traces measured {len(targets)} different targets; "
            "compare them with 'voiceaudit report A B' instead of merging"
        )
