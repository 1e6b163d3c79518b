"""A faithful Gemini Live API server on loopback (``BidiGenerateContent`` over WSS), for the
``gemini-live`` target's tests.

It speaks the API as Google's SDK (google-genai) defines it, and checks both directions
with the SDK's own strict pydantic models:

- every message it sends passes ``google.genai.types.LiveServerMessage.model_validate``
  before it is sent (a message built to be bad is sent only when the model rejects it);
- every message it receives is checked with ``LiveClientMessage.model_validate`` (the
  ``setup``'s ``realtimeInputConfig``, which the SDK's converter writes there but its
  ``LiveClientSetup`` model lacks, with ``RealtimeInputConfig``); a failure is recorded in
  :attr:`GeminiLiveServer.client_errors`, which a test asserts empty.

The session: ``setup`` -> ``setupComplete``; ``realtimeInput`` audio (any
``audio/pcm;rate=N``) runs through an energy VAD (tests/servers.EnergyEndpointer) unless
the setup disabled automatic activity detection (then ``activityStart``/``activityEnd``
bound the caller's speech). At the speech end it answers like the API: the caller's
transcript as ``inputTranscription`` pieces, then after ``think_ms`` the reply, real speech
as 24 kHz PCM in ``inlineData`` chunks of ``chunk_ms`` paced at real time, an
``outputTranscription``, ``generationComplete``, ``usageMetadata`` and ``turnComplete``. A
caller who speaks while a reply is under way interrupts it: ``interrupted: true`` then
``turnComplete`` (no ``generationComplete``, as the SDK documents). ``clientContent`` with
``turnComplete`` (a greeting request) gets a reply at once. Server messages go out as JSON
in binary frames, as the API sends them (``frames="text"`` for text frames).

It records its truth, on the host's monotonic clock (the probe's too, on loopback), per
reply (:class:`ReplyRecord`): when it detected the caller's speech end, when it sent every
audio chunk (the first is the first reply audio), when it sent ``interrupted``.

Bad input on purpose (``inject``, a set): ``unknown_field`` (a ``serverContent`` key the API
does not define, before the reply's first audio), ``parts_not_list`` (``modelTurn.parts`` an
object), ``not_object`` (a JSON array as a message), ``opus`` (the first chunk declared
``audio/opus``), ``odd_bytes`` (the first chunk an odd number of bytes of "16-bit PCM").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.genai import types
from pydantic import ValidationError
from servers import EnergyEndpointer, LoopbackServer

from voiceaudit.audio import read_audio, to_pcm16

OUT_RATE = 24000
ROUTE = "/ws/google.ai.generativelanguage.{version}.GenerativeService.{method}"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (its own CA): (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voiceaudit gemini test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def speech_pcm(path: Path, ms: int, rate: int = OUT_RATE) -> bytes:
    """The first ``ms`` of a recording as 16-bit PCM at ``rate``."""
    a = read_audio(path, rate=rate)
    return to_pcm16(a.samples[: rate * ms // 1000])


def validate_server(obj: Any) -> None:
    """Raise ValidationError unless ``obj`` is a message the SDK accepts from the server."""
    types.LiveServerMessage.model_validate(obj)


def validate_client(obj: Any) -> types.LiveClientMessage:
    """A client message as the SDK's models read it; ValidationError (or ValueError) when
    they reject it. The setup's ``realtimeInputConfig`` is checked on its own model."""
    if not isinstance(obj, dict):
        raise ValueError(f"a client message that is not an object: {obj!r:.60}")
    setup = obj.get("setup")
    if isinstance(setup, dict) and "realtimeInputConfig" in setup:
        setup = dict(setup)
        types.RealtimeInputConfig.model_validate(setup.pop("realtimeInputConfig"))
        obj = {**obj, "setup": setup}
    return types.LiveClientMessage.model_validate(obj)


@dataclass
class ReplyRecord:
    """The server's truth about one reply (times: monotonic ns just before the send)."""

    kind: str  # "turn" or "greeting"
    #: when the reply was triggered: the VAD's speech end, activityEnd's or clientContent's
    #: arrival
    trigger_ns: int
    #: the last loud input sample of the caller's speech (input samples since the session
    #: began, at the input rate), for a turn
    speech_end_sample: int | None = None
    chunk_samples: int = 0
    audio_sent_ns: list[int] = field(default_factory=list)
    #: message name -> when it was first sent for this reply
    sent: dict[str, int] = field(default_factory=dict)
    #: message name -> when it was last sent for this reply
    last_sent: dict[str, int] = field(default_factory=dict)
    interrupted_ns: int | None = None
    completed: bool = False

    @property
    def first_audio_sent_ns(self) -> int | None:
        return self.audio_sent_ns[0] if self.audio_sent_ns else None


