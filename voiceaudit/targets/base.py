"""The one interface every target adapter implements.

A *target* is a pipeline under test reached over some protocol. The probe opens a
:class:`TargetSession` per session (one connection), feeds it paced audio frames, and
the session reports back through a :class:`TargetSink`: stage marks it observes, reply
audio as it arrives, the end of the reply, or a failure. Adapters never write the trace
themselves and never decide turn boundaries: they only observe and report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

from voiceaudit.errors import TargetError, UsageError


class TargetSink(Protocol):
    """Where a target session reports what it observes. Times are monotonic ns."""

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        """A pipeline stage mark (see docs/trace-format.md, "Pipeline marks")."""

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        """A chunk of reply audio (16-bit mono PCM) arrived at ``t_ns``.

        ``wire_bytes`` is what the chunk cost on the protocol (e.g. base64 inside JSON).
        ``queued_ns``: where the far end plays the audio from a buffer of its own (a phone
        carrier), ``t_ns`` is when the chunk started playing there and ``queued_ns`` how long
        it waited in that buffer after it arrived (the send-ahead: audio queued before it).
        """

    def reply_done(self, t_ns: int) -> None:
        """The target says the reply is complete."""

    def fail(self, reason: str) -> None:
        """The turn cannot complete: the target erred, closed, or sent garbage.

        ``reason`` is one line; the probe reads the failure kind from how it starts
        (:func:`voiceaudit.failures.failure_kind`): ``protocol: …`` (a protocol
        violation), ``target error: …`` (the target reported an error), ``target closed
        …`` / ``connection …`` (the connection was closed, reset or lost: the reply was
        cut). The session is not used again after a failure (the probe's next turn gets a
        new one); the turn fails, unless the failure came after its reply was complete
        (then it stands, with a ``turn.note``)."""


@dataclass(frozen=True)
class TargetConfig:
    """What the user said about the target; shared by every session of a run."""

    url: str
    protocol: str
    #: name of the environment variable holding the API key (never the key itself)
    api_key_env: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 10.0

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        return key or None

    def auth_headers(self) -> dict[str, str]:
        """Request headers: the user's, plus the API key as a bearer token."""
        h = {k: v for k, v in self.headers}
        key = self.api_key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def secrets(self) -> list[str]:
        """Strings that must never be written anywhere."""
        out = [v for k, v in self.headers if k.lower() in _SECRET_HEADERS]
        key = self.api_key()
        if key:
            out.append(key)
        return out

    def describe(self) -> dict[str, Any]:
        """A description safe to write into a trace: no keys, no credentials, no query."""
        return {
            "protocol": self.protocol,
            "url": redact_url(self.url),
            "options": dict(self.options),
            "headers": sorted(k for k, _ in self.headers),
            "api_key_env": self.api_key_env,
        }

    def option(self, name: str, default: str) -> str:
        return self.options.get(name, default)

    def int_option(self, name: str, default: int) -> int:
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"target option {name}={raw!r} must be a whole number") from None


_SECRET_HEADERS = {"authorization", "api-key", "x-api-key", "openai-api-key", "cookie"}


