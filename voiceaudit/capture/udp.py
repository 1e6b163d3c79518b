"""STUN transactions and DTLS handshakes, read from UDP payloads (RFC 5389, RFC 6347)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from voiceaudit.capture.model import StunTransaction, TlsHandshake
from voiceaudit.capture.streams import _TLS_VERSIONS, parse_client_hello, server_hello_version

STUN_MAGIC = 0x2112A442
STUN_METHODS = {
    0x001: "Binding",
    0x003: "Allocate",
    0x004: "Refresh",
    0x006: "Send",
    0x007: "Data",
    0x008: "CreatePermission",
    0x009: "ChannelBind",
}


@dataclass(slots=True)
class _Txn:
    client: str
    server: str
    method: str
    request_at: int
    response_at: int | None = None
    success: bool | None = None
    retransmits: int = 0


class StunTracker:
    def __init__(self, max_transactions: int = 100_000) -> None:
        self.txns: dict[bytes, _Txn] = {}
        self.order: list[bytes] = []
        self.max = max_transactions
        self.dropped = 0

    def packet(self, ts: int, buf: bytes, off: int, length: int, src: str, dst: str) -> bool:
        """Read one UDP payload; True if it was a STUN message."""
        if length < 20 or buf[off] & 0xC0:
            return False
        mtype, mlen, magic = struct.unpack_from("!HHI", buf, off)
        if magic != STUN_MAGIC or mlen + 20 > length or mlen % 4:
            return False
        method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
        cls = ((mtype & 0x0100) >> 7) | ((mtype & 0x0010) >> 4)
        txid = bytes(buf[off + 8 : off + 20])
        if cls == 0:  # request
            t = self.txns.get(txid)
            if t is not None:
                t.retransmits += 1
            elif len(self.order) < self.max:
                self.txns[txid] = _Txn(src, dst, STUN_METHODS.get(method, f"0x{method:03x}"), ts)
                self.order.append(txid)
            else:
                self.dropped += 1
        elif cls in (2, 3):
            t = self.txns.get(txid)
            if t is not None and t.response_at is None:
                t.response_at = ts
                t.success = cls == 2
        return True

    def finish(self) -> list[StunTransaction]:
        out = []
        for txid in self.order:
            t = self.txns[txid]
            out.append(
                StunTransaction(
                    client=t.client,
                    server=t.server,
                    method=t.method,
                    request_at_ns=t.request_at,
                    response_at_ns=t.response_at,
                    rtt_ns=None if t.response_at is None else t.response_at - t.request_at,
                    success=t.success,
                    retransmits=t.retransmits,
                )
            )
        return out


@dataclass(slots=True)
class _Dtls:
    client: str
    server: str
    client_key: tuple[bytes, int]
    client_hello_at: int
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    server_hello_at: int | None = None
    version: int | None = None
    hello_verify: bool = False
    fin_client: int | None = None
    fin_server: int | None = None


class DtlsTracker:
    def __init__(self) -> None:
        self.sessions: dict[tuple[tuple[bytes, int], tuple[bytes, int]], _Dtls] = {}
        self.order: list[_Dtls] = []

    def packet(
        self,
        ts: int,
        buf: bytes,
        off: int,
        length: int,
        src_key: tuple[bytes, int],
        dst_key: tuple[bytes, int],
        src: str,
        dst: str,
    ) -> bool:
        """Read one UDP payload; True if it held DTLS records."""
        if length < 13 or buf[off + 1] != 0xFE:
            return False
        key = (src_key, dst_key) if src_key <= dst_key else (dst_key, src_key)
        sess = self.sessions.get(key)
        p = off
        end = off + length
        seen = False
        while p + 13 <= end:
            rtype = buf[p]
            if not 20 <= rtype <= 25 or buf[p + 1] != 0xFE:
                break
            epoch = (buf[p + 3] << 8) | buf[p + 4]
            rlen = (buf[p + 11] << 8) | buf[p + 12]
            body = p + 13
            if body + rlen > end:
                break
            seen = True
            if rtype == 22 and epoch == 0 and rlen >= 12:
                mtype = buf[body]
                frag_off = (buf[body + 6] << 16) | (buf[body + 7] << 8) | buf[body + 8]
                frag_len = (buf[body + 9] << 16) | (buf[body + 10] << 8) | buf[body + 11]
                hbody = bytes(buf[body + 12 : body + 12 + frag_len]) if frag_off == 0 else b""
                if mtype == 1:
                    if sess is None:
                        sess = _Dtls(src, dst, src_key, ts)
                        if hbody:
                            sess.sni, sess.alpn = parse_client_hello(hbody)
                        self.sessions[key] = sess
                        self.order.append(sess)
                elif sess is not None and mtype == 3:
                    sess.hello_verify = True
                elif sess is not None and mtype == 2 and sess.server_hello_at is None:
                    sess.server_hello_at = ts
                    if hbody:
                        sess.version = server_hello_version(hbody)[0]
            elif rtype == 22 and epoch >= 1 and sess is not None:
                if src_key == sess.client_key:
                    if sess.fin_client is None:
                        sess.fin_client = ts
                elif sess.fin_server is None:
                    sess.fin_server = ts
            p = body + rlen
        return seen

    def finish(self) -> list[TlsHandshake]:
        out = []
        for s in self.order:
            done = None
            if s.fin_client is not None and s.fin_server is not None:
                done = max(s.fin_client, s.fin_server)
            out.append(
                TlsHandshake(
                    transport="udp",
                    client=s.client,
                    server=s.server,
                    version=None
                    if s.version is None
                    else _TLS_VERSIONS.get(s.version, hex(s.version)),
                    sni=s.sni,
                    alpn=s.alpn,
                    client_hello_at_ns=s.client_hello_at,
                    server_hello_at_ns=s.server_hello_at,
                    done_at_ns=done,
                    server_hello_ns=None
                    if s.server_hello_at is None
                    else s.server_hello_at - s.client_hello_at,
                    handshake_ns=None if done is None else done - s.client_hello_at,
                    hello_retry=s.hello_verify,
                )
            )
        return out