@dataclass
class Connection:
    """What the server saw of one connection."""

    version: str
    method: str
    key: str | None
    key_in: str | None
    headers: dict[str, str]
    #: the client's end of the connection, ``host:port`` (a trace's ``session.connected``
    #: ``local``)
    peer: str = ""
    #: the setup message as it came (the SDK's or voiceaudit's spelling)
    setup: dict[str, Any] | None = None
    input_rate: int | None = None
    input_samples: int = 0
    audio_messages: int = 0
    greeting_request_ns: int | None = None
    replies: list[ReplyRecord] = field(default_factory=list)


class GeminiLiveServer(LoopbackServer):
    """The server (module doc). ``url`` is ``wss://127.0.0.1:P/ws/...v1beta...``; ``base``
    the ``https://127.0.0.1:P`` the SDK takes."""

    scheme = "wss"
    path = ROUTE.format(version="v1beta", method="BidiGenerateContent")
    shutdown_timeout = 5.0

    def __init__(
        self,
        cert: Path,
        key: Path,
        reply_pcm: bytes,
        *,
        transcripts: list[str] | None = None,
        reply_text: str = "",
        api_key: str | None = None,
        chunk_ms: int = 40,
        think_ms: int = 120,
        end_ms: int = 300,
        inject: set[str] | None = None,
        frames: str = "binary",
    ) -> None:
        self.cert, self.key = cert, key
        self.reply_pcm = reply_pcm
        self.transcripts = list(transcripts or [])
        self.reply_text = reply_text
        self.api_key = api_key
        self.chunk_ms, self.think_ms, self.end_ms = chunk_ms, think_ms, end_ms
        self.inject = set(inject or ())
        self.frames = frames
        self.connections: list[Connection] = []
        #: every client message the SDK's models rejected: (message head, error)
        self.client_errors: list[tuple[str, str]] = []
        #: bad messages sent on purpose: (name, the SDK model's error)
        self.rejected_sent: list[tuple[str, str]] = []
        self._turns = 0

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_get(ROUTE.format(version="{version}", method="{method}"), self.handler)

    async def start(self) -> str:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=self.shutdown_timeout)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock, ssl_context=ctx).start()
        return self.url

    def records(self) -> list[ReplyRecord]:
        """Every reply of every connection, in the order they were triggered."""
        out = [r for c in self.connections for r in c.replies]
        return sorted(out, key=lambda r: r.trigger_ns)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        method = request.match_info["method"]
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        q, h = request.query.get("key"), request.headers.get("x-goog-api-key")
        conn = Connection(
            version=version,
            method=method,
            key=q or h,
            key_in="query" if q else "header" if h else None,
            headers=dict(request.headers),
        )
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            conn.peer = f"{peer[0]}:{peer[1]}"
        self.connections.append(conn)
        if self.api_key is not None and conn.key != self.api_key:
            # the API accepts the socket, then closes it with a policy violation
            await ws.close(code=1008, message=b"API key not valid. Please pass a valid API key.")
            return ws
        await _Session(self, ws, conn).run()
        return ws


