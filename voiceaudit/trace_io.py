"""Crash-safe trace writer and tolerant trace reader.

Writer: append-only JSON Lines; records are buffered and made durable (flush + fsync) at
every :meth:`TraceWriter.commit`, which the probe calls at each turn boundary. A process
killed at any moment leaves a file whose every committed line is intact; at most the
last line is cut short, and the reader drops it.

Reader: ``.jsonl`` or ``.jsonl.gz`` (found by content, not name), a directory of traces,
a trace with no closing record (incomplete: finished turns are kept). Anything else is a
:class:`~voiceaudit.errors.TraceError` naming the file and line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from voiceaudit.clock import Anchor, ClockMap
from voiceaudit.errors import NoDataError, TraceError
from voiceaudit.model import (
    SCHEMA_HISTORY,
    SCHEMA_VERSION,
    End,
    Event,
    Header,
    Record,
    Span,
    parse_schema,
    record_from_dict,
)

TRACE_SUFFIXES = (".jsonl", ".jsonl.gz")
REDACTED = "[redacted]"

#: The probe event that closes a turn; a turn is "finished" when its turn.end is on disk.
TURN_END = "turn.end"


def _dumps(rec: Record) -> str:
    return json.dumps(rec.to_dict(), separators=(",", ":"), ensure_ascii=False)


class TraceWriter:
    """Append-only, crash-safe JSON Lines writer.

    ``secrets`` are strings (API keys, tokens) that must never reach disk: any line that
    contains one has it replaced by ``[redacted]`` before it is written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: Header,
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets = tuple(s for s in secrets if s)
        self._file: IO[str] | None = open(  # noqa: SIM115 - closed in close()
            self.path, "x", encoding="utf-8", newline="\n"
        )
        self._counts: dict[str, int] = {"events": 0, "spans": 0}
        self._write_line(_dumps(header))
        self.commit()

    def _write_line(self, line: str) -> None:
        if self._file is None:
            raise ValueError("trace writer is closed")
        for s in self._secrets:
            if s in line:
                line = line.replace(s, REDACTED)
        self._file.write(line + "\n")

    def write(self, rec: Event | Span) -> None:
        """Buffer a record; it becomes durable at the next :meth:`commit`."""
        self._write_line(_dumps(rec))
        self._counts["events" if isinstance(rec, Event) else "spans"] += 1

    def event(
        self,
        session: str,
        turn: int | None,
        t_ns: int,
        source: str,
        stage: str,
        name: str,
        attrs: dict[str, Any] | None = None,
    ) -> Event:
        ev = Event(session, turn, t_ns, source, stage, name, attrs or {})
        self.write(ev)
        return ev

    def count(self, name: str, n: int = 1) -> None:
        """Add to a named counter reported in the closing record (e.g. turns_ok)."""
        self._counts[name] = self._counts.get(name, 0) + n

    def commit(self) -> None:
        """Make everything written so far durable (flush + fsync)."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, reason: str = "complete", anchor: Anchor | None = None) -> None:
        """Write the closing record and close the file. Idempotent."""
        if self._file is None:
            return
        self._write_line(_dumps(End(reason=reason, counts=dict(self._counts), anchor=anchor)))
        self.commit()
        self._file.close()
        self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("error")


@dataclass(frozen=True)
class Trace:
    """One trace file, read back."""

    path: str
    header: Header
    events: tuple[Event, ...]
    spans: tuple[Span, ...]
    end: End | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def anchors(self) -> tuple[Anchor, ...]:
        if self.end is not None and self.end.anchor is not None:
            return (*self.header.anchors, self.end.anchor)
        return self.header.anchors

    def clock_map(self) -> ClockMap:
        return ClockMap(self.anchors)

    def finished_turns(self) -> list[tuple[str, int]]:
        """(session, turn) of every turn whose closing ``turn.end`` event was recorded."""
        seen: dict[tuple[str, int], None] = {}
        for ev in self.events:
            if ev.name == TURN_END and ev.source == "probe" and ev.turn is not None:
                seen[(ev.session, ev.turn)] = None
        return list(seen)

    def turn_events(self, session: str, turn: int) -> list[Event]:
        return [e for e in self.events if e.session == session and e.turn == turn]


def _open_text(path: Path) -> tuple[IO[str], bool]:
    raw = path.open("rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8"), True
    return io.TextIOWrapper(raw, encoding="utf-8"), False


def _lines(f: IO[str], path: Path, warnings: list[str]) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text, ended_with_newline); stop quietly at a cut-short gzip."""
    n = 0
    try:
        for line in f:
            n += 1
            yield n, line, line.endswith("\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        warnings.append(f"compressed data ends early after line {n} ({exc}); kept what was read")
    except UnicodeDecodeError:
        raise TraceError(
            "not a text file (bytes that are not UTF-8)", path=str(path), line=n + 1
        ) from None


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read one trace file; raise :class:`TraceError` for anything that is not one."""
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file", path=str(p))
    if p.is_dir():
        raise TraceError("is a directory (use read_traces)", path=str(p))
    warnings: list[str] = []
    header: Header | None = None
    events: list[Event] = []
    spans: list[Span] = []
    end: End | None = None
    pending_error: TraceError | None = None
    try:
        f, _ = _open_text(p)
    except OSError as exc:
        raise TraceError(f"cannot open: {exc.strerror}", path=str(p)) from None
    with f:
        for lineno, text, has_newline in _lines(f, p, warnings):
            if pending_error is not None:
                # A bad line followed by more lines is corruption, not a cut-short write.
                raise pending_error
            if not text.strip():
                continue
            try:
                rec = record_from_dict(json.loads(text))
            except (json.JSONDecodeError, ValueError) as exc:
                err = TraceError(f"invalid record: {exc}", path=str(p), line=lineno)
                if header is not None and not has_newline:
                    # The last line of a killed writer: drop it, keep the rest.
                    warnings.append(f"line {lineno} is cut short (writer stopped mid-line)")
                    break
                if header is None:
                    raise _not_a_trace(p, lineno, text, exc) from None
                pending_error = err
                continue
            if header is None:
                if not isinstance(rec, Header):
                    raise TraceError("the first record must be a header", path=str(p), line=lineno)
                _check_schema(rec, p)
                header = rec
            elif isinstance(rec, Event):
                events.append(rec)
            elif isinstance(rec, Span):
                spans.append(rec)
            elif isinstance(rec, End):
                end = rec
            else:
                raise TraceError("a second header record", path=str(p), line=lineno)
            if end is not None and rec is not end:
                warnings.append(f"line {lineno}: records after the closing record")
        if pending_error is not None:
            raise pending_error
    if header is None:
        if warnings:
            raise TraceError("compressed trace is cut short before its header", path=str(p))
        raise TraceError("empty file: no header record", path=str(p))
    if end is None:
        warnings.append("no closing record: the run was cut short; finished turns are kept")
    return Trace(str(p), header, tuple(events), tuple(spans), end, tuple(warnings))


def _not_a_trace(p: Path, lineno: int, text: str, exc: Exception) -> TraceError:
    if isinstance(exc, json.JSONDecodeError):
        return TraceError(
            "not a voiceaudit trace (line 1 is not JSON)",
            path=str(p),
            line=lineno,
            hint="a trace is the trace.jsonl file that 'voiceaudit run' writes",
        )
    return TraceError(f"not a voiceaudit trace ({exc})", path=str(p), line=lineno)


def _check_schema(h: Header, p: Path) -> None:
    try:
        _, version = parse_schema(h.schema)
    except ValueError as exc:
        raise TraceError(str(exc), path=str(p), line=1) from None
    if version > SCHEMA_VERSION:
        raise TraceError(
            f"written by a newer voiceaudit (schema version {version}); "
            f"this one reads versions up to {SCHEMA_VERSION}",
            path=str(p),
            line=1,
            hint="pip install --upgrade voiceaudit",
        )
    if version not in SCHEMA_HISTORY:
        raise TraceError(f"unknown schema version {version}", path=str(p), line=1)


def find_traces(path: str | os.PathLike[str]) -> list[Path]:
    """The trace files at ``path``: the file itself, or every trace below a directory."""
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file or directory", path=str(p))
    if p.is_file():
        return [p]
    found = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(TRACE_SUFFIXES))
    if not found:
        raise NoDataError(
            f"{p}: no traces in this directory (looked for *.jsonl and *.jsonl.gz)",
            hint="point at a trace.jsonl written by 'voiceaudit run', or at its run directory",
        )
    return found


def read_traces(paths: Iterable[str | os.PathLike[str]]) -> list[Trace]:
    """Read every trace found at ``paths`` (files or directories)."""
    traces = [read_trace(f) for path in paths for f in find_traces(path)]
    if not traces:
        raise NoDataError("no traces given")
    return traces
