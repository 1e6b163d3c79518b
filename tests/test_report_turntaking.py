"""Turn-taking in `voiceaudit report`: traces with injected values (tests/turntaking_traces.py,
written with the real TraceWriter) go through the real CLI, and the JSON recovers every
injected figure; each turn-taking finding fires above its threshold and not at it; every
human format shows the turn-taking rows; a plain trace has no turn-taking at all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from turntaking_traces import (
    CLEAN,
    CLEAN_V2V_MS,
    TTurn,
    barge_in,
    cut_in,
    fisher_by_hand,
    pauses,
    rate_turns,
    truncate,
    write_tt_trace,
)

from voiceaudit.analysis import build_report
from voiceaudit.analysis.findings import TURN_TAKING_KINDS, TURN_TAKING_RULES, FindingRules
from voiceaudit.cli import run
from voiceaudit.report import Format, render
from voiceaudit.report.markdown import md

#: voice-to-voice of the response to the interruption (turn 1): CLEAN with 200 ms more
#: endpointing
RESPONSE_V2V_MS = CLEAN_V2V_MS + 200.0

#: One session whose turns carry every kind of turn-taking observation, values known.
TURNS: tuple[TTurn, ...] = (
    # 0: a slow barge-in (420 ms > 300), most of it in the client's buffer (240 ms > 100)
    TTurn(events=barge_in(900.0, 420.0, 150.0, 30.0, 240.0)),
    # 1: the interruption's turn (its reply answers it), cut in on its second pause
    TTurn(
        spec=CLEAN.with_(endpointing_ms=500.0),
        start={"interrupts_turn": 0, "pauses": pauses(400.0, 250.0)},
        events=(cut_in(1, 250.0, 600.0, 230.0),),
    ),
    # 2: a cough stopped the reply (a false interruption); truncate told 1500, heard 1710
    TTurn(
        events=(
            *barge_in(
                800.0, 180.0, None, None, 60.0, kind="sound", false_interruption=True, clip="cough"
            ),
            truncate(1500.0, 1710.0),
        )
    ),
    # 3: a barge-in the target ignored
    TTurn(events=barge_in(700.0, 2500.0, None, None, 40.0, stopped=False, cut=False)),
    # 4: a quick barge-in: under every threshold
    TTurn(events=barge_in(900.0, 90.0, 40.0, 10.0, 40.0)),
    # 5: a sound the reply went on through; a truncate within 100 ms of what was heard
    TTurn(
        events=(
            *barge_in(
                600.0, 1900.0, None, None, 30.0, kind="sound", false_interruption=False, clip="mm"
            ),
            truncate(1500.0, 1560.0),
        )
    ),
    # 6: a pause the target waited through
    TTurn(start={"pauses": pauses(400.0)}),
    # 7: an ordinary turn (no turn-taking at all)
    TTurn(),
)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run(["report", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def _json(capsys: pytest.CaptureFixture[str], trace: Path) -> dict[str, Any]:
    _, out = _cli(capsys, str(trace), "--format", "json")
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return write_tt_trace(tmp_path / "talk" / "trace.jsonl", TURNS)


@pytest.fixture
def doc(trace: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return _json(capsys, trace)


def _kinds(turn: dict[str, Any]) -> list[str]:
    return sorted(f["kind"] for f in turn["findings"] if f["kind"] in TURN_TAKING_KINDS)


def _finding(turn: dict[str, Any], kind: str) -> dict[str, Any]:
    (f,) = [f for f in turn["findings"] if f["kind"] == kind]
    return f


# -- per turn ---------------------------------------------------------------------------


def test_barge_in_stop_latency_and_split(doc: dict[str, Any]) -> None:
    (b,) = doc["turns"][0]["turn_taking"]["barge_ins"]
    assert b["stop_ms"] == 420.0
    assert b["split_ms"] == {"server": 150.0, "in_flight": 30.0, "client_buffer": 240.0}
    assert sum(b["split_ms"].values()) == pytest.approx(b["stop_ms"], abs=1e-6)
    assert (b["server_ms"], b["in_flight_ms"], b["received_ms"]) == (150.0, 30.0, 180.0)
    assert (b["cut"], b["stopped"], b["clip"]) == (True, True, "03_lights")
    # without the server's send time: until received + client buffer
    (s,) = doc["turns"][2]["turn_taking"]["sounds"]
    assert s["split_ms"] == {"received": 120.0, "client_buffer": 60.0}
    assert s["false_interruption"] is True and s["clip"] == "cough"


def test_cut_in_with_its_pause(doc: dict[str, Any]) -> None:
    tt = doc["turns"][1]["turn_taking"]
    assert tt["interrupts_turn"] == 0
    assert tt["pauses_ms"] == [400.0, 250.0]
    (c,) = tt["cut_ins"]
    assert c == {
        "before_speech_end_ms": 600.0,
        "pause_index": 1,
        "pause_ms": 250.0,
        "after_pause_start_ms": 230.0,
        "audible": True,
        "endpointed": False,
    }
    assert "cut_ins" not in doc["turns"][6]["turn_taking"]
    assert doc["turns"][6]["turn_taking"]["pauses_ms"] == [400.0]


def test_truncation_told_against_heard(doc: dict[str, Any]) -> None:
    (tr,) = doc["turns"][2]["turn_taking"]["truncates"]
    assert tr == {
        "item_id": "item_1",
        "audio_end_ms": 1500.0,
        "heard_ms": 1710.0,
        "unclaimed_ms": 210.0,
    }


def test_a_turn_without_turn_taking_has_no_key(doc: dict[str, Any]) -> None:
    assert "turn_taking" not in doc["turns"][7]
    assert [t["voice_to_voice_ms"] for t in doc["turns"]] == [
        CLEAN_V2V_MS,
        RESPONSE_V2V_MS,
        *[CLEAN_V2V_MS] * 6,
    ]


# -- over the report --------------------------------------------------------------------


def test_report_turn_taking_block(doc: dict[str, Any]) -> None:
    tt = doc["turn_taking"]
    assert tt["turns"] == 7  # turn 7 has none
    b = tt["barge_ins"]
    assert (b["n"], b["stopped"], b["not_stopped"], b["cut_reported"]) == (3, 2, 1, 3)
    stop = b["stop_ms"]
    assert (stop["n"], stop["p50"], stop["min"], stop["max"]) == (3, 420.0, 90.0, 2500.0)
    assert stop["mean"] == pytest.approx((420.0 + 2500.0 + 90.0) / 3, abs=1e-3)
    # medians over the barge-ins that have each part
    assert b["split_n"] == {"server": 2, "in_flight": 2, "received": 3, "client_buffer": 3}
    assert b["split_p50_ms"] == {
        "server": pytest.approx((150.0 + 40.0) / 2),
        "in_flight": pytest.approx((30.0 + 10.0) / 2),
        "received": 180.0,  # 180, 2460, 50
        "client_buffer": 40.0,  # 240, 40, 40
    }
    c = tt["cut_ins"]
    assert (c["turns"], c["turns_cut_in"], c["rate"], c["cut_ins"]) == (2, 1, 0.5, 1)
    assert c["by_pause"] == [
        {"pause_ms": 250.0, "pauses": 1, "cut_ins": 1, "rate": 1.0},
        {"pause_ms": 400.0, "pauses": 2, "cut_ins": 0, "rate": 0.0},
    ]
    assert c["before_any_pause"] == 0
    assert tt["sounds"] == {"n": 2, "known": 2, "false_interruptions": 1, "rate": 0.5}
    r = tt["response_to_interruption"]
    assert r["voice_to_voice_ms"]["n"] == 1 and r["voice_to_voice_ms"]["p50"] == RESPONSE_V2V_MS
    assert r["ordinary_voice_to_voice_ms"]["n"] == 7
    assert r["ordinary_voice_to_voice_ms"]["p50"] == CLEAN_V2V_MS
    assert r["p50_difference_ms"] == pytest.approx(200.0, abs=1e-3)
    assert tt["truncation"] == {
        "n": 2,
        "unclaimed_p50_ms": pytest.approx(135.0),
        "unclaimed_min_ms": 60.0,
        "unclaimed_max_ms": 210.0,
    }


def test_options_show_the_turn_taking_rules(doc: dict[str, Any]) -> None:
    rules = doc["options"]["rules"]
    defaults = FindingRules()
    for k in TURN_TAKING_RULES:
        assert rules[k] == getattr(defaults, k)


def test_findings_per_turn_with_evidence(doc: dict[str, Any]) -> None:
    turns = doc["turns"]
    assert _kinds(turns[0]) == ["barge_in_client_buffer", "slow_barge_in_stop"]
    slow = _finding(turns[0], "slow_barge_in_stop")
    assert slow["ms"] == pytest.approx(120.0)  # over the 300 ms threshold
    ev = slow["evidence"]
    assert ev["stop_ms"] == 420.0 and ev["threshold_ms"] == 300.0
    assert ev["split_ms"] == {"server": 150.0, "in_flight": 30.0, "client_buffer": 240.0}
    assert (ev["biggest"], ev["biggest_ms"]) == ("client buffer", 240.0)
    buf = _finding(turns[0], "barge_in_client_buffer")
    assert buf["ms"] == 240.0 and buf["evidence"]["client_buffer_ms"] == 240.0
    assert "flush" in buf["evidence"]["advice"]
    assert _kinds(turns[1]) == ["cut_in"]
    cut = _finding(turns[1], "cut_in")
    assert cut["ms"] == 600.0
    assert (cut["evidence"]["pause_ms"], cut["evidence"]["after_pause_start_ms"]) == (250.0, 230.0)
    assert _kinds(turns[2]) == ["false_interruption", "truncation_mismatch"]
    fi = _finding(turns[2], "false_interruption")
    assert fi["ms"] == 0.0 and fi["evidence"]["sound"] == "cough"
    tm = _finding(turns[2], "truncation_mismatch")
    assert tm["ms"] == 210.0 and tm["evidence"]["unclaimed_ms"] == 210.0
    assert _kinds(turns[3]) == ["no_barge_in"]
    assert _finding(turns[3], "no_barge_in")["evidence"]["stop_ms"] == 2500.0
    for quiet in (4, 5, 6, 7):
        assert _kinds(turns[quiet]) == [], quiet


def test_findings_summary(doc: dict[str, Any]) -> None:
    got = {f["kind"]: (f["turns"], f["of"], f["total_ms"]) for f in doc["findings"]}
    assert got == {
        "slow_barge_in_stop": (1, 8, 120.0),
        "barge_in_client_buffer": (1, 8, 240.0),
        "cut_in": (1, 8, 600.0),
        "false_interruption": (1, 8, 0.0),
        "truncation_mismatch": (1, 8, 210.0),
        "no_barge_in": (1, 8, 2500.0),
    }


# -- thresholds: above fires, at does not ----------------------------------------------------


def _one(tmp_path: Path, capsys: pytest.CaptureFixture[str], turn: TTurn) -> dict[str, Any]:
    trace = write_tt_trace(tmp_path / f"t{len(list(tmp_path.iterdir()))}.jsonl", [turn])
    turns: list[dict[str, Any]] = _json(capsys, trace)["turns"]
    return turns[0]


@pytest.mark.parametrize(
    ("stop_ms", "buffer_ms", "want"),
    [
        (300.0, 100.0, []),  # at both thresholds: nothing
        (300.001, 100.0, ["slow_barge_in_stop"]),
        (300.0, 100.001, ["barge_in_client_buffer"]),
        (299.0, 99.0, []),
    ],
)
def test_barge_in_thresholds(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stop_ms: float,
    buffer_ms: float,
    want: list[str],
) -> None:
    turn = _one(tmp_path, capsys, TTurn(events=barge_in(900.0, stop_ms, 100.0, 20.0, buffer_ms)))
    assert _kinds(turn) == want
    if "slow_barge_in_stop" in want:
        assert _finding(turn, "slow_barge_in_stop")["ms"] == pytest.approx(0.001, abs=1e-6)


@pytest.mark.parametrize(
    ("heard_ms", "fires"), [(1600.0, False), (1600.5, True), (1400.0, False), (1399.0, True)]
)
def test_truncation_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], heard_ms: float, fires: bool
) -> None:
    turn = _one(tmp_path, capsys, TTurn(events=(truncate(1500.0, heard_ms),)))
    assert _kinds(turn) == (["truncation_mismatch"] if fires else [])
    if fires:
        f = _finding(turn, "truncation_mismatch")
        assert f["ms"] == pytest.approx(abs(heard_ms - 1500.0))
        never = "never heard" in f["evidence"]["meaning"]
        assert never == (heard_ms < 1500.0)


def test_custom_rules_move_the_thresholds(trace: Path) -> None:
    rules = FindingRules(barge_in_stop_ms=500.0, barge_in_client_buffer_ms=250.0)
    report = build_report([trace], rules=rules)
    kinds = {f.kind for t in report.turns for f in t.findings}
    assert "slow_barge_in_stop" not in kinds and "barge_in_client_buffer" not in kinds
    assert {"cut_in", "no_barge_in", "false_interruption", "truncation_mismatch"} <= kinds
    assert json.loads(report.to_json())["options"]["rules"]["barge_in_stop_ms"] == 500.0


def test_a_sound_that_did_not_stop_the_reply_is_no_false_interruption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = {
        False: "the reply went on",
        None: "whether the sound stopped the reply: unknown",
        True: "false interruption: the sound stopped the reply",
    }
    for fi, want in ((False, []), (None, []), (True, ["false_interruption"])):
        ev = barge_in(800.0, 150.0, None, None, 50.0, kind="sound", false_interruption=fi)
        assert _kinds(_one(tmp_path, capsys, TTurn(events=ev))) == want, fi
        trace = write_tt_trace(tmp_path / f"fi-{fi}.jsonl", [TTurn(events=ev)])
        text = render(build_report([trace]), Format.TERMINAL, width=400)
        assert said[fi] in text and all(v not in text for k, v in said.items() if k != fi)


# -- edge cases of the figures ------------------------------------------------------------


def test_a_reply_already_received_spent_its_stop_in_the_client_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last chunk arrived before the caller spoke (received < 0): the whole stop
    latency is the client's buffer, and the parts still sum to it."""
    turn = _one(tmp_path, capsys, TTurn(events=barge_in(900.0, 200.0, None, None, 350.0)))
    (b,) = turn["turn_taking"]["barge_ins"]
    assert b["split_ms"] == {"received": 0.0, "client_buffer": 200.0}
    assert b["received_ms"] == -150.0  # as recorded


