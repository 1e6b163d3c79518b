"""`voiceaudit targets`: every protocol voiceaudit can speak, built-in or plugin, and the
``-o NAME=VALUE`` options each one reads (docs/targets.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from voiceaudit.errors import ExitCode

if TYPE_CHECKING:
    from voiceaudit.targets.registry import ProtocolInfo


def _render_one(info: ProtocolInfo) -> list[str]:
    """One protocol: where it comes from, its path, and each option with its help."""
    lines = [f"{info.name}  ({info.source})"]
    if info.unavailable is not None:
        lines.append(f"  unavailable: {info.unavailable}")
    if info.description:
        lines.append(f"  {info.description}")
    where = info.spec if not info.distribution else f"{info.spec}, from {info.distribution}"
    lines.append(f"  class: {where}")
    if info.cls is not None:
        lines.append(f"  path: {info.path}")
        if info.schemes:
            lines.append(f"  URL schemes: {', '.join(info.schemes)}")
        if info.options:
            lines.append("  options (-o NAME=VALUE):")
            width = max(len(n) for n in info.options)
            for name, text in info.options.items():
                lines.append(f"    {name:<{width}}  {text}")
        else:
            lines.append("  options: none")
    for note in info.ignored:
        lines.append(f"  note: {note}")
    return lines


def _render_all(infos: list[ProtocolInfo]) -> list[str]:
    """Every protocol: two lines each (path and description; option names)."""
    width = max(len(i.name) for i in infos)
    lines = []
    for i in infos:
        src = "plugin " if i.source == "plugin" else ""
        if i.unavailable is not None:
            lines.append(f"{i.name:<{width}}  {src}unavailable: {i.unavailable}")
            continue
        lines.append(f"{i.name:<{width}}  [{i.path}] {src}{i.description}")
        opts = ", ".join(i.options) if i.options else "none"
        lines.append(f"{'':<{width}}  options: {opts}")
        for note in i.ignored:
            lines.append(f"{'':<{width}}  note: {note}")
    lines.append("")
    lines.append("voiceaudit targets NAME: one protocol's options, each with what it does")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("targets")
    def targets(
        name: str | None = typer.Argument(
            None, help="One protocol, to show each of its options with what it does."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print JSON: a list of protocols (one object with NAME)."
        ),
    ) -> int:
        """List the protocols --protocol takes (built-in and installed plugins): path,
        description and -o options of each."""
        from voiceaudit.targets.registry import protocol_info, protocols

        if name is not None:
            info = protocol_info(name)
            if as_json:
                typer.echo(json.dumps(info.to_json(), indent=2))
            else:
                typer.echo("\n".join(_render_one(info)))
            return ExitCode.OK if info.unavailable is None else ExitCode.ENVIRONMENT
        infos = protocols()
        if as_json:
            typer.echo(json.dumps([i.to_json() for i in infos], indent=2))
        else:
            typer.echo("\n".join(_render_all(infos)))
        return ExitCode.OK
