"""The target's own latency figures (Deepgram's AgentStartedSpeaking total_latency and
friends) set beside what the caller heard: voiceaudit.imports.inline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from voiceaudit.analysis.synthetic import synthetic_header
from voiceaudit.imports.inline import inline_figures
from voiceaudit.trace_io import TraceWriter, read_trace

MS = 1_000_000
T0 = 10**12


def _trace(path: Path) -> None:
    h = replace(
        synthetic_header("inline", {"frame_ms": 20, "warmup": 0}),
        target={"protocol": "deepgram-agent", "url": "wss://agent.example/v1/agent/converse"},
    )
    w = TraceWriter(path, h)
    for turn, (v2v_ms, total_ms, copies) in enumerate([(900, 450, 1), (1300, 610, 2)]):
        t = T0 + turn * 10_000 * MS
        w.event("s0", turn, t, "probe", "turn", "turn.start", {"warmup": False, "rate": 16000})
        end = t + 2000 * MS
        w.event("s0", turn, end, "probe", "input", "input.speech_end", {"sample": 32000})
        for k in range(copies):
            w.event(
                "s0",
                turn,
                end + (500 + k * 100) * MS,
                "pipeline",
                "synthesis",
                "tts.first_byte",
                {
                    "raw": "AgentStartedSpeaking",
                    "total_latency": total_ms / 1000,
                    "total_latency_ns": (total_ms + 7 * k) * MS,
                    "tts_latency_ns": 120 * MS,
                    "ttt_latency_ns": 300 * MS,
                },
            )
        w.event("s0", turn, end + v2v_ms * MS, "probe", "reply", "reply.audible", {"sample": 0})
        w.event(
            "s0",
            turn,
            end + v2v_ms * MS + MS,
            "probe",
            "turn",
            "turn.end",
            {"ok": True, "voice_to_voice_ns": v2v_ms * MS, "warmup": False},
        )
    w.close()


def test_the_targets_own_figures_beside_what_the_caller_heard(tmp_path: Path) -> None:
    _trace(tmp_path / "t.jsonl")
    rows = inline_figures(read_trace(tmp_path / "t.jsonl"))
    by = {(r.turn, r.metric): r for r in rows}
    assert set(by) == {
        (t, m) for t in (0, 1) for m in ("total_latency", "tts_latency", "ttt_latency")
    }
    # the headline figure is set beside voice-to-voice: the caller waited this much longer
    r0 = by[(0, "total_latency")]
    assert r0.framework == "deepgram-agent"
    assert (r0.reported_ns, r0.measured_ns, r0.difference_ns) == (450 * MS, 900 * MS, 450 * MS)
    assert not r0.aligned and r0.label == "total_latency on AgentStartedSpeaking"
    # two values in a turn: the first, with a note
    r1 = by[(1, "total_latency")]
    assert r1.reported_ns == 610 * MS and r1.difference_ns == 690 * MS
    assert r1.note == "2 values in this turn; the first is shown"
    # stages the caller cannot see: reported only
    assert by[(0, "tts_latency")].measured_ns is None
    assert by[(0, "ttt_latency")].reported_ns == 300 * MS
    assert [r.metric for r in rows[:3]] == ["total_latency", "tts_latency", "ttt_latency"]


def test_a_trace_without_such_figures_has_no_rows(tmp_path: Path) -> None:
    h = synthetic_header("none", {"frame_ms": 20, "warmup": 0})
    w = TraceWriter(tmp_path / "t.jsonl", h)
    w.event("s0", 0, T0, "pipeline", "model", "llm.first_token", {"server_t_ns": 5})
    w.close()
    assert inline_figures(read_trace(tmp_path / "t.jsonl")) == []


def test_the_report_shows_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voiceaudit.cli import run

    _trace(tmp_path / "t.jsonl")
    assert run(["report", str(tmp_path / "t.jsonl"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["target_figures"]["rows"]
    total = [r for r in rows if r["metric"] == "total_latency"]
    assert [(r["reported_ns"], r["measured_ns"]) for r in total] == [
        (450 * MS, 900 * MS),
        (610 * MS, 1300 * MS),
    ]
    assert run(["report", str(tmp_path / "t.jsonl"), "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "The target says / the caller heard" in md and "total_latency" in md
