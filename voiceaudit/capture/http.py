"""HTTP exchanges read from TCP byte streams: HTTP/1.x (requests, responses, chunked and
streaming bodies, Upgrade to WebSocket or h2c) and cleartext HTTP/2 (h2c or prior
knowledge).

:class:`PendingExchange` is one exchange while it is being read; TShark's decrypted
exchanges (:mod:`voiceaudit.capture.tshark`) are built with it too, so both give the same
:class:`~voiceaudit.capture.model.HttpExchange`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from voiceaudit.capture.model import HttpExchange
from voiceaudit.capture.streams import (
    H2_PREFACE,
    MAX_HEAD,
    OpaqueParser,
    Results,
    StreamParser,
    parse_headers,
)
from voiceaudit.capture.websocket import WebSocketLog, WebSocketParser


@dataclass(slots=True)
class PendingExchange:
    """One request and its response while they are read (times in ns, ``None``: not yet)."""

    request_at: int
    method: str | None = None
    target: str | None = None
    request_end_at: int | None = None
    upgrade: str | None = None
    response_at: int | None = None
    status: int | None = None
    headers_at: int | None = None
    content_type: str | None = None
    chunked: bool = False
    first_data_at: int | None = None
    response_end_at: int | None = None
    body_bytes: int = 0
    ws_extensions: str = ""

    def data(self, n: int, ts: int) -> None:
        """``n`` bytes of the response body arrived at ``ts``."""
        if self.first_data_at is None:
            self.first_data_at = ts
        self.body_bytes += n

    def h2_response_frame(self, headers: bool, length: int, end_stream: bool, ts: int) -> bool:
        """An HTTP/2 HEADERS (``headers``) or DATA frame of the response; True when it
        starts the response (the caller then reads the status)."""
        started = False
        if headers:
            if self.response_at is None:
                self.response_at = ts
                self.headers_at = ts
                started = True
        elif length > 0:
            self.data(length, ts)
        if end_stream:
            self.response_end_at = ts
        return started

    def websocket_log(
        self, client: str, server: str, *, compressed: bool, max_frames: int = 10_000
    ) -> WebSocketLog:
        """The tally of the WebSocket session this exchange's 101 response opened."""
        return WebSocketLog(
            client,
            server,
            target=self.target,
            request_at=self.request_at,
            request_end_at=self.request_end_at,
            response_at=self.response_at,
            compressed=compressed,
            max_frames=max_frames,
        )

    def exchange(
        self,
        client: str,
        server: str,
        protocol: str,
        *,
        stream_id: int | None = None,
        decrypted: bool = False,
    ) -> HttpExchange:
        """The finished record."""
        return HttpExchange(
            client=client,
            server=server,
            protocol=protocol,
            method=self.method,
            target=self.target,
            status=self.status,
            stream_id=stream_id,
            content_type=self.content_type,
            chunked=self.chunked,
            request_at_ns=self.request_at,
            request_end_at_ns=self.request_end_at,
            response_at_ns=self.response_at,
            headers_at_ns=self.headers_at,
            first_data_at_ns=self.first_data_at,
            response_end_at_ns=self.response_end_at,
            body_bytes=self.body_bytes,
            decrypted=decrypted,
        )


# ------------------------------------------------------------------ HTTP/1.x framing

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _PASS, _DEAD = range(
    9
)


