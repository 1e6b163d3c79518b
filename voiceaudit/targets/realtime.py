"""OpenAI Realtime protocol over WebSocket (GA event names, and the older beta names).

Options (``--target-option NAME=VALUE``):

- ``api``: ``ga`` (default) or ``beta`` (``OpenAI-Beta: realtime=v1`` header, beta
  ``session.update`` shape and event names).
- ``turn_detection``: ``server_vad`` (default; the server decides the end of the turn) or
  ``manual`` (the probe commits and asks for a response as soon as the frame carrying the
  last speech sample is sent: push-to-talk).
- ``silence_ms`` (default 500), ``prefix_padding_ms`` (300), ``threshold`` (0.5).
- ``voice``, ``model`` (added to the URL query as ``model=`` when given).
- ``rate``: PCM sample rate (default 24000).
- ``stage_events``: ``on`` (default) sends the header ``X-Voiceaudit-Stages: 1``, which asks
  the reference pipeline for its extension events (``voiceaudit.stage``: the server times of
  its internal stages; see voiceaudit.reference.stages); other servers ignore it. ``off``
  leaves it out.

Marks: every protocol event that marks progress is a mark at its arrival time:
``speech_started``, ``endpoint`` (``speech_stopped``), ``committed``, ``transcript.final``,
``response.created``, ``reply_text.first`` (the first ``response.output_audio_transcript.delta``
or ``response.output_text.delta``; beta names too), the first audio delta (the probe's own
``reply.first_byte``), ``tts.done`` and ``response.done``. The GA protocol carries no
server-side timing (``response.done`` has token usage only), so these are arrival times;
the reference's extension events carry server times.

The API key comes from the environment variable named by ``--api-key-env`` and is sent as
``Authorization: Bearer …``; it is registered as a secret so it never reaches the trace.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from voiceaudit.errors import TargetError
from voiceaudit.targets.base import Target, TargetConfig, TargetSession, TargetSink
from voiceaudit.targets.stages import STAGE_EVENT, STAGES_HEADER, stage_mark, wants_stage_events
from voiceaudit.targets.wsbase import WebSocketSession

#: server event -> (mark name, stage); audio deltas are handled separately
_MARKS: dict[str, tuple[str, str]] = {
    "input_audio_buffer.speech_started": ("speech_started", "endpointing"),
    "input_audio_buffer.speech_stopped": ("endpoint", "endpointing"),
    "input_audio_buffer.committed": ("committed", "endpointing"),
    "conversation.item.input_audio_transcription.delta": ("transcript.partial", "transcription"),
    "conversation.item.input_audio_transcription.completed": (
        "transcript.final",
        "transcription",
    ),
    "response.created": ("response.created", "model"),
    "response.output_audio.done": ("tts.done", "synthesis"),
    "response.audio.done": ("tts.done", "synthesis"),
}
_AUDIO_DELTAS = {"response.output_audio.delta", "response.audio.delta"}
#: the first of these in a turn is the reply's first text (``reply_text.first``)
_TEXT_DELTAS = {
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
}

_IGNORED_PREFIXES = ("session.", "conversation.", "response.", "input_audio_buffer.", "rate_limits")


class RealtimeSession(WebSocketSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.input_rate = config.int_option("rate", 24000)
        self.beta = config.option("api", "ga") == "beta"
        self.manual = config.option("turn_detection", "server_vad") == "manual"
        self.stage_events = wants_stage_events(config)
        self._ready = asyncio.Event()
        self._first_text_seen = False
        #: the item id of the reply audio received last (for conversation.item.truncate)
        self._audio_item: str | None = None

    def _url(self) -> str:
        model = self.config.options.get("model")
        if not model:
            return self.config.url
        parts = urlsplit(self.config.url)
        query = (parts.query + "&" if parts.query else "") + urlencode({"model": model})
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def _session_update(self) -> dict[str, Any]:
        td: dict[str, Any] | None = None
        if not self.manual:
            td = {
                "type": "server_vad",
                "threshold": float(self.config.option("threshold", "0.5")),
                "prefix_padding_ms": self.config.int_option("prefix_padding_ms", 300),
                "silence_duration_ms": self.config.int_option("silence_ms", 500),
            }
        voice = self.config.option("voice", "alloy")
        if self.beta:
            session: dict[str, Any] = {
                "modalities": ["audio", "text"],
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "turn_detection": td,
                "voice": voice,
                "input_audio_transcription": {"model": "whisper-1"},
            }
        else:
            fmt = {"type": "audio/pcm", "rate": self.input_rate}
            session = {
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": fmt,
                        "turn_detection": td,
                        "transcription": {"model": "whisper-1"},
                    },
                    "output": {"format": fmt, "voice": voice},
                },
            }
        return {"type": "session.update", "session": session}

    async def open(self) -> None:
        headers = self.headers()
        if self.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        if self.stage_events:
            headers[STAGES_HEADER] = "1"
        await self.connect(self._url(), headers)
        await self._send(self._session_update())
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.connect_timeout_s)
        except TimeoutError:
            await self.close()
            raise TargetError("the target did not answer session.update in time") from None

    async def _send(self, obj: dict[str, Any]) -> None:
        await self.live().send_str(json.dumps(obj, separators=(",", ":")))

    async def send_audio(self, pcm16: bytes) -> None:
        await self._send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16).decode()}
        )

    async def start_turn(self, turn: int) -> None:
        self._first_text_seen = False

    async def truncate(self, audio_end_ms: int) -> str | None:
        """``conversation.item.truncate`` of the reply item playing now."""
        item = self._audio_item
        if item is None:
            return None
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": int(audio_end_ms),
            }
        )
        return item

    async def speech_ended(self) -> None:
        if self.manual:
            await self._send({"type": "input_audio_buffer.commit"})
            await self._send({"type": "response.create"})

    def on_binary(self, t_ns: int, data: bytes) -> None:
        self.sink.fail("protocol: unexpected binary message from a realtime server")

    def on_text(self, t: int, data: str) -> None:
        try:
            ev = json.loads(data)
            kind = ev["type"]
            if not isinstance(kind, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.sink.fail(f"protocol: malformed event {data[:80]!r}")
            return
        if kind in ("session.created", "session.updated"):
            # The server handles messages in order, so audio may follow either one.
            self._ready.set()
            return
        if kind in _AUDIO_DELTAS:
            delta = ev.get("delta")
            if not isinstance(delta, str):
                self.sink.fail(f"protocol: {kind} without a base64 delta")
                return
            try:
                pcm = base64.b64decode(delta, validate=True)
            except ValueError:
                self.sink.fail(f"protocol: {kind} delta is not base64")
                return
            item = ev.get("item_id")
            if isinstance(item, str):
                self._audio_item = item
            self.sink.reply_audio(t, pcm, self.input_rate, len(data.encode()))
            return
        if kind == STAGE_EVENT:
            self._on_stage(t, ev)
            return
        if kind in _TEXT_DELTAS:
            if not self._first_text_seen:
                self._first_text_seen = True
                self.sink.mark("reply_text.first", "model", t, {"raw": kind})
            return
        if kind in _MARKS:
            name, stage = _MARKS[kind]
            attrs: dict[str, Any] = {"raw": kind}
            for k in ("audio_start_ms", "audio_end_ms", "item_id"):
                if k in ev:
                    attrs[k] = ev[k]
            if name == "transcript.final" and isinstance(ev.get("transcript"), str):
                attrs["text"] = ev["transcript"]
            self.sink.mark(name, stage, t, attrs)
            return
        if kind == "response.done":
            resp = ev.get("response") if isinstance(ev.get("response"), dict) else {}
            attrs = {"raw": kind, "status": resp.get("status"), "usage": resp.get("usage")}
            self.sink.mark("response.done", "model", t, attrs)
            self.sink.reply_done(t)
            return
        if kind == "error":
            err = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            msg = str(err.get("message", "unknown error"))
            self.sink.mark("error", "error", t, {"message": msg, "code": err.get("code")})
            self.sink.fail(f"target error: {msg}")
            return
        if not kind.startswith(_IGNORED_PREFIXES):
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})

    def _on_stage(self, t: int, ev: dict[str, Any]) -> None:
        """A reference-pipeline stage event: a mark at the server's own time."""
        got = stage_mark(ev)
        if got is None:
            raw = f"{STAGE_EVENT}:{ev.get('stage')}"[:80]
            self.sink.mark("unknown_event", "other", t, {"raw": raw})
            return
        self.sink.mark(got[0], got[1], t, got[2])


class RealtimeTarget(Target):
    protocol = "realtime"
    schemes = ("ws", "wss")
    description = "OpenAI Realtime protocol over WebSocket (GA and beta event names)"

    def session(self, sink: TargetSink) -> TargetSession:
        return RealtimeSession(self.config, sink)
