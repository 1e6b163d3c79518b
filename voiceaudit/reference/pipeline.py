"""The voice pipeline shared by every protocol: endpointing → recognition → responder →
synthesis → framing, with the fault injections applied at the stage they belong to.

Protocol handlers (realtime, raw PCM, HTTP) own their sockets and event formats; they
feed input audio to an :class:`InputPipeline` and give a :class:`ReplySink` to
:func:`run_reply`. Every stage mark lands in the turn's :class:`TurnRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from aiohttp import web

from voiceaudit.reference.asr import AsrError, AsrPool, AsrResult, AsrStream
from voiceaudit.reference.config import Injections, ServerConfig
from voiceaudit.reference.dsp import F32, StreamResampler, float_to_pcm16
from voiceaudit.reference.groundtruth import GroundTruth, TurnRecord, now_ns
from voiceaudit.reference.responder import Message, Responder, TextChunker
from voiceaudit.reference.tts import Synthesizer
from voiceaudit.reference.vad import RATE as ASR_RATE
from voiceaudit.reference.vad import Endpointer, SpeechStart, SpeechStop


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class ServerContext:
    """What every session shares: configuration, the ASR pool, synthesis, the responder."""

    def __init__(
        self,
        config: ServerConfig,
        asr: AsrPool,
        synth: Synthesizer,
        responder: Responder,
        truth: GroundTruth,
    ) -> None:
        self.config = config
        self.injections = config.injections
        self.asr = asr
        self.synth = synth
        self.responder = responder
        self.truth = truth
        self._session_counter = 0
        self.active_sessions = 0
        self.sessions_total = 0
        #: HTTP requests served (each is a ground-truth "turn" of its own).
        self.http_counter = 0
        #: Random source for HTTP synthesis requests (the jitter injection).
        self.http_rng = random.Random(config.seed)
        #: Connections that already paid the connect-delay injection.
        self.seen_connections: weakref.WeakSet[Any] = weakref.WeakSet()

    def session_rng(self) -> random.Random:
        """A per-session random source, reproducible from the configured seed."""
        self._session_counter += 1
        return random.Random(self.config.seed * 1_000_003 + self._session_counter)

    def new_record(self, session_id: str, turn: int, protocol: str, **kw: Any) -> TurnRecord:
        return TurnRecord(
            session_id=session_id,
            turn=turn,
            protocol=protocol,
            injections=self.injections.to_dict(),
            **kw,
        )

    async def stage_delay(self, record: TurnRecord | None, stage: str) -> None:
        ns = self.injections.stage_delay(stage)
        if ns > 0:
            await asyncio.sleep(ns / 1e9)
            if record is not None:
                # Per occurrence (synthesis pays it per request) and in total.
                record.injected.setdefault(f"stage_delay_{stage}_ns", ns)
                record.add_injected(f"stage_delay_{stage}_total_ns", ns)


#: Where handlers find the context on the aiohttp application.
CTX_KEY = web.AppKey("voiceaudit_ctx", ServerContext)
#: On a request whose connection the connect-delay injection held: how long (ns).
CONNECT_DELAY_KEY = web.RequestKey("voiceaudit_connect_delay_ns", int)


# --- input: endpointing and streaming recognition ------------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished user utterance: its VAD positions and its recognition result."""

    start: SpeechStart
    stop: SpeechStop
    result: AsrResult | None
    error: str | None


