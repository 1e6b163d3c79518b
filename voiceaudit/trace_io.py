"""Crash-safe trace writer and tolerant trace reader.

Writer: append-only JSON Lines; records are buffered and made durable (flush + fsync) at
every :meth:`TraceWriter.commit`, which the probe calls at each turn boundary. A process
killed at any moment leaves a file whose every committed line is intact; at most the
last line is cut short, and the reader drops it.

Reader: ``.jsonl`` or ``.jsonl.gz`` (found by content, not name), a directory of traces,
a trace with no closing record (incomplete: finished turns are kept). Anything else is a
:class:`~voiceaudit.errors.TraceError` naming the file and line. Records that are well
formed but make no sense (a turn that starts twice, ends before it starts, a time that is
no time of the run, CRLF line ends) are read, with a warning naming the line
(docs/trace-format.md, "Reader rules").
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib
import io
import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from voiceaudit.clock import Anchor, ClockMap
from voiceaudit.errors import NoDataError, TraceError
from voiceaudit.model import (
    BATCHED,
    SCHEMA_HISTORY,
    SCHEMA_VERSION,
    SOURCES,
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


def _fsync_quiet(fd: int) -> None:
    # A run interrupted mid-fsync may close the file under it; close() syncs again.
    with contextlib.suppress(OSError):
        os.fsync(fd)


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

    async def commit_async(self) -> None:
        """:meth:`commit`, with the fsync in a worker thread: an fsync takes a millisecond
        or more (far more on a busy disk), and on the event loop it would hold every
        session's paced sends. Durable when it returns, like :meth:`commit`."""
        if self._file is None:
            return
        self._file.flush()
        await asyncio.to_thread(_fsync_quiet, self._file.fileno())

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


def _first_line_crlf(path: Path) -> bool:
    """Whether the file's first line ends in CRLF. The reader's text mode turns CRLF into
    LF (and reading that way is the fastest), so the raw bytes are looked at once."""
    try:
        with path.open("rb") as raw:
            head = raw.read(1 << 16)
            if head[:2] == b"\x1f\x8b":
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw) as g:
                    head = g.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return False
    i = head.find(b"\n")
    return i > 0 and head[i - 1 : i] == b"\r"


#: How far from the run's start anchor an event time may lie before it is called absurd:
#: a week (a long load run lasts hours; a monotonic clock never runs backwards past boot).
ODD_TIME_NS = 7 * 86_400 * 10**9

#: Events :class:`_Oddities` looks at whatever their time.
_CHECKED = frozenset({"turn.start", TURN_END, "reply.chunk"})


def _where(session: str, turn: int | None) -> str:
    return f"session {session}" + ("" if turn is None else f" turn {turn}")


