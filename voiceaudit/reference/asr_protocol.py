"""Frames between the server and its speech-recognition workers (see _asr_worker)."""

from __future__ import annotations

import struct

HEADER = struct.Struct("<BII")

OP_START = 1
OP_AUDIO = 2
OP_END = 3
OP_CANCEL = 4

OP_READY = 0x81
OP_FINAL = 0x82
OP_ERROR = 0x83


def frame(op: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the header (op, stream id, payload length), then the payload."""
    return HEADER.pack(op, stream_id, len(payload)) + payload
