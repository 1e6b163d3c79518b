"""Application protocols read from reassembled TCP byte streams, timed per segment.

Each parser is fed ``(from_client, bytes, ts_ns)`` in stream order and keeps only what it
needs to find message boundaries (a header being read, a count of body bytes still to
skip), so memory stays small however long the connection. A byte's time is the time of
the segment that carried it: "first byte" marks use the segment with the first byte,
"complete" marks the segment with the last one, as Wireshark does.

Covered: HTTP/1.x (requests, responses, chunked and streaming bodies, Upgrade), WebSocket
(RFC 6455 frames, several per segment, masked or not), TLS records and handshake
messages, cleartext HTTP/2 (h2c / prior knowledge) and SIP over TCP (for SDP).
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from voiceaudit.capture.model import HttpExchange, TlsHandshake, WebSocketFrame, WebSocketSession

_MAX_HEAD = 64 * 1024
_HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)
_SIP_STARTS = (
    b"INVITE ",
    b"ACK ",
    b"BYE ",
    b"CANCEL ",
    b"REGISTER ",
    b"OPTIONS ",
    b"PRACK ",
    b"SUBSCRIBE ",
    b"NOTIFY ",
    b"PUBLISH ",
    b"INFO ",
    b"REFER ",
    b"MESSAGE ",
    b"UPDATE ",
    b"SIP/2.0 ",
)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EVENT_RE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,100})"')


def sniff(first: bytes, from_client: bool) -> str | None:
    """Name the protocol a stream speaks from its first bytes (``None``: unknown yet/never)."""
    if from_client:
        if len(first) >= 3 and first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04:
            return "tls"
        if first.startswith(b"PRI * HTTP/2.0"):
            return "http2"
        if first.startswith(_HTTP_METHODS):
            return "http"
    if first.startswith(_SIP_STARTS):
        return "sip"
    return None


def parse_headers(head: bytes) -> tuple[str, dict[str, str]]:
    """Start line and lower-cased headers of an HTTP or SIP head (last value wins)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


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
                    if len(self.buf) > _MAX_HEAD:
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
            elif st == _BODY:
                take = min(self.remaining, n - i)
                self.conn.body(self.is_request, take, ts)
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    self.state = _HEAD
                    self.conn.message_end(self.is_request, ts)
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
            elif st == _CHUNK_DATA:
                take = min(self.remaining, n - i)
                self.conn.body(self.is_request, take, ts)
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF
                    self.remaining = 2
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
                    if len(self.buf) > _MAX_HEAD:
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


@dataclass(slots=True)
class _Pending:
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


class StreamParser:
    """Base of the per-connection application parsers."""

    lost_sync = False

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        raise NotImplementedError

    def gap(self, from_client: bool) -> None:
        self.lost_sync = True

    def close(self, from_client: bool, ts: int) -> None:
        """The ``from_client`` side sent FIN or RST at ``ts``."""

    def finish(self, sink: Results) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class Results:
    """Where the parsers put what they found (shared across all connections)."""

    http: list[HttpExchange] = field(default_factory=list)
    websocket: list[WebSocketSession] = field(default_factory=list)
    tls: list[TlsHandshake] = field(default_factory=list)
    max_frames: int = 10_000
    max_exchanges: int = 100_000
    dropped_exchanges: int = 0


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
        self.pending: deque[_Pending] = deque()
        self.sending: _Pending | None = None
        self.answering: _Pending | None = None
        self.all: list[_Pending] = []
        self.next_parser: StreamParser | None = None

    # -- callbacks from the halves
    def message_start(self, is_request: bool, ts: int) -> None:
        if is_request:
            self.sending = _Pending(request_at=ts)
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
            if ex.first_data_at is None:
                ex.first_data_at = ts
            ex.body_bytes += n

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

    def _upgrade(self, ex: _Pending, headers: dict[str, str], ts: int) -> None:
        if self.pending and self.pending[0] is ex:
            self.pending.popleft()
        self.answering = None
        up = (ex.upgrade or "").lower()
        if up == "websocket":
            # Negotiated only if the server's 101 accepts the extension.
            compressed = "permessage-deflate" in headers.get("sec-websocket-extensions", "").lower()
            self.next_parser = WebSocketParser(
                self.client,
                self.server,
                target=ex.target,
                request_at=ex.request_at,
                request_end_at=ex.request_end_at,
                response_at=ex.response_at,
                compressed=compressed,
            )
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
                HttpExchange(
                    client=self.client,
                    server=self.server,
                    protocol=self.protocol,
                    method=ex.method,
                    target=ex.target,
                    status=ex.status,
                    stream_id=None,
                    content_type=ex.content_type,
                    chunked=ex.chunked,
                    request_at_ns=ex.request_at,
                    request_end_at_ns=ex.request_end_at,
                    response_at_ns=ex.response_at,
                    headers_at_ns=ex.headers_at,
                    first_data_at_ns=ex.first_data_at,
                    response_end_at_ns=ex.response_end_at,
                    body_bytes=ex.body_bytes,
                    decrypted=self.decrypted,
                )
            )


