"""`voiceaudit sweep` through the real command line, against the built-in pipeline.

Two network conditions (no proxy, and 40 ms each way through the impairment proxy) for
the raw PCM WebSocket pipeline: one trace per cell, a manifest, the sweep view from
``voiceaudit report DIR``, and a transport segment of at least the applied one-way delay
(the proxy delays the reply's bytes by 40 ms, the machine can only add). Bad sweep files
fail with one line naming the line of the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voiceaudit.cli import run
from voiceaudit.data import bundled_dir
from voiceaudit.errors import ExitCode


def test_sweep_runs_every_cell_and_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    rc = run(
        [
            "sweep",
            str(bundled_dir() / "03_lights.wav"),
            "--protocol",
            "websocket",
            "--network",
            "direct",
            "--network",
            "wan=delay=40ms",
            "--turns",
            "2",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["schema"] == "voiceaudit.sweep/1"
    cells = {c["network"]: c for c in manifest["cells"]}
    assert set(cells) == {"direct", "wan"}
    assert all(c["status"] == "ok" for c in cells.values())
    for c in cells.values():
        assert (out / c["dir"] / "trace.jsonl").is_file()
        assert (out / c["dir"] / "ground_truth.jsonl").is_file()
    assert (out / cells["wan"]["dir"] / "impairment.jsonl").is_file()
    assert not (out / cells["direct"]["dir"] / "impairment.jsonl").exists()
    assert (out / "sweep-report.md").is_file()

    rc = run(["report", str(out), "--format", "json"])
    view = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert view["schema"] == "voiceaudit.sweep-report/1"
    groups = {g["network"]: g for g in view["groups"]}
    assert groups["direct"]["ok"] == 2 and groups["wan"]["ok"] == 2
    # The reply's bytes crossed the proxy's 40 ms downlink: the wan cells' transport (the
    # server's send of its first audio to the probe's read) is at least that. One-sided:
    # a busy machine can only add (and can add to the direct cell too, so the difference
    # of the two is no bound).
    assert groups["wan"]["transport_p50_ms"] >= 40.0, groups
    assert groups["direct"]["transport_p50_ms"] is not None
    assert [(p["a"]["network"], p["b"]["network"]) for p in view["pairs"]] == [("direct", "wan")]

    for fmt in ("markdown", "html", "terminal"):
        assert run(["report", str(out), "--format", fmt]) == 0
        text = capsys.readouterr().out
        assert "wan" in text and "direct" in text


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("[sweep]\npipelines = []\nnetworks = ['lan']\n", 2, "non-empty"),
        ("[sweep]\npipelines = ['websocket']\nnetworks = ['lan', 'moon']\n", 3, "moon"),
        ("[sweep]\npipelines = ['websocket']\nnetworks = ['lan']\nrepeats = 0\n", 4, "repeats"),
        ("[sweep]\npipelines = ['websocket']\nnetworks = ['lan']\ncolour = 'red'\n", 4, "colour"),
        ("[sweep]\npipelines = [3]\nnetworks = ['lan']\n", 2, "pipeline"),
        # not TOML: tomllib's line and column, in the same FILE:LINE: form
        ("[sweep]\npipelines = ['websocket'\nnetworks = ['lan']\n", 3, "not valid TOML"),
    ],
)
def test_bad_sweep_file_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int, needle: str
) -> None:
    f = tmp_path / "sweep.toml"
    f.write_text(body)
    rc = run(["sweep", "--file", str(f), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) <= 2, err
    assert lines[0].startswith(f"error: {f}:{line}:") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_a_sweep_file_that_is_not_utf8_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "sweep.toml"
    f.write_bytes(b"[sweep]\npipelines = ['\xff\xfe']\n")
    rc = run(["sweep", "--file", str(f), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE, err
    # the line and column of the first byte that is not UTF-8
    assert err.splitlines()[0] == f"error: {f}:2: not UTF-8 text (byte 0xff at column 15)", err


@pytest.mark.parametrize(
    ("entry", "error", "hint"),
    [
        # LABEL=SPEC with a bad SPEC: the error is the SPEC's, not "unknown key 'wan'"
        ("wan=moon", "network 'wan': unknown network profile 'moon'", "profiles: lan, edge"),
        ("wan=delay=fast", "network 'wan': impairment delay='fast' is not a duration", "40ms"),
        # a spec with a bad value is still the spec's error, not read as a label
        ("delay=fast", "impairment delay='fast' is not a duration", "40ms"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "file"])
def test_a_bad_network_names_what_is_wrong_with_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    entry: str,
    error: str,
    hint: str,
    source: str,
) -> None:
    if source == "flag":
        args, where = ["--protocol", "websocket", "--network", entry], ""
    else:
        f = tmp_path / "sweep.toml"
        f.write_text(f"[sweep]\npipelines = ['websocket']\nnetworks = ['lan', '{entry}']\n")
        args, where = ["--file", str(f)], f"{f}:3: "
    rc = run(["sweep", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0] == f"error: {where}{error}", err
    assert len(lines) == 2 and lines[1].startswith("hint: ") and hint in lines[1], err
    assert "unknown impairment key" not in err
    assert not (tmp_path / "out").exists()


def test_bad_sweep_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, needle in (
        (["--protocol", "websocket"], "no network"),
        (["--network", "lan"], "no pipeline"),
        (["--protocol", "websocket", "--network", "delay=fast"], "delay"),
        (["--protocol", "smoke", "--network", "lan"], "does not speak"),
    ):
        rc = run(["sweep", *args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == ExitCode.USAGE, (args, err)
        assert err.startswith("error:") and needle in err, (args, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply to read"),
        ('{"schema": "voiceaudit.sweep/1", "cells": [{"dir": 3}]}', "malformed sweep manifest"),
    ],
)
def test_a_hostile_sweep_manifest_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    (tmp_path / "sweep.json").write_text(text + "\n")
    rc = run(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) <= 2, err
    assert lines[0].startswith(f"error: {tmp_path / 'sweep.json'}: ") and why in lines[0], err


def test_the_documented_sweep_file_is_valid(tmp_path: Path) -> None:
    """docs/network-conditions.md's sweep file example passes every check."""
    from voiceaudit.cli.sweep_cmd import _from_file

    doc = Path(__file__).resolve().parent.parent / "docs" / "network-conditions.md"
    block = doc.read_text(encoding="utf-8").split("### Sweep files")[1]
    f = tmp_path / "sweep.toml"
    f.write_text(block.split("```toml\n")[1].split("```")[0])
    spec = _from_file(f)
    assert ("mine", "realtime", "ws://127.0.0.1:8080/v1/realtime") in spec.pipelines
    assert spec.repeats == 2 and spec.turns == 4 and spec.playout == "adaptive"
