"""End to end: a real run against an independent Realtime server that breaks one reply
(tests/test_run_faults.py's FaultServer), then ``voiceaudit report`` and ``voiceaudit
gate`` on the trace the probe wrote: the failure table counts the fault, the heard part
of the reply is an informative figure outside the statistics, and a failures budget
fails the gate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_run_faults import FaultServer, _run

from voiceaudit.analysis import build_report
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode
from voiceaudit.report import Format, render


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.mark.parametrize(("mode", "kind"), [("close", "reply_cut"), ("error", "target_error")])
def test_a_broken_reply_is_counted_and_kept_out_of_the_statistics(
    mode: str,
    kind: str,
    realdata: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = tmp_path / "trace.jsonl"
    audio = [realdata / "speech" / "pocketsphinx_cards_003.wav"]
    res = asyncio.run(_run(FaultServer(mode, fault_at=1), audio, trace, turns=3))
    probe_fig = res.turns[1].informative_voice_to_voice_ns
    assert [t.ok for t in res.turns] == [True, False, True] and probe_fig is not None

    report = build_report([trace])
    ft = report.failures
    assert (ft.of, ft.failed, ft.counts()[kind], ft.informative) == (3, 1, 1, 1)
    bad = report.turns[1]
    assert bad.failure == kind and bad.voice_to_voice_ns is None
    # the report's figure (from the marks) is the probe's own
    assert bad.informative_ns == probe_fig
    assert report.summary["voice_to_voice"].n == 2
    assert probe_fig / 1e6 not in report.metric_values["voice_to_voice"]
    text = render(report, Format.TERMINAL, width=200)
    assert "FAILURES: 1 of 3 turns failed (33.3%)" in text
    assert f"(informative: {ft.rows[[r.kind for r in ft.rows].index(kind)].label}" in text

    budget = tmp_path / "voiceaudit.toml"
    budget.write_text(f"[budget.failures]\n{kind} = {{ max = 0 }}\n", encoding="utf-8")
    code = run(["gate", str(trace), "--budget", str(budget), "--json"])
    out, _ = capsys.readouterr()
    assert code == ExitCode.FAILED
    (check,) = json.loads(out)["checks"]
    assert check["name"] == f"failures.{kind} <= 0 turns" and check["problem"] == "over the limit"


def test_the_audio_format_a_real_session_declared_is_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference pipeline asked for mu-law in and A-law out declares them in its
    session.updated; the realtime target records that and the report shows it."""
    from voiceaudit.cli.run_cmd import reference_url
    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.reference.config import ServerConfig
    from voiceaudit.reference.server import start_reference_server
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.realtime import RealtimeTarget

    trace = tmp_path / "t.jsonl"

    async def go() -> None:
        server = await start_reference_server(ServerConfig())
        try:
            opts = {"input_format": "pcmu", "output_format": "pcma"}
            cfg = TargetConfig(reference_url(server, "realtime"), "realtime", options=opts)
            utt = load_utterances([bundled_dir() / "01_weather.wav"])
            await run_probe(RealtimeTarget(cfg), utt, ProbeOptions(), trace)
        finally:
            await server.close()

    asyncio.run(go())
    assert run(["report", str(trace), "-f", "json"]) == 0
    doc = json.loads(capsys.readouterr()[0])
    assert doc["audio_formats"] == [
        {
            "session": "s0",
            "input": {"encoding": "pcmu", "rate": 8000},
            "output": {"encoding": "pcma", "rate": 8000},
            "source": "declared",
        }
    ]
    assert run(["report", str(trace), "-f", "markdown"]) == 0
    md = capsys.readouterr()[0]
    assert "Audio format: input pcmu 8000 Hz, output pcma 8000 Hz (declared by the target)" in md
