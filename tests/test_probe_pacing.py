"""Pacing is measured, not assumed: a probe made late on purpose says so.

The pipeline below blocks the probe's event loop once, mid-utterance, with a
``time.sleep`` of HOLD_MS. No frame can leave while the loop is blocked, and the frame
whose deadline falls within one frame period after the hold began is sent at least
HOLD_MS - FRAME_MS after its deadline: a one-sided truth (a busy machine only adds
lateness). A clean run cannot be asserted on a busy machine, so for every turn the test
checks instead that the recorded summary is exactly what the turn's own frames give.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from test_probe_python import known_delay_pipeline, run_pipeline

from voiceaudit.analysis.report import TurnPacing, build_report
from voiceaudit.clock import NS_PER_MS
from voiceaudit.data import bundled_dir
from voiceaudit.pacing_stats import BROKE_NS, HIST_BIN_NS, PacingHistogram, pacing_attrs
from voiceaudit.probe.runner import ProbeOptions
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.python import Emitter, PythonTarget
from voiceaudit.trace_io import read_trace

HOLD_MS = 40
FRAME_MS = 20
#: the hold starts when the pipeline takes this frame of the session (mid first utterance)
HOLD_AT_FRAME = 25

V1 = Path(__file__).parent / "data" / "trace-v1"


async def hold_once_pipeline(frames: AsyncIterator[bytes], emit: Emitter) -> None:
    async def held() -> AsyncIterator[bytes]:
        n = 0
        async for f in frames:
            n += 1
            if n == HOLD_AT_FRAME:
                time.sleep(HOLD_MS / 1000)  # blocks the probe's loop: on purpose
            yield f

    await known_delay_pipeline(held(), emit)


def _late(attrs: dict[str, Any]) -> list[int]:
    return [d - s for d, s in zip(attrs["dt_ns"], attrs["sched_dt_ns"], strict=True)]


def test_a_held_event_loop_shows_in_pacing_and_marks_the_turn(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    opts = ProbeOptions(gap_ms=100, frame_ms=FRAME_MS)
    res = run_pipeline("test_probe_pacing:hold_once_pipeline", trace, opts)
    assert [t.ok for t in res.turns] == [True, True], res.turns

    floor = (HOLD_MS - FRAME_MS) * NS_PER_MS
    assert floor > BROKE_NS
    tr = read_trace(trace)
    all_late: list[int] = []
    for _, turn in tr.finished_turns():
        evs = {e.name: e for e in tr.turn_events("s0", turn)}
        late = _late(evs["input.frames"].attrs)
        all_late += late
        sent = [evs["input.frames"].t_ns + d for d in evs["input.frames"].attrs["dt_ns"]]
        deadlines = [evs["input.frames"].t_ns + d for d in evs["input.frames"].attrs["sched_dt_ns"]]
        # the summary is exactly what the frames' own arrays give
        assert evs["input.pacing"].attrs == pacing_attrs(sent, deadlines)
        assert evs["input.pacing"].attrs["max_ns"] == max(late)
        assert evs["input.pacing"].attrs["frames"] == len(late)
        assert sum(evs["input.pacing"].attrs["hist_counts"]) == len(late)
    held = {e.name: e for e in tr.turn_events("s0", 0)}["input.pacing"].attrs
    assert held["max_ns"] >= floor
    assert held["max_frame"] >= HOLD_AT_FRAME - 1
    assert held["over_broke"] >= 1

    # the run summary
    s = res.summary()["pacing"]
    assert s["frames"] == len(all_late)
    assert s["worst_ms"] * NS_PER_MS == max(all_late)
    assert s["worst"]["session"] == "s0"
    assert s["broke"] is True
    assert s["broke_turns"] >= 1
    assert res.turns[0].pacing_broke

    # the report: the turn is marked, kept in the statistics, and a warning names it
    rep = build_report([trace])
    t0 = next(t for t in rep.turns if t.turn == 0)
    assert t0.pacing is not None and t0.pacing.broke and t0.pacing.max_ns >= floor
    assert t0 in rep.stats_turns
    d = json.loads(rep.to_json())
    assert d["pacing"]["broke_turns"] >= 1
    assert d["pacing"]["worst_ms"] * NS_PER_MS == max(all_late)
    assert d["pacing"]["frames"] == len(all_late)
    assert d["turns"][0]["pacing"]["broke"] is True
    assert d["turns"][0]["pacing"]["source"] == "frames"
    assert any("pacing broke in" in w for w in rep.warnings), rep.warnings
    # the merged histogram's p99 is the exact p99's bin edge: never below, at most a bin above
    ordered = sorted(all_late)
    exact = ordered[-(-len(ordered) * 99 // 100) - 1]
    assert rep.pacing is not None and rep.pacing.p99_ns is not None
    assert max(exact, 0) < rep.pacing.p99_ns <= max(exact, 0) + HIST_BIN_NS


def test_pacing_attrs_of_known_lateness() -> None:
    deadlines = [i * 20 * NS_PER_MS for i in range(100)]
    late = [0] * 95 + [150_000, 250_000, 2_000_000, 6_000_000, -3]
    a = pacing_attrs([d + x for d, x in zip(deadlines, late, strict=True)], deadlines)
    assert a["frames"] == 100
    assert a["p50_ns"] == 0
    assert a["p99_ns"] == 2_000_000  # nearest rank: the 99th of 100 sorted values
    assert a["max_ns"] == 6_000_000 and a["max_frame"] == 98
    assert a["over_broke"] == 1
    assert dict(zip(a["hist_bins"], a["hist_counts"], strict=True)) == {
        0: 96,
        1: 1,
        2: 1,
        20: 1,
        60: 1,
    }
    h = PacingHistogram()
    h.add(a["hist_bin_ns"], a["hist_bins"], a["hist_counts"])
    assert h.percentile_ns(50) == HIST_BIN_NS
    assert h.percentile_ns(99) == 2_100_000
    assert h.percentile_ns(100) == 6_100_000


def test_old_traces_fall_back_to_the_speech_end_frame() -> None:
    rep = build_report([V1 / "clean-realtime" / "trace.jsonl.gz"])
    assert rep.pacing is not None
    assert rep.pacing.frames == 0 and rep.pacing.p99_ns is None
    assert rep.pacing.speech_end_only == rep.pacing.turns == len(rep.turns)
    for t in rep.turns:
        assert t.pacing is not None and t.pacing.source == "speech_end_frame"


def test_a_malformed_pacing_event_is_ignored(tmp_path: Path) -> None:
    from voiceaudit.analysis.turns import TurnObs

    obs = TurnObs("s0", 0, 0)
    obs.add("input.pacing", "probe", "input", 10, {"max_ns": "big", "frames": 3})
    obs.add("input.speech_end_sent", "probe", "input", 10, {"frame": 7, "late_ns": 6_000_000})
    p = TurnPacing.from_obs(obs)
    assert p is not None and p.source == "speech_end_frame" and p.frame == 7 and p.broke
    empty = TurnObs("s0", 1, 1)
    assert TurnPacing.from_obs(empty) is None


def test_sessions_frame_deadlines_are_spread_over_a_frame(tmp_path: Path) -> None:
    from voiceaudit.probe.runner import Probe

    cfg = TargetConfig(url="python://test_probe_pacing:hold_once_pipeline", protocol="python")
    utts = load_utterances([bundled_dir() / "03_lights.wav"])
    probe = Probe(PythonTarget(cfg), utts, ProbeOptions(sessions=4), tmp_path / "t.jsonl")
    period = 20 * NS_PER_MS
    earliest = probe._epoch_ns + 123_456_789
    t0s = [probe.phased(earliest, slot, period) for slot in range(4)]
    for slot, t0 in enumerate(t0s):
        assert earliest <= t0 < earliest + period
        assert (t0 - probe._epoch_ns) % period == slot * period // 4
