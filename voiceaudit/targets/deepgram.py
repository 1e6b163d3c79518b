"""Deepgram's Voice Agent API over WebSocket (``deepgram-agent``).

The agent is a cascade Deepgram runs (listen -> think -> speak) behind one WebSocket,
``wss://agent.deepgram.com/v1/agent/converse``. User docs: docs/apis/deepgram-agent.md.

**Opening.** The session connects with ``Authorization: Token KEY`` (the key from the
environment variable named by ``--api-key-env``, never from an option; it is a secret of
the run, so it never reaches the trace), sends ``Settings`` first (the audio formats, the
agent's listen/think/speak providers, an optional greeting) and waits for
``SettingsApplied`` (an ``Error`` first, or nothing within the connect timeout, fails the
open). ``Welcome`` is the mark ``session.welcome`` (``request_id``); ``SettingsApplied``
is ``session.audio_format`` (the formats ``Settings`` declared, ``source: "requested"``).

**Audio.** The caller's speech goes as binary frames in the declared input encoding
(``linear16`` by default; ``mulaw``/``alaw`` are encoded here from the probe's 16-bit PCM)
at the declared input rate, one frame per probe frame at the probe's microphone pace (the
probe resamples its recordings to that rate). Reply audio is binary frames in the declared
output encoding and rate with ``container: "none"``: decoded to 16-bit PCM at that rate.
A frame that cannot be the declared format (an odd byte count for ``linear16``, a WAV
container where none was declared) fails the turn as a protocol fault and the rest of that
reply is not used. While the probe sends nothing (between turns) a ``KeepAlive`` goes out
every ``keepalive_ms`` (the API closes an idle socket after about ten seconds).

**Marks** (arrival times; ``attrs.raw`` names the API's message):

====================================  ===========================================  ==============
message                               mark                                         stage
====================================  ===========================================  ==============
``UserStartedSpeaking``               ``speech_started``                           endpointing
  ... while the agent speaks          + ``interrupted`` (the reply is cut)         endpointing
``ConversationText`` role ``user``    ``committed`` and ``transcript.final``       endpointing,
                                      (``text``): the end of the user's turn         transcription
``AgentThinking``                     ``llm.request`` (``text``)                   model
``ConversationText`` ``assistant``    ``reply_text.first`` (the reply's first)     model
``AgentStartedSpeaking``              ``tts.first_byte``, with the server's own    synthesis
                                      figures (below)
``AgentAudioDone``                    ``audio.last_sent``, and the reply is done   transport
``LatencyReport``                     ``framework.metrics``                        other
``Warning``                           ``warning`` (``code``, ``message``)          other
``Error``                             ``error``; fails the turn                    error
====================================  ===========================================  ==============

The server's own latency figures (``AgentStartedSpeaking``) are in the ``tts.first_byte``
mark's attrs as sent, in seconds (``total_latency``, ``tts_latency``, ``ttt_latency``), and
in ns (``total_latency_ns``, ``tts_latency_ns``, ``ttt_latency_ns``): "the framework
says", beside what the caller heard.

**Barge-in.** ``UserStartedSpeaking`` while the agent is speaking (after
``AgentStartedSpeaking`` or its first audio, before ``AgentAudioDone``) is the API's
interruption: the adapter writes ``interrupted`` (the probe's scenario machinery then
knows the reply was cut and measures the stop latency from what the caller heard). Reply
audio that still arrives is the cut reply's, heard as it comes (a client that drops its
queued audio at the signal saves the ``client_buffer_ns`` of ``reply.stop``); the cut
reply ends at ``AgentAudioDone``, the caller's next ``ConversationText`` or the next
``AgentStartedSpeaking``, whichever comes first.

**Greeting.** With the option ``greeting`` (or an ``agent.greeting`` in a ``settings``
file) the agent speaks first: the session says so (``speaks_first``), and the probe takes
the reply audio before the first turn as the greeting, its latency counted from when
``Settings`` was sent (:meth:`DeepgramAgentSession.media_start_ns`).

Malformed messages (not a JSON object, no string ``type``, a known message without the
fields the SDK's models require: ``AgentStartedSpeaking`` latencies that are not numbers,
``ConversationText`` or ``AgentThinking`` content that is not a string, a ``Welcome``
without a ``request_id``, an ``Error`` or ``Warning`` without ``code``/``description``, a
``LatencyReport`` figure that is not a number)
fail the turn as a protocol fault naming the message and field. Unknown message types are
``unknown_event`` marks.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSession, TargetSink, cancel_quietly
from voiceaudit.targets.wsbase import TLS_OPTIONS, WebSocketSession, tls_context

#: the API's endpoint (the URL a user gives; any ws:// or wss:// URL works)
DEFAULT_URL: Final[str] = "wss://agent.deepgram.com/v1/agent/converse"
#: Deepgram's encoding names -> the names voiceaudit.codecs (and the trace) use
ENCODINGS: Final[dict[str, str]] = {"linear16": "pcm16", "mulaw": "pcmu", "alaw": "pcma"}
DEFAULT_INPUT_RATE: Final[int] = 16000
DEFAULT_OUTPUT_RATE: Final[int] = 24000
DEFAULT_KEEPALIVE_MS: Final[int] = 5000
_RATE_RANGE: Final[tuple[int, int]] = (4000, 192000)

#: the API's messages the adapter reads but marks nothing for
_QUIET: Final[frozenset[str]] = frozenset(
    {
        "History",
        "PromptUpdated",
        "SpeakUpdated",
        "ThinkUpdated",
        "ListenUpdated",
        "ThinkLiveUpdated",
        "InjectionRefused",
        "FunctionCallCancelled",
    }
)
_LATENCIES: Final[tuple[str, ...]] = ("total_latency", "tts_latency", "ttt_latency")
_REPORT_FIELDS: Final[tuple[str, ...]] = (
    "stt_latency",
    "ttt_token_latency",
    "ttt_text_latency",
    "ttt_tool_latency",
    "ttt_thinking_latency",
    "tts_latency",
    "total_latency",
)

OPTIONS: Final[dict[str, str]] = {
    "input_encoding": "the caller's audio as sent: linear16 (default), mulaw or alaw",
    "input_rate": f"its sample rate in Hz (default {DEFAULT_INPUT_RATE})",
    "output_encoding": "the agent's audio asked for: linear16 (default), mulaw or alaw",
    "output_rate": f"its sample rate in Hz (default {DEFAULT_OUTPUT_RATE})",
    "greeting": "text the agent speaks first (Settings agent.greeting): the probe waits "
    "for it and measures its latency",
    "settings": "a JSON file with a Settings message to send (your agent's own "
    "listen/think/speak configuration); voiceaudit sets its type and audio",
    "listen_model": "the Deepgram speech-to-text model (default nova-3)",
    "think_provider": "the LLM provider type (default open_ai)",
    "think_model": "the LLM model (default gpt-4o-mini)",
    "prompt": "the LLM's prompt",
    "speak_model": "the Deepgram voice (default aura-2-thalia-en)",
    "keepalive_ms": f"send KeepAlive after this long without audio (default "
    f"{DEFAULT_KEEPALIVE_MS}; 0: never)",
    **TLS_OPTIONS,
}


def _rate_option(config: TargetConfig, name: str, default: int) -> int:
    rate = config.int_option(name, default)
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        raise UsageError(f"target option {name}={rate} is not a sample rate")
    return rate


def _encoding_option(config: TargetConfig, name: str) -> str:
    raw = config.option(name, "linear16").strip().lower()
    if raw not in ENCODINGS:
        raise UsageError(f"target option {name}={raw!r} must be linear16, mulaw or alaw")
    return raw


def _settings_file(config: TargetConfig) -> dict[str, Any]:
    path = config.options.get("settings")
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"target option settings={path!r}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"target option settings={path!r}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("agent", {}), dict | str):
        raise UsageError(
            f"target option settings={path!r}: not a Settings object (an object whose "
            "'agent' is an object, or a string naming a stored agent)"
        )
    return data


def build_settings(config: TargetConfig) -> dict[str, Any]:
    """The ``Settings`` message the options ask for (UsageError for a bad option)."""
    for name in config.options:
        if name not in OPTIONS:
            raise UsageError(
                f"unknown target option {name!r} for deepgram-agent",
                hint="known options: " + ", ".join(sorted(OPTIONS)),
            )
    base = _settings_file(config)
    stored = base.get("agent")
    if isinstance(stored, str):  # a stored agent configuration, named
        if "greeting" in config.options:
            raise UsageError(
                "target option greeting needs an agent object; the settings file names a "
                f"stored agent ({stored!r}): put the greeting there"
            )
        return _settings(config, base, stored)
    agent: dict[str, Any] = dict(stored or {})
    if not agent:
        agent = {
            "listen": {
                "provider": {"type": "deepgram", "model": config.option("listen_model", "nova-3")}
            },
            "think": {
                "provider": {
                    "type": config.option("think_provider", "open_ai"),
                    "model": config.option("think_model", "gpt-4o-mini"),
                },
                "prompt": config.option("prompt", "You are a helpful voice assistant."),
            },
            "speak": {
                "provider": {
                    "type": "deepgram",
                    "model": config.option("speak_model", "aura-2-thalia-en"),
                }
            },
        }
    if "greeting" in config.options:
        agent["greeting"] = config.options["greeting"]
    return _settings(config, base, agent)


def _settings(
    config: TargetConfig, base: dict[str, Any], agent: dict[str, Any] | str
) -> dict[str, Any]:
    audio = {
        "input": {
            "encoding": _encoding_option(config, "input_encoding"),
            "sample_rate": _rate_option(config, "input_rate", DEFAULT_INPUT_RATE),
        },
        "output": {
            "encoding": _encoding_option(config, "output_encoding"),
            "sample_rate": _rate_option(config, "output_rate", DEFAULT_OUTPUT_RATE),
            "container": "none",
        },
    }
    if config.int_option("keepalive_ms", DEFAULT_KEEPALIVE_MS) < 0:
        raise UsageError("target option keepalive_ms cannot be negative")
    tls_context(config)  # a bad CA file is a usage error before any connect
    rest = {k: v for k, v in base.items() if k not in ("type", "audio", "agent")}
    return {"type": "Settings", **rest, "audio": audio, "agent": agent}


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class DeepgramAgentSession(WebSocketSession):
    """One conversation with a Deepgram voice agent (module docstring)."""

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.settings = build_settings(config)
        audio = self.settings["audio"]
        self.input_encoding = ENCODINGS[audio["input"]["encoding"]]
        self.input_rate = int(audio["input"]["sample_rate"])
        self.output_encoding = ENCODINGS[audio["output"]["encoding"]]
        self.output_rate = int(audio["output"]["sample_rate"])
        self.keepalive_ns = config.int_option("keepalive_ms", DEFAULT_KEEPALIVE_MS) * 1_000_000
        self._applied = asyncio.Event()
        self._open_error: str | None = None
        self._opened = False
        #: once set, the session cannot go on (every later send fails with it)
        self._broken: str | None = None
        self._settings_ns: int | None = None
        self._last_sent_ns = 0
        self._keepalive: asyncio.Task[None] | None = None
        #: ``idle`` (no reply), ``speaking`` (a reply under way), ``cut`` (interrupted: its
        #: late audio is dropped until the next AgentStartedSpeaking)
        self._reply = "idle"
        self._reply_chunks = 0
        self._first_text_seen = False
        #: a frame of this reply could not be the declared format: the rest is not used
        self._audio_fault = False

    def headers(self) -> dict[str, str]:
        """The user's headers, plus ``Authorization: Token KEY`` (the API's scheme)."""
        h = {k: v for k, v in self.config.headers}
        key = self.config.api_key()
        if key:
            h["Authorization"] = f"Token {key}"
        return h

    def media_start_ns(self) -> int | None:
        """When ``Settings`` was sent: the conversation (and a greeting's wait) starts there."""
        return self._settings_ns

    async def open(self) -> None:
        await self.connect(self.url(), self.headers())
        try:
            self._settings_ns = time.monotonic_ns()
            await self.send_json(self.settings)
            self._last_sent_ns = self._settings_ns
            try:
                await asyncio.wait_for(self._applied.wait(), self.config.connect_timeout_s)
            except TimeoutError:
                raise TargetError("the agent did not answer Settings in time") from None
            if self._open_error is not None:
                raise TargetError(self._open_error)
        except TargetError:
            await self.close()
            raise
        self._opened = True
        if self.keepalive_ns > 0:
            self._keepalive = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        """A ``KeepAlive`` whenever nothing was sent for ``keepalive_ms``."""
        while True:
            due = self._last_sent_ns + self.keepalive_ns
            now = time.monotonic_ns()
            if now < due:
                await asyncio.sleep((due - now) / 1e9)
                continue
            try:
                await self.send_json({"type": "KeepAlive"})
            except Exception:  # the connection is gone: the reader reports why
                return
            self._last_sent_ns = time.monotonic_ns()

    async def send_audio(self, pcm16: bytes) -> None:
        if self._broken is not None:
            raise TargetError(self._broken)
        data = (
            pcm16 if self.input_encoding == "pcm16" else codecs.encode(pcm16, self.input_encoding)
        )
        ws = self.live()
        self._last_sent_ns = time.monotonic_ns()
        await ws.send_bytes(data)

    async def start_turn(self, turn: int) -> None:
        self._first_text_seen = False

    async def close(self) -> None:
        await cancel_quietly(self._keepalive)
        self._keepalive = None
        await super().close()

    # -- receiving --------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self.sink.fail(reason)

    def _bad(self, kind: str, what: str) -> None:
        """A known message without what the API's models require: a protocol fault."""
        reason = f"protocol: {kind} {what}"
        if not self._opened and self._open_error is None:
            self._open_error = reason
            self._applied.set()
            return
        self.sink.fail(reason)

    def on_binary(self, t: int, data: bytes) -> None:
        if self._broken is not None:
            self.sink.fail(self._broken)
            return
        if self._reply == "idle":
            self._start_reply()
        first = self._reply_chunks == 0
        self._reply_chunks += 1
        if self._audio_fault:
            return
        enc = self.output_encoding
        declared = f"{_dg_name(enc)} at {self.output_rate} Hz, container none"
        if first and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            self._audio_fault = True
            self.sink.fail(
                f"protocol: reply audio came in a WAV container; Settings declared {declared}"
            )
            return
        try:
            pcm = codecs.decode(data, enc)
        except ValueError:
            self._audio_fault = True
            self.sink.fail(
                f"protocol: a reply audio frame of {len(data)} bytes cannot be {declared} "
                "(an odd byte count for 16-bit samples)"
            )
            return
        self.sink.reply_audio(t, pcm, self.output_rate, len(data))

    def _start_reply(self) -> None:
        self._reply = "speaking"
        self._reply_chunks = 0
        self._audio_fault = False

    def _end_cut_reply(self, t: int) -> None:
        """An interrupted reply ends when the agent moves on (module docstring)."""
        if self._reply == "cut":
            self._reply = "idle"
            self.sink.reply_done(t)

    def on_text(self, t: int, data: str) -> None:
        got = self.read_event(data)
        if got is None:
            return
        ev, kind = got
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, t, ev)
        elif kind not in _QUIET:
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})

    def _welcome(self, t: int, ev: dict[str, Any]) -> None:
        rid = ev.get("request_id")
        if not isinstance(rid, str):
            self._bad("Welcome", "without a string request_id")
            return
        self.sink.mark("session.welcome", "session", t, {"raw": "Welcome", "request_id": rid})

    def _settings_applied(self, t: int, ev: dict[str, Any]) -> None:
        self.sink.mark(
            "session.audio_format",
            "session",
            t,
            {
                "input": {"encoding": self.input_encoding, "rate": self.input_rate},
                "output": {"encoding": self.output_encoding, "rate": self.output_rate},
                "source": "requested",
                "raw": "SettingsApplied",
            },
        )
        self._applied.set()

    def _user_started(self, t: int, ev: dict[str, Any]) -> None:
        self.sink.mark("speech_started", "endpointing", t, {"raw": "UserStartedSpeaking"})
        if self._reply == "speaking":
            self.sink.mark(
                "interrupted",
                "endpointing",
                t,
                {"raw": "UserStartedSpeaking", "chunks": self._reply_chunks},
            )
            self._reply = "cut"

    def _conversation_text(self, t: int, ev: dict[str, Any]) -> None:
        role, content = ev.get("role"), ev.get("content")
        if not isinstance(content, str):
            self._bad("ConversationText", "without a string content")
            return
        if role == "user":
            self._end_cut_reply(t)
            self._first_text_seen = False  # the next assistant text answers this turn
            attrs = {"raw": "ConversationText", "role": "user"}
            self.sink.mark("committed", "endpointing", t, attrs)
            self.sink.mark("transcript.final", "transcription", t, {**attrs, "text": content})
        elif role == "assistant":
            if not self._first_text_seen:
                self._first_text_seen = True
                self.sink.mark(
                    "reply_text.first",
                    "model",
                    t,
                    {"raw": "ConversationText", "role": "assistant", "text": content},
                )
        else:
            self.sink.mark("unknown_event", "other", t, {"raw": f"ConversationText:{role}"[:80]})

    def _thinking(self, t: int, ev: dict[str, Any]) -> None:
        content = ev.get("content")
        if not isinstance(content, str):
            self._bad("AgentThinking", "without a string content")
            return
        self.sink.mark("llm.request", "model", t, {"raw": "AgentThinking", "text": content})

    def _started_speaking(self, t: int, ev: dict[str, Any]) -> None:
        bad = [k for k in _LATENCIES if not _is_number(ev.get(k))]
        if bad:
            shown = ", ".join(f"{k}={json.dumps(ev.get(k))[:20]}" for k in bad)
            self._bad("AgentStartedSpeaking", f"latencies are not numbers ({shown})")
            return
        self._end_cut_reply(t)
        attrs: dict[str, Any] = {"raw": "AgentStartedSpeaking"}
        for k in _LATENCIES:
            attrs[k] = ev[k]
            attrs[f"{k}_ns"] = round(ev[k] * 1e9)
        self.sink.mark("tts.first_byte", "synthesis", t, attrs)
        self._start_reply()

    def _audio_done(self, t: int, ev: dict[str, Any]) -> None:
        attrs: dict[str, Any] = {"raw": "AgentAudioDone", "chunks": self._reply_chunks}
        if self._reply == "cut":
            attrs["interrupted"] = True
        self.sink.mark("audio.last_sent", "transport", t, attrs)
        self._reply = "idle"
        self.sink.reply_done(t)

    def _latency_report(self, t: int, ev: dict[str, Any]) -> None:
        attrs: dict[str, Any] = {"raw": "LatencyReport"}
        for k in _REPORT_FIELDS:
            v = ev.get(k)
            if v is None:
                continue
            if not _is_number(v):
                self._bad("LatencyReport", f"{k} is not a number ({json.dumps(v)[:20]})")
                return
            attrs[k] = v
            attrs[f"{k}_ns"] = round(v * 1e9)
        self.sink.mark("framework.metrics", "other", t, attrs)

    def _diagnostic(self, kind: str, ev: dict[str, Any]) -> tuple[str, str] | None:
        code, desc = ev.get("code"), ev.get("description")
        if not isinstance(code, str) or not isinstance(desc, str):
            self._bad(kind, "without a string code and description")
            return None
        return code, desc

    def _warning(self, t: int, ev: dict[str, Any]) -> None:
        got = self._diagnostic("Warning", ev)
        if got is not None:
            attrs = {"raw": "Warning", "code": got[0], "message": got[1]}
            self.sink.mark("warning", "other", t, attrs)

    def _error(self, t: int, ev: dict[str, Any]) -> None:
        got = self._diagnostic("Error", ev)
        if got is None:
            return
        code, desc = got
        self.sink.mark("error", "error", t, {"raw": "Error", "code": code, "message": desc})
        if not self._opened:
            if self._open_error is None:
                self._open_error = f"target error answering Settings: {desc} ({code})"
            self._applied.set()
            return
        self._break(f"target error: {desc} ({code})")


