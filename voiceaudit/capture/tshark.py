"""TShark for what only it can do: decrypt TLS with a key log and read what is inside
(HTTP/2, HTTPS, WebSocket over TLS).

It runs on a small capture holding only the TLS connections' packets (written during the
main pass), with one ``-T fields`` pass; nothing else of the capture goes through it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from voiceaudit.capture.model import HttpExchange, WebSocketFrame, WebSocketSession
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


@dataclass
class _H2:
    client: str
    server: str
    request_at: int
    method: str | None = None
    target: str | None = None
    request_end_at: int | None = None
    response_at: int | None = None
    status: int | None = None
    first_data_at: int | None = None
    response_end_at: int | None = None
    body_bytes: int = 0


@dataclass
class _Ws:
    client: str
    server: str
    target: str | None
    request_at: int
    response_at: int
    frames: list[WebSocketFrame] = field(default_factory=list)
    ops_c: dict[int, int] = field(default_factory=dict)
    ops_s: dict[int, int] = field(default_factory=dict)
    bytes_c: int = 0
    bytes_s: int = 0
    first_server_data: int | None = None
    close_at: int | None = None


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

    h2: dict[tuple[str, int], _H2] = {}
    h2_order: list[tuple[str, int]] = []
    h1_requests: dict[int, tuple[str, str, str | None, str | None, int, int, str | None]] = {}
    h1: list[HttpExchange] = []
    ws: dict[str, _Ws] = {}
    ws_req_end: dict[str, int] = {}
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
            ex = h2.get(key)
            end_stream = bool(fl & 0x01)
            if ex is None:
                if typ != 1:
                    continue
                ex = _H2(client=src, server=dst, request_at=t)
                h2[key] = ex
                h2_order.append(key)
                if methods:
                    ex.method = methods.pop(0)
                if paths:
                    ex.target = paths.pop(0)
                if end_stream:
                    ex.request_end_at = t
                continue
            if src == ex.client:
                if end_stream:
                    ex.request_end_at = t
                continue
            if typ == 1 and ex.response_at is None:
                ex.response_at = t
                if statuses:
                    ex.status = int(statuses.pop(0))
            elif typ == 0 and ln > 0:
                if ex.first_data_at is None:
                    ex.first_data_at = t
                ex.body_bytes += ln
            if end_stream:
                ex.response_end_at = t

        # HTTP/1.x messages (each row is the frame where the message was reassembled).
        for method, uri in zip(col("http.request.method"), col("http.request.uri"), strict=False):
            ups = col("http.upgrade")
            upgrade = ups[0] if ups else None
            h1_requests[frame] = (src, dst, method, uri, first_t, t, upgrade)
        codes = col("http.response.code")
        req_in = col("http.request_in")
        for code_s, rin in zip(codes, req_in, strict=False):
            req = h1_requests.get(int(rin))
            if req is None:
                continue
            c_ep, s_ep, req_method, req_uri, req_at, req_end, req_upgrade = req
            code = int(code_s)
            if code == 101 and req_upgrade and req_upgrade.lower() == "websocket":
                ws[stream] = _Ws(c_ep, s_ep, req_uri, req_at, first_t)
                ws_req_end[stream] = req_end
            h1.append(
                HttpExchange(
                    client=c_ep,
                    server=s_ep,
                    protocol="HTTP/1.1",
                    method=req_method,
                    target=req_uri,
                    status=code,
                    stream_id=None,
                    content_type=None,
                    chunked=False,
                    request_at_ns=req_at,
                    request_end_at_ns=req_end,
                    response_at_ns=first_t,
                    headers_at_ns=None,
                    first_data_at_ns=None,
                    response_end_at_ns=t,
                    body_bytes=0,
                    decrypted=True,
                )
            )

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
                if from_client:
                    sess.ops_c[op] = sess.ops_c.get(op, 0) + 1
                    sess.bytes_c += ln
                else:
                    sess.ops_s[op] = sess.ops_s.get(op, 0) + 1
                    sess.bytes_s += ln
                    if sess.first_server_data is None and op in (0, 1, 2):
                        sess.first_server_data = t
                if op == 8 and sess.close_at is None:
                    sess.close_at = t
                sess.frames.append(
                    WebSocketFrame(
                        at_ns=t,
                        start_at_ns=first_t,
                        from_client=from_client,
                        opcode=op,
                        fin=fin,
                        rsv1=False,
                        masked=masked,
                        payload_len=ln,
                    )
                )

    exchanges = list(h1)
    for key in h2_order:
        e = h2[key]
        exchanges.append(
            HttpExchange(
                client=e.client,
                server=e.server,
                protocol="h2",
                method=e.method,
                target=e.target,
                status=e.status,
                stream_id=key[1],
                content_type=None,
                chunked=False,
                request_at_ns=e.request_at,
                request_end_at_ns=e.request_end_at,
                response_at_ns=e.response_at,
                headers_at_ns=e.response_at,
                first_data_at_ns=e.first_data_at,
                response_end_at_ns=e.response_end_at,
                body_bytes=e.body_bytes,
                decrypted=True,
            )
        )
    sessions = []
    for stream, s in ws.items():
        ws_end = ws_req_end.get(stream)
        sessions.append(
            WebSocketSession(
                client=s.client,
                server=s.server,
                target=s.target,
                upgrade_request_at_ns=s.request_at,
                upgrade_request_end_at_ns=ws_end,
                upgrade_response_at_ns=s.response_at,
                upgrade_ns=s.response_at - (ws_end if ws_end is not None else s.request_at),
                compressed=False,
                frames_total=len(s.frames),
                frames=tuple(s.frames),
                frames_truncated=False,
                opcodes_from_client=s.ops_c,
                opcodes_from_server=s.ops_s,
                bytes_from_client=s.bytes_c,
                bytes_from_server=s.bytes_s,
                first_server_data_at_ns=s.first_server_data,
                close_at_ns=s.close_at,
            )
        )
    if not exchanges and not sessions:
        notes.append(
            "tshark found no HTTP inside the TLS connections (is the key log the right one?)"
        )
    return version, exchanges, sessions, notes
