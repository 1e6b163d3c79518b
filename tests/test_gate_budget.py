"""Budget files: parsing, strict validation with the line named, and the TOML key locator."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import budget_toml
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceaudit.errors import ExitCode, InputError, LocatedError, UsageError
from voiceaudit.gate.budget import (
    Budget,
    BudgetError,
    Figure,
    Increase,
    find_budget,
    load_budget,
    parse_budget,
)
from voiceaudit.tomlpos import TomlChecker, key_lines, line_of, parse_toml

ISSUE_EXAMPLE = budget_toml('p50 = "800ms", p95 = "1300ms"', 'p95 = "400ms"', min_turns=20) + (
    """
[regression]
baseline = "baselines/main"       # a trace or directory
metrics = ["voice_to_voice.p50", "voice_to_voice.p95"]
max_increase = "10%"              # and significant at alpha
alpha = 0.01
"""
)


def _parse(text: str, name: str = "voiceaudit.toml") -> Budget:
    return parse_budget(text, path=Path("/proj") / name, pyproject=name == "pyproject.toml")


def _error(text: str, name: str = "voiceaudit.toml") -> BudgetError:
    with pytest.raises(BudgetError) as info:
        _parse(text, name)
    assert info.value.exit_code == ExitCode.USAGE
    return info.value


# -- the issue's example ------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    b = _parse(ISSUE_EXAMPLE)
    assert [(lim.name, lim.limit_ms, lim.line) for lim in b.limits] == [
        ("voice_to_voice.p50", 800.0, 2),
        ("voice_to_voice.p95", 1300.0, 2),
        ("segment.model_first_token.p95", 400.0, 3),
        ("segment.leading_silence.max", 50.0, 4),
    ]
    assert b.limits[0].figure == Figure("p50", 50.0)
    assert b.limits[3].figure == Figure("max")
    assert b.failed_turns is not None and b.failed_turns.max_count == 0
    assert b.failed_turns.line == 5
    assert (b.min_turns, b.min_turns_line) == (20, 6)
    reg = b.regression
    assert reg is not None
    assert reg.baseline == (Path("/proj/baselines/main"),)  # relative to the budget file
    assert [m.name for m in reg.metrics] == ["voice_to_voice.p50", "voice_to_voice.p95"]
    assert reg.max_increase == Increase(relative=0.10)
    assert reg.alpha == 0.01
    assert reg.test == "auto"


def test_the_same_budget_in_pyproject() -> None:
    text = "[project]\nname = 'x'\n\n" + ISSUE_EXAMPLE.replace(
        "[budget]", "[tool.voiceaudit.budget]"
    ).replace("[regression]", "[tool.voiceaudit.regression]")
    b = _parse(text, "pyproject.toml")
    own = _parse(ISSUE_EXAMPLE)
    assert [(lim.name, lim.limit_ms, lim.line) for lim in b.limits] == [
        (lim.name, lim.limit_ms, None if lim.line is None else lim.line + 3) for lim in own.limits
    ]
    assert b.regression is not None and own.regression is not None
    assert b.regression.baseline == own.regression.baseline


def test_other_spellings_of_the_same_limits() -> None:
    text = """\
[budget]
segment.model_first_token = { p95 = "0.4s" }
voice_to_voice.p50 = "800 ms"

