"""OpenAI Realtime protocol over WebSocket (GA event names, and the older beta names).

Options (``--target-option NAME=VALUE``):

- ``api``: ``ga`` (default) or ``beta`` (``OpenAI-Beta: realtime=v1`` header, beta
  ``session.update`` shape and event names).
- ``turn_detection``: ``server_vad`` (default; the server decides the end of the turn) or
  ``manual`` (the probe commits and asks for a response as soon as the frame carrying the
  last speech sample is sent: push-to-talk).
- ``silence_ms`` (default 500), ``prefix_padding_ms`` (300), ``threshold`` (0.5).
- ``voice``, ``model`` (added to the URL query as ``model=`` when given).
- ``input_format``, ``output_format``: the audio format to ask for in ``session.update``:
  ``pcm16`` (default; 16-bit little-endian PCM), ``pcmu`` or ``pcma`` (G.711 μ-law, A-law,
  8 kHz); the protocol's own names (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``,
  ``g711_ulaw``, ``g711_alaw``) are accepted too.
- ``rate``: the PCM sample rate to ask for (default 24000; GA only: the beta shape has no
  rate field, so there it is what the probe assumes).
- ``format_wait_ms`` (default 1000): how long ``open`` waits for ``session.updated`` once the
  server has answered with ``session.created`` only (below).
- ``stage_events``: ``on`` (default) sends the header ``X-Voiceaudit-Stages: 1``, which asks
  the reference pipeline for its extension events (``voiceaudit.stage``: the server times of
  its internal stages; see voiceaudit.reference.stages); other servers ignore it. ``off``
  leaves it out.

Marks: every protocol event that marks progress is a mark at its arrival time:
``speech_started``, ``endpoint`` (``speech_stopped``), ``committed``, ``transcript.final``,
``response.created``, ``reply_text.first`` (the first ``response.output_audio_transcript.delta``
or ``response.output_text.delta``; beta names too), the first audio delta (the probe's own
``reply.first_byte``), ``tts.done`` and ``response.done``. The GA protocol carries no
server-side timing (``response.done`` has token usage only), so these are arrival times;
the reference's extension events carry server times.

Audio formats: the session's formats are settled before the first turn's audio is cut.
``open`` sends ``session.update`` (with the formats asked for), then waits for the server's
``session.updated`` (up to ``connect_timeout_s`` for a first answer; once a
``session.created`` has come, ``format_wait_ms`` more, or the whole connect timeout when that
``session.created`` declared a format other than the one asked for, so the server's answer
settles the conflict). Each direction's format is then what the latest ``session.updated``
declares (GA ``session.audio.input.format``/``output.format`` objects, beta
``input_audio_format``/``output_audio_format`` strings), else what ``session.created``
declared, else what was asked for (``source: "requested"`` when the user gave
``input_format``, ``output_format`` or ``rate``), else 24 kHz PCM (``"default"``). The
result is the event ``session.audio_format`` (stage ``session``; attrs ``input``,
``output``: ``{"encoding": "pcm16"|"pcmu"|"pcma", "rate": int}``, ``source``), written at
open and again whenever a later ``session.updated`` changes it. The probe sends 16-bit PCM
at the input rate (encoded to G.711 here) and receives reply audio decoded to 16-bit PCM at
the output rate.

Faults: a declared format voiceaudit cannot decode (e.g. ``audio/opus``, G.711 at a rate
other than 8 kHz) fails ``open`` (TargetError, so the session fails to connect with that
reason); an ``error`` event before the session is ready fails ``open`` too. After open, an
undecodable declaration, or a change of the *input* format (the probe has already cut its
audio for the old one), fails the turn as a protocol fault and every later send on the
session, so the probe reconnects; an output change applies from the next audio delta. A
delta that cannot be the declared format (an odd byte count for 16-bit PCM) fails the turn
as a protocol fault; neither it nor the rest of the turn's reply audio is used (a chunk
missing would put what follows out of place).

The API key comes from the environment variable named by ``--api-key-env`` and is sent as
``Authorization: Bearer …``; it is registered as a secret so it never reaches the trace.

Dialects (``dialect``): ``openai`` (default) is the above. ``azure`` is Azure AI Voice Live
(the Realtime event schema with the beta event names, a flat session object and extras):

- the URL: a resource endpoint (``wss://NAME.services.ai.azure.com``, ``https://`` taken as
  ``wss://``) gets the path ``/voice-live/realtime``; the query gets ``api-version``
  (option ``api_version``, default :data:`AZURE_API_VERSION`) and ``model`` (option
  ``model``) unless the URL has them; a model (or an ``agent_id``) is required;
- the key (``--api-key-env``) goes in the ``api-key`` header, not ``Authorization``
  (``auth=bearer``: ``Authorization: Bearer`` for a Microsoft Entra token in the variable);
- ``session.update`` is Voice Live's flat session: ``input_audio_format`` (``pcm16``,
  ``g711_ulaw``, ``g711_alaw``) with ``input_audio_sampling_rate`` (``rate``: 16000 or
  24000), ``output_audio_format`` (``pcm16`` at 24 kHz, ``pcm16_16000hz``,
  ``pcm16_8000hz``, G.711: the one that matches ``rate``/``output_format``),
  ``turn_detection`` (``server_vad``, ``semantic_vad``, ``azure_semantic_vad``,
  ``azure_semantic_vad_multilingual``, or ``manual`` for none, with ``threshold``,
  ``prefix_padding_ms``, ``silence_ms``, ``remove_filler_words``, ``end_of_utterance``: a
  semantic end-of-turn model such as ``semantic_detection_v1``), ``input_audio_transcription``
  (``transcription_model``, default ``azure-speech``), ``input_audio_noise_reduction``
  (``noise_reduction``: ``off`` (default), ``azure_deep_noise_suppression``,
  ``near_field``, ``far_field``), ``input_audio_echo_cancellation`` (``echo_cancellation``:
  ``off`` (default) or ``on``) and ``voice`` when given (a name with a ``-``, such as
  ``en-US-AvaNeural``, is an ``azure-standard`` voice, other names ``openai`` voices);
- the reference pipeline's stage events are not asked for unless ``stage_events=on``.

The session's formats are read from Voice Live's declarations as from OpenAI's (its
``pcm16_16000hz``-style names and ``input_audio_sampling_rate`` included). An unknown
dialect, an option of one dialect given with the other, or a bad value is a usage error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSink, redact_url
from voiceaudit.targets.stages import STAGE_EVENT, STAGES_HEADER, stage_mark, wants_stage_events
from voiceaudit.targets.wsbase import WebSocketSession, dict_at

#: OpenAI Realtime events that mark the turn's progress, the same over a WebSocket and on
#: WebRTC's ``oai-events`` data channel (voiceaudit.targets.webrtc): event -> (mark, stage)
TURN_MARKS: Final[dict[str, tuple[str, str]]] = {
    "input_audio_buffer.speech_started": ("speech_started", "endpointing"),
    "input_audio_buffer.speech_stopped": ("endpoint", "endpointing"),
    "input_audio_buffer.committed": ("committed", "endpointing"),
    "conversation.item.input_audio_transcription.completed": ("transcript.final", "transcription"),
    "response.created": ("response.created", "model"),
}
#: server event -> (mark name, stage); audio deltas are handled separately
_MARKS: dict[str, tuple[str, str]] = {
    **TURN_MARKS,
    "conversation.item.input_audio_transcription.delta": ("transcript.partial", "transcription"),
    "response.output_audio.done": ("tts.done", "synthesis"),
    "response.audio.done": ("tts.done", "synthesis"),
}
_AUDIO_DELTAS = {"response.output_audio.delta", "response.audio.delta"}
#: the first of these in a turn is the reply's first text (``reply_text.first``)
_TEXT_DELTAS = {
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
}

_IGNORED_PREFIXES = ("session.", "conversation.", "response.", "input_audio_buffer.", "rate_limits")

#: the protocol's names for each encoding: GA ``format.type``, beta strings, and ours
_ENCODING_NAMES: Final[dict[str, str]] = {
    "audio/pcm": "pcm16",
    "pcm16": "pcm16",
    "pcm": "pcm16",
    "audio/pcmu": "pcmu",
    "g711_ulaw": "pcmu",
    "pcmu": "pcmu",
    "audio/pcma": "pcma",
    "g711_alaw": "pcma",
    "pcma": "pcma",
}
_GA_TYPES: Final[dict[str, str]] = {
    "pcm16": "audio/pcm",
    "pcmu": "audio/pcmu",
    "pcma": "audio/pcma",
}
_BETA_NAMES: Final[dict[str, str]] = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}
DEFAULT_RATE: Final[int] = 24000
#: PCM rates a declaration may name (a rate outside is a broken declaration, not audio)
_RATE_RANGE: Final[tuple[int, int]] = (1000, 384000)

DIALECTS: Final[tuple[str, ...]] = ("openai", "azure")
#: Voice Live's generally available API version (the ``api-version`` query parameter)
AZURE_API_VERSION: Final[str] = "2025-10-01"
AZURE_PATH: Final[str] = "/voice-live/realtime"
#: Voice Live's PCM output formats by rate (``pcm16`` is 24 kHz)
_AZURE_PCM_OUT: Final[dict[int, str]] = {
    24000: "pcm16",
    16000: "pcm16_16000hz",
    8000: "pcm16_8000hz",
}
_AZURE_INPUT_RATES: Final[tuple[int, ...]] = (16000, 24000)
_AZURE_TURN_DETECTION: Final[tuple[str, ...]] = (
    "server_vad",
    "semantic_vad",
    "azure_semantic_vad",
    "azure_semantic_vad_multilingual",
    "manual",
)
_AZURE_NOISE: Final[tuple[str, ...]] = (
    "off",
    "azure_deep_noise_suppression",
    "near_field",
    "far_field",
)
#: options only the azure dialect reads, and only the openai one
_AZURE_ONLY: Final[tuple[str, ...]] = (
    "api_version",
    "auth",
    "noise_reduction",
    "echo_cancellation",
    "remove_filler_words",
    "end_of_utterance",
    "transcription_model",
)
_OPENAI_ONLY: Final[tuple[str, ...]] = ("api",)
#: a PCM format name that carries its rate (Voice Live's ``pcm16_16000hz``)
_PCM_AT_RATE = re.compile(r"^pcm16_(\d+)hz$")


@dataclass(frozen=True)
class AudioFormat:
    """One direction's audio format: an encoding of :data:`voiceaudit.codecs.ENCODINGS` and
    its sample rate."""

    encoding: str
    rate: int

    def attrs(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "rate": self.rate}

    def __str__(self) -> str:
        return f"{self.encoding} {self.rate} Hz"


class FormatError(ValueError):
    """A declared audio format voiceaudit cannot decode."""


def parse_format(value: Any, pcm_rate: int) -> AudioFormat:
    """An audio format as the protocol writes it: a GA object (``{"type": "audio/pcm",
    "rate": 24000}``) or a beta string (``"g711_ulaw"``); ``pcm_rate`` is PCM's rate when the
    value names none (the beta strings never do). FormatError for anything else."""
    rate: Any = None
    if isinstance(value, dict):
        name, rate = value.get("type"), value.get("rate")
    else:
        name = value
    if isinstance(name, str) and rate is None and (m := _PCM_AT_RATE.match(name.lower())):
        name, rate = "pcm16", int(m.group(1))
    if not isinstance(name, str) or name.lower() not in _ENCODING_NAMES:
        shown = name if isinstance(name, str) else json.dumps(value)[:60]
        raise FormatError(f"audio format {shown!r}")
    encoding = _ENCODING_NAMES[name.lower()]
    if rate is not None and (type(rate) is not int or not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]):
        raise FormatError(f"audio format {name!r} at rate {rate!r}")
    if encoding == "pcm16":
        return AudioFormat("pcm16", pcm_rate if rate is None else rate)
    if rate is not None and rate != codecs.G711_RATE:
        # G.711 is 8 kHz by definition: another rate is a format voiceaudit cannot read
        raise FormatError(f"audio format {name!r} at {rate} Hz (G.711 is 8000 Hz)")
    return AudioFormat(encoding, codecs.G711_RATE)


def declared_formats(
    session: Any, pcm_rate: int, output_pcm_rate: int | None = None
) -> tuple[AudioFormat | None, AudioFormat | None]:
    """The (input, output) formats a ``session.created``/``session.updated`` session object
    declares (GA ``audio.input.format``/``audio.output.format``, beta and Voice Live
    ``input_audio_format``/``output_audio_format``, Voice Live's ``pcm16_16000hz`` names and
    ``input_audio_sampling_rate``); None for a direction it leaves out. A PCM name without a
    rate is at ``pcm_rate`` (output: ``output_pcm_rate`` when given). FormatError (naming
    the direction) for one voiceaudit cannot decode."""
    if not isinstance(session, dict):
        return None, None
    out: list[AudioFormat | None] = []
    audio = session.get("audio")
    in_rate = session.get("input_audio_sampling_rate", pcm_rate)
    if type(in_rate) is not int or not _RATE_RANGE[0] <= in_rate <= _RATE_RANGE[1]:
        raise FormatError(f"input audio sampling rate {in_rate!r}")
    rates = {
        "input": in_rate,
        "output": pcm_rate if output_pcm_rate is None else output_pcm_rate,
    }
    for direction in ("input", "output"):
        raw: Any = None
        if isinstance(audio, dict) and isinstance(audio.get(direction), dict):
            raw = audio[direction].get("format")
        if raw is None:
            raw = session.get(f"{direction}_audio_format")
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(parse_format(raw, rates[direction]))
        except FormatError as exc:
            raise FormatError(f"{direction} {exc}") from None
    return out[0], out[1]


def _option_format(config: TargetConfig, name: str, pcm_rate: int) -> AudioFormat:
    raw = config.option(name, "pcm16")
    enc = _ENCODING_NAMES.get(raw.lower())
    if enc is None:
        raise UsageError(
            f"target option {name}={raw!r} must be pcm16, pcmu or pcma "
            "(or audio/pcm, audio/pcmu, audio/pcma, g711_ulaw, g711_alaw)"
        )
    return AudioFormat(enc, pcm_rate if enc == "pcm16" else codecs.G711_RATE)


def requested_formats(config: TargetConfig) -> tuple[AudioFormat, AudioFormat]:
    """The (input, output) formats the options ask for; UsageError for a bad option."""
    rate = config.int_option("rate", DEFAULT_RATE)
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        raise UsageError(f"target option rate={rate} is not a sample rate")
    return (
        _option_format(config, "input_format", rate),
        _option_format(config, "output_format", rate),
    )


def dialect(config: TargetConfig) -> str:
    """The ``dialect`` option: ``openai`` (default) or ``azure``; UsageError otherwise."""
    value = config.option("dialect", "openai")
    if value not in DIALECTS:
        raise UsageError(
            f"target option dialect={value!r} is not a dialect of the realtime protocol",
            hint="dialects: " + ", ".join(DIALECTS),
        )
    return value


def _choice(config: TargetConfig, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = config.option(name, default)
    if value not in allowed:
        raise UsageError(f"target option {name}={value!r} must be one of: {', '.join(allowed)}")
    return value


def check_options(config: TargetConfig) -> None:
    """Every option the target reads, checked before anything connects (UsageError)."""
    requested = requested_formats(config)
    if config.int_option("format_wait_ms", 1000) < 0:
        raise UsageError("target option format_wait_ms cannot be negative")
    for name, default in (("silence_ms", 500), ("prefix_padding_ms", 300)):
        if config.int_option(name, default) < 0:
            raise UsageError(f"target option {name} cannot be negative")
    try:
        float(config.option("threshold", "0.5"))
    except ValueError:
        raise UsageError("target option threshold must be a number") from None
    if dialect(config) == "openai":
        for name in _AZURE_ONLY:
            if name in config.options:
                raise UsageError(f"target option {name} is for -o dialect=azure (Voice Live)")
        return
    for name in _OPENAI_ONLY:
        if name in config.options:
            raise UsageError(f"target option {name} is for the openai dialect, not azure")
    want_in, want_out = requested
    if want_in.encoding == "pcm16" and want_in.rate not in _AZURE_INPUT_RATES:
        raise UsageError(
            f"Voice Live takes PCM input at 16000 or 24000 Hz, not rate={want_in.rate}"
        )
    if want_out.encoding == "pcm16" and want_out.rate not in _AZURE_PCM_OUT:
        raise UsageError(
            f"Voice Live gives PCM at 8000, 16000 or 24000 Hz, not rate={want_out.rate}"
        )
    _choice(config, "turn_detection", "server_vad", _AZURE_TURN_DETECTION)
    _choice(config, "noise_reduction", "off", _AZURE_NOISE)
    _choice(config, "echo_cancellation", "off", ("off", "on"))
    _choice(config, "remove_filler_words", "off", ("off", "on"))
    _choice(config, "auth", "api-key", ("api-key", "bearer"))
    parts = urlsplit(config.url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise UsageError(
            f"dialect=azure takes a Voice Live endpoint (wss://NAME.services.ai.azure.com), "
            f"not {redact_url(config.url)!r}"
        )
    query = dict(parse_qsl(parts.query))
    if not (config.options.get("model") or query.get("model") or query.get("agent_id")):
        raise UsageError(
            "dialect=azure needs the model Voice Live runs: -o model=NAME "
            "(or model= or agent_id= in the URL)"
        )


def azure_url(config: TargetConfig) -> str:
    """A Voice Live URL from the target URL (see the module doc)."""
    parts = urlsplit(config.url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path
    if AZURE_PATH not in path:
        path = path.rstrip("/") + AZURE_PATH
    query = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in query}
    if "api-version" not in have:
        query.append(("api-version", config.option("api_version", AZURE_API_VERSION)))
    model = config.options.get("model")
    if model and "model" not in have:
        query.append(("model", model))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


class RealtimeSession(WebSocketSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.azure = dialect(config) == "azure"
        self.pcm_rate = config.int_option("rate", DEFAULT_RATE)
        self.requested = requested_formats(config)
        self.user_asked = any(
            k in config.options for k in ("input_format", "output_format", "rate")
        )
        self.format_wait_s = config.int_option("format_wait_ms", 1000) / 1000
        #: the formats in effect: what the probe sends and how reply audio is read
        self.input_format, self.output_format = self.requested
        self.input_rate = self.input_format.rate
        self.beta = not self.azure and config.option("api", "ga") == "beta"
        self.manual = config.option("turn_detection", "server_vad") == "manual"
        # Voice Live is not the reference pipeline: its stage events only when asked for
        self.stage_events = wants_stage_events(config) and (
            not self.azure or config.options.get("stage_events") == "on"
        )
        self._ready = asyncio.Event()
        self._updated = asyncio.Event()
        #: what session.created / the latest session.updated declared, and at what arrival
        self._created: tuple[AudioFormat | None, AudioFormat | None] | None = None
        self._declared: tuple[AudioFormat | None, AudioFormat | None] | None = None
        self._declared_ns: int | None = None
        self._created_ns: int | None = None
        #: a declaration voiceaudit cannot decode, or an error event, while opening
        self._open_error: str | None = None
        self._opened = False
        #: once set, the session cannot go on (every later send fails with it)
        self._broken: str | None = None
        self._first_text_seen = False
        #: a delta of this turn could not be the declared format: its later audio is dropped
        self._audio_fault = False
        #: the item id of the reply audio received last (for conversation.item.truncate)
        self._audio_item: str | None = None

    def url(self) -> str:
        """The target's URL, with ``model=`` added to its query when the option is given
        (Voice Live's: :func:`azure_url`)."""
        if self.azure:
            return azure_url(self.config)
        model = self.config.options.get("model")
        if not model:
            return self.config.url
        parts = urlsplit(self.config.url)
        query = (parts.query + "&" if parts.query else "") + urlencode({"model": model})
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def headers(self) -> dict[str, str]:
        """The user's headers and the key: ``Authorization: Bearer`` (openai), Voice Live's
        ``api-key`` header (azure; ``auth=bearer``: a bearer token)."""
        if not self.azure or self.config.option("auth", "api-key") == "bearer":
            return super().headers()
        h = {k: v for k, v in self.config.headers}
        key = self.config.api_key()
        if key:
            h["api-key"] = key
        return h

    def _azure_session_update(self) -> dict[str, Any]:
        """Voice Live's ``session.update`` (module doc, "Dialects")."""
        c = self.config
        want_in, want_out = self.requested
        session: dict[str, Any] = {
            "modalities": ["text", "audio"],
            "input_audio_format": _BETA_NAMES[want_in.encoding],
        }
        if want_in.encoding == "pcm16":
            session["input_audio_sampling_rate"] = want_in.rate
        if want_out.encoding == "pcm16":
            session["output_audio_format"] = _AZURE_PCM_OUT[want_out.rate]
        else:
            session["output_audio_format"] = _BETA_NAMES[want_out.encoding]
        kind = c.option("turn_detection", "server_vad")
        td: dict[str, Any] | None = None
        if kind != "manual":
            td = {
                "type": kind,
                "threshold": float(c.option("threshold", "0.5")),
                "prefix_padding_ms": c.int_option("prefix_padding_ms", 300),
                "silence_duration_ms": c.int_option("silence_ms", 500),
            }
            if "remove_filler_words" in c.options:
                td["remove_filler_words"] = c.options["remove_filler_words"] == "on"
            if c.options.get("end_of_utterance"):
                td["end_of_utterance_detection"] = {"model": c.options["end_of_utterance"]}
        session["turn_detection"] = td
        session["input_audio_transcription"] = {
            "model": c.option("transcription_model", "azure-speech")
        }
        noise = c.option("noise_reduction", "off")
        if noise != "off":
            session["input_audio_noise_reduction"] = {"type": noise}
        if c.option("echo_cancellation", "off") == "on":
            session["input_audio_echo_cancellation"] = {"type": "server_echo_cancellation"}
        voice = c.options.get("voice")
        if voice:
            session["voice"] = {
                "name": voice,
                "type": "azure-standard" if "-" in voice else "openai",
            }
        return {"type": "session.update", "session": session}

    def _session_update(self) -> dict[str, Any]:
        if self.azure:
            return self._azure_session_update()
        td: dict[str, Any] | None = None
        if not self.manual:
            td = {
                "type": "server_vad",
                "threshold": float(self.config.option("threshold", "0.5")),
                "prefix_padding_ms": self.config.int_option("prefix_padding_ms", 300),
                "silence_duration_ms": self.config.int_option("silence_ms", 500),
            }
        voice = self.config.option("voice", "alloy")
        want_in, want_out = self.requested
        if self.beta:
            session: dict[str, Any] = {
                "modalities": ["audio", "text"],
                "input_audio_format": _BETA_NAMES[want_in.encoding],
                "output_audio_format": _BETA_NAMES[want_out.encoding],
                "turn_detection": td,
                "voice": voice,
                "input_audio_transcription": {"model": "whisper-1"},
            }
        else:
            session = {
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": _ga_format(want_in),
                        "turn_detection": td,
                        "transcription": {"model": "whisper-1"},
                    },
                    "output": {"format": _ga_format(want_out), "voice": voice},
                },
            }
        return {"type": "session.update", "session": session}

    async def open(self) -> None:
        headers = self.headers()
        if self.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        if self.stage_events:
            headers[STAGES_HEADER] = "1"
        await self.connect(self.url(), headers)
        await self.send_json(self._session_update())
        try:
            await self._settle()
        except TargetError:
            await self.close()
            raise
        self._opened = True

    async def _settle(self) -> None:
        """Wait until the session's formats are known (see the module doc)."""
        deadline = time.monotonic() + self.config.connect_timeout_s
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.connect_timeout_s)
        except TimeoutError:
            raise TargetError("the target did not answer session.update in time") from None
        if self._open_error is None and not self._updated.is_set():
            created = self._created or (None, None)
            conflict = any(
                got is not None and got != want
                for got, want in zip(created, self.requested, strict=True)
            )
            wait = deadline - time.monotonic() if conflict else self.format_wait_s
            # a server that never confirms: go with what it declared, or was asked
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._updated.wait(), max(0.0, wait))
        if self._open_error is not None:
            raise TargetError(self._open_error)
        declared = self._declared or self._created or (None, None)
        if self._declared is not None:
            at = self._declared_ns
        elif self._created not in (None, (None, None)):
            at = self._created_ns
        else:
            at = None  # nothing declared: settled now, by the request or the default
        self._apply(declared, time.monotonic_ns() if at is None else at)

    def _apply(self, declared: tuple[AudioFormat | None, AudioFormat | None], t: int) -> None:
        """Take the formats in effect from a declaration and write ``session.audio_format``."""
        fin = declared[0] or self.requested[0]
        fout = declared[1] or self.requested[1]
        if declared != (None, None):
            source = "declared"
        else:
            source = "requested" if self.user_asked else "default"
        self.input_format, self.output_format = fin, fout
        self.input_rate = fin.rate
        self.sink.mark(
            "session.audio_format",
            "session",
            t,
            {"input": fin.attrs(), "output": fout.attrs(), "source": source},
        )

    def _on_session(self, t: int, kind: str, ev: dict[str, Any]) -> None:
        """``session.created`` / ``session.updated``: read the formats they declare."""
        try:
            if self.azure:  # Voice Live's PCM is 24 kHz unless the name or rate says
                got = declared_formats(ev.get("session"), DEFAULT_RATE, DEFAULT_RATE)
            else:
                got = declared_formats(ev.get("session"), self.pcm_rate)
        except FormatError as exc:
            reason = f"the target declared {exc}, which voiceaudit cannot decode"
            if not self._opened:
                self._open_error = reason
                self._ready.set()
                self._updated.set()
            else:
                self._break(f"protocol: {reason}")
            return
        if kind == "session.created":
            if self._created is None:
                self._created, self._created_ns = got, t
        else:
            self._declared, self._declared_ns = got, t
            self._updated.set()
        self._ready.set()
        if not self._opened or kind != "session.updated" or got == (None, None):
            return
        fin = got[0] or self.input_format
        fout = got[1] or self.output_format
        if (fin, fout) == (self.input_format, self.output_format):
            return
        changed_input = fin != self.input_format
        before = self.input_format
        self._apply((fin, fout), t)
        if changed_input:
            # The probe cut its audio for the old input format (rate): it cannot go on
            # sending on this session; the probe's reconnect reads the new one at open.
            self._break(
                f"protocol: the target changed its input audio format mid-session "
                f"({before} -> {fin})"
            )

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self.sink.fail(reason)

    async def send_audio(self, pcm16: bytes) -> None:
        if self._broken is not None:
            raise TargetError(self._broken)
        data = codecs.encode(pcm16, self.input_format.encoding)
        await self.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}
        )

    async def start_turn(self, turn: int) -> None:
        self._first_text_seen = False
        self._audio_fault = False

    async def truncate(self, audio_end_ms: int) -> str | None:
        """``conversation.item.truncate`` of the reply item playing now."""
        item = self._audio_item
        if item is None:
            return None
        await self.send_json(
            {
                "type": "conversation.item.truncate",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": int(audio_end_ms),
            }
        )
        return item

    async def speech_ended(self) -> None:
        if self.manual:
            await self.send_json({"type": "input_audio_buffer.commit"})
            await self.send_json({"type": "response.create"})

    def on_binary(self, t_ns: int, data: bytes) -> None:
        self.sink.fail("protocol: unexpected binary message from a realtime server")

    def on_text(self, t: int, data: str) -> None:
        got = self.read_event(data)
        if got is None:
            return
        ev, kind = got
        if kind in ("session.created", "session.updated"):
            self._on_session(t, kind, ev)
            return
        if kind in _AUDIO_DELTAS:
            raw = self.b64_field(kind, ev.get("delta"), "delta")
            if raw is None:
                return
            if self._broken is not None:
                self.sink.fail(self._broken)
                return
            if self._audio_fault:
                return  # the reply after a bad delta would be heard out of place
            fmt = self.output_format
            try:
                pcm = codecs.decode(raw, fmt.encoding)
            except ValueError:
                # not whole samples: no reading of it can be the declared format
                self._audio_fault = True
                self.sink.fail(
                    f"protocol: {kind} delta of {len(raw)} bytes cannot be {fmt} "
                    "(an odd byte count for 16-bit samples)"
                )
                return
            item = ev.get("item_id")
            if isinstance(item, str):
                self._audio_item = item
            self.sink.reply_audio(t, pcm, fmt.rate, len(data.encode()))
            return
        if kind == STAGE_EVENT:
            self._on_stage(t, ev)
            return
        if kind in _TEXT_DELTAS:
            if not self._first_text_seen:
                self._first_text_seen = True
                self.sink.mark("reply_text.first", "model", t, {"raw": kind})
            return
        if kind in _MARKS:
            name, stage = _MARKS[kind]
            attrs: dict[str, Any] = {"raw": kind}
            for k in ("audio_start_ms", "audio_end_ms", "item_id"):
                if k in ev:
                    attrs[k] = ev[k]
            if name == "transcript.final" and isinstance(ev.get("transcript"), str):
                attrs["text"] = ev["transcript"]
            self.sink.mark(name, stage, t, attrs)
            return
        if kind == "response.done":
            resp = dict_at(ev, "response")
            attrs = {"raw": kind, "status": resp.get("status"), "usage": resp.get("usage")}
            self.sink.mark("response.done", "model", t, attrs)
            self.sink.reply_done(t)
            return
        if kind == "error":
            err = dict_at(ev, "error")
            msg = str(err.get("message", "unknown error"))
            self.sink.mark("error", "error", t, {"message": msg, "code": err.get("code")})
            if not self._opened and self._open_error is None:
                # e.g. a format the server refuses: the session never became usable
                self._open_error = f"target error answering session.update: {msg}"
                self._ready.set()
                self._updated.set()
                return
            self.sink.fail(f"target error: {msg}")
            return
        if not kind.startswith(_IGNORED_PREFIXES):
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})

    def _on_stage(self, t: int, ev: dict[str, Any]) -> None:
        """A reference-pipeline stage event: a mark at the server's own time."""
        got = stage_mark(ev)
        if got is None:
            raw = f"{STAGE_EVENT}:{ev.get('stage')}"[:80]
            self.sink.mark("unknown_event", "other", t, {"raw": raw})
            return
        self.sink.mark(got[0], got[1], t, got[2])


