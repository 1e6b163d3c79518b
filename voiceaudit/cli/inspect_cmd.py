"""`voiceaudit inspect`: placeholder until voiceaudit.audio lands."""

from __future__ import annotations

import typer

from voiceaudit.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command("inspect", help="(not built yet)")
    def inspect_() -> None:
        raise NotBuiltYet("'voiceaudit inspect' is not built yet")
