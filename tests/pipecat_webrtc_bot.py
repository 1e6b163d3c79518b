"""A real Pipecat 1.14 voice bot over SmallWebRTC, offline, for the WebRTC target's tests.

The same offline services as ``tests/pipecat_bot.py`` (Silero VAD → PocketSphinx STT in a
worker process → a rule-based responder, clearly not a language model → eSpeak NG TTS),
served over Pipecat's ``SmallWebRTCTransport``. Signalling mirrors Pipecat's development
runner (``pipecat/runner/run.py``): ``POST /api/offer`` takes a ``SmallWebRTCRequest``
body (``sdp``, ``type``, optional ``pc_id``/``restart_pc``), creates a
``SmallWebRTCConnection(ice_servers=[])``, initializes it with the offer, starts a bot
pipeline on it and answers ``{"sdp", "type", "pc_id"}``; ``PATCH /api/offer`` adds
trickled ICE candidates. The runner itself needs FastAPI, which is not installed here, so
this is a small aiohttp app doing the same steps.

On a loopback host aioice gathers no usable candidate unless its host-address lookup
returns 127.0.0.1; the bot patches that (like voiceaudit does for loopback targets).

Fault injection: ``--leading-silence-ms`` prepends silence to each reply (a comma list is
used in turn, e.g. ``0,500``): a delay only the caller's side can see.

Run: ``python tests/pipecat_webrtc_bot.py --port 0``; prints ``READY <port>`` on stdout
when the server listens, and ``session N ended`` on stderr when the pipeline of the N-th
connection has ended. With ``--max-sessions N`` it exits (code 0) once N sessions have
ended; SIGTERM/SIGINT end it cleanly too.

Test support code. From ``tests/pipecat_bot.py`` (owned by another test) it imports the
module-level helpers (PocketSphinx worker functions, eSpeak NG, resampling, the reply
rule); its three Pipecat services are defined inside that module's ``_build`` function,
so small copies of them live here.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

from pipecat_bot import (
    Espeak,
    _all_none,
    _asr_feed,
    _asr_final,
    _asr_init,
    _asr_warm,
    _resample,
    reply_for,
)


def _loopback_ice() -> None:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class BotServer:
    """The signalling app and the bots it runs (one Pipecat pipeline per connection)."""

    def __init__(
        self,
        args: argparse.Namespace,
        pool: concurrent.futures.Executor,
        espeak: Espeak,
    ) -> None:
        self.args = args
        self.pool = pool
        self.espeak = espeak
        self.connections: dict[str, Any] = {}
        self.bots: set[asyncio.Task[None]] = set()
        self.sessions_started = 0
        self.sessions_ended = 0
        self.replies = 0  # across sessions, for --leading-silence-ms
        self.done = asyncio.Event()
        self._services = _service_classes(self)

    # -- signalling (mirrors pipecat/runner/run.py and SmallWebRTCRequestHandler) ---------

    async def offer(self, request: Any) -> Any:
        from aiohttp import web
        from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

        try:
            body = await request.json()
            sdp, kind = body["sdp"], body["type"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON {sdp, type}"}, status=400)
        pc_id = body.get("pc_id")
        conn = self.connections.get(pc_id) if pc_id else None
        if conn is not None:
            await conn.renegotiate(sdp=sdp, type=kind, restart_pc=bool(body.get("restart_pc")))
        else:
            conn = SmallWebRTCConnection(ice_servers=[])
            await conn.initialize(sdp=sdp, type=kind)

            async def _closed(c: Any) -> None:
                self.connections.pop(c.pc_id, None)

            conn.add_event_handler("closed", _closed)
            self.sessions_started += 1
            task = asyncio.create_task(self._run_bot(conn, self.sessions_started))
            self.bots.add(task)
            task.add_done_callback(self.bots.discard)
        answer = conn.get_answer()
        if answer is None:
            return web.json_response({"error": "no SDP answer"}, status=500)
        self.connections[answer["pc_id"]] = conn
        return web.json_response(answer)

    async def patch(self, request: Any) -> Any:
        from aiohttp import web
        from aiortc.sdp import candidate_from_sdp

        body = await request.json()
        conn = self.connections.get(body.get("pc_id"))
        if conn is None:
            return web.json_response({"error": "Peer connection not found"}, status=404)
        for c in body.get("candidates", []):
            candidate = None  # an empty candidate: end of candidates (RFC 8840)
            if c.get("candidate"):
                candidate = candidate_from_sdp(c["candidate"])
                candidate.sdpMid = c.get("sdp_mid")
                candidate.sdpMLineIndex = c.get("sdp_mline_index")
            await conn.add_ice_candidate(candidate)
        return web.json_response({"status": "success"})

    # -- one bot per connection ------------------------------------------------------------

    async def _run_bot(self, connection: Any, number: int) -> None:
        from pipecat.workers.runner import WorkerRunner

        try:
            worker = self._build(connection)
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        finally:
            self.sessions_ended += 1
            print(f"session {number} ended", file=sys.stderr, flush=True)
            if self.args.max_sessions and self.sessions_ended >= self.args.max_sessions:
                self.done.set()

    def _build(self, connection: Any) -> Any:
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.audio.vad.vad_analyzer import VADParams
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
            LLMUserAggregatorParams,
        )
        from pipecat.services.settings import STTSettings
        from pipecat.transports.base_transport import TransportParams
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
        from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
        from pipecat.turns.user_turn_strategies import UserTurnStrategies

        args = self.args
        stt_cls, llm_cls, tts_cls = self._services
        transport = SmallWebRTCTransport(
            webrtc_connection=connection,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
        stt = stt_cls(
            settings=STTSettings(model="pocketsphinx-en-us", language="en"),
            ttfs_p99_latency=0.3,
        )
        llm = llm_cls(word_ms=args.word_ms, first_token_ms=args.first_token_ms)
        tts = tts_cls()
        pair = LLMContextAggregatorPair(
            LLMContext(),
            user_params=LLMUserAggregatorParams(
                vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=args.vad_stop_ms / 1000)),
                # a fixed speech timeout, not Pipecat's CPU-hungry Smart Turn model, keeps the
                # timing steady on a shared test machine (as in pipecat_bot.py)
                user_turn_strategies=UserTurnStrategies(
                    stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)]
                ),
            ),
        )
        pipeline = Pipeline(
            [transport.input(), stt, pair.user(), llm, tts, transport.output(), pair.assistant()]
        )
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=16000,
                audio_out_sample_rate=args.out_rate,
                enable_metrics=True,
            ),
            idle_timeout_secs=None,
        )

        async def _gone(transport: Any, client: Any) -> None:
            await worker.cancel()

        transport.add_event_handler("on_client_disconnected", _gone)
        return worker

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            await conn.disconnect()
        for task in list(self.bots):
            task.cancel()
        await asyncio.gather(*self.bots, return_exceptions=True)


def _service_classes(server: BotServer) -> tuple[type[Any], type[Any], type[Any]]:
    """Pipecat services, copied small from pipecat_bot.py's ``_build`` (without tracing)."""
    from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
    from pipecat.frames.frames import (
        ErrorFrame,
        Frame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.llm_service import LLMService
    from pipecat.services.settings import LLMSettings, TTSSettings
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService
    from pipecat.utils.time import time_now_iso8601

    pool = server.pool

    class PocketSphinxSTTService(STTService):
        """Streaming: decoded while the user speaks (from a 0.5 s pre-roll before the VAD's
        speech start); the VAD's stop finalizes the utterance."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._speaking = False
            self._preroll: list[bytes] = []
            self._final: asyncio.Task[None] | None = None

        def can_generate_metrics(self) -> bool:
            return True

        async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
            loop = asyncio.get_running_loop()
            if self._speaking:
                loop.run_in_executor(pool, _asr_feed, audio)
            else:
                self._preroll.append(audio)
                keep = self.sample_rate  # bytes in 0.5 s of 16-bit audio
                while sum(len(a) for a in self._preroll) > keep:
                    self._preroll.pop(0)
            yield None

        async def _handle_vad_user_started_speaking(self, frame: Any) -> None:
            await super()._handle_vad_user_started_speaking(frame)
            self._speaking = True
            loop = asyncio.get_running_loop()
            for a in self._preroll:
                loop.run_in_executor(pool, _asr_feed, a)
            self._preroll = []

        async def _handle_vad_user_stopped_speaking(self, frame: Any) -> None:
            await super()._handle_vad_user_stopped_speaking(frame)
            self._speaking = False
            self._final = self.create_task(self._finalize())

        async def _finalize(self) -> None:
            text = (await asyncio.get_running_loop().run_in_executor(pool, _asr_final)).strip()
            self.request_finalize()  # type: ignore[no-untyped-call]
            self.confirm_finalize()  # type: ignore[no-untyped-call]
            await self.push_frame(TranscriptionFrame(text, self._user_id, time_now_iso8601()))

    class RuleResponderLLM(LLMService):
        """Streams a fixed-pattern reply word by word. Not a language model."""

        adapter_class = OpenAILLMAdapter

        def __init__(self, word_ms: int, first_token_ms: int, **kwargs: Any) -> None:
            super().__init__(settings=_all_none(LLMSettings, model="rule-responder"), **kwargs)
            self._word_s = word_ms / 1000
            self._first_s = first_token_ms / 1000

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMContextFrame):
                await self.push_frame(LLMFullResponseStartFrame())
                try:
                    await self._respond(frame.context)
                finally:
                    await self.push_frame(LLMFullResponseEndFrame())
            else:
                await self.push_frame(frame, direction)

        async def _respond(self, context: Any) -> None:
            heard = ""
            for m in reversed(context.get_messages()):
                if isinstance(m, dict) and m.get("role") == "user":
                    c = m.get("content")
                    heard = c if isinstance(c, str) else ""
                    break
            await asyncio.sleep(self._first_s)
            for i, word in enumerate(reply_for(heard).split(" ")):
                if i:
                    await asyncio.sleep(self._word_s)
                await self.push_frame(LLMTextFrame(word if i == 0 else " " + word))

    class EspeakTTSService(TTSService):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(
                push_start_frame=True,
                push_stop_frames=True,
                settings=TTSSettings(model="espeak-ng", voice="en-us", language="en"),
                **kwargs,
            )
            self._context: str | None = None

        async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
            try:
                pcm = await asyncio.to_thread(server.espeak.synth, text)
                pcm = _resample(pcm, server.espeak.rate, self.sample_rate)
                if context_id != self._context:  # a reply: one audio context, many sentences
                    self._context = context_id
                    plan = server.args.silence_plan
                    silence = plan[server.replies % len(plan)]
                    server.replies += 1
                    pcm = bytes(2 * (self.sample_rate * silence // 1000)) + pcm
                await self.stop_ttfb_metrics()
                step = self.sample_rate // 10 * 2  # 100 ms pieces
                for i in range(0, len(pcm), step):
                    yield TTSAudioRawFrame(
                        audio=pcm[i : i + step],
                        sample_rate=self.sample_rate,
                        num_channels=1,
                        context_id=context_id,
                    )
            except Exception as e:  # report, like Pipecat's own services
                yield ErrorFrame(error=f"espeak failed: {e}")
            finally:
                await self.stop_ttfb_metrics()

    return PocketSphinxSTTService, RuleResponderLLM, EspeakTTSService


async def _main(args: argparse.Namespace) -> None:
    from aiohttp import web

    if args.host in ("127.0.0.1", "localhost", "::1"):
        _loopback_ice()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_asr_init) as pool:
        loop = asyncio.get_running_loop()
        # Load the model and warm the synthesizer before the server opens.
        await loop.run_in_executor(pool, _asr_warm)
        espeak = Espeak()
        _resample(espeak.synth("ready"), espeak.rate, 16000)
        server = BotServer(args, pool, espeak)
        app = web.Application()
        app.router.add_post("/api/offer", server.offer)
        app.router.add_patch("/api/offer", server.patch)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((args.host, args.port))
        await web.SockSite(runner, sock).start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.done.set)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        try:
            await server.done.wait()
        finally:
            await server.close()
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--max-sessions", type=int, default=0, help="exit after N sessions")
    ap.add_argument("--out-rate", type=int, default=16000)
    ap.add_argument("--vad-stop-ms", type=int, default=200)
    ap.add_argument("--word-ms", type=int, default=30)
    ap.add_argument("--first-token-ms", type=int, default=80)
    ap.add_argument(
        "--leading-silence-ms",
        default="0",
        help="silence prepended to each reply, ms; a comma list is used in turn (0,500)",
    )
    args = ap.parse_args(argv)
    args.silence_plan = [int(x) for x in args.leading_silence_ms.split(",") if x.strip()] or [0]
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    t = time.monotonic()
    asyncio.run(_main(args))
    print(f"bot exited after {time.monotonic() - t:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