def test_cut_in_before_any_pause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_tt_trace(
        tmp_path / "t.jsonl",
        [TTurn(events=(cut_in(None, None, 800.0, None, audible=False),))],
    )
    doc = _json(capsys, trace)
    c = doc["turn_taking"]["cut_ins"]
    assert (c["turns"], c["turns_cut_in"], c["before_any_pause"], c["audible"]) == (1, 1, 1, 0)
    assert c["by_pause"] == []
    (f,) = doc["turns"][0]["findings"]
    assert (f["kind"], f["ms"], f["evidence"]["endpointed"]) == ("cut_in", 800.0, True)


def test_cut_ins_on_failed_turns_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cut-in often leaves the turn without a reply of its own: the failed turn still
    counts in the cut-in rate and in the findings (not only the ok turns)."""
    p = {"pauses": pauses(400.0)}
    ev = (cut_in(0, 400.0, 600.0, 230.0),)
    trace = write_tt_trace(
        tmp_path / "t.jsonl",
        [
            TTurn(start=p, events=ev),
            TTurn(spec=CLEAN.with_(ok=False, reason="no reply"), start=p, events=ev),
            TTurn(start=p),
        ],
    )
    doc = _json(capsys, trace)
    c = doc["turn_taking"]["cut_ins"]
    assert (c["turns"], c["turns_cut_in"], c["rate"]) == (3, 2, pytest.approx(0.6667))
    assert c["by_pause"] == [{"pause_ms": 400.0, "pauses": 3, "cut_ins": 2, "rate": 0.6667}]
    (f,) = doc["findings"]
    assert (f["kind"], f["turns"], f["of"]) == ("cut_in", 2, 3)
    # the ok turns' voice-to-voice only
    assert doc["turn_taking"]["response_to_interruption"]["ordinary_voice_to_voice_ms"]["n"] == 2


def test_warmup_turns_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_tt_trace(
        tmp_path / "t.jsonl",
        [
            TTurn(spec=CLEAN.with_(warmup=True), events=barge_in(900.0, 800.0, None, None, 50.0)),
            TTurn(events=barge_in(900.0, 100.0, None, None, 50.0)),
        ],
    )
    stop = _json(capsys, trace)["turn_taking"]["barge_ins"]["stop_ms"]
    assert (stop["n"], stop["max"]) == (1, 100.0)
    _, out = _cli(capsys, str(trace), "--format", "json", "--include-warmup")
    assert json.loads(out)["turn_taking"]["barge_ins"]["stop_ms"]["max"] == 800.0


# -- every format -----------------------------------------------------------------------

#: What each human format must show for TURNS (plain text, before format escaping).
SHOWN = (
    "Turn-taking",
    "barge-in stop latency",
    "response to interruption",
    "server stop 150 + in flight 30.0 + client buffer 240 ms",
    "until received 120 + client buffer 60.0 ms",
    "stopped 2/3 (67%); stop latency p50 420 ms",
    "cut-in rate",
    "1/2 (50%) of the turns with pauses; by pause: 250 ms 1/1, 400 ms 0/2",
    "in pause 2 of 250 ms, 230 ms into it",
    "false interruption: the sound stopped the reply",
    "1/2 (50%) of the sounds stopped the reply",
    "told the server 1500 ms played, heard 1710 ms",
    "barge-in (not stopped)",
    "voice-to-voice p50 838 ms over 1 turn(s); other turns p50 638 ms (difference +200 ms)",
    "slow_barge_in_stop +120 ms",
    "barge_in_client_buffer +240 ms",
    "truncation_mismatch +210 ms",
    "cut_in +600 ms",
)


def _text(html_or_md: str) -> str:
    """Tags out, entities and Markdown escapes undone (for matching plain strings)."""
    import html

    s = re.sub(r"<[^>]+>", "", html_or_md)
    s = re.sub(r"\\(.)", r"\1", s)
    return html.unescape(s)


@pytest.mark.parametrize("fmt", [Format.TERMINAL, Format.MARKDOWN, Format.HTML])
def test_every_format_shows_turn_taking(trace: Path, fmt: Format) -> None:
    text = render(build_report([trace]), fmt, width=400)
    plain = text if fmt is Format.TERMINAL else _text(text)
    for s in SHOWN:
        assert s in plain, (fmt, s)
    if fmt is Format.MARKDOWN:
        assert md("slow_barge_in_stop") in text  # escaped, not raw


@pytest.mark.parametrize("fmt", [Format.TERMINAL, Format.MARKDOWN, Format.HTML])
def test_a_false_interruption_is_shown_as_not_costed(trace: Path, fmt: Format) -> None:
    """Costed 0 ms in the data (it adds nothing to a budget), but the reports say the cost
    was not measured rather than print a cost of zero."""
    text = render(build_report([trace]), fmt, width=400)
    plain = text if fmt is Format.TERMINAL else _text(text)
    assert "false_interruption (cost not measured)" in plain
    assert "false_interruption +0" not in plain and "false_interruption 0" not in plain
    (row,) = [line for line in plain.splitlines() if "a short sound (not speech)" in line]
    assert "not measured" in row and "0.00" not in row, row
    # a costed finding keeps its figure
    assert "slow_barge_in_stop +120 ms" in plain


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "html"])
def test_the_cli_renders_turn_taking(
    trace: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    _, out = _cli(capsys, str(trace), "--format", fmt)
    assert "Turn-taking" in out and "barge-in" in out and "cut-in" in out


def test_a_report_with_no_successful_turn_still_shows_turn_taking(tmp_path: Path) -> None:
    trace = write_tt_trace(
        tmp_path / "t.jsonl",
        [
            TTurn(
                spec=CLEAN.with_(ok=False, reason="no reply"),
                events=(cut_in(None, None, 500.0, None),),
            )
        ],
    )
    for fmt in (Format.TERMINAL, Format.MARKDOWN, Format.HTML):
        text = render(build_report([trace]), fmt, width=400)
        assert "No successful turns" in text and "cut-in" in text and "before any pause" in text


def test_trace_text_is_escaped_in_html_and_markdown(tmp_path: Path) -> None:
    clip = "<img src=x onerror=alert(1)>|*x*"
    trace = write_tt_trace(
        tmp_path / "t.jsonl", [TTurn(events=barge_in(900.0, 200.0, None, None, 50.0, clip=clip))]
    )
    report = build_report([trace])
    page = render(report, Format.HTML)
    assert "<img src=x" not in page and "&lt;img src=x" in page
    mdown = render(report, Format.MARKDOWN)
    assert "<img" not in mdown and "\\|\\*x\\*" in mdown


# -- plain traces are untouched ---------------------------------------------------------


def test_a_plain_trace_has_no_turn_taking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_tt_trace(tmp_path / "plain.jsonl", [TTurn(), TTurn()], scenario=False)
    doc = _json(capsys, trace)
    assert "turn_taking" not in doc
    assert all("turn_taking" not in t for t in doc["turns"])
    assert not set(doc["options"]["rules"]) & TURN_TAKING_RULES
    assert not {f["kind"] for f in doc["findings"]} & set(TURN_TAKING_KINDS)
    for fmt in ("terminal", "markdown", "html"):
        _, out = _cli(capsys, str(trace), "--format", fmt)
        assert "Turn-taking" not in out and "barge-in" not in out, fmt


def test_a_scenario_trace_without_events_has_an_empty_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pauses only, none cut into: the block is there (a scenario ran), with zeros."""
    trace = write_tt_trace(tmp_path / "t.jsonl", [TTurn(start={"pauses": pauses(300.0)})])
    doc = _json(capsys, trace)
    tt = doc["turn_taking"]
    assert tt["barge_ins"]["n"] == 0 and tt["barge_ins"]["stop_ms"] is None
    assert (tt["cut_ins"]["turns"], tt["cut_ins"]["rate"]) == (1, 0.0)
    _, out = _cli(capsys, str(trace), "--format", "markdown")
    assert "0/1 (0%) of the turns with pauses" in out


