"""The probe's own stalls must not leak into its numbers (issue 22).

A probe whose event loop is blocked for a while (an import, a first resample, a trace
write) must still record when each reply chunk reached the host, not when the loop got
round to it; otherwise the stall becomes an underrun the caller never heard, a later
voice-to-voice and a longer barge-in stop latency.

Each run here injects a 50 ms blocking ``time.sleep`` into the probe's loop when the
first reply chunk of a turn is handed to the sink (the sink is wrapped), and compares
what the probe recorded with the truth of a deterministic server on loopback. The
WebSocket servers (realtime, raw PCM, Pipecat protobuf) run on their own thread and loop
in this process, so the probe's stall does not stall them; each records when it handed
every reply chunk to its socket (clock reads just before and just after the write). The
server's reply is a tone after 30 ms of digital silence, in 20 ms chunks released 10 ms
ahead of real time; its first audible sample is in the second chunk, so a stall at the
first chunk that delayed the second one's arrival time would move voice-to-voice and
make an underrun. The truth of every figure is the same playout model fed with the
server's send times: voice-to-voice, underruns and barge-in stop latency agree within
1 ms (the only difference left is loopback's delivery, microseconds).

WebRTC (aiortc) runs against the reference pipeline (``voiceaudit serve``, another
process), whose track paces its reply at real time: the arrival of each RTP packet is
checked against its media time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from servers import LoopbackServer

from voiceaudit.audio import first_audible, from_pcm16
from voiceaudit.model import unbatch
from voiceaudit.probe.playout import Chunk, play_model
from voiceaudit.trace_io import Trace, read_trace

pytestmark = pytest.mark.slow

MS = 1_000_000
STALL_S = 0.05
CHUNK_MS = 20
LEAD_MS = 10
LEAD_SILENCE_MS = 30
REPLY_MS = 800
#: a frame louder than this (peak, 16-bit) is speech to the server
SPEECH_PEAK = 300
#: the server ends the caller's turn after this much quiet
ENDPOINT_MS = 400


def _reply_pcm(rate: int) -> bytes:
    n = REPLY_MS * rate // 1000
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    x[: LEAD_SILENCE_MS * rate // 1000] = 0.0
    return bytes((x * 32767).astype("<i2").tobytes())


@dataclass
class SentReply:
    """One reply as the server sent it: per chunk, clock reads around its write."""

    rate: int
    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    pcm: list[bytes] = field(default_factory=list)
    cut: bool = False


# --- the servers (their own thread and loop) ------------------------------------------------


class _Codec:
    """How one protocol carries audio and events over the WebSocket."""

    rate = 16000

    async def hello(self, ws: web.WebSocketResponse) -> None:
        pass

    def audio_in(self, msg: Any) -> bytes | None:
        raise NotImplementedError

    async def send_audio(self, ws: web.WebSocketResponse, pcm: bytes) -> None:
        raise NotImplementedError

    async def reply_start(self, ws: web.WebSocketResponse) -> None:
        pass

    async def reply_end(self, ws: web.WebSocketResponse, cut: bool) -> None:
        raise NotImplementedError

    async def speech_started(self, ws: web.WebSocketResponse) -> None:
        pass


class _Pcm(_Codec):
    def audio_in(self, msg: Any) -> bytes | None:
        return bytes(msg.data) if msg.type == WSMsgType.BINARY else None

    async def send_audio(self, ws: web.WebSocketResponse, pcm: bytes) -> None:
        await ws.send_bytes(pcm)

    async def reply_end(self, ws: web.WebSocketResponse, cut: bool) -> None:
        status = "cancelled" if cut else "completed"
        await ws.send_str(json.dumps({"type": "turn_done", "status": status, "cut": cut}))


class _Realtime(_Codec):
    rate = 24000

    def __init__(self) -> None:
        self.n = 0

    async def hello(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "session.created", "session": {"id": "s"}}))

    def audio_in(self, msg: Any) -> bytes | None:
        ev = json.loads(msg.data)
        if ev["type"] == "input_audio_buffer.append":
            return base64.b64decode(ev["audio"])
        return None

    async def on_text(self, ws: web.WebSocketResponse, msg: Any) -> None:
        ev = json.loads(msg.data)
        if ev["type"] == "session.update":
            fmt = {"type": "audio/pcm", "rate": self.rate}
            session = {"audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
            await ws.send_str(json.dumps({"type": "session.updated", "session": session}))

    async def reply_start(self, ws: web.WebSocketResponse) -> None:
        self.n += 1
        await ws.send_str(json.dumps({"type": "response.created", "response": {"id": "r"}}))

    async def send_audio(self, ws: web.WebSocketResponse, pcm: bytes) -> None:
        delta = base64.b64encode(pcm).decode()
        ev = {"type": "response.output_audio.delta", "item_id": f"item_{self.n}", "delta": delta}
        await ws.send_str(json.dumps(ev))

    async def speech_started(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "input_audio_buffer.speech_started"}))

    async def reply_end(self, ws: web.WebSocketResponse, cut: bool) -> None:
        status = "cancelled" if cut else "completed"
        ev = {"type": "response.done", "response": {"id": "r", "status": status}}
        await ws.send_str(json.dumps(ev))


class _Pipecat(_Codec):
    def audio_in(self, msg: Any) -> bytes | None:
        from voiceaudit.targets.pipecat_ws import decode_frame

        if msg.type != WSMsgType.BINARY:
            return None
        frame = decode_frame(bytes(msg.data))
        audio = frame.fields.get("audio")
        return audio if frame.kind == "audio" and isinstance(audio, bytes) else None

    async def send_audio(self, ws: web.WebSocketResponse, pcm: bytes) -> None:
        from voiceaudit.targets.pipecat_ws import encode_audio_frame

        await ws.send_bytes(encode_audio_frame(pcm, self.rate))

    async def _rtvi(self, ws: web.WebSocketResponse, kind: str) -> None:
        from voiceaudit.targets.pipecat_ws import RTVI_LABEL, encode_message_frame

        await ws.send_bytes(encode_message_frame({"label": RTVI_LABEL, "type": kind}))

    async def reply_start(self, ws: web.WebSocketResponse) -> None:
        await self._rtvi(ws, "bot-started-speaking")

    async def speech_started(self, ws: web.WebSocketResponse) -> None:
        await self._rtvi(ws, "bot-interrupted")

    async def reply_end(self, ws: web.WebSocketResponse, cut: bool) -> None:
        await self._rtvi(ws, "bot-stopped-speaking")


CODECS: dict[str, Callable[[], _Codec]] = {
    "websocket": _Pcm,
    "realtime": _Realtime,
    "pipecat-websocket": _Pipecat,
}


class StallServer(LoopbackServer):
    """A deterministic voice server: answers each caller turn (speech, then
    ``ENDPOINT_MS`` of quiet) with :func:`_reply_pcm`, stops a reply when the caller
    speaks over it, and records what it sent (:class:`SentReply`)."""

    path = "/ws"

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.replies: list[SentReply] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        codec = CODECS[self.protocol]()
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await codec.hello(ws)
        state = {"speaking": False, "quiet_ms": 0.0}
        replying: asyncio.Task[None] | None = None
        barge = asyncio.Event()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and isinstance(codec, _Realtime):
                await codec.on_text(ws, msg)
            pcm = codec.audio_in(msg)
            if pcm is None:
                continue
            x = np.frombuffer(pcm, dtype="<i2")
            loud = x.size > 0 and int(np.abs(x.astype(np.int32)).max()) > SPEECH_PEAK
            ms = x.size * 1000 / codec.rate
            if loud:
                if replying is not None and not replying.done() and not barge.is_set():
                    barge.set()
                    await codec.speech_started(ws)
                state["speaking"], state["quiet_ms"] = True, 0.0
            elif state["speaking"]:
                state["quiet_ms"] += ms
                if state["quiet_ms"] >= ENDPOINT_MS:
                    state["speaking"] = False
                    if replying is not None:
                        await replying
                    barge.clear()
                    replying = asyncio.create_task(self._reply(ws, codec, barge))
        if replying is not None:
            replying.cancel()
        return ws

    async def _reply(self, ws: web.WebSocketResponse, codec: _Codec, barge: asyncio.Event) -> None:
        rate = codec.rate
        pcm = _reply_pcm(rate)
        step = CHUNK_MS * rate // 1000 * 2
        sent = SentReply(rate)
        self.replies.append(sent)
        await codec.reply_start(ws)
        t0 = time.monotonic_ns()
        for k, i in enumerate(range(0, len(pcm), step)):
            if k:  # released LEAD_MS ahead of real time, like a streaming synthesizer
                due = t0 + (k * CHUNK_MS - LEAD_MS) * MS
                await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
            if barge.is_set():
                sent.cut = True
                break
            chunk = pcm[i : i + step]
            sent.before.append(time.monotonic_ns())
            await codec.send_audio(ws, chunk)
            sent.after.append(time.monotonic_ns())
            sent.samples.append(len(chunk) // 2)
            sent.pcm.append(chunk)
        await codec.reply_end(ws, sent.cut)


# --- running the probe with a stall ---------------------------------------------------------


def _stall_first_chunk(
    monkeypatch: pytest.MonkeyPatch,
    cls: type,
    stalls: list[tuple[int, int]],
    seconds: float = STALL_S,
) -> None:
    """Block the loop for ``seconds`` when a turn's first reply chunk reaches ``cls``'s
    ``reply_audio`` (once per reply: the first chunk after a quiet of 200 ms); each
    stall's start and end go to ``stalls``."""
    original = cls.reply_audio  # type: ignore[attr-defined]
    last = {"t": 0}

    def reply_audio(self: Any, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int) -> None:
        original(self, t_ns, pcm16, rate, wire_bytes)
        if t_ns - last["t"] > 200 * MS:
            t0 = time.monotonic_ns()
            time.sleep(seconds)  # the stall: the whole loop stands still
            stalls.append((t0, time.monotonic_ns()))
        last["t"] = t_ns

    monkeypatch.setattr(cls, "reply_audio", reply_audio)