class _Session:
    """One connection's conversation."""

    def __init__(self, server: GeminiLiveServer, ws: web.WebSocketResponse, conn: Connection):
        self.server = server
        self.ws = ws
        self.conn = conn
        self.vad: EnergyEndpointer | None = None
        self.manual = False
        self.in_speech = False
        self.last_loud_end = 0
        self.reply_task: asyncio.Task[None] | None = None
        self.reply: ReplyRecord | None = None
        self.audio_started = False

    async def send(self, obj: Any, rec: ReplyRecord | None = None, name: str = "") -> int:
        """Validate ``obj`` with the SDK's server model, then send it; the send time."""
        validate_server(obj)
        return await self._send_raw(obj, rec, name)

    async def send_bad(self, obj: Any, name: str) -> None:
        """Send a message the SDK's model rejects (a test of the client's faults)."""
        try:
            validate_server(obj)
        except ValidationError as exc:
            self.server.rejected_sent.append((name, str(exc).splitlines()[0]))
        else:
            raise AssertionError(f"the SDK accepts the 'bad' message {name}")
        await self._send_raw(obj, None, name)

    async def _send_raw(self, obj: Any, rec: ReplyRecord | None, name: str) -> int:
        data = json.dumps(obj, separators=(",", ":"))
        t = time.monotonic_ns()
        if self.server.frames == "text":
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data.encode())
        if rec is not None and name:
            rec.sent.setdefault(name, t)
            rec.last_sent[name] = t
        return t

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                raw = msg.data if isinstance(msg.data, str) else msg.data.decode()
                t = time.monotonic_ns()
                try:
                    obj = json.loads(raw)
                    parsed = validate_client(obj)
                except (ValueError, ValidationError) as exc:
                    self.server.client_errors.append((raw[:80], str(exc).splitlines()[0]))
                    continue
                await self.on_message(t, parsed, obj)
        finally:
            if self.reply_task is not None:
                self.reply_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.reply_task

    async def on_message(self, t: int, m: types.LiveClientMessage, raw: dict[str, Any]) -> None:
        if m.setup is not None:
            self.conn.setup = raw["setup"]
            await self.send({"setupComplete": {}})
            return
        if m.client_content is not None:
            if m.client_content.turn_complete:
                self.conn.greeting_request_ns = t
                self.start_reply(ReplyRecord("greeting", t), "")
            return
        ri = m.realtime_input
        if ri is None:
            return
        if ri.activity_start is not None:
            self.manual = True
            await self.speech_began()
        if ri.audio is not None and ri.audio.data is not None:
            self.on_audio(ri.audio.data, ri.audio.mime_type or "")
            if self.vad is not None and not self.manual:
                await self.run_vad(ri.audio.data)
        if ri.activity_end is not None:
            self.manual = True
            self.speech_ended(t)

    def on_audio(self, data: bytes, mime: str) -> None:
        rate = int(mime.split("rate=")[1]) if "rate=" in mime else 16000
        if self.conn.input_rate is None:
            self.conn.input_rate = rate
            self.vad = EnergyEndpointer(rate, self.server.end_ms)
        self.conn.audio_messages += 1
        self.conn.input_samples += len(data) // 2

    async def run_vad(self, data: bytes) -> None:
        assert self.vad is not None
        x = np.frombuffer(data, "<i2").astype(np.float64)
        if self.vad.feed(x):
            await self.speech_began()
        if self.vad.speech_ms and not self.vad.quiet_ms:
            self.last_loud_end = self.conn.input_samples
        if self.vad.turn_ended:
            self.vad.reset()
            self.speech_ended(time.monotonic_ns())

    async def speech_began(self) -> None:
        """The caller started speaking: a reply under way is interrupted."""
        task, rec = self.reply_task, self.reply
        if task is None or task.done() or rec is None:
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        rec.interrupted_ns = await self.send(
            {"serverContent": {"interrupted": True}}, rec, "interrupted"
        )
        await self.send({"serverContent": {"turnComplete": True}}, rec, "turnComplete")

    def speech_ended(self, t: int) -> None:
        text = ""
        if self.server.transcripts:
            text = self.server.transcripts[self.server._turns % len(self.server.transcripts)]
        self.server._turns += 1
        rec = ReplyRecord("turn", t, speech_end_sample=self.last_loud_end)
        self.start_reply(rec, text)

    def start_reply(self, rec: ReplyRecord, transcript: str) -> None:
        self.conn.replies.append(rec)
        self.reply = rec
        self.reply_task = asyncio.ensure_future(self.speak(rec, transcript))

    async def speak(self, rec: ReplyRecord, transcript: str) -> None:
        srv = self.server
        if transcript:
            words = transcript.split()
            half = max(1, len(words) // 2)
            for piece in (" ".join(words[:half]), " " + " ".join(words[half:])):
                if piece.strip():
                    tr = {"serverContent": {"inputTranscription": {"text": piece}}}
                    await self.send(tr, rec, "inputTranscription")
        await asyncio.sleep(srv.think_ms / 1000)
        if "unknown_field" in srv.inject:
            await self.send_bad({"serverContent": {"bogusField": True}}, "unknown_field")
        if "not_object" in srv.inject:
            await self.send_bad([{"serverContent": {}}], "not_object")
        n = OUT_RATE * srv.chunk_ms // 1000
        rec.chunk_samples = n
        pcm = srv.reply_pcm
        start = time.monotonic()
        for i, at in enumerate(range(0, len(pcm), 2 * n)):
            chunk = pcm[at : at + 2 * n]
            mime = f"audio/pcm;rate={OUT_RATE}"
            if i == 0 and "opus" in srv.inject:
                mime = "audio/opus"
            if i == 0 and "odd_bytes" in srv.inject:
                chunk = chunk[:-1]
            blob = {"data": base64.b64encode(chunk).decode(), "mimeType": mime}
            msg: dict[str, Any] = {
                "serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}
            }
            if i == 0 and "parts_not_list" in srv.inject:
                await self.send_bad(
                    {"serverContent": {"modelTurn": {"parts": {"inlineData": blob}}}},
                    "parts_not_list",
                )
            rec.audio_sent_ns.append(await self.send(msg, rec, "inlineData"))
            if i == 1 and srv.reply_text:
                out = {"serverContent": {"outputTranscription": {"text": srv.reply_text}}}
                await self.send(out, rec, "outputTranscription")
            # real-time pacing: the next chunk when this one has played
            await asyncio.sleep(max(0.0, start + (i + 1) * srv.chunk_ms / 1000 - time.monotonic()))
        await self.send({"serverContent": {"generationComplete": True}}, rec, "generationComplete")
        usage = {"promptTokenCount": 40, "responseTokenCount": 60, "totalTokenCount": 100}
        await self.send({"usageMetadata": usage}, rec, "usageMetadata")
        await self.send({"serverContent": {"turnComplete": True}}, rec, "turnComplete")
        rec.completed = True
