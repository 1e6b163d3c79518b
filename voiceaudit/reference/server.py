"""The reference server: one aiohttp application on one port serving every protocol.

=================================  ==========================================
path                               protocol
=================================  ==========================================
``GET  /v1/realtime``              OpenAI Realtime WebSocket (GA; beta with
                                   ``OpenAI-Beta: realtime=v1``)
``GET  /v1/pcm``                   raw PCM WebSocket with JSON stage marks
``POST /v1/audio/transcriptions``  OpenAI-compatible speech recognition
``POST /v1/chat/completions``      OpenAI-compatible chat (SSE when streaming)
``POST /v1/audio/speech``          OpenAI-compatible synthesis (streamed)
``POST /v1/webrtc/offer``          WebRTC (aiortc) offer/answer, media on RTP
``POST /api/offer``                the same, with Pipecat's runner signalling
                                   (SmallWebRTCRequest in, ``{sdp, type, pc_id}``
                                   out; ``pc_id`` renegotiates)
``PATCH /api/offer``               Pipecat's trickled ICE candidates for a
                                   ``pc_id`` (``{"status": "success"}``)
``GET  /twilio``                   phone carriers' media streams, served as a
``GET  /telnyx``                   bot (reference.carrier): Twilio Media
``GET  /plivo``                    Streams and the Telnyx, Plivo, Exotel and
``GET  /exotel``                   Vonage dialects (WebSocket)
``GET  /vonage``
``GET  /voiceaudit/status``        server facts: sessions, event-loop lag, ASR pool
=================================  ==========================================
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from voiceaudit import __version__
from voiceaudit.reference.asr import AsrPool
from voiceaudit.reference.carrier import DIALECTS, carrier_handler
from voiceaudit.reference.config import ServerConfig
from voiceaudit.reference.groundtruth import GroundTruth, now_ns
from voiceaudit.reference.http_api import chat_completions, speech, transcriptions
from voiceaudit.reference.pcm_ws import pcm_handler
from voiceaudit.reference.pipeline import CONNECT_DELAY_KEY, CTX_KEY, ServerContext
from voiceaudit.reference.realtime import realtime_handler
from voiceaudit.reference.responder import ChatCompletionsResponder, Responder, ScriptedResponder
from voiceaudit.reference.tts import Synthesizer
from voiceaudit.reference.webrtc_signal import (
    SESSIONS_KEY,
    close_webrtc_sessions,
    pipecat_ice_candidates,
    pipecat_offer,
    webrtc_offer,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _LongestCallback:
    """The loop thread's CPU time of the longest single callback since the last
    :meth:`take`, for every thread running an asyncio loop: a wrapper around
    ``asyncio.Handle._run`` (every callback and task step goes through it), installed
    while a :class:`LoopLagMonitor` runs. Two clock reads per callback."""

    _users = 0
    _original: Any = None
    _local = threading.local()

    @classmethod
    def install(cls) -> None:
        if cls._users == 0:
            original = asyncio.events.Handle._run
            local = cls._local

            def _run(handle: asyncio.Handle) -> None:
                c0 = time.thread_time_ns()
                try:
                    original(handle)
                finally:
                    d = time.thread_time_ns() - c0
                    if d > getattr(local, "longest", 0):
                        local.longest = d

            cls._original = original
            asyncio.events.Handle._run = _run  # type: ignore[method-assign,assignment]
        cls._users += 1

    @classmethod
    def uninstall(cls) -> None:
        cls._users -= 1
        if cls._users == 0:
            asyncio.events.Handle._run = cls._original  # type: ignore[method-assign]

    @classmethod
    def take(cls) -> int:
        """The longest callback (ns) in this thread since the last call; resets it."""
        longest: int = getattr(cls._local, "longest", 0)
        cls._local.longest = 0
        return longest


class LoopLagMonitor:
    """Measures how late the event loop runs a timer that ticks every ``interval_ms``.

    Two figures per tick: the wall-clock lag, and the lag this process can be blamed
    for: ``min(wall lag, blocking)``, where blocking is the CPU time of the longest single
    callback the loop ran in the tick (code that blocks the loop) plus the CPU time the
    process's other threads used in it (a thread holding the GIL). On a busy machine the
    wall lag also counts time the process simply was not scheduled, and the work that
    piled up meanwhile runs in one tick, as many short callbacks: neither is the loop's
    fault, and neither counts. (The process's whole CPU time in the tick, the measure
    before, counted that catching up: 6 ms with the loop blocked by nothing, under three
    busy processes on two cores.)
    """

    def __init__(self, interval_ms: float = 5.0) -> None:
        self.interval_ns = round(interval_ms * 1e6)
        self._wall: list[int] = []
        self._own: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def _run(self) -> None:
        _LongestCallback.install()
        try:
            while True:
                t0 = now_ns()
                p0, l0 = time.process_time_ns(), time.thread_time_ns()
                _LongestCallback.take()
                await asyncio.sleep(self.interval_ns / 1e9)
                lag = max(0, now_ns() - t0 - self.interval_ns)
                others = (time.process_time_ns() - p0) - (time.thread_time_ns() - l0)
                self._wall.append(lag)
                self._own.append(min(lag, max(0, others) + _LongestCallback.take()))
                if len(self._wall) > 20_000:
                    del self._wall[:10_000]
                    del self._own[:10_000]
        finally:
            _LongestCallback.uninstall()

    @property
    def wall(self) -> list[int]:
        """Every tick's wall-clock lag (ns), in order."""
        return list(self._wall)

    @property
    def own(self) -> list[int]:
        """Every tick's attributable lag (ns), in order."""
        return list(self._own)

    def reset(self) -> None:
        self._wall.clear()
        self._own.clear()

    def summary(self) -> dict[str, Any]:
        return {
            "interval_ns": self.interval_ns,
            "ticks": len(self._wall),
            "wall": lag_stats(self._wall),
            "attributable": lag_stats(self._own),
        }

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def lag_stats(values: list[int]) -> dict[str, int | None]:
    s = sorted(values)
    if not s:
        return {"p50_ns": None, "p99_ns": None, "max_ns": None, "over_5ms": 0}
    return {
        "p50_ns": s[len(s) // 2],
        "p99_ns": s[min(len(s) - 1, int(len(s) * 0.99))],
        "max_ns": s[-1],
        "over_5ms": sum(1 for v in s if v > 5_000_000),
    }


LAG_KEY = web.AppKey("voiceaudit_lag", LoopLagMonitor)


@web.middleware
async def _connect_delay(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The connect-delay injection: hold a new connection's first response."""
    ctx = request.app[CTX_KEY]
    delay = ctx.injections.connect_delay_ns
    seen = ctx.seen_connections
    conn = request.transport  # one per TCP connection; it outlives keep-alive requests
    if delay and conn is not None and conn not in seen:
        seen.add(conn)
        await asyncio.sleep(delay / 1e9)
        request[CONNECT_DELAY_KEY] = delay
    return await handler(request)


async def _status(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    lag = request.app[LAG_KEY]
    return web.json_response(
        {
            "server": "voiceaudit-reference",
            "version": __version__,
            "active_sessions": ctx.active_sessions,
            "sessions_total": ctx.sessions_total,
            "turns_recorded": len(ctx.truth.records),
            "loop_lag": lag.summary(),
            "asr_workers": ctx.asr.stats(),
            "injections": ctx.injections.describe(),
            "responder": ctx.responder.name,
        }
    )


async def _status_reset(request: web.Request) -> web.Response:
    request.app[LAG_KEY].reset()
    return web.json_response({"reset": True})


def build_app(ctx: ServerContext, lag: LoopLagMonitor) -> web.Application:
    app = web.Application(middlewares=[_connect_delay], client_max_size=32 * 1024 * 1024)
    app[CTX_KEY] = ctx
    app[LAG_KEY] = lag
    app[SESSIONS_KEY] = {}
    app.router.add_get("/v1/realtime", realtime_handler)
    app.router.add_get("/v1/pcm", pcm_handler)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/webrtc/offer", webrtc_offer)
    # Pipecat's runner (pipecat.runner.run) signalling, so a Pipecat client finds it.
    app.router.add_post("/api/offer", pipecat_offer)
    app.router.add_patch("/api/offer", pipecat_ice_candidates)
    app.on_shutdown.append(close_webrtc_sessions)
    for name in DIALECTS:
        app.router.add_get(f"/{name}", carrier_handler(name))
    app.router.add_get("/voiceaudit/status", _status)
    app.router.add_post("/voiceaudit/status/reset", _status_reset)
    return app


def _precompute_filters(tts_rate: int) -> None:
    """Build the resampling filters and G.711 tables for the usual rates before serving."""
    from voiceaudit.reference.dsp import StreamResampler, alaw_encode, ulaw_encode

    for a, b in [
        (tts_rate, 24_000),
        (tts_rate, 16_000),
        (tts_rate, 8_000),
        (24_000, 16_000),
        (8_000, 16_000),
        (48_000, 16_000),
        (44_100, 16_000),
    ]:
        StreamResampler(a, b)
    ulaw_encode(np.zeros(1, dtype=np.float32))
    alaw_encode(np.zeros(1, dtype=np.float32))


@dataclass
class ReferenceServer:
    """A running reference server (from :func:`start_reference_server`)."""

    config: ServerConfig
    host: str
    port: int
    context: ServerContext
    lag: LoopLagMonitor
    _runner: web.AppRunner
    _own_pool: bool
    _closed: bool = field(default=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def realtime_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/realtime"

    @property
    def pcm_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/pcm"

    def url_for(self, protocol: str) -> str:
        """The URL a target adapter of ``protocol`` should use for this server."""
        if protocol == "realtime":
            return self.realtime_url
        if protocol in ("websocket", "pcm"):
            return self.pcm_url
        if protocol == "cascade":
            return self.url + "/v1"
        if protocol in DIALECTS:
            return self.url.replace("http://", "ws://", 1) + f"/{protocol}"
        return self.url

    @property
    def turns(self) -> list[dict[str, Any]]:
        """The ground-truth turn records written so far."""
        return list(self.context.truth.records)

    @property
    def greetings(self) -> list[dict[str, Any]]:
        """The ground-truth greeting records written so far (carrier paths, ``greeting=``)."""
        return [r for r in self.context.truth.other_records if r.get("record") == "greeting"]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()
        await self.lag.stop()
        if self._own_pool:
            await self.context.asr.close()
        responder = self.context.responder
        if isinstance(responder, ChatCompletionsResponder):
            await responder.close()
        self.context.truth.close()


async def start_reference_server(
    config: ServerConfig, *, asr_pool: AsrPool | None = None
) -> ReferenceServer:
    """Start the reference pipeline in the running event loop.

    Speech recognition still runs in worker processes (started here, model loaded once,
    unless ``asr_pool`` is given to share one). Returns once the port is listening.
    """
    own_pool = asr_pool is None
    pool = asr_pool if asr_pool is not None else AsrPool(config.asr_workers)
    await pool.start()
    try:
        synth = Synthesizer(voice=config.voice, wpm=config.words_per_minute)
        await synth.warm_up()
        _precompute_filters(synth.rate)
        responder: Responder
        if config.llm_url:
            responder = ChatCompletionsResponder(
                config.llm_url, model=config.llm_model, api_key_env=config.llm_api_key_env
            )
        else:
            responder = ScriptedResponder(ttft_ms=config.ttft_ms, token_rate=config.token_rate)
        truth = GroundTruth(
            config.ground_truth_path,
            {
                "server": "voiceaudit-reference",
                "version": __version__,
                "config": config.to_dict(),
                "injections": config.injections.to_dict(),
                "injections_described": config.injections.describe(),
            },
        )
        ctx = ServerContext(config, pool, synth, responder, truth)
        lag = LoopLagMonitor()
        app = build_app(ctx, lag)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
    except BaseException:
        if own_pool:
            await pool.close()
        raise
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    port = int(sockets[0].getsockname()[1]) if sockets else config.port
    lag.start()
    return ReferenceServer(config, config.host, port, ctx, lag, runner, own_pool)
