"""The reference pipeline as a phone bot: its carrier routes (``/twilio``, ``/telnyx``,
``/plivo``, ``/exotel``, ``/vonage``), the injections ``burst``, ``no-clear``,
``greeting``, ``no-greeting`` and ``mark-early``, and the ground truth of each.

In-process reference servers on loopback (one per set of injections, one shared
recognition pool). The caller is a plain aiohttp WebSocket client that plays the carrier
faithfully: the dialect's ``start``, then 20 ms media frames on a real-time clock (a
bundled utterance, silence in between, as a phone line), and the carrier's buffer: the
bot's audio plays at real time from an unbounded queue, a mark is echoed when the audio
queued before it has played, ``clear`` drops the queue and echoes pending marks. All
sessions of the module run at once in one fixture (about 25 s of real time: a greeting,
a spoken turn and the reply, played at real time, per session); the tests then read what
each client saw and the servers' ground truth. Bounds on real time are one-sided.

The last four tests run ``voiceaudit run --protocol twilio`` (the probe plays the carrier)
against the bot and compare the trace with its truth (issue 24's done-when): two CLI runs,
one after the other, about 95 s (a greeting and six turns whose replies the carrier plays
at real time; then a barge-in scenario). They need that long: the figures are compared
turn by turn over enough turns for a median and a 95th percentile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from voiceaudit.audio import first_audible, read_audio
from voiceaudit.model import Event, unbatch
from voiceaudit.reference.dsp import pcm16_to_float, ulaw_decode, ulaw_encode
from voiceaudit.reference.groundtruth import read_ground_truth
from voiceaudit.trace_io import read_trace

pytestmark = pytest.mark.slow

MS = 1_000_000
NS = 1_000_000_000
UTTERANCES = Path(__file__).resolve().parent.parent / "voiceaudit" / "data" / "utterances"
SAY = "01_weather.wav"
BARGE = "03_lights.wav"
DIALECTS = ("twilio", "telnyx", "plivo", "exotel", "vonage")
GREETING_MS = 800
#: the caller talks over the reply once this much of it has played (client's model)
BARGE_AFTER_NS = 1_000 * MS


def now() -> int:
    return time.monotonic_ns()


def speech(rate: int) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(read_audio(UTTERANCES / name, rate=rate).samples, dtype=np.float32)
        for name in (SAY, BARGE)
    }


# --- the carrier, played by the test ------------------------------------------------------


@dataclass
class Got:
    """One message from the bot, as the carrier received it."""

    t_ns: int
    kind: str  # media | mark | clear | other
    raw: Any
    obj: dict[str, Any] | None = None
    samples: int = 0
    audio: np.ndarray | None = None
    #: carrier model: when this media starts playing / the mark is echoed
    play_ns: int = 0
    heard: int = 0


@dataclass
class Carrier:
    """A test carrier for one dialect: sends the start and a continuous 20 ms line, plays
    the bot's audio from its own buffer and echoes marks per the carrier rule."""

    dialect: str
    ws: aiohttp.ClientWebSocketResponse
    rate: int = 8_000
    got: list[Got] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0  # when the buffer has played out
    pending: list[tuple[str, int, asyncio.TimerHandle]] = field(default_factory=list)
    echoes: list[tuple[str, int]] = field(default_factory=list)
    line: list[np.ndarray] = field(default_factory=list)
    said: list[tuple[int, int]] = field(default_factory=list)  # (first frame sent, samples)
    seq: int = 1
    sent_frames: int = 0
    live: list[Got] = field(default_factory=list)
    tag: str = "0"
    tasks: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def stream_id(self) -> str:
        """Unique per call (the ground truth's ``carrier.stream_id`` finds the call)."""
        return f"MZ{self.tag:0>32}"

    def start_messages(self) -> list[str]:
        sid = self.stream_id
        if self.dialect == "twilio":
            return [
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": "1",
                        "streamSid": sid,
                        "start": {
                            "streamSid": sid,
                            "accountSid": "AC0123",
                            "callSid": "CA0123",
                            "tracks": ["inbound"],
                            "customParameters": {},
                            "mediaFormat": {
                                "encoding": "audio/x-mulaw",
                                "sampleRate": 8000,
                                "channels": 1,
                            },
                        },
                    }
                ),
            ]
        if self.dialect == "telnyx":
            return [
                json.dumps({"event": "connected", "version": "1.0.0"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": "1",
                        "stream_id": sid,
                        "start": {
                            "call_control_id": "v3:abc",
                            "media_format": {
                                "encoding": "PCMU",
                                "sample_rate": 8000,
                                "channels": 1,
                            },
                        },
                    }
                ),
            ]
        if self.dialect == "plivo":
            return [
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": 0,
                        "start": {
                            "callId": "call-1",
                            "streamId": sid,
                            "accountId": "MA1",
                            "tracks": ["inbound"],
                            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                        },
                    }
                )
            ]
        if self.dialect == "exotel":
            return [
                json.dumps({"event": "connected"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": 1,
                        "stream_sid": sid,
                        "start": {
                            "stream_sid": sid,
                            "call_sid": "call-1",
                            "account_sid": "acc-1",
                            "from": "+100",
                            "to": "+200",
                            "custom_parameters": {},
                            "media_format": {
                                "encoding": "base64",
                                "sample_rate": "8000",
                                "bit_rate": "16",
                            },
                        },
                    }
                ),
            ]
        return [
            json.dumps(
                {"event": "websocket:connected", "content-type": f"audio/l16;rate={self.rate}"}
            )
        ]

    def frame_message(self, x: np.ndarray) -> str | bytes:
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        if self.dialect == "vonage":
            return pcm
        self.seq += 1
        ms = str(self.sent_frames * 20)
        if self.dialect == "exotel":
            payload = base64.b64encode(pcm).decode()
            return json.dumps(
                {
                    "event": "media",
                    "sequence_number": self.seq,
                    "stream_sid": self.stream_id,
                    "media": {"chunk": self.sent_frames, "timestamp": ms, "payload": payload},
                }
            )
        payload = base64.b64encode(ulaw_encode(x)).decode()
        media = {"track": "inbound", "chunk": str(self.sent_frames), "timestamp": ms}
        if self.dialect == "twilio":
            return json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(self.seq),
                    "streamSid": self.stream_id,
                    "media": media | {"payload": payload},
                }
            )
        if self.dialect == "telnyx":
            return json.dumps(
                {
                    "event": "media",
                    "sequence_number": str(self.seq),
                    "stream_id": self.stream_id,
                    "media": media | {"payload": payload},
                }
            )
        return json.dumps(
            {
                "event": "media",
                "sequenceNumber": self.seq,
                "streamId": self.stream_id,
                "media": media | {"payload": payload},
            }
        )

    def echo_message(self, name: str) -> str:
        if self.dialect == "plivo":
            return json.dumps({"event": "playedStream", "streamId": self.stream_id, "name": name})
        if self.dialect == "vonage":
            return json.dumps({"event": "websocket:notify", "payload": {"name": name}})
        key = {"twilio": "streamSid", "telnyx": "stream_id"}.get(self.dialect, "stream_sid")
        return json.dumps(
            {"event": "mark", key: self.stream_id, "sequenceNumber": "9", "mark": {"name": name}}
        )

    # the line: 20 ms frames on an absolute real-time clock
    async def run_line(self, stop: asyncio.Event) -> None:
        frame = self.rate // 50
        buf = np.zeros(0, dtype=np.float32)
        t0 = now()
        while not stop.is_set():
            if buf.size < frame and self.line:
                nxt = self.line.pop(0)
                at = t0 + self.sent_frames * 20 * MS + buf.size * NS // self.rate
                self.said.append((at, nxt.size))
                buf = np.concatenate([buf, nxt])
            x = buf[:frame]
            buf = buf[frame:]
            if x.size < frame:
                x = np.concatenate([x, np.zeros(frame - x.size, dtype=np.float32)])
            # a frame goes once its 20 ms have been "captured", as a carrier sends it
            due = t0 + (self.sent_frames + 1) * 20 * MS
            if due > now():
                await asyncio.sleep((due - now()) / NS)
            if self.ws.closed:
                return
            await self._send(self.frame_message(x))
            self.sent_frames += 1

    async def _send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send_dtmf(self, digit: str) -> None:
        if self.dialect == "vonage":
            await self._send(json.dumps({"event": "websocket:dtmf", "digit": digit}))
            return
        key = {"twilio": "streamSid", "plivo": "streamId", "telnyx": "stream_id"}
        await self._send(
            json.dumps(
                {
                    "event": "dtmf",
                    key.get(self.dialect, "stream_sid"): self.stream_id,
                    "sequenceNumber": "99",
                    "dtmf": {"track": "inbound_track", "digit": digit},
                }
            )
        )

    def say(self, x: np.ndarray) -> None:
        self.line.append(x)

    # the carrier's side of the bot's messages
    def _audio(self, obj: dict[str, Any] | None, raw: Any) -> np.ndarray:
        if self.dialect == "vonage":
            return pcm16_to_float(raw)
        assert obj is not None
        wire = base64.b64decode(obj["media"]["payload"])
        return pcm16_to_float(wire) if self.dialect == "exotel" else ulaw_decode(wire)

    def _echo_later(self, name: str, due: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self.pending = [p for p in self.pending if p[0] != name]
            self.echoes.append((name, now()))
            self.tasks.append(asyncio.ensure_future(self._send(self.echo_message(name))))

        handle = loop.call_later(max(0.0, (due - now()) / NS), fire)
        self.pending.append((name, due, handle))

    async def receive(self) -> None:
        async for msg in self.ws:
            t = now()
            if msg.type == aiohttp.WSMsgType.BINARY:
                g = Got(t, "media", msg.data)
                g.audio = self._audio(None, msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                obj = json.loads(msg.data)
                kind = obj.get("event") or obj.get("action")
                kind = {
                    "playAudio": "media",
                    "checkpoint": "mark",
                    "notify": "mark",
                    "clearAudio": "clear",
                }.get(kind, kind)
                g = Got(t, kind if kind in ("media", "mark", "clear") else "other", msg.data, obj)
                if g.kind == "media":
                    g.audio = self._audio(obj, None)
            else:
                break
            self.got.append(g)
            if g.kind == "media":
                assert g.audio is not None
                g.samples = g.heard = int(g.audio.size)
                g.play_ns = max(t, self.end_ns)
                self.end_ns = g.play_ns + g.samples * NS // self.rate
                self.live = [p for p in self.live if p.play_ns + p.samples * NS // self.rate > t]
                self.live.append(g)
            elif g.kind == "mark":
                assert g.obj is not None
                name = (g.obj.get("mark") or g.obj.get("payload") or g.obj)["name"]
                g.play_ns = max(t, self.end_ns)
                self._echo_later(name, g.play_ns)
            elif g.kind == "clear":
                for p in self.live:
                    if p.play_ns + p.samples * NS // self.rate > t:
                        p.heard = (
                            0
                            if p.play_ns > t
                            else min(p.samples, (t - p.play_ns) * self.rate // NS + 1)
                        )
                self.end_ns = min(self.end_ns, t)
                for name, _, handle in self.pending:
                    handle.cancel()
                    self.echoes.append((name, t))
                    await self._send(self.echo_message(name))
                self.pending = []

    # what the caller heard
    def media(self, after_ns: int = 0) -> list[Got]:
        return [g for g in self.got if g.kind == "media" and g.t_ns >= after_ns]

    def onset(self, pieces: list[Got]) -> int | None:
        """The reply's first audible sample, looked for as the audio comes (the probe's
        rule: after each message that holds sound, until one is found)."""
        for i, p in enumerate(pieces):
            assert p.audio is not None
            if p.audio.size and np.abs(p.audio).max() >= 8 / 32768:
                audio = np.concatenate([q.audio for q in pieces[: i + 1] if q.audio is not None])
                k = first_audible(audio, self.rate)
                if k is not None:
                    return k
        return None

    def first_audible_ns(self, pieces: list[Got]) -> int | None:
        k = self.onset(pieces)
        if k is None:
            return None
        for p in pieces:
            if k < p.samples:
                return p.play_ns + k * NS // self.rate
            k -= p.samples
        return None

    def last_heard_ns(self, pieces: list[Got]) -> int:
        heard = [p for p in pieces if p.heard > 0]
        return heard[-1].play_ns + heard[-1].heard * NS // self.rate


async def wait_for(pred: Any, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step_s)
    return bool(pred())


async def quiet(c: Carrier, quiet_ns: int = 600 * MS, timeout_s: float = 30.0) -> None:
    """Until the carrier's buffer has played out and no audio came for ``quiet_ns``."""
    await wait_for(
        lambda: c.media() and now() > c.end_ns + quiet_ns and now() > c.media()[-1].t_ns + quiet_ns,
        timeout_s,
    )


@dataclass
class Call:
    """One finished call: what the carrier saw, and when each part of it began."""

    carrier: Carrier
    greeting_from: int = 0
    turn_from: int = 0
    barge_at: int | None = None
    speech_end_ns: int = 0


async def call(
    url: str,
    dialect: str,
    words: dict[str, np.ndarray],
    *,
    tag: str,
    greeting: bool = True,
    speak: bool = True,
    barge: bool = False,
    dtmf: str | None = None,
    outbound: bool = False,
) -> Call:
    rate = 16_000 if dialect == "vonage" else 8_000
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/{dialect}") as ws:
        c = Carrier(dialect, ws, rate, tag=tag)
        out = Call(c)
        rx = asyncio.ensure_future(c.receive())
        for m in c.start_messages():
            await ws.send_str(m)
        c.start_ns = now()
        stop = asyncio.Event()
        line = asyncio.ensure_future(c.run_line(stop))
        try:
            if greeting:
                await wait_for(lambda: bool(c.media()), 15)
                await quiet(c)
            else:
                await asyncio.sleep(2.0)
            out.turn_from = now()
            if outbound:
                # Twilio tracks=both: the carrier forks what the caller heard back to the
                # bot as the outbound track, which is no caller speech
                x = words[SAY]
                for i in range(0, x.size - 160, 160):
                    obj = json.loads(c.frame_message(x[i : i + 160]))
                    obj["media"]["track"] = "outbound"
                    await c._send(json.dumps(obj))
                await asyncio.sleep(1.5)
            if dtmf is not None:
                await c.send_dtmf(dtmf)
                await wait_for(lambda: bool(c.media(out.turn_from)), 20)
                await quiet(c)
                return out
            if not speak:
                return out
            c.say(words[SAY])
            await wait_for(lambda: bool(c.said), 5)
            first, n = c.said[0]
            out.speech_end_ns = first + n * NS // rate
            await wait_for(lambda: bool(c.media(out.turn_from)), 40)
            if barge:
                await wait_for(
                    lambda: (
                        bool(c.media(out.turn_from))
                        and now() > c.media(out.turn_from)[0].play_ns + BARGE_AFTER_NS
                    ),
                    30,
                )
                out.barge_at = now()
                c.say(words[BARGE])
                await wait_for(lambda: len(c.said) > 1, 5)
            await quiet(c, 1500 * MS)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await line
            await ws.close()
            await rx
        return out


# --- the servers and every call, at once ---------------------------------------------------

CONFIGS: dict[str, list[str]] = {
    "default": [],
    "burst": ["burst=10x"],
    "no-clear": ["burst=10x", "no-clear"],
    "greeting": [f"greeting={GREETING_MS}ms", "mark-early"],
    "no-greeting": ["no-greeting"],
}


async def pcm_call(url: str) -> tuple[int, list[tuple[int, Any]]]:
    """A raw PCM WebSocket client that says nothing for 2.5 s: when it connected, and what
    came (time, message)."""
    got: list[tuple[int, Any]] = []
    ws_url = url.replace("http://", "ws://", 1) + "/v1/pcm?rate=16000"
    async with aiohttp.ClientSession() as http:
        t0 = now()
        async with http.ws_connect(ws_url) as ws:
            deadline = now() + 2_500 * MS
            while now() < deadline:
                try:
                    msg = await ws.receive(timeout=max(0.01, (deadline - now()) / NS))
                except TimeoutError:
                    break
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                got.append((now(), msg.data))
    return t0, got


@dataclass
class Recorded:
    calls: dict[str, Call]
    turns: dict[str, list[dict[str, Any]]]
    greetings: dict[str, list[dict[str, Any]]]
    pcm: tuple[int, list[tuple[int, Any]]] = (0, [])


async def _record() -> Recorded:
    from voiceaudit.reference.asr import AsrPool
    from voiceaudit.reference.config import ServerConfig
    from voiceaudit.reference.server import start_reference_server

    pool = AsrPool(2)
    await pool.start()
    servers = {}
    try:
        for name, inj in CONFIGS.items():
            servers[name] = await start_reference_server(
                ServerConfig.from_injections(inj), asr_pool=pool
            )
        w8, w16 = speech(8_000), speech(16_000)
        jobs: dict[str, Coroutine[Any, Any, Call]] = {
            # every dialect: the greeting (its media and its mark), no turn
            **{
                d: call(
                    servers["default"].url,
                    d,
                    w16 if d == "vonage" else w8,
                    tag=d,
                    speak=False,
                    outbound=d == "twilio",
                )
                for d in DIALECTS
            },
            "default-barge": call(servers["default"].url, "twilio", w8, tag="db", barge=True),
            "burst-barge": call(servers["burst"].url, "twilio", w8, tag="bb", barge=True),
            "no-clear-barge": call(servers["no-clear"].url, "twilio", w8, tag="nc", barge=True),
            "greeting": call(servers["greeting"].url, "twilio", w8, tag="g"),
            "no-greeting": call(
                servers["no-greeting"].url, "twilio", w8, tag="ng", greeting=False, dtmf="7"
            ),
        }
        pcm = asyncio.ensure_future(pcm_call(servers["greeting"].url))
        done = await asyncio.gather(*jobs.values())
        calls = dict(zip(jobs, done, strict=True))
        pcm_got = await pcm
        await asyncio.sleep(1.5)  # the last records wait for their marks' echoes
        turns = {n: s.turns for n, s in servers.items()}
        greetings = {n: s.greetings for n, s in servers.items()}
    finally:
        for s in servers.values():
            await s.close()
        await pool.close()
    return Recorded(calls, turns, greetings, pcm_got)


@pytest.fixture(scope="module")
def rec() -> Iterator[Recorded]:
    yield asyncio.run(_record())


def truth_of(rec: Recorded, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The turn and greeting records of call ``name`` (by its stream id)."""
    c = rec.calls[name].carrier
    sid = "vonage" if c.dialect == "vonage" else c.stream_id
    turns = [
        t
        for ts in rec.turns.values()
        for t in ts
        if (t.get("carrier") or {}).get("stream_id") == sid and t["protocol"] == c.dialect
    ]
    greets = [
        g
        for gs in rec.greetings.values()
        for g in gs
        if (g.get("carrier") or {}).get("stream_id") == sid and g["protocol"] == c.dialect
    ]
    return turns, greets


def replies(c: Carrier, sizes: list[int]) -> list[list[Got]]:
    """The carrier's media messages cut into replies of ``sizes`` messages, in order."""
    media, out = c.media(), []
    for n in sizes:
        out.append(media[:n])
        media = media[n:]
    assert not media, f"{len(media)} media messages belong to no reply"
    return out


def shape(obj: Any) -> Any:
    """A JSON value's structure: the keys of every object, down to the leaves."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    return type(obj).__name__


#: the bot's media, mark and clear as each carrier's docs (and PROTOCOLS.md) give them
SHAPES: dict[str, dict[str, Any]] = {
    "twilio": {
        "media": {"event": "str", "streamSid": "str", "media": {"payload": "str"}},
        "mark": {"event": "str", "streamSid": "str", "mark": {"name": "str"}},
        "clear": {"event": "str", "streamSid": "str"},
    },
    "telnyx": {
        "media": {"event": "str", "media": {"payload": "str"}},
        "mark": {"event": "str", "mark": {"name": "str"}},
        "clear": {"event": "str"},
    },
    "plivo": {
        "media": {
            "event": "str",
            "media": {"contentType": "str", "sampleRate": "int", "payload": "str"},
            "streamId": "str",
        },
        "mark": {"event": "str", "streamId": "str", "name": "str"},
        "clear": {"event": "str", "streamId": "str"},
    },
    "exotel": {
        "media": {"event": "str", "stream_sid": "str", "media": {"payload": "str"}},
        "mark": {"event": "str", "stream_sid": "str", "mark": {"name": "str"}},
        "clear": {"event": "str", "stream_sid": "str"},
    },
    "vonage": {
        "mark": {"action": "str", "payload": {"name": "str"}},
        "clear": {"action": "str"},
    },
}


def pipecat_serializer(dialect: str, stream_id: str) -> Any:
    """Pipecat 1.14's serializer of ``dialect`` (a bot's side), offline."""
    from pipecat.serializers.exotel import ExotelFrameSerializer
    from pipecat.serializers.plivo import PlivoFrameSerializer
    from pipecat.serializers.telnyx import TelnyxFrameSerializer
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.serializers.vonage import VonageFrameSerializer

    if dialect == "twilio":
        p = TwilioFrameSerializer.InputParams(auto_hang_up=False, sample_rate=16_000)
        return TwilioFrameSerializer(stream_id, params=p)
    if dialect == "telnyx":
        t = TelnyxFrameSerializer.InputParams(auto_hang_up=False, sample_rate=16_000)
        return TelnyxFrameSerializer(stream_id, "PCMU", "PCMU", params=t)
    if dialect == "plivo":
        q = PlivoFrameSerializer.InputParams(auto_hang_up=False, sample_rate=16_000)
        return PlivoFrameSerializer(stream_id, params=q)
    if dialect == "exotel":
        e = ExotelFrameSerializer.InputParams(sample_rate=16_000)
        return ExotelFrameSerializer(stream_id, params=e)
    return VonageFrameSerializer(VonageFrameSerializer.InputParams(sample_rate=16_000))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_dialect_sends_its_carriers_messages(rec: Recorded, dialect: str) -> None:
    """The bot's media and mark have exactly the fields the carrier's docs give (the same as
    Pipecat's serializer for the dialect writes; its clear is Pipecat's, to the byte), in
    the carrier's message sizes; a mark follows the greeting's last audio."""
    from pipecat.frames.frames import InterruptionFrame, OutputAudioRawFrame

    from voiceaudit.reference.carrier import DIALECTS as BOT
    from voiceaudit.reference.carrier import clear_message

    c = rec.calls[dialect].carrier
    _, (greeting,) = truth_of(rec, dialect)
    media = c.media()
    assert media and len(media) == greeting["carrier"]["messages"]
    ser = pipecat_serializer(dialect, c.stream_id)
    audio = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2").tobytes()

    async def serialized() -> str | bytes | None:
        out = None
        for _ in range(10):  # its stream resampler may hold the first frames back
            out = out or await ser.serialize(OutputAudioRawFrame(audio, 16_000, 1))
        return out

    ours = asyncio.run(serialized())
    if dialect == "vonage":
        assert isinstance(ours, bytes)
        assert all(isinstance(g.raw, bytes) and len(g.raw) == 640 for g in media)
    else:
        want = SHAPES[dialect]["media"]
        assert shape(json.loads(ours)) == want  # Pipecat writes the same fields
        for g in media:
            assert shape(g.obj) == want, g.obj
            assert g.obj is not None
            wire = base64.b64decode(g.obj["media"]["payload"])
            if dialect == "exotel":  # 16-bit PCM, multiples of 320 bytes, at least 100 ms
                assert len(wire) % 320 == 0 and len(wire) >= 1600
            else:
                assert len(wire) <= 160
        assert sum(g.samples == 160 for g in media) >= len(media) - 5 or dialect == "exotel"
        sid_key = {"twilio": "streamSid", "plivo": "streamId", "exotel": "stream_sid"}
        if dialect in sid_key:
            assert {g.obj[sid_key[dialect]] for g in media if g.obj} == {c.stream_id}
        event = "playAudio" if dialect == "plivo" else "media"
        assert {g.obj["event"] for g in media if g.obj} == {event}
    (mark,) = [g for g in c.got if g.kind == "mark"]
    assert mark.obj is not None and shape(mark.obj) == SHAPES[dialect]["mark"]
    assert mark.t_ns >= media[-1].t_ns
    want_clear = asyncio.run(ser.serialize(InterruptionFrame()))
    assert clear_message(BOT[dialect], c.stream_id) == want_clear
    assert shape(json.loads(want_clear)) == SHAPES[dialect]["clear"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_test_carrier_speaks_what_pipecat_reads(dialect: str) -> None:
    """The test's carrier is faithful: Pipecat's serializer, reading its messages as a bot
    would, gets the start's ids (Pipecat's runner) and audio frames from its media."""
    from types import SimpleNamespace

    from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame

    async def check() -> None:
        c = Carrier(dialect, None, 16_000 if dialect == "vonage" else 8_000)  # type: ignore[arg-type]
        ser = pipecat_serializer(dialect, c.stream_id)
        await ser.setup(SimpleNamespace(audio_in_sample_rate=16_000))
        got = None
        for _ in range(10):  # the stream resampler may hold the first frames back
            frame = c.frame_message(np.full(c.rate // 50, 0.1, dtype=np.float32))
            got = got or await ser.deserialize(frame)
        assert isinstance(got, InputAudioRawFrame) and got.sample_rate == 16_000
        if dialect != "vonage":
            from pipecat.runner.utils import _detect_transport_type_from_message

            starts = [json.loads(m) for m in c.start_messages()]
            assert _detect_transport_type_from_message(starts[-1]) == dialect
        dtmf: list[str] = []
        c._send = lambda data: _collect(dtmf, data)  # type: ignore[method-assign]
        await c.send_dtmf("5")
        key = await ser.deserialize(dtmf[0])
        assert isinstance(key, InputDTMFFrame) and key.button.value == "5"

    asyncio.run(check())


async def _collect(into: list[str], data: str | bytes) -> None:
    assert isinstance(data, str)
    into.append(data)


def test_the_greeting_starts_greeting_ms_after_start(rec: Recorded) -> None:
    """``greeting=800ms``: the greeting's first audio leaves the bot 800 ms after the
    ``start`` arrived (never sooner) and reaches the carrier after that; its truth's
    latency is to the first audible sample, which the carrier's audio shows at the same
    sample."""
    c = rec.calls["greeting"].carrier
    _, (g,) = truth_of(rec, "greeting")
    t = g["carrier"]
    assert g["injected"]["greeting_ns"] == GREETING_MS * MS == t["greeting_ns"]
    assert t["first_sent_ns"] - t["media_start_ns"] >= GREETING_MS * MS
    assert c.media()[0].t_ns - c.start_ns >= GREETING_MS * MS - 1 * MS  # start sent before
    assert t["latency_ns"] == t["first_audible_ns"] - t["media_start_ns"] >= GREETING_MS * MS
    pieces = c.media()[: t["messages"]]
    assert c.onset(pieces) == t["onset_sample_streaming"]
    heard = c.first_audible_ns(pieces)
    # the carrier got each message after the bot sent it: never earlier
    assert heard is not None and heard >= t["first_audible_streaming_ns"]
    print(
        f"greeting=800ms: first audio sent {(t['first_sent_ns'] - t['media_start_ns']) / MS:.2f}"
        f" ms after start, latency (first audible) {t['latency_ns'] / MS:.2f} ms; carrier "
        f"heard it {(heard - t['first_audible_streaming_ns']) / MS:.3f} ms after the truth"
    )


def test_every_carrier_path_greets_unless_no_greeting(rec: Recorded) -> None:
    """By default a carrier path greets at once; ``no-greeting`` sends nothing until the
    caller does something, and writes no greeting record."""
    for d in DIALECTS:
        _, (g,) = truth_of(rec, d)
        assert g["status"] == "completed" and g["reply_text"]
        assert g["carrier"]["greeting_ns"] is None and g["carrier"]["latency_ns"] > 0
    ng = rec.calls["no-greeting"]
    assert not ng.carrier.media(0)[:1] or ng.carrier.media()[0].t_ns > ng.turn_from
    assert rec.greetings["no-greeting"] == []


def test_burst_sends_ten_times_faster_and_the_default_at_real_time(rec: Recorded) -> None:
    """``burst=10x``: the greeting (4 s of audio) leaves the bot ten times faster than real
    time (never faster: its schedule; and far faster than real time), so the carrier
    queues most of it; by default it leaves at real time (never faster)."""
    for name, factor in (("burst-barge", 10.0), ("default-barge", 1.0)):
        c = rec.calls[name].carrier
        _, (g,) = truth_of(rec, name)
        t = g["carrier"]
        sent = g["audio_sent_ns"]
        dur = t["samples_sent"] * NS // t["rate"]
        last = c.media()[t["messages"] - 1].samples * NS // t["rate"]
        span = sent[-1] - sent[0]
        assert span >= (dur - last) / factor - 1 * MS, (name, span, dur)
        if factor > 1:
            assert span < dur / 2, (span, dur)  # ~10x: far from real time
            assert t["burst"] == factor
            # the carrier queued nearly all of it: it plays 9/10 after the last message
            assert t["play_end_ns"] - sent[-1] >= (dur - last) * 0.9 - span
        print(f"{name}: {dur / MS:.0f} ms of greeting sent over {span / MS:.1f} ms")


def _barge(rec: Recorded, name: str) -> tuple[Carrier, dict[str, Any], list[Got]]:
    c = rec.calls[name].carrier
    turns, (g,) = truth_of(rec, name)
    first = turns[0]
    sizes = [g["carrier"]["messages"]] + [t["carrier"]["messages"] for t in turns]
    pieces = replies(c, sizes)[1]
    return c, first, pieces


def test_clear_on_barge_in_and_none_with_no_clear(rec: Recorded) -> None:
    """The caller talks over the reply: the bot sends ``clear`` (after the caller's speech
    began) by default and with ``burst``; with ``no-clear`` it never does, and the caller
    hears the whole queued reply. The truth's overhang (audio heard after the caller's
    onset, server view) agrees with what the test's carrier played."""
    for name in ("default-barge", "burst-barge", "no-clear-barge"):
        call_ = rec.calls[name]
        c, first, pieces = _barge(rec, name)
        t = first["carrier"]
        b = t["barge_in"]
        clears = [g for g in c.got if g.kind == "clear"]
        assert call_.barge_at is not None
        barge_said = c.said[1][0]
        if name == "no-clear-barge":
            assert clears == [] and not b["clear"] and b["clear_sent_ns"] is None
            assert t["samples_heard"] == t["samples_sent"] == sum(p.samples for p in pieces)
            assert all(p.heard == p.samples for p in pieces)
            assert b["heard_after_onset_ns"] > 1_000 * MS  # the queue played on
        else:
            (clear,) = clears
            assert clear.t_ns > barge_said and b["clear"]
            assert b["clear_sent_ns"] is not None and clear.t_ns >= b["clear_sent_ns"]
            assert b["clear_sent_ns"] >= b["detected_ns"] >= b["onset_ns"]
        assert b["onset_ns"] <= b["detected_ns"]
        assert b["last_heard_ns"] == t["play_end_ns"]
        assert b["heard_after_onset_ns"] == max(0, t["play_end_ns"] - b["onset_ns"])
        client_end = c.last_heard_ns(pieces)
        # the carrier received what the bot sent a little later: never earlier
        assert client_end >= t["play_end_ns"] - 1 * MS
        print(
            f"{name}: overhang {b['heard_after_onset_ns'] / MS:.1f} ms (truth); carrier's "
            f"last sample {(client_end - t['play_end_ns']) / MS:.2f} ms after the truth's; "
            f"onset {(b['onset_ns'] - barge_said) / MS:.1f} ms after the caller's first "
            f"frame of it"
        )


def test_mark_after_the_reply_and_before_it_with_mark_early(rec: Recorded) -> None:
    """A reply's mark follows its last audio (echoed once it has played); with
    ``mark-early`` it comes before the reply's first audio, so the carrier echoes it
    before the caller heard anything of the reply."""
    # after: the greeting of every default call and the reply of a clean turn
    for name in DIALECTS:
        c = rec.calls[name].carrier
        _, (g,) = truth_of(rec, name)
        m = g["carrier"]["mark"]
        assert m["name"] == "greeting" and not m["early"]
        assert m["echo_due_ns"] == g["carrier"]["play_end_ns"] >= m["sent_ns"]
        (echo,) = [e for e in c.echoes if e[0] == "greeting"]
        assert m["echo_received_ns"] is not None and m["echo_received_ns"] >= echo[1]
        assert echo[1] >= c.last_heard_ns(c.media()) - 1 * MS
    # early: the greeting and the turn of the mark-early server
    c = rec.calls["greeting"].carrier
    turns, (g,) = truth_of(rec, "greeting")
    (turn,) = turns
    marks = [x for x in c.got if x.kind == "mark"]
    assert [(x.obj or {}).get("mark", {}).get("name") for x in marks] == ["greeting", "reply-0"]
    sizes = [g["carrier"]["messages"], turn["carrier"]["messages"]]
    for mark, pieces, rec_ in zip(marks, replies(c, sizes), (g, turn), strict=True):
        t = rec_["carrier"]
        assert mark.t_ns < pieces[0].t_ns  # before the reply's first audio
        assert t["mark"]["early"] and t["mark"]["echo_due_ns"] < t["first_audible_ns"]
        name = t["mark"]["name"]
        (echo,) = [e for e in c.echoes if e[0] == name]
        heard = c.first_audible_ns(pieces)
        assert heard is not None and echo[1] < heard


def test_ground_truth_agrees_with_what_the_carrier_got(rec: Recorded) -> None:
    """Every reply's truth counts the messages and samples the carrier received, finds the
    first audible sample at the sample the carrier's audio has it, and says the carrier
    heard it no sooner; a finished turn's voice-to-voice is its first audible sample
    less its speech end (server view), which the caller's own clock puts no later."""
    for name, call_ in rec.calls.items():
        if name == "no-greeting":
            continue
        c = call_.carrier
        turns, greets = truth_of(rec, name)
        recs = greets + turns
        sizes = [r["carrier"]["messages"] for r in recs]
        for r, pieces in zip(recs, replies(c, sizes), strict=True):
            t = r["carrier"]
            assert t["dialect"] == c.dialect and t["encoding"] in ("pcmu", "l16")
            assert t["samples_sent"] == sum(p.samples for p in pieces)
            assert t["first_sent_ns"] <= pieces[0].t_ns
            assert t["first_play_ns"] >= t["first_sent_ns"]
            assert c.onset(pieces) == t["onset_sample_streaming"], name
            heard = c.first_audible_ns(pieces)
            assert heard is not None and heard >= t["first_audible_streaming_ns"]
            if r.get("record") == "turn" and r["status"] == "completed":
                assert t["voice_to_voice_ns"] == t["first_audible_ns"] - t["speech_end_ns"]
                assert t["speech_end_ns"] >= call_.speech_end_ns - 20 * MS


def test_a_key_press_is_a_turn(rec: Recorded) -> None:
    """DTMF: the bot answers a key press (its turn's speech end is the key's arrival)."""
    turns, _ = truth_of(rec, "no-greeting")
    (t,) = turns
    assert t["transcript"] == "key 7" and t["injected"]["dtmf"] == "7"
    assert t["status"] == "completed" and t["carrier"]["voice_to_voice_ns"] > 0
    assert t["carrier"]["speech_end_ns"] == t["marks"]["speech_started"]
    assert rec.calls["no-greeting"].carrier.media()


# --- voiceaudit run --protocol twilio against the bot (issue 24's done-when) ----------------
#
# ``voiceaudit run --protocol twilio`` against the reference's ``/twilio`` bot, checked
# against the bot's own ground truth (issue 24's done-when).
#
# Two runs of the CLI, one after the other (each starts the built-in pipeline with its
# injections and writes its ground truth next to the trace): the bundled utterances, one
# pass, with
# ``burst=10x`` and ``mark-early`` (about 70 s of real time: a greeting, then six turns whose
# replies the carrier plays at real time); and a scenario whose caller talks over the reply
# with ``burst=10x`` and ``no-clear``, 1 s into a 4.7 s reply (so that the reply to the
# interruption arrives while the carrier still plays the rest of the old one and queues
# behind it: the probe tells the two apart by the carrier's echo of the mark the bot put
# after the old reply, and the new reply's first audio waits in the carrier's buffer). The
# probe plays the carrier (its own model of the carrier's buffer); the bot computes what the
# caller heard with an independent one from the times it sent each message. They may differ
# only by the loopback delivery of a message: the probe's play times start at arrival, the
# truth's at sending; greeting latency also by the delivery of ``start`` (the probe counts
# from sending it, the truth from its arrival).


BARGE_SCENARIO = """
[[session]]
name = "barge"

[[session.turn]]
say = "01_weather"
interrupt = { after_reply_ms = 1000, say = "03_lights" }
"""

RUNS: dict[str, list[str]] = {
    "burst": ["--inject", "burst=10x", "--inject", "mark-early"],
    "no-clear": ["--inject", "burst=10x", "--inject", "no-clear", "--scenario", "{scenario}"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CLI runs, one after the other: a second run on the two cores doubles the
    loopback delivery times the comparisons allow for."""
    base = tmp_path_factory.mktemp("carrier-probe")
    scenario = base / "barge.toml"
    scenario.write_text(BARGE_SCENARIO)
    env = {**os.environ, "COLUMNS": "200"}
    out: dict[str, Path] = {}
    for name, extra in RUNS.items():
        out[name] = base / name
        args = [a.replace("{scenario}", str(scenario)) for a in extra]
        cmd = [sys.executable, "-m", "voiceaudit", "run", "--protocol", "twilio", *args]
        with (base / f"{name}.log").open("w") as log:
            proc = subprocess.run(
                [*cmd, "--json", "--out", str(out[name])],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=600,
                check=False,
            )
        assert proc.returncode == 0, (
            f"{name}: exit {proc.returncode}\n" + (base / f"{name}.log").read_text()[-3000:]
        )
    return out


def trace_events(run: Path) -> list[Event]:
    tr = read_trace(run / "trace.jsonl")
    return sorted((u for e in tr.events for u in unbatch(e)), key=lambda e: e.t_ns)


def run_truth(run: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    recs = read_ground_truth(run / "ground_truth.jsonl")
    turns = [r for r in recs if r.get("record") == "turn" and r.get("carrier")]
    greets = [r for r in recs if r.get("record") == "greeting"]
    return turns, greets


def by_turn(evs: list[Event], name: str) -> dict[int, Event]:
    out: dict[int, Event] = {}
    for e in evs:
        if e.name == name and e.turn is not None:
            out.setdefault(e.turn, e)
    return out


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def test_voice_to_voice_through_the_carrier_equals_the_truth(runs: dict[str, Path]) -> None:
    """``burst=10x``: the bot sends each reply ten times faster than real time; the probe's
    voice-to-voice (its first audible sample as the carrier plays it, less the speech end)
    equals the truth's (the bot's model of the carrier) within 2 ms median, 5 ms p95."""
    evs = trace_events(runs["burst"])
    turns, _ = run_truth(runs["burst"])
    starts, ends = by_turn(evs, "turn.start"), by_turn(evs, "turn.end")
    audible, speech_end = by_turn(evs, "reply.audible"), by_turn(evs, "input.speech_end")
    errors = []
    for k, end in ends.items():
        assert end.attrs["ok"], end.attrs
        t0, t1 = starts[k].t_ns, end.t_ns
        (rec,) = [
            r
            for r in turns
            if r["carrier"]["first_audible_ns"] is not None
            and t0 <= r["carrier"]["first_audible_ns"] <= t1
        ]
        assert rec["carrier"]["burst"] == 10.0
        measured = audible[k].t_ns - speech_end[k].t_ns
        assert measured == end.attrs["voice_to_voice_ns"]
        true = rec["carrier"]["first_audible_ns"] - speech_end[k].t_ns
        errors.append(measured - true)
        # the same sample of the reply is the first audible one on both sides
        assert audible[k].attrs["sample"] == rec["carrier"]["onset_sample"]
    assert len(errors) >= 5
    med, p95 = pct([abs(e) for e in errors], 0.5), pct([abs(e) for e in errors], 0.95)
    print(f"voice-to-voice - truth: {[round(e / MS, 3) for e in errors]} ms")
    assert med <= 2 * MS and p95 <= 5 * MS, [e / MS for e in errors]


def test_greeting_latency_equals_the_truth(runs: dict[str, Path]) -> None:
    """The greeting's latency (``start`` to its first audible sample) as the probe measured
    it equals the truth's within 5 ms."""
    evs = trace_events(runs["burst"])
    _, greets = run_truth(runs["burst"])
    got = [e for e in evs if e.name == "greeting.audible"]
    if not got:
        pytest.skip("the probe writes no greeting.audible events yet (PHONE.md C, the lead's)")
    (g,) = greets
    (e,) = got
    err = e.attrs["latency_ns"] - g["carrier"]["latency_ns"]
    print(
        f"greeting latency {e.attrs['latency_ns'] / MS:.2f} ms, truth "
        f"{g['carrier']['latency_ns'] / MS:.2f} ms"
    )
    assert abs(err) <= 5 * MS, err / MS


def test_no_clear_overhang_equals_the_truth(runs: dict[str, Path]) -> None:
    """``no-clear`` (and ``burst``): the caller talks over the reply, the bot stops sending
    but never clears, so the carrier plays the queued reply on. The probe's stop latency
    (the onset to the last audible sample heard) equals the truth's within one 20 ms
    frame."""
    evs = trace_events(runs["no-clear"])
    turns, _ = run_truth(runs["no-clear"])
    (overlap,) = [e for e in evs if e.name == "input.overlap"]
    (stop,) = [e for e in evs if e.name == "reply.stop"]
    assert not [e for e in evs if e.name == "carrier.clear"]
    (rec,) = [r for r in turns if r["carrier"].get("barge_in")]
    b = rec["carrier"]["barge_in"]
    assert not b["clear"] and b["last_audible_ns"] is not None
    onset = overlap.t_ns
    true = b["last_audible_ns"] - onset
    print(
        f"no-clear overhang: probe {stop.attrs['stop_ns'] / MS:.1f} ms, truth {true / MS:.1f}"
        f" ms (server's onset {(b['onset_ns'] - onset) / MS:+.1f} ms from the probe's)"
    )
    assert true > 1_000 * MS  # seconds of queued reply
    assert abs(stop.attrs["stop_ns"] - true) <= 20 * MS
    # the reply to the interruption queued behind the rest of the old reply: it is the
    # interrupting turn's reply, heard when the truth says, its first audio having waited
    # in the carrier's buffer as long as the truth says (the ledger's carrier buffer)
    opened = overlap.attrs["opens_turn"]
    (answer,) = [r for r in turns if r["carrier"].get("first_audible_ns") and r is not rec]
    audible = by_turn(evs, "reply.audible")[opened]
    assert abs(audible.t_ns - answer["carrier"]["first_audible_ns"]) <= 5 * MS
    assert by_turn(evs, "turn.end")[opened].attrs["ok"]
    queued = answer["carrier"]["first_audible_queued_ns"]
    assert queued > 100 * MS, answer["carrier"]
    err = (audible.t_ns - answer["carrier"]["first_audible_ns"]) / MS
    print(
        f"answer to the interruption: heard {err:+.2f} ms from the truth, "
        f"queued {queued / MS:.0f} ms"
    )


def test_mark_early_is_echoed_before_the_reply_is_heard(runs: dict[str, Path]) -> None:
    """``mark-early``: each reply's mark comes before its audio, so the carrier echoes it
    before the caller heard the reply (the mark the bot relies on lies)."""
    evs = trace_events(runs["burst"])
    audible = by_turn(evs, "reply.audible")
    echoes = [e for e in evs if e.name == "carrier.mark_echo"]
    assert audible
    for k, heard in audible.items():
        start = by_turn(evs, "turn.start")[k].t_ns
        mine = [
            e
            for e in echoes
            if start <= e.t_ns and str(e.attrs.get("name", "")).startswith("reply-")
        ]
        assert mine and mine[0].t_ns < heard.t_ns, (k, [m.attrs for m in mine])
    turns, _ = run_truth(runs["burst"])
    assert all(r["carrier"]["mark"]["early"] for r in turns if r["carrier"]["mark"])
    assert json.dumps(turns)  # the truth is JSON


def test_greeting_ms_makes_the_other_streaming_protocols_greet(rec: Recorded) -> None:
    """``greeting=800ms`` on a raw PCM WebSocket: the server speaks first, its first reply
    audio 800 ms after the connection opened (never sooner), and writes a greeting record
    (``turn`` -1) whose ``greeting`` says when the media began and the first audio left."""
    t0, got = rec.pcm
    audio = [t for t, m in got if isinstance(m, bytes)]
    events = [json.loads(m) for _, m in got if isinstance(m, str)]
    assert audio and audio[0] - t0 >= GREETING_MS * MS
    assert events[0]["type"] == "session.started"
    assert {e.get("turn") for e in events[1:]} == {-1}
    (g,) = [g for g in rec.greetings["greeting"] if g["protocol"] == "pcm"]
    assert g["record"] == "greeting" and g["stage"] == "greeting" and g["turn"] == -1
    assert g["greeting"]["greeting_ns"] == GREETING_MS * MS
    assert g["greeting"]["first_audio_after_ns"] >= GREETING_MS * MS
    assert g["marks"]["first_audio_sent"] - g["greeting"]["media_start_ns"] >= GREETING_MS * MS
    assert g["greeting"]["media_start_ns"] >= t0


def test_the_carrier_injections_parse_describe_and_refuse() -> None:
    """The five carrier injections parse, land in the ground truth's form, round-trip
    through describe(), and bad values are one-line usage errors."""
    from voiceaudit.errors import UsageError
    from voiceaudit.reference.config import parse_injections

    inj = parse_injections(["burst=10x", "no-clear", "greeting=800ms", "mark-early"])
    d = inj.to_dict()
    assert d["burst"] == 10.0 and d["no_clear"] and d["mark_early"]
    assert d["greeting_ns"] == 800 * MS and not d["no_greeting"]
    assert parse_injections(inj.describe()) == inj
    assert parse_injections(["burst=4"]).burst == 4.0
    assert parse_injections(["no-greeting"]).no_greeting
    for bad in ("burst", "burst=fast", "burst=0.5x", "greeting", "greeting=soon", "no-clear=x"):
        with pytest.raises(UsageError) as info:
            parse_injections([bad])
        assert "\n" not in info.value.message
    with pytest.raises(UsageError):
        parse_injections(["greeting=1s", "no-greeting"])


def test_the_outbound_track_is_not_the_caller(rec: Recorded) -> None:
    """Twilio ``tracks=both`` forks the audio the caller heard back to the bot as the
    ``outbound`` track: the bot does not take it for the caller (no turn)."""
    barge = rec.calls["default-barge"].carrier.stream_id
    theirs = {
        t["session_id"]
        for t in rec.turns["default"]
        if (t.get("carrier") or {}).get("stream_id") == barge
    }
    others = [
        t
        for t in rec.turns["default"]
        if t["protocol"] == "twilio" and t["session_id"] not in theirs
    ]
    assert others == [], [(t["status"], t["transcript"]) for t in others]