class OpaqueParser(StreamParser):
    """A stream we do not read (after an unknown Upgrade, or an unknown protocol)."""

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        return

    def finish(self, sink: Results) -> None:
        return


# ------------------------------------------------------------------------- WebSocket


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
    """RFC 6455 frames in both directions after an HTTP Upgrade."""

    def __init__(
        self,
        client: str,
        server: str,
        *,
        target: str | None,
        request_at: int,
        request_end_at: int | None,
        response_at: int | None,
        compressed: bool,
    ) -> None:
        self.client = client
        self.server = server
        self.target = target
        self.request_at = request_at
        self.request_end_at = request_end_at
        self.response_at = response_at
        self.compressed = compressed
        self.halves = (_WsHalf(), _WsHalf())  # [0]: from server, [1]: from client
        self.frames: list[WebSocketFrame] = []
        self.frames_total = 0
        self.max_frames = 10_000
        self.ops_c: dict[int, int] = {}
        self.ops_s: dict[int, int] = {}
        self.bytes_c = 0
        self.bytes_s = 0
        self.first_server_data: int | None = None
        self.close_at: int | None = None

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
        op = h.opcode
        self.frames_total += 1
        if from_client:
            self.ops_c[op] = self.ops_c.get(op, 0) + 1
            self.bytes_c += h.payload_len
        else:
            self.ops_s[op] = self.ops_s.get(op, 0) + 1
            self.bytes_s += h.payload_len
            if self.first_server_data is None and op in (0, 1, 2):
                self.first_server_data = ts
        if op == 8 and self.close_at is None:
            self.close_at = ts
        if len(self.frames) < self.max_frames:
            event = None
            if h.event_buf:
                raw = bytes(h.event_buf)
                if h.masked and h.key:
                    key = h.key * (len(raw) // 4 + 1)
                    raw = bytes(a ^ b for a, b in zip(raw, key, strict=False))
                m = _EVENT_RE.search(raw)
                if m:
                    event = m.group(1).decode("utf-8", "replace")
            self.frames.append(
                WebSocketFrame(
                    at_ns=ts,
                    start_at_ns=h.start,
                    from_client=from_client,
                    opcode=op,
                    fin=h.fin,
                    rsv1=h.rsv1,
                    masked=h.masked,
                    payload_len=h.payload_len,
                    event=event,
                )
            )
        h.remaining = -1
        h.event_buf = None

    def finish(self, sink: Results) -> None:
        upgrade_ns = None
        if self.response_at is not None:
            base = self.request_end_at if self.request_end_at is not None else self.request_at
            upgrade_ns = self.response_at - base
        sink.websocket.append(
            WebSocketSession(
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
                lost_sync=self.lost_sync,
            )
        )


# ------------------------------------------------------------------------------- TLS

_TLS_VERSIONS = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
    0xFEFF: "DTLS 1.0",
    0xFEFD: "DTLS 1.2",
    0xFEFC: "DTLS 1.3",
}
#: ServerHello.random of a TLS 1.3 HelloRetryRequest (RFC 8446 4.1.3).
_HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def _hello_extensions(body: bytes, client: bool) -> dict[int, bytes]:
    """Extensions of a ClientHello / ServerHello body (empty on anything malformed)."""
    try:
        p = 2 + 32
        sid = body[p]
        p += 1 + sid
        if client:
            if body[:2] in (b"\xfe\xff", b"\xfe\xfd", b"\xfe\xfc"):  # DTLS cookie
                p += 1 + body[p]
            cs = struct.unpack_from("!H", body, p)[0]
            p += 2 + cs
            p += 1 + body[p]
        else:
            p += 2 + 1
        if p + 2 > len(body):
            return {}
        total = struct.unpack_from("!H", body, p)[0]
        p += 2
        end = min(len(body), p + total)
        out: dict[int, bytes] = {}
        while p + 4 <= end:
            et, el = struct.unpack_from("!HH", body, p)
            out[et] = body[p + 4 : p + 4 + el]
            p += 4 + el
        return out
    except (IndexError, struct.error):
        return {}


