"""Renderers: terminal (rich), Markdown, HTML (with matplotlib figures), JSON.

One entry point, :func:`render`, takes a :class:`~voiceaudit.analysis.Report` or a
:class:`~voiceaudit.analysis.Comparison` and a :class:`Format`, and returns the text.
Terminal output can also be printed straight to a rich console with :func:`print_to`.
Renderers never read traces: everything they show comes from the report object, except
the HTML call timeline (:mod:`voiceaudit.report.timeline`), which reads the trace's
``session.recording`` lines and the call recordings beside it. The
tables every format shows are built once, as data (columns, alignment, cells), in
:mod:`voiceaudit.report.tables`; each renderer only formats them.
"""

from __future__ import annotations

import io
from enum import StrEnum

from rich.console import Console

from voiceaudit.analysis.compare import Comparison
from voiceaudit.analysis.report import Report


class Format(StrEnum):
    TERMINAL = "terminal"
    MARKDOWN = "markdown"
    HTML = "html"
    JSON = "json"

    @classmethod
    def from_suffix(cls, suffix: str) -> Format | None:
        return {
            ".md": cls.MARKDOWN,
            ".markdown": cls.MARKDOWN,
            ".html": cls.HTML,
            ".htm": cls.HTML,
            ".json": cls.JSON,
            ".txt": cls.TERMINAL,
        }.get(suffix.lower())


def print_to(obj: Report | Comparison, console: Console) -> None:
    """Print the terminal rendering to a rich console (colours if it has them)."""
    from voiceaudit.report import terminal

    if isinstance(obj, Comparison):
        terminal.render_comparison(obj, console)
    else:
        terminal.render_report(obj, console)


def render(obj: Report | Comparison, fmt: Format, *, width: int = 100) -> str:
    """The report (or comparison) as text in ``fmt``."""
    if fmt is Format.JSON:
        return obj.to_json()
    if fmt is Format.MARKDOWN:
        from voiceaudit.report import markdown

        if isinstance(obj, Comparison):
            return markdown.render_comparison(obj)
        return markdown.render_report(obj)
    if fmt is Format.HTML:
        from voiceaudit.report import html

        if isinstance(obj, Comparison):
            return html.render_comparison(obj)
        return html.render_report(obj)
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, soft_wrap=False)
    print_to(obj, console)
    return buf.getvalue()


__all__ = ["Format", "print_to", "render"]
