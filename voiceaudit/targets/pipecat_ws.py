"""Pipecat's WebSocket transport with its protobuf frame serializer (``pipecat-websocket``).

Pipecat's ``WebsocketServerTransport`` (``SingleClientWebsocketServerTransport`` since 1.4)
and ``FastAPIWebsocketTransport`` with ``ProtobufFrameSerializer`` exchange binary
WebSocket messages, each one ``pipecat.Frame`` (``pipecat/frames/frames.proto``) holding a
oneof of ``text``, ``audio``, ``transcription``, ``message`` or ``interruption``. This
adapter speaks that wire format directly (a few lines of protobuf wire encoding, so
voiceaudit does not need Pipecat or the protobuf runtime installed):

- input audio goes out as ``Frame{audio: AudioRawFrame{audio, sample_rate, num_channels}}``;
- reply audio comes back the same way (``sample_rate`` says its rate);
- ``message`` frames carry JSON. Pipecat's RTVI observer (on by default in a
  ``PipelineWorker``) sends its events this way; they become stage marks:

  ============================  ======================  ==============
  RTVI message                  mark                    stage
  ============================  ======================  ==============
  ``vad-user-started-speaking``  ``speech_started``      endpointing
  ``vad-user-stopped-speaking``  ``endpoint``            endpointing
  ``user-started-speaking``     ``user_turn.started``   endpointing
  ``user-stopped-speaking``     ``committed``           endpointing
  ``user-transcription``        ``transcript.final`` /  transcription
                                ``transcript.partial``
  ``bot-llm-started``           ``llm.request``         model
  first ``bot-llm-text``        ``llm.first_token``     model
  ``bot-llm-stopped``           ``llm.done``            model
  ``bot-tts-started``           ``tts.request``         synthesis
  ``bot-tts-stopped``           ``tts.done``            synthesis
  ``bot-started-speaking``      ``bot.started_speaking`` output
  ``bot-stopped-speaking``      ``bot.stopped_speaking`` output (ends the reply)
  ``bot-interrupted``           ``interrupted`` or      endpointing
                                ``interruption`` (below)
  ``metrics``                   ``framework.metrics``   telemetry
  ``error``                     ``error``               error
  ============================  ======================  ==============

Interruptions (barge-in), as Pipecat 1.14 sends them (checked against a real 1.14 bot,
tests/test_pipecat_interrupt.py). A user turn start strategy with
``enable_interruptions=True`` (Pipecat's default) broadcasts an ``InterruptionFrame`` when
the caller starts speaking. The WebSocket output transport drops its queued audio (the
chunk being written still goes out) and writes the frame to the client, so the client
gets, in this order on one socket: a protobuf ``interruption`` frame, the RTVI
``user-started-speaking`` and ``bot-interrupted`` messages, then ``bot-stopped-speaking``
(which ends the reply as usual). No reply audio follows the ``interruption`` frame.
Pipecat broadcasts an interruption at *every* user turn start, also while the bot is
silent, and the observer sends ``bot-interrupted`` for each; so:

- the first of the two signals that arrives while the bot is speaking (between RTVI
  ``bot-started-speaking`` and ``bot-stopped-speaking``; without RTVI: reply audio came in
  the last second) is the mark ``interrupted`` (stage ``endpointing``): the reply was cut;
- every other one is the mark ``interruption`` (stage ``endpointing``, attrs
  ``bot_speaking``, ``repeat``): the same interruption again, or one that cut nothing.
  A bot that answered RTVI ``bot-ready`` and has sent no audio yet is silent. Before
  anything at all is known (no RTVI, no reply audio yet) the signal is ``interrupted``:
  there is no reply it could wrongly mark as cut.

The WebSocket server output transport paces audio itself: after each chunk (40 ms by
default) it sleeps for the chunk's duration, so a reply arrives at real time and what the
caller still hears after a barge-in is mostly what Pipecat had already sent.

Options (``--target-option NAME=VALUE``):

- ``rate``: input sample rate (default 16000; Pipecat's default ``audio_in_sample_rate``).
- ``rtvi``: ``auto`` (default: send RTVI ``client-ready`` and wait up to 2 s for
  ``bot-ready``), ``on`` (require ``bot-ready``), ``off`` (send nothing).
- ``done_on``: ``bot-stopped-speaking`` (default: the RTVI message ends the reply) or
  ``idle`` (the probe's quiet timeout ends it).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSink
from voiceaudit.targets.wsbase import WebSocketSession, dict_at

# -- protobuf wire format (only what frames.proto uses) -------------------------------------

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5

#: Frame oneof field numbers (frames.proto)
F_TEXT = 1
F_AUDIO = 2
F_TRANSCRIPTION = 3
F_MESSAGE = 4
F_INTERRUPTION = 5


class WireError(ValueError):
    """Bytes that are not a valid protobuf message."""


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        if i >= len(buf):
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _field(num: int, wire: int) -> bytes:
    return _varint((num << 3) | wire)


def _len_field(num: int, data: bytes) -> bytes:
    return _field(num, _LEN) + _varint(len(data)) + data


def parse_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Decode one message's fields as (field number, int or bytes), in order."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    n = len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            v, i = _read_varint(buf, i)
            out.append((num, v))
        elif wire == _LEN:
            ln, i = _read_varint(buf, i)
            if i + ln > n:
                raise WireError("truncated length-delimited field")
            out.append((num, buf[i : i + ln]))
            i += ln
        elif wire == _I64:
            if i + 8 > n:
                raise WireError("truncated fixed64")
            out.append((num, int.from_bytes(buf[i : i + 8], "little")))
            i += 8
        elif wire == _I32:
            if i + 4 > n:
                raise WireError("truncated fixed32")
            out.append((num, int.from_bytes(buf[i : i + 4], "little")))
            i += 4
        else:
            raise WireError(f"unsupported wire type {wire}")
    return out


def encode_audio_frame(pcm16: bytes, rate: int, channels: int = 1) -> bytes:
    """``Frame{audio: AudioRawFrame{audio, sample_rate, num_channels}}``."""
    inner = (
        _len_field(3, pcm16)
        + _field(4, _VARINT)
        + _varint(rate)
        + _field(5, _VARINT)
        + _varint(channels)
    )
    return _len_field(F_AUDIO, inner)


def encode_message_frame(obj: Any) -> bytes:
    """``Frame{message: MessageFrame{data: json}}`` (how RTVI client messages travel)."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _len_field(F_MESSAGE, _len_field(1, data))


