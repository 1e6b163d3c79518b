"""Rendering of the sweep view (terminal, Markdown, HTML with a plot, JSON)."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from voiceaudit.analysis.sweep import SweepView
from voiceaudit.report.common import fmt_ms

HEAD = [
    "pipeline",
    "network",
    "turns ok",
    "failed",
    "v2v p50 ms",
    "v2v p95 ms",
    "transport p50 ms",
    "buffer p50 ms",
    "turns with gaps",
    "gap ms/turn",
]


def _rows(view: SweepView) -> list[list[str]]:
    rows = []
    for g in view.groups:
        d = g.to_dict()
        rows.append(
            [
                g.pipeline,
                g.network,
                str(d["ok"]),
                str(d["failed"]),
                fmt_ms(d["voice_to_voice_p50_ms"]),
                fmt_ms(d["voice_to_voice_p95_ms"]),
                fmt_ms(d["transport_p50_ms"]),
                fmt_ms(d["buffer_p50_ms"]),
                f"{d['underrun_turns']}/{d['ok']}",
                fmt_ms(d["underrun_ms_per_turn"]),
            ]
        )
    return rows


PAIR_HEAD = ["A", "B", "p50 B-A ms", "p (Holm)", "verdict (B against A)"]


def _pair_rows(view: SweepView) -> list[list[str]]:
    rows = []
    for p in view.pairs:
        d = p.to_dict()
        diff = d["diff_p50_ms"]
        rows.append(
            [
                f"{p.a.pipeline} over {p.a.network}",
                f"{p.b.pipeline} over {p.b.network}",
                "" if diff is None else f"{diff:+.1f}",
                "" if d["p_adjusted"] is None else f"{d['p_adjusted']:.3g}",
                d["verdict"],
            ]
        )
    return rows


def _title(view: SweepView) -> str:
    o = view.manifest.options
    rep = o.get("repeats", 1)
    return (
        f"voiceaudit sweep: {len(view.pipelines)} pipeline(s) x {len(view.networks)} "
        f"network(s) x {rep} repeat(s), {len(view.manifest.cells)} cells"
    )


def render_terminal(view: SweepView, console: Console) -> None:
    t = Table(title="Per cell (repeats merged)", title_justify="left", show_edge=False)
    for i, h in enumerate(HEAD):
        t.add_column(h, justify="left" if i < 2 else "right")
    for r in _rows(view):
        t.add_row(*r)
    parts: list[Any] = [Text(_title(view), style="bold"), Text(f"sweep: {view.path}"), t]
    if view.pairs:
        pt = Table(
            title=f"Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})",
            title_justify="left",
            show_edge=False,
        )
        for i, h in enumerate(PAIR_HEAD):
            pt.add_column(h, justify="right" if i in (2, 3) else "left")
        for r in _pair_rows(view):
            pt.add_row(*r, style="bold" if r[-1] in ("slower", "faster") else "")
        parts += [Text(""), pt]
    for w in view.warnings:
        parts.append(Text(f"warning: {w}", style="yellow"))
    console.print(Group(*parts))


def render_text(view: SweepView, width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False)
    render_terminal(view, console)
    return buf.getvalue()


def _md_table(head: list[str], rows: list[list[str]], right: set[int]) -> str:
    def esc(x: str) -> str:
        return x.replace("|", "\\|")

    out = ["| " + " | ".join(head) + " |"]
    out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|")
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(view: SweepView) -> str:
    lines = [f"## {_title(view)}", "", f"Sweep: `{view.path}`", ""]
    lines += ["### Per cell (repeats merged)", ""]
    lines.append(_md_table(HEAD, _rows(view), set(range(2, len(HEAD)))))
    lines.append("")
    if view.pairs:
        lines += [
            f"### Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})",
            "",
            _md_table(PAIR_HEAD, _pair_rows(view), {2, 3}),
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
    from voiceaudit.report.html import _img, _page, _table, esc

    body = [
        f"<h1>{esc(_title(view))}</h1>",
        f'<p class="dim">Sweep: {esc(view.path)}</p>',
        _img(sweep_png(view), "voice-to-voice p50 and p95 per pipeline and network"),
        "<h2>Per cell (repeats merged)</h2>",
        _table(HEAD, ([esc(c) for c in r] for r in _rows(view)), left=2),
    ]
    if view.pairs:
        body += [
            f"<h2>Comparisons (voice-to-voice; Mann-Whitney U, Holm, alpha {view.alpha:g})</h2>",
            _table(PAIR_HEAD, ([esc(c) for c in r] for r in _pair_rows(view)), left=2),
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
