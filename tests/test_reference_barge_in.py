"""Barge-in on the reference pipeline, over every streaming protocol it serves.

Real ``voiceaudit serve`` processes on loopback; small real clients (aiohttp WebSockets,
an aiortc peer) speak a bundled utterance at real-time pace, and 1.2 s into the reply
(counted in reply samples received, not wall time) start speaking another one. The
server's VAD hears them and stops its reply; its ground truth says when it heard them
and what reply audio still went out. ``barge-in-delay=300ms`` keeps the reply going for
300 ms more (in the ground truth, and in the samples the client received);
``no-barge-in`` sends the whole reply. ``endpointing-silence=200ms`` ends the caller's
turn in a 400 ms mid-utterance pause (two turns where the default gives one).

The servers release reply audio at real time (``slow-audio=1.0``, like a streaming
synthesizer), so there is reply audio left to stop when the caller barges in; over
WebRTC the track is real-time anyway. Nothing here bounds wall-clock time: the
assertions are sample counts and ground truth, so they hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from test_reference_support import Served, pcm16, serve_many

from voiceaudit.audio import read_audio

pytestmark = pytest.mark.slow

UTTERANCES = Path(__file__).resolve().parent.parent / "voiceaudit" / "data" / "utterances"
FIRST = "01_weather.wav"  # the caller's question
BARGE = "03_lights.wav"  # what the caller says over the reply
PAUSED = "02_table.wav"  # split at 1.2 s by a 400 ms pause (no natural pause ≥ 200 ms)
TRIGGER_S = 1.2  # the caller barges in this far into the reply (reply samples received)
MS = 1_000_000

#: Realtime and raw PCM: reply audio released at real time, so there is some left to stop.
PACED = {
    "base": ["--inject", "slow-audio=1.0"],
    "delay": ["--inject", "slow-audio=1.0", "--inject", "barge-in-delay=300ms"],
    "none": ["--inject", "slow-audio=1.0", "--inject", "no-barge-in"],
}
#: WebRTC: the outgoing track plays at real time by itself.
TRACK = {
    "base": [],
    "delay": ["--inject", "barge-in-delay=300ms"],
    "none": ["--inject", "no-barge-in"],
}
ENDPOINTING = {"base": [], "endpointing": ["--inject", "endpointing-silence=200ms"]}


#: every server the classes below use, by name: WebRTC's and endpointing's plain server
#: (no injection) is one
CONFIGS = {
    **{f"paced-{k}": v for k, v in PACED.items()},
    **{f"track-{k}": v for k, v in TRACK.items() if k != "base"},
    "plain": TRACK["base"],
    "endpointing": ENDPOINTING["endpointing"],
}
assert TRACK["base"] == ENDPOINTING["base"] == []


@pytest.fixture(scope="module")
def all_servers() -> Iterator[dict[str, Served]]:
    """The servers of :data:`CONFIGS`, started at once (their start-up overlaps) and shared
    by the tests: every check reads its own sessions' ground truth only."""
    with serve_many(list(CONFIGS.values()), asr_workers=1) as started:
        yield dict(zip(CONFIGS, started, strict=True))


def load(name: str, rate: int) -> np.ndarray:
    return np.asarray(read_audio(UTTERANCES / name, rate=rate).samples, dtype=np.float32)


