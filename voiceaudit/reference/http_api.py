"""OpenAI-compatible HTTP endpoints, one per stage, so a cascade client can drive and time
each hop: ``POST /v1/audio/transcriptions``, ``POST /v1/chat/completions`` and
``POST /v1/audio/speech``.

Every request writes one ground-truth record (protocol ``http``, ``stage`` set to
``transcription``, ``chat`` or ``speech``). A client may send ``X-Voiceaudit-Turn: ID``
to have ``ID`` copied into the record's ``client_turn``, to join the three requests of
one cascade turn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from typing import Any

import numpy as np
from aiohttp import web

from voiceaudit.reference.asr import AsrError
from voiceaudit.reference.dsp import F32, StreamResampler, float_to_pcm16, streaming_wav_header
from voiceaudit.reference.groundtruth import TurnRecord
from voiceaudit.reference.pipeline import (
    CONNECT_DELAY_KEY,
    CTX_KEY,
    ServerContext,
    Speaker,
    chunking_mode,
    new_id,
)
from voiceaudit.reference.responder import Message, TextChunker
from voiceaudit.reference.vad import RATE as ASR_RATE

SPEECH_RATE = 24_000
#: A whole-file upload limit for transcriptions (OpenAI's is 25 MB).
MAX_UPLOAD = 25 * 1024 * 1024


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": code,
        }
    }
    return web.json_response(body, status=status)


def _record(ctx: ServerContext, request: web.Request, stage: str) -> TurnRecord:
    counter = ctx.http_counter
    ctx.http_counter += 1
    record = ctx.new_record(
        f"http_{id(request.protocol):x}",
        counter,
        "http",
        stage=stage,
        client_turn=request.headers.get("X-Voiceaudit-Turn"),
    )
    delay = int(request.get(CONNECT_DELAY_KEY, 0))
    if delay:
        record.injected["connect_delay_ns"] = delay
    return record


# --- transcriptions ------------------------------------------------------------------


def _decode_upload(data: bytes) -> tuple[F32, int]:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1).astype(np.float32), int(rate)


def _decode_and_resample(data: bytes) -> tuple[F32, int, bytes]:
    samples, rate = _decode_upload(data)
    rs = StreamResampler(rate, ASR_RATE)
    pcm = float_to_pcm16(np.concatenate([rs.process(samples), rs.flush()]))
    return samples, rate, pcm


async def transcriptions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    if not request.content_type.startswith("multipart/"):
        return error_response(400, "Expected a multipart/form-data body with a 'file' field.")
    fields: dict[str, str] = {}
    audio: bytes | None = None
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, "name", None)
            if name == "file":
                audio = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                if len(audio) > MAX_UPLOAD:
                    return error_response(413, "The file is larger than 25 MB.", param="file")
            elif name:
                fields[name] = (await part.text()).strip()  # type: ignore[union-attr]
    except (ValueError, AssertionError) as exc:
        return error_response(400, f"Malformed multipart body: {exc}")
    if audio is None:
        return error_response(400, "Missing required parameter: 'file'.", param="file")
    record = _record(ctx, request, "transcription")
    # The upload is the whole utterance: the turn is committed once it has arrived.
    record.mark("vad_stop")
    loop = asyncio.get_running_loop()
    try:
        # Decoding and resampling a whole file is too much work for the event loop.
        samples, rate, pcm = await loop.run_in_executor(None, _decode_and_resample, audio)
    except Exception:
        return error_response(
            400,
            "The audio file could not be decoded. Supported: WAV, FLAC, OGG (anything "
            "libsndfile reads).",
            param="file",
        )
    record.input_rate = rate
    try:
        result = await ctx.asr.transcribe(pcm)
    except AsrError as exc:
        record.status = "failed"
        record.error = exc.message
        ctx.truth.write_turn(record)
        return error_response(500, f"Speech recognition failed: {exc.message}")
    record.mark("asr_done")
    await ctx.stage_delay(record, "asr")
    record.mark("transcript_final")
    record.transcript = result.text
    record.asr = {
        "worker": result.worker,
        "decode_ns": result.decode_ns,
        "end_utt_ns": result.end_ns,
    }
    record.status = "completed"
    ctx.truth.write_turn(record)
    seconds = round(samples.size / rate, 3)
    usage = {"type": "duration", "seconds": seconds}
    fmt = fields.get("response_format", "json")
    if fields.get("stream", "").lower() == "true":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for obj in (
            {"type": "transcript.text.delta", "delta": result.text},
            {"type": "transcript.text.done", "text": result.text, "usage": usage},
        ):
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
        await resp.write_eof()
        return resp
    if fmt == "text":
        return web.Response(text=result.text + "\n", content_type="text/plain")
    if fmt == "verbose_json":
        return web.json_response(
            {
                "task": "transcribe",
                "language": "english",
                "duration": seconds,
                "text": result.text,
                "segments": [],
                "usage": usage,
            }
        )
    if fmt != "json":
        return error_response(
            400,
            f"Invalid value: '{fmt}'. Supported: json, text, verbose_json.",
            param="response_format",
        )
    return web.json_response({"text": result.text, "usage": usage})


# --- chat completions ----------------------------------------------------------------


def _messages(body: dict[str, Any]) -> list[Message]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty array")
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(
                str(c.get("text", "")) for c in content if isinstance(c, dict) and "text" in c
            )
        out.append(Message(str(m.get("role", "user")), str(content or "")))
    return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, a JSON object (else ValueError, its message for the 400)."""
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    try:
        body = await _json_body(request)
        messages = _messages(body)
    except ValueError as exc:
        return error_response(400, f"Invalid request body: {exc}")
    model = str(body.get("model", "voiceaudit-scripted"))
    record = _record(ctx, request, "chat")
    record.transcript = next((m.content for m in reversed(messages) if m.role == "user"), "")
    inj = ctx.injections
    extra = inj.llm_ttft_ns + inj.stage_delay("llm")
    if inj.llm_ttft_ns:
        record.add_injected("llm_ttft_ns", inj.llm_ttft_ns)
    if inj.stage_delay("llm"):
        record.add_injected("stage_delay_llm_ns", inj.stage_delay("llm"))
    cid = new_id("chatcmpl")
    created = int(time.time())
    record.mark("llm_request")
    stream = bool(body.get("stream", False))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
    parts: list[str] = []
    if not stream:
        async for token in ctx.responder.stream(messages, extra_ttft_ns=extra):
            record.mark("llm_first_token")
            parts.append(token)
        record.mark("llm_done")
        text = "".join(parts).strip()
        record.reply_text = text
        record.status = "completed"
        ctx.truth.write_turn(record)
        return web.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(messages, len(parts)),
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(obj)}\n\n".encode()

    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    record.status = "completed"
    try:
        async for token in ctx.responder.stream(messages, extra_ttft_ns=extra):
            if not parts:
                record.mark("llm_first_token")
                await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
            parts.append(token)
            await resp.write(chunk({"content": token}))
        record.mark("llm_done")
        await resp.write(chunk({}, "stop"))
        if include_usage:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(messages, len(parts)),
            }
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        record.status = "client_disconnected"
        raise
    finally:
        record.reply_text = "".join(parts).strip()
        ctx.truth.write_turn(record)
    return resp


