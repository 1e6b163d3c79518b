"""voiceaudit's RTP statistics against the installed TShark, run live.

Every RTP stream TShark lists for the real captures (default and heuristic runs), for
randomised captures full of edge cases (loss, duplicates, reordering, timestamp jumps and
wrap-around, comfort noise, markers, telephone-event), and the table of UDP ports whose
Wireshark dissector hides RTP from the heuristic.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_net_realdata import realdata

from voiceaudit.capture import NetReport, analyze_capture
from voiceaudit.capture.synth import CaptureBuilder, rtp_packet, sip_invite, udp_datagram
from voiceaudit.capture.wsports import CLAIMING_UDP_PORTS

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

_ROW = re.compile(
    r"\s*(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(0x[0-9A-F]+)\s+(.*?)\s+(\d+)\s+"
    r"(-?\d+) \((-?[\d.]+)%\)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)"
)
Row = tuple[str, str, str, str, str, str, str, str, str, str]


def _ep(addr: str, port: str) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def parse_streams(stdout: str) -> dict[tuple[str, str, str], Row]:
    """TShark's ``-z rtp,streams`` table, one row per stream."""
    rows: dict[tuple[str, str, str], Row] = {}
    for line in stdout.splitlines():
        m = _ROW.match(line)
        if m:
            g = m.groups()
            rows[(_ep(g[2], g[3]), _ep(g[4], g[5]), g[6])] = (
                g[7].replace(" ", ""),
                g[8],
                g[9],
                g[11],
                g[12],
                g[13],
                g[14],
                g[15],
                g[16],
                "",
            )
    return rows


def tshark_streams(path: Path, heuristic: bool) -> dict[tuple[str, str, str], Row]:
    argv = ["tshark", "-n", "-r", str(path), "-q", "-z", "rtp,streams"]
    if heuristic:
        argv[1:1] = ["-o", "rtp.heuristic_rtp:TRUE"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    return parse_streams(out)


def ours(report: NetReport) -> dict[tuple[str, str, str], Row]:
    def f(v: float | None, missing: str) -> str:
        return missing if v is None else f"{v:.3f}"

    return {
        (s.src, s.dst, s.ssrc_hex): (
            ",".join(s.payload_names).replace(" ", ""),
            str(s.packets),
            str(s.lost),
            f(s.min_delta_ms, "-1.000"),
            f(s.mean_delta_ms, "0.000"),
            f(s.max_delta_ms, "0.000"),
            f(s.min_jitter_ms, "-1.000"),
            f(s.mean_jitter_ms, "0.000"),
            f(s.max_jitter_ms, "0.000"),
            "",
        )
        for s in report.rtp_streams
    }


def _over_tcp(report: NetReport, key: tuple[str, str, str]) -> bool:
    """RTP that TShark finds inside TURN-over-TCP framing (voiceaudit does not unwrap it)."""
    ends = {key[0], key[1]}
    return any({c.client, c.server} == ends for c in report.tcp_connections)


def _real_captures() -> list[Path]:
    root = realdata() / "pcap"
    return sorted(p for p in root.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))


@pytest.mark.slow
@pytest.mark.parametrize("heuristic", [False, True], ids=["default", "heuristic"])
def test_every_stream_of_every_real_capture(heuristic: bool) -> None:
    captures = _real_captures()
    compared = 0
    for path in captures:
        r = analyze_capture(path, heuristic_rtp=heuristic)
        theirs = {k: v for k, v in tshark_streams(path, heuristic).items() if not _over_tcp(r, k)}
        assert ours(r) == theirs, path.name
        compared += len(theirs)
    assert compared >= (30 if heuristic else 15)


