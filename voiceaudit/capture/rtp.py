"""RTP stream statistics that match Wireshark's ``rtp,streams`` / RTP Stream Analysis.

The per-packet arithmetic follows Wireshark 4.0's ``rtppacket_analyse`` exactly (the same
double-precision operations in the same order), so loss, deltas, jitter and skew equal
Wireshark's figures:

- a stream is keyed by (source address and port, destination address and port, SSRC);
- arrival time is the packet's time relative to the first packet of the capture, in ms;
- "expected" comes from the first and last sequence numbers plus counted wrap-arounds, so
  duplicates make "lost" negative, as in Wireshark;
- jitter is RFC 3550's running estimate ``J += (|D| - J) / 16`` with the RTP clock rate of
  the payload type (static table, SDP ``rtpmap``, or the caller's override); Wireshark
  divides the timestamp difference by ``clock_rate / 1000`` in *integer* arithmetic, and
  so do we;
- packets with the marker bit, comfort noise, a timestamp older than the stream's newest,
  or following comfort noise are left out of the delta and jitter min/mean/max;
- a packet is "in time" when its timestamp is within 2^31 ticks after the stream's
  first one (so wrap-around is handled), and the expected arrival of a packet is the
  previous in-time packet's arrival plus the timestamp advance since the last packet that
  had a known clock rate (so RFC 4733 telephone-event packets, whose clock rate Wireshark
  ignores, show up as the jitter spike Wireshark shows).

Checked against TShark 4.0.17 on every RTP stream of the real captures in
``shared/realdata`` and on randomised captures (loss, duplicates, reordering, timestamp
jumps, sequence and timestamp wrap, comfort noise, markers, telephone-event).
"""

from __future__ import annotations

from dataclasses import dataclass

PT_CN = 13
PT_CN_OLD = 19

#: RTP clock rates of the static payload types (Wireshark ``clock_map``).
# fmt: off
STATIC_CLOCK_RATES: dict[int, int] = {
    0: 8000, 1: 8000, 2: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000,
    9: 8000, 10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
    17: 22050, 18: 8000, 19: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000,
    33: 90000, 34: 90000,
}
# fmt: on

#: Clock rates of dynamic payload formats by encoding name (Wireshark
#: ``mimetype_and_clock_map``), matched as a case-insensitive prefix, last entry first.
# fmt: off
DYNAMIC_CLOCK_RATES: tuple[tuple[str, int], ...] = (
    ("AMR", 8000), ("AMR-WB", 16000), ("BMPEG", 90000), ("BT656", 90000), ("DV", 90000),
    ("EVRC", 8000), ("EVRC0", 8000), ("EVRC1", 8000), ("EVRCB", 8000), ("EVRCB0", 8000),
    ("EVRCB1", 8000), ("EVRCWB", 16000), ("EVRCWB0", 16000), ("EVRCWB1", 16000),
    ("EVS", 16000), ("G7221", 16000), ("G726-16", 8000), ("G726-24", 8000),
    ("G726-32", 8000), ("G726-40", 8000), ("G729D", 8000), ("G729E", 8000),
    ("GSM-EFR", 8000), ("H263-1998", 90000), ("H263-2000", 90000), ("H264", 90000),
    ("MP1S", 90000), ("MP2P", 90000), ("MP4V-ES", 90000), ("mpa-robust", 90000),
    ("opus", 48000), ("pointer", 90000), ("raw", 90000), ("red", 1000), ("SMV", 8000),
    ("SMV0", 8000), ("t140", 1000), ("telephone-event", 8000),
)
# fmt: on

#: Short names Wireshark shows for static payload types.
# fmt: off
STATIC_NAMES: dict[int, str] = {
    0: "g711U", 1: "fs-1016", 2: "g721", 3: "GSM", 4: "g723", 5: "DVI4 8k", 6: "DVI4 16k",
    7: "Exp. from PARC", 8: "g711A", 9: "g722", 10: "16-bit audio, stereo",
    11: "16-bit audio, monaural", 12: "Qualcomm", 13: "CN", 14: "MPEG-I/II Audio",
    15: "g728", 16: "DVI4 11k", 17: "DVI4 22k", 18: "g729", 19: "CN(old)", 25: "CellB",
    26: "JPEG", 28: "NV", 31: "h261", 32: "MPEG-I/II Video", 33: "MPEG-II streams",
    34: "h263",
}
# fmt: on

