"""Capture files: formats, link types, and bad input (never a traceback, never a hang)."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import refuses_missing_and_directory

from voiceaudit.capture import analyze_capture
from voiceaudit.capture.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureReader,
    PcapngWriter,
    write_pcap_header,
    write_pcap_record,
)
from voiceaudit.capture.synth import CaptureBuilder, rtp_packet, udp_datagram
from voiceaudit.errors import CaptureError, EnvironmentProblem, ExitCode

T0 = 1_700_000_000_000_000_000


def rtp_call(n: int = 200, jitter_ns: int = 1_500_000, streams: int = 1) -> CaptureBuilder:
    """``streams`` RTP streams of ``n`` G.711 packets, 20 ms apart with a known wobble."""
    b = CaptureBuilder()
    for k in range(streams):
        t = T0 + k * 1_000_000
        for i in range(n):
            t += 20_000_000 + (jitter_ns if i % 2 else -jitter_ns // 2)
            b.add(
                t,
                udp_datagram(
                    f"10.0.{k}.1",
                    4000 + 2 * k,
                    "10.9.9.9",
                    6000,
                    rtp_packet(i, 160 * i, 0x1000 + k, 8),
                ),
            )
    return b


def stats(path: Path) -> list[tuple[object, ...]]:
    r = analyze_capture(path, heuristic_rtp=True)
    return [
        (
            s.ssrc,
            s.packets,
            s.lost,
            s.min_delta_ms,
            s.mean_delta_ms,
            s.max_delta_ms,
            s.min_jitter_ms,
            s.mean_jitter_ms,
            s.max_jitter_ms,
        )
        for s in r.rtp_streams
    ]


# ------------------------------------------------------------------ not a capture


def test_not_a_capture(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("this is not a capture\n")
    with pytest.raises(CaptureError, match="not a pcap or pcapng") as ei:
        analyze_capture(p)
    assert ei.value.exit_code == ExitCode.BAD_INPUT
    assert ei.value.hint is not None and "editcap" in ei.value.hint


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    with pytest.raises(CaptureError, match="empty"):
        analyze_capture(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    refuses_missing_and_directory(
        analyze_capture, CaptureError, tmp_path / "nope.pcap", "directory"
    )


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_capture_with_no_packets(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"none.{fmt}"
    with open(p, "wb") as f:
        if fmt == "pcap":
            write_pcap_header(f)
        else:
            PcapngWriter(f).interface(LINKTYPE_ETHERNET)
    with pytest.raises(CaptureError, match="holds no packets"):
        analyze_capture(p)


def test_capture_with_no_rtp(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow("10.0.0.1", 40000, "10.0.0.2", 80)
    f.handshake(T0, T0 + 1_000_000, T0 + 2_000_000)
    p = tmp_path / "tcp.pcap"
    b.write(p, fmt="pcap")
    r = analyze_capture(p, heuristic_rtp=True)
    assert r.rtp_streams == () and len(r.tcp_connections) == 1 and not r.warnings


# ------------------------------------------------------------------ truncation


def _record_ends(data: bytes) -> list[int]:
    """Where each pcap record ends (an independent walk of the file)."""
    ends, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        pos += 16 + incl
        if pos <= len(data):
            ends.append(pos)
    return ends


def test_truncated_pcap_gives_partial_results(tmp_path: Path) -> None:
    full = tmp_path / "full.pcap"
    rtp_call(300).write(full, fmt="pcap")
    data = full.read_bytes()
    ends = _record_ends(data)
    for whole in (1, 57, 150, 299):
        cut = tmp_path / f"cut{whole}.pcap"
        cut.write_bytes(data[: ends[whole - 1] + 7])  # 7 bytes into the next record
        r = analyze_capture(cut, heuristic_rtp=True)
        assert r.truncated and r.packets == whole
        assert any("truncated" in w for w in r.warnings)
        assert sum(s.packets for s in r.rtp_streams) == whole


def test_truncated_pcapng_and_gzip(tmp_path: Path) -> None:
    full = tmp_path / "full.pcapng"
    rtp_call(300).write(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = analyze_capture(cut, heuristic_rtp=True)
    assert r.truncated and 150 < r.packets < 300 and r.warnings
    gz = tmp_path / "cut.pcapng.gz"
    gz.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    r2 = analyze_capture(gz, heuristic_rtp=True)
    assert r2.truncated and 0 < r2.packets < 300 and r2.warnings


def test_corrupt_block_stops_with_a_warning(tmp_path: Path) -> None:
    full = tmp_path / "full.pcapng"
    rtp_call(100).write(full)
    data = bytearray(full.read_bytes())
    # Find the 60th Enhanced Packet Block and give it an impossible length.
    pos, seen = 0, 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 6:
            seen += 1
            if seen == 60:
                struct.pack_into("<I", data, pos + 4, 0x7FFFFFF0)
                break
        pos += blen
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(data))
    r = analyze_capture(bad, heuristic_rtp=True)
    assert r.packets == 59 and r.truncated
    assert any("corrupt" in w for w in r.warnings)


def test_gzip_capture_reads_like_the_plain_one(tmp_path: Path) -> None:
    plain = tmp_path / "call.pcap"
    rtp_call(120).write(plain, fmt="pcap")
    gz = tmp_path / "call.pcap.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert stats(gz) == stats(plain)


# ------------------------------------------------------------------ link types, formats


def _strip_ether(frame: bytes) -> bytes:
    return frame[14:]


def _encapsulate(lt: int, ip: bytes) -> bytes:
    if lt == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", 0x0800) + ip
    if lt == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + ip
    if lt == LINKTYPE_NULL:
        return struct.pack("<I", 2) + ip
    if lt == LINKTYPE_LOOP:
        return struct.pack(">I", 2) + ip
    if lt == LINKTYPE_RAW:
        return ip
    raise AssertionError(lt)


@pytest.mark.parametrize(
    "lt", [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_RAW]
)
def test_link_types_give_the_same_streams(tmp_path: Path, lt: int) -> None:
    b = rtp_call(150, streams=2)
    eth = tmp_path / "eth.pcapng"
    b.write(eth)
    other = tmp_path / f"lt{lt}.pcapng"
    with open(other, "wb") as f:
        w = PcapngWriter(f)
        for ts, _i, frame in sorted(b.packets):
            w.write(ts, _encapsulate(lt, _strip_ether(frame)), linktype=lt)
    assert stats(other) == stats(eth)


def test_vlan_tags(tmp_path: Path) -> None:
    b = rtp_call(80)
    eth = tmp_path / "eth.pcap"
    b.write(eth, fmt="pcap")
    tagged = tmp_path / "vlan.pcap"
    with open(tagged, "wb") as f:
        write_pcap_header(f)
        for ts, _i, frame in sorted(b.packets):
            # Two stacked tags (QinQ) between the MAC addresses and the EtherType.
            frame = frame[:12] + b"\x88\xa8\x00\x10" + b"\x81\x00\x00\x20" + frame[12:]
            write_pcap_record(f, ts, frame)
    assert stats(tagged) == stats(eth)


def test_pcapng_interfaces_and_time_resolutions(tmp_path: Path) -> None:
    """Two interfaces, one in microseconds (default), one in 2^-20 s ticks, offset."""
    b = rtp_call(60, jitter_ns=0)
    p = tmp_path / "multi.pcapng"
    with open(p, "wb") as f:

        def block(btype: int, body: bytes) -> None:
            body += b"\0" * ((-len(body)) % 4)
            f.write(
                struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
            )

        block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0))  # microseconds
        opts = struct.pack("<HHB3x", 9, 1, 0x80 | 20) + struct.pack("<HHq", 14, 8, 5) + b"\0" * 4
        block(1, struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + opts)  # 2^-20 s, +5 s offset
        for n, (ts, _i, frame) in enumerate(sorted(b.packets)):
            if n % 2 == 0:
                ticks, iface, data = ts // 1000, 0, frame
            else:
                ticks, iface, data = ((ts - 5 * 10**9) << 20) // 10**9, 1, frame[14:]
            block(
                6,
                struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
                + data,
            )
    with CaptureReader(p) as r:
        times = [ts for ts, _lt, _d, _w in r.packets()]
        assert r.facts.link_types == {LINKTYPE_ETHERNET, LINKTYPE_RAW}
    want = [ts for ts, _i, _f in sorted(b.packets)]
    assert len(times) == len(want)
    # Microsecond ticks are exact here; 2^-20 s ticks are within one tick (~954 ns).
    assert all(abs(a - w) < 954 for a, w in zip(times, want, strict=True))
    ((_ssrc, packets, lost, *_rest),) = stats(p)
    assert (packets, lost) == (60, 0)


def test_ipv6_rtp(tmp_path: Path) -> None:
    import ipaddress

    def udp6(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        hdr = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(udp),
            17,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x86\xdd" + hdr + udp

    b = CaptureBuilder()
    t = T0
    for i in range(50):
        t += 20_000_000
        b.add(t, udp6("2001:db8::1", 5000, "2001:db8::2", 5002, rtp_packet(i, 160 * i, 7, 0)))
    p = tmp_path / "v6.pcap"
    b.write(p, fmt="pcap")
    (s,) = analyze_capture(p, heuristic_rtp=True).rtp_streams
    assert (s.src, s.dst, s.packets, s.lost) == ("[2001:db8::1]:5000", "[2001:db8::2]:5002", 50, 0)
    assert s.min_delta_ms == pytest.approx(20.0) and s.max_jitter_ms == pytest.approx(0.0)


def test_ip_fragments_are_reported(tmp_path: Path) -> None:
    b = rtp_call(10)
    p = tmp_path / "frag.pcap"
    with open(p, "wb") as f:
        write_pcap_header(f)
        for n, (ts, _i, frame) in enumerate(sorted(b.packets)):
            if n == 3:  # set "more fragments" on one datagram
                frame = frame[:20] + b"\x20\x00" + frame[22:]
            write_pcap_record(f, ts, frame)
    r = analyze_capture(p, heuristic_rtp=True)
    assert r.rtp_streams[0].packets == 9
    assert any("fragment" in w for w in r.warnings)


# ------------------------------------------------------------------ tshark missing


def test_keylog_without_tshark(tmp_path: Path) -> None:
    b = CaptureBuilder()
    f = b.flow("10.0.0.1", 40000, "10.0.0.2", 443)
    f.handshake(T0, T0 + 1_000_000, T0 + 2_000_000)
    f.send(T0 + 3_000_000, True, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
    p = tmp_path / "tls.pcap"
    b.write(p, fmt="pcap")
    keys = tmp_path / "keys.txt"
    keys.write_text("CLIENT_RANDOM 00 00\n")
    with pytest.raises(EnvironmentProblem, match="tshark") as ei:
        analyze_capture(p, keylog=keys, tshark=str(tmp_path / "no-tshark-here"))
    assert ei.value.exit_code == ExitCode.ENVIRONMENT
    # Without a key log, tshark is not needed at all.
    assert len(analyze_capture(p).tcp_connections) == 1


# ------------------------------------------------------------------ size and memory


def _fast_rtp_file(path: Path, packets: int, streams: int = 10) -> None:
    """``streams`` interleaved G.711 streams, written by patching one template each."""
    pkt = [
        udp_datagram("10.0.0.1", 4000 + 2 * k, "10.0.0.2", 6000, rtp_packet(0, 0, 0x100 + k, 8))
        for k in range(streams)
    ]
    with open(path, "wb") as f:
        write_pcap_header(f)
        for i in range(packets):
            k = i % streams
            n = i // streams
            frame = bytearray(pkt[k])
            # Sequence number and timestamp sit at bytes 44-49 (Ethernet+IP+UDP+2).
            struct.pack_into("!HI", frame, 44, n & 0xFFFF, (160 * n) & 0xFFFFFFFF)
            write_pcap_record(f, T0 + n * 20_000_000 + k * 1000, bytes(frame))


def _peak_rss_kib(path: Path) -> int:
    """Peak resident memory of a fresh interpreter that analyses ``path``."""
    code = (
        "import resource, sys\n"
        "from voiceaudit.capture import analyze_capture\n"
        "r = analyze_capture(sys.argv[1], heuristic_rtp=True)\n"
        "assert r.packets > 0\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(out.stdout.strip())


def test_memory_does_not_grow_with_packets(tmp_path: Path) -> None:
    small, large = tmp_path / "small.pcap", tmp_path / "large.pcap"
    _fast_rtp_file(small, 20_000)
    _fast_rtp_file(large, 200_000)
    assert large.stat().st_size > 40 * 2**20
    a, b = _peak_rss_kib(small), _peak_rss_kib(large)
    # Ten times the packets (40 MB more file), the same streams: a few MB at most.
    assert b - a < 12 * 1024, (a, b)


@pytest.mark.slow
def test_a_million_packets(tmp_path: Path) -> None:
    p = tmp_path / "million.pcap"
    _fast_rtp_file(p, 1_000_000)
    r = analyze_capture(p, heuristic_rtp=True)
    assert r.packets == 1_000_000
    assert len(r.rtp_streams) == 10
    assert all(s.packets == 100_000 and s.lost == 0 for s in r.rtp_streams)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_big_endian_files(tmp_path: Path, fmt: str) -> None:
    b = rtp_call(90)
    little = tmp_path / f"le.{fmt}"
    b.write(little, fmt=fmt)
    big = tmp_path / f"be.{fmt}"
    with open(big, "wb") as f:
        if fmt == "pcap":
            f.write(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
            for ts, _i, frame in sorted(b.packets):
                sec, rem = divmod(ts, 10**9)
                f.write(struct.pack(">IIII", sec, rem // 1000, len(frame), len(frame)) + frame)
        else:

            def block(btype: int, body: bytes) -> None:
                body += b"\0" * ((-len(body)) % 4)
                n = 12 + len(body)
                f.write(struct.pack(">II", btype, n) + body + struct.pack(">I", n))

            block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
            block(1, struct.pack(">HHI", LINKTYPE_ETHERNET, 0, 0))
            for ts, _i, frame in sorted(b.packets):
                us = ts // 1000
                block(
                    6,
                    struct.pack(">IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(frame), len(frame))
                    + frame,
                )
    assert stats(big) == stats(little)
