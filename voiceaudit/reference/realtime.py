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

A client whose handshake carries ``X-Voiceaudit-Stages: 1`` also gets the reference's
``voiceaudit.stage`` extension events (the server times of every stage of its cascade,
after the standard event of the same moment; see voiceaudit.reference.stages). Without
the header the server sends the standard protocol only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSMsgType, web

from voiceaudit.reference.dsp import (
    F32,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import (
    CONNECT_DELAY_KEY,
    CTX_KEY,
    InputPipeline,
    ReplyControl,
    ServerContext,
    Utterance,
    barge_in,
    new_id,
    run_reply,
)
from voiceaudit.reference.responder import Message
from voiceaudit.reference.stages import STAGE_EVENT, pending_stages, wants_stages
from voiceaudit.reference.vad import SpeechStart, SpeechStop
from voiceaudit.reference.wsutil import set_nodelay, write_frame_in_pieces

log = logging.getLogger("voiceaudit.reference")

PCM_RATE = 24_000
G711_RATE = 8_000
#: Audio tokens counted per second of audio in ``usage`` (the reference's own convention).
AUDIO_TOKENS_PER_S = 10

_GA_FORMATS = {"audio/pcm": PCM_RATE, "audio/pcmu": G711_RATE, "audio/pcma": G711_RATE}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_BETA_NAMES = {v: k for k, v in _BETA_FORMATS.items()}

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
    "transcription_session.update",
)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def decode_audio(fmt: str, data: bytes) -> F32:
    if fmt == "audio/pcm":
        if len(data) % 2:
            raise ProtocolError(
                "invalid_value",
                "audio/pcm must be 16-bit samples: the decoded audio has an odd number of bytes",
                "audio",
            )
        return pcm16_to_float(data)
    if fmt == "audio/pcmu":
        return ulaw_decode(data)
    return alaw_decode(data)


def encode_audio(fmt: str, samples: F32) -> bytes:
    if fmt == "audio/pcm":
        return float_to_pcm16(samples)
    if fmt == "audio/pcmu":
        return ulaw_encode(samples)
    return alaw_encode(samples)


def _format_object(name: str) -> dict[str, Any]:
    return {"type": name, "rate": PCM_RATE} if name == "audio/pcm" else {"type": name}


