"""Google's Gemini Live API (``BidiGenerateContent`` over WebSocket): ``gemini-live``.

The session, as the API has it (docs/apis/gemini-live.md has the details and sources):

- **connect** to ``wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.
  v1beta.GenerativeService.BidiGenerateContent`` (a URL with no path gets that path, with
  the ``api_version`` option's version); the API key (``--api-key-env``) goes in the
  ``x-goog-api-key`` header, or with ``key_in=query`` in the URL's ``key`` query parameter
  (never in a trace: the trace's URL has no query and every secret is scrubbed).
  ``wss://`` endpoints with a private or self-signed certificate: ``ca_file`` /
  ``tls_insecure`` (voiceaudit.targets.wsbase).
- **setup**: the first message is ``setup`` (``model``, ``generationConfig.
  responseModalities: ["AUDIO"]``, the voice, ``realtimeInputConfig.
  automaticActivityDetection``, ``inputAudioTranscription``/``outputAudioTranscription``);
  ``open`` waits for ``setupComplete`` (a close or the connect timeout first fails it).
  With the ``greeting`` option it then sends ``clientContent`` (a user turn holding that
  text, ``turnComplete: true``) so the agent speaks first: the reply to it, before the
  first turn, is the greeting, timed from that message (:meth:`media_start_ns`).
- **caller audio**: ``realtimeInput {audio: {data, mimeType: "audio/pcm;rate=16000"}}``,
  16-bit mono little-endian PCM, standard base64, one message per probe frame (the probe
  resamples its utterances to ``rate``, default 16000). With ``vad=manual`` automatic
  activity detection is off and the probe sends ``activityStart`` before each turn's first
  frame and ``activityEnd`` once the frame with its last speech sample is sent.
- **reply**: ``serverContent.modelTurn.parts[].inlineData {data, mimeType}`` (24 kHz PCM),
  decoded at the rate its ``mimeType`` declares (``audio/pcm;rate=N``; ``audio/pcm`` with
  no rate is the API's documented 24000). Server messages come as JSON in text or binary
  frames (the API uses binary frames).

Marks (each at the arrival of the message carrying it; the API reports no server times):

=====================================  =======================  ==============
server message                         mark                     stage
=====================================  =======================  ==============
``inputTranscription``                 ``transcript.partial``   transcription
the last ``inputTranscription`` before ``transcript.final``     transcription
the reply's first output (or one
with ``finished: true``)
``interimInputTranscription``          ``transcript.partial``   transcription
``voiceActivity`` ``ACTIVITY_START``,  ``speech_started``       endpointing
``voiceActivityDetectionSignal`` SOS
``voiceActivity`` ``ACTIVITY_END``,    ``endpoint``             endpointing
``voiceActivityDetectionSignal`` EOS
first ``inlineData`` of a reply        ``llm.first_token``      model
first ``outputTranscription`` (or      ``reply_text.first``     model
text part) of a reply
``generationComplete``                 ``llm.done``             model
``interrupted: true``                  ``interrupted`` (the     endpointing
                                       reply was cut) or
                                       ``interruption``
``turnComplete``                       ``response.done``        model
                                       (then the reply is done)
``toolCall``                           ``tool_call``            model
``goAway``                             ``go_away``              session
=====================================  =======================  ==============

``transcript.final`` is the caller's transcript as the model took it: the API streams the
input transcription in pieces and says when it is finished only sometimes, so the mark is
the arrival of the last piece before the reply began (``attrs.finished`` says which),
``attrs.text`` the pieces joined. A piece that comes once the reply has begun is a
``transcript.partial`` with ``attrs.late`` (the API's transcription lagging its model), left
out of every ``transcript.final``; after an ``interrupted`` the pieces are the interrupting
speech's, so they make the next turn's. ``response.done`` carries ``cut`` (an ``interrupted``
came during the reply), ``turn_complete_reason`` when given and ``usage`` (the turn's
``usageMetadata``, when it came first). Interruptions: the API stops generating when the
caller talks over the reply and sends ``interrupted: true`` then ``turnComplete`` (no
``generationComplete``); the first ``interrupted`` of a reply that has sent audio is
``interrupted`` (the probe knows the reply was cut), any other one ``interruption``
(``attrs.bot_speaking`` false: nothing was playing).

Faults (never a traceback): a message that is not a JSON object, a field voiceaudit reads
with the wrong type (``serverContent`` not an object, ``parts`` not a list,
``interrupted`` not a boolean, a transcription ``text`` not a string, ``data`` not base64)
fails the turn as a protocol fault naming the field; reply audio in a format other than
16-bit PCM (another ``mimeType``), an odd byte count, or a reply whose rate changes
midway fails it too, and the rest of that reply's audio is not used. A key the API does
not define (top level or in ``serverContent``) is the mark ``unknown_event``
(``attrs.raw`` names it) and is otherwise ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any, ClassVar, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSession, TargetSink
from voiceaudit.targets.wsbase import TLS_OPTIONS, WebSocketSession, tls_context

#: the API's path on its host, by API version
API_PATH: Final[str] = (
    "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
)
DEFAULT_MODEL: Final[str] = "models/gemini-2.5-flash-native-audio-preview-09-2025"
#: the rate of ``audio/pcm`` with no ``rate`` parameter (the API's output rate)
DEFAULT_OUTPUT_RATE: Final[int] = 24000
DEFAULT_INPUT_RATE: Final[int] = 16000
_RATE_RANGE: Final[tuple[int, int]] = (1000, 384000)

#: what each top-level key of a server message is (``LiveServerMessage``'s fields)
_TOP_KEYS: Final[frozenset[str]] = frozenset(
    {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "usageMetadata",
        "goAway",
        "sessionResumptionUpdate",
        "voiceActivityDetectionSignal",
        "voiceActivity",
    }
)
#: ``LiveServerContent``'s fields
_CONTENT_KEYS: Final[frozenset[str]] = frozenset(
    {
        "modelTurn",
        "turnComplete",
        "interrupted",
        "groundingMetadata",
        "generationComplete",
        "inputTranscription",
        "outputTranscription",
        "urlContextMetadata",
        "turnCompleteReason",
        "waitingForInput",
        "interimInputTranscription",
        "interactionStatus",
    }
)
_ACTIVITY: Final[dict[str, tuple[str, str]]] = {
    "ACTIVITY_START": ("speech_started", "endpointing"),
    "ACTIVITY_END": ("endpoint", "endpointing"),
    "VAD_SIGNAL_TYPE_SOS": ("speech_started", "endpointing"),
    "VAD_SIGNAL_TYPE_EOS": ("endpoint", "endpointing"),
}

OPTIONS: Final[dict[str, str]] = {
    "model": f"the model to ask for in setup (default {DEFAULT_MODEL}; a bare name gets "
    "models/ in front, as the SDK does)",
    "voice": "a prebuilt voice name (speechConfig.voiceConfig); default: the model's",
    "rate": f"sample rate of the caller's PCM (default {DEFAULT_INPUT_RATE}; the API takes any)",
    "vad": "server (default: the API's automatic activity detection) or manual "
    "(activityStart/activityEnd around each turn's speech)",
    "silence_ms": "automaticActivityDetection.silenceDurationMs (default: the API's)",
    "prefix_padding_ms": "automaticActivityDetection.prefixPaddingMs (default: the API's)",
    "transcription": "on (default: ask for input and output transcriptions) or off",
    "system_instruction": "the system instruction text sent in setup",
    "greeting": "TEXT: after setup, ask the agent to speak first (a clientContent turn of "
    "this text); the reply before the first turn is the greeting",
    "api_version": "the API version in the default path (default v1beta)",
    "key_in": "header (default: x-goog-api-key) or query (?key=)",
    **TLS_OPTIONS,
}


class GeminiMessageError(ValueError):
    """A server message field of the wrong type (the message names the field)."""


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` when present and of ``kind`` (None when absent); GeminiMessageError
    for a value of another type."""
    value = obj.get(key)
    if value is None:
        return None
    if kind is int and isinstance(value, bool):
        raise GeminiMessageError(f"{where}.{key} is not a number")
    if not isinstance(value, kind):
        raise GeminiMessageError(f"{where}.{key} is {type(value).__name__}, not {kind.__name__}")
    return value


