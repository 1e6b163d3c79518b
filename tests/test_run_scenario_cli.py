"""`voiceaudit run --scenario` with bad input: one line naming the file and line, the
documented exit code (2 for a bad scenario or clashing options, 3 for a missing file),
never a traceback; nothing is started and no trace is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceaudit.cli import run
from voiceaudit.errors import ExitCode


def _run(tmp_path: Path, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    rc = run(["run", *args, "--out", str(out)])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert not (out / "trace.jsonl").exists()
    return rc, err


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_schema_error_names_the_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[session]]\n[[session.turn]]\nsay = "01_weather"\ninterupt = 3\n')
    rc, err = _run(tmp_path, capfd, "--scenario", str(bad))
    assert rc == ExitCode.USAGE == 2
    (line,) = _errors(err)
    assert f"{bad}:4:" in line and "'interupt'" in line and "did you mean 'interrupt'" in line


def test_missing_audio_is_exit_3(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[session]]\n[[session.turn]]\nsay = "clips/nowhere.wav"\n')
    rc, err = _run(tmp_path, capfd, "--scenario", str(bad))
    assert rc == 3
    (line,) = _errors(err)
    assert f"{bad}:3:" in line and "nowhere.wav" in line


def test_missing_scenario_file_is_exit_3(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(tmp_path, capfd, "--scenario", str(tmp_path / "none.toml"))
    assert rc == 3
    assert len(_errors(err)) == 1 and "none.toml" in err


@pytest.mark.parametrize(
    "extra",
    [["--sessions", "2"], ["--turns", "3"], ["--repeat", "2"], ["--ramp", "1:2:1s"]],
)
def test_options_the_scenario_sets_are_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    ok = tmp_path / "ok.toml"
    ok.write_text('[[session]]\n[[session.turn]]\nsay = "01_weather"\n')
    rc, err = _run(tmp_path, capfd, "--scenario", str(ok), *extra)
    assert rc == 2
    (line,) = _errors(err)
    assert "--scenario" in line and extra[0] in line