def _random_capture(seed: int, path: Path) -> bool:
    rnd = random.Random(seed)
    b = CaptureBuilder()
    t0 = 1_700_000_000_000_000_000
    use_sdp = rnd.random() < 0.5
    for k in range(rnd.randint(1, 3)):
        src, dst, sport, dport = f"10.0.{k}.1", f"10.0.{k}.2", 20000 + 2 * k, 30000 + 2 * k
        ssrc = rnd.getrandbits(32)
        pt = rnd.choice([0, 8, 9, 18, 96, 111, 101])
        rtpmap: dict[int, str] = {}
        if pt >= 96:
            rtpmap[pt] = rnd.choice(
                ["opus/48000/2", "telephone-event/8000", "AMR/8000", "H264/90000"]
            )
        tev = 101 if rnd.random() < 0.3 and pt != 101 else None
        if tev:
            rtpmap[tev] = "telephone-event/8000"
        if use_sdp:
            body = sip_invite(
                call_id=f"c{seed}{k}",
                from_host=src,
                to_host=dst,
                media_addr=dst,
                media_port=dport,
                payload_types=(pt,) + ((tev,) if tev else ()),
                rtpmap=rtpmap,
            )
            b.add(t0 + k * 1000, udp_datagram(src, 5060, dst, 5060, body))
        enc = rtpmap.get(pt, "")
        rate = 48000 if "opus" in enc else 90000 if "H264" in enc else 8000
        step = rate // 50
        seq = rnd.choice([rnd.randint(0, 65535), 65530, 0, 65535])
        ts = rnd.choice([rnd.getrandbits(32), 0xFFFFFF00, 0])
        t = t0 + 10_000_000 + k * 3_000_000
        pkts: list[list[int]] = []
        for _ in range(rnd.randint(2, 120)):
            cur = pt
            r = rnd.random()
            if r < 0.05 and tev:
                cur = tev
            elif r < 0.08:
                cur = 13  # comfort noise
            t += 20_000_000 + rnd.randint(-3_000_000, 3_000_000)
            if rnd.random() < 0.03:
                t += rnd.randint(0, 200_000_000)
            tsv = ts
            if rnd.random() < 0.04:
                tsv = ts - rnd.randint(1, 5000)  # timestamp goes back
            if rnd.random() < 0.01:
                tsv = ts + 0x90000000  # a wild jump
            pkts.append([t, seq, tsv, cur, int(rnd.random() < 0.05)])
            seq += rnd.randint(2, 5) if rnd.random() < 0.05 else 1
            if rnd.random() < 0.03:
                pkts.append([t + 1000, seq - 1, tsv, cur, 0])  # a duplicate
            ts += step
        for _ in range(rnd.randint(0, 3)):  # reorder neighbours
            if len(pkts) > 3:
                i = rnd.randrange(len(pkts) - 1)
                pkts[i][1:], pkts[i + 1][1:] = pkts[i + 1][1:], pkts[i][1:]
        for tt, sq, tsv, p, m in pkts:
            b.add(
                tt,
                udp_datagram(src, sport, dst, dport, rtp_packet(sq, tsv, ssrc, p, marker=bool(m))),
            )
    b.write(path, fmt=rnd.choice(["pcap", "pcapng", "pcap-ns"]))
    return use_sdp


@pytest.mark.parametrize("seed", range(16))
def test_randomised_captures_equal_tshark(seed: int, tmp_path: Path) -> None:
    path = tmp_path / "random.pcap"
    use_sdp = _random_capture(seed, path)
    for heuristic in [False, True] if use_sdp else [True]:
        theirs = tshark_streams(path, heuristic)
        assert theirs, "the capture should hold RTP"
        assert ours(analyze_capture(path, heuristic_rtp=heuristic)) == theirs


def test_clock_rate_option_equals_sdp_rate(tmp_path: Path) -> None:
    """Opus without SDP plus --clock-rate gives what TShark computes with the SDP."""
    rnd = random.Random(5)
    with_sdp, without = CaptureBuilder(), CaptureBuilder()
    t = 1_700_000_000_000_000_000
    body = sip_invite(
        call_id="x",
        from_host="10.0.0.1",
        to_host="10.0.0.2",
        media_addr="10.0.0.2",
        media_port=4000,
        payload_types=(111,),
        rtpmap={111: "opus/48000/2"},
    )
    with_sdp.add(t, udp_datagram("10.0.0.1", 5060, "10.0.0.2", 5060, body))
    for i in range(300):
        t += 20_000_000 + rnd.randint(-4_000_000, 4_000_000)
        pkt = udp_datagram(
            "10.0.0.1", 4000, "10.0.0.2", 4000, rtp_packet(i, 960 * i, 0xABCDEF01, 111)
        )
        with_sdp.add(t, pkt)
        without.add(t, pkt)
    a, b = tmp_path / "sdp.pcap", tmp_path / "bare.pcap"
    with_sdp.write(a, fmt="pcap")
    without.write(b, fmt="pcap")
    (theirs,) = tshark_streams(a, False).values()
    (mine,) = ours(analyze_capture(b, heuristic_rtp=True, clock_rates={111: 48000})).values()
    # Same figures; only the payload name differs (no SDP to name it).
    assert theirs[0] == "opus" and mine[0] == "RTPType-111"
    assert mine[1:] == theirs[1:]
    assert theirs[6] != "-1.000"  # jitter was computed


def test_claiming_ports_table_matches_installed_tshark(tmp_path: Path) -> None:
    """Re-measure which registered UDP ports hide RTP from TShark's heuristic."""
    out = subprocess.run(
        ["tshark", "-G", "decodes"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    ports = sorted(
        {
            int(f[1])
            for f in (ln.split("\t") for ln in out.splitlines())
            if len(f) >= 3 and f[0] == "udp.port" and f[1].isdigit()
        }
    )
    b = CaptureBuilder()
    t = 1_700_000_000_000_000_000
    for i, port in enumerate(ports):
        src = f"10.{(i >> 8) & 255}.{i & 255}.1"
        for k in range(3):
            t += 1_000_000
            b.add(
                t,
                udp_datagram(
                    src, 65001, "10.250.0.1", port, rtp_packet(100 + k, 160 * k, 0x10000 + port, 8)
                ),
            )
    path = tmp_path / "ports.pcap"
    b.write(path, fmt="pcap")
    found = {int(k[1].rsplit(":", 1)[1]) for k in tshark_streams(path, True)}
    claimed_by_tshark = set(ports) - found
    assert claimed_by_tshark == set(CLAIMING_UDP_PORTS)
    streams = analyze_capture(path, heuristic_rtp=True).rtp_streams
    mine = {int(s.dst.rsplit(":", 1)[1]) for s in streams}
    assert mine == found