def _events(tr: Trace, session: str, turn: int) -> list[Any]:
    return sorted(
        (u for e in tr.turn_events(session, turn) for u in unbatch(e)), key=lambda e: e.t_ns
    )


def _playout(sent: SentReply, stamps: list[int], depth_ms: int) -> Any:
    chunks = [Chunk(t, n) for t, n in zip(stamps, sent.samples, strict=True)]
    return play_model(chunks, sent.rate, model="fixed", depth_ns=depth_ms * MS)


def _check_arrivals(evs: list[Any], sent: SentReply, stalls: list[tuple[int, int]]) -> bool:
    """The chunks' recorded arrivals against the server's writes: never before one, and
    those written while the loop stood still not stamped when it came back (they are
    what a stall used to move: before the fix, all of them were stamped at its end).
    Returns whether every chunk arrived within 1 ms of its write (loopback delivered on
    time: on a loaded machine the kernel may deliver later, which is no probe stall)."""
    arrivals = [e.t_ns for e in evs if e.name == "reply.chunk"]
    assert len(arrivals) == len(sent.before)
    late = [round((b - a) / MS, 3) for a, b in zip(sent.before, arrivals, strict=True)]
    assert all(a - 50_000 <= b for a, b in zip(sent.before, arrivals, strict=True)), late
    during = [
        (b, end)
        for a, b in zip(sent.before, arrivals, strict=True)
        for start, end in stalls
        if start <= a <= end - 10 * MS
    ]
    assert all(b < end - 5 * MS for b, end in during), (late, stalls)
    return all(b <= c + 1 * MS for b, c in zip(arrivals, sent.after, strict=True))


