"""End to end: a real Pipecat 1.14 bot, probed over its WebSocket transport, its own
OpenTelemetry spans imported, and Pipecat's numbers set against what the caller heard.

The bot (tests/pipecat_bot.py) is offline: Silero VAD, PocketSphinx, a rule-based
responder, eSpeak NG. It prepends 50 ms of silence to even replies and 550 ms to odd
ones: a delay the caller hears and Pipecat's ``turn.user_bot_latency_seconds`` cannot
see, so "measured - reported" must grow by 500 ms on odd turns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipecat_capture import realdata
from servers import PipecatBot
from test_export import check_trace_event_format

from voiceaudit.cli import run as cli
from voiceaudit.clock import NS_PER_MS
from voiceaudit.exports import export_document
from voiceaudit.imports import (
    framework_vs_heard,
    import_telemetry,
    measured_voice_to_voice,
    write_trace,
)
from voiceaudit.targets import registry
from voiceaudit.trace_io import read_trace

MS = NS_PER_MS
SPEECH = "pocketsphinx_sense_and_sensibility_01_austen_64kb-0880.wav"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_real_pipecat_bot_framework_vs_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pipecat", reason="pipecat-ai is a test dependency")
    speech = realdata() / "speech" / SPEECH
    monkeypatch.setitem(
        registry.BUILTINS,
        "pipecat-websocket",
        "voiceaudit.targets.pipecat_ws:PipecatWebSocketTarget",
    )
    # the bot (fault injection: 50 ms, then 550 ms of silence before each reply's speech)
    bot = PipecatBot(
        tmp_path / "bot.log",
        *("--spans", str(tmp_path / "spans.jsonl"), "--otlp", str(tmp_path / "spans.otlp.json")),
        *("--leading-silence-ms", "50,550", "--turn-end-timeout", "0.3"),
    )
    with bot:
        rc = cli(
            [
                "run",
                str(speech),
                "--target",
                bot.url,
                "--protocol",
                "pipecat-websocket",
                "--repeat",
                "4",
                "--out",
                str(tmp_path / "run"),
                "--json",
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        # the bot ends its pipeline (flushing its spans) when the client disconnects
        assert bot.proc.wait(timeout=60) == 0, bot.log_tail()
    summary = json.loads(out[out.index("{") :])
    assert summary["ok"] == 4

    tr = read_trace(tmp_path / "run" / "trace.jsonl")
    # what the adapter saw on the wire: RTVI messages as stage marks
    seen = {e.name for e in tr.events if e.source == "pipeline"}
    assert {
        "speech_started",
        "endpoint",
        "transcript.final",
        "llm.request",
        "llm.first_token",
        "tts.request",
        "bot.started_speaking",
        "framework.metrics",
    } <= seen
    onsets = [e.attrs["onset_ms"] for e in tr.events if e.name == "reply.audible"]
    # the injected silence is what the probe found before the first audible sample
    assert len(onsets) == 4
    assert all(abs(x - want) < 25 for x, want in zip(onsets, [50, 550, 50, 550], strict=True))

    r = import_telemetry(tmp_path / "spans.jsonl", trace=tr)
    assert r.framework == "pipecat"
    a = r.alignment
    assert a is not None and a.status == "anchors" and a.violations == ()
    assert sorted(s.turn for s in r.spans if s.name == "pipecat.tts") == [0, 1, 2, 3]
    rows = framework_vs_heard(r, tr)
    heard = measured_voice_to_voice(tr)
    ubl = {x.turn: x for x in rows if x.metric == "user_bot_latency"}
    assert sorted(ubl) == [0, 1, 2, 3]
    for turn, row in ubl.items():
        assert row.measured_ns == heard[("s0", turn)]
        assert row.reported_ns > 0
    diff = {t: x.difference_ns for t, x in ubl.items()}
    assert all(d is not None for d in diff.values())
    hidden = (diff[1] + diff[3] - diff[0] - diff[2]) / 2  # type: ignore[operator]
    assert abs(hidden - 500 * MS) < 100 * MS, diff
    # the per-stage numbers Pipecat users add up do not make the silence they hear
    sums = [x for x in rows if x.metric == "stage_sum"]
    assert len(sums) == 4 and all((x.difference_ns or 0) > 0 for x in sums)
    tts = {x.turn: x for x in rows if x.metric == "tts_ttfb"}
    assert all(x.aligned and x.measured_ns is not None for x in tts.values())

    # Pipecat's spans through OpenTelemetry's own OTLP encoder: the same figures
    r2 = import_telemetry(tmp_path / "spans.otlp.json", trace=tr)
    assert r2.format == "otlp-json"
    assert sorted((m.metric, m.turn, m.value_ns) for m in r2.measures) == sorted(
        (m.metric, m.turn, m.value_ns) for m in r.measures
    )

    # the CLI shows them side by side
    assert cli(["import", str(tmp_path / "spans.jsonl"), "--trace", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "framework vs heard" in text
    line = next(x for x in text.splitlines() if "pipecat user_bot_latency" in x and " 1 " in x)
    ms = ubl[1].reported_ns / MS
    assert f"{ms:.0f}" in line and f"{heard[('s0', 1)] / MS:.0f}" in line
    assert (
        cli(["import", str(tmp_path / "spans.jsonl"), "-t", str(tmp_path / "run"), "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert {x["metric"] for x in doc["framework_vs_heard"]} >= {"user_bot_latency", "tts_ttfb"}

    # and the merged trace exports to a valid trace-event file with Pipecat's spans on it
    merged = read_trace(write_trace(r, tmp_path / "merged.jsonl", trace=tr))
    ev = export_document(merged, "perfetto")
    check_trace_event_format(ev)
    tracks = {e["args"]["name"] for e in ev["traceEvents"] if e["name"] == "thread_name"}
    assert {"s0 turns", "s0 pipecat.stt", "s0 pipecat.llm", "s0 pipecat.tts"} <= tracks
