"""The reference pipeline over WebRTC (``POST /v1/webrtc/offer``, ``/api/offer``), with aiortc.

Signalling: the client POSTs ``{"sdp": …, "type": "offer"}`` (JSON) or the bare SDP
(``Content-Type: application/sdp``) to ``/v1/webrtc/offer``; the answer comes back the same
way. ``/api/offer`` speaks Pipecat's runner signalling (``pipecat.runner.run``,
SmallWebRTC): ``POST`` a ``SmallWebRTCRequest`` (``sdp``, ``type``, optional ``pc_id``,
``restart_pc``, ``request_data``/``requestData``; other keys ignored), answered with
``{"sdp", "type": "answer", "pc_id"}``; a ``pc_id`` of a live connection renegotiates on
it, with ``restart_pc`` it is replaced by a new connection (new ``pc_id``); ``PATCH`` a
``SmallWebRTCPatchRequest`` (``pc_id``, ``candidates``: ``candidate``, ``sdp_mid``,
``sdp_mline_index``) to trickle the client's ICE candidates, answered with
``{"status": "success"}`` (404 for an unknown ``pc_id``); errors are FastAPI's
``{"detail": …}`` (422 for a body that is not such a request). Both routes run the same
session. The server's own ICE candidates are gathered without trickle (aiortc gathers in
``setLocalDescription``), so they are all in the answer. On a loopback-only host the
answerer, like the probe, must gather a host candidate on 127.0.0.1 (see
voiceaudit.targets.webrtc.allow_loopback_ice): the server does that when it listens on a
loopback address.

Media: the client's audio track feeds the same input pipeline as every other protocol
(VAD endpointing, PocketSphinx); the reply plays on an outgoing audio track paced in real
time, 20 ms frames at 48 kHz, silence between replies (a WebRTC stream never stops). If the
client opens a data channel, the server sends OpenAI-Realtime-style events on it
(``input_audio_buffer.speech_started``/``speech_stopped``,
``conversation.item.input_audio_transcription.completed``, ``response.created``,
``output_audio_buffer.started``/``stopped``, ``response.done``), each with the server's
``t_ns``.

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
from collections import deque
from typing import Any

import numpy as np
from aiohttp import web

from voiceaudit.reference.dsp import F32
from voiceaudit.reference.groundtruth import TurnRecord, now_ns
from voiceaudit.reference.pipeline import (
    CTX_KEY,
    InputPipeline,
    ReplyControl,
    ServerContext,
    Utterance,
    barge_in,
    new_id,
    run_reply,
)
from voiceaudit.reference.responder import Message
from voiceaudit.reference.stages import STAGE_EVENT, pending_stages, wants_stages
from voiceaudit.reference.vad import SpeechStart, SpeechStop

RATE = 48_000
FRAME = RATE * 20 // 1000
#: marks the pipeline sets before the track takes the audio (announced by next_frame)
_HELD = frozenset({"first_audio_sent"})


class _OutTrack:
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
                    session.track_start_ns = self._start
                # absolute pacing: frame k leaves at start + k * 20 ms
                due = self._start + self._k * 20_000_000
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                pcm = session.next_frame(time.monotonic_ns(), self._k * FRAME, due)
                frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
                frame.planes[0].update(pcm)
                frame.sample_rate = RATE
                frame.pts = self._k * FRAME
                frame.time_base = fractions.Fraction(1, RATE)
                self._k += 1
                return frame

        return ReplyTrack()


class _ReplySink:
    output_rate = RATE
    #: the track plays the audio on its own clock (see Speaker.own_clock)
    played_by_track = True

    def __init__(self, session: WebRTCSession, record: TurnRecord) -> None:
        self.s = session
        self.record = record

    async def send_text_delta(self, text: str) -> None:
        self.s.announce(self.record)

    async def send_audio(self, samples: F32) -> None:
        self.s.enqueue(self.record, samples)
        self.s.announce(self.record)


class WebRTCSession:
    def __init__(self, ctx: ServerContext, pc: Any) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.pc = pc
        self.id = new_id("rtc")
        self.rng = ctx.session_rng()
        self.input = InputPipeline(
            ctx,
            RATE,
            self,
            silence_ms=cfg.silence_ms,
            prefix_padding_ms=cfg.prefix_padding_ms,
            threshold=cfg.vad_threshold,
        )
        self.turn_index = 0
        self.history: list[Message] = []
        self._record: TurnRecord | None = None
        self._response: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._out: deque[tuple[TurnRecord, np.ndarray[Any, Any]]] = deque()
        self._out_pos = 0
        self._playing: TurnRecord | None = None
        self._sent: dict[int, list[int]] = {}
        self.channel: Any = None
        self._closed = False
        #: the offer asked for the reference's stage events (voiceaudit.reference.stages)
        self.stage_events = False
        #: id(record) -> media time (pts, 48 kHz samples) of the reply's first frame
        self._first_pts: dict[int, int] = {}
        #: The running turn's record and its barge-in handle.
        self._response_record: TurnRecord | None = None
        self._control: ReplyControl | None = None
        #: id(record) -> barge-in stop time: no frame due after it carries that reply
        self._stop_at: dict[int, int] = {}
        #: id(record) -> reply samples the track has taken (what went out on RTP)
        self._taken: dict[int, int] = {}
        #: id(record) -> its reply audio was dropped before it all went out
        self._cut: set[int] = set()
        #: reply item ids (conversation.item.truncate) and the turns already written
        self._items: dict[str, TurnRecord] = {}
        self._ids: dict[int, tuple[str, str]] = {}
        #: id(record) -> media time of the reply's last frame on the track
        self._last_pts: dict[int, int] = {}
        #: when the outgoing track's first frame was due (its clock: frame k at + k * 20 ms)
        self.track_start_ns: int | None = None
        #: the track's clock at the last frame it took
        self._track_when = 0
        self._written: set[int] = set()

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
        :meth:`next_frame`)."""
        if not self.stage_events:
            return
        hold = frozenset() if final or taken else _HELD
        for stage, t in pending_stages(record, final=final, hold=hold):
            extra: dict[str, Any] = {}
            if stage == "first_audio_sent" and id(record) in self._first_pts:
                # which frame of the continuous stream is the reply's first
                extra["pts"] = self._first_pts[id(record)]
            if stage == "last_audio_sent" and id(record) in self._last_pts:
                # the media time just after the reply's last frame (its end in the stream)
                extra["end_pts"] = self._last_pts[id(record)] + FRAME
            self.event(STAGE_EVENT, stage=stage, turn=record.turn, t_ns=t, **extra)

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

    def stream_pts(self, t_ns: int) -> int:
        """Media time (48 kHz samples) of the first outgoing frame due after ``t_ns``, by
        the track's clock (frame k is due at its start + k * 20 ms)."""
        if self.track_start_ns is None:
            return 0
        k = max(0, -(-(t_ns - self.track_start_ns) // 20_000_000))
        return int(k * FRAME)

    def on_speech_started(self, start: SpeechStart, t_ns: int) -> None:
        old = self._response_record
        if old is not None:
            # barge-in: the VAD heard the caller while the previous reply runs or plays
            taken = self._taken.get(id(old), 0)
            if barge_in(
                self.ctx,
                old,
                self._response,
                self._control,
                t_ns,
                by_turn=self.turn_index,
                speech_start_ms=start.speech_start_ms,
            ):
                assert old.barge_in is not None
                self._stop_at[id(old)] = int(old.barge_in["stop_at_ns"])
            if old.barge_in is not None and old.barge_in["detected_ns"] == t_ns:
                old.barge_in["audio_before_samples"] = taken
                # where the outgoing stream was when the caller was heard
                old.barge_in["pts"] = self.stream_pts(t_ns)
        record = self.ctx.new_record(self.id, self.turn_index, "webrtc")
        self.turn_index += 1
        record.mark("speech_started", t_ns)
        record.audio_start_ms = start.audio_start_ms
        record.speech_start_ms = start.speech_start_ms
        record.input_rate = RATE
        self._record = record
        self.event(
            "input_audio_buffer.speech_started",
            audio_start_ms=start.audio_start_ms,
            pts=self.stream_pts(t_ns),
        )
        self.announce(record)

    def on_speech_stopped(
        self, stop: SpeechStop, t_ns: int, transcript: asyncio.Future[Utterance] | Any
    ) -> None:
        record = self._record
        self._record = None
        if record is None:
            record = self.ctx.new_record(self.id, self.turn_index, "webrtc")
            self.turn_index += 1
            record.input_rate = RATE
        previous = self._response
        if previous is not None and not previous.done():
            if self.ctx.injections.no_barge_in:
                pass  # never stops: this reply plays after the previous one
            else:
                if self._control is not None:
                    self._control.reason = self._control.reason or "next_turn"
                previous.cancel()
        control = ReplyControl()
        self._response = asyncio.ensure_future(
            self._turn(record, stop, t_ns, transcript, control, previous)
        )
        self._response_record = record
        self._control = control

    async def _turn(
        self,
        record: TurnRecord,
        stop: SpeechStop,
        t_ns: int,
        transcript: Any,
        control: ReplyControl | None = None,
        previous: asyncio.Future[None] | None = None,
    ) -> None:
        resp_id, item_id = new_id("resp"), new_id("item")
        self._ids[id(record)] = (resp_id, item_id)
        started = False
        try:
            record.mark("vad_stop", t_ns)
            record.marks["speech_end_received"] = self.input.last_voiced_arrival_ns
            record.speech_end_ms = stop.speech_end_ms
            record.audio_end_ms = stop.audio_end_ms
            self.event("input_audio_buffer.speech_stopped", audio_end_ms=stop.audio_end_ms)
            self.announce(record)
            utt = await transcript
            record.mark("asr_done")
            await self.ctx.stage_delay(record, "asr")
            record.mark("transcript_final")
            record.transcript = utt.result.text if utt.result is not None else ""
            self.event(
                "conversation.item.input_audio_transcription.completed",
                transcript=record.transcript,
            )
            self.announce(record)
            if previous is not None and not previous.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(previous)  # no-barge-in: one reply at a time
            self.history.append(Message("user", record.transcript))
            record.mark("llm_request")  # the response starts here: response.created follows
            self.event("response.created", response={"id": resp_id, "status": "in_progress"})
            started = True
            self._items[item_id] = record
            self.announce(record)
            self._sent[id(record)] = []
            result = await run_reply(
                self.ctx,
                record,
                list(self.history),
                _ReplySink(self, record),
                self.rng,
                control=control,
            )
            # wait until the track has played the whole reply (or dropped it at barge-in)
            while any(r is record for r, _ in self._out):
                await asyncio.sleep(0.02)
            self.history.append(Message("assistant", result.text))
            record.status = result.status
            record.error = result.error
            if id(record) in self._cut:
                record.status = "cancelled"
        except asyncio.CancelledError:
            record.status = "cancelled"
            stop_at = self._stop_at.get(id(record))
            if stop_at is not None:
                # barge-in: the frames due before the stop time still go out, even when
                # the track runs late (a loaded loop); the track drops the rest itself
                with contextlib.suppress(asyncio.CancelledError):
                    waited = 0
                    while (
                        not self._closed
                        and self._track_when <= stop_at
                        and any(r is record for r, _ in self._out)
                        and waited < 500  # a track that stopped: give up after 5 s
                    ):
                        await asyncio.sleep(0.01)
                        waited += 1
        finally:
            self._finish(record, control, started)

    def _finish(self, record: TurnRecord, control: ReplyControl | None, started: bool) -> None:
        """The turn is over: drop what the track has not played, settle the ground truth,
        tell the data channel, write the record."""
        key = id(record)
        if self._response_record is record:
            self._response_record = None
            self._control = None
        if record.status == "cancelled":
            self._drop(record)
        sent = self._sent.pop(key, [])
        self._stop_at.pop(key, None)
        taken = self._taken.pop(key, 0)
        record.audio_sent_ns = sent
        if sent:
            record.mark("first_audio_sent", sent[0], overwrite=True)
            record.mark("last_audio_sent", sent[-1], overwrite=True)
        if key in self._cut or record.reply_audio_samples != taken:
            # what went out on the track, not what synthesis produced
            record.reply_audio_samples = taken
            record.reply_audio_ns = round(taken * 1e9 / RATE)
            record.audio_messages = len(sent)
        record.reply_cut = record.reply_cut or key in self._cut
        self._cut.discard(key)
        record.settle_barge_in()
        if started:
            resp_id, item_id = self._ids.get(key, ("", ""))
            self.announce(record, final=True)
            response: dict[str, Any] = {"id": resp_id, "status": record.status}
            if record.status == "cancelled":
                reason = control.reason if control is not None else None
                response["status_details"] = {
                    "type": "cancelled",
                    "reason": "client_cancelled" if reason == "cancel" else "turn_detected",
                }
                self.event("output_audio_buffer.cleared", response_id=resp_id)
            else:
                self.event("output_audio_buffer.stopped", response_id=resp_id)
            response["output"] = [{"id": item_id, "type": "message", "role": "assistant"}]
            self.event("response.done", response=response)
        self._ids.pop(key, None)
        self._first_pts.pop(key, None)
        self._last_pts.pop(key, None)
        self._record_rtp(record)
        self.ctx.truth.write_turn(record)
        self._written.add(key)

    def _drop(self, record: TurnRecord) -> None:
        """Remove ``record``'s reply audio the track has not played yet."""
        kept: deque[tuple[TurnRecord, np.ndarray[Any, Any]]] = deque()
        dropped = False
        for i, (rec, chunk) in enumerate(self._out):
            if rec is record:
                dropped = True
                if i == 0:
                    self._out_pos = 0
            else:
                kept.append((rec, chunk))
        if dropped:
            self._cut.add(id(record))
        self._out = kept

    # -- output -----------------------------------------------------------------------

    def enqueue(self, record: TurnRecord, samples: F32) -> None:
        if samples.size:
            self._out.append((record, samples.astype(np.float32)))

    def next_frame(self, t_ns: int, pts: int = 0, due: int | None = None) -> bytes:
        """The next 20 ms of the outgoing stream (``pts``: its media time in samples at
        48 kHz, counted from the stream's first frame; ``due``: when the track's clock
        says this frame leaves): reply audio, else silence. A reply whose barge-in stop
        time is before ``due`` is dropped here: the track goes back to silence."""
        out = np.zeros(FRAME, dtype=np.float32)
        filled = 0
        record: TurnRecord | None = None
        when = t_ns if due is None else due
        self._track_when = when
        while filled < FRAME and self._out:
            rec, chunk = self._out[0]
            stop_at = self._stop_at.get(id(rec))
            if stop_at is not None and when > stop_at:
                self._drop(rec)
                continue
            record = record or rec
            take = min(FRAME - filled, chunk.size - self._out_pos)
            out[filled : filled + take] = chunk[self._out_pos : self._out_pos + take]
            filled += take
            self._out_pos += take
            self._taken[id(rec)] = self._taken.get(id(rec), 0) + take
            b = rec.barge_in
            if b is not None and when > b["detected_ns"]:
                # the track's clock says this frame leaves after the caller was heard
                b["scheduled_after_samples"] += take
            if self._out_pos >= chunk.size:
                self._out.popleft()
                self._out_pos = 0
        if record is not None:
            self._last_pts[id(record)] = pts
            sent = self._sent.setdefault(id(record), [])
            first = not sent
            sent.append(t_ns)
            if first:
                record.mark("first_audio_sent", t_ns, overwrite=True)
                self._first_pts[id(record)] = pts
                resp_id = self._ids.get(id(record), ("", ""))[0]
                self.event("output_audio_buffer.started", response_id=resp_id)
                self.announce(record, taken=True)
        return (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes()

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
            record, task = self._response_record, self._response
            if record is None or task is None or task.done():
                self.event(
                    "error",
                    error={
                        "type": "invalid_request_error",
                        "code": "response_cancel_not_active",
                        "message": "Cancellation failed: no active response found.",
                        "event_id": eid,
                    },
                )
                return
            if record.cancel is None:
                record.cancel = {"t_ns": t, "event_id": eid, "event": kind}
            if self._control is not None:
                self._control.reason = self._control.reason or "cancel"
                self._control.interrupt(t)
            self._stop_at[id(record)] = min(self._stop_at.get(id(record), t), t)
            self._drop(record)
            task.cancel()
        elif kind == "conversation.item.truncate":
            item_id = event.get("item_id")
            end_ms = event.get("audio_end_ms")
            found = self._items.get(item_id) if isinstance(item_id, str) else None
            if found is None or isinstance(end_ms, bool) or not isinstance(end_ms, int):
                self.event(
                    "error",
                    error={
                        "type": "invalid_request_error",
                        "code": "invalid_value",
                        "message": "conversation.item.truncate needs the item_id of a reply "
                        "and an integer audio_end_ms",
                        "event_id": eid,
                    },
                )
                return
            found.truncate = {
                "t_ns": t,
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
                "event_id": eid,
                "reply_audio_ms_sent": round(
                    self._taken.get(id(found), found.reply_audio_samples) * 1000 / RATE, 3
                ),
            }
            if id(found) in self._written:
                self.ctx.truth.write_truncate(found)
            self.event(
                "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
            )

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
                    task = asyncio.ensure_future(late_send())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

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
        self._closed = True
        self.input.close()
        for t in [self._response, *self._tasks]:
            if t is not None and not t.done():
                t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)


#: The server's live WebRTC sessions by id (the ``pc_id`` of Pipecat's signalling); the
#: server puts an empty dict here when it builds its application.
SESSIONS_KEY = web.AppKey("voiceaudit_webrtc_sessions", dict[str, "WebRTCSession"])


class _Refused(Exception):
    """An offer the server cannot answer (the message says why)."""


def _error(exc: type[web.HTTPException], message: str, *, pipecat: bool) -> web.HTTPException:
    """An error response: ``{"error": {"message"}}``, or FastAPI's ``{"detail"}`` on
    Pipecat's routes."""
    body = {"detail": message} if pipecat else {"error": {"message": message}}
    return exc(text=json.dumps(body), content_type="application/json")


def _need_aiortc(*, pipecat: bool = False) -> None:
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise _error(
            web.HTTPNotImplemented,
            "WebRTC needs aiortc: pip install 'voiceaudit[webrtc]'",
            pipecat=pipecat,
        ) from None


def _registry(app: web.Application) -> dict[str, WebRTCSession]:
    found = app.get(SESSIONS_KEY)
    if found is None:  # an application not built by build_app
        found = app.setdefault(SESSIONS_KEY, {})
    return found


async def _drop(app: web.Application, session: WebRTCSession) -> None:
    _registry(app).pop(session.id, None)
    await session.close()


async def _answer_new(request: web.Request, sdp: str) -> WebRTCSession:
    """A new peer connection answering ``sdp``; its session lives until it closes."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    ctx: ServerContext = request.app[CTX_KEY]
    app = request.app
    host = request.transport.get_extra_info("sockname")[0] if request.transport else ""
    if host.startswith("127.") or host == "::1":
        from voiceaudit.targets.webrtc import allow_loopback_ice

        allow_loopback_ice()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    session = WebRTCSession(ctx, pc)
    _registry(app)[session.id] = session
    session.stage_events = wants_stages(request.headers)
    pc.addTrack(_OutTrack.create(session))

    @pc.on("track")
    def _on_track(track: Any) -> None:
        if track.kind == "audio":
            task = asyncio.ensure_future(session.consume(track))
            session._tasks.add(task)

    @pc.on("datachannel")
    def _on_channel(channel: Any) -> None:
        session.channel = channel
        channel.on("message", session.on_client_event)

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        if pc.connectionState == "connected":
            session.install_rtp_faults()
        elif pc.connectionState in ("failed", "closed"):
            await _drop(app, session)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as exc:  # a malformed offer: refuse it, keep serving
        await _drop(app, session)
        raise _Refused(f"cannot answer this offer: {exc}") from None
    return session


async def _renegotiate(session: WebRTCSession, sdp: str) -> None:
    """A new offer on an existing peer connection (Pipecat's ``pc_id`` without
    ``restart_pc``): answered on the same connection, the session goes on."""
    from aiortc import RTCSessionDescription

    pc = session.pc
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        raise _Refused(f"cannot renegotiate with this offer: {exc}") from None


async def webrtc_offer(request: web.Request) -> web.StreamResponse:
    """Answer one WebRTC offer; the session lives until the peer connection closes."""
    _need_aiortc()
    ctype = request.headers.get("Content-Type", "")
    body = await request.text()
    as_json = "json" in ctype
    try:
        sdp = json.loads(body)["sdp"] if as_json else body
        if not isinstance(sdp, str) or "v=0" not in sdp:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise _error(web.HTTPBadRequest, "expected an SDP offer", pipecat=False) from None
    try:
        session = await _answer_new(request, sdp)
    except _Refused as exc:
        raise _error(web.HTTPBadRequest, str(exc), pipecat=False) from None
    local = session.pc.localDescription.sdp
    if as_json:
        return web.json_response({"sdp": local, "type": "answer", "session_id": session.id})
    return web.Response(text=local, content_type="application/sdp", status=201)


async def _json_object(request: web.Request, shape: str) -> dict[str, Any]:
    """The request's JSON object, else 422 as FastAPI answers a body that does not fit."""
    try:
        data = json.loads(await request.text())
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _error(web.HTTPUnprocessableEntity, f"expected a JSON {shape}", pipecat=True)
    return data


async def pipecat_offer(request: web.Request) -> web.StreamResponse:
    """``POST /api/offer`` as Pipecat's runner serves it (``SmallWebRTCRequest``).

    The body is ``{"sdp", "type", "pc_id"?, "restart_pc"?, "request_data"? (or
    "requestData")}``, other keys ignored; the answer is ``{"sdp", "type": "answer",
    "pc_id"}``. A ``pc_id`` of a live connection renegotiates on it (``restart_pc``: the
    old connection is closed and a new one answers, with a new ``pc_id``); an unknown
    ``pc_id`` gets a new connection, as in Pipecat.
    """
    _need_aiortc(pipecat=True)
    data = await _json_object(request, 'SmallWebRTCRequest {"sdp": ..., "type": "offer"}')
    sdp, kind = data.get("sdp"), data.get("type")
    pc_id, restart = data.get("pc_id"), data.get("restart_pc")
    if not (
        isinstance(sdp, str)
        and isinstance(kind, str)
        and (pc_id is None or isinstance(pc_id, str))
        and (restart is None or isinstance(restart, bool))
    ):
        raise _error(
            web.HTTPUnprocessableEntity,
            'expected a SmallWebRTCRequest: {"sdp": str, "type": str, "pc_id": str | null, '
            '"restart_pc": bool | null, "request_data": any}',
            pipecat=True,
        )
    if kind != "offer" or "v=0" not in sdp:
        raise _error(web.HTTPBadRequest, "expected an SDP offer (type 'offer')", pipecat=True)
    by_pc_id = _registry(request.app)
    existing = by_pc_id.get(pc_id) if pc_id else None
    try:
        if existing is not None and not restart:
            await _renegotiate(existing, sdp)
            session = existing
        else:
            if existing is not None:
                await _drop(request.app, existing)
            session = await _answer_new(request, sdp)
    except _Refused as exc:
        raise _error(web.HTTPBadRequest, str(exc), pipecat=True) from None
    local = session.pc.localDescription
    return web.json_response({"sdp": local.sdp, "type": local.type, "pc_id": session.id})


async def pipecat_ice_candidates(request: web.Request) -> web.StreamResponse:
    """``PATCH /api/offer`` as Pipecat's runner serves it (``SmallWebRTCPatchRequest``):
    ``{"pc_id", "candidates": [{"candidate", "sdp_mid", "sdp_mline_index"}]}`` trickled
    to the connection; an empty ``candidate`` is end-of-candidates. Answers
    ``{"status": "success"}``, 404 for an unknown ``pc_id``. (The server's own candidates
    are all in its answer: aiortc gathers them before answering.)"""
    _need_aiortc(pipecat=True)
    shape = (
        'SmallWebRTCPatchRequest {"pc_id": str, "candidates": [{"candidate": str, '
        '"sdp_mid": str, "sdp_mline_index": int}]}'
    )
    data = await _json_object(request, shape)
    pc_id, candidates = data.get("pc_id"), data.get("candidates")
    if not (
        isinstance(pc_id, str)
        and isinstance(candidates, list)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("candidate"), str)
            and isinstance(c.get("sdp_mid"), str)
            and isinstance(c.get("sdp_mline_index"), int)
            for c in candidates
        )
    ):
        raise _error(web.HTTPUnprocessableEntity, f"expected a {shape}", pipecat=True)
    by_pc_id = _registry(request.app)
    session = by_pc_id.get(pc_id)
    if session is None:
        raise _error(web.HTTPNotFound, "Peer connection not found", pipecat=True)
    from aiortc.sdp import candidate_from_sdp

    for c in candidates:
        text = c["candidate"].removeprefix("candidate:")
        try:
            if text:
                candidate = candidate_from_sdp(text)
                candidate.sdpMid = c["sdp_mid"]
                candidate.sdpMLineIndex = c["sdp_mline_index"]
            else:
                candidate = None  # RFC 8840 end-of-candidates
            await session.pc.addIceCandidate(candidate)
        except Exception as exc:
            raise _error(
                web.HTTPBadRequest,
                f"cannot add the ICE candidate {c['candidate']!r}: {exc or type(exc).__name__}",
                pipecat=True,
            ) from None
    return web.json_response({"status": "success"})


async def close_webrtc_sessions(app: web.Application) -> None:
    """On shutdown: close every peer connection still open."""
    sessions = app.get(SESSIONS_KEY, {})
    for session in list(sessions.values()):
        await session.close()
    sessions.clear()
