"""End to end: the probe against the reference pipeline, with each fault injection, and
the report checked against the pipeline's own ground truth.

Every configuration is recorded once per test session (one warm speech-recognition pool
shared by all the servers), two short utterances each. For each finding kind the
injected delay must be found and costed within 5 ms (or 5 %) of what the ground truth
says it was, and a clean run must report nothing. The ledger is checked mark by mark
against the ground truth, with the target's own clock (raw PCM WebSocket: server times)
and with arrival times (Realtime protocol).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_pipeline_stages

from voiceaudit.analysis import Report, TurnReport, build_report
from voiceaudit.reference.groundtruth import read_ground_truth

pytestmark = pytest.mark.slow

MS = 1_000_000
UTTERANCES = ("03_lights.wav", "05_joke.wav")


@dataclass(frozen=True)
class Config:
    protocol: str = "websocket"
    inject: tuple[str, ...] = ()
    server: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, str], ...] = ()


CONFIGS: dict[str, Config] = {
    "clean": Config(),
    # the standard events only, as from a third-party server: arrival times
    "realtime": Config(protocol="realtime", options=(("stage_events", "off"),)),
    # with the reference's stage events: its own times of every stage
    "realtime_stages": Config(protocol="realtime"),
    "leading_silence": Config(inject=("leading-silence=300ms",)),
    "slow_first_token": Config(inject=("llm-ttft=600ms",)),
    "sentence_aggregation": Config(inject=("sentence-aggregation",)),
    "whole_result_handoff": Config(protocol="cascade", options=(("handoff", "whole"),)),
    "whole_result_handoff_server": Config(inject=("whole-result-handoff",)),
    "large_audio_buffer": Config(inject=("audio-chunk=1000ms",)),
    "audio_underrun": Config(inject=("slow-audio=0.8",)),
    "endpointing_wait": Config(server=(("silence_ms", 1200),)),
}


@dataclass
class Recorded:
    name: str
    trace: Path
    truth: list[dict[str, Any]] = field(default_factory=list)
    report: Report | None = None

    @property
    def turns(self) -> list[dict[str, Any]]:
        return [r for r in self.truth if r.get("record") == "turn"]

    @property
    def header(self) -> dict[str, Any]:
        return next(r for r in self.truth if r.get("record") == "header")


async def _record_all(base: Path) -> dict[str, Path]:
    from voiceaudit.cli.run_cmd import reference_url
    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.reference.asr import AsrPool
    from voiceaudit.reference.config import ServerConfig, parse_injections
    from voiceaudit.reference.server import start_reference_server
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class

    utterances = load_utterances([bundled_dir() / u for u in UTTERANCES])
    pool = AsrPool(2)
    await pool.start()
    out: dict[str, Path] = {}
    try:
        for name, cfg in CONFIGS.items():
            run_dir = base / name
            run_dir.mkdir(parents=True)
            server = await start_reference_server(
                ServerConfig(
                    injections=parse_injections(cfg.inject),
                    ground_truth_path=run_dir / "ground_truth.jsonl",
                    **dict(cfg.server),
                ),
                asr_pool=pool,
            )
            try:
                url = reference_url(server, cfg.protocol)
                target = get_target_class(cfg.protocol)(
                    TargetConfig(url=url, protocol=cfg.protocol, options=dict(cfg.options))
                )
                await run_probe(
                    target,
                    utterances,
                    ProbeOptions(save_audio=True, gap_ms=300),
                    run_dir / "trace.jsonl",
                )
            finally:
                await server.close()
            out[name] = run_dir
    finally:
        await pool.close()
    return out


_BASE: list[Path] = []


@cache
def _recordings() -> dict[str, Path]:
    return asyncio.run(_record_all(_BASE[0]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Recorded]]:
    if not _BASE:
        _BASE.append(tmp_path_factory.mktemp("reference-runs"))
    dirs = _recordings()
    out = {}
    for name, d in dirs.items():
        rec = Recorded(name, d / "trace.jsonl", read_ground_truth(d / "ground_truth.jsonl"))
        rec.report = build_report([rec.trace])
        out[name] = rec
    yield out


def _ok_turns(rec: Recorded) -> list[TurnReport]:
    assert rec.report is not None
    turns = list(rec.report.stats_turns)
    assert len(turns) == len(UTTERANCES), [(t.reason) for t in rec.report.failed_turns]
    return turns


def _truth_for(rec: Recorded, turn: TurnReport) -> dict[str, Any]:
    """The ground-truth record of a turn: the one whose endpoint the trace saw."""
    ep = turn.ledger.times.get("endpoint")
    assert ep is not None
    best = min(
        (r for r in rec.turns if r["marks"].get("vad_stop") is not None),
        key=lambda r: abs(r["marks"]["vad_stop"] - ep),
    )
    return best


def _finding(turn: TurnReport, kind: str) -> int:
    got = {f.kind: f.ns for f in turn.findings}
    assert kind in got, f"{kind} not found in turn {turn.turn}; found {sorted(got)}"
    return got[kind]


def _close(measured_ns: int, truth_ns: int) -> None:
    tol = max(5 * MS, 0.05 * abs(truth_ns))
    assert abs(measured_ns - truth_ns) <= tol, (measured_ns / MS, truth_ns / MS)


# -- the ledger against the ground truth ----------------------------------------------------


@pytest.mark.parametrize("name", ["clean", "realtime_stages"])
def test_ledger_with_the_targets_own_clock(runs: dict[str, Recorded], name: str) -> None:
    rec = runs[name]
    for t in _ok_turns(rec):
        assert t.ledger.clock == "server"
        gt = _truth_for(rec, t)["marks"]
        seg = t.ledger.by_name()
        assert_pipeline_stages(seg, gt)
        # the probe's marks sit where they must on the shared clock
        t0 = t.ledger.times["input.speech_end_sent"]
        assert seg["endpointing"] == gt["vad_stop"] - t0
        first_byte = t.ledger.times["reply.first_byte"]
        assert seg["first_audio"] == gt["first_audio_sent"] - gt["tts_first_audio"]
        assert seg["transport"] == first_byte - gt["first_audio_sent"]
        assert 0 <= first_byte - gt["first_audio_sent"] < 50 * MS  # sent, then received
        assert sum(seg.values()) == t.voice_to_voice_ns
        assert "unexplained" not in seg
        # base64 audio in JSON is the Realtime protocol's own overhead, nothing else
        assert {f.kind for f in t.findings} <= (
            {"encoding_overhead"} if CONFIGS[rec.name].protocol == "realtime" else set()
        )


def test_ledger_with_arrival_times(runs: dict[str, Recorded]) -> None:
    rec = runs["realtime"]
    for t in _ok_turns(rec):
        assert t.ledger.clock == "arrival"
        # the standard events alone split the reply: no unexplained time
        assert [s.name for s in t.ledger.segments][3:6] == [
            "response_start",
            "model_first_text",
            "first_audio",
        ]
        assert "unexplained" not in t.ledger.by_name()
        gt = _truth_for(rec, t)["marks"]
        ep = t.ledger.times["endpoint"]
        # a notice arrives after the event it reports, and soon on loopback
        assert 0 <= ep - gt["vad_stop"] < 20 * MS
        _close(
            t.ledger.by_name()["endpointing"],
            gt["vad_stop"] - t.ledger.times["input.speech_end_sent"],
        )
        assert sum(s.ns for s in t.ledger.segments) == t.voice_to_voice_ns


# -- each injection found and costed; nothing on a clean run ------------------------------


def test_clean_run_reports_nothing(runs: dict[str, Recorded]) -> None:
    rep = runs["clean"].report
    assert rep is not None and rep.findings == ()


def test_leading_silence(runs: dict[str, Recorded]) -> None:
    rec = runs["leading_silence"]
    for t in _ok_turns(rec):
        _close(_finding(t, "leading_silence"), _truth_for(rec, t)["injected"]["leading_silence_ns"])


def test_slow_first_token(runs: dict[str, Recorded]) -> None:
    rec = runs["slow_first_token"]
    for t in _ok_turns(rec):
        gt = _truth_for(rec, t)
        assert gt["injected"]["llm_ttft_ns"] == 600 * MS
        _close(
            _finding(t, "slow_first_token"),
            gt["marks"]["llm_first_token"] - gt["marks"]["llm_request"],
        )


@pytest.mark.parametrize(
    ("kind", "start", "end"),
    [
        ("sentence_aggregation", "llm_first_token", "tts_request"),
        ("large_audio_buffer", "tts_first_audio", "first_audio_sent"),
    ],
)
def test_a_finding_is_the_time_between_two_marks(
    runs: dict[str, Recorded], kind: str, start: str, end: str
) -> None:
    # the run with that injection; its finding is the ground truth's time from start to end
    rec = runs[kind]
    for t in _ok_turns(rec):
        gt = _truth_for(rec, t)["marks"]
        _close(_finding(t, kind), gt[end] - gt[start])


def test_whole_result_handoff(runs: dict[str, Recorded]) -> None:
    # voiceaudit's own cascade, handing the model's whole answer to synthesis
    rec = runs["whole_result_handoff"]
    chats = [r for r in rec.turns if r.get("stage") == "chat"]
    speeches = [r for r in rec.turns if r.get("stage") == "speech"]
    for t in _ok_turns(rec):
        req = t.ledger.times["tts.request"]
        chat = min(
            chats,
            key=lambda r: abs(r["marks"]["llm_first_token"] - t.ledger.times["llm.first_token"]),
        )
        speech = min(speeches, key=lambda r: abs(r["marks"]["tts_request"] - req))
        _close(
            _finding(t, "whole_result_handoff"),
            speech["marks"]["tts_request"] - chat["marks"]["llm_first_token"],
        )
        assert "sentence_aggregation" not in {f.kind for f in t.findings}


def test_whole_result_handoff_inside_the_pipeline(runs: dict[str, Recorded]) -> None:
    # the reference pipeline's own injection, seen through its raw PCM WebSocket marks
    rec = runs["whole_result_handoff_server"]
    for t in _ok_turns(rec):
        gt = _truth_for(rec, t)["marks"]
        assert gt["tts_request"] >= gt["llm_done"]
        _close(_finding(t, "whole_result_handoff"), gt["tts_request"] - gt["llm_first_token"])
        assert "sentence_aggregation" not in {f.kind for f in t.findings}


def test_audio_underrun(runs: dict[str, Recorded]) -> None:
    rec = runs["audio_underrun"]
    for t in _ok_turns(rec):
        gt = _truth_for(rec, t)
        reply_ns = gt["audio"]["reply_audio_ns"]
        chunk_ns = 20 * MS
        # released at 0.8x real time in 20 ms messages: each message after the first
        # leaves a gap of a quarter of its length
        expected = round((reply_ns - chunk_ns) * (1 / 0.8 - 1))
        _close(_finding(t, "audio_underrun"), expected)


def test_endpointing_wait(runs: dict[str, Recorded]) -> None:
    rec = runs["endpointing_wait"]
    assert rec.header["config"]["silence_ms"] == 1200
    for t in _ok_turns(rec):
        gt = _truth_for(rec, t)["marks"]
        cost = _finding(t, "endpointing_wait")
        _close(cost, gt["vad_stop"] - t.ledger.times["input.speech_end_sent"])
        assert cost >= 1200 * MS


def test_encoding_overhead(runs: dict[str, Recorded]) -> None:
    # Realtime carries audio as base64 inside JSON; the raw PCM WebSocket does not.
    rec = runs["realtime"]
    for t in _ok_turns(rec):
        f = next(f for f in t.findings if f.kind == "encoding_overhead")
        assert f.evidence["ratio"] >= 4 / 3
        expected = round(f.evidence["extra_bytes_before_audible"] * 8 / 2_000_000 * 1e9)
        assert f.ns == expected
    assert all(
        "encoding_overhead" not in {f.kind for f in t.findings} for t in _ok_turns(runs["clean"])
    )
