"""`voiceaudit report`: the CLI, the JSON document, the renderers, bad inputs."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from voiceaudit.analysis import SEGMENTS, build_report, compare
from voiceaudit.analysis.synthetic import TurnSpec, synthetic_header, write_trace
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode
from voiceaudit.model import SCHEMA_VERSION
from voiceaudit.report import Format, render
from voiceaudit.trace_io import TraceWriter

CLEAN = TurnSpec()


def varied(n: int, seed: int = 1, **kw: object) -> list[TurnSpec]:
    rng = random.Random(seed)
    return [
        CLEAN.with_(
            endpointing_ms=round(rng.uniform(250, 450), 3),
            first_token_ms=round(rng.uniform(100, 300), 3),
            **kw,
        )
        for _ in range(n)
    ]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    specs = [CLEAN.with_(warmup=True, first_token_ms=2000.0)]
    specs += varied(30)
    specs += [CLEAN.with_(aggregation_ms=183.0, onset_ms=300.0) for _ in range(10)]
    specs += [CLEAN.with_(ok=False, reason="timeout: no reply audio within 10 s")]
    return write_trace(tmp_path / "run" / "trace.jsonl", specs, sessions=2)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the JSON document -------------------------------------------------------------------


def test_json_document(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, str(trace), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "voiceaudit.report/1"
    assert doc["counts"] == {
        "turns": 42,
        "ok": 41,
        "failed": 1,
        "warmup": 1,
        "in_statistics": 40,
        "unfinished": 0,
    }
    figures = {"n", "mean", "p50", "p90", "p95", "p99", "min", "max", "ci95", "unreliable"}
    assert set(doc["summary"]["voice_to_voice_ms"]) == figures
    # no departure mark in these turns: first audio and transport are one (transport)
    assert set(doc["summary"]["segments"]) == set(SEGMENTS) - {"first_audio"}
    for s in doc["summary"]["segments"].values():
        assert set(s) == figures and s["n"] == 40
    assert len(doc["turns"]) == 42
    for t in doc["turns"]:
        assert {"session", "turn", "ok", "voice_to_voice_ms", "ledger", "findings"} <= set(t)
        if t["ok"]:
            # integer nanoseconds sum exactly; ms is ns / 1e6
            assert sum(s["ns"] for s in t["ledger"]) == t["voice_to_voice_ns"]
            assert all(s["ms"] == s["ns"] / 1e6 for s in t["ledger"])
            for f in t["findings"]:
                assert set(f) == {"kind", "ms", "evidence"}
    kinds = {f["kind"]: f for f in doc["findings"]}
    assert set(kinds) == {"sentence_aggregation", "leading_silence"}
    assert kinds["sentence_aggregation"]["turns"] == 10
    assert kinds["sentence_aggregation"]["ms"]["p50"] == 183.0
    assert doc["failed_turns"] == [
        {
            "session": "s1",
            "turn": 20,
            "warmup": False,
            "reason": "timeout: no reply audio within 10 s",
            "failure": "timeout",
        }
    ]
    # The warm-up turn (2 s first token) is listed but not in the statistics.
    assert doc["turns"][0]["warmup"] is True
    assert doc["summary"]["segments"]["model_first_token"]["max"] < 2000


def test_include_warmup(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, str(trace), "-f", "json", "--include-warmup")
    doc = json.loads(out)
    assert code == 0 and doc["counts"]["in_statistics"] == 41
    assert doc["summary"]["segments"]["model_first_token"]["max"] == 2000.0


def test_report_is_deterministic(trace: Path) -> None:
    a = render(build_report([trace]), Format.JSON)
    b = render(build_report([trace]), Format.JSON)
    assert a == b


def test_budget_sums_to_mean_voice_to_voice(trace: Path) -> None:
    rep = build_report([trace])
    total = sum(b.mean_ms for b in rep.budget)
    assert total == pytest.approx(rep.summary["voice_to_voice"].mean, rel=1e-12)
    assert sum(b.share for b in rep.budget) == pytest.approx(1.0)


# -- renderers ---------------------------------------------------------------------------


def test_terminal_report(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, str(trace))
    assert code == 0
    assert "42 turns: 41 ok, 1 failed, 1 warm-up; 40 in the statistics" in out
    assert "voice-to-voice" in out and "model first token" in out
    assert "sentence_aggregation" in out and "leading_silence" in out
    assert "Failed turns (1)" in out and "s1 #20 [timeout]: timeout" in out
    assert "p99 too few samples: 40" in out  # unreliable figures are marked and explained
    assert "warning" not in err


def test_markdown_report(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "summary.md"
    code, out, err = cli(capsys, str(trace), "-o", str(out_path))
    assert code == 0 and out == "" and f"wrote {out_path}" in err
    md = out_path.read_text()
    assert md.startswith("## voiceaudit report")
    assert "| **voice-to-voice** | 40 |" in md
    assert "| `sentence_aggregation` | 10/40 |" in md
    assert "### Failed turns (1)" in md
    assert len(md.encode()) < 64_000  # GitHub step summaries allow 1 MiB


def test_markdown_escapes_trace_text(tmp_path: Path) -> None:
    p = write_trace(
        tmp_path / "t.jsonl", [CLEAN, CLEAN.with_(ok=False, reason="bad | <b>reason</b>\nx")]
    )
    md = render(build_report([p]), Format.MARKDOWN)
    assert "<b>" not in md
    assert "bad \\| &lt;b&gt;reason&lt;/b&gt; x" in md


def test_format_follows_the_output_suffix(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, probe in (
        ("r.json", '"schema": "voiceaudit.report/1"'),
        ("r.md", "## voiceaudit"),
        ("r.html", "<!DOCTYPE html>"),
    ):
        code, _, _ = cli(capsys, str(trace), "-o", str(tmp_path / name))
        assert code == 0
        assert probe in (tmp_path / name).read_text()


def test_unknown_format(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, str(trace), "-f", "pdf")
    assert code == ExitCode.USAGE and "unknown format 'pdf'" in err


# -- several traces ----------------------------------------------------------------------


def test_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_trace(tmp_path / "streaming.jsonl", varied(40, seed=2))
    b = write_trace(
        tmp_path / "whole.jsonl", varied(40, seed=3, aggregation_ms=405.0, tts_request_chars=120)
    )
    code, out, err = cli(capsys, str(a), str(b), "-f", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "voiceaudit.comparison/1"
    assert doc["a"]["label"] == "streaming" and doc["b"]["label"] == "whole"
    m = {x["metric"]: x for x in doc["metrics"]}
    assert m["aggregation"]["significant"] is True
    assert m["aggregation"]["verdict"] == "B slower"
    assert m["aggregation"]["diff_p50_ms"] == pytest.approx(405.0 - 20.0)
    assert m["voice_to_voice"]["significant"] is True
    # identical stages are not called different
    assert m["transcription"]["significant"] is False
    assert m["transcription"]["verdict"] == "no significant difference"
    f = {x["kind"]: x for x in doc["findings"]}
    assert (
        f["whole_result_handoff"]["b"]["turns"] == 40
        and f["whole_result_handoff"]["a"]["turns"] == 0
    )
    code, out, _ = cli(capsys, str(a), str(b))
    assert code == 0 and "B slower" in out and "no significant difference" in out


def test_comparison_flags_different_audio(tmp_path: Path) -> None:
    a = build_report([write_trace(tmp_path / "a.jsonl", varied(5))])
    b = build_report([write_trace(tmp_path / "b.jsonl", varied(5, audio="other.wav"))])
    cmp = compare(a, b)
    assert "audio" in cmp.differences
    assert any("not like for like" in w for w in cmp.warnings)
    for fmt in Format:
        assert render(cmp, fmt)


def test_three_traces_need_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [
        str(write_trace(tmp_path / f"w{i}.jsonl", varied(3, seed=i), run_id=f"w{i}"))
        for i in range(3)
    ]
    code, _, err = cli(capsys, *paths)
    assert code == ExitCode.USAGE and "--merge" in err
    code, out, _ = cli(capsys, *paths, "--merge", "-f", "json")
    doc = json.loads(out)
    assert code == 0 and doc["counts"]["turns"] == 9
    assert {t["run_id"] for t in doc["turns"]} == {"w0", "w1", "w2"}


def test_directory_of_traces_is_merged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        write_trace(tmp_path / "runs" / f"w{i}" / "trace.jsonl", varied(4, seed=i), run_id=f"w{i}")
    code, out, _ = cli(capsys, str(tmp_path / "runs"), "-f", "json")
    assert code == 0 and json.loads(out)["counts"]["turns"] == 8


# -- bad and awkward inputs --------------------------------------------------------------


def test_zero_finished_turns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.jsonl"
    w = TraceWriter(p, synthetic_header())
    w.event("s0", 0, 1, "probe", "turn", "turn.start", {})
    w.commit()  # killed before the turn ended: no closing record
    code, out, err = cli(capsys, str(p))
    assert code == ExitCode.NO_DATA
    assert "no finished turns" in err and out == ""
    assert "Traceback" not in err


def test_truncated_trace_keeps_finished_turns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = write_trace(tmp_path / "t.jsonl", varied(6), close=False)
    with p.open("a") as f:
        f.write('{"type":"event","session":"s0","turn":6,"t_ns":5,"sour')
    code, out, err = cli(capsys, str(p), "-f", "json")
    assert code == 0
    assert json.loads(out)["counts"]["turns"] == 6
    assert "cut short" in err and "no closing record" in err


def test_truncated_gzip_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_trace(tmp_path / "t.jsonl", varied(60))
    data = gzip.compress(p.read_bytes())
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    code, out, err = cli(capsys, str(gz), "-f", "json")
    doc = json.loads(out)
    assert code == 0 and 0 < doc["counts"]["turns"] < 60
    assert "ends early" in err
    # the turn in flight when the data ended is counted as unfinished, not dropped silently
    assert doc["counts"]["unfinished"] <= 1


def test_newer_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = synthetic_header().to_dict()
    h["schema"] = f"voiceaudit.trace/{SCHEMA_VERSION + 1}"
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(h) + "\n")
    code, _, err = cli(capsys, str(p))
    assert code == ExitCode.BAD_INPUT
    assert "newer voiceaudit" in err and "pip install --upgrade voiceaudit" in err


def test_every_turn_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_trace(
        tmp_path / "t.jsonl", [CLEAN.with_(ok=False, reason=f"refused {i}") for i in range(3)]
    )
    code, out, err = cli(capsys, str(p))
    assert code == ExitCode.FAILED
    assert "No successful turns" in out and "refused 2" in out
    assert "no successful turns (3 failed)" in err


def test_not_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text("hello\n")
    code, _, err = cli(capsys, str(p))
    assert code == ExitCode.BAD_INPUT and "not a voiceaudit trace" in err


def test_unfinished_turn_is_reported(tmp_path: Path) -> None:
    p = write_trace(tmp_path / "t.jsonl", varied(3), close=False)
    w_lines = p.read_text().splitlines()
    # a fourth turn that started but never ended
    extra = json.dumps(
        {
            "type": "event",
            "session": "s0",
            "turn": 3,
            "t_ns": 9 * 10**12,
            "source": "probe",
            "stage": "turn",
            "name": "turn.start",
            "attrs": {},
        },
        separators=(",", ":"),
    )
    p.write_text("\n".join([*w_lines, extra]) + "\n")
    rep = build_report([p])
    assert rep.unfinished == (("synthetic", "s0", 3),)
    assert any("no turn.end" in w for w in rep.warnings)