def test_the_documented_example_is_what_the_report_writes(tmp_path: Path) -> None:
    """docs/report-format.md shows one barge-in's turns[].turn_taking: it is this one."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "report-format.md").read_text()
    m = re.search(
        r"One barge-in as `turns\[\]\.turn_taking` shows it.*?```json\n(.*?)```", doc, re.S
    )
    assert m is not None
    trace = write_tt_trace(
        tmp_path / "t.jsonl", [TTurn(events=barge_in(900.0, 420.0, 150.0, 30.0, 240.0))]
    )
    got = json.loads(build_report([trace]).to_json())["turns"][0]["turn_taking"]
    assert got == json.loads(m.group(1))


# -- comparison (report A B) ------------------------------------------------------------


def _pairs(stop_shift_ms: float, endpointing_ms: float, n: int = 12) -> list[TTurn]:
    """``n`` barge-ins (stop latencies 200, 210, ... ms plus the shift), each followed by
    the interruption's own turn, whose endpointing is ``endpointing_ms``."""
    out: list[TTurn] = []
    for k in range(n):
        out.append(TTurn(events=barge_in(900.0, 200.0 + 10 * k + stop_shift_ms, 40.0, 10.0, 40.0)))
        out.append(
            TTurn(
                spec=CLEAN.with_(endpointing_ms=endpointing_ms),
                start={"interrupts_turn": 2 * k},
            )
        )
    return out