@dataclass(frozen=True, slots=True)
class PipecatFrame:
    """One decoded ``pipecat.Frame``: which oneof member, and its fields by name."""

    kind: str
    fields: dict[str, int | bytes]


_KINDS = {
    F_TEXT: ("text", {1: "id", 2: "name", 3: "text"}),
    F_AUDIO: (
        "audio",
        {1: "id", 2: "name", 3: "audio", 4: "sample_rate", 5: "num_channels", 6: "pts"},
    ),
    F_TRANSCRIPTION: (
        "transcription",
        {1: "id", 2: "name", 3: "text", 4: "user_id", 5: "timestamp"},
    ),
    F_MESSAGE: ("message", {1: "data"}),
    F_INTERRUPTION: ("interruption", {1: "id", 2: "name"}),
}


def decode_frame(buf: bytes) -> PipecatFrame:
    """Decode a serialized ``pipecat.Frame``; :class:`WireError` when it is not one."""
    top = parse_fields(buf)
    if not top:
        raise WireError("empty frame")
    # A oneof: the last member on the wire wins.
    num, value = top[-1]
    spec = _KINDS.get(num)
    if spec is None:
        raise WireError(f"unknown frame field {num}")
    if not isinstance(value, bytes):
        raise WireError(f"frame field {num} is not a message")
    kind, names = spec
    fields: dict[str, int | bytes] = {}
    for n, v in parse_fields(value):
        name = names.get(n)
        if name is not None:
            fields[name] = v
    return PipecatFrame(kind, fields)


# -- RTVI -------------------------------------------------------------------------------------

RTVI_LABEL = "rtvi-ai"

_RTVI_MARKS: dict[str, tuple[str, str]] = {
    "vad-user-started-speaking": ("speech_started", "endpointing"),
    "vad-user-stopped-speaking": ("endpoint", "endpointing"),
    "user-started-speaking": ("user_turn.started", "endpointing"),
    "user-stopped-speaking": ("committed", "endpointing"),
    "bot-llm-started": ("llm.request", "model"),
    "bot-llm-stopped": ("llm.done", "model"),
    "bot-tts-started": ("tts.request", "synthesis"),
    "bot-tts-stopped": ("tts.done", "synthesis"),
    "bot-started-speaking": ("bot.started_speaking", "output"),
    "bot-stopped-speaking": ("bot.stopped_speaking", "output"),
}
#: without RTVI, the bot counts as speaking while reply audio came this recently (Pipecat
#: paces its audio at real time; its own bot-speaking detector waits 0.35 s)
SPEAKING_AUDIO_NS = 1_000_000_000
#: RTVI messages that carry nothing about timing (or repeat per word)
_RTVI_QUIET = {
    "bot-ready",
    "bot-output",
    "bot-tts-text",
    "bot-transcription",
    "user-llm-text",
    "server-message",
    "server-response",
    "user-input",
    "stt-raw-text",
    "llm-raw-text",
    "tts-raw-text",
    "user-audio-level",
    "bot-audio-level",
    "system-log",
}