def with_pause(x: np.ndarray, rate: int, at_ms: int = 1200, ms: int = 400) -> np.ndarray:
    cut = at_ms * rate // 1000
    return np.concatenate([x[:cut], np.zeros(ms * rate // 1000, dtype=np.float32), x[cut:]])


class Mic:
    """The caller's microphone: what it says next, 20 ms at a time, silence otherwise."""

    def __init__(self, speech: np.ndarray, rate: int) -> None:
        self.rate = rate
        self.frame = rate // 50
        self.cur = speech
        self.pos = 0
        self.said_all = asyncio.Event()

    def say(self, speech: np.ndarray) -> None:
        self.cur, self.pos = speech, 0
        self.said_all.clear()

    def next(self) -> np.ndarray:
        chunk = self.cur[self.pos : self.pos + self.frame]
        self.pos += self.frame
        if self.pos >= self.cur.size:
            self.said_all.set()
        if chunk.size < self.frame:
            chunk = np.concatenate([chunk, np.zeros(self.frame - chunk.size, dtype=np.float32)])
        return chunk


async def paced(mic: Mic, send: Any) -> None:
    """Send the microphone at real-time pace, on absolute deadlines, forever."""
    start = time.monotonic()
    n = 0
    while True:
        await send(mic.next())
        n += 1
        delay = start + n * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@asynccontextmanager
async def talking(
    server: Served, mic: Mic, protocol: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket to the server (``pcm`` at the microphone's rate, or ``realtime``) over
    which ``mic`` is sent at real-time pace while the block runs."""
    if protocol == "pcm":
        url = f"{server.ws}/v1/pcm?rate={mic.rate}"
    else:
        url = f"{server.ws}/v1/realtime?model=gpt-realtime"
    async with aiohttp.ClientSession() as cs, cs.ws_connect(url) as ws:

        async def send(x: np.ndarray) -> None:
            if protocol == "pcm":
                await ws.send_bytes(pcm16(x))
            else:
                audio = base64.b64encode(pcm16(x)).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

        sender = asyncio.create_task(paced(mic, send))
        try:
            yield ws
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


@dataclass
class Barge:
    """What a barging-in client saw of the interrupted reply (turn 0)."""

    protocol: str
    rate: int
    session_id: str = ""
    #: reply samples received when the caller started to speak over it
    trigger_samples: int = 0
    #: reply samples received in all
    reply_samples: int = 0
    #: WebRTC: reply samples received up to the media time at which the server heard
    #: the caller (its speech_started event names it)
    heard_samples: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def after_ms(self) -> float:
        """Reply audio received after the caller started speaking over it."""
        return (self.reply_samples - self.trigger_samples) * 1000 / self.rate


# --- clients -------------------------------------------------------------------------------


async def pcm_barge(server: Served, *, interrupt: bool = True) -> Barge:
    rate = 16_000
    out = Barge("pcm", rate)
    mic = Mic(load(FIRST, rate), rate)
    barge = load(BARGE, rate)
    async with talking(server, mic, "pcm") as ws:
        turn = 0
        async with asyncio.timeout(120):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    if turn == 0:
                        out.reply_samples += len(msg.data) // 2
                        due = out.reply_samples >= TRIGGER_S * rate
                        if interrupt and not out.trigger_samples and due:
                            out.trigger_samples = out.reply_samples
                            mic.say(barge)
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                out.events.append(ev)
                if ev["type"] == "session.started":
                    out.session_id = ev["session_id"]
                if ev["type"] == "turn_done":
                    turn = ev["turn"] + 1
                    if ev["turn"] >= 1:
                        break
    return out


async def realtime_barge(server: Served, *, truncate: bool = True) -> Barge:
    rate = 24_000
    out = Barge("realtime", rate)
    mic = Mic(load(FIRST, rate), rate)
    barge = load(BARGE, rate)
    first_item: str | None = None
    async with talking(server, mic, "realtime") as ws:
        responses = 0
        async with asyncio.timeout(120):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                out.events.append(ev)
                kind = ev["type"]
                if kind == "session.created":
                    out.session_id = ev["session"]["id"]
                elif kind == "response.output_audio.delta" and responses == 0:
                    first_item = first_item or ev["item_id"]
                    out.reply_samples += len(base64.b64decode(ev["delta"])) // 2
                    if not out.trigger_samples and out.reply_samples >= TRIGGER_S * rate:
                        out.trigger_samples = out.reply_samples
                        mic.say(barge)
                elif (
                    kind == "input_audio_buffer.speech_started"
                    and out.trigger_samples
                    and truncate
                    and first_item is not None
                ):
                    # what a client does: say how much of the reply it played
                    played_ms = out.trigger_samples * 1000 // rate
                    await ws.send_str(
                        json.dumps(
                            {
                                "type": "conversation.item.truncate",
                                "item_id": first_item,
                                "content_index": 0,
                                "audio_end_ms": played_ms,
                            }
                        )
                    )
                    truncate = False
                elif kind == "response.done":
                    responses += 1
                    if responses >= 2:
                        break
    return out


def _mic_track(mic: Mic) -> Any:
    import av
    from aiortc.mediastreams import MediaStreamTrack

    class MicTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.k = 0
            self.t0: int | None = None

        async def recv(self) -> Any:
            if self.t0 is None:
                self.t0 = time.monotonic_ns()
            delay = (self.t0 + self.k * 20 * MS - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            frame = av.AudioFrame(format="s16", layout="mono", samples=mic.frame)
            frame.planes[0].update(pcm16(mic.next()))
            frame.sample_rate = 48_000
            frame.pts = self.k * mic.frame
            frame.time_base = fractions.Fraction(1, 48_000)
            self.k += 1
            return frame

    return MicTrack()


@dataclass
class Rtc:
    """A WebRTC call: the received stream by media time, and the data channel's events."""

    session_id: str = ""
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def stage(self, name: str) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["type"] == "voiceaudit.stage" and e.get("stage") == name
        ]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events if e["type"] != "voiceaudit.stage"]

    #: received media time minus the server's (aiortc counts a received stream from its
    #: first packet: when the first packets were lost the two differ); None until known
    offset: int | None = None

    def samples_between(self, lo: int, hi: int) -> int:
        """Samples received in frames whose media time, by the server's count, is in
        ``[lo, hi)``."""
        off = self.offset or 0
        return sum(x.size for pts, x in self.frames if lo + off <= pts < hi + off)


async def webrtc_call(
    server: Served,
    speech: np.ndarray,
    *,
    barge: np.ndarray | None = None,
    until: Any,
) -> tuple[Rtc, int]:
    """Speak ``speech`` over WebRTC; with ``barge``, speak it 1.2 s into the first reply.
    Ends when ``until(rtc, mic)`` holds (checked at each data-channel event). Returns
    the call and the media time at which the caller started to barge in (0 without)."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from voiceaudit.targets.webrtc import allow_loopback_ice

    allow_loopback_ice()
    rate = 48_000
    mic = Mic(speech, rate)
    rtc = Rtc()
    state = {"onset": -1, "barge_pts": 0}
    done = asyncio.Event()
    pc = RTCPeerConnection()
    pc.addTrack(_mic_track(mic))
    channel = pc.createDataChannel("oai-events")

    def on_message(raw: Any) -> None:
        rtc.events.append(json.loads(raw))
        if until(rtc, mic):
            done.set()

    channel.on("message", on_message)

    async def receive(track: Any) -> None:
        with_error = (Exception,)
        try:
            while True:
                frame = await track.recv()
                x = frame.to_ndarray()
                mono = x.reshape(-1, len(frame.layout.channels)).mean(axis=1) / 32768.0
                pts = int(frame.pts)
                rtc.frames.append((pts, mono.astype(np.float32)))
                firsts = rtc.stage("first_audio_sent")
                if firsts and rtc.offset is None:
                    # the first audible frame of the stream is the reply's (silence before)
                    heard = next((p for p, y in rtc.frames if np.abs(y).max() > 0.01), None)
                    if heard is not None:
                        rtc.offset = _offset(heard, int(firsts[0]["pts"]))
                due = rtc.offset is not None and pts >= int(firsts[0]["pts"]) + rtc.offset + int(
                    TRIGGER_S * rate
                )
                if barge is not None and not state["barge_pts"] and due:
                    state["barge_pts"] = pts
                    mic.say(barge)
        except with_error:
            return

    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        tasks.append(asyncio.ensure_future(receive(track)))

    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession() as cs,
            cs.post(
                server.url + "/v1/webrtc/offer",
                json={"sdp": pc.localDescription.sdp, "type": "offer"},
                headers={"X-Voiceaudit-Stages": "1"},
            ) as resp,
        ):
            answer = await resp.json()
        rtc.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.wait_for(done.wait(), 120)
    finally:
        await pc.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return rtc, state["barge_pts"]


def _offset(received_pts: int, server_pts: int) -> int:
    """Where the server's first reply frame is in the received stream: the first audible
    received frame is it (eSpeak's leading silence is under a frame) or the next; a larger
    difference is packets lost before the receiver counted its first."""
    diff = received_pts - server_pts
    return 0 if abs(diff) <= 2 * 960 else diff


def _dones(rtc: Rtc) -> int:
    return sum(1 for e in rtc.events if e["type"] == "response.done")


async def webrtc_barge(server: Served) -> Barge:
    rtc, barge_pts = await webrtc_call(
        server,
        load(FIRST, 48_000),
        barge=load(BARGE, 48_000),
        until=lambda r, _: _dones(r) >= 2,
    )
    first = int(rtc.stage("first_audio_sent")[0]["pts"])
    end = int(rtc.stage("last_audio_sent")[0]["end_pts"])
    out = Barge("webrtc", 48_000, session_id=rtc.session_id, events=rtc.events)
    # the reply's frames as received (the server names its first and last by media time)
    out.reply_samples = rtc.samples_between(first, end)
    out.trigger_samples = rtc.samples_between(first, barge_pts - (rtc.offset or 0))
    # where the outgoing stream was when the server heard the caller: the client's own
    # position (barge_pts) lags it by both jitter buffers, which a loaded machine stretches
    heard = next(
        e
        for e in rtc.events
        if e["type"] == "input_audio_buffer.speech_started" and e["pts"] > first
    )
    out.heard_samples = rtc.samples_between(first, int(heard["pts"]))
    return out


BARGERS = {"pcm": pcm_barge, "realtime": realtime_barge, "webrtc": webrtc_barge}


def _truth(server: Served, session_id: str, turn: int) -> dict[str, Any]:
    from voiceaudit.reference.groundtruth import turn_records

    deadline = time.monotonic() + 30
    while True:
        for r in turn_records(server.records()):
            if r["session_id"] == session_id and r["turn"] == turn:
                return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no ground truth for {session_id} turn {turn}")
        time.sleep(0.05)


# --- barge-in --------------------------------------------------------------------------------


class TestPaced:
    """Realtime and raw PCM (``slow-audio=1.0`` servers)."""

    @pytest.fixture(scope="class")
    @classmethod
    def servers(cls, all_servers: dict[str, Served]) -> dict[str, Served]:
        return {k: all_servers[f"paced-{k}"] for k in PACED}

    @pytest.mark.parametrize("protocol", ["pcm", "realtime"])
    def test_barge_in_stops_the_reply_and_the_delay_is_recovered(
        self, servers: dict[str, Served], protocol: str
    ) -> None:
        check_barge_in(servers, protocol)

    def test_realtime_response_cancel_stops_the_reply_at_once(
        self, servers: dict[str, Served]
    ) -> None:
        check_response_cancel(servers["base"])


class TestWebRTC:
    @pytest.fixture(scope="class")
    @classmethod
    def servers(cls, all_servers: dict[str, Served]) -> dict[str, Served]:
        pytest.importorskip("aiortc")
        return {"base": all_servers["plain"]} | {
            k: all_servers[f"track-{k}"] for k in TRACK if k != "base"
        }

    def test_barge_in_stops_the_reply_and_the_delay_is_recovered(
        self, servers: dict[str, Served]
    ) -> None:
        check_barge_in(servers, "webrtc")


class TestEndpointing:
    @pytest.fixture(scope="class")
    @classmethod
    def servers(cls, all_servers: dict[str, Served]) -> dict[str, Served]:
        return {"base": all_servers["plain"], "endpointing": all_servers["endpointing"]}

    @pytest.mark.parametrize("protocol", ["pcm", "realtime", "webrtc"])
    def test_endpointing_silence_cuts_in_on_a_mid_utterance_pause(
        self, servers: dict[str, Served], protocol: str
    ) -> None:
        if protocol == "webrtc":
            pytest.importorskip("aiortc")
        check_endpointing(servers, protocol)


def check_barge_in(servers: dict[str, Served], protocol: str) -> None:
    client = BARGERS[protocol]

    async def main() -> list[Barge]:
        return list(await asyncio.gather(*(client(servers[k]) for k in ("base", "delay", "none"))))

    base, delay, none = asyncio.run(main())
    truth = {
        name: _truth(servers[name], got.session_id, 0)
        for name, got in (("base", base), ("delay", delay), ("none", none))
    }
    rate_of = {name: t["audio"]["output_rate"] for name, t in truth.items()}
    for name, got in (("base", base), ("delay", delay), ("none", none)):
        t = truth[name]
        assert got.trigger_samples > 0, (name, got.events[-5:])
        b = t["barge_in"]
        assert b is not None, (name, t)
        assert b["by_turn"] == 1
        # the server heard the caller after the client started speaking over the reply
        assert b["audio_before_samples"] * 1000 / rate_of[name] >= TRIGGER_S * 1000 - 20, b
        # what the client received is what the server sent (WebRTC: up to a frame)
        slack = 960 if protocol == "webrtc" else 0
        assert abs(got.reply_samples - t["audio"]["reply_audio_samples"]) <= slack, (name, t)

    # barge-in: the reply stops as soon as the VAD hears the caller
    t = truth["base"]
    assert t["status"] == "cancelled" and t["reply_cut"] and t["barge_in"]["cut"], t
    assert t["barge_in"]["delay_ns"] == 0
    # at most one message after the caller was heard (on the reply's own clock)
    assert t["barge_in"]["scheduled_after_ns"] <= 20 * MS, t["barge_in"]
    assert t["barge_in"]["stopped_ns"] >= t["barge_in"]["detected_ns"]

    # barge-in-delay=300ms: 300 ms more reply audio after the detection
    t = truth["delay"]
    assert t["status"] == "cancelled" and t["reply_cut"], t
    assert t["barge_in"]["delay_ns"] == 300 * MS and t["injected"]["barge_in_delay_ns"] == 300 * MS
    after = t["barge_in"]["scheduled_after_ns"] / MS
    assert 280 <= after <= 320, t["barge_in"]  # 15 messages of 20 ms, give or take one
    # sent after the detection by the wall clock: those, and any a loaded loop held back
    assert t["barge_in"]["audio_after_ns"] >= t["barge_in"]["scheduled_after_ns"]
    last = t["barge_in"]["last_audio_sent_ns"]
    assert last is not None and last > t["barge_in"]["detected_ns"] + 250 * MS
    # ... and the client received ≈ 300 ms more samples after it started speaking
    extra = delay.after_ms - base.after_ms
    if protocol == "webrtc":
        # received after the media time at which the server heard the caller
        extra = (
            (
                (delay.reply_samples - delay.heard_samples)
                - (base.reply_samples - base.heard_samples)
            )
            * 1000
            / delay.rate
        )
        assert t["barge_in"]["pts"] is not None
    assert 240 <= extra <= 360, (base.after_ms, delay.after_ms, extra)

    # no-barge-in: the whole reply goes out, the barge-in is only recorded
    t = truth["none"]
    assert t["status"] == "completed" and not t["reply_cut"], t
    assert t["barge_in"]["delay_ns"] is None and not t["barge_in"]["cut"]
    assert none.reply_samples > delay.reply_samples + rate_of["none"]  # > 1 s more
    assert none.after_ms > 1000

    # the interrupting speech is a turn of its own, answered
    for name in ("base", "delay", "none"):
        got = {"base": base, "delay": delay, "none": none}[name]
        t1 = _truth(servers[name], got.session_id, 1)
        assert t1["status"] == "completed" and t1["audio"]["reply_audio_samples"] > 0, t1

    if protocol == "realtime":
        _check_realtime_events(base, truth["base"], delay, truth["delay"])
    if protocol == "pcm":
        done = next(e for e in base.events if e["type"] == "turn_done" and e["turn"] == 0)
        assert done["status"] == "cancelled" and done["cut"] and done["reason"] == "barge_in"
        assert done["barge_in_ns"] == truth["base"]["barge_in"]["detected_ns"]
        assert done["reply_samples"] == base.reply_samples
        done = next(e for e in none.events if e["type"] == "turn_done" and e["turn"] == 0)
        assert done["status"] == "completed" and not done["cut"]
    if protocol == "webrtc":
        types = [e["type"] for e in base.events if e["type"] != "voiceaudit.stage"]
        assert "output_audio_buffer.cleared" in types, types
        done = next(e for e in base.events if e["type"] == "response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        done = next(e for e in none.events if e["type"] == "response.done")
        assert done["response"]["status"] == "completed"


def _check_realtime_events(
    base: Barge, base_truth: dict[str, Any], delay: Barge, delay_truth: dict[str, Any]
) -> None:
    from openai.types.realtime.realtime_server_event import RealtimeServerEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RealtimeServerEvent)
    for got, t in ((base, base_truth), (delay, delay_truth)):
        for ev in got.events:
            adapter.validate_python(ev)  # every event is the real API's shape
        types = [e["type"] for e in got.events]
        first_done = types.index("response.done")
        # the caller's speech is announced before the cut reply ends
        assert "input_audio_buffer.speech_started" in types[: first_done + 1][1:], types
        done = got.events[first_done]["response"]
        assert done["status"] == "cancelled", done
        assert done["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
            "error": None,
        }
        truncated = next(e for e in got.events if e["type"] == "conversation.item.truncated")
        played_ms = got.trigger_samples * 1000 // got.rate
        assert truncated["audio_end_ms"] == played_ms
        assert t["truncate"] is not None and t["truncate"]["audio_end_ms"] == played_ms, t
        assert t["truncate"]["item_id"] == truncated["item_id"]


def check_response_cancel(server: Served) -> None:
    """A client's ``response.cancel`` (no speech): the reply stops, ``response.done`` says
    ``client_cancelled``, the ground truth holds the cancel; a truncate of an unknown item
    is refused."""
    rate = 24_000

    async def main() -> tuple[str, list[dict[str, Any]], int, int]:
        mic = Mic(load(FIRST, rate), rate)
        events: list[dict[str, Any]] = []
        received = at_cancel = 0
        session_id = ""
        async with talking(server, mic, "realtime") as ws:
            async with asyncio.timeout(120):
                async for msg in ws:
                    ev = json.loads(msg.data)
                    events.append(ev)
                    if ev["type"] == "session.created":
                        session_id = ev["session"]["id"]
                    if ev["type"] == "response.output_audio.delta":
                        received += len(base64.b64decode(ev["delta"])) // 2
                        if not at_cancel and received >= TRIGGER_S * rate:
                            at_cancel = received
                            await ws.send_str(
                                json.dumps(
                                    {
                                        "type": "conversation.item.truncate",
                                        "item_id": "item_nope",
                                        "content_index": 0,
                                        "audio_end_ms": 10,
                                    }
                                )
                            )
                            await ws.send_str(
                                json.dumps({"type": "response.cancel", "event_id": "ev_1"})
                            )
                    if ev["type"] == "response.done":
                        break
        return session_id, events, received, at_cancel

    session_id, events, received, at_cancel = asyncio.run(main())
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["error"]["param"] == "item_id", errors
    t = _truth(server, session_id, 0)
    assert t["status"] == "cancelled" and t["reply_cut"] and t["barge_in"] is None, t
    assert t["cancel"] is not None and t["cancel"]["event_id"] == "ev_1"
    # nothing, or the one message already on its way, after the cancel was handled
    after = [s for s in t["audio_sent_ns"] if s > t["cancel"]["t_ns"]]
    assert len(after) <= 1, after
    assert received == t["audio"]["reply_audio_samples"] and received >= at_cancel


# --- endpointing silence: a mid-utterance pause ends the turn ------------------------------


async def _paused_pcm(server: Served) -> str:
    rate = 16_000
    mic = Mic(with_pause(load(PAUSED, rate), rate), rate)
    async with talking(server, mic, "pcm") as ws:
        session_id = ""
        async with asyncio.timeout(120):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                if ev["type"] == "session.started":
                    session_id = ev["session_id"]
                if (
                    ev["type"] == "turn_done"
                    and ev["status"] == "completed"
                    and mic.said_all.is_set()
                ):
                    break
    return session_id


async def _paused_realtime(server: Served) -> str:
    rate = 24_000
    mic = Mic(with_pause(load(PAUSED, rate), rate), rate)
    async with talking(server, mic, "realtime") as ws:
        session_id = ""
        stopped_after_all = False
        last_response: str | None = None
        async with asyncio.timeout(120):
            async for msg in ws:
                ev = json.loads(msg.data)
                kind = ev["type"]
                if kind == "session.created":
                    session_id = ev["session"]["id"]
                if kind == "input_audio_buffer.speech_stopped" and mic.said_all.is_set():
                    stopped_after_all = True
                if kind == "response.created" and stopped_after_all:
                    last_response = ev["response"]["id"]  # the answer to the whole turn
                if kind == "response.done" and ev["response"]["id"] == last_response:
                    break
    return session_id


async def _paused_webrtc(server: Served) -> str:
    final: dict[str, Any] = {"stopped": False, "response": None}

    def until(rtc: Rtc, mic: Mic) -> bool:
        # the endpoint after the whole utterance was said, then that reply's end
        ev = rtc.events[-1]
        kind = ev["type"]
        if kind == "input_audio_buffer.speech_stopped" and mic.said_all.is_set():
            final["stopped"] = True
        if kind == "response.created" and final["stopped"]:
            final["response"] = ev["response"]["id"]
        return kind == "response.done" and ev["response"]["id"] == final["response"]

    rtc, _ = await webrtc_call(server, with_pause(load(PAUSED, 48_000), 48_000), until=until)
    return rtc.session_id


PAUSERS = {"pcm": _paused_pcm, "realtime": _paused_realtime, "webrtc": _paused_webrtc}


def check_endpointing(servers: dict[str, Served], protocol: str) -> None:
    client = PAUSERS[protocol]

    async def main() -> tuple[str, str]:
        short, default = await asyncio.gather(
            client(servers["endpointing"]), client(servers["base"])
        )
        return short, default

    short_id, default_id = asyncio.run(main())
    time.sleep(0.5)  # the last records are written when their turns end

    def turns(server: Served, session_id: str) -> list[dict[str, Any]]:
        return sorted(
            (r for r in server.turns() if r["session_id"] == session_id),
            key=lambda r: r["turn"],
        )

    default = turns(servers["base"], default_id)
    assert len(default) == 1, [(r["turn"], r["status"], r["audio"]) for r in default]
    assert default[0]["status"] == "completed"
    assert default[0]["audio"]["audio_end_ms"] - default[0]["audio"]["speech_end_ms"] == 500

    short = turns(servers["endpointing"], short_id)
    assert len(short) == 2, [(r["turn"], r["status"], r["audio"]) for r in short]
    first, second = short
    assert first["injections"]["endpointing_silence_ns"] == 200 * MS
    assert first["audio"]["audio_end_ms"] - first["audio"]["speech_end_ms"] == 200
    # the first turn ended in the pause (the pause starts 1.2 s into the speech)
    assert second["audio"]["speech_start_ms"] - first["audio"]["speech_end_ms"] >= 250
    assert second["status"] == "completed"


# --- units: the injections and the ground-truth records --------------------------------------


def test_turn_taking_injections_parse_describe_and_refuse() -> None:
    from voiceaudit.errors import UsageError
    from voiceaudit.reference.config import Injections, parse_injections

    inj = parse_injections(["barge-in-delay=300ms", "no-barge-in", "endpointing-silence=0.2s"])
    d = inj.to_dict()
    assert d["barge_in_delay_ns"] == 300 * MS and d["no_barge_in"] is True
    assert d["endpointing_silence_ns"] == 200 * MS
    assert parse_injections(inj.describe()) == inj  # describe() round-trips
    assert (
        inj.endpointing_silence_ms(500) == 200 and Injections().endpointing_silence_ms(500) == 500
    )
    assert not parse_injections(["no-barge-in=off"]).no_barge_in
    for bad in (
        "barge-in-delay",
        "barge-in-delay=soon",
        "endpointing-silence=5ms",
        "no-barge-in=x",
    ):
        with pytest.raises(UsageError) as info:
            parse_injections([bad])
        assert "\n" not in info.value.message


def test_a_late_truncate_is_its_own_record_and_folds_into_its_turn(tmp_path: Path) -> None:
    from voiceaudit.reference.config import Injections
    from voiceaudit.reference.groundtruth import (
        GroundTruth,
        TurnRecord,
        read_ground_truth,
        turn_records,
    )

    path = tmp_path / "truth.jsonl"
    truth = GroundTruth(path, {})
    rec = TurnRecord("sess_1", 0, "realtime", Injections().to_dict(), output_rate=24_000)
    rec.audio_sent_ns = [100, 200, 300]
    rec.reply_audio_samples = 3 * 480
    rec.barge_in_detected(150, turn=1, speech_start_ms=900, delay_ns=0, sent_samples=480)
    rec.reply_cut = True
    rec.settle_barge_in(stopped_ns=310)
    truth.write_turn(rec)
    rec.truncate = {"t_ns": 400, "item_id": "item_1", "content_index": 0, "audio_end_ms": 20}
    truth.write_truncate(rec)
    truth.close()
    records = read_ground_truth(path)
    assert [r["record"] for r in records] == ["header", "turn", "truncate", "footer"]
    assert records[1]["truncate"] is None  # the file stays append-only
    (turn,) = turn_records(records)
    assert turn["truncate"]["audio_end_ms"] == 20 and turn["truncate"]["item_id"] == "item_1"
    assert truth.records[0]["truncate"]["audio_end_ms"] == 20  # server.turns is updated
    b = turn["barge_in"]
    assert b["messages_after"] == 2 and b["last_audio_sent_ns"] == 300
    assert b["audio_after_samples"] == 960 and b["audio_after_ns"] == 40 * MS
    assert b["cut"] and b["stopped_ns"] == 310 and turn["reply_cut"]
    assert turn["audio"]["reply_audio_samples"] == 1440
