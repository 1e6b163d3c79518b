"""An example voiceaudit target plugin: the ``echo-plugin`` protocol.

Installed, this package adds ``--protocol echo-plugin`` to voiceaudit through the
entry-point group ``voiceaudit.targets`` (see ``pyproject.toml``); ``voiceaudit targets``
lists it with its options. :mod:`voiceaudit_echo_target.server` is a server that speaks
the protocol (``python -m voiceaudit_echo_target.server``).

The protocol (one WebSocket per session, at ``ws://HOST:PORT/echo?rate=R``):

- the server first sends ``{"type": "ready", "rate": R}``;
- the client sends the caller's speech as binary frames of 16-bit mono little-endian PCM
  at rate R, and ``{"type": "commit"}`` when the caller has finished speaking (without it
  the server ends the turn after 500 ms of quiet);
- the server answers ``{"type": "committed"}`` (the end of the caller's turn), then
  ``{"type": "reply.start"}``, the caller's speech echoed back as binary PCM frames from its
  first audible frame on, and ``{"type": "reply.done"}``; ``{"type": "error", "message": …}``
  when it cannot.

The adapter is small because :class:`voiceaudit.targets.wsbase.WebSocketSession` does the
connecting, the arrival stamping of every message on the receive thread, JSON and the
close; what the session reports through ``self.sink`` becomes the same trace events as a
built-in target's, and its failures the same failed turns.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSink
from voiceaudit.targets.wsbase import WebSocketSession

__all__ = ["EchoSession", "EchoTarget"]

RATES = (8000, 16000, 24000)


class EchoSession(WebSocketSession):
    """One connection to an echo server."""

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.input_rate = config.int_option("rate", 16000)
        self.commit = config.option("commit", "on") == "on"
        self._ready = asyncio.Event()

    def url(self) -> str:
        """The target URL with the sample rate in its query."""
        sep = "&" if "?" in self.config.url else "?"
        return f"{self.config.url}{sep}rate={self.input_rate}"

    async def open(self) -> None:
        """Connect and wait for the server's ``ready``."""
        await super().open()
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.connect_timeout_s)
        except TimeoutError:
            await self.close()
            raise TargetError("the echo server did not say ready") from None

    async def send_audio(self, pcm16: bytes) -> None:
        await self.live().send_bytes(pcm16)

    async def speech_ended(self) -> None:
        if self.commit:
            await self.send_json({"type": "commit"})

    def on_binary(self, t_ns: int, data: bytes) -> None:
        if len(data) % 2:
            self.sink.fail("protocol: odd-length PCM frame from the echo server")
            return
        self.sink.reply_audio(t_ns, data, self.input_rate, len(data))

    def on_text(self, t_ns: int, data: str) -> None:
        got = self.read_event(data)
        if got is None:
            return  # malformed: the base has failed the turn as a protocol fault
        ev, kind = got
        attrs: dict[str, Any] = {"raw": kind}
        if kind == "ready":
            self._ready.set()
        elif kind == "committed":
            self.sink.mark("committed", "endpointing", t_ns, attrs)
        elif kind == "reply.start":
            self.sink.mark("response.created", "model", t_ns, attrs)
        elif kind == "reply.done":
            self.sink.mark("response.done", "model", t_ns, attrs)
            self.sink.reply_done(t_ns)
        elif kind == "error":
            message = str(ev.get("message", "unknown error"))
            self.sink.mark("error", "error", t_ns, {"message": message})
            self.sink.fail(f"target error: {message}")
        else:
            self.sink.mark("unknown_event", "other", t_ns, {"raw": kind[:80]})


class EchoTarget(Target):
    """The ``echo-plugin`` protocol: the caller's speech, echoed back."""

    protocol = "echo-plugin"
    schemes = ("ws", "wss")
    description = "example plugin: the caller's speech echoed back over a WebSocket"
    path = "websocket"
    options: ClassVar[dict[str, str]] = {
        "rate": "sample rate of the PCM both ways: 8000, 16000 (default) or 24000",
        "commit": "on (default: say when the caller stops) | off (the server's 500 ms of quiet)",
    }
    session_class = EchoSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        unknown = sorted(set(config.options) - set(self.options))
        if unknown:
            raise UsageError(
                f"unknown target option {unknown[0]!r} for echo-plugin",
                hint="known: " + ", ".join(self.options),
            )
        if config.int_option("rate", 16000) not in RATES:
            raise UsageError(f"target option rate must be one of {', '.join(map(str, RATES))}")
        if config.option("commit", "on") not in ("on", "off"):
            raise UsageError("target option commit must be on or off")
