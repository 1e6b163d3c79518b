"""A scripted phone bot of each carrier dialect, for the carrier targets' tests.

An aiohttp WebSocket server on loopback that behaves as a bot behind Twilio, Telnyx,
Plivo, Exotel or Vonage: Pipecat 1.14's serializer for the dialect reads every message the
carrier (the probe) sends (``deserialize`` must give InputAudioRawFrame for media, at the
stream's own rate so that no resampler holds audio back,
InputDTMFFrame for a key press, nothing for the rest) and writes every message the bot
sends (``serialize`` of an OutputAudioRawFrame, an InterruptionFrame for clear, and an
OutputTransportMessageFrame for the dialect's mark), so what passes between them is what a
real Pipecat bot reads and writes. Pipecat's own handshake detection
(``pipecat.runner.utils._detect_transport_type_from_message``) must name the dialect from
the start message.

Script: after the caller's speech ends (an energy endpointer), it replies with
``reply_ms`` of tone in chunks of ``chunk_ms`` sent ``burst`` times faster than real time,
then a mark ``reply-<n>``. Optionally: a clear ``clear_after_ms`` after the reply's first
chunk was sent; ``script`` (raw messages, ``$SID`` standing for the stream id, ``$SLEEP
MS`` a pause) right after the start; ``reply_script`` sent instead of the reply; a
greeting of ``greet_ms`` (sent as a reply is, then the mark ``greeting``)
``greet_after_ms`` after the start. It records when it sent each chunk, when each message
arrived (its handler's clock: never before the real arrival), the mark echoes and clear
acknowledgements, and any message that a serializer or a field check rejected
(``errors``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from aiohttp import web
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
)
from pipecat.runner.utils import _detect_transport_type_from_message
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.serializers.plivo import PlivoFrameSerializer
from pipecat.serializers.telnyx import TelnyxFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.serializers.vonage import VonageFrameSerializer
from servers import EnergyEndpointer, LoopbackServer


def tone(ms: int, rate: int, seed: int = 0) -> bytes:
    """``ms`` of a 440 Hz tone at ``rate`` as 16-bit PCM."""
    n = rate * ms // 1000
    t = (np.arange(n) + seed) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


@dataclass
class Sent:
    """A message the bot sent: when (its clock, just before the send), what."""

    t_ns: int
    kind: str
    samples: int = 0
    name: str = ""


@dataclass
class Got:
    """A message the bot received: when its handler saw it, its kind, the JSON (None for
    binary) and the frame the serializer made of it."""

    t_ns: int
    kind: str
    ev: dict[str, Any] | None
    frame: Any = None
    size: int = 0


@dataclass
class Call:
    """One connection's record."""

    dialect: str
    got: list[Got] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    start: dict[str, Any] | None = None
    stream_id: str = ""
    #: mark name -> when its echo arrived
    echoes: dict[str, int] = field(default_factory=dict)
    #: when a clear acknowledgement arrived (Plivo clearedAudio, Vonage websocket:cleared)
    clear_acks: list[int] = field(default_factory=list)
    closed_ns: int | None = None


