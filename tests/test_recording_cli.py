"""``voiceaudit report CALL.wav`` and ``voiceaudit gate DIR`` on the command line (issue 25):
a call built from real speech with known latencies (tests/test_recording.py's builder),
read through the CLI in every format; the two-track form; a directory of calls gated; bad
input as one line with its exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_recording import Call, build_call, write_call

from voiceaudit.cli import run

MS = 1_000_000


@pytest.fixture(scope="module")
def call(speech_dir: Path) -> Call:
    return build_call(speech_dir)


def test_report_call_wav_in_every_format(
    call: Call, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = write_call(tmp_path / "call.wav", call.caller, call.agent, 16000, "PCM_16")
    for fmt in ("terminal", "markdown", "html"):
        assert run(["report", str(wav), "--format", fmt, "-o", str(tmp_path / f"r.{fmt}")]) == 0
        assert "call.wav" in (tmp_path / f"r.{fmt}").read_text()
    capsys.readouterr()
    assert run(["report", str(wav), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = sorted(t["voice_to_voice_ms"] for t in doc["turns"] if t["ok"])
    want = sorted(x * 1000 for x in call.latencies_s)
    assert len(got) == len(want)
    assert all(abs(g - w) <= 10 for g, w in zip(got, want, strict=True)), (got, want)


def test_two_mono_tracks_and_the_caller_on_the_right(
    call: Call, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(tmp_path / "caller.wav", call.caller, 16000, subtype="PCM_16")
    sf.write(tmp_path / "agent.wav", call.agent, 16000, subtype="PCM_16")
    rc = run(
        [
            "report",
            "--caller-track",
            str(tmp_path / "caller.wav"),
            "--agent-track",
            str(tmp_path / "agent.wav"),
            "--format",
            "json",
        ]
    )
    assert rc == 0
    a = json.loads(capsys.readouterr().out)
    right = write_call(tmp_path / "swapped.wav", call.agent, call.caller, 16000, "PCM_16")
    assert run(["report", str(right), "--caller", "right", "--format", "json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["counts"]["ok"] == b["counts"]["ok"] == len(call.latencies_s)


def test_gate_a_directory_of_calls(call: Call, tmp_path: Path) -> None:
    d = tmp_path / "calls"
    d.mkdir()
    write_call(d / "a.wav", call.caller, call.agent, 16000, "PCM_16")
    write_call(d / "b.wav", call.caller, call.agent, 16000, "PCM_16")
    slowest = max(call.latencies_s) * 1000
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[budget]\nmin_turns = 1\nvoice_to_voice = {{ max = "{slowest + 50:.0f}ms" }}\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[budget]\nmin_turns = 1\nvoice_to_voice = {{ max = "{slowest - 50:.0f}ms" }}\n'
    )
    assert run(["gate", str(d), "--budget", str(ok)]) == 0
    assert run(["gate", str(d), "--budget", str(bad)]) == 1


def test_bad_recordings_one_line_each(
    call: Call, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mono = tmp_path / "mono.wav"
    sf.write(mono, call.caller, 16000, subtype="PCM_16")
    assert run(["report", str(mono)]) == 3
    silent = write_call(
        tmp_path / "silent.wav", np.zeros_like(call.caller), call.agent, 16000, "PCM_16"
    )
    assert run(["report", str(silent)]) == 3
    wav = write_call(tmp_path / "c.wav", call.caller, call.agent, 16000, "PCM_16")
    assert run(["report", str(wav), "--caller", "middle"]) == 2
    cut = tmp_path / "cut.wav"
    cut.write_bytes(wav.read_bytes()[:30])
    assert run(["report", str(cut)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
