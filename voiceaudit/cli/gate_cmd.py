"""`voiceaudit gate`: check traces against latency budgets and a baseline, for CI.

Exit 0 when every check passes, 1 when one fails, 2 for a bad command line or budget
file, 3 for an unreadable trace, 5 when there is no evidence to judge (see docs/ci.md).
The summary goes to stderr; ``--json`` puts the result document on stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from voiceaudit.cli.console import err_console
from voiceaudit.errors import ExitCode, UsageError

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate(
        traces: list[Path] = typer.Argument(
            ...,
            help="Trace files or run directories to check (merged into one population); "
            "call recordings (.wav, .flac, .ogg) or directories of them (docs/recordings.md).",
            show_default=False,
        ),
        budget_file: Path | None = typer.Option(
            None,
            "--budget",
            "-b",
            help="Budget file (default: ./voiceaudit.toml, else \\[tool.voiceaudit] in "
            "./pyproject.toml).",
            show_default=False,
        ),
        baseline: list[Path] = typer.Option(
            [],
            "--baseline",
            help="Baseline traces for the regression checks (repeatable); overrides "
            "the budget's \\[regression] baseline.",
            show_default=False,
        ),
        junit: Path | None = typer.Option(
            None,
            "--junit",
            help="Write JUnit XML here (one testcase per check).",
            show_default=False,
        ),
        markdown: Path | None = typer.Option(
            None,
            "--markdown",
            help="Write a Markdown summary here ('-' for stdout).",
            show_default=False,
        ),
        step_summary: bool = typer.Option(
            True,
            "--step-summary/--no-step-summary",
            help=f"Append the Markdown summary to ${STEP_SUMMARY_ENV} when it is set.",
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print the result as JSON (voiceaudit.gate/1) on stdout."
        ),
        include_warmup: bool = typer.Option(
            False, "--include-warmup", help="Count warm-up turns in the statistics."
        ),
        arrival_times: bool = typer.Option(
            False,
            "--arrival-times",
            help="Place pipeline marks at their arrival at the probe (as in 'report').",
        ),
        caller: str = typer.Option(
            "left", "--caller", help="Recordings: the caller's channel, left or right."
        ),
        answer_at: float | None = typer.Option(
            None,
            "--answer-at",
            help="Recordings: when the calls were answered, in seconds.",
        ),
    ) -> int:
        """Check traces against latency budgets and a baseline; fail closed (for CI)."""
        from voiceaudit.gate import find_budget, load_budget, run_gate
        from voiceaudit.gate.budget import Budget
        from voiceaudit.gate.output import render_json, render_junit, render_markdown, summary_lines

        if budget_file is not None:
            budget = load_budget(budget_file)
        else:
            found = find_budget()
            if found is not None:
                budget = load_budget(found)
            elif baseline:
                budget = Budget()
            else:
                raise UsageError(
                    "no budget: no voiceaudit.toml here, and no tool.voiceaudit table in "
                    "pyproject.toml",
                    hint="pass --budget FILE (see docs/ci.md), or --baseline PATH for "
                    "regression checks only",
                )
        if baseline:
            budget = budget.with_baseline(baseline)
        from voiceaudit.analysis.recording import is_recording, recording_inputs

        inputs: list[Any] = [str(t) for t in traces]
        if any(is_recording(t) for t in traces):
            inputs = recording_inputs(traces, caller, None, None, answer_at)
        result = run_gate(
            inputs,
            budget=budget,
            include_warmup=include_warmup,
            mark_time="arrival" if arrival_times else "auto",
        )

        err = err_console()
        styles = {"pass": "green", "fail": "bold red", "warn": "yellow", "": ""}
        for style, text in summary_lines(result):
            err.print(text, style=styles[style] or None, highlight=False, markup=False)

        md = render_markdown(result)
        if markdown is not None:
            if str(markdown) == "-":
                sys.stdout.write(md)
            else:
                _write(markdown, md, "the Markdown summary")
        summary_path = os.environ.get(STEP_SUMMARY_ENV)
        if step_summary and summary_path:
            try:
                with open(summary_path, "a", encoding="utf-8") as f:
                    f.write(md)
            except OSError as exc:
                err.print(
                    f"warning: cannot append to ${STEP_SUMMARY_ENV} ({summary_path}): "
                    f"{exc.strerror}",
                    style="yellow",
                    highlight=False,
                    markup=False,
                )
        if junit is not None:
            _write(junit, render_junit(result), "the JUnit report")
        if as_json:
            sys.stdout.write(render_json(result))
        sys.stdout.flush()
        return ExitCode.OK if result.passed else ExitCode.FAILED


def _write(path: Path, text: str, what: str) -> None:
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {what} to {path}: {exc.strerror}") from None
