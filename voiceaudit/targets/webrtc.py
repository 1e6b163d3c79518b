"""A real WebRTC peer (aiortc) with HTTP offer/answer signalling.

The probe's paced frames go out as an Opus audio track; the remote audio track is the
reply. Stage marks come from an optional data channel (e.g. OpenAI's ``oai-events``).

**Reply timing** is taken at RTP packet arrival, *before* aiortc's jitter buffer and
decoder: the ICE connection's UDP sockets are read on voiceaudit's receive thread, with
the kernel's timestamp of each datagram (:mod:`voiceaudit.targets.rxstamp`), so a probe
loop that stalls does not move them; each RTP packet's arrival is kept by its RTP
timestamp (read from the packet's header, which SRTP leaves in the clear), and every
decoded frame is matched to its packet by RTP timestamp. (Where the sockets cannot be
tapped, the receiver's packet handler stamps the packet when aiortc hands it on.) What
aiortc's own jitter buffer adds (decoded-frame time minus packet arrival) is reported
separately per turn (``webrtc.jitter_buffer`` mark), because a browser's buffer differs.

A WebRTC reply is a continuous stream (silence between replies), so a turn's reply begins
at the first audible frame after the turn started and ends after ``quiet_ms`` of silence.
When the server names the reply's first frame (the reference pipeline's ``first_audio_sent``
stage event carries its ``pts``), the reply starts at that frame instead, so a synthesized
leading silence is the reply's own. That event comes on the data channel, which is
reliable: after a lost packet it waits for SCTP's retransmission (aiortc's timeout is at
least 1 s) and can come after the first audible frame. Once the server has shown that it
sends stage events, the frames after the first audible one are therefore held (up to
``EVENT_WAIT_NS`` of the stream) until the event comes; only then, or at that bound, or
when the turn ends, are they handed on, each with its own RTP arrival time.

**Loopback-only hosts**: aioice skips 127.0.0.1 when gathering host candidates, so on a
machine with no other interface no candidate is gathered at all. When (and only when) the
target's host is a loopback address, voiceaudit makes aioice's host-address lookup return
``127.0.0.1`` for this process.

Signalling (``--target-option signalling=…``): ``json`` (POST ``{"sdp", "type"}``, answer as
JSON: Pipecat SmallWebRTC's ``/api/offer``, the reference pipeline) or ``sdp`` (POST
``application/sdp``, answer in the body: WHIP, OpenAI Realtime's WebRTC endpoint); default
``auto``: JSON unless the URL path ends in ``/calls``, ``/whip`` or ``/sdp``; the answer's
content type decides how it is read. Other options: ``datachannel`` (label, e.g.
``oai-events``; ``voiceaudit run`` opens ``oai-events`` against its built-in pipeline),
``stage_events`` (``on``, the default with a data channel: the offer request carries
``X-Voiceaudit-Stages: 1`` and the reference pipeline's ``voiceaudit.stage`` events become
marks at its own times; ``off``), ``quiet_ms`` (600), ``threshold`` (linear peak for an
audible frame, 0.003), ``connect_timeout`` (seconds, 10), ``mic`` (``continuous``, the
default: silence fills the outgoing stream whenever the probe sends nothing for 40 ms (while
a reply plays, between turns, never inside a turn's speech), as a microphone would, counted
in ``turn.start``'s ``stream_fill_samples``; ``frames``: only the probe's frames).
"""

from __future__ import annotations

import asyncio
import fractions
import ipaddress
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from voiceaudit.errors import TargetError, missing_extra
from voiceaudit.targets import rxstamp
from voiceaudit.targets.base import (
    Target,
    TargetConfig,
    TargetSession,
    TargetSink,
    cancel_quietly,
    close_quietly,
    endpoint_name,
)
from voiceaudit.targets.realtime import TURN_MARKS
from voiceaudit.targets.stages import STAGE_EVENT, STAGES_HEADER, stage_mark, wants_stage_events

RATE = 48000
#: quiet frames kept before the first audible one (3 x 20 ms)
PRE_FRAMES = 3
#: quiet frames held while waiting for the first audible one, when the server says which
#: frame of its continuous stream starts the reply (3 s: longer than any leading silence)
HELD_FRAMES = 150
#: how much of the stream (from the first audible frame on) is held waiting for the server's
#: event naming the reply's first frame, when that event is late: 2 s covers one SCTP
#: retransmission (aiortc waits at least 1 s) on top of its own jitter buffer. Counted in
#: media time, not wall time: the stream is paced by the server.
EVENT_WAIT_NS = 2_000_000_000

