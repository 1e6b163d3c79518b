"""STUN transactions and DTLS handshakes, read from UDP payloads (RFC 5389, RFC 6347)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from voiceaudit.capture.model import StunTransaction, TlsHandshake
from voiceaudit.capture.tls import Hellos, server_hello_version

#: An endpoint: (packed address, port).
Key = tuple[bytes, int]
#: Names an endpoint: (packed address, port) -> "addr:port".
Endpoint = Callable[[bytes, int], str]

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


class StunTracker:
    """STUN transactions, each request paired with its first response."""

    def __init__(self, endpoint: Endpoint, max_transactions: int = 100_000) -> None:
        self.endpoint = endpoint
        self.txns: dict[bytes, StunTransaction] = {}
        self.order: list[bytes] = []
        self.max = max_transactions
        self.dropped = 0

    def packet(self, ts: int, payload: bytes, src_key: Key, dst_key: Key) -> bool:
        """Read one UDP payload; True if it was a STUN message."""
        buf, off, length = payload, 0, len(payload)
        if length < 20 or buf[off] & 0xC0:
            return False
        mtype, mlen, magic = struct.unpack_from("!HHI", buf, off)
        if magic != STUN_MAGIC or mlen + 20 > length or mlen % 4:
            return False
        method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
        cls = ((mtype & 0x0100) >> 7) | ((mtype & 0x0010) >> 4)
        txid = bytes(buf[off + 8 : off + 20])
        t = self.txns.get(txid)
        if cls == 0:  # request
            if t is not None:
                self.txns[txid] = dataclasses.replace(t, retransmits=t.retransmits + 1)
            elif len(self.order) < self.max:
                self.txns[txid] = StunTransaction(
                    self.endpoint(*src_key),
                    self.endpoint(*dst_key),
                    STUN_METHODS.get(method, f"0x{method:03x}"),
                    request_at_ns=ts,
                    response_at_ns=None,
                    rtt_ns=None,
                    success=None,
                    retransmits=0,
                )
                self.order.append(txid)
            else:
                self.dropped += 1
        elif cls in (2, 3) and t is not None and t.response_at_ns is None:
            self.txns[txid] = dataclasses.replace(
                t, response_at_ns=ts, rtt_ns=ts - t.request_at_ns, success=cls == 2
            )
        return True

    def finish(self) -> list[StunTransaction]:
        """The transactions, in the order their requests were first seen."""
        return [self.txns[txid] for txid in self.order]


class DtlsTracker:
    """DTLS handshakes: hellos in the clear, then each side's first encrypted record."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        #: (lower endpoint, higher endpoint) -> the handshake, its client's endpoint
        self.sessions: dict[tuple[Key, Key], tuple[Hellos, Key]] = {}
        self.order: list[Hellos] = []

    def packet(self, ts: int, payload: bytes, src_key: Key, dst_key: Key) -> bool:
        """Read one UDP payload; True if it held DTLS records."""
        buf, off, length = payload, 0, len(payload)
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
                        hello = Hellos(self.endpoint(*src_key), self.endpoint(*dst_key))
                        hello.client_hello(ts, hbody)
                        sess = (hello, src_key)
                        self.sessions[key] = sess
                        self.order.append(hello)
                elif sess is not None and mtype == 3:
                    sess[0].retry = True
                elif sess is not None and mtype == 2 and sess[0].server_hello_at is None:
                    sess[0].server_hello_at = ts
                    if hbody:
                        sess[0].version = server_hello_version(hbody)[0]
            elif rtype == 22 and epoch >= 1 and sess is not None:
                finished = sess[0].finished
                side = 1 if src_key == sess[1] else 0
                if finished[side] is None:
                    finished[side] = ts
            p = body + rlen
        return seen

    def finish(self) -> list[TlsHandshake]:
        """The handshakes, in the order their ClientHellos were seen."""
        return [hello.record("udp", hello.both_finished()) for hello in self.order]
