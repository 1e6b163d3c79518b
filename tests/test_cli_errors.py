"""Bad input through the real command line: one clear line (and a hint), a documented exit
code, never a traceback. And a planted API key never reaches a trace, report or log."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from test_trace_io import garbage_trace

from voiceaudit.cli import run
from voiceaudit.errors import ExitCode


def _garbage(tmp: Path, kind: str) -> Path:
    """test_trace_io's garbage traces, and what other commands read."""
    if kind == "no_traces":
        p = tmp / "empty-dir"
        p.mkdir()
        (p / "notes.txt").write_text("nothing here")
    elif kind == "lying_wav":
        p = tmp / "lying.wav"
        data = b"\x01\x02" * 100
        header = b"RIFF" + struct.pack("<I", 36 + 10_000) + b"WAVE"
        fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        p.write_bytes(header + fmt + b"data" + struct.pack("<I", 10_000) + data)
    elif kind == "noise_wav":
        p = tmp / "noise.wav"
        p.write_bytes(os.urandom(4096))
    else:
        p = garbage_trace(tmp, kind)
    return p


@pytest.mark.parametrize(
    ("command", "kind", "code"),
    [
        ("report", "empty", ExitCode.BAD_INPUT),
        ("report", "binary", ExitCode.BAD_INPUT),
        ("report", "truncated_gzip", ExitCode.BAD_INPUT),
        ("report", "wrong_shape", ExitCode.BAD_INPUT),
        ("report", "no_traces", ExitCode.NO_DATA),
        ("report", "newer_schema", ExitCode.BAD_INPUT),
        ("report", "missing", ExitCode.BAD_INPUT),
        ("gate", "empty", None),
        ("inspect", "lying_wav", ExitCode.BAD_INPUT),
        ("inspect", "noise_wav", ExitCode.BAD_INPUT),
        ("net", "binary", ExitCode.BAD_INPUT),
        ("export", "wrong_shape", ExitCode.BAD_INPUT),
    ],
)
def test_garbage_gives_one_line_and_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    kind: str,
    code: ExitCode | None,
) -> None:
    path = _garbage(tmp_path, kind)
    args = [command, str(path)]
    if command == "export":
        args += ["--format", "perfetto", "-o", str(tmp_path / "out.json")]
    rc = run(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert len(lines) <= 2, err  # the error, and maybe a hint
    if code is None:
        assert rc not in (0, ExitCode.INTERNAL), rc
    else:
        assert rc == code, (rc, err)


@pytest.mark.slow
def test_planted_key_never_written(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    key = "sk-planted-0f9e8d7c6b5a-never-write-me"
    os.environ["VA_PLANTED"] = key
    try:
        out = tmp_path / "run"
        rc = run(["run", "--turns", "1", "--api-key-env", "VA_PLANTED", "--out", str(out)])
        assert rc == 0
        for fmt in ("terminal", "markdown", "json", "html"):
            assert run(["report", str(out), "--format", fmt, "-o", str(tmp_path / f"r.{fmt}")]) == 0
    finally:
        del os.environ["VA_PLANTED"]
    captured = capfd.readouterr()
    assert key not in captured.out and key not in captured.err
    for f in [*out.rglob("*"), *tmp_path.glob("r.*")]:
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