def _ga_format(fmt: AudioFormat) -> dict[str, Any]:
    """A format as GA ``session.update`` writes it (G.711 objects carry no rate)."""
    if fmt.encoding == "pcm16":
        return {"type": "audio/pcm", "rate": fmt.rate}
    return {"type": _GA_TYPES[fmt.encoding]}


class RealtimeTarget(Target):
    protocol = "realtime"
    schemes = ("ws", "wss")
    description = (
        "OpenAI Realtime protocol over WebSocket (GA and beta event names; "
        "-o dialect=azure: Azure Voice Live)"
    )
    options: ClassVar[dict[str, str]] = {
        "dialect": "openai (default) | azure (Azure AI Voice Live: URL, api-key header, session)",
        "api": "openai: ga (default) | beta (OpenAI-Beta header, beta session and event names)",
        "turn_detection": "server_vad (default) | manual (commit at the speech end); azure: "
        "also semantic_vad, azure_semantic_vad, azure_semantic_vad_multilingual",
        "silence_ms": "server VAD silence that ends the turn (default 500)",
        "prefix_padding_ms": "server VAD audio kept before speech (default 300)",
        "threshold": "server VAD threshold (default 0.5)",
        "voice": "the reply voice (openai default alloy; azure: the service's unless given)",
        "model": "added to the URL query as model= (azure: required, unless in the URL)",
        "input_format": "pcm16 (default) | pcmu | pcma (G.711 at 8 kHz)",
        "output_format": "pcm16 (default) | pcmu | pcma",
        "rate": "PCM sample rate to ask for (default 24000; azure: 16000 or 24000)",
        "format_wait_ms": "how long to wait for session.updated after session.created (1000)",
        "stage_events": "on (default; azure: off) asks the reference for its stage events | off",
        "api_version": f"azure: the api-version query parameter (default {AZURE_API_VERSION})",
        "auth": "azure: api-key (default: the key in the api-key header) | bearer (Entra token)",
        "noise_reduction": "azure: off (default) | azure_deep_noise_suppression | near_field "
        "| far_field",
        "echo_cancellation": "azure: off (default) | on (server_echo_cancellation)",
        "remove_filler_words": "azure: on | off (turn detection drops um/uh)",
        "end_of_utterance": "azure: semantic end-of-turn model, e.g. semantic_detection_v1",
        "transcription_model": "azure: input transcription model (default azure-speech)",
    }

    session_class = RealtimeSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        check_options(config)  # a bad option is a usage error before any connect
