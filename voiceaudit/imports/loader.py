"""Read a telemetry file, tell what it is, import it, and place it on a trace."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# by module path: the package's __init__ imports this module, so this one does not import it
import voiceaudit.imports.livekit as livekit
import voiceaudit.imports.openai_realtime as openai_realtime
import voiceaudit.imports.pipecat as pipecat
from voiceaudit.imports.align import AssignedMeasure, ClockAlignment, place
from voiceaudit.imports.base import Telemetry, TelemetryError
from voiceaudit.imports.otel import NotSpans, OtelSpan, is_otlp, is_to_json_span, spans_from_objects
from voiceaudit.model import Event, Span
from voiceaudit.trace_io import Trace

#: what ``--format`` accepts
FORMATS = ("auto", "pipecat", "livekit", "openai-realtime")

#: refuse to load more than this (a telemetry export is kilobytes to a few megabytes)
MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ImportResult:
    """One telemetry file, imported (and placed on a trace's clock when one was given)."""

    path: str
    framework: str
    format: str
    spans: tuple[Span, ...]
    events: tuple[Event, ...]
    measures: tuple[AssignedMeasure, ...]
    #: None when no trace was given (times are then the framework's wall clock)
    alignment: ClockAlignment | None
    #: framework conversation label -> trace session (or the label itself, unplaced)
    sessions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: content attributes (transcripts, reply text, prompts) left out
    dropped_content: int = 0
    trace_path: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "framework": self.framework,
            "format": self.format,
            "spans": len(self.spans),
            "events": len(self.events),
            "measures": len(self.measures),
            "sessions": dict(self.sessions),
            "alignment": None if self.alignment is None else self.alignment.to_dict(),
            "dropped_content_attributes": self.dropped_content,
            "warnings": list(self.warnings),
            "trace": self.trace_path,
        }


