"""The report's tables as data: columns (name, alignment), rows of cells, built once.

Every renderer shows the same tables; this module decides what is in them (which
columns, in which order, aligned how, which cell is emphasised or not to be trusted)
and the renderers only format a :class:`Table`: Markdown as a pipe table, HTML as
``<table>``, the terminal as a rich table. What a renderer adds is its own: titles and
notes, how it marks an unreliable figure, how it colours a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from voiceaudit.analysis.compare import Comparison, RateComparison
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report
from voiceaudit.analysis.stats import Summary
from voiceaudit.report.common import (
    COLUMNS,
    CONCURRENCY_HEAD,
    DRIFT_TIME_HEAD,
    DRIFT_TURN_HEAD,
    FAILURE_COMPARISON_COLUMNS,
    FAILURE_HEAD,
    METRIC_COMPARISON_COLUMNS,
    RATE_COMPARISON_COLUMNS,
    TURN_TAKING_HEAD,
    concurrency_rows,
    drift_rows,
    failure_note,
    failure_rows,
    finding_comparison_cells,
    fmt_cost,
    fmt_ms,
    knee_line,
    label,
    metric_comparison_cells,
    metric_rows,
    rate_comparison_cells,
    summary_cells,
    turn_taking_figures,
    turn_taking_rows,
)


class Kind(Enum):
    """What a cell's text is: it says how each format marks it."""

    #: our own words and figures, shown as they are
    PLAIN = "plain"
    #: text that may carry markup characters (trace text, a description): Markdown
    #: escapes it (HTML escapes every cell)
    TEXT = "text"
    #: an identifier (a finding's kind): code in Markdown and HTML
    CODE = "code"
    #: what to read first (voice-to-voice, a significant verdict): bold
    STRONG = "strong"


class Tone(Enum):
    """How the terminal colours a cell (Markdown and HTML do not colour)."""

    PLAIN = ""
    GOOD = "green"
    BAD = "red"
    MUTED = "dim"
    WARN = "yellow"


@dataclass(frozen=True)
class Column:
    """One column: its header and how its cells sit."""

    name: str
    #: numbers are right-aligned, names and text left
    right: bool = True
    #: the terminal never wraps it (short labels, figures)
    no_wrap: bool = False
    #: running text after the figures (HTML sets it left inside its cell)
    prose: bool = False
    #: narrow layouts (the terminal) show it below the previous column, in its cell
    stacked: bool = False


def left(name: str, *, no_wrap: bool = False, prose: bool = False) -> Column:
    """A left-aligned column (a name or text)."""
    return Column(name, right=False, no_wrap=no_wrap, prose=prose)


@dataclass(frozen=True)
class Cell:
    """One cell's text and what it stands for; each renderer formats that its own way."""

    text: str
    kind: Kind = Kind.PLAIN
    #: the terminal's colour for it (a strong cell without one is bold)
    tone: Tone = Tone.PLAIN
    #: why the figure is not to be trusted (it is then marked), None when it is
    unreliable: str | None = None


@dataclass(frozen=True)
class Table:
    """Columns and rows of cells (as many cells as columns in every row)."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    #: rows to draw the eye to (the terminal shows them bold)
    highlight: frozenset[int] = field(default_factory=frozenset)
    #: what the figures are of, in a sentence (the terminal's caption)
    note: str | None = None
    #: rows past the renderer's limit, not in ``rows``
    left_out: int = 0

    @property
    def head(self) -> list[str]:
        """The column headers."""
        return [c.name for c in self.columns]

    def right(self) -> set[int]:
        """Indexes of the right-aligned columns."""
        return {i for i, c in enumerate(self.columns) if c.right}


def _cells(texts: Iterable[str], kind: Kind = Kind.PLAIN) -> tuple[Cell, ...]:
    return tuple(Cell(t, kind) for t in texts)


def _figure_cells(s: Summary) -> tuple[Cell, ...]:
    """A summary's figures (:data:`COLUMNS`), the unreliable ones with the reason."""
    return tuple(
        Cell(v, unreliable=s.unreliable.get(col, "") if bad else None)
        for (v, bad), col in zip(summary_cells(s), COLUMNS, strict=True)
    )


def _figure_columns(first: str) -> tuple[Column, ...]:
    return (left(first), *(Column(c) for c in COLUMNS))


def latency(report: Report) -> Table:
    """Voice-to-voice (emphasised) and every segment present: n, mean, percentiles."""
    rows = []
    for name, s in metric_rows(report):
        head = Cell(label(name), Kind.STRONG if name == VOICE_TO_VOICE else Kind.PLAIN)
        rows.append((head, *_figure_cells(s)))
    return Table(_figure_columns("metric"), tuple(rows))


def turn_taking_figures_table(report: Report, first: str = "metric (ms)") -> Table:
    """The turn-taking latencies (barge-in stop, response to an interruption, the other
    turns' voice-to-voice) as :func:`latency` shows its metrics."""
    rows = tuple(
        (Cell(name, Kind.TEXT), *_figure_cells(s)) for name, s in turn_taking_figures(report)
    )
    return Table(_figure_columns(first), rows)