def _check_figures(evs: list[Any], sent: SentReply, depth_ms: int, on_time: bool) -> None:
    """Voice-to-voice and underruns as the playout model gives them from the server's
    send times. Playout times only grow with arrival times, so the probe's figure is
    never below the model fed the server's writes, and, when every chunk arrived within
    1 ms of its write (``on_time``), not above the model fed those plus 1 ms."""
    by = {e.name: e for e in evs}
    assert by["turn.end"].attrs["ok"], by["turn.end"].attrs
    lo = _playout(sent, sent.before, depth_ms)
    hi = _playout(sent, [t + 1 * MS for t in sent.after], depth_ms)
    onset = first_audible(from_pcm16(b"".join(sent.pcm)), sent.rate)
    assert onset is not None
    end = by["input.speech_end"].t_ns
    got = by["turn.end"].attrs["voice_to_voice_ns"]
    assert got >= lo.heard_at(onset) - end - 50_000, (got, lo.heard_at(onset) - end)
    ends = [e.attrs for e in evs if e.name == "reply.end"]
    assert len(ends) == 1
    if on_time:
        assert got <= hi.heard_at(onset) - end, (got, hi.heard_at(onset) - end)
        counts = sorted((len(lo.underruns), len(hi.underruns)))
        assert counts[0] <= ends[0]["underruns"] <= counts[1], (ends, counts)


