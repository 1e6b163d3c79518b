"""A real Pipecat 1.14 voice bot, offline, over Pipecat's WebSocket server transport, its
SmallWebRTC transport (``--transport websocket|webrtc``) or a phone carrier's media stream
(``--transport twilio|telnyx|plivo|exotel|vonage|phone``), for the end-to-end tests.

Silero VAD (Pipecat's bundled ONNX model) → PocketSphinx STT (in a worker process, so
decoding never holds the bot's GIL) → a rule-based responder (a Pipecat LLM service that
streams words at a fixed pace; clearly not a language model) → eSpeak NG TTS. The two
transports share these services; what differs is how a client reaches the pipeline.

``websocket`` (the default): Pipecat's own WebSocket server transport with its protobuf
frame serializer, serving one client; the bot exits (flushing its spans) when that client
disconnects. Pipecat's own OpenTelemetry tracing and the services' metrics are on; the spans
are written (``--spans``) as JSON lines of ``span.to_json()`` and, when ``--otlp`` is given,
as one OTLP/JSON document.

``webrtc``: Pipecat's ``SmallWebRTCTransport``, one pipeline per connection, without
tracing or service metrics. Signalling mirrors Pipecat's development runner
(``pipecat/runner/run.py``): ``POST /api/offer`` takes a ``SmallWebRTCRequest`` body
(``sdp``, ``type``, optional ``pc_id``/``restart_pc``), creates a
``SmallWebRTCConnection(ice_servers=[])``, initializes it with the offer, starts a bot
pipeline on it and answers ``{"sdp", "type", "pc_id"}``; ``PATCH /api/offer`` adds trickled
ICE candidates. The runner itself needs FastAPI, which is not installed here, so this is a
small aiohttp app doing the same steps. On a loopback host aioice gathers no usable
candidate unless its host-address lookup returns 127.0.0.1; the bot patches that (like
voiceaudit does for loopback targets). ``session N ended`` goes to stderr when the pipeline
of the N-th connection has ended; with ``--max-sessions N`` the bot exits (code 0) once N
sessions have ended; SIGTERM/SIGINT end it cleanly too.

Phone (``twilio``, ``telnyx``, ``plivo``, ``exotel``, ``vonage``): a FastAPI app served by
uvicorn, where the carrier (the client) opens a WebSocket to ``/ws`` or ``/DIALECT``;
``--transport phone`` serves every dialect at once, at ``/twilio`` … ``/vonage``. Each call
runs one pipeline on Pipecat's ``FastAPIWebsocketTransport`` with the dialect's serializer
(``pipecat.serializers.*``), built as Pipecat's runner builds it: the carrier's first messages
are read by Pipecat's ``parse_telephony_websocket`` (Twilio: ``connected``, then ``start``
with the ``streamSid`` and ``callSid``), and ``auto_hang_up=False`` where the serializer has
it (offline there is no carrier REST API). Vonage sends no ids: its serializer is made at
once, at ``--vonage-rate``, with 20 ms binary packets (Pipecat's ``vonage-audio-bot``
example). A handshake of another dialect closes the socket (1008). ``--greeting TEXT``: the
bot says it when the call starts (``on_client_connected``: a ``TTSSpeakFrame``), as phone
bots do. ``--wire-log FILE``: a JSON line per message the bot sends the carrier (its
``time.monotonic_ns()``, the probe's clock on this machine), and per reply what the
responder answered (``heard``). ``--dtmf``: Pipecat's ``DTMFAggregator`` after the input
turns the caller's key presses into words (``DTMF: 12#``, flushed at ``#`` or after 2 s).
The call ends when the carrier hangs up; ``session N ended`` and ``--max-sessions`` as for
WebRTC. Pipecat's FastAPI output transport paces audio at real time (it sleeps each
message's duration; measured here: a reply's audio is sent about 90 ms
faster than it lasts), so the carrier's buffer holds about 50-190 ms the caller has not
heard yet; on an interruption the serializer sends the dialect's ``clear`` (``clearAudio``
for Plivo, ``{"action": "clear"}`` for Vonage).

Fault injection (to show a delay Pipecat's own numbers cannot see): ``--leading-silence-ms``
prepends silence to each synthesized reply; a comma list (``50,550``) is used in turn
(across the sessions of a WebRTC bot).

Interruptions (barge-in): Pipecat 1.14 has no ``allow_interruptions`` any more; a user turn
start strategy decides. Its default strategies (``VADUserTurnStartStrategy``,
``TranscriptionUserTurnStartStrategy``) have ``enable_interruptions=True``, so when the
caller starts speaking (Silero VAD, ``start_secs`` 0.2 s) the user aggregator broadcasts an
``InterruptionFrame``: the LLM and TTS drop their work, the output transport empties its
audio queue (``handle_interruptions``: the chunk being written still goes out), sends the
client a protobuf ``interruption`` frame and says bot-stopped-speaking; the RTVI observer
sends ``bot-interrupted``. ``--interruptions`` (the default, as in Pipecat) keeps that;
``--no-interruptions`` builds the same strategies with ``enable_interruptions=False``, so
the reply plays to its end over the caller. Pipecat broadcasts the interruption at every
user turn start, also when the bot is silent. ``--long-reply`` adds two sentences to every
reply (it then lasts 8 to 10 s) so that there is reply left to stop (``--long-replies 3``:
only to each session's third reply); the WebSocket output transport sends audio at real time
(it sleeps one 40 ms chunk's duration after each send), so the rest of a reply is still in
the bot's queue when the caller barges in. With ``--no-interruptions`` no ``InterruptionFrame``
is ever broadcast, so a phone bot never sends ``clear``.

Run: ``python tests/pipecat_bot.py --port N --spans spans.jsonl`` (WebSocket),
``python tests/pipecat_bot.py --transport webrtc --port 0`` or ``--transport twilio --port 0
--greeting "Hello"``; each prints ``READY <port>`` on stdout when the server listens. Tests
start it through ``servers.PipecatBot``.

Test support code: the services are deliberately small and offline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import ctypes
import json
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import numpy as np

# -- PocketSphinx in a worker process -----------------------------------------------------

_decoder: Any = None
_in_utt = False


def _asr_init() -> None:
    global _decoder
    from pocketsphinx import Decoder

    # A lighter search than the defaults: this machine is shared, and what matters here
    # is the timing, not the words.
    _decoder = Decoder(samprate=16000, loglevel="FATAL", maxhmmpf=2000, ds=2, topn=2)


def _asr_feed(pcm16: bytes) -> None:
    global _in_utt
    if not _in_utt:
        _decoder.start_utt()
        _in_utt = True
    _decoder.process_raw(pcm16, full_utt=False)


def _asr_final() -> str:
    global _in_utt
    if not _in_utt:
        return ""
    _decoder.end_utt()
    _in_utt = False
    hyp = _decoder.hyp()
    return "" if hyp is None else str(hyp.hypstr)


def _asr_warm() -> str:
    _asr_feed(bytes(3200))
    return _asr_final()


# -- eSpeak NG through ctypes ---------------------------------------------------------------

_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Espeak:
    """Synchronous eSpeak NG synthesis; one instance per process (the library is global)."""

    def __init__(self, voice: str = "en-us") -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.rate = int(rate)
        self._chunks: list[bytes] = []

        def cb(wav: Any, n: int, events: Any) -> int:
            if n > 0 and wav:
                self._chunks.append(ctypes.string_at(wav, n * 2))
            return 0

        self._cb = _CALLBACK(cb)  # keep a reference: the library calls it
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName(voice.encode())

    def synth(self, text: str) -> bytes:
        """16-bit mono PCM at :attr:`rate`."""
        self._chunks = []
        raw = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(raw, len(raw), 0, 0, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        return b"".join(self._chunks)


def _resample(pcm: bytes, src: int, dst: int) -> bytes:
    if src == dst or not pcm:
        return pcm
    from scipy.signal import resample_poly

    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    g = np.gcd(src, dst)
    y = resample_poly(x, dst // g, src // g)
    return np.clip(y, -32768, 32767).astype(np.int16).tobytes()


# -- the rule-based responder ------------------------------------------------------------------


#: added to every reply with ``--long-reply``: several seconds of speech to interrupt
LONG_REPLY = (
    " Here is a longer answer, so that there is something left to interrupt."
    " A caller who has heard enough can simply start talking over it."
)


def reply_for(text: str, long: bool = False) -> str:
    words = text.split()
    if not words:
        head = "Sorry, I did not catch that."
    else:
        head = f"You said {' '.join(words[:8])}. How can I help?"
    return head + LONG_REPLY if long else head


def _all_none(cls: Any, **given: Any) -> Any:
    """A Pipecat settings object with every field given (None where unsupported)."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    return cls(**{n: given.get(n) for n in names})


