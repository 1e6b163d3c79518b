"""TCP connections: handshake timing, ACK round trips, retransmissions, zero windows,
small-write stalls, and in-order byte streams for the application parsers.

State is per connection and bounded (outstanding segments awaiting an ACK, a few
out-of-order segments, a thinned sample of RTTs), so memory grows with the number of
connections, not packets.

Small-write stall (Nagle's algorithm meeting a delayed ACK): the sender had a data
segment in flight, the application wrote more, and the kernel held the new small segment
until the peer's ACK arrived; the peer delayed that ACK (40 ms on Linux, up to 200 ms
elsewhere) or sent it only with its own next data. On the wire: data segment P at t1; the
peer's first ACK covering P at tA with tA - t1 >= ``stall_min_ns``; the next segment S,
carrying the very next bytes and shorter than the MSS, leaves within ``release_ns`` (plus
the handshake round trip, for a capture taken at the peer) of a pure ACK, or within
``kernel_release_ns`` of an ACK that carried data, S then holding more than twice P's
bytes (the writes that piled up) -- an application answering the peer's data takes longer
and sends one message.

Only a sender with Nagle's algorithm on can be held so. On the wire a pure-ACK release
looks the same as an application that happened to write just after a late ACK (a caller
starved of CPU sends its next microphone frame late, and the peer, having had no second
frame to acknowledge, sent its delayed ACK meanwhile). Nagle's algorithm never lets a
sender put a small segment on the wire while an earlier small segment of its is
unacknowledged (Linux's Minshall variant; the classic rule is stricter), so a sender seen
doing that has Nagle off (TCP_NODELAY). A candidate stall of a sender seen doing so both
before and after it is not reported: both a sender that switches Nagle on mid-connection
(the reference pipeline's small-writes, after the WebSocket upgrade) and one that switches
it off keep the stalls of their Nagle-on stretch. "Small" is below
``nagle_small_bytes`` (and below the MSS), so no full-sized segment passes for a small one
on a path whose MTU is lower than the MSS says.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from voiceaudit.capture.http import Http2Parser, HttpParser
from voiceaudit.capture.model import (
    EMPTY_DISTRIBUTION,
    Distribution,
    SmallWriteStall,
    TcpConnection,
    TcpEvent,
)
from voiceaudit.capture.sdp import SipTcpParser
from voiceaudit.capture.streams import OpaqueParser, Results, StreamParser, sniff
from voiceaudit.capture.tls import TlsParser

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10
_M32 = 0xFFFFFFFF


class Sampler:
    """Exact count/min/max/mean; percentiles from at most ``limit`` evenly thinned values."""

    __slots__ = ("count", "limit", "max", "min", "samples", "stride", "sum", "tick")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.count = 0
        self.sum = 0
        self.min = 0
        self.max = 0
        self.samples: list[int] = []
        self.stride = 1
        self.tick = 0

    def add(self, v: int) -> None:
        if self.count == 0:
            self.min = self.max = v
        elif v < self.min:
            self.min = v
        elif v > self.max:
            self.max = v
        self.count += 1
        self.sum += v
        self.tick += 1
        if self.tick >= self.stride:
            self.tick = 0
            self.samples.append(v)
            if len(self.samples) >= self.limit:
                # Keep every other value and halve the intake: still evenly spread.
                self.samples = self.samples[::2]
                self.stride *= 2

    def summary(self) -> Distribution:
        if self.count == 0:
            return EMPTY_DISTRIBUTION
        s = sorted(self.samples)

        def pct(q: float) -> int:
            # Nearest-rank percentile.
            k = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
            return s[k]

        return Distribution(
            count=self.count,
            min_ns=self.min,
            max_ns=self.max,
            mean_ns=self.sum / self.count,
            p50_ns=pct(0.50),
            p90_ns=pct(0.90),
            p99_ns=pct(0.99),
            exact=self.stride == 1,
        )


@dataclass(slots=True, eq=False)
class _Half:
    """One direction of a connection: what one endpoint sent."""

    base: int | None = None
    next_rel: int = 0
    max_end: int = 0
    acked: int = 0
    #: [rel_end, sent_at, retransmitted] of each segment awaiting its ACK
    outstanding: deque[list[int]] = field(default_factory=deque)
    ooo: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    mss: int | None = None
    bytes: int = 0
    last_data_at: int | None = None
    last_data_end: int = 0
    last_data_len: int = 0
    last_ack_at: int | None = None
    last_ack_pure: bool = False
    zero_since: int | None = None
    fin_at: int | None = None
    #: End of the last small data segment this half sent (Nagle's bookkeeping).
    small_end: int | None = None
    #: First and last time this half sent a small segment while an earlier small
    #: segment of its was unacknowledged: Nagle was off then.
    nodelay_first_at: int | None = None
    nodelay_last_at: int | None = None

    def rel(self, seq: int, near: int) -> int:
        """``seq`` relative to this half's base, unwrapped to the value nearest ``near``."""
        assert self.base is not None
        d = (seq - self.base - near) & _M32
        if d >= 0x80000000:
            d -= 0x1_0000_0000
        return near + d