class InputListener(Protocol):
    def on_speech_started(self, start: SpeechStart, t_ns: int) -> None: ...

    def on_speech_stopped(
        self, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None: ...


class InputPipeline:
    """Turns a session's incoming audio into speech start/stop events and transcripts."""

    def __init__(
        self,
        ctx: ServerContext,
        input_rate: int,
        listener: InputListener,
        *,
        silence_ms: int,
        prefix_padding_ms: int,
        threshold: float,
        vad_enabled: bool = True,
    ) -> None:
        self.ctx = ctx
        self.input_rate = input_rate
        self.listener = listener
        self.prefix_padding_ms = prefix_padding_ms
        self.vad_enabled = vad_enabled
        self._resampler = StreamResampler(input_rate, ASR_RATE)
        self._endpointer = Endpointer(
            silence_ms=ctx.injections.endpointing_silence_ms(silence_ms), threshold=threshold
        )
        # 16 kHz history, so speech start can include the prefix padding.
        self._history = np.zeros(0, dtype=np.float32)
        self._history_start = 0  # sample index (16 kHz) of _history[0]
        self._pos = 0  # 16 kHz samples received
        self._stream: AsrStream | None = None
        self._stream_opening: asyncio.Task[AsrStream] | None = None
        self._abandoned: set[asyncio.Task[AsrStream]] = set()
        self._pending: list[bytes] = []
        self._start: SpeechStart | None = None
        self._last_voiced_arrival: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def position_ms(self) -> int:
        return self._pos * 1000 // ASR_RATE

    def configure(self, *, silence_ms: int, prefix_padding_ms: int, vad_enabled: bool) -> None:
        self._endpointer.set_silence_ms(self.ctx.injections.endpointing_silence_ms(silence_ms))
        self.prefix_padding_ms = prefix_padding_ms
        self.vad_enabled = vad_enabled

    def feed(self, samples: F32, arrival_ns: int) -> None:
        """New input audio (float, at ``input_rate``), received at ``arrival_ns``."""
        if self._closed:
            return
        x = self._resampler.process(samples)
        self._append(x)
        if self._start is not None:
            self._to_asr(x)
        if not self.vad_enabled:
            return
        voiced_before = self._endpointer.last_voiced_end_ms
        events = self._endpointer.feed(x, self.prefix_padding_ms)
        if self._endpointer.last_voiced_end_ms != voiced_before:
            # This chunk carried the latest voiced audio: its arrival is when the server
            # last heard the user (reported at the endpoint as speech_end_received).
            self._last_voiced_arrival = arrival_ns
        for event in events:
            if isinstance(event, SpeechStart):
                self._begin(event, arrival_ns)
            else:
                self._end(event, arrival_ns)

    def _append(self, x: F32) -> None:
        self._history = np.concatenate([self._history, x])
        self._pos += x.size
        # Ten seconds is plenty for any prefix padding; without server VAD the buffer
        # holds everything up to the next commit.
        keep = ASR_RATE * (10 if self.vad_enabled else 600)
        if self._history.size > keep and self._start is None:
            drop = self._history.size - keep
            self._history = self._history[drop:]
            self._history_start += drop

    def _to_asr(self, x: F32) -> None:
        if x.size == 0:
            return
        pcm = float_to_pcm16(x)
        if self._stream is not None:
            with contextlib.suppress(AsrError):
                self._stream.feed(pcm)
        else:
            self._pending.append(pcm)

    def _begin(self, event: SpeechStart, arrival_ns: int) -> None:
        self._start = event
        first = event.audio_start_ms * ASR_RATE // 1000
        lo = max(0, first - self._history_start)
        prefix = self._history[lo:]
        self._pending = [float_to_pcm16(prefix)] if prefix.size else []
        self._stream = None
        task = asyncio.ensure_future(self.ctx.asr.open_stream())
        self._stream_opening = task

        def opened(t: asyncio.Task[AsrStream]) -> None:
            if t.cancelled() or t.exception() is not None:
                return
            stream = t.result()
            if task in self._abandoned:
                self._abandoned.discard(task)
                stream.cancel()  # the utterance was dropped meanwhile
                return
            if self._stream_opening is not task:
                return  # the utterance already ended: its finish() owns the stream
            self._stream = stream
            with contextlib.suppress(AsrError):
                for pcm in self._pending:
                    stream.feed(pcm)
            self._pending = []

        task.add_done_callback(opened)
        self.listener.on_speech_started(event, now_ns())

    def _end(self, event: SpeechStop, arrival_ns: int) -> None:
        start = self._start
        if start is None:
            return
        self._start = None
        opening = self._stream_opening
        self._stream_opening = None
        pending = list(self._pending)
        self._pending = []
        stream = self._stream
        self._stream = None
        t_stop = now_ns()

        async def finish() -> Utterance:
            nonlocal stream
            try:
                if stream is None and opening is not None:
                    stream = await opening
                    for pcm in pending:
                        stream.feed(pcm)
                if stream is None:
                    return Utterance(start, event, None, "speech recognition was not started")
                result = await stream.finish()
                return Utterance(start, event, result, None)
            except AsrError as exc:
                return Utterance(start, event, None, exc.message)

        fut = asyncio.ensure_future(finish())
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        self.listener.on_speech_stopped(event, t_stop, fut)

    @property
    def in_speech(self) -> bool:
        return self._endpointer.in_speech

    @property
    def last_voiced_arrival_ns(self) -> int | None:
        """Arrival time of the input chunk that held the most recent voiced audio."""
        return self._last_voiced_arrival

    @property
    def buffered_ms(self) -> int:
        """Audio held since the last commit or clear (manual turn mode)."""
        return (self._pos - self._history_start) * 1000 // ASR_RATE

    def commit(self, arrival_ns: int) -> bool:
        """Manual commit: everything since the last commit is one utterance.

        Returns False (and does nothing) when less than 100 ms of audio is buffered.
        """
        if self._start is None:
            if self.buffered_ms < 100:
                return False
            ms = self._history_start * 1000 // ASR_RATE
            self._begin(SpeechStart(ms, ms), arrival_ns)
        stop = self._endpointer.force_stop() or SpeechStop(self.position_ms, self.position_ms)
        self._end(stop, arrival_ns)
        self._history = np.zeros(0, dtype=np.float32)
        self._history_start = self._pos
        return True

    def clear(self) -> None:
        """Drop the audio buffered so far (``input_audio_buffer.clear``)."""
        self._history = np.zeros(0, dtype=np.float32)
        self._history_start = self._pos
        if self._start is not None:
            self._abandon()

    def _abandon(self) -> None:
        self._start = None
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        if self._stream_opening is not None:
            self._abandoned.add(self._stream_opening)
        self._stream_opening = None
        self._pending = []

    def close(self) -> None:
        self._closed = True
        self._abandon()
        for t in list(self._tasks):
            t.cancel()


# --- output: responder → chunker → synthesis → framing → sink --------------------------


class ReplySink(Protocol):
    """Where a reply goes. ``send_audio`` must hand its bytes to the transport before its
    first ``await``, so the time taken just before the call is the write time.

    Optional attributes the :class:`Speaker` reads when a sink has them: ``pace`` (the
    audio is released at this multiple of real time, e.g. 1.0 like Pipecat's output
    transport; the ``slow-audio`` injection overrides it; absent or None: as produced),
    ``chunk_ms`` (the message size, unless the ``audio-chunk`` injection sets one),
    ``not_before_ns`` (no message is written before this time) and ``played_by_track``."""

    output_rate: int

    async def send_text_delta(self, text: str) -> None: ...

    async def send_audio(self, samples: F32) -> None: ...


class AudioFramer:
    """Cuts a sample stream into messages of ``chunk`` samples."""

    def __init__(self, chunk: int) -> None:
        self.chunk = max(1, chunk)
        self._buf = np.zeros(0, dtype=np.float32)

    def push(self, x: F32) -> list[F32]:
        if x.size:
            self._buf = np.concatenate([self._buf, x])
        n = self._buf.size // self.chunk
        out = [self._buf[i * self.chunk : (i + 1) * self.chunk] for i in range(n)]
        self._buf = self._buf[n * self.chunk :]
        return out

    def flush(self) -> list[F32]:
        if self._buf.size == 0:
            return []
        out = [self._buf]
        self._buf = np.zeros(0, dtype=np.float32)
        return out


class Pacer:
    """Decides when each reply audio message may be written (slow-audio and jitter; a
    sink's own ``pace``, the speed it releases audio at, when slow-audio is not given;
    and the reply's ``not_before_ns``: no message before it)."""

    def __init__(
        self,
        inj: Injections,
        rate: int,
        rng: random.Random,
        *,
        pace: float | None = None,
        not_before_ns: int | None = None,
    ) -> None:
        self.slow = inj.slow_audio if inj.slow_audio is not None else pace
        self.not_before_ns = not_before_ns
        self.jitter_ns = inj.jitter_ns
        self.rate = rate
        self.rng = rng
        self._t0: int | None = None
        self._samples_before = 0
        self._last_send = 0
        self.scheduled = 0
        self.jitter_first_ns: int | None = None
        self.jitter_total_ns = 0
        self.jitter_each_ns: list[int] = []
        self.pacing_wait_ns = 0

    async def wait(self, n_samples: int) -> None:
        await self.sleep_until(self.plan(n_samples))

    def plan(self, n_samples: int) -> int:
        """When the next message (``n_samples`` long) may be written (monotonic ns)."""
        ready = now_ns()
        if self._t0 is None:
            if self.not_before_ns is not None and self.not_before_ns > ready:
                ready = self.not_before_ns
            self._t0 = ready
        due = ready
        # the message's place on the reply's own schedule (barge-in stops by it): its
        # real-time slot with slow-audio, else when it was ready; lateness of the loop
        # does not move it
        self.scheduled = ready
        if self.slow is not None:
            nominal = self._t0 + round(self._samples_before * 1e9 / (self.rate * self.slow))
            due = max(due, nominal)
            self.scheduled = nominal
        if self.jitter_ns > 0:
            extra = self.rng.randint(0, self.jitter_ns)
            if self.jitter_first_ns is None:
                self.jitter_first_ns = extra
            self.jitter_total_ns += extra
            self.jitter_each_ns.append(extra)
            due += extra
            self.scheduled += extra
        due = max(due, self._last_send)
        self._samples_before += n_samples
        return due

    def next_scheduled(self) -> int:
        """The next message's place on the reply's schedule, without jitter (no side
        effects): its real-time slot with slow-audio, else now."""
        if self.slow is not None and self._t0 is not None:
            return self._t0 + round(self._samples_before * 1e9 / (self.rate * self.slow))
        return now_ns()

    async def sleep_until(self, due: int) -> None:
        wait = due - now_ns()
        if wait > 0:
            self.pacing_wait_ns += wait
            await asyncio.sleep(wait / 1e9)
        self._last_send = now_ns()


def chunking_mode(inj: Injections) -> str:
    if inj.whole_result_handoff:
        return "whole"
    if inj.sentence_aggregation:
        return "sentence"
    return "phrase"


@dataclass
class ReplyResult:
    text: str
    status: str  # completed | cancelled | failed
    text_tokens: int
    audio_ns: int
    error: str | None = None


class _Halt(Exception):
    """The speaker reached its barge-in stop time."""


class Speaker:
    """Synthesis → framing → pacing → sink for one reply, fed text segments in order."""

    def __init__(
        self,
        ctx: ServerContext,
        record: TurnRecord,
        sink: ReplySink,
        rng: random.Random,
        *,
        wpm: int | None = None,
    ) -> None:
        inj = ctx.injections
        self.ctx = ctx
        self.record = record
        self.sink = sink
        self.wpm = wpm
        self.out_rate = sink.output_rate
        #: the sink writes what it is given now (a socket), not on a clock of its own (a
        #: media track, which counts the barge-in's audio itself)
        self.own_clock = not getattr(sink, "played_by_track", False)
        record.output_rate = self.out_rate
        sink_chunk_ms: int | None = getattr(sink, "chunk_ms", None)
        if inj.audio_chunk_ns is not None:
            chunk = round(inj.audio_chunk_ns * self.out_rate / 1e9)
        elif sink_chunk_ms is not None:
            # the protocol's own message size (a carrier's minimum)
            chunk = round(sink_chunk_ms * self.out_rate / 1000)
        else:
            chunk = round(ctx.config.audio_chunk_ms * self.out_rate / 1000)
        # Large buffers are only flushed at the end of the reply; default-sized messages
        # also at the end of each synthesis request, so no audio waits for later text.
        self.buffered = inj.audio_chunk_ns is not None
        self.framer = AudioFramer(chunk)
        self.pacer = Pacer(
            inj,
            self.out_rate,
            rng,
            pace=getattr(sink, "pace", None),
            not_before_ns=getattr(sink, "not_before_ns", None),
        )
        self.pad = round(inj.leading_silence_ns * self.out_rate / 1e9)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        #: Barge-in: no message due after this is written (None: not interrupted).
        self.stop_at: int | None = None
        #: The reply stopped before all its audio was written.
        self.cut = False
        #: Every text segment was synthesized and written.
        self.complete = False
        self._emitting = False
        self._deadline: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._run(), name=f"speak-{record.session_id}")

    def say(self, text: str) -> None:
        self.queue.put_nowait(text)

    def end(self) -> None:
        self.queue.put_nowait(None)

    def interrupt(self, stop_at_ns: int) -> None:
        """Barge-in: no reply audio message due after ``stop_at_ns`` is written. Messages
        due before it still go out (``barge-in-delay``); at ``stop_at_ns`` the speaker
        stops, even while it waits for text or synthesis."""
        if self.stop_at is not None and self.stop_at <= stop_at_ns:
            return
        self.stop_at = stop_at_ns
        if self.task.done():
            return
        delay = max(0.0, (stop_at_ns - now_ns()) / 1e9)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        # Inside _emit the speaker stops by itself at the first message due too late; a
        # speaker waiting for text or synthesis is stopped here.
        if not self._emitting and not self.task.done():
            self.cut = True
            self.task.cancel()

    def _only_end_left(self) -> bool:
        # the reply's text is over (only the end marker is queued): nothing is cut
        return self.queue.qsize() == 1 and self.queue._queue[0] is None  # type: ignore[attr-defined]

    def _past(self, t_ns: int) -> bool:
        return self.stop_at is not None and t_ns > self.stop_at

    async def _emit(self, frames: list[F32]) -> None:
        record = self.record
        self._emitting = True
        try:
            for frame in frames:
                due = self.pacer.plan(frame.size)
                if self._past(self.pacer.scheduled):
                    raise _Halt
                await self.pacer.sleep_until(due)
                t = now_ns()
                record.mark("first_audio_sent", t)
                record.mark("last_audio_sent", t, overwrite=True)
                record.audio_sent_ns.append(t)
                await self.sink.send_audio(frame)
                record.audio_messages += 1
                record.reply_audio_ns += round(frame.size * 1e9 / self.out_rate)
                record.reply_audio_samples += int(frame.size)
                b = record.barge_in
                if b is not None and self.own_clock and self.pacer.scheduled > b["detected_ns"]:
                    # on the reply's own schedule, after the caller was heard
                    b["scheduled_after_samples"] += int(frame.size)
                # Synthesis runs far ahead of real time; yield after every message so one
                # reply's burst never holds the loop for more than one message's work.
                await asyncio.sleep(0)
        finally:
            self._emitting = False

    async def _run(self) -> None:
        try:
            await self._speak()
            self.complete = True
        except _Halt:
            self.cut = True
        finally:
            if self._deadline is not None:
                self._deadline.cancel()

    async def _speak(self) -> None:
        record, inj = self.record, self.ctx.injections
        while True:
            # the reply's clock, not the wall clock: a speaker behind schedule (a loaded
            # loop) still sends what was due before the stop time
            if self._past(self.pacer.next_scheduled()) and not self._only_end_left():
                raise _Halt
            segment = await self.queue.get()
            if segment is None:
                break
            record.mark("tts_request")
            record.tts_texts.append(segment)
            await self.ctx.stage_delay(record, "tts")
            resampler = StreamResampler(self.ctx.synth.rate, self.out_rate)
            first_piece = True
            async for piece in self.ctx.synth.stream(segment, wpm=self.wpm):
                record.mark("tts_first_audio")
                x = resampler.process(piece.astype(np.float32) / 32768.0)
                if first_piece and self.pad > 0:
                    x = np.concatenate([np.zeros(self.pad, dtype=np.float32), x])
                    # The pad before the reply's first audio, and over all requests.
                    record.injected.setdefault("leading_silence_ns", inj.leading_silence_ns)
                    record.add_injected("leading_silence_total_ns", inj.leading_silence_ns)
                first_piece = False
                await self._emit(self.framer.push(x))
                if self._past(self.pacer.next_scheduled()):
                    raise _Halt
            await self._emit(self.framer.push(resampler.flush()))
            if not self.buffered:
                await self._emit(self.framer.flush())
        await self._emit(self.framer.flush())

    async def wait(self) -> None:
        await self.task

    async def cancel(self) -> None:
        if not self.task.done():
            self.cut = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def drain(self) -> None:
        """After an interrupt: let the messages due before the stop time go out (the
        speaker stops by itself at the first one due later), then end."""
        if self.stop_at is None or self.task.done():
            await self.cancel()
            return
        self.end()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(self.task)

    def record_pacing(self) -> None:
        pacer, record = self.pacer, self.record
        if pacer.jitter_first_ns is not None:
            record.injected["jitter_first_ns"] = pacer.jitter_first_ns
            record.injected["jitter_total_ns"] = pacer.jitter_total_ns
            record.injected["jitter_each_ns"] = list(pacer.jitter_each_ns)
        if self.ctx.injections.slow_audio is not None:
            record.injected["slow_audio_wait_ns"] = pacer.pacing_wait_ns