class Voice:
    """The bot's eSpeak NG (warmed up) and ``--leading-silence-ms``: the silence before
    each reply, taken in turn across every session of the process."""

    def __init__(self, leading_silence_ms: str) -> None:
        self.espeak = Espeak()
        _resample(self.espeak.synth("ready"), self.espeak.rate, 16000)  # warm up
        self.plan = [int(x) for x in leading_silence_ms.split(",") if x.strip()] or [0]
        self.replies = 0

    def next_silence_ms(self) -> int:
        """The silence to prepend to the next reply."""
        silence = self.plan[self.replies % len(self.plan)]
        self.replies += 1
        return silence


def _service_classes(
    pool: concurrent.futures.Executor, voice: Voice, metrics: bool
) -> tuple[type[Any], type[Any], type[Any]]:
    """The three offline Pipecat services (STT, LLM, TTS). Their tracing decorators act
    only when the pipeline has tracing on; ``metrics``: they report Pipecat metrics."""
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
    from pipecat.utils.tracing.service_decorators import traced_llm, traced_stt, traced_tts

    class PocketSphinxSTTService(STTService):
        """Streaming: audio is decoded while the user speaks (from a 0.5 s pre-roll before
        the VAD's speech start); the VAD's stop finalizes the utterance."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._speaking = False
            self._preroll: list[bytes] = []
            self._final: asyncio.Task[None] | None = None

        def can_generate_metrics(self) -> bool:
            return metrics

        @traced_stt
        async def _handle_transcription(
            self, transcript: str, is_final: bool, language: Any = None
        ) -> None:
            pass

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
            await self._handle_transcription(text, True)
            self.request_finalize()
            self.confirm_finalize()
            await self.push_frame(TranscriptionFrame(text, self._user_id, time_now_iso8601()))

    class RuleResponderLLM(LLMService):
        """Streams a fixed-pattern reply word by word. Not a language model."""

        adapter_class = OpenAILLMAdapter

        def __init__(
            self,
            word_ms: int,
            first_token_ms: int,
            long_reply: bool,
            long_replies: frozenset[int] = frozenset(),
            on_heard: Callable[[str], None] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(settings=_all_none(LLMSettings, model="rule-responder"), **kwargs)
            self._word_s = word_ms / 1000
            self._first_s = first_token_ms / 1000
            self._long = long_reply
            self._long_replies = long_replies
            self._replies = 0
            self._on_heard = on_heard

        def can_generate_metrics(self) -> bool:
            return metrics

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMContextFrame):
                await self.push_frame(LLMFullResponseStartFrame())
                await self.start_processing_metrics()
                try:
                    await self._process_context(frame.context)
                finally:
                    await self.stop_processing_metrics()
                    await self.push_frame(LLMFullResponseEndFrame())
            else:
                await self.push_frame(frame, direction)

        @traced_llm
        async def _process_context(self, context: Any) -> None:
            heard = ""
            for m in reversed(context.get_messages()):
                if isinstance(m, dict) and m.get("role") == "user":
                    c = m.get("content")
                    heard = c if isinstance(c, str) else ""
                    break
            self._replies += 1
            if self._on_heard is not None:
                self._on_heard(heard)
            long = self._long or self._replies in self._long_replies
            await self.start_ttfb_metrics()
            await asyncio.sleep(self._first_s)
            for i, word in enumerate(reply_for(heard, long).split(" ")):
                if i == 0:
                    await self.stop_ttfb_metrics()
                else:
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

        def can_generate_metrics(self) -> bool:
            return metrics

        @traced_tts
        async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
            try:
                await self.start_tts_usage_metrics(text)
                pcm = await asyncio.to_thread(voice.espeak.synth, text)
                pcm = _resample(pcm, voice.espeak.rate, self.sample_rate)
                if context_id != self._context:  # a reply: one audio context, many sentences
                    self._context = context_id
                    silence = voice.next_silence_ms()
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


def _worker(
    args: argparse.Namespace,
    transport: Any,
    services: tuple[type[Any], type[Any], type[Any]],
    on_heard: Callable[[str], None] | None = None,
    **worker_options: Any,
) -> Any:
    """Pipecat's pipeline of the services between ``transport``'s input and output, in a
    worker that runs until cancelled; ``on_heard`` gets what the responder answers (the
    caller's words as transcribed, or ``DTMF: …``)."""
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
    from pipecat.turns.user_start import (
        TranscriptionUserTurnStartStrategy,
        VADUserTurnStartStrategy,
    )
    from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    stt_cls, llm_cls, tts_cls = services
    stt = stt_cls(
        settings=STTSettings(model="pocketsphinx-en-us", language="en"),
        ttfs_p99_latency=0.3,
    )
    llm = llm_cls(
        word_ms=args.word_ms,
        first_token_ms=args.first_token_ms,
        long_reply=args.long_reply,
        long_replies=frozenset(int(x) for x in args.long_replies.split(",") if x.strip()),
        on_heard=on_heard,
    )
    tts = tts_cls()
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=args.vad_stop_ms / 1000)),
            # Pipecat's default end-of-turn model (Smart Turn) is real but CPU-hungry; on a
            # shared test machine a fixed speech timeout keeps the timing steady.
            user_turn_strategies=UserTurnStrategies(
                # Pipecat's default start strategies, with interruptions on (its default)
                # or off
                start=[
                    VADUserTurnStartStrategy(enable_interruptions=args.interruptions),
                    TranscriptionUserTurnStartStrategy(enable_interruptions=args.interruptions),
                ],
                stop=(
                    None  # Smart Turn
                    if args.smart_turn
                    else [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)]
                ),
            ),
        ),
    )
    keys: list[Any] = []
    if getattr(args, "dtmf", False):
        from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator

        # key presses as a transcription ("DTMF: 12#"), flushed at '#' or after 2 s
        keys = [DTMFAggregator()]
    pipeline = Pipeline(
        [
            transport.input(),
            *keys,
            stt,
            pair.user(),
            llm,
            tts,
            transport.output(),
            pair.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=16000,
            audio_out_sample_rate=args.out_rate,
            enable_metrics=True,
        ),
        idle_timeout_secs=None,
        **worker_options,
    )

    async def _gone(transport: Any, client: Any) -> None:
        await worker.cancel()

    transport.add_event_handler("on_client_disconnected", _gone)
    return worker