def client_ready_message() -> dict[str, Any]:
    return {
        "label": RTVI_LABEL,
        "type": "client-ready",
        "id": uuid.uuid4().hex[:8],
        "data": {"version": "1.0.0", "about": {"library": "voiceaudit"}},
    }


class PipecatWebSocketSession(WebSocketSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.input_rate = config.int_option("rate", 16000)
        self.rtvi = config.option("rtvi", "auto")
        if self.rtvi not in ("auto", "on", "off"):
            raise UsageError(f"target option rtvi={self.rtvi!r} must be auto, on or off")
        self.done_on = config.option("done_on", "bot-stopped-speaking")
        if self.done_on not in ("bot-stopped-speaking", "idle"):
            raise UsageError(
                f"target option done_on={self.done_on!r} must be bot-stopped-speaking or idle"
            )
        self._bot_ready = asyncio.Event()
        self._first_llm_text = False
        self._speaking = False
        #: RTVI tells whether the bot speaks (a bot-started/stopped-speaking message came)
        self._rtvi_seen = False
        #: arrival of the last reply audio, and whether the current reply was marked cut
        self._last_audio_ns: int | None = None
        self._cut = False

    async def open(self) -> None:
        await super().open()
        if self.rtvi == "off":
            return
        await self.live().send_bytes(encode_message_frame(client_ready_message()))
        wait = self.config.connect_timeout_s if self.rtvi == "on" else 2.0
        try:
            await asyncio.wait_for(self._bot_ready.wait(), wait)
        except TimeoutError:
            if self.rtvi == "on":
                await self.close()
                raise TargetError(
                    "the bot did not answer RTVI client-ready with bot-ready",
                    hint="is RTVI enabled in the bot? use --target-option rtvi=off if not",
                ) from None

    async def send_audio(self, pcm16: bytes) -> None:
        await self.live().send_bytes(encode_audio_frame(pcm16, self.input_rate))

    async def start_turn(self, turn: int) -> None:
        self._first_llm_text = False

    def on_text(self, t_ns: int, data: str) -> None:
        self.sink.fail("protocol: text message from a protobuf-serializer bot")

    def on_binary(self, t_ns: int, data: bytes) -> None:
        self._on_frame(t_ns, data)

    def _on_frame(self, t: int, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except WireError as exc:
            self.sink.fail(f"protocol: not a pipecat protobuf frame ({exc})")
            return
        f = frame.fields
        if frame.kind == "audio":
            audio = f.get("audio", b"")
            rate = f.get("sample_rate", 0)
            channels = f.get("num_channels", 1)
            if not isinstance(audio, bytes) or not isinstance(rate, int) or rate <= 0:
                self.sink.fail("protocol: audio frame without audio or sample_rate")
                return
            if isinstance(channels, int) and channels > 1:
                audio = _downmix(audio, channels)
            if self._last_audio_ns is None and not self._rtvi_seen:
                self._cut = False  # without RTVI: audio after an interruption is a new reply
            self._last_audio_ns = t
            self.sink.reply_audio(t, audio, rate, len(data))
        elif frame.kind == "message":
            raw = f.get("data", b"")
            self._on_message(t, raw if isinstance(raw, bytes) else b"")
        elif frame.kind == "transcription":
            text = f.get("text", b"")
            attrs: dict[str, Any] = {"raw": "TranscriptionFrame"}
            if isinstance(text, bytes):
                attrs["text"] = text.decode("utf-8", "replace")
            self.sink.mark("transcript.final", "transcription", t, attrs)
        elif frame.kind == "text":
            if not self._first_llm_text:
                self._first_llm_text = True
                self.sink.mark("reply_text.first", "model", t, {"raw": "TextFrame"})
        elif frame.kind == "interruption":
            self._interruption(t, "InterruptionFrame")

    def _bot_speaking(self, t: int) -> bool | None:
        """Whether the bot was speaking at ``t``; None when nothing tells."""
        if self._rtvi_seen:
            return self._speaking
        if self._last_audio_ns is None:
            # after bot-ready and before any reply audio the bot has said nothing yet
            return False if self._bot_ready.is_set() and not self._cut else None
        return t - self._last_audio_ns <= SPEAKING_AUDIO_NS

    def _interruption(self, t: int, raw: str) -> None:
        """One of Pipecat's two interruption signals (module docstring)."""
        speaking = self._bot_speaking(t)
        if speaking is not False and not self._cut:
            self._cut = True
            if not self._rtvi_seen:
                self._last_audio_ns = None
            self.sink.mark("interrupted", "endpointing", t, {"raw": raw})
            return
        attrs = {"raw": raw, "bot_speaking": bool(speaking), "repeat": self._cut}
        self.sink.mark("interruption", "endpointing", t, attrs)

    def _on_message(self, t: int, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self.sink.mark("unknown_event", "other", t, {"raw": "MessageFrame (not JSON)"})
            return
        if not isinstance(msg, dict) or msg.get("label") != RTVI_LABEL:
            self.sink.mark("transport.message", "other", t, {"raw": "MessageFrame"})
            return
        kind = msg.get("type")
        data = dict_at(msg, "data")
        if not isinstance(kind, str):
            return
        if kind == "bot-ready":
            self._bot_ready.set()
            return
        if kind == "bot-interrupted":
            self._interruption(t, kind)
            return
        if kind in _RTVI_MARKS:
            name, stage = _RTVI_MARKS[kind]
            self.sink.mark(name, stage, t, {"raw": kind})
            if kind == "bot-started-speaking":
                self._rtvi_seen = True
                self._speaking = True
                self._cut = False
            elif kind == "bot-stopped-speaking":
                self._rtvi_seen = True
                self._speaking = False
                if self.done_on == "bot-stopped-speaking":
                    self.sink.reply_done(t)
            return
        if kind == "user-transcription":
            final = bool(data.get("final"))
            attrs: dict[str, Any] = {"raw": kind}
            if isinstance(data.get("text"), str):
                attrs["text"] = data["text"]
            name = "transcript.final" if final else "transcript.partial"
            self.sink.mark(name, "transcription", t, attrs)
            return
        if kind == "bot-llm-text":
            if not self._first_llm_text:
                self._first_llm_text = True
                self.sink.mark("llm.first_token", "model", t, {"raw": kind})
            return
        if kind == "metrics":
            self.sink.mark("framework.metrics", "telemetry", t, {"raw": kind, **_metrics(data)})
            return
        if kind in ("error", "error-response"):
            message = str(data.get("error", data.get("message", "unknown error")))
            fatal = bool(data.get("fatal", False))
            self.sink.mark("error", "error", t, {"message": message, "fatal": fatal})
            if fatal:
                self.sink.fail(f"target error: {message}")
            return
        if kind not in _RTVI_QUIET:
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})


def _downmix(pcm16: bytes, channels: int) -> bytes:
    import numpy as np

    x = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % (2 * channels)], dtype="<i2")
    out: bytes = x.reshape(-1, channels).mean(axis=1).astype("<i2").tobytes()
    return out


def _metrics(data: dict[str, Any]) -> dict[str, Any]:
    """Pipecat's MetricsMessage data: lists of {processor, model?, value} per kind."""
    out: dict[str, Any] = {}
    for key in ("ttfb", "processing", "ttfa", "text_aggregation"):
        items = data.get(key)
        if isinstance(items, list):
            out[key] = [
                {k: v for k, v in it.items() if k in ("processor", "model", "value")}
                for it in items
                if isinstance(it, dict)
            ]
    return out


class PipecatWebSocketTarget(Target):
    protocol = "pipecat-websocket"
    schemes = ("ws", "wss")
    description = "Pipecat WebSocket transport with the protobuf frame serializer (RTVI marks)"
    options = {  # noqa: RUF012 - read-only, as in Target
        "rate": "input sample rate (default 16000, Pipecat's audio_in_sample_rate)",
        "rtvi": "auto (default: client-ready, wait 2 s for bot-ready) | on (require it) | off",
        "done_on": "what ends a reply: bot-stopped-speaking (default, the RTVI message) | idle",
    }
    session_class = PipecatWebSocketSession
