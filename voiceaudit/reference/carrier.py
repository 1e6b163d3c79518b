"""Phone carriers' media streams, served as a bot: ``/twilio``, ``/telnyx``, ``/plivo``,
``/exotel`` and ``/vonage`` (WebSocket).

A carrier answers a phone call and opens a WebSocket to the bot; here the reference
pipeline is that bot. Carrier → bot: the dialect's ``start`` (Vonage: the
``websocket:connected`` text frame) says the stream id and the media format, then the
caller's audio (JSON ``media`` with base64 μ-law / A-law / 16-bit PCM; Vonage: binary
16-bit PCM), ``dtmf``, mark echoes (Plivo ``playedStream``, Vonage ``websocket:notify``)
and ``stop``. Bot → carrier, in each dialect's own shape (the same as Pipecat 1.14's
serializer for it): the reply audio as media messages (20 ms; Exotel 100 ms, its minimum),
a mark after each reply (``reply-<turn>``; the greeting's is ``greeting``), ``clear`` when
the caller talks over audio the carrier is still playing (Plivo ``clearAudio``).

Pacing: the audio goes out at real time, as Pipecat's output transport sends it
(``burst=10x``: ten times faster; the carrier queues what runs ahead). The bot greets the
caller when the media begins (``greeting=MS``: its first audio MS after ``start`` arrived;
``no-greeting``: it waits for the caller). ``no-clear`` never sends ``clear``;
``mark-early`` sends each mark before the reply's audio instead of after it.

Ground truth: :class:`CarrierPlayout` is this module's own model of the carrier (an
independent implementation of the rule the probe's model follows): it plays the bot's
audio at real time from an unbounded buffer; a message starts playing when it arrives
(here: when the bot sent it, loopback) if nothing is playing, else right after the audio
queued before it; a mark is echoed when all audio queued before it has played; ``clear``
drops the queue (the sample playing when it arrives is the last heard) and echoes every
pending mark. Each turn's ``carrier`` record and the ``greeting`` record say what the
caller heard and when (docs/reference-pipeline.md, "Phone carriers").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from voiceaudit.audio import first_audible
from voiceaudit.reference.dsp import (
    F32,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import (
    CTX_KEY,
    ReplyControl,
    ReplySink,
)
from voiceaudit.reference.session import Session
from voiceaudit.reference.vad import SpeechStart
from voiceaudit.reference.wsutil import read_messages, send_message, serve_websocket

log = logging.getLogger("voiceaudit.reference")

NS_PER_S = 1_000_000_000
#: How long a finished reply's record waits for its mark's echo after it has played.
ECHO_WAIT_NS = 1_000_000_000
#: An audible sample's level: -50 dBFS (the probe's onset and reply-end level).
AUDIBLE = 10 ** (-50 / 20)
#: Input frames remembered to map session audio time to arrival time (about 3 minutes).
_ARRIVALS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Dialect:
    """One carrier's media-stream protocol, as the bot sees it."""

    name: str
    #: the audio's default rate and encoding (``pcmu``, ``pcma``, ``l16``) before ``start``
    rate: int
    encoding: str
    #: the bot's media message size (Exotel: at least 100 ms)
    chunk_ms: int
    #: the last message is padded with silence to a whole ``chunk_ms`` (Exotel's multiples
    #: of 320 bytes and 100 ms; Vonage's fixed 20 ms frames)
    pad: bool
    #: audio travels as binary frames (Vonage), not base64 in JSON
    binary: bool = False


DIALECTS: dict[str, Dialect] = {
    "twilio": Dialect("twilio", 8_000, "pcmu", 20, False),
    "telnyx": Dialect("telnyx", 8_000, "pcmu", 20, False),
    "plivo": Dialect("plivo", 8_000, "pcmu", 20, False),
    "exotel": Dialect("exotel", 8_000, "l16", 100, True),
    "vonage": Dialect("vonage", 16_000, "l16", 20, True, binary=True),
}


# --- the bot's messages, per dialect (as Pipecat 1.14's serializers write them) ----------


