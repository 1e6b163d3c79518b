"""voiceaudit's WebRTC target against a real Pipecat 1.14 SmallWebRTC bot, and failed
negotiations that must end in a clear TargetError, never a hang.

The bot (tests/pipecat_bot.py over WebRTC) is Pipecat's own ``SmallWebRTCTransport`` and
``SmallWebRTCConnection`` (aiortc) behind the ``POST /api/offer`` signalling of Pipecat's
runner, with offline services (Silero VAD, PocketSphinx, a rule-based responder, eSpeak NG).
Two bundled utterances are replayed twice; the bot prepends 500 ms of silence to the
second pair of replies only: the caller hears the difference and the probe must recover it
from voice-to-voice. Before that, the same bot is reached through a wrong path (404) and
through a signalling proxy that makes ICE impossible; both must end in a TargetError.

The fast tests need no Pipecat: loopback signalling endpoints that fail one way each.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from servers import LoopbackServer, PipecatBot

from voiceaudit.cli import run as cli
from voiceaudit.clock import NS_PER_MS
from voiceaudit.data import bundled_dir
from voiceaudit.errors import TargetError
from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets import registry
from voiceaudit.targets.base import TargetConfig
from voiceaudit.trace_io import read_trace

pytest.importorskip("aiortc", reason="aiortc is the webrtc extra")

MS = NS_PER_MS
UTTERANCES = ["01_weather.wav", "03_lights.wav"]
SILENCE_PLAN = [0, 0, 500, 500]


def webrtc_target(url: str, **options: str) -> Any:
    cls = registry.get_target_class("webrtc")
    return cls(TargetConfig(url=url, protocol="webrtc", options=options, connect_timeout_s=10))


# -- failed negotiations: a clear TargetError in bounded time, never a hang ------------------


class Signalling(LoopbackServer):
    """A loopback signalling endpoint (aiohttp) with a chosen way to fail.

    ``404``: answers 404; ``no-sdp``: answers JSON without ``sdp``; ``dead-peer``: a real
    aiortc peer answers the offer and is then closed, so the answer's candidates lead
    nowhere and ICE never completes; ``no-candidates``: the same answer without its
    candidates (a peer that gathered none); ``proxy``: forwards the offer to ``upstream`` (the
    real Pipecat bot) and returns its answer, with every candidate of both rewritten to a
    UDP port that swallows everything: neither side can reach the other.
    """

    def __init__(self, mode: str, upstream: str | None = None) -> None:
        self.mode = mode
        self.upstream = upstream
        self.black_hole: socket.socket | None = None
        self.offers = 0

    async def handler(self, request: Any) -> Any:
        from aiohttp import ClientSession, web

        self.offers += 1
        if self.mode == "404":
            return web.Response(status=404, text="404: Not Found")
        body = await request.json()
        if self.mode == "no-sdp":
            return web.json_response({"type": "answer", "pc_id": "x"})
        if self.mode in ("dead-peer", "no-candidates"):
            from aiortc import RTCPeerConnection, RTCSessionDescription

            pc = RTCPeerConnection()
            await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription.sdp
            await pc.close()
            if self.mode == "no-candidates":  # what a peer that gathered none answers
                answer = "".join(
                    x for x in answer.splitlines(keepends=True) if not x.startswith("a=candidate:")
                )
            return web.json_response({"sdp": answer, "type": "answer"})
        assert self.mode == "proxy" and self.upstream and self.black_hole
        offer = self._lead_nowhere(body["sdp"])
        async with (
            ClientSession() as http,
            http.post(self.upstream, json={"sdp": offer, "type": body["type"]}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        answer["sdp"] = self._lead_nowhere(answer["sdp"])
        return web.json_response(answer)

    def _lead_nowhere(self, sdp: str) -> str:
        """Point every ICE candidate at the black hole."""
        assert self.black_hole is not None
        hole = str(self.black_hole.getsockname()[1])
        lines = []
        for line in sdp.splitlines(keepends=True):
            if line.startswith("a=candidate:"):
                f = line.split(" ")  # foundation component transport priority ip port typ …
                f[4], f[5] = "127.0.0.1", hole
                line = " ".join(f)
            lines.append(line)
        return "".join(lines)

    path = "/api/offer"
    scheme = "http"

    def routes(self, app: Any) -> None:
        app.router.add_post(self.path, self.handler)

    async def start(self) -> str:
        if self.mode == "proxy":
            self.black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.black_hole.bind(("127.0.0.1", 0))
        return await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.black_hole is not None:
            self.black_hole.close()
            self.black_hole = None


class Marks:
    """A TargetSink that keeps what a session reports."""

    def __init__(self) -> None:
        self.marks: list[str] = []
        self.failures: list[str] = []

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.marks.append(name)

    def reply_audio(self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int) -> None:
        pass

    def reply_done(self, t_ns: int) -> None:
        pass

    def fail(self, reason: str) -> None:
        self.failures.append(reason)


async def open_and_fail(url: str, **options: str) -> tuple[TargetError, float, Marks]:
    """Open a WebRTC session that must fail; the error, the seconds it took, the marks."""
    sink = Marks()
    session = webrtc_target(url, **options).session(sink)
    t = time.monotonic()
    try:
        with pytest.raises(TargetError) as info:
            await session.open()
        return info.value, time.monotonic() - t, sink
    finally:
        await session.close()


def fails(mode: str, **options: str) -> tuple[TargetError, float, Marks, int]:
    async def go() -> tuple[TargetError, float, Marks, int]:
        server = Signalling(mode)
        url = await server.start()
        try:
            err, took, sink = await open_and_fail(url, **options)
        finally:
            await server.stop()
        return err, took, sink, server.offers

    return asyncio.run(go())


def test_signalling_404_is_a_target_error() -> None:
    err, took, sink, offers = fails("404")
    assert offers == 1 and took < 10
    assert err.message.startswith("WebRTC signalling: HTTP 404"), err.message
    assert "webrtc.offer_sent" in sink.marks and "webrtc.answer_received" not in sink.marks


def test_answer_without_sdp_is_a_target_error() -> None:
    err, _, _, _ = fails("no-sdp")
    assert err.message == "WebRTC signalling: JSON answer without 'sdp'"


def test_nothing_listening_is_a_target_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    err, _, _ = asyncio.run(open_and_fail(f"http://127.0.0.1:{port}/api/offer"))
    assert err.message.startswith("WebRTC negotiation failed:"), err.message


def test_peer_that_never_completes_ice_times_out() -> None:
    err, took, sink, _ = fails("dead-peer", connect_timeout="2")
    assert "not connected within 2 s" in err.message, err.message
    assert err.hint
    # bounded: the connect timeout, plus a little for closing the peer connection
    assert 2 <= took < 12, took
    assert "webrtc.answer_received" in sink.marks
    assert "webrtc.dtls_connected" not in sink.marks


def test_answer_without_candidates_fails_at_once() -> None:
    err, took, sink, _ = fails("no-candidates", connect_timeout="10")
    # aioice has no pair to check: the connection fails without waiting for the timeout
    assert err.message == "WebRTC connection failed (ICE: failed)", err.message
    assert err.hint is not None and "ICE candidate" in err.hint
    assert took < 10, took
    assert "webrtc.ice_failed" in sink.marks


def test_probe_run_against_a_dead_peer_ends_with_a_closed_trace(tmp_path: Path) -> None:
    """Through the probe: the run stops with the TargetError; the trace is closed."""

    async def go() -> None:
        server = Signalling("dead-peer")
        url = await server.start()
        try:
            files = [bundled_dir() / UTTERANCES[0]]
            with pytest.raises(TargetError, match="not connected within"):
                await run_probe(
                    webrtc_target(url, connect_timeout="1"),
                    load_utterances(files),
                    ProbeOptions(turns=1),
                    tmp_path / "t.jsonl",
                )
        finally:
            await server.stop()

    asyncio.run(go())
    tr = read_trace(tmp_path / "t.jsonl")
    assert tr.end is not None and tr.end.reason == "error"
    failed = [e for e in tr.events if e.name == "session.failed"]
    assert len(failed) == 1 and "not connected within 1 s" in failed[0].attrs["reason"]


# -- the real bot -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_pipecat_smallwebrtc_bot(tmp_path: Path) -> None:
    pytest.importorskip("pipecat", reason="pipecat-ai is a test dependency")
    files = [bundled_dir() / name for name in UTTERANCES]
    trace = tmp_path / "trace.jsonl"
    plan = ",".join(str(x) for x in SILENCE_PLAN)
    bot = PipecatBot(
        tmp_path / "bot.log", "--leading-silence-ms", plan, transport="webrtc", ready_s=120
    )
    with bot:
        url = bot.url

        async def failures() -> tuple[TargetError, TargetError, float]:
            # a path Pipecat's runner does not serve
            e404, _, _ = await open_and_fail(url.replace("/api/offer", "/api/nope"))
            # Pipecat answers, but neither side can reach the other: ICE never completes
            proxy = Signalling("proxy", upstream=url)
            purl = await proxy.start()
            try:
                eice, took, sink = await open_and_fail(purl, connect_timeout="2")
            finally:
                await proxy.stop()
            assert "webrtc.dtls_connected" not in sink.marks
            return e404, eice, took

        e404, eice, took = asyncio.run(failures())
        assert e404.message.startswith("WebRTC signalling: HTTP 404"), e404.message
        assert "not connected within 2 s" in eice.message, eice.message
        assert took < 12, took

        target = webrtc_target(url)
        opts = ProbeOptions(turns=4, gap_ms=800, timeout_s=10, idle_s=1.0)
        t = time.monotonic()
        res: RunResult = asyncio.run(run_probe(target, load_utterances(files), opts, trace))
        took = time.monotonic() - t
        # The probe hung up: Pipecat saw its connection (the bot's second) close and ended
        # that pipeline.
        deadline = time.monotonic() + 30
        log = bot.log
        while "session 2 ended" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "session 2 ended" in log.read_text(), bot.log_tail()
        bot.proc.terminate()
        assert bot.proc.wait(timeout=30) == 0, bot.log_tail()
    print(f"probe took {took:.1f} s; bot log tail:\n{log.read_text()[-1500:]}")

    assert [t.ok for t in res.turns] == [True] * 4, res.turns
    v2v = [t.voice_to_voice_ns or 0 for t in res.turns]
    print("voice-to-voice ms:", [round(v / MS) for v in v2v])
    assert all(100 * MS < v < 5000 * MS for v in v2v), v2v
    # Turns 0, 1 and 2, 3 replay the same two utterances; the bot prepended 500 ms of
    # silence to the replies of turns 2 and 3. On a continuous WebRTC stream that silence
    # is part of the wait the caller hears.
    hidden = ((v2v[2] - v2v[0]) + (v2v[3] - v2v[1])) / 2
    assert abs(hidden - 500 * MS) < 100 * MS, [round(v / MS) for v in v2v]

    tr = read_trace(trace)
    names = [e.name for e in tr.events]
    for mark in ("webrtc.offer_sent", "webrtc.answer_received", "webrtc.dtls_connected"):
        assert names.count(mark) == 1, mark
    assert "webrtc.first_rtp_received" in names
    jb = [e for e in tr.events if e.name == "webrtc.jitter_buffer"]
    assert [e.turn for e in jb] == [0, 1, 2, 3]
    print("jitter buffer:", [e.attrs for e in jb])
    # aiortc's audio jitter buffer (prefetch 4) releases a 20 ms Opus packet when the 4th
    # after it arrives: 80 ms after its arrival at an even pace. Recovering that shows the
    # reply's times are RTP arrivals, taken before the buffer.
    for e in jb:
        assert e.attrs["frames"] > 50
        assert abs(e.attrs["mean_ms"] - 80) < 15, e.attrs

    assert cli(["report", str(trace)]) == 0
