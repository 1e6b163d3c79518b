"""A WAV file's ``LIST``/``INFO`` chunk: text fields a writer leaves for its readers.

``voiceaudit run --record`` names itself (``ISFT``) and its channel layout (``ICMT``) in
each call recording, so ``voiceaudit report CALL.wav`` knows a recording voiceaudit wrote
and which channel is which. Any WAV reader skips the chunk.
"""

from __future__ import annotations

import os
import struct

#: the ``ICMT`` of a call recording written by ``voiceaudit run --record``
CALL_LAYOUT = "voiceaudit call recording: left=caller (as sent), right=heard (playout model)"
#: how far into a file the chunk is looked for
_LOOK_BYTES = 64 * 1024


def info_chunk(fields: dict[str, str]) -> bytes:
    """A ``LIST``/``INFO`` chunk holding ``fields`` (four-letter ids such as ``ISFT``
    and ``ICMT``, ASCII text; each NUL-terminated and padded to an even length)."""
    out = b"INFO"
    for cid, text in fields.items():
        key = cid.encode("ascii")
        if len(key) != 4:
            raise ValueError(f"an INFO id has four letters, not {cid!r}")
        body = text.encode("ascii") + b"\0"
        out += key + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)
    return b"LIST" + struct.pack("<I", len(out)) + out


def read_info(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``INFO`` fields of a RIFF/WAVE file's ``LIST`` chunks before its audio ({} for
    any other file, one without them, or one that cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_LOOK_BYTES)
    except OSError:
        return {}
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return {}
    out: dict[str, str] = {}
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            break
        body = head[pos + 8 : pos + 8 + size]
        if cid == b"LIST" and body[:4] == b"INFO":
            q = 4
            while q + 8 <= len(body):
                sid, n = body[q : q + 4], struct.unpack("<I", body[q + 4 : q + 8])[0]
                text = body[q + 8 : q + 8 + n].split(b"\0", 1)[0]
                out[sid.decode("latin-1")] = text.decode("latin-1")
                q += 8 + n + (n & 1)
        pos += 8 + size + (size & 1)
    return out
