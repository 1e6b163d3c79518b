"""TShark for what only it can do: decrypt TLS with a key log and read what is inside
(HTTP/2, HTTPS, WebSocket over TLS).

It runs on a small capture holding only the TLS connections' packets (written during the
main pass), with one ``-T fields`` pass; nothing else of the capture goes through it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from voiceaudit.capture.http import PendingExchange
from voiceaudit.capture.model import HttpExchange, WebSocketSession
from voiceaudit.capture.websocket import WebSocketLog
from voiceaudit.errors import EnvironmentProblem

_FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "tcp.stream",
    "tcp.segment",
    "http2.streamid",
    "http2.type",
    "http2.flags",
    "http2.length",
    "http2.headers.status",
    "http2.headers.method",
    "http2.headers.path",
    "http.request.method",
    "http.request.uri",
    "http.response.code",
    "http.request_in",
    "http.upgrade",
    "websocket.opcode",
    "websocket.fin",
    "websocket.mask",
    "websocket.payload_length",
    "websocket.payload_length_ext_16",
    "websocket.payload_length_ext_64",
)
_IDX = {name: i for i, name in enumerate(_FIELDS)}


def find_tshark(explicit: str | None = None) -> str:
    path = explicit or shutil.which("tshark")
    if path is None or not os.access(path, os.X_OK):
        raise EnvironmentProblem(
            "tshark is needed to decrypt TLS with a key log, and it is not installed",
            hint="sudo apt install tshark   (Debian/Ubuntu; other systems: install Wireshark)",
        )
    return path


def tshark_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "-v"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "tshark"
    first = out.splitlines()[0] if out else "tshark"
    return first.split(" (Git")[0].strip()


def _ns(epoch: str) -> int:
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _ep(addr: str, port: str) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def decrypted_exchanges(
    capture: Path,
    keylog: Path,
    rules: Iterable[object] = (),
    *,
    tshark: str | None = None,
    timeout_s: float = 900.0,
) -> tuple[str, list[HttpExchange], list[WebSocketSession], list[str]]:
    """HTTP exchanges and WebSocket sessions inside the TLS connections of ``capture``."""
    path = find_tshark(tshark)
    version = tshark_version(path)
    argv = [
        path,
        "-n",
        "-r",
        str(capture),
        "-o",
        f"tls.keylog_file:{keylog}",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "aggregator=/s",
        "-E",
        "occurrence=a",
    ]
    for r in rules:
        spec = getattr(r, "spec", None)
        if isinstance(spec, str) and spec.startswith("tcp."):
            argv += ["-d", spec]
    for name in _FIELDS:
        argv += ["-e", name]
    notes: list[str] = []
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return version, [], [], [f"tshark took over {timeout_s:g} s decrypting TLS; skipped"]
    if proc.returncode != 0:
        err = " ".join(ln for ln in proc.stderr.splitlines() if "Running as user" not in ln)
        return version, [], [], [f"tshark could not decrypt the TLS connections: {err[:300]}"]
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()]
    times: dict[int, int] = {}
    for row in rows:
        if len(row) >= 2 and row[0] and row[1]:
            times[int(row[0])] = _ns(row[1])

    #: (TCP stream, HTTP/2 stream id) -> client, server, exchange
    h2: dict[tuple[str, int], tuple[str, str, PendingExchange]] = {}
    #: frame of an HTTP/1.x request -> client, server, the request
    h1_requests: dict[int, tuple[str, str, PendingExchange]] = {}
    h1: list[HttpExchange] = []
    ws: dict[str, WebSocketLog] = {}
    for row in rows:
        if len(row) < len(_FIELDS):
            row = row + [""] * (len(_FIELDS) - len(row))

        def col(name: str, r: list[str] = row) -> list[str]:
            v = r[_IDX[name]]
            return v.split(" ") if v else []

        if not row[0]:
            continue
        frame = int(row[0])
        t = times[frame]
        src = _ep((col("ip.src") or col("ipv6.src") or ["?"])[0], row[_IDX["tcp.srcport"]])
        dst = _ep((col("ip.dst") or col("ipv6.dst") or ["?"])[0], row[_IDX["tcp.dstport"]])
        stream = row[_IDX["tcp.stream"]]
        segs = [int(s) for s in col("tcp.segment") if s.isdigit()]
        first_t = min((times.get(s, t) for s in segs), default=t)

        # HTTP/2 frames of this packet.
        sids, types, flags, lens = (
            col("http2.streamid"),
            col("http2.type"),
            col("http2.flags"),
            col("http2.length"),
        )
        statuses, methods, paths = (
            col("http2.headers.status"),
            col("http2.headers.method"),
            col("http2.headers.path"),
        )
        for sid_s, typ_s, fl_s, ln_s in zip(sids, types, flags, lens, strict=False):
            sid, typ, fl, ln = int(sid_s), int(typ_s), int(fl_s, 16), int(ln_s)
            if sid == 0 or typ not in (0, 1):
                continue
            key = (stream, sid)
            known = h2.get(key)
            end_stream = bool(fl & 0x01)
            if known is None:
                if typ != 1:
                    continue
                ex = PendingExchange(request_at=t)
                h2[key] = (src, dst, ex)
                if methods:
                    ex.method = methods.pop(0)
                if paths:
                    ex.target = paths.pop(0)
                if end_stream:
                    ex.request_end_at = t
                continue
            client, _server, ex = known
            if src == client:
                if end_stream:
                    ex.request_end_at = t
                continue
            if ex.h2_response_frame(typ == 1, ln, end_stream, t) and statuses:
                ex.status = int(statuses.pop(0))

        # HTTP/1.x messages (each row is the frame where the message was reassembled).
        for method, uri in zip(col("http.request.method"), col("http.request.uri"), strict=False):
            req = PendingExchange(request_at=first_t, method=method, target=uri, request_end_at=t)
            ups = col("http.upgrade")
            req.upgrade = ups[0] if ups else None
            h1_requests[frame] = (src, dst, req)
        codes = col("http.response.code")
        req_in = col("http.request_in")
        for code_s, rin in zip(codes, req_in, strict=False):
            found = h1_requests.get(int(rin))
            if found is None:
                continue
            c_ep, s_ep, req = found
            code = int(code_s)
            # Each response (an interim one too) makes its own exchange with the request.
            ex = dataclasses.replace(req, response_at=first_t, status=code, response_end_at=t)
            if code == 101 and ex.upgrade and ex.upgrade.lower() == "websocket":
                ws[stream] = ex.websocket_log(c_ep, s_ep, compressed=False, max_frames=sys.maxsize)
            h1.append(ex.exchange(c_ep, s_ep, "HTTP/1.1", decrypted=True))

        # WebSocket frames.
        ops = col("websocket.opcode")
        if ops and stream in ws:
            sess = ws[stream]
            fins, masks, lens7 = (
                col("websocket.fin"),
                col("websocket.mask"),
                col("websocket.payload_length"),
            )
            ext16, ext64 = (
                col("websocket.payload_length_ext_16"),
                col("websocket.payload_length_ext_64"),
            )
            from_client = src == sess.client
            for i, op_s in enumerate(ops):
                op = int(op_s)
                ln = int(lens7[i]) if i < len(lens7) else 0
                if ln == 126 and ext16:
                    ln = int(ext16.pop(0))
                elif ln == 127 and ext64:
                    ln = int(ext64.pop(0))
                fin = i < len(fins) and fins[i] in ("1", "True")
                masked = i < len(masks) and masks[i] in ("1", "True")
                sess.frame(from_client, op, ln, t, first_t, fin=fin, rsv1=False, masked=masked)

    exchanges = list(h1)
    for (_stream, sid), (client, server, ex) in h2.items():
        exchanges.append(ex.exchange(client, server, "h2", stream_id=sid, decrypted=True))
    sessions: list[WebSocketSession] = [log.session() for log in ws.values()]
    if not exchanges and not sessions:
        notes.append(
            "tshark found no HTTP inside the TLS connections (is the key log the right one?)"
        )
    return version, exchanges, sessions, notes