def parse_pcm_mime(mime: Any) -> int:
    """The sample rate of a reply audio ``mimeType`` (``audio/pcm;rate=24000``; no rate:
    24000); ValueError (the reason) for anything that is not 16-bit PCM voiceaudit reads."""
    if not isinstance(mime, str):
        raise ValueError("inlineData without a mimeType")
    parts = [p.strip() for p in mime.split(";")]
    if parts[0].lower() != "audio/pcm":
        raise ValueError(f"reply audio declared as {mime[:60]!r}, not audio/pcm (16-bit PCM)")
    rate = DEFAULT_OUTPUT_RATE
    for p in parts[1:]:
        name, _, value = p.partition("=")
        if name.strip().lower() == "rate":
            try:
                rate = int(value.strip())
            except ValueError:
                raise ValueError(
                    f"reply audio mimeType {mime[:60]!r}: rate is not a number"
                ) from None
            if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
                raise ValueError(f"reply audio mimeType {mime[:60]!r}: rate {rate} Hz")
    return rate


def decode_b64(value: Any) -> bytes:
    """The bytes of a base64 string, standard or URL-safe (the SDK writes URL-safe);
    ValueError when it is neither."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _options(config: TargetConfig) -> None:
    """Check the options (UsageError before anything connects)."""
    unknown = sorted(set(config.options) - set(OPTIONS))
    if unknown:
        raise UsageError(
            f"unknown gemini-live target option {unknown[0]!r}",
            hint="known: " + ", ".join(OPTIONS),
        )
    rate = config.int_option("rate", DEFAULT_INPUT_RATE)
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        raise UsageError(f"target option rate={rate} is not a sample rate")
    for name, allowed in (
        ("vad", ("server", "manual")),
        ("transcription", ("on", "off")),
        ("key_in", ("header", "query")),
    ):
        value = config.options.get(name)
        if value is not None and value not in allowed:
            raise UsageError(f"target option {name}={value!r} must be {' or '.join(allowed)}")
    for name in ("silence_ms", "prefix_padding_ms"):
        if config.int_option(name, 0) < 0:
            raise UsageError(f"target option {name} cannot be negative")
    if "greeting" in config.options and not config.options["greeting"].strip():
        raise UsageError("target option greeting= needs the text to send")
    tls_context(config)


class GeminiLiveSession(WebSocketSession):
    """One Live API session (module doc)."""

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.input_rate = config.int_option("rate", DEFAULT_INPUT_RATE)
        self.mime = f"audio/pcm;rate={self.input_rate}"
        self.manual = config.option("vad", "server") == "manual"
        self.greeting = config.options.get("greeting")
        self._setup_complete = asyncio.Event()
        self._greeting_sent_ns: int | None = None
        self._opened = False
        #: once set, the session cannot go on (every later send fails with it)
        self._broken: str | None = None
        self._reset_reply()
        self._transcript: list[str] = []
        self._transcript_ns: int | None = None
        self._usage: Any = None

    def _reset_reply(self) -> None:
        #: a reply (model output) is under way: between its first output and turnComplete
        self._replying = False
        self._audio_seen = False
        self._text_seen = False
        self._rate: int | None = None
        self._cut = False
        self._interrupt_seen = False
        #: any ``interrupted`` came during this reply: the caller is saying the next turn
        self._any_interrupt = False
        #: a chunk of this reply could not be read as declared: its later audio is dropped
        self._audio_fault = False

    # -- connecting -------------------------------------------------------------------

    def _key_in_query(self) -> bool:
        return self.config.option("key_in", "header") == "query"

    def url(self) -> str:
        """The target's URL; the API's path when it has none, ``key=`` when asked."""
        parts = urlsplit(self.config.url)
        path = parts.path
        if path in ("", "/"):
            path = API_PATH.format(version=self.config.option("api_version", "v1beta"))
        query = parts.query
        key = self.config.api_key()
        if key and self._key_in_query():
            query = (query + "&" if query else "") + urlencode({"key": key})
        return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))

    def headers(self) -> dict[str, str]:
        """The user's headers, plus the API key as ``x-goog-api-key`` (unless in the query)."""
        h = {k: v for k, v in self.config.headers}
        key = self.config.api_key()
        if key and not self._key_in_query():
            h["x-goog-api-key"] = key
        return h

    def setup_message(self) -> dict[str, Any]:
        """The ``setup`` message the options make."""
        opt = self.config.options
        gen: dict[str, Any] = {"responseModalities": ["AUDIO"]}
        if opt.get("voice"):
            gen["speechConfig"] = {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": opt["voice"]}}
            }
        aad: dict[str, Any] = {"disabled": self.manual}
        if not self.manual:
            if "silence_ms" in opt:
                aad["silenceDurationMs"] = self.config.int_option("silence_ms", 0)
            if "prefix_padding_ms" in opt:
                aad["prefixPaddingMs"] = self.config.int_option("prefix_padding_ms", 0)
        model = opt.get("model", DEFAULT_MODEL)
        if "/" not in model:
            model = f"models/{model}"  # as the SDK names it
        setup: dict[str, Any] = {
            "model": model,
            "generationConfig": gen,
            "realtimeInputConfig": {"automaticActivityDetection": aad},
        }
        if opt.get("system_instruction"):
            setup["systemInstruction"] = {"parts": [{"text": opt["system_instruction"]}]}
        if self.config.option("transcription", "on") == "on":
            setup["inputAudioTranscription"] = {}
            setup["outputAudioTranscription"] = {}
        return {"setup": setup}

    async def open(self) -> None:
        try:
            await self.connect(self.url(), self.headers())
        except TargetError as exc:
            # aiohttp's handshake errors quote the whole URL, query (``key=``) and all
            raise TargetError(self._scrub(exc.message)) from None
        try:
            await self.send_json(self.setup_message())
            await self._await_setup()
            if self.greeting:
                self._greeting_sent_ns = time.monotonic_ns()
                await self.send_json(
                    {
                        "clientContent": {
                            "turns": [{"role": "user", "parts": [{"text": self.greeting}]}],
                            "turnComplete": True,
                        }
                    }
                )
        except TargetError:
            await self.close()
            raise
        self._opened = True

    def _scrub(self, text: str) -> str:
        """``text`` with the API key (and every other secret of the config) blanked out."""
        for secret in self.config.secrets():
            text = text.replace(secret, "***")
        return text

    async def _await_setup(self) -> None:
        """Wait for ``setupComplete``; TargetError when the server closes, breaks the
        protocol or says nothing within the connect timeout."""
        waiter = asyncio.ensure_future(self._setup_complete.wait())
        reader = self._reader
        waits: set[asyncio.Future[Any]] = {waiter}
        if reader is not None:
            waits.add(reader)
        try:
            await asyncio.wait(
                waits, timeout=self.config.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._broken is not None:
            raise TargetError(f"setup failed: {self._broken}")
        if self._setup_complete.is_set():
            return
        if reader is not None and reader.done():
            code = None if self._ws is None else self._ws.close_code
            raise TargetError(f"the target closed the connection during setup (code {code})")
        raise TargetError("the target did not answer setup with setupComplete in time")

    def media_start_ns(self) -> int | None:
        """When the greeting request left (the greeting is timed from it), if one did."""
        return self._greeting_sent_ns

    # -- sending ----------------------------------------------------------------------

    async def send_audio(self, pcm16: bytes) -> None:
        if self._broken is not None:
            raise TargetError(self._broken)
        data = base64.b64encode(pcm16).decode()
        await self.send_json({"realtimeInput": {"audio": {"data": data, "mimeType": self.mime}}})

    async def start_turn(self, turn: int) -> None:
        if self.manual:
            await self.send_json({"realtimeInput": {"activityStart": {}}})

    async def speech_ended(self) -> None:
        if self.manual:
            await self.send_json({"realtimeInput": {"activityEnd": {}}})

    # -- receiving --------------------------------------------------------------------

    def on_binary(self, t_ns: int, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._fault("a binary message that is not UTF-8 JSON")
            return
        self._on_message(t_ns, text, len(data))

    def on_text(self, t_ns: int, data: str) -> None:
        self._on_message(t_ns, data, len(data.encode()))

    def _fault(self, reason: str) -> None:
        reason = f"protocol: {reason}"
        if not self._opened and self._broken is None:
            self._broken = reason  # open reports it
        self.sink.fail(reason)

    def _on_message(self, t: int, data: str, size: int) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            self._fault(f"a server message that is not JSON {data[:60]!r}")
            return
        if not isinstance(msg, dict):
            self._fault(f"a server message that is not a JSON object {data[:60]!r}")
            return
        try:
            self._on_object(t, msg, size)
        except GeminiMessageError as exc:
            self._fault(str(exc))

    def _on_object(self, t: int, msg: dict[str, Any], size: int) -> None:
        for key in msg:
            if key not in _TOP_KEYS:
                self.sink.mark("unknown_event", "other", t, {"raw": str(key)[:80]})
        if "setupComplete" in msg:
            _field(msg, "setupComplete", dict, "message")
            self._setup_complete.set()
        usage = _field(msg, "usageMetadata", dict, "message")
        if usage is not None:
            self._usage = usage
        for key in ("voiceActivity", "voiceActivityDetectionSignal"):
            act = _field(msg, key, dict, "message")
            if act is not None:
                kind = act.get("voiceActivityType", act.get("vadSignalType"))
                if isinstance(kind, str) and kind in _ACTIVITY:
                    name, stage = _ACTIVITY[kind]
                    self.sink.mark(name, stage, t, {"raw": f"{key}.{kind}"})
        content = _field(msg, "serverContent", dict, "message")
        if content is not None:
            self._on_content(t, content, size)
        call = _field(msg, "toolCall", dict, "message")
        if call is not None:
            calls = call.get("functionCalls")
            names = (
                [c.get("name") for c in calls if isinstance(c, dict)]
                if isinstance(calls, list)
                else []
            )
            self.sink.mark("tool_call", "model", t, {"raw": "toolCall", "names": names})
        away = _field(msg, "goAway", dict, "message")
        if away is not None:
            self.sink.mark(
                "go_away", "session", t, {"raw": "goAway", "time_left": away.get("timeLeft")}
            )

    def _on_content(self, t: int, content: dict[str, Any], size: int) -> None:
        where = "serverContent"
        for key in content:
            if key not in _CONTENT_KEYS:
                self.sink.mark("unknown_event", "other", t, {"raw": f"{where}.{str(key)[:60]}"})
        for key in ("inputTranscription", "interimInputTranscription"):
            tr = _field(content, key, dict, where)
            if tr is not None:
                self._on_input_transcript(t, key, tr)
        turn = _field(content, "modelTurn", dict, where)
        if turn is not None:
            parts = _field(turn, "parts", list, f"{where}.modelTurn") or []
            audio_parts = sum(1 for p in parts if isinstance(p, dict) and "inlineData" in p)
            for i, part in enumerate(parts):
                if not isinstance(part, dict):
                    raise GeminiMessageError(f"{where}.modelTurn.parts[{i}] is not an object")
                self._on_part(t, part, i, size if audio_parts == 1 else None)
        out = _field(content, "outputTranscription", dict, where)
        if out is not None and _field(out, "text", str, f"{where}.outputTranscription"):
            self._model_output(t)
            self._first_text(t, "outputTranscription")
        for flag in ("interrupted", "generationComplete", "turnComplete", "waitingForInput"):
            _field(content, flag, bool, where)
        if content.get("interrupted") is True:
            self._interrupted(t)
        if content.get("generationComplete") is True:
            self.sink.mark("llm.done", "model", t, {"raw": "generationComplete"})
        if content.get("turnComplete") is True:
            attrs: dict[str, Any] = {"raw": "turnComplete", "cut": self._cut}
            reason = content.get("turnCompleteReason")
            if isinstance(reason, str):
                attrs["turn_complete_reason"] = reason
            if self._usage is not None:
                attrs["usage"] = self._usage
                self._usage = None
            self.sink.mark("response.done", "model", t, attrs)
            self.sink.reply_done(t)
            self._reset_reply()

    def _on_input_transcript(self, t: int, key: str, tr: dict[str, Any]) -> None:
        text = _field(tr, "text", str, f"serverContent.{key}")
        finished = _field(tr, "finished", bool, f"serverContent.{key}")
        attrs: dict[str, Any] = {"raw": key}
        if text is not None:
            attrs["text"] = text
        late = self._replying and not self._any_interrupt
        if late:
            attrs["late"] = True
        self.sink.mark("transcript.partial", "transcription", t, attrs)
        if key != "inputTranscription" or late:
            return  # a piece after the reply began belongs to the turn it answers
        if text:
            self._transcript.append(text)
        self._transcript_ns = t
        if finished:
            self._final_transcript(True)

    def _final_transcript(self, finished: bool) -> None:
        """``transcript.final`` at the last input transcription's arrival (module doc)."""
        if self._transcript_ns is None:
            return
        text = "".join(self._transcript).strip()
        self.sink.mark(
            "transcript.final",
            "transcription",
            self._transcript_ns,
            {"raw": "inputTranscription", "text": text, "finished": finished},
        )
        self._transcript = []
        self._transcript_ns = None

    def _model_output(self, t: int) -> None:
        """The reply's model output begins (its first audio, text or transcript)."""
        if not self._replying:
            self._replying = True
            self._final_transcript(False)

    def _first_text(self, t: int, raw: str) -> None:
        if not self._text_seen:
            self._text_seen = True
            self.sink.mark("reply_text.first", "model", t, {"raw": raw})

    def _on_part(self, t: int, part: dict[str, Any], i: int, size: int | None) -> None:
        where = f"serverContent.modelTurn.parts[{i}]"
        if _field(part, "text", str, where) is not None and part.get("thought") is not True:
            self._model_output(t)
            self._first_text(t, "modelTurn.text")
        blob = _field(part, "inlineData", dict, where)
        if blob is None:
            return
        if self._broken is not None:
            self.sink.fail(self._broken)
            return
        self._model_output(t)
        if self._audio_fault:
            return  # the rest of a reply after a bad chunk would be heard out of place
        try:
            raw = decode_b64(blob.get("data"))
        except ValueError as exc:
            self._audio_fault = True
            self._fault(f"{where}.inlineData.data is {exc}")
            return
        try:
            rate = parse_pcm_mime(blob.get("mimeType"))
            if len(raw) % 2:
                raise ValueError(
                    f"reply audio of {len(raw)} bytes cannot be 16-bit PCM (an odd byte count)"
                )
            if self._rate is not None and rate != self._rate:
                raise ValueError(f"reply audio rate changed from {self._rate} to {rate} Hz midway")
        except ValueError as exc:
            self._audio_fault = True
            self._fault(str(exc))
            return
        self._rate = rate
        if not self._audio_seen:
            self._audio_seen = True
            self.sink.mark(
                "llm.first_token",
                "model",
                t,
                {"raw": "serverContent.modelTurn.inlineData", "mime_type": blob.get("mimeType")},
            )
        wire = size if size is not None else len(str(blob.get("data")))
        self.sink.reply_audio(t, raw, rate, wire)

    def _interrupted(self, t: int) -> None:
        """``interrupted: true``: the reply was cut (module doc)."""
        self._any_interrupt = True
        if self._audio_seen and not self._interrupt_seen:
            self._interrupt_seen = True
            self._cut = True
            self.sink.mark("interrupted", "endpointing", t, {"raw": "serverContent.interrupted"})
            return
        attrs = {
            "raw": "serverContent.interrupted",
            "bot_speaking": self._audio_seen,
            "repeat": self._interrupt_seen,
        }
        self.sink.mark("interruption", "endpointing", t, attrs)


class GeminiLiveGreetingSession(GeminiLiveSession):
    """A session with the ``greeting`` option: the agent speaks first."""

    speaks_first: ClassVar[bool] = True


class GeminiLiveTarget(Target):
    """The ``gemini-live`` protocol (module doc)."""

    protocol = "gemini-live"
    schemes = ("wss", "ws")
    description = "Google Gemini Live API (BidiGenerateContent) over WebSocket"
    options = OPTIONS
    session_class = GeminiLiveSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        _options(config)

    def session(self, sink: TargetSink) -> TargetSession:
        """A new, unopened session (one that speaks first with ``greeting``)."""
        if "greeting" in self.config.options:
            return GeminiLiveGreetingSession(self.config, sink)
        return GeminiLiveSession(self.config, sink)
