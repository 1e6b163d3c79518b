"""Phone carriers' media streams: voiceaudit plays the carrier toward a bot's WebSocket.

A carrier (Twilio, Telnyx, Plivo, Exotel, Vonage) answers a phone call, opens a WebSocket to
the bot and streams the call's audio both ways; the bot's audio is played to the caller by
the carrier, at real time, from a buffer of its own. Here voiceaudit is the carrier: it
connects to the bot (``run --target ws://host/path --protocol twilio``), sends the
dialect's ``connected``/``start`` messages, the caller's speech as 20 ms media frames
(silence between turns: the line is continuous), DTMF, mark echoes and ``stop``; and it
plays what the bot sends through :class:`~voiceaudit.targets.carrier_model.CarrierModel`,
so a reply sent ten times faster than real time is heard at real time, a mark is echoed
when the audio before it has played and a clear cuts the playout. Every dialect is a thin
variant of :class:`CarrierSession` (docs/phone.md has each one's messages).

What the session reports (docs/phone.md, "What is reported"):

- ``reply_audio(t_play, pcm, rate, wire_bytes, queued_ns)`` for every piece of <= 20 ms of
  the bot's audio once it HAS PLAYED, at its play start (+ ``fixed_delay_ms``), with how long
  it waited in the carrier's buffer; a piece a clear cut is reported truncated;
- ``reply_done`` when the buffer has drained and no audio came for ``quiet_ms`` after that
  (at the end of the last sample played);
- marks ``carrier.start``, ``carrier.mark``, ``carrier.mark_echo``, ``carrier.clear``,
  ``carrier.dtmf``, ``carrier.wrong_stream``, ``carrier.chunk_rule`` (Exotel) and
  ``unknown_event``; audio it cannot use fails the turn (``protocol: …``).

The release task sleeps until the model's next event (a piece's end, a mark's echo, the
end of ``quiet_ms``); the times it reports are the model's, never its own wake-up time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import Target, TargetConfig, TargetSink, cancel_quietly
from voiceaudit.targets.carrier_model import CarrierModel, Echo, Played
from voiceaudit.targets.wsbase import TLS_OPTIONS, WebSocketSession, dict_at, tls_context

NS_PER_MS = 1_000_000
#: outbound media frames: exactly 20 ms
FRAME_MS = 20
FRAME_NS = FRAME_MS * NS_PER_MS
#: when the probe has sent nothing for this long (and no turn's speech is going out), the
#: session sends 20 ms of silence on its own: the line is continuous
IDLE_FILL_NS = 40 * NS_PER_MS
#: the keys of a telephone keypad (DTMF)
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: Exotel: the bot's media chunks must be multiples of 320 bytes and at least 100 ms
EXOTEL_CHUNK_MULTIPLE = 320
EXOTEL_MIN_CHUNK = 1600

_COMMON_OPTIONS: dict[str, str] = {
    "param.NAME": "a custom parameter NAME=VALUE sent in the start message (repeatable)",
    "fixed_delay_ms": "the carrier's own fixed delays (jitter buffer, network to the "
    "handset), added to every play time (default 0)",
    "quiet_ms": "the reply is done when the buffer has drained and no audio came for "
    "this long after (default 500)",
    **TLS_OPTIONS,
}
_ID_OPTIONS: dict[str, str] = {
    "stream_id": "the stream id sent in start (default: a realistic random one)",
    "call_id": "the call id sent in start (default: a realistic random one)",
    "account_id": "the account id sent in start (default: a realistic random one)",
}
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class CarrierOptions:
    """The ``-o`` options of a carrier target, checked."""

    params: dict[str, str]
    fixed_delay_ms: int
    quiet_ms: int
    tracks: str
    rate: int
    stream_id: str | None
    call_id: str | None
    account_id: str | None


def parse_options(target: type[Target], options: dict[str, str]) -> CarrierOptions:
    """Check ``options`` against ``target.options``; UsageError (one line, the known names
    as the hint) for an unknown or bad one."""
    known = target.options
    params: dict[str, str] = {}
    for name, value in options.items():
        if name.startswith("param."):
            pname = name[len("param.") :]
            if "param.NAME" not in known or not _PARAM_NAME.match(pname):
                raise UsageError(
                    f"bad target option {name!r} for {target.protocol}: a parameter is "
                    "param.NAME=VALUE, NAME of letters, digits, _ . : -"
                )
            params[pname] = value
        elif name not in known:
            raise UsageError(
                f"unknown target option {name!r} for {target.protocol} (known: "
                + ", ".join(sorted(known))
                + ")"
            )

    def whole(name: str, default: int, low: int, high: int) -> int:
        raw = options.get(name)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            v = low - 1
        if not low <= v <= high:
            raise UsageError(
                f"target option {name}={raw!r} must be a whole number from {low} to {high}"
            )
        return v

    tracks = options.get("tracks", "inbound")
    if tracks not in ("inbound", "both"):
        raise UsageError(f"target option tracks={tracks!r} must be inbound or both")
    rate = whole("rate", 16000 if "rate" in known else codecs.G711_RATE, 8000, 16000)
    if rate not in (8000, 16000):
        raise UsageError(f"target option rate={rate} must be 8000 or 16000")
    ids = {k: options.get(k) for k in ("stream_id", "call_id", "account_id")}
    for k, v in ids.items():
        if v is not None and not _PARAM_NAME.match(v):
            raise UsageError(f"target option {k}={v!r}: letters, digits, _ . : - only")
    return CarrierOptions(
        params=params,
        fixed_delay_ms=whole("fixed_delay_ms", 0, 0, 60_000),
        quiet_ms=whole("quiet_ms", 500, 1, 60_000),
        tracks=tracks,
        rate=rate,
        stream_id=ids["stream_id"],
        call_id=ids["call_id"],
        account_id=ids["account_id"],
    )


def _hex_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class _Media:
    pcm16: bytes
    rate: int
    wire_bytes: int


@dataclass(frozen=True)
class _Mark:
    name: str
    data: Any = None


class _Clear:
    pass


#: what a dialect's parser makes of one bot message
BotMessage = _Media | _Mark | _Clear | None


class CarrierSession(WebSocketSession):
    """One call: the carrier side of a media stream (module docstring). A dialect overrides
    the message builders (``handshake``, ``media_message``, ``dtmf_message``,
    ``echo_message``, ``clear_ack``, ``stop_message``) and the parser ``parse_text``."""

    speaks_first = True
    #: the dialect's name (``carrier.start``'s ``dialect``)
    dialect: ClassVar[str] = "twilio"
    #: the stream's audio on the wire both ways: ``pcmu`` (G.711 μ-law) or ``l16``
    encoding: ClassVar[str] = "pcmu"
    #: the key of the stream id in the bot's messages (None: the dialect has none)
    stream_key: ClassVar[str | None] = "streamSid"

    def __init__(self, config: TargetConfig, sink: TargetSink, opts: CarrierOptions) -> None:
        super().__init__(config, sink)
        self.opts = opts
        self.rate = opts.rate if self.encoding == "l16" else codecs.G711_RATE
        self.input_rate = self.rate
        self.stream_id = opts.stream_id or self.new_stream_id()
        self.call_id = opts.call_id or self.new_call_id()
        self.account_id = opts.account_id or self.new_account_id()
        self.model = CarrierModel(fixed_delay_ns=opts.fixed_delay_ms * NS_PER_MS)
        self.quiet_ns = opts.quiet_ms * NS_PER_MS
        self._frame_samples = self.rate * FRAME_MS // 1000
        self._pending = bytearray()
        self._seq = 0
        self._chunk = 0
        self._start_ns: int | None = None
        self._fill = 0
        self._hold_fill = False
        self._last_probe_ns = 0
        self._next_fill_ns = 0
        self._wake = asyncio.Event()
        self._outbox: deque[Echo] = deque()
        self._acks: deque[str | bytes] = deque()
        self._played_since_done = False
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_chunk = False
        self._stopped = False
        #: Twilio tracks=both: the outbound track's own chunk numbers
        self._out_chunk = 0

    # -- ids (realistic random ones; a dialect may override) --------------------------------

    def new_stream_id(self) -> str:
        return _hex_id("MZ")

    def new_call_id(self) -> str:
        return _hex_id("CA")

    def new_account_id(self) -> str:
        return _hex_id("AC")

    # -- dialect hooks ------------------------------------------------------------------

    def next_seq(self) -> int:
        """The next sequence number of a message the carrier sends."""
        self._seq += 1
        return self._seq

    def handshake(self) -> list[dict[str, Any]]:
        """The messages sent on connecting, the ``start`` one last."""
        raise NotImplementedError

    def media_message(self, frame: bytes, chunk: int, ts_ms: int) -> str | bytes:
        """One 20 ms frame of the caller's audio (16-bit PCM at the stream's rate)."""
        raise NotImplementedError

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        raise NotImplementedError

    def echo_message(self, echo: Echo) -> dict[str, Any]:
        """The carrier's echo of a mark."""
        raise NotImplementedError

    def clear_ack(self) -> dict[str, Any] | None:
        """What the carrier answers a clear with (None: nothing but the mark echoes)."""
        return None

    def stop_message(self) -> dict[str, Any] | None:
        """The message sent when the call ends (None: the socket just closes)."""
        return None

    def parse_text(self, t_ns: int, data: str) -> BotMessage:
        """One text message of the bot's: its media, mark or clear, or None (handled or
        failed here)."""
        raise NotImplementedError

    def wire_payload(self, frame: bytes) -> str:
        """The base64 of a frame in the stream's encoding."""
        raw = codecs.encode(frame, "pcmu") if self.encoding == "pcmu" else frame
        return base64.b64encode(raw).decode("ascii")

    def decode_payload(self, kind: str, value: Any, wire: int) -> _Media | None:
        """A base64 payload of the stream's encoding as 16-bit PCM; None, having failed the
        turn, when it is not base64 (or odd-length 16-bit PCM)."""
        raw = self.b64_field(kind, value, "payload")
        if raw is None:
            return None
        if self.encoding == "pcmu":
            return _Media(codecs.decode(raw, "pcmu"), self.rate, wire)
        if len(raw) % 2:
            self.sink.fail(
                f"protocol: {kind} payload of odd length ({len(raw)} bytes) for 16-bit PCM"
            )
            return None
        return _Media(raw, self.rate, wire)

    def same_stream(self, t_ns: int, kind: str, ev: dict[str, Any]) -> bool:
        """False (marked ``carrier.wrong_stream``: the message is ignored) when the message
        names another stream."""
        if self.stream_key is None:
            return True
        sid = ev.get(self.stream_key)
        if sid is None or sid == self.stream_id:
            return True
        self.sink.mark(
            "carrier.wrong_stream", "other", t_ns, {"event": kind, "stream": str(sid)[:80]}
        )
        return False

    def unknown(self, t_ns: int, kind: str) -> None:
        self.sink.mark("unknown_event", "other", t_ns, {"raw": kind[:80]})

    # -- connecting ---------------------------------------------------------------------

    async def open(self) -> None:
        await super().open()
        msgs = self.handshake()
        try:
            for i, msg in enumerate(msgs):
                t = time.monotonic_ns()
                await self.send_json(msg)
                if i == len(msgs) - 1:
                    self._start_ns = t
        except (ConnectionError, aiohttp.ClientError) as exc:
            await self.close()
            raise TargetError(f"connection lost during the handshake: {exc}") from None
        assert self._start_ns is not None
        self.sink.mark(
            "carrier.start",
            "session",
            self._start_ns,
            {
                "dialect": self.dialect,
                "stream_id": self.stream_id,
                "call_id": self.call_id,
                "encoding": self.encoding,
                "rate": self.rate,
                "fixed_delay_ms": self.opts.fixed_delay_ms,
            },
        )
        self._next_fill_ns = self._start_ns + FRAME_NS
        self._tasks = [
            asyncio.create_task(self._release_loop()),
            asyncio.create_task(self._fill_loop()),
        ]

    def media_start_ns(self) -> int | None:
        return self._start_ns

    # -- the caller's side --------------------------------------------------------------

    async def _send_frame(self, frame: bytes) -> None:
        self._chunk += 1
        msg = self.media_message(frame, self._chunk, (self._chunk - 1) * FRAME_MS)
        ws = self.live()
        if isinstance(msg, bytes):
            await ws.send_bytes(msg)
        else:
            await ws.send_str(msg)

    async def send_audio(self, pcm16: bytes) -> None:
        self.live()
        self._last_probe_ns = time.monotonic_ns()
        self._next_fill_ns = self._last_probe_ns + IDLE_FILL_NS
        self._pending += pcm16
        fb = 2 * self._frame_samples
        while len(self._pending) >= fb:
            frame = bytes(self._pending[:fb])
            del self._pending[:fb]
            await self._send_frame(frame)

    def stream_fill_samples(self) -> int:
        return self._fill

    async def start_turn(self, turn: int) -> None:
        self._hold_fill = True

    async def speech_ended(self) -> None:
        self._release_fill()

    async def end_turn(self) -> None:
        self._release_fill()

    def _release_fill(self) -> None:
        if self._hold_fill:
            self._hold_fill = False
            self._next_fill_ns = max(self._next_fill_ns, time.monotonic_ns() + IDLE_FILL_NS)

    async def _fill_loop(self) -> None:
        """Silence on the 20 ms media clock whenever the probe sends nothing (not while a
        turn's speech is going out), counted in :meth:`stream_fill_samples`."""
        fb = 2 * self._frame_samples
        while True:
            delay = (self._next_fill_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            now = time.monotonic_ns()
            if self._hold_fill:
                self._next_fill_ns = now + FRAME_NS
                continue
            pad = fb - len(self._pending)
            frame = bytes(self._pending) + bytes(pad)
            self._pending.clear()
            self._fill += pad // 2
            self._next_fill_ns += FRAME_NS
            if self._next_fill_ns <= now:  # the loop fell behind: no burst to catch up
                self._next_fill_ns = now + FRAME_NS
            try:
                await self._send_frame(frame)
            except (TargetError, ConnectionError, RuntimeError):
                return

    async def send_dtmf(self, digit: str) -> None:
        if digit not in DTMF_DIGITS:
            raise TargetError(f"not a DTMF key: {digit!r} (0-9, *, #, A-D)")
        msg = self.dtmf_message(digit)
        t = time.monotonic_ns()
        await self.send_json(msg)
        self.sink.mark("carrier.dtmf", "input", t, {"digit": digit})

    # -- the bot's side -----------------------------------------------------------------

    def on_text(self, t_ns: int, data: str) -> None:
        self.handle(t_ns, self.parse_text(t_ns, data))

    def handle(self, t_ns: int, msg: BotMessage) -> None:
        """Feed one parsed bot message, arrived at ``t_ns``, to the model."""
        if msg is None:
            return
        if isinstance(msg, _Media):
            if msg.pcm16:
                self.model.media(t_ns, msg.pcm16, msg.rate, msg.wire_bytes)
        elif isinstance(msg, _Mark):
            queued = self.model.queued_ns(max(t_ns, self.model.horizon_ns))
            self.model.mark(t_ns, msg.name, msg.data)
            self.sink.mark(
                "carrier.mark",
                "transport",
                t_ns,
                {"name": msg.name, "queued_ms": round(queued / NS_PER_MS, 3)},
            )
        else:
            self._flush(self.model.advance(t_ns))
            c = self.model.clear(t_ns)
            attrs: dict[str, Any] = {
                "dropped_ms": round(c.dropped_ns / NS_PER_MS, 3),
                "playing": c.playing,
                "marks_echoed": len(c.echoed),
            }
            if c.t_ns != t_ns:
                # handled after audio past its arrival was released: it cut from there
                attrs["late_ns"] = c.t_ns - t_ns
            self.sink.mark("carrier.clear", "transport", t_ns, attrs)
            self._outbox.extend(c.echoed)
            ack = self.clear_ack()
            if ack is not None:
                self._acks.append(json.dumps(ack, separators=(",", ":")))
        self._wake.set()

    def _flush(self, events: list[Played | Echo]) -> None:
        for e in events:
            if isinstance(e, Played):
                self._played_since_done = True
                self.sink.reply_audio(
                    e.t_play_ns, e.pcm16, e.rate, e.wire_bytes, queued_ns=e.queued_ns
                )
                self.on_played(e)
            else:
                self._outbox.append(e)

    def on_played(self, p: Played) -> None:
        """A piece has played (Twilio ``tracks=both`` forks it back to the bot)."""

    async def _send_out(self) -> None:
        ws = self.live()
        while self._outbox:
            e = self._outbox.popleft()
            t = time.monotonic_ns()
            await ws.send_str(json.dumps(self.echo_message(e), separators=(",", ":")))
            self.sink.mark(
                "carrier.mark_echo",
                "transport",
                e.t_ns,
                {"name": e.name, "mark_ns": e.mark_ns, "cleared": e.cleared, "sent_ns": t},
            )
        while self._acks:
            a = self._acks.popleft()
            await (ws.send_bytes(a) if isinstance(a, bytes) else ws.send_str(a))

    async def _release_loop(self) -> None:
        """Wake at the model's next event, let the reader hand on what has arrived, then
        release what is due: played pieces to the sink, mark echoes to the bot; and the
        reply's end once the buffer has drained for ``quiet_ms`` (and the fixed delay has
        passed: the caller has heard it end)."""
        try:
            while True:
                await asyncio.sleep(0)  # what arrived before now is handled first
                now = time.monotonic_ns()
                self._flush(self.model.advance(now))
                await self._send_out()
                due = self.model.next_due_ns()
                if self._played_since_done and not self.model.pending():
                    # and not before the caller has heard it end (the fixed delay)
                    done_at = self.model.end_ns + max(self.quiet_ns, self.model.fixed_delay_ns)
                    if now >= done_at:
                        self._played_since_done = False
                        self.sink.reply_done(self.model.end_ns + self.model.fixed_delay_ns)
                    else:
                        due = done_at if due is None else min(due, done_at)
                self._wake.clear()
                if self._outbox or self._acks:
                    continue
                timer = None
                if due is not None:
                    delay = (due - time.monotonic_ns()) / 1e9
                    if delay <= 0:
                        continue
                    # a timer, not wait_for: no task made every 20 ms of every session
                    timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except (TargetError, ConnectionError, RuntimeError):
            return

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        for task in self._tasks:
            await cancel_quietly(task)
        self._tasks = []
        stop = self.stop_message()
        if stop is not None and not self._stopped and self._ws is not None:
            self._stopped = True
            with contextlib.suppress(Exception):
                if not self._ws.closed:
                    await asyncio.wait_for(self.send_json(stop), 2.0)
        await super().close()


# -- the dialects ---------------------------------------------------------------------------


class TwilioSession(CarrierSession):
    """Twilio Media Streams (bidirectional ``<Connect><Stream>``): camelCase, ids
    ``MZ…``/``CA…``/``AC…``, sequence numbers, chunks and timestamps as strings."""

    dialect = "twilio"

    def _base(self, event: str) -> dict[str, Any]:
        return {"event": event, "sequenceNumber": str(self.next_seq()), "streamSid": self.stream_id}

    def handshake(self) -> list[dict[str, Any]]:
        tracks = ["inbound", "outbound"] if self.opts.tracks == "both" else ["inbound"]
        start = self._base("start")
        start["start"] = {
            "accountSid": self.account_id,
            "streamSid": self.stream_id,
            "callSid": self.call_id,
            "tracks": tracks,
            "customParameters": dict(self.opts.params),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        return [{"event": "connected", "protocol": "Call", "version": "1.0.0"}, start]

    def media_message(self, frame: bytes, chunk: int, ts_ms: int) -> str:
        return self._media("inbound", frame, chunk, ts_ms)

    def _media(self, track: str, frame: bytes, chunk: int, ts_ms: int) -> str:
        msg = self._base("media")
        msg["media"] = {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(ts_ms),
            "payload": self.wire_payload(frame),
        }
        return json.dumps(msg, separators=(",", ":"))

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        msg = self._base("dtmf")
        msg["dtmf"] = {"track": "inbound_track", "digit": digit}
        return msg

    def echo_message(self, echo: Echo) -> dict[str, Any]:
        msg = self._base("mark")
        msg["mark"] = {"name": echo.name}
        return msg

    def stop_message(self) -> dict[str, Any]:
        msg = self._base("stop")
        msg["stop"] = {"accountSid": self.account_id, "callSid": self.call_id}
        return msg

    def on_played(self, p: Played) -> None:
        if self.opts.tracks != "both" or self._start_ns is None:
            return
        # the outbound track: what the caller hears, forked back to the stream
        ts = max(0, (p.t_play_ns - self.model.fixed_delay_ns - self._start_ns) // NS_PER_MS)
        self._out_chunk += 1
        msg = self._media("outbound", p.pcm16, self._out_chunk, ts)
        ws = self._ws
        if ws is not None and not ws.closed:
            self._acks.append(msg)

    def parse_text(self, t_ns: int, data: str) -> BotMessage:
        got = self.read_event(data, key="event")
        if got is None:
            return None
        ev, kind = got
        if kind in ("media", "mark", "clear") and not self.same_stream(t_ns, kind, ev):
            return None
        if kind == "media":
            payload = dict_at(ev, "media").get("payload")
            return self.decode_payload(kind, payload, len(data))
        if kind == "mark":
            name = dict_at(ev, "mark").get("name")
            if not isinstance(name, str):
                self.sink.fail("protocol: mark without a name")
                return None
            return _Mark(name)
        if kind == "clear":
            return _Clear()
        self.unknown(t_ns, kind)
        return None


class TelnyxSession(TwilioSession):
    """Telnyx media streaming: Twilio's messages with snake_case ids (``stream_id``,
    ``sequence_number``), ``call_control_id``, ``media_format`` ``PCMU``."""

    dialect = "telnyx"
    stream_key = "stream_id"

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    def new_call_id(self) -> str:
        return "v3:" + secrets.token_urlsafe(24)

    def new_account_id(self) -> str:
        return str(uuid.uuid4())

    def _base(self, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "sequence_number": str(self.next_seq()),
            "stream_id": self.stream_id,
        }

    def handshake(self) -> list[dict[str, Any]]:
        start = self._base("start")
        start["start"] = {
            "user_id": self.account_id,
            "call_control_id": self.call_id,
            "client_state": None,
            "from": "+15550100000",
            "to": "+15550100001",
            "custom_parameters": dict(self.opts.params),
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        }
        return [{"event": "connected", "version": "1.0.0"}, start]

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        msg = self._base("dtmf")
        msg["dtmf"] = {"digit": digit}
        return msg

    def stop_message(self) -> dict[str, Any]:
        msg = self._base("stop")
        msg["stop"] = {"user_id": self.account_id, "call_control_id": self.call_id}
        return msg


class PlivoSession(CarrierSession):
    """Plivo audio streams (``<Stream bidirectional="true">``): ``start`` then ``media``;
    the bot's ``playAudio``, ``checkpoint`` (echoed ``playedStream``) and ``clearAudio``
    (answered ``clearedAudio``)."""

    dialect = "plivo"
    stream_key = "streamId"

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    def new_call_id(self) -> str:
        return str(uuid.uuid4())

    def new_account_id(self) -> str:
        return "MA" + secrets.token_hex(9).upper()

    def handshake(self) -> list[dict[str, Any]]:
        return [
            {
                "event": "start",
                "sequenceNumber": self.next_seq(),
                "start": {
                    "callId": self.call_id,
                    "streamId": self.stream_id,
                    "accountId": self.account_id,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                },
                "extra_headers": json.dumps(self.opts.params, separators=(",", ":")),
            }
        ]

    def media_message(self, frame: bytes, chunk: int, ts_ms: int) -> str:
        msg = {
            "event": "media",
            "sequenceNumber": self.next_seq(),
            "streamId": self.stream_id,
            "media": {
                "track": "inbound",
                "timestamp": str(ts_ms),
                "chunk": chunk,
                "payload": self.wire_payload(frame),
            },
            "extra_headers": json.dumps(self.opts.params, separators=(",", ":")),
        }
        return json.dumps(msg, separators=(",", ":"))

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "sequenceNumber": self.next_seq(),
            "streamId": self.stream_id,
            "dtmf": {"track": "inbound", "digit": digit},
        }

    def echo_message(self, echo: Echo) -> dict[str, Any]:
        return {
            "event": "playedStream",
            "sequenceNumber": self.next_seq(),
            "streamId": self.stream_id,
            "name": echo.name,
        }

    def clear_ack(self) -> dict[str, Any]:
        return {
            "event": "clearedAudio",
            "sequenceNumber": self.next_seq(),
            "streamId": self.stream_id,
        }

    def parse_text(self, t_ns: int, data: str) -> BotMessage:
        got = self.read_event(data, key="event")
        if got is None:
            return None
        ev, kind = got
        if kind in ("playAudio", "checkpoint", "clearAudio") and not self.same_stream(
            t_ns, kind, ev
        ):
            return None
        if kind == "playAudio":
            media = dict_at(ev, "media")
            ctype, rate = media.get("contentType"), media.get("sampleRate")
            if ctype != "audio/x-mulaw" or rate not in (8000, "8000"):
                self.sink.fail(
                    f"protocol: playAudio in {str(ctype)[:40]} at {str(rate)[:10]} Hz, not the "
                    "stream's audio/x-mulaw at 8000 Hz"
                )
                return None
            return self.decode_payload(kind, media.get("payload"), len(data))
        if kind == "checkpoint":
            name = ev.get("name")
            if not isinstance(name, str):
                self.sink.fail("protocol: checkpoint without a name")
                return None
            return _Mark(name)
        if kind == "clearAudio":
            return _Clear()
        self.unknown(t_ns, kind)
        return None


class ExotelSession(CarrierSession):
    """Exotel AgentStream / Voicebot: snake_case, base64 16-bit PCM at 8 kHz both ways; the
    bot's chunks should be multiples of 320 bytes and at least 100 ms
    (``carrier.chunk_rule`` marks the first one that is not)."""

    dialect = "exotel"
    encoding = "l16"
    stream_key = "stream_sid"

    def new_stream_id(self) -> str:
        return secrets.token_hex(16)

    def new_call_id(self) -> str:
        return secrets.token_hex(16)

    def new_account_id(self) -> str:
        return "exotel" + secrets.token_hex(4)

    def _base(self, event: str) -> dict[str, Any]:
        return {"event": event, "sequence_number": self.next_seq(), "stream_sid": self.stream_id}

    def handshake(self) -> list[dict[str, Any]]:
        start = self._base("start")
        start["start"] = {
            "stream_sid": self.stream_id,
            "call_sid": self.call_id,
            "account_sid": self.account_id,
            "from": "+915550100000",
            "to": "+915550100001",
            "custom_parameters": dict(self.opts.params),
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
        }
        return [{"event": "connected"}, start]

    def media_message(self, frame: bytes, chunk: int, ts_ms: int) -> str:
        msg = self._base("media")
        msg["media"] = {
            "chunk": chunk,
            "timestamp": str(ts_ms),
            "payload": self.wire_payload(frame),
        }
        return json.dumps(msg, separators=(",", ":"))

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        msg = self._base("dtmf")
        msg["dtmf"] = {"digit": digit, "duration": "250"}
        return msg

    def echo_message(self, echo: Echo) -> dict[str, Any]:
        msg = self._base("mark")
        msg["mark"] = {"name": echo.name}
        return msg

    def stop_message(self) -> dict[str, Any]:
        msg = self._base("stop")
        msg["stop"] = {
            "call_sid": self.call_id,
            "account_sid": self.account_id,
            "reason": "stopped",
        }
        return msg

    def parse_text(self, t_ns: int, data: str) -> BotMessage:
        got = self.read_event(data, key="event")
        if got is None:
            return None
        ev, kind = got
        if kind in ("media", "mark", "clear") and not self.same_stream(t_ns, kind, ev):
            return None
        if kind == "media":
            m = self.decode_payload(kind, dict_at(ev, "media").get("payload"), len(data))
            if m is not None and not self._warned_chunk:
                n = len(m.pcm16)
                if n % EXOTEL_CHUNK_MULTIPLE or n < EXOTEL_MIN_CHUNK:
                    self._warned_chunk = True
                    self.sink.mark(
                        "carrier.chunk_rule",
                        "other",
                        t_ns,
                        {
                            "bytes": n,
                            "min_bytes": EXOTEL_MIN_CHUNK,
                            "multiple_of": EXOTEL_CHUNK_MULTIPLE,
                        },
                    )
            return m
        if kind == "mark":
            name = dict_at(ev, "mark").get("name")
            if not isinstance(name, str):
                self.sink.fail("protocol: mark without a name")
                return None
            return _Mark(name)
        if kind == "clear":
            return _Clear()
        self.unknown(t_ns, kind)
        return None


class VonageSession(CarrierSession):
    """Vonage Voice API WebSockets (``audio/l16;rate=8000|16000``): the audio is binary
    frames of 16-bit PCM both ways; text is JSON: ``websocket:connected`` first, the bot's
    ``{"action": "clear"}`` (answered ``websocket:cleared``) and ``{"action": "notify",
    "payload": …}`` (echoed ``websocket:notify`` with the payload once the audio before it
    has played), DTMF as ``websocket:dtmf``."""

    dialect = "vonage"
    encoding = "l16"
    stream_key = None

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    def new_call_id(self) -> str:
        return str(uuid.uuid4())

    def handshake(self) -> list[dict[str, Any]]:
        return [
            {
                "event": "websocket:connected",
                "content-type": f"audio/l16;rate={self.rate}",
                **self.opts.params,
            }
        ]

    def media_message(self, frame: bytes, chunk: int, ts_ms: int) -> bytes:
        return frame

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        return {"event": "websocket:dtmf", "digit": digit, "duration": 250}

    def echo_message(self, echo: Echo) -> dict[str, Any]:
        return {"event": "websocket:notify", "payload": echo.data}

    def clear_ack(self) -> dict[str, Any]:
        return {"event": "websocket:cleared"}

    def on_binary(self, t_ns: int, data: bytes) -> None:
        if len(data) % 2:
            self.sink.fail(f"protocol: odd-length 16-bit PCM frame ({len(data)} bytes)")
            return
        self.handle(t_ns, _Media(bytes(data), self.rate, len(data)))

    def parse_text(self, t_ns: int, data: str) -> BotMessage:
        try:
            ev = json.loads(data)
        except ValueError:
            self.sink.fail(f"protocol: text that is not JSON where audio is binary {data[:60]!r}")
            return None
        if not isinstance(ev, dict):
            self.sink.fail(f"protocol: malformed event {data[:80]!r}")
            return None
        action = ev.get("action")
        if action == "clear":
            return _Clear()
        if action == "notify":
            payload = ev.get("payload")
            name = payload.get("name") if isinstance(payload, dict) else None
            if not isinstance(name, str):
                name = json.dumps(payload, separators=(",", ":"))[:80]
            return _Mark(name, payload)
        kind = str(ev.get("event") or action)
        if kind == "media" or isinstance(ev.get("payload") or ev.get("audio"), str):
            self.sink.fail("protocol: audio in a text message where Vonage takes binary frames")
            return None
        self.unknown(t_ns, kind)
        return None


# -- the targets ---------------------------------------------------------------------------


class _CarrierTarget(Target):
    path = "phone"
    schemes = ()
    session_class: ClassVar[type[CarrierSession]]

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        self.opts = parse_options(type(self), dict(config.options))
        tls_context(config)  # a bad ca_file / tls_insecure is a usage error now

    def session(self, sink: TargetSink) -> CarrierSession:
        return self.session_class(self.config, sink, self.opts)


class TwilioTarget(_CarrierTarget):
    """Twilio Media Streams: voiceaudit plays Twilio toward the bot's WebSocket."""

    protocol = "twilio"
    description = "plays Twilio Media Streams (the carrier) toward a phone bot's WebSocket"
    options: ClassVar[dict[str, str]] = {
        **_COMMON_OPTIONS,
        **_ID_OPTIONS,
        "tracks": "inbound (default) or both: start's tracks; with both, what the caller "
        "hears is forked back as outbound media",
    }
    session_class = TwilioSession


class TelnyxTarget(_CarrierTarget):
    """Telnyx media streaming."""

    protocol = "telnyx"
    description = "plays Telnyx media streaming (the carrier) toward a phone bot's WebSocket"
    options: ClassVar[dict[str, str]] = {**_COMMON_OPTIONS, **_ID_OPTIONS}
    session_class = TelnyxSession


class PlivoTarget(_CarrierTarget):
    """Plivo audio streams."""

    protocol = "plivo"
    description = "plays Plivo audio streams (the carrier) toward a phone bot's WebSocket"
    options: ClassVar[dict[str, str]] = {**_COMMON_OPTIONS, **_ID_OPTIONS}
    session_class = PlivoSession


class ExotelTarget(_CarrierTarget):
    """Exotel AgentStream / Voicebot."""

    protocol = "exotel"
    description = "plays Exotel AgentStream (the carrier) toward a phone bot's WebSocket"
    options: ClassVar[dict[str, str]] = {**_COMMON_OPTIONS, **_ID_OPTIONS}
    session_class = ExotelSession


class VonageTarget(_CarrierTarget):
    """Vonage Voice API WebSockets."""

    protocol = "vonage"
    description = "plays Vonage's WebSocket audio (the carrier) toward a phone bot"
    options: ClassVar[dict[str, str]] = {
        **_COMMON_OPTIONS,
        "rate": "the stream's sample rate, 8000 or 16000 (default 16000)",
    }
    session_class = VonageSession
