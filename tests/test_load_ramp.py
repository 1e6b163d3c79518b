"""Ground truth for the ramp and the knee: a target whose latency grows with concurrency.

The in-process pipeline below answers each turn ``BASE_MS + PER_CALL_MS * (sessions
running)`` after it ends the caller's turn (200 ms of quiet), so between two levels of a
ramp voice-to-voice grows by exactly ``PER_CALL_MS`` per session added. The report's
latency-vs-concurrency view must recover that slope in its per-level p50, and its knee
(the lowest level whose p95 is significantly more than the margin above one session's)
must be where the known growth first passes the margin.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voiceaudit.analysis import build_report
from voiceaudit.analysis.concurrency import concurrency_view
from voiceaudit.analysis.significance import Increase
from voiceaudit.data import bundled_dir
from voiceaudit.probe.runner import ProbeOptions, Ramp, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.python import Emitter, PythonTarget
from voiceaudit.trace_io import read_trace

RATE = 16000
BASE_MS = 40
PER_CALL_MS = 10
SILENCE_MS = 200

#: pipeline sessions running now (the target's own count of its concurrent calls)
_running = 0


async def load_sensitive_pipeline(frames: AsyncIterator[bytes], emit: Emitter) -> None:
    global _running
    _running += 1
    heard = False
    quiet = 0
    replies: list[asyncio.Task[None]] = []

    async def reply(delay_ms: int) -> None:
        await asyncio.sleep(delay_ms / 1000)
        n = RATE * 300 // 1000
        tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(n) / RATE) * 32767).astype("<i2")
        emit.mark("tts.first_byte", "synthesis", concurrency=_running)
        emit.audio(tone.tobytes())
        emit.done()

    try:
        async for f in frames:
            x = np.frombuffer(f, "<i2").astype(np.float64)
            loud = len(x) > 0 and float(np.max(np.abs(x))) > 1000
            if loud:
                heard, quiet = True, 0
            elif heard:
                quiet += len(x)
                if quiet * 1000 >= SILENCE_MS * RATE:
                    heard, quiet = False, 0
                    emit.mark("endpoint", "endpointing")
                    replies.append(asyncio.create_task(reply(BASE_MS + PER_CALL_MS * _running)))
    finally:
        _running -= 1
        for r in replies:
            r.cancel()


def _utterance(path: Path) -> Path:
    """0.7 s of a bundled sentence (no pause in it) then 0.1 s of digital silence: a
    short turn, so that every level of the ramp holds several."""
    x, rate = soundfile.read(str(bundled_dir() / "03_lights.wav"))
    assert rate == RATE
    cut = x[RATE // 5 : RATE * 9 // 10]
    soundfile.write(str(path), np.concatenate([cut, np.zeros(RATE // 10)]), RATE, "PCM_16")
    return path


def test_ramp_recovers_latency_per_level_and_the_knee(tmp_path: Path) -> None:
    cfg = TargetConfig(
        url="python://test_load_ramp:load_sensitive_pipeline",
        protocol="python",
        options={"rate": str(RATE)},
    )
    ramp = Ramp(start=1, end=5, every_s=10.0, hold_s=10.0)
    trace = tmp_path / "trace.jsonl"
    res = asyncio.run(
        run_probe(
            PythonTarget(cfg),
            load_utterances([_utterance(tmp_path / "beep.wav")]),
            ProbeOptions(ramp=ramp, gap_ms=100, timeout_s=5.0),
            trace,
        )
    )
    assert not res.interrupted
    assert res.ok_turns and not res.failed_turns, res.failed_turns
    # The run's own summary already splits voice-to-voice by level.
    by = res.summary()["by_concurrency"]
    assert [lv["concurrency"] for lv in by] == [1, 2, 3, 4, 5]
    assert sum(lv["n"] for lv in by) == len(res.ok_turns)
    tr = read_trace(trace)
    assert tr.complete
    assert tr.header.config["ramp"] == ramp.describe()
    assert tr.header.config["sessions"] == 5
    # Each slot started at its step: s0 at step 0, s1 at step 1, ...
    steps = {
        e.session: e.attrs["ramp_step"] for e in tr.events if e.name == "session.connect_start"
    }
    assert steps == {f"s{i}": i for i in range(5)}

    # The probe's concurrency (sessions running at speech end) is the target's own count
    # at its reply, except for a turn during which a session was added.
    agree = total = 0
    for sid, turn in tr.finished_turns():
        evs = {e.name: e for e in tr.turn_events(sid, turn)}
        if "tts.first_byte" in evs:
            total += 1
            agree += (
                evs["input.speech_end_sent"].attrs["concurrency"]
                == evs["tts.first_byte"].attrs["concurrency"]
            )
    assert agree >= 0.9 * total

    report = build_report([trace])
    view = report.concurrency
    assert view is not None
    levels = {lv.concurrency: lv for lv in view.levels}
    assert sorted(levels) == [1, 2, 3, 4, 5]
    base = levels[1]
    assert base.turns >= 5
    for c, lv in levels.items():
        # The known growth, within half a step (the machine adds noise to every level
        # alike; the p50 cancels it).
        assert lv.p50_ms - base.p50_ms == pytest.approx(PER_CALL_MS * (c - 1), abs=5.0), (c, lv)

    # Margin 25 ms: the growth passes it between 3 sessions (+20 ms) and 4 (+30 ms), so
    # the knee is 4 sessions, or 5 if four sessions' turns were too few to tell.
    tight = concurrency_view(
        [(t.concurrency, t.voice_to_voice_ns) for t in report.stats_turns],
        margin=Increase(absolute_ms=25),
    )
    assert tight is not None
    assert tight.knee in (4, 5), tight.to_dict()
    assert not any(lv.above for lv in tight.levels if lv.concurrency <= 3), tight.to_dict()
    # A margin above the whole growth (+40 ms at five sessions): no knee.
    loose = concurrency_view(
        [(t.concurrency, t.voice_to_voice_ns) for t in report.stats_turns],
        margin=Increase(absolute_ms=60),
    )
    assert loose is not None and loose.knee is None

    d = json.loads(report.to_json())
    assert [lv["concurrency"] for lv in d["concurrency"]["levels"]] == [1, 2, 3, 4, 5]

    # Every report format shows the view and names the knee.
    from voiceaudit.report import Format, render

    for fmt in (Format.TERMINAL, Format.MARKDOWN, Format.HTML):
        text = render(report, fmt, width=120)
        assert "Voice-to-voice by concurrency" in text, fmt
        assert f"knee at {view.knee} concurrent sessions" in text, fmt

    # The gate budgets the knee: at or above the level found passes, above it fails.
    from voiceaudit.gate import parse_budget, run_gate

    assert view.knee is not None
    ok = run_gate([trace], budget=parse_budget(f"[budget]\nknee = {{ min = {view.knee} }}\n"))
    assert ok.passed, [c.detail for c in ok.checks]
    bad = run_gate([trace], budget=parse_budget(f"[budget]\nknee = {{ min = {view.knee + 1} }}\n"))
    assert not bad.passed and bad.checks[0].observed == view.knee
    # No knee, but the traces never reached the level asked for: no evidence, no pass.
    far = parse_budget('[budget]\nknee = { min = 9, margin = "60ms" }\n')
    unseen = run_gate([trace], budget=far)
    assert not unseen.passed and unseen.checks[0].problem == "not enough turns"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ramp", "5:1:10s"], "FROM <= TO"),
        (["--ramp", "1:5"], "FROM:TO:EVERY"),
        (["--ramp", "1:5:soon"], "not a duration"),
        (["--ramp", "1:5:10s:0"], "BY must be at least 1"),
        (["--ramp", "1:5:10s", "--sessions", "3"], "leave out --sessions"),
        (["--hold", "10s"], "--hold goes with --ramp"),
        (["--ramp", "1:5:10s", "--hold", "-1s"], "not a duration"),
        (["--playout", "magic"], "unknown playout model"),
    ],
)
def test_bad_ramp_options_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    from voiceaudit.cli import run
    from voiceaudit.errors import ExitCode

    rc = run(["run", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and len(lines) <= 2 and needle in err, err
    assert not (tmp_path / "run").exists()