[budget.segment.endpointing]
mean = "650ms"
"p99.9" = "900ms"
min_turns = 40
"""
    b = _parse(text)
    got = {(lim.name, lim.limit_ms, lim.min_turns, lim.line) for lim in b.limits}
    assert got == {
        ("segment.model_first_token.p95", 400.0, None, 2),
        ("voice_to_voice.p50", 800.0, None, 3),
        ("segment.endpointing.mean", 650.0, 40, 6),
        ("segment.endpointing.p99.9", 900.0, 40, 7),
    }


def test_max_increase_as_a_duration_and_tests() -> None:
    b = _parse(
        '[regression]\nbaseline = ["a", "/abs/b"]\nmax_increase = "50ms"\ntest = "bootstrap"\n'
        'metrics = ["segment.transport.mean", "voice_to_voice.p99.9"]\n'
    )
    reg = b.regression
    assert reg is not None
    assert reg.baseline == (Path("/proj/a"), Path("/abs/b"))
    assert reg.max_increase == Increase(absolute_ms=50.0)
    assert reg.max_increase.allowed(100.0) == 150.0
    assert reg.test == "bootstrap"
    assert [(m.metric, m.figure.q) for m in reg.metrics] == [
        ("segment.transport", None),
        ("voice_to_voice", 99.9),
    ]


def test_regression_defaults() -> None:
    reg = _parse('[regression]\nbaseline = "b"\n').regression
    assert reg is not None
    assert [m.name for m in reg.metrics] == ["voice_to_voice.p50", "voice_to_voice.p95"]
    assert (reg.max_increase, reg.alpha, reg.test) == (Increase(relative=0.1), 0.01, "auto")


# -- errors that name the line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # unknown keys, at every level
        ("[budget]\nmin_turns = 5\n[budgets]\nx = 1\n", 3, ["unknown key 'budgets'", "'budget'"]),
        (
            '[budget]\nvoice_to_voice = { p50 = "1s" }\n\n[regression]\nbaseline = "b"\n'
            "max_increse = '5%'\n",
            6,
            ["unknown key 'max_increse' in regression", "'max_increase'"],
        ),
        (
            "[budget]\nfailed_turns = { max = 0, min = 1 }\n",
            2,
            ["unknown key 'min' in failed_turns"],
        ),
        # unknown metrics and segments
        (
            '[budget]\nmin_turns = 3\nvoice_to_vioce = { p50 = "1s" }\n',
            3,
            ["unknown metric 'voice_to_vioce'", "'voice_to_voice'"],
        ),
        (
            '[budget]\n\n"segment.model_first_tokn" = { p95 = "400ms" }\n',
            3,
            ["unknown segment 'model_first_tokn'", "segment.model_first_token"],
        ),
        (
            '[budget]\nmodel_first_token = { p95 = "400ms" }\n',
            2,
            ["unknown metric 'model_first_token'", "segment.model_first_token"],
        ),
        (
            '[budget.segment.endpointng]\np50 = "1s"\n',
            1,
            ["unknown segment 'endpointng'", "segment.endpointing"],
        ),
        (
            '[regression]\nbaseline = "b"\nmetrics = [\n  "voice_to_voice.p50",\n'
            '  "segment.trnsport.p95",\n]\n',
            5,
            ["unknown segment 'trnsport'"],
        ),
        # unknown figures
        ('[budget.voice_to_voice]\np50 = "1s"\nmedian = "1s"\n', 3, ["figure 'median'"]),
        ('[budget]\nvoice_to_voice = { p100 = "1s" }\n', 2, ["unknown figure 'p100'"]),
        ('[budget]\nvoice_to_voice.p99.9 = "1s"\n', 2, ["quote it", '"p99.9"']),
        (
            '[regression]\nbaseline = "b"\nmetrics = ["voice_to_voice.max"]\n',
            3,
            ["mean or a percentile"],
        ),
        (
            '[regression]\nbaseline = "b"\nmetrics = ["voice_to_voice"]\n',
            3,
            ["is not METRIC.FIGURE"],
        ),
        # malformed durations and values
        ('[budget]\nvoice_to_voice = { p95 = "1300" }\n', 2, ["'1300' is not a duration"]),
        ("[budget]\nvoice_to_voice = { p95 = 1300 }\n", 2, ["1300 is not a duration", '"1300ms"']),
        ('[budget]\nvoice_to_voice = { p95 = "1.3 sec" }\n', 2, ["not a duration"]),
        ('[budget]\nvoice_to_voice = { p95 = "-5ms" }\n', 2, ["not a duration"]),
        ('[budget]\nvoice_to_voice = { p95 = "1e3ms" }\n', 2, ["not a duration"]),
        ('[budget]\nvoice_to_voice = "800ms"\n', 2, ["must be a table"]),
        ("[budget]\nvoice_to_voice = {}\n", 2, ["no limit given"]),
        ("[budget]\nmin_turns = 0\n", 2, ["min_turns must be a whole number ≥ 1"]),
        ("[budget]\nmin_turns = true\n", 2, ["min_turns must be a whole number"]),
        ('[budget]\nmin_turns = "20"\n', 2, ["min_turns must be a whole number"]),
        ("[budget]\nfailed_turns = { max = -1 }\n", 2, ["failed_turns.max must be"]),
        ("[budget]\nfailed_turns = { max_share = 0.05 }\n", 2, ["not a percentage"]),
        ("[budget]\nfailed_turns = {}\n", 2, ["failed_turns: no limit given"]),
        ('[regression]\nbaseline = "b"\nmax_increase = 10\n', 3, ["neither a percentage nor"]),
        ('[regression]\nbaseline = "b"\nmax_increase = "ten%"\n', 3, ["neither a percentage nor"]),
        ('[regression]\nbaseline = "b"\nalpha = 0.9\n', 3, ["alpha must be a number in (0, 0.5]"]),
        ('[regression]\nbaseline = "b"\nalpha = 0\n', 3, ["alpha must be"]),
        ('[regression]\nbaseline = "b"\ntest = "t-test"\n', 3, ["unknown test 't-test'"]),
        ("[regression]\nbaseline = 3\n", 2, ["baseline must be a path"]),
        ('[regression]\nbaseline = ["a",\n  ""]\n', 3, ["baseline must be a path"]),
        ("[regression]\nbaseline = []\n", 2, ["baseline is an empty list"]),
        ('[regression]\nbaseline = "b"\nmetrics = []\n', 3, ["metrics must be a non-empty list"]),
        (
            '[regression]\nbaseline = "b"\n'
            'metrics = ["voice_to_voice.p50", "voice_to_voice.p50"]\n',
            3,
            ["listed twice"],
        ),
        ("budget = 3\n", 1, ["budget must be a table, not a number"]),
        # nothing to check is not a pass
        ("[budget]\n", 1, ["no checks"]),
        ("# only a comment\n", None, ["no checks"]),
    ],
)
def test_errors_name_the_line(text: str, line: int | None, words: list[str]) -> None:
    err = _error(text)
    where = "/proj/voiceaudit.toml:" + (f"{line}: " if line is not None else " ")
    assert err.message.startswith(where), err.message
    assert err.line == line
    full = err.message + " " + (err.hint or "")
    for w in words:
        assert w in full, (w, full)
    assert "\n" not in err.message


def test_a_file_that_is_not_toml_names_its_line() -> None:
    err = _error('[budget]\nvoice_to_voice = { p95 = "1300ms" \nmin_turns = 3\n')
    assert err.message.startswith("/proj/voiceaudit.toml:2: not valid TOML:"), err.message
    err = _error("[budget]\nmin_turns = 3\nmin_turns = 4\n")
    assert err.message.startswith("/proj/voiceaudit.toml:3: not valid TOML:"), err.message


def test_pyproject_errors_name_the_line() -> None:
    text = '[project]\nname = "x"\n[tool.voiceaudit]\nbudget.min_turns = 3\nbugdet = 1\n'
    err = _error(text, "pyproject.toml")
    assert err.message.startswith("/proj/pyproject.toml:5: unknown key 'bugdet'"), err.message
    err = _error('[project]\nname = "x"\n', "pyproject.toml")
    assert "no tool.voiceaudit table" in err.message


def test_load_budget_from_files(tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="no such budget file"):
        load_budget(tmp_path / "missing.toml")
    with pytest.raises(BudgetError, match="is a directory"):
        load_budget(tmp_path)
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe[budget]")
    with pytest.raises(BudgetError, match="not UTF-8"):
        load_budget(bad)
    good = tmp_path / "ok.toml"
    good.write_text(ISSUE_EXAMPLE)
    assert load_budget(good).path == good


def test_find_budget(tmp_path: Path) -> None:
    assert find_budget(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_budget(tmp_path) is None  # no [tool.voiceaudit]: not a budget
    (tmp_path / "pyproject.toml").write_text("[tool.voiceaudit.budget]\nmin_turns = 3\n")
    assert find_budget(tmp_path) == tmp_path / "pyproject.toml"
    (tmp_path / "voiceaudit.toml").write_text("[budget]\nmin_turns = 3\n")
    assert find_budget(tmp_path) == tmp_path / "voiceaudit.toml"


# -- the key locator ----------------------------------------------------------------------

TRICKY = '''\
# a comment with key = "value"
title = "x = 1"   # trailing
"quoted.key" = 1
'lit' = 'a # not a comment'
ml = """
fake = 1
[fake]
"""
ml2 = \'\'\'
[[also.fake]]
\'\'\'
arr = [
  1,   # one
  [2, 3],
  { a = 1, b = { c = 2 } },
]

[budget]
voice_to_voice = { p50 = "800ms", p95 = "1300ms" }
a.b.c = true
"esc\\"aped" = 1

[[runs]]
name = "first"

[[runs]]
name = "second"
[runs.extra]
x = 1

[ tool . "voice audit" ]
y = 1979-05-27 07:32:00Z
'''


class _FileError(LocatedError, UsageError):
    pass


def test_parse_toml_and_the_checker_name_the_file_and_line() -> None:
    """The shared TOML front end of budget, scenario and sweep files."""
    f = Path("/proj/f.toml")
    with pytest.raises(_FileError) as info:
        parse_toml("a = 1\nb = \n", path=f, error=_FileError)
    err = info.value
    assert err.message == "/proj/f.toml:2: not valid TOML: Invalid value (column 5)"
    assert (err.path, err.line, err.exit_code) == (f, 2, ExitCode.USAGE)
    with pytest.raises(_FileError) as info:
        parse_toml("a = [1,\n", path=f, error=_FileError)
    assert info.value.message == "/proj/f.toml: not valid TOML: Invalid value (at end of document)"
    assert info.value.line is None
    doc, lines = parse_toml("a = 1\n[t]\nb = { c = 2 }\n", path=f, error=_FileError)
    assert doc == {"a": 1, "t": {"b": {"c": 2}}}
    check = TomlChecker(f, lines, _FileError)
    assert check.error_at(("t", "b", "d"), "no d", "hint").message == "/proj/f.toml:3: no d"
    assert check.error_at(("nowhere",), "lost").message == "/proj/f.toml: lost"
    with pytest.raises(_FileError, match=r"^/proj/f.toml:1: bad a$"):
        check.fail(("a",), "bad a")


def test_the_located_errors_keep_their_exit_codes() -> None:
    from voiceaudit.cli.sweep_cmd import SweepFileError
    from voiceaudit.scenario import ScenarioAudioError, ScenarioError

    for cls in (BudgetError, ScenarioError, SweepFileError):
        assert issubclass(cls, LocatedError) and issubclass(cls, UsageError), cls
        assert not issubclass(cls, InputError) and cls.exit_code == ExitCode.USAGE, cls
    assert issubclass(ScenarioAudioError, InputError)
    assert ScenarioAudioError.exit_code == ExitCode.BAD_INPUT


def test_key_lines_of_a_tricky_document() -> None:
    tomllib.loads(TRICKY)  # valid TOML
    lines = key_lines(TRICKY)
    expect: dict[tuple[str | int, ...], int] = {
        ("title",): 2,
        ("quoted.key",): 3,
        ("lit",): 4,
        ("ml",): 5,
        ("ml2",): 9,
        ("arr",): 12,
        ("arr", 0): 13,
        ("arr", 1): 14,
        ("arr", 1, 0): 14,
        ("arr", 2): 15,
        ("arr", 2, "b", "c"): 15,
        ("budget",): 18,
        ("budget", "voice_to_voice", "p95"): 19,
        ("budget", "a", "b", "c"): 20,
        ("budget", 'esc"aped'): 21,
        ("runs", 0): 23,
        ("runs", 0, "name"): 24,
        ("runs", 1, "name"): 27,
        ("runs", 1, "extra", "x"): 29,
        ("tool", "voice audit", "y"): 32,
    }
    for path, line in expect.items():
        assert lines.get(path) == line, (path, lines.get(path), line)
    assert ("fake",) not in lines and ("also",) not in lines
    assert line_of(lines, ("budget", "voice_to_voice", "p99")) == 19  # nearest known prefix


_key = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
_scalar = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.sampled_from(["true", "false", "1.5", "-0.25", "1979-05-27"]),
    st.text(alphabet="ab #=[]{}'\\\n", max_size=8).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'
    ),
    st.text(alphabet='ab #=[]{}"', max_size=8).map(lambda s: "'" + s + "'"),
    st.text(alphabet="ab #=[]\n", max_size=12).map(lambda s: '"""' + s + '"""'),
)


@st.composite
def _documents(draw: Any) -> tuple[str, dict[tuple[str | int, ...], int]]:
    """Random TOML with the line of every key known by construction."""
    out: list[str] = []
    expect: dict[tuple[str | int, ...], int] = {}
    tables = draw(st.lists(_key, min_size=1, max_size=4, unique=True))
    for t in tables:
        for _ in range(draw(st.integers(0, 2))):
            out.append(draw(st.sampled_from(["", "# c", "  # x = 1"])))
        out.append(f"[{t}]")
        expect[(t,)] = len(out)
        for k in draw(st.lists(_key, max_size=4, unique=True)):
            form = draw(st.sampled_from(["scalar", "inline", "array"]))
            line = len(out) + 1
            if form == "scalar":
                v = draw(_scalar)
                out.extend(f"{k} = {v}   # tail".split("\n"))
            elif form == "inline":
                subs = draw(st.lists(_key, min_size=1, max_size=3, unique=True))
                out.append(
                    f"{k} = {{ "
                    + ", ".join(f"{s} = {draw(_scalar)}".replace("\n", "\\n") for s in subs)
                    + " }"
                )
                for s in subs:
                    expect[(t, k, s)] = line
            else:
                items = draw(
                    st.lists(_scalar.filter(lambda v: "\n" not in v), min_size=1, max_size=3)
                )
                out.append(f"{k} = [")
                for i, v in enumerate(items):
                    out.append(f"  {v},")
                    expect[(t, k, i)] = line + 1 + i
                out.append("]")
            expect[(t, k)] = line
    return "\n".join(out) + "\n", expect


@settings(max_examples=150, deadline=None)
@given(_documents())
def test_key_lines_on_generated_documents(
    doc: tuple[str, dict[tuple[str | int, ...], int]],
) -> None:
    text, expect = doc
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the generator can make an invalid string; only valid TOML is in scope
    lines = key_lines(text)
    for path, line in expect.items():
        assert lines.get(path) == line, (path, text)
