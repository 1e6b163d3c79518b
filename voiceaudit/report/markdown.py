"""Markdown rendering: compact tables that fit a GitHub step summary.

Text from traces (target names, failure reasons) is escaped so it cannot break a table
or inject markup: Markdown renderers on GitHub also render inline HTML.
"""

from __future__ import annotations

import html

from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report
from voiceaudit.report.common import (
    MAX_TURN_TAKING_LISTED,
    UNRELIABLE_MARK,
    audio_format_lines,
    counts_line,
    drift_lines,
    failed_turn_lines,
    failure_banner,
    fmt_ms,
    label,
    metric_rows,
    pacing_line,
    phone_lines,
    show_paths,
    side_paths,
    target_line,
    turn_taking_lines,
)
from voiceaudit.report.tables import (
    Cell,
    Kind,
    Table,
    concurrency,
    drift_table,
    failure_comparison,
    failures,
    finding_comparison,
    findings,
    latency,
    metric_comparison,
    rate_comparison,
    turn_taking_events,
    turn_taking_figures_table,
)


def md(text: object) -> str:
    """Escape text for a Markdown table cell (HTML entities, pipes, line breaks)."""
    s = html.escape(str(text), quote=False)
    for ch in ("\\", "`", "*", "_", "[", "]", "|"):
        s = s.replace(ch, "\\" + ch)
    return " ".join(s.split())


def pipe_table(head: list[str], rows: list[list[str]], right: set[int]) -> str:
    """A pipe table of ``rows`` (cells already Markdown), the ``right`` columns right-aligned."""
    out = ["| " + " | ".join(head) + " |"]
    out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _cell(c: Cell) -> str:
    text = {
        Kind.PLAIN: c.text,
        Kind.TEXT: md(c.text),
        Kind.CODE: f"`{c.text}`",
        Kind.STRONG: f"**{c.text}**",
    }[c.kind]
    return text if c.unreliable is None else text + UNRELIABLE_MARK


def _grid(t: Table) -> str:
    """A :class:`~voiceaudit.report.tables.Table` as a pipe table."""
    return pipe_table(t.head, [[_cell(c) for c in r] for r in t.rows], t.right())


def _bullets(title: str, items: list[str]) -> list[str]:
    """A section listing ``items`` (already Markdown); nothing when there are none."""
    if not items:
        return []
    return [f"### {title}", "", *(f"- {i}" for i in items), ""]


def _turn_taking(report: Report) -> list[str]:
    """The turn-taking section (scenario runs only)."""
    lines = ["### Turn-taking", ""]
    figures = turn_taking_figures_table(report)
    if figures.rows:
        lines += [_grid(figures), ""]
    summary = turn_taking_lines(report)
    if summary:
        lines += [f"- **{md(name)}**: {md(text)}" for name, text in summary]
    else:
        lines.append("No barge-ins, cut-ins, sounds or truncation.")
    lines.append("")
    events = turn_taking_events(report, MAX_TURN_TAKING_LISTED)
    if events.rows:
        lines.append(_grid(events))
        if events.left_out:
            lines += ["", f"… and {events.left_out} more (see the JSON report)"]
        lines.append("")
    return lines


def _drift(report: Report) -> list[str]:
    """Long calls: voice-to-voice by turn index and over time, and the trend tests."""
    lines = ["### Long calls", ""]
    lines += ["Voice-to-voice by turn index:", "", _grid(drift_table(report, "turn")), ""]
    lines += ["Voice-to-voice over time:", "", _grid(drift_table(report, "time")), ""]
    lines += [f"- **{md(name)}**: {md(text)}" for name, text in drift_lines(report)]
    lines.append("")
    return lines


