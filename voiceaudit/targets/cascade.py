"""voiceaudit drives a cascade itself: recognition -> language model -> synthesis.

Each hop is an OpenAI-compatible HTTP endpoint, possibly on a different base URL:
``POST {asr}/audio/transcriptions`` (multipart WAV), ``POST {llm}/chat/completions``
(``stream: true``, server-sent events) and ``POST {tts}/audio/speech``
(``response_format: pcm``, streamed body). Every hop is timed: request sent, response
headers, first byte, each token or audio chunk, last byte.

Connection setup is recorded per hop from aiohttp's own tracing (``aiohttp.TraceConfig``;
each request carries its hop in ``trace_request_ctx``, so the synthesis of one sentence
and the model's stream that overlaps it never mix): ``http.queue_start`` /
``http.queue_done`` (the pool made the request wait for a free connection),
``http.connect_start`` / ``http.connected`` (a new connection: DNS when not cached, TCP
and, for https, TLS, which aiohttp sets up in one step: the marks say ``tls: true`` and
the split needs a capture), ``http.dns_start`` / ``http.dns_done`` or
``http.dns_cache_hit`` inside it (none for an IP address), ``http.conn_reused`` (a
kept-alive connection from the pool) and ``http.request_headers_sent`` (the request is on
the connection). Every one has ``stage`` = the hop and ``host`` (``host:port``, never
credentials or a query); ``conn`` says ``new`` or ``reused``. ``http.request_sent`` is
taken when voiceaudit issues the request, before any of these. One
``aiohttp.ClientSession`` (keep-alive on) serves every turn of a session: its first turn
opens the connections, later turns reuse them while the server keeps them open.

Endpointing is the client's job in a cascade: a WebRTC VAD on the frames the probe sends
declares the end of the turn after ``silence_ms`` of non-speech (like a server VAD).

Options (``--target-option NAME=VALUE``): ``asr_url``, ``llm_url``, ``tts_url`` (base
URLs ending in ``/v1``; default: the target URL), ``handoff`` = ``streaming`` (default:
each sentence goes to synthesis as soon as the model finishes it) or ``whole`` (synthesis
waits for the whole reply, as a naive REST stack does), ``silence_ms`` (500),
``vad_mode`` (0-3, default 2), ``asr_model``, ``llm_model``, ``tts_model``, ``voice``,
``rate`` (input rate, default 16000), ``tts_rate`` (rate of the PCM the speech endpoint
returns, default 24000), ``system`` (system prompt), ``max_connections`` (the connection
pool's limit, default 100 as in aiohttp; a request beyond it waits for a free connection).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import (
    Target,
    TargetConfig,
    TargetSession,
    TargetSink,
    cancel_quietly,
    redact_url,
)

_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def split_sentences(buffer: str) -> tuple[list[str], str]:
    """Complete sentences in ``buffer`` and the unfinished rest."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(buffer):
        s = buffer[start : m.end()].strip()
        if s:
            out.append(s)
        start = m.end()
    return out, buffer[start:]


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


class _Endpointer:
    """WebRTC VAD over 10 ms sub-frames with a silence hangover."""

    def __init__(self, rate: int, silence_ms: int, mode: int) -> None:
        import webrtcvad

        if rate not in (8000, 16000, 32000, 48000):
            raise UsageError("the cascade target's VAD needs rate 8000, 16000, 32000 or 48000")
        self.vad = webrtcvad.Vad(mode)
        self.rate = rate
        self.step = rate // 100 * 2  # bytes in 10 ms
        self.silence_needed = silence_ms // 10
        self.pending = b""
        self.reset()

    def reset(self) -> None:
        self.in_speech = False
        self.speech_frames = 0
        self.silence = 0

    def feed(self, pcm16: bytes) -> bool:
        """True once enough silence follows speech (the end of the user's turn)."""
        self.pending += pcm16
        ended = False
        while len(self.pending) >= self.step:
            sub, self.pending = self.pending[: self.step], self.pending[self.step :]
            if self.vad.is_speech(sub, self.rate):
                self.speech_frames += 1
                self.silence = 0
                if self.speech_frames >= 3:
                    self.in_speech = True
            else:
                self.speech_frames = 0
                if self.in_speech:
                    self.silence += 1
                    if self.silence >= self.silence_needed:
                        self.in_speech = False
                        self.silence = 0
                        ended = True
        return ended


@dataclass
class _HopRequest:
    """One hop's request, handed to aiohttp's trace callbacks as ``trace_request_ctx``."""

    stage: str
    #: ``host:port`` of the URL (no credentials, no path, no query)
    host: str
    tls: bool
    #: ``new`` or ``reused`` once the connection is known
    conn: str | None = None


def _hop_request(stage: str, url: str) -> _HopRequest:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if tls else 80
    return _HopRequest(stage, f"{host}:{port}", tls)


