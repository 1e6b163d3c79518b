"""TLS handshakes read from a TCP byte stream (record layer and cleartext handshake
messages, until the handshake is done), and the hello parsing DTLS shares
(:mod:`voiceaudit.capture.udp`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from voiceaudit.capture.model import TlsHandshake
from voiceaudit.capture.streams import Results, StreamParser

TLS_VERSIONS = {
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


@dataclass(slots=True)
class Hellos:
    """What a TLS or DTLS handshake's hellos said, and when (``None``: not seen)."""

    client: str
    server: str
    client_hello_at: int | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    server_hello_at: int | None = None
    version: int | None = None
    #: A HelloRetryRequest (TLS 1.3) or HelloVerifyRequest (DTLS) was sent.
    retry: bool = False
    #: When each side's Finished (its first encrypted handshake record) was seen:
    #: [server, client].
    finished: list[int | None] = field(default_factory=lambda: [None, None])

    def both_finished(self) -> int | None:
        """The later of the two Finished messages, once both were seen."""
        server, client = self.finished
        return None if server is None or client is None else max(server, client)

    def client_hello(self, ts: int, body: bytes) -> None:
        """The ClientHello began at ``ts``; ``body`` is its body (empty: not read)."""
        self.client_hello_at = ts
        if body:
            self.sni, self.alpn = parse_client_hello(body)

    def record(self, transport: str, done_at: int | None) -> TlsHandshake:
        """The handshake record (once the ClientHello was seen), done at ``done_at``."""
        ch = self.client_hello_at
        assert ch is not None
        sh = self.server_hello_at
        version = self.version
        return TlsHandshake(
            transport=transport,
            client=self.client,
            server=self.server,
            version=None if version is None else TLS_VERSIONS.get(version, hex(version)),
            sni=self.sni,
            alpn=self.alpn,
            client_hello_at_ns=ch,
            server_hello_at_ns=sh,
            done_at_ns=done_at,
            server_hello_ns=None if sh is None else sh - ch,
            handshake_ns=None if done_at is None else done_at - ch,
            hello_retry=self.retry,
        )


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
        self.hello = Hellos(client, server)
        self.halves = (_TlsHalf(), _TlsHalf())  # [0] server, [1] client
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
        hello = self.hello
        tls13 = hello.version == 0x0304
        if rtype == 20:
            h.ccs = True
            return
        if rtype == 22 and not h.ccs and not (tls13 and side == 0 and hello.server_hello_at):
            h.hs_buf += chunk
            self._handshake_messages(side, h)
            return
        if last and rtype in (22, 23):
            # An encrypted handshake record (Finished, or TLS 1.3's encrypted flight).
            finished = hello.finished
            if tls13:
                if side == 1 and hello.server_hello_at is not None and finished[1] is None:
                    finished[1] = ts
                    self.done_at = ts
            elif h.ccs and finished[side] is None:
                finished[side] = ts
                self.done_at = hello.both_finished()

    def _handshake_messages(self, side: int, h: _TlsHalf) -> None:
        buf = h.hs_buf
        hello = self.hello
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
                if hello.client_hello_at is None:
                    hello.client_hello(h.rec_start, body)
            elif side == 0 and mtype == 2:
                version, hrr = server_hello_version(body)
                if hrr:
                    hello.retry = True
                elif hello.server_hello_at is None:
                    hello.server_hello_at = h.rec_start
                    hello.version = version

    def finish(self, sink: Results) -> None:
        if self.hello.client_hello_at is not None:
            sink.tls.append(self.hello.record("tcp", self.done_at))
