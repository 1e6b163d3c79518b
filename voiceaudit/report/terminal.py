"""Terminal rendering (rich): summary table, budget bar, top findings, failed turns."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

import voiceaudit.report.tables as tables
from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report
from voiceaudit.report.common import (
    COLOURS,
    MAX_TURN_TAKING_LISTED,
    UNRELIABLE_MARK,
    audio_format_lines,
    counts_line,
    drift_lines,
    failed_turn_lines,
    failure_banner,
    fmt_ms,
    label,
    pacing_line,
    phone_lines,
    show_paths,
    side_paths,
    target_line,
    turn_taking_lines,
)

BAR_WIDTH = 40


def _cell(c: tables.Cell) -> RenderableType:
    if c.unreliable is not None:
        return Text(f"{c.text}{UNRELIABLE_MARK}", style="yellow")
    style = c.tone.value or ("bold" if c.kind is tables.Kind.STRONG else "")
    return Text(c.text, style=style) if style else c.text


def grid(t: tables.Table, title: str, **options: Any) -> Table:
    """A :class:`~voiceaudit.report.tables.Table` as a rich table titled ``title``
    (``options`` go to :class:`rich.table.Table`); a stacked column's cells go below the
    previous column's, in its cell."""
    defaults: dict[str, Any] = {"title_justify": "left", "show_edge": False, "pad_edge": False}
    table = Table(title=title, **(defaults | options))
    for c in t.columns:
        if not c.stacked:
            table.add_column(c.name, justify="right" if c.right else "left", no_wrap=c.no_wrap)
    for i, row in enumerate(t.rows):
        cells: list[RenderableType] = []
        for c, cell in zip(t.columns, row, strict=True):
            if c.stacked:
                cells[-1] = f"{cells[-1]}\n{cell.text}"
            else:
                cells.append(_cell(cell))
        table.add_row(*cells, style="bold" if i in t.highlight else None)
    return table


def _header(report: Report) -> Text:
    t = Text()
    t.append("voiceaudit report", style="bold")
    if report.label:
        t.append(f": {report.label}", style="bold")
    t.append(f"\n{counts_line(report)}")
    banner = failure_banner(report)
    if banner is not None:
        t.append(f"\n{banner}", style="bold red")
    t.append(f"\ntarget: {target_line(report)}")
    for line in audio_format_lines(report):
        t.append(f"\naudio format: {line}")
    pl = pacing_line(report)
    if pl is not None:
        t.append(f"\n{pl}", style="yellow" if report.pacing and report.pacing.broke else "")
    files = ", ".join(s.path for s in report.sources)
    t.append(f"\ntrace: {files}", style="dim")
    return t


def _budget(report: Report, colour: bool) -> RenderableType:
    lines = report.budget
    if not lines:
        return Text("")
    v2v = report.summary[VOICE_TO_VOICE].mean
    out = Text()
    out.append(
        f"Where the time goes: mean per turn, sums to the mean voice-to-voice {fmt_ms(v2v)} ms\n",
        style="bold",
    )
    if colour:
        # One stacked bar (only readable in colour), then one line per segment.
        for b in lines:
            width = round(b.share * BAR_WIDTH * 2)
            out.append("█" * width, style=COLOURS.get(b.segment, ""))
        out.append("\n")
    name_w = max(len(label(b.segment)) for b in lines)
    for b in lines:
        bar = "█" * max(0, round(b.share * BAR_WIDTH))
        out.append(f"{label(b.segment):<{name_w}} ")
        out.append(f"{fmt_ms(b.mean_ms):>7} ms {b.share * 100:5.1f}% ")
        out.append(bar, style=COLOURS.get(b.segment, ""))
        if b.turns != len(report.stats_turns):
            out.append(f"  (in {b.turns} of {len(report.stats_turns)} turns)", style="dim")
        out.append("\n")
    return out


def _findings(report: Report) -> RenderableType:
    if not report.findings:
        return Text("No hidden delays found.", style="green")
    table = grid(tables.findings(report, unit=" ms"), "Top findings")
    table.columns[-1].ratio = 1  # the description takes the width the figures leave
    return table


def _concurrency(report: Report) -> RenderableType:
    levels = tables.concurrency(report)
    if not levels.rows:
        return Text("")
    table = grid(
        levels, "Voice-to-voice by concurrency", caption=levels.note, caption_justify="left"
    )
    return Group(Text(""), table)


def _turn_taking(report: Report) -> RenderableType:
    """Barge-ins, cut-ins, sounds and truncation (scenario runs only)."""
    parts: list[RenderableType] = [Text("")]
    figures = tables.turn_taking_figures_table(report, "metric")
    if figures.rows:
        parts += [grid(figures, "Turn-taking (ms)"), Text("")]
    lines = turn_taking_lines(report)
    t = Text()
    t.append("Turn-taking\n", style="bold")
    if not lines:
        t.append("  no barge-ins, cut-ins, sounds or truncation\n", style="dim")
    for name, text in lines:
        t.append(f"  {name}: ", style="bold")
        t.append(f"{text}\n")
    parts.append(t)
    events = tables.turn_taking_events(report, MAX_TURN_TAKING_LISTED)
    if events.rows:
        parts.append(grid(events, "Turn-taking events"))
        if events.left_out:
            parts.append(
                Text(
                    f"… and {events.left_out} more events (all are in --format json)",
                    style="dim",
                )
            )
    return Group(*parts)


