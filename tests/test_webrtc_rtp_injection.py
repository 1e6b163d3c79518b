"""Injected RTP jitter and loss on the reference pipeline's WebRTC media, recovered from a
capture of the run.

The reference server delays each outgoing RTP packet by a seeded random amount and drops a
seeded random share of them, recording what it did to every packet and when each packet it
let through went to the socket. voiceaudit's capture analysis of the SRTP headers (in the
clear) must give the same RFC 3550 jitter as the one computed from those send times and the
packets' RTP timestamps (within 0.5 ms), the same loss (within 1 percentage point), and at
least the jitter of the intended delays alone (the machine's scheduling can only add to it).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from voiceaudit.analysis.network import join_capture, probe_endpoints
from voiceaudit.capture import analyze_capture
from voiceaudit.cli import run
from voiceaudit.reference.groundtruth import read_ground_truth
from voiceaudit.trace_io import read_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
]

OPUS_CLOCK = 48_000


def rfc3550_jitter_ms(delays_ns: list[int]) -> tuple[float, float]:
    """Mean and max RFC 3550 jitter of packets whose only transit difference is these delays."""
    j = 0.0
    seen = []
    for prev, cur in itertools.pairwise(delays_ns):
        d = abs(cur - prev) / 1e9 * OPUS_CLOCK  # timestamp units
        j += (d - j) / 16
        seen.append(j / OPUS_CLOCK * 1000)
    return float(np.mean(seen)), float(np.max(seen))


def wire_jitter_ms(wire: list[list[int]]) -> float:
    """Mean RFC 3550 jitter of packets sent at these times: ``[seq, rtp_timestamp, sent_ns]``
    in send order (order is kept, so it is the order a capture on this host sees)."""
    ts = np.unwrap(np.array([w[1] for w in wire], dtype=np.float64), period=2.0**32)
    sent_s = np.array([w[2] for w in wire], dtype=np.int64)
    transit = (sent_s - sent_s[0]) / 1e9 * OPUS_CLOCK - (ts - ts[0])
    j = 0.0
    seen = []
    for d in np.abs(np.diff(transit)):
        j += (d - j) / 16
        seen.append(j / OPUS_CLOCK * 1000)
    return float(np.mean(seen))


def _other_rtp(stop: threading.Event) -> None:
    """Another RTP stream on loopback, not the run's (as another WebRTC session on the host
    would put in the capture): 20 ms packets between two sockets of its own."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        seq = 0
        while not stop.wait(0.02):
            header = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 960, 0x0BADCAFE)
            tx.sendto(header + bytes(60), rx.getsockname())
            seq += 1


def test_rtp_jitter_and_loss_recovered(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stop = threading.Event()
    other = threading.Thread(target=_other_rtp, args=(stop,), daemon=True)
    other.start()
    try:
        rc = run([
            "run", "--protocol", "webrtc", "--capture", "--turns", "2", "--gap-ms", "200",
            "--inject", "rtp-jitter=20ms", "--inject", "rtp-loss=5%", "--out", str(out),
        ])  # fmt: skip
    finally:
        stop.set()
        other.join(5)
    assert rc == 0
    turns = [r for r in read_ground_truth(out / "ground_truth.jsonl") if r.get("record") == "turn"]
    delays: list[int] = []
    wire: list[list[int]] = []
    sent = dropped = 0
    for r in turns:
        delays += r["injected"].get("rtp_delays_ns", [])
        wire += r["injected"].get("rtp_wire", [])
        sent += r["injected"].get("rtp_sent", 0)
        dropped += r["injected"].get("rtp_dropped", 0)
    assert sent > 200 and dropped > 0
    truth_loss = dropped / (sent + dropped) * 100
    # a packet still held back when the last turn was written is not in the file
    assert sent - 2 <= len(wire) <= sent, (len(wire), sent)
    # the jitter the capture must show: of the packets as they went to the socket, the server's
    # own scheduling (the track's pacing, late timers) on top of the injected delays
    truth_mean = wire_jitter_ms(wire)
    intended_mean, _ = rfc3550_jitter_ms(delays)
    assert intended_mean > 4.0  # uniform 0..20 ms delays: about 6.7 ms

    # aiortc sets the RTP marker bit on every audio packet, which Wireshark's statistics
    # skip (a talkspurt start): count them.
    report = analyze_capture(
        out / "capture.pcapng",
        heuristic_rtp=True,
        count_marked=True,
        clock_rates={96: OPUS_CLOCK, 111: OPUS_CLOCK},
    )
    # The capture also holds the other stream; the trace names the probe's ICE endpoint,
    # and the report's capture join keeps the run's own two streams, both continuous: the
    # probe's (no faults on loopback) and the server's, which the injection made lose
    # packets.
    media = probe_endpoints(read_trace(out / "trace.jsonl"), "udp")
    assert len(media) == 1
    ours = [s for s in report.rtp_streams if s.src in media or s.dst in media]
    assert len(ours) == 2
    assert any(s.ssrc == 0x0BADCAFE for s in report.rtp_streams)
    join = join_capture(read_trace(out / "trace.jsonl"), out / "capture.pcapng")
    assert sorted(s["ssrc"] for s in join.rtp_streams) == sorted(s.ssrc_hex for s in ours)
    assert any("left out" in w for w in join.warnings), join.warnings
    server = max(ours, key=lambda s: s.lost)
    assert server.mean_jitter_ms is not None
    measured_loss = server.lost / server.expected * 100
    assert abs(measured_loss - truth_loss) <= 1.0, (measured_loss, truth_loss)
    assert abs(server.mean_jitter_ms - truth_mean) <= 0.5, (server.mean_jitter_ms, truth_mean)
    assert server.mean_jitter_ms >= intended_mean - 0.5, (server.mean_jitter_ms, intended_mean)
    # and the probe's own stream, untouched, shows no loss and little jitter
    probe = min(ours, key=lambda s: s.lost)
    assert probe.lost == 0
    assert probe.mean_jitter_ms is not None and probe.mean_jitter_ms < truth_mean
