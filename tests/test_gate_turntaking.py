"""`voiceaudit gate` on turn-taking metrics, over traces with known injected values
(tests/turntaking_traces.py writes them with the real TraceWriter)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from turntaking_traces import (
    CLEAN,
    TTurn,
    barge_in,
    cut_in,
    fisher_by_hand,
    pauses,
    rate_turns,
    write_tt_trace,
)

from voiceaudit.cli import run
from voiceaudit.errors import ExitCode


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def gate(
    capsys: pytest.CaptureFixture[str], tmp: Path, budget: str, *traces: Path
) -> tuple[int, dict[str, Any], str]:
    b = tmp / "voiceaudit.toml"
    b.write_text(budget, encoding="utf-8")
    code = run(["gate", *map(str, traces), "--budget", str(b), "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else {}), err


def interrupted(path: Path, stops_ms: Sequence[float], responses_ms: Sequence[float]) -> Path:
    """len(stops_ms) + 1 turns: turn i's reply is talked over with stop latency
    stops_ms[i], and turn i + 1 (the response) has voice-to-voice responses_ms[i]. Turn 0,
    not a response, is slow (5488 ms) so that counting it would show."""
    turns = []
    for i in range(len(stops_ms) + 1):
        v2v = 5488.0 if i == 0 else responses_ms[i - 1]
        spec = replace(CLEAN, first_token_ms=v2v - 638.0 + 150.0)
        start = {} if i == 0 else {"interrupts_turn": i - 1}
        events: tuple[Any, ...] = ()
        if i < len(stops_ms):
            s = stops_ms[i]
            events = barge_in(v2v + 700, s, s * 0.5, s * 0.2, s * 0.3, opens_turn=i + 1)
        turns.append(TTurn(spec=spec, start=start, events=events))
    return write_tt_trace(path, turns)


STOPS = [float(x) for x in np.linspace(40.0, 98.0, 100)]
RESPONSES = [float(x) for x in np.linspace(600.0, 900.0, 100)]


def test_barge_in_stop_latency_p95_passes_below_and_fails_above(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    budget = '[budget]\nbarge_in.stop_latency = { p95 = "100ms" }\n'
    fast = interrupted(tmp_path / "fast.jsonl", STOPS, RESPONSES)
    code, doc, err = gate(capsys, tmp_path, budget, fast)
    assert code == ExitCode.OK, err
    (c,) = doc["checks"]
    assert c["metric"] == "barge_in.stop_latency" and c["n"] == 100 and c["line"] == 2
    assert c["observed"] == pytest.approx(np.percentile(STOPS, 95), abs=1e-3)
    slow = interrupted(tmp_path / "slow.jsonl", [s + 20 for s in STOPS], RESPONSES)
    code, doc, err = gate(capsys, tmp_path, budget, slow)
    assert code == ExitCode.FAILED
    (c,) = doc["checks"]
    assert c["problem"] == "over the limit"
    assert c["observed"] == pytest.approx(np.percentile(STOPS, 95) + 20, abs=1e-3)
    assert "FAIL  barge_in.stop_latency.p95 <= 100 ms" in err
    # 20 barge-ins are not enough for a p95 by default
    few = interrupted(tmp_path / "few.jsonl", STOPS[:20], RESPONSES[:20])
    code, doc, err = gate(capsys, tmp_path, budget, few)
    assert code == ExitCode.FAILED and doc["checks"][0]["problem"] == "not enough turns"
    assert "not enough barge-ins: 20, p95 needs at least 100" in err


def test_response_to_interruption_is_the_following_turns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    t = interrupted(tmp_path / "t.jsonl", STOPS[:20], RESPONSES[:20])
    code, doc, err = gate(
        capsys, tmp_path, '[budget]\nresponse_to_interruption = { p50 = "700ms", max = "1s" }\n', t
    )
    assert code == ExitCode.OK, err
    p50, mx = doc["checks"]
    assert p50["n"] == 20 and p50["observed"] == pytest.approx(np.median(RESPONSES[:20]), abs=0.01)
    assert mx["observed"] == pytest.approx(max(RESPONSES[:20]), abs=0.01)  # turn 0 left out


def test_cut_in_and_false_interruption_rates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    turns = []
    for i in range(20):  # 10 turns with a pause, 2 of them cut into; 10 plain turns
        if i < 10:
            ev = (cut_in(0, 400.0, 800.0, 250.0),) if i < 2 else ()
            turns.append(TTurn(start={"pauses": pauses(400.0)}, events=ev))
        else:
            turns.append(TTurn())
    for fi in (True, True, False, False, False, False, False, None):  # 2 of 7 known
        turns.append(
            TTurn(events=barge_in(1300, 80, 40, 10, 30, kind="sound", false_interruption=fi))
        )
    t = write_tt_trace(tmp_path / "t.jsonl", turns)
    budget = '[budget]\ncut_in.rate = { max = "15%" }\nfalse_interruption.rate = { max = 0.25 }\n'
    code, doc, err = gate(capsys, tmp_path, budget, t)
    assert code == ExitCode.FAILED
    cut, fi_ = doc["checks"]
    assert (cut["count"], cut["n"], cut["observed"], cut["unit"]) == (2, 10, 0.2, "fraction")
    assert cut["problem"] == "over the limit" and cut["line"] == 2
    assert (fi_["count"], fi_["n"]) == (2, 7) and fi_["observed"] == pytest.approx(2 / 7, abs=1e-5)
    assert fi_["problem"] == "over the limit" and fi_["line"] == 3
    assert any("1 of 8 sound(s) left out" in n for n in fi_["notes"])
    assert "FAIL  cut_in.rate <= 15%: 20.0%" in err
    budget = '[budget]\ncut_in.rate = { max = 0.2 }\n"false_interruption.rate" = { max = "30%" }\n'
    code, doc, err = gate(capsys, tmp_path, budget, t)
    assert code == ExitCode.OK, err


def test_plain_traces_fail_turn_taking_checks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = write_tt_trace(tmp_path / "plain.jsonl", [TTurn()] * 12, scenario=False)
    budget = (
        '[budget]\nvoice_to_voice = { p50 = "2s" }\nbarge_in.stop_latency = { p50 = "100ms" }\n'
        'response_to_interruption = { p50 = "1s" }\ncut_in.rate = { max = 0.1 }\n'
        "false_interruption.rate = { max = 0.1 }\n"
    )
    code, doc, err = gate(capsys, tmp_path, budget, plain)
    assert code == ExitCode.FAILED
    v2v, *tt = doc["checks"]
    assert v2v["status"] == "pass"
    assert [c["problem"] for c in tt] == ["not in the traces"] * 4
    assert "no barge-ins in the traces: they hold no turn-taking events" in err


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("cut_in.rate = { max = 5 }", 3, "cut_in.rate.max must be a fraction from 0 to 1"),
        ('cut_in.rate = { max = "150%" }', 3, "must be a fraction from 0 to 1"),
        ('cut_in.rate = { p95 = "5%" }', 3, "unknown key 'p95' in cut_in.rate"),
        ("cut_in.rate = 0.05", 3, "cut_in.rate must be a table"),
        ("cut_in.rate = {}", 3, "cut_in.rate: no limit given"),
        ("barge_in.stop_latency = { p95 = 100 }", 3, "100 is not a duration"),
        (
            'barge_in.stop_latncy = { p95 = "1s" }',
            3,
            "did you mean 'barge_in.stop_latency'?",
        ),
        ('barge_in = { p95 = "1s" }', 3, "unknown metric 'barge_in'"),
        (
            'cut_in.rate = { max = 0.1 }\n"cut_in.rate" = { max = 0.2 }',
            4,
            "cut_in.rate is limited twice (also at line 3)",
        ),
        ('[regression]\nmetrics = ["cut_in.rate.p50"]', 4, "a rate has no figure to compare"),
        ('[regression]\nmax_rate_increase = "5ms"', 4, "max_rate_increase must be a fraction"),
    ],
)
def test_bad_turn_taking_budgets_name_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, line: int, message: str
) -> None:
    t = interrupted(tmp_path / "t.jsonl", STOPS[:3], RESPONSES[:3])
    code, _doc, err = gate(capsys, tmp_path, f"[budget]\nmin_turns = 1\n{text}\n", t)
    assert code == ExitCode.USAGE
    assert f"voiceaudit.toml:{line}: " in err and message in err, err


def test_regression_on_stop_latency(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = interrupted(tmp_path / "base.jsonl", STOPS[:20], RESPONSES[:20])
    same = interrupted(tmp_path / "same.jsonl", STOPS[:20], RESPONSES[:20])
    slow = interrupted(tmp_path / "slow.jsonl", [s + 100 for s in STOPS[:20]], RESPONSES[:20])
    budget = f'[regression]\nbaseline = "{base}"\nmetrics = ["barge_in.stop_latency.p50"]\n'
    code, doc, err = gate(capsys, tmp_path, budget, same)
    assert code == ExitCode.OK, err
    code, doc, err = gate(capsys, tmp_path, budget, slow)
    assert code == ExitCode.FAILED and doc["checks"][0]["problem"] == "regression"
    assert doc["checks"][0]["increase"] == pytest.approx(100.0, abs=0.01)


def rates(path: Path, cut: int, paused: int, stopped: int, sounds: int) -> Path:
    """A trace of :func:`rate_turns`."""
    return write_tt_trace(path, rate_turns(cut, paused, stopped, sounds))


def _rate_budget(base: Path, allowance: str | None = None) -> str:
    extra = "" if allowance is None else f'max_rate_increase = "{allowance}"\n'
    return (
        f'[regression]\nbaseline = "{base}"\n'
        'metrics = ["cut_in.rate", "false_interruption.rate"]\n' + extra
    )


def test_regression_on_the_turn_taking_rates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The baseline cuts into 1 of 20 paused turns and B into 12 of 20: a regression
    (one-sided Fisher, Holm over the two rates); a sound stopping 1 of 10 replies against
    0 of 10 is over the allowance but not significant."""
    base = rates(tmp_path / "base.jsonl", 1, 20, 0, 10)
    worse = rates(tmp_path / "worse.jsonl", 12, 20, 1, 10)
    code, doc, err = gate(capsys, tmp_path, _rate_budget(base, "5%"), worse)
    assert code == ExitCode.FAILED, err
    cut, fi = doc["checks"]
    assert cut["name"] == "regression cut_in.rate (allowed +5.0 pp)" and cut["line"] == 3
    assert (cut["count"], cut["n"], cut["baseline_count"], cut["baseline_n"]) == (12, 20, 1, 20)
    assert (cut["observed"], cut["baseline"], cut["increase"], cut["allowed"]) == (
        0.6,
        0.05,
        0.55,
        0.1,
    )
    p_cut = fisher_by_hand(1, 20, 12, 20, b_greater=True)
    p_fi = fisher_by_hand(0, 10, 1, 10, b_greater=True)
    assert cut["p_value"] == pytest.approx(p_cut) and fi["p_value"] == pytest.approx(p_fi)
    # Holm over the two: the smaller p times two, the larger at least that
    assert cut["p_adjusted"] == pytest.approx(min(1.0, 2 * p_cut))
    assert fi["p_adjusted"] == pytest.approx(max(2 * p_cut, p_fi))
    assert cut["problem"] == "regression" and cut["method"] == "fisher-exact"
    assert fi["status"] == "pass" and fi["increase"] == pytest.approx(0.1)
    assert "over the allowance but not significant" in fi["detail"]
    assert "FAIL  regression cut_in.rate (allowed +5.0 pp): 60.0% (12 of 20) vs baseline" in err
    # against itself: no regression, within the allowance
    same = rates(tmp_path / "same.jsonl", 1, 20, 0, 10)
    code, doc, err = gate(capsys, tmp_path, _rate_budget(base), same)
    assert code == ExitCode.OK, err
    assert all("within the allowance" in c["detail"] for c in doc["checks"])
    # an allowance of 60 points takes the 55-point rise, significant or not
    code, doc, err = gate(capsys, tmp_path, _rate_budget(base, "60%"), worse)
    assert code == ExitCode.OK, err
    assert doc["checks"][0]["significant"] is True
    assert "within the allowance" in doc["checks"][0]["detail"]


