"""Socket-level helpers shared by the WebSocket protocols: the small-writes injection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

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
