"""``analyze_capture``: one pass over a capture, every analysis at once.

The bulk work (link, IP, UDP and TCP headers, RTP headers, TCP state, HTTP/WebSocket/TLS
framing) is done here in Python straight from the file's bytes, well over 100,000
packets/s; TShark is run only for what only it can do (decrypting TLS with a key log),
and only on the packets of the TLS connections, written to a temporary capture.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from voiceaudit.capture.model import NetReport, RtpStream, TcpConnection
from voiceaudit.capture.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureReader,
    PcapngWriter,
)
from voiceaudit.capture.rtp import (
    Conversation,
    PayloadFormat,
    RtpStreamState,
    heuristic_accepts,
    payload_format,
)
from voiceaudit.capture.sdp import parse_sdp, sdp_bodies
from voiceaudit.capture.streams import Results
from voiceaudit.capture.tcp import StallParams, TcpTracker
from voiceaudit.capture.udp import DtlsTracker, StunTracker
from voiceaudit.capture.wsports import CLAIMING_UDP_PORTS
from voiceaudit.errors import CaptureError, UsageError

_RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})
_IPV6_EXT = frozenset({0, 43, 60, 51})
_SUPPORTED_DECODE_AS = {
    "udp": ("rtp", "stun", "dtls", "sip"),
    "tcp": ("tls", "ssl", "http", "websocket", "http2", "sip"),
}

#: Called with the number of packets read so far (after each block of the file).
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class DecodeAs:
    """``udp.port==5004,rtp`` / ``tcp.port==8443-8445,tls``: read a port (range) as a protocol.

    ``port`` is the first port, ``last_port`` the last one (equal to ``port`` for a single
    port); both inclusive, as TShark reads ``A-B``.
    """

    transport: str
    port: int
    protocol: str
    last_port: int | None = None

    def __post_init__(self) -> None:
        last = self.port if self.last_port is None else self.last_port
        if not 0 < self.port <= last <= 65535:
            raise UsageError(
                f"bad decode-as ports {self.port}-{last}",
                hint="ports are 1-65535, the first no greater than the last",
            )
        object.__setattr__(self, "last_port", last)

    @property
    def ports(self) -> range:
        """Every port the rule covers."""
        return range(self.port, self._last + 1)

    @property
    def spec(self) -> str:
        """The rule as TShark writes it (``-d`` takes it back unchanged)."""
        sel = str(self.port) if self._last == self.port else f"{self.port}-{self._last}"
        return f"{self.transport}.port=={sel},{self.protocol}"

    @property
    def _last(self) -> int:
        return self.port if self.last_port is None else self.last_port


_DECODE_AS_FORM = "udp.port==5004,rtp, udp.port==40100-40140,rtp or tcp.port==8443,tls"


def _selector_number(text: str) -> int | None:
    """A number as TShark's ``-d`` reads it (C ``strtoul``, base 0): ``5004``, ``0x138c``,
    ``011614`` (octal); ``None`` when it is not one."""
    body = text[1:] if text[:1] == "+" else text
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", body):
        return int(body, 16)
    if re.fullmatch(r"0[0-7]*", body):
        return int(body, 8)
    if re.fullmatch(r"[1-9][0-9]*", body):
        return int(body)
    return None


def _port_selector(sel: str) -> tuple[int, int] | str:
    """``N``, ``A-B`` (A..B) or ``A:N`` (N ports from A), as TShark takes them for a port
    table; the first and last port, or what is wrong with it."""
    m = re.fullmatch(r"([^:-]+)(?:([:-])(.*))?", sel)
    first = _selector_number(m.group(1)) if m else None
    if m is None or first is None:
        return f"{sel!r} is not a port, a range A-B or A:COUNT"
    if m.group(2) is None:
        last = first
    else:
        second = _selector_number(m.group(3))
        if second is None:
            return f"{sel!r} is not a port, a range A-B or A:COUNT"
        if m.group(2) == ":":
            if second == 0:
                return f"the range {sel!r} counts no port"
            last = first + second - 1
        else:
            last = second
            if last < first:
                return f"the range {sel!r} ends before it starts"
    if not 0 < first <= last <= 65535:
        return f"{sel!r} is outside the ports 1-65535"
    return first, last


def parse_decode_as(spec: str) -> DecodeAs:
    """Parse a TShark-style ``-d`` rule; only the rules voiceaudit reads itself are taken.

    The selector is what TShark takes for ``udp.port`` and ``tcp.port``: a port (``5004``),
    a range ``A-B`` or ``A:COUNT`` (``5004:3`` is 5004-5006); numbers as C reads them, so
    ``0x`` is hexadecimal and a leading ``0`` octal, as in TShark.
    """
    text = spec.strip().replace(" ", "")
    try:
        left, proto = text.split(",", 1)
        field, sel = left.split("==", 1)
        transport, what = field.split(".", 1)
    except ValueError:
        raise UsageError(
            f"cannot read the decode-as rule {spec!r}",
            hint=f"write it as TShark does, e.g. {_DECODE_AS_FORM}",
        ) from None
    proto = proto.lower()
    if what != "port" or transport not in _SUPPORTED_DECODE_AS:
        raise UsageError(
            f"unsupported decode-as rule {spec!r}",
            hint="voiceaudit reads udp.port==<ports>,<proto> and tcp.port==<ports>,<proto>",
        )
    ports = _port_selector(sel)
    if isinstance(ports, str):
        raise UsageError(
            f"bad port in the decode-as rule {spec!r}: {ports}",
            hint="give a port 1-65535, a range A-B with A <= B, or A:COUNT, "
            "e.g. udp.port==40100-40140,rtp",
        )
    first, last = ports
    if "," in proto:
        raise UsageError(
            f"cannot read the decode-as rule {spec!r}: a rule takes one port or range",
            hint="TShark takes no list of ports; give one --decode-as per port or range",
        )
    if proto not in _SUPPORTED_DECODE_AS[transport]:
        where = f"port {first}" if first == last else f"ports {first}-{last}"
        raise UsageError(
            f"voiceaudit cannot read {transport} {where} as {proto!r}",
            hint=f"{transport} ports can be read as: {', '.join(_SUPPORTED_DECODE_AS[transport])}",
        )
    if proto == "ssl":
        proto = "tls"
    return DecodeAs(transport, first, proto, last)


def parse_clock_rate(spec: str) -> tuple[int, int]:
    """``96=48000`` -> (96, 48000)."""
    try:
        pt_s, rate_s = spec.split("=", 1)
        pt, rate = int(pt_s), int(rate_s)
    except ValueError:
        raise UsageError(
            f"cannot read the clock rate {spec!r}", hint="write PT=RATE, e.g. 111=48000"
        ) from None
    if not 0 <= pt <= 127 or rate < 1000:
        raise UsageError(
            f"bad clock rate {spec!r}",
            hint="the payload type is 0-127 and the RTP clock rate at least 1000 Hz",
        )
    return pt, rate


class _Names:
    """Address and endpoint strings, made once per address."""

    def __init__(self) -> None:
        self.addrs: dict[bytes, str] = {}
        self.eps: dict[tuple[bytes, int], str] = {}

    def addr(self, a: bytes) -> str:
        s = self.addrs.get(a)
        if s is None:
            s = socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)
            self.addrs[a] = s
        return s

    def ep(self, a: bytes, port: int) -> str:
        key = (a, port)
        s = self.eps.get(key)
        if s is None:
            host = self.addr(a)
            s = f"{host}:{port}" if len(a) == 4 else f"[{host}]:{port}"
            self.eps[key] = s
        return s


def _rel_ms(rel_ns: int) -> float:
    """Wireshark's ``nstime_to_msec`` of a relative time, with its rounding."""
    if rel_ns >= 0:
        secs, nsecs = divmod(rel_ns, 1_000_000_000)
    else:
        secs, nsecs = divmod(-rel_ns, 1_000_000_000)
        secs, nsecs = -secs, -nsecs
    return float(secs) * 1000 + nsecs / 1000000


