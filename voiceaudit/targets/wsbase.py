"""What every WebSocket target shares: connecting (with the API key as a bearer token),
one reader task that stamps each message's arrival, and a clean close.

Subclasses implement :meth:`on_text` and/or :meth:`on_binary`; a message kind they do not
override fails the turn as a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from voiceaudit.errors import TargetError
from voiceaudit.targets.base import TargetConfig, TargetSession, TargetSink, socket_facts


class WebSocketSession(TargetSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

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
        self._reader = asyncio.create_task(self._read())

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
                t = time.monotonic_ns()
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