def test_a_comparison_compares_the_turn_taking_latencies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """B's barge-ins stop 100 ms later and its responses to the interruptions come 150 ms
    later (more endpointing): both are recovered as B - A and found significant."""
    base = CLEAN.endpointing_ms
    a = write_tt_trace(tmp_path / "a" / "trace.jsonl", _pairs(0.0, base))
    b = write_tt_trace(tmp_path / "b" / "trace.jsonl", _pairs(100.0, base + 150.0))
    _, out = _cli(capsys, str(a), str(b), "--format", "json")
    metrics = {m["metric"]: m for m in json.loads(out)["metrics"]}
    stop = metrics["barge_in.stop_latency"]
    assert stop["a"]["n"] == 12 and stop["b"]["n"] == 12
    assert stop["a"]["p50"] == pytest.approx(255.0, abs=1e-6)
    assert stop["diff_p50_ms"] == pytest.approx(100.0, abs=1e-6)
    assert stop["diff_mean_ms"] == pytest.approx(100.0, abs=1e-6)
    assert stop["significant"] is True and stop["verdict"] == "B slower"
    resp = metrics["response_to_interruption"]
    assert resp["a"]["p50"] == pytest.approx(CLEAN_V2V_MS, abs=1e-6)
    assert resp["diff_p50_ms"] == pytest.approx(150.0, abs=1e-6)
    assert resp["significant"] is True
    # the same figures in every text format
    for fmt in ("terminal", "markdown", "html"):
        _, text = _cli(capsys, str(a), str(b), "--format", fmt)
        plain = text if fmt == "terminal" else _text(text)
        assert "barge-in stop latency" in plain and "response to interruption" in plain, fmt
        assert "+100" in plain and "+150" in plain, fmt


