"""The CI gate: latency budgets and regressions against a baseline, failing closed.

The public surface::

    from voiceaudit.gate import load_budget, run_gate

    budget = load_budget(Path("voiceaudit.toml"))      # BudgetError (exit 2) names the line
    result = run_gate(["runs/latest"], budget=budget)  # NoDataError when there is no evidence
    result.passed, result.checks                       # Check: observed, ci95, limit, verdict

    from voiceaudit.gate.output import render_junit, render_markdown, render_json

``evaluate(budget, current_report, baseline_report)`` is the pure part, over reports built
by :func:`voiceaudit.analysis.build_report`. docs/ci.md describes the budget format, the
statistics and the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voiceaudit.analysis.ledger import MarkTime
from voiceaudit.analysis.significance import Figure, Increase
from voiceaudit.errors import UsageError
from voiceaudit.gate.budget import (
    METRICS,
    Budget,
    BudgetError,
    Limit,
    Regression,
    find_budget,
    load_budget,
    parse_budget,
)
from voiceaudit.gate.evaluate import Check, GateResult, evaluate, load_traces, required_turns


def run_gate(
    traces: Sequence[str | Path],
    *,
    budget: Budget,
    include_warmup: bool = False,
    mark_time: MarkTime = "auto",
) -> GateResult:
    """Check ``traces`` (files or run directories, merged) against ``budget``."""
    reg = budget.regression
    if reg is not None and not reg.baseline:
        raise UsageError(
            "the budget has a regression table but no baseline",
            hint='set baseline = "PATH" in the regression table, or pass --baseline PATH',
        )
    current = load_traces(traces, role="traces", include_warmup=include_warmup, mark_time=mark_time)
    baseline = None
    if reg is not None:
        baseline = load_traces(
            [str(p) for p in reg.baseline],
            role="baseline",
            include_warmup=include_warmup,
            mark_time=mark_time,
        )
    return evaluate(budget, current, baseline)


__all__ = [
    "METRICS",
    "Budget",
    "BudgetError",
    "Check",
    "Figure",
    "GateResult",
    "Increase",
    "Limit",
    "Regression",
    "evaluate",
    "find_budget",
    "load_budget",
    "load_traces",
    "parse_budget",
    "required_turns",
    "run_gate",
]
