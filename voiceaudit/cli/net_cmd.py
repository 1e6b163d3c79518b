"""`voiceaudit net`: not built yet."""

from __future__ import annotations

import typer

from voiceaudit.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command(
        "net",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help="(not built yet)",
    )
    def net_(ctx: typer.Context) -> None:
        raise NotBuiltYet(
            "'voiceaudit net' is not built yet",
            hint="see the open issues; 'voiceaudit --help' lists what works",
        )
