"""Over WebRTC the reply is a continuous stream: the probe starts the reply at the frame
the reference pipeline names as its first (the ``pts`` of its ``first_audio_sent`` stage
event), so a synthesized leading silence is measured as such, not hidden in transport.

Real reference server, real aiortc peers on loopback, the ``leading-silence=300ms``
injection: the ledger's ``leading_silence`` holds the injected 300 ms (plus Opus's
look-ahead), and without the stage events the probe cannot tell it (it keeps only the
three quiet frames before the first audible one).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voiceaudit.analysis import build_report
from voiceaudit.trace_io import read_trace

pytest.importorskip("aiortc")
pytestmark = pytest.mark.slow

MS = 1_000_000
UTTERANCES = ("01_weather.wav", "06_thanks.wav")


async def _record(base: Path) -> None:
    from voiceaudit.cli.run_cmd import reference_options, reference_url
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import bundled_dir, load_utterances
    from voiceaudit.reference.config import ServerConfig, parse_injections
    from voiceaudit.reference.server import start_reference_server
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.webrtc import WebRTCTarget

    utterances = load_utterances([bundled_dir() / u for u in UTTERANCES])
    server = await start_reference_server(
        ServerConfig(
            injections=parse_injections(["leading-silence=300ms"]),
            ground_truth_path=base / "ground_truth.jsonl",
        )
    )
    try:
        for stages in ("on", "off"):
            options = {**reference_options("webrtc"), "stage_events": stages}
            target = WebRTCTarget(
                TargetConfig(
                    url=reference_url(server, "webrtc"), protocol="webrtc", options=options
                )
            )
            await run_probe(target, utterances, ProbeOptions(gap_ms=300), base / f"{stages}.jsonl")
    finally:
        await server.close()


def test_injected_leading_silence_is_the_replys_own(tmp_path: Path) -> None:
    asyncio.run(_record(tmp_path))
    with_stages = build_report([read_trace(tmp_path / "on.jsonl")]).stats_turns
    assert len(with_stages) == len(UTTERANCES)
    exact = [t for t in with_stages if "unexplained" not in t.ledger.by_name()]
    # the stage event leaves ~20 ms before its frame is decoded (see test_run_ground_truth)
    assert 2 * len(exact) >= len(with_stages), [t.ledger.segments for t in with_stages]
    for t in exact:
        got = t.ledger.by_name()
        # 300 ms injected, Opus's look-ahead adds a few ms; audio content, not wall time
        assert 300 * MS <= got["leading_silence"] <= 330 * MS, got
        assert got["transport"] < 100 * MS  # the silence is not in transport
    without = build_report([read_trace(tmp_path / "off.jsonl")]).stats_turns
    assert len(without) == len(UTTERANCES)
    for t in without:
        # three quiet frames kept before the first audible one: the injection is not seen
        assert t.ledger.by_name().get("leading_silence", 0) <= 70 * MS, t.ledger.segments
