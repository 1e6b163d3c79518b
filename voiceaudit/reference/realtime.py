"""The OpenAI Realtime WebSocket protocol (``GET /v1/realtime``), GA and beta.

A client that sends the header ``OpenAI-Beta: realtime=v1`` gets the beta event names
(``response.audio.delta``, ``response.audio_transcript.delta``, ``conversation.item.created``
…) and the beta session shape; everyone else gets the GA protocol. ``session.update``
is accepted in either shape. Stage marks travel only as the protocol's own events:

==================  ===========================================================
ground-truth mark   event that carries it
==================  ===========================================================
speech_started      ``input_audio_buffer.speech_started``
vad_stop            ``input_audio_buffer.speech_stopped`` (then ``committed``)
transcript_final    ``conversation.item.input_audio_transcription.completed``
llm_request         ``response.created``
llm_first_token     first ``response.output_audio_transcript.delta``
first_audio_sent    first ``response.output_audio.delta``
==================  ===========================================================

The reference pipeline always transcribes the user's audio (it is a cascade), so the
transcription events are sent whether or not ``audio.input.transcription`` is set.

With the ``greeting=MS`` injection the agent speaks first: a response answering no user
item, its first audio MS after the ``session.updated`` answering the client's first
``session.update`` (or started MS after the connection when the client sends none).

A client whose handshake carries ``X-Voiceaudit-Stages: 1`` also gets the reference's
``voiceaudit.stage`` extension events (the server times of every stage of its cascade,
after the standard event of the same moment; see voiceaudit.reference.stages). Without
the header the server sends the standard protocol only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from aiohttp import web

from voiceaudit.reference.dsp import F32
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import CTX_KEY, ReplyControl, Utterance, new_id, run_reply
from voiceaudit.reference.realtime_events import (
    AUDIO_TOKENS_PER_S,
    GA_FORMATS,
    ProtocolError,
    RealtimeSettings,
    decode_append,
    encode_audio,
    event_name,
    finished_item,
    finished_response,
    message_item,
    parse_truncate,
    unknown_event,
    usage,
)
from voiceaudit.reference.responder import Message
from voiceaudit.reference.session import GREETING, Session
from voiceaudit.reference.stages import STAGE_EVENT, pending_stages, wants_stages
from voiceaudit.reference.vad import SpeechStart, SpeechStop
from voiceaudit.reference.wsutil import read_messages, send_message, serve_websocket

log = logging.getLogger("voiceaudit.reference")


class RealtimeSession(Session):
    """One ``/v1/realtime`` connection."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, connect_delay_ns: int
    ) -> None:
        super().__init__(request.app[CTX_KEY], connect_delay_ns=connect_delay_ns)
        self.request, self.ws = request, ws
        self.beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "").replace(" ", "")
        self.protocol = "realtime-beta" if self.beta else "realtime"
        self.model = request.query.get("model", "voiceaudit-reference")
        #: the client asked for the reference's stage events (voiceaudit.reference.stages)
        self.stage_events = wants_stages(request.headers)
        self.conversation_id = new_id("conv")
        self.settings = RealtimeSettings(self.ctx.config)
        self._open_input()
        self.last_item_id: str | None = None
        self._pending_record: TurnRecord | None = None
        self._pending_text: str | None = None
        self._speech_item: str | None = None
        self._user_turns_in_flight = 0
        #: Turns being heard: their user item's id, and whether speech detection was off
        #: (a manual commit) when the hearing began.
        self._heard: dict[int, tuple[str, bool]] = {}
        #: Why the running response would be cancelled (response.status_details.reason).
        self._cancel_reason = "turn_detected"
        #: Turns whose record a response (or the pending slot) will write.
        self._handed_over: set[int] = set()
        self._response_requested = False
        #: greeting=MS: the greeting waits for the session to be ready (its timer task)
        self._greeting_due = False
        self._greeting_timer: asyncio.Task[None] | None = None
        self._greeting_not_before: int | None = None

    @property
    def vad_stage_delay(self) -> bool:  # type: ignore[override]
        return self.settings.turn_detection is not None

    def _open_input(self) -> None:
        self.open_input(GA_FORMATS[self.settings.input_format], **self.settings.vad())

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": event_name(type_, self.beta), "event_id": new_id("event"), **fields}

    async def send(self, type_: str, **fields: Any) -> None:
        if not self.closed and not self.ws.closed:
            await send_message(
                self.ws, self.request, json.dumps(self._event(type_, **fields)), None
            )

    async def announce(self, record: TurnRecord, *, final: bool = False) -> None:
        """Send the stage events of ``record`` reached since the last call (extension)."""
        if not self.stage_events:
            return
        for stage, t in pending_stages(record, final=final):
            await self.send(STAGE_EVENT, stage=stage, turn=record.turn, t_ns=t)

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        error = {"type": kind, "code": code, "message": message, "param": param}
        await self.send("error", error=error | {"event_id": event_id})

    def session_object(self) -> dict[str, Any]:
        return self.settings.session_object(self.id, self.model, self.beta)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        rebuild, td_set = self.settings.update(event)
        td = self.settings.turn_detection
        if td_set and not rebuild:
            self.input.configure(
                silence_ms=int(td["silence_duration_ms"]) if td else self.ctx.config.silence_ms,
                prefix_padding_ms=int(td["prefix_padding_ms"]) if td else 0,
                vad_enabled=td is not None,
            )
        if rebuild:
            self._open_input()
        await self.send("session.updated", session=self.session_object())
        if self._greeting_due:
            # the session is ready: the greeting's first audio greeting=MS from now
            self._greeting_due = False
            if self._greeting_timer is not None:
                self._greeting_timer.cancel()
            self._greet(now_ns())

    # --- the greeting (greeting=MS) --------------------------------------------------

    def greet_on_connect(self, t_ns: int) -> None:
        """``greeting=MS``: the agent speaks first once the session is ready: its first
        audio MS after the ``session.updated`` answering the client's first
        ``session.update``, or, when the client sends none within MS of connecting, a
        response started MS after the connection (its first audio as soon as it is
        synthesized)."""
        inj = self.ctx.injections.greeting_ns
        if inj is None:
            return
        self._greeting_due = True

        async def later() -> None:
            await asyncio.sleep(inj / 1e9)
            if self._greeting_due:
                self._greeting_due = False
                self._greet(t_ns)

        self._greeting_timer = asyncio.ensure_future(later())
        self.tasks.add(self._greeting_timer)
        self._greeting_timer.add_done_callback(self.tasks.discard)

    def _greet(self, ready_ns: int) -> None:
        """A response that answers no user item: the greeting, as a real agent told to
        speak first. Not when the caller has already spoken or a response runs."""
        if self.closed or self.turn_index > 0 or self.speech_record is not None:
            return
        if self.response is not None and not self.response.done():
            return
        record, not_before = self.greeting_record(ready_ns)
        self._greeting_not_before = not_before
        self._start_response(record)

    # --- the session's hooks: input --------------------------------------------------

    def interrupt(self, start: SpeechStart, t_ns: int) -> bool:
        td = self.settings.turn_detection
        task = self.response
        if not (td or {}).get("interrupt_response", True) or task is None or task.done():
            return False
        if td is None:
            task.cancel()  # a manual commit during a response (no speech detection)
            return True
        self._cancel_reason = "turn_detected"
        return super().interrupt(start, t_ns)  # barge-in: the VAD heard the caller

    def speech_began(self, record: TurnRecord, start: SpeechStart, t_ns: int) -> None:
        self._speech_item = item_id = new_id("item")
        if self.settings.turn_detection is None:
            record.marks["speech_started"] = None  # a manual commit: no speech detection
            return
        self.spawn(self._speech_started(record, start.audio_start_ms, item_id))

    async def _speech_started(self, record: TurnRecord, audio_start_ms: int, item_id: str) -> None:
        await self.send(
            "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
        )
        await self.announce(record)

    def speech_ended(
        self, record: TurnRecord, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None:
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        self._user_turns_in_flight += 1
        self.spawn(self._user_turn(record, item_id, stop, t_ns, transcript))

    async def _user_turn(
        self,
        record: TurnRecord,
        item_id: str,
        stop: SpeechStop,
        t_ns: int,
        transcript: Awaitable[Utterance],
    ) -> None:
        self._heard[id(record)] = (item_id, self.settings.turn_detection is None)
        try:
            await self.hear(record, stop, t_ns, transcript)
            self.history.append(Message("user", record.transcript or ""))
            td = self.settings.turn_detection
            auto = td is not None and td.get("create_response", True)
            if auto or (self._response_requested and self._user_turns_in_flight == 1):
                self._response_requested = False
                self._start_response(record)
            else:
                # Wait for response.create; an earlier unanswered turn is written as it is.
                self._flush_pending("no_response")
                self._handed_over.add(id(record))
                self._pending_record = record
        except asyncio.CancelledError:
            # The session ended before this turn reached a response: record it as it is.
            if id(record) not in self._handed_over:
                record.status = "client_disconnected"
                self.ctx.truth.write_turn(record)
            raise
        finally:
            self._user_turns_in_flight -= 1
            self._heard.pop(id(record), None)

    async def speech_stopped(self, record: TurnRecord, stop: SpeechStop) -> None:
        item_id, manual = self._heard[id(record)]
        if not manual:
            await self.send(
                "input_audio_buffer.speech_stopped", audio_end_ms=stop.audio_end_ms, item_id=item_id
            )
        prev = self.last_item_id
        self.last_item_id = item_id
        await self.send("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        await self.announce(record)
        content = [{"type": "input_audio", "transcript": None}]
        user_item = message_item(item_id, "user", "completed", content)
        if self.beta:
            await self.send("conversation.item.created", previous_item_id=prev, item=user_item)
        else:
            await self.send("conversation.item.added", previous_item_id=prev, item=user_item)
            await self.send("conversation.item.done", previous_item_id=prev, item=user_item)

    async def transcribed(self, record: TurnRecord, utt: Utterance) -> None:
        where = {"item_id": self._heard[id(record)][0], "content_index": 0}
        if utt.result is not None:
            seconds = max(0, (record.speech_end_ms or 0) - (record.speech_start_ms or 0)) / 1000
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                **where,
                transcript=utt.result.text,
                usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        else:
            message = utt.error or "speech recognition failed"
            error: dict[str, Any] = {"type": "transcription_error", "code": "asr_failed"}
            error |= {"message": message, "param": None}
            await self.send(
                "conversation.item.input_audio_transcription.failed", **where, error=error
            )
        await self.announce(record)

    def _flush_pending(self, status: str) -> None:
        if self._pending_record is not None:
            self._pending_record.status = status
            self.ctx.truth.write_turn(self._pending_record)
            self._pending_record = None

    def abandon(self) -> None:
        self._flush_pending("no_response")
        super().abandon()  # the caller left while speaking

    # --- responses -------------------------------------------------------------------

    def _start_response(self, record: TurnRecord) -> None:
        self._handed_over.add(id(record))
        self._cancel_reason = "turn_detected"

        def run(
            control: ReplyControl, previous: asyncio.Task[None] | None
        ) -> Coroutine[Any, Any, None]:
            return self._respond(record, previous, control)

        self.start_response(record, run)

    async def _respond(
        self, record: TurnRecord, previous: asyncio.Task[None] | None, control: ReplyControl
    ) -> None:
        try:
            await self.after(previous)
            await self._respond_inner(record, control)
        except Exception as exc:
            log.error("reference response failed", exc_info=exc)
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            self.ctx.truth.write_turn(record)
            await self.send_error(
                "server_error",
                f"The reference pipeline failed: {record.error}",
                kind="server_error",
            )
        finally:
            self.reply_over()

    async def _respond_inner(self, record: TurnRecord, control: ReplyControl) -> None:
        settings = self.settings
        resp_id = new_id("resp")
        item_id = new_id("item")
        audio_out = "audio" in settings.output_modalities
        usage_in_audio = round(
            max(0, (record.audio_end_ms or 0) - (record.audio_start_ms or 0))
            / 1000
            * AUDIO_TOKENS_PER_S
        )
        greeting = record.stage == "greeting"
        response = settings.response_object(resp_id, self.conversation_id, self.beta)
        messages = list(self.history)
        if settings.instructions:
            messages.insert(0, Message("system", settings.instructions))
        record.mark("llm_request")  # the response starts here: response.created follows
        await self.send("response.created", response=response)
        await self.announce(record)
        item = message_item(item_id, "assistant", "in_progress", [])
        prev = self.last_item_id
        self.last_item_id = item_id
        if audio_out:
            self.items[item_id] = record
        await self.send(
            "response.output_item.added", response_id=resp_id, output_index=0, item=item
        )
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send(added, previous_item_id=prev, item=item)
        empty_part = (
            {"type": "audio", "transcript": ""} if audio_out else {"type": "text", "text": ""}
        )
        common = {"response_id": resp_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send("response.content_part.added", **common, part=empty_part)
        sink = _RealtimeSink(self, record, common, audio_out)
        status = "completed"
        reason: str | None = None
        text = ""
        tokens = 0
        audio_ns = 0
        try:
            if greeting:  # said without the responder
                sink.not_before_ns = self._greeting_not_before
                await sink.send_text_delta(GREETING)
                record.mark("llm_first_token")
                complete = True
                if audio_out:
                    complete = await self.say_greeting(record, sink, control)
                text, tokens, audio_ns = GREETING, len(GREETING.split()), record.reply_audio_ns
                if not complete:
                    status, reason = "cancelled", self._cancel_reason
            else:
                result = await run_reply(
                    self.ctx,
                    record,
                    messages,
                    sink,
                    self.rng,
                    wpm=round(self.ctx.config.words_per_minute * settings.speed),
                    speak=audio_out,
                    control=control,
                )
                text, tokens, audio_ns = result.text, result.text_tokens, result.audio_ns
                if result.status == "failed":
                    status = "failed"
                    record.error = result.error
                elif result.status == "cancelled":
                    status = "cancelled"  # the speaker stopped at its barge-in time
                    reason = self._cancel_reason
        except asyncio.CancelledError:
            status = "cancelled"
            reason = self._cancel_reason
            text = record.reply_text or ""
            audio_ns = record.reply_audio_ns
        record.status = status
        record.settle_barge_in()
        self.history.append(Message("assistant", text))
        done_item, done_part = finished_item(item, text, status, audio_out, self.beta)
        out_tokens_audio = round(audio_ns / 1e9 * AUDIO_TOKENS_PER_S)
        send = self.send  # keep sending even while this task is being cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await self.announce(record, final=True)
            if audio_out:
                await send("response.output_audio.done", **common)
                await send("response.output_audio_transcript.done", transcript=text, **common)
            else:
                await send("response.output_text.done", text=text, **common)
            await send("response.content_part.done", part=done_part, **common)
            await send(
                "response.output_item.done", response_id=resp_id, output_index=0, item=done_item
            )
            if not self.beta:
                await send("conversation.item.done", previous_item_id=prev, item=done_item)
            final = finished_response(response, status, done_item, reason, record.error)
            final["usage"] = usage(usage_in_audio, tokens, out_tokens_audio)
            await send("response.done", response=final)
        self.write(record)

    # --- client events ---------------------------------------------------------------

    async def handle(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            await self.send_error(
                "invalid_json",
                "The server could not parse the event: it is not valid JSON.",
            )
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.send_error(
                "invalid_value",
                "An event must be a JSON object with a string 'type'.",
                param="type",
            )
            return
        etype = event["type"]
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            await self._dispatch(etype, event)
        except ProtocolError as exc:
            await self.send_error(exc.code, exc.message, param=exc.param, event_id=client_event_id)

    async def _dispatch(self, etype: str, event: dict[str, Any]) -> None:
        if etype == "session.update":
            await self.on_session_update(event)
        elif etype == "input_audio_buffer.append":
            samples = decode_append(event, self.settings.input_format)
            self.input.feed(samples, now_ns())
        elif etype == "input_audio_buffer.commit":
            if self.settings.turn_detection is not None and not self.input.in_speech:
                raise ProtocolError(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer is empty (server VAD "
                    "commits speech by itself).",
                )
            if not self.input.commit(now_ns()):
                raise ProtocolError(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at "
                    "least 100ms of audio.",
                )
        elif etype == "input_audio_buffer.clear":
            self.input.clear()
            await self.send("input_audio_buffer.cleared")
        elif etype == "response.create":
            await self._on_response_create()
        elif etype == "response.cancel":
            eid, rid = event.get("event_id"), event.get("response_id")
            fields = {"event_id": eid if isinstance(eid, str) else None}
            fields["response_id"] = rid if isinstance(rid, str) else None
            if self.cancel_reply(now_ns(), **fields) is None:
                raise ProtocolError(
                    "response_cancel_not_active", "Cancellation failed: no active response found."
                )
            self._cancel_reason = "client_cancelled"
        elif etype == "conversation.item.truncate":
            await self._on_truncate(event)
        elif etype == "conversation.item.create":
            self._on_item_create(event)
            await self.send(
                "conversation.item.created" if self.beta else "conversation.item.added",
                previous_item_id=self.last_item_id,
                item=event.get("item"),
            )
        else:
            raise unknown_event(etype)

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        """``conversation.item.truncate``: the client says how much of an assistant audio
        item it played (``audio_end_ms``). Recorded in the turn's ground truth and
        answered with ``conversation.item.truncated``; it does not stop a running reply
        (``response.cancel`` or the caller's speech does)."""
        t = now_ns()
        item_id, end_ms = parse_truncate(event)
        record = self.items.get(item_id)
        if record is None:
            raise ProtocolError(
                "invalid_value",
                f"Invalid 'item_id': no assistant audio item with id '{item_id}'.",
                "item_id",
            )
        sent_ms = record.reply_audio_ns / 1e6
        if end_ms < 0 or end_ms > sent_ms + 1:
            raise ProtocolError(
                "invalid_value",
                f"Invalid 'audio_end_ms': {end_ms} is outside the item's audio "
                f"(0..{sent_ms:.0f} ms).",
                "audio_end_ms",
            )
        eid = event.get("event_id")
        self.record_truncate(
            record, t, item_id, end_ms, eid if isinstance(eid, str) else None, sent_ms
        )
        await self.send(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
        )

    def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "message":
            raise ProtocolError(
                "invalid_value", "Only message items can be created here.", "item.type"
            )
        texts = [
            c.get("text", "")
            for c in item.get("content") or []
            if isinstance(c, dict) and c.get("type") in ("input_text", "text", "output_text")
        ]
        role = str(item.get("role", "user"))
        self.history.append(Message(role, " ".join(t for t in texts if t)))
        if role == "user":
            self._pending_text = " ".join(t for t in texts if t)

    async def _on_response_create(self) -> None:
        if self._user_turns_in_flight:
            # The committed audio is still being transcribed: answer once it is.
            self._response_requested = True
            return
        record = self._pending_record
        self._pending_record = None
        if record is None:
            record = self.new_turn(heard=False)
            record.transcript = self._pending_text
        self._pending_text = None
        self._start_response(record)

    # --- lifetime --------------------------------------------------------------------

    async def run(self) -> None:
        await self.send("session.created", session=self.session_object())
        await read_messages(self.ws, self.handle, self._binary)

    async def _binary(self, data: bytes) -> None:
        await self.send_error(
            "invalid_value",
            "Binary frames are not part of the Realtime protocol: send JSON events "
            "(audio goes base64 in input_audio_buffer.append).",
        )


class _RealtimeSink:
    def __init__(
        self, session: RealtimeSession, record: TurnRecord, common: dict[str, Any], audio: bool
    ) -> None:
        self.s, self.record, self.common, self.audio = session, record, common, audio
        self.format = session.settings.output_format
        self.output_rate = GA_FORMATS[self.format]
        #: no audio message before this time (the greeting's greeting=MS)
        self.not_before_ns: int | None = None

    async def send_text_delta(self, text: str) -> None:
        name = (
            "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
        )
        await self.s.send(name, delta=text, **self.common)
        await self.s.announce(self.record)

    async def send_audio(self, samples: F32) -> None:
        s = self.s
        if not self.audio or s.closed or s.ws.closed:
            return
        s.note_greeting_audio(self.record, samples)
        payload = base64.b64encode(encode_audio(self.format, samples)).decode("ascii")
        event = s._event("response.output_audio.delta", delta=payload, **self.common)
        await send_message(s.ws, s.request, json.dumps(event), s.ctx.injections.small_writes_bytes)
        await s.announce(self.record)


async def realtime_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=32 * 1024 * 1024, autoping=True)
    return await serve_websocket(request, ws, lambda d: RealtimeSession(request, ws, d))
