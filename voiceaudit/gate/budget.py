"""Latency budgets: the TOML file, parsed and checked strictly.

A budget lives in ``voiceaudit.toml`` (tables ``[budget]`` and ``[regression]``), in
``pyproject.toml`` (``[tool.voiceaudit.budget]``, ``[tool.voiceaudit.regression]``), or in
any file given with ``--budget``. Everything in it is validated before a trace is read:
an unknown key, metric, figure or segment, a malformed duration or a value of the wrong
type is a :class:`BudgetError` (exit 2) whose message starts with ``FILE:LINE:``. Nothing
is ignored silently, because an ignored line is a check that silently passes.

See docs/ci.md for the format.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voiceaudit.analysis.ledger import ALL_SEGMENTS
from voiceaudit.analysis.phone import CLEAR_LATENCY, GREETING_LATENCY
from voiceaudit.analysis.report import FAILURE_METRICS, FAILURES
from voiceaudit.analysis.significance import (
    DURATION_RE,
    PERCENT_RE,
    Figure,
    Increase,
    number_text,
    parse_increase,
)
from voiceaudit.analysis.turntaking import (
    BARGE_IN_STOP,
    CUT_IN_RATE,
    FALSE_INTERRUPTION_RATE,
    RESPONSE_TO_INTERRUPTION,
)
from voiceaudit.errors import LocatedError, UsageError
from voiceaudit.tomlpos import KINDS, TomlChecker, parse_toml, read_text
from voiceaudit.tomlpos import Path as KeyPath

BUDGET_FILE = "voiceaudit.toml"
PYPROJECT = "pyproject.toml"

VOICE_TO_VOICE = "voice_to_voice"
SEGMENT_PREFIX = "segment."
#: Turn-taking metrics (scenario runs, see docs/ci.md): per-barge-in stop latency and
#: the voice-to-voice of the responses to an interruption (figures of ms values, like
#: voice_to_voice), and two rates (a ``max`` fraction; the names are turntaking's).
TURN_TAKING_METRICS: tuple[str, ...] = (BARGE_IN_STOP, RESPONSE_TO_INTERRUPTION)
RATE_METRICS: tuple[str, ...] = (CUT_IN_RATE, FALSE_INTERRUPTION_RATE)
#: Phone and greeting metrics (docs/ci.md): each session's greeting latency, and each
#: barge-in's onset to the bot's ``clear`` through a phone carrier.
PHONE_METRICS: tuple[str, ...] = (GREETING_LATENCY, CLEAR_LATENCY)
#: Every metric with figures a budget can name: voice-to-voice, each ledger segment, the
#: turn-taking ones and the phone ones.
METRICS: tuple[str, ...] = (
    VOICE_TO_VOICE,
    *(SEGMENT_PREFIX + s for s in ALL_SEGMENTS),
    *TURN_TAKING_METRICS,
    *PHONE_METRICS,
)
#: Dotted metric names by their first part (``barge_in.stop_latency = {...}`` is the table
#: ``barge_in`` in TOML).
_GROUPS: dict[str, tuple[str, ...]] = {
    "barge_in": (BARGE_IN_STOP, CLEAR_LATENCY),
    "cut_in": (CUT_IN_RATE,),
    "false_interruption": (FALSE_INTERRUPTION_RATE,),
}
#: The long-call gate metric (docs/report-format.md, "Long calls"): the Theil-Sen slope of
#: voice-to-voice against time, ms per minute.
DRIFT_SLOPE = "drift.slope_ms_per_min"
_OTHER_KEYS = ("failed_turns", FAILURES, "min_turns", "knee", DRIFT_SLOPE)
#: The failure kinds a ``failures`` table can limit one by one.
FAILURE_KIND_KEYS: tuple[str, ...] = tuple(m.split(".", 1)[1] for m in FAILURE_METRICS[1:])

TestName = Literal["auto", "mann-whitney", "bootstrap"]
TESTS: tuple[str, ...] = ("auto", "mann-whitney", "bootstrap")

DEFAULT_REGRESSION_METRICS = ("voice_to_voice.p50", "voice_to_voice.p95")
DEFAULT_MAX_INCREASE = "10%"
DEFAULT_ALPHA = 0.01

_METRIC_FIGURE = re.compile(r"^(.+)\.(p\d{1,2}(?:\.\d+)?|mean|max|min)$")


#: How budget messages name the kinds of TOML value (a whole number is "a number").
BUDGET_KINDS = {**KINDS, int: "a number", list: "a list"}


class BudgetError(LocatedError, UsageError):
    """A budget file that cannot be used (exit 2); the message names the file and line."""


# -- values ---------------------------------------------------------------------------------


# -- the budget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """An upper limit on one figure of one metric: ``voice_to_voice.p95 <= 1300 ms``."""

    metric: str
    figure: Figure
    limit_ms: float
    #: turns needed for this metric, overriding the budget's ``min_turns``
    min_turns: int | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.figure}"


@dataclass(frozen=True)
class RateLimit:
    """An upper limit on a turn-taking rate: ``cut_in.rate = { max = 0.05 }``."""

    metric: str
    #: a fraction (0.05 for "5%")
    max_rate: float
    #: the rate's denominator needed (turns with planned pauses, sounds), overriding the
    #: budget's ``min_turns``
    min_turns: int | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        return f"{self.metric} <= {number_text(self.max_rate * 100)}%"


@dataclass(frozen=True)
class FailedTurnsLimit:
    """``failed_turns = { max = N, max_share = "P%" }``."""

    max_count: int | None = None
    max_share: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class FailureLimit:
    """An upper limit on failed turns, all kinds (``failures = { max = "1%" }``) or one
    (``failures.reply_cut = { max = 0 }``): a share of the measured turns, or a count."""

    #: ``failures`` or ``failures.KIND``
    metric: str
    #: a fraction (0.01 for "1%"), or None when the limit is a count
    max_share: float | None = None
    #: a number of turns, or None when the limit is a share
    max_count: int | None = None
    #: measured turns needed, overriding the budget's ``min_turns``
    min_turns: int | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        if self.max_share is not None:
            return f"{self.metric} <= {number_text(self.max_share * 100)}%"
        return f"{self.metric} <= {self.max_count} turns"


@dataclass(frozen=True)
class KneeLimit:
    """``knee = { min = 40, margin = "10%" }``: the latency knee (report's concurrency
    view) is at ``min`` concurrent sessions or more; no knee passes only when the traces
    measured ``min`` sessions or more."""

    min_sessions: int
    margin: Increase = field(default_factory=lambda: Increase(relative=0.10))
    line: int | None = None


@dataclass(frozen=True)
class DriftLimit:
    """``drift.slope_ms_per_min = { max = 5 }``: voice-to-voice may grow by at most
    ``max`` ms per minute over the run (the Theil-Sen slope against time); it fails only
    when the slope's whole 95 % interval is above ``max``, and with fewer than 20 turns
    (no trend can be told: fail closed)."""

    max_ms_per_min: float
    line: int | None = None


@dataclass(frozen=True)
class RegressionMetric:
    metric: str
    figure: Figure
    line: int | None = None

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.figure}"


@dataclass(frozen=True)
class RateRegression:
    """A turn-taking rate (``"cut_in.rate"``) or a failure share (``"failures"``,
    ``"failures.reply_cut"``) in ``[regression].metrics``: regressed when
    it is significantly higher than the baseline's (one-sided Fisher's exact test) and
    higher by more than ``max_rate_increase``."""

    metric: str
    line: int | None = None

    @property
    def name(self) -> str:
        return self.metric


@dataclass(frozen=True)
class Regression:
    """``[regression]``: compare against a baseline."""

    #: baseline traces (files or directories); empty when the CLI must supply one
    baseline: tuple[Path, ...]
    metrics: tuple[RegressionMetric, ...]
    max_increase: Increase
    alpha: float
    test: TestName = "auto"
    line: int | None = None
    #: turn-taking rates compared with the baseline's, in file order
    rates: tuple[RateRegression, ...] = ()
    #: how much higher (a fraction: 0.05 is 5 percentage points) a rate may be
    max_rate_increase: float = 0.0


@dataclass(frozen=True)
class Budget:
    """A parsed budget file (or the defaults the CLI builds when only a baseline is given)."""

    path: Path | None = None
    limits: tuple[Limit, ...] = ()
    failed_turns: FailedTurnsLimit | None = None
    #: turns the statistics must have (also the sample size that makes a percentile usable)
    min_turns: int | None = None
    min_turns_line: int | None = None
    regression: Regression | None = None
    knee: KneeLimit | None = None
    drift: DriftLimit | None = None
    #: turn-taking rate limits, in file order
    rates: tuple[RateLimit, ...] = ()
    #: limits on failed turns (all kinds, or one), in file order
    failures: tuple[FailureLimit, ...] = ()
    #: key paths → lines, for messages
    lines: Mapping[KeyPath, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return (
            not self.limits
            and self.failed_turns is None
            and self.min_turns is None
            and self.regression is None
            and self.knee is None
            and self.drift is None
            and not self.rates
            and not self.failures
        )

    def with_baseline(self, baseline: Sequence[Path]) -> Budget:
        """This budget with its regression baseline replaced (``--baseline``); a budget
        without ``[regression]`` gets the default regression checks."""
        from dataclasses import replace

        reg = self.regression or default_regression()
        return replace(self, regression=replace(reg, baseline=tuple(baseline)))


def default_regression() -> Regression:
    return Regression(
        baseline=(),
        metrics=tuple(
            RegressionMetric(*_split_metric_figure(m)) for m in DEFAULT_REGRESSION_METRICS
        ),
        max_increase=Increase(relative=0.10),
        alpha=DEFAULT_ALPHA,
    )


def _split_metric_figure(text: str) -> tuple[str, Figure]:
    m = _METRIC_FIGURE.match(text)
    assert m is not None
    fig = Figure.parse(m.group(2))
    assert fig is not None
    return m.group(1), fig


# -- loading --------------------------------------------------------------------------------


def find_budget(cwd: Path | None = None) -> Path | None:
    """``voiceaudit.toml`` in ``cwd``, else ``pyproject.toml`` if it has a
    ``[tool.voiceaudit]`` table, else None."""
    base = cwd or Path(".")
    own = base / BUDGET_FILE
    if own.is_file():
        return own
    py = base / PYPROJECT
    if py.is_file():
        try:
            doc = tomllib.loads(py.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return py  # let load_budget report the problem with its line
        tool = doc.get("tool")
        if isinstance(tool, dict) and "voiceaudit" in tool:
            return py
    return None


def load_budget(path: Path) -> Budget:
    """Read and validate a budget file (``pyproject.toml``: its ``[tool.voiceaudit]``)."""
    text = read_text(path, error=BudgetError, what="budget file")
    return parse_budget(text, path=path, pyproject=path.name == PYPROJECT)


def parse_budget(text: str, *, path: Path | None = None, pyproject: bool = False) -> Budget:
    """Parse budget TOML text. ``pyproject``: the budget is ``[tool.voiceaudit]``."""
    shown = path or Path("<budget>")
    doc, lines = parse_toml(text, path=shown, error=BudgetError)
    parser = _Parser(shown, lines, BudgetError)
    root: tuple[str, ...] = ()
    if pyproject:
        tool = doc.get("tool")
        table = tool.get("voiceaudit") if isinstance(tool, dict) else None
        if table is None:
            raise BudgetError(
                "no tool.voiceaudit table",
                path=shown,
                hint="add the table tool.voiceaudit.budget and/or tool.voiceaudit.regression",
            )
        root = ("tool", "voiceaudit")
        if not isinstance(table, dict):
            parser.fail(root, "tool.voiceaudit must be a table")
        doc = table
    return parser.budget(doc, root)


class _Parser(TomlChecker):
    kinds = BUDGET_KINDS

    def budget(self, doc: dict[str, Any], root: tuple[str, ...]) -> Budget:
        self.check_keys(
            doc,
            root,
            ["budget", "regression"],
            where=".".join(root) if root else "the budget file",
        )
        limits: list[Limit] = []
        rates: list[RateLimit] = []
        failures: list[FailureLimit] = []
        failed: FailedTurnsLimit | None = None
        min_turns: int | None = None
        min_turns_line: int | None = None
        knee: KneeLimit | None = None
        drift: DriftLimit | None = None
        if "budget" in doc:
            at = (*root, "budget")
            table = self.table(doc["budget"], at, "budget")
            for key, value in table.items():
                here = (*at, key)
                if key == "min_turns":
                    min_turns = self.count(value, here, "min_turns", minimum=1)
                    min_turns_line = self.line(here)
                elif key == "failed_turns":
                    failed = self.failed_turns(value, here)
                elif key == FAILURES:
                    failures += self.failures(value, here)
                elif key.startswith(f"{FAILURES}."):
                    # "failures.reply_cut" = {...}: a quoted key
                    kind = key[len(FAILURES) + 1 :]
                    if kind not in FAILURE_KIND_KEYS:
                        close = difflib.get_close_matches(kind, FAILURE_KIND_KEYS, n=1)
                        self.fail(
                            here,
                            f"unknown failure kind {kind!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else ""),
                            hint="failure kinds: " + ", ".join(FAILURE_KIND_KEYS),
                        )
                    failures.append(self.failure_kind(kind, value, here, None))
                elif key == "knee":
                    knee = self.knee(value, here)
                elif key == DRIFT_SLOPE.split(".")[0]:
                    drift = self.drift(value, here)
                elif key == "segment" and isinstance(value, dict):
                    # segment.NAME = {...} written as a dotted key or a [budget.segment] table
                    for seg, sub in value.items():
                        limits.extend(self.metric_limits(f"segment.{seg}", sub, (*here, seg)))
                elif key in _GROUPS and isinstance(value, dict):
                    # barge_in.stop_latency = {...}, cut_in.rate = {...}: dotted keys
                    for name, sub in value.items():
                        self.group_entry(key, name, sub, (*here, name), limits, rates)
                elif key in RATE_METRICS:
                    rates.append(self.rate_limit(key, value, here))
                else:
                    limits.extend(self.metric_limits(key, value, here))
        self.no_duplicates(limits, rates, failures)
        regression = None
        if "regression" in doc:
            regression = self.regression(doc["regression"], (*root, "regression"))
        budget = Budget(
            path=self.path,
            limits=tuple(limits),
            failed_turns=failed,
            min_turns=min_turns,
            min_turns_line=min_turns_line,
            regression=regression,
            knee=knee,
            drift=drift,
            rates=tuple(rates),
            failures=tuple(failures),
            lines=dict(self.lines),
        )
        if budget.empty:
            self.fail(
                (*root, "budget") if "budget" in doc else root,
                "the budget defines no checks",
                hint='add a budget limit such as voice_to_voice = { p95 = "1300ms" }, '
                "or a regression baseline",
            )
        return budget

    # -- pieces -------------------------------------------------------------------------

    def no_duplicates(
        self,
        limits: Sequence[Limit],
        rates: Sequence[RateLimit],
        failures: Sequence[FailureLimit] = (),
    ) -> None:
        """The same limit twice (``"cut_in.rate"`` and ``cut_in.rate``, or
        ``"segment.X"`` and ``segment.X``: different keys to TOML) is an error."""
        seen: dict[str, int | None] = {}
        named = [(f"{x.metric}.{x.figure}", x.line) for x in limits]
        named += [(x.metric, x.line) for x in rates]
        named += [(x.metric, x.line) for x in failures]
        for name, line in named:
            if name in seen:
                also = f" (also at line {seen[name]})" if seen[name] is not None else ""
                raise BudgetError(
                    f"{name} is limited twice{also}",
                    path=self.path,
                    line=line,
                    hint="keep one limit per figure",
                )
            seen[name] = line

    def metric_name(self, name: str, at: KeyPath) -> str:
        if name in METRICS:
            return name
        if name in _GROUPS:
            known = _GROUPS[name][0]
            self.fail(
                at,
                f"unknown metric {name!r} (did you mean {known!r}?)",
                hint=f"write it like {_example(known)}",
            )
        if name.startswith(SEGMENT_PREFIX):
            seg = name[len(SEGMENT_PREFIX) :]
            close = difflib.get_close_matches(seg, ALL_SEGMENTS, n=1, cutoff=0.6)
            extra = f" (did you mean 'segment.{close[0]}'?)" if close else ""
            self.fail(
                at,
                f"unknown segment {seg!r}{extra}",
                hint=f"segments: {', '.join(ALL_SEGMENTS)}",
            )
        if name in ALL_SEGMENTS:
            self.fail(
                at,
                f"unknown metric {name!r} (did you mean 'segment.{name}'?)",
                hint="segments are named segment.NAME",
            )
        close = difflib.get_close_matches(
            name, [*METRICS, *RATE_METRICS, *_OTHER_KEYS], n=1, cutoff=0.6
        )
        extra = f" (did you mean {close[0]!r}?)" if close else ""
        self.fail(
            at,
            f"unknown metric {name!r}{extra}",
            hint="metrics: voice_to_voice, segment.NAME (a ledger segment), failed_turns, "
            f"failures, min_turns, knee, {DRIFT_SLOPE}; turn-taking: "
            + ", ".join((*TURN_TAKING_METRICS, *RATE_METRICS)),
        )

    def group_entry(
        self,
        group: str,
        name: str,
        value: Any,
        at: KeyPath,
        limits: list[Limit],
        rates: list[RateLimit],
    ) -> None:
        """``GROUP.NAME`` of a dotted turn-taking metric (``barge_in.stop_latency``)."""
        metric = f"{group}.{name}"
        if metric in RATE_METRICS:
            rates.append(self.rate_limit(metric, value, at))
            return
        if metric in METRICS:
            limits.extend(self.metric_limits(metric, value, at))
            return
        known = _GROUPS[group]
        if Figure.parse(name) is not None or name in ("min_turns", "rate"):
            self.fail(
                at,
                f"unknown metric {group!r} (did you mean {known[0]!r}?)",
                hint=f"write it like {_example(known[0])}",
            )
        self.metric_name(metric, at)  # unknown: fails with the closest name

    def rate_limit(self, metric: str, value: Any, at: KeyPath) -> RateLimit:
        if not isinstance(value, dict):
            self.fail(
                at,
                f"{metric} must be a table, not {self.kind(value)}",
                hint=f"write it like {_example(metric)}",
            )
        max_rate: float | None = None
        min_turns: int | None = None
        for key, v in value.items():
            here = (*at, key)
            if key == "max":
                max_rate = self.fraction(v, here, f"{metric}.max")
            elif key == "min_turns":
                min_turns = self.count(v, here, f"{metric}.min_turns", minimum=1)
            else:
                self.unknown(
                    here,
                    ["max", "min_turns"],
                    where=metric,
                    hint=f"{metric} is a rate with an upper limit: {_example(metric)}",
                )
        if max_rate is None:
            self.fail(at, f"{metric}: no limit given", hint=f"write it like {_example(metric)}")
        return RateLimit(metric, max_rate, min_turns, self.line(at))

    def metric_limits(self, name: str, value: Any, at: KeyPath) -> list[Limit]:
        metric = self.metric_name(name, at)
        table = self.table(value, at, f"{name}")
        min_turns = None
        figures: list[tuple[Figure, float, int | None]] = []
        for key, v in table.items():
            here = (*at, key)
            if key == "min_turns":
                min_turns = self.count(v, here, f"{name}.min_turns", minimum=1)
                continue
            fig = Figure.parse(key)
            if fig is None:
                self.fail(
                    here,
                    f"{name}: unknown figure {key!r}",
                    hint="use mean, min, max or a percentile such as p50, p90, p95, p99 "
                    "(and min_turns)",
                )
            if isinstance(v, dict) and fig.q is not None:
                decimals = ", ".join(f'"{key}.{d}"' for d in v)
                self.fail(
                    here,
                    f"{name}.{key} is a table: a percentile with decimals is a dotted key in TOML",
                    hint=f"quote it: {decimals} = ...",
                )
            figures.append((fig, self.duration(v, here, f"{name}.{key}"), self.line(here)))
        if not figures:
            self.fail(
                at,
                f"{name}: no limit given",
                hint=f'write it like {name} = {{ p95 = "1300ms" }}',
            )
        return [Limit(metric, fig, ms, min_turns, line) for fig, ms, line in figures]

    def failed_turns(self, value: Any, at: KeyPath) -> FailedTurnsLimit:
        table = self.table(value, at, "failed_turns")
        max_count = None
        max_share = None
        for key, v in table.items():
            here = (*at, key)
            if key == "max":
                max_count = self.count(v, here, "failed_turns.max", minimum=0)
            elif key == "max_share":
                max_share = self.percent(v, here, "failed_turns.max_share")
            else:
                self.unknown(here, ["max", "max_share"], where="failed_turns")
        if max_count is None and max_share is None:
            self.fail(at, "failed_turns: no limit given", hint="write failed_turns = { max = 0 }")
        return FailedTurnsLimit(max_count, max_share, self.line(at))

    def failures(self, value: Any, at: KeyPath) -> list[FailureLimit]:
        """``failures = { max = "1%", min_turns = 20, reply_cut = { max = 0 } }`` (also
        written ``[budget.failures]`` or ``failures.reply_cut.max = 0``)."""
        table = self.table(value, at, FAILURES)
        known = ["max", "min_turns", *FAILURE_KIND_KEYS]
        overall: tuple[float | None, int | None, int | None] | None = None
        min_turns: int | None = None
        kinds: list[tuple[str, Any, KeyPath]] = []
        for key, v in table.items():
            here = (*at, key)
            if key == "max":
                overall = (*self.failure_max(v, here, "failures.max"), self.line(here))
            elif key == "min_turns":
                min_turns = self.count(v, here, "failures.min_turns", minimum=1)
            elif key in FAILURE_KIND_KEYS:
                kinds.append((key, v, here))
            else:
                self.unknown(
                    here,
                    known,
                    hint='failures takes max (a share such as "1%" or a number of turns), '
                    "min_turns and a table per failure kind: " + ", ".join(FAILURE_KIND_KEYS),
                    where=FAILURES,
                )
        out: list[FailureLimit] = []
        if overall is not None:
            share, count, line = overall
            out.append(FailureLimit(FAILURES, share, count, min_turns, line))
        out += [self.failure_kind(kind, v, here, min_turns) for kind, v, here in kinds]
        if not out:
            self.fail(
                at,
                "failures: no limit given",
                hint='write it like failures = { max = "1%" } or failures.reply_cut = { max = 0 }',
            )
        return out

    def failure_kind(
        self, kind: str, value: Any, at: KeyPath, min_turns: int | None
    ) -> FailureLimit:
        """One kind's limit, ``{ max = …, min_turns = … }`` (``min_turns``: the
        ``failures`` table's, when the kind gives none)."""
        metric = f"{FAILURES}.{kind}"
        sub = self.table(value, at, metric)
        share = count = kmin = None
        seen = False
        for key, x in sub.items():
            there = (*at, key)
            if key == "max":
                share, count = self.failure_max(x, there, f"{metric}.max")
                seen = True
            elif key == "min_turns":
                kmin = self.count(x, there, f"{metric}.min_turns", minimum=1)
            else:
                self.unknown(there, ["max", "min_turns"], where=metric)
        if not seen:
            self.fail(
                at, f"{metric}: no limit given", hint=f"write it like {metric} = {{ max = 0 }}"
            )
        return FailureLimit(
            metric, share, count, kmin if kmin is not None else min_turns, self.line(at)
        )

    def failure_max(self, value: Any, at: KeyPath, what: str) -> tuple[float | None, int | None]:
        """(share, count): ``"1%"`` is a share of the measured turns, a whole number a
        count of turns; anything else (a bare fraction such as 0.01 reads as either) is an
        error."""
        if isinstance(value, str):
            m = PERCENT_RE.match(value)
            if m is not None and float(m.group(1)) <= 100:
                return float(m.group(1)) / 100.0, None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return None, value
        self.fail(
            at,
            f"{what}: {value!r} is neither a percentage nor a number of turns",
            hint='write it like "1%" (a share of the measured turns) or 0 (a number of turns)',
        )

    def knee(self, value: Any, at: KeyPath) -> KneeLimit:
        table = self.table(value, at, "knee")
        minimum: int | None = None
        margin = Increase(relative=0.10)
        for key, v in table.items():
            here = (*at, key)
            if key == "min":
                minimum = self.count(v, here, "knee.min", minimum=2)
            elif key == "margin":
                margin = self.increase(v, here)
            else:
                self.unknown(here, ["min", "margin"], where="knee")
        if minimum is None:
            self.fail(at, "knee: no limit given", hint="write knee = { min = 40 }")
        return KneeLimit(minimum, margin, self.line(at))

    def drift(self, value: Any, at: KeyPath) -> DriftLimit:
        """``drift.slope_ms_per_min = { max = N }`` (N ms per minute, a number >= 0)."""
        name = DRIFT_SLOPE.split(".")[1]
        table = self.table(value, at, "drift")
        self.check_keys(table, at, [name], where="drift")
        if name not in table:
            self.fail(at, "drift: no limit given", hint=f"write {DRIFT_SLOPE} = {{ max = 5 }}")
        here = (*at, name)
        sub = self.table(table[name], here, DRIFT_SLOPE)
        self.check_keys(sub, here, ["max"], where=DRIFT_SLOPE)
        v = sub.get("max")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            self.fail(
                (*here, "max") if "max" in sub else here,
                f"{DRIFT_SLOPE}.max must be a number of ms per minute >= 0, not {v!r}",
                hint=f"write {DRIFT_SLOPE} = {{ max = 5 }}",
            )
        return DriftLimit(float(v), self.line(here))

    def regression(self, value: Any, at: KeyPath) -> Regression:
        table = self.table(value, at, "regression")
        known = ["baseline", "metrics", "max_increase", "max_rate_increase", "alpha", "test"]
        self.check_keys(table, at, known, where="regression")
        baseline: list[Path] = []
        if "baseline" in table:
            here = (*at, "baseline")
            raw = table["baseline"]
            items = raw if isinstance(raw, list) else [raw]
            for i, item in enumerate(items):
                where = (*here, i) if isinstance(raw, list) else here
                if not isinstance(item, str) or not item.strip():
                    self.fail(
                        where,
                        "baseline must be a path (a trace or a run directory), "
                        f"not {self.kind(item)}",
                    )
                p = Path(item)
                if not p.is_absolute():
                    # relative to the budget file's directory
                    p = Path(os.path.normpath(self.path.parent / p))
                baseline.append(p)
            if not baseline:
                self.fail(here, "baseline is an empty list")
        metrics: list[RegressionMetric] = []
        rates: list[RateRegression] = []
        if "metrics" in table:
            here = (*at, "metrics")
            raw = table["metrics"]
            if not isinstance(raw, list) or not raw:
                self.fail(
                    here,
                    "metrics must be a non-empty list such as "
                    '["voice_to_voice.p50", "voice_to_voice.p95"]',
                )
            seen: set[str] = set()
            for i, item in enumerate(raw):
                got = self.regression_metric(item, (*here, i))
                if got.name in seen:
                    self.fail((*here, i), f"metric {got.name!r} is listed twice")
                seen.add(got.name)
                if isinstance(got, RateRegression):
                    rates.append(got)
                else:
                    metrics.append(got)
        else:
            metrics = [
                RegressionMetric(*_split_metric_figure(m), line=self.line(at))
                for m in DEFAULT_REGRESSION_METRICS
            ]
        increase = Increase(relative=0.10)
        if "max_increase" in table:
            increase = self.increase(table["max_increase"], (*at, "max_increase"))
        max_rate_increase = 0.0
        if "max_rate_increase" in table:
            max_rate_increase = self.fraction(
                table["max_rate_increase"], (*at, "max_rate_increase"), "max_rate_increase"
            )
        alpha = DEFAULT_ALPHA
        if "alpha" in table:
            here = (*at, "alpha")
            v = table["alpha"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 0.5:
                self.fail(here, f"alpha must be a number in (0, 0.5], not {v!r}")
            alpha = float(v)
        test: TestName = "auto"
        if "test" in table:
            here = (*at, "test")
            v = table["test"]
            if v not in TESTS:
                self.fail(here, f"unknown test {v!r}", hint=f"use one of: {', '.join(TESTS)}")
            test = v
        return Regression(
            tuple(baseline),
            tuple(metrics),
            increase,
            alpha,
            test,
            self.line(at),
            tuple(rates),
            max_rate_increase,
        )

    def regression_metric(self, item: Any, at: KeyPath) -> RegressionMetric | RateRegression:
        if not isinstance(item, str):
            self.fail(
                at,
                "a regression metric must be a string like 'voice_to_voice.p95', "
                f"not {self.kind(item)}",
            )
        if item in RATE_METRICS or item in FAILURE_METRICS:
            return RateRegression(item, self.line(at))
        m = _METRIC_FIGURE.match(item)
        if m is not None and (m.group(1) in RATE_METRICS or m.group(1) in FAILURE_METRICS):
            self.fail(
                at,
                f"{item!r}: a rate has no figure to compare",
                hint=f"write it as {m.group(1)!r} (and max_rate_increase for an allowance)",
            )
        if m is None and item.startswith(f"{FAILURES}."):
            self.fail(
                at,
                f"{item!r}: unknown failure kind {item.split('.', 1)[1]!r}",
                hint="failure kinds: " + ", ".join(FAILURE_KIND_KEYS),
            )
        if m is None:
            self.fail(
                at,
                f"{item!r} is not METRIC.FIGURE",
                hint="write it like voice_to_voice.p50, voice_to_voice.mean or "
                "segment.model_first_token.p95",
            )
        metric = self.metric_name(m.group(1), at)
        fig = Figure.parse(m.group(2))
        if fig is None:
            self.fail(at, f"{item!r}: unknown figure {m.group(2)!r}")
        if fig.name in ("min", "max"):
            self.fail(
                at,
                f"{item!r}: a regression needs a figure a test can compare (mean or a percentile)",
                hint="the min and max of a run are single turns: use a percentile such as p95",
            )
        return RegressionMetric(metric, fig, self.line(at))

    # -- scalars --------------------------------------------------------------------------

    def duration(self, value: Any, at: KeyPath, what: str) -> float:
        if isinstance(value, str):
            m = DURATION_RE.match(value)
            if m is not None:
                x = float(m.group(1))
                ms = x if m.group(2) == "ms" else x * 1000.0
                if math.isfinite(ms):
                    return ms
            self.fail(
                at, f"{what}: {value!r} is not a duration", hint='write it like "800ms" or "1.3s"'
            )
        self.fail(
            at,
            f"{what}: {value!r} is not a duration (a duration is a string with a unit)",
            hint=f'write it like "{value}ms"'
            if _is_number(value)
            else 'write it like "800ms" or "1.3s"',
        )

    def percent(self, value: Any, at: KeyPath, what: str) -> float:
        if isinstance(value, str):
            m = PERCENT_RE.match(value)
            if m is not None and float(m.group(1)) <= 100:
                return float(m.group(1)) / 100.0
        self.fail(at, f"{what}: {value!r} is not a percentage", hint='write it like "5%"')

    def increase(self, value: Any, at: KeyPath) -> Increase:
        inc = parse_increase(value) if isinstance(value, str) else None
        if inc is not None:
            return inc
        self.fail(
            at,
            f"{at[-1] if at else 'max_increase'}: {value!r} is neither a percentage nor a duration",
            hint='write it like "10%" or "50ms"',
        )

    def fraction(self, value: Any, at: KeyPath, what: str) -> float:
        """A fraction in [0, 1], or a percentage string ("5%")."""
        if isinstance(value, str):
            m = PERCENT_RE.match(value)
            if m is not None and float(m.group(1)) <= 100:
                return float(m.group(1)) / 100.0
        elif _is_number(value) and 0 <= value <= 1:
            return float(value)
        self.fail(
            at,
            f"{what} must be a fraction from 0 to 1 or a percentage, not {value!r}",
            hint='write it like 0.05 or "5%"',
        )

    def count(self, value: Any, at: KeyPath, what: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(at, f"{what} must be a whole number ≥ {minimum}, not {value!r}")
        assert isinstance(value, int)
        return value


def _example(metric: str) -> str:
    if metric in RATE_METRICS:
        return f"{metric} = {{ max = 0.05 }}"
    return f'{metric} = {{ p95 = "500ms" }}'


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float)