def read_json_values(path: Path) -> list[Any]:
    """Every JSON value in the file: one document, JSON lines, or values one after another.

    A top-level array is flattened into its elements. Gzip is recognised by content.
    """
    if not path.exists():
        raise TelemetryError("no such file", path=str(path))
    if path.is_dir():
        raise TelemetryError("is a directory, not a telemetry file", path=str(path))
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
    except OSError as exc:
        raise TelemetryError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if raw is None:
        raise TelemetryError("too large for a telemetry export (over 512 MiB)", path=str(path))
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TelemetryError(f"broken gzip data ({exc})", path=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TelemetryError(
            "not a text file (bytes that are not UTF-8)",
            path=str(path),
            hint="telemetry is imported from JSON: span.to_json() lines, OTLP/JSON, "
            "LiveKit metrics records or OpenAI Realtime event logs",
        ) from None
    values: list[Any] = []
    dec = json.JSONDecoder()
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            raise TelemetryError(
                f"not valid JSON ({exc.msg})",
                path=str(path),
                line=line,
                hint="telemetry is imported from JSON files (one document or JSON lines)",
            ) from None
        values.append(value)
    if not values:
        raise TelemetryError("empty file: no telemetry in it", path=str(path))
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(v)
        else:
            out.append(v)
    if not out:
        raise TelemetryError("empty JSON array: no telemetry in it", path=str(path))
    return out


def _what_is_it(values: list[Any]) -> str:
    """A short description of unrelated JSON, for the error message."""
    first = values[0]
    if isinstance(first, dict):
        keys = sorted(first)[:6]
        if "ev" in first and "t" in first:
            return (
                "a relative-time event timeline ({'t', 'ev'} records, e.g. LiveKit's "
                "agent test framework): it has no clock to align"
            )
        if first.get("type") in ("header", "event", "span", "end"):
            return "a voiceaudit trace (give it as the trace, not as telemetry)"
        return "JSON objects with keys " + ", ".join(repr(k) for k in keys)
    return f"JSON {type(first).__name__} values"


def detect(values: list[Any], path: Path) -> str:
    """``otel``, ``livekit-metrics`` or ``openai-realtime``; TelemetryError otherwise."""
    if all(is_to_json_span(v) or is_otlp(v) for v in values):
        return "otel"
    if all(livekit.is_metrics_record(v) for v in values):
        return "livekit-metrics"
    if all(openai_realtime.is_event_record(v) for v in values):
        return "openai-realtime"
    kinds = [
        "otel"
        if (is_to_json_span(v) or is_otlp(v))
        else "livekit-metrics"
        if livekit.is_metrics_record(v)
        else "openai-realtime"
        if openai_realtime.is_event_record(v)
        else None
        for v in values
    ]
    known = [k for k in kinds if k is not None]
    if known:
        bad = next(i for i, k in enumerate(kinds) if k is None)
        raise TelemetryError(
            f"record {bad + 1} is not like the others ({known[0]} telemetry): "
            + _what_is_it([values[bad]]),
            path=str(path),
        )
    raise TelemetryError(
        "not framework telemetry: " + _what_is_it(values),
        path=str(path),
        hint="voiceaudit imports Pipecat and LiveKit OpenTelemetry spans (span.to_json() "
        "lines or OTLP/JSON), LiveKit metrics_collected records and OpenAI Realtime "
        "event logs; see docs/telemetry.md",
    )


def parse(path: Path, *, keep_content: bool = False, fmt: str = "auto") -> Telemetry:
    """The telemetry in ``path``, on the framework's own clock."""
    if fmt not in FORMATS:
        raise TelemetryError(
            f"unknown telemetry format {fmt!r}", hint="one of: " + ", ".join(FORMATS)
        )
    values = read_json_values(path)
    kind = detect(values, path)
    try:
        if kind == "otel":
            spans, sub = spans_from_objects(values)
            return _from_spans(spans, sub, fmt, path, keep_content)
        if kind == "livekit-metrics":
            _want(fmt, "livekit", path)
            return livekit.from_metrics(values, keep_content=keep_content)
        _want(fmt, "openai-realtime", path)
        return openai_realtime.from_events(values, keep_content=keep_content)
    except NotSpans as exc:
        raise TelemetryError(f"malformed OpenTelemetry JSON: {exc}", path=str(path)) from None
    except ValueError as exc:
        raise TelemetryError(f"malformed telemetry: {exc}", path=str(path)) from None


def _want(fmt: str, framework: str, path: Path) -> None:
    if fmt not in ("auto", framework):
        raise TelemetryError(f"this is {framework} telemetry, not {fmt}", path=str(path))


def _from_spans(
    spans: list[OtelSpan], sub: str, fmt: str, path: Path, keep_content: bool
) -> Telemetry:
    auto_pipecat = (
        fmt == "auto"
        and pipecat.looks_like_pipecat(spans)
        and not livekit.looks_like_livekit(spans)
    )
    if fmt == "pipecat" or auto_pipecat:
        return pipecat.from_spans(spans, sub, keep_content=keep_content)
    if fmt == "livekit" or (fmt == "auto" and livekit.looks_like_livekit(spans)):
        return livekit.from_spans(spans, sub, keep_content=keep_content)
    if fmt == "openai-realtime":
        raise TelemetryError(
            "these are OpenTelemetry spans, not an OpenAI event log", path=str(path)
        )
    names = sorted({s.name for s in spans})[:8]
    raise TelemetryError(
        "OpenTelemetry spans, but neither Pipecat's nor LiveKit's (span names: "
        + ", ".join(names)
        + ")",
        path=str(path),
        hint="say which framework made them with --format pipecat|livekit",
    )


def _wall_extent(tel: Telemetry) -> tuple[int, int] | None:
    ts = [t for it in tel.items for t in (it.start_ns, it.end_ns)]
    return (min(ts), max(ts)) if ts else None


def pick_trace(tel: Telemetry, traces: Sequence[Trace]) -> Trace | None:
    """The trace whose run overlaps the telemetry most in wall-clock time."""
    ext = _wall_extent(tel)
    if ext is None or not traces:
        return None
    if len(traces) == 1:
        return traces[0]
    best: tuple[int, int] | None = None
    pick: Trace | None = None
    for i, tr in enumerate(traces):
        cm = tr.clock_map()
        times = [e.t_ns for e in tr.events]
        if not times:
            continue
        lo, hi = cm.mono_to_wall(min(times)), cm.mono_to_wall(max(times))
        overlap = min(hi, ext[1]) - max(lo, ext[0])
        gap = -overlap if overlap < 0 else 0
        score = (overlap if overlap > 0 else 0, -gap)
        if best is None or score > best:
            best, pick = score, tr
        del i
    return pick


def import_telemetry(
    path: str | os.PathLike[str],
    *,
    trace: Trace | Sequence[Trace] | None = None,
    keep_content: bool = False,
    fmt: str = "auto",
    clock: str | int = "auto",
) -> ImportResult:
    """Import one telemetry file; with a trace, map it onto the trace's clock and turns.

    ``trace`` may be a list of traces: the one that overlaps the telemetry in time is used.
    Content attributes (transcripts, reply text, prompts) are dropped unless
    ``keep_content``. ``clock`` says how to align: ``auto`` (trust the anchors for a
    loopback target, else estimate a residual offset when the turns demand one),
    ``anchors`` (always trust them) or a residual offset in ns to apply. Raises
    :class:`TelemetryError` for anything that is not telemetry.
    """
    p = Path(path)
    tel = parse(p, keep_content=keep_content, fmt=fmt)
    chosen = trace if trace is None or isinstance(trace, Trace) else pick_trace(tel, list(trace))
    spans, events, measures, alignment, warnings, sessions = place(tel, chosen, clock)
    return ImportResult(
        path=str(p),
        framework=tel.framework,
        format=tel.format,
        spans=tuple(spans),
        events=tuple(events),
        measures=tuple(measures),
        alignment=alignment,
        sessions=sessions,
        warnings=tuple(tel.warnings + warnings),
        dropped_content=tel.dropped_content,
        trace_path=None if chosen is None else chosen.path,
    )
