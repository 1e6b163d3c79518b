"""The report's failure table, failed turns' informative voice-to-voice, and the audio
format of each session: from traces written here with known failures, in every format
and in ``report A B``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from failure_traces import CUT, OK, Turn, failed, write

from voiceaudit.analysis import build_report, compare
from voiceaudit.analysis.report import UNFINISHED_REASON, Report
from voiceaudit.analysis.stats import fisher_exact
from voiceaudit.cli import run
from voiceaudit.failures import FAILURE_KINDS
from voiceaudit.report import Format, render


def injected(tmp_path: Path) -> tuple[Path, list[Turn]]:
    """30 ok turns and known failures: 2 cut replies (declared, audio heard), one
    protocol violation (declared, nothing audible), one timeout and one refused
    connection written the old way (reason only), a failed warm-up, and one turn cut
    short (no turn.end)."""
    turns: list[Turn] = [OK.with_(warmup=True)]
    turns += [OK.with_(endpointing_ms=300.0 + i) for i in range(30)]
    turns += [
        failed(CUT, "reply_cut", heard=True, endpointing_ms=5000.0),
        failed("connection reset by peer", "reply_cut", heard=True, endpointing_ms=6000.0),
        failed("protocol: malformed JSON event", "protocol_violation"),
        failed("timeout: no reply audio within 10 s"),
        failed("connect failed: connection refused"),
        failed("timeout: no reply audio within 10 s", warmup=True),
    ]
    return write(tmp_path / "run" / "trace.jsonl", turns, unfinished=1), turns


@pytest.fixture
def report(tmp_path: Path) -> Report:
    return build_report([injected(tmp_path)[0]])


def test_the_failure_table_counts_each_injected_kind(report: Report) -> None:
    ft = report.failures
    # measured: 30 ok + 5 failed (not the warm-ups) + 1 cut short
    assert ft.of == 36
    assert ft.counts() == {
        "connect_failed": 1,
        "no_reply": 0,
        "reply_cut": 2,
        "protocol_violation": 1,
        "target_error": 0,
        "timeout": 1,
        "interrupted": 1,
        "discarded": 0,  # only recordings' turns are discarded (docs/recordings.md)
    }
    assert ft.failed == 6 and ft.share == pytest.approx(6 / 36)
    assert [r.kind for r in ft.rows] == list(FAILURE_KINDS)
    by = {r.kind: r for r in ft.rows}
    assert by["timeout"].warmup == 1 and ft.warmup == 1
    assert by["reply_cut"].example == CUT  # the first reason of the kind
    assert by["interrupted"].example == UNFINISHED_REASON
    assert by["connect_failed"].example == "connect failed: connection refused"
    assert ft.informative == 2


def test_informative_voice_to_voice_is_labelled_and_out_of_the_statistics(
    report: Report,
) -> None:
    cut = [t for t in report.turns if t.failure == "reply_cut"]
    assert [t.ok for t in cut] == [False, False]
    # the heard figure is kept, labelled; it is never the turn's voice-to-voice
    for t, endpointing in zip(cut, (5000.0, 6000.0), strict=True):
        assert t.voice_to_voice_ns is None
        assert t.informative_ns is not None and t.informative_ns > endpointing * 1e6
        assert t.informative_label == "informative: reply cut"
    v2v = report.summary["voice_to_voice"]
    assert v2v.n == 30 and v2v.max < 4000  # the 5 s and 6 s turns are not in it
    assert report.failures.informative == 2
    # a failed turn with nothing heard has no figure at all
    pv = next(t for t in report.turns if t.failure == "protocol_violation")
    assert pv.informative_ns is None and pv.informative_label is None


def test_json_has_the_table_and_the_labelled_figure(report: Report) -> None:
    doc = json.loads(report.to_json())
    f = doc["failures"]
    assert (f["of"], f["failed"], f["warmup"], f["informative"]) == (36, 6, 1, 2)
    rows = {r["kind"]: r for r in f["by_kind"]}
    assert list(rows) == list(FAILURE_KINDS)  # every kind, zeros included
    assert rows["reply_cut"] == {
        "kind": "reply_cut",
        "label": "reply cut",
        "turns": 2,
        "share": round(2 / 36, 4),
        "warmup": 0,
        "example": CUT,
    }
    assert rows["no_reply"]["turns"] == 0 and rows["no_reply"]["example"] is None
    cut = [t for t in doc["turns"] if t.get("failure") == "reply_cut"]
    assert len(cut) == 2
    for t in cut:
        assert t["ok"] is False and t["voice_to_voice_ms"] is None
        assert t["voice_to_voice_ns"] is None
        assert t["informative_voice_to_voice_ns"] == round(t["informative_voice_to_voice_ms"] * 1e6)
        # its ledger is kept for diagnosis and sums to the informative figure
        assert sum(s["ns"] for s in t["ledger"]) == t["informative_voice_to_voice_ns"]
    listed = {(d["turn"], d["failure"]) for d in doc["failed_turns"]}
    assert ("timeout" in {k for _, k in listed}) and len(listed) == 6  # warm-up included


def test_every_format_shows_the_table_and_warns(report: Report) -> None:
    text = render(report, Format.TERMINAL, width=160)
    assert "FAILURES: 6 of 36 turns failed (16.7%)" in text
    assert "reply cut 2" in text and "1 warm-up turn(s) failed too" in text
    table = text[text.index("\nFailures ") :]
    rows = [[c.strip() for c in line.split("│")] for line in table.splitlines() if "│" in line]
    assert rows == [
        ["connect failed", "1", "2.8%", "0", "connect failed: connection refused"],
        ["reply cut", "2", "5.6%", "0", CUT],
        ["protocol violation", "1", "2.8%", "0", "protocol: malformed JSON event"],
        ["timeout", "1", "2.8%", "1", "timeout: no reply audio within 10 s"],
        ["interrupted", "1", "2.8%", "0", UNFINISHED_REASON],
    ]  # the kinds with no failed turn are left out
    assert "[reply cut]" in text and "(informative: reply cut, not in the statistics)" in text

    md = render(report, Format.MARKDOWN)
    assert "> **FAILURES: 6 of 36 turns failed (16.7%)" in md
    assert "### Failures" in md and "| reply cut | 2 | 5.6% | 0 |" in md
    assert "informative: reply cut, not in the statistics" in md

    page = render(report, Format.HTML)
    assert '<p class="fail"><b>FAILURES: 6 of 36 turns failed (16.7%)' in page
    assert '<h2 class="fail">Failures</h2>' in page
    assert "<td>reply cut</td><td>2</td><td>5.6%</td>" in page.replace(' class="l"', "")
    # the per-turn table: failed, the figure labelled beside it
    assert "failed: " + CUT in page and "informative: reply cut</span>" in page


def test_a_report_without_failures_shows_no_table(tmp_path: Path) -> None:
    r = build_report([write(tmp_path / "t.jsonl", [OK] * 5)])
    assert r.failures.failed == 0 and r.failures.of == 5
    for fmt in (Format.TERMINAL, Format.MARKDOWN, Format.HTML):
        out = render(r, fmt)
        assert "FAILURES" not in out and "Failures" not in out
    assert json.loads(r.to_json())["failures"]["failed"] == 0


def test_include_warmup_counts_failed_warmups(tmp_path: Path) -> None:
    path = injected(tmp_path)[0]
    r = build_report([path], include_warmup=True)
    assert r.failures.of == 38 and r.failures.counts()["timeout"] == 2
    assert "warm-up turn(s) failed too" not in render(r, Format.TERMINAL)


def test_the_probe_figure_is_used_when_the_marks_do_not_give_one(tmp_path: Path) -> None:
    turns: list[Turn] = [OK, failed(CUT, "reply_cut", heard=True)]
    r = build_report([write(tmp_path / "t.jsonl", turns, drop_audible={1})])
    t = r.turns[1]
    # no reply.audible in the trace: the ledger has no figure, the probe's is shown
    assert (
        t.ledger.voice_to_voice_ns is None
        and t.informative_ns == r.turns[0].ledger.voice_to_voice_ns
    )


def test_an_unknown_reason_in_an_old_trace_is_a_target_error(tmp_path: Path) -> None:
    r = build_report([write(tmp_path / "t.jsonl", [OK, failed("the pipeline hiccuped")])])
    assert r.failures.counts()["target_error"] == 1


# -- audio formats ----------------------------------------------------------------------------

PCMU = {
    "input": {"encoding": "pcmu", "rate": 8000},
    "output": {"encoding": "pcmu", "rate": 8000},
    "source": "declared",
}


def test_one_format_for_every_session_is_shown_once(tmp_path: Path) -> None:
    r = build_report(
        [write(tmp_path / "t.jsonl", [OK] * 4, sessions=2, formats={"s0": PCMU, "s1": PCMU})]
    )
    # the latest event of each session, not the earlier default
    assert [(f.session, f.input, f.source) for f in r.audio_formats] == [
        ("s0", {"encoding": "pcmu", "rate": 8000}, "declared"),
        ("s1", {"encoding": "pcmu", "rate": 8000}, "declared"),
    ]
    line = "input pcmu 8000 Hz, output pcmu 8000 Hz (declared by the target)"
    assert f"audio format: {line}\n" in render(r, Format.TERMINAL, width=160)
    assert f"Audio format: {line}" in render(r, Format.MARKDOWN)
    assert f"Audio format: {line}<br>" in render(r, Format.HTML)
    doc = json.loads(r.to_json())
    assert doc["audio_formats"] == [{"session": s, **PCMU} for s in ("s0", "s1")]


def test_sessions_with_different_formats_are_each_named(tmp_path: Path) -> None:
    pcm8 = {
        "input": {"encoding": "pcm16", "rate": 8000},
        "output": {"encoding": "pcm16", "rate": 8000},
        "source": "requested",
    }
    r = build_report(
        [write(tmp_path / "t.jsonl", [OK] * 4, sessions=2, formats={"s0": PCMU, "s1": pcm8})]
    )
    text = render(r, Format.TERMINAL, width=200)
    assert (
        "audio format: input pcmu 8000 Hz, output pcmu 8000 Hz (declared by the target): "
        "1 session(s): s0"
    ) in text
    assert (
        "audio format: input pcm16 8000 Hz, output pcm16 8000 Hz (requested with "
        "-o input_format/output_format): 1 session(s): s1"
    ) in text


def test_a_trace_without_formats_says_nothing_of_them(tmp_path: Path) -> None:
    r = build_report([write(tmp_path / "t.jsonl", [OK] * 2)])
    assert r.audio_formats == ()
    assert "audio format" not in render(r, Format.TERMINAL).lower()
    assert json.loads(r.to_json())["audio_formats"] == []


# -- report A B ---------------------------------------------------------------------------------


def test_comparison_tests_failures_overall_and_per_kind(tmp_path: Path) -> None:
    a = build_report([write(tmp_path / "a.jsonl", [OK] * 40, run_id="a")], label="A")
    cut = [failed(CUT, "reply_cut", heard=True) for _ in range(12)]
    b_turns: list[Turn] = [*([OK] * 27), *cut, failed("timeout: no reply audio")]
    b = build_report([write(tmp_path / "b.jsonl", b_turns, run_id="b")], label="B")
    cmp = compare(a, b)
    rows = {r.metric: r for r in cmp.failures}
    # the overall share and the kinds either side has; not the others
    assert list(rows) == ["failures", "failures.reply_cut", "failures.timeout"]
    assert rows["failures"].a == (0, 40) and rows["failures"].b == (13, 40)
    assert rows["failures.reply_cut"].b == (12, 40)
    assert rows["failures.reply_cut"].p_value == pytest.approx(fisher_exact(0, 40, 12, 40))
    assert rows["failures"].significant and rows["failures"].verdict == "B higher"
    assert not rows["failures.timeout"].significant
    # the p-values are Holm-adjusted with the latency tests: never below the raw one
    for r in cmp.failures:
        assert r.p_adjusted is not None and r.p_value is not None
        assert r.p_adjusted >= r.p_value
    doc = json.loads(cmp.to_json())
    assert [f["metric"] for f in doc["failures"]] == list(rows)
    assert doc["failures"][0]["b"] == {
        "count": 13,
        "of": 40,
        "rate": 0.325,
        "ci95": doc["failures"][0]["b"]["ci95"],
    }
    text = render(cmp, Format.TERMINAL, width=160)
    assert "Failures (share of measured turns" in text
    assert "failed turns (all kinds)" in text and "32.5% (13/40)" in text and "B higher" in text
    assert "B: 13 of 40 turns failed" in text
    md = render(cmp, Format.MARKDOWN)
    assert "### Failures" in md and "| reply cut | 0.0% (0/40) |" in md
    assert "<h2>Failures</h2>" in render(cmp, Format.HTML)


def test_comparison_without_failures_has_no_failure_rows(tmp_path: Path) -> None:
    a = build_report([write(tmp_path / "a.jsonl", [OK] * 6, run_id="a")])
    b = build_report([write(tmp_path / "b.jsonl", [OK] * 6, run_id="b")])
    cmp = compare(a, b)
    assert cmp.failures == ()
    assert "Failures" not in render(cmp, Format.TERMINAL)


def test_cli_report_prints_the_table_and_keeps_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = injected(tmp_path)[0]
    assert run(["report", str(path), "-f", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["failures"]["failed"] == 6
    # written to a file, the report still warns on stderr
    assert run(["report", str(path), "-o", str(tmp_path / "r.md")]) == 0
    _, err = capsys.readouterr()
    assert "FAILURES: 6 of 36 turns failed (16.7%)" in " ".join(err.split())


def test_different_audio_formats_are_not_like_for_like(tmp_path: Path) -> None:
    from voiceaudit.gate.evaluate import metadata_differences

    pcm = {**PCMU, "input": {"encoding": "pcm16", "rate": 24000}}
    a = build_report([write(tmp_path / "a.jsonl", [OK] * 3, formats={"s0": pcm}, run_id="a")])
    b = build_report([write(tmp_path / "b.jsonl", [OK] * 3, formats={"s0": PCMU}, run_id="b")])
    cmp = compare(a, b)
    assert cmp.differences["audio_format"] == (
        ["input pcm16 24000 Hz, output pcmu 8000 Hz"],
        ["input pcmu 8000 Hz, output pcmu 8000 Hz"],
    )
    assert any("different audio formats" in w for w in cmp.warnings)
    assert "audio_format" in metadata_differences(a, b)
    assert "audio_format" not in compare(a, a).differences
