"""A faithful local ElevenLabs Agents server: the conversation WebSocket on loopback.

It speaks the protocol of ``wss://api.elevenlabs.io/v1/convai/conversation`` as the
official ``elevenlabs`` SDK reads it (``elevenlabs.conversational_ai.conversation``) and as
ElevenLabs' AsyncAPI contract of it lays out (elevenlabs/packages
``packages/types/schemas/agent.asyncapi.yaml``): ``conversation_initiation_metadata`` with
the audio formats, ``user_transcript``, ``agent_response``, ``audio`` events of real speech,
``interruption`` on barge-in, ``ping`` with the last measured round trip. It serves
``GET /v1/convai/conversation/get-signed-url`` too (``xi-api-key``), answering a URL with a
``conversation_signature`` the WebSocket then accepts.

**Every message it sends** passes :func:`sdk_rejects` before it leaves: its ``type`` is one
of the SDK's event names (``elevenlabs.types.client_event.ClientEvent``), the SDK's own
message reader (``BaseConversation._handle_message_core``, with every callback set, so
it reads every field it uses) takes it without an error, and it has the fields the AsyncAPI
contract requires (audio formats from the SDK's ``AsrInputFormat``/``TtsOutputFormat``). A
message that fails is a bug of this server (``sent_rejected``), except the faults it is
told to inject, which must fail (``injected``: the tests check they do).

**Every message it receives** is checked against the client-side shapes
(:func:`client_violation`): ``conversation_initiation_client_data`` through the SDK's
``ConversationInitiationClientDataRequestInput`` model, ``{"user_audio_chunk": base64}``
exactly as the SDK's client sends it (whole samples of the declared input format), pongs
naming a ping that was sent, tool results as the contract has them. A violation is
recorded (``violations``) and, as the API does (close code 1008), ends the conversation.

While the caller speaks it sends ``tentative_user_transcript`` every 500 ms of speech, and
after an interruption ``agent_response_correction`` (the reply's text cut where its audio
was), as the API does by default.

**Its truth**, on the process's ``time.monotonic_ns()`` (the probe's clock on loopback):
per turn the speech it detected (energy VAD over 10 ms frames: start, end and when it
decided), when it sent each reply audio message and how many samples each held, when it
sent the interruption and the last audio before it; the greeting's the same; each ping's
send time and its pong's arrival.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import secrets
import time
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, web
from elevenlabs.types.asr_input_format import AsrInputFormat
from elevenlabs.types.client_event import ClientEvent
from elevenlabs.types.conversation_initiation_client_data_request_input import (
    ConversationInitiationClientDataRequestInput,
)
from elevenlabs.types.conversation_initiation_source import ConversationInitiationSource
from elevenlabs.types.tts_output_format import TtsOutputFormat
from servers import LoopbackServer

from voiceaudit import codecs
from voiceaudit.audio import resample, to_pcm16

#: the server events the SDK knows (its ``ClientEvent`` literal)
SDK_EVENT_NAMES: frozenset[str] = frozenset(typing.get_args(typing.get_args(ClientEvent)[0]))
INPUT_FORMATS: frozenset[str] = frozenset(typing.get_args(typing.get_args(AsrInputFormat)[0]))
OUTPUT_FORMATS: frozenset[str] = frozenset(typing.get_args(typing.get_args(TtsOutputFormat)[0]))
SOURCES: frozenset[str] = frozenset(
    typing.get_args(typing.get_args(ConversationInitiationSource)[0])
)

#: event -> (body key, {field: kind}) the AsyncAPI contract requires of a server message
SHAPES: dict[str, tuple[str, dict[str, str]]] = {
    "audio": ("audio_event", {"audio_base_64": "b64", "event_id": "int"}),
    "user_transcript": ("user_transcription_event", {"user_transcript": "str", "event_id": "int"}),
    "tentative_user_transcript": (
        "tentative_user_transcription_event",
        {"user_transcript": "str", "event_id": "int"},
    ),
    "agent_response": ("agent_response_event", {"agent_response": "str", "event_id": "int"}),
    "agent_response_correction": (
        "agent_response_correction_event",
        {"original_agent_response": "str", "corrected_agent_response": "str", "event_id": "int"},
    ),
    "interruption": ("interruption_event", {"event_id": "int"}),
    "conversation_initiation_metadata": (
        "conversation_initiation_metadata_event",
        {
            "conversation_id": "str",
            "agent_output_audio_format": "out",
            "user_input_audio_format": "in",
        },
    ),
    "ping": ("ping_event", {"event_id": "int"}),
    "client_tool_call": (
        "client_tool_call",
        {"tool_name": "str", "tool_call_id": "str", "parameters": "obj", "event_id": "int"},
    ),
    "vad_score": ("vad_score_event", {"vad_score": "num"}),
}

MS = 1_000_000
#: RMS (of full scale 1.0) above which a 10 ms input frame is speech
SPEECH_RMS = 0.01


class _Reader:
    """The SDK's message handler interface, every callback set (so every field is read)."""

    callback_agent_response = callback_agent_response_correction = True
    callback_agent_chat_response_part = callback_user_transcript = True
    callback_latency_measurement = callback_audio_alignment = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("handle_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class SdkReader:
    """The official SDK's own reading of server messages (one per connection: it keeps the
    conversation id and the last interruption, as a client does)."""

    def __init__(self) -> None:
        from elevenlabs.client import ElevenLabs
        from elevenlabs.conversational_ai.conversation import BaseConversation

        self.conv = BaseConversation(
            client=ElevenLabs(api_key="unused", base_url="http://127.0.0.1:9"),
            agent_id="agent_local",
            requires_auth=False,
        )
        self.handler = _Reader()

    def read(self, msg: Any) -> None:
        """Raise whatever the SDK raises reading ``msg``."""
        self.conv._handle_message_core(msg, self.handler)

    def close(self) -> None:
        self.conv.client_tools.stop()


def _kind_ok(kind: str, v: Any) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "num":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "obj":
        return isinstance(v, dict)
    if kind == "in":
        return v in INPUT_FORMATS
    if kind == "out":
        return v in OUTPUT_FORMATS
    if kind == "b64":
        if not isinstance(v, str):
            return False
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    raise AssertionError(kind)


def sdk_rejects(msg: Any, reader: SdkReader) -> str | None:
    """Why the SDK (its event names, its reader, the contract's fields) rejects a server
    message; None when it takes it."""
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return "no string type"
    kind = msg["type"]
    if kind not in SDK_EVENT_NAMES:
        return f"{kind!r} is not one of the SDK's event names"
    try:
        reader.read(msg)
    except Exception as exc:  # the SDK's reader failing on it is the point
        return f"the SDK's reader fails on {kind}: {type(exc).__name__}: {exc}"
    shape = SHAPES.get(kind)
    if shape is not None:
        body = msg.get(shape[0])
        if not isinstance(body, dict):
            return f"{kind} without {shape[0]}"
        for name, k in shape[1].items():
            if not _kind_ok(k, body.get(name)):
                return f"{kind} {shape[0]}.{name} is not a valid {k}"
        if (
            kind == "ping"
            and body.get("ping_ms") is not None
            and not _kind_ok("int", body["ping_ms"])
        ):
            return "ping ping_event.ping_ms is not an integer or null"
    return None


def parse_format(name: str) -> tuple[str, int]:
    """(encoding, rate) of a format name of the SDK's lists."""
    enc, _, rate = name.partition("_")
    return ("pcmu" if enc == "ulaw" else "pcm16"), int(rate)


@dataclass
class Speech:
    """Audio the agent says (float32 at its own rate) and its text."""

    samples: np.ndarray
    rate: int
    text: str

    def encoded(self, fmt: str) -> tuple[bytes, int, int]:
        """(wire bytes, rate, bytes per sample) in the API format ``fmt``."""
        enc, rate = parse_format(fmt)
        x = self.samples if rate == self.rate else resample(self.samples, self.rate, rate)
        return codecs.encode(to_pcm16(x), enc), rate, codecs.BYTES_PER_SAMPLE[enc]


@dataclass
class Reply:
    """The truth of one reply the server sent (a turn's, or the greeting)."""

    event_id: int
    rate: int
    #: the caller's speech (session samples at the input rate); None for the greeting
    speech_start: int | None = None
    speech_end: int | None = None
    #: when the last speech sample was spoken (its chunk's arrival less the samples after
    #: it), when the server decided the turn was over, when user_transcript went
    speech_end_ns: int | None = None
    decided_ns: int | None = None
    transcript_ns: int | None = None
    response_ns: int | None = None
    audio_sent_ns: list[int] = field(default_factory=list)
    chunk_samples: list[int] = field(default_factory=list)
    #: barge-in: the caller's speech onset the VAD found (session sample, when spoken),
    #: when the interruption went
    barge_sample: int | None = None
    barge_ns: int | None = None
    interruption_ns: int | None = None
    #: when agent_response_correction went (after the interruption)
    correction_ns: int | None = None
    #: audio of this reply sent after its interruption (still in flight)
    stale_sent_ns: list[int] = field(default_factory=list)
    #: when agent_response_complete went, and the client tool call's id
    complete_ns: int | None = None
    tool_call_id: str | None = None
    done: bool = False

    def heard(self, sample: int) -> int:
        """When reply sample ``sample`` is heard by a client that plays the reply from its
        first message on, each message as soon as it is there and the one before has
        played (the probe's playout without a jitter buffer), on the server's send times."""
        off = 0
        free = 0  # when the message before has played
        for sent, n in zip(self.audio_sent_ns, self.chunk_samples, strict=True):
            begin = max(sent, free)
            if sample < off + n:
                return begin + (sample - off) * 1_000_000_000 // self.rate
            off += n
            free = begin + n * 1_000_000_000 // self.rate
        raise ValueError(f"sample {sample} is beyond the {off} samples sent")


@dataclass
class Conversation:
    """What one connection saw."""

    conversation_id: str
    connected_ns: int
    query: dict[str, str]
    headers: dict[str, str]
    initiation: dict[str, Any] | None = None
    initiation_ns: int | None = None
    metadata_ns: int | None = None
    greeting: Reply | None = None
    replies: list[Reply] = field(default_factory=list)
    pings: dict[int, int] = field(default_factory=dict)
    #: the ping_ms each ping carried (the round trip the server measured last)
    ping_ms: dict[int, int | None] = field(default_factory=dict)
    pongs: dict[int, int] = field(default_factory=dict)
    client_kinds: Counter[str] = field(default_factory=Counter)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    samples_in: int = 0
    violations: list[str] = field(default_factory=list)


class ElevenLabsServer(LoopbackServer):
    """The conversation endpoint and the signed-URL endpoint (module doc).

    ``reply`` is what the agent says to every turn, ``greeting`` its first message (None:
    it waits for the caller); ``greeting_ms`` after the metadata it starts, ``think_ms``
    after the caller's turn ended the reply's first audio goes (``user_transcript`` at the
    decision, ``agent_response`` just before the audio). Audio goes in ``chunk_ms`` messages
    at ``pace`` times real time (0: all at once). ``end_ms`` of quiet ends the caller's turn;
    ``barge_ms`` of speech during a reply interrupts it. ``ping_ms`` > 0 pings that often.
    ``api_key``: required as ``xi-api-key`` (or through a signed URL). ``fault`` injects one
    bad message into the first reply (see :meth:`_fault_message`); ``stale_after_interrupt``,
    ``complete_event`` and ``tool_call`` are described where they are set."""

    path = "/v1/convai/conversation"
    shutdown_timeout = 5.0

    def __init__(
        self,
        reply: Speech,
        *,
        greeting: Speech | None = None,
        input_format: str = "pcm_16000",
        output_format: str = "pcm_16000",
        greeting_ms: int = 150,
        think_ms: int = 250,
        chunk_ms: int = 100,
        pace: float = 1.0,
        end_ms: int = 500,
        barge_ms: int = 100,
        ping_ms: int = 0,
        api_key: str | None = None,
        fault: str | None = None,
        transcripts: tuple[str, ...] = ("(caller speech)",),
        stale_after_interrupt: int = 0,
        complete_event: bool = False,
        tool_call: bool = False,
    ) -> None:
        self.reply = reply
        self.greeting = greeting
        self.input_format = input_format
        self.output_format = output_format
        self.greeting_ms = greeting_ms
        self.think_ms = think_ms
        self.chunk_ms = chunk_ms
        self.pace = pace
        self.end_ms = end_ms
        self.barge_ms = barge_ms
        self.ping_ms = ping_ms
        self.api_key = api_key
        self.fault = fault
        self.transcripts = transcripts
        #: audio messages of the cut reply still sent after the interruption (in flight)
        self.stale_after_interrupt = stale_after_interrupt
        #: end each reply with agent_response_complete (an agent that lists it in its
        #: client_events; the SDK reads only its type, so only the type is sent)
        self.complete_event = complete_event
        #: the first reply to the caller asks for a client tool first
        self.tool_call = tool_call
        self.conversations: list[Conversation] = []
        #: server messages that failed the SDK's checks (a bug of this server)
        self.sent_rejected: list[str] = []
        #: injected faults: (message, why the SDK rejects it)
        self.injected: list[tuple[Any, str | None]] = []
        self.signatures: set[str] = set()
        self.refused: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.path, self.handler)
        app.router.add_get(self.path + "/get-signed-url", self.signed_url)

    # -- HTTP ---------------------------------------------------------------------------

    async def signed_url(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("xi-api-key") != self.api_key:
            self.refused.append("get-signed-url without the key")
            return web.json_response({"detail": "invalid api key"}, status=401)
        agent = request.query.get("agent_id")
        if not agent:
            return web.json_response({"detail": "agent_id is required"}, status=422)
        sig = secrets.token_urlsafe(16)
        self.signatures.add(sig)
        url = f"ws://127.0.0.1:{self.port}{self.path}?agent_id={agent}&conversation_signature={sig}"
        return web.json_response({"signed_url": url})

    def _authorised(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        if request.headers.get("xi-api-key") == self.api_key:
            return True
        sig = request.query.get("conversation_signature")
        if sig is not None and sig in self.signatures:
            self.signatures.discard(sig)  # one conversation per signature
            return True
        return False

    # -- the conversation ---------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if not request.query.get("agent_id"):
            self.refused.append("no agent_id")
            return web.json_response({"detail": "agent_id is required"}, status=400)
        if not self._authorised(request):
            self.refused.append("not authorised")
            return web.json_response({"detail": "unauthorised"}, status=403)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conv = Conversation(
            conversation_id=f"conv_{secrets.token_hex(8)}",
            connected_ns=time.monotonic_ns(),
            query=dict(request.query),
            headers=dict(request.headers),
        )
        self.conversations.append(conv)
        session = _Session(self, ws, conv)
        try:
            await session.run()
        finally:
            await session.stop()
        return ws


class _Session:
    """One conversation's state: the VAD, the reply task, the pings."""

    def __init__(self, server: ElevenLabsServer, ws: web.WebSocketResponse, conv: Conversation):
        self.s = server
        self.ws = ws
        self.conv = conv
        self.reader = SdkReader()
        self.in_enc, self.in_rate = parse_format(server.input_format)
        #: the next event id (user_transcript's, its reply's; a tentative transcript
        #: carries the id its turn's user_transcript will have)
        self.next_id = 1
        #: the session sample up to which tentative transcripts were sent
        self.tentative_at = 0
        self.frame = self.in_rate // 100  # 10 ms
        self.pending = np.zeros(0, dtype=np.float32)
        self.pending_start = 0  # session sample of pending[0]
        self.speech_start: int | None = None
        self.last_loud_end: int | None = None
        self.last_loud_ns: int | None = None
        self.loud_run = 0
        self.barge_onset: tuple[int, int] | None = None
        self.replying: asyncio.Task[None] | None = None
        self.current: Reply | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.turns = 0
        self.last_rtt_ms: int | None = None
        self.faulted = False

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    async def send(self, msg: dict[str, Any], *, fault: bool = False) -> int:
        why = sdk_rejects(msg, self.reader)
        if fault:
            self.s.injected.append((msg, why))
        elif why is not None:
            self.s.sent_rejected.append(why)
        t = time.monotonic_ns()
        await self.ws.send_str(json.dumps(msg))
        return t

    async def run(self) -> None:
        # the client may send conversation_initiation_client_data first; the API waits a
        # little for it before it starts the conversation
        first: str | None = None
        with contextlib.suppress(TimeoutError):
            m = await asyncio.wait_for(self.ws.receive(), 2.0)
            if m.type.name == "TEXT":
                first = m.data
        if first is not None:
            self.on_message(first, time.monotonic_ns())
        if self.ws.closed:
            return
        meta_fmt = "mp3_44100_128" if self.s.fault == "bad-format" else self.s.output_format
        metadata = {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": self.conv.conversation_id,
                "agent_output_audio_format": meta_fmt,
                "user_input_audio_format": self.s.input_format,
            },
        }
        self.conv.metadata_ns = await self.send(metadata, fault=self.s.fault == "bad-format")
        greeting_text = None
        if self.conv.initiation is not None:
            over = self.conv.initiation.get("conversation_config_override") or {}
            greeting_text = (over.get("agent") or {}).get("first_message")
        if self.s.greeting is not None and greeting_text != "":
            self.replying = asyncio.ensure_future(self.say(self.s.greeting, None))
        if self.s.ping_ms > 0:
            self.tasks.append(asyncio.ensure_future(self.pinger()))
        async for m in self.ws:
            if m.type.name == "TEXT":
                self.on_message(m.data, time.monotonic_ns())
            else:
                self.violation(f"a {m.type.name} message (the API takes JSON text)")

    async def stop(self) -> None:
        for task in [self.replying, *self.tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.reader.close()

    def violation(self, why: str) -> None:
        self.conv.violations.append(why)
        if not self.ws.closed:
            self.tasks.append(
                asyncio.ensure_future(
                    self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why[:120].encode())
                )
            )

    # -- what the client sends ----------------------------------------------------------

    def on_message(self, data: str, t: int) -> None:
        why = client_violation(data, self.in_enc, set(self.conv.pings))
        if why is not None:
            self.violation(why)
            return
        msg = json.loads(data)
        kind = msg.get("type", "user_audio_chunk")
        self.conv.client_kinds[kind] += 1
        if kind == "conversation_initiation_client_data":
            if self.conv.initiation is not None or self.conv.metadata_ns is not None:
                self.violation("conversation_initiation_client_data after the conversation began")
                return
            self.conv.initiation, self.conv.initiation_ns = msg, t
        elif kind == "pong":
            eid = msg["event_id"]
            self.conv.pongs.setdefault(eid, t)
            self.last_rtt_ms = round((t - self.conv.pings[eid]) / MS)
        elif kind == "client_tool_result":
            self.conv.tool_results.append(msg)
        elif kind == "user_audio_chunk":
            raw = base64.b64decode(msg["user_audio_chunk"])
            x = (
                np.frombuffer(codecs.decode(raw, self.in_enc), dtype="<i2").astype(np.float32)
                / 32768
            )
            self.hear(x, t)

    def hear(self, x: np.ndarray, t: int) -> None:
        """Run the VAD over the received samples (10 ms frames, session sample numbers)."""
        chunk_end = self.conv.samples_in + x.size
        self.conv.samples_in = chunk_end
        self.pending = np.concatenate([self.pending, x])
        ns_per = 1_000_000_000 / self.in_rate
        while self.pending.size >= self.frame:
            f, self.pending = self.pending[: self.frame], self.pending[self.frame :]
            a = self.pending_start
            self.pending_start += self.frame
            loud = float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) > SPEECH_RMS
            # when the frame's samples were spoken: the chunk's arrival less what followed
            end_ns = t - round((chunk_end - (a + self.frame)) * ns_per)
            if loud:
                self.loud_run += 1
                if self.speech_start is None:
                    self.speech_start = a
                self.last_loud_end = a + self.frame
                self.last_loud_ns = end_ns
                self.barge_check(a, end_ns)
                self.tentative(a + self.frame)
            else:
                self.loud_run = 0
                self.barge_onset = None
                if (
                    self.speech_start is not None
                    and self.last_loud_end is not None
                    and (a + self.frame - self.last_loud_end) * 1000 >= self.s.end_ms * self.in_rate
                ):
                    self.turn_over()

    def tentative(self, at: int) -> None:
        """Every 500 ms of the caller's speech, the transcript so far (the API's default
        client events include ``tentative_user_transcript``)."""
        assert self.speech_start is not None
        if at - max(self.speech_start, self.tentative_at) < self.in_rate // 2:
            return
        self.tentative_at = at
        msg = {
            "type": "tentative_user_transcript",
            "tentative_user_transcription_event": {
                "user_transcript": "…",
                "event_id": self.next_id,
            },
        }
        self.tasks.append(asyncio.ensure_future(self.send(msg)))

    def barge_check(self, a: int, end_ns: int) -> None:
        r = self.current
        if r is None or r.done or r.barge_sample is not None:
            return
        if self.replying is None or self.replying.done():
            return
        if self.loud_run == 1:
            start_ns = end_ns - self.frame * 1_000_000_000 // self.in_rate
            self.barge_onset = (a, start_ns)
        if self.loud_run * 10 >= self.s.barge_ms and self.barge_onset is not None:
            r.barge_sample, r.barge_ns = self.barge_onset
            self.replying.cancel()
            self.tasks.append(asyncio.ensure_future(self.interrupt(r)))

    async def interrupt(self, r: Reply) -> None:
        assert self.replying is not None
        with contextlib.suppress(BaseException):
            await self.replying
        r.done = True
        r.interruption_ns = await self.send(
            {"type": "interruption", "interruption_event": {"event_id": r.event_id}}
        )
        # what the agent said before it was cut (the text, cut where its audio was)
        said = self.s.reply.text if self.current is r else ""
        n = sum(r.chunk_samples)
        full = len(self.s.reply.samples) * r.rate // self.s.reply.rate
        cut = said[: len(said) * n // max(1, full)]
        r.correction_ns = await self.send(
            {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": said,
                    "corrected_agent_response": cut,
                    "event_id": r.event_id,
                },
            }
        )
        for _ in range(self.s.stale_after_interrupt):
            piece = bytes(r.rate * self.s.chunk_ms // 1000 * 2)
            msg = {
                "type": "audio",
                "audio_event": {
                    "audio_base_64": base64.b64encode(piece).decode(),
                    "event_id": r.event_id,
                },
            }
            r.stale_sent_ns.append(await self.send(msg))

    def turn_over(self) -> None:
        assert self.speech_start is not None and self.last_loud_end is not None
        r = Reply(
            event_id=self.new_id(),
            rate=0,
            speech_start=self.speech_start,
            speech_end=self.last_loud_end,
            speech_end_ns=self.last_loud_ns,
            decided_ns=time.monotonic_ns(),
        )
        self.speech_start = self.last_loud_end = self.last_loud_ns = None
        if self.replying is not None and not self.replying.done():
            return  # still speaking (a short sound): the turn is not taken
        self.turns += 1
        self.replying = asyncio.ensure_future(self.say(self.s.reply, r))

    # -- what the agent says ------------------------------------------------------------

    async def say(self, speech: Speech, r: Reply | None) -> None:
        if r is None:  # the greeting
            r = Reply(event_id=self.new_id(), rate=0)
            self.conv.greeting = r
            await asyncio.sleep(self.s.greeting_ms / 1000)
        else:
            self.conv.replies.append(r)
            text = self.s.transcripts[(self.turns - 1) % len(self.s.transcripts)]
            r.transcript_ns = await self.send(
                {
                    "type": "user_transcript",
                    "user_transcription_event": {"user_transcript": text, "event_id": r.event_id},
                }
            )
            if self.s.tool_call and self.turns == 1:
                r.tool_call_id = f"call_{r.event_id}"
                await self.send(
                    {
                        "type": "client_tool_call",
                        "client_tool_call": {
                            "tool_name": "lookup_order",
                            "tool_call_id": r.tool_call_id,
                            "parameters": {"order": "42"},
                            "event_id": r.event_id,
                        },
                    }
                )
            await asyncio.sleep(self.s.think_ms / 1000)
        self.current = r
        data, rate, width = speech.encoded(self.s.output_format)
        r.rate = rate
        r.response_ns = await self.send(
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": speech.text, "event_id": r.event_id},
            }
        )
        step = rate * self.s.chunk_ms // 1000 * width
        t0 = time.monotonic_ns()
        for k, off in enumerate(range(0, len(data), step)):
            due = t0 + round(k * self.s.chunk_ms * MS * self.s.pace)
            wait = due - time.monotonic_ns()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            piece = data[off : off + step]
            msg, fault = self._fault_message(piece, r)
            sent = await self.send(msg, fault=fault)
            r.audio_sent_ns.append(sent)
            r.chunk_samples.append(len(piece) // width)
        if self.s.complete_event:
            r.complete_ns = await self.send({"type": "agent_response_complete"})
        r.done = True

    def _fault_message(self, piece: bytes, r: Reply) -> tuple[dict[str, Any], bool]:
        """The audio message for ``piece``, or (once, in the first reply to the caller) the
        injected fault: ``audio-no-event-id``, ``odd-audio`` (a byte short of whole
        samples), ``unknown-event``, ``no-type``, ``bad-base64``."""
        msg: dict[str, Any] = {
            "type": "audio",
            "audio_event": {
                "audio_base_64": base64.b64encode(piece).decode(),
                "event_id": r.event_id,
            },
        }
        f = self.s.fault
        if self.faulted or f in (None, "bad-format") or r is self.conv.greeting:
            return msg, False
        self.faulted = True
        if f == "audio-no-event-id":
            del msg["audio_event"]["event_id"]
        elif f == "odd-audio":
            msg["audio_event"]["audio_base_64"] = base64.b64encode(piece[:-1]).decode()
        elif f == "unknown-event":
            return {"type": "surprise_event", "surprise_event": {"x": 1}}, True
        elif f == "no-type":
            return {"audio_event": msg["audio_event"]}, True
        elif f == "bad-base64":
            msg["audio_event"]["audio_base_64"] = "@@not base64@@"
        else:
            raise AssertionError(f"unknown fault {f!r}")
        return msg, True

    async def pinger(self) -> None:
        for eid in itertools.count(1):
            await asyncio.sleep(self.s.ping_ms / 1000)
            self.conv.ping_ms[eid] = self.last_rtt_ms
            self.conv.pings[eid] = await self.send(
                {"type": "ping", "ping_event": {"event_id": eid, "ping_ms": self.last_rtt_ms}}
            )


def client_violation(data: str, in_enc: str, pings: set[int]) -> str | None:
    """Why a client message breaks the client-side shapes (module doc); None when it is
    one of them."""
    try:
        msg = json.loads(data)
    except ValueError:
        return f"not JSON: {data[:60]!r}"
    if not isinstance(msg, dict):
        return "not a JSON object"
    if "user_audio_chunk" in msg:
        if set(msg) != {"user_audio_chunk"}:
            return f"user_audio_chunk with other keys {sorted(set(msg) - {'user_audio_chunk'})}"
        try:
            raw = base64.b64decode(msg["user_audio_chunk"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            return "user_audio_chunk is not base64"
        if len(raw) % codecs.BYTES_PER_SAMPLE[in_enc]:
            return f"user_audio_chunk of {len(raw)} bytes is not whole {in_enc} samples"
        return None
    kind = msg.get("type")
    if kind == "conversation_initiation_client_data":
        body = {k: v for k, v in msg.items() if k != "type"}
        try:
            ConversationInitiationClientDataRequestInput.model_validate(body)
        except Exception as exc:  # pydantic's ValidationError: the point of the check
            return f"conversation_initiation_client_data: {exc}".splitlines()[0]
        source = (body.get("source_info") or {}).get("source")
        if source is not None and source not in SOURCES:
            return f"source_info.source {source!r} is not one of the API's sources"
        return None
    if kind == "pong":
        eid = msg.get("event_id")
        if set(msg) != {"type", "event_id"} or not isinstance(eid, int) or isinstance(eid, bool):
            return f"pong is not {{type, event_id: int}}: {data[:80]}"
        if eid not in pings:
            return f"pong for event {eid}, which no ping had"
        return None
    if kind == "client_tool_result":
        ok = (
            isinstance(msg.get("tool_call_id"), str)
            and isinstance(msg.get("result"), str)
            and isinstance(msg.get("is_error"), bool)
        )
        return None if ok else "client_tool_result without tool_call_id, result, is_error"
    return f"unknown client message {str(kind)[:40]!r}"