class _Analysis:
    def __init__(
        self,
        *,
        heuristic_rtp: bool,
        decode_as: Iterable[DecodeAs],
        clock_rates: Mapping[int, int] | None,
        count_marked: bool = False,
        spool: bool,
        stall: StallParams,
        max_frames: int,
    ) -> None:
        self.heuristic = heuristic_rtp
        self.clock_rates = dict(clock_rates or {})
        self.count_marked = count_marked
        self.names = _Names()
        self.results = Results(max_frames=max_frames)
        # Port -> protocol, one entry per port of a range; a later rule overrides an
        # earlier one on the ports they share, as in TShark.
        self.udp_forced: dict[int, str] = {}
        tcp_forced: dict[int, str] = {}
        for d in decode_as:
            forced = self.udp_forced if d.transport == "udp" else tcp_forced
            forced.update(dict.fromkeys(d.ports, d.protocol))
        self.udp_rtp_ports: set[int] = {p for p, v in self.udp_forced.items() if v == "rtp"}
        self.sdp_convs: dict[tuple[bytes, int], Conversation] = {}
        self.pair_convs: dict[tuple[tuple[bytes, int], tuple[bytes, int]], Conversation] = {}
        self.streams: dict[tuple[tuple[bytes, int], tuple[bytes, int], int], RtpStreamState] = {}
        self.formats: dict[tuple[int, int], PayloadFormat] = {}
        self.stun = StunTracker(self.names.ep)
        self.dtls = DtlsTracker(self.names.ep)
        self.spool_writer: PcapngWriter | None = None
        self.spool_path: Path | None = None
        self.spool_file: BinaryIO | None = None
        self.spooled = 0
        if spool:
            fd, name = tempfile.mkstemp(prefix="voiceaudit-tls-", suffix=".pcapng")
            self.spool_path = Path(name)
            self.spool_file = os.fdopen(fd, "wb")
            self.spool_writer = PcapngWriter(self.spool_file)
        self.tcp = TcpTracker(
            self.results,
            self.names.ep,
            on_sip_body=self._sip_body,
            decode_as=tcp_forced,
            stall=stall,
            spool=self._spool if spool else None,
        )
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.frame = 0
        self.counts = {
            "ipv4": 0,
            "ipv6": 0,
            "udp": 0,
            "tcp": 0,
            "rtp": 0,
            "other": 0,
            "ip_fragments": 0,
            "unsupported_link": 0,
        }

    # ------------------------------------------------------------------ signalling
    def _sip_body(self, body: bytes, ts: int, frame: int) -> None:
        for media in parse_sdp(body):
            key = (media.addr, media.port)
            conv = self.sdp_convs.get(key)
            if conv is None:
                self.sdp_convs[key] = Conversation("SDP", frame or self.frame, media.rtpmap)
            else:
                conv.rtpmap = {**(conv.rtpmap or {}), **media.rtpmap}

    def _spool(self, ts: int, linktype: int, data: bytes) -> None:
        assert self.spool_writer is not None
        self.spool_writer.write(ts, data, linktype=linktype)
        self.spooled += 1

    # ------------------------------------------------------------------ main loop
    def run(self, reader: CaptureReader, progress: Progress | None) -> None:
        u16 = struct.Struct("!H").unpack_from
        udp_hdr = struct.Struct("!HHH").unpack_from
        tcp_hdr = struct.Struct("!HHIIHH").unpack_from
        rtp_hdr = struct.Struct("!HII").unpack_from
        counts = self.counts
        streams = self.streams
        sdp_convs = self.sdp_convs
        pair_convs = self.pair_convs
        formats = self.formats
        heuristic = self.heuristic
        claim = CLAIMING_UDP_PORTS
        forced_rtp = self.udp_rtp_ports
        stun = self.stun
        dtls = self.dtls
        tcp = self.tcp
        spool = self.spool_writer is not None
        clock_rates = self.clock_rates
        count_marked = self.count_marked
        sip_ports = (5060, 5061, 2427, 2727)
        sip_first = frozenset(b"IABCROPSNMUDMR0123456789")
        frame = self.frame
        first_ts = self.first_ts
        last_ts = 0
        n_ipv4 = n_ipv6 = n_udp = n_tcp = n_rtp = 0
        for buf, recs in reader.batches():
            if spool and reader.facts.tls_secrets and self.spool_writer is not None:
                for secret in reader.facts.tls_secrets:
                    self.spool_writer.write_tls_secrets(secret)
                reader.facts.tls_secrets.clear()
            for ts, lt, off, cap, _wire in recs:
                frame += 1
                if first_ts is None:
                    first_ts = ts
                last_ts = ts
                end = off + cap
                # ---------------------------------------------------------- link
                if lt == LINKTYPE_ETHERNET:
                    if cap < 14:
                        continue
                    et = (buf[off + 12] << 8) | buf[off + 13]
                    p = off + 14
                    while et in (0x8100, 0x88A8, 0x9100) and p + 4 <= end:
                        et = (buf[p + 2] << 8) | buf[p + 3]
                        p += 4
                elif lt == LINKTYPE_LINUX_SLL:
                    if cap < 16:
                        continue
                    et = (buf[off + 14] << 8) | buf[off + 15]
                    p = off + 16
                elif lt == LINKTYPE_LINUX_SLL2:
                    if cap < 20:
                        continue
                    et = (buf[off] << 8) | buf[off + 1]
                    p = off + 20
                elif lt in _RAW_LINKTYPES:
                    if cap < 1:
                        continue
                    v = buf[off] >> 4
                    et = 0x0800 if v == 4 else 0x86DD if v == 6 else 0
                    p = off
                elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
                    if cap < 4:
                        continue
                    fam = struct.unpack_from("<I" if lt == LINKTYPE_NULL else ">I", buf, off)[0]
                    if fam > 0xFFFF:  # written on a host of the other byte order
                        fam = struct.unpack_from(">I" if lt == LINKTYPE_NULL else "<I", buf, off)[0]
                    et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
                    p = off + 4
                else:
                    counts["unsupported_link"] += 1
                    continue
                # ---------------------------------------------------------- network
                if et == 0x0800:
                    if p + 20 > end:
                        continue
                    n_ipv4 += 1
                    ihl = (buf[p] & 0x0F) * 4
                    tot = (buf[p + 2] << 8) | buf[p + 3]
                    if (buf[p + 6] & 0x3F) or buf[p + 7]:
                        counts["ip_fragments"] += 1
                        continue
                    proto = buf[p + 9]
                    src = buf[p + 12 : p + 16]
                    dst = buf[p + 16 : p + 20]
                    l4 = p + ihl
                    ipend = p + tot if tot >= ihl and p + tot < end else end
                elif et == 0x86DD:
                    if p + 40 > end:
                        continue
                    n_ipv6 += 1
                    plen6 = (buf[p + 4] << 8) | buf[p + 5]
                    proto = buf[p + 6]
                    src = buf[p + 8 : p + 24]
                    dst = buf[p + 24 : p + 40]
                    l4 = p + 40
                    ipend = l4 + plen6 if plen6 and l4 + plen6 < end else end
                    frag = False
                    while proto in _IPV6_EXT or proto == 44:
                        if l4 + 8 > ipend:
                            break
                        if proto == 44:
                            frag = True
                            break
                        nxt = buf[l4]
                        l4 += (buf[l4 + 1] + 2) * 4 if proto == 51 else (buf[l4 + 1] + 1) * 8
                        proto = nxt
                    if frag:
                        counts["ip_fragments"] += 1
                        continue
                else:
                    counts["other"] += 1
                    continue
                # ---------------------------------------------------------- transport
                if proto == 17:
                    if l4 + 8 > ipend:
                        continue
                    n_udp += 1
                    sport, dport, ulen = udp_hdr(buf, l4)
                    pl = l4 + 8
                    pend = l4 + ulen if ulen >= 8 and l4 + ulen < ipend else ipend
                    plen = pend - pl
                    if plen <= 0:
                        continue
                    b0 = buf[pl]
                    if b0 in sip_first and (
                        sport in sip_ports or dport in sip_ports or b0 in b"ISABCRN"
                    ):
                        for body in sdp_bodies(bytes(buf[pl:pend]), sport, dport):
                            self.frame = frame
                            self._sip_body(body, ts, frame)
                    src_key = (src, sport)
                    dst_key = (dst, dport)
                    conv = None
                    if sdp_convs:
                        conv = sdp_convs.get(dst_key) or sdp_convs.get(src_key)
                    rtp_ok = False
                    if conv is not None or (dport in forced_rtp or sport in forced_rtp):
                        # A conversation (SDP or Decode As) sends everything to RTP.
                        if b0 >> 6 == 2 and plen >= 12:
                            b1 = buf[pl + 1]
                            rtp_ok = not (b1 & 0x80 and 64 <= (b1 & 0x7F) <= 95)
                        if conv is None and rtp_ok:
                            conv = pair_convs.get((dst_key, src_key)) or pair_convs.get(
                                (src_key, dst_key)
                            )
                            if conv is None:
                                conv = Conversation("DECODE AS", frame)
                                pair_convs[(dst_key, src_key)] = conv
                    elif (
                        heuristic
                        and sport not in claim
                        and dport not in claim
                        and 0x80 <= b0 <= 0xBF
                        and heuristic_accepts(buf, pl, plen)
                        and not (buf[pl + 1] & 0x80 and 64 <= (buf[pl + 1] & 0x7F) <= 95)
                    ):
                        rtp_ok = True
                        conv = pair_convs.get((dst_key, src_key)) or pair_convs.get(
                            (src_key, dst_key)
                        )
                        if conv is None:
                            conv = Conversation("HEUR RTP", frame)
                            pair_convs[(dst_key, src_key)] = conv
                    if rtp_ok and conv is not None:
                        n_rtp += 1
                        b1 = buf[pl + 1]
                        seq, rts, ssrc = rtp_hdr(buf, pl + 2)
                        skey = (src_key, dst_key, ssrc)
                        st = streams.get(skey)
                        if st is None:
                            st = RtpStreamState(conv)
                            streams[skey] = st
                        pt = b1 & 0x7F
                        fkey = (id(conv), pt)
                        fmt = formats.get(fkey)
                        if fmt is None:
                            fmt = payload_format(pt, conv.rtpmap, clock_rates)
                            formats[fkey] = fmt
                        rel = ts - first_ts
                        if rel >= 0:
                            now_ms = (rel // 1_000_000_000) * 1000.0 + (
                                rel % 1_000_000_000
                            ) / 1000000
                        else:
                            now_ms = _rel_ms(rel)
                        marked = bool(b1 & 0x80) and not count_marked
                        st.add(frame, ts, now_ms, seq, rts, pt, marked, fmt)
                        continue
                    if b0 < 4:
                        stun.packet(ts, bytes(buf[pl:pend]), src_key, dst_key)
                    elif 20 <= b0 <= 63:
                        dtls.packet(ts, bytes(buf[pl:pend]), src_key, dst_key)
                elif proto == 6:
                    if l4 + 20 > ipend:
                        continue
                    n_tcp += 1
                    sport, dport, seq, ack, offflags, win = tcp_hdr(buf, l4)
                    doff = (offflags >> 12) * 4
                    pay_off = l4 + doff
                    if pay_off > ipend:
                        continue
                    tcp.segment(
                        frame,
                        ts,
                        src,
                        sport,
                        dst,
                        dport,
                        offflags & 0x3F,
                        seq,
                        ack,
                        win,
                        buf,
                        l4 + 20,
                        pay_off,
                        ipend,
                        (lt, bytes(buf[off:end])) if spool else None,
                    )
            if progress is not None:
                progress(frame)
        del u16
        self.frame = frame
        self.first_ts = first_ts
        self.last_ts = last_ts if frame else None
        counts["ipv4"] += n_ipv4
        counts["ipv6"] += n_ipv6
        counts["udp"] += n_udp
        counts["tcp"] += n_tcp
        counts["rtp"] += n_rtp

    # ------------------------------------------------------------------ results
    def rtp_results(self) -> list[RtpStream]:
        out = []
        names = self.names
        for (src_key, dst_key, ssrc), st in self.streams.items():
            rate = st.clock_rate
            has_jitter = st.min_jitter != -1
            has_delta = st.min_delta != -1
            out.append(
                RtpStream(
                    ssrc=ssrc,
                    src=names.ep(*src_key),
                    dst=names.ep(*dst_key),
                    payload_type=st.payload_types[0],
                    payload_types=tuple(sorted(st.payload_types)),
                    # In payload-type order, as Wireshark lists them.
                    payload_names=tuple(st.formats[pt].name for pt in sorted(st.payload_types)),
                    packets=st.total,
                    expected=st.expected,
                    lost=st.lost,
                    min_delta_ms=st.min_delta if has_delta else None,
                    mean_delta_ms=st.mean_delta if has_delta else None,
                    max_delta_ms=st.max_delta if has_delta else None,
                    min_jitter_ms=st.min_jitter if has_jitter else None,
                    mean_jitter_ms=st.mean_jitter if has_jitter else None,
                    max_jitter_ms=st.max_jitter if has_jitter else None,
                    max_skew_ms=st.max_skew if rate else None,
                    clock_rate=rate or None,
                    sequence_errors=st.sequence_errors,
                    problem=st.problem,
                    start_at_ns=st.first_ns,
                    end_at_ns=st.last_ns,
                    duration_ns=round((st.time - st.start_ms) * 1_000_000),
                    first_frame=st.first_frame,
                    max_delta_frame=st.max_delta_frame or None,
                    setup=st.conversation.method,
                )
            )
        out.sort(key=lambda s: (s.start_at_ns, s.first_frame))
        return out