def _usage(messages: list[Message], completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(m.content.split()) for m in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


# --- speech --------------------------------------------------------------------------


class _HttpSink:
    def __init__(self, resp: web.StreamResponse, rate: int, *, sse: bool, small: int | None):
        self.resp = resp
        self.output_rate = rate
        self.sse = sse
        self.small = small

    async def send_text_delta(self, text: str) -> None:
        return None

    async def send_audio(self, samples: F32) -> None:
        data = float_to_pcm16(samples)
        if self.sse:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            data = f"data: {json.dumps(event)}\n\n".encode()
        if self.small is None:
            await self.resp.write(data)
            return
        # Small writes: every piece is its own chunk and its own socket write.
        for i in range(0, len(data), self.small):
            await self.resp.write(data[i : i + self.small])


async def speech(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return error_response(400, f"Invalid request body: {exc}")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        return error_response(400, "Missing required parameter: 'input'.", param="input")
    if len(text) > 4096:
        return error_response(400, "'input' is longer than 4096 characters.", param="input")
    fmt = str(body.get("response_format", "wav"))
    if fmt not in ("pcm", "wav"):
        return error_response(
            400,
            f"response_format '{fmt}' is not available in the voiceaudit reference pipeline: "
            "use 'pcm' (raw 16-bit mono) or 'wav'.",
            param="response_format",
        )
    stream_format = str(body.get("stream_format", "audio"))
    if stream_format not in ("audio", "sse"):
        return error_response(400, f"Invalid value: '{stream_format}'.", param="stream_format")
    rate = body.get("sample_rate", SPEECH_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
        return error_response(
            400, "sample_rate must be an integer in 8000..48000", param="sample_rate"
        )
    try:
        speed = float(body.get("speed", 1.0))
    except (TypeError, ValueError):
        speed = -1.0
    if not 0.25 <= speed <= 4.0:
        return error_response(400, "speed must be between 0.25 and 4.0", param="speed")
    record = _record(ctx, request, "speech")
    record.reply_text = text
    sse = stream_format == "sse"
    content_type = "text/event-stream" if sse else ("audio/wav" if fmt == "wav" else "audio/pcm")
    resp = web.StreamResponse(headers={"Content-Type": content_type, "X-Sample-Rate": str(rate)})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    small = ctx.injections.small_writes_bytes
    if small is not None:
        from voiceaudit.reference.wsutil import set_nodelay

        set_nodelay(request.transport, False)
    if fmt == "wav" and not sse:
        await resp.write(streaming_wav_header(rate))
    sink = _HttpSink(resp, rate, sse=sse, small=small)
    wpm = max(80, min(450, round(ctx.config.words_per_minute * speed)))
    speaker = Speaker(ctx, record, sink, ctx.http_rng, wpm=wpm)
    record.mark("llm_done")  # the text is complete when the request arrives
    # Hand the text over the way the pipeline would: per phrase, sentence or whole.
    chunker = TextChunker(chunking_mode(ctx.injections))
    from voiceaudit.reference.responder import tokenize

    for tok in tokenize(text):
        seg = chunker.push(tok)
        if seg is not None:
            speaker.say(seg)
    rest = chunker.flush()
    if rest is not None:
        speaker.say(rest)
    speaker.end()
    record.status = "completed"
    try:
        await speaker.wait()
        if sse:
            done = {
                "type": "speech.audio.done",
                "usage": {"input_tokens": len(text.split()), "output_tokens": 0, "total_tokens": 0},
            }
            await resp.write(f"data: {json.dumps(done)}\n\n".encode())
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        record.status = "client_disconnected"
        await speaker.cancel()
        raise
    finally:
        speaker.record_pacing()
        with contextlib.suppress(Exception):
            ctx.truth.write_turn(record)
    return resp