def _drift(report: Report) -> RenderableType:
    """Long calls: voice-to-voice by turn index and over time, and the trend tests."""
    parts: list[RenderableType] = [Text("")]
    parts.append(grid(tables.drift_table(report, "turn"), "Voice-to-voice by turn index"))
    parts.append(Text(""))
    parts.append(grid(tables.drift_table(report, "time"), "Voice-to-voice over time"))
    t = Text()
    t.append("\nLong calls (trend of voice-to-voice: Theil-Sen slope, Spearman's test)\n")
    t.stylize("bold")
    for name, text in drift_lines(report):
        t.append(f"  {name}: ", style="bold")
        t.append(f"{text}\n")
    parts.append(t)
    return Group(*parts)


def _phone(report: Report) -> RenderableType:
    """Paths, greeting, the carrier, barge-ins through it, marks, key presses."""
    t = Text()
    t.append("\nPhone and greeting\n", style="bold")
    for name, text in phone_lines(report):
        t.append(f"  {name}: ", style="bold")
        t.append(f"{text}\n")
    return t


def _failures(report: Report) -> RenderableType:
    """The failure table: failed turns by kind (nothing when no turn failed)."""
    kinds = tables.failures(report)
    if not kinds.rows:
        return Text("")
    table = grid(
        kinds,
        "Failures",
        title_style="bold red",
        caption=kinds.note,
        caption_justify="left",
    )
    return Group(table, Text(""))


def _failed(report: Report) -> RenderableType:
    failed = report.failed_turns
    if not failed:
        return Text("")
    t = Text()
    t.append(f"Failed turns ({len(failed)})\n", style="bold red")
    listed, more = failed_turn_lines(report)
    for line in listed:
        t.append(f"  {line}\n")
    if more:
        t.append(f"  … and {more} more (all are in --format json)\n")
    return t


def _notes(report: Report) -> RenderableType:
    t = Text()
    s = report.summary.get(VOICE_TO_VOICE)
    if s is not None and s.unreliable:
        t.append(f"{UNRELIABLE_MARK} marks a figure not to be trusted: ", style="yellow")
        t.append("; ".join(f"{k} {why}" for k, why in s.unreliable.items()))
        t.append("\n")
    for w in report.warnings:
        t.append("warning: ", style="yellow")
        t.append(f"{w}\n")
    return t


def render_report(report: Report, console: Console) -> None:
    parts: list[RenderableType] = [_header(report), Text("")]
    if report.stats_turns:
        colour = console.color_system is not None
        latency = grid(tables.latency(report), "Latency (ms)")
        parts += [latency, Text(""), _budget(report, colour), _findings(report)]
        if report.concurrency is not None:
            parts.append(_concurrency(report))
    else:
        parts.append(Text("No successful turns: no statistics.", style="bold red"))
    if report.drift is not None:
        parts.append(_drift(report))
    if report.turn_taking is not None:
        parts.append(_turn_taking(report))
    if phone_lines(report):
        parts.append(_phone(report))
    parts.append(Text(""))
    if report.failures.present():
        parts.append(_failures(report))
    parts += [_failed(report), _notes(report)]
    console.print(Group(*parts))


def render_comparison(cmp: Comparison, console: Console) -> None:
    a, b = cmp.a, cmp.b
    head = Text()
    head.append("voiceaudit comparison", style="bold")
    paths = show_paths(a, b)
    for side, r in (("A", a), ("B", b)):
        where = f", {side_paths(r)}" if paths else ""
        head.append(f"\n{side}: {r.label} ({len(r.stats_turns)} turns in the statistics{where})")
    table = grid(
        tables.metric_comparison(cmp),
        f"B against A (ms): Mann-Whitney U, Holm-corrected, significant at p < {cmp.alpha:g}",
    )
    parts: list[RenderableType] = [head, Text(""), table, Text("")]
    # each side's rate with its 95 % interval below it, to fit the width
    if cmp.rates:
        title = "Turn-taking rates (95% CI below): Fisher's exact test, same Holm correction"
        parts += [grid(tables.rate_comparison(cmp), title), Text("")]
    if cmp.failures:
        title = (
            "Failures (share of measured turns, 95% CI below): Fisher's exact test, "
            "same Holm correction"
        )
        parts += [grid(tables.failure_comparison(cmp), title), Text("")]
    if cmp.findings:
        ft = grid(tables.finding_comparison(cmp), "Findings (ms per turn)", pad_edge=True)
        parts += [ft, Text("")]
    notes = Text()
    for k, (va, vb) in cmp.differences.items():
        notes.append(f"differs: {k}: A={va!r} B={vb!r}\n", style="dim")
    for w in cmp.warnings:
        notes.append("warning: ", style="yellow")
        notes.append(f"{w}\n")
    parts.append(notes)
    console.print(Group(*parts))
