"""One reference session, whatever the protocol: the turn state and its ground truth.

:class:`Session` owns what every protocol server used to repeat: the session's id and
seeded random source, its :class:`~voiceaudit.reference.pipeline.InputPipeline` (VAD →
streaming recognition), the turn records (a turn starts when the VAD hears speech, or at
a manual commit), the hearing of a turn (the ``vad`` and ``asr`` stage-delay injections,
the ``vad_stop``/``asr_done``/``transcript_final`` marks, the transcript), the reply in
progress (one at a time; the next turn cuts it, unless ``no-barge-in``), barge-in, a
client's cancel and truncate, the conversation history, writing each turn to the ground
truth, and closing (every task stopped, an unfinished turn written as
``client_disconnected``). It knows no socket, codec or event name.

A protocol adapter subclasses it and implements:

- its **transport**: accept the connection, decode input audio to float samples at the
  rate it opened the input with (:meth:`Session.open_input`) and pass them to
  ``self.input.feed(samples, arrival_ns)``; a manual commit is ``self.input.commit``;
- ``protocol`` (the ground truth's protocol name), ``id_prefix`` and ``output_rate``;
- the **event hooks**, each called at the moment the protocol tells its client (all
  optional; the defaults send nothing): :meth:`Session.speech_began`,
  :meth:`Session.speech_stopped`, :meth:`Session.recognised`, :meth:`Session.transcribed`,
  :meth:`Session.begin_reply`, :meth:`Session.reply_sent`, :meth:`Session.reply_cancelled`,
  :meth:`Session.turn_over` (call the core's first: it settles and writes the turn);
- the **reply's framing**: :meth:`Session.reply_text` and :meth:`Session.reply_audio`
  (the default :class:`Sink` calls them; ``reply_audio`` must hand its bytes to the
  transport before its first ``await``), or a sink of its own from ``begin_reply``;
- its client **control messages**, mapped onto :meth:`Session.cancel_reply`,
  :meth:`Session.record_truncate` and ``self.input.clear``.

The default turn (:meth:`Session.turn`, started by :meth:`Session.speech_ended` when the
speech ends) hears the turn, waits for the previous reply under ``no-barge-in``, answers
with the conversation so far through
:func:`~voiceaudit.reference.pipeline.run_reply`, and ends the turn. Hooks with a default
an adapter may replace: :meth:`Session.interrupt` (what the caller's speech does to a
running reply; default: :func:`~voiceaudit.reference.pipeline.barge_in`),
:meth:`Session.speech_ended` (a protocol whose replies start otherwise, like Realtime's
``response.create``, hears the turn with :meth:`Session.hear` and starts replies with
:meth:`Session.start_response`), :meth:`Session.abandon` (what closing writes).

Speaking first: :meth:`Session.greet` says :data:`GREETING` as the reply in progress (its
first audio ``greeting=MS`` after the media began) and writes it as a ``greeting`` record;
:meth:`Session.greet_on_connect` (called when a WebSocket opens with ``greeting=MS``)
greets when the adapter frames replies through the default sink's hooks (raw PCM). The
carrier adapter greets when its ``start`` arrives, WebRTC when the peer connection connects,
Realtime once its session is ready (its greeting a response of its own, built from
:meth:`Session.greeting_record` and :meth:`Session.say_greeting`). The greeting record
says what the caller hears first, and when (:meth:`Session.greeting_heard`). A reply body
without hearing (a key press) is :meth:`Session.respond`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import numpy as np

from voiceaudit.audio import first_audible
from voiceaudit.reference.dsp import F32
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import (
    InputPipeline,
    ReplyControl,
    ReplySink,
    ServerContext,
    Speaker,
    Utterance,
    barge_in,
    new_id,
    run_reply,
)
from voiceaudit.reference.responder import Message
from voiceaudit.reference.vad import SpeechStart, SpeechStop

log = logging.getLogger("voiceaudit.reference")

#: What the bot says when it speaks first (phone paths; ``greeting=MS`` elsewhere).
GREETING = "Hello, you have reached the reference voice bot. How can I help you today?"

#: Runs one reply, given its barge-in handle and the reply it may have to wait for.
ReplyRun = Callable[[ReplyControl, "asyncio.Task[None] | None"], Coroutine[Any, Any, None]]


def log_failure(task: asyncio.Future[Any]) -> None:
    """Unexpected exceptions in session tasks go to the log, never silently away."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reference session task failed", exc_info=task.exception())


