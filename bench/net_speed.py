"""How fast is voiceaudit's capture analysis, next to TShark and pyshark?

Builds (once, cached next to this script unless --capture is given) a synthetic capture
of at least 100,000 mixed packets: SIP-signalled RTP calls, WebSocket voice sessions
(masked audio frames up, JSON audio events down, several frames per segment) and HTTP
streaming responses (chunked server-sent events), each with its TCP handshake and ACKs.
Then prints, in one run, packets per second for:

1. voiceaudit's full analysis (``analyze_capture``, heuristic RTP on);
2. ``tshark -T fields`` extracting the same header fields (RTP found the same way);
3. pyshark's default iteration over the first 10,000 packets.

    .venv/bin/python bench/net_speed.py [--packets 120000] [--capture FILE] [--skip-pyshark]

Speed goals live here, never in the unit tests. Goal: (1) >= 100,000 packets/s, faster
than (2) alone.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from voiceaudit.capture import analyze_capture
from voiceaudit.capture.pcapfile import CaptureReader, PcapngWriter
from voiceaudit.capture.synth import (
    CaptureBuilder,
    rtp_packet,
    sip_invite,
    udp_datagram,
    ws_frame,
)

T0 = 1_750_000_000_000_000_000
MS = 1_000_000


def build(path: Path, target_packets: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    b = CaptureBuilder()
    seconds = 60
    # RTP: SIP-signalled G.711 calls, both directions, 20 ms packets.
    calls = max(1, target_packets // 6000)
    for k in range(calls):
        a, c = f"10.1.{k}.1", f"10.2.{k}.1"
        pa, pc = 20000 + 2 * k, 30000 + 2 * k
        start = T0 + k * 37 * MS
        b.add(
            start,
            udp_datagram(
                a,
                5060,
                c,
                5060,
                sip_invite(
                    call_id=f"bench{k}", from_host=a, to_host=c, media_addr=a, media_port=pa
                ),
            ),
        )
        b.add(
            start + 5 * MS,
            udp_datagram(
                c,
                5060,
                a,
                5060,
                sip_invite(
                    call_id=f"bench{k}",
                    from_host=a,
                    to_host=c,
                    media_addr=c,
                    media_port=pc,
                    response=True,
                ),
            ),
        )
        for direction, (s, sp, d, dp) in enumerate(((a, pa, c, pc), (c, pc, a, pa))):
            ssrc = rnd.getrandbits(32)
            t = start + 10 * MS + direction * 3 * MS
            for i in range(seconds * 50 // 2):
                t += 20 * MS + rnd.randint(-2 * MS, 2 * MS)
                b.add(t, udp_datagram(s, sp, d, dp, rtp_packet(i, 160 * i, ssrc, 8)))
    # WebSocket voice sessions: audio up every 20 ms, JSON audio deltas down in bursts.
    sessions = max(1, target_packets // 12000)
    for k in range(sessions):
        f = b.flow(f"10.3.{k}.1", 40000 + k, "10.4.0.1", 8765)
        t = T0 + k * 53 * MS
        f.handshake(t, t + MS // 2, t + MS)
        up = (
            b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        f.send(t + 2 * MS, True, up, ack_at=t + 2 * MS + MS // 4)
        f.send(t + 5 * MS, False, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        t += 10 * MS
        for i in range(seconds * 50 // 2):
            t += 20 * MS
            f.send(t, True, ws_frame(2, b"\0" * 640, mask=b"abcd"), ack_at=t + MS // 5)
            if i % 25 < 12:
                ev = b'{"type":"response.output_audio.delta","delta":"' + b"A" * 900 + b'"}'
                frames = ws_frame(1, ev) * (2 if i % 5 == 0 else 1)
                f.send(t + 7 * MS, False, frames, ack_at=t + 8 * MS)
    # HTTP streaming: chunked server-sent events.
    requests = max(1, target_packets // 800)
    for k in range(requests):
        f = b.flow("10.5.0.1", 50000 + k, "10.6.0.1", 8080)
        t = T0 + k * (seconds * 1000 // requests) * MS
        f.handshake(t, t + MS, t + MS + 100_000)
        req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        f.send(t + 2 * MS, True, req)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        t += 150 * MS
        f.send(t, False, head)
        for i in range(40):
            t += 15 * MS
            ev = b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i
            f.send(t, False, b"%x\r\n%s\r\n" % (len(ev), ev), ack_at=t + MS if i % 2 else None)
        f.send(t + MS, False, b"0\r\n\r\n", ack_at=t + 2 * MS)
        f.close(t + 3 * MS)
    return b.write(path)


def tshark_fields(path: Path) -> tuple[float, int]:
    fields = [
        "frame.time_epoch",
        "ip.src",
        "ip.dst",
        "udp.srcport",
        "udp.dstport",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.seq_raw",
        "tcp.ack_raw",
        "tcp.flags",
        "tcp.window_size_value",
        "tcp.len",
        "rtp.ssrc",
        "rtp.seq",
        "rtp.timestamp",
        "rtp.p_type",
        "rtp.marker",
        "websocket.opcode",
        "http.request.method",
        "http.response.code",
    ]
    argv = ["tshark", "-n", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-T", "fields"]
    for f in fields:
        argv += ["-e", f]
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t
    return dt, proc.stdout.count(b"\n")


def pyshark_slice(path: Path, n: int) -> tuple[float, int]:
    import pyshark

    tmp = Path(tempfile.mkstemp(suffix=".pcapng")[1])
    try:
        with open(tmp, "wb") as f:
            w = PcapngWriter(f)
            count = 0
            with CaptureReader(path) as r:
                for ts, lt, data, _wire in r.packets():
                    w.write(ts, data, linktype=lt)
                    count += 1
                    if count >= n:
                        break
        t = time.perf_counter()
        cap = pyshark.FileCapture(str(tmp))
        got = sum(1 for _ in cap)
        cap.close()
        return time.perf_counter() - t, got
    finally:
        tmp.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=120_000, help="size of the built capture")
    ap.add_argument("--capture", type=Path, help="use this capture instead of building one")
    ap.add_argument("--skip-pyshark", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for voiceaudit")
    args = ap.parse_args()

    if args.capture is not None:
        path = args.capture
    else:
        path = Path(tempfile.gettempdir()) / f"voiceaudit-bench-{args.packets}.pcapng"
        if not path.exists():
            t = time.perf_counter()
            n = build(path, args.packets)
            print(
                f"built {path} ({n:,} packets) in {time.perf_counter() - t:.1f} s", file=sys.stderr
            )
    size = os.path.getsize(path)

    best = None
    report = None
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        report = analyze_capture(path, heuristic_rtp=True)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    assert report is not None and best is not None
    pk = report.packets
    print(
        f"capture: {path} ({pk:,} packets, {size / 1e6:.1f} MB): "
        f"{len(report.rtp_streams)} RTP streams, {len(report.tcp_connections)} TCP connections, "
        f"{len(report.websocket_sessions)} WebSocket sessions, "
        f"{len(report.http_exchanges)} HTTP exchanges"
    )
    print(f"voiceaudit full analysis : {best:8.3f} s  {pk / best:>10,.0f} packets/s")
    if shutil.which("tshark"):
        dt, rows = tshark_fields(path)
        print(f"tshark -T fields         : {dt:8.3f} s  {rows / dt:>10,.0f} packets/s")
    else:
        print("tshark -T fields         : (tshark not installed)")
    if not args.skip_pyshark:
        try:
            dt, got = pyshark_slice(path, 10_000)
            print(f"pyshark default, 10k     : {dt:8.3f} s  {got / dt:>10,.0f} packets/s")
        except Exception as exc:  # the bench reports, it does not fail
            print(f"pyshark default, 10k     : failed ({type(exc).__name__}: {exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