@dataclass(slots=True)
class StallParams:
    stall_min_ns: int = 15_000_000
    release_ns: int = 2_000_000
    kernel_release_ns: int = 200_000
    #: Segments below this (and below the MSS minus room for options) count as small
    #: for the Nagle-off evidence: every real path's MSS is above it.
    nagle_small_bytes: int = 1200


@dataclass(slots=True, eq=False)
class Conn:
    """One TCP connection as it is followed (``c``: what the client sent, ``s``: the server)."""

    client: str
    server: str
    client_key: tuple[bytes, int]
    first_at: int
    last_at: int = field(init=False)
    c: _Half = field(default_factory=_Half, init=False)
    s: _Half = field(default_factory=_Half, init=False)
    syn_at: int | None = field(default=None, init=False)
    syn_isn: int | None = field(default=None, init=False)
    syn_retx: int = field(default=0, init=False)
    synack_at: int | None = field(default=None, init=False)
    established_at: int | None = field(default=None, init=False)
    fin_at: int | None = field(default=None, init=False)
    rst_at: int | None = field(default=None, init=False)
    packets: int = field(default=0, init=False)
    rtt: Sampler = field(default_factory=Sampler, init=False)
    min_rtt: int | None = field(default=None, init=False)
    events: list[TcpEvent] = field(default_factory=list, init=False)
    events_dropped: int = field(default=0, init=False)
    stalls: list[SmallWriteStall] = field(default_factory=list, init=False)
    retransmissions: int = field(default=0, init=False)
    zero_windows: int = field(default=0, init=False)
    app: StreamParser | None = field(default=None, init=False)
    #: Every parser the connection had (HTTP, then WebSocket after an Upgrade...).
    parsers: list[StreamParser] = field(default_factory=list, init=False)
    decided: bool = field(default=False, init=False)
    protocol: str | None = field(default=None, init=False)
    spool: bool = field(default=False, init=False)
    #: The first few raw packets, kept until we know whether to spool the connection.
    held: list[tuple[int, int, bytes]] | None = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.last_at = self.first_at


def _nagle_off(conn: Conn, s: SmallWriteStall) -> bool:
    """The sender of ``s`` showed Nagle off both before and after it: no Nagle stall."""
    h = conn.c if s.sender == conn.client else conn.s
    first, last = h.nodelay_first_at, h.nodelay_last_at
    return first is not None and last is not None and first < s.released_at_ns < last


def _options(buf: bytes, off: int, end: int) -> int | None:
    """The MSS option of a TCP header's options area, if present."""
    i = off
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        ln = buf[i + 1]
        if ln < 2:
            break
        if kind == 2 and ln == 4 and i + 4 <= end:
            return (buf[i + 2] << 8) | buf[i + 3]
        i += ln
    return None


