"""Rendering of the sweep view (terminal, Markdown, HTML with a plot, JSON)."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from voiceaudit.analysis.sweep import SweepView
from voiceaudit.report.common import fmt_ms
from voiceaudit.report.tables import Cell, Column, Table, left

#: Columns of the per-cell table: the cell, then its figures.
COLUMNS = (
    left("pipeline"),
    left("path"),
    left("network"),
    *(
        Column(h)
        for h in (
            "turns ok",
            "failed",
            "v2v p50 ms",
            "v2v p95 ms",
            "transport p50 ms",
            "greeting p50 ms",
            "buffer p50 ms",
            "turns with gaps",
            "gap ms/turn",
        )
    ),
)


def cell_table(view: SweepView) -> Table:
    """One row per cell of the sweep (its repeats merged)."""
    rows = []
    for g in view.groups:
        d = g.to_dict()
        texts = [
            g.pipeline,
            g.path,
            g.network,
            str(d["ok"]),
            str(d["failed"]),
            *(
                fmt_ms(d[k])
                for k in (
                    "voice_to_voice_p50_ms",
                    "voice_to_voice_p95_ms",
                    "transport_p50_ms",
                    "greeting_p50_ms",
                    "buffer_p50_ms",
                )
            ),
            f"{d['underrun_turns']}/{d['ok']}",
            fmt_ms(d["underrun_ms_per_turn"]),
        ]
        rows.append(tuple(Cell(t) for t in texts))
    return Table(COLUMNS, tuple(rows))


#: Columns of the comparison table: the two cells, B - A, p-value and verdict.
PAIR_COLUMNS = (
    left("A"),
    left("B"),
    Column("p50 B-A ms"),
    Column("p (Holm)"),
    left("verdict (B against A)"),
)


def pair_table(view: SweepView) -> Table:
    """One row per compared pair of cells, the significant ones highlighted."""
    rows = []
    for p in view.pairs:
        d = p.to_dict()
        diff = d["diff_p50_ms"]
        paths = p.a.path != p.b.path
        texts = [
            f"{p.a.pipeline} over {p.a.network}" + (f" ({p.a.path})" if paths else ""),
            f"{p.b.pipeline} over {p.b.network}" + (f" ({p.b.path})" if paths else ""),
            "" if diff is None else f"{diff:+.1f}",
            "" if d["p_adjusted"] is None else f"{d['p_adjusted']:.3g}",
            d["verdict"],
        ]
        rows.append(tuple(Cell(t) for t in texts))
    marked = frozenset(i for i, r in enumerate(rows) if r[-1].text in ("slower", "faster"))
    return Table(PAIR_COLUMNS, tuple(rows), marked)


def _title(view: SweepView) -> str:
    o = view.manifest.options
    rep = o.get("repeats", 1)
    return (
        f"voiceaudit sweep: {len(view.pipelines)} pipeline(s) x {len(view.networks)} "
        f"network(s) x {rep} repeat(s), {len(view.manifest.cells)} cells"
    )


def render_terminal(view: SweepView, console: Console) -> None:
    from voiceaudit.report.terminal import grid

    t = grid(cell_table(view), "Per cell (repeats merged)", pad_edge=True)
    parts: list[Any] = [Text(_title(view), style="bold"), Text(f"sweep: {view.path}"), t]
    if view.pairs:
        title = f"Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})"
        parts += [Text(""), grid(pair_table(view), title, pad_edge=True)]
    for w in view.warnings:
        parts.append(Text(f"warning: {w}", style="yellow"))
    console.print(Group(*parts))


def render_text(view: SweepView, width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False)
    render_terminal(view, console)
    return buf.getvalue()


def _md(t: Table) -> str:
    """``t`` as a pipe table (its text escapes only the pipe)."""
    from voiceaudit.report.markdown import pipe_table

    rows = [[c.text.replace("|", "\\|") for c in r] for r in t.rows]
    return pipe_table(t.head, rows, t.right())


def render_markdown(view: SweepView) -> str:
    lines = [f"## {_title(view)}", "", f"Sweep: `{view.path}`", ""]
    lines += ["### Per cell (repeats merged)", "", _md(cell_table(view)), ""]
    if view.pairs:
        lines += [
            f"### Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})",
            "",
            _md(pair_table(view)),
            "",
        ]
    if view.warnings:
        lines += ["### Warnings", ""] + [f"- {w}" for w in view.warnings] + [""]
    return "\n".join(lines)


def sweep_png(view: SweepView) -> bytes:
    """Voice-to-voice p50 (bar) and p95 (tick) per network, one bar per pipeline, and
    the share of turns with a gap on a second axis."""
    from voiceaudit.report.plots import _RC, _plt, _png

    plt = _plt()
    pipes, nets = view.pipelines, view.networks
    width = 0.8 / max(1, len(pipes))
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(nets) + 2), 3.6))
        for i, pipe in enumerate(pipes):
            xs, p50, p95 = [], [], []
            for j, net in enumerate(nets):
                g = view.group(pipe, net)
                d = g.to_dict() if g is not None else None
                if d is None or d["voice_to_voice_p50_ms"] is None:
                    continue
                xs.append(j + (i - (len(pipes) - 1) / 2) * width)
                p50.append(d["voice_to_voice_p50_ms"])
                p95.append(d["voice_to_voice_p95_ms"])
            bars = ax.bar(xs, p50, width=width * 0.9, label=f"{pipe} p50")
            ax.scatter(
                xs, p95, marker="_", s=300, color=bars.patches[0].get_facecolor() if bars else None
            )
        ax.set_xticks(range(len(nets)), nets)
        ax.set_ylabel("voice-to-voice (ms); tick = p95")
        ax.legend(loc="upper left", frameon=False)
        return _png(fig)


def render_html(view: SweepView) -> str:
    """One self-contained page, as the report's (same style and Content-Security-Policy)."""
    from voiceaudit.report.html import _img, _page, esc, grid

    body = [
        f"<h1>{esc(_title(view))}</h1>",
        f'<p class="dim">Sweep: {esc(view.path)}</p>',
        _img(sweep_png(view), "voice-to-voice p50 and p95 per pipeline and network"),
        "<h2>Per cell (repeats merged)</h2>",
        grid(cell_table(view)),
    ]
    if view.pairs:
        body += [
            f"<h2>Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})</h2>",
            grid(pair_table(view)),
        ]
    if view.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in view.warnings)
        body += ["<h2>Warnings</h2>", f"<ul>{items}</ul>"]
    return _page("voiceaudit sweep", body)


def render_sweep(view: SweepView, fmt: str, *, width: int = 120) -> str:
    if fmt == "json":
        return json.dumps(view.to_dict(), indent=1) + "\n"
    if fmt == "markdown":
        return render_markdown(view)
    if fmt == "html":
        return render_html(view)
    return render_text(view, width)
