"""The probe: replays speech through a target at real-time pace and records a trace.

One asyncio loop drives every session. The paced-send path does nothing but wait for a
deadline, write a frame and buffer a trace record; reply analysis (onset detection,
playout) runs once the turn is over. The trace is committed (fsync) at every turn end,
so a crash, Ctrl-C or a dead target loses at most the turn in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from voiceaudit import __version__
from voiceaudit.clock import NS_PER_MS, NS_PER_S, MonotonicClock, take_anchor
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.failures import FAILURE_KINDS, failure_kind
from voiceaudit.model import Header
from voiceaudit.pacing import Pacer
from voiceaudit.pacing_stats import BROKE_NS, P99_GOAL_NS, PacingHistogram, pacing_attrs
from voiceaudit.probe.greeting import GreetingCollector, await_greeting, wait_seconds
from voiceaudit.probe.history import STATS_EVERY_S, STATS_NAME, StatsHistory

# re-exported (as X as X): the CLI, the load driver and the tests take them from here
from voiceaudit.probe.options import ProbeOptions as ProbeOptions
from voiceaudit.probe.options import Ramp as Ramp
from voiceaudit.probe.options import parse_duration as parse_duration
from voiceaudit.probe.playout import Chunk, play_model, playout_name
from voiceaudit.probe.recorder import (
    CallRecorder,
    close_recording,
    flush_recording,
    recording_name,
)
from voiceaudit.probe.session import (
    RawChunk,
    ReplyOutcome,
    TurnResult,
    closed,
    connected,
    fill_attrs,
    note_after_reply,
    send_frame,
    session_failed,
)
from voiceaudit.probe.utterances import Utterance
from voiceaudit.probe.warm import warm_up
from voiceaudit.scenario import Scenario
from voiceaudit.targets.base import Target, TargetSession
from voiceaudit.trace_io import TraceWriter

if TYPE_CHECKING:
    from voiceaudit.probe.conversation import ConversationSink


@dataclass
class RunResult:
    trace_path: Path
    turns: list[TurnResult] = field(default_factory=list)
    interrupted: bool = False
    #: every frame's lateness over the run, as a histogram (see ``input.pacing``)
    pacing: PacingHistogram = field(default_factory=PacingHistogram)

    def pacing_summary(self) -> dict[str, Any] | None:
        """Pacing over the run: p50/p99 (to 0.1 ms, rounded up), the worst frame, the
        turns whose pacing broke; None when no frame was sent."""
        measured = [t for t in self.turns if t.pacing_max_ns is not None]
        if not measured:
            return None
        worst = max(measured, key=lambda t: t.pacing_max_ns or 0)
        p50, p99 = self.pacing.percentile_ns(50), self.pacing.percentile_ns(99)
        broke = [t for t in measured if t.pacing_broke]
        return {
            "frames": self.pacing.frames,
            "p50_ms": None if p50 is None else p50 / NS_PER_MS,
            "p99_ms": None if p99 is None else p99 / NS_PER_MS,
            "worst_ms": (worst.pacing_max_ns or 0) / NS_PER_MS,
            "worst": {
                "session": worst.session,
                "turn": worst.turn,
                "frame": worst.pacing_max_frame,
            },
            "broke_turns": len(broke),
            "broke_over_ms": BROKE_NS / NS_PER_MS,
            "p99_goal_ms": P99_GOAL_NS / NS_PER_MS,
            "broke": bool(broke) or (p99 is not None and p99 > P99_GOAL_NS),
        }

    def _by_concurrency(self) -> list[dict[str, Any]] | None:
        """Voice-to-voice p50/p95 per concurrency level; None with fewer than two levels
        (the report adds the knee: ``voiceaudit report``)."""
        per: dict[int, list[float]] = {}
        for t in self.turns:
            if t.ok and not t.warmup and t.concurrency is not None and t.voice_to_voice_ns:
                per.setdefault(t.concurrency, []).append(t.voice_to_voice_ns / NS_PER_MS)
        if len(per) < 2:
            return None
        return [
            {
                "concurrency": c,
                "n": len(v),
                "p50": round(float(np.percentile(v, 50)), 3),
                "p95": round(float(np.percentile(v, 95)), 3),
            }
            for c, v in sorted(per.items())
        ]

    def _turn_taking(self) -> dict[str, Any] | None:
        """Scenario runs: barge-in stop latency and cut-ins (None for a plain run)."""
        stops = [
            t.barge_in_stop_ns / NS_PER_MS for t in self.turns if t.barge_in_stop_ns is not None
        ]
        cut_ins = sum(t.cut_ins for t in self.turns)
        sounds = sum(t.sounds for t in self.turns)
        if not stops and not cut_ins and not sounds:
            return None
        out: dict[str, Any] = {
            "barge_ins": len(stops),
            "cut_ins": cut_ins,
            "sounds": sounds,
            "false_interruptions": sum(t.false_interruptions for t in self.turns),
            "stop_ms": None,
        }
        if stops:
            out["stop_ms"] = {
                "p50": round(float(np.percentile(stops, 50)), 3),
                "p95": round(float(np.percentile(stops, 95)), 3),
                "max": round(max(stops), 3),
            }
        return out

    @property
    def ok_turns(self) -> list[TurnResult]:
        return [t for t in self.turns if t.ok]

    @property
    def failed_turns(self) -> list[TurnResult]:
        return [t for t in self.turns if not t.ok]

    def failures_by_kind(self) -> dict[str, int]:
        """Failed turns per failure kind, in ``FAILURE_KINDS`` order (kinds with none left
        out)."""
        counts = {k: 0 for k in FAILURE_KINDS}
        for t in self.failed_turns:
            counts[failure_kind(t.reason, t.failure)] += 1
        return {k: n for k, n in counts.items() if n}

    def summary(self) -> dict[str, Any]:
        v2v = [t.voice_to_voice_ns for t in self.turns if t.ok and not t.warmup]
        vals = np.array([v for v in v2v if v is not None], dtype=np.float64) / NS_PER_MS
        out: dict[str, Any] = {
            "trace": str(self.trace_path),
            "turns": len(self.turns),
            "ok": len(self.ok_turns),
            "failed": len(self.failed_turns),
            "warmup": sum(1 for t in self.turns if t.warmup),
            "interrupted": self.interrupted,
            "voice_to_voice_ms": None,
            "failed_by_kind": self.failures_by_kind(),
            "failures": [
                {
                    "session": t.session,
                    "turn": t.turn,
                    "failure": failure_kind(t.reason, t.failure),
                    "reason": t.reason,
                }
                for t in self.failed_turns
            ],
            "pacing": self.pacing_summary(),
            "by_concurrency": self._by_concurrency(),
            "turn_taking": self._turn_taking(),
        }
        if len(vals):
            out["voice_to_voice_ms"] = {
                "n": len(vals),
                "p50": round(float(np.percentile(vals, 50)), 3),
                "p95": round(float(np.percentile(vals, 95)), 3),
                "min": round(float(vals.min()), 3),
                "max": round(float(vals.max()), 3),
            }
        return out


class Observer(Protocol):
    """Progress reporting; the CLI plugs a progress bar in. The probe never imports rich."""

    def turn_done(self, result: TurnResult) -> None: ...

    def message(self, text: str) -> None: ...


class _NullObserver:
    def turn_done(self, result: TurnResult) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class _Sink:
    """Receives what a target session observes and files it under the current turn."""

    def __init__(self, writer: TraceWriter, session: str) -> None:
        self.writer = writer
        self.session = session
        self.turn: int | None = None
        self.chunks: list[RawChunk] = []
        self.first_audio = asyncio.Event()
        self.done = asyncio.Event()
        #: the target has signalled the end of a reply on this connection: from then on a
        #: reply that goes quiet without that signal stalled
        self.done_seen = False
        self.failure: str | None = None
        self.failed = asyncio.Event()
        #: the failure came after the turn's reply was done, or between turns: it ends the
        #: connection, not the turn
        self.failed_late = False
        self.last_audio_ns = 0
        self.late_chunks = 0
        self.samples_sent = 0
        #: set while the probe waits for the target's greeting: reply audio goes there
        self.greeting: GreetingCollector | None = None
        #: the session's call recording (``run --record``)
        self.recorder: CallRecorder | None = None

    def begin(self, turn: int) -> None:
        self.turn = turn
        self.chunks = []
        self.first_audio.clear()
        self.done.clear()

    def finish(self) -> None:
        self.turn = None

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.writer.event(self.session, self.turn, t_ns, "pipeline", stage, name, attrs)

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        if self.greeting is not None:
            self.greeting.add((t_ns, pcm16, rate, wire_bytes, queued_ns))
            return
        if self.turn is None:
            self.late_chunks += 1
            return
        if not pcm16:
            return
        self.chunks.append((t_ns, pcm16, rate, wire_bytes, queued_ns))
        self.last_audio_ns = t_ns
        self.first_audio.set()

    def reply_done(self, t_ns: int) -> None:
        self.done_seen = True
        if self.greeting is not None:
            self.greeting.done.set()
            return
        self.done.set()

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            self.failed_late = self.turn is None or self.done.is_set()
        self.failed.set()


async def _open(ts: TargetSession, *, record: bool = False) -> None:
    """Open a target session, first paying the probe's first-use costs off the loop when
    the session asks for it, or the run records its calls (which resample: the first
    resample imports scipy.signal) (voiceaudit.probe.warm: before any connection is open)."""
    if ts.warm_up_first or record:
        await warm_up()
    await ts.open()


class Probe:
    """Runs sessions against a target and writes one trace."""

    def __init__(
        self,
        target: Target,
        utterances: list[Utterance],
        options: ProbeOptions,
        trace_path: Path,
        *,
        observer: Observer | None = None,
        run_config: dict[str, Any] | None = None,
        scenario: Scenario | None = None,
    ) -> None:
        if not utterances and scenario is None:
            raise UsageError("nothing to replay: no utterances")
        if scenario is not None and options.ramp is not None:
            raise UsageError("--scenario and --ramp do not go together")
        #: a scripted conversation per session instead of the utterances (``run --scenario``)
        self.scenario = scenario
        self.target = target
        self.utterances = utterances
        self.options = options
        self.trace_path = trace_path
        self.observer: Observer = observer or _NullObserver()
        self.clock = MonotonicClock()
        self.pacer = Pacer()
        self.result = RunResult(trace_path)
        self.run_config = run_config or {}
        #: no new turn starts (first Ctrl-C); the turns in flight finish
        self._stop = asyncio.Event()
        #: the turns in flight end now, failed ``interrupted`` (second Ctrl-C)
        self._cut = asyncio.Event()
        #: set when a ramp's profile is over: no new turns, the ones in flight finish
        self._winding_down = asyncio.Event()
        #: sessions running now (connected or connecting, not yet closed)
        self._active = 0
        #: in a ramp: the step (0-based) that started each slot
        self._slot_level: dict[int, int] = {}
        #: per session: when the caller has heard its last reply to the end (playout model)
        self._heard_until: dict[str, int] = {}
        #: the periodic statistics written while the run goes on (--duration, --stats-every)
        self._history: StatsHistory | None = None
        #: the phase origin of every session's frame deadlines (see phased)
        self._epoch_ns = self.clock.now_ns()

    def stop(self) -> None:
        """Ask the run to stop after the turns in flight (the first Ctrl-C): no new turn
        starts; each turn in flight ends as it would have (its reply, its timeout)."""
        self._stop.set()

    def cut(self) -> None:
        """Stop now (the second Ctrl-C): the turns in flight end at once, as failed turns
        of kind ``interrupted`` (what they received is kept), and no new turn starts."""
        self._stop.set()
        self._cut.set()

    # -- what a conversation sees of the probe (voiceaudit.probe.session.TurnHost) ----------

    @property
    def pacing(self) -> PacingHistogram:
        return self.result.pacing

    @property
    def active_sessions(self) -> int:
        return self._active

    def stopping(self) -> bool:
        return self._stop.is_set()

    def winding_down(self) -> bool:
        return self._winding_down.is_set()

    def cutting(self) -> bool:
        return self._cut.is_set()

    def add_turn(self, result: TurnResult) -> None:
        """A finished turn: into the run's result, the stats history, and to the observer."""
        self.result.turns.append(result)
        if self._history is not None:
            self._history.add(result, self._active)
        self.observer.turn_done(result)

    def _header(self) -> Header:
        o = self.options
        return Header(
            run_id=uuid.uuid4().hex[:16],
            voiceaudit_version=__version__,
            # the path the caller's audio takes (phone, webrtc, websocket, ...): the report
            # labels results by it
            target={**self.target.config.describe(), "path": self.target.path},
            host={
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
            },
            clock={"name": self.clock.name, "resolution_ns": self.clock.resolution_ns()},
            anchors=(take_anchor(self.clock),),
            config={
                "sessions": self._slots,
                **({} if o.ramp is None else {"ramp": o.ramp.describe()}),
                **({} if o.duration_s is None else {"duration_s": o.duration_s}),
                "turns": o.turns,
                "repeat": o.repeat,
                "warmup": o.warmup,
                "frame_ms": o.frame_ms,
                "speed": o.speed,
                "timeout_s": o.timeout_s,
                "playout": self._playout_name(),
                "audio": [u.name for u in self.utterances],
                **self.run_config,
            },
        )

    def _playout_name(self) -> str:
        o = self.options
        return playout_name(o.playout, o.jitter_buffer_ms * NS_PER_MS)

    def _turns_per_session(self) -> int | float:
        o = self.options
        if o.ramp is not None or o.duration_s is not None:
            return math.inf  # until the profile (or the duration) ends
        return o.turns if o.turns is not None else len(self.utterances) * o.repeat

    @property
    def _slots(self) -> int:
        o = self.options
        if self.scenario is not None:
            return len(self.scenario.sessions)
        return o.sessions if o.ramp is None else o.ramp.end

    async def _ramp(self, writer: TraceWriter) -> None:
        """Start the profile's sessions step by step; wind down after the hold."""
        ramp = self.options.ramp
        assert ramp is not None
        t0 = self.clock.now_ns()
        tasks: list[asyncio.Task[None]] = []
        started = 0
        try:
            for level, (at_s, n) in enumerate(ramp.levels()):
                await self._sleep_until(t0 + round(at_s * NS_PER_S))
                if self._stop.is_set():
                    break
                self._slot_level.update(dict.fromkeys(range(started, n), level))
                self.observer.message(f"ramp: {n} session(s)")
                tasks += [asyncio.create_task(self._slot(i, writer)) for i in range(started, n)]
                started = n
            await self._sleep_until(t0 + round(ramp.duration_s * NS_PER_S))
            self._winding_down.set()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - self.clock.now_ns()) / NS_PER_S
        if delay > 0:
            await self._sleep(delay)

    def _more_turns(self, turn: int, total: int | float) -> bool:
        return turn < total and not (self._stop.is_set() or self._winding_down.is_set())

    async def run(self) -> RunResult:
        writer = TraceWriter(self.trace_path, self._header(), secrets=self.target.config.secrets())
        reason = "complete"
        o = self.options
        history = None
        every = o.stats_every_s or (STATS_EVERY_S if o.duration_s is not None else None)
        if every is not None:
            history = StatsHistory(self.trace_path.parent / STATS_NAME, self.clock, every)
            self._history = history
        timer: asyncio.TimerHandle | None = None
        if o.duration_s is not None:
            timer = asyncio.get_running_loop().call_later(o.duration_s, self._winding_down.set)
        try:
            if history is not None:
                history.start()
            if self.options.ramp is not None:
                await self._ramp(writer)
            else:
                await asyncio.gather(*(self._slot(i, writer) for i in range(self._slots)))
        except asyncio.CancelledError:
            reason = "interrupted"
            self.result.interrupted = True
            raise
        except BaseException:
            reason = "error"
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if history is not None:
                history.close(self._active)
            if self._stop.is_set():
                reason = "interrupted"
                self.result.interrupted = True
            writer.close(reason, anchor=take_anchor(self.clock))
        return self.result

    async def _slot(self, slot: int, writer: TraceWriter) -> None:
        self._active += 1
        try:
            await self._slot_turns(slot, writer)
        finally:
            self._active -= 1

    async def _slot_turns(self, slot: int, writer: TraceWriter) -> None:
        if self.scenario is not None:
            await self._conversation(slot, writer)
            return
        total = self._turns_per_session()
        turn = 0
        conn = 0
        while self._more_turns(turn, total):
            base = f"{self.options.session_prefix}s{slot}"
            sid = base if conn == 0 else f"{base}.{conn}"
            conn += 1
            sink = _Sink(writer, sid)
            ts = self.target.session(sink)
            level = self._slot_level.get(slot)
            writer.event(
                sid,
                None,
                self.clock.now_ns(),
                "probe",
                "session",
                "session.connect_start",
                None if level is None else {"ramp_step": level},
            )
            try:
                await _open(ts, record=self.options.record)
            except TargetError as exc:
                session_failed(writer, sid, self.clock.now_ns(), exc)
                self.record_failed(
                    writer, sid, turn, f"connect failed: {exc.message}", "connect_failed"
                )
                writer.commit()
                turn += 1
                if not self.result.ok_turns and conn == 1 and slot == 0:
                    # The target is not there at all: say so instead of failing every turn.
                    raise
                await self._sleep(0.2)
                continue
            connected_ns = self.clock.now_ns()
            connected(writer, sid, connected_ns, ts)
            sink.recorder = self._recorder(sid, ts, connected_ns)
            try:
                if not await self._greet(ts, sink, writer, sid, connected_ns, sink.failed.is_set):
                    # broke while greeting: the first turn fails, the next gets a new call
                    if self._more_turns(turn, total):
                        self.record_failed(writer, sid, turn, sink.failure or "target closed")
                        await writer.commit_async()
                        turn += 1
                    continue
                while self._more_turns(turn, total):
                    utt = self.utterances[(turn + slot) % len(self.utterances)]
                    healthy = await self._turn(ts, sink, writer, turn, utt, slot)
                    turn += 1
                    if not healthy:
                        break
                    # the gap runs from the reply's end as the caller hears it (a target
                    # that sends faster than real time is still playing when it is done)
                    playing = self._heard_until.pop(sid, 0) - self.clock.now_ns()
                    await self._sleep(max(0, playing) / NS_PER_S + self.options.gap_ms / 1000)
                    if sink.failed.is_set():
                        break  # broke between turns: the next turn gets a new connection
            finally:
                with contextlib.suppress(Exception):
                    await ts.close()
                end_ns = self.clock.now_ns()
                closed(writer, sid, end_ns, sink.failure)
                close_recording(sink.recorder, writer, sid, end_ns)

    async def _greet(
        self,
        ts: TargetSession,
        sink: _Sink | ConversationSink,
        writer: TraceWriter,
        sid: str,
        connected_ns: int,
        failed: Callable[[], bool],
    ) -> bool:
        """Wait for the target's greeting before a session's first turn, when the options or
        the protocol say so (:mod:`voiceaudit.probe.greeting`), then for the gap after it.
        False when the session broke meanwhile."""
        o = self.options
        configured = o.greeting_wait_s
        if configured is None and self.scenario is not None:
            ms = self.scenario.greeting_wait_ms
            configured = None if ms is None else ms / 1000
        wait_s = wait_seconds(configured, ts)
        if wait_s <= 0:
            return True
        collector = sink.greeting = GreetingCollector()
        try:
            got = await await_greeting(
                ts=ts,
                collector=collector,
                writer=writer,
                sid=sid,
                connected_ns=connected_ns,
                wait_s=wait_s,
                idle_s=o.idle_s,
                playout=o.playout,
                depth_ns=o.jitter_buffer_ms * NS_PER_MS,
                now=self.clock.now_ns,
                stop=[self._stop, self._cut],
                failed=failed,
            )
        finally:
            sink.greeting = None
        if sink.recorder is not None:
            sink.recorder.heard(collector.chunks)
            flush_recording(sink.recorder, writer, sid)
        await writer.commit_async()
        if failed():
            return False
        rest = got.ready_ns + o.gap_ms * NS_PER_MS - self.clock.now_ns()
        if rest > 0:
            await self._sleep(rest / NS_PER_S)
        return not failed()

    async def _conversation(self, slot: int, writer: TraceWriter) -> None:
        """One scenario session (voiceaudit.probe.conversation): on one connection while it
        works; after a failed or timed-out turn the script goes on, from its next turn, on a
        new connection (session id ``s<slot>.<n>``), as a plain run's sessions do."""
        from voiceaudit.probe.conversation import Conversation

        assert self.scenario is not None
        base = f"{self.options.session_prefix}s{slot}"
        pending = list(self.scenario.sessions[slot].turns)
        index = 0
        conn = 0
        while pending and not (self._stop.is_set() or self._winding_down.is_set()):
            sid = base if conn == 0 else f"{base}.{conn}"
            conn += 1
            conv = Conversation(
                self, self.scenario, slot, sid, writer, first_turn=index, turns=pending
            )
            ts = self.target.session(conv.sink)
            writer.event(
                sid, None, self.clock.now_ns(), "probe", "session", "session.connect_start"
            )
            try:
                await _open(ts, record=self.options.record)
            except TargetError as exc:
                session_failed(writer, sid, self.clock.now_ns(), exc)
                first = conn == 1 and slot == 0 and not self.result.ok_turns
                # The target is not there at all: every turn fails and the run says so;
                # later, one turn fails per attempt, as in a plain run.
                for _ in pending if first else pending[:1]:
                    self.record_failed(
                        writer, sid, index, f"connect failed: {exc.message}", "connect_failed"
                    )
                    index += 1
                pending = [] if first else pending[1:]
                writer.commit()
                if first:
                    raise
                await self._sleep(0.2)
                continue
            connected_ns = self.clock.now_ns()
            connected(writer, sid, connected_ns, ts)
            conv.sink.recorder = self._recorder(sid, ts, connected_ns)
            try:
                if await self._greet(
                    ts, conv.sink, writer, sid, connected_ns, conv.sink.has_failed
                ):
                    await conv.run(ts)
                else:
                    # broke while greeting: the script's next turn fails, the rest goes on
                    # on a new connection
                    if conv.pending:
                        self.record_failed(writer, sid, index, conv.sink.failure or "target closed")
                        await writer.commit_async()
                        conv.pending.pop(0)
                        conv.next_index += 1
            finally:
                with contextlib.suppress(Exception):
                    await ts.end_turn()
                with contextlib.suppress(Exception):
                    await ts.close()
                broke = conv.sink.failure if conv.sink.failed else None
                end_ns = self.clock.now_ns()
                closed(writer, sid, end_ns, broke)
                close_recording(conv.sink.recorder, writer, sid, end_ns)
            pending, index = conv.pending, conv.next_index

    def _recorder(self, sid: str, ts: TargetSession, connected_ns: int) -> CallRecorder | None:
        """The session's call recording (``run --record``), on the call's media clock: its
        sample 0 is the start of the call's media (greeting latency's origin)."""
        if not self.options.record:
            return None
        return CallRecorder(
            self.trace_path.parent / recording_name(sid),
            ts.media_start_ns() or connected_ns,
            input_rate=ts.input_rate,
            playout=self.options.playout,
            depth_ns=self.options.jitter_buffer_ms * NS_PER_MS,
            warn=self.observer.message,
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early on a stop or (in a ramp) at the profile's end."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._winding_down)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def record_failed(
        self, writer: TraceWriter, sid: str, turn: int, reason: str, failure: str | None = None
    ) -> None:
        """A turn that never ran (its connection could not be opened, its session broke)."""
        warm = turn < self.options.warmup
        kind = failure_kind(reason, failure)
        writer.event(
            sid,
            turn,
            self.clock.now_ns(),
            "probe",
            "turn",
            "turn.end",
            {"ok": False, "reason": reason, "failure": kind, "warmup": warm},
        )
        writer.count("turns_failed")
        res = TurnResult(sid, turn, False, warm, None, reason, failure=kind)
        self.add_turn(res)

    def phased(self, earliest_ns: int, slot: int, frame_ns: float) -> int:
        """The first instant from ``earliest_ns`` at this slot's phase: session k of N has
        its frame deadlines k/N of a frame after the run's epoch, so N sessions' frames fall
        due spread over the frame period, as independent callers' would, instead of N at
        once (the last of such a burst would leave N sends late)."""
        period = max(1, round(frame_ns))
        phase = self._epoch_ns + slot * period // self._slots
        return earliest_ns + (phase - earliest_ns) % period

    async def _turn(
        self,
        ts: TargetSession,
        sink: _Sink,
        writer: TraceWriter,
        turn: int,
        utt: Utterance,
        slot: int = 0,
    ) -> bool:
        """Play one utterance and collect the reply. Returns False when the session is broken."""
        o = self.options
        sid = sink.session
        rate = ts.input_rate
        pcm, speech_start, speech_end = utt.at_rate(rate)
        n = len(pcm) // 2
        frame = max(1, rate * o.frame_ms // 1000)
        ns_per_sample = NS_PER_S / (rate * o.speed)
        warm = turn < o.warmup

        sink.begin(turn)
        await ts.start_turn(turn)
        t0 = self.phased(self.clock.now_ns() + 5 * NS_PER_MS, slot, frame * ns_per_sample)
        writer.event(
            sid,
            turn,
            t0,
            "probe",
            "turn",
            "turn.start",
            {
                "audio": utt.name,
                "audio_sha256": utt.sha256,
                "rate": rate,
                "n_samples": n,
                "speech_start_sample": speech_start,
                "speech_end_sample": speech_end,
                "warmup": warm,
                "speed": o.speed,
                "text": utt.text,
                "frame_samples": frame,
                # samples sent on this connection before this turn: the turn's sample a is
                # the connection's sample session_sample_offset + a (+ any silence the
                # transport added on its own, below)
                "session_sample_offset": sink.samples_sent,
                **fill_attrs(ts),
            },
        )
        speech_end_ns = t0 + round(speech_end * ns_per_sample)
        writer.event(
            sid, turn, speech_end_ns, "probe", "input", "input.speech_end", {"sample": speech_end}
        )
        silence = bytes(frame * 2)
        give_up_ns = speech_end_ns + round(o.timeout_s * NS_PER_S)
        k = 0
        a = 0
        worst: tuple[int | None, int | None] = (None, None)
        concurrency: int | None = None
        # Every frame sent, as the columns of one input.frames event (written below).
        sent_ns: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        deadlines: list[int] = []
        while True:
            b = min(a + frame, n) if a < n else a + frame
            data = pcm[2 * a : 2 * b] if a < n else silence
            deadline = t0 + round(b * ns_per_sample)
            await self.pacer.wait_until(deadline)
            if sink.failed.is_set() or self._cut.is_set():
                break
            t = self.clock.now_ns()
            if not await send_frame(ts, sink, data):
                break
            sink.samples_sent += b - a
            sent_ns.append(t)
            starts.append(a)
            ends.append(b)
            deadlines.append(deadline)
            if a < speech_end <= b:
                concurrency = self._active
                writer.event(
                    sid,
                    turn,
                    t,
                    "probe",
                    "input",
                    "input.speech_end_sent",
                    # concurrency: the sessions running when the turn's speech ended
                    {"frame": k, "late_ns": t - deadline, "concurrency": concurrency},
                )
                await ts.speech_ended()
            k += 1
            a = b
            # After the recording, keep streaming silence like an open microphone until the
            # reply starts (or we give up).
            if a >= n and (sink.first_audio.is_set() or deadline >= give_up_ns):
                break
        if sent_ns:
            first = sent_ns[0]
            writer.event(
                sid,
                turn,
                first,
                "probe",
                "input",
                "input.frames",
                {
                    "dt_ns": [t - first for t in sent_ns],
                    "a": starts,
                    "b": ends,
                    "sched_dt_ns": [d - first for d in deadlines],
                },
            )
            pacing = pacing_attrs(sent_ns, deadlines)
            writer.event(sid, turn, self.clock.now_ns(), "probe", "input", "input.pacing", pacing)
            self.result.pacing.add(
                pacing["hist_bin_ns"], pacing["hist_bins"], pacing["hist_counts"]
            )
            worst = (pacing["max_ns"], pacing["max_frame"])
        writer.event(sid, turn, self.clock.now_ns(), "probe", "input", "input.done", {"frames": k})

        if not sink.failed.is_set() and not self._cut.is_set():
            await self._await_reply(sink, give_up_ns)
        with contextlib.suppress(Exception):
            await ts.end_turn()
        sink.finish()
        fault = sink.failed.is_set() and not sink.failed_late
        if sink.failed.is_set() and sink.failed_late:
            # The reply was complete before the target broke: the turn stands, the
            # connection does not (the next turn gets a new one).
            note_after_reply(writer, sid, turn, self.clock.now_ns(), sink.failure)
        out = ReplyOutcome(
            sid,
            turn,
            sink.chunks,
            sink.failure,
            fault,
            sink.done.is_set(),
            speech_end_ns,
            warm,
            expects_done=sink.done_seen,
        )
        result = self.close_reply(writer, out)
        result = dataclasses.replace(
            result, pacing_max_ns=worst[0], pacing_max_frame=worst[1], concurrency=concurrency
        )
        if sink.recorder is not None:
            # the caller's audio as sent (the frames that went out, each at its schedule)
            # and the reply as heard
            sink.recorder.caller(t0, pcm[: 2 * min(ends[-1], n)] if ends else b"", rate)
            sink.recorder.heard(out.chunks)
            flush_recording(sink.recorder, writer, sid)
        # A broken connection, or one that stopped answering (a timeout: a late reply would
        # land in the next turn), is not used again: the next turn gets a fresh one.
        healthy = not sink.failed.is_set() and result.failure != "timeout"
        await writer.commit_async()
        self.add_turn(result)
        return healthy

    async def _await_reply(self, sink: _Sink, give_up_ns: int) -> None:
        idle_ns = round(self.options.idle_s * NS_PER_S)
        while not (sink.done.is_set() or sink.failed.is_set() or self._cut.is_set()):
            now = self.clock.now_ns()
            if not sink.chunks and now >= give_up_ns:
                return
            if sink.chunks and now - sink.last_audio_ns >= idle_ns:
                return
            waiters = [asyncio.ensure_future(e.wait()) for e in (sink.done, sink.failed, self._cut)]
            try:
                await asyncio.wait(waiters, timeout=0.05)
            finally:
                for w in waiters:
                    w.cancel()

    def close_reply(self, writer: TraceWriter, out: ReplyOutcome) -> TurnResult:
        """Analyse a turn's reply (:class:`~voiceaudit.probe.session.ReplyOutcome`), write its
        reply events and ``turn.end``.

        The turn fails (``ok: false``, ``reason``, ``failure``) when the target failed
        during it (even after reply audio arrived: what was heard is kept as
        ``informative_voice_to_voice_ns``), when the run was cut (second Ctrl-C) before
        its reply was done, when no reply audio came (``timeout``, or ``no_reply`` when
        the target said its reply was done), when the reply went quiet without the end
        signal the target gave its earlier replies (``expects_done``: it stalled), and
        when the reply holds no audible sample."""
        sid, turn, chunks, failure, failed = out.sid, out.turn, out.chunks, out.failure, out.failed
        done = out.done
        speech_end_ns, warm, expects_done = out.speech_end_ns, out.warm, out.expects_done
        reason: str | None = None
        kind: str | None = None
        v2v: int | None = None
        first_byte: int | None = None
        if failed:
            reason = failure or "failed"
            kind = failure_kind(reason)
        elif self._cut.is_set() and not done:
            reason, kind = "interrupted", "interrupted"
        elif not chunks and done:
            reason, kind = "no reply: the target ended its reply without audio", "no_reply"
        elif not chunks:
            reason = f"timeout: no reply audio within {self.options.timeout_s:g} s of speech end"
            kind = "timeout"
        elif expects_done and not done:
            reason = (
                f"timeout: the reply stalled (no audio for {self.options.idle_s:g} s and no "
                "end-of-reply signal)"
            )
            kind = "timeout"
        if chunks:
            from voiceaudit.audio import first_audible, from_pcm16

            rate = chunks[0][2]
            first = min(c[0] for c in chunks)
            played = [Chunk(c[0], len(c[1]) // 2) for c in chunks]
            queued = [c[4] for c in chunks]
            writer.event(
                sid,
                turn,
                first,
                "probe",
                "reply",
                "reply.chunks",
                {
                    "dt_ns": [c[0] - first for c in chunks],
                    "samples": [c.samples for c in played],
                    "bytes": [len(c[1]) for c in chunks],
                    "wire_bytes": [c[3] for c in chunks],
                    "rate": rate,
                    # a carrier's buffer: each chunk's wait in it (only where one was modelled)
                    **({"queued_ns": queued} if any(q is not None for q in queued) else {}),
                },
            )
            audio = from_pcm16(b"".join(c[1] for c in chunks))
            first_byte = chunks[0][0] - speech_end_ns
            p = play_model(
                played,
                rate,
                model=self.options.playout,
                depth_ns=self.options.jitter_buffer_ms * NS_PER_MS,
            )
            writer.event(sid, turn, chunks[0][0], "probe", "reply", "reply.first_byte")
            writer.event(
                sid,
                turn,
                p.start_ns,
                "probe",
                "reply",
                "reply.playout_start",
                {"model": self._playout_name(), "wait_ns": p.wait_ns},
            )
            for u in p.underruns:
                writer.event(
                    sid,
                    turn,
                    u.at_ns,
                    "probe",
                    "reply",
                    "reply.underrun",
                    {"gap_ns": u.gap_ns, "chunk": u.chunk},
                )
            self._heard_until[sid] = p.end_ns
            writer.event(
                sid,
                turn,
                p.end_ns,
                "probe",
                "reply",
                "reply.end",
                {
                    "samples": sum(c.samples for c in played),
                    "underruns": len(p.underruns),
                    "underrun_ns": sum(u.gap_ns for u in p.underruns),
                    "buffer_ns": p.buffer_ns,
                    **({} if p.target_ns is None else {"target_ns": p.target_ns}),
                },
            )
            onset = first_audible(audio, rate)
            if onset is None:
                if reason is None:
                    reason, kind = "reply audio is silent (no audible sample)", "no_reply"
            else:
                heard = p.heard_at(onset)
                writer.event(
                    sid,
                    turn,
                    heard,
                    "probe",
                    "reply",
                    "reply.audible",
                    {
                        "sample": onset,
                        "onset_ms": round(onset * 1000 / rate, 3),
                    },
                )
                v2v = heard - speech_end_ns
            if self.options.save_audio:
                self._save_reply(sid, turn, audio, rate)
        ok = reason is None
        attrs: dict[str, Any] = {"ok": ok, "warmup": warm}
        informative: int | None = None
        if ok:
            attrs["voice_to_voice_ns"] = v2v
        else:
            attrs["reason"] = reason
            attrs["failure"] = kind
            if v2v is not None:
                # Heard before the fault: a figure to read, never one to count.
                informative, v2v = v2v, None
                attrs["informative_voice_to_voice_ns"] = informative
        writer.event(sid, turn, self.clock.now_ns(), "probe", "turn", "turn.end", attrs)
        writer.count("turns_ok" if ok else "turns_failed")
        return TurnResult(
            sid,
            turn,
            ok,
            warm,
            v2v,
            reason,
            first_byte_ns=first_byte,
            failure=kind,
            informative_voice_to_voice_ns=informative,
        )

    def _save_reply(self, sid: str, turn: int, audio: np.ndarray[Any, Any], rate: int) -> None:
        import soundfile

        d = self.trace_path.parent / "reply_audio"
        d.mkdir(exist_ok=True)
        soundfile.write(str(d / f"{sid}-t{turn}.wav"), audio, rate, subtype="PCM_16")


async def run_probe(
    target: Target,
    utterances: list[Utterance],
    options: ProbeOptions,
    trace_path: Path,
    *,
    observer: Observer | None = None,
    run_config: dict[str, Any] | None = None,
    on_start: Callable[[Probe], Awaitable[None] | None] | None = None,
) -> RunResult:
    probe = Probe(target, utterances, options, trace_path, observer=observer, run_config=run_config)
    if on_start is not None:
        r = on_start(probe)
        if r is not None:
            await r
    return await probe.run()


def default_out_dir(base: Path = Path("voiceaudit-runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = base / stamp
    i = 1
    while d.exists():
        d = base / f"{stamp}-{i}"
        i += 1
    return d
