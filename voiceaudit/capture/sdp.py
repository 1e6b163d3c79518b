"""SDP bodies carried by SIP and MGCP: which UDP endpoints carry RTP, and the clock
rate of each dynamic payload type (``a=rtpmap``). SIP over UDP is read per datagram
(:func:`sdp_bodies`), SIP over TCP as a byte stream (:class:`SipTcpParser`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from voiceaudit.capture.streams import MAX_HEAD, SIP_STARTS, Results, StreamParser, parse_headers

_SIP_PORTS = frozenset({5060, 5061})
_MGCP_PORTS = frozenset({2427, 2727})


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One ``m=`` line: RTP expected at ``addr``:``port``."""

    addr: bytes  # packed IPv4 (4 bytes) or IPv6 (16 bytes)
    port: int
    media: str
    proto: str
    payload_types: tuple[int, ...]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)


def _packed(addr: str) -> bytes | None:
    try:
        return ipaddress.ip_address(addr.strip()).packed
    except ValueError:
        return None


@dataclass(slots=True)
class _Media:
    media: str
    port: int
    proto: str
    pts: list[int]
    addr: bytes | None = None
    has_addr: bool = False
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)


def parse_sdp(body: bytes) -> list[SdpMedia]:
    """The RTP media of an SDP body (media with port 0 or no usable address are left out)."""
    text = body.decode("latin-1", "replace")
    session_addr: bytes | None = None
    medias: list[_Media] = []
    cur: _Media | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "c":
            parts = value.split()
            addr = _packed(parts[2].split("/")[0]) if len(parts) >= 3 else None
            if cur is None:
                session_addr = addr
            else:
                cur.addr = addr
                cur.has_addr = True
        elif kind == "m":
            parts = value.split()
            if len(parts) < 3:
                cur = None
                continue
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                port = 0
            pts = [int(p) for p in parts[3:] if p.isdigit()]
            cur = _Media(parts[0], port, parts[2], pts)
            medias.append(cur)
        elif kind == "a" and cur is not None and value.startswith("rtpmap:"):
            pt_s, _, enc = value[7:].partition(" ")
            try:
                pt = int(pt_s)
            except ValueError:
                continue
            name, _, rest = enc.strip().partition("/")
            rate_s = rest.split("/")[0]
            cur.rtpmap[pt] = (name, int(rate_s) if rate_s.isdigit() else 0)
    out: list[SdpMedia] = []
    for m in medias:
        addr = m.addr if m.has_addr else session_addr
        if addr is None or m.port == 0 or "RTP" not in m.proto.upper():
            continue
        out.append(SdpMedia(addr, m.port, m.media, m.proto, tuple(m.pts), dict(m.rtpmap)))
    return out


def _split(msg: bytes) -> tuple[bytes, bytes] | None:
    k = msg.find(b"\r\n\r\n")
    if k >= 0:
        return msg[:k], msg[k + 4 :]
    k = msg.find(b"\n\n")
    if k >= 0:
        return msg[:k], msg[k + 2 :]
    return None


def _sdp_in_body(head: bytes, body: bytes) -> bytes | None:
    low = head.lower()
    if b"application/sdp" not in low:
        return None
    if b"multipart" in low:
        k = body.find(b"v=0")
        if k < 0:
            return None
        end = body.find(b"\r\n--", k)
        return body[k : end if end > 0 else len(body)]
    return body


def sdp_bodies(payload: bytes, sport: int, dport: int) -> list[bytes]:
    """SDP bodies in one UDP payload if it is a SIP or MGCP message, else nothing."""
    is_sip = sport in _SIP_PORTS or dport in _SIP_PORTS or payload.startswith(SIP_STARTS)
    is_mgcp = sport in _MGCP_PORTS or dport in _MGCP_PORTS
    if not (is_sip or is_mgcp):
        return []
    parts = _split(payload)
    if parts is None:
        return []
    head, body = parts
    if is_sip and (payload.startswith(SIP_STARTS)):
        sdp = _sdp_in_body(head, body)
        return [sdp] if sdp else []
    if is_mgcp and body.lstrip().startswith(b"v=0"):
        return [body.lstrip()]
    return []


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
                if len(buf) > MAX_HEAD:
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
