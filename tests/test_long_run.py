"""Long calls (issue 25): ``run --duration`` keeps each session taking turns for that long,
and ``stats.jsonl`` holds the run's statistics per window, written while it runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from servers import HandlerServer
from test_greeting import MS, SLACK_NS, Bot

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


def _nearest_rank(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def test_the_stats_history_carries_an_injected_delay(tmp_path: Path) -> None:
    """Replies delayed by 0, 250 and 500 ms in turn (test_greeting.Bot): each turn's
    voice-to-voice is the bot's send time plus the reply's 100 ms lead minus the speech
    end (one-sided: the machine can only add time), and each window's p50/p95 in
    stats.jsonl is the nearest rank over exactly the turns that ended in it (the windows'
    turn counts, in order, partition the turns by end time)."""
    bot = Bot(greet=False, delays_ms=(0, 250, 500))
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
                "--duration",
                "9s",
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
    ends = sorted((e for e in tr.events if e.name == "turn.end"), key=lambda e: e.t_ns)
    speech_end = {e.turn: e.t_ns for e in tr.events if e.name == "input.speech_end"}
    assert len(ends) >= 3 and all(e.attrs["ok"] for e in ends)
    assert len(bot.replies) >= len(ends)
    v2v: list[float] = []
    for e in ends:
        assert e.turn is not None
        truth = bot.replies[e.turn] + 100 * MS - speech_end[e.turn]
        got = e.attrs["voice_to_voice_ns"]
        assert 0 <= got - truth < SLACK_NS, (e.turn, got, truth)
        v2v.append(got / 1e6)
    # the injected delays are in the figures: turn k is 250 ms slower than turn k - 1
    by_turn = {e.turn: e.attrs["voice_to_voice_ns"] for e in ends}
    for k in (1, 2):
        assert abs(by_turn[k] - by_turn[k - 1] - 250 * MS) < SLACK_NS
    lines = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    assert sum(ln["turns"] for ln in lines) == len(ends)
    done = 0
    checked = 0
    for ln in lines:
        mine = v2v[done : done + ln["turns"]]
        done += ln["turns"]
        if not mine:
            assert ln["voice_to_voice_p50_ms"] is None
            continue
        assert ln["voice_to_voice_p50_ms"] == round(_nearest_rank(mine, 50), 3), (ln, mine)
        assert ln["voice_to_voice_p95_ms"] == round(_nearest_rank(mine, 95), 3), (ln, mine)
        checked += 1
    assert checked >= 2
