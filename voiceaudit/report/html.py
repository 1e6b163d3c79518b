"""HTML rendering: one self-contained file, figures embedded as PNG data URIs.

Every string that comes from a trace (transcripts, target names, failure reasons, file
names) goes through :func:`html.escape`. The page carries no script at all, and its
Content-Security-Policy forbids scripts, so even a mistake in escaping could not run
code from a trace.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable

import voiceaudit.report.tables as tables
from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report, TurnReport
from voiceaudit.report import timeline
from voiceaudit.report.common import (
    MAX_TURNS_LISTED,
    UNRELIABLE_MARK,
    audio_format_lines,
    counts_line,
    drift_lines,
    failed_turn_lines,
    failure_banner,
    finding_label,
    fmt_ms,
    label,
    metric_rows,
    pacing_line,
    phone_lines,
    representative_turns,
    segment_label,
    show_paths,
    side_paths,
    target_line,
    turn_id,
    turn_taking_lines,
)
from voiceaudit.report.plots import (
    budget_png,
    cdf_png,
    concurrency_png,
    drift_png,
    waterfall_png,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: with call recordings: the players' embedded WAVs may play too
CSP_AUDIO = CSP + "; media-src data:"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{padding:.2em .7em;border-bottom:1px solid #e4e4e4;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.l,th.l{text-align:left}
.bad{color:#b36b00}.dim{color:#777}.fail{color:#b00020}
img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: Iterable[str], csp: str = CSP) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _table(head: list[str], rows: Iterable[list[str]], left: int = 1) -> str:
    """``head`` is escaped here; row cells must already be HTML."""
    h = "".join(
        f'<th class="l">{esc(c)}</th>' if i < left else f"<th>{esc(c)}</th>"
        for i, c in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _cell(c: tables.Cell) -> str:
    text = esc(c.text)
    if c.unreliable is not None:
        # the reason shows when the figure is hovered
        return f'<span class="bad" title="{esc(c.unreliable)}">{text}{UNRELIABLE_MARK}</span>'
    if c.kind is tables.Kind.CODE:
        return f"<code>{text}</code>"
    return f"<b>{text}</b>" if c.kind is tables.Kind.STRONG else text


def grid(t: tables.Table) -> str:
    """A :class:`~voiceaudit.report.tables.Table` as ``<table>``. The first column is
    always left-aligned (the style sheet's rule); running text after the figures is set
    left inside its cell."""
    lead = next((i for i, c in enumerate(t.columns) if c.right), len(t.columns))
    rows = (
        [
            f'<span class="l">{_cell(cell)}</span>' if c.prose and i >= lead else _cell(cell)
            for i, (c, cell) in enumerate(zip(t.columns, row, strict=True))
        ]
        for row in t.rows
    )
    return _table(t.head, rows, left=max(1, lead))


def _summary(report: Report) -> list[str]:
    out = ["<h2>Latency (ms)</h2>", grid(tables.latency(report))]
    if any(s.unreliable for _, s in metric_rows(report)):
        out.append(
            f'<p class="dim">{UNRELIABLE_MARK} marks a figure not to be trusted (too few '
            "samples or a wide 95% interval); hover it for the reason.</p>"
        )
    return out


def _budget(report: Report) -> list[str]:
    v2v = report.summary[VOICE_TO_VOICE].mean
    rows = [
        [esc(label(b.segment)), fmt_ms(b.mean_ms), f"{b.share * 100:.1f}%", f"{b.turns}"]
        for b in report.budget
    ]
    return [
        "<h2>Where the time goes</h2>",
        f"<p>Mean per turn; the segments sum to the mean voice-to-voice ({fmt_ms(v2v)} ms).</p>",
        _img(budget_png(report), "stacked latency budget by segment"),
        _table(["segment", "mean ms", "share", "turns"], rows),
    ]


def _findings(report: Report) -> list[str]:
    out = ["<h2>Findings</h2>"]
    if not report.findings:
        return [*out, "<p>No hidden delays found.</p>"]
    return [*out, grid(tables.findings(report, max_ms=True))]


def _turn_caption(t: TurnReport) -> str:
    bits = []
    if t.text is not None:
        bits.append(f"said: “{esc(t.text)}”")
    if t.transcript is not None:
        bits.append(f"heard: “{esc(t.transcript)}”")
    if t.audio is not None:
        bits.append(f"audio: {esc(t.audio)}")
    if t.findings:
        bits.append("findings: " + ", ".join(esc(finding_label(f.kind, f.ns)) for f in t.findings))
    if t.ledger.off_path:
        bits.append(
            "off the path: " + "; ".join(f"{esc(o.name)} ({esc(o.why)})" for o in t.ledger.off_path)
        )
    return "<p>" + "<br>".join(bits) + "</p>" if bits else ""


def _waterfalls(report: Report) -> list[str]:
    reps = representative_turns(report)
    if not reps:
        return []
    out = ["<h2>Turn waterfalls</h2>"]
    paths = {s.run_id: s.path for s in report.sources}
    for which, t in reps:
        v2v = (t.voice_to_voice_ns or 0) / 1e6
        title = f"{which}: {turn_id(t, report.multi_run)}, voice-to-voice {v2v:.1f} ms"
        out.append(f"<h3>{esc(title)}</h3>")
        out.append(_img(waterfall_png(t, title, paths.get(t.run_id)), title))
        out.append(_turn_caption(t))
    return out


def _concurrency(report: Report) -> list[str]:
    levels = tables.concurrency(report)
    if not levels.rows:
        return []
    return [
        "<h2>Voice-to-voice by concurrency</h2>",
        f"<p>{esc(levels.note)}.</p>",
        _img(concurrency_png(report), "voice-to-voice p50 and p95 per concurrency level"),
        grid(levels),
    ]


def _drift(report: Report) -> list[str]:
    """Long calls: voice-to-voice by turn index and over time, and the trend tests."""
    out = ["<h2>Long calls</h2>"]
    out.append(_img(drift_png(report), "voice-to-voice p50 and p95 over time, and the trend"))
    out += ["<h3>Voice-to-voice by turn index</h3>", grid(tables.drift_table(report, "turn"))]
    out += ["<h3>Voice-to-voice over time</h3>", grid(tables.drift_table(report, "time"))]
    items = "".join(f"<li><b>{esc(n)}</b>: {esc(t)}</li>" for n, t in drift_lines(report))
    out.append(f"<ul>{items}</ul>")
    return out


def _turn_taking(report: Report) -> list[str]:
    """The turn-taking section (scenario runs only)."""
    out = ["<h2>Turn-taking</h2>"]
    figures = tables.turn_taking_figures_table(report)
    if figures.rows:
        out.append(grid(figures))
    summary = turn_taking_lines(report)
    if summary:
        items = "".join(f"<li><b>{esc(name)}</b>: {esc(text)}</li>" for name, text in summary)
        out.append(f"<ul>{items}</ul>")
    else:
        out.append("<p>No barge-ins, cut-ins, sounds or truncation.</p>")
    events = tables.turn_taking_events(report, MAX_TURNS_LISTED)
    if events.rows:
        out.append(grid(events))
        if events.left_out:
            every = len(events.rows) + events.left_out
            out.append(
                f'<p class="dim">First {MAX_TURNS_LISTED} of {every} events; the JSON '
                "report lists them all.</p>"
            )
    return out


def _failures(report: Report) -> list[str]:
    kinds = tables.failures(report)
    if not kinds.rows:
        return []
    return [
        '<h2 class="fail">Failures</h2>',
        f"<p>{esc(kinds.note)}.</p>",
        grid(kinds),
    ]


def _failed(report: Report) -> list[str]:
    listed, more = failed_turn_lines(report)
    if not listed:
        return []
    items = "".join(f"<li>{esc(line)}</li>" for line in listed)
    if more:
        items += f"<li>… and {more} more (see the JSON report)</li>"
    return [
        f'<h2 class="fail">Failed turns ({len(report.failed_turns)})</h2>',
        f"<ul>{items}</ul>",
    ]


def _turns(report: Report) -> list[str]:
    turns = report.turns[:MAX_TURNS_LISTED]
    rows = []
    for t in turns:
        v2v = t.voice_to_voice_ns
        ledger = ", ".join(
            f"{esc(segment_label(s))} {fmt_ms(s.ns / 1e6)}" for s in t.ledger.segments
        )
        status = "ok" if t.ok else f'<span class="fail">failed: {esc(t.reason)}</span>'
        if t.warmup:
            status += ' <span class="dim">(warm-up)</span>'
        v2v_cell = fmt_ms(None if v2v is None else v2v / 1e6)
        if t.informative_ns is not None:
            # a failed turn's figure: labelled, never read as a measurement
            v2v_cell = (
                f'<span class="dim">({fmt_ms(t.informative_ns / 1e6)})<br>'
                f"{esc(t.informative_label)}</span>"
            )
        rows.append(
            [
                esc(turn_id(t, report.multi_run)),
                status,
                v2v_cell,
                f'<span class="l">{ledger}</span>',
                esc(", ".join(f.kind for f in t.findings)),
                esc(t.transcript or ""),
            ]
        )
    out = [
        "<h2>Turns</h2>",
        _table(
            ["turn", "status", "voice-to-voice ms", "ledger (ms)", "findings", "heard"], rows, 2
        ),
    ]
    if len(report.turns) > MAX_TURNS_LISTED:
        out.append(
            f'<p class="dim">First {MAX_TURNS_LISTED} of {len(report.turns)} turns; the JSON '
            "report lists them all.</p>"
        )
    return out


def _timeline(report: Report) -> list[str]:
    """Per turn, with the call's recording: its timeline strip and a player."""
    limit = timeline.env_max_embed_bytes()
    strips = timeline.strips(report, limit)
    if not strips:
        return []
    out = [
        "<h2>Call timeline</h2>",
        "<p>Per turn, the call as recorded: the caller's channel above, what the caller "
        "heard below, from just before the speech end to just after the reply was last "
        "heard; marks at the speech end, the first audible sample, the ledger's segment "
        "boundaries (dashed), barge-ins and cut-ins (hover a mark for its name).</p>",
    ]
    for s in strips:
        out.append(f"<h3>{esc(turn_id(s.turn, report.multi_run))}</h3>")
        out.append(s.svg)
        out.append(f'<p class="dim">{timeline.mark_legend(s)}</p>')
        out.append(f"<p>{timeline.audio_html(s, limit)}</p>")
    if len(report.turns) > timeline.MAX_STRIP_TURNS:
        out.append(
            f'<p class="dim">Strips for the first {timeline.MAX_STRIP_TURNS} of '
            f"{len(report.turns)} turns.</p>"
        )
    return out


def _pacing(report: Report) -> str:
    line = pacing_line(report)
    return "" if line is None else f"{esc(line[0].upper() + line[1:])}<br>"


def _warnings(warnings: Iterable[str]) -> list[str]:
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return ["<h2>Warnings</h2>", f"<ul>{items}</ul>"] if items else []


def render_report(report: Report) -> str:
    body = [
        "<h1>voiceaudit report" + (f": {esc(report.label)}" if report.label else "") + "</h1>",
        f"<p>{counts_line(report)}.<br>Target: {esc(target_line(report))}<br>"
        + "".join(f"Audio format: {esc(line)}<br>" for line in audio_format_lines(report))
        + _pacing(report)
        + '<span class="dim">Trace: '
        + esc(", ".join(s.path for s in report.sources))
        + "</span></p>",
    ]
    banner = failure_banner(report)
    if banner is not None:
        body.append(f'<p class="fail"><b>{esc(banner)}</b></p>')
    if report.stats_turns:
        body += _summary(report)
        body += _budget(report)
        body += [
            "<h2>Voice-to-voice distribution</h2>",
            _img(
                cdf_png([(report.label or "turns", report.metric_values[VOICE_TO_VOICE])]),
                "cumulative distribution of voice-to-voice latency",
            ),
        ]
        body += _findings(report)
        body += _concurrency(report)
        body += _waterfalls(report)
    else:
        body.append('<p class="fail"><b>No successful turns: no statistics.</b></p>')
    if report.drift is not None:
        body += _drift(report)
    if report.turn_taking is not None:
        body += _turn_taking(report)
    if phone_lines(report):
        items = "".join(
            f"<li><b>{esc(name)}</b>: {esc(text)}</li>" for name, text in phone_lines(report)
        )
        body += ["<h2>Phone and greeting</h2>", f"<ul>{items}</ul>"]
    body += _failures(report)
    body += _failed(report)
    body += _turns(report)
    strips = _timeline(report)
    body += strips
    body += _warnings(report.warnings)
    return _page("voiceaudit report", body, CSP_AUDIO if strips else CSP)


def render_comparison(cmp: Comparison) -> str:
    a, b = cmp.a, cmp.b
    paths = show_paths(a, b)

    def where(r: Report) -> str:
        return esc(f", {side_paths(r)}") if paths else ""

    body = [
        "<h1>voiceaudit comparison</h1>",
        f"<p>A: {esc(a.label)} ({len(a.stats_turns)} turns in the statistics{where(a)})<br>"
        f"B: {esc(b.label)} ({len(b.stats_turns)} turns in the statistics{where(b)})</p>",
        f"<p>B against A, ms. Significance: Mann-Whitney U, two-sided, Holm-corrected, "
        f"p &lt; {cmp.alpha:g}.</p>",
        grid(tables.metric_comparison(cmp)),
    ]
    if cmp.rates:
        body += [
            "<h2>Turn-taking rates</h2>",
            "<p>Fisher's exact test, two-sided, in the same Holm correction; Wilson 95% "
            "intervals.</p>",
            grid(tables.rate_comparison(cmp)),
        ]
    if cmp.failures:
        body += [
            "<h2>Failures</h2>",
            "<p>Failed turns as a share of each side's measured turns; Fisher's exact test, "
            "two-sided, in the same Holm correction; Wilson 95% intervals.</p>",
            grid(tables.failure_comparison(cmp)),
        ]
    body += [
        "<h2>Voice-to-voice distribution</h2>",
        _img(
            cdf_png(
                [
                    (f"A: {a.label}", a.metric_values[VOICE_TO_VOICE]),
                    (f"B: {b.label}", b.metric_values[VOICE_TO_VOICE]),
                ]
            ),
            "cumulative distributions of voice-to-voice latency, A and B",
        ),
    ]
    if cmp.findings:
        body += ["<h2>Findings (ms per turn)</h2>", grid(tables.finding_comparison(cmp))]
    if cmp.differences:
        items = "".join(
            f"<li>{esc(k)}: A = {esc(repr(va))}, B = {esc(repr(vb))}</li>"
            for k, (va, vb) in cmp.differences.items()
        )
        body += ["<h2>What differs</h2>", f"<ul>{items}</ul>"]
    body += _warnings(cmp.warnings)
    return _page("voiceaudit comparison", body)