class _HttpHalf:
    """Message framing of one direction of an HTTP/1.x (or SIP) connection."""

    __slots__ = ("buf", "conn", "is_request", "remaining", "started", "state")

    def __init__(self, conn: HttpParser, is_request: bool) -> None:
        self.conn = conn
        self.is_request = is_request
        self.state = _HEAD
        self.buf = bytearray()
        self.remaining = 0
        self.started = False

    def feed(self, data: bytes, ts: int) -> bytes | None:
        """Consume ``data``; returns the bytes left over after a protocol switch."""
        i = 0
        n = len(data)
        while i < n:
            st = self.state
            if st == _HEAD:
                if not self.started:
                    # Skip the blank lines allowed between messages.
                    while i < n and data[i] in b"\r\n":
                        i += 1
                    if i >= n:
                        break
                    self.started = True
                    self.conn.message_start(self.is_request, ts)
                old = len(self.buf)
                self.buf += data[i:]
                k = self.buf.find(b"\r\n\r\n", max(0, old - 3))
                if k < 0:
                    i = n
                    if len(self.buf) > MAX_HEAD:
                        self.state = _DEAD
                    break
                head = bytes(self.buf[:k])
                i += k + 4 - old
                self.buf.clear()
                self.started = False
                mode, length = self.conn.head_complete(self.is_request, head, ts)
                if mode == "switch":
                    self.state = _PASS
                    return data[i:]
                self._begin_body(mode, length, ts)
            elif st in (_BODY, _CHUNK_DATA):
                take = min(self.remaining, n - i)
                self.conn.body(self.is_request, take, ts)
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    if st == _BODY:
                        self.state = _HEAD
                        self.conn.message_end(self.is_request, ts)
                    else:  # the CRLF after a chunk's data
                        self.state = _CHUNK_CRLF
                        self.remaining = 2
            elif st == _CHUNK_SIZE:
                j = data.find(b"\n", i)
                if j < 0:
                    self.buf += data[i:]
                    i = n
                    if len(self.buf) > 4096:
                        self.state = _DEAD
                    break
                self.buf += data[i:j]
                i = j + 1
                line = bytes(self.buf).split(b";", 1)[0].strip()
                self.buf.clear()
                try:
                    size = int(line, 16)
                except ValueError:
                    self.state = _DEAD
                    break
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.state = _CHUNK_DATA
                    self.remaining = size
            elif st == _CHUNK_CRLF:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    self.state = _CHUNK_SIZE
            elif st == _TRAILERS:
                j = data.find(b"\n", i)
                if j < 0:
                    self.buf += data[i:]
                    i = n
                    if len(self.buf) > MAX_HEAD:
                        self.state = _DEAD
                    break
                line = bytes(self.buf + data[i:j]).strip()
                self.buf.clear()
                i = j + 1
                if not line:
                    self.state = _HEAD
                    self.conn.message_end(self.is_request, ts)
            elif st == _UNTIL_CLOSE:
                self.conn.body(self.is_request, n - i, ts)
                i = n
            else:  # _PASS or _DEAD
                break
        return None

    def _begin_body(self, mode: str, length: int, ts: int) -> None:
        if mode == "length" and length > 0:
            self.state = _BODY
            self.remaining = length
        elif mode == "chunked":
            self.state = _CHUNK_SIZE
        elif mode == "close":
            self.state = _UNTIL_CLOSE
        else:
            self.state = _HEAD
            self.conn.message_end(self.is_request, ts)


class HttpParser(StreamParser):
    """HTTP/1.x on one connection; hands over to WebSocket or HTTP/2 on a 101."""

    def __init__(
        self,
        client: str,
        server: str,
        switch: Callable[[StreamParser], None],
        *,
        protocol: str = "HTTP/1.1",
        decrypted: bool = False,
    ) -> None:
        self.client = client
        self.server = server
        self.protocol = protocol
        self.decrypted = decrypted
        self._switch = switch
        self.c = _HttpHalf(self, True)
        self.s = _HttpHalf(self, False)
        self.pending: deque[PendingExchange] = deque()
        self.sending: PendingExchange | None = None
        self.answering: PendingExchange | None = None
        self.all: list[PendingExchange] = []
        self.next_parser: StreamParser | None = None

    # -- callbacks from the halves
    def message_start(self, is_request: bool, ts: int) -> None:
        if is_request:
            self.sending = PendingExchange(request_at=ts)
            self.pending.append(self.sending)
            self.all.append(self.sending)
        else:
            ex = self.answering
            if ex is None:
                ex = self.pending[0] if self.pending else None
                self.answering = ex
            if ex is not None and ex.response_at is None:
                ex.response_at = ts

    def head_complete(self, is_request: bool, head: bytes, ts: int) -> tuple[str, int]:
        start, headers = parse_headers(head)
        te = headers.get("transfer-encoding", "").lower()
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = 0
        if is_request:
            ex = self.sending
            if ex is not None:
                parts = start.split(" ")
                ex.method = parts[0] if parts else None
                ex.target = parts[1] if len(parts) > 1 else None
                up = headers.get("upgrade", "").lower()
                ex.upgrade = up or None
                ex.ws_extensions = headers.get("sec-websocket-extensions", "")
            if "chunked" in te:
                return "chunked", 0
            return ("length", length) if length else ("none", 0)
        ex = self.answering
        parts = start.split(" ", 2)
        try:
            status = int(parts[1]) if len(parts) > 1 else None
        except ValueError:
            status = None
        if ex is None:
            return (
                ("chunked", 0)
                if "chunked" in te
                else (("length", length) if length else ("close", 0))
            )
        if status is not None and 100 <= status < 200 and status != 101:
            # An interim response: the final one follows; time the final one.
            ex.response_at = None
            return "none", 0
        ex.status = status
        ex.headers_at = ts
        ex.content_type = headers.get("content-type")
        if status == 101 and ex.upgrade:
            ex.response_end_at = ts
            self._upgrade(ex, headers, ts)
            return "switch", 0
        if ex.method == "HEAD" or status in (204, 304):
            return "none", 0
        if "chunked" in te:
            ex.chunked = True
            return "chunked", 0
        if "content-length" in headers:
            return ("length", length) if length else ("none", 0)
        return "close", 0

    def body(self, is_request: bool, n: int, ts: int) -> None:
        if is_request or n <= 0:
            return
        ex = self.answering
        if ex is not None:
            ex.data(n, ts)

    def message_end(self, is_request: bool, ts: int) -> None:
        if is_request:
            if self.sending is not None:
                self.sending.request_end_at = ts
                self.sending = None
            return
        ex = self.answering
        if ex is None:
            return
        if ex.response_at is None:  # an interim 1xx ended
            return
        ex.response_end_at = ts
        self.answering = None
        if self.pending and self.pending[0] is ex:
            self.pending.popleft()

    def _upgrade(self, ex: PendingExchange, headers: dict[str, str], ts: int) -> None:
        if self.pending and self.pending[0] is ex:
            self.pending.popleft()
        self.answering = None
        up = (ex.upgrade or "").lower()
        if up == "websocket":
            # Negotiated only if the server's 101 accepts the extension.
            compressed = "permessage-deflate" in headers.get("sec-websocket-extensions", "").lower()
            log = ex.websocket_log(self.client, self.server, compressed=compressed)
            self.next_parser = WebSocketParser(log)
        elif up == "h2c":
            h2 = Http2Parser(self.client, self.server, protocol="h2c", expect_preface=True)
            h2.upgraded_request(ex)
            self.next_parser = h2
        else:
            self.next_parser = OpaqueParser()
        self._switch(self.next_parser)

    # -- StreamParser
    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        half = self.c if from_client else self.s
        rest = half.feed(data, ts)
        if rest and self.next_parser is not None:
            self.next_parser.feed(from_client, rest, ts)

    def gap(self, from_client: bool) -> None:
        self.lost_sync = True
        (self.c if from_client else self.s).state = _DEAD

    def close(self, from_client: bool, ts: int) -> None:
        if not from_client and self.s.state == _UNTIL_CLOSE:
            self.s.state = _DEAD
            self.message_end(False, ts)

    def finish(self, sink: Results) -> None:
        for ex in self.all:
            if ex.method is None:
                continue
            if len(sink.http) >= sink.max_exchanges:
                sink.dropped_exchanges += 1
                continue
            sink.http.append(
                ex.exchange(self.client, self.server, self.protocol, decrypted=self.decrypted)
            )