def _log_failure(task: asyncio.Future[Any]) -> None:
    """Unexpected exceptions in session tasks go to the log, never silently away."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reference session task failed", exc_info=task.exception())


class RealtimeSession:
    """One ``/v1/realtime`` connection."""

    def __init__(
        self,
        ctx: ServerContext,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        beta: bool,
        model: str,
        connect_delay_ns: int,
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.ws = ws
        self.beta = beta
        self.model = model
        self.connect_delay_ns = connect_delay_ns
        #: the client asked for the reference's stage events (voiceaudit.reference.stages)
        self.stage_events = wants_stages(request.headers)
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.rng = ctx.session_rng()
        cfg = ctx.config
        self.input_format = "audio/pcm"
        self.output_format = "audio/pcm"
        self.voice = "alloy"
        self.speed = 1.0
        self.instructions = ""
        self.output_modalities = ["audio"]
        self.transcription: dict[str, Any] | None = None
        self.turn_detection: dict[str, Any] | None = {
            "type": "server_vad",
            "threshold": cfg.vad_threshold,
            "prefix_padding_ms": cfg.prefix_padding_ms,
            "silence_duration_ms": cfg.silence_ms,
            "create_response": True,
            "interrupt_response": True,
            "idle_timeout_ms": None,
        }
        self.input = self._new_input()
        self.turn_index = 0
        self.last_item_id: str | None = None
        self.history: list[Message] = []
        self._pending_record: TurnRecord | None = None
        self._pending_text: str | None = None
        self._speech_item: str | None = None
        self._speech_record: TurnRecord | None = None
        self._response_task: asyncio.Task[None] | None = None
        #: The running response's turn record and its barge-in handle.
        self._response_record: TurnRecord | None = None
        self._response_control: ReplyControl | None = None
        #: Assistant audio items by id (conversation.item.truncate), and the turns written.
        self._reply_items: dict[str, TurnRecord] = {}
        self._written: set[int] = set()
        self._user_turns_in_flight = 0
        #: Why the running response would be cancelled (response.status_details.reason).
        self._cancel_reason = "turn_detected"
        #: Turns whose record a response (or the pending slot) will write.
        self._handed_over: set[int] = set()
        self._response_requested = False
        self._turn_tasks: set[asyncio.Task[Any]] = set()
        self._small = ctx.injections.small_writes_bytes
        self._closed = False

    # --- plumbing --------------------------------------------------------------------

    def _new_input(self) -> InputPipeline:
        td = self.turn_detection
        return InputPipeline(
            self.ctx,
            _GA_FORMATS[self.input_format],
            self,
            silence_ms=int(td["silence_duration_ms"]) if td else self.ctx.config.silence_ms,
            prefix_padding_ms=int(td["prefix_padding_ms"])
            if td
            else self.ctx.config.prefix_padding_ms,
            threshold=float(td["threshold"]) if td else self.ctx.config.vad_threshold,
            vad_enabled=td is not None,
        )

    def _name(self, ga: str) -> str:
        if not self.beta:
            return ga
        return {
            "response.output_audio.delta": "response.audio.delta",
            "response.output_audio.done": "response.audio.done",
            "response.output_audio_transcript.delta": "response.audio_transcript.delta",
            "response.output_audio_transcript.done": "response.audio_transcript.done",
            "response.output_text.delta": "response.text.delta",
            "response.output_text.done": "response.text.done",
        }.get(ga, ga)

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": self._name(type_), "event_id": new_id("event"), **fields}

    async def send(self, type_: str, **fields: Any) -> None:
        if self._closed or self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(self._event(type_, **fields)))

    async def announce(self, record: TurnRecord, *, final: bool = False) -> None:
        """Send the stage events of ``record`` reached since the last call (extension)."""
        if not self.stage_events:
            return
        for stage, t in pending_stages(record, final=final):
            await self.send(STAGE_EVENT, stage=stage, turn=record.turn, t_ns=t)

    async def _speech_started(self, record: TurnRecord, audio_start_ms: int, item_id: str) -> None:
        await self.send(
            "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
        )
        await self.announce(record)

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        await self.send(
            "error",
            error={
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    # --- session object --------------------------------------------------------------

    def session_object(self) -> dict[str, Any]:
        expires = int(time.time()) + 3600
        if self.beta:
            td = dict(self.turn_detection) if self.turn_detection else None
            if td is not None:
                td.pop("idle_timeout_ms", None)
            return {
                "id": self.id,
                "object": "realtime.session",
                "model": self.model,
                "expires_at": expires,
                "modalities": ["text", "audio"] if "audio" in self.output_modalities else ["text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": _BETA_NAMES[self.input_format],
                "output_audio_format": _BETA_NAMES[self.output_format],
                "input_audio_transcription": self.transcription,
                "turn_detection": td,
                "tools": [],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
                "speed": self.speed,
            }

        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": expires,
            "include": None,
            "audio": {
                "input": {
                    "format": _format_object(self.input_format),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": self.turn_detection,
                },
                "output": {
                    "format": _format_object(self.output_format),
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
        }

    # --- session.update --------------------------------------------------------------

    def _parse_format(self, value: Any, param: str) -> str:
        if isinstance(value, str):
            if value in _BETA_FORMATS:
                return _BETA_FORMATS[value]
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{value}'. Supported values are: 'pcm16', 'g711_ulaw', "
                "and 'g711_alaw'.",
                param,
            )
        if not isinstance(value, dict):
            raise ProtocolError("invalid_type", f"{param} must be an object", param)
        ftype = value.get("type", "audio/pcm")
        if ftype not in _GA_FORMATS:
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{ftype}'. Supported values are: 'audio/pcm', 'audio/pcmu', "
                "and 'audio/pcma'.",
                f"{param}.type",
            )
        rate = value.get("rate")
        if ftype == "audio/pcm" and rate is not None and rate != PCM_RATE:
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: {rate}. audio/pcm supports only a rate of 24000.",
                f"{param}.rate",
            )
        return str(ftype)

    def _parse_turn_detection(self, value: Any, param: str) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ProtocolError("invalid_type", f"{param} must be an object or null", param)
        kind = value.get("type", "server_vad")
        if kind == "semantic_vad":
            raise ProtocolError(
                "unsupported_value",
                "semantic_vad is not available in the voiceaudit reference pipeline; "
                "use server_vad",
                f"{param}.type",
            )
        if kind != "server_vad":
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
                f"{param}.type",
            )
        base = dict(self.turn_detection or {})
        if not base:
            cfg = self.ctx.config
            base = {
                "type": "server_vad",
                "threshold": cfg.vad_threshold,
                "prefix_padding_ms": cfg.prefix_padding_ms,
                "silence_duration_ms": cfg.silence_ms,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": None,
            }
        checks: dict[str, tuple[bool, float, float]] = {
            "threshold": (False, 0.0, 1.0),
            "prefix_padding_ms": (True, 0, 5000),
            "silence_duration_ms": (True, 10, 10000),
        }
        for key, (integral, lo, hi) in checks.items():
            if key in value and value[key] is not None:
                v = value[key]
                ok = isinstance(v, int) or (not integral and isinstance(v, float))
                if isinstance(v, bool) or not ok or not lo <= float(v) <= hi:
                    raise ProtocolError(
                        "invalid_value", f"Invalid value for {key}: {v!r}", f"{param}.{key}"
                    )
                base[key] = v
        for key in ("create_response", "interrupt_response"):
            if key in value and value[key] is not None:
                base[key] = bool(value[key])
        if "idle_timeout_ms" in value:
            base["idle_timeout_ms"] = value["idle_timeout_ms"]
        base["type"] = "server_vad"
        return base

    async def on_session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("missing_required_parameter", "Missing 'session'.", "session")
        stype = session.get("type")
        if stype not in (None, "realtime"):
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{stype}'. The reference pipeline serves 'realtime' sessions.",
                "session.type",
            )
        new_in, new_out = self.input_format, self.output_format
        td = self.turn_detection
        td_set = False
        voice, speed = self.voice, self.speed
        modalities = self.output_modalities
        transcription = self.transcription
        audio = session.get("audio")
        if audio is not None:
            if not isinstance(audio, dict):
                raise ProtocolError(
                    "invalid_type", "session.audio must be an object", "session.audio"
                )
            inp = audio.get("input") or {}
            out = audio.get("output") or {}
            if "format" in inp:
                new_in = self._parse_format(inp["format"], "session.audio.input.format")
            if "turn_detection" in inp:
                td = self._parse_turn_detection(
                    inp["turn_detection"], "session.audio.input.turn_detection"
                )
                td_set = True
            if "transcription" in inp:
                transcription = inp["transcription"]
            if "format" in out:
                new_out = self._parse_format(out["format"], "session.audio.output.format")
            if "voice" in out:
                v = out["voice"]
                voice = v.get("id", "alloy") if isinstance(v, dict) else str(v)
            if "speed" in out and out["speed"] is not None:
                speed = float(out["speed"])
        # Beta shape (also accepted from GA clients).
        if "input_audio_format" in session:
            new_in = self._parse_format(session["input_audio_format"], "session.input_audio_format")
        if "output_audio_format" in session:
            new_out = self._parse_format(
                session["output_audio_format"], "session.output_audio_format"
            )
        if "turn_detection" in session:
            td = self._parse_turn_detection(session["turn_detection"], "session.turn_detection")
            td_set = True
        if "input_audio_transcription" in session:
            transcription = session["input_audio_transcription"]
        if "voice" in session:
            voice = str(session["voice"])
        if "speed" in session and session["speed"] is not None:
            speed = float(session["speed"])
        mods = session.get("output_modalities", session.get("modalities"))
        if mods is not None:
            if not isinstance(mods, list) or not set(mods) <= {"text", "audio"} or not mods:
                raise ProtocolError(
                    "invalid_value",
                    "output_modalities must be ['audio'] or ['text']",
                    "session.output_modalities",
                )
            modalities = ["audio"] if "audio" in mods else ["text"]
        if not 0.25 <= speed <= 1.5:
            raise ProtocolError(
                "invalid_value", f"Invalid speed {speed}", "session.audio.output.speed"
            )
        if "instructions" in session and isinstance(session["instructions"], str):
            self.instructions = session["instructions"]
        rebuild = new_in != self.input_format
        self.input_format, self.output_format = new_in, new_out
        self.voice, self.speed, self.output_modalities = voice, speed, modalities
        self.transcription = transcription if isinstance(transcription, dict) else None
        if td_set:
            self.turn_detection = td
            if not rebuild:
                self.input.configure(
                    silence_ms=int(td["silence_duration_ms"]) if td else self.ctx.config.silence_ms,
                    prefix_padding_ms=int(td["prefix_padding_ms"]) if td else 0,
                    vad_enabled=td is not None,
                )
        if rebuild:
            self.input.close()
            self.input = self._new_input()
        await self.send("session.updated", session=self.session_object())

    # --- input -----------------------------------------------------------------------

    def on_speech_started(self, start: SpeechStart, t_ns: int) -> None:
        td = self.turn_detection or {}
        task = self._response_task
        if td.get("interrupt_response", True) and task is not None and not task.done():
            if self.turn_detection is None:
                task.cancel()  # a manual commit during a response (no speech detection)
            elif self._response_record is not None:
                # barge-in: the VAD heard the caller while the reply runs
                self._cancel_reason = "turn_detected"
                barge_in(
                    self.ctx,
                    self._response_record,
                    task,
                    self._response_control,
                    t_ns,
                    by_turn=self.turn_index,
                    speech_start_ms=start.speech_start_ms,
                )
        item_id = new_id("item")
        record = self.ctx.new_record(self.id, self.turn_index, self._protocol_name())
        self.turn_index += 1
        record.mark("speech_started", t_ns)
        record.audio_start_ms = start.audio_start_ms
        record.speech_start_ms = start.speech_start_ms
        record.input_rate = _GA_FORMATS[self.input_format]
        if record.turn == 0 and self.connect_delay_ns:
            record.injected["connect_delay_ns"] = self.connect_delay_ns
        self._speech_item = item_id
        self._speech_record = record
        if self.turn_detection is None:
            record.marks["speech_started"] = None  # a manual commit: no speech detection
            return
        self._spawn(self._speech_started(record, start.audio_start_ms, item_id))

    def on_speech_stopped(
        self, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None:
        item_id = self._speech_item or new_id("item")
        record = self._speech_record
        self._speech_item = None
        self._speech_record = None
        if record is None:  # manual commit without a speech start
            record = self.ctx.new_record(self.id, self.turn_index, self._protocol_name())
            self.turn_index += 1
            record.input_rate = _GA_FORMATS[self.input_format]
        self._user_turns_in_flight += 1
        self._spawn(self._user_turn(record, item_id, stop, t_ns, transcript))

    def _protocol_name(self) -> str:
        return "realtime-beta" if self.beta else "realtime"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._turn_tasks.add(task)
        task.add_done_callback(self._turn_tasks.discard)
        task.add_done_callback(_log_failure)

    async def _user_turn(
        self,
        record: TurnRecord,
        item_id: str,
        stop: SpeechStop,
        t_ns: int,
        transcript: Awaitable[Utterance],
    ) -> None:
        try:
            await self._user_turn_inner(record, item_id, stop, t_ns, transcript)
        except asyncio.CancelledError:
            # The session ended before this turn reached a response: record it as it is.
            if id(record) not in self._handed_over:
                record.status = "client_disconnected"
                self.ctx.truth.write_turn(record)
            raise
        finally:
            self._user_turns_in_flight -= 1

    async def _user_turn_inner(
        self,
        record: TurnRecord,
        item_id: str,
        stop: SpeechStop,
        t_ns: int,
        transcript: Awaitable[Utterance],
    ) -> None:
        manual = self.turn_detection is None
        if not manual:
            await self.ctx.stage_delay(record, "vad")
            t_ns = now_ns() if self.ctx.injections.stage_delay("vad") else t_ns
        record.mark("vad_stop", t_ns)
        record.marks["speech_end_received"] = self.input.last_voiced_arrival_ns
        record.speech_end_ms = stop.speech_end_ms
        record.audio_end_ms = stop.audio_end_ms
        if not manual:
            await self.send(
                "input_audio_buffer.speech_stopped", audio_end_ms=stop.audio_end_ms, item_id=item_id
            )
        prev = self.last_item_id
        self.last_item_id = item_id
        await self.send("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        await self.announce(record)
        user_item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        if self.beta:
            await self.send("conversation.item.created", previous_item_id=prev, item=user_item)
        else:
            await self.send("conversation.item.added", previous_item_id=prev, item=user_item)
            await self.send("conversation.item.done", previous_item_id=prev, item=user_item)
        utt = await transcript
        record.mark("asr_done")
        await self.ctx.stage_delay(record, "asr")
        record.mark("transcript_final")
        seconds = max(0, stop.speech_end_ms - (record.speech_start_ms or 0)) / 1000
        if utt.result is not None:
            record.transcript = utt.result.text
            record.asr = {
                "worker": utt.result.worker,
                "decode_ns": utt.result.decode_ns,
                "end_utt_ns": utt.result.end_ns,
            }
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=utt.result.text,
                usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        else:
            record.transcript = ""
            record.error = utt.error
            await self.send(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error={
                    "type": "transcription_error",
                    "code": "asr_failed",
                    "message": utt.error or "speech recognition failed",
                    "param": None,
                },
            )
        await self.announce(record)
        self.history.append(Message("user", record.transcript or ""))
        td = self.turn_detection
        auto = td is not None and td.get("create_response", True)
        if auto or (self._response_requested and self._user_turns_in_flight == 1):
            self._response_requested = False
            self._start_response(record)
        else:
            # Wait for response.create; an earlier unanswered turn is written as it is.
            self._flush_pending("no_response")
            self._handed_over.add(id(record))
            self._pending_record = record

    def _flush_pending(self, status: str) -> None:
        if self._pending_record is not None:
            self._pending_record.status = status
            self.ctx.truth.write_turn(self._pending_record)
            self._pending_record = None

    # --- responses -------------------------------------------------------------------

    def _start_response(self, record: TurnRecord) -> None:
        self._handed_over.add(id(record))
        self._cancel_reason = "turn_detected"
        previous = self._response_task
        if previous is not None and not previous.done():
            if self.ctx.injections.no_barge_in:
                pass  # never stops: the new response waits for the old one (below)
            else:
                previous.cancel()  # cut by the next turn
        control = ReplyControl()
        task = asyncio.ensure_future(self._respond(record, previous, control))
        task.add_done_callback(_log_failure)
        self._response_task = task
        self._response_record = record
        self._response_control = control

    async def _respond(
        self,
        record: TurnRecord,
        previous: asyncio.Task[None] | None = None,
        control: ReplyControl | None = None,
    ) -> None:
        try:
            if previous is not None and not previous.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(previous)
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
            if self._response_task is asyncio.current_task():
                self._response_task = None
                self._response_record = None
                self._response_control = None

    async def _respond_inner(self, record: TurnRecord, control: ReplyControl | None) -> None:
        resp_id = new_id("resp")
        item_id = new_id("item")
        audio_out = "audio" in self.output_modalities
        usage_in_audio = round(
            max(0, (record.audio_end_ms or 0) - (record.audio_start_ms or 0))
            / 1000
            * AUDIO_TOKENS_PER_S
        )
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": resp_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id,
            "output_modalities": list(self.output_modalities),
            "max_output_tokens": "inf",
            "audio": {
                "output": {"format": _format_object(self.output_format), "voice": self.voice}
            },
            "usage": None,
            "metadata": None,
        }
        if self.beta:
            response = {
                "object": "realtime.response",
                "id": resp_id,
                "status": "in_progress",
                "status_details": None,
                "output": [],
                "usage": None,
                "metadata": None,
                "modalities": ["text", "audio"] if audio_out else ["text"],
                "voice": self.voice,
                "output_audio_format": _BETA_NAMES[self.output_format],
            }
        messages = list(self.history)
        if self.instructions:
            messages.insert(0, Message("system", self.instructions))
        record.mark("llm_request")  # the response starts here: response.created follows
        await self.send("response.created", response=response)
        await self.announce(record)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        prev = self.last_item_id
        self.last_item_id = item_id
        if audio_out:
            self._reply_items[item_id] = record
        await self.send(
            "response.output_item.added", response_id=resp_id, output_index=0, item=item
        )
        if self.beta:
            await self.send("conversation.item.created", previous_item_id=prev, item=item)
        else:
            await self.send("conversation.item.added", previous_item_id=prev, item=item)
        part_type = "audio" if audio_out else "text"
        empty_part = (
            {"type": part_type, "transcript": ""} if audio_out else {"type": "text", "text": ""}
        )
        await self.send(
            "response.content_part.added",
            response_id=resp_id,
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=empty_part,
        )
        sink = _RealtimeSink(self, record, resp_id, item_id, audio_out)
        status = "completed"
        reason: str | None = None
        text = ""
        tokens = 0
        audio_ns = 0
        try:
            result = await run_reply(
                self.ctx,
                record,
                messages,
                sink,
                self.rng,
                wpm=round(self.ctx.config.words_per_minute * self.speed),
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
        item_status = "completed" if status == "completed" else "incomplete"
        if audio_out:
            content = [{"type": "audio" if self.beta else "output_audio", "transcript": text}]
            done_part = {"type": "audio", "transcript": text}
        else:
            content = [{"type": "text" if self.beta else "output_text", "text": text}]
            done_part = {"type": "text", "text": text}
        done_item = dict(item, status=item_status, content=content)
        out_tokens_audio = round(audio_ns / 1e9 * AUDIO_TOKENS_PER_S)
        usage = {
            "total_tokens": usage_in_audio + tokens + out_tokens_audio,
            "input_tokens": usage_in_audio,
            "output_tokens": tokens + out_tokens_audio,
            "input_token_details": {
                "text_tokens": 0,
                "audio_tokens": usage_in_audio,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
            },
            "output_token_details": {"text_tokens": tokens, "audio_tokens": out_tokens_audio},
        }
        common = {"response_id": resp_id, "item_id": item_id, "output_index": 0, "content_index": 0}
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
            final = dict(response, status=status, output=[done_item], usage=usage)
            if status != "completed":
                final["status_details"] = {
                    "type": status,
                    "reason": reason,
                    "error": {"type": "server_error", "code": None, "message": record.error}
                    if status == "failed"
                    else None,
                }
            await send("response.done", response=final)
        self.ctx.truth.write_turn(record)
        self._written.add(id(record))

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
            audio = event.get("audio")
            if not isinstance(audio, str):
                raise ProtocolError(
                    "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
                )
            try:
                data = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    "invalid_value", "Invalid 'audio': it is not valid base64.", "audio"
                ) from None
            samples = decode_audio(self.input_format, data)
            self.input.feed(samples, now_ns())
        elif etype == "input_audio_buffer.commit":
            if self.turn_detection is not None and not self.input.in_speech:
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
            task = self._response_task
            if task is None or task.done():
                raise ProtocolError(
                    "response_cancel_not_active", "Cancellation failed: no active response found."
                )
            self._cancel_reason = "client_cancelled"
            if self._response_record is not None and self._response_record.cancel is None:
                eid = event.get("event_id")
                self._response_record.cancel = {
                    "t_ns": now_ns(),
                    "event_id": eid if isinstance(eid, str) else None,
                    "response_id": event.get("response_id")
                    if isinstance(event.get("response_id"), str)
                    else None,
                }
            task.cancel()
        elif etype == "conversation.item.truncate":
            await self._on_truncate(event)
        elif etype == "conversation.item.create":
            self._on_item_create(event)
            await self.send(
                "conversation.item.created" if self.beta else "conversation.item.added",
                previous_item_id=self.last_item_id,
                item=event.get("item"),
            )
        elif etype in CLIENT_EVENTS:
            raise ProtocolError(
                "unsupported_event",
                f"'{etype}' is not supported by the voiceaudit reference pipeline.",
                "type",
            )
        else:
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{etype}'. Supported values are: "
                + ", ".join(f"'{e}'" for e in CLIENT_EVENTS)
                + ".",
                "type",
            )

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        """``conversation.item.truncate``: the client says how much of an assistant audio
        item it played (``audio_end_ms``). Recorded in the turn's ground truth and
        answered with ``conversation.item.truncated``; it does not stop a running reply
        (``response.cancel`` or the caller's speech does)."""
        t = now_ns()
        item_id = event.get("item_id")
        content_index = event.get("content_index", 0)
        end_ms = event.get("audio_end_ms")
        if not isinstance(item_id, str):
            raise ProtocolError(
                "missing_required_parameter", "Missing required parameter: 'item_id'.", "item_id"
            )
        if isinstance(end_ms, bool) or not isinstance(end_ms, int):
            raise ProtocolError(
                "missing_required_parameter",
                "Missing required parameter: 'audio_end_ms' (an integer).",
                "audio_end_ms",
            )
        if isinstance(content_index, bool) or content_index != 0:
            raise ProtocolError(
                "invalid_value", "Invalid 'content_index': only 0 is valid.", "content_index"
            )
        record = self._reply_items.get(item_id)
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
        record.truncate = {
            "t_ns": t,
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": end_ms,
            "event_id": eid if isinstance(eid, str) else None,
            "reply_audio_ms_sent": round(sent_ms, 3),
        }
        if id(record) in self._written:
            self.ctx.truth.write_truncate(record)
        await self.send(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=0,
            audio_end_ms=end_ms,
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
            record = self.ctx.new_record(self.id, self.turn_index, self._protocol_name())
            self.turn_index += 1
            record.transcript = self._pending_text
        self._pending_text = None
        self._start_response(record)

    # --- lifetime --------------------------------------------------------------------

    async def run(self) -> None:
        await self.send("session.created", session=self.session_object())
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.send_error(
                    "invalid_value",
                    "Binary frames are not part of the Realtime protocol: send JSON events "
                    "(audio goes base64 in input_audio_buffer.append).",
                )
            elif msg.type == WSMsgType.ERROR:
                break

    async def close(self, status: str = "client_disconnected") -> None:
        self._closed = True
        self.input.close()
        task = self._response_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for t in list(self._turn_tasks):
            t.cancel()
        for t in list(self._turn_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._flush_pending("no_response")
        if self._speech_record is not None:  # the caller left while speaking
            self._speech_record.status = "client_disconnected"
            self.ctx.truth.write_turn(self._speech_record)
            self._speech_record = None


class _RealtimeSink:
    def __init__(
        self, session: RealtimeSession, record: TurnRecord, resp_id: str, item_id: str, audio: bool
    ) -> None:
        self.s = session
        self.record = record
        self.resp_id = resp_id
        self.item_id = item_id
        self.audio = audio
        fmt = session.output_format
        self.output_rate = _GA_FORMATS[fmt]
        self.format = fmt

    def _common(self) -> dict[str, Any]:
        return {
            "response_id": self.resp_id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    async def send_text_delta(self, text: str) -> None:
        name = (
            "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
        )
        await self.s.send(name, delta=text, **self._common())
        await self.s.announce(self.record)

    async def send_audio(self, samples: F32) -> None:
        if not self.audio:
            return
        s = self.s
        if s._closed or s.ws.closed:
            return
        payload = base64.b64encode(encode_audio(self.format, samples)).decode("ascii")
        event = s._event("response.output_audio.delta", delta=payload, **self._common())
        data = json.dumps(event)
        transport = s.request.transport
        if s._small is not None and transport is not None and not transport.is_closing():
            write_frame_in_pieces(transport, data.encode(), binary=False, piece=s._small)
        else:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await s.ws.send_str(data)
        await s.announce(self.record)


async def realtime_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "").replace(" ", "")
    model = request.query.get("model", "voiceaudit-reference")
    connect_delay = int(request.get(CONNECT_DELAY_KEY, 0))
    ws = web.WebSocketResponse(compress=False, max_msg_size=32 * 1024 * 1024, autoping=True)
    await ws.prepare(request)
    if ctx.injections.small_writes:
        set_nodelay(request.transport, False)
    session = RealtimeSession(
        ctx, request, ws, beta=beta, model=model, connect_delay_ns=connect_delay
    )
    ctx.active_sessions += 1
    ctx.sessions_total += 1
    try:
        await session.run()
    finally:
        ctx.active_sessions -= 1
        await session.close()
        if not ws.closed:
            await ws.close()
    return ws
