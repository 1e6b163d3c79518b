"""Socket-level helpers shared by the WebSocket protocols: the small-writes injection, one
message send, and the life of a WebSocket session (upgrade, count, run, close)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from voiceaudit.reference.groundtruth import now_ns
from voiceaudit.reference.pipeline import CONNECT_DELAY_KEY, CTX_KEY

_OP_TEXT = 0x1
_OP_BINARY = 0x2


def set_nodelay(transport: asyncio.BaseTransport | None, on: bool) -> bool:
    """Set TCP_NODELAY on the transport's socket; False if there is no TCP socket."""
    if transport is None:
        return False
    sock: Any = transport.get_extra_info("socket")
    if sock is None:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if on else 0)
        return True
    return False


def ws_frame_header(length: int, opcode: int) -> bytes:
    """Header of one unmasked, final, uncompressed server-to-client frame."""
    first = 0x80 | opcode
    if length < 126:
        return bytes([first, length])
    if length < 1 << 16:
        return bytes([first, 126]) + struct.pack("!H", length)
    return bytes([first, 127]) + struct.pack("!Q", length)


def write_frame_in_pieces(
    transport: asyncio.WriteTransport, payload: bytes, *, binary: bool, piece: int
) -> None:
    """Write one WebSocket message as many small socket writes (header first).

    With TCP_NODELAY off, Nagle's algorithm holds each small write until the previous
    one is acknowledged, and a peer that delays its ACKs turns that into stalls.
    """
    transport.write(ws_frame_header(len(payload), _OP_BINARY if binary else _OP_TEXT))
    for i in range(0, len(payload), piece):
        transport.write(payload[i : i + piece])


async def send_message(
    ws: web.WebSocketResponse, request: web.Request, data: str | bytes, small: int | None
) -> None:
    """Send one WebSocket message; with the small-writes injection (``small`` bytes a
    piece) as many socket writes, all made before this returns its first ``await``."""
    transport = request.transport
    if small is not None and transport is not None and not transport.is_closing():
        payload = data.encode() if isinstance(data, str) else data
        write_frame_in_pieces(transport, payload, binary=isinstance(data, bytes), piece=small)
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        if isinstance(data, str):
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)


class WsSession(Protocol):
    """What :func:`serve_websocket` runs: a session reading its socket until it closes."""

    async def run(self) -> None: ...

    async def close(self) -> None: ...


async def serve_websocket(
    request: web.Request, ws: web.WebSocketResponse, make: Callable[[int], WsSession]
) -> web.WebSocketResponse:
    """Upgrade ``request`` to ``ws`` and run the session ``make`` builds (given the
    connect-delay injection's wait, ns) until the socket closes; the server counts it."""
    ctx = request.app[CTX_KEY]
    connect_delay_ns = int(request.get(CONNECT_DELAY_KEY, 0))
    await ws.prepare(request)
    if ctx.injections.small_writes:
        set_nodelay(request.transport, False)
    session = make(connect_delay_ns)
    if ctx.injections.greeting_ns is not None:
        # greeting=MS: every streaming protocol speaks first (when it can greet)
        greet = getattr(session, "greet_on_connect", None)
        if greet is not None:
            greet(now_ns())
    ctx.active_sessions += 1
    ctx.sessions_total += 1
    try:
        await session.run()
    finally:
        ctx.active_sessions -= 1
        await session.close()
        if not ws.closed:
            await ws.close()
    return ws


async def read_messages(
    ws: web.WebSocketResponse,
    on_text: Callable[[str], Awaitable[None]],
    on_binary: Callable[[bytes], Awaitable[None]],
) -> None:
    """Hand each message of ``ws`` to its handler, in order, until the socket closes."""
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await on_text(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await on_binary(msg.data)
        elif msg.type == web.WSMsgType.ERROR:
            break