def parse_client_hello(body: bytes) -> tuple[str | None, tuple[str, ...]]:
    """SNI and ALPN protocols from a ClientHello body."""
    ext = _hello_extensions(body, True)
    sni = None
    alpn: list[str] = []
    try:
        if 0 in ext:
            e = ext[0]
            p = 2
            while p + 3 <= len(e):
                kind, ln = e[p], struct.unpack_from("!H", e, p + 1)[0]
                if kind == 0:
                    sni = e[p + 3 : p + 3 + ln].decode("ascii", "replace")
                    break
                p += 3 + ln
        if 16 in ext:
            e = ext[16]
            p = 2
            while p < len(e):
                ln = e[p]
                alpn.append(e[p + 1 : p + 1 + ln].decode("ascii", "replace"))
                p += 1 + ln
    except (IndexError, struct.error):
        pass
    return sni, tuple(alpn)


def server_hello_version(body: bytes) -> tuple[int, bool]:
    """Negotiated version of a ServerHello (supported_versions wins) and whether it is a
    HelloRetryRequest."""
    legacy = struct.unpack_from("!H", body, 0)[0] if len(body) >= 2 else 0
    hrr = body[2:34] == _HRR_RANDOM
    ext = _hello_extensions(body, False)
    sv = ext.get(43)
    if sv is not None and len(sv) >= 2:
        return struct.unpack_from("!H", sv, 0)[0], hrr
    return legacy, hrr


class _TlsHalf:
    __slots__ = ("body_left", "ccs", "hdr", "hs_buf", "rec_start", "rec_type")

    def __init__(self) -> None:
        self.hdr = bytearray()
        self.body_left = 0
        self.rec_type = 0
        self.rec_start = 0
        self.ccs = False
        self.hs_buf = bytearray()