def analyze_capture(
    path: str | os.PathLike[str],
    *,
    decode_as: Iterable[str | DecodeAs] = (),
    keylog: str | os.PathLike[str] | None = None,
    clock_rates: Mapping[int, int] | None = None,
    heuristic_rtp: bool = False,
    count_marked: bool = False,
    progress: Progress | None = None,
    stall: StallParams | None = None,
    max_frames_per_session: int = 10_000,
    tshark: str | None = None,
) -> NetReport:
    """Analyse the network path recorded in a pcap or pcapng capture.

    ``heuristic_rtp`` finds RTP without signalling (TShark's ``--enable-heuristic
    rtp_udp``); ``clock_rates`` gives the RTP clock rate of payload types the capture does
    not describe; ``keylog`` (an NSS key log, as written through ``SSLKEYLOGFILE``) lets
    TShark decrypt TLS so HTTP/2, HTTPS and WSS exchanges are timed too.

    ``count_marked``: Wireshark leaves packets with the RTP marker bit (a talkspurt start)
    out of the delta and jitter statistics. Some senders (aiortc) set it on every audio
    packet, which leaves no statistics at all; with ``count_marked`` they count like any
    other packet. Off by default, so the figures stay Wireshark's.
    """
    t0 = time.perf_counter_ns()
    rules = [d if isinstance(d, DecodeAs) else parse_decode_as(d) for d in decode_as]
    keylog_path = None if keylog is None else Path(keylog)
    if keylog_path is not None and not keylog_path.is_file():
        raise UsageError(f"{keylog_path}: no such key log file", hint="give an NSS key log")
    reader = CaptureReader(path)
    a = _Analysis(
        heuristic_rtp=heuristic_rtp,
        decode_as=rules,
        clock_rates=clock_rates,
        count_marked=count_marked,
        spool=keylog_path is not None,
        stall=stall or StallParams(),
        max_frames=max_frames_per_session,
    )
    warnings: list[str] = []
    tshark_version: str | None = None
    try:
        a.run(reader, progress)
        warnings.extend(reader.warnings)
        if a.frame == 0 and not reader.facts.truncated:
            raise CaptureError(
                "the capture holds no packets",
                path=str(path),
                hint="was anything sent while the capture ran? check the capture filter",
            )
        if a.frame == 0:
            raise CaptureError(
                "no whole packet could be read from the capture",
                path=str(path),
                hint=reader.warnings[0] if reader.warnings else None,
            )
        tcp_conns: list[TcpConnection] = a.tcp.finish()
        if a.spool_file is not None and a.spool_path is not None:
            a.spool_file.close()
            if a.spooled and keylog_path is not None:
                from voiceaudit.capture.tshark import decrypted_exchanges

                tshark_version, exchanges, sessions, notes = decrypted_exchanges(
                    a.spool_path, keylog_path, rules, tshark=tshark
                )
                a.results.http.extend(exchanges)
                a.results.websocket.extend(sessions)
                warnings.extend(notes)
    finally:
        reader.close()
        if a.spool_file is not None:
            a.spool_file.close()
        if a.spool_path is not None:
            with contextlib.suppress(OSError):
                a.spool_path.unlink()
    if a.counts["ip_fragments"]:
        warnings.append(f"{a.counts['ip_fragments']} IP fragments were not reassembled (left out)")
    if a.counts["unsupported_link"]:
        warnings.append(
            f"{a.counts['unsupported_link']} packets have a link type voiceaudit does not "
            f"read (types {sorted(reader.facts.link_types)})"
        )
    if a.results.dropped_exchanges:
        warnings.append(f"{a.results.dropped_exchanges} HTTP exchanges beyond the limit left out")
    res = a.results
    return NetReport(
        path=str(path),
        format=reader.facts.format,
        packets=a.frame,
        first_at_ns=a.first_ts,
        last_at_ns=a.last_ts,
        link_types=tuple(sorted(reader.facts.link_types)),
        truncated=reader.facts.truncated,
        warnings=tuple(warnings),
        heuristic_rtp=heuristic_rtp,
        decode_as=tuple(r.spec for r in rules),
        tshark=tshark_version,
        rtp_streams=tuple(a.rtp_results()),
        tcp_connections=tuple(tcp_conns),
        tls_handshakes=tuple(sorted(res.tls + a.dtls.finish(), key=lambda h: h.client_hello_at_ns)),
        http_exchanges=tuple(sorted(res.http, key=lambda x: x.request_at_ns)),
        websocket_sessions=tuple(sorted(res.websocket, key=lambda w: w.upgrade_request_at_ns)),
        stun_transactions=tuple(a.stun.finish()),
        counts=dict(a.counts),
        analysis_ns=time.perf_counter_ns() - t0,
    )
