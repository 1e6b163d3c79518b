"""Terminal rendering (rich): summary table, budget bar, top findings, failed turns."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report
from voiceaudit.report.common import (
    COLOURS,
    COLUMNS,
    CONCURRENCY_HEAD,
    FAILURE_HEAD,
    MAX_FAILED_LISTED,
    MAX_TURN_TAKING_LISTED,
    METRIC_COMPARISON_COLUMNS,
    TURN_TAKING_HEAD,
    UNRELIABLE_MARK,
    audio_format_lines,
    concurrency_rows,
    failed_turn_line,
    failure_banner,
    failure_note,
    failure_rows,
    finding_comparison_cells,
    fmt_cost,
    fmt_ms,
    knee_line,
    label,
    metric_comparison_cells,
    metric_rows,
    pacing_line,
    rate_comparison_cells,
    summary_cells,
    target_line,
    turn_taking_figures,
    turn_taking_lines,
    turn_taking_rows,
)

BAR_WIDTH = 40


def _header(report: Report) -> Text:
    c = report.counts
    t = Text()
    t.append("voiceaudit report", style="bold")
    if report.label:
        t.append(f": {report.label}", style="bold")
    t.append(
        f"\n{c['turns']} turns: {c['ok']} ok, {c['failed']} failed, {c['warmup']} warm-up; "
        f"{c['in_statistics']} in the statistics"
    )
    if c["unfinished"]:
        t.append(f"; {c['unfinished']} unfinished (left out)")
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


def _summary_table(report: Report) -> Table:
    table = Table(title="Latency (ms)", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("metric")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for name, s in metric_rows(report):
        cells = [
            Text(f"{v}{UNRELIABLE_MARK}" if bad else v, style="yellow" if bad else "")
            for v, bad in summary_cells(s)
        ]
        style = "bold" if name == VOICE_TO_VOICE else ""
        table.add_row(Text(label(name), style=style), *cells)
    return table


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
    table = Table(title="Top findings", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("finding", no_wrap=True)
    table.add_column("turns", justify="right", no_wrap=True)
    table.add_column("per turn", justify="right", no_wrap=True)
    table.add_column("median when found", justify="right", no_wrap=True)
    table.add_column("what it is", ratio=1)
    for f in report.findings:
        table.add_row(
            f.kind,
            f"{f.turns}/{f.of}",
            fmt_cost(f.kind, f.per_turn_ms, " ms"),
            fmt_cost(f.kind, f.cost.p50, " ms"),
            f.description,
        )
    return table


def _concurrency(report: Report) -> RenderableType:
    rows = concurrency_rows(report)
    if not rows:
        return Text("")
    table = Table(
        title="Voice-to-voice by concurrency",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        caption=knee_line(report),
        caption_justify="left",
    )
    for i, h in enumerate(CONCURRENCY_HEAD):
        table.add_column(h, justify="left" if i == len(CONCURRENCY_HEAD) - 1 else "right")
    for r in rows:
        table.add_row(*r, style="bold" if r[-1] == "knee" else "")
    return Group(Text(""), table)


def _turn_taking(report: Report) -> RenderableType:
    """Barge-ins, cut-ins, sounds and truncation (scenario runs only)."""
    parts: list[RenderableType] = [Text("")]
    figures = turn_taking_figures(report)
    if figures:
        table = Table(
            title="Turn-taking (ms)", title_justify="left", show_edge=False, pad_edge=False
        )
        table.add_column("metric")
        for c in COLUMNS:
            table.add_column(c, justify="right")
        for name, s in figures:
            cells = [
                Text(f"{v}{UNRELIABLE_MARK}" if bad else v, style="yellow" if bad else "")
                for v, bad in summary_cells(s)
            ]
            table.add_row(name, *cells)
        parts += [table, Text("")]
    lines = turn_taking_lines(report)
    t = Text()
    t.append("Turn-taking\n", style="bold")
    if not lines:
        t.append("  no barge-ins, cut-ins, sounds or truncation\n", style="dim")
    for name, text in lines:
        t.append(f"  {name}: ", style="bold")
        t.append(f"{text}\n")
    parts.append(t)
    rows = turn_taking_rows(report)
    if rows:
        ev = Table(
            title="Turn-taking events", title_justify="left", show_edge=False, pad_edge=False
        )
        for i, h in enumerate(TURN_TAKING_HEAD):
            ev.add_column(h, justify="right" if h == "ms" else "left", no_wrap=i < 2)
        for r in rows[:MAX_TURN_TAKING_LISTED]:
            ev.add_row(
                r.turn,
                r.what,
                fmt_ms(r.ms),
                r.detail,
                Text(", ".join(r.findings), style="yellow"),
            )
        parts.append(ev)
        if len(rows) > MAX_TURN_TAKING_LISTED:
            parts.append(
                Text(
                    f"… and {len(rows) - MAX_TURN_TAKING_LISTED} more events "
                    "(all are in --format json)",
                    style="dim",
                )
            )
    return Group(*parts)


def _failures(report: Report) -> RenderableType:
    """The failure table: failed turns by kind (nothing when no turn failed)."""
    rows = failure_rows(report)
    if not rows:
        return Text("")
    table = Table(
        title="Failures",
        title_justify="left",
        title_style="bold red",
        show_edge=False,
        pad_edge=False,
        caption=failure_note(report),
        caption_justify="left",
    )
    for i, h in enumerate(FAILURE_HEAD):
        table.add_column(h, justify="right" if 0 < i < 4 else "left", no_wrap=i < 4)
    for r in rows:
        table.add_row(*r)
    return Group(table, Text(""))


def _failed(report: Report) -> RenderableType:
    failed = report.failed_turns
    if not failed:
        return Text("")
    t = Text()
    t.append(f"Failed turns ({len(failed)})\n", style="bold red")
    for tr in failed[:MAX_FAILED_LISTED]:
        t.append(f"  {failed_turn_line(tr, report.multi_run)}\n")
    if len(failed) > MAX_FAILED_LISTED:
        t.append(f"  … and {len(failed) - MAX_FAILED_LISTED} more (all are in --format json)\n")
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
        parts += [_summary_table(report), Text(""), _budget(report, colour), _findings(report)]
        if report.concurrency is not None:
            parts.append(_concurrency(report))
    else:
        parts.append(Text("No successful turns: no statistics.", style="bold red"))
    if report.turn_taking is not None:
        parts.append(_turn_taking(report))
    parts.append(Text(""))
    if report.failures.present():
        parts.append(_failures(report))
    parts += [_failed(report), _notes(report)]
    console.print(Group(*parts))


def render_comparison(cmp: Comparison, console: Console) -> None:
    a, b = cmp.a, cmp.b
    head = Text()
    head.append("voiceaudit comparison", style="bold")
    head.append(f"\nA: {a.label} ({len(a.stats_turns)} turns in the statistics)")
    head.append(f"\nB: {b.label} ({len(b.stats_turns)} turns in the statistics)")
    table = Table(
        title=f"B against A (ms): Mann-Whitney U, Holm-corrected, significant at p < {cmp.alpha:g}",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in METRIC_COMPARISON_COLUMNS:
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for m in cmp.metrics:
        verdict_style = (
            "green" if m.verdict == "B faster" else "red" if m.verdict == "B slower" else "dim"
        )
        *cells, verdict = metric_comparison_cells(m)
        table.add_row(*cells, Text(verdict, style=verdict_style))
    parts: list[RenderableType] = [head, Text(""), table, Text("")]
    if cmp.rates:
        rt = Table(
            title="Turn-taking rates (95% CI below): Fisher's exact test, same Holm correction",
            title_justify="left",
            show_edge=False,
            pad_edge=False,
        )
        # each side's rate with its 95 % interval below it, to fit the width
        for col in ("rate", "A", "B", "Δ", "p (Holm)", "verdict"):
            rt.add_column(
                col,
                justify="left" if col in ("rate", "verdict") else "right",
                no_wrap=col != "verdict",
            )
        for r in cmp.rates:
            name, a_rate, a_ci, b_rate, b_ci, *rest, verdict = rate_comparison_cells(r)
            style = {"B higher": "red", "B lower": "green"}.get(verdict, "dim")
            rt.add_row(
                name,
                f"{a_rate}\n{a_ci}",
                f"{b_rate}\n{b_ci}",
                *rest,
                Text(verdict, style=style),
            )
        parts += [rt, Text("")]
    if cmp.failures:
        ftab = Table(
            title="Failures (share of measured turns, 95% CI below): Fisher's exact test, "
            "same Holm correction",
            title_justify="left",
            show_edge=False,
            pad_edge=False,
        )
        for col in ("failure", "A", "B", "Δ", "p (Holm)", "verdict"):
            ftab.add_column(
                col,
                justify="left" if col in ("failure", "verdict") else "right",
                no_wrap=col != "verdict",
            )
        for r in cmp.failures:
            name, a_rate, a_ci, b_rate, b_ci, *rest, verdict = rate_comparison_cells(r)
            style = {"B higher": "red", "B lower": "green"}.get(verdict, "dim")
            ftab.add_row(
                name, f"{a_rate}\n{a_ci}", f"{b_rate}\n{b_ci}", *rest, Text(verdict, style=style)
            )
        parts += [ftab, Text("")]
    if cmp.findings:
        ft = Table(title="Findings (ms per turn)", title_justify="left", show_edge=False)
        for col in ("finding", "A", "B", "Δ"):
            ft.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
        for f in cmp.findings:
            ft.add_row(f.kind, *finding_comparison_cells(f))
        parts += [ft, Text("")]
    notes = Text()
    for k, (va, vb) in cmp.differences.items():
        notes.append(f"differs: {k}: A={va!r} B={vb!r}\n", style="dim")
    for w in cmp.warnings:
        notes.append("warning: ", style="yellow")
        notes.append(f"{w}\n")
    parts.append(notes)
    console.print(Group(*parts))