#: data-channel event -> (mark name, stage)
_DC_MARKS: dict[str, tuple[str, str]] = {
    **TURN_MARKS,
    "output_audio_buffer.started": ("audio.first_sent", "transport"),
    "output_audio_buffer.stopped": ("audio.last_sent", "transport"),
    "response.done": ("response.done", "model"),
}


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def allow_loopback_ice() -> None:
    """Make aioice gather a host candidate on 127.0.0.1 (loopback targets only)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class _Frame(NamedTuple):
    """A decoded frame of the remote stream, timed at its RTP packet's arrival."""

    arrival: int
    decoded: int
    pcm: bytes
    rate: int
    pts: int | None
    audible: bool

    @property
    def ns(self) -> int:
        return (len(self.pcm) // 2) * 1_000_000_000 // self.rate


class WebRTCSession(TargetSession):
    input_rate = RATE
    warm_up_first = True  # the probe warms up before the peer connection exists

    def __init__(self, config: TargetConfig, sink: TargetSink) -> None:
        super().__init__(config, sink)
        self._pc: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        #: the outgoing track (its idle fill: hold_fill, fill_samples)
        self._track: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._arrivals: dict[int, int] = {}
        #: RTP timestamp -> arrival of its datagram, from the receive thread's kernel stamps
        self._wire: dict[int, int] = {}
        self._ts_origin: int | None = None
        self._connected = asyncio.Event()
        self._failed: str | None = None
        self._in_turn = False
        self._forwarding = False
        self._quiet_ns = 0
        self._jb_delays: list[int] = []
        self._first_rtp_in = False
        self._mapper: Any = None
        #: decoded frames whose packet arrival was not found (timed at decode instead)
        self._unmatched = 0
        #: quiet frames before the first audible one
        self._pre: deque[_Frame] = deque(maxlen=HELD_FRAMES)
        #: media time (pts) of the reply's first frame, when the server said it (the
        #: reference pipeline's first_audio_sent stage event) and it is not used yet
        self._reply_pts: int | None = None
        #: the first audible frame and those after it, while the event naming the reply's
        #: first frame is awaited; and how much of the stream they hold
        self._held: list[_Frame] = []
        self._held_ns = 0
        #: the server has sent stage events on this connection (so it names reply frames)
        self._stages_seen = False
        #: a reply of this turn was started (later ones do not wait for an event)
        self._placed = False
        #: the lowest pts an event may name as a reply's first frame: not before the turn's
        #: first frame, nor at or before a frame already handed on (a stale event)
        self._floor_pts: int | None = None
        #: pts of the last frame decoded (in a turn or not)
        self._last_pts: int | None = None
        self.quiet_ns = config.int_option("quiet_ms", 600) * 1_000_000
        self.threshold = float(config.option("threshold", "0.003"))
        self.stage_events = wants_stage_events(config)

    # -- signalling ---------------------------------------------------------------------

    def _style(self) -> str:
        style = self.config.option("signalling", "auto")
        if style != "auto":
            return style
        path = urlsplit(self.config.url).path.rstrip("/")
        return "sdp" if path.endswith(("/calls", "/whip", "/sdp")) else "json"

    async def _exchange(self, sdp: str) -> str:
        headers = self.config.auth_headers()
        if self.config.options.get("datachannel") and self.stage_events:
            headers[STAGES_HEADER] = "1"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        if self._style() == "sdp":
            headers["Content-Type"] = "application/sdp"
            req = self._http.post(self.config.url, data=sdp.encode(), headers=headers)
        else:
            req = self._http.post(
                self.config.url, json={"sdp": sdp, "type": "offer"}, headers=headers
            )
        async with req as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise TargetError(f"WebRTC signalling: HTTP {resp.status}: {body[:200]}")
            if "json" in resp.headers.get("Content-Type", ""):
                try:
                    answer = json.loads(body)["sdp"]
                except (ValueError, KeyError, TypeError):
                    raise TargetError("WebRTC signalling: JSON answer without 'sdp'") from None
                if not isinstance(answer, str):
                    raise TargetError("WebRTC signalling: 'sdp' is not a string")
                return answer
            return body

    # -- session ------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        except ImportError:
            raise missing_extra("aiortc", "webrtc") from None
        if is_loopback_host(urlsplit(self.config.url).hostname):
            allow_loopback_ice()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc
        self._track = _make_track(
            self._queue, fill_idle=self.config.option("mic", "continuous") != "frames"
        )
        pc.addTrack(self._track)
        label = self.config.options.get("datachannel")
        if label:
            channel = pc.createDataChannel(label)
            channel.on("message", self._on_dc_message)

        @pc.on("track")
        def _on_track(track: Any) -> None:
            if track.kind == "audio":
                self._tasks.append(asyncio.create_task(self._receive(track)))

        @pc.on("iceconnectionstatechange")
        def _on_ice() -> None:
            state = pc.iceConnectionState
            self.sink.mark(f"webrtc.ice_{state}", "session", time.monotonic_ns(), {})

        @pc.on("connectionstatechange")
        def _on_conn() -> None:
            state = pc.connectionState
            t = time.monotonic_ns()
            if state == "connected":
                self.sink.mark("webrtc.dtls_connected", "session", t, {})
                self._connected.set()
            elif state in ("failed", "closed"):
                self._failed = f"WebRTC connection {state} (ICE: {pc.iceConnectionState})"
                self._connected.set()
                self.sink.fail(self._failed)

        timeout = float(self.config.option("connect_timeout", str(self.config.connect_timeout_s)))
        try:
            await asyncio.wait_for(self._negotiate(pc, RTCSessionDescription), timeout)
        except TimeoutError:
            state = getattr(pc, "connectionState", "?")
            await self.close()
            raise TargetError(
                f"WebRTC: not connected within {timeout:g} s (ICE/DTLS state: {state})",
                hint="check the signalling URL and that the target can reach this host",
            ) from None
        except TargetError:
            await self.close()
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            await self.close()
            raise TargetError(f"WebRTC negotiation failed: {exc}") from None
        if self._failed:
            msg = self._failed
            await self.close()
            raise TargetError(
                msg,
                hint="no working ICE candidate pair: check that the answer has candidates "
                "this host can reach",
            )
        # listen from the connection on: reply audio before the first turn is the target's
        # greeting (the probe files it, or drops it when it does not wait for one)
        self._in_turn = True

    async def _negotiate(self, pc: Any, description: Any) -> None:
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # aiortc gathers candidates here (no trickle)
        self._hook_receivers(pc)
        self.sink.mark("webrtc.offer_sent", "session", time.monotonic_ns(), {})
        answer = await self._exchange(pc.localDescription.sdp)
        self.sink.mark("webrtc.answer_received", "session", time.monotonic_ns(), {})
        await pc.setRemoteDescription(description(sdp=answer, type="answer"))
        await self._connected.wait()

    def _hook_receivers(self, pc: Any) -> None:
        """Stamp every RTP packet's arrival before aiortc's jitter buffer sees it.

        Installed before the connection exists, so no packet arrives unstamped.
        """
        self._tap_ice(pc)
        for receiver in pc.getReceivers():
            original = receiver._handle_rtp_packet
            self._mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)

            async def stamped(packet: Any, arrival_time_ms: int, _orig: Any = original) -> None:
                now = self._wire.pop(packet.timestamp, None)
                if now is None:  # not tapped: when aiortc hands the packet on
                    now = time.monotonic_ns()
                if not self._first_rtp_in:
                    self._first_rtp_in = True
                    self.sink.mark("webrtc.first_rtp_received", "session", now, {})
                if self._ts_origin is None:
                    self._ts_origin = packet.timestamp
                self._arrivals[packet.timestamp] = now
                if len(self._arrivals) > 4096:  # bounded: keep the recent ones
                    for k in list(self._arrivals)[:2048]:
                        del self._arrivals[k]
                await _orig(packet, arrival_time_ms=arrival_time_ms)

            receiver._handle_rtp_packet = stamped

    def _tap_ice(self, pc: Any) -> None:
        """Read the ICE connection's UDP sockets on the receive thread (module docstring).
        aioice's sockets are not public API: where they are not found, nothing changes."""
        if rxstamp.disabled():
            return
        seen: set[int] = set()
        for receiver in pc.getReceivers():
            ice = getattr(getattr(receiver, "transport", None), "transport", None)
            conn = getattr(ice, "_connection", None)
            for proto in getattr(conn, "_protocols", None) or []:
                transport = getattr(proto, "transport", None)
                if transport is None or id(transport) in seen:
                    continue
                seen.add(id(transport))
                rxstamp.tap(transport, self._on_datagram)

    def _on_datagram(self, stamp: int, data: bytes, feed: Callable[[], None]) -> None:
        """A datagram read on the receive thread: an RTP packet's arrival is kept by its
        RTP timestamp (RFC 7983: first byte 128-191 is RTP or RTCP; RTCP's packet types
        are 192-223) before the loop's ICE, DTLS and SRTP layers take it."""
        if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            ts = int.from_bytes(data[4:8], "big")
            self._wire.setdefault(ts, stamp)  # a duplicate keeps the first arrival
            if len(self._wire) > 4096:  # bounded: packets aiortc dropped are never popped
                for k in list(self._wire)[:2048]:
                    del self._wire[k]
        feed()

    def _origin(self) -> int | None:
        """The RTP timestamp aiortc subtracts from decoded frames' pts."""
        origin = getattr(self._mapper, "_origin", None)
        return origin if isinstance(origin, int) else self._ts_origin

    async def _receive(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic_ns()
                arrival = now
                origin = self._origin()
                if origin is not None and frame.pts is not None:
                    raw = (int(frame.pts) + origin) % (1 << 32)
                    found = self._arrivals.pop(raw, None)
                    if found is None:
                        self._unmatched += 1
                    else:
                        arrival = found
                else:
                    self._unmatched += 1
                self._on_frame(arrival, now, frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # MediaStreamError: the remote track ended
            if self._in_turn:
                self._release()  # what arrived is the turn's, even without the event
                self.sink.fail("WebRTC: the remote audio track ended")

    def _on_frame(self, arrival: int, decoded: int, frame: Any) -> None:
        if frame.pts is not None:
            self._last_pts = int(frame.pts)
        if not self._in_turn:
            return
        x = frame.to_ndarray()
        channels = len(frame.layout.channels)
        mono = x.reshape(-1, channels).mean(axis=1) if x.ndim == 2 and channels > 1 else x.ravel()
        samples = mono.astype(np.float32) / 32768.0
        pcm = np.clip(mono, -32768, 32767).astype("<i2").tobytes()
        audible = bool(samples.size) and float(np.abs(samples).max()) > self.threshold
        pts = None if frame.pts is None else int(frame.pts)
        self._take(_Frame(arrival, decoded, pcm, int(frame.sample_rate), pts, audible))

    def _take(self, f: _Frame) -> None:
        if self._floor_pts is None and f.pts is not None:
            self._floor_pts = f.pts
        if self._held:
            self._held.append(f)
            self._held_ns += f.ns
            if self._held_ns >= EVENT_WAIT_NS:
                self._release()  # the event is later than any retransmission: give up
            return
        if not self._forwarding:
            if not f.audible:
                # Keep the quiet frames: the reply's first sound may begin in them, below
                # this frame-level gate but audible to the onset detector.
                self._pre.append(f)
                return
            if self._awaits_reply_pts():
                # The server will name the reply's first frame, but has not yet: hold on.
                self._held = [f]
                self._held_ns = f.ns
                return
            self._begin_reply(f.pts)
        self._forward(f)

    def _awaits_reply_pts(self) -> bool:
        """Whether the first audible frame should wait for the server's event naming the
        reply's first frame: the server sends stage events, has not named it yet, and no
        reply of this turn has started (a later one gets no new event)."""
        waiting = self._reply_pts is None and not self._placed
        return self.stage_events and self._stages_seen and waiting

    def _begin_reply(self, audible_pts: int | None) -> None:
        """Start the reply before the frame at ``audible_pts``: hand on the quiet frames
        before it that belong to the reply."""
        self._forwarding = True
        self._placed = True
        self._quiet_ns = 0
        for p in self._reply_start(audible_pts):
            self._emit(p)
        self._pre.clear()
        self._reply_pts = None  # used

    def _emit(self, f: _Frame) -> None:
        self._jb_delays.append(f.decoded - f.arrival)
        self.sink.reply_audio(f.arrival, f.pcm, f.rate, len(f.pcm))
        if f.pts is not None:
            self._floor_pts = f.pts + 1

    def _forward(self, f: _Frame) -> None:
        self._emit(f)
        if f.audible:
            self._quiet_ns = 0
        else:
            self._quiet_ns += f.ns
            if self._quiet_ns >= self.quiet_ns:
                self._forwarding = False
                self.sink.reply_done(f.decoded)

    def _release(self) -> None:
        """Hand on the held frames: the reply starts as :meth:`_reply_start` places it (by
        the server's event when it has come), then each frame goes on as it would have."""
        if not self._held:
            return
        held, self._held, self._held_ns = self._held, [], 0
        self._begin_reply(held[0].pts)
        for f in held:
            self._take(f)

    def _reply_start(self, audible_pts: int | None) -> list[_Frame]:
        """The quiet frames before the first audible one that belong to the reply: from
        the frame the server named as its first reply frame (so a synthesized leading
        silence is the reply's, and the stream's idle silence is not) -- or, when that
        frame never came (its packet was lost, or aiortc's jitter buffer skipped it), from
        the first frame after it -- else the last ``PRE_FRAMES``."""
        pre = list(self._pre)
        want = self._reply_pts
        if want is not None and audible_pts is not None:
            if audible_pts <= want:
                return []
            if all(p.pts is not None for p in pre):
                return [p for p in pre if p.pts is not None and p.pts >= want]
        return pre[-PRE_FRAMES:]

    def _on_reply_pts(self, pts: int) -> None:
        """The server named the media time of its reply's first frame."""
        if self._floor_pts is not None and pts < self._floor_pts:
            return  # a frame before this turn, or one already handed on: a stale event
        self._reply_pts = pts
        if self._held:
            self._release()

    def _on_dc_message(self, message: Any) -> None:
        t = time.monotonic_ns()
        if not isinstance(message, str):
            return
        try:
            ev = json.loads(message)
            kind = ev["type"]
        except (ValueError, KeyError, TypeError):
            self.sink.mark("unknown_event", "other", t, {"raw": "malformed data-channel message"})
            return
        attrs: dict[str, Any] = {"raw": kind}
        server_t = ev.get("t_ns")  # the reference's own (same-host) time, an extension
        if type(server_t) is int:
            attrs["server_t_ns"] = server_t
        if kind in _DC_MARKS:
            name, stage = _DC_MARKS[kind]
            resp = ev.get("response")
            if kind == "response.done" and isinstance(resp, dict):
                attrs["status"] = resp.get("status")
            self.sink.mark(name, stage, t, attrs)
        elif kind == STAGE_EVENT:
            self._stages_seen = True
            got = stage_mark(ev)
            if got is not None:
                name, stage, sattrs = got
                self.sink.mark(name, stage, t, sattrs)
                if "pts" in sattrs:
                    self._on_reply_pts(sattrs["pts"])
        elif kind == "error":
            self.sink.mark("error", "error", t, {"message": str(ev.get("error"))[:200]})

    def connection(self) -> dict[str, Any] | None:
        """The selected ICE pair (the media's UDP endpoints), from aioice's nominated pair
        (not public API: None when it cannot be read)."""
        try:
            ice = self._pc.getSenders()[0].transport.transport
            pair = ice._connection._nominated.get(1)
            local, remote = pair.local_addr, pair.remote_addr
        except Exception:
            return None
        return {"local": endpoint_name(local), "remote": endpoint_name(remote), "transport": "udp"}

    def stream_fill_samples(self) -> int:
        return 0 if self._track is None else int(self._track.fill_samples)

    async def start_turn(self, turn: int) -> None:
        if self._track is not None:
            self._track.hold_fill = True
        if self._in_turn:
            self._release()  # not ended: what is held is the previous turn's
        self._in_turn = True
        self._forwarding = False
        self._pre.clear()
        self._reply_pts = None
        self._held, self._held_ns = [], 0
        self._placed = False
        self._floor_pts = None if self._last_pts is None else self._last_pts + 1
        self._jb_delays = []
        self._unmatched = 0

    async def speech_ended(self) -> None:
        # the turn's speech is out: what follows is trailing silence and the reply, which an
        # idle microphone's fill may pad (counted, for the next turn's stream_fill_samples)
        if self._track is not None:
            self._track.release_fill()

    async def end_turn(self) -> None:
        if self._track is not None and self._track.hold_fill:
            self._track.release_fill()
        if self._in_turn:
            self._release()  # the event never came: nothing received is lost
        self._in_turn = False
        self._forwarding = False
        if self._jb_delays:
            d = np.array(self._jb_delays, dtype=np.float64) / 1e6
            self.sink.mark(
                "webrtc.jitter_buffer",
                "transport",
                time.monotonic_ns(),
                {
                    "frames": len(d),
                    "mean_ms": round(float(d.mean()), 3),
                    "max_ms": round(float(d.max()), 3),
                    "first_ms": round(float(d[0]), 3),
                    "unmatched": self._unmatched,
                },
            )

    async def send_audio(self, pcm16: bytes) -> None:
        if self._pc is None or self._failed:
            raise TargetError(self._failed or "WebRTC session is not open")
        self._queue.put_nowait(pcm16)

    async def close(self) -> None:
        if self._in_turn:
            self._release()
        self._queue.put_nowait(None)
        for task in self._tasks:
            await cancel_quietly(task)
        self._tasks = []
        if self._pc is not None:
            await close_quietly(self._pc, 5)
            self._pc = None
        if self._http is not None:
            await self._http.close()
            self._http = None


#: when the probe has sent nothing for this long, the track sends 20 ms of silence
IDLE_FILL_NS = 40_000_000
FILL_FRAME = RATE * 20 // 1000


def _make_track(queue: asyncio.Queue[bytes | None], *, fill_idle: bool = True) -> Any:
    """An outgoing audio track that sends the frames the probe paces.

    Like a microphone it never goes quiet on the wire: between the probe's frames (while a
    reply plays, between turns) it sends silence every 20 ms, so the remote end's idle
    watchers and jitter buffers see a live stream. Not while a turn's speech is going out
    (``hold_fill``, from the session's ``start_turn`` to its ``speech_ended``: the probe's
    own frames are the stream then), so a probe that falls 40 ms behind sends its frame
    late, as a late microphone would, instead of slipping 20 ms of silence into the
    caller's speech; and ``fill_samples`` (what it added) is exact at a turn's start.
    """
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    silence = bytes(FILL_FRAME * 2)

    class ProbeTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._pts = 0
            self._next_fill: int | None = None
            #: a turn's speech is going out: no idle fill (see above)
            self.hold_fill = False
            #: the silence this track added on its own, in samples
            self.fill_samples = 0

        def release_fill(self) -> None:
            """The turn's speech is out: idle fill resumes after ``IDLE_FILL_NS`` of quiet."""
            self.hold_fill = False
            if self._next_fill is not None:
                self._next_fill = time.monotonic_ns() + IDLE_FILL_NS

        async def _next(self) -> bytes | None:
            if not fill_idle or self._next_fill is None:
                return await queue.get()
            while True:
                wait = (self._next_fill - time.monotonic_ns()) / 1e9
                try:
                    data = await asyncio.wait_for(queue.get(), max(0.0, wait))
                except TimeoutError:
                    self._next_fill += FILL_FRAME * 1_000_000_000 // RATE
                    if self.hold_fill:
                        # look again a frame later (release_fill may come meanwhile)
                        self._next_fill = max(self._next_fill, time.monotonic_ns())
                        continue
                    self.fill_samples += FILL_FRAME
                    return silence
                self._next_fill = time.monotonic_ns() + IDLE_FILL_NS
                return data

        async def recv(self) -> Any:
            if self._next_fill is None and fill_idle:
                data = await queue.get()
                self._next_fill = time.monotonic_ns() + IDLE_FILL_NS
            else:
                data = await self._next()
            if data is None:
                self.stop()
                raise MediaStreamError
            n = len(data) // 2
            frame = av.AudioFrame(format="s16", layout="mono", samples=n)
            frame.planes[0].update(data)
            frame.sample_rate = RATE
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, RATE)
            self._pts += n
            return frame

    return ProbeTrack()


class WebRTCTarget(Target):
    protocol = "webrtc"
    path = "webrtc"
    schemes = ("http", "https")
    description = "a WebRTC peer (aiortc) with HTTP offer/answer signalling"
    options = {  # noqa: RUF012 - read-only, as in Target
        "signalling": "auto (default) | json (POST {sdp, type}: Pipecat, reference) | sdp (WHIP)",
        "datachannel": "label of a data channel to open for stage events (e.g. oai-events)",
        "stage_events": "on (default with a datachannel: reference stage events as marks) | off",
        "quiet_ms": "silence that ends a reply on the continuous stream (default 600)",
        "threshold": "linear peak above which a frame is audible (default 0.003)",
        "connect_timeout": "seconds to wait for signalling and ICE/DTLS (default 10)",
        "mic": "continuous (default: silence fills the idle mic) | frames (only the probe's)",
    }
    session_class = WebRTCSession