def test_a_comparison_with_a_plain_trace_says_only_in_b(
    tmp_path: Path, trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = write_tt_trace(tmp_path / "plain" / "trace.jsonl", [TTurn()] * 4, scenario=False)
    _, out = _cli(capsys, str(plain), str(trace), "--format", "json")
    doc = json.loads(out)
    metrics = {m["metric"]: m for m in doc["metrics"]}
    assert metrics["barge_in.stop_latency"]["verdict"] == "only in B"
    assert metrics["barge_in.stop_latency"]["a"] is None
    assert metrics["barge_in.stop_latency"]["b"]["n"] == 3
    assert metrics["response_to_interruption"]["verdict"] == "only in B"
    # a finding the trace cannot cost is compared by its turns, not a cost of zero
    (fi,) = [f for f in doc["findings"] if f["kind"] == "false_interruption"]
    assert fi["b"]["turns"] == 1
    _, text = _cli(capsys, str(plain), str(trace))
    (row,) = [line for line in text.splitlines() if "false_interruption" in line]
    assert "not measured (0)" in row and "not measured (1)" in row, row


def _holm_adjusted(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_a_comparison_compares_the_turn_taking_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cuts into 2 of 20 paused turns, B into 16 of 20; a sound stops 0 of 10 replies
    in A and 1 of 10 in B. The counts, rates and differences come back exactly, Fisher's
    exact test gives the textbook p-values, one Holm correction covers them and every
    latency test, and only the cut-in rate is called a difference."""
    a = write_tt_trace(tmp_path / "a" / "trace.jsonl", rate_turns(2, 20, 0, 10))
    b = write_tt_trace(tmp_path / "b" / "trace.jsonl", rate_turns(16, 20, 1, 10))
    _, out = _cli(capsys, str(a), str(b), "--format", "json")
    doc = json.loads(out)
    rates = {r["metric"]: r for r in doc["rates"]}
    cut = rates["cut_in.rate"]
    assert (cut["a"]["count"], cut["a"]["of"], cut["b"]["count"], cut["b"]["of"]) == (2, 20, 16, 20)
    assert (cut["a"]["rate"], cut["b"]["rate"], cut["diff"]) == (0.1, 0.8, 0.7)
    assert cut["fisher_exact"]["p_value"] == pytest.approx(fisher_by_hand(2, 20, 16, 20))
    assert cut["significant"] is True and cut["verdict"] == "B higher"
    fi = rates["false_interruption.rate"]
    assert (fi["a"]["count"], fi["a"]["of"], fi["b"]["count"], fi["b"]["of"]) == (0, 10, 1, 10)
    assert fi["fisher_exact"]["p_value"] == pytest.approx(1.0)
    assert fi["significant"] is False and fi["verdict"] == "no significant difference"
    # Wilson 95 % of 0 of 10: [0, z²/(n+z²)] exactly
    z2 = 1.959963984540054**2
    assert fi["a"]["ci95"] == [0.0, round(z2 / (10 + z2), 4)]
    # one Holm family over the latency tests and the rate tests
    tested = [m for m in doc["metrics"] if m["mann_whitney"] is not None]
    raw = [m["mann_whitney"]["p_value"] for m in tested] + [
        r["fisher_exact"]["p_value"] for r in doc["rates"]
    ]
    shown = [m["mann_whitney"]["p_adjusted"] for m in tested] + [
        r["fisher_exact"]["p_adjusted"] for r in doc["rates"]
    ]
    assert len(raw) > 2 and shown == pytest.approx(_holm_adjusted(raw))
    assert cut["fisher_exact"]["p_adjusted"] > cut["fisher_exact"]["p_value"]
    # the same figures in every text format
    for fmt in ("terminal", "markdown", "html"):
        _, text = _cli(capsys, str(a), str(b), "--format", fmt)
        plain = text if fmt == "terminal" else _text(text)
        (row,) = [line for line in plain.splitlines() if "cut-in rate" in line]
        assert "10.0% (2/20)" in row and "80.0% (16/20)" in row and "+70.0 pp" in row, fmt
        assert "B higher" in row, fmt
        (row,) = [line for line in plain.splitlines() if "false-interruption rate" in line]
        assert "0.0% (0/10)" in row and "10.0% (1/10)" in row and "+10.0 pp" in row, fmt
        assert "no significant difference" in row, fmt


def test_a_comparison_of_rates_with_a_plain_trace_says_only_in_b(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = write_tt_trace(tmp_path / "plain" / "trace.jsonl", [TTurn()] * 4, scenario=False)
    b = write_tt_trace(tmp_path / "b" / "trace.jsonl", rate_turns(1, 4, 0, 0))
    _, out = _cli(capsys, str(plain), str(b), "--format", "json")
    (r,) = json.loads(out)["rates"]  # no sound in B: no false-interruption rate
    assert (r["metric"], r["a"], r["verdict"], r["fisher_exact"]) == (
        "cut_in.rate",
        None,
        "only in B",
        None,
    )
    assert (r["b"]["count"], r["b"]["of"]) == (1, 4)