class TcpTracker:
    """Follows every TCP connection of a capture."""

    def __init__(
        self,
        results: Results,
        endpoint: Callable[[bytes, int], str],
        *,
        on_sip_body: Callable[[bytes, int, int], None],
        decode_as: dict[int, str] | None = None,
        stall: StallParams | None = None,
        max_events: int = 1000,
        spool: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        self.results = results
        self.endpoint = endpoint
        self.on_sip_body = on_sip_body
        self.decode_as = decode_as or {}
        self.stall = stall or StallParams()
        self.max_events = max_events
        self.spool = spool
        self.conns: dict[tuple[bytes, int, bytes, int], tuple[Conn, bool]] = {}
        self.closed: list[Conn] = []

    # ------------------------------------------------------------------ per segment
    def segment(
        self,
        frame: int,
        ts: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        win: int,
        buf: bytes,
        opt_off: int,
        pay_off: int,
        pay_end: int,
        raw: tuple[int, bytes] | None,
    ) -> None:
        key = (src, sport, dst, dport)
        hit = self.conns.get(key)
        if flags & SYN and not flags & ACK and hit is not None:
            conn0, from_client0 = hit
            # A new SYN (other ISN) on a used 4-tuple opens a new connection.
            if not (from_client0 and conn0.syn_isn == seq):
                self._retire(conn0)
                hit = None
        if hit is None:
            ep = self.endpoint
            if flags & SYN and flags & ACK:
                conn = Conn(ep(dst, dport), ep(src, sport), (dst, dport), ts)
                from_client = False
            elif flags & SYN or sport > dport:
                conn = Conn(ep(src, sport), ep(dst, dport), (src, sport), ts)
                from_client = True
            else:
                conn = Conn(ep(dst, dport), ep(src, sport), (dst, dport), ts)
                from_client = False
            self.conns[key] = (conn, from_client)
            self.conns[(dst, dport, src, sport)] = (conn, not from_client)
            forced = self.decode_as.get(dport) or self.decode_as.get(sport)
            if forced is not None:
                self._decide(conn, forced)
        else:
            conn, from_client = hit
        conn.packets += 1
        conn.last_at = ts
        if raw is not None and self.spool is not None:
            if conn.spool:
                self.spool(ts, raw[0], raw[1])
            elif conn.held is not None:
                conn.held.append((ts, raw[0], raw[1]))
                if len(conn.held) > 8:
                    conn.held = None
        h = conn.c if from_client else conn.s
        p = conn.s if from_client else conn.c

        if flags & RST:
            if conn.rst_at is None:
                conn.rst_at = ts
            if conn.app is not None:
                conn.app.close(from_client, ts)
            return
        if flags & SYN:
            mss = _options(buf, opt_off, pay_off)
            if mss is not None:
                h.mss = mss
            if not flags & ACK:
                if conn.syn_at is None:
                    conn.syn_at = ts
                    conn.syn_isn = seq
                elif seq == conn.syn_isn and conn.synack_at is None:
                    conn.syn_retx += 1
            elif conn.synack_at is None:
                conn.synack_at = ts
            h.base = (seq + 1) & _M32
            h.next_rel = h.max_end = 0
            if not flags & ACK:
                return
        plen = pay_end - pay_off
        if h.base is None:
            # First segment of a direction whose SYN we did not see. A lone byte there is
            # a keep-alive probe (it repeats the last byte already sent): skip it.
            h.base = (seq + 1) & _M32 if plen == 1 else seq
            if plen == 1:
                plen = 0
                pay_end = pay_off

        if flags & ACK and p.base is not None:
            a = p.rel(ack, p.max_end)
            if (
                conn.established_at is None
                and from_client
                and conn.synack_at is not None
                and a == 0
                and not flags & SYN
            ):
                conn.established_at = ts
            if a > p.acked:
                p.acked = a
                out = p.outstanding
                sample = None
                while out and out[0][0] <= a:
                    ent = out.popleft()
                    if not ent[2]:
                        sample = ts - ent[1]
                if sample is not None:
                    conn.rtt.add(sample)
                    if conn.min_rtt is None or sample < conn.min_rtt:
                        conn.min_rtt = sample
                if p.last_data_at is not None and p.last_ack_at is None and a >= p.last_data_end:
                    p.last_ack_at = ts
                    p.last_ack_pure = plen == 0
        if flags & SYN:
            return

        if plen:
            r = h.rel(seq, h.max_end)
            end = r + plen
            if r < h.max_end and not (plen <= 1 and r == h.max_end - 1):
                self._retransmission(conn, h, from_client, ts, r, end, plen)
            elif r >= h.max_end:
                h.outstanding.append([end, ts, 0])
                if len(h.outstanding) > 4096:
                    h.outstanding.popleft()
                self._nagle_evidence(conn, h, from_client, ts, end, plen, flags)
                self._stall_check(conn, h, from_client, ts, r, end, plen)
                h.last_data_at = ts
                h.last_data_end = end
                h.last_data_len = plen
                h.last_ack_at = None
                h.max_end = end
                h.bytes += plen
            if not conn.decided:
                proto = sniff(bytes(buf[pay_off : pay_off + 32]), from_client)
                if proto is not None or plen >= 16:
                    # Parsers start here: the bytes before (if any) are not theirs.
                    conn.c.next_rel = conn.c.max_end
                    conn.s.next_rel = conn.s.max_end
                    h.next_rel = r
                    self._decide(conn, proto)
            if conn.app is not None:
                self._deliver(conn, h, from_client, r, bytes(buf[pay_off:pay_end]), ts)
        if flags & FIN:
            if h.fin_at is None:
                h.fin_at = ts
            if conn.fin_at is None:
                conn.fin_at = ts
            fr = h.rel(seq, h.max_end) + plen
            if fr >= h.max_end:
                h.max_end = fr + 1
            if conn.app is not None:
                conn.app.close(from_client, ts)
        elif win == 0:
            if h.zero_since is None:
                h.zero_since = ts
                conn.zero_windows += 1
        elif h.zero_since is not None:
            self._event(
                conn,
                TcpEvent(
                    "zero_window",
                    h.zero_since,
                    conn.client if from_client else conn.server,
                    0,
                    0,
                    ts - h.zero_since,
                ),
            )
            h.zero_since = None

    # ------------------------------------------------------------------ helpers
    def _event(self, conn: Conn, ev: TcpEvent) -> None:
        if len(conn.events) < self.max_events:
            conn.events.append(ev)
        else:
            conn.events_dropped += 1

    def _retransmission(
        self, conn: Conn, h: _Half, from_client: bool, ts: int, r: int, end: int, plen: int
    ) -> None:
        conn.retransmissions += 1
        original: int | None = None
        out = h.outstanding
        # Outstanding segments are in sequence order: find the first that covers r.
        i = bisect.bisect_right([e[0] for e in out], r) if len(out) < 64 else None
        if i is None:
            for ent in out:
                if ent[0] > r:
                    original = ent[1]
                    ent[2] = 1
                    break
        elif i < len(out):
            original = out[i][1]
            out[i][2] = 1
        self._event(
            conn,
            TcpEvent(
                "retransmission",
                ts,
                conn.client if from_client else conn.server,
                r,
                plen,
                None if original is None else ts - original,
            ),
        )
        if end > h.max_end:
            h.bytes += end - h.max_end
            h.max_end = end

    def _small_limit(self, conn: Conn, h: _Half, from_client: bool) -> int:
        peer = conn.s if from_client else conn.c
        mss = peer.mss or h.mss or 1460
        return min(self.stall.nagle_small_bytes, mss - 40)

    def _nagle_evidence(
        self, conn: Conn, h: _Half, from_client: bool, ts: int, end: int, plen: int, flags: int
    ) -> None:
        """Note a small segment sent while the previous small one is unacknowledged."""
        if flags & FIN or plen >= self._small_limit(conn, h, from_client):
            return  # Nagle lets a FIN and a full-sized segment through anyway
        if h.small_end is not None and h.acked < h.small_end:
            if h.nodelay_first_at is None:
                h.nodelay_first_at = ts
            h.nodelay_last_at = ts
        h.small_end = end

    def _stall_check(
        self, conn: Conn, h: _Half, from_client: bool, ts: int, r: int, end: int, plen: int
    ) -> None:
        t1 = h.last_data_at
        ta = h.last_ack_at
        if t1 is None or ta is None or h.last_data_end != r:
            return
        if ta - t1 < self.stall.stall_min_ns:
            return
        if h.last_ack_pure:
            # A delayed ACK. When the capture is taken at the peer, the held segment shows
            # up one round trip after the ACK left: allow the handshake's round trip.
            hs_rtt = 0
            if conn.syn_at is not None and conn.established_at is not None and not conn.syn_retx:
                hs_rtt = conn.established_at - conn.syn_at
            if ts - ta > self.stall.release_ns + hs_rtt:
                return
        elif ts - ta > self.stall.kernel_release_ns or plen <= 2 * h.last_data_len:
            # The ACK rode on the peer's own data (a stream it sends anyway). Only a segment
            # released by the kernel at once, and holding more than the one write before
            # it (writes that piled up meanwhile), was held; an application answering the
            # peer's data would take longer and send one message.
            return
        peer = conn.s if from_client else conn.c
        mss = peer.mss or h.mss or 1460
        if plen >= mss:
            return
        if len(conn.stalls) >= self.max_events:
            conn.events_dropped += 1
            return
        conn.stalls.append(
            SmallWriteStall(
                sender=conn.client if from_client else conn.server,
                first_unacked_at_ns=t1,
                ack_at_ns=ta,
                released_at_ns=ts,
                held_ns=ts - t1,
                ack_delay_ns=ta - t1,
                length=plen,
                seq=r,
                ack_carried_data=not h.last_ack_pure,
            )
        )

    def _decide(self, conn: Conn, proto: str | None) -> None:
        conn.decided = True
        conn.protocol = proto
        res = self.results
        if proto == "tls":
            conn.app = TlsParser(conn.client, conn.server)
            if self.spool is not None:
                conn.spool = True
                if conn.held:
                    for ts, lt, data in conn.held:
                        self.spool(ts, lt, data)
            conn.held = None
        elif proto in ("http", "websocket"):
            parser = HttpParser(conn.client, conn.server, lambda nxt: self._switch(conn, nxt))
            conn.app = parser
        elif proto == "http2":
            conn.app = Http2Parser(conn.client, conn.server, protocol="h2c", expect_preface=True)
        elif proto == "sip":
            conn.app = SipTcpParser(lambda body, ts: self.on_sip_body(body, ts, 0))
        else:
            conn.app = None
        if conn.app is not None:
            conn.parsers.append(conn.app)
        if conn.app is None or not conn.spool:
            conn.held = None
        del res

    def _switch(self, conn: Conn, nxt: StreamParser) -> None:
        if isinstance(nxt, Http2Parser):
            conn.protocol = "h2c"
        elif isinstance(nxt, OpaqueParser):
            pass
        else:
            conn.protocol = "websocket"
        conn.app = nxt
        conn.parsers.append(nxt)

    def _deliver(
        self, conn: Conn, h: _Half, from_client: bool, r: int, data: bytes, ts: int
    ) -> None:
        app = conn.app
        assert app is not None
        nxt = h.next_rel
        if r == nxt:
            app.feed(from_client, data, ts)
            h.next_rel = r + len(data)
        elif r < nxt:
            cut = nxt - r
            if cut >= len(data):
                return
            app.feed(from_client, data[cut:], ts)
            h.next_rel = r + len(data)
        else:
            h.ooo[r] = (data, ts)
            if len(h.ooo) > 64:
                # Bytes missing from the capture: the parser loses its place.
                app.gap(from_client)
                h.next_rel = min(h.ooo)
            else:
                return
        ooo = h.ooo
        while ooo:
            nxt = h.next_rel
            ent = ooo.pop(nxt, None)
            if ent is None:
                stale = [k for k in ooo if k < nxt]
                if not stale:
                    break
                for k in stale:
                    d, t = ooo.pop(k)
                    if k + len(d) > nxt:
                        ooo[nxt] = (d[nxt - k :], t)
                continue
            d, t = ent
            # Bytes held back by a gap reach the application when the gap fills.
            (conn.app or app).feed(from_client, d, max(t, ts))
            h.next_rel = nxt + len(d)

    def _retire(self, conn: Conn) -> None:
        for k, v in list(self.conns.items()):
            if v[0] is conn:
                del self.conns[k]
        self.closed.append(conn)

    # ------------------------------------------------------------------ results
    def finish(self) -> list[TcpConnection]:
        seen: set[int] = set()
        conns: list[Conn] = list(self.closed)
        for conn, _fc in self.conns.values():
            if id(conn) not in seen:
                seen.add(id(conn))
                conns.append(conn)
        conns.sort(key=lambda c: c.first_at)
        out: list[TcpConnection] = []
        for conn in conns:
            for parser in conn.parsers:
                parser.finish(self.results)
            for h, name in ((conn.c, conn.client), (conn.s, conn.server)):
                if h.zero_since is not None:
                    self._event(conn, TcpEvent("zero_window", h.zero_since, name, 0, 0, None))
            connect = None
            if conn.syn_at is not None and conn.established_at is not None:
                connect = conn.established_at - conn.syn_at
            out.append(
                TcpConnection(
                    client=conn.client,
                    server=conn.server,
                    first_at_ns=conn.first_at,
                    last_at_ns=conn.last_at,
                    syn_at_ns=conn.syn_at,
                    synack_at_ns=conn.synack_at,
                    established_at_ns=conn.established_at,
                    connect_ns=connect,
                    syn_retransmits=conn.syn_retx,
                    client_mss=conn.c.mss,
                    server_mss=conn.s.mss,
                    packets=conn.packets,
                    bytes_to_server=conn.c.bytes,
                    bytes_to_client=conn.s.bytes,
                    ack_rtt=conn.rtt.summary(),
                    retransmissions=conn.retransmissions,
                    zero_windows=conn.zero_windows,
                    events=tuple(sorted(conn.events, key=lambda e: e.at_ns)),
                    small_write_stalls=tuple(s for s in conn.stalls if not _nagle_off(conn, s)),
                    protocol=conn.protocol,
                    fin_at_ns=conn.fin_at,
                    rst_at_ns=conn.rst_at,
                    events_truncated=conn.events_dropped > 0,
                )
            )
        return out
