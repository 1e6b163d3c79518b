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
from typing import Any

from aiohttp import web

from voiceaudit.reference.dsp import F32, float_to_pcm16, pcm16_to_float
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import (
    CTX_KEY,
    ReplyControl,
    ReplySink,
    Utterance,
)
from voiceaudit.reference.session import Session
from voiceaudit.reference.vad import SpeechStart, SpeechStop
from voiceaudit.reference.wsutil import read_messages, send_message, serve_websocket

MIN_RATE = 8_000
MAX_RATE = 48_000
#: The reply's marks sent as events as the reply runs (first_audio_sent after its frame).
_REPLY_MARKS = ("llm_request", "llm_first_token", "llm_done", "tts_request", "tts_first_audio")


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"message": message}}), content_type="application/json"
    )


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise _bad_request(f"{name}={value} is outside {lo}..{hi}")
    return value


class PcmSession(Session):
    """One ``/v1/pcm`` connection: binary PCM in and out, the marks as JSON events."""

    protocol = "pcm"
    id_prefix = "pcm"

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, delay_ns: int, **params: Any
    ) -> None:
        super().__init__(request.app[CTX_KEY], connect_delay_ns=delay_ns)
        self.request, self.ws, self.output_rate = request, ws, int(params.pop("out_rate"))
        self.open_input(int(params.pop("rate")), **params)

    async def send_json(self, obj: dict[str, Any]) -> None:
        if not self.closed and not self.ws.closed:
            await send_message(self.ws, self.request, json.dumps(obj), None)

    async def mark(self, record: TurnRecord, name: str, **extra: Any) -> None:
        event = {"type": name, "turn": record.turn, "t_ns": record.marks[name]}
        await self.send_json(event | extra)

    def speech_began(self, record: TurnRecord, start: SpeechStart, t_ns: int) -> None:
        extra = {"audio_start_ms": start.audio_start_ms, "speech_start_ms": start.speech_start_ms}
        self.spawn(self.mark(record, "speech_started", **extra))

    async def speech_stopped(self, record: TurnRecord, stop: SpeechStop) -> None:
        heard = record.marks["speech_end_received"]
        extra = {"audio_end_ms": stop.audio_end_ms, "speech_end_ms": stop.speech_end_ms}
        await self.mark(record, "vad_stop", **extra, speech_end_received_ns=heard)

    async def recognised(self, record: TurnRecord) -> None:
        await self.mark(record, "asr_done")

    async def transcribed(self, record: TurnRecord, utt: Utterance) -> None:
        await self.mark(record, "transcript_final", text=record.transcript, error=utt.error)

    async def reply_text(self, record: TurnRecord, text: str) -> None:
        await self.announce(record)

    async def reply_audio(self, record: TurnRecord, samples: F32) -> None:
        if self.closed or self.ws.closed:
            return
        data = float_to_pcm16(samples)
        await send_message(self.ws, self.request, data, self.ctx.injections.small_writes_bytes)
        if "first_audio_sent" not in record.announced:
            record.announced.add("first_audio_sent")
            await self.announce(record)
            await self.mark(record, "first_audio_sent")

    async def reply_sent(self, record: TurnRecord, sink: ReplySink) -> None:
        await self.announce(record)

    async def announce(self, record: TurnRecord) -> None:
        """Send the reply's marks reached since the last call, in pipeline order."""
        for name in _REPLY_MARKS:
            if name not in record.announced and record.marks[name] is not None:
                record.announced.add(name)
                tts = name == "tts_request" and record.tts_texts
                await self.mark(record, name, **({"text": record.tts_texts[0]} if tts else {}))

    async def turn_over(self, record: TurnRecord, control: ReplyControl) -> None:
        await super().turn_over(record, control)
        if self.closed:
            return
        with contextlib.suppress(asyncio.CancelledError):
            if record.marks["last_audio_sent"] is not None:
                extra = {"reply_audio_ms": record.reply_audio_ns / 1e6}
                await self.mark(record, "last_audio_sent", **extra, messages=record.audio_messages)
            await self.send_json(_turn_done(record, control))

    async def error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, "t_ns": now_ns()})

    async def run(self) -> None:
        await self.send_json(
            {
                "type": "session.started",
                "session_id": self.id,
                "rate": self.input_rate,
                "out_rate": self.output_rate,
                "encoding": "s16le",
                "channels": 1,
                "t_ns": now_ns(),
            }
        )
        await read_messages(self.ws, self._control, self._audio)

    async def _audio(self, data: bytes) -> None:
        if len(data) % 2:
            message = f"a frame of {len(data)} bytes is not whole 16-bit samples; dropped"
            await self.error("bad_frame", message)
        else:
            self.input.feed(pcm16_to_float(data), now_ns())

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
            if self.cancel_reply(now_ns(), event_id=None) is None:
                await self.error("cancel_not_active", "no reply to cancel")
        else:
            await self.error("unknown_type", f"unknown control message type {kind!r}")


def _turn_done(record: TurnRecord, control: ReplyControl) -> dict[str, Any]:
    b = record.barge_in
    return {
        "type": "turn_done",
        "turn": record.turn,
        "t_ns": now_ns(),
        "status": record.status,
        "transcript": record.transcript,
        "reply_text": record.reply_text,
        "reply_audio_ms": record.reply_audio_ns / 1e6,
        "error": record.error,
        "cut": record.reply_cut,
        "reason": control.reason if record.status == "cancelled" else None,
        "barge_in_ns": None if b is None else b["detected_ns"],
        "reply_samples": record.reply_audio_samples,
    }


async def pcm_handler(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CTX_KEY].config
    rate = _int_param(request, "rate", 16_000, MIN_RATE, MAX_RATE)
    params: dict[str, Any] = {
        "rate": rate,
        "out_rate": _int_param(request, "out_rate", rate, MIN_RATE, MAX_RATE),
        "silence_ms": _int_param(request, "silence_ms", cfg.silence_ms, 10, 10_000),
        "prefix_padding_ms": _int_param(
            request, "prefix_padding_ms", cfg.prefix_padding_ms, 0, 5_000
        ),
    }
    _int_param(request, "channels", 1, 1, 1)
    encoding = request.query.get("encoding", "s16le")
    if encoding != "s16le":
        raise _bad_request(f"encoding={encoding!r}: only s16le")
    try:
        params["threshold"] = threshold = float(request.query.get("threshold", cfg.vad_threshold))
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise _bad_request("threshold must be a number in 0..1")
    ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
    return await serve_websocket(request, ws, lambda d: PcmSession(request, ws, d, **params))