# -- WebSocket: one client, traced -----------------------------------------------------------


def _websocket_bot(
    args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
) -> tuple[Any, Any]:
    """The traced WebSocket bot's worker and its span exporter."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from pipecat.processors.frameworks.rtvi import RTVIObserverParams
    from pipecat.serializers.protobuf import ProtobufFrameSerializer
    from pipecat.transports.websocket.server import (
        SingleClientWebsocketServerParams,
        SingleClientWebsocketServerTransport,
    )
    from pipecat.utils.tracing.setup import setup_tracing

    class JsonLinesExporter(SpanExporter):
        """One ``span.to_json()`` per line (what Pipecat users get from a file exporter)."""

        def __init__(self, path: Path) -> None:
            self.f = path.open("w", encoding="utf-8")
            self.spans: list[ReadableSpan] = []

        def export(self, spans: Any) -> SpanExportResult:
            for s in spans:
                self.f.write(json.dumps(json.loads(s.to_json())) + "\n")
                self.spans.append(s)
            self.f.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self.f.close()

    exporter = JsonLinesExporter(Path(args.spans))
    setup_tracing(service_name="voiceaudit-pipecat-bot", exporter=exporter)

    transport = SingleClientWebsocketServerTransport(
        params=SingleClientWebsocketServerParams(
            serializer=ProtobufFrameSerializer(),
            audio_in_enabled=True,
            audio_out_enabled=True,
            allowed_origins=[],
        ),
        host=args.host,
        port=args.port,
    )
    worker = _worker(
        args,
        transport,
        _service_classes(pool, voice, metrics=True),
        enable_tracing=True,
        conversation_id=args.conversation_id,
        # RTVI's VAD messages give the client the endpoint mark (off by default).
        rtvi_observer_params=RTVIObserverParams(vad_user_speaking_enabled=True),
    )

    tracker = worker.turn_tracking_observer
    if tracker is not None and args.turn_end_timeout is not None:
        # Pipecat ends a turn 2.5 s after the bot stops speaking; a probe that starts the
        # next utterance sooner gets one turn span for several exchanges. Tests that want
        # one span per exchange shorten it (there is no public parameter for it).
        tracker._turn_end_timeout_secs = args.turn_end_timeout

    @transport.event_handler("on_websocket_ready")
    async def _ready(transport: Any) -> None:
        print(f"READY {args.port}", flush=True)

    return worker, exporter


async def _serve_websocket(
    args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
) -> None:
    from opentelemetry import trace
    from pipecat.workers.runner import WorkerRunner

    worker, exporter = _websocket_bot(args, pool, voice)
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await runner.run()
    provider = trace.get_tracer_provider()
    provider.force_flush()  # type: ignore[attr-defined]
    if args.otlp:
        _write_otlp(exporter.spans, Path(args.otlp))
    provider.shutdown()  # type: ignore[attr-defined]


def _write_otlp(spans: list[Any], path: Path) -> None:
    """The same spans as one OTLP/JSON ``TracesData`` document (OTel's own encoder)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    msg = encode_spans(spans)
    doc = MessageToDict(msg)
    # OTLP/JSON writes ids as hex, where protobuf's JSON mapping writes bytes as base64.
    import base64

    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if s.get(k):
                        s[k] = base64.b64decode(s[k]).hex()
    path.write_text(json.dumps(doc))


# -- WebRTC: SmallWebRTC signalling, one pipeline per connection --------------------------------


def _loopback_ice() -> None:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class BotServer:
    """The signalling app and the bots it runs (one Pipecat pipeline per connection)."""

    def __init__(
        self, args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
    ) -> None:
        self.args = args
        self.connections: dict[str, Any] = {}
        self.bots: set[asyncio.Task[None]] = set()
        self.sessions_started = 0
        self.sessions_ended = 0
        self.done = asyncio.Event()
        self._services = _service_classes(pool, voice, metrics=False)

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
        from pipecat.transports.base_transport import TransportParams
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
        from pipecat.workers.runner import WorkerRunner

        try:
            transport = SmallWebRTCTransport(
                webrtc_connection=connection,
                params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
            )
            worker = _worker(self.args, transport, self._services)
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        finally:
            self.sessions_ended += 1
            print(f"session {number} ended", file=sys.stderr, flush=True)
            if self.args.max_sessions and self.sessions_ended >= self.args.max_sessions:
                self.done.set()

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            await conn.disconnect()
        for task in list(self.bots):
            task.cancel()
        await asyncio.gather(*self.bots, return_exceptions=True)


async def _serve_webrtc(
    args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
) -> None:
    from aiohttp import web

    if args.host in ("127.0.0.1", "localhost", "::1"):
        _loopback_ice()
    loop = asyncio.get_running_loop()
    server = BotServer(args, pool, voice)
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


# -- Phone: a carrier's media stream (FastAPI WebSocket, one pipeline per call) -----------------

#: the carrier dialects, each with Pipecat's serializer for it
DIALECTS = ("twilio", "telnyx", "plivo", "exotel", "vonage")


async def _carrier_serializer(websocket: Any, dialect: str, args: argparse.Namespace) -> Any:
    """Pipecat's serializer for ``dialect``, built as Pipecat's runner builds it
    (``pipecat/runner/utils.py`` ``_create_telephony_transport``) but with
    ``auto_hang_up=False`` (offline there is no carrier REST API to call at the end).

    Twilio, Telnyx, Plivo and Exotel: the carrier's first messages are read by Pipecat's
    ``parse_telephony_websocket`` (two messages: ``connected`` and ``start``, or ``start``
    and the first ``media``), which gives the stream and call ids; a handshake of another
    dialect raises ``ValueError``. Vonage sends no ids (``websocket:connected`` first, which
    its serializer reads and logs): the serializer is built at once, as Pipecat's
    ``vonage-audio-bot`` example does, at ``--vonage-rate``."""
    if dialect == "vonage":
        from pipecat.serializers.vonage import VonageFrameSerializer

        return VonageFrameSerializer(
            VonageFrameSerializer.InputParams(vonage_sample_rate=args.vonage_rate)
        )
    from pipecat.runner.utils import parse_telephony_websocket

    kind, call = await parse_telephony_websocket(websocket)
    if kind != dialect:
        raise ValueError(f"expected a {dialect} handshake, the carrier's looks like {kind}")
    print(
        f"call {dialect} stream={call['stream_id']} call={call['call_id']}",
        file=sys.stderr,
        flush=True,
    )
    if dialect == "twilio":
        from pipecat.serializers.twilio import TwilioFrameSerializer

        return TwilioFrameSerializer(
            stream_sid=call["stream_id"],
            call_sid=call["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
    if dialect == "telnyx":
        from pipecat.serializers.telnyx import TelnyxFrameSerializer

        return TelnyxFrameSerializer(
            stream_id=call["stream_id"],
            call_control_id=call["call_id"],
            outbound_encoding=call["outbound_encoding"] or "PCMU",
            inbound_encoding="PCMU",
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
        )
    if dialect == "plivo":
        from pipecat.serializers.plivo import PlivoFrameSerializer

        return PlivoFrameSerializer(
            stream_id=call["stream_id"],
            call_id=call["call_id"],
            params=PlivoFrameSerializer.InputParams(auto_hang_up=False),
        )
    from pipecat.serializers.exotel import ExotelFrameSerializer

    return ExotelFrameSerializer(stream_sid=call["stream_id"], call_sid=call["call_id"])


class PhoneServer:
    """The FastAPI app a carrier calls: one WebSocket route per dialect served, and one
    Pipecat pipeline (``FastAPIWebsocketTransport`` with the dialect's serializer) per
    call, which ends when the carrier hangs up."""

    def __init__(
        self, args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
    ) -> None:
        self.args = args
        self.calls = 0
        self.calls_ended = 0
        self.done = asyncio.Event()
        self.workers: set[Any] = set()
        self._services = _service_classes(pool, voice, metrics=False)

    def app(self) -> Any:
        """``/DIALECT`` for each dialect served (``--transport phone``: all five), and
        ``/ws`` too when one dialect is served (Pipecat's examples use ``/ws``)."""
        from fastapi import FastAPI
        from starlette.routing import WebSocketRoute

        app = FastAPI()
        served = DIALECTS if self.args.transport == "phone" else (self.args.transport,)
        for dialect in served:

            def route(dialect: str = dialect) -> Any:
                async def call(websocket: Any) -> None:
                    await self.call(websocket, dialect)

                return call

            # Starlette's plain route: the handler gets the WebSocket itself
            app.router.routes.append(WebSocketRoute(f"/{dialect}", route()))
            if len(served) == 1:
                app.router.routes.append(WebSocketRoute("/ws", route()))
        return app

    async def call(self, websocket: Any, dialect: str) -> None:
        """One phone call: the carrier's handshake, then the bot's pipeline until the
        carrier hangs up (or the server stops)."""
        from pipecat.frames.frames import TTSSpeakFrame
        from pipecat.transports.websocket.fastapi import (
            FastAPIWebsocketParams,
            FastAPIWebsocketTransport,
        )
        from pipecat.workers.runner import WorkerRunner

        await websocket.accept()
        self.calls += 1
        number = self.calls
        try:
            try:
                serializer = await _carrier_serializer(websocket, dialect, self.args)
            except ValueError as e:  # not this dialect's handshake, or no handshake at all
                print(f"call {number}: {e}", file=sys.stderr, flush=True)
                await websocket.close(code=1008)
                return
            heard: Callable[[str], None] | None = None
            if self.args.wire_log:
                heard = self._log_wire(serializer, number, dialect)
            transport = FastAPIWebsocketTransport(
                websocket=websocket,
                params=FastAPIWebsocketParams(
                    audio_in_enabled=True,
                    audio_out_enabled=True,
                    add_wav_header=False,
                    serializer=serializer,
                    allowed_origins=[],
                    # Vonage takes 20 ms binary frames (Pipecat's vonage-audio-bot example)
                    fixed_audio_packet_size=(
                        self.args.vonage_rate // 50 * 2 if dialect == "vonage" else None
                    ),
                ),
            )
            worker = _worker(self.args, transport, self._services, on_heard=heard)
            if self.args.greeting:

                async def _greet(transport: Any, client: Any) -> None:
                    await worker.queue_frames([TTSSpeakFrame(self.args.greeting)])

                transport.add_event_handler("on_client_connected", _greet)
            self.workers.add(worker)
            try:
                runner = WorkerRunner(handle_sigint=False)
                await runner.add_workers(worker)
                await runner.run()
            finally:
                self.workers.discard(worker)
        finally:
            self.calls_ended += 1
            print(f"session {number} ended", file=sys.stderr, flush=True)
            if self.args.max_sessions and self.calls_ended >= self.args.max_sessions:
                self.done.set()

    def _log_wire(self, serializer: Any, number: int, dialect: str) -> Callable[[str], None]:
        """``--wire-log``: one JSON line per message the serializer makes for the carrier
        (``t_ns``: ``time.monotonic_ns()`` when it was made, just before it is sent; the
        probe's clock on the same machine), so a test can hold the probe's marks against
        what the bot really sent: ``kind`` ``media`` (``samples`` of audio at the
        carrier's rate), ``clear`` or ``other``. Returns the logger of what the responder
        answers (``kind`` ``heard``, ``text``)."""
        from pipecat.frames.frames import AudioRawFrame, InterruptionFrame

        serialize = serializer.serialize
        width = 1 if dialect in ("twilio", "telnyx", "plivo") else 2  # μ-law or 16-bit
        path = Path(self.args.wire_log)

        def write(kind: str, **more: Any) -> None:
            line = {"call": number, "dialect": dialect, "t_ns": time.monotonic_ns()}
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**line, "kind": kind, **more}) + "\n")

        async def logged(frame: Any) -> Any:
            out = await serialize(frame)
            if out:
                kind = "other"
                samples = 0
                if isinstance(frame, InterruptionFrame):
                    kind = "clear"
                elif isinstance(frame, AudioRawFrame):
                    kind = "media"
                    if isinstance(out, bytes):
                        samples = len(out) // 2
                    else:
                        payload = json.loads(out)["media"]["payload"]
                        samples = len(base64.b64decode(payload)) // width
                write(kind, samples=samples)
            return out

        serializer.serialize = logged
        return lambda text: write("heard", text=text)

    async def close(self) -> None:
        """Hang up every call still running."""
        for worker in list(self.workers):
            await worker.cancel()


