"""ElevenLabs Agents (Conversational AI) over WebSocket (``elevenlabs-agent``).

``wss://api.elevenlabs.io/v1/convai/conversation?agent_id=…`` (or a signed URL). User docs:
docs/apis/elevenlabs-agent.md. The message names and shapes are those of the official
``elevenlabs`` SDK (``elevenlabs.conversational_ai.conversation``, the event names of
``elevenlabs.types.client_event``) and ElevenLabs' AsyncAPI contract of the protocol.

**Options** (:data:`OPTIONS`, checked before anything connects: an unknown or bad one, or
no agent id in the URL or ``agent_id``, is a usage error): the agent (``agent_id``), the
key's way (``auth``), the overrides (``first_message``, ``language``, ``prompt``,
``voice_id``, ``user_id``, ``dynamic.NAME``), ``quiet_ms`` (below) and the WebSocket
targets' TLS options (``ca_file``, ``tls_insecure``; also for ``get-signed-url``).

**Opening.** The session connects (the key, from the environment variable named by
``--api-key-env`` and never from an option, goes as the ``xi-api-key`` header; with
``auth=signed_url`` it is sent instead to ``GET /v1/convai/conversation/get-signed-url`` and
the session connects to the signed URL it answers; either way it is a secret of the run and
never reaches the trace), sends ``conversation_initiation_client_data`` (the overrides the
options ask for) and waits for ``conversation_initiation_metadata``: its
``user_input_audio_format`` and ``agent_output_audio_format`` (``pcm_<rate>`` or
``ulaw_8000``) are the session's formats, written as the mark ``session.audio_format``
(``source: "declared"``, ``conversation_id``). A format voiceaudit cannot decode (``mp3_…``,
``opus_…``), a metadata event without a ``conversation_id``, or none within the connect
timeout fails the open. A connection error names the URL without its query (a signed URL's
``conversation_signature`` is a credential too).

**Audio.** The caller's speech goes as ``{"user_audio_chunk": "<base64>"}``, one message per
probe frame at the probe's microphone pace, in the declared input format (the probe
resamples its recordings to the declared rate; μ-law is encoded here). Reply audio is the
``audio`` events' ``audio_event.audio_base_64``, decoded at the declared output format.

**Marks** (arrival times; ``attrs.raw`` names the API's event):

==============================  ==================================================  ==============
event                           mark                                                stage
==============================  ==================================================  ==============
``user_transcript``             ``committed`` and ``transcript.final`` (``text``):  endpointing,
                                the API's end of the user's turn                    transcription
``tentative_user_transcript``   ``transcript.partial``                              transcription
``agent_response``              ``response.created`` and ``reply_text.first``      model
                                (``text``): the response began (it comes with
                                the reply's first audio)
``agent_response_correction``   ``reply_text.correction`` (after an interruption)   model
``agent_response_complete``     ``response.done``; the reply is done                model
``interruption``                ``interrupted``; the reply is cut                   endpointing
``ping``                        ``ping`` (``event_id``, ``ping_ms``)                transport
``error``, ``client_error``     ``error``; fails the turn                           error
other events of the SDK's list  ``agent.event``                                     other
any other ``type``              ``unknown_event``                                   other
==============================  ==================================================  ==============

The first ``audio`` of a reply is the probe's own ``reply.first_byte``. ``vad_score`` events
are read and not marked (there is one per input chunk).

**End of a reply.** The API has no "audio done" event by default: ``agent_response`` comes
with the reply's *first* audio, and ``agent_response_complete`` is sent only when the agent
lists it in its ``client_events``. So a reply ends at ``agent_response_complete`` when it
comes, at an ``interruption``, or else after ``quiet_ms`` (option, default 500) in which
no audio arrived after reply audio (keep it under the probe's ``--idle``).

**Keep-alive.** Every ``ping`` is answered at once with ``{"type": "pong", "event_id": …}``
(the server closes a connection that stops answering); the ping's ``ping_ms`` (the server's
own round-trip estimate) is in the ``ping`` mark.

**Barge-in.** ``interruption`` is the mark ``interrupted`` and ends the reply there (the
probe's scenario machinery measures the stop latency from what the caller heard). As the
SDK does, audio events whose ``event_id`` is not above the interruption's belong to the cut
reply and are dropped (the mark ``reply.discarded``, stage transport, at the first one).

**Greeting.** ElevenLabs agents speak their ``first_message`` first (``speaks_first``):
the probe takes the reply audio before the first turn as the greeting, its latency counted
from when ``conversation_initiation_client_data`` was sent. ``first_message=`` (empty)
overrides it away: the session then does not speak first.

**Tools.** voiceaudit runs no client tools: a ``client_tool_call`` is answered with a
``client_tool_result`` (``is_error``), as the SDK answers for a tool it does not have, so the
agent does not wait.

**Faults.** A message the SDK would reject (not a JSON object, no string ``type``, an
``audio`` event without ``audio_event.event_id`` or with ``audio_base_64`` that is not
base64, a ``user_transcript``, ``agent_response``, ``interruption`` or ``ping`` without the
field the SDK reads, a second ``conversation_initiation_metadata``) fails the turn as a
protocol fault naming the event and field; so does audio that cannot be the declared
format (an odd byte count for 16-bit PCM: neither it nor the rest of that reply is used).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import (
    Target,
    TargetConfig,
    TargetSession,
    TargetSink,
    cancel_quietly,
    redact_url,
)
from voiceaudit.targets.wsbase import TLS_OPTIONS, WebSocketSession, dict_at, tls_context

#: the API's endpoint (the URL a user gives; any ws:// or wss:// URL works)
DEFAULT_URL: Final[str] = "wss://api.elevenlabs.io/v1/convai/conversation"
#: the REST path that signs a conversation URL (``auth=signed_url``)
SIGNED_URL_PATH: Final[str] = "/v1/convai/conversation/get-signed-url"
API_KEY_HEADER: Final[str] = "xi-api-key"
DEFAULT_QUIET_MS: Final[int] = 500
_RATE_RANGE: Final[tuple[int, int]] = (4000, 192000)

#: the server events of the SDK's list (``elevenlabs.types.client_event.ClientEvent``)
#: that the adapter does not time: the mark ``agent.event``
SDK_EVENTS: Final[frozenset[str]] = frozenset(
    {
        "asr_initiation_metadata",
        "client_tool_call",
        "mcp_tool_call",
        "mcp_connection_status",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "agent_response_metadata",
        "agent_chat_response_part",
        "guardrail_triggered",
        "dtmf_request",
        "context_usage",
        "internal_turn_probability",
        "internal_tentative_agent_response",
    }
)

OPTIONS: Final[dict[str, str]] = {
    "agent_id": "the agent to talk to (added to the URL as agent_id=, unless it has one)",
    "auth": "header (default: the key as the xi-api-key header) or signed_url (the key "
    "fetches a signed URL from get-signed-url first)",
    "first_message": "override the agent's first message (an empty value: the agent does "
    "not speak first)",
    "language": "override the agent's language (conversation_config_override)",
    "prompt": "override the agent's system prompt",
    "voice_id": "override the agent's voice",
    "user_id": "the end user's id sent in conversation_initiation_client_data",
    "dynamic.NAME": "a dynamic variable NAME for the agent's prompt",
    "quiet_ms": f"a reply without agent_response_complete ends after this long without "
    f"audio (default {DEFAULT_QUIET_MS})",
    **TLS_OPTIONS,
}


class FormatError(ValueError):
    """A declared audio format voiceaudit cannot decode."""


def parse_format(value: Any) -> tuple[str, int]:
    """(encoding of :data:`voiceaudit.codecs.ENCODINGS`, rate) of an API format name:
    ``pcm_<rate>`` or ``ulaw_8000``; FormatError for anything else."""
    if not isinstance(value, str):
        raise FormatError(f"audio format {json.dumps(value)[:60]}")
    name, _, rate_s = value.lower().partition("_")
    try:
        rate = int(rate_s)
    except ValueError:
        raise FormatError(f"audio format {value!r}") from None
    if name == "pcm" and _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        return "pcm16", rate
    if name == "ulaw" and rate == codecs.G711_RATE:
        return "pcmu", rate
    raise FormatError(f"audio format {value!r}")


def format_name(encoding: str, rate: int) -> str:
    """The API's name of a format (``pcm_16000``, ``ulaw_8000``)."""
    return f"{'ulaw' if encoding == 'pcmu' else 'pcm'}_{rate}"


