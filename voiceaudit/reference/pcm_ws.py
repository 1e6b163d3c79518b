"""Raw PCM over WebSocket (``GET /v1/pcm``): the shape many framework transports use.

Handshake query parameters (all optional): ``rate`` (input sample rate, default 16000,
8000..48000), ``out_rate`` (reply audio rate, default = ``rate``), ``encoding``
(only ``s16le``), ``channels`` (only 1), ``silence_ms``, ``prefix_padding_ms``,
``threshold`` (VAD, 0..1). A bad value is refused with HTTP 400 before the upgrade.

Client → server: binary frames of 16-bit little-endian mono PCM at ``rate`` (any length
with an even number of bytes); text frames are JSON control messages: ``{"type":
"commit"}`` ends the current utterance now, ``{"type": "ping"}`` is answered with
``pong``. Server → client: binary frames of reply audio at ``out_rate``, and JSON text
events — ``session.started`` first, then per turn the ground-truth marks under their own
names (``speech_started``, ``vad_stop``, ``transcript_final``, ``llm_request``,
``llm_first_token``, ``llm_done``, ``tts_request``, ``tts_first_audio``, ``first_audio_sent``,
``last_audio_sent``), each with ``turn`` and ``t_ns`` (server ``time.monotonic_ns()``),
then ``turn_done``. ``first_audio_sent`` is sent right after the first binary reply
frame; its ``t_ns`` is when that frame was handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSMsgType, web

from voiceaudit.reference.dsp import F32, float_to_pcm16, pcm16_to_float
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
from voiceaudit.reference.vad import SpeechStart, SpeechStop
from voiceaudit.reference.wsutil import set_nodelay, write_frame_in_pieces

MIN_RATE = 8_000
MAX_RATE = 48_000


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": f"{name}={raw!r} is not an integer"}}),
            content_type="application/json",
        ) from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": f"{name}={value} is outside {lo}..{hi}"}}),
            content_type="application/json",
        )
    return value


class PcmSession:
    def __init__(
        self,
        ctx: ServerContext,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        rate: int,
        out_rate: int,
        silence_ms: int,
        prefix_padding_ms: int,
        threshold: float,
        connect_delay_ns: int,
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.ws = ws
        self.id = new_id("pcm")
        self.rate = rate
        self.out_rate = out_rate
        self.connect_delay_ns = connect_delay_ns
        self.rng = ctx.session_rng()
        self.input = InputPipeline(
            ctx,
            rate,
            self,
            silence_ms=silence_ms,
            prefix_padding_ms=prefix_padding_ms,
            threshold=threshold,
        )
        self.turn_index = 0
        self._record: TurnRecord | None = None
        self._response: asyncio.Task[None] | None = None
        #: The running turn's record and its barge-in handle.
        self._response_record: TurnRecord | None = None
        self._response_control: ReplyControl | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._small = ctx.injections.small_writes_bytes
        self._odd = False
        self._closed = False
        self.history: list[Message] = []

    async def send_json(self, obj: dict[str, Any]) -> None:
        if self._closed or self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(obj))

    async def mark(self, record: TurnRecord, name: str, **extra: Any) -> None:
        await self.send_json(
            {"type": name, "turn": record.turn, "t_ns": record.marks[name], **extra}
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- InputListener ---------------------------------------------------------------

    def on_speech_started(self, start: SpeechStart, t_ns: int) -> None:
        if self._response_record is not None:
            # barge-in: the VAD heard the caller while the previous turn is answered; the
            # reply stops after the barge-in delay (never with no-barge-in)
            barge_in(
                self.ctx,
                self._response_record,
                self._response,
                self._response_control,
                t_ns,
                by_turn=self.turn_index,
                speech_start_ms=start.speech_start_ms,
            )
        record = self.ctx.new_record(self.id, self.turn_index, "pcm")
        self.turn_index += 1
        record.mark("speech_started", t_ns)
        record.audio_start_ms = start.audio_start_ms
        record.speech_start_ms = start.speech_start_ms
        record.input_rate = self.rate
        if record.turn == 0 and self.connect_delay_ns:
            record.injected["connect_delay_ns"] = self.connect_delay_ns
        self._record = record
        self._spawn(
            self.mark(
                record,
                "speech_started",
                audio_start_ms=start.audio_start_ms,
                speech_start_ms=start.speech_start_ms,
            )
        )

    def on_speech_stopped(
        self, stop: SpeechStop, t_ns: int, transcript: Awaitable[Utterance]
    ) -> None:
        record = self._record
        self._record = None
        if record is None:
            record = self.ctx.new_record(self.id, self.turn_index, "pcm")
            self.turn_index += 1
            record.input_rate = self.rate
        previous = self._response
        if previous is not None and not previous.done():
            if self.ctx.injections.no_barge_in:
                pass  # never stops: this turn's reply waits for the previous one
            else:
                if self._response_control is not None:
                    self._response_control.reason = self._response_control.reason or "next_turn"
                previous.cancel()
        control = ReplyControl()
        self._response = asyncio.ensure_future(
            self._turn(record, stop, t_ns, transcript, control, previous)
        )
        self._response_record = record
        self._response_control = control

    async def _turn(
        self,
        record: TurnRecord,
        stop: SpeechStop,
        t_ns: int,
        transcript: Awaitable[Utterance],
        control: ReplyControl | None = None,
        previous: asyncio.Task[None] | None = None,
    ) -> None:
        reason: str | None = None
        try:
            if self.ctx.injections.stage_delay("vad"):
                await self.ctx.stage_delay(record, "vad")
                t_ns = now_ns()
            record.mark("vad_stop", t_ns)
            record.marks["speech_end_received"] = self.input.last_voiced_arrival_ns
            record.speech_end_ms = stop.speech_end_ms
            record.audio_end_ms = stop.audio_end_ms
            await self.mark(
                record,
                "vad_stop",
                audio_end_ms=stop.audio_end_ms,
                speech_end_ms=stop.speech_end_ms,
                speech_end_received_ns=record.marks["speech_end_received"],
            )
            utt = await transcript
            record.mark("asr_done")
            await self.mark(record, "asr_done")
            await self.ctx.stage_delay(record, "asr")
            record.mark("transcript_final")
            if utt.result is not None:
                record.transcript = utt.result.text
                record.asr = {
                    "worker": utt.result.worker,
                    "decode_ns": utt.result.decode_ns,
                    "end_utt_ns": utt.result.end_ns,
                }
            else:
                record.transcript = ""
                record.error = utt.error
            await self.mark(record, "transcript_final", text=record.transcript, error=utt.error)
            if previous is not None and not previous.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(previous)  # no-barge-in: one reply at a time
            self.history.append(Message("user", record.transcript))
            sink = _PcmSink(self, record)
            result = await run_reply(
                self.ctx, record, list(self.history), sink, self.rng, control=control
            )
            await sink.finish()
            self.history.append(Message("assistant", result.text))
            record.status = result.status
            if result.status == "cancelled":
                reason = control.reason if control is not None else None
            if result.error:
                record.error = result.error
        except asyncio.CancelledError:
            record.status = "cancelled"
            reason = control.reason if control is not None else None
        finally:
            if self._response is asyncio.current_task():
                self._response_record = None
                self._response_control = None
            record.settle_barge_in()
            self.ctx.truth.write_turn(record)
            if not self._closed:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._finish_events(record, reason)

    async def _finish_events(self, record: TurnRecord, reason: str | None) -> None:
        if record.marks["last_audio_sent"] is not None:
            await self.mark(
                record,
                "last_audio_sent",
                reply_audio_ms=record.reply_audio_ns / 1e6,
                messages=record.audio_messages,
            )
        b = record.barge_in
        await self.send_json(
            {
                "type": "turn_done",
                "turn": record.turn,
                "t_ns": now_ns(),
                "status": record.status,
                "transcript": record.transcript,
                "reply_text": record.reply_text,
                "reply_audio_ms": record.reply_audio_ns / 1e6,
                "error": record.error,
                "cut": record.reply_cut,
                "reason": reason if record.status == "cancelled" else None,
                "barge_in_ns": None if b is None else b["detected_ns"],
                "reply_samples": record.reply_audio_samples,
            }
        )

    # --- lifetime --------------------------------------------------------------------

    async def error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, "t_ns": now_ns()})

    async def run(self) -> None:
        await self.send_json(
            {
                "type": "session.started",
                "session_id": self.id,
                "rate": self.rate,
                "out_rate": self.out_rate,
                "encoding": "s16le",
                "channels": 1,
                "t_ns": now_ns(),
            }
        )
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if len(data) % 2:
                    await self.error(
                        "bad_frame",
                        f"a frame of {len(data)} bytes is not whole 16-bit samples; dropped",
                    )
                    continue
                self.input.feed(pcm16_to_float(data), now_ns())
            elif msg.type == WSMsgType.TEXT:
                await self._control(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break

    async def _control(self, raw: str) -> None:
        try:
            obj = json.loads(raw)
        except ValueError:
            await self.error("invalid_json", "control messages must be JSON objects")
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "commit":
            if not self.input.commit(now_ns()):
                await self.error("commit_empty", "less than 100 ms of audio to commit")
        elif kind == "ping":
            await self.send_json({"type": "pong", "t_ns": now_ns()})
        elif kind == "cancel":
            task, record = self._response, self._response_record
            if task is None or task.done() or record is None:
                await self.error("cancel_not_active", "no reply to cancel")
                return
            if record.cancel is None:
                record.cancel = {"t_ns": now_ns(), "event_id": None}
            if self._response_control is not None:
                self._response_control.reason = self._response_control.reason or "cancel"
            task.cancel()
        else:
            await self.error("unknown_type", f"unknown control message type {kind!r}")

    async def close(self) -> None:
        self._closed = True
        self.input.close()
        tasks = [t for t in [self._response, *self._tasks] if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._record is not None:
            self._record.status = "client_disconnected"
            self.ctx.truth.write_turn(self._record)
            self._record = None


class _PcmSink:
    def __init__(self, session: PcmSession, record: TurnRecord) -> None:
        self.s = session
        self.record = record
        self.output_rate = session.out_rate
        self._first_sent = False
        self._announced: set[str] = set()

    async def _announce(self) -> None:
        # Marks reached since the last call, in pipeline order.
        for name in (
            "llm_request",
            "llm_first_token",
            "llm_done",
            "tts_request",
            "tts_first_audio",
        ):
            if name not in self._announced and self.record.marks[name] is not None:
                self._announced.add(name)
                extra: dict[str, Any] = {}
                if name == "tts_request" and self.record.tts_texts:
                    extra["text"] = self.record.tts_texts[0]
                await self.s.mark(self.record, name, **extra)

    async def send_text_delta(self, text: str) -> None:
        await self._announce()

    async def send_audio(self, samples: F32) -> None:
        s = self.s
        if s._closed or s.ws.closed:
            return
        data = float_to_pcm16(samples)
        transport = s.request.transport
        if s._small is not None and transport is not None and not transport.is_closing():
            write_frame_in_pieces(transport, data, binary=True, piece=s._small)
        else:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await s.ws.send_bytes(data)
        if not self._first_sent:
            self._first_sent = True
            await self._announce()
            await s.mark(self.record, "first_audio_sent")

    async def finish(self) -> None:
        await self._announce()


async def pcm_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    cfg = ctx.config
    rate = _int_param(request, "rate", 16_000, MIN_RATE, MAX_RATE)
    out_rate = _int_param(request, "out_rate", rate, MIN_RATE, MAX_RATE)
    silence_ms = _int_param(request, "silence_ms", cfg.silence_ms, 10, 10_000)
    prefix = _int_param(request, "prefix_padding_ms", cfg.prefix_padding_ms, 0, 5_000)
    _int_param(request, "channels", 1, 1, 1)
    encoding = request.query.get("encoding", "s16le")
    if encoding != "s16le":
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": f"encoding={encoding!r}: only s16le"}}),
            content_type="application/json",
        )
    try:
        threshold = float(request.query.get("threshold", cfg.vad_threshold))
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"message": "threshold must be a number in 0..1"}}),
            content_type="application/json",
        )
    connect_delay = int(request.get(CONNECT_DELAY_KEY, 0))
    ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    if ctx.injections.small_writes:
        set_nodelay(request.transport, False)
    session = PcmSession(
        ctx,
        request,
        ws,
        rate=rate,
        out_rate=out_rate,
        silence_ms=silence_ms,
        prefix_padding_ms=prefix,
        threshold=threshold,
        connect_delay_ns=connect_delay,
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