async def _serve_phone(
    args: argparse.Namespace, pool: concurrent.futures.Executor, voice: Voice
) -> None:
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, leaving SIGINT/SIGTERM to the bot (uvicorn re-raises them at exit)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    loop = asyncio.get_running_loop()
    phone = PhoneServer(args, pool, voice)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server = Server(
        uvicorn.Config(phone.app(), log_level="warning", ws="auto", timeout_graceful_shutdown=5)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()  # it failed to start: raise why
        await asyncio.sleep(0.02)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, phone.done.set)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    try:
        await phone.done.wait()
    finally:
        await phone.close()
        server.should_exit = True
        await serving


async def _main(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_asr_init) as pool:
        # Load the model and warm the synthesizer before the server opens, so the first
        # turn is not slower.
        await asyncio.get_running_loop().run_in_executor(pool, _asr_warm)
        voice = Voice(args.leading_silence_ms)
        if args.transport == "websocket":
            await _serve_websocket(args, pool, voice)
        elif args.transport == "webrtc":
            await _serve_webrtc(args, pool, voice)
        else:
            await _serve_phone(args, pool, voice)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--transport", choices=("websocket", "webrtc", "phone", *DIALECTS), default="websocket"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="webrtc: 0 is any free port (printed)")
    ap.add_argument("--spans", help="websocket: the span file (JSON lines), required")
    ap.add_argument("--otlp", help="websocket: the spans as one OTLP/JSON document too")
    ap.add_argument("--conversation-id", default="voiceaudit-e2e")
    ap.add_argument(
        "--max-sessions", type=int, default=0, help="webrtc, phone: exit after N sessions (calls)"
    )
    ap.add_argument("--greeting", default="", help="phone: the bot says this when a call starts")
    ap.add_argument(
        "--dtmf",
        action="store_true",
        help="phone: Pipecat's DTMFAggregator turns key presses into the caller's words",
    )
    ap.add_argument(
        "--wire-log", help="phone: a JSON line per message sent to the carrier (t_ns, kind)"
    )
    ap.add_argument(
        "--vonage-rate", type=int, choices=(8000, 16000), default=16000, help="vonage: L16 rate"
    )
    ap.add_argument("--out-rate", type=int, default=16000)
    ap.add_argument("--vad-stop-ms", type=int, default=200)
    ap.add_argument("--word-ms", type=int, default=30)
    ap.add_argument("--first-token-ms", type=int, default=80)
    ap.add_argument(
        "--leading-silence-ms",
        default="0",
        help="silence prepended to each reply, ms; a comma list is used in turn (50,550)",
    )
    ap.add_argument("--turn-end-timeout", type=float, default=None)
    ap.add_argument("--smart-turn", action="store_true", help="Pipecat's default turn model")
    ap.add_argument(
        "--interruptions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the caller's speech interrupts the bot (Pipecat's default; "
        "--no-interruptions: the reply plays to its end)",
    )
    ap.add_argument(
        "--long-reply",
        action="store_true",
        help="two more sentences in every reply (8-10 s in all)",
    )
    ap.add_argument(
        "--long-replies",
        default="",
        help="the same for these replies only: a comma list of reply numbers in each session "
        "(1 is its first reply; a greeting is not a reply)",
    )
    args = ap.parse_args(argv)
    if args.transport == "websocket" and (not args.port or not args.spans):
        ap.error("--transport websocket needs --port and --spans")
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    t = time.monotonic()
    asyncio.run(_main(args))
    print(f"bot exited after {time.monotonic() - t:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