#: Dynamic payload types Wireshark 4.0 names by default without any SDP (its ``rtp.pt``
#: dissector table); the names carry no clock rate.
DEFAULT_DYNAMIC_NAMES: dict[int, str] = {99: "rtp.rfc2198", 100: "rtpevent", 101: "rtpevent"}

#: Payload types that RTCP packets look like when read as RTP (RFC 5761).
RTCP_CONFLICT_PTS = range(72, 77)


def dynamic_clock_rate(name: str) -> int:
    """Wireshark's ``get_dyn_pt_clock_rate``: the rate for an encoding name, or 0."""
    low = name.lower()
    for mime, rate in reversed(DYNAMIC_CLOCK_RATES):
        if low.startswith(mime.lower()):
            return rate
    return 0


def payload_name(pt: int, encoding: str | None) -> str:
    """The name Wireshark shows for a payload type."""
    if pt < 96:
        return STATIC_NAMES.get(pt, f"RTPType-{pt}")
    if encoding:
        return encoding
    return DEFAULT_DYNAMIC_NAMES.get(pt, f"RTPType-{pt}")


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """How one payload type is to be read: its name and RTP clock rate (0 = unknown)."""

    name: str
    clock_rate: int
    telephone_event: bool = False


def payload_format(
    pt: int,
    rtpmap: dict[int, tuple[str, int]] | None,
    overrides: dict[int, int] | None = None,
) -> PayloadFormat:
    """Wireshark's clock-rate choice for ``pt``, then the caller's override on top."""
    encoding: str | None = None
    rate = 0
    if rtpmap is not None and pt in rtpmap:
        encoding, sdp_rate = rtpmap[pt]
    else:
        sdp_rate = 0
    tevent = False
    if pt < 96:
        rate = STATIC_CLOCK_RATES.get(pt, 0)
    else:
        name = encoding if encoding is not None else DEFAULT_DYNAMIC_NAMES.get(pt)
        if name is not None:
            if name.lower().startswith("telephone-event"):
                rate = 0
                tevent = True
            elif sdp_rate:
                rate = sdp_rate
            else:
                rate = dynamic_clock_rate(name)
    if overrides and pt in overrides:
        rate = overrides[pt]
        tevent = False
    return PayloadFormat(payload_name(pt, encoding), rate, tevent)


class Conversation:
    """Wireshark's RTP conversation: how the packets were found to be RTP (SDP, Decode
    As, heuristic) and the payload-type map (``a=rtpmap``) that applies to them."""

    __slots__ = ("method", "rtpmap", "setup_frame")

    def __init__(
        self, method: str, setup_frame: int, rtpmap: dict[int, tuple[str, int]] | None = None
    ) -> None:
        self.method = method
        self.setup_frame = setup_frame
        self.rtpmap = rtpmap