class _Silent:
    """Stands in for the Speaker in a text-only reply."""

    complete = False
    stop_at: int | None = None

    def interrupt(self, stop_at_ns: int) -> None:
        self.stop_at = stop_at_ns

    async def drain(self) -> None:
        return None

    def say(self, text: str) -> None:
        return None

    def end(self) -> None:
        return None

    async def wait(self) -> None:
        self.complete = True

    async def cancel(self) -> None:
        return None

    def record_pacing(self) -> None:
        return None


class ReplyControl:
    """A session's handle on one reply in progress: barge-in stops its speaker."""

    def __init__(self) -> None:
        self.speaker: Speaker | _Silent | None = None
        self.stop_at: int | None = None
        #: Why the reply ends early, first cause wins (``barge_in``, ``cancel``,
        #: ``next_turn``; the session names them).
        self.reason: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, speaker: Speaker | _Silent) -> None:
        self.speaker = speaker
        if self.stop_at is not None:
            speaker.interrupt(self.stop_at)

    def interrupt(self, stop_at_ns: int) -> None:
        if self.stop_at is None or stop_at_ns < self.stop_at:
            self.stop_at = stop_at_ns
        if self.speaker is not None:
            self.speaker.interrupt(self.stop_at)

    def stop(self, task: asyncio.Future[Any], stop_at_ns: int) -> None:
        """Stop the reply (and end ``task``, the session's response) at ``stop_at_ns``:
        messages due before it still go out."""
        self.interrupt(stop_at_ns)
        delay = (stop_at_ns - now_ns()) / 1e9
        if delay <= 0:
            task.cancel()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, task.cancel)

    def forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def barge_in(
    ctx: ServerContext,
    record: TurnRecord,
    task: asyncio.Future[Any] | None,
    control: ReplyControl | None,
    t_ns: int,
    *,
    by_turn: int | None,
    speech_start_ms: int | None,
) -> bool:
    """The VAD heard the caller (at ``t_ns``) while ``record``'s reply ran in ``task``:
    record it, and stop the reply after the ``barge-in-delay`` (not at all with
    ``no-barge-in``). Returns whether the reply will be stopped."""
    if task is None or task.done() or record.status != "in_progress":
        return False  # no reply running, or it is already over (sending its last events)
    inj = ctx.injections
    delay = None if inj.no_barge_in else inj.barge_in_delay_ns
    record.barge_in_detected(t_ns, turn=by_turn, speech_start_ms=speech_start_ms, delay_ns=delay)
    if delay is None:
        return False
    if delay:
        record.injected["barge_in_delay_ns"] = delay
    if control is None:
        task.cancel()
    else:
        control.reason = control.reason or "barge_in"
        control.stop(task, t_ns + delay)
    return True


