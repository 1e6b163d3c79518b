"""The reference pipeline answers Pipecat's runner signalling: ``POST /api/offer`` with a
``SmallWebRTCRequest`` (answered ``{sdp, type, pc_id}``) and ``PATCH /api/offer`` with
trickled ICE candidates, so ``voiceaudit run --protocol webrtc --target …/api/offer`` (the
URL a Pipecat user has) works against ``voiceaudit serve``.

A real ``voiceaudit serve`` on loopback; real aiortc peers (the probe's own, and a bare
one that speaks Pipecat's request shapes); a real turn of speech.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_reference_support import Served, serve

from voiceaudit.analysis import build_report
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode
from voiceaudit.trace_io import read_trace

pytest.importorskip("aiortc", reason="aiortc is the webrtc extra")
pytestmark = pytest.mark.slow

#: The keys of Pipecat's answer (SmallWebRTCConnection.get_answer, Pipecat 1.14).
PIPECAT_ANSWER_KEYS = {"sdp", "type", "pc_id"}


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serve() as s:
        yield s


def test_voiceaudit_run_against_api_offer(server: Served, tmp_path: Path) -> None:
    """What the Pipecat user ran: the webrtc target pointed at ``/api/offer``."""
    out = tmp_path / "run"
    code = run(
        [
            "run",
            "--protocol",
            "webrtc",
            "--target",
            server.url + "/api/offer",
            "--turns",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == ExitCode.OK
    turns = build_report([read_trace(out / "trace.jsonl")]).stats_turns
    assert len(turns) == 1
    turn = turns[0]
    assert turn.voice_to_voice_ns is not None and turn.voice_to_voice_ns > 0
    truth = server.wait_turns(lambda r: r["protocol"] == "webrtc" and r["status"] == "completed")
    assert truth, server.turns()
    assert truth[0]["transcript"] and truth[0]["reply_text"]
    assert truth[0]["marks"]["first_audio_sent"] is not None


def _client_pc() -> Any:
    from aiortc import RTCPeerConnection

    from voiceaudit.targets.webrtc import allow_loopback_ice

    allow_loopback_ice()
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    return pc


async def _offer(pc: Any) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def _connected(pc: Any) -> None:
    done = asyncio.Event()

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    if pc.connectionState != "connected":
        await asyncio.wait_for(done.wait(), 30)
    assert pc.connectionState == "connected"


async def _call(
    cs: aiohttp.ClientSession, method: str, url: str, body: Any
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, str) else json.dumps(body)
    async with cs.request(
        method, url, data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.json(content_type=None)


def test_pipecat_request_and_answer_shapes(server: Served) -> None:
    url = server.url + "/api/offer"

    async def main() -> None:
        from aiortc import RTCSessionDescription

        pc = _client_pc()
        async with aiohttp.ClientSession() as cs:
            try:
                sdp = await _offer(pc)
                # What pipecat-client-js sends, plus a key Pipecat's model ignores.
                status, answer = await _call(
                    cs,
                    "POST",
                    url,
                    {
                        "sdp": sdp,
                        "type": "offer",
                        "pc_id": None,
                        "restart_pc": False,
                        "request_data": {"room": "test"},
                        "requestData": {"room": "test"},
                        "ice_config": {},
                    },
                )
                assert status == 200, answer
                assert set(answer) == PIPECAT_ANSWER_KEYS
                assert answer["type"] == "answer" and answer["pc_id"]
                assert "a=candidate:" in answer["sdp"] and "127.0.0.1" in answer["sdp"]
                pc_id = answer["pc_id"]
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                await _connected(pc)

                # Trickled candidates (the client's own), then end-of-candidates.
                lines = [
                    ln[2:]
                    for ln in pc.localDescription.sdp.splitlines()
                    if ln.startswith("a=candidate:")
                ]
                assert lines
                patch = {
                    "pc_id": pc_id,
                    "candidates": [
                        {"candidate": lines[0], "sdp_mid": "0", "sdp_mline_index": 0},
                        {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0},
                    ],
                }
                assert await _call(cs, "PATCH", url, patch) == (200, {"status": "success"})
                assert pc.connectionState == "connected"

                # pc_id renegotiates on the same connection.
                status, again = await _call(
                    cs, "POST", url, {"sdp": await _offer(pc), "type": "offer", "pc_id": pc_id}
                )
                assert status == 200, again
                assert set(again) == PIPECAT_ANSWER_KEYS and again["pc_id"] == pc_id
                await pc.setRemoteDescription(RTCSessionDescription(again["sdp"], "answer"))
                assert pc.connectionState == "connected"

                # restart_pc replaces the connection: a new pc_id, the old one is gone.
                fresh = _client_pc()
                try:
                    status, restarted = await _call(
                        cs,
                        "POST",
                        url,
                        {
                            "sdp": await _offer(fresh),
                            "type": "offer",
                            "pc_id": pc_id,
                            "restart_pc": True,
                        },
                    )
                    assert status == 200, restarted
                    assert set(restarted) == PIPECAT_ANSWER_KEYS
                    assert restarted["pc_id"] != pc_id
                    gone = {"pc_id": pc_id, "candidates": []}
                    assert await _call(cs, "PATCH", url, gone) == (
                        404,
                        {"detail": "Peer connection not found"},
                    )
                    await fresh.setRemoteDescription(
                        RTCSessionDescription(restarted["sdp"], "answer")
                    )
                    await _connected(fresh)
                    ok = {"pc_id": restarted["pc_id"], "candidates": []}
                    assert await _call(cs, "PATCH", url, ok) == (200, {"status": "success"})
                finally:
                    await fresh.close()
            finally:
                await pc.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("POST", "not json", 422),
        ("POST", ["sdp"], 422),
        ("POST", {"type": "offer"}, 422),
        ("POST", {"sdp": "v=0\r\n", "type": "offer", "restart_pc": "yes"}, 422),
        ("POST", {"sdp": "v=0\r\n", "type": "answer"}, 400),
        ("POST", {"sdp": "hello", "type": "offer"}, 400),
        ("POST", {"sdp": "v=0\r\nm=audio nonsense\r\n", "type": "offer"}, 400),
        ("PATCH", "not json", 422),
        ("PATCH", {"pc_id": "x"}, 422),
        ("PATCH", {"pc_id": "x", "candidates": [{"candidate": "a"}]}, 422),
        ("PATCH", {"pc_id": "rtc_unknown", "candidates": []}, 404),
    ],
)
def test_bad_requests_are_refused_as_pipecat_does(
    server: Served, method: str, body: Any, status: int
) -> None:
    async def main() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as cs:
            return await _call(cs, method, server.url + "/api/offer", body)

    got, answer = asyncio.run(main())
    assert got == status, answer
    assert set(answer) == {"detail"} and answer["detail"]
    assert server.proc.poll() is None  # still serving


def test_a_bad_candidate_for_a_live_connection(server: Served) -> None:
    url = server.url + "/api/offer"

    async def main() -> tuple[int, dict[str, Any]]:
        pc = _client_pc()
        try:
            async with aiohttp.ClientSession() as cs:
                status, answer = await _call(
                    cs, "POST", url, {"sdp": await _offer(pc), "type": "offer"}
                )
                assert status == 200, answer
                bad = {
                    "pc_id": answer["pc_id"],
                    "candidates": [{"candidate": "garbage", "sdp_mid": "0", "sdp_mline_index": 0}],
                }
                return await _call(cs, "PATCH", url, bad)
        finally:
            await pc.close()

    status, answer = asyncio.run(main())
    assert status == 400 and "cannot add the ICE candidate 'garbage'" in answer["detail"]