def _event_id(value: Any) -> int | None:
    """An event id as the SDK reads it (``int(event["event_id"])``); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def check_options(config: TargetConfig) -> None:
    """UsageError for an unknown or bad option (before anything connects)."""
    for name in config.options:
        if name not in OPTIONS and not (name.startswith("dynamic.") and len(name) > 8):
            raise UsageError(
                f"unknown target option {name!r} for elevenlabs-agent",
                hint="known options: " + ", ".join(sorted(OPTIONS)),
            )
    if config.option("auth", "header") not in ("header", "signed_url"):
        raise UsageError("target option auth must be 'header' or 'signed_url'")
    if config.int_option("quiet_ms", DEFAULT_QUIET_MS) < 0:
        raise UsageError("target option quiet_ms cannot be negative")
    tls_context(config)  # a bad ca_file / tls_insecure
    query = dict(parse_qsl(urlsplit(config.url).query))
    if not query.get("agent_id") and not config.options.get("agent_id"):
        raise UsageError(
            "elevenlabs-agent needs the agent's id",
            hint="give -o agent_id=AGENT_ID, or a URL with ?agent_id= (a signed URL has one)",
        )


def initiation_message(config: TargetConfig) -> dict[str, Any]:
    """The ``conversation_initiation_client_data`` the options ask for."""
    agent: dict[str, Any] = {}
    if "first_message" in config.options:
        agent["first_message"] = config.options["first_message"]
    if "language" in config.options:
        agent["language"] = config.options["language"]
    if "prompt" in config.options:
        agent["prompt"] = {"prompt": config.options["prompt"]}
    override: dict[str, Any] = {}
    if agent:
        override["agent"] = agent
    if "voice_id" in config.options:
        override["tts"] = {"voice_id": config.options["voice_id"]}
    msg: dict[str, Any] = {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": override,
        "custom_llm_extra_body": {},
        "dynamic_variables": {
            k[len("dynamic.") :]: v for k, v in config.options.items() if k.startswith("dynamic.")
        },
    }
    if "user_id" in config.options:
        msg["user_id"] = config.options["user_id"]
    return msg


class ElevenLabsAgentSession(WebSocketSession):
    """One conversation with an ElevenLabs agent (module doc)."""

    input_rate = 16000
    speaks_first: ClassVar[bool] = True

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self.quiet_ns = config.int_option("quiet_ms", DEFAULT_QUIET_MS) * 1_000_000
        self.input_format: tuple[str, int] = ("pcm16", 16000)
        self.output_format: tuple[str, int] = ("pcm16", 16000)
        self.conversation_id: str | None = None
        self._ready = asyncio.Event()
        self._open_error: str | None = None
        self._opened = False
        self._media_start: int | None = None
        #: once set, the session cannot go on (every later send fails with it)
        self._broken: str | None = None
        #: the event id of the last interruption: audio at or below it is stale
        self._interrupt_id: int | None = None
        self._discarded_for: int | None = None
        #: reply audio arrived since the last end of a reply
        self._reply_open = False
        self._last_audio_ns = 0
        self._quiet: asyncio.Task[None] | None = None
        #: a chunk of this reply could not be the declared format: the rest is dropped
        self._audio_fault = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- connecting ---------------------------------------------------------------------

    def url(self) -> str:
        """The target's URL, with ``agent_id=`` added when the option names one and the URL
        has none."""
        agent = self.config.options.get("agent_id")
        parts = urlsplit(self.config.url)
        if not agent or any(k == "agent_id" for k, _ in parse_qsl(parts.query)):
            return self.config.url
        query = (parts.query + "&" if parts.query else "") + urlencode({"agent_id": agent})
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def headers(self) -> dict[str, str]:
        """The user's headers, plus the API key as ``xi-api-key``."""
        h = {k: v for k, v in self.config.headers}
        key = self.config.api_key()
        if key:
            h[API_KEY_HEADER] = key
        return h

    async def _signed_url(self) -> str:
        """Ask ``get-signed-url`` (with the key) for a signed conversation URL."""
        key = self.config.api_key()
        if not key:
            raise TargetError("auth=signed_url needs an API key (--api-key-env)")
        parts = urlsplit(self.url())
        agent = dict(parse_qsl(parts.query)).get("agent_id")
        if not agent:
            raise TargetError("auth=signed_url needs an agent id (option agent_id)")
        scheme = "https" if parts.scheme in ("wss", "https") else "http"
        rest = urlunsplit((scheme, parts.netloc, SIGNED_URL_PATH, "", ""))
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    rest,
                    params={"agent_id": agent},
                    headers={API_KEY_HEADER: key},
                    timeout=aiohttp.ClientTimeout(total=self.config.connect_timeout_s),
                ) as resp,
            ):
                if resp.status != 200:
                    raise TargetError(
                        f"get-signed-url at {redact_url(rest)} answered HTTP {resp.status}"
                    )
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise TargetError(
                f"cannot get a signed URL from {redact_url(rest)}: {exc or type(exc).__name__}"
            ) from None
        signed = body.get("signed_url") if isinstance(body, dict) else None
        if not isinstance(signed, str) or urlsplit(signed).scheme not in ("ws", "wss"):
            raise TargetError(f"get-signed-url at {redact_url(rest)} gave no signed_url")
        return signed

    async def open(self) -> None:
        if self.config.option("auth", "header") == "signed_url":
            url = await self._signed_url()
            headers = dict(self.config.headers)
        else:
            url, headers = self.url(), self.headers()
        try:
            await self.connect(url, headers)
        except TargetError as exc:
            # aiohttp names the URL it was given: a signed URL's signature is a credential
            msg = exc.message
            for u in {url, self.config.url}:
                msg = msg.replace(u, redact_url(u))
            raise TargetError(msg) from None
        try:
            self._media_start = time.monotonic_ns()
            await self.send_json(initiation_message(self.config))
            try:
                await asyncio.wait_for(self._ready.wait(), self.config.connect_timeout_s)
            except TimeoutError:
                raise TargetError(
                    "the agent sent no conversation_initiation_metadata within "
                    f"{self.config.connect_timeout_s:g} s"
                ) from None
            if self._open_error is not None:
                raise TargetError(self._open_error)
        except TargetError:
            await self.close()
            raise
        self._opened = True

    def media_start_ns(self) -> int | None:
        """When ``conversation_initiation_client_data`` was sent: the conversation began."""
        return self._media_start

    # -- sending ------------------------------------------------------------------------

    async def send_audio(self, pcm16: bytes) -> None:
        if self._broken is not None:
            raise TargetError(self._broken)
        data = codecs.encode(pcm16, self.input_format[0])
        await self.send_json({"user_audio_chunk": base64.b64encode(data).decode()})

    def _send_soon(self, obj: dict[str, Any]) -> None:
        """Send ``obj`` from the reader (a pong, a tool result) without waiting for it."""

        async def go() -> None:
            # the connection is gone: the reader reports that
            with contextlib.suppress(
                TargetError, aiohttp.ClientError, ConnectionError, RuntimeError
            ):
                await self.send_json(obj)

        task = asyncio.ensure_future(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start_turn(self, turn: int) -> None:
        self._audio_fault = False

    # -- receiving ----------------------------------------------------------------------

    def _fault(self, reason: str) -> None:
        """A message the SDK would reject: during open it fails the open, after it the turn."""
        if not self._opened:
            if self._open_error is None:
                self._open_error = reason
            self._ready.set()
            return
        self.sink.fail(reason)

    def on_binary(self, t_ns: int, data: bytes) -> None:
        # The SDK json-decodes whatever frame it receives: JSON in a binary frame is read.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._fault("protocol: a binary message that is not a JSON event")
            return
        self.on_text(t_ns, text)

    def on_text(self, t: int, data: str) -> None:
        try:
            ev = json.loads(data)
            kind = ev["type"]
            if not isinstance(kind, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._fault(f"protocol: malformed event {data[:80]!r}")
            return
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, t, ev, len(data))
        elif kind == "vad_score":
            pass
        elif kind in SDK_EVENTS:
            self.sink.mark("agent.event", "other", t, {"raw": kind})
            if kind == "client_tool_call":
                self._tool_call(ev)
        else:
            self.sink.mark("unknown_event", "other", t, {"raw": kind[:80]})

    def _metadata(self, t: int, ev: dict[str, Any], size: int) -> None:
        if self.conversation_id is not None:
            self._fault("protocol: a second conversation_initiation_metadata")
            return
        meta = dict_at(ev, "conversation_initiation_metadata_event")
        conv = meta.get("conversation_id")
        if not isinstance(conv, str):
            self._fault("protocol: conversation_initiation_metadata without a conversation_id")
            return
        try:
            fin = parse_format(meta.get("user_input_audio_format", "pcm_16000"))
            fout = parse_format(meta.get("agent_output_audio_format", "pcm_16000"))
        except FormatError as exc:
            self._fault(f"protocol: the agent declared {exc}, which voiceaudit cannot decode")
            return
        self.conversation_id = conv
        self.input_format, self.output_format = fin, fout
        self.input_rate = fin[1]
        declared = all(k in meta for k in ("user_input_audio_format", "agent_output_audio_format"))
        self.sink.mark(
            "session.audio_format",
            "session",
            t,
            {
                "input": {"encoding": fin[0], "rate": fin[1]},
                "output": {"encoding": fout[0], "rate": fout[1]},
                "source": "declared" if declared else "default",
                "raw": "conversation_initiation_metadata",
                "conversation_id": conv,
            },
        )
        self._ready.set()

    def _audio(self, t: int, ev: dict[str, Any], size: int) -> None:
        audio = dict_at(ev, "audio_event")
        eid = _event_id(audio.get("event_id"))
        if eid is None:
            self._fault("protocol: audio without an integer audio_event.event_id")
            return
        b64 = audio.get("audio_base_64")
        if not isinstance(b64, str):
            self._fault("protocol: audio without audio_event.audio_base_64")
            return
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            self._fault("protocol: audio audio_event.audio_base_64 is not base64")
            return
        if self._interrupt_id is not None and eid <= self._interrupt_id:
            # audio of the cut reply, still on its way: a client drops it (the SDK does)
            if self._discarded_for != self._interrupt_id:
                self._discarded_for = self._interrupt_id
                self.sink.mark(
                    "reply.discarded",
                    "transport",
                    t,
                    {"raw": "audio", "event_id": eid, "interruption_event_id": self._interrupt_id},
                )
            return
        if self._broken is not None:
            self.sink.fail(self._broken)
            return
        if self._audio_fault:
            return  # the reply after a bad chunk would be heard out of place
        enc, rate = self.output_format
        try:
            pcm = codecs.decode(raw, enc)
        except ValueError:
            self._audio_fault = True
            self.sink.fail(
                f"protocol: audio chunk of {len(raw)} bytes cannot be the declared "
                f"{format_name(enc, rate)} (an odd byte count for 16-bit samples)"
            )
            return
        self.sink.reply_audio(t, pcm, rate, size)
        self._reply_open = True
        self._last_audio_ns = t
        if self._quiet is None or self._quiet.done():
            self._quiet = asyncio.ensure_future(self._watch_quiet())

    async def _watch_quiet(self) -> None:
        """End the reply once no audio has arrived for ``quiet_ms`` (module doc)."""
        while self._reply_open:
            due = self._last_audio_ns + self.quiet_ns
            left = due - time.monotonic_ns()
            if left > 0:
                await asyncio.sleep(left / 1e9)
                continue
            self._end_reply(time.monotonic_ns())

    def _end_reply(self, t: int) -> None:
        if self._reply_open:
            self._reply_open = False
            self.sink.reply_done(t)

    def _text_event(
        self, t: int, ev: dict[str, Any], key: str, field: str, kind: str
    ) -> tuple[str, int | None] | None:
        body = dict_at(ev, key)
        text = body.get(field)
        if not isinstance(text, str):
            self._fault(f"protocol: {kind} without a string {key}.{field}")
            return None
        return text, _event_id(body.get("event_id"))

    def _user_transcript(self, t: int, ev: dict[str, Any], size: int) -> None:
        got = self._text_event(t, ev, "user_transcription_event", "user_transcript", ev["type"])
        if got is None:
            return
        attrs: dict[str, Any] = {"raw": "user_transcript", "event_id": got[1]}
        self.sink.mark("committed", "endpointing", t, attrs)
        self.sink.mark("transcript.final", "transcription", t, {**attrs, "text": got[0]})

    def _tentative(self, t: int, ev: dict[str, Any], size: int) -> None:
        got = self._text_event(
            t, ev, "tentative_user_transcription_event", "user_transcript", ev["type"]
        )
        if got is not None:
            attrs = {"raw": "tentative_user_transcript", "text": got[0]}
            self.sink.mark("transcript.partial", "transcription", t, attrs)

    def _agent_response(self, t: int, ev: dict[str, Any], size: int) -> None:
        got = self._text_event(t, ev, "agent_response_event", "agent_response", ev["type"])
        if got is None:
            return
        attrs: dict[str, Any] = {"raw": "agent_response", "event_id": got[1]}
        self.sink.mark("response.created", "model", t, attrs)
        self.sink.mark("reply_text.first", "model", t, {**attrs, "text": got[0]})

    def _correction(self, t: int, ev: dict[str, Any], size: int) -> None:
        body = dict_at(ev, "agent_response_correction_event")
        orig = body.get("original_agent_response")
        corr = body.get("corrected_agent_response")
        if not isinstance(orig, str) or not isinstance(corr, str):
            self._fault(
                "protocol: agent_response_correction without original_agent_response and "
                "corrected_agent_response strings"
            )
            return
        attrs = {"raw": "agent_response_correction", "original": orig, "corrected": corr}
        self.sink.mark("reply_text.correction", "model", t, attrs)

    def _complete(self, t: int, ev: dict[str, Any], size: int) -> None:
        self.sink.mark("response.done", "model", t, {"raw": "agent_response_complete"})
        self._end_reply(t)

    def _interruption(self, t: int, ev: dict[str, Any], size: int) -> None:
        eid = _event_id(dict_at(ev, "interruption_event").get("event_id"))
        if eid is None:
            self._fault("protocol: interruption without an integer interruption_event.event_id")
            return
        self._interrupt_id = eid
        self.sink.mark("interrupted", "endpointing", t, {"raw": "interruption", "event_id": eid})
        self._end_reply(t)

    def _ping(self, t: int, ev: dict[str, Any], size: int) -> None:
        body = dict_at(ev, "ping_event")
        raw_id = body.get("event_id")
        eid = _event_id(raw_id)
        if eid is None:
            self._fault("protocol: ping without an integer ping_event.event_id")
            return
        self._send_soon({"type": "pong", "event_id": raw_id})
        ping_ms = body.get("ping_ms")
        attrs: dict[str, Any] = {"raw": "ping", "event_id": eid}
        if isinstance(ping_ms, (int, float)) and not isinstance(ping_ms, bool):
            attrs["ping_ms"] = ping_ms
        self.sink.mark("ping", "transport", t, attrs)

    def _error(self, t: int, ev: dict[str, Any], size: int) -> None:
        body = ev.get("error_event")
        if not isinstance(body, dict):
            body = ev
        msg = str(body.get("message") or body.get("reason") or body.get("error_type") or "error")
        code = body.get("code")
        self.sink.mark("error", "error", t, {"raw": ev["type"], "message": msg, "code": code})
        if not self._opened:
            self._fault(f"target error: {msg}")
            return
        self.sink.fail(f"target error: {msg}")

    def _tool_call(self, ev: dict[str, Any]) -> None:
        """voiceaudit runs no client tools: say so, as the SDK does for an unregistered one,
        so the agent does not wait for a result."""
        call = dict_at(ev, "client_tool_call")
        call_id = call.get("tool_call_id")
        if isinstance(call_id, str):
            self._send_soon(
                {
                    "type": "client_tool_result",
                    "tool_call_id": call_id,
                    "result": f"Tool '{call.get('tool_name')}' is not registered",
                    "is_error": True,
                }
            )

    async def close(self) -> None:
        self._reply_open = False
        await cancel_quietly(self._quiet)
        self._quiet = None
        for task in list(self._tasks):
            await cancel_quietly(task)
        await super().close()


_HANDLERS: Final[dict[str, Any]] = {
    "conversation_initiation_metadata": ElevenLabsAgentSession._metadata,
    "audio": ElevenLabsAgentSession._audio,
    "user_transcript": ElevenLabsAgentSession._user_transcript,
    "tentative_user_transcript": ElevenLabsAgentSession._tentative,
    "agent_response": ElevenLabsAgentSession._agent_response,
    "agent_response_correction": ElevenLabsAgentSession._correction,
    "agent_response_complete": ElevenLabsAgentSession._complete,
    "interruption": ElevenLabsAgentSession._interruption,
    "ping": ElevenLabsAgentSession._ping,
    "error": ElevenLabsAgentSession._error,
    "client_error": ElevenLabsAgentSession._error,
}


class ElevenLabsSilentSession(ElevenLabsAgentSession):
    """A session whose agent does not speak first (``first_message=`` empty)."""

    speaks_first: ClassVar[bool] = False


class ElevenLabsAgentTarget(Target):
    protocol = "elevenlabs-agent"
    schemes = ()
    description = "ElevenLabs Agents (Conversational AI) over WebSocket"
    options = OPTIONS
    session_class = ElevenLabsAgentSession

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        check_options(config)  # a bad option is a usage error before any connect
        self.greets = config.options.get("first_message", None) != ""

    def session(self, sink: TargetSink) -> TargetSession:
        cls = ElevenLabsAgentSession if self.greets else ElevenLabsSilentSession
        return cls(self.config, sink)