def render_report(report: Report) -> str:
    lines = ["## voiceaudit report" + (f": {md(report.label)}" if report.label else ""), ""]
    lines += [counts_line(report) + ".  ", f"Target: {md(target_line(report))}"]
    for fl in audio_format_lines(report):
        lines[-1] += "  "
        lines.append(f"Audio format: {md(fl)}")
    pl = pacing_line(report)
    if pl is not None:
        lines[-1] += "  "
        lines.append(md(pl[0].upper() + pl[1:]))
    lines.append("")
    banner = failure_banner(report)
    if banner is not None:
        lines += [f"> **{md(banner)}**", ""]
    if report.stats_turns:
        lines += ["### Latency (ms)", "", _grid(latency(report)), ""]
        s = report.summary[VOICE_TO_VOICE]
        if any(s.unreliable for _, s in metric_rows(report)):
            lines.append(
                f"{UNRELIABLE_MARK} marks a figure not to be trusted (too few samples or a "
                "wide 95% interval; the JSON report gives the intervals)."
            )
            lines.append("")
        lines += [
            "### Where the time goes",
            "",
            f"Mean per turn; the lines sum to the mean voice-to-voice ({fmt_ms(s.mean)} ms).",
            "",
        ]
        brows = []
        for b in report.budget:
            bar = "█" * max(0, round(b.share * 30))
            brows.append([label(b.segment), fmt_ms(b.mean_ms), f"{b.share * 100:.1f}%", bar or " "])
        lines.append(pipe_table(["segment", "ms", "share", ""], brows, {1, 2}))
        lines.append("")
        lines += ["### Findings", ""]
        if report.findings:
            lines.append(_grid(findings(report)))
        else:
            lines.append("No hidden delays found.")
        lines.append("")
        levels = concurrency(report)
        if levels.rows:
            lines += ["### Voice-to-voice by concurrency", "", md(levels.note) + ".", ""]
            lines += [_grid(levels), ""]
    else:
        lines += ["**No successful turns: no statistics.**", ""]
    if report.drift is not None:
        lines += _drift(report)
    if report.turn_taking is not None:
        lines += _turn_taking(report)
    if phone_lines(report):
        lines += ["### Phone and greeting", ""]
        lines += [f"- **{md(name)}**: {md(text)}" for name, text in phone_lines(report)]
        lines.append("")
    kinds = failures(report)
    if kinds.rows:
        lines += ["### Failures", "", md(kinds.note) + ".", "", _grid(kinds), ""]
    failed, more = failed_turn_lines(report)
    listed = [md(line) for line in failed]
    if more:
        listed.append(f"… and {more} more (see the JSON report)")
    lines += _bullets(f"Failed turns ({len(report.failed_turns)})", listed)
    lines += _bullets("Warnings", [md(w) for w in report.warnings])
    return "\n".join(lines)


def _where(cmp: Comparison, r: Report) -> str:
    """``, phone path`` when the comparison names the sides' paths."""
    return f", {side_paths(r)}" if show_paths(cmp.a, cmp.b) else ""


def render_comparison(cmp: Comparison) -> str:
    a, b = cmp.a, cmp.b
    lines = [
        "## voiceaudit comparison",
        "",
        f"A: {md(a.label)} ({len(a.stats_turns)} turns in the statistics{_where(cmp, a)})  ",
        f"B: {md(b.label)} ({len(b.stats_turns)} turns in the statistics{_where(cmp, b)})",
        "",
        f"B against A, ms. Significance: Mann-Whitney U, two-sided, Holm-corrected, "
        f"p < {cmp.alpha:g}.",
        "",
    ]
    lines += [_grid(metric_comparison(cmp)), ""]
    if cmp.rates:
        lines += [
            "### Turn-taking rates",
            "",
            "Fisher's exact test, two-sided, in the same Holm correction; Wilson 95% intervals.",
            "",
            _grid(rate_comparison(cmp)),
            "",
        ]
    if cmp.failures:
        lines += [
            "### Failures",
            "",
            "Failed turns as a share of each side's measured turns; Fisher's exact test, "
            "two-sided, in the same Holm correction; Wilson 95% intervals.",
            "",
            _grid(failure_comparison(cmp)),
            "",
        ]
    if cmp.findings:
        lines += ["### Findings (ms per turn)", "", _grid(finding_comparison(cmp)), ""]
    differs = [
        f"{md(k)}: A = {md(repr(va))}, B = {md(repr(vb))}"
        for k, (va, vb) in cmp.differences.items()
    ]
    lines += _bullets("What differs", differs)
    lines += _bullets("Warnings", [md(w) for w in cmp.warnings])
    return "\n".join(lines)
