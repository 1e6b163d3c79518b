"""`voiceaudit export`: not built yet."""

from __future__ import annotations

import typer

from voiceaudit.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command(
        "export",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help="(not built yet)",
    )
    def export_(ctx: typer.Context) -> None:
        raise NotBuiltYet(
            "'voiceaudit export' is not built yet",
            hint="see the open issues; 'voiceaudit --help' lists what works",
        )