class FakeCarrierBot(LoopbackServer):
    """See the module docstring."""

    path = "/media"
    shutdown_timeout = 2.0

    def __init__(
        self,
        dialect: str,
        *,
        reply_ms: int = 2000,
        chunk_ms: int = 100,
        burst: float = 10.0,
        clear_after_ms: int | None = None,
        script: list[str | bytes] | None = None,
        replies: bool = True,
        reply_script: list[str | bytes] | None = None,
        greet_ms: int = 0,
        greet_after_ms: int = 0,
        vonage_rate: int = 16000,
    ) -> None:
        self.dialect = dialect
        self.reply_ms = reply_ms
        self.chunk_ms = chunk_ms
        self.burst = burst
        self.clear_after_ms = clear_after_ms
        self.script = script or []
        self.replies = replies
        self.reply_script = reply_script
        self.greet_ms = greet_ms
        self.greet_after_ms = greet_after_ms
        self.rate = vonage_rate if dialect == "vonage" else 8000
        self.calls: list[Call] = []

    # -- serializers ----------------------------------------------------------------------

    def serializer(self, stream_id: str) -> FrameSerializer:
        d = self.dialect
        ser: FrameSerializer
        if d == "twilio":
            ser = TwilioFrameSerializer(
                stream_id,
                params=TwilioFrameSerializer.InputParams(auto_hang_up=False, sample_rate=self.rate),
            )
        elif d == "telnyx":
            ser = TelnyxFrameSerializer(
                stream_id,
                "PCMU",
                "PCMU",
                params=TelnyxFrameSerializer.InputParams(auto_hang_up=False, sample_rate=self.rate),
            )
        elif d == "plivo":
            ser = PlivoFrameSerializer(
                stream_id,
                params=PlivoFrameSerializer.InputParams(auto_hang_up=False, sample_rate=self.rate),
            )
        elif d == "exotel":
            ser = ExotelFrameSerializer(
                stream_id, params=ExotelFrameSerializer.InputParams(sample_rate=self.rate)
            )
        else:
            ser = VonageFrameSerializer(
                VonageFrameSerializer.InputParams(
                    vonage_sample_rate=self.rate, sample_rate=self.rate
                )
            )
        return ser

    def mark_message(self, stream_id: str, name: str) -> dict[str, Any]:
        d = self.dialect
        if d == "twilio":
            return {"event": "mark", "streamSid": stream_id, "mark": {"name": name}}
        if d == "telnyx":
            return {"event": "mark", "mark": {"name": name}}
        if d == "plivo":
            return {"event": "checkpoint", "streamId": stream_id, "name": name}
        if d == "exotel":
            return {"event": "mark", "stream_sid": stream_id, "mark": {"name": name}}
        return {"action": "notify", "payload": {"name": name}}

    # -- checks of what the carrier sends --------------------------------------------------

    def check_fields(self, call: Call, kind: str, ev: dict[str, Any]) -> None:
        """Field types and ids each dialect's carrier uses (PROTOCOLS.md)."""
        d, err = self.dialect, call.errors
        if d == "twilio":
            if kind != "connected":
                if not isinstance(ev.get("sequenceNumber"), str):
                    err.append(f"{kind}: sequenceNumber not a string")
                if ev.get("streamSid") != call.stream_id and kind != "start":
                    err.append(f"{kind}: streamSid")
            if kind == "media":
                m = ev["media"]
                if not (isinstance(m.get("chunk"), str) and isinstance(m.get("timestamp"), str)):
                    err.append("media: chunk/timestamp not strings")
        elif d == "telnyx":
            if kind != "connected" and not isinstance(ev.get("sequence_number"), str):
                err.append(f"{kind}: sequence_number not a string")
            if kind not in ("connected",) and ev.get("stream_id") != call.stream_id:
                err.append(f"{kind}: stream_id")
        elif d == "plivo":
            if ev.get("streamId", call.stream_id) != call.stream_id:
                err.append(f"{kind}: streamId")
        elif d == "exotel" and kind != "connected" and ev.get("stream_sid") != call.stream_id:
            err.append(f"{kind}: stream_sid")

    def read_start(self, call: Call, ev: dict[str, Any]) -> None:
        call.start = ev
        d = self.dialect
        if d == "vonage":
            call.stream_id = ""
            return
        detected = _detect_transport_type_from_message(ev)
        if detected != d:
            call.errors.append(f"Pipecat detects the start message as {detected!r}")
        s = ev.get("start", {})
        call.stream_id = {
            "twilio": s.get("streamSid"),
            "telnyx": ev.get("stream_id"),
            "plivo": s.get("streamId"),
            "exotel": s.get("stream_sid"),
        }[d]

    # -- the bot ---------------------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        call = Call(self.dialect)
        self.calls.append(call)
        ser: FrameSerializer | None = None
        vad = EnergyEndpointer(self.rate, end_ms=300)
        tasks: list[asyncio.Task[None]] = []
        n = 0
        try:
            async for msg in ws:
                t = time.monotonic_ns()
                if msg.type == web.WSMsgType.BINARY:
                    data: str | bytes = msg.data
                    ev = None
                    kind = "binary"
                elif msg.type == web.WSMsgType.TEXT:
                    data = msg.data
                    try:
                        ev = json.loads(msg.data)
                        kind = str(ev.get("event"))
                    except (ValueError, AttributeError):
                        call.errors.append(f"not JSON: {msg.data[:60]!r}")
                        continue
                else:
                    break
                got = Got(t, kind, ev, size=len(data))
                call.got.append(got)
                if ser is None and (kind == "start" or kind == "websocket:connected"):
                    self.read_start(call, cast(dict[str, Any], ev))
                    ser = self.serializer(call.stream_id)
                    await ser.setup(cast(Any, None))
                    tasks.append(asyncio.create_task(self._run_script(ws, call, self.script)))
                    if self.greet_ms:
                        tasks.append(asyncio.create_task(self._greet(ws, ser, call)))
                if ev is not None:
                    self.check_fields(call, kind, ev)
                    self._note_answers(call, t, kind, ev)
                if ser is None:
                    continue
                frame = await ser.deserialize(data)
                got.frame = frame
                is_media = kind in ("media", "binary")
                if is_media and not isinstance(frame, InputAudioRawFrame):
                    call.errors.append(f"{kind}: serializer made {frame!r}")
                elif kind == "dtmf" or kind == "websocket:dtmf":
                    if not isinstance(frame, InputDTMFFrame):
                        call.errors.append(f"dtmf: serializer made {frame!r}")
                elif not is_media and frame is not None:
                    call.errors.append(f"{kind}: serializer made {frame!r}")
                if is_media and isinstance(frame, InputAudioRawFrame) and self.replies:
                    x = self._inbound_pcm(kind, ev, data)
                    vad.feed(x)
                    if vad.turn_ended:
                        vad.reset()
                        if self.reply_script is not None:
                            reply = self._run_script(ws, call, self.reply_script)
                        else:
                            reply = self._reply(ws, ser, call, n)
                        tasks.append(asyncio.create_task(reply))
                        n += 1
        finally:
            call.closed_ns = time.monotonic_ns()
            for task in tasks:
                task.cancel()
        return ws

    def _inbound_pcm(self, kind: str, ev: dict[str, Any] | None, data: str | bytes) -> Any:
        from voiceaudit.codecs import ulaw_decode

        if kind == "binary":
            raw = cast(bytes, data)
            return np.frombuffer(raw, "<i2").astype(np.float64)
        assert ev is not None
        raw = base64.b64decode(ev["media"]["payload"])
        if self.dialect == "exotel":
            return np.frombuffer(raw, "<i2").astype(np.float64)
        return ulaw_decode(raw).astype(np.float64)

    def _note_answers(self, call: Call, t: int, kind: str, ev: dict[str, Any]) -> None:
        if kind == "mark":
            call.echoes[ev["mark"]["name"]] = t
        elif kind == "playedStream":
            call.echoes[ev["name"]] = t
        elif kind == "websocket:notify":
            call.echoes[ev["payload"]["name"]] = t
        elif kind in ("clearedAudio", "websocket:cleared"):
            call.clear_acks.append(t)

    async def _send(self, ws: web.WebSocketResponse, data: str | bytes | None) -> None:
        if data is None:
            return
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_str(data)

    async def _run_script(
        self, ws: web.WebSocketResponse, call: Call, script: list[str | bytes]
    ) -> None:
        for raw in script:
            if isinstance(raw, str) and raw.startswith("$SLEEP "):
                await asyncio.sleep(int(raw.split()[1]) / 1000)
                continue
            if isinstance(raw, str):
                raw = raw.replace("$SID", call.stream_id)
            call.sent.append(Sent(time.monotonic_ns(), "script"))
            await self._send(ws, raw)
            await asyncio.sleep(0.02)

    async def _greet(self, ws: web.WebSocketResponse, ser: FrameSerializer, call: Call) -> None:
        await asyncio.sleep(self.greet_after_ms / 1000)
        await self._reply(ws, ser, call, -1, self.greet_ms, "greeting")

    async def _reply(
        self,
        ws: web.WebSocketResponse,
        ser: FrameSerializer,
        call: Call,
        n: int,
        ms: int | None = None,
        kind: str = "media",
    ) -> None:
        audio = tone(self.reply_ms if ms is None else ms, self.rate)
        step = 2 * self.rate * self.chunk_ms // 1000
        gap = self.chunk_ms / 1000 / self.burst
        clear_task: asyncio.Task[None] | None = None
        for k, a in enumerate(range(0, len(audio), step)):
            piece = audio[a : a + step]
            out = await ser.serialize(
                OutputAudioRawFrame(audio=piece, sample_rate=self.rate, num_channels=1)
            )
            t = time.monotonic_ns()
            await self._send(ws, out)
            call.sent.append(Sent(t, kind, len(piece) // 2))
            if k == 0 and self.clear_after_ms is not None:
                clear_task = asyncio.create_task(self._clear_later(ws, ser, call, t))
            await asyncio.sleep(gap)
        name = f"reply-{n}" if n >= 0 else "greeting"
        mark = await ser.serialize(
            OutputTransportMessageFrame(message=self.mark_message(call.stream_id, name))
        )
        call.sent.append(Sent(time.monotonic_ns(), "mark", name=name))
        await self._send(ws, mark)
        if clear_task is not None:
            await clear_task

    async def _clear_later(
        self, ws: web.WebSocketResponse, ser: FrameSerializer, call: Call, t0: int
    ) -> None:
        assert self.clear_after_ms is not None
        due = t0 + self.clear_after_ms * 1_000_000
        await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
        out = await ser.serialize(InterruptionFrame())
        call.sent.append(Sent(time.monotonic_ns(), "clear"))
        await self._send(ws, out)
