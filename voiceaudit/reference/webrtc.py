"""The reference pipeline over WebRTC (aiortc): a protocol adapter over the session core.

Signalling (``POST /v1/webrtc/offer``, Pipecat's ``/api/offer``) is in
:mod:`voiceaudit.reference.webrtc_signal`; every route runs this module's session.

Media: the client's audio track feeds the same input pipeline as every other protocol
(VAD endpointing, PocketSphinx); the reply plays on an outgoing audio track paced in real
time, 20 ms frames at 48 kHz, silence between replies (a WebRTC stream never stops). If the
client opens a data channel, the server sends OpenAI-Realtime-style events on it
(``input_audio_buffer.speech_started``/``speech_stopped``,
``conversation.item.input_audio_transcription.completed``, ``response.created``,
``output_audio_buffer.started``/``stopped``, ``response.done``), each with the server's
``t_ns``.

With ``greeting=MS`` the bot greets MS after the peer connection connected (media up).

Ground truth: ``first_audio_sent`` / ``last_audio_sent`` and ``audio_sent_ns`` are the
times reply frames were handed to aiortc's encoder (not when they were synthesized).

Fault injection on the outgoing media (besides the pipeline's own): ``rtp-jitter=20ms``
delays each outgoing RTP packet by a seeded uniform random 0..20 ms (order kept), and
``rtp-loss=5%`` drops a seeded random 5 % of outgoing RTP packets. What was done to each
packet is in the turn's ``injected`` (``rtp_delays_ns`` per packet in send order,
``rtp_sent``, ``rtp_dropped``, and ``rtp_wire``: ``[seq, rtp_timestamp, sent_ns]`` of each
packet as it went to the socket), so a capture analysis can be checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import random
import struct
import time
from typing import Any

import numpy as np

from voiceaudit.reference.dsp import F32
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import ReplyControl, ReplySink, ServerContext, Utterance, new_id
from voiceaudit.reference.playout import Playout
from voiceaudit.reference.session import Session, Sink
from voiceaudit.reference.stages import STAGE_EVENT, pending_stages
from voiceaudit.reference.vad import SpeechStart, SpeechStop

RATE = 48_000
FRAME = RATE * 20 // 1000
#: marks the pipeline sets before the track takes the audio (announced by next_frame)
_HELD = frozenset({"first_audio_sent"})


class OutTrack:
    """Builds the outgoing track class lazily (aiortc is an optional dependency)."""

    @staticmethod
    def create(session: WebRTCSession) -> Any:
        import av
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        class ReplyTrack(MediaStreamTrack):
            kind = "audio"

            def __init__(self) -> None:
                super().__init__()
                self._start: int | None = None
                self._k = 0

            async def recv(self) -> Any:
                if self.readyState != "live":
                    raise MediaStreamError
                if self._start is None:
                    self._start = time.monotonic_ns()
                    session.playout.start_ns = self._start
                # absolute pacing: frame k leaves at start + k * 20 ms
                due = self._start + self._k * 20_000_000
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                pcm = session.playout.next_frame(time.monotonic_ns(), self._k * FRAME, due)
                frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
                frame.planes[0].update(pcm)
                frame.sample_rate = RATE
                frame.pts = self._k * FRAME
                frame.time_base = fractions.Fraction(1, RATE)
                self._k += 1
                return frame

        return ReplyTrack()


class WebRTCSession(Session):
    """One peer connection: media in and out on tracks, Realtime-style events on the data
    channel."""

    protocol = "webrtc"
    id_prefix = "rtc"
    output_rate = RATE
    played_by_track = True
    # kept as the WebRTC server always had them: no vad stage delay, no recognizer details
    vad_stage_delay = False
    asr_details = False

    def __init__(self, ctx: ServerContext, pc: Any) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.pc = pc
        self.open_input(
            RATE,
            silence_ms=cfg.silence_ms,
            prefix_padding_ms=cfg.prefix_padding_ms,
            threshold=cfg.vad_threshold,
        )
        self.playout = Playout(RATE, FRAME, self._first_frame)
        self.channel: Any = None
        #: the offer asked for the reference's stage events (voiceaudit.reference.stages)
        self.stage_events = False
        #: id(record) -> (response id, reply item id) of a reply that started
        self._ids: dict[int, tuple[str, str]] = {}
        self._greeted = False

    # -- events on the data channel ---------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        ch = self.channel
        if ch is None or getattr(ch, "readyState", "") != "open":
            return
        with contextlib.suppress(Exception):
            ch.send(json.dumps({"type": kind, "t_ns": now_ns(), **fields}))

    def announce(self, record: TurnRecord, *, final: bool = False, taken: bool = False) -> None:
        """Send the stage events of ``record`` reached since the last call (extension).
        The first audio sent is announced once the track has taken it (``taken``, from
        the playout's first frame)."""
        if not self.stage_events:
            return
        hold = frozenset() if final or taken else _HELD
        playout = self.playout
        for stage, t in pending_stages(record, final=final, hold=hold):
            extra: dict[str, Any] = {}
            if stage == "first_audio_sent" and id(record) in playout.first_pts:
                # which frame of the continuous stream is the reply's first
                extra["pts"] = playout.first_pts[id(record)]
            if stage == "last_audio_sent" and id(record) in playout.last_pts:
                # the media time just after the reply's last frame (its end in the stream)
                extra["end_pts"] = playout.last_pts[id(record)] + FRAME
            self.event(STAGE_EVENT, stage=stage, turn=record.turn, t_ns=t, **extra)

    def _first_frame(self, record: TurnRecord) -> None:
        resp_id = self._ids.get(id(record), ("", ""))[0]
        self.event("output_audio_buffer.started", response_id=resp_id)
        self.announce(record, taken=True)

    # -- input ------------------------------------------------------------------------

    async def consume(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                arrival = now_ns()
                x = frame.to_ndarray()
                channels = len(frame.layout.channels)
                mono = x.reshape(-1, channels).mean(axis=1) if channels > 1 else x.ravel()
                samples = (mono.astype(np.float32) / 32768.0).astype(np.float32)
                if int(frame.sample_rate) != RATE:
                    from voiceaudit.audio import resample

                    samples = resample(samples, int(frame.sample_rate), RATE)
                self.input.feed(samples, arrival)
        except asyncio.CancelledError:
            raise
        except Exception:  # the remote track ended
            return

    def interrupt(self, start: SpeechStart, t_ns: int) -> bool:
        old = self.response_record
        if old is None:
            return False
        # barge-in: the VAD heard the caller while the previous reply runs or plays
        taken = self.playout.taken.get(id(old), 0)
        stops = super().interrupt(start, t_ns)
        if stops:
            assert old.barge_in is not None
            self.playout.stop_at[id(old)] = int(old.barge_in["stop_at_ns"])
        if old.barge_in is not None and old.barge_in["detected_ns"] == t_ns:
            old.barge_in["audio_before_samples"] = taken
            # where the outgoing stream was when the caller was heard
            old.barge_in["pts"] = self.playout.stream_pts(t_ns)
        return stops

    def speech_began(self, record: TurnRecord, start: SpeechStart, t_ns: int) -> None:
        self.event(
            "input_audio_buffer.speech_started",
            audio_start_ms=start.audio_start_ms,
            pts=self.playout.stream_pts(t_ns),
        )
        self.announce(record)

    async def speech_stopped(self, record: TurnRecord, stop: SpeechStop) -> None:
        self.event("input_audio_buffer.speech_stopped", audio_end_ms=stop.audio_end_ms)
        self.announce(record)

    async def transcribed(self, record: TurnRecord, utt: Utterance) -> None:
        self.event(
            "conversation.item.input_audio_transcription.completed",
            transcript=record.transcript,
        )
        self.announce(record)

    # -- the reply ----------------------------------------------------------------------

    async def begin_reply(self, record: TurnRecord) -> ReplySink:
        resp_id, item_id = new_id("resp"), new_id("item")
        self._ids[id(record)] = (resp_id, item_id)
        record.mark("llm_request")  # the response starts here: response.created follows
        self.event("response.created", response={"id": resp_id, "status": "in_progress"})
        self.items[item_id] = record
        self.announce(record)
        self.playout.sent[id(record)] = []
        return Sink(self, record)

    def greet_on_connect(self, t_ns: int) -> None:
        """``greeting=MS``: greet once, MS after the peer connection first connected (its
        media up); a renegotiation does not greet again."""
        if not self._greeted:
            self._greeted = True
            super().greet_on_connect(t_ns)

    def greeting_message_sizes(self, record: TurnRecord) -> list[int]:
        """The greeting went out in the track's frames (``audio_sent_ns``: one per frame,
        the greeting's first sample at the start of its first frame)."""
        return [FRAME] * len(record.audio_sent_ns)

    async def reply_text(self, record: TurnRecord, text: str) -> None:
        self.announce(record)

    async def reply_audio(self, record: TurnRecord, samples: F32) -> None:
        self.playout.enqueue(record, samples)
        self.announce(record)

    async def reply_sent(self, record: TurnRecord, sink: ReplySink) -> None:
        # wait until the track has played the whole reply (or dropped it at barge-in)
        while self.playout.holds(record):
            await asyncio.sleep(0.02)

    async def reply_cancelled(self, record: TurnRecord) -> None:
        stop_at = self.playout.stop_at.get(id(record))
        if stop_at is None:
            return
        # barge-in: the frames due before the stop time still go out, even when the
        # track runs late (a loaded loop); the track drops the rest itself
        with contextlib.suppress(asyncio.CancelledError):
            waited = 0
            while (
                not self.closed
                and self.playout.when <= stop_at
                and self.playout.holds(record)
                and waited < 500  # a track that stopped: give up after 5 s
            ):
                await asyncio.sleep(0.01)
                waited += 1

    async def turn_over(self, record: TurnRecord, control: ReplyControl) -> None:
        """Drop what the track has not played, settle the ground truth, tell the data
        channel, write the record."""
        key = id(record)
        if key in self.playout.cut and record.status != "cancelled":
            record.status = "cancelled"  # the track dropped some of the reply
        self.playout.settle(record)
        record.settle_barge_in()
        if key in self._ids:
            resp_id, item_id = self._ids.pop(key)
            self.announce(record, final=True)
            response: dict[str, Any] = {"id": resp_id, "status": record.status}
            if record.status == "cancelled":
                response["status_details"] = {
                    "type": "cancelled",
                    "reason": "client_cancelled" if control.reason == "cancel" else "turn_detected",
                }
                self.event("output_audio_buffer.cleared", response_id=resp_id)
            else:
                self.event("output_audio_buffer.stopped", response_id=resp_id)
            response["output"] = [{"id": item_id, "type": "message", "role": "assistant"}]
            self.event("response.done", response=response)
        self.playout.forget(record)
        self._record_rtp(record)
        self.write(record)

    # -- client events on the data channel ------------------------------------------------

    def on_client_event(self, message: Any) -> None:
        """Realtime client events on the data channel: ``response.cancel``,
        ``output_audio_buffer.clear`` (stop the reply now) and
        ``conversation.item.truncate`` (recorded); anything else is ignored."""
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        t = now_ns()
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if kind in ("response.cancel", "output_audio_buffer.clear"):
            control = self.control
            record = self.cancel_reply(t, event_id=eid, event=kind)
            if record is None:
                self._error(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found.",
                    eid,
                )
                return
            if control is not None:
                control.interrupt(t)
            self.playout.stop_at[id(record)] = min(self.playout.stop_at.get(id(record), t), t)
            self.playout.drop(record)
        elif kind == "conversation.item.truncate":
            item_id = event.get("item_id")
            end_ms = event.get("audio_end_ms")
            found = self.items.get(item_id) if isinstance(item_id, str) else None
            if found is None or isinstance(end_ms, bool) or not isinstance(end_ms, int):
                self._error(
                    "invalid_value",
                    "conversation.item.truncate needs the item_id of a reply "
                    "and an integer audio_end_ms",
                    eid,
                )
                return
            assert isinstance(item_id, str)
            samples = self.playout.taken.get(id(found), found.reply_audio_samples)
            self.record_truncate(found, t, item_id, end_ms, eid, samples * 1000 / RATE)
            self.event(
                "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
            )

    def _error(self, code: str, message: str, event_id: str | None) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message}
        self.event("error", error=error | {"event_id": event_id})

    # -- RTP fault injection --------------------------------------------------------------

    def install_rtp_faults(self) -> None:
        inj = self.ctx.injections
        jitter_ns = int(getattr(inj, "rtp_jitter_ns", 0) or 0)
        loss = float(getattr(inj, "rtp_loss", 0.0) or 0.0)
        self.rtp_stats: dict[str, Any] = {"sent": 0, "dropped": 0, "delays": [], "wire": []}
        if not jitter_ns and not loss:
            return
        from aiortc.rtp import is_rtcp

        rng = random.Random(self.ctx.config.seed)
        loop = asyncio.get_running_loop()
        for sender in self.pc.getSenders():
            transport = sender.transport
            if transport is None or getattr(transport, "_voiceaudit_faults", False):
                continue
            original = transport._send_rtp
            last_release = [0]

            async def faulty(
                data: bytes, _orig: Any = original, _last: list[int] = last_release
            ) -> None:
                if is_rtcp(data):
                    await _orig(data)
                    return
                if loss and rng.random() < loss:
                    self.rtp_stats["dropped"] += 1
                    return
                self.rtp_stats["sent"] += 1
                if not jitter_ns:
                    await _orig(data)
                    self._wire(data)
                    return
                delay = rng.randrange(jitter_ns + 1)
                release = max(time.monotonic_ns() + delay, _last[0])
                _last[0] = release
                self.rtp_stats["delays"].append(release - time.monotonic_ns())

                async def late_send() -> None:
                    # the connection may have closed while the packet was held back
                    with contextlib.suppress(ConnectionError):
                        await _orig(data)
                        self._wire(data)

                def send() -> None:
                    self.spawn(late_send())

                loop.call_later(max(0.0, (release - time.monotonic_ns()) / 1e9), send)

            transport._send_rtp = faulty
            transport._voiceaudit_faults = True

    def _wire(self, rtp: bytes) -> None:
        """Note when a packet the faults let through went to the socket: its sequence number,
        RTP timestamp and the time, just after the (SRTP-protecting) send returned. With the
        packet's media time this is its true transit variation as a capture on this host
        sees it, the server's own scheduling included, which the intended delays lack."""
        seq, timestamp = struct.unpack_from("!HI", rtp, 2)
        self.rtp_stats["wire"].append([seq, timestamp, time.monotonic_ns()])

    def _record_rtp(self, record: TurnRecord) -> None:
        stats = getattr(self, "rtp_stats", None)
        if not stats or not (stats["sent"] or stats["dropped"]):
            return
        record.injected["rtp_sent"] = stats["sent"]
        record.injected["rtp_dropped"] = stats["dropped"]
        if stats["delays"]:
            record.injected["rtp_delays_ns"] = list(stats["delays"])
        if stats["wire"]:
            record.injected["rtp_wire"] = list(stats["wire"])
        self.rtp_stats = {"sent": 0, "dropped": 0, "delays": [], "wire": []}

    async def close(self) -> None:
        """Stop the input and every task (not waiting for them), close the connection."""
        self.closed = True
        self.input.close()
        for t in [self.response, *self.tasks]:
            if t is not None and not t.done():
                t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