def test_a_rate_regression_fails_closed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    worse = rates(tmp_path / "worse.jsonl", 12, 20, 1, 10)
    # too few paused turns in the baseline to measure its rate (5 needed by default)
    few = rates(tmp_path / "few.jsonl", 0, 3, 0, 10)
    code, doc, _ = gate(capsys, tmp_path, _rate_budget(few), worse)
    assert code == ExitCode.FAILED
    assert doc["checks"][0]["problem"] == "not enough turns"
    assert "3 turns with planned pauses in the baseline, fewer than 5" in doc["checks"][0]["detail"]
    # sizes that no outcome could make significant: fail, do not pass without evidence
    # (4 a side, min_turns 3: the smallest one-sided p is 1/C(8, 4) = 1/70, times 2 > 0.01)
    tiny = rates(tmp_path / "tiny.jsonl", 0, 4, 0, 4)
    tiny_worse = rates(tmp_path / "tiny_worse.jsonl", 4, 4, 4, 4)
    budget = "[budget]\nmin_turns = 3\n" + _rate_budget(tiny)
    code, doc, _ = gate(capsys, tmp_path, budget, tiny_worse)
    assert code == ExitCode.FAILED
    regs = [c for c in doc["checks"] if c["kind"] == "regression"]
    assert [c["problem"] for c in regs] == ["not enough turns"] * 2
    assert "cannot reach p < 0.01 (Holm over 2)" in regs[0]["detail"]
    # a baseline without turn-taking events
    plain = write_tt_trace(tmp_path / "plain.jsonl", [TTurn()] * 12, scenario=False)
    code, doc, _ = gate(capsys, tmp_path, _rate_budget(plain), worse)
    assert code == ExitCode.FAILED
    assert [c["problem"] for c in doc["checks"]] == ["not in the baseline"] * 2