def media_message(d: Dialect, stream_id: str, wire: bytes, encoding: str, rate: int) -> str | bytes:
    """One message of reply audio (``wire``: the encoded bytes)."""
    if d.binary:
        return wire
    payload = base64.b64encode(wire).decode("ascii")
    if d.name == "plivo":
        content = "audio/x-mulaw" if encoding == "pcmu" else "audio/x-l16"
        media = {"contentType": content, "sampleRate": rate, "payload": payload}
        return json.dumps({"event": "playAudio", "media": media, "streamId": stream_id})
    if d.name == "telnyx":
        return json.dumps({"event": "media", "media": {"payload": payload}})
    if d.name == "exotel":
        media = {"payload": payload}
        return json.dumps({"event": "media", "stream_sid": stream_id, "media": media})
    return json.dumps({"event": "media", "streamSid": stream_id, "media": {"payload": payload}})


def mark_message(d: Dialect, stream_id: str, name: str) -> str:
    """The bot's mark (Plivo ``checkpoint``, Vonage ``notify``) named ``name``."""
    if d.name == "plivo":
        return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})
    if d.name == "vonage":
        return json.dumps({"action": "notify", "payload": {"name": name}})
    if d.name == "telnyx":
        return json.dumps({"event": "mark", "mark": {"name": name}})
    if d.name == "exotel":
        return json.dumps({"event": "mark", "stream_sid": stream_id, "mark": {"name": name}})
    return json.dumps({"event": "mark", "streamSid": stream_id, "mark": {"name": name}})


def clear_message(d: Dialect, stream_id: str) -> str:
    """The bot's ``clear`` (Plivo ``clearAudio``; Vonage ``{"action": "clear"}``)."""
    if d.name == "plivo":
        return json.dumps({"event": "clearAudio", "streamId": stream_id})
    if d.name == "vonage":
        return json.dumps({"action": "clear"})
    if d.name == "telnyx":
        return json.dumps({"event": "clear"})
    if d.name == "exotel":
        return json.dumps({"event": "clear", "stream_sid": stream_id})
    return json.dumps({"event": "clear", "streamSid": stream_id})


# --- the carrier's messages ----------------------------------------------------------------


def _encoding_of(name: Any, default: str) -> str:
    text = str(name or "").lower()
    if any(k in text for k in ("mulaw", "ulaw", "pcmu")):
        return "pcmu"
    if any(k in text for k in ("alaw", "pcma")):
        return "pcma"
    if any(k in text for k in ("l16", "raw", "slin", "pcm")):
        return "l16"
    return default


def _int_or(value: Any, default: int) -> int:
    try:
        n = int(str(value).split(";")[0])
    except (TypeError, ValueError):
        return default
    return n if 8_000 <= n <= 48_000 else default


@dataclass(frozen=True, slots=True)
class StreamStart:
    """What the carrier's ``start`` says: the stream id and the audio format."""

    stream_id: str
    call_id: str | None
    encoding: str
    rate: int


def parse_start(d: Dialect, obj: dict[str, Any]) -> StreamStart:
    """The stream id and media format of a ``start`` (Vonage: ``websocket:connected``)
    message; what it does not say is the dialect's default."""
    if d.name == "vonage":
        ctype = str(obj.get("content-type") or obj.get("content_type") or "")
        rate = d.rate
        for part in ctype.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "rate":
                rate = _int_or(value, d.rate)
        return StreamStart("vonage", None, "l16", rate)
    start = obj.get("start") if isinstance(obj.get("start"), dict) else {}
    assert isinstance(start, dict)
    sid = (
        obj.get("streamSid")
        or obj.get("stream_sid")
        or obj.get("stream_id")
        or obj.get("streamId")
        or start.get("streamSid")
        or start.get("stream_sid")
        or start.get("streamId")
        or start.get("stream_id")
        or ""
    )
    call = (
        start.get("callSid")
        or start.get("call_sid")
        or start.get("callId")
        or start.get("call_control_id")
    )
    fmt = start.get("mediaFormat") or start.get("media_format") or {}
    if not isinstance(fmt, dict):
        fmt = {}
    encoding = _encoding_of(fmt.get("encoding"), d.encoding)
    if d.name == "exotel":
        encoding = "l16"  # Exotel streams 16-bit PCM whatever the label says
    rate = _int_or(fmt.get("sampleRate", fmt.get("sample_rate")), d.rate)
    return StreamStart(str(sid), None if call is None else str(call), encoding, rate)


