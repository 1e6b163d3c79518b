"""Long calls (issue 25): ``run --duration`` keeps each session taking turns for that long,
and ``stats.jsonl`` holds the run's statistics per window, written while it runs."""

from __future__ import annotations

import json
from pathlib import Path

from servers import HandlerServer
from test_greeting import MS, Bot

from voiceaudit.cli import run
from voiceaudit.data import bundled_dir
from voiceaudit.trace_io import read_trace


def test_duration_and_the_stats_history(tmp_path: Path) -> None:
    bot = Bot(greet=False)
    out = tmp_path / "run"
    with HandlerServer(bot.handler, "/pcm") as server:
        rc = run(
            [
                "run",
                str(bundled_dir() / "06_thanks.wav"),
                "--target",
                server.url,
                "--protocol",
                "websocket",
                "--sessions",
                "2",
                "--duration",
                "8s",
                "--stats-every",
                "2s",
                "--gap-ms",
                "100",
                "--out",
                str(out),
            ]
        )
    assert rc == 0
    tr = read_trace(out / "trace.jsonl")
    assert tr.header.config["duration_s"] == 8.0
    ends = [e for e in tr.events if e.name == "turn.end"]
    starts = sorted(e.t_ns for e in tr.events if e.name == "turn.start")
    # the sessions kept taking turns (one utterance over and over) for 8 s, then stopped
    assert len(ends) >= 6 and all(e.attrs["ok"] for e in ends)
    assert starts[-1] - starts[0] < 8_000 * MS + 100 * MS
    lines = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    assert [ln["window"] for ln in lines] == list(range(len(lines)))
    assert len(lines) >= 4 and lines[-1].get("partial") is True
    assert all(not ln.get("partial") for ln in lines[:-1])
    # every finished turn is in exactly one window; each window's figures are its turns'
    assert sum(ln["turns"] for ln in lines) == len(ends)
    assert sum(ln["ok"] for ln in lines) == len(ends)
    v2v = sorted(e.attrs["voice_to_voice_ns"] / 1e6 for e in ends)
    windows = [ln for ln in lines if ln["ok"]]
    assert windows
    for ln in windows:
        assert ln["voice_to_voice_p50_ms"] in [round(v, 3) for v in v2v]
        assert ln["voice_to_voice_p50_ms"] <= ln["voice_to_voice_p95_ms"]
        assert ln["end_s"] - ln["start_s"] <= 2.0 + 1e-9 or ln.get("partial")


def test_duration_refuses_turns(tmp_path: Path) -> None:
    rc = run(["run", "--duration", "5s", "--turns", "3", "--out", str(tmp_path / "r")])
    assert rc == 2
