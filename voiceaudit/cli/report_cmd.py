"""`voiceaudit report`: for now, reads and validates traces and summarises them."""

from __future__ import annotations

from pathlib import Path

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import NoDataError
from voiceaudit.trace_io import read_traces


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        traces: list[Path] = typer.Argument(..., help="Trace files or run directories."),
    ) -> None:
        """Read traces and report per-turn latency."""
        loaded = read_traces(traces)
        out = out_console()
        total_finished = 0
        for t in loaded:
            finished = t.finished_turns()
            total_finished += len(finished)
            state = "complete" if t.complete else "incomplete"
            out.print(
                f"{t.path}: run {t.header.run_id}, {state}, "
                f"{len(t.events)} events, {len(finished)} finished turns"
            )
            for w in t.warnings:
                err_console().print(f"[yellow]warning:[/] {t.path}: {w}")
        if total_finished == 0:
            raise NoDataError(
                "no finished turns in the traces given",
                hint="every turn failed or the run stopped before the first turn ended",
            )
