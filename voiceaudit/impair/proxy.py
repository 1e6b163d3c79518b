"""``impaired(url, protocol, impairment, record_path)``: the impaired path to a target.

- ``realtime``, ``websocket``, ``cascade``, ``pipecat-websocket`` (any ``ws://`` or
  ``http://`` URL): a :class:`~voiceaudit.impair.tcp.TcpProxy` to the URL's host and port;
  the URL given back points at the proxy (only the URL's own host and port is impaired:
  a cascade's separate ``asr_url``/``llm_url``/``tts_url`` are not).
- ``webrtc``: an HTTP signalling proxy that forwards every request to the target and
  rewrites the SDP (and trickled candidates) both ways so that a
  :class:`~voiceaudit.impair.udp.UdpRelay` is each side's ICE peer; the signalling
  itself is delayed by each direction's one-way delay (no jitter, loss or rate cap: it is
  one request), the media get the whole UDP model.

TLS targets (``wss://``, ``https://``) are refused: the probe would verify the proxy's
loopback address against the target's certificate. Over WebRTC the target must be on this
host (a loopback URL): the relay's sockets are on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from voiceaudit.errors import UsageError
from voiceaudit.impair.record import Recorder
from voiceaudit.impair.sdp import rewrite_candidate, rewrite_sdp
from voiceaudit.impair.spec import Impairment
from voiceaudit.impair.tcp import TcpProxy
from voiceaudit.impair.udp import UdpRelay
from voiceaudit.pacing import Pacer

RECORD_NAME = "impairment.jsonl"
#: how long before a send is due the proxy's pacer busy-waits (see impaired())
PROXY_SPIN_NS = 500_000
_HOP_HEADERS = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "content-encoding", "upgrade", "te", "trailer", "proxy-connection",
}  # fmt: skip


def _host_port(url: str) -> tuple[str, int, str]:
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme in ("wss", "https"):
        raise UsageError(
            "--impair/--network do not carry TLS targets yet",
            hint="impair a ws:// or http:// target (the built-in pipeline is one)",
        )
    if scheme not in ("ws", "http"):
        raise UsageError(f"--impair needs a network target, not {scheme}://")
    try:
        port = u.port
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None
    return u.hostname or "127.0.0.1", port or 80, scheme


def _with_netloc(url: str, host: str, port: int) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, f"{host}:{port}", u.path, u.query, u.fragment))


class SignallingProxy:
    """Forwards HTTP signalling to the target, rewriting the SDP both ways."""

    def __init__(self, url: str, relay: UdpRelay, impairment: Impairment) -> None:
        self.url = url
        self.relay = relay
        self.imp = impairment
        self.port = 0
        self._runner: Any = None
        self._http: Any = None

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.relay.host, 0)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def _rewrite_body(self, body: bytes, ctype: str, side: str) -> bytes:
        """Offers and trickled candidates come from the client, answers from the server."""
        host = self.relay.host

        def mapper(addr: tuple[str, int]) -> int:
            return self.relay.stand_in(addr, side)

        if "application/sdp" in ctype:
            return rewrite_sdp(body.decode("utf-8", "replace"), mapper, host).encode()
        if "json" not in ctype:
            return body
        try:
            obj = json.loads(body)
        except ValueError:
            return body
        if not isinstance(obj, dict):
            return body
        if isinstance(obj.get("sdp"), str):
            obj["sdp"] = rewrite_sdp(obj["sdp"], mapper, host)
        cands = obj.get("candidates")
        if isinstance(cands, list):
            kept = []
            for c in cands:
                if isinstance(c, dict) and isinstance(c.get("candidate"), str):
                    r = rewrite_candidate(c["candidate"], mapper, host)
                    if r is None:
                        continue
                    c = {**c, "candidate": r}
                kept.append(c)
            obj["candidates"] = kept
        return json.dumps(obj).encode()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        ctype = request.headers.get("Content-Type", "")
        body = self._rewrite_body(body, ctype, "client")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        base = urlsplit(self.url)
        target = urlunsplit((base.scheme, base.netloc, request.path, request.query_string, ""))
        await asyncio.sleep(self.imp.up.delay_ns / 1e9)
        async with self._http.request(
            request.method, target, data=body, headers=headers, allow_redirects=False
        ) as resp:
            data = await resp.read()
            rtype = resp.headers.get("Content-Type", "")
            status = resp.status
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
        if status < 400:
            data = self._rewrite_body(data, rtype, "server")
        loc = out_headers.get("Location")
        if loc and loc.startswith(f"{base.scheme}://{base.netloc}"):
            out_headers["Location"] = _with_netloc(loc, self.relay.host, self.port)
        await asyncio.sleep(self.imp.down.delay_ns / 1e9)
        return web.Response(body=data, status=status, headers=out_headers)


@contextlib.asynccontextmanager
async def impaired(
    url: str, protocol: str, impairment: Impairment, record_path: Path | None
) -> AsyncIterator[str]:
    """Run the impairment proxy for the target at ``url``; yields the URL to use instead.

    ``record_path`` is the ground-truth record (``impairment.jsonl``; None: not written).
    """
    if protocol == "python":
        raise UsageError("--impair/--network need a network target (not python://)")
    host, port, _scheme = _host_port(url)
    if protocol == "webrtc":
        from voiceaudit.targets.webrtc import is_loopback_host

        if not is_loopback_host(host):
            raise UsageError(
                "--impair/--network over WebRTC need a target on this host (a loopback URL)",
                hint="the relay stands in for both peers on 127.0.0.1; a remote target's "
                "candidates are not reachable from there",
            )
    rec = Recorder(record_path, impairment)
    # The proxy shares the probe's event loop: a short spin (0.5 ms, the probe's is 1.5)
    # keeps its sends within ~0.5 ms of due at a fraction of the busy-waiting, which
    # at ~100 datagrams a second would otherwise take a tenth of a core.
    pacer = Pacer(spin_ns=PROXY_SPIN_NS)
    try:
        if protocol == "webrtc":
            relay = UdpRelay(impairment, rec, pacer=pacer)
            sig = SignallingProxy(url, relay, impairment)
            await sig.start()
            try:
                yield _with_netloc(url, relay.host, sig.port)
            finally:
                await sig.close()
                await relay.close()
        else:
            tcp = TcpProxy(impairment, rec, upstream=(host, port), pacer=pacer)
            await tcp.start()
            try:
                yield _with_netloc(url, tcp.host, tcp.port)
            finally:
                await tcp.close()
    finally:
        rec.close()
