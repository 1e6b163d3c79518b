"""WebSocket (RFC 6455) frames read from a TCP byte stream after an HTTP Upgrade: several
frames per segment or one frame over many, masked or not.

:class:`WebSocketLog` tallies one session's frames and makes its
:class:`~voiceaudit.capture.model.WebSocketSession`; TShark's decrypted sessions
(:mod:`voiceaudit.capture.tshark`) are tallied with it too.
"""

from __future__ import annotations

import re
import struct
from dataclasses import KW_ONLY, dataclass, field

from voiceaudit.capture.model import WebSocketFrame, WebSocketSession
from voiceaudit.capture.streams import Results, StreamParser

_EVENT_RE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,100})"')


def _event(text: bytes | bytearray, key: bytes) -> str | None:
    """The ``"type"`` of a JSON message from its first bytes (unmasked with ``key``)."""
    raw = bytes(text)
    if key:
        key = key * (len(raw) // 4 + 1)
        raw = bytes(a ^ b for a, b in zip(raw, key, strict=False))
    m = _EVENT_RE.search(raw)
    return m.group(1).decode("utf-8", "replace") if m else None


@dataclass(slots=True, eq=False)
class WebSocketLog:
    """One WebSocket session's frames as they are read: counts and bytes per direction,
    the first ``max_frames`` frames, the first server data and the close."""

    client: str
    server: str
    _: KW_ONLY
    target: str | None
    request_at: int
    request_end_at: int | None
    response_at: int | None
    compressed: bool
    max_frames: int = 10_000
    frames: list[WebSocketFrame] = field(default_factory=list, init=False)
    frames_total: int = field(default=0, init=False)
    #: opcode -> frames, from the client (``_c``) and from the server (``_s``)
    ops_c: dict[int, int] = field(default_factory=dict, init=False)
    ops_s: dict[int, int] = field(default_factory=dict, init=False)
    bytes_c: int = field(default=0, init=False)
    bytes_s: int = field(default=0, init=False)
    first_server_data: int | None = field(default=None, init=False)
    close_at: int | None = field(default=None, init=False)

    def frame(
        self,
        from_client: bool,
        op: int,
        payload_len: int,
        ts: int,
        start: int,
        fin: bool,
        rsv1: bool,
        masked: bool,
        text: bytes | bytearray | None = None,
        key: bytes = b"",
    ) -> None:
        """A whole frame, its last byte at ``ts`` and its first at ``start``; ``text`` is the
        start of a text message's payload (``key``: its mask), read for its event type."""
        self.frames_total += 1
        if from_client:
            self.ops_c[op] = self.ops_c.get(op, 0) + 1
            self.bytes_c += payload_len
        else:
            self.ops_s[op] = self.ops_s.get(op, 0) + 1
            self.bytes_s += payload_len
            if self.first_server_data is None and op in (0, 1, 2):
                self.first_server_data = ts
        if op == 8 and self.close_at is None:
            self.close_at = ts
        if len(self.frames) < self.max_frames:
            self.frames.append(
                WebSocketFrame(
                    at_ns=ts,
                    start_at_ns=start,
                    from_client=from_client,
                    opcode=op,
                    fin=fin,
                    rsv1=rsv1,
                    masked=masked,
                    payload_len=payload_len,
                    event=_event(text, key) if text else None,
                )
            )

    def session(self, lost_sync: bool = False) -> WebSocketSession:
        """The session record."""
        upgrade_ns = None
        if self.response_at is not None:
            base = self.request_end_at if self.request_end_at is not None else self.request_at
            upgrade_ns = self.response_at - base
        return WebSocketSession(
            client=self.client,
            server=self.server,
            target=self.target,
            upgrade_request_at_ns=self.request_at,
            upgrade_request_end_at_ns=self.request_end_at,
            upgrade_response_at_ns=self.response_at,
            upgrade_ns=upgrade_ns,
            compressed=self.compressed,
            frames_total=self.frames_total,
            frames=tuple(self.frames),
            frames_truncated=self.frames_total > len(self.frames),
            opcodes_from_client=dict(self.ops_c),
            opcodes_from_server=dict(self.ops_s),
            bytes_from_client=self.bytes_c,
            bytes_from_server=self.bytes_s,
            first_server_data_at_ns=self.first_server_data,
            close_at_ns=self.close_at,
            lost_sync=lost_sync,
        )


class _WsHalf:
    __slots__ = (
        "event_buf",
        "fin",
        "hdr",
        "hdr_start",
        "key",
        "masked",
        "opcode",
        "payload_len",
        "pos",
        "remaining",
        "rsv1",
        "start",
    )

    def __init__(self) -> None:
        self.hdr = bytearray()
        self.hdr_start = 0
        self.remaining = -1  # -1: reading a header
        self.opcode = 0
        self.fin = False
        self.rsv1 = False
        self.masked = False
        self.payload_len = 0
        self.key = b""
        self.start = 0
        self.pos = 0
        self.event_buf: bytearray | None = None


def _ws_header_len(b0: int, b1: int) -> int:
    n = 2 + (4 if b1 & 0x80 else 0)
    ln = b1 & 0x7F
    if ln == 126:
        n += 2
    elif ln == 127:
        n += 8
    return n


class WebSocketParser(StreamParser):
    """RFC 6455 frames in both directions after an HTTP Upgrade, tallied in ``log``."""

    def __init__(self, log: WebSocketLog) -> None:
        self.log = log
        self.halves = (_WsHalf(), _WsHalf())  # [0]: from server, [1]: from client

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        if self.lost_sync:
            return
        h = self.halves[1 if from_client else 0]
        i = 0
        n = len(data)
        while i < n:
            if h.remaining < 0:
                # Reading a frame header; fast path when it is all in this segment.
                if not h.hdr and n - i >= 2:
                    b0 = data[i]
                    b1 = data[i + 1]
                    hl = _ws_header_len(b0, b1)
                    if n - i >= hl:
                        self._start_frame(h, data[i : i + hl], ts, ts)
                        i += hl
                        if h.remaining == 0:
                            self._end_frame(h, from_client, ts)
                        continue
                if not h.hdr:
                    h.hdr_start = ts
                h.hdr.append(data[i])
                i += 1
                if len(h.hdr) >= 2 and len(h.hdr) == _ws_header_len(h.hdr[0], h.hdr[1]):
                    self._start_frame(h, bytes(h.hdr), h.hdr_start, ts)
                    h.hdr.clear()
                    if h.remaining == 0:
                        self._end_frame(h, from_client, ts)
                continue
            take = min(h.remaining, n - i)
            if h.event_buf is not None and len(h.event_buf) < 512:
                h.event_buf += data[i : i + min(take, 512 - len(h.event_buf))]
            h.remaining -= take
            i += take
            if h.remaining == 0:
                self._end_frame(h, from_client, ts)

    def _start_frame(self, h: _WsHalf, hdr: bytes, start: int, ts: int) -> None:
        b0, b1 = hdr[0], hdr[1]
        ln = b1 & 0x7F
        p = 2
        if ln == 126:
            ln = struct.unpack_from("!H", hdr, 2)[0]
            p = 4
        elif ln == 127:
            ln = struct.unpack_from("!Q", hdr, 2)[0]
            p = 10
        h.opcode = b0 & 0x0F
        h.fin = bool(b0 & 0x80)
        h.rsv1 = bool(b0 & 0x40)
        h.masked = bool(b1 & 0x80)
        h.key = hdr[p : p + 4] if h.masked else b""
        h.payload_len = ln
        h.remaining = ln
        h.start = start
        if h.opcode > 10 or (3 <= h.opcode <= 7):
            # Not a frame: we are out of step with the stream.
            self.lost_sync = True
        h.event_buf = bytearray() if (h.opcode == 1 and not h.rsv1) else None

    def _end_frame(self, h: _WsHalf, from_client: bool, ts: int) -> None:
        # Positional: a call with keywords costs more, once a frame.
        self.log.frame(
            from_client,
            h.opcode,
            h.payload_len,
            ts,
            h.start,
            h.fin,
            h.rsv1,
            h.masked,
            h.event_buf,
            h.key,
        )
        h.remaining = -1
        h.event_buf = None

    def finish(self, sink: Results) -> None:
        sink.websocket.append(self.log.session(self.lost_sync))
