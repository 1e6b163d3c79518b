"""The base of every streaming-WebSocket target: a new protocol is a small adapter over
:class:`WebSocketSession` (the adapter contract is below).

What the base does:

- **connect**: :meth:`WebSocketSession.connect` opens the WebSocket (the user's headers
  plus the API key as a bearer token, :meth:`~WebSocketSession.headers`) within the
  connect timeout, or raises :class:`~voiceaudit.errors.TargetError`; the default
  :meth:`~WebSocketSession.open` is just that, to :meth:`~WebSocketSession.url`.
- **TLS** (``wss://``): the server's certificate is verified against the system's CAs,
  unless the target options say otherwise (:data:`TLS_OPTIONS`, :func:`tls_context`):
  ``ca_file=PATH`` trusts the CA certificates in that PEM file instead (a private CA, a
  test server's self-signed certificate); ``tls_insecure=true`` skips verification
  altogether (never the default; for a throw-away endpoint only). A missing or unreadable
  CA file, or both options at once, is a :class:`~voiceaudit.errors.UsageError` when the
  session is made, before anything connects.
- **receive-thread stamping**: once connected, the socket is read on voiceaudit's receive
  thread with kernel timestamps (:mod:`voiceaudit.targets.rxstamp`), and each message
  aiohttp parses is tagged with the arrival of the chunk that completed it. A message's
  arrival time is when the bytes that completed it reached the host, not when the probe's
  loop got round to it: a stalled loop delays the handling, never the time. (Where the
  socket cannot be tapped, or a message was parsed before the tap, the reader task's clock
  reading is the time.) One reader task hands each message on, with that time, to
  :meth:`~WebSocketSession.on_text` or :meth:`~WebSocketSession.on_binary`; an error
  frame, a close the probe did not ask for or a lost connection fails the turn
  (``connection …`` / ``target closed …``).
- **warm-up**: ``warm_up_first`` is set, so the probe pays its own first-use costs
  (voiceaudit.probe.warm) before the connection opens.
- **sending**: :meth:`~WebSocketSession.send_json` (one compact JSON text frame) and
  :meth:`~WebSocketSession.live` (the open socket, for ``send_bytes``; TargetError once it
  is closed). The probe paces the frames (its :class:`voiceaudit.pacing.Pacer` calls
  ``send_audio`` at each frame's deadline): a send must write its frame before its first
  await, which aiohttp's ``send_str``/``send_bytes`` do.
- **reading JSON events**: :meth:`~WebSocketSession.read_event` (the event and its kind, by
  a key such as ``type`` or ``event``; a malformed one fails the turn as a protocol
  fault), :func:`dict_at` (an object inside one) and :meth:`~WebSocketSession.b64_field`
  (the base64 audio inside one).
- **close**: :meth:`~WebSocketSession.close` stops the reader, closes the WebSocket (2 s at
  most) and its HTTP session; idempotent.

What an adapter implements (a subclass of :class:`WebSocketSession`):

- ``input_rate`` (attribute): the rate of the 16-bit mono PCM the probe sends it;
- ``send_audio(pcm16)``: frame one chunk of the probe's audio for the wire and send it;
- ``on_text(t_ns, data)`` and/or ``on_binary(t_ns, data)``: read one message that arrived
  at ``t_ns`` and report through ``self.sink`` (``mark``, ``reply_audio`` with the reply as
  16-bit PCM and its wire size, ``reply_done``, ``fail``); a message kind left to the base
  fails the turn as a protocol error;
- optionally ``url()`` (the URL to connect to), ``open()`` (``await super().open()``, then
  any handshake: a session update, a ``start`` event), and the turn hooks of
  :class:`~voiceaudit.targets.base.TargetSession` (``start_turn``, ``speech_ended``,
  ``end_turn``, ``truncate``);
- and a :class:`~voiceaudit.targets.base.Target` naming it (``protocol``, ``schemes``,
  ``description``, ``session_class``), registered in
  :data:`voiceaudit.targets.registry.BUILTINS` or under the entry-point group.

A media-stream protocol of JSON text frames with base64 audio (the telephony streams)::

    class MediaStreamSession(WebSocketSession):
        input_rate = codecs.G711_RATE

        async def open(self) -> None:
            await super().open()
            await self.send_json({"event": "start", "start": {"streamSid": "probe"}})

        async def send_audio(self, pcm16: bytes) -> None:
            payload = base64.b64encode(codecs.encode(pcm16, "pcmu")).decode()
            await self.send_json({"event": "media", "media": {"payload": payload}})

        def on_text(self, t_ns: int, data: str) -> None:
            got = self.read_event(data, key="event")
            if got is None:
                return  # malformed: the turn has failed
            ev, kind = got
            if kind == "media":
                raw = self.b64_field(kind, dict_at(ev, "media").get("payload"), "payload")
                if raw is not None:
                    pcm = codecs.decode(raw, "pcmu")
                    self.sink.reply_audio(t_ns, pcm, codecs.G711_RATE, len(data))
            elif kind == "mark":
                self.sink.reply_done(t_ns)


    class MediaStreamTarget(Target):
        protocol = "media-stream"
        schemes = ("ws", "wss")
        description = "a telephony media stream"
        session_class = MediaStreamSession
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets import rxstamp
from voiceaudit.targets.base import (
    TargetConfig,
    TargetSession,
    TargetSink,
    cancel_quietly,
    close_quietly,
    socket_facts,
)


def dict_at(ev: dict[str, Any], key: str) -> dict[str, Any]:
    """The object under ``key`` in a JSON event; an empty one when it is missing or not an
    object."""
    v = ev.get(key)
    return v if isinstance(v, dict) else {}


#: the target options every WebSocket target reads for ``wss://`` (name -> one line of help)
TLS_OPTIONS: dict[str, str] = {
    "ca_file": "PEM file of the CA certificate(s) to trust for wss:// (e.g. a self-signed "
    "test server's certificate) instead of the system's",
    "tls_insecure": "true: do not verify the server's TLS certificate at all (never the "
    "default; throw-away endpoints only)",
}


def tls_context(config: TargetConfig) -> ssl.SSLContext | None:
    """The TLS context the target options ask for (module doc): one that trusts only the
    ``ca_file``'s certificates, or (``tls_insecure=true``) one that verifies nothing; None
    (aiohttp's default: the system's CAs, host name checked) when neither is given.
    UsageError for a CA file that is missing or not PEM certificates, a ``tls_insecure``
    other than ``true``/``false``, or both options at once."""
    ca = config.options.get("ca_file")
    raw = config.options.get("tls_insecure", "false").strip().lower()
    if raw not in ("true", "false"):
        raise UsageError(f"target option tls_insecure={raw!r} must be true or false")
    insecure = raw == "true"
    if ca is not None and insecure:
        raise UsageError("target options ca_file and tls_insecure=true do not go together")
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca is None:
        return None
    if not os.path.isfile(ca):
        raise UsageError(f"target option ca_file={ca!r}: no such file")
    try:
        return ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise UsageError(
            f"target option ca_file={ca!r}: not a readable PEM certificate file ({why})"
        ) from None


class StampedQueue:
    """Stands in for aiohttp's queue of parsed WebSocket messages (``ws._reader``): each
    message the parser adds while a chunk is fed is tagged with that chunk's arrival, and
    :attr:`last` is the arrival of the message read last."""

    def __init__(self, real: Any, buffer: deque[Any]) -> None:
        self._real = real
        self._buffer = buffer
        now = time.monotonic_ns()
        #: id of a queued message -> its arrival (those queued before the tap came by now)
        self._stamps: dict[int, int] = {id(item[0]): now for item in buffer}
        #: arrival of the message :meth:`read` returned last
        self.last: int | None = None
        #: arrival of the last chunk fed (for messages parsed later from its bytes); before
        #: the first, the bytes aiohttp holds came before the tap
        self._fed = now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def deliver(self, stamp: int, data: bytes, feed: Callable[[], None]) -> None:
        n0 = len(self._buffer)
        feed()
        self._fed = stamp
        # Only the parser appends while a chunk is fed (reads happen in the reader task).
        for item in itertools.islice(self._buffer, n0, None):
            self._stamps[id(item[0])] = stamp
        if len(self._stamps) > 4 * len(self._buffer) + 1024:  # drop tags of read-away items
            live = {id(item[0]) for item in self._buffer}
            self._stamps = {k: v for k, v in self._stamps.items() if k in live}

    async def read(self) -> Any:
        item = await self._real.read()
        # aiohttp defers parsing while its queue is full and parses what it held back as
        # this read makes room: those messages came with the chunks fed so far
        for queued in reversed(self._buffer):
            key = id(queued[0])
            if key in self._stamps:
                break
            self._stamps[key] = self._fed
        stamp = self._stamps.pop(id(item), self._fed)
        # a message later in the stream was not complete before an earlier one
        if self.last is not None and stamp < self.last:
            stamp = self.last
        self.last = stamp
        return item


class WebSocketSession(TargetSession):
    warm_up_first = True  # the probe warms up before the connection opens

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        #: the parsed-message queue that knows arrivals (None: the socket is not tapped)
        self._stamped: StampedQueue | None = None
        #: the TLS context of ``wss://`` connections (None: aiohttp's default verification)
        self._ssl = tls_context(config)

    def headers(self) -> dict[str, str]:
        """Connection headers: the user's, plus the API key as a bearer token."""
        return self.config.auth_headers()

    def url(self) -> str:
        """The URL :meth:`open` connects to (the target's, unless an adapter adds to it)."""
        return self.config.url

    async def open(self) -> None:
        """Connect to :meth:`url` with :meth:`headers`; adapters add their handshake."""
        await self.connect(self.url(), self.headers())

    async def connect(self, url: str, headers: dict[str, str]) -> None:
        """Open the WebSocket and start reading; TargetError when it cannot be opened."""
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=64 * 1024 * 1024,
                    autoping=True,
                    ssl=True if self._ssl is None else self._ssl,
                ),
                self.config.connect_timeout_s,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await self.close()
            why = str(exc) or type(exc).__name__
            # aiohttp's handshake errors quote the whole URL, query (and any key in it) too
            query = urlsplit(url).query
            for secret in [*self.config.secrets(), *([query] if query else [])]:
                why = why.replace(secret, "***")
            raise TargetError(f"cannot connect to {self.config.describe()['url']}: {why}") from None
        self._tap()
        self._reader = asyncio.create_task(self._read())

    def _tap(self) -> None:
        """Read the socket on the receive thread, with kernel arrival times (module doc);
        leaves everything as it is where aiohttp's internals are not what is expected."""
        ws = self._ws
        if ws is None or rxstamp.disabled():
            return
        queue = getattr(ws, "_reader", None)
        buffer = getattr(queue, "_buffer", None)
        conn = getattr(ws, "_conn", None)
        transport = getattr(conn, "transport", None)
        if not isinstance(buffer, deque) or transport is None:
            return
        stamped = StampedQueue(queue, buffer)
        if rxstamp.tap(transport, stamped.deliver) is None:
            return
        ws._reader = stamped  # type: ignore[assignment]
        self._stamped = stamped

    def arrival_ns(self) -> int:
        """When the message just read arrived (see the module docstring)."""
        s = self._stamped
        if s is not None and s.last is not None:
            return s.last
        return time.monotonic_ns()

    def connection(self) -> dict[str, Any] | None:
        if self._ws is None:
            return None
        return socket_facts(self._ws.get_extra_info("socket"))

    def live(self) -> aiohttp.ClientWebSocketResponse:
        """The open WebSocket, to send on; TargetError once it is closed."""
        if self._ws is None or self._ws.closed:
            raise TargetError("connection is closed")
        return self._ws

    async def send_json(self, obj: dict[str, Any]) -> None:
        """Send ``obj`` as one compact JSON text frame."""
        await self.live().send_str(json.dumps(obj, separators=(",", ":")))

    def read_event(self, data: str, key: str = "type") -> tuple[dict[str, Any], str] | None:
        """A JSON event and its kind (the string under ``key``); None, having failed the
        turn as a protocol fault, when the message is not one."""
        try:
            ev = json.loads(data)
            kind = ev[key]
            if not isinstance(kind, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.sink.fail(f"protocol: malformed event {data[:80]!r}")
            return None
        return ev, kind

    def b64_field(self, kind: str, value: Any, name: str) -> bytes | None:
        """The bytes of a base64 field ``name`` of a ``kind`` event; None, having failed the
        turn as a protocol fault, when it is missing or not base64."""
        if not isinstance(value, str):
            self.sink.fail(f"protocol: {kind} without a base64 {name}")
            return None
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            self.sink.fail(f"protocol: {kind} {name} is not base64")
            return None

    def on_text(self, t_ns: int, data: str) -> None:
        self.sink.fail(f"protocol: unexpected text message {data[:60]!r}")

    def on_binary(self, t_ns: int, data: bytes) -> None:
        self.sink.fail("protocol: unexpected binary message")

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for msg in ws:
                t = self.arrival_ns()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.on_text(t, msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.on_binary(t, msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    self.sink.fail(f"connection error: {ws.exception()}")
                    return
            if not self._closing:
                self.sink.fail(f"target closed the connection (code {ws.close_code})")
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.sink.fail(f"connection lost: {exc}")

    async def close(self) -> None:
        self._closing = True
        await cancel_quietly(self._reader)
        self._reader = None
        if self._ws is not None and not self._ws.closed:
            await close_quietly(self._ws, 2.0)
        self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