def _dg_name(encoding: str) -> str:
    return next(k for k, v in ENCODINGS.items() if v == encoding)


_HANDLERS: Final[dict[str, Callable[[DeepgramAgentSession, int, dict[str, Any]], None]]] = {
    "Welcome": DeepgramAgentSession._welcome,
    "SettingsApplied": DeepgramAgentSession._settings_applied,
    "UserStartedSpeaking": DeepgramAgentSession._user_started,
    "ConversationText": DeepgramAgentSession._conversation_text,
    "AgentThinking": DeepgramAgentSession._thinking,
    "AgentStartedSpeaking": DeepgramAgentSession._started_speaking,
    "AgentAudioDone": DeepgramAgentSession._audio_done,
    "LatencyReport": DeepgramAgentSession._latency_report,
    "Warning": DeepgramAgentSession._warning,
    "Error": DeepgramAgentSession._error,
}


class DeepgramGreetingSession(DeepgramAgentSession):
    """A session whose agent greets the caller (``greeting`` configured)."""

    speaks_first: ClassVar[bool] = True


class DeepgramAgentTarget(Target):
    protocol = "deepgram-agent"
    schemes = ()
    description = "Deepgram Voice Agent API over WebSocket (Settings, binary audio, agent events)"
    options = OPTIONS
    session_class = DeepgramAgentSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        agent = build_settings(config)["agent"]  # a bad option: a usage error before connecting
        self.greets = isinstance(agent, dict) and bool(agent.get("greeting"))

    def session(self, sink: TargetSink) -> TargetSession:
        cls = DeepgramGreetingSession if self.greets else DeepgramAgentSession
        return cls(self.config, sink)
