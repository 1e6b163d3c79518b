"""`voiceaudit export`: a trace as Perfetto / Chrome trace-event JSON or OTLP/JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from voiceaudit.cli.console import err_console
from voiceaudit.errors import UsageError

_SUFFIX = {"perfetto": ".perfetto.json", "otlp": ".otlp.json"}


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        trace: Path = typer.Argument(
            ..., help="A trace file (or a run directory holding one).", show_default=False
        ),
        fmt: str = typer.Option(
            ...,
            "--format",
            "-f",
            help="perfetto (Chrome trace-event JSON: ui.perfetto.dev, chrome://tracing) or "
            "otlp (OpenTelemetry OTLP/JSON).",
            show_default=False,
        ),
        out: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="Where to write (default: next to the trace, trace.perfetto.json or "
            "trace.otlp.json).",
        ),
    ) -> int:
        """Export a trace for Perfetto / chrome://tracing or an OpenTelemetry backend."""
        from voiceaudit.exports import FORMATS, export_trace
        from voiceaudit.trace_io import find_traces, read_trace

        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}", hint="use one of: " + ", ".join(FORMATS))
        found = find_traces(trace)
        if len(found) != 1:
            raise UsageError(f"{trace}: {len(found)} traces found; give one trace file")
        src = found[0]
        tr = read_trace(src)
        if out is None:
            stem = src.name.removesuffix(".gz").removesuffix(".jsonl")
            out = src.with_name(stem + _SUFFIX[fmt])
        try:
            export_trace(tr, fmt, out)
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror}") from None
        err = err_console()
        err.print(f"wrote {out}", highlight=False)
        if fmt == "perfetto":
            err.print("open it at https://ui.perfetto.dev or chrome://tracing", highlight=False)
        return 0