class _Oddities:
    """Well-formed records that make no sense, found while a trace is read: each kind is
    one warning naming its first line (and how many lines in all), so the report never
    gives a figure from such a turn without saying so. A v1 ``reply.chunk`` with a
    negative size is refused outright (as a malformed ``reply.chunks`` is)."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        base = min((a.mono_ns for a in header.anchors), default=None)
        #: event times outside [lo, hi] are absurd (negative ones always)
        self.lo = 0 if base is None else max(0, base - ODD_TIME_NS)
        self.hi = 2**63 - 1 if base is None else base + ODD_TIME_NS
        self.base = base
        self._first: dict[str, str] = {}
        self._count: dict[str, int] = {}
        #: (session, turn) -> (line, t_ns, ok) of its turn.start / turn.end
        self._starts: dict[tuple[str, int], tuple[int, int]] = {}
        self._ends: dict[tuple[str, int], tuple[int, int, bool]] = {}

    def _note(self, kind: str, message: str) -> None:
        self._count[kind] = self._count.get(kind, 0) + 1
        self._first.setdefault(kind, message)

    def event(
        self, lineno: int, session: str, turn: int | None, t_ns: int, name: str, attrs: Any
    ) -> None:
        if not self.lo <= t_ns <= self.hi:
            self._odd_time(lineno, f"{name} at t_ns {t_ns}", t_ns, _where(session, turn))
        if name in BATCHED:
            # the items' times are t_ns + dt_ns (the arrays were checked: integers)
            dt = attrs["dt_ns"]
            if dt:
                for t in (t_ns + min(dt), t_ns + max(dt)):
                    if not self.lo <= t <= self.hi:
                        what = f"an item of {name} at {t} ns"
                        self._odd_time(lineno, what, t, _where(session, turn))
                        break
            return
        if name == "reply.chunk":
            for size in ("samples", "bytes"):
                v = attrs.get(size) if type(attrs) is dict else None
                if type(v) is int and v < 0:
                    raise TraceError(
                        f"invalid record: reply.chunk: attrs.{size} is negative ({v})",
                        path=str(self.path),
                        line=lineno,
                    )
            return
        if turn is None or name not in _CHECKED:
            return
        key = (session, turn)
        if name == "turn.start":
            if key in self._starts:
                self._note(
                    "twice",
                    f"line {lineno}: {_where(session, turn)} starts a second time "
                    f"(turn.start; the first is on line {self._starts[key][0]}): "
                    "its figures are suspect",
                )
                return
            self._starts[key] = (lineno, t_ns)
            end = self._ends.get(key)
            if end is not None:
                self._note(
                    "order",
                    f"line {lineno}: {_where(session, turn)} starts (turn.start) after its "
                    f"turn.end on line {end[0]}: its figures are suspect",
                )
            return
        ok = type(attrs) is dict and attrs.get("ok") is True
        if key in self._ends:
            self._note(
                "twice",
                f"line {lineno}: {_where(session, turn)} ends a second time (turn.end; the "
                f"first is on line {self._ends[key][0]}): its figures are suspect",
            )
            return
        self._ends[key] = (lineno, t_ns, ok)
        start = self._starts.get(key)
        # A failed turn may end before its first frame's deadline (turn.start is stamped
        # with it, a few ms ahead): only a finished turn that ends first is nonsense.
        if ok and start is not None and t_ns < start[1]:
            self._note(
                "order",
                f"line {lineno}: {_where(session, turn)} ends (turn.end, ok) "
                f"{(start[1] - t_ns) / 1e6:.3f} ms before it starts (line {start[0]}): "
                "its figures are suspect",
            )

    def _odd_time(self, lineno: int, what: str, t_ns: int, where: str) -> None:
        if t_ns < 0:
            why = "is negative"
        elif self.base is None:
            why = "is past any 64-bit time"
        else:
            why = f"is {(t_ns - self.base) / 86_400e9:+.1f} days from the run's start anchor"
        self._note(
            "time",
            f"line {lineno}: {what} {why}: not a time of this run; "
            f"figures from {where} are suspect",
        )

    def warnings(self) -> list[str]:
        out = []
        for kind, message in self._first.items():
            n = self._count[kind]
            out.append(message if n == 1 else f"{message} ({n} such lines in all)")
        return out


# -- decoding -------------------------------------------------------------------------------
#
# ``json.loads`` spends about half its time in Python-level wrapping around the C scanner.
# Calling the scanner directly gives the same objects (same scanner, same options) in about
# half the time; anything it cannot decode goes back through ``json.loads`` so error
# messages stay exactly the standard ones.

_DECODER = json.JSONDecoder()
_SCAN_ONCE = _DECODER.scan_once  # type: ignore[attr-defined]
_WS = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]


def _loads(text: str) -> Any:
    if text[:1] == "{":
        # The common case: a record starting at column 0, ending with the line.
        try:
            obj, end = _SCAN_ONCE(text, 0)
        except StopIteration:
            return json.loads(text)  # raises the standard JSONDecodeError
        n = len(text)
        if end == n or (end == n - 1 and text[end] == "\n") or _WS(text, end).end() == n:
            return obj
        return json.loads(text)  # "Extra data"
    try:
        obj, end = _SCAN_ONCE(text, _WS(text, 0).end())
    except StopIteration:
        return json.loads(text)
    if _WS(text, end).end() != len(text):
        return json.loads(text)
    return obj


_FAST_DECODE: Callable[[str], Any]
try:  # a dependency; the json module stands in where it cannot be installed
    _FAST_DECODE = importlib.import_module("orjson").loads
except ImportError:  # pragma: no cover - depends on the environment
    _FAST_DECODE = _loads

#: The decoder scan_trace uses: "orjson" when it is installed, else "json".
FAST_DECODER = "json" if _FAST_DECODE is _loads else "orjson"

_EVENT_TYPE = "event"


_EMPTY: dict[str, Any] = {}


def _no_event(*_: Any) -> None:  # pragma: no cover - the fast path is off without a sink
    raise AssertionError("no event sink")


@dataclass(frozen=True)
class TraceInfo:
    """Everything about a trace file except its events and spans (see :func:`scan_trace`)."""

    path: str
    header: Header
    end: End | None
    warnings: tuple[str, ...] = field(default=())
    #: lines of events whose names were skipped by :func:`scan_trace`, per name
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.end is not None


def _scan(
    p: Path,
    on_record: Callable[[Any], Record | None],
    skip: frozenset[str],
    decode: Callable[[str], Any] = _loads,
    on_event: EventSink | None = None,
    on_header: Callable[[Header], None] | None = None,
    skipped: dict[str, int] | None = None,
) -> TraceInfo:
    """The reader's one loop: tolerance rules, header and end handling, skipping.

    ``on_record`` receives each decoded record after the header (events, spans, end); it
    validates it (raising ``ValueError`` like :func:`record_from_dict`) and returns the
    record when it is a header or end record the loop must handle, else ``None``.

    With ``on_event``, an event line that passes the common checks inline (the fields of
    a valid event, not a batched event) goes straight to it; every other line takes the
    general path through ``on_record``, which must accept events too.
    """
    if not p.exists():
        raise TraceError("no such file", path=str(p))
    if p.is_dir():
        raise TraceError("is a directory (use read_traces)", path=str(p))
    warnings: list[str] = []
    if skipped is None:
        skipped = {}
    header: Header | None = None
    end: End | None = None
    pending_error: TraceError | None = None
    try:
        f, _ = _open_text(p)
    except OSError as exc:
        raise TraceError(f"cannot open: {exc.strerror}", path=str(p)) from None
    # The fast path (see the docstring) is on between the header and the first problem.
    fast = False
    emit: EventSink = on_event if on_event is not None else _no_event
    undecoded = d = object()
    odd: _Oddities | None = None
    odd_lo, odd_hi = 0, 2**63 - 1
    odd_event: Callable[[int, str, int | None, int, str, Any], None] = _no_event
    with f:
        lineno = 0
        try:
            for text in f:
                lineno += 1
                if fast:
                    # Only a long line is worth reading by its text (a short one costs
                    # less to decode than to search): see _skipped_name.
                    if (
                        skip
                        and len(text) > _SKIP_BY_TEXT
                        and ((name := _skipped_name(text, skip)) is not None)
                    ):
                        skipped[name] = skipped.get(name, 0) + 1
                        continue
                    try:
                        d = decode(text)
                    except (json.JSONDecodeError, ValueError, RecursionError):
                        d = undecoded
                    if type(d) is dict and d.get("type") == _EVENT_TYPE:
                        # The common checks of Event.from_dict, inline (a call per line
                        # costs a tenth of the report's reading time); ``type(x) is int``
                        # rejects booleans, as the full parser does.
                        try:
                            session = d["session"]
                            turn = d["turn"]
                            t_ns = d["t_ns"]
                            source = d["source"]
                            stage = d["stage"]
                            name = d["name"]
                        except KeyError:
                            t_ns = None  # the general path says what is missing
                        attrs = d.get("attrs", _EMPTY)
                        if (
                            type(t_ns) is int
                            and (turn is None or type(turn) is int)
                            and type(session) is str
                            and source in SOURCES
                            and type(stage) is str
                            and type(name) is str
                            and type(attrs) is dict
                            and name not in BATCHED
                        ):
                            if name in skip:
                                skipped[name] = skipped.get(name, 0) + 1
                            else:
                                if t_ns < odd_lo or t_ns > odd_hi or name in _CHECKED:
                                    odd_event(lineno, session, turn, t_ns, name, attrs)
                                emit(session, turn, t_ns, source, stage, name, attrs)
                            continue
                if pending_error is not None:
                    # A bad line followed by more lines is corruption, not a cut-short write.
                    raise pending_error
                if skip and header is not None and end is None and not fast:
                    name = _skipped_name(text, skip)
                    if name is not None:
                        skipped[name] = skipped.get(name, 0) + 1
                        continue
                try:
                    if d is undecoded or not fast:
                        d = decode(text)
                    rec = on_record(d) if header is not None else record_from_dict(d)
                except (json.JSONDecodeError, ValueError, RecursionError) as first:
                    problem: Exception = first
                    failed = True
                    if decode is not _loads:
                        # orjson refused the line, or decoded a value differently from
                        # the json module (an integer beyond 64 bits becomes a float):
                        # the standard decoder decides, so results and errors are its.
                        try:
                            d = _loads(text)
                            rec = on_record(d) if header is not None else record_from_dict(d)
                            failed = False
                        except (json.JSONDecodeError, ValueError, RecursionError) as second:
                            problem = second
                    if not failed:
                        pass
                    elif not text.strip():
                        continue
                    else:
                        err = TraceError(
                            f"invalid record: {_problem(problem)}", path=str(p), line=lineno
                        )
                        if header is not None and not text.endswith("\n"):
                            # The last line of a killed writer: drop it, keep the rest.
                            warnings.append(f"line {lineno} is cut short (writer stopped mid-line)")
                            break
                        if header is None:
                            raise _not_a_trace(p, lineno, text, problem) from None
                        pending_error = err
                        fast = False
                        continue
                if rec is None:
                    if end is not None:
                        warnings.append(f"line {lineno}: records after the closing record")
                    if odd is not None and type(d) is dict and d.get("type") == _EVENT_TYPE:
                        # on_record accepted it: the fields are those of a valid event
                        odd_event(
                            lineno,
                            d["session"],
                            d["turn"],
                            d["t_ns"],
                            d["name"],
                            d.get("attrs", _EMPTY),
                        )
                    continue
                if header is None:
                    if not isinstance(rec, Header):
                        raise TraceError(
                            "the first record must be a header", path=str(p), line=lineno
                        )
                    _check_schema(rec, p)
                    header = rec
                    odd = _Oddities(p, rec)
                    odd_lo, odd_hi, odd_event = odd.lo, odd.hi, odd.event
                    if _first_line_crlf(p):
                        warnings.append(
                            f"line {lineno}: CRLF line ends (a converted copy?); read as LF"
                        )
                    if on_header is not None:
                        on_header(rec)
                    fast = on_event is not None
                    continue
                if isinstance(rec, End):
                    end = rec
                    fast = False
                elif isinstance(rec, Header):
                    raise TraceError("a second header record", path=str(p), line=lineno)
                elif end is not None:
                    warnings.append(f"line {lineno}: records after the closing record")
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            warnings.append(
                f"compressed data ends early after line {lineno} ({exc}); kept what was read"
            )
        except UnicodeDecodeError:
            raise TraceError(
                "not a text file (bytes that are not UTF-8)", path=str(p), line=lineno + 1
            ) from None
        if pending_error is not None:
            raise pending_error
    if header is None:
        if warnings:
            raise TraceError("compressed trace is cut short before its header", path=str(p))
        raise TraceError("empty file: no header record", path=str(p))
    if odd is not None:
        warnings.extend(odd.warnings())
    if end is None:
        warnings.append("no closing record: the run was cut short; finished turns are kept")
    return TraceInfo(str(p), header, end, tuple(warnings), skipped)


_NAME_KEY = ',"name":"'
#: lines longer than this (characters) are tested for a skipped name before decoding
_SKIP_BY_TEXT = 1024


def _skipped_name(text: str, skip: frozenset[str]) -> str | None:
    """The name of the event on this line when it is in ``skip`` and the line is laid
    out as :class:`TraceWriter` writes it, read from the text without decoding it.

    The line must be a whole event line (``{"type":"event",`` … ``}`` and a newline:
    a cut-short last line is decoded and dropped like any other) whose first
    ``,"name":"`` comes before any nested object, so it is the record's own ``name``
    key (a JSON string cannot hold an unescaped quote). The name is its raw text up to
    the next quote: a name written with escapes is never taken for a skipped one, it is
    simply decoded.
    """
    i = text.find(_NAME_KEY)
    if i < 0:
        return None
    i += len(_NAME_KEY)
    name = text[i : text.find('"', i)]
    if (
        name in skip
        and text.startswith('{"type":"event",')
        and text.endswith("}\n")
        and text.find("{", 1, i) < 0
    ):
        return name
    return None


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read one trace file; raise :class:`TraceError` for anything that is not one."""
    p = Path(path)
    events: list[Event] = []
    spans: list[Span] = []
    add_event = events.append
    add_span = spans.append

    def on_event(
        session: str, turn: int | None, t_ns: int, source: str, stage: str, name: str, attrs: Any
    ) -> None:
        # a missing attrs is passed as a shared empty object: this event gets its own
        attrs = {} if attrs is _EMPTY else attrs
        add_event(Event(session, turn, t_ns, source, stage, name, attrs))

    def on_record(d: Any) -> Record | None:
        rec = record_from_dict(d)
        if type(rec) is Event:
            add_event(rec)
            return None
        if type(rec) is Span:
            add_span(rec)
            return None
        return rec

    info = _scan(p, on_record, frozenset(), on_event=on_event)
    return Trace(info.path, info.header, tuple(events), tuple(spans), info.end, info.warnings)


