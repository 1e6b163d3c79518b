"""`voiceaudit run --impair/--network` through the real command line: bad specs are one
line and exit 2; a run through the layer records the impairment in the trace header and
the ground truth next to the trace, and its capture holds both legs of the proxy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voiceaudit.cli import run
from voiceaudit.errors import ExitCode


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--impair", "delay=40"], "not a duration"),
        (["--impair", "loss=2"], "not a percentage"),
        (["--impair", "delay=40ms,wobble=1"], "unknown impairment key"),
        (["--network", "moon"], "unknown network profile"),
        (["--network", "edge", "--impair", "lan"], "names a profile"),
        (["--impair", "delay=1ms", "--target", "wss://127.0.0.1:9/v1/realtime"], "TLS"),
        (
            ["--network", "edge", "-p", "webrtc", "--target", "http://192.0.2.1:9/v1/webrtc/offer"],
            "on this host",
        ),
    ],
)
def test_bad_impairment_is_one_line_exit_2(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    rc = run(["run", *args, "--turns", "1", "--out", str(tmp_path / "run")])
    err = capfd.readouterr().err
    assert rc == ExitCode.USAGE, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_run_through_the_layer_records_what_it_applied(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from voiceaudit.capture.dumpcap import capture_rights_problem
    from voiceaudit.impair import read_record
    from voiceaudit.trace_io import read_trace

    capture = shutil.which("dumpcap") is not None and capture_rights_problem() is None
    out = tmp_path / "run"
    args = ["run", "--protocol", "websocket", "--network", "edge", "--impair", "down.delay=20ms"]
    rc = run([*args, "--turns", "1", "--out", str(out), *(["--capture"] if capture else [])])
    err = capfd.readouterr().err
    assert rc == ExitCode.OK, err
    header = read_trace(out / "trace.jsonl").header
    imp = header.config["impairment"]
    assert imp["profile"] == "edge" and imp["spec"] == "edge,down.delay=20ms"
    assert imp["up"]["delay_ms"] == 5 and imp["down"]["delay_ms"] == 20
    assert imp["target"].startswith("ws://127.0.0.1:") and imp["target"] != imp["proxy"]
    recs = read_record(out / "impairment.jsonl")
    chunks = [r for r in recs if r["record"] == "chunk"]
    assert {r["dir"] for r in chunks} == {"up", "down"}
    # edge's 1 ms jitter on top of each direction's delay; TCP order only ever adds
    for r in chunks:
        one_way = (5 if r["dir"] == "up" else 20) * 1_000_000
        assert abs(r["delay_ns"] - one_way) <= 1_000_000, r
        assert r["due_ns"] - r["rx_ns"] >= r["delay_ns"] and r["fate"] == "delivered", r
    assert recs[-1]["record"] == "end"
    if capture:
        from voiceaudit.capture import analyze_capture

        report = analyze_capture(out / "capture.pcapng")
        servers = {c.server.rsplit(":", 1)[1] for c in report.tcp_connections}
        proxy_port = imp["proxy"].rsplit(":", 1)[1].split("/")[0]
        target_port = imp["target"].rsplit(":", 1)[1].split("/")[0]
        assert {proxy_port, target_port} <= servers, servers
    # The report names the real target and the network, not the proxy it connected to.
    capfd.readouterr()
    assert run(["report", str(out / "trace.jsonl"), "--format", "markdown"]) == ExitCode.OK
    text = capfd.readouterr().out
    assert f"{imp['target']} through the impairment proxy (edge)" in text, text[:600]
    assert imp["proxy"] not in text
