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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSink
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


def declared_formats(session: Any, pcm_rate: int) -> tuple[AudioFormat | None, AudioFormat | None]:
    """The (input, output) formats a ``session.created``/``session.updated`` session object
    declares (GA ``audio.input.format``/``audio.output.format``, beta
    ``input_audio_format``/``output_audio_format``); None for a direction it leaves out.
    FormatError (naming the direction) for one voiceaudit cannot decode."""
    if not isinstance(session, dict):
        return None, None
    out: list[AudioFormat | None] = []
    audio = session.get("audio")
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
            out.append(parse_format(raw, pcm_rate))
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


class RealtimeSession(WebSocketSession):
    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.pcm_rate = config.int_option("rate", DEFAULT_RATE)
        self.requested = requested_formats(config)
        self.user_asked = any(
            k in config.options for k in ("input_format", "output_format", "rate")
        )
        self.format_wait_s = config.int_option("format_wait_ms", 1000) / 1000
        #: the formats in effect: what the probe sends and how reply audio is read
        self.input_format, self.output_format = self.requested
        self.input_rate = self.input_format.rate
        self.beta = config.option("api", "ga") == "beta"
        self.manual = config.option("turn_detection", "server_vad") == "manual"
        self.stage_events = wants_stage_events(config)
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
        """The target's URL, with ``model=`` added to its query when the option is given."""
        model = self.config.options.get("model")
        if not model:
            return self.config.url
        parts = urlsplit(self.config.url)
        query = (parts.query + "&" if parts.query else "") + urlencode({"model": model})
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def _session_update(self) -> dict[str, Any]:
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
    description = "OpenAI Realtime protocol over WebSocket (GA and beta event names)"

    session_class = RealtimeSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        requested_formats(config)  # a bad format option is a usage error before any connect
        if config.int_option("format_wait_ms", 1000) < 0:
            raise UsageError("target option format_wait_ms cannot be negative")