def decode_audio(wire: bytes, encoding: str) -> F32:
    """Carrier audio bytes as float samples (16-bit PCM must be whole samples)."""
    if encoding == "pcmu":
        return ulaw_decode(wire)
    if encoding == "pcma":
        return alaw_decode(wire)
    if len(wire) % 2:
        raise ValueError(f"{len(wire)} bytes of 16-bit PCM is not whole samples")
    return pcm16_to_float(wire)


def encode_audio(samples: F32, encoding: str) -> tuple[bytes, F32]:
    """Reply samples as the wire's bytes, and the samples those bytes decode to (what the
    caller hears)."""
    if encoding == "pcmu":
        wire = ulaw_encode(samples)
        return wire, ulaw_decode(wire)
    if encoding == "pcma":
        wire = alaw_encode(samples)
        return wire, alaw_decode(wire)
    wire = float_to_pcm16(samples)
    return wire, pcm16_to_float(wire)


# --- the carrier's playout, as the ground truth models it -------------------------------


@dataclass(slots=True)
class Piece:
    """One media message in the carrier's buffer."""

    owner: Heard
    sent_ns: int
    start_ns: int
    samples: int
    #: where it begins in its reply (samples)
    offset: int
    rate: int
    #: samples the caller heard (less than ``samples`` when a clear cut it)
    heard: int = -1

    def __post_init__(self) -> None:
        self.heard = self.samples

    def time_of(self, k: int) -> int:
        """When sample ``k`` of the piece starts playing."""
        return self.start_ns + k * NS_PER_S // self.rate

    @property
    def end_ns(self) -> int:
        return self.time_of(self.samples)

    @property
    def heard_end_ns(self) -> int:
        return self.time_of(self.heard)


