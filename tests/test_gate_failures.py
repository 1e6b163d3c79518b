"""The gate's ``failures`` metric: the share (or count) of failed turns, overall and per
failure kind, as a budget limit and as a regression against a baseline; and budget
files whose unknown keys are errors naming FILE:LINE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from failure_traces import CUT, OK, Turn, failed, write

from voiceaudit.analysis.stats import fisher_exact
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode
from voiceaudit.gate.budget import BudgetError, FailureLimit, parse_budget
from voiceaudit.gate.evaluate import Check, evaluate, load_traces


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def trace(tmp_path: Path, name: str, cut: int, timeouts: int = 0, ok: int = 38) -> Path:
    """``ok`` good turns, ``cut`` cut replies (heard), ``timeouts`` timeouts (old style)."""
    turns: list[Turn] = [OK] * ok
    turns += [failed(CUT, "reply_cut", heard=True) for _ in range(cut)]
    turns += [failed("timeout: no reply audio within 10 s") for _ in range(timeouts)]
    return write(tmp_path / name / "trace.jsonl", turns, run_id=name)


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # one table, the three ways TOML can write it
        '[budget]\nfailures = { max = "1%", min_turns = 20, reply_cut = { max = 0 } }\n',
        '[budget.failures]\nmax = "1%"\nmin_turns = 20\nreply_cut = { max = 0 }\n',
        '[budget]\nfailures.max = "1%"\nfailures.min_turns = 20\nfailures.reply_cut.max = 0\n',
    ],
)
def test_the_failures_table(text: str) -> None:
    b = parse_budget(text)
    assert [(f.metric, f.max_share, f.max_count, f.min_turns) for f in b.failures] == [
        ("failures", 0.01, None, 20),
        ("failures.reply_cut", None, 0, 20),  # the table's min_turns applies to its kinds
    ]
    assert [f.name for f in b.failures] == ["failures <= 1%", "failures.reply_cut <= 0 turns"]
    assert not b.empty


def test_a_kind_alone_and_its_own_min_turns() -> None:
    b = parse_budget('[budget]\nfailures.timeout = { max = "0.5%", min_turns = 200 }\n')
    assert b.failures == (FailureLimit("failures.timeout", 0.005, None, 200, 2),)


def test_a_kind_as_a_quoted_key() -> None:
    b = parse_budget('[budget]\n"failures.reply_cut" = { max = 1 }\nmin_turns = 3\n')
    assert b.failures == (FailureLimit("failures.reply_cut", None, 1, None, 2),)


def _error(text: str) -> BudgetError:
    with pytest.raises(BudgetError) as ei:
        parse_budget(text, path=Path("/ci/voiceaudit.toml"))
    return ei.value


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            '[budget]\nmin_turns = 3\nfailures = { max = "1%", mx = 2 }\n',
            3,
            ["unknown key 'mx' in failures", "reply_cut"],
        ),
        (
            "[budget.failures]\nreply_cut = { max = 0 }\nreply_cutt = { max = 0 }\n",
            3,
            ["unknown key 'reply_cutt' in failures", "did you mean 'reply_cut'?"],
        ),
        (
            "[budget.failures]\ntimeout = { max = 0, maxx = 1 }\n",
            2,
            ["unknown key 'maxx' in failures.timeout"],
        ),
        ("[budget.failures]\nmin_turns = 5\n", 1, ["failures: no limit given"]),
        ("[budget.failures]\ntimeout = { min_turns = 5 }\n", 2, ["failures.timeout: no limit"]),
        ("[budget]\nfailures = { max = 0.01 }\n", 2, ["neither a percentage nor a number", '"1%"']),
        ('[budget]\nfailures = { max = "0" }\n', 2, ["neither a percentage nor a number"]),
        ("[budget]\nfailures = { max = -1 }\n", 2, ["neither a percentage nor a number"]),
        ('[budget]\nfailures = { max = "150%" }\n', 2, ["neither a percentage"]),
        ("[budget]\nfailures = { max = true }\n", 2, ["neither a percentage"]),
        ('[budget]\nfailures = "1%"\n', 2, ["failures must be a table"]),
        ("[budget.failures]\ntimeout = 0\n", 2, ["failures.timeout must be a table"]),
        ('[budget]\n"failures.cut" = { max = 0 }\n', 2, ["unknown failure kind 'cut'"]),
        (
            '[budget.failures]\nreply_cut = { max = 0 }\n[budget]\n"failures.reply_cut" = '
            "{ max = 1 }\n",
            4,
            ["failures.reply_cut is limited twice (also at line 2)"],
        ),
        # unknown keys elsewhere say where they are too
        ("[budget]\nknee = { min = 4, x = 1 }\n", 2, ["unknown key 'x' in knee"]),
        (
            '[budget]\nmin_turns = 3\n[regression]\nbaseline = "b"\nmetrics = ["failures.cut"]\n',
            5,
            ["unknown failure kind 'cut'", "reply_cut"],
        ),
        (
            '[budget]\nmin_turns = 3\n[regression]\nbaseline = "b"\nmetrics = ["failures.p95"]\n',
            5,
            ["a rate has no figure"],
        ),
        (
            "[budget]\nmin_turns = 3\n[other]\nx = 1\n",
            3,
            ["unknown key 'other' in the budget file"],
        ),
    ],
)
def test_errors_name_the_file_and_line(text: str, line: int, words: list[str]) -> None:
    err = _error(text)
    assert err.message.startswith(f"/ci/voiceaudit.toml:{line}: "), err.message
    full = err.message + " " + (err.hint or "")
    for w in words:
        assert w in full, (w, full)


def test_failures_in_regression_metrics_are_rates() -> None:
    b = parse_budget(
        '[regression]\nbaseline = "b"\nmetrics = ["voice_to_voice.p50", "failures", '
        '"failures.reply_cut"]\nmax_rate_increase = "2%"\n'
    )
    assert b.regression is not None
    assert [r.metric for r in b.regression.rates] == ["failures", "failures.reply_cut"]
    assert b.regression.max_rate_increase == 0.02


# -- checks ---------------------------------------------------------------------------------


def _checks(tmp_path: Path, budget: str, cut: int, timeouts: int = 0) -> dict[str, Check]:
    report = load_traces([trace(tmp_path, "cur", cut, timeouts)])
    result = evaluate(parse_budget(budget), report)
    return {c.name: c for c in result.checks}


def test_a_share_limit_passes_and_fails_on_the_injected_count(tmp_path: Path) -> None:
    # 2 cut replies of 40 measured turns: 5%
    budget = (
        "[budget.failures]\n"
        'max = "10%"\n'
        'reply_cut = { max = "1%" }\n'
        "timeout = { max = 0 }\n"
        "connect_failed = { max = 2 }\n"
    )
    by = _checks(tmp_path, budget, cut=2)
    overall = by["failures <= 10%"]
    assert overall.passed and overall.observed == pytest.approx(0.05)
    assert (overall.count, overall.n) == (2, 40)
    assert "2 of 40 measured turns failed (reply cut 2)" in overall.detail
    cut = by["failures.reply_cut <= 1%"]
    assert not cut.passed and cut.problem == "over the limit"
    assert CUT in cut.detail  # the first reason, for the log
    assert by["failures.timeout <= 0 turns"].passed
    assert by["failures.connect_failed <= 2 turns"].passed


def test_a_count_over_its_limit_fails_however_few_turns(tmp_path: Path) -> None:
    report = load_traces([write(tmp_path / "t.jsonl", [OK, OK, failed("timeout: x")])])
    budget = parse_budget("[budget.failures]\ntimeout = { max = 0 }\nreply_cut = { max = 0 }\n")
    by = {c.name: c for c in evaluate(budget, report).checks}
    assert by["failures.timeout <= 0 turns"].problem == "over the limit"
    # nothing over the limit, but 3 turns are not evidence of a pass (fails closed)
    assert by["failures.reply_cut <= 0 turns"].problem == "not enough turns"


def test_the_gate_cli_fails_on_the_failures_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = trace(tmp_path, "cur", cut=1)
    cfg = tmp_path / "voiceaudit.toml"
    cfg.write_text('[budget]\nfailures = { max = "1%" }\n', encoding="utf-8")
    code = run(["gate", str(path), "--budget", str(cfg), "--json"])
    out, err = capsys.readouterr()
    assert code == ExitCode.FAILED, err
    (check,) = json.loads(out)["checks"]
    assert check["kind"] == "failures" and check["unit"] == "fraction"
    assert (check["count"], check["n"], check["observed"]) == (1, 39, round(1 / 39, 5))
    assert check["line"] == 2 and check["status"] == "fail"
    cfg.write_text('[budget]\nfailures = { max = "5%" }\n', encoding="utf-8")
    assert run(["gate", str(path), "--budget", str(cfg)]) == 0
    capsys.readouterr()


def test_an_unknown_key_in_a_budget_file_is_exit_2_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = trace(tmp_path, "cur", cut=0, ok=5)
    cfg = tmp_path / "voiceaudit.toml"
    cfg.write_text('[budget]\nmin_turns = 3\nfailures = { max = "1%", reply = 0 }\n', "utf-8")
    code = run(["gate", str(path), "--budget", str(cfg)])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert f"{cfg}:3: unknown key 'reply' in failures" in err
    assert "Traceback" not in err


def test_a_failure_share_regression_against_the_baseline(tmp_path: Path) -> None:
    base = load_traces([trace(tmp_path, "base", cut=0, ok=40)], role="baseline")
    worse = load_traces([trace(tmp_path, "cur", cut=12, ok=28)])
    same = load_traces([trace(tmp_path, "same", cut=0, ok=40)])
    budget = parse_budget(
        '[regression]\nmetrics = ["failures", "failures.reply_cut", "failures.timeout"]\n'
        'max_rate_increase = "5%"\nalpha = 0.05\n'
    )
    by = {c.metric: c for c in evaluate(budget, worse, base).checks}
    f = by["failures"]
    assert not f.passed and f.problem == "regression"
    assert (f.baseline_count, f.baseline_n, f.count, f.n) == (0, 40, 12, 40)
    assert f.p_value == pytest.approx(fisher_exact(0, 40, 12, 40, b_greater=True))
    assert by["failures.reply_cut"].problem == "regression"
    assert by["failures.timeout"].passed  # 0 of 40 on both sides
    assert all(c.passed for c in evaluate(budget, same, base).checks)
