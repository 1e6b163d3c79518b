"""`voiceaudit inspect`: what the probe will take as speech in an audio file, and its end."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from voiceaudit.cli.console import err_console, out_console


def _ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{float(value):.1f}"


def _segments(segs: object) -> str:
    if not isinstance(segs, list) or not segs:
        return "none"
    return ", ".join(f"{a:.1f}-{b:.1f}" for a, b in segs) + " ms"


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_(
        audio: list[Path] = typer.Argument(
            ..., help="Audio files: WAV, FLAC, or headerless 16-bit PCM (.raw/.pcm/.s16)."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print a JSON list, one object per file, times in ms."
        ),
        rate: int | None = typer.Option(
            None,
            "--rate",
            min=1,
            help="Sample rate of headerless PCM files; files with a header are resampled to it.",
        ),
    ) -> None:
        """Show the speech the probe will replay: segments, speech end, leading silence."""
        from voiceaudit.audio import inspect_audio

        results = [inspect_audio(p, rate=rate) for p in audio]
        if as_json:
            typer.echo(json.dumps(results, indent=2))
            return
        from rich.table import Table

        table = Table(show_edge=False, pad_edge=False)
        table.add_column("file", overflow="fold", ratio=1)
        for name in (
            "duration\nms",
            "rate\nHz",
            "ch",
            "speech\nstart ms",
            "speech\nend ms",
            "leading\nsilence ms",
        ):
            table.add_column(name, justify="right", no_wrap=True)
        for r in results:
            table.add_row(
                Path(str(r["path"])).name,
                _ms(r["duration_ms"]),
                str(r["sample_rate"]),
                str(r["channels"]),
                _ms(r["speech_start_ms"]),
                _ms(r["speech_end_ms"]),
                _ms(r["leading_silence_ms"]),
            )
        out = out_console()
        out.print(table)
        for r in results:
            out.print(f"{r['path']}: speech segments {_segments(r['segments'])}")
        for r in results:
            if r["speech_end_ms"] is None:
                err_console().print(f"[yellow]warning:[/] {r['path']}: no speech found")
