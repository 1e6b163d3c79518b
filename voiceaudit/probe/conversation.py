"""Scenario runs: a scripted conversation per session, through an open microphone.

``voiceaudit run --scenario FILE`` (docs/scenarios.md) runs one :class:`Conversation` per
scenario session. Unlike a plain run, the microphone never closes: frames go out at
real-time pace for the whole session — the scripted speech where the script puts it,
silence everywhere else — so the caller can pause inside an utterance, talk over a reply
(``interrupt``) or make a short sound during it (``sound``), as callers do.

**Turns.** Each scripted turn is a trace turn. An interruption opens one more: the
interrupting speech is the caller's next turn (``turn.start`` attribute
``interrupts_turn``), and its reply is the response to the interruption. Turns may
overlap: the interrupted turn's reply is still arriving while the interrupting turn is
being said.

**Which reply is whose.** Reply audio arrives in *segments*, one per reply the target
sends, ended by the target's "reply done" signal (Realtime ``response.done``, PCM
``turn_done``, WebRTC ``quiet_ms`` of silence, Pipecat's bot-stopped-speaking) or by
``idle_s`` without audio. A segment belongs to the oldest open turn whose reply has not
finished. A turn's *reply* is its first segment whose first audible sample is heard after
the caller's speech end; a segment heard before the speech end is a **cut-in** (the
target answered into a pause), recorded as ``reply.cut_in`` with the pause that
triggered it.

**Overlaps** start at the first frame boundary at or after the reply's first audible
sample (as heard, by the playout model) plus ``after_reply_ms``; the onset actually used
is recorded (``input.overlap``). When the turn closes, every overlap gets a
``reply.stop``: how long the reply was still heard after the overlap's onset (the
**barge-in stop latency**), split into the part before the reply's last audible chunk
arrived (with the server's own send time where the protocol gives one: the reference
pipeline's ``last_audio_sent`` stage event) and the part the client's buffer still
played after it. Over OpenAI Realtime the probe truncates the interrupted item when the
server signals the caller's speech (``input_audio_buffer.speech_started``) with the
audio it had played by then, as a client should (``reply.truncate``).

**Failures.** A :class:`Conversation` is one connection. When the target fails, the turns
open then fail with it (but one whose reply was already complete); after a timed-out turn
no scripted turn starts on the connection (a late reply would be filed under it). The
probe then runs the scripted turns left (``pending``) on a new connection
(docs/scenarios.md, "Failures and Ctrl-C").

Event formats: docs/trace-format.md ("Turn-taking events").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voiceaudit.audio import first_audible, from_pcm16, resample
from voiceaudit.clock import NS_PER_MS, NS_PER_S
from voiceaudit.errors import TargetError
from voiceaudit.probe.greeting import GreetingCollector
from voiceaudit.probe.playout import Chunk, Playout, play_model
from voiceaudit.probe.recorder import CallRecorder, flush_recording
from voiceaudit.probe.session import (
    RawChunk,
    ReplyOutcome,
    TurnHost,
    TurnResult,
    fill_attrs,
    note_after_reply,
    send_frame,
)
from voiceaudit.scenario import DTMF_SPACING_MS, Overlap, Scenario, Turn
from voiceaudit.targets.base import TargetSession
from voiceaudit.trace_io import TraceWriter

#: without a "cut" signal from the protocol, a reply counts as stopped by an overlap when
#: it was heard for less than this after the overlap's onset
STOPPED_WITHIN_NS = 2 * NS_PER_S
#: stages whose marks belong to the turn being said (the rest to the turn being answered)
_INPUT_STAGES = ("endpointing", "transcription")

#: the level of an audible sample at the end of a reply (-50 dBFS, linear)
AUDIBLE = 10 ** (-50 / 20)


def last_audible(
    samples: np.ndarray[Any, Any], rate: int, *, threshold: float = AUDIBLE
) -> int | None:
    """Index of the last audible sample: the last sample at or above ``threshold``
    (-50 dBFS, the onset detector's default level) in the last 5 ms window whose RMS is
    above it; None when no window is. Unlike the onset, the end is not traced down to
    digital silence: a codec's decaying tail counts while it is above the threshold
    (Opus after a cut mid-word: measured -32 dBFS 0-5 ms and -49 dBFS 5-10 ms after the
    last sample sent, so up to ~10 ms more of the reply is heard) and not below (the
    ringing at -60 dBFS and under that goes on for 20 ms or so)."""
    x = np.abs(np.asarray(samples, dtype=np.float64))
    w = max(1, rate * 5 // 1000)
    n = x.size // w
    if x.size == 0:
        return None
    windows = x[: n * w].reshape(n, w) if n else np.zeros((0, w))
    rms = np.sqrt((windows**2).mean(axis=1))
    loud = np.flatnonzero(rms > threshold)
    tail = x[n * w :]
    if tail.size and float(np.sqrt((tail**2).mean())) > threshold:
        start = n * w
    elif loud.size:
        start = int(loud[-1]) * w
    else:
        return None
    above = np.flatnonzero(x[start:] >= threshold)
    return start + int(above[-1]) if above.size else None


def _played(chunks: list[RawChunk], model: str, depth_ns: int) -> tuple[Playout, int]:
    played = [Chunk(c[0], len(c[1]) // 2) for c in chunks]
    return play_model(played, chunks[0][2], model=model, depth_ns=depth_ns), chunks[0][2]


def samples_heard_by(p: Playout, total: int, t_ns: int) -> int:
    """How many of the reply's ``total`` samples were heard by ``t_ns``."""
    lo, hi = 0, total
    while lo < hi:  # first sample heard after t_ns
        mid = (lo + hi) // 2
        if p.heard_at(mid) <= t_ns:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class Segment:
    """One reply the target sent: its chunks, how it ended, what the protocol said."""

    chunks: list[RawChunk] = field(default_factory=list)
    done_ns: int | None = None
    #: the protocol said the reply was cut (True), finished (False), or nothing (None)
    cut: bool | None = None
    #: the server's send time of its last audio (a ``audio.last_sent`` mark's server time)
    server_last_sent_ns: int | None = None
    #: first audible sample, once found, and when it is heard
    onset: int | None = None
    heard_ns: int | None = None
    #: heard while the caller was still speaking (before the turn's speech end)
    cut_in: bool = False
    #: the server signalled the caller's speech while this reply was playing
    speech_started_ns: int | None = None

    @property
    def samples(self) -> int:
        return sum(len(c[1]) // 2 for c in self.chunks)


@dataclass
class Placed:
    """An overlap put on the microphone."""

    overlap: Overlap
    start: int  # connection sample where its clip starts
    end: int
    onset_ns: int
    wanted_ns: int
    opens_turn: int | None


@dataclass
class TurnState:
    index: int
    name: str
    sha256: str
    start: int  # connection sample where this turn's audio starts
    n: int
    speech_start: int
    speech_end: int
    pauses: list[tuple[int, int]]
    t0_ns: int
    speech_end_ns: int
    interrupts_turn: int | None
    script: Turn | None
    warm: bool
    segments: list[Segment] = field(default_factory=list)
    main: Segment | None = None
    placed: list[Placed] = field(default_factory=list)
    overlaps_placed: bool = False
    speech_end_sent: bool = False
    closed: bool = False
    frames: tuple[list[int], list[int], list[int], list[int]] = field(
        default_factory=lambda: ([], [], [], [])
    )
    concurrency: int | None = None
    truncate: dict[str, Any] | None = None
    #: a key-press turn: (turn-relative sample at whose frame's send the key goes, key)
    presses: list[tuple[int, str]] = field(default_factory=list)
    pressed: int = 0
    #: when the target said this turn's speech ended (``endpoint`` marks, probe clock)
    endpoints: list[int] = field(default_factory=list)

    @property
    def reply_done(self) -> bool:
        return self.main is not None and self.main.done_ns is not None


class ConversationSink:
    """A target sink that files reply audio under the turn it answers (see module doc)."""

    def __init__(self, writer: TraceWriter, session: str, conv: Conversation) -> None:
        self.writer = writer
        self.session = session
        self.conv = conv
        self.failure: str | None = None
        self.failed = False
        self.samples_sent = 0
        self.late_chunks = 0
        self.open: Segment | None = None
        self.last_closed: Segment | None = None
        self.last_audio_ns = 0
        #: set while the probe waits for the target's greeting: reply audio goes there
        self.greeting: GreetingCollector | None = None
        #: the session's call recording (``run --record``)
        self.recorder: CallRecorder | None = None

    # -- routing ----------------------------------------------------------------------

    def _mark_turn(self, stage: str) -> TurnState | None:
        c = self.conv
        if c.ending is not None:
            return c.ending  # the target closing a turn's state (webrtc.jitter_buffer)
        if stage in _INPUT_STAGES and c.input_turn is not None and not c.input_turn.closed:
            return c.input_turn
        return c.reply_turn() or (
            c.input_turn if c.input_turn is not None and not c.input_turn.closed else None
        )

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        st = self._mark_turn(stage)
        self.writer.event(
            self.session, None if st is None else st.index, t_ns, "pipeline", stage, name, attrs
        )
        a = attrs or {}
        if name == "endpoint" and st is not None and st is self.conv.input_turn:
            st.endpoints.append(t_ns)
        seg = self.open if self.open is not None and self.open.chunks else self.last_closed
        if name == "response.done" and seg is not None:
            if a.get("status") == "cancelled" or a.get("cut") is True:
                seg.cut = True
            elif a.get("status") == "completed" or a.get("cut") is False:
                seg.cut = False if seg.cut is None else seg.cut
        elif name == "interrupted" and seg is not None:
            seg.cut = True
        elif name == "audio.last_sent" and seg is not None:
            server_t = a.get("server_t_ns")
            if type(server_t) is int:
                seg.server_last_sent_ns = server_t
        elif name == "carrier.mark_echo" and not a.get("cleared"):
            self._mark_echoed(t_ns, a.get("mark_ns"))
        elif name == "speech_started":
            live = self.open
            if live is not None and live.chunks and live.speech_started_ns is None:
                live.speech_started_ns = t_ns
                self.conv.truncate_due(live, t_ns)

    def _mark_echoed(self, t_ns: int, mark_ns: Any) -> None:
        """A phone carrier echoed a mark the bot placed before the caller talked over the
        reply playing now, after the caller's onset: everything the bot queued before the
        mark has been heard, so the interrupted reply ends there. (A bot that never clears
        lets its answer to the interruption queue right behind the old reply, and the caller
        hears one stream; the mark is the only boundary the protocol shows.)"""
        seg = self.open
        if seg is None or not seg.chunks or type(mark_ns) is not int:
            return
        owner = next((st for st in self.conv.turns if seg in st.segments), None)
        if owner is None:
            return
        onsets = [p.onset_ns for p in owner.placed if p.overlap.kind == "interrupt"]
        if onsets and mark_ns < min(onsets) <= t_ns:
            self.end_segment(t_ns)

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        if not pcm16:
            return
        if self.greeting is not None:
            self.greeting.add((t_ns, pcm16, rate, wire_bytes, queued_ns))
            return
        st = self.conv.reply_turn()
        if st is None:
            self.late_chunks += 1
            return
        if self.open is None:
            self.open = Segment()
            st.segments.append(self.open)
        seg = self.open
        seg.chunks.append((t_ns, pcm16, rate, wire_bytes, queued_ns))
        self.last_audio_ns = t_ns
        if seg.onset is None:
            self.conv.find_onset(st, seg)

    def reply_done(self, t_ns: int) -> None:
        if self.greeting is not None:
            self.greeting.done.set()
            return
        self.end_segment(t_ns)

    def end_segment(self, t_ns: int) -> None:
        seg = self.open
        if seg is None:
            return
        seg.done_ns = t_ns
        self.open = None
        self.last_closed = seg
        self.conv.reply_changed = True

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.failed = True

    def has_failed(self) -> bool:
        """The session broke."""
        return self.failed


class Conversation:
    """Runs one scenario session on one connection (see the module docstring)."""

    def __init__(
        self,
        probe: TurnHost,
        scenario: Scenario,
        slot: int,
        sid: str,
        writer: TraceWriter,
        first_turn: int = 0,
        turns: list[Turn] | None = None,
    ) -> None:
        self.probe = probe
        self.scenario = scenario
        self.script = scenario.sessions[slot]
        self.slot = slot
        self.sid = sid
        self.writer = writer
        self.turns: list[TurnState] = []
        self.input_turn: TurnState | None = None
        self.next_index = first_turn
        #: the scripted turns not yet started (a reconnected session goes on from these)
        self.pending: list[Turn] = list(self.script.turns if turns is None else turns)
        #: a turn timed out: the target stopped answering on this connection, so the next
        #: scripted turn waits for a new one (a late reply would be taken for its reply)
        self.stale = False
        self.reply_changed = False
        #: the verdict of the last ``reply.stop`` written for a sound
        self._false_interruption: bool | None = None
        #: the turn the target session's per-turn state is for (its ``start_turn``), and,
        #: while its ``end_turn`` runs, that turn: the marks it emits then are its own
        self.target_index = first_turn
        self.ending: TurnState | None = None
        self._truncates: list[tuple[Segment, int]] = []
        #: the target session, once run() has it
        self._ts: TargetSession | None = None
        self.sink = ConversationSink(writer, sid, self)
        self.mic: list[tuple[int, np.ndarray[Any, Any]]] = []
        #: with a recording: the frames sent since it was last handed the caller's audio
        self._mic_sent: list[tuple[int, bytes]] = []
        o = probe.options
        self.model = o.playout
        self.depth_ns = o.jitter_buffer_ms * NS_PER_MS
        self.rate = 0
        self.frame = 1
        self.nsps = 0.0
        self.t0 = 0
        #: the next scripted turn starts no earlier than this
        self.next_start_ns = 0
        self._clips: dict[int, tuple[np.ndarray[Any, Any], str]] = {}

    # -- clock ------------------------------------------------------------------------

    def t_of(self, pos: int) -> int:
        return self.t0 + round(pos * self.nsps)

    def pos_of(self, t_ns: int) -> int:
        return max(0, math.ceil((t_ns - self.t0) / self.nsps))

    def _scale(self, i: int) -> int:
        return i * self.rate // self.scenario.rate

    def _pcm(self, samples: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], str]:
        """int16 samples at the target's rate, and their sha256."""
        key = id(samples)
        got = self._clips.get(key)
        if got is None:
            x = (
                samples
                if self.rate == self.scenario.rate
                else resample(samples, self.scenario.rate, self.rate)
            )
            pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")
            got = (pcm, hashlib.sha256(pcm.tobytes()).hexdigest())
            self._clips[key] = got
        return got

    # -- reply bookkeeping ------------------------------------------------------------

    def reply_turn(self) -> TurnState | None:
        """The oldest open turn whose reply has not finished: where reply audio goes."""
        for st in self.turns:
            if not st.closed and not st.reply_done:
                return st
        return None

    def find_onset(self, st: TurnState, seg: Segment) -> None:
        """Look for the segment's first audible sample (cheap: only while none is found,
        and only when the newest chunk holds any sound)."""
        last = np.frombuffer(seg.chunks[-1][1], dtype="<i2")
        if not last.size or int(np.abs(last.astype(np.int32)).max()) < 8:
            return
        audio = from_pcm16(b"".join(c[1] for c in seg.chunks))
        onset = first_audible(audio, seg.chunks[0][2])
        if onset is None:
            return
        p, _ = _played(seg.chunks, self.model, self.depth_ns)
        seg.onset = onset
        seg.heard_ns = p.heard_at(onset)
        if seg.heard_ns < st.speech_end_ns and st.main is None:
            seg.cut_in = True
        elif st.main is None:
            st.main = seg

    def truncate_due(self, seg: Segment, t_ns: int) -> None:
        self._truncates.append((seg, t_ns))

    # -- running ----------------------------------------------------------------------

    def _new_turn(
        self,
        start: int,
        samples: np.ndarray[Any, Any],
        name: str,
        speech_start: int,
        speech_end: int,
        pauses: list[tuple[int, int]],
        script: Turn | None,
        interrupts: int | None,
        presses: list[tuple[int, str]] | None = None,
    ) -> TurnState:
        pcm, sha = self._pcm(samples)
        o = self.probe.options
        idx = self.next_index
        self.next_index += 1
        st = TurnState(
            index=idx,
            name=name,
            sha256=sha,
            start=start,
            n=int(pcm.size),
            speech_start=self._scale(speech_start),
            # a key-press turn "ends its speech" with the frame that carries its last key
            speech_end=presses[-1][0] if presses else min(int(pcm.size), self._scale(speech_end)),
            pauses=[(self._scale(a), self._scale(n)) for a, n in pauses],
            t0_ns=self.t_of(start),
            speech_end_ns=0,
            interrupts_turn=interrupts,
            script=script,
            warm=idx < o.warmup,
            presses=presses or [],
        )
        st.speech_end_ns = self.t_of(start + st.speech_end)
        self.mic.append((start, pcm))
        self.turns.append(st)
        self.input_turn = st
        self.writer.event(
            self.sid,
            idx,
            st.t0_ns,
            "probe",
            "turn",
            "turn.start",
            {
                "audio": name,
                "audio_sha256": sha,
                "rate": self.rate,
                "n_samples": st.n,
                "speech_start_sample": st.speech_start,
                "speech_end_sample": st.speech_end,
                "warmup": st.warm,
                "speed": o.speed,
                "text": None,
                "frame_samples": self.frame,
                "session_sample_offset": start,
                **({} if self._ts is None else fill_attrs(self._ts)),
                "scenario_session": self.script.name,
                "scenario_turn": None if script is None else script.index,
                "pauses": [list(p) for p in st.pauses],
                "interrupts_turn": interrupts,
                **({"dtmf": "".join(k for _, k in presses)} if presses else {}),
            },
        )
        self.writer.event(
            self.sid,
            idx,
            st.speech_end_ns,
            "probe",
            "input",
            "input.speech_end",
            {"sample": st.speech_end},
        )
        return st

    def _start_scripted(self, turn: Turn, pos: int) -> TurnState:
        say = turn.say
        assert say.speech_start is not None and say.speech_end is not None
        presses: list[tuple[int, str]] = []
        if turn.dtmf is not None:
            # key k is pressed DTMF_SPACING_MS * k into the turn: it goes out with the frame
            # that ends at the first frame boundary after that (frames never straddle)
            step = self.scenario.rate * DTMF_SPACING_MS // 1000
            for k, key in enumerate(turn.dtmf):
                at = self._scale(k * step)
                presses.append(((at // self.frame + 1) * self.frame, key))
        return self._new_turn(
            pos,
            say.samples,
            say.clip.name,
            say.speech_start,
            say.speech_end,
            [(p.at, p.length) for p in say.pauses],
            turn,
            None,
            presses,
        )

    def _place_overlaps(self, st: TurnState, pos: int) -> None:
        assert st.main is not None and st.main.heard_ns is not None and st.script is not None
        st.overlaps_placed = True
        for ov in st.script.during_reply:
            wanted = st.main.heard_ns + ov.after_reply_ns
            at = max(pos, self.pos_of(wanted))
            at = -(-at // self.frame) * self.frame  # a frame boundary: frames never straddle
            pcm, _ = self._pcm(ov.samples)
            onset = at + self._scale(ov.speech_start)
            end = at + min(int(pcm.size), self._scale(ov.speech_end))
            opens = None
            if ov.kind == "interrupt":
                opens = self.next_index
                self._new_turn(
                    at,
                    ov.samples,
                    ov.clip.name,
                    ov.speech_start,
                    ov.speech_end,
                    [],
                    None,
                    st.index,
                )
            else:
                self.mic.append((at, pcm))
            placed = Placed(ov, at, end, self.t_of(onset), wanted, opens)
            st.placed.append(placed)
            self.writer.event(
                self.sid,
                st.index,
                placed.onset_ns,
                "probe",
                "input",
                "input.overlap",
                {
                    "kind": ov.kind,
                    "clip": ov.clip.name,
                    "after_reply_ms": ov.after_reply_ns // NS_PER_MS,
                    "wanted_ns": wanted,
                    "start_ns": self.t_of(at),
                    "onset_ns": placed.onset_ns,
                    "end_ns": self.t_of(end),
                    "opens_turn": opens,
                },
            )

    def _frame(self, a: int, b: int) -> bytes:
        out = np.zeros(b - a, dtype="<i2")
        keep: list[tuple[int, np.ndarray[Any, Any]]] = []
        for start, pcm in self.mic:
            end = start + int(pcm.size)
            if end <= a:
                continue
            keep.append((start, pcm))
            lo, hi = max(a, start), min(b, end)
            if lo < hi:
                seg = out[lo - a : hi - a].astype(np.int32) + pcm[lo - start : hi - start]
                out[lo - a : hi - a] = np.clip(seg, -32768, 32767)
        self.mic = keep
        return out.tobytes()

    async def run(self, ts: TargetSession) -> None:
        self._ts = ts
        probe = self.probe
        o = probe.options
        self.rate = ts.input_rate
        self.frame = max(1, self.rate * o.frame_ms // 1000)
        self.nsps = NS_PER_S / (self.rate * o.speed)
        clock = probe.clock
        pending = self.pending
        for turn in pending:  # resample every clip before the clock starts
            self._pcm(turn.say.samples)
            for ov in turn.during_reply:
                self._pcm(ov.samples)
        self.t0 = probe.phased(clock.now_ns() + 5 * NS_PER_MS, self.slot, self.frame * self.nsps)
        pos = 0
        sink = self.sink
        await ts.start_turn(self.next_index)
        while True:
            live = [st for st in self.turns if not st.closed]
            if not live:
                # After the first Ctrl-C the turns in flight finish; none starts.
                if not pending or self.stale or probe.stopping():
                    break
                if probe.winding_down():
                    break
                if self.t_of(pos) >= self.next_start_ns:
                    live = [self._start_scripted(pending.pop(0), pos)]
            b = pos + self.frame
            deadline = self.t_of(b)
            await probe.pacer.wait_until(deadline)
            if sink.failed or probe.cutting():
                break
            data = self._frame(pos, b)
            t = clock.now_ns()
            if not await send_frame(ts, sink, data):
                break
            sink.samples_sent += self.frame
            if sink.recorder is not None:
                self._mic_sent.append((pos, data))
            owner = next((st for st in reversed(live) if st.start <= pos), None)
            if owner is not None:
                await self._sent(ts, owner, t, pos, b, deadline)
            pos = b
            await self._after_frame(ts, pos, live)
        # Whatever is still open failed or was cut.
        for st in self.turns:
            if not st.closed:
                await self._close(st)
        self._record_caller()
        if sink.failed and not self.turns and pending:
            # Broken before its first turn: that turn fails here, so a session that breaks
            # at once on every connection still comes to an end.
            pending.pop(0)
            probe.record_failed(self.writer, self.sid, self.next_index, sink.failure or "failed")
            self.next_index += 1

    async def _sent(
        self, ts: TargetSession, st: TurnState, t: int, a: int, b: int, deadline: int
    ) -> None:
        """Frame [a, b) of the connection went out at ``t``: file it under turn ``st``."""
        fr = st.frames
        fr[0].append(t)
        fr[1].append(a - st.start)
        fr[2].append(b - st.start)
        fr[3].append(deadline)
        while st.pressed < len(st.presses) and st.start + st.presses[st.pressed][0] <= b:
            key = st.presses[st.pressed][1]
            st.pressed += 1
            t_key = self.probe.clock.now_ns()
            try:
                await ts.send_dtmf(key)
            except TargetError as exc:
                self.sink.fail(f"protocol: {exc.message} (the scenario presses {key!r})")
                return
            self.writer.event(
                self.sid, st.index, t_key, "probe", "input", "input.dtmf", {"digit": key}
            )
        if not st.speech_end_sent and st.start + st.speech_end <= b:
            st.speech_end_sent = True
            st.concurrency = self.probe.active_sessions
            self.writer.event(
                self.sid,
                st.index,
                t,
                "probe",
                "input",
                "input.speech_end_sent",
                {"frame": len(fr[0]) - 1, "late_ns": t - deadline, "concurrency": st.concurrency},
            )
            await ts.speech_ended()

    async def _after_frame(self, ts: TargetSession, pos: int, live: list[TurnState]) -> None:
        clock = self.probe.clock
        now = clock.now_ns()
        sink = self.sink
        # A reply with audio but no "done" ends after idle_s of quiet.
        idle_ns = round(self.probe.options.idle_s * NS_PER_S)
        if sink.open is not None and sink.open.chunks and now - sink.last_audio_ns >= idle_ns:
            sink.end_segment(now)
        for seg, t_ns in self._truncates:
            await self._truncate(ts, seg, t_ns)
        self._truncates.clear()
        for st in live:
            if (
                not self.probe.stopping()  # stopping: no overlap opens a new turn
                and st.main is not None
                and st.main.heard_ns is not None
                and not st.overlaps_placed
                and st.script is not None
                and st.script.during_reply
            ):
                self._place_overlaps(st, pos)
        if self.reply_changed:
            self.reply_changed = False
            self.ending = next(
                (t for t in self.turns if t.index == self.target_index and not t.closed), None
            )
            try:
                with contextlib.suppress(Exception):
                    await ts.end_turn()
            finally:
                self.ending = None
            nxt = self.reply_turn()
            self.target_index = nxt.index if nxt is not None else self.next_index
            with contextlib.suppress(Exception):
                await ts.start_turn(self.target_index)
        timeout_ns = round(self.probe.options.timeout_s * NS_PER_S)
        for st in live:
            said = pos >= st.start + st.n
            if not said:
                continue
            answered = st.reply_done and all(pos >= p.start for p in st.placed)
            gave_up = st.main is None and now >= st.speech_end_ns + timeout_ns
            if answered or gave_up:
                await self._close(st)

    async def _truncate(self, ts: TargetSession, seg: Segment, t_ns: int) -> None:
        st = next((s for s in self.turns if seg in s.segments), None)
        if st is None or st.closed or seg is not st.main:
            return
        p, rate = _played(seg.chunks, self.model, self.depth_ns)
        now = self.probe.clock.now_ns()
        heard = samples_heard_by(p, seg.samples, now)
        end_ms = heard * 1000 // rate
        try:
            item = await ts.truncate(end_ms)
        except (TargetError, ConnectionError, OSError):
            return
        if item is None:
            return
        st.truncate = {"t_ns": now, "item_id": item, "audio_end_ms": end_ms, "signal_ns": t_ns}

    # -- closing a turn ---------------------------------------------------------------

    async def _close(self, st: TurnState) -> None:
        st.closed = True
        probe = self.probe
        w = self.writer
        sid = self.sid
        fr = st.frames
        if fr[0]:
            from voiceaudit.pacing_stats import pacing_attrs

            first = fr[0][0]
            w.event(
                sid,
                st.index,
                first,
                "probe",
                "input",
                "input.frames",
                {
                    "dt_ns": [t - first for t in fr[0]],
                    "a": fr[1],
                    "b": fr[2],
                    "sched_dt_ns": [d - first for d in fr[3]],
                },
            )
            pacing = pacing_attrs(fr[0], fr[3])
            w.event(sid, st.index, probe.clock.now_ns(), "probe", "input", "input.pacing", pacing)
            probe.pacing.add(pacing["hist_bin_ns"], pacing["hist_bins"], pacing["hist_counts"])
            worst: tuple[int | None, int | None] = (pacing["max_ns"], pacing["max_frame"])
        else:
            worst = (None, None)
        w.event(
            sid,
            st.index,
            probe.clock.now_ns(),
            "probe",
            "input",
            "input.done",
            {"frames": len(fr[0])},
        )
        cut_ins = self._write_cut_ins(st)
        stop_ns: int | None = None
        sounds = false_interruptions = 0
        main = st.main
        if main is not None and main.chunks:
            for placed in st.placed:
                got = self._write_stop(st, main, placed)
                if got is None:
                    continue
                if placed.overlap.kind == "interrupt":
                    stop_ns = got
                else:
                    sounds += 1
                    false_interruptions += self._false_interruption is True
            if st.truncate is not None:
                self._write_truncate(st, main)
        chunks = main.chunks if main is not None else []
        # A failure after this turn's reply was done ends the connection, not the turn.
        failed = self.sink.failed and not st.reply_done
        if self.sink.failed and not failed:
            note_after_reply(w, sid, st.index, probe.clock.now_ns(), self.sink.failure)
        done = main is not None and main.done_ns is not None
        failure = self.sink.failure if failed else None
        out = ReplyOutcome(sid, st.index, chunks, failure, failed, done, st.speech_end_ns, st.warm)
        result = probe.close_reply(w, out)
        result = dataclasses.replace(
            result,
            pacing_max_ns=worst[0],
            pacing_max_frame=worst[1],
            concurrency=st.concurrency,
            barge_in_stop_ns=stop_ns,
            cut_ins=cut_ins,
            sounds=sounds,
            false_interruptions=false_interruptions,
        )
        # The next scripted turn starts the gap after this reply was heard to its end.
        end = probe.clock.now_ns()
        if main is not None and main.chunks:
            end = max(end, _played(main.chunks, self.model, self.depth_ns)[0].end_ns)
        gap = st.script.gap_ns if st.script is not None else self._gap_after(st)
        self.next_start_ns = max(self.next_start_ns, end + gap)
        if result.failure == "timeout":
            self.stale = True
        rec = self.sink.recorder
        if rec is not None:
            # every reply the caller heard in this turn (cut-ins too), and the caller's
            # audio as sent so far
            for seg in st.segments:
                rec.heard(list(seg.chunks))
            self._record_caller()
            flush_recording(rec, w, sid)
        await w.commit_async()
        self._finish(result)

    def _record_caller(self) -> None:
        """Hand the recording the frames sent since the last time (one contiguous stretch
        of the microphone, sample ``pos`` spoken at ``t_of(pos)``)."""
        rec = self.sink.recorder
        if rec is None or not self._mic_sent:
            return
        sent, self._mic_sent = self._mic_sent, []
        rec.caller(self.t_of(sent[0][0]), b"".join(d for _, d in sent), self.rate)

    def _gap_after(self, st: TurnState) -> int:
        """An interruption turn's gap: the gap of the turn it interrupted."""
        for other in self.turns:
            if other.index == st.interrupts_turn and other.script is not None:
                return other.script.gap_ns
        return self.probe.options.gap_ms * NS_PER_MS

    def _finish(self, result: TurnResult) -> None:
        self.probe.add_turn(result)

    def _write_cut_ins(self, st: TurnState) -> int:
        """The target ended the caller's turn, or was heard, while the caller was still
        speaking: one ``reply.cut_in`` per pause (or before any pause) it happened in."""
        events: list[tuple[int, Segment | None]] = [
            (t, None) for t in st.endpoints if t < st.speech_end_ns
        ]
        events += [(s.heard_ns, s) for s in st.segments if s.cut_in and s.heard_ns is not None]
        by_pause: dict[int | None, dict[str, Any]] = {}
        for t_ns, seg in sorted(events, key=lambda e: e[0]):
            before = [
                (i, a, n) for i, (a, n) in enumerate(st.pauses) if self.t_of(st.start + a) <= t_ns
            ]
            key = before[-1][0] if before else None
            got = by_pause.get(key)
            if got is None:
                got = by_pause[key] = {
                    "t_ns": t_ns,
                    "pause_index": None,
                    "pause_ms": None,
                    "pause_start_ns": None,
                    "after_pause_start_ns": None,
                    "before_speech_end_ns": st.speech_end_ns - t_ns,
                    "endpoint_ns": None,
                    "audible": False,
                    "heard_ns": None,
                }
                if before:
                    i, a, n = before[-1]
                    ps = self.t_of(st.start + a)
                    got.update(
                        pause_index=i,
                        pause_ms=round(n * 1000 / self.rate),
                        pause_start_ns=ps,
                        after_pause_start_ns=t_ns - ps,
                    )
            if seg is None:
                if got["endpoint_ns"] is None:
                    got["endpoint_ns"] = t_ns
            elif not got["audible"]:
                got["audible"] = True
                got["heard_ns"] = t_ns
        for got in by_pause.values():
            t_ns = got.pop("t_ns")
            self.writer.event(self.sid, st.index, t_ns, "probe", "reply", "reply.cut_in", got)
        return len(by_pause)

    def _write_stop(self, st: TurnState, main: Segment, placed: Placed) -> int | None:
        p, rate = _played(main.chunks, self.model, self.depth_ns)
        audio = from_pcm16(b"".join(c[1] for c in main.chunks))
        last = last_audible(audio, rate)
        onset = placed.onset_ns
        if last is None:
            return None
        heard_last = p.heard_at(last) + NS_PER_S // rate
        if heard_last <= onset:
            self.writer.event(
                self.sid,
                st.index,
                onset,
                "probe",
                "turn",
                "turn.note",
                {"note": f"the {placed.overlap.kind} began after the reply had ended"},
            )
            return None
        # the chunk holding the last audible sample, and when it arrived
        off = 0
        arrived = main.chunks[-1][0]
        for t_ns, pcm, *_ in main.chunks:
            off += len(pcm) // 2
            if off > last:
                arrived = t_ns
                break
        received = arrived - onset
        server = None if main.server_last_sent_ns is None else main.server_last_sent_ns - onset
        first_after = samples_heard_by(p, int(audio.size), onset)
        heard_after_ms = max(0, last + 1 - first_after) * 1000 / rate
        stop = heard_last - onset
        cut = main.cut
        stopped = cut if cut is not None else stop < STOPPED_WITHIN_NS
        attrs: dict[str, Any] = {
            "kind": placed.overlap.kind,
            "onset_ns": onset,
            "stop_ns": stop,
            "server_ns": server,
            "in_flight_ns": None if server is None else received - server,
            "received_ns": received,
            "client_buffer_ns": max(0, heard_last - arrived),
            "heard_after_ms": round(heard_after_ms, 3),
            "cut": cut,
            "stopped": stopped,
        }
        if placed.overlap.kind == "sound":
            # the cut is the reply's: with an interruption over the same reply too, it
            # cannot be told whose it was
            both = any(q.overlap.kind == "interrupt" and q.onset_ns < heard_last for q in st.placed)
            attrs["false_interruption"] = None if both else cut
        self._false_interruption = attrs.get("false_interruption")
        self.writer.event(self.sid, st.index, heard_last, "probe", "reply", "reply.stop", attrs)
        return stop

    def _write_truncate(self, st: TurnState, main: Segment) -> None:
        tr = st.truncate
        assert tr is not None
        audio = from_pcm16(b"".join(c[1] for c in main.chunks))
        rate = main.chunks[0][2]
        last = last_audible(audio, rate)
        heard_ms = 0.0 if last is None else (last + 1) * 1000 / rate
        self.writer.event(
            self.sid,
            st.index,
            tr["t_ns"],
            "probe",
            "reply",
            "reply.truncate",
            {
                "item_id": tr["item_id"],
                "audio_end_ms": tr["audio_end_ms"],
                "heard_ms": round(heard_ms, 3),
                "unclaimed_ms": round(heard_ms - tr["audio_end_ms"], 3),
                "signal_ns": tr["signal_ns"],
            },
        )