async def run_reply(
    ctx: ServerContext,
    record: TurnRecord,
    messages: Sequence[Message],
    sink: ReplySink,
    rng: random.Random,
    *,
    wpm: int | None = None,
    speak: bool = True,
    control: ReplyControl | None = None,
) -> ReplyResult:
    """Produce one reply (spoken unless ``speak`` is False); every stage mark goes into
    ``record``. ``control`` lets the session stop it on barge-in: cancelling the task
    that runs this after ``control.interrupt`` lets the reply audio due before the stop
    time go out first (``record.reply_cut`` says whether any was left unsaid)."""
    inj = ctx.injections
    speaker: Speaker | _Silent = Speaker(ctx, record, sink, rng, wpm=wpm) if speak else _Silent()
    if control is not None:
        control.attach(speaker)
    reply_parts: list[str] = []
    tokens = 0
    status = "completed"
    error: str | None = None
    try:
        record.mark("llm_request")
        extra = inj.llm_ttft_ns + inj.stage_delay("llm")
        if inj.llm_ttft_ns:
            record.add_injected("llm_ttft_ns", inj.llm_ttft_ns)
        if inj.stage_delay("llm"):
            record.add_injected("stage_delay_llm_ns", inj.stage_delay("llm"))
        chunker = TextChunker(chunking_mode(inj))
        async for token in ctx.responder.stream(messages, extra_ttft_ns=extra):
            record.mark("llm_first_token")
            tokens += 1
            reply_parts.append(token)
            await sink.send_text_delta(token)
            segment = chunker.push(token)
            if segment is not None:
                speaker.say(segment)
        record.mark("llm_done")
        rest = chunker.flush()
        if rest is not None:
            speaker.say(rest)
        speaker.end()
        await speaker.wait()
    except asyncio.CancelledError:
        if speaker.stop_at is not None:
            await speaker.drain()
        else:
            await speaker.cancel()
        speaker.record_pacing()
        record.reply_text = "".join(reply_parts).strip()
        record.reply_cut = not speaker.complete
        if control is not None:
            control.forget()
        raise
    except Exception as exc:
        status = "failed"
        error = f"{type(exc).__name__}: {exc}"
        await speaker.cancel()
    if control is not None:
        control.forget()
    if not speaker.complete and status == "completed":
        # the speaker stopped itself (barge-in) before the session ended the reply
        status = "cancelled"
    record.reply_cut = not speaker.complete and status != "failed"
    speaker.record_pacing()
    record.reply_text = "".join(reply_parts).strip()
    return ReplyResult(
        text=record.reply_text,
        status=status,
        text_tokens=tokens,
        audio_ns=record.reply_audio_ns,
        error=error,
    )
