"""The ``voiceaudit`` command line: a thin shell over the library.

Each command lives in its own module (``voiceaudit/cli/<name>_cmd.py``) and only parses,
calls the library, renders and returns an exit code. This module builds the app and owns
the one wrapper that turns every expected failure into one readable line and an
:class:`~voiceaudit.errors.ExitCode`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from voiceaudit import __version__
from voiceaudit.cli import (
    export_cmd,
    gate_cmd,
    import_cmd,
    inspect_cmd,
    net_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
    sweep_cmd,
    targets_cmd,
)
from voiceaudit.cli.console import err_console
from voiceaudit.errors import ExitCode, VoiceauditError

app = typer.Typer(
    name="voiceaudit",
    help="Audit the latency of voice AI pipelines: from the moment the caller stops "
    "talking to the moment they hear the bot, where does the time go?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"voiceaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    traceback: bool = typer.Option(
        False, "--traceback", help="Show the full stack on errors (for bug reports)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Audit the latency of voice AI pipelines."""


for _mod in (
    run_cmd,
    sweep_cmd,
    report_cmd,
    gate_cmd,
    net_cmd,
    serve_cmd,
    export_cmd,
    import_cmd,
    inspect_cmd,
    targets_cmd,
):
    _mod.register(app)


def print_error(exc: VoiceauditError) -> None:
    from rich.markup import escape

    # Messages carry paths and user text: square brackets in them are not markup.
    err_console().print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err_console().print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (never raises, never exits)."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args
    try:
        rv = app(args=args, prog_name="voiceaudit", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else ExitCode.OK
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err_console().print("[yellow]interrupted[/]: what was recorded so far is kept")
        return ExitCode.INTERRUPTED
    except typer.TyperException as exc:
        # Bad options: typer (click) formats the usage line and the message.
        show = getattr(exc, "show", None)
        if callable(show):
            show(file=sys.stderr)
        else:
            err_console().print(f"[bold red]error:[/] {exc.format_message()}", highlight=False)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        err_console().print("[yellow]interrupted[/]: what was recorded so far is kept")
        return ExitCode.INTERRUPTED
    except VoiceauditError as exc:
        if show_traceback:
            raise
        print_error(exc)
        return exc.exit_code
    except Exception as exc:
        if show_traceback:
            raise
        from rich.markup import escape

        err_console().print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}",
            highlight=False,
        )
        err_console().print("[dim]hint:[/] run again with --traceback and report it as a bug")
        return ExitCode.INTERNAL


def main() -> None:
    sys.exit(run())