async def _run_plain(protocol: str, url: str, out: Path) -> Trace:
    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class

    utts = load_utterances([bundled_dir() / "06_thanks.wav", bundled_dir() / "03_lights.wav"])
    options = {"rtvi": "off"} if protocol == "pipecat-websocket" else {}
    if protocol == "realtime":
        options = {"stage_events": "off"}
    target = get_target_class(protocol)(TargetConfig(url=url, protocol=protocol, options=options))
    await run_probe(target, utts, ProbeOptions(gap_ms=200, timeout_s=10), out)
    return read_trace(out)


WS_PROTOCOLS = ["realtime", "websocket", "pipecat-websocket"]


@pytest.mark.parametrize("protocol", WS_PROTOCOLS)
def test_a_stall_at_the_first_reply_chunk_moves_no_figure(
    protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voiceaudit.probe.runner import _Sink

    stalls: list[tuple[int, int]] = []
    _stall_first_chunk(monkeypatch, _Sink, stalls)
    with StallServer(protocol) as server:
        tr = asyncio.run(_run_plain(protocol, server.url, tmp_path / "trace.jsonl"))
    turns = sorted(tr.finished_turns(), key=lambda st: st[1])
    assert len(turns) == 2 == len(server.replies) == len(stalls)
    for (session, turn), sent in zip(turns, server.replies, strict=True):
        evs = _events(tr, session, turn)
        _check_figures(evs, sent, 0, _check_arrivals(evs, sent, stalls))


# --- WebRTC: the reference pipeline in its own process --------------------------------------


def test_a_stall_at_the_first_reply_frame_moves_no_webrtc_arrival(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the reference pipeline over WebRTC, with the loop standing still for
    100 ms when a reply's first frame reaches the sink (longer than over the WebSockets:
    the server's own packetization, in another process, jitters by up to ~15 ms on a
    loaded machine): no reply frame's recorded arrival is before the server handed it to
    its encoder (its ground truth, ``audio_sent_ns``), the frames it handed on while the
    probe's loop stood still are not stamped when the loop came back (before the tap they
    were, 30 ms and more late), and the typical frame arrives within 5 ms (Opus encoding,
    the server's packetization, loopback: 0.6-2.8 ms measured); played through a 40 ms
    buffer, the reply has no underrun."""
    from servers import serve_many

    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, _Sink, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.webrtc import WebRTCTarget

    stalls: list[tuple[int, int]] = []
    _stall_first_chunk(monkeypatch, _Sink, stalls, seconds=0.1)
    utts = load_utterances([bundled_dir() / "06_thanks.wav", bundled_dir() / "03_lights.wav"])
    out = tmp_path / "trace.jsonl"
    with serve_many([[]]) as (server,):
        config = TargetConfig(
            url=server.url + "/v1/webrtc/offer",
            protocol="webrtc",
            options={"datachannel": "oai-events"},
        )
        options = ProbeOptions(gap_ms=300, jitter_buffer_ms=40)
        asyncio.run(run_probe(WebRTCTarget(config), utts, options, out))
        truth = server.turns()
    tr = read_trace(out)
    turns = sorted(tr.finished_turns(), key=lambda st: st[1])
    assert len(turns) == 2 and len(stalls) >= 2
    for session, turn in turns:
        evs = _events(tr, session, turn)
        by = {e.name: e for e in evs}
        assert by["turn.end"].attrs["ok"], by["turn.end"].attrs
        start, end = by["turn.start"].t_ns, by["turn.end"].t_ns
        (rec,) = [r for r in truth if r["audio_sent_ns"] and start <= r["audio_sent_ns"][0] <= end]
        sent = rec["audio_sent_ns"]
        arrivals = [e.t_ns for e in evs if e.name == "reply.chunk"]
        # the reply may begin with a few quiet frames of the stream sent before it
        j = next(i for i, a in enumerate(arrivals) if a >= sent[0])
        pairs = list(zip(sent, arrivals[j:], strict=False))
        late = [b - a for a, b in pairs]
        shown = str([round(d / MS, 2) for d in late[:30]])
        assert len(late) >= 25 and min(late) >= -0.2 * MS, shown
        assert sorted(late)[len(late) // 2] <= 5 * MS, shown
        during = [
            (b, end) for a, b in pairs for start, end in stalls if start <= a <= end - 30 * MS
        ]
        assert during, (stalls, shown)  # the stall did fall inside the reply
        assert all(b < end - 15 * MS for b, end in during), (stalls, shown)
        # and through a 40 ms buffer the real-time reply plays without a gap (before the
        # tap, the frames behind the stall made one of 40 ms and more)
        ends = [e.attrs for e in evs if e.name == "reply.end"]
        assert [a["underruns"] for a in ends] == [0], ends


# --- barge-in: stop latency -----------------------------------------------------------------

BARGE = """
gap_ms = 300
[[session]]
name = "barge"
[[session.turn]]
say = "06_thanks"
interrupt = { after_reply_ms = 300, say = "03_lights" }
"""
DEPTH_MS = 20


async def _run_barge(protocol: str, url: str, out: Path) -> Trace:
    from voiceaudit.probe.runner import Probe, ProbeOptions
    from voiceaudit.scenario import parse_scenario
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class

    options = {"rtvi": "off"} if protocol == "pipecat-websocket" else {}
    if protocol == "realtime":
        options = {"stage_events": "off"}
    target = get_target_class(protocol)(TargetConfig(url=url, protocol=protocol, options=options))
    probe = Probe(
        target,
        [],
        ProbeOptions(timeout_s=10, jitter_buffer_ms=DEPTH_MS),
        out,
        scenario=parse_scenario(BARGE),
    )
    await probe.run()
    return read_trace(out)


@pytest.mark.parametrize("protocol", WS_PROTOCOLS)
def test_a_stall_at_the_first_reply_chunk_moves_no_stop_latency(
    protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller barges in 300 ms into a reply whose first chunk stalled the loop for
    50 ms; the server stops sending when it hears the caller. The probe's stop latency
    (when the caller hears the reply's last audible sample, through a 20 ms buffer, after
    the barge-in's onset) is what the same playout of the server's own send times gives,
    within 1 ms; so are both replies' voice-to-voice and underruns (none)."""
    from voiceaudit.probe.conversation import ConversationSink, last_audible

    stalls: list[tuple[int, int]] = []
    _stall_first_chunk(monkeypatch, ConversationSink, stalls)
    with StallServer(protocol) as server:
        tr = asyncio.run(_run_barge(protocol, server.url, tmp_path / "trace.jsonl"))
    assert len(server.replies) == 2 and len(stalls) == 2
    cut, answer = server.replies
    assert cut.cut and not answer.cut
    stops = [e for e in tr.events if e.name == "reply.stop"]
    assert len(stops) == 1
    a = stops[0].attrs
    assert a["cut"] is True and a["stopped"] is True, a
    last = last_audible(from_pcm16(b"".join(cut.pcm)), cut.rate)
    assert last is not None
    # both replies: every arrival, voice-to-voice and underruns, as in the plain runs
    turns = sorted(tr.finished_turns(), key=lambda st: st[1])
    assert len(turns) == 2
    on_time = []
    for (session, turn), sent in zip(turns, server.replies, strict=True):
        evs = _events(tr, session, turn)
        on_time.append(_check_arrivals(evs, sent, stalls))
        _check_figures(evs, sent, DEPTH_MS, on_time[-1])
    lo = _playout(cut, cut.before, DEPTH_MS)
    hi = _playout(cut, [t + 1 * MS for t in cut.after], DEPTH_MS)
    tail = 1_000_000_000 // cut.rate - a["onset_ns"]
    assert a["stop_ns"] >= lo.heard_at(last) + tail - 50_000, (a, lo.heard_at(last) + tail)
    if on_time[0]:
        assert a["stop_ns"] <= hi.heard_at(last) + tail, (a, hi.heard_at(last) + tail)


# --- a stall on the sending side ------------------------------------------------------------

SEND_STALL_FRAME = 20


@pytest.mark.parametrize("protocol", WS_PROTOCOLS)
def test_a_stall_while_sending_is_marked_on_its_turn(
    protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 50 ms stall of the loop while the caller's speech goes out (as the turn's 20th
    frame is written, 400 ms into the speech) sends the frames due meanwhile late: the
    turn's ``input.pacing`` records it (the next frame, 30 ms late or more), and the
    report marks that turn as one whose pacing broke. The frames after
    it go out on their own deadlines again (absolute, so lateness does not accumulate),
    so the speech end leaves on time and the reply's figures are the server's truth, as
    with a stall on the receiving side."""
    from voiceaudit.analysis import build_report
    from voiceaudit.probe import runner

    original = runner.send_frame
    counts: dict[int, int] = {}
    stalls: list[tuple[int, int]] = []

    async def send_frame(ts: Any, sink: Any, data: bytes) -> bool:
        turn = sink.turn
        counts[turn] = counts.get(turn, 0) + 1
        if turn == 1 and counts[turn] == SEND_STALL_FRAME:
            t0 = time.monotonic_ns()
            time.sleep(STALL_S)
            stalls.append((t0, time.monotonic_ns()))
        return await original(ts, sink, data)

    monkeypatch.setattr(runner, "send_frame", send_frame)
    with StallServer(protocol) as server:
        tr = asyncio.run(_run_plain(protocol, server.url, tmp_path / "trace.jsonl"))
    assert len(stalls) == 1
    turns = sorted(tr.finished_turns(), key=lambda st: st[1])
    assert len(turns) == 2 == len(server.replies)
    for (session, turn), sent in zip(turns, server.replies, strict=True):
        evs = _events(tr, session, turn)
        pacing = next(e for e in evs if e.name == "input.pacing").attrs
        if turn == 1:
            # the stalled frame was stamped as it went in; the next one, due a frame
            # later, left when the stall was over
            assert pacing["max_ns"] >= STALL_S * 1e9 - CHUNK_MS * MS - 1 * MS, pacing
            assert pacing["max_frame"] == SEND_STALL_FRAME and pacing["over_broke"] >= 1
        end_sent = next(e for e in evs if e.name == "input.speech_end_sent").attrs
        # caught up long before the speech end (a second later): not the stall's 30 ms
        assert end_sent["late_ns"] < 20 * MS, end_sent
        _check_figures(evs, sent, 0, _check_arrivals(evs, sent, []))
    report = build_report([tr])
    broke = {(t.session, t.turn) for t in report.turns if t.pacing is not None and t.pacing.broke}
    # (another turn may be marked too on a loaded machine: the probe was descheduled)
    assert turns[1] in broke, [(t.turn, t.pacing) for t in report.turns]