def turn_taking_events(report: Report, limit: int) -> Table:
    """One row per turn-taking event (see :func:`~voiceaudit.report.common.turn_taking_rows`),
    the first ``limit`` of them."""
    every = turn_taking_rows(report)
    events = every[:limit]
    turn, what, ms, detail, found = TURN_TAKING_HEAD
    columns = (
        left(turn, no_wrap=True),
        left(what, no_wrap=True),
        Column(ms),
        left(detail, prose=True),
        left(found, prose=True),
    )
    rows = tuple(
        (
            Cell(r.turn, Kind.TEXT),
            Cell(r.what, Kind.TEXT),
            Cell(fmt_ms(r.ms)),
            Cell(r.detail, Kind.TEXT),
            Cell(", ".join(r.findings), Kind.TEXT, Tone.WARN),
        )
        for r in events
    )
    return Table(columns, rows, left_out=len(every) - len(events))


def findings(report: Report, *, unit: str = "", max_ms: bool = False) -> Table:
    """The report's findings: kind, turns, ms per turn, median ms when found (and the
    most, with ``max_ms``), what it is. With ``unit`` (`` ms``) the figures carry the
    unit and the headers do not."""
    ms = "" if unit else "ms "
    columns = [
        left("finding", no_wrap=True),
        Column("turns", no_wrap=True),
        Column(f"{ms}per turn", no_wrap=True),
        Column(f"median {ms}when found", no_wrap=True),
    ]
    if max_ms:
        columns.append(Column(f"max {ms}".strip(), no_wrap=True))
    columns.append(left("what it is", prose=True))
    rows = []
    for f in report.findings:
        costs = [f.per_turn_ms, f.cost.p50] + ([f.cost.max] if max_ms else [])
        rows.append(
            (
                Cell(f.kind, Kind.CODE),
                Cell(f"{f.turns}/{f.of}"),
                *(Cell(fmt_cost(f.kind, c, unit)) for c in costs),
                Cell(f.description, Kind.TEXT),
            )
        )
    return Table(tuple(columns), tuple(rows))


def concurrency(report: Report) -> Table:
    """Voice-to-voice per concurrency level, the knee's row highlighted."""
    *figures, note = CONCURRENCY_HEAD
    rows = concurrency_rows(report)
    return Table(
        (*(Column(h) for h in figures), left(note)),
        tuple(_cells(r) for r in rows),
        frozenset(i for i, r in enumerate(rows) if r[-1] == "knee"),
        knee_line(report),
    )


def drift_table(report: Report, by: str) -> Table:
    """Voice-to-voice by turn index (``by`` ``turn``) or over time (``time``): turns,
    p50, p95 and failed turns per range or window (no rows without a drift view)."""
    first, *figures = DRIFT_TURN_HEAD if by == "turn" else DRIFT_TIME_HEAD
    rows = drift_rows(report, by)
    return Table(
        (left(first, no_wrap=True), *(Column(h) for h in figures)),
        tuple(_cells(r) for r in rows),
    )


def failures(report: Report) -> Table:
    """Failed turns by kind: turns, share of the measured turns, warm-ups, first reason."""
    name, *counts, reason = FAILURE_HEAD
    columns = (
        left(name, no_wrap=True),
        *(Column(h, no_wrap=True) for h in counts),
        left(reason),
    )
    rows = tuple(_cells(r, Kind.TEXT) for r in failure_rows(report))
    return Table(columns, rows, note=failure_note(report))


def _verdict(text: str, significant: bool, tones: dict[str, Tone]) -> Cell:
    kind = Kind.STRONG if significant else Kind.PLAIN
    return Cell(text, kind, tones.get(text, Tone.MUTED))


def metric_comparison(cmp: Comparison) -> Table:
    """B against A per metric: p50 and mean of each side and their difference, the
    Holm-adjusted p-value and the verdict."""
    name, *figures, verdict = METRIC_COMPARISON_COLUMNS
    tones = {"B faster": Tone.GOOD, "B slower": Tone.BAD}
    rows = []
    for m in cmp.metrics:
        *cells, v = metric_comparison_cells(m)
        rows.append((*_cells(cells), _verdict(v, m.significant, tones)))
    return Table((left(name), *(Column(h) for h in figures), left(verdict)), tuple(rows))


def _rates(columns: Sequence[str], compared: Sequence[RateComparison]) -> Table:
    name, *figures, verdict = columns
    cols = (
        left(name, no_wrap=True),
        *(Column(h, no_wrap=True, stacked=h.endswith("95% CI")) for h in figures),
        left(verdict),
    )
    tones = {"B higher": Tone.BAD, "B lower": Tone.GOOD}
    rows = []
    for r in compared:
        *cells, v = rate_comparison_cells(r)
        rows.append((*_cells(cells), _verdict(v, r.significant, tones)))
    return Table(cols, tuple(rows))


def rate_comparison(cmp: Comparison) -> Table:
    """B against A per turn-taking rate: each side's rate and Wilson interval, the
    difference, the Holm-adjusted p-value and the verdict."""
    return _rates(RATE_COMPARISON_COLUMNS, cmp.rates)


def failure_comparison(cmp: Comparison) -> Table:
    """B against A per failure kind, as :func:`rate_comparison`."""
    return _rates(FAILURE_COMPARISON_COLUMNS, cmp.failures)


def finding_comparison(cmp: Comparison) -> Table:
    """B against A per finding: ms per turn of each side (with its turns) and B - A."""
    columns = (left("finding", no_wrap=True), *(Column(h, no_wrap=True) for h in ("A", "B", "Δ")))
    rows = tuple(
        (Cell(f.kind, Kind.CODE), *_cells(finding_comparison_cells(f))) for f in cmp.findings
    )
    return Table(columns, rows)
