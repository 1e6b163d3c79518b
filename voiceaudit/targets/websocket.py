"""Raw 16-bit mono PCM over a WebSocket, with optional JSON text events for stage marks.

Binary frames carry audio both ways. Text frames are JSON objects with a ``type``; those
naming a stage mark become pipeline marks. Both the vocabulary's own names
(docs/trace-format.md) and the reference pipeline's names (``vad_stop``,
``transcript_final``, ``llm_first_token``, ``tts_first_audio``, ``first_audio_sent`` …)
are understood; an integer ``t_ns`` in the event (the server's monotonic time, meaningful
when it runs on the same host) is kept as ``server_t_ns``. ``turn_done`` (or
``response.done``) ends the reply; ``error`` fails the turn.

Options: ``rate`` (default 16000; sent as the ``rate`` query parameter unless the URL has
one), ``out_rate`` (the reply rate, default = ``rate``), ``silence_ms``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voiceaudit.targets.base import Target, TargetConfig, TargetSink
from voiceaudit.targets.wsbase import WebSocketSession

#: the marks of the vocabulary (docs/trace-format.md) the events may name, and their stages
_STAGES: dict[str, str] = {
    "speech_started": "endpointing",
    "endpoint": "endpointing",
    "committed": "endpointing",
    "transcript.final": "transcription",
    "asr.done": "transcription",
    "llm.request": "model",
    "llm.first_token": "model",
    "llm.done": "model",
    "tts.request": "synthesis",
    "tts.first_byte": "synthesis",
    "audio.first_sent": "transport",
    "audio.last_sent": "transport",
}
#: the reference pipeline's event names for them
_REFERENCE_NAMES: dict[str, str] = {
    "vad_stop": "endpoint",
    "transcript_final": "transcript.final",
    "asr_done": "asr.done",
    "llm_request": "llm.request",
    "llm_first_token": "llm.first_token",
    "llm_done": "llm.done",
    "tts_request": "tts.request",
    "tts_first_audio": "tts.first_byte",
    "first_audio_sent": "audio.first_sent",
    "last_audio_sent": "audio.last_sent",
}
#: event type (either name) -> (mark name, stage)
EVENT_MARKS: dict[str, tuple[str, str]] = {
    **{name: (name, stage) for name, stage in _STAGES.items()},
    **{ref: (name, _STAGES[name]) for ref, name in _REFERENCE_NAMES.items()},
}
_DONE = {"turn_done", "response.done"}
_QUIET = {"session.started", "pong", "session.created"}


class PcmWebSocketSession(WebSocketSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        parts = urlsplit(config.url)
        query = dict(parse_qsl(parts.query))
        self.input_rate = int(query.get("rate") or config.int_option("rate", 16000))
        self.out_rate = int(query.get("out_rate") or config.int_option("out_rate", self.input_rate))
        query.setdefault("rate", str(self.input_rate))
        query.setdefault("out_rate", str(self.out_rate))
        if "silence_ms" in config.options:
            query.setdefault("silence_ms", config.options["silence_ms"])
        self._url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    def url(self) -> str:
        """The target's URL with the rates (and ``silence_ms``) in its query."""
        return self._url

    async def send_audio(self, pcm16: bytes) -> None:
        await self.live().send_bytes(pcm16)

    def on_binary(self, t_ns: int, data: bytes) -> None:
        if len(data) % 2:
            self.sink.fail("protocol: odd-length PCM frame")
            return
        self.sink.reply_audio(t_ns, data, self.out_rate, len(data))

    def on_text(self, t: int, text: str) -> None:
        got = self.read_event(text)
        if got is None:
            return
        ev, kind = got
        attrs: dict[str, Any] = {"raw": kind}
        server_t = ev.get("t_ns")
        if isinstance(server_t, int) and not isinstance(server_t, bool):
            attrs["server_t_ns"] = server_t
        if kind in EVENT_MARKS:
            name, stage = EVENT_MARKS[kind]
            if name == "transcript.final" and isinstance(ev.get("text"), str):
                attrs["text"] = ev["text"]
            self.sink.mark(name, stage, t, attrs)
        elif kind in _DONE:
            # the reference's turn_done says whether the reply was cut (and why)
            for k in ("status", "cut", "reason", "reply_samples", "barge_in_ns"):
                if k in ev and isinstance(ev[k], str | int | bool | None):
                    attrs[k] = ev[k]
            self.sink.mark("response.done", "model", t, attrs)
            self.sink.reply_done(t)
        elif kind == "error":
            err = ev.get("error")
            message = err.get("message") if isinstance(err, dict) else ev.get("message")
            self.sink.mark("error", "error", t, {"message": str(message)})
            self.sink.fail(f"target error: {message}")
        elif kind not in _QUIET:
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})


class PcmWebSocketTarget(Target):
    protocol = "websocket"
    schemes = ("ws", "wss")
    description = "raw 16-bit mono PCM frames over a WebSocket, JSON text events for marks"
    options = {  # noqa: RUF012 - read-only, as in Target
        "rate": "input sample rate, sent as rate= in the URL's query unless it has one (16000)",
        "out_rate": "sample rate of the reply PCM, sent as out_rate= (default: rate)",
        "silence_ms": "the server's end-of-turn silence, sent as silence_ms= in the query",
    }
    session_class = PcmWebSocketSession