class RtpStreamState:
    """Running statistics of one RTP stream; ``add`` is called once per packet, in order."""

    __slots__ = (
        "clock_rate",
        "conversation",
        "delta",
        "first_frame",
        "first_ns",
        "first_ts",
        "formats",
        "jitter",
        "last_frame",
        "last_ns",
        "lastarrival",
        "lastnominal",
        "max_delta",
        "max_delta_frame",
        "max_jitter",
        "max_skew",
        "mean_delta",
        "mean_jitter",
        "min_delta",
        "min_jitter",
        "payload_types",
        "pt",
        "seq_cycles",
        "seq_num",
        "sequence_errors",
        "start_ms",
        "start_seq",
        "stop_seq",
        "time",
        "total",
        "under",
        "wrong_timestamp",
    )

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.total = 0
        self.payload_types: list[int] = []
        self.formats: dict[int, PayloadFormat] = {}
        self.clock_rate = 0
        self.first_frame = 0
        self.last_frame = 0
        self.first_ns = 0
        self.last_ns = 0
        self.max_delta_frame = 0
        self.sequence_errors = 0
        self.wrong_timestamp = 0
        self.seq_cycles = 0
        self.under = False
        self.delta = 0.0
        self.max_delta = 0.0
        self.min_delta = -1.0
        self.mean_delta = 0.0
        self.jitter = 0.0
        self.min_jitter = -1.0
        self.max_jitter = 0.0
        self.mean_jitter = 0.0
        self.max_skew = 0.0
        self.lastnominal = 0.0
        self.lastarrival = 0.0
        self.time = 0.0
        self.start_ms = 0.0
        self.first_ts = 0
        self.seq_num = 0
        self.start_seq = 0
        self.stop_seq = 0
        self.pt = 0

    def add(
        self,
        frame: int,
        ts_ns: int,
        now_ms: float,
        seq: int,
        ts: int,
        pt: int,
        marker: bool,
        fmt: PayloadFormat,
    ) -> None:
        """One packet: ``now_ms`` is its time relative to the capture's first packet."""
        if pt not in self.formats:
            self.formats[pt] = fmt
            self.payload_types.append(pt)
        self.last_frame = frame
        self.last_ns = ts_ns
        total = self.total
        if total == 0:
            self.first_frame = frame
            self.first_ns = ts_ns
            self.start_seq = self.stop_seq = self.seq_num = seq
            self.start_ms = self.time = now_ms
            self.first_ts = ts
            self.pt = pt
            self.total = 1
            return

        first_ts = self.first_ts
        if first_ts <= ts:
            in_time = ts - first_ts < 0x80000000
        else:
            in_time = (0xFFFFFFFF - first_ts) + ts < 0x80000000
        # Wrap-around counting for "expected" (Wireshark's seq_cycles / under).
        if in_time:
            if (seq < self.start_seq and not self.under) or (
                seq == 0 and self.stop_seq == 65535 and not self.under
            ):
                self.seq_cycles += 1
                self.under = True
            elif seq > self.start_seq and self.under:
                self.under = False
        seq_num = self.seq_num
        if (in_time and seq_num + 1 == seq) or (in_time and seq_num == 65535 and seq == 0):
            self.seq_num = seq
        elif in_time and (seq_num + 1 < seq or seq_num - seq > 0xFF00):
            self.seq_num = seq
            self.sequence_errors += 1
        elif seq_num + 1 > seq:
            self.sequence_errors += 1

        prev_pt = self.pt
        self.pt = pt
        clock_rate = fmt.clock_rate
        delta = self.delta
        current_jitter = 0.0
        divisor = clock_rate // 1000
        if in_time:
            if clock_rate != 0 and divisor != 0:
                self.clock_rate = clock_rate
                nominal = ((ts - first_ts) & 0xFFFFFFFF) / divisor
                expected = self.time + (nominal - self.lastnominal)
                current_diff = abs(now_ms - expected)
                current_jitter = (15 * self.jitter + current_diff) / 16
                delta = now_ms - self.time
                self.delta = delta
                self.jitter = current_jitter
                self.lastnominal = nominal
                skew = nominal - (now_ms - self.start_ms)
                if abs(skew) > abs(self.max_skew):
                    self.max_skew = skew
            else:
                clock_rate = 0
                delta = now_ms - self.time
                self.delta = delta
        elif not (clock_rate != 0 and divisor != 0):
            clock_rate = 0

        if not in_time:
            self.wrong_timestamp += 1
        regular = (
            in_time
            and not marker
            and pt != PT_CN
            and pt != PT_CN_OLD
            and prev_pt != PT_CN
            and prev_pt != PT_CN_OLD
        )
        if regular:
            if delta > self.max_delta:
                self.max_delta = delta
                self.max_delta_frame = frame
            if self.min_delta == -1 or delta < self.min_delta:
                self.min_delta = delta
            self.mean_delta = (self.mean_delta * (total - 1) + delta) / total
            if clock_rate != 0:
                jitter = self.jitter
                if jitter > self.max_jitter:
                    self.max_jitter = jitter
                self.mean_jitter = (self.mean_jitter * (total - 1) + current_jitter) / total
                if self.min_jitter == -1 or jitter < self.min_jitter:
                    self.min_jitter = jitter
        if in_time:
            self.time = now_ms
        self.stop_seq = seq
        self.total = total + 1

    @property
    def expected(self) -> int:
        return self.stop_seq + self.seq_cycles * 0x10000 - self.start_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.total

    @property
    def problem(self) -> bool:
        return self.sequence_errors > 0 or self.wrong_timestamp > 0


def heuristic_accepts(buf: bytes, off: int, length: int) -> bool:
    """Wireshark's ``rtp_udp`` heuristic for one UDP payload (version 2 only)."""
    if length < 12:
        # Wireshark needs only 2 bytes to say yes, but then cannot read the header:
        # such packets never reach the stream statistics.
        return False
    b0 = buf[off]
    if b0 >> 6 != 2:
        return False
    pt = buf[off + 1] & 0x7F
    if 72 <= pt <= 76:
        return False
    hdr = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if length < hdr + 4:
            return False
        hdr += 4 + 4 * ((buf[off + hdr + 2] << 8) | buf[off + hdr + 3])
    if length < hdr:
        return False
    if b0 & 0x20:
        pad = buf[off + length - 1]
        if pad == 0 or length - hdr < pad:
            return False
    return True