# ------------------------------------------------------------------------ HTTP/2 (h2c)

_H2_STATUS = {0x88: 200, 0x89: 204, 0x8A: 206, 0x8B: 304, 0x8C: 400, 0x8D: 404, 0x8E: 500}
_H2_METHOD = {0x82: "GET", 0x83: "POST"}


class Http2Parser(StreamParser):
    """Cleartext HTTP/2 frames: per stream, request, response headers, data, end."""

    def __init__(
        self, client: str, server: str, *, protocol: str = "h2c", expect_preface: bool = True
    ) -> None:
        self.client = client
        self.server = server
        self.protocol = protocol
        self.preface_left = len(H2_PREFACE) if expect_preface else 0
        self.bufs = (bytearray(), bytearray())  # [0] server, [1] client
        self.skip = [0, 0]
        self.streams: dict[int, PendingExchange] = {}
        self.order: list[int] = []

    def upgraded_request(self, ex: PendingExchange) -> None:
        """Stream 1 is the HTTP/1.1 request that asked for the upgrade (RFC 7540 3.2)."""
        p = PendingExchange(request_at=ex.request_at, method=ex.method, target=ex.target)
        p.request_end_at = ex.request_end_at
        self.streams[1] = p
        self.order.append(1)

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        if self.lost_sync:
            return
        side = 1 if from_client else 0
        if from_client and self.preface_left:
            take = min(self.preface_left, len(data))
            self.preface_left -= take
            data = data[take:]
        buf = self.bufs[side]
        buf += data
        while len(buf) >= 9:
            ln = (buf[0] << 16) | (buf[1] << 8) | buf[2]
            if len(buf) < 9 + ln:
                break
            ftype, flags = buf[3], buf[4]
            sid = struct.unpack_from("!I", buf, 5)[0] & 0x7FFFFFFF
            payload_first = buf[9] if ln else -1
            if ftype == 1:
                # Padding and priority fields come before the header block.
                hb = 9 + (1 if flags & 0x08 else 0) + (5 if flags & 0x20 else 0)
                payload_first = buf[hb] if hb < 9 + ln else -1
            del buf[: 9 + ln]
            self._frame(from_client, ftype, flags, sid, ln, payload_first, ts)

    def _frame(
        self, from_client: bool, ftype: int, flags: int, sid: int, ln: int, first: int, ts: int
    ) -> None:
        if sid == 0 or ftype not in (0, 1):
            return
        ex = self.streams.get(sid)
        end_stream = bool(flags & 0x01)
        if from_client:
            if ex is None:
                ex = PendingExchange(request_at=ts, method=_H2_METHOD.get(first))
                self.streams[sid] = ex
                self.order.append(sid)
            if end_stream:
                ex.request_end_at = ts
            return
        if ex is None:
            return
        if ex.h2_response_frame(ftype == 1, ln, end_stream, ts):
            ex.status = _H2_STATUS.get(first)

    def finish(self, sink: Results) -> None:
        for sid in self.order:
            ex = self.streams[sid]
            sink.http.append(ex.exchange(self.client, self.server, self.protocol, stream_id=sid))
