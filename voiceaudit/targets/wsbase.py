"""What every WebSocket target shares: connecting (with the API key as a bearer token),
one reader task that hands on each message with its arrival time, and a clean close.

A message's arrival time is when the bytes that completed it reached the host, not when
the probe's loop got round to it: once connected, the socket is read on voiceaudit's
receive thread with kernel timestamps (:mod:`voiceaudit.targets.rxstamp`), and each
message aiohttp parses is tagged with the time of the chunk that completed it. A stalled
loop delays the handling, never the time. (Where the socket cannot be tapped, or a
message was parsed before the tap, the reader task's clock reading is the time.)

Subclasses implement :meth:`on_text` and/or :meth:`on_binary`; a message kind they do not
override fails the turn as a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from voiceaudit.errors import TargetError
from voiceaudit.targets import rxstamp
from voiceaudit.targets.base import TargetConfig, TargetSession, TargetSink, socket_facts


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

    def headers(self) -> dict[str, str]:
        """Connection headers: the user's, plus the API key as a bearer token."""
        h = {k: v for k, v in self.config.headers}
        key = self.config.api_key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

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
                ),
                self.config.connect_timeout_s,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await self.close()
            raise TargetError(
                f"cannot connect to {self.config.describe()['url']}: {exc or type(exc).__name__}"
            ) from None
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
        if self._ws is None or self._ws.closed:
            raise TargetError("connection is closed")
        return self._ws

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
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
        self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
