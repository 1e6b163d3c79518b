"""`voiceaudit import`: framework telemetry → trace, and framework vs heard."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import UsageError


def parse_clock(text: str) -> str | int:
    """``auto``, ``anchors`` or a residual offset in ms (``-12.5``) as integer ns."""
    if text in ("auto", "anchors"):
        return text
    try:
        ms = float(text)
    except ValueError:
        raise UsageError(
            f"--clock {text!r}: give auto, anchors or an offset in milliseconds"
        ) from None
    if ms != ms or abs(ms) > 1e12:
        raise UsageError(f"--clock {text!r} is not a usable offset")
    return round(ms * 1_000_000)


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_(
        files: list[Path] = typer.Argument(
            ...,
            help="Telemetry files: Pipecat or LiveKit OpenTelemetry spans (span.to_json() "
            "lines or OTLP/JSON), LiveKit metrics_collected records, OpenAI Realtime "
            "event logs.",
            show_default=False,
        ),
        trace: Path | None = typer.Option(
            None,
            "--trace",
            "-t",
            help="The probe trace of the same run: align the telemetry to its clock and "
            "turns, and show framework vs heard.",
        ),
        out: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="Write a trace: the --trace with the telemetry added, or (without "
            "--trace) the telemetry alone on the framework's clock.",
        ),
        fmt: str = typer.Option(
            "auto", "--format", "-f", help="auto, pipecat, livekit or openai-realtime."
        ),
        clock: str = typer.Option(
            "auto",
            "--clock",
            help="auto (estimate a residual clock offset unless the target was on "
            "loopback), anchors (trust the trace's anchors), or an offset in ms.",
        ),
        keep_content: bool = typer.Option(
            False,
            "--keep-content",
            help="Keep transcripts, reply text and prompts (dropped by default).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> int:
        """Import framework telemetry; with --trace, compare the framework's own numbers
        with what the caller heard."""
        from voiceaudit.imports import (
            format_table,
            framework_vs_heard,
            import_telemetry,
            write_trace,
        )
        from voiceaudit.trace_io import find_traces, read_trace

        offset = parse_clock(clock)
        tr = None
        if trace is not None:
            found = find_traces(trace)
            if len(found) != 1:
                raise UsageError(
                    f"{trace}: {len(found)} traces found; give one trace file",
                )
            tr = read_trace(found[0])
        results = [
            import_telemetry(f, trace=tr, keep_content=keep_content, fmt=fmt, clock=offset)
            for f in files
        ]
        rows = framework_vs_heard(results, tr) if tr is not None else []
        err = err_console()
        if out is not None:
            write_trace(results, out, trace=tr)
            err.print(f"wrote {out}", highlight=False)
        if as_json:
            doc = {
                "imports": [r.summary() for r in results],
                "framework_vs_heard": [row.to_dict() for row in rows],
            }
            print(json.dumps(doc, indent=2))
            return 0
        console = out_console()
        for r in results:
            console.print(
                f"{r.path}: {r.framework} ({r.format}), {len(r.spans)} spans, "
                f"{len(r.events)} marks, {len(r.measures)} framework figures",
                markup=False,
            )
            if r.alignment is not None:
                console.print(f"  clock: {r.alignment.describe()}", markup=False)
            if r.dropped_content:
                console.print(
                    f"  {r.dropped_content} content attributes left out (--keep-content keeps "
                    "them)",
                    markup=False,
                )
            for w in r.warnings:
                err.print(f"[yellow]warning:[/] {r.path}: {w}", highlight=False)
        if tr is not None:
            console.print("")
            if rows:
                console.print("framework vs heard (difference = measured - reported):")
                console.print(format_table(rows), markup=False)
            else:
                err.print(
                    "[yellow]warning:[/] no framework figure matched a turn of the trace",
                    highlight=False,
                )
        return 0