async def stop_tasks(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel the tasks still running and wait until they have ended."""
    running = [t for t in tasks if t is not None and not t.done()]
    for t in running:
        t.cancel()
    for t in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


class Sink:
    """A :class:`~voiceaudit.reference.pipeline.ReplySink` that hands one reply's text and
    audio to its session's :meth:`Session.reply_text` and :meth:`Session.reply_audio`."""

    def __init__(self, session: Session, record: TurnRecord) -> None:
        self.session, self.record, self.output_rate = session, record, session.output_rate
        #: the audio is played on the transport's own media clock (see Speaker.own_clock)
        self.played_by_track = session.played_by_track

    async def send_text_delta(self, text: str) -> None:
        await self.session.reply_text(self.record, text)

    async def send_audio(self, samples: F32) -> None:
        self.session.note_greeting_audio(self.record, samples)
        await self.session.reply_audio(self.record, samples)


class Session:
    """The protocol-neutral part of one reference-pipeline connection (see the module)."""

    #: The ground truth's ``protocol`` of this session's turns.
    protocol = "reference"
    id_prefix = "sess"
    #: The end of speech pays the ``vad`` stage-delay injection (an adapter may opt out).
    vad_stage_delay = True
    #: A turn records the recognizer's details (worker, decode time) and its error.
    asr_details = True
    #: The reply audio's sample rate (the default sink's).
    output_rate = 24_000
    #: The transport plays reply audio on a media clock of its own (a track), not as sent.
    played_by_track = False

    def __init__(self, ctx: ServerContext, *, connect_delay_ns: int = 0) -> None:
        self.ctx = ctx
        self.id = new_id(self.id_prefix)
        self.rng = ctx.session_rng()
        self.connect_delay_ns = connect_delay_ns
        self.input_rate = 0
        self.input: InputPipeline
        self.turn_index = 0
        self.history: list[Message] = []
        #: The turn whose speech the VAD is hearing (not ended yet).
        self.speech_record: TurnRecord | None = None
        #: The reply in progress: its task, its turn's record and its barge-in handle.
        self.response: asyncio.Task[None] | None = None
        self.response_record: TurnRecord | None = None
        self.control: ReplyControl | None = None
        #: Reply items by id (``conversation.item.truncate``) and the turns written.
        self.items: dict[str, TurnRecord] = {}
        self.written: set[int] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        #: the greeting's facts (``greeting`` in its ground-truth record)
        self.greeting_truth: dict[str, Any] = {}
        #: the greeting's audio messages as handed to the transport (its first audible
        #: sample in the ground truth)
        self.greeting_audio: list[F32] = []

    def open_input(
        self,
        rate: int,
        *,
        silence_ms: int,
        prefix_padding_ms: int,
        threshold: float,
        vad_enabled: bool = True,
    ) -> None:
        """(Re)open the input pipeline for audio at ``rate`` (a previous one is closed)."""
        old = getattr(self, "input", None)
        if old is not None:
            old.close()
        self.input_rate = rate
        self.input = InputPipeline(
            self.ctx,
            rate,
            self,
            silence_ms=silence_ms,
            prefix_padding_ms=prefix_padding_ms,
            threshold=threshold,
            vad_enabled=vad_enabled,
        )

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as a task of this session (stopped when it closes)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(log_failure)

    def new_turn(self, *, heard: bool = True) -> TurnRecord:
        """The next turn's ground-truth record (``heard``: from input audio, at its rate)."""
        record = self.ctx.new_record(self.id, self.turn_index, self.protocol)
        self.turn_index += 1
        if heard:
            record.input_rate = self.input_rate
        return record

    # --- the InputPipeline's listener ----------------------------------------------

    def on_speech_started(self, start: SpeechStart, t_ns: int) -> None:
        """The VAD heard the caller: a running reply may be interrupted, a turn begins."""
        self.interrupt(start, t_ns)
        record = self.new_turn()
        record.mark("speech_started", t_ns)
        record.audio_start_ms = start.audio_start_ms
        record.speech_start_ms = start.speech_start_ms
        if record.turn == 0 and self.connect_delay_ns:
            record.injected["connect_delay_ns"] = self.connect_delay_ns
        self.speech_record = record
        self.speech_began(record, start, t_ns)

    def on_speech_stopped(
        self, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None:
        """The utterance ended (the VAD's endpoint or a manual commit)."""
        record = self.speech_record
        self.speech_record = None
        if record is None:  # a manual commit without a speech start
            record = self.new_turn()
        self.speech_ended(record, stop, t_ns, transcript)

    # --- hooks -----------------------------------------------------------------------

    def interrupt(self, start: SpeechStart, t_ns: int) -> bool:
        """The caller speaks while a reply may run: barge-in (stops it after the
        ``barge-in-delay``, never with ``no-barge-in``). Returns whether it will stop."""
        record = self.response_record
        if record is None:
            return False
        return barge_in(
            self.ctx,
            record,
            self.response,
            self.control,
            t_ns,
            by_turn=self.turn_index,
            speech_start_ms=start.speech_start_ms,
        )

    def speech_began(self, record: TurnRecord, start: SpeechStart, t_ns: int) -> None:
        """Hook: tell the client the VAD heard speech (``record`` is the new turn)."""

    def speech_ended(
        self, record: TurnRecord, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None:
        """Hook: the turn's speech ended. Default: its reply task (:meth:`turn`) starts now
        and hears the turn first."""

        def run(
            control: ReplyControl, previous: asyncio.Task[None] | None
        ) -> Coroutine[Any, Any, None]:
            return self.turn(record, stop, t_ns, transcript, control, previous)

        self.start_response(record, run)

    async def speech_stopped(self, record: TurnRecord, stop: SpeechStop) -> None:
        """Hook: tell the client the speech ended (``vad_stop`` is marked)."""

    async def recognised(self, record: TurnRecord) -> None:
        """Hook: recognition finished (``asr_done``), before the ``asr`` stage delay."""

    async def transcribed(self, record: TurnRecord, utt: Utterance) -> None:
        """Hook: tell the client the final transcript (``record.transcript``)."""

    async def begin_reply(self, record: TurnRecord) -> ReplySink:
        """Hook: the reply starts (tell the client); returns where its text and audio go.
        Default: a :class:`Sink` at ``output_rate`` onto :meth:`reply_text` and
        :meth:`reply_audio`."""
        return Sink(self, record)

    async def reply_text(self, record: TurnRecord, text: str) -> None:
        """Hook (the default sink): a piece of the reply's text."""
        raise NotImplementedError

    async def reply_audio(self, record: TurnRecord, samples: F32) -> None:
        """Hook (the default sink): a message of reply audio at ``output_rate``, to be
        handed to the transport before the first ``await``."""
        raise NotImplementedError

    async def reply_sent(self, record: TurnRecord, sink: ReplySink) -> None:
        """Hook: the reply has been produced and handed to ``sink``."""

    async def reply_cancelled(self, record: TurnRecord) -> None:
        """Hook: the reply task was cancelled (barge-in, a cancel, the next turn)."""

    async def turn_over(self, record: TurnRecord, control: ReplyControl) -> None:
        """Hook: the turn is over (``record.status`` says how): settle and write it."""
        record.settle_barge_in()
        self.write(record)

    def abandon(self) -> None:
        """Hook, on close: write the turn being spoken as ``client_disconnected``."""
        record = self.speech_record
        self.speech_record = None
        if record is not None:
            record.status = "client_disconnected"
            self.ctx.truth.write_turn(record)

    # --- turns -----------------------------------------------------------------------

    async def hear(
        self, record: TurnRecord, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> Utterance:
        """The end of the turn's speech up to its final transcript, with the ``vad`` and
        ``asr`` stage delays and their marks; the hooks tell the client."""
        if self.vad_stage_delay and self.ctx.injections.stage_delay("vad"):
            await self.ctx.stage_delay(record, "vad")
            t_ns = now_ns()
        record.mark("vad_stop", t_ns)
        record.marks["speech_end_received"] = self.input.last_voiced_arrival_ns
        record.speech_end_ms = stop.speech_end_ms
        record.audio_end_ms = stop.audio_end_ms
        await self.speech_stopped(record, stop)
        utt = await transcript
        record.mark("asr_done")
        await self.recognised(record)
        await self.ctx.stage_delay(record, "asr")
        record.mark("transcript_final")
        record.transcript = utt.result.text if utt.result is not None else ""
        if self.asr_details:
            if utt.result is not None:
                record.asr = {
                    "worker": utt.result.worker,
                    "decode_ns": utt.result.decode_ns,
                    "end_utt_ns": utt.result.end_ns,
                }
            else:
                record.error = utt.error
        await self.transcribed(record, utt)
        return utt

    async def turn(
        self,
        record: TurnRecord,
        stop: SpeechStop,
        t_ns: int,
        transcript: Awaitable[Utterance],
        control: ReplyControl,
        previous: asyncio.Task[None] | None,
    ) -> None:
        """The default reply task: hear the turn, wait for the previous reply (with
        ``no-barge-in``), reply with the whole conversation, then :meth:`turn_over`."""
        await self.respond(record, control, previous, self.hear(record, stop, t_ns, transcript))

    async def respond(
        self,
        record: TurnRecord,
        control: ReplyControl,
        previous: asyncio.Task[None] | None,
        first: Awaitable[Any] | None = None,
    ) -> None:
        """A reply task's body: ``first`` (the hearing, if any; ``record.transcript`` is
        what the caller said), wait for the previous reply (with ``no-barge-in``), reply
        with the whole conversation, then :meth:`turn_over` however it ends."""
        try:
            if first is not None:
                await first
            await self.after(previous)
            self.history.append(Message("user", record.transcript or ""))
            sink = await self.begin_reply(record)
            result = await run_reply(
                self.ctx, record, list(self.history), sink, self.rng, control=control
            )
            await self.reply_sent(record, sink)
            self.history.append(Message("assistant", result.text))
            record.status = result.status
            if result.error:
                record.error = result.error
        except asyncio.CancelledError:
            record.status = "cancelled"
            await self.reply_cancelled(record)
        finally:
            self.reply_over()
            await self.turn_over(record, control)

    def start_response(self, record: TurnRecord, run: ReplyRun) -> asyncio.Task[None]:
        """Start ``record``'s reply (``run``) as the session's reply in progress. A reply
        still running is cut (reason ``next_turn``), unless ``no-barge-in``: then the
        new one is handed it to wait for (:meth:`after`)."""
        previous = self.response
        if previous is not None and not previous.done() and not self.ctx.injections.no_barge_in:
            if self.control is not None:
                self.control.reason = self.control.reason or "next_turn"
            previous.cancel()
        control = ReplyControl()
        task = asyncio.ensure_future(run(control, previous))
        task.add_done_callback(log_failure)
        self.response, self.response_record, self.control = task, record, control
        return task

    @staticmethod
    async def after(previous: asyncio.Task[None] | None) -> None:
        """With ``no-barge-in``: wait until the previous reply has ended (one at a time)."""
        if previous is not None and not previous.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)

    def reply_over(self) -> None:
        """Called by the reply task as it ends: it is no longer the reply in progress."""
        if self.response is asyncio.current_task():
            self.response, self.response_record, self.control = None, None, None

    def cancel_reply(self, t_ns: int, **fields: Any) -> TurnRecord | None:
        """A client's cancel: recorded in the running reply's turn (``cancel``: ``t_ns``
        and ``fields``), which stops now. None when no reply runs."""
        task, record = self.response, self.response_record
        if task is None or task.done() or record is None:
            return None
        if record.cancel is None:
            record.cancel = {"t_ns": t_ns, **fields}
        if self.control is not None:
            self.control.reason = self.control.reason or "cancel"
        task.cancel()
        return record

    def record_truncate(
        self,
        record: TurnRecord,
        t_ns: int,
        item_id: str,
        audio_end_ms: int,
        event_id: str | None,
        sent_ms: float,
    ) -> None:
        """A client's ``conversation.item.truncate`` of ``record``'s reply (``sent_ms``:
        the reply audio that went out); appended to the ground truth if already written."""
        record.truncate = {
            "t_ns": t_ns,
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
            "event_id": event_id,
            "reply_audio_ms_sent": round(sent_ms, 3),
        }
        if id(record) in self.written:
            self.ctx.truth.write_truncate(record)

    def write(self, record: TurnRecord) -> None:
        """Write the finished turn to the ground truth (the greeting as a ``greeting``
        record: the turn's fields, ``record: "greeting"``, and ``greeting``)."""
        if record.stage == "greeting":
            self.greeting_truth.update(self.greeting_heard(record))
            d = record.to_dict()
            d["record"] = "greeting"
            d["greeting"] = dict(self.greeting_truth)
            self.ctx.truth.write_record(d)
        else:
            self.ctx.truth.write_turn(record)
        self.written.add(id(record))

    # --- the greeting ------------------------------------------------------------------

    def greet_on_connect(self, t_ns: int) -> None:
        """Called when the connection opens with the ``greeting=MS`` injection: greet, if
        this adapter takes its replies through the default sink's hooks (an adapter that
        frames replies its own way, or greets at another moment, overrides this)."""
        if type(self).reply_audio is not Session.reply_audio:
            self.greet(t_ns)

    def greeting_record(self, media_start_ns: int) -> tuple[TurnRecord, int | None]:
        """A new greeting's record (``stage="greeting"``, turn -1) and the time before
        which none of its audio goes out (``greeting=MS`` after ``media_start_ns``; None:
        as soon as it exists); starts its ``greeting`` ground truth."""
        record = self.ctx.new_record(self.id, -1, self.protocol, stage="greeting")
        inj = self.ctx.injections
        not_before = None if inj.greeting_ns is None else media_start_ns + inj.greeting_ns
        if inj.greeting_ns is not None:
            record.injected["greeting_ns"] = inj.greeting_ns
        self.greeting_truth = {"media_start_ns": media_start_ns, "greeting_ns": inj.greeting_ns}
        self.greeting_audio = []
        return record, not_before

    def note_greeting_audio(self, record: TurnRecord, samples: F32) -> None:
        """Keep a message of the greeting's audio (at ``record.output_rate``) as it is
        handed to the transport; other replies' audio is not kept."""
        if record.stage == "greeting" and samples.size:
            self.greeting_audio.append(samples.copy())

    def greeting_message_sizes(self, record: TurnRecord) -> list[int]:
        """Samples in each message of ``record.audio_sent_ns`` (the greeting's): the
        messages as handed to the transport (a media-clock transport overrides this)."""
        return [int(a.size) for a in self.greeting_audio]

    def greeting_heard(self, record: TurnRecord) -> dict[str, Any]:
        """What the caller hears first of the greeting, from the audio that went out:
        ``first_audible_sample`` (by :func:`voiceaudit.audio.first_audible`, the probe's
        rule), ``first_audible_ns`` (when the message holding it was sent, plus its
        place in that message) and ``first_audible_after_ns`` (after the media began).
        Empty when no greeting audio was kept."""
        if not self.greeting_audio:
            return {}
        rate = record.output_rate or self.output_rate
        sent_samples = record.reply_audio_samples
        audio = np.concatenate(self.greeting_audio)[: max(0, sent_samples)]
        sent = record.marks.get("first_audio_sent")
        out: dict[str, Any] = {
            "first_audio_sent_ns": sent,
            "first_audio_after_ns": (
                None if sent is None else sent - int(self.greeting_truth["media_start_ns"])
            ),
            "first_audible_sample": None,
            "first_audible_ns": None,
            "first_audible_after_ns": None,
        }
        onset = first_audible(audio, rate) if audio.size else None
        if onset is None:
            return out
        start = 0
        for size, t in zip(self.greeting_message_sizes(record), record.audio_sent_ns, strict=False):
            if onset < start + size:
                heard = t + (onset - start) * 1_000_000_000 // rate
                out["first_audible_sample"] = int(onset)
                out["first_audible_ns"] = int(heard)
                out["first_audible_after_ns"] = int(
                    heard - int(self.greeting_truth["media_start_ns"])
                )
                break
            start += size
        return out

    async def say_greeting(
        self, record: TurnRecord, sink: ReplySink, control: ReplyControl
    ) -> bool:
        """Say :data:`GREETING` into ``sink`` (interruptible through ``control`` as any
        reply); whether all of it went out. Cancelled: what was due before a barge-in's
        stop time still goes out, then the cancellation goes on."""
        speaker = Speaker(self.ctx, record, sink, self.rng)
        control.attach(speaker)
        speaker.say(GREETING)
        speaker.end()
        try:
            await speaker.wait()
        except asyncio.CancelledError:
            if speaker.stop_at is not None:
                await speaker.drain()
            else:
                await speaker.cancel()
            record.reply_cut = not speaker.complete
            raise
        record.reply_text = GREETING
        record.reply_cut = not speaker.complete
        return speaker.complete

    def greet(self, media_start_ns: int) -> None:
        """The bot speaks first: :data:`GREETING`, as the session's reply in progress (the
        caller's speech interrupts it as any reply), its first audio ``greeting=MS`` after
        ``media_start_ns`` (when the call's media began) or as soon as it exists."""
        record, not_before = self.greeting_record(media_start_ns)

        async def run(control: ReplyControl, previous: asyncio.Task[None] | None) -> None:
            speaker: Speaker | None = None
            try:
                sink = await self.begin_reply(record)
                if not_before is not None:
                    sink.not_before_ns = not_before  # type: ignore[attr-defined]
                speaker = Speaker(self.ctx, record, sink, self.rng)
                control.attach(speaker)
                speaker.say(GREETING)
                speaker.end()
                await speaker.wait()
                record.reply_text = GREETING
                record.status = "completed" if speaker.complete else "cancelled"
                record.reply_cut = not speaker.complete
                await self.reply_sent(record, sink)
            except asyncio.CancelledError:
                record.status = "cancelled"
                if speaker is not None:
                    if speaker.stop_at is not None:
                        await speaker.drain()
                    else:
                        await speaker.cancel()
                    record.reply_cut = not speaker.complete
                await self.reply_cancelled(record)
            finally:
                sent = record.marks["first_audio_sent"]
                self.greeting_truth["first_audio_sent_ns"] = sent
                self.greeting_truth["first_audio_after_ns"] = (
                    None if sent is None else sent - media_start_ns
                )
                self.reply_over()
                await self.turn_over(record, control)

        self.start_response(record, run)

    # --- lifetime --------------------------------------------------------------------

    async def close(self) -> None:
        """The connection is gone: stop the input, the reply and every task (in that
        order), then :meth:`abandon` what is left."""
        self.closed = True
        self.input.close()
        await stop_tasks([self.response])
        await stop_tasks(list(self.tasks))
        self.abandon()