#: ``on_event(session, turn, t_ns, source, stage, name, attrs)`` of :func:`scan_trace`.
EventSink = Callable[[str, int | None, int, str, str, str, dict[str, Any]], None]


def scan_trace(
    path: str | os.PathLike[str],
    on_event: EventSink,
    *,
    skip: Iterable[str] = (),
    on_span: Callable[[Span], None] | None = None,
    on_header: Callable[[Header], None] | None = None,
) -> TraceInfo:
    """Stream a trace without building :class:`Event` objects: the fast path for analysis.

    Every event record is validated exactly as :func:`read_trace` validates it, then its
    fields go to ``on_event(session, turn, t_ns, source, stage, name, attrs)`` (``attrs``
    is the decoded object: do not modify it; a missing one is a shared empty dict).
    Events whose ``name`` is in ``skip`` never reach ``on_event``; their counts are in
    :attr:`TraceInfo.skipped`. A long line (a batched event) with such a name is
    recognised from its text and not decoded at all: only whole event lines laid out as
    :class:`TraceWriter` writes them qualify, and such a line is checked for that
    layout, not parsed. Any other line is decoded and validated as usual.
    Spans go to ``on_span``, and the header, once checked, to ``on_header`` (before any
    event). The same tolerance rules and errors as :func:`read_trace`
    apply. Lines are decoded with orjson when it is installed (:data:`FAST_DECODER`);
    any line orjson refuses, or whose record it decodes into values that fail
    validation, is decoded again by the json module, which has the last word. (Inside
    ``attrs``, an integer beyond 64 bits would reach ``on_event`` as a float.)
    """

    def on_record(d: Any) -> Record | None:
        rec = record_from_dict(d)
        if type(rec) is Event:
            if rec.name in skipping:
                skipped[rec.name] = skipped.get(rec.name, 0) + 1
            else:
                on_event(
                    rec.session, rec.turn, rec.t_ns, rec.source, rec.stage, rec.name, rec.attrs
                )
            return None
        if type(rec) is Span:
            if on_span is not None:
                on_span(rec)
            return None
        return rec

    skipping = frozenset(skip)
    skipped: dict[str, int] = {}
    p = Path(path)
    return _scan(p, on_record, skipping, _FAST_DECODE, on_event, on_header, skipped)


