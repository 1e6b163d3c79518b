"""Build synthetic captures: Ethernet/IPv4 packets for RTP, SIP/SDP, TCP, HTTP and
WebSocket traffic with exact, known timing.

Used by the benchmark (a capture of any size) and by the tests (edge cases checked
against TShark). Every packet is well formed (checksums included), so Wireshark reads
these files as it reads real ones.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass, field

from voiceaudit.capture.pcapfile import (
    LINKTYPE_ETHERNET,
    PcapngWriter,
    write_pcap_header,
    write_pcap_record,
)

_ETH_HDR = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _ip4(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def ipv4_packet(src: str, dst: str, proto: int, l4: bytes, ident: int = 0) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        ident & 0xFFFF,
        0x4000,
        64,
        proto,
        0,
        _ip4(src),
        _ip4(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + l4


def udp_datagram(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An Ethernet frame carrying one UDP datagram (UDP checksum left at 0: allowed)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _ETH_HDR + ipv4_packet(src, dst, 17, udp)


def tcp_segment(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    win: int = 65535,
    mss: int | None = None,
) -> bytes:
    """An Ethernet frame carrying one TCP segment, checksum included."""
    opts = struct.pack("!BBH", 2, 4, mss) if mss is not None else b""
    doff = (20 + len(opts)) // 4
    hdr = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            doff << 4,
            flags,
            win,
            0,
            0,
        )
        + opts
    )
    pseudo = _ip4(src) + _ip4(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    c = _csum(pseudo + hdr + payload)
    hdr = hdr[:16] + struct.pack("!H", c) + hdr[18:]
    return _ETH_HDR + ipv4_packet(src, dst, 6, hdr + payload)


def rtp_packet(
    seq: int,
    timestamp: int,
    ssrc: int,
    pt: int,
    *,
    marker: bool = False,
    payload: bytes = b"\xd5" * 160,
) -> bytes:
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
        )
        + payload
    )


def sip_invite(
    *,
    call_id: str,
    from_host: str,
    to_host: str,
    media_addr: str,
    media_port: int,
    payload_types: tuple[int, ...] = (8,),
    rtpmap: dict[int, str] | None = None,
    response: bool = False,
) -> bytes:
    """A SIP INVITE (or its 200 OK) whose SDP offers audio at ``media_addr:media_port``."""
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {media_addr}",
        "s=-",
        f"c=IN IP4 {media_addr}",
        "t=0 0",
        f"m=audio {media_port} RTP/AVP {' '.join(str(p) for p in payload_types)}",
    ]
    for pt, enc in (rtpmap or {}).items():
        lines.append(f"a=rtpmap:{pt} {enc}")
    sdp = ("\r\n".join(lines) + "\r\n").encode()
    start = "SIP/2.0 200 OK" if response else f"INVITE sip:bob@{to_host} SIP/2.0"
    branch = zlib.crc32(call_id.encode())
    head = (
        f"{start}\r\nVia: SIP/2.0/UDP {from_host}:5060;branch=z9hG4bK{branch}\r\n"
        f"From: <sip:alice@{from_host}>;tag=1\r\nTo: <sip:bob@{to_host}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{from_host}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    )
    return head.encode() + sdp


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One WebSocket frame (masked when ``mask`` is given, as a client must)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is not None:
        key = mask * (n // 4 + 1)
        payload = bytes(a ^ b for a, b in zip(payload, key, strict=False))
        hdr += mask
    return hdr + payload


@dataclass
class TcpFlow:
    """One TCP connection: tracks sequence numbers so segments can be written in order."""

    builder: CaptureBuilder
    client: str
    cport: int
    server: str
    sport: int
    cseq: int = 1000
    sseq: int = 5000
    mss: int = 1460

    def segment(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        ack: int | None = None,
        mss: int | None = None,
    ) -> bytes:
        """A segment from the client (or the server) at the flow's sequence numbers; ``ack``
        overrides the acknowledgement number (the peer's next sequence number)."""
        client = (self.client, self.cport, self.cseq)
        server = (self.server, self.sport, self.sseq)
        (src, sport, seq), (dst, dport, peer) = (
            (client, server) if from_client else (server, client)
        )
        return tcp_segment(
            src, sport, dst, dport, seq, peer if ack is None else ack, flags, payload, mss=mss
        )

    def handshake(self, t_syn: int, t_synack: int, t_ack: int) -> None:
        b = self.builder
        b.add(t_syn, self.segment(True, 0x02, ack=0, mss=self.mss))
        b.add(t_synack, self.segment(False, 0x12, ack=self.cseq + 1, mss=self.mss))
        self.cseq += 1
        self.sseq += 1
        b.add(t_ack, self.ack_segment(True))

    def ack_segment(self, from_client: bool) -> bytes:
        return self.segment(from_client, 0x10)

    def send(self, t: int, from_client: bool, data: bytes, *, ack_at: int | None = None) -> None:
        """Data in one segment (or several, cut at the MSS), acknowledged at ``ack_at``."""
        b = self.builder
        for i in range(0, max(1, len(data)), self.mss):
            chunk = data[i : i + self.mss]
            b.add(t, self.segment(from_client, 0x18, chunk))
            if from_client:
                self.cseq += len(chunk)
            else:
                self.sseq += len(chunk)
        if ack_at is not None:
            b.add(ack_at, self.ack_segment(not from_client))

    def close(self, t: int) -> None:
        b = self.builder
        b.add(t, self.segment(True, 0x11))
        self.cseq += 1
        b.add(t + 50_000, self.segment(False, 0x11))
        self.sseq += 1
        b.add(t + 100_000, self.ack_segment(True))


@dataclass
class CaptureBuilder:
    """Collects packets with their times, then writes them in time order."""

    packets: list[tuple[int, int, bytes]] = field(default_factory=list)

    def add(self, ts_ns: int, frame: bytes) -> None:
        self.packets.append((ts_ns, len(self.packets), frame))

    def flow(self, client: str, cport: int, server: str, sport: int, **kw: int) -> TcpFlow:
        return TcpFlow(self, client, cport, server, sport, **kw)

    def write(
        self, path: str | os.PathLike[str], *, fmt: str = "pcapng", keep_order: bool = False
    ) -> int:
        pkts = self.packets if keep_order else sorted(self.packets)
        with open(path, "wb") as f:
            if fmt == "pcapng":
                w = PcapngWriter(f)
                for ts, _i, data in pkts:
                    w.write(ts, data, linktype=LINKTYPE_ETHERNET)
            else:
                nano = fmt == "pcap-ns"
                write_pcap_header(f, LINKTYPE_ETHERNET, nano=nano)
                for ts, _i, data in pkts:
                    write_pcap_record(f, ts, data, nano=nano)
        return len(pkts)