def redact_url(url: str) -> str:
    """Drop credentials and the query string (tokens often live there)."""
    parts = urlsplit(url)
    if parts.scheme == "python":
        return url  # python://module:callable names code, not a host
    netloc = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class TargetSession(ABC):
    """One connection to the target. Created by :meth:`Target.session`."""

    #: the sample rate the target takes and gives (16-bit mono PCM)
    input_rate: int = 24000
    #: the probe pays its own first-use costs (voiceaudit.probe.warm) before opening a
    #: session of this kind: one whose replies arrive on a connection the probe's loop
    #: must read on time. Targets below the probe only say so; the probe does the warming.
    warm_up_first: ClassVar[bool] = False
    #: the agents this protocol reaches speak first (phone bots greet the caller): unless
    #: told otherwise (``run --greeting-wait``), the probe waits for the greeting to be heard
    #: before the first turn. Reply audio that arrives before the first turn is the greeting.
    speaks_first: ClassVar[bool] = False

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        self.config = config
        self.sink = sink

    @abstractmethod
    async def open(self) -> None:
        """Connect and get the session ready for audio. Raise TargetError on failure."""

    @abstractmethod
    async def send_audio(self, pcm16: bytes) -> None:
        """Send one frame of input audio; must write it before its first await."""

    async def start_turn(self, turn: int) -> None:  # noqa: B027 - optional hook
        """A new turn begins (before its first frame)."""

    async def speech_ended(self) -> None:  # noqa: B027 - optional hook
        """The frame carrying the last speech sample was sent (for manual-commit modes)."""

    async def end_turn(self) -> None:  # noqa: B027 - optional hook
        """The probe is done with this turn (reply complete, failed or timed out)."""

    async def truncate(self, audio_end_ms: int) -> str | None:
        """The caller talked over the reply playing now, having heard ``audio_end_ms`` of
        it: tell the target (OpenAI Realtime ``conversation.item.truncate``). Returns the
        truncated item's id, or None when the protocol has no such message."""
        return None

    def media_start_ns(self) -> int | None:
        """When the call's media began on this session (a carrier's ``start`` message), on
        the probe's clock: greeting latency counts from it. None: from ``session.connected``."""
        return None

    async def send_dtmf(self, digit: str) -> None:
        """Send a key press (a scenario's ``dtmf`` step); TargetError where the protocol has
        none."""
        raise TargetError(f"protocol {self.config.protocol!r} cannot send DTMF")

    def stream_fill_samples(self) -> int:
        """Samples of silence the transport added on its own to the outgoing audio so far
        (WebRTC's track fills an idle microphone between turns), at the input rate: a
        target counts them as part of the session's audio, the probe's own counts do not."""
        return 0

    def connection(self) -> dict[str, Any] | None:
        """The session's one long-lived connection, once open: ``local`` and ``remote``
        (``host:port``, ``[host]:port`` for IPv6, as a capture names endpoints), and for TCP
        ``tcp_nodelay`` (whether Nagle's algorithm is off on the probe's socket), for UDP
        (WebRTC's selected ICE pair) ``transport: "udp"``. None where a session has no such
        connection (HTTP requests from a pool, an in-process target)."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; idempotent."""


def socket_facts(sock: Any) -> dict[str, Any] | None:
    """:meth:`TargetSession.connection` of a connected TCP socket (a :class:`socket.socket`
    or asyncio's wrapper of one, a transport's ``get_extra_info("socket")``)."""
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None  # a Unix socket has no endpoints a capture names
    try:
        local, remote = sock.getsockname(), sock.getpeername()
        nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        return None

    return {"local": endpoint_name(local), "remote": endpoint_name(remote), "tcp_nodelay": nodelay}


def endpoint_name(addr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address, as a capture names it."""
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing) and wait for it, whatever it raises."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def close_quietly(resource: Any, timeout_s: float) -> None:
    """Await ``resource.close()`` for at most ``timeout_s``, whatever it raises."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(resource.close(), timeout_s)


class Target(ABC):
    """A protocol adapter. Subclasses register under a protocol name."""

    protocol: ClassVar[str]
    #: URL schemes that imply this protocol when --protocol is not given
    schemes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: the path the caller's audio takes, as the report labels results: ``phone`` (a
    #: carrier's media stream), ``webrtc``, ``websocket``, ``http`` or ``in-process``
    path: ClassVar[str] = "websocket"
    #: the ``-o NAME=VALUE`` options the target reads: name -> one line on what it does
    #: (``voiceaudit targets`` lists them)
    options: ClassVar[dict[str, str]] = {}
    #: the session class :meth:`session` makes (``session_class(config, sink)``); a target
    #: whose sessions need more than that overrides :meth:`session` instead
    session_class: ClassVar[type[TargetSession]]

    def __init__(self, config: TargetConfig) -> None:
        self.config = config

    def session(self, sink: TargetSink) -> TargetSession:
        """A new, unopened session."""
        return self.session_class(self.config, sink)