def _problem(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        # json gives up with RecursionError, orjson past 1024 levels (its message then
        # says "recursion"): a record no writer makes, not a voiceaudit bug.
        return "nested too deeply to read"
    return str(exc)


def _not_a_trace(p: Path, lineno: int, text: str, exc: Exception) -> TraceError:
    if isinstance(exc, json.JSONDecodeError):
        return TraceError(
            "not a voiceaudit trace (line 1 is not JSON)",
            path=str(p),
            line=lineno,
            hint="a trace is the trace.jsonl file that 'voiceaudit run' writes",
        )
    return TraceError(f"not a voiceaudit trace ({_problem(exc)})", path=str(p), line=lineno)


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


def _other_jsonl(p: Path) -> bool:
    """True when ``p`` is readable JSON Lines whose first record is not a trace header
    (a run directory also holds, e.g., the reference pipeline's ground_truth.jsonl).

    Files that cannot be read or decoded are *not* "other": they are kept, so reading
    them reports what is wrong instead of skipping a broken trace silently.
    """
    try:
        f, _ = _open_text(p)
        with f:
            first = f.readline(1 << 20)
        d = json.loads(first)
    except (OSError, EOFError, zlib.error, ValueError, RecursionError):
        return False
    return not (isinstance(d, dict) and d.get("type") == "header")


def find_traces(path: str | os.PathLike[str]) -> list[Path]:
    """The trace files at ``path``: the file itself, or every trace below a directory
    (other JSON Lines files there, such as a ground-truth file, are passed over)."""
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file or directory", path=str(p))
    if p.is_file():
        return [p]
    found = sorted(
        q
        for q in p.rglob("*")
        if q.is_file() and q.name.endswith(TRACE_SUFFIXES) and not _other_jsonl(q)
    )
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