@dataclass(slots=True)
class Heard:
    """One reply (or the greeting) as the caller hears it through the carrier."""

    record: TurnRecord
    rate: int
    pieces: list[Piece] = field(default_factory=list)
    audio: list[F32] = field(default_factory=list)
    samples: int = 0
    #: the reply's first audible sample as a streaming listener finds it (``first_audible``
    #: over the audio so far, after each message that holds sound, until one is found)
    onset_streaming: int | None = None
    clear: dict[str, Any] | None = None
    #: the mark's truth (``reply-<turn>`` / ``greeting``), once sent
    mark: dict[str, Any] | None = None
    echoed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, wire_samples: F32, piece: Piece) -> None:
        self.pieces.append(piece)
        self.audio.append(wire_samples)
        self.samples += int(wire_samples.size)
        # cheap: only while no onset is found, and only when the newest message has sound
        # (the probe's own rule: a 16-bit sample of 8 or more)
        loud = wire_samples.size and float(np.abs(wire_samples).max()) >= 8 / 32768
        if self.onset_streaming is None and loud:
            self.onset_streaming = first_audible(np.concatenate(self.audio), self.rate)

    def heard_audio(self) -> F32:
        """The samples the caller heard (a clear cuts the pieces it drops)."""
        parts = [a[: max(0, p.heard)] for a, p in zip(self.audio, self.pieces, strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def onset(self) -> int | None:
        """The reply's first audible sample, over the whole of what the caller heard (as
        ``voiceaudit run`` finds it once the reply is over)."""
        heard = self.heard_audio()
        return first_audible(heard, self.rate) if heard.size else None

    def heard_at(self, k: int) -> int | None:
        """When the caller hears sample ``k`` of the reply (None: never, a clear cut it)."""
        for p in self.pieces:
            if p.offset <= k < p.offset + p.samples:
                return p.time_of(k - p.offset) if k - p.offset < p.heard else None
        return None

    def last_audible(self) -> int | None:
        """The last audible sample the caller heard (index into the reply), by the rule the
        probe's reply end uses: the last sample at or above -50 dBFS in the last 5 ms
        window whose RMS is above that level (None: nothing audible was heard)."""
        x = np.abs(self.heard_audio().astype(np.float64))
        if not x.size:
            return None
        w = max(1, self.rate * 5 // 1000)
        n = x.size // w
        rms = np.sqrt((x[: n * w].reshape(n, w) ** 2).mean(axis=1)) if n else np.zeros(0)
        loud = np.flatnonzero(rms > AUDIBLE)
        tail = x[n * w :]
        if tail.size and float(np.sqrt((tail**2).mean())) > AUDIBLE:
            start = n * w
        elif loud.size:
            start = int(loud[-1]) * w
        else:
            return None
        above = np.flatnonzero(x[start:] >= AUDIBLE)
        if not above.size:
            return None
        k = start + int(above[-1])
        # back to the reply's own sample index (the heard parts are a prefix of each piece)
        for p in self.pieces:
            if k < p.heard:
                return p.offset + k
            k -= max(0, p.heard)
        return None

    @property
    def end_ns(self) -> int | None:
        """When the last sample the caller hears has played (None: no audio)."""
        heard = [p for p in self.pieces if p.heard > 0]
        return heard[-1].heard_end_ns if heard else None


class CarrierPlayout:
    """The carrier's buffer, played at real time (see the module): an independent model,
    fed with the times the bot sent each message."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        #: when everything queued so far has played
        self.end_ns = 0
        self._live: list[Piece] = []
        #: marks not echoed yet: name → when the model echoes them
        self.marks: dict[str, int] = {}

    def media(self, t_ns: int, owner: Heard, samples: int) -> Piece:
        """A media message of ``samples`` arrives at ``t_ns``."""
        start = max(t_ns, self.end_ns)
        piece = Piece(owner, t_ns, start, samples, owner.samples, self.rate)
        self.end_ns = piece.end_ns
        self._live = [p for p in self._live if p.end_ns > t_ns]
        self._live.append(piece)
        return piece

    def queued_ns(self, t_ns: int) -> int:
        """Audio queued or playing at ``t_ns`` (ns)."""
        return max(0, self.end_ns - t_ns)

    def mark(self, t_ns: int, name: str) -> int:
        """A mark arrives at ``t_ns``: when the carrier echoes it."""
        due = max(t_ns, self.end_ns)
        self.marks[name] = due
        return due

    def echoed(self, name: str) -> None:
        self.marks.pop(name, None)

    def clear(self, t_ns: int) -> tuple[int, list[str]]:
        """A clear arrives at ``t_ns``: the audio dropped (ns) and the marks it echoes."""
        dropped = 0
        for p in self._live:
            if p.end_ns <= t_ns:
                continue
            if p.start_ns <= t_ns:
                played = (t_ns - p.start_ns) * self.rate // NS_PER_S + 1
                p.heard = min(p.samples, played)
            else:
                p.heard = 0
            dropped += (p.samples - p.heard) * NS_PER_S // self.rate
        self.end_ns = min(self.end_ns, max([t_ns] + [p.heard_end_ns for p in self._live]))
        self._live = []
        echoed = [name for name, due in self.marks.items() if due > t_ns]
        self.marks = {}
        return dropped, echoed


# --- the session ---------------------------------------------------------------------------


class CarrierSink:
    """Where one reply's audio goes on a carrier path: paced (real time or the burst
    factor), in the dialect's message size, onto :meth:`CarrierSession.send_media`."""

    def __init__(self, session: CarrierSession, heard: Heard, not_before_ns: int | None) -> None:
        self.session, self.heard = session, heard
        self.output_rate = session.output_rate
        self.pace = session.ctx.injections.burst or 1.0
        self.chunk_ms = session.dialect.chunk_ms
        self.not_before_ns = not_before_ns

    async def send_text_delta(self, text: str) -> None:
        return None

    async def send_audio(self, samples: F32) -> None:
        await self.session.send_media(self.heard, samples)


class CarrierSession(Session):
    """One carrier connection (a phone call) to the bot (see the module)."""

    id_prefix = "call"

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, delay_ns: int, dialect: Dialect
    ) -> None:
        super().__init__(request.app[CTX_KEY], connect_delay_ns=delay_ns)
        self.request, self.ws, self.dialect = request, ws, dialect
        self.protocol = dialect.name
        self.stream_id = ""
        self.call_id: str | None = None
        self.encoding = dialect.encoding
        self.output_rate = dialect.rate
        self.media_start_ns: int | None = None
        self.playout = CarrierPlayout(dialect.rate)
        self.heard: dict[int, Heard] = {}
        #: the reply whose audio went out last (what a barge-in talks over)
        self.last_heard: Heard | None = None
        #: the reply the caller talked over last (a clear is recorded in its truth)
        self.talked_over: Heard | None = None
        self.unwritten: dict[int, TurnRecord] = {}
        self.marks_out: dict[str, Heard] = {}
        self.arrivals: list[tuple[int, int]] = []
        self.in_pos = 0
        self.errors = 0
        #: when the carrier's ``stop`` arrived (the call hung up)
        self.stopped_ns: int | None = None
        cfg = self.ctx.config
        self._vad = {
            "silence_ms": cfg.silence_ms,
            "prefix_padding_ms": cfg.prefix_padding_ms,
            "threshold": cfg.vad_threshold,
        }
        self.open_input(dialect.rate, **self._vad)  # type: ignore[arg-type]

    # --- sending ---------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        if not self.closed and not self.ws.closed:
            await send_message(self.ws, self.request, text, None)

    def heard_for(self, record: TurnRecord) -> Heard:
        found = self.heard.get(id(record))
        if found is None:
            found = self.heard[id(record)] = Heard(record, self.output_rate)
        return found

    async def send_media(self, heard: Heard, samples: F32) -> None:
        """One message of reply audio: encoded, padded as the dialect wants, sent, and
        queued in the model."""
        if self.dialect.pad:
            whole = self.output_rate * self.dialect.chunk_ms // 1000
            short = (-samples.size) % whole
            if short:
                samples = np.concatenate([samples, np.zeros(short, dtype=np.float32)])
        wire, played = encode_audio(samples, self.encoding)
        msg = media_message(self.dialect, self.stream_id, wire, self.encoding, self.output_rate)
        if self.closed or self.ws.closed:
            return
        t = now_ns()
        # the bytes go to the socket first (before send_message's first await); the truth's
        # bookkeeping (the onset search takes milliseconds) must not delay them
        await send_message(self.ws, self.request, msg, self.ctx.injections.small_writes_bytes)
        piece = self.playout.media(t, heard, int(played.size))
        heard.add(played, piece)
        self.last_heard = heard

    async def send_mark(self, heard: Heard, name: str) -> None:
        t = now_ns()
        heard.mark = {
            "name": name,
            "sent_ns": t,
            "echo_due_ns": self.playout.mark(t, name),
            "queued_ns": self.playout.queued_ns(t),
            "early": heard.samples == 0,
            "echo_received_ns": None,
            "cleared": False,
        }
        self.marks_out[name] = heard
        await self.send_text(mark_message(self.dialect, self.stream_id, name))

    async def send_clear(self) -> None:
        """Clear the carrier's buffer (the model drops what it holds and echoes marks)."""
        if self.closed or self.ws.closed:
            return
        t = now_ns()
        dropped, echoed = self.playout.clear(t)
        clear = {"sent_ns": t, "dropped_ns": dropped, "marks_echoed": len(echoed)}
        for h in list(self.heard.values()):
            cut = any(p.heard < p.samples for p in h.pieces)
            if h.clear is None and (cut or h is self.last_heard or h is self.talked_over):
                h.clear = dict(clear)
        for name in echoed:
            owner = self.marks_out.get(name)
            if owner is not None and owner.mark is not None:
                owner.mark["echo_due_ns"] = t
                owner.mark["cleared"] = True
        await self.send_text(clear_message(self.dialect, self.stream_id))

    # --- replies ---------------------------------------------------------------------

    def _mark_name(self, record: TurnRecord) -> str:
        return "greeting" if record.stage == "greeting" else f"reply-{record.turn}"

    async def begin_reply(self, record: TurnRecord) -> ReplySink:
        heard = self.heard_for(record)
        if self.ctx.injections.mark_early:
            await self.send_mark(heard, self._mark_name(record))
        return CarrierSink(self, heard, None)

    async def reply_sent(self, record: TurnRecord, sink: ReplySink) -> None:
        heard = self.heard_for(record)
        if heard.mark is None:
            await self.send_mark(heard, self._mark_name(record))

    async def turn_over(self, record: TurnRecord, control: ReplyControl) -> None:
        record.settle_barge_in()
        self.unwritten[id(record)] = record
        self.spawn(self._write_when_heard(record))

    async def _write_when_heard(self, record: TurnRecord) -> None:
        """Write the turn once the caller has heard its reply (the model's play end) and
        the carrier echoed its mark (or a second more went by)."""
        heard = self.heard.get(id(record))
        if heard is not None:
            end = heard.end_ns
            if end is not None and end > now_ns():
                await asyncio.sleep((end - now_ns()) / 1e9)
            if heard.mark is not None and heard.mark["echo_received_ns"] is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(heard.echoed.wait(), ECHO_WAIT_NS / 1e9)
        self._write_now(record)

    def _write_now(self, record: TurnRecord) -> None:
        if self.unwritten.pop(id(record), None) is None:
            return
        record.carrier = self.truth(record)
        self.write(record)
        # a long call keeps no reply audio it no longer needs (the model keeps its pieces)
        heard = self.heard.pop(id(record), None)
        if heard is not None:
            heard.audio = [a[:0] for a in heard.audio]
            for name in [n for n, h in self.marks_out.items() if h is heard]:
                del self.marks_out[name]

    # --- the greeting -----------------------------------------------------------------

    def greet_on_connect(self, t_ns: int) -> None:
        """A carrier's bot greets when ``start`` arrives, not when the socket opens."""

    # --- DTMF ---------------------------------------------------------------------------

    def dtmf(self, digit: str, t_ns: int) -> None:
        """A key press is a turn of its own: the bot answers it (``transcript``:
        ``key <digit>``); its speech end is the key press's arrival."""
        record = self.new_turn(heard=False)
        for name in ("speech_started", "speech_end_received", "vad_stop", "transcript_final"):
            record.mark(name, t_ns)
        record.transcript = f"key {digit}"
        record.injected["dtmf"] = digit

        async def run(control: ReplyControl, previous: asyncio.Task[None] | None) -> None:
            await self.respond(record, control, previous)

        self.start_response(record, run)

    # --- barge-in -----------------------------------------------------------------------

    def interrupt(self, start: SpeechStart, t_ns: int) -> bool:
        """The caller speaks: the core stops a reply still being sent; and while the
        carrier still plays a reply, the bot clears it (after the ``barge-in-delay``;
        never with ``no-clear`` or ``no-barge-in``). The reply's truth records the
        caller's onset (server view: the arrival of its first voiced sample)."""
        will_stop = super().interrupt(start, t_ns)
        heard = None
        running = self.response_record
        if running is not None and self.response is not None and not self.response.done():
            heard = self.heard_for(running)
        elif self.last_heard is not None and self.playout.end_ns > t_ns:
            heard = self.last_heard
        if heard is None:
            return will_stop
        self.talked_over = heard
        c = heard.record.carrier = heard.record.carrier or {}
        if "barge_in" in c:
            return will_stop
        inj = self.ctx.injections
        onset = self.audio_time_ns(start.speech_start_ms)
        c["barge_in"] = {
            "onset_ns": onset,
            "detected_ns": t_ns,
            "by_turn": self.turn_index,
            "queued_ns": self.playout.queued_ns(t_ns),
            "clear": not (inj.no_clear or inj.no_barge_in),
        }
        if inj.no_clear or inj.no_barge_in:
            return will_stop
        delay = inj.barge_in_delay_ns
        if delay:
            loop = asyncio.get_running_loop()
            loop.call_later(delay / 1e9, lambda: self.spawn(self.send_clear()))
        else:
            self.spawn(self.send_clear())
        return will_stop

    # --- ground truth ---------------------------------------------------------------------

    def audio_time_ns(self, ms: int | None) -> int | None:
        """When the caller said the audio at session time ``ms``, the server's view: a
        carrier sends a frame once its audio has been captured, so the frame holding it
        arrived when its last sample had been said; the sample is that much earlier."""
        if ms is None or not self.arrivals:
            return None
        pos = ms * self.input_rate // 1000
        i = bisect.bisect_right(self.arrivals, (pos, math.inf)) - 1
        if i < 0:
            return None
        _, arrival = self.arrivals[i]
        end = self.arrivals[i + 1][0] if i + 1 < len(self.arrivals) else self.in_pos
        return arrival - max(0, end - pos) * NS_PER_S // self.input_rate

    def truth(self, record: TurnRecord) -> dict[str, Any]:
        """What the caller heard of ``record``'s reply, per the carrier model."""
        c: dict[str, Any] = dict(record.carrier or {})
        heard = self.heard.get(id(record))
        c["dialect"] = self.dialect.name
        c["stream_id"] = self.stream_id
        c["media_start_ns"] = self.media_start_ns
        c["rate"] = self.output_rate
        c["encoding"] = self.encoding
        c["burst"] = self.ctx.injections.burst
        pieces = heard.pieces if heard is not None else []
        c["messages"] = len(pieces)
        c["samples_sent"] = heard.samples if heard is not None else 0
        c["samples_heard"] = sum(max(0, p.heard) for p in pieces)
        c["first_sent_ns"] = pieces[0].sent_ns if pieces else None
        c["first_play_ns"] = pieces[0].start_ns if pieces else None
        c["last_sent_ns"] = pieces[-1].sent_ns if pieces else None
        c["play_end_ns"] = heard.end_ns if heard is not None else None
        onset = heard.onset() if heard is not None else None
        audible = heard.heard_at(onset) if heard is not None and onset is not None else None
        c["onset_sample"] = onset
        c["first_audible_ns"] = audible
        streaming = None if heard is None else heard.onset_streaming
        c["onset_sample_streaming"] = streaming
        c["first_audible_streaming_ns"] = (
            None if heard is None or streaming is None else heard.heard_at(streaming)
        )
        wait = None
        if heard is not None and onset is not None:
            p = next(p for p in pieces if p.offset <= onset < p.offset + p.samples)
            wait = p.start_ns - p.sent_ns
        c["first_audible_queued_ns"] = wait
        end_ns = self.audio_time_ns(record.speech_end_ms)
        if record.injected.get("dtmf") is not None:
            end_ns = record.marks["speech_started"]
        c["speech_end_ns"] = end_ns
        c["voice_to_voice_ns"] = None if audible is None or end_ns is None else audible - end_ns
        if record.stage == "greeting" and self.media_start_ns is not None:
            c["greeting_ns"] = record.injected.get("greeting_ns")
            c["latency_ns"] = None if audible is None else audible - self.media_start_ns
        c["clear"] = None if heard is None else heard.clear
        c["mark"] = None if heard is None else heard.mark
        b = c.get("barge_in")
        if isinstance(b, dict):
            end = c["play_end_ns"]
            onset_ns = b.get("onset_ns")
            b["last_heard_ns"] = end
            last = None if heard is None else heard.last_audible()
            b["last_audible_sample"] = last
            # when it has been heard: the end of that sample (as the probe's reply.stop)
            at = None if heard is None or last is None else heard.heard_at(last)
            b["last_audible_ns"] = None if at is None else at + NS_PER_S // self.output_rate
            b["audible_after_onset_ns"] = (
                None
                if b["last_audible_ns"] is None or onset_ns is None
                else max(0, b["last_audible_ns"] - onset_ns)
            )
            b["heard_after_onset_ns"] = (
                None if end is None or onset_ns is None else max(0, end - onset_ns)
            )
            cleared = None if heard is None else heard.clear
            b["clear_sent_ns"] = None if cleared is None else cleared["sent_ns"]
        return c

    # --- receiving -------------------------------------------------------------------------

    async def run(self) -> None:
        await read_messages(self.ws, self._text, self._binary)

    def _began(self, start: StreamStart, t_ns: int) -> None:
        if self.media_start_ns is not None:
            return
        self.media_start_ns = t_ns
        self.stream_id, self.call_id = start.stream_id, start.call_id
        self.encoding = start.encoding
        if start.rate != self.output_rate:
            self.output_rate = start.rate
            self.playout = CarrierPlayout(start.rate)
            self.open_input(start.rate, **self._vad)  # type: ignore[arg-type]
        if not self.ctx.injections.no_greeting:
            self.greet(t_ns)

    def _feed(self, samples: F32, t_ns: int) -> None:
        self.arrivals.append((self.in_pos, t_ns))
        if len(self.arrivals) > 2 * _ARRIVALS_KEPT:
            del self.arrivals[:_ARRIVALS_KEPT]
        self.in_pos += int(samples.size)
        self.input.feed(samples, t_ns)

    async def _binary(self, data: bytes) -> None:
        t = now_ns()
        if not self.dialect.binary:
            self._bad("binary frame on a JSON stream")
            return
        if self.media_start_ns is None:  # audio before websocket:connected
            self._began(parse_start(self.dialect, {}), t)
        try:
            self._feed(decode_audio(data, "l16"), t)
        except ValueError as exc:
            self._bad(str(exc))

    async def _text(self, raw: str) -> None:
        t = now_ns()
        try:
            obj = json.loads(raw)
        except ValueError:
            self._bad("text frame that is not JSON")
            return
        if not isinstance(obj, dict):
            self._bad("JSON that is not an object")
            return
        event = str(obj.get("event") or "")
        if event in ("start", "websocket:connected"):
            self._began(parse_start(self.dialect, obj), t)
        elif event == "media":
            self._media(obj, t)
        elif event in ("mark", "playedStream", "websocket:notify"):
            self._echo(obj, t)
        elif event in ("dtmf", "websocket:dtmf"):
            dtmf = obj.get("dtmf") if isinstance(obj.get("dtmf"), dict) else {}
            assert isinstance(dtmf, dict)
            digit = obj.get("digit") or dtmf.get("digit")
            if digit is not None:
                self.dtmf(str(digit), t)
        elif event == "stop":
            self.stopped_ns = t
        # connected, clearedAudio, websocket:cleared and the rest need no answer

    def _media(self, obj: dict[str, Any], t_ns: int) -> None:
        media = obj.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self._bad("media without a payload")
            return
        assert isinstance(media, dict)
        if str(media.get("track", "inbound")).startswith("outbound"):
            return  # Twilio tracks=both: the bot's own audio as the caller heard it
        if self.media_start_ns is None:
            self._began(parse_start(self.dialect, {}), t_ns)
        try:
            wire = base64.b64decode(payload, validate=True)
            self._feed(decode_audio(wire, self.encoding), t_ns)
        except (binascii.Error, ValueError) as exc:
            self._bad(f"media payload: {exc}")

    def _echo(self, obj: dict[str, Any], t_ns: int) -> None:
        name: Any = None
        if isinstance(obj.get("mark"), dict):
            name = obj["mark"].get("name")
        elif isinstance(obj.get("payload"), dict):
            name = obj["payload"].get("name")
        else:
            name = obj.get("name")
        heard = self.marks_out.get(str(name))
        self.playout.echoed(str(name))
        if heard is not None and heard.mark is not None and heard.mark["echo_received_ns"] is None:
            heard.mark["echo_received_ns"] = t_ns
            heard.echoed.set()

    def _bad(self, what: str) -> None:
        self.errors += 1
        if self.errors <= 3:
            log.warning("carrier %s session %s: %s (ignored)", self.dialect.name, self.id, what)

    # --- lifetime ----------------------------------------------------------------------------

    def abandon(self) -> None:
        super().abandon()
        for record in list(self.unwritten.values()):
            self._write_now(record)


def carrier_handler(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The WebSocket route of the carrier dialect ``name`` (``/twilio`` …)."""
    dialect = DIALECTS[name]

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
        return await serve_websocket(request, ws, lambda d: CarrierSession(request, ws, d, dialect))

    return handler
