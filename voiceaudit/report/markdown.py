"""Markdown rendering: compact tables that fit a GitHub step summary.

Text from traces (target names, failure reasons) is escaped so it cannot break a table
or inject markup: Markdown renderers on GitHub also render inline HTML.
"""

from __future__ import annotations

import html

from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report
from voiceaudit.report.common import (
    COLUMNS,
    CONCURRENCY_HEAD,
    FAILURE_COMPARISON_COLUMNS,
    FAILURE_HEAD,
    MAX_FAILED_LISTED,
    MAX_TURN_TAKING_LISTED,
    METRIC_COMPARISON_COLUMNS,
    RATE_COMPARISON_COLUMNS,
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


def md(text: object) -> str:
    """Escape text for a Markdown table cell (HTML entities, pipes, line breaks)."""
    s = html.escape(str(text), quote=False)
    for ch in ("\\", "`", "*", "_", "[", "]", "|"):
        s = s.replace(ch, "\\" + ch)
    return " ".join(s.split())


def _table(head: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    out = ["| " + " | ".join(head) + " |"]
    out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _turn_taking(report: Report) -> list[str]:
    """The turn-taking section (scenario runs only)."""
    lines = ["### Turn-taking", ""]
    figures = turn_taking_figures(report)
    if figures:
        rows = [
            [md(name), *(f"{v}{UNRELIABLE_MARK}" if bad else v for v, bad in summary_cells(s))]
            for name, s in figures
        ]
        lines.append(_table(["metric (ms)", *COLUMNS], rows, set(range(1, len(COLUMNS) + 1))))
        lines.append("")
    summary = turn_taking_lines(report)
    if summary:
        lines += [f"- **{md(name)}**: {md(text)}" for name, text in summary]
    else:
        lines.append("No barge-ins, cut-ins, sounds or truncation.")
    lines.append("")
    events = turn_taking_rows(report)
    if events:
        erows = [
            [
                md(r.turn),
                md(r.what),
                fmt_ms(r.ms),
                md(r.detail),
                ", ".join(md(f) for f in r.findings),
            ]
            for r in events[:MAX_TURN_TAKING_LISTED]
        ]
        lines.append(_table(TURN_TAKING_HEAD, erows, {2}))
        if len(events) > MAX_TURN_TAKING_LISTED:
            lines += [
                "",
                f"… and {len(events) - MAX_TURN_TAKING_LISTED} more (see the JSON report)",
            ]
        lines.append("")
    return lines


def render_report(report: Report) -> str:
    c = report.counts
    lines = ["## voiceaudit report" + (f": {md(report.label)}" if report.label else ""), ""]
    summary = (
        f"{c['turns']} turns: {c['ok']} ok, {c['failed']} failed, {c['warmup']} warm-up; "
        f"{c['in_statistics']} in the statistics"
    )
    if c["unfinished"]:
        summary += f"; {c['unfinished']} unfinished (left out)"
    lines += [summary + ".  ", f"Target: {md(target_line(report))}"]
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
        rows = []
        for name, s in metric_rows(report):
            cells = [f"{v}{UNRELIABLE_MARK}" if bad else v for v, bad in summary_cells(s)]
            name_cell = f"**{label(name)}**" if name == VOICE_TO_VOICE else label(name)
            rows.append([name_cell, *cells])
        lines += ["### Latency (ms)", ""]
        lines.append(_table(["metric", *COLUMNS], rows, set(range(1, len(COLUMNS) + 1))))
        lines.append("")
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
        lines.append(_table(["segment", "ms", "share", ""], brows, {1, 2}))
        lines.append("")
        lines += ["### Findings", ""]
        if report.findings:
            frows = [
                [
                    f"`{f.kind}`",
                    f"{f.turns}/{f.of}",
                    fmt_cost(f.kind, f.per_turn_ms),
                    fmt_cost(f.kind, f.cost.p50),
                    md(f.description),
                ]
                for f in report.findings
            ]
            lines.append(
                _table(
                    ["finding", "turns", "ms per turn", "median ms when found", "what it is"],
                    frows,
                    {1, 2, 3},
                )
            )
        else:
            lines.append("No hidden delays found.")
        lines.append("")
        crows = concurrency_rows(report)
        if crows:
            lines += ["### Voice-to-voice by concurrency", "", md(knee_line(report)) + ".", ""]
            lines.append(_table(CONCURRENCY_HEAD, crows, {0, 1, 2, 3, 4}))
            lines.append("")
    else:
        lines += ["**No successful turns: no statistics.**", ""]
    if report.turn_taking is not None:
        lines += _turn_taking(report)
    frows = failure_rows(report)
    if frows:
        lines += [
            "### Failures",
            "",
            md(failure_note(report)) + ".",
            "",
        ]
        lines.append(_table(FAILURE_HEAD, [[md(c) for c in r] for r in frows], {1, 2, 3}))
        lines.append("")
    failed = report.failed_turns
    if failed:
        lines += [f"### Failed turns ({len(failed)})", ""]
        for t in failed[:MAX_FAILED_LISTED]:
            lines.append(f"- {md(failed_turn_line(t, report.multi_run))}")
        if len(failed) > MAX_FAILED_LISTED:
            lines.append(f"- … and {len(failed) - MAX_FAILED_LISTED} more (see the JSON report)")
        lines.append("")
    if report.warnings:
        lines += ["### Warnings", ""]
        lines += [f"- {md(w)}" for w in report.warnings]
        lines.append("")
    return "\n".join(lines)


def render_comparison(cmp: Comparison) -> str:
    a, b = cmp.a, cmp.b
    lines = [
        "## voiceaudit comparison",
        "",
        f"A: {md(a.label)} ({len(a.stats_turns)} turns in the statistics)  ",
        f"B: {md(b.label)} ({len(b.stats_turns)} turns in the statistics)",
        "",
        f"B against A, ms. Significance: Mann-Whitney U, two-sided, Holm-corrected, "
        f"p < {cmp.alpha:g}.",
        "",
    ]
    rows = []
    for m in cmp.metrics:
        *cells, verdict = metric_comparison_cells(m)
        rows.append([*cells, f"**{verdict}**" if m.significant else verdict])
    lines.append(_table(list(METRIC_COMPARISON_COLUMNS), rows, {1, 2, 3, 4, 5, 6, 7}))
    lines.append("")
    if cmp.rates:
        lines += [
            "### Turn-taking rates",
            "",
            "Fisher's exact test, two-sided, in the same Holm correction; Wilson 95% intervals.",
            "",
        ]
        rrows = []
        for r in cmp.rates:
            *cells, verdict = rate_comparison_cells(r)
            rrows.append([*cells, f"**{verdict}**" if r.significant else verdict])
        lines.append(_table(list(RATE_COMPARISON_COLUMNS), rrows, {1, 2, 3, 4, 5, 6}))
        lines.append("")
    if cmp.failures:
        lines += [
            "### Failures",
            "",
            "Failed turns as a share of each side's measured turns; Fisher's exact test, "
            "two-sided, in the same Holm correction; Wilson 95% intervals.",
            "",
        ]
        xrows = []
        for r in cmp.failures:
            *cells, verdict = rate_comparison_cells(r)
            xrows.append([*cells, f"**{verdict}**" if r.significant else verdict])
        lines.append(_table(list(FAILURE_COMPARISON_COLUMNS), xrows, {1, 2, 3, 4, 5, 6}))
        lines.append("")
    if cmp.findings:
        lines += ["### Findings (ms per turn)", ""]
        frows = [[f"`{f.kind}`", *finding_comparison_cells(f)] for f in cmp.findings]
        lines.append(_table(["finding", "A", "B", "Δ"], frows, {1, 2, 3}))
        lines.append("")
    if cmp.differences:
        lines += ["### What differs", ""]
        for k, (va, vb) in cmp.differences.items():
            lines.append(f"- {md(k)}: A = {md(repr(va))}, B = {md(repr(vb))}")
        lines.append("")
    if cmp.warnings:
        lines += ["### Warnings", ""]
        lines += [f"- {md(w)}" for w in cmp.warnings]
        lines.append("")
    return "\n".join(lines)
