"""`voiceaudit report`: latency ledger, hidden delays and statistics from traces.

One trace (or run directory): the report. Two: a side-by-side comparison, B against A.
The report goes to stdout or ``--output``; progress and warnings go to stderr.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import CheckFailed, UsageError

_FORMATS = ("terminal", "markdown", "html", "json")
#: Width of terminal-format text written to a pipe or a file.
TEXT_WIDTH = 120


def _label(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix) and name != suffix:
            stem = name[: -len(suffix)]
            # "run-dir/trace.jsonl" is better named after its run directory.
            return path.parent.name if stem == "trace" and path.parent.name else stem
    return name


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        traces: list[Path] = typer.Argument(
            ...,
            help="A trace file or run directory; give two to compare them (B against A).",
            show_default=False,
        ),
        fmt: str | None = typer.Option(
            None,
            "--format",
            "-f",
            help="terminal, markdown, html or json (default: from --output's suffix, "
            "else terminal).",
            show_default=False,
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write the report here instead of stdout."
        ),
        include_warmup: bool = typer.Option(
            False, "--include-warmup", help="Count warm-up turns in the statistics."
        ),
        arrival_times: bool = typer.Option(
            False,
            "--arrival-times",
            help="Place pipeline marks at their arrival at the probe, even when the "
            "target reported its own (same-host) times.",
        ),
        merge: bool = typer.Option(
            False, "--merge", help="Merge all the traces given into one report."
        ),
        alpha: float = typer.Option(
            0.05, "--alpha", help="Significance level of a comparison (Holm-corrected)."
        ),
    ) -> int:
        """Attribute voice-to-voice latency to stages, find hidden delays, give statistics."""
        from voiceaudit.analysis import build_report, compare
        from voiceaudit.report import Format, print_to, render

        chosen = _format(fmt, output)
        if len(traces) > 2 and not merge:
            raise UsageError(
                f"{len(traces)} traces given: give one (a report) or two (a comparison)",
                hint="use --merge to merge them into one report, or put them in one directory",
            )
        mark_time = "arrival" if arrival_times else "auto"
        needs_obs = chosen is Format.HTML
        err = err_console()
        status: AbstractContextManager[Any] = (
            err.status("reading traces…") if err.is_terminal else nullcontext()
        )

        def progress(msg: str) -> None:
            if hasattr(status, "update"):
                status.update(msg)

        with status:
            groups = [traces] if merge or len(traces) == 1 else [[traces[0]], [traces[1]]]
            reports = [
                build_report(
                    g,
                    include_warmup=include_warmup,
                    mark_time=mark_time,  # type: ignore[arg-type]
                    keep_observations=needs_obs,
                    progress=progress,
                    label=", ".join(_label(p) for p in g),
                )
                for g in groups
            ]
            obj: Any = reports[0] if len(reports) == 1 else compare(*reports, alpha=alpha)
            progress("rendering…")
            # Colours and the terminal's width only when stdout is a terminal; a pipe or a
            # file gets plain text at a fixed width, the same on every machine.
            to_tty = chosen is Format.TERMINAL and output is None and sys.stdout.isatty()
            text = None if to_tty else render(obj, chosen, width=TEXT_WIDTH)
        for r in reports:
            for w in r.warnings:
                err.print(f"[yellow]warning:[/] {w}", highlight=False, markup=True)
        if text is None:
            print_to(obj, out_console())
        elif output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write {output}: {exc.strerror}") from None
            err.print(f"wrote {output}", highlight=False)
        for r in reports:
            if not r.stats_turns:
                raise CheckFailed(
                    f"{r.label or 'the trace'}: no successful turns ({r.counts['failed']} failed)",
                    hint="the report lists why each turn failed",
                )
        return 0


def _format(fmt: str | None, output: Path | None) -> Any:
    from voiceaudit.report import Format

    if fmt is not None:
        if fmt not in _FORMATS:
            raise UsageError(f"unknown format {fmt!r}", hint=f"use one of: {', '.join(_FORMATS)}")
        return Format(fmt)
    if output is not None:
        by_suffix = Format.from_suffix(output.suffix)
        if by_suffix is not None:
            return by_suffix
    return Format.TERMINAL
