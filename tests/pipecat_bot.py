"""A real Pipecat 1.14 voice bot, offline, for the end-to-end telemetry test.

Silero VAD (Pipecat's bundled ONNX model) → PocketSphinx STT (in a worker process, so
decoding never holds the bot's GIL) → a rule-based responder (a Pipecat LLM service that
streams words at a fixed pace; clearly not a language model) → eSpeak NG TTS, served over
Pipecat's own WebSocket server transport with its protobuf frame serializer. Pipecat's
own OpenTelemetry tracing is on; its spans are written as JSON lines of
``span.to_json()`` and, when ``--otlp`` is given, as one OTLP/JSON document.

Fault injection (to show a delay Pipecat's own numbers cannot see): ``--leading-silence-ms``
prepends silence to each synthesized reply; a comma list (``50,550``) is used in turn.

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
reply (it then lasts 8 to 10 s) so that there is reply left to stop; the WebSocket output
transport sends audio at real time (it sleeps one 40 ms chunk's duration after each send),
so the rest of a reply is still in the bot's queue when the caller barges in.

Run: ``python tests/pipecat_bot.py --port N --spans spans.jsonl``; prints ``READY`` on
stdout when the server listens, serves one client, and exits (flushing the spans) when
that client disconnects.

Test support code: the services are deliberately small and offline.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import json
import multiprocessing
import sys
import time
from collections.abc import AsyncGenerator
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


# -- span files ------------------------------------------------------------------------------


def _all_none(cls: Any, **given: Any) -> Any:
    """A Pipecat settings object with every field given (None where unsupported)."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    return cls(**{n: given.get(n) for n in names})


def _build(args: argparse.Namespace, pool: concurrent.futures.Executor) -> Any:
    """Import Pipecat and build the services (kept out of module scope for spawn)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
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
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.processors.frameworks.rtvi import RTVIObserverParams
    from pipecat.serializers.protobuf import ProtobufFrameSerializer
    from pipecat.services.llm_service import LLMService
    from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService
    from pipecat.transports.websocket.server import (
        SingleClientWebsocketServerParams,
        SingleClientWebsocketServerTransport,
    )
    from pipecat.turns.user_start import (
        TranscriptionUserTurnStartStrategy,
        VADUserTurnStartStrategy,
    )
    from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies
    from pipecat.utils.time import time_now_iso8601
    from pipecat.utils.tracing.service_decorators import traced_llm, traced_stt, traced_tts
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

    class PocketSphinxSTTService(STTService):
        """Streaming: audio is decoded while the user speaks (from a 0.5 s pre-roll before
        the VAD's speech start); the VAD's stop finalizes the utterance."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._speaking = False
            self._preroll: list[bytes] = []
            self._final: asyncio.Task[None] | None = None

        def can_generate_metrics(self) -> bool:
            return True

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
            self, word_ms: int, first_token_ms: int, long_reply: bool, **kwargs: Any
        ) -> None:
            super().__init__(settings=_all_none(LLMSettings, model="rule-responder"), **kwargs)
            self._word_s = word_ms / 1000
            self._first_s = first_token_ms / 1000
            self._long = long_reply

        def can_generate_metrics(self) -> bool:
            return True

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
            await self.start_ttfb_metrics()
            await asyncio.sleep(self._first_s)
            for i, word in enumerate(reply_for(heard, self._long).split(" ")):
                if i == 0:
                    await self.stop_ttfb_metrics()
                else:
                    await asyncio.sleep(self._word_s)
                await self.push_frame(LLMTextFrame(word if i == 0 else " " + word))

    class EspeakTTSService(TTSService):
        def __init__(self, leading_silence_ms: list[int], **kwargs: Any) -> None:
            super().__init__(
                push_start_frame=True,
                push_stop_frames=True,
                settings=TTSSettings(model="espeak-ng", voice="en-us", language="en"),
                **kwargs,
            )
            self._espeak = Espeak()
            _resample(self._espeak.synth("ready"), self._espeak.rate, 16000)  # warm up
            self._silence_ms = leading_silence_ms or [0]
            self._replies = 0
            self._context: str | None = None

        def can_generate_metrics(self) -> bool:
            return True

        @traced_tts
        async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
            try:
                await self.start_tts_usage_metrics(text)
                pcm = await asyncio.to_thread(self._espeak.synth, text)
                pcm = _resample(pcm, self._espeak.rate, self.sample_rate)
                if context_id != self._context:  # a reply: one audio context, many sentences
                    self._context = context_id
                    silence = self._silence_ms[self._replies % len(self._silence_ms)]
                    self._replies += 1
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

    exporter = JsonLinesExporter(Path(args.spans))
    setup_tracing(service_name="voiceaudit-pipecat-bot", exporter=exporter)

    transport = SingleClientWebsocketServerTransport(
        params=SingleClientWebsocketServerParams(
            serializer=ProtobufFrameSerializer(),
            audio_in_enabled=True,
            audio_out_enabled=True,
            allowed_origins=[],
        ),
        host="127.0.0.1",
        port=args.port,
    )
    stt = PocketSphinxSTTService(
        settings=STTSettings(model="pocketsphinx-en-us", language="en"),
        ttfs_p99_latency=0.3,
    )
    llm = RuleResponderLLM(
        word_ms=args.word_ms, first_token_ms=args.first_token_ms, long_reply=args.long_reply
    )
    tts = EspeakTTSService(
        leading_silence_ms=[int(x) for x in args.leading_silence_ms.split(",") if x.strip()]
    )
    context = LLMContext()
    pair = LLMContextAggregatorPair(
        context,
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
        enable_tracing=True,
        conversation_id=args.conversation_id,
        idle_timeout_secs=None,
        # RTVI's VAD messages give the client the endpoint mark (off by default).
        rtvi_observer_params=RTVIObserverParams(vad_user_speaking_enabled=True),
    )

    tracker = worker.turn_tracking_observer
    if tracker is not None and args.turn_end_timeout is not None:
        # Pipecat ends a turn 2.5 s after the bot stops speaking; a probe that starts the
        # next utterance sooner gets one turn span for several exchanges. Tests that want
        # one span per exchange shorten it (there is no public parameter for it).
        tracker._turn_end_timeout_secs = args.turn_end_timeout

    @transport.event_handler("on_client_disconnected")
    async def _gone(transport: Any, ws: Any) -> None:
        await worker.cancel()

    @transport.event_handler("on_websocket_ready")
    async def _ready(transport: Any) -> None:
        print("READY", flush=True)

    return worker, exporter


async def _main(args: argparse.Namespace) -> None:
    from opentelemetry import trace
    from pipecat.workers.runner import WorkerRunner

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_asr_init) as pool:
        # Load the model before the server opens, so the first turn is not slower.
        await asyncio.get_running_loop().run_in_executor(pool, _asr_warm)
        worker, exporter = _build(args, pool)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spans", required=True)
    ap.add_argument("--otlp")
    ap.add_argument("--conversation-id", default="voiceaudit-e2e")
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
    args = ap.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    t = time.monotonic()
    asyncio.run(_main(args))
    print(f"bot exited after {time.monotonic() - t:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