class CascadeSession(TargetSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        base = config.url.rstrip("/")
        self.asr_url = config.option("asr_url", base).rstrip("/")
        self.llm_url = config.option("llm_url", base).rstrip("/")
        self.tts_url = config.option("tts_url", base).rstrip("/")
        self.handoff = config.option("handoff", "streaming")
        if self.handoff not in ("streaming", "whole"):
            raise UsageError("target option handoff must be 'streaming' or 'whole'")
        self.input_rate = config.int_option("rate", 16000)
        self.tts_rate = config.int_option("tts_rate", 24000)
        self.max_connections = config.int_option("max_connections", 100)
        if self.max_connections < 0:
            raise UsageError("target option max_connections cannot be negative (0: no limit)")
        self._endpointer = _Endpointer(
            self.input_rate, config.int_option("silence_ms", 500), config.int_option("vad_mode", 2)
        )
        self._http: aiohttp.ClientSession | None = None
        self._audio = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._turn_open = False

    async def open(self) -> None:
        # aiohttp's defaults otherwise: keep-alive on (15 s idle), so later turns reuse the
        # first turn's connections.
        self._http = aiohttp.ClientSession(
            headers=self.config.auth_headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=self.max_connections),
            trace_configs=[self._trace_config()],
        )

    # --- connection setup, from aiohttp's tracing -------------------------------------------

    def _trace_config(self) -> aiohttp.TraceConfig:
        tc = aiohttp.TraceConfig()
        tc.on_connection_queued_start.append(self._marker("http.queue_start"))
        tc.on_connection_queued_end.append(self._marker("http.queue_done"))
        tc.on_connection_create_start.append(self._marker("http.connect_start"))
        tc.on_dns_resolvehost_start.append(self._marker("http.dns_start"))
        tc.on_dns_resolvehost_end.append(self._marker("http.dns_done"))
        tc.on_dns_cache_hit.append(self._marker("http.dns_cache_hit"))
        tc.on_connection_create_end.append(self._marker("http.connected"))
        tc.on_connection_reuseconn.append(self._marker("http.conn_reused"))
        tc.on_request_headers_sent.append(self._marker("http.request_headers_sent"))
        return tc

    def _marker(
        self, name: str
    ) -> Callable[[aiohttp.ClientSession, SimpleNamespace, object], Awaitable[None]]:
        """An aiohttp trace callback that records ``name`` for the hop of the request."""

        async def record(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: object) -> None:
            t = time.monotonic_ns()
            hop = getattr(ctx, "trace_request_ctx", None)
            if not isinstance(hop, _HopRequest):
                return  # not a hop request
            if name == "http.connect_start":
                hop.conn = "new"
            elif name == "http.conn_reused":
                hop.conn = "reused"
            attrs: dict[str, Any] = {"host": hop.host}
            if hop.conn is not None:
                attrs["conn"] = hop.conn
            if hop.conn is not None and name != "http.request_headers_sent":
                attrs["tls"] = hop.tls
            self._hop(hop.stage, name, t, **attrs)

        return record

    async def start_turn(self, turn: int) -> None:
        self._audio = bytearray()
        self._endpointer.reset()
        self._turn_open = True

    async def send_audio(self, pcm16: bytes) -> None:
        if not self._turn_open:
            return
        self._audio += pcm16
        if self._endpointer.feed(pcm16):
            t = time.monotonic_ns()
            self._turn_open = False
            self.sink.mark("endpoint", "endpointing", t, {"by": "client_vad"})
            self._task = asyncio.create_task(self._respond(bytes(self._audio)))

    async def end_turn(self) -> None:
        self._turn_open = False
        if self._task is not None and not self._task.done():
            await cancel_quietly(self._task)
        self._task = None

    async def _respond(self, pcm16: bytes) -> None:
        try:
            text = await self._transcribe(pcm16)
            await self._chat_and_speak(text)
            self.sink.reply_done(time.monotonic_ns())
        except asyncio.CancelledError:
            raise
        except TargetError as exc:
            self.sink.fail(exc.message)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.sink.fail(f"connection: {type(exc).__name__}: {exc}")

    def _hop(self, stage: str, name: str, t: int, **attrs: Any) -> None:
        self.sink.mark(name, stage, t, attrs)

    async def _check(self, stage: str, resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            body = (await resp.text())[:200]
            raise TargetError(f"{stage}: HTTP {resp.status}: {body}")

    async def _transcribe(self, pcm16: bytes) -> str:
        assert self._http is not None
        form = aiohttp.FormData()
        form.add_field(
            "file", wav_bytes(pcm16, self.input_rate), filename="turn.wav", content_type="audio/wav"
        )
        form.add_field("model", self.config.option("asr_model", "whisper-1"))
        url = f"{self.asr_url}/audio/transcriptions"
        self._hop("asr", "http.request_sent", time.monotonic_ns(), url=redact_url(url))
        ctx = _hop_request("asr", url)
        async with self._http.post(url, data=form, trace_request_ctx=ctx) as resp:
            self._hop("asr", "http.headers", time.monotonic_ns(), status=resp.status)
            await self._check("asr", resp)
            body = await resp.read()
            t = time.monotonic_ns()
            self._hop("asr", "http.last_byte", t, bytes=len(body))
        try:
            data = json.loads(body)
            text = data["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise TargetError("asr: response is not JSON with a 'text' field") from None
        self.sink.mark("transcript.final", "transcription", t, {"text": text})
        return text

    async def _chat_and_speak(self, transcript: str) -> None:
        assert self._http is not None
        messages = []
        system = self.config.options.get("system")
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": transcript})
        payload = {
            "model": self.config.option("llm_model", "gpt-4o-mini"),
            "messages": messages,
            "stream": True,
        }
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_all(sentences))
        url = f"{self.llm_url}/chat/completions"
        try:
            t = time.monotonic_ns()
            self.sink.mark("llm.request", "model", t, {})
            self._hop("llm", "http.request_sent", t, url=redact_url(url))
            buffer = ""
            whole = ""
            first = True
            ctx = _hop_request("llm", url)
            async with self._http.post(url, json=payload, trace_request_ctx=ctx) as resp:
                self._hop("llm", "http.headers", time.monotonic_ns(), status=resp.status)
                await self._check("llm", resp)
                async for token in _sse_tokens(resp):
                    if first:
                        first = False
                        self.sink.mark("llm.first_token", "model", time.monotonic_ns(), {})
                    whole += token
                    if self.handoff == "streaming":
                        buffer += token
                        done, buffer = split_sentences(buffer)
                        for s in done:
                            sentences.put_nowait(s)
            self.sink.mark("llm.done", "model", time.monotonic_ns(), {"chars": len(whole)})
            if self.handoff == "streaming":
                if buffer.strip():
                    sentences.put_nowait(buffer.strip())
            elif whole.strip():
                sentences.put_nowait(whole.strip())
            sentences.put_nowait(None)
            await speaker
        finally:
            if not speaker.done():
                await cancel_quietly(speaker)

    async def _speak_all(self, sentences: asyncio.Queue[str | None]) -> None:
        first_request = True
        first_byte = True
        while True:
            text = await sentences.get()
            if text is None:
                return
            assert self._http is not None
            url = f"{self.tts_url}/audio/speech"
            payload = {
                "model": self.config.option("tts_model", "tts-1"),
                "input": text,
                "voice": self.config.option("voice", "alloy"),
                "response_format": "pcm",
            }
            t = time.monotonic_ns()
            if first_request:
                first_request = False
                self.sink.mark("tts.request", "synthesis", t, {"chars": len(text)})
            self._hop("tts", "http.request_sent", t, url=redact_url(url), chars=len(text))
            ctx = _hop_request("tts", url)
            async with self._http.post(url, json=payload, trace_request_ctx=ctx) as resp:
                self._hop("tts", "http.headers", time.monotonic_ns(), status=resp.status)
                await self._check("tts", resp)
                carry = b""
                async for chunk in resp.content.iter_any():
                    t = time.monotonic_ns()
                    if first_byte:
                        first_byte = False
                        self.sink.mark("tts.first_byte", "synthesis", t, {})
                    data = carry + chunk
                    cut = len(data) - len(data) % 2
                    carry = data[cut:]
                    if cut:
                        self.sink.reply_audio(t, data[:cut], self.tts_rate, len(chunk))
                self._hop("tts", "http.last_byte", time.monotonic_ns())
        # not reached

    async def close(self) -> None:
        await self.end_turn()
        if self._http is not None:
            await self._http.close()
            self._http = None


async def _sse_tokens(resp: aiohttp.ClientResponse) -> Any:
    """Content tokens from an OpenAI chat-completions SSE stream."""
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
            delta = chunk["choices"][0].get("delta", {})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TargetError(f"llm: malformed stream chunk {data[:80]!r}") from None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            yield content


class CascadeTarget(Target):
    protocol = "cascade"
    path = "http"
    schemes = ("http", "https")
    description = "ASR -> LLM -> TTS over OpenAI-compatible HTTP endpoints, driven by voiceaudit"
    options = {  # noqa: RUF012 - read-only, as in Target
        "asr_url": "base URL (ending in /v1) of the transcription endpoint (default: target URL)",
        "llm_url": "base URL of the chat-completions endpoint (default: the target URL)",
        "tts_url": "base URL of the speech endpoint (default: the target URL)",
        "handoff": "streaming (default: each sentence to synthesis at once) | whole (reply)",
        "silence_ms": "the client VAD's end-of-turn silence (default 500)",
        "vad_mode": "WebRTC VAD aggressiveness 0-3 (default 2)",
        "asr_model": "transcription model (default whisper-1)",
        "llm_model": "chat model (default gpt-4o-mini)",
        "tts_model": "speech model (default tts-1)",
        "voice": "speech voice (default alloy)",
        "rate": "input sample rate (default 16000)",
        "tts_rate": "sample rate of the PCM the speech endpoint returns (default 24000)",
        "system": "system prompt for the chat model",
        "max_connections": "the HTTP connection pool's limit (default 100; 0: no limit)",
    }
    session_class = CascadeSession