class TlsParser(StreamParser):
    """TLS record layer and cleartext handshake messages, until the handshake is done."""

    def __init__(self, client: str, server: str) -> None:
        self.client = client
        self.server = server
        self.halves = (_TlsHalf(), _TlsHalf())  # [0] server, [1] client
        self.client_hello_at: int | None = None
        self.server_hello_at: int | None = None
        self.version: int | None = None
        self.sni: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.hrr = False
        self.fin_at: list[int | None] = [None, None]  # [server, client]
        self.done_at: int | None = None

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        if self.done_at is not None or self.lost_sync:
            return
        side = 1 if from_client else 0
        h = self.halves[side]
        i = 0
        n = len(data)
        while i < n and self.done_at is None:
            if h.body_left == 0:
                need = 5 - len(h.hdr)
                if not h.hdr:
                    h.rec_start = ts
                h.hdr += data[i : i + need]
                i += min(need, n - i)
                if len(h.hdr) < 5:
                    break
                rtype, _ver, ln = struct.unpack("!BHH", h.hdr)
                h.hdr.clear()
                if rtype not in (20, 21, 22, 23, 24) or ln > 18432:
                    self.lost_sync = True
                    return
                h.rec_type = rtype
                h.body_left = ln
                if ln == 0:
                    continue
            take = min(h.body_left, n - i)
            chunk = data[i : i + take]
            i += take
            h.body_left -= take
            self._record_bytes(side, h, chunk, h.body_left == 0, ts)

    def _record_bytes(self, side: int, h: _TlsHalf, chunk: bytes, last: bool, ts: int) -> None:
        rtype = h.rec_type
        tls13 = self.version == 0x0304
        if rtype == 20:
            h.ccs = True
            return
        if rtype == 22 and not h.ccs and not (tls13 and side == 0 and self.server_hello_at):
            h.hs_buf += chunk
            self._handshake_messages(side, h)
            return
        if last and rtype in (22, 23):
            # An encrypted handshake record (Finished, or TLS 1.3's encrypted flight).
            if tls13:
                if side == 1 and self.server_hello_at is not None and self.fin_at[1] is None:
                    self.fin_at[1] = ts
                    self.done_at = ts
            elif h.ccs and self.fin_at[side] is None:
                self.fin_at[side] = ts
                if self.fin_at[0] is not None and self.fin_at[1] is not None:
                    self.done_at = max(self.fin_at[0], self.fin_at[1])

    def _handshake_messages(self, side: int, h: _TlsHalf) -> None:
        buf = h.hs_buf
        while len(buf) >= 4:
            mtype = buf[0]
            mlen = (buf[1] << 16) | (buf[2] << 8) | buf[3]
            if mlen > 1 << 20:
                self.lost_sync = True
                return
            if len(buf) < 4 + mlen:
                return
            body = bytes(buf[4 : 4 + mlen])
            del buf[: 4 + mlen]
            if side == 1 and mtype == 1:
                if self.client_hello_at is None:
                    self.client_hello_at = h.rec_start
                    self.sni, self.alpn = parse_client_hello(body)
            elif side == 0 and mtype == 2:
                version, hrr = server_hello_version(body)
                if hrr:
                    self.hrr = True
                elif self.server_hello_at is None:
                    self.server_hello_at = h.rec_start
                    self.version = version

    def finish(self, sink: Results) -> None:
        if self.client_hello_at is None:
            return
        ch = self.client_hello_at
        sink.tls.append(
            TlsHandshake(
                transport="tcp",
                client=self.client,
                server=self.server,
                version=None
                if self.version is None
                else _TLS_VERSIONS.get(self.version, hex(self.version)),
                sni=self.sni,
                alpn=self.alpn,
                client_hello_at_ns=ch,
                server_hello_at_ns=self.server_hello_at,
                done_at_ns=self.done_at,
                server_hello_ns=None if self.server_hello_at is None else self.server_hello_at - ch,
                handshake_ns=None if self.done_at is None else self.done_at - ch,
                hello_retry=self.hrr,
            )
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
        self.streams: dict[int, _Pending] = {}
        self.order: list[int] = []

    def upgraded_request(self, ex: _Pending) -> None:
        """Stream 1 is the HTTP/1.1 request that asked for the upgrade (RFC 7540 3.2)."""
        p = _Pending(request_at=ex.request_at, method=ex.method, target=ex.target)
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
                ex = _Pending(request_at=ts, method=_H2_METHOD.get(first))
                self.streams[sid] = ex
                self.order.append(sid)
            if end_stream:
                ex.request_end_at = ts
            return
        if ex is None:
            return
        if ftype == 1:
            if ex.response_at is None:
                ex.response_at = ts
                ex.headers_at = ts
                ex.status = _H2_STATUS.get(first)
        elif ln > 0:
            if ex.first_data_at is None:
                ex.first_data_at = ts
            ex.body_bytes += ln
        if end_stream:
            ex.response_end_at = ts

    def finish(self, sink: Results) -> None:
        for sid in self.order:
            ex = self.streams[sid]
            sink.http.append(
                HttpExchange(
                    client=self.client,
                    server=self.server,
                    protocol=self.protocol,
                    method=ex.method,
                    target=ex.target,
                    status=ex.status,
                    stream_id=sid,
                    content_type=None,
                    chunked=False,
                    request_at_ns=ex.request_at,
                    request_end_at_ns=ex.request_end_at,
                    response_at_ns=ex.response_at,
                    headers_at_ns=ex.headers_at,
                    first_data_at_ns=ex.first_data_at,
                    response_end_at_ns=ex.response_end_at,
                    body_bytes=ex.body_bytes,
                )
            )


# ------------------------------------------------------------------------ SIP over TCP


class SipTcpParser(StreamParser):
    """SIP messages on a TCP stream, for the SDP bodies they carry."""

    def __init__(self, on_body: Callable[[bytes, int], None]) -> None:
        self.on_body = on_body
        self.bufs = (bytearray(), bytearray())

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        if self.lost_sync:
            return
        buf = self.bufs[1 if from_client else 0]
        buf += data
        while True:
            k = buf.find(b"\r\n\r\n")
            if k < 0:
                if len(buf) > _MAX_HEAD:
                    self.lost_sync = True
                return
            _start, headers = parse_headers(bytes(buf[:k]))
            try:
                length = int(headers.get("content-length", headers.get("l", "0")) or 0)
            except ValueError:
                length = 0
            if len(buf) < k + 4 + length:
                return
            body = bytes(buf[k + 4 : k + 4 + length])
            del buf[: k + 4 + length]
            if body:
                self.on_body(body, ts)

    def finish(self, sink: Results) -> None:
        return
