"""Trace records: the raw observations every report is derived from.

Schema ``voiceaudit.trace/2`` (see docs/trace-format.md for the format and its history).
Records are frozen dataclasses; times are integer nanoseconds on the probe's monotonic
clock; a missing value is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar, cast

from voiceaudit.clock import Anchor

SCHEMA_NAME = "voiceaudit.trace"
SCHEMA_VERSION = 2
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"

#: What changed in each schema version. Readers accept every version listed here.
SCHEMA_HISTORY: dict[int, str] = {
    1: "First version: header, event, span and end records.",
    2: "Batched events: a turn's reply chunks and input frames are one event each "
    "(reply.chunks, input.frames) whose attributes are arrays, one element per chunk or "
    "frame, instead of one event per chunk or frame.",
}

Source = Literal["probe", "pipeline", "network", "import"]
SOURCES: frozenset[str] = frozenset({"probe", "pipeline", "network", "import"})

Attrs = dict[str, Any]


def _req(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise ValueError(f"missing field {key!r}")
    value = d[key]
    # bool is an int subclass; a time or a turn number must never be a bool.
    if isinstance(value, bool) and kind in (int, (int, type(None))):
        raise ValueError(f"field {key!r} must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", str: "a string", dict: "an object", list: "a list"}
    return " or ".join(names.get(k, "null" if k is type(None) else k.__name__) for k in kinds)


def _attrs(d: dict[str, Any]) -> Attrs:
    a = d.get("attrs", {})
    if not isinstance(a, dict):
        raise ValueError("field 'attrs' must be an object")
    return a


def _source(d: dict[str, Any]) -> str:
    source: str = _req(d, "source", str)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    return source


#: the JSON value a field's declared type asks for (what ``from_dict`` checks)
_JSON_KINDS: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "int | None": (int, type(None)),
}


class _Record:
    """What the record types share: the JSON object of a record is its ``type``, then its
    fields in the order they are declared (unless :func:`_record` is told otherwise)."""

    __slots__ = ()
    TYPE: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]
    #: field -> the JSON value :meth:`_read` checks it for; None: not a plain value (the
    #: ``attrs`` object, which :meth:`_read` reads with :func:`_attrs`, or a field the record
    #: reads by its own rule)
    KINDS: ClassVar[dict[str, type | tuple[type, ...] | None]]

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object a trace line holds."""
        d: dict[str, Any] = {"type": self.TYPE}
        for key in self.KEYS:
            d[key] = getattr(self, key)
        return d

    @classmethod
    def _read(cls, d: dict[str, Any], **given: Any) -> dict[str, Any]:
        """``given``, then every other field read from ``d`` and checked, in declared order
        (``attrs``: an object, empty when missing). For records whose other fields are
        all plain values (:class:`Event`, :class:`Span`)."""
        out = dict(given)
        for key, kind in cls.KINDS.items():
            if key not in out:
                out[key] = _attrs(d) if kind is None else _req(d, key, kind)
        return out


R = TypeVar("R", bound=_Record)


def _record(kind: str, *, first: tuple[str, ...] = ()) -> Callable[[type[R]], type[R]]:
    """Declare a record type: its ``type`` in the trace, and the fields written ``first``."""

    def declare(cls: type[R]) -> type[R]:
        declared = fields(cast(Any, cls))  # a dataclass: the decorator below this one
        cls.TYPE = kind
        cls.KEYS = (*first, *(f.name for f in declared if f.name not in first))
        cls.KINDS = {f.name: _JSON_KINDS.get(str(f.type)) for f in declared}
        return cls

    return declare


@_record("header", first=("schema",))
@dataclass(frozen=True, slots=True)
class Header(_Record):
    """The first record of every trace."""

    run_id: str
    voiceaudit_version: str
    target: Attrs
    host: Attrs
    clock: Attrs
    anchors: tuple[Anchor, ...]
    config: Attrs = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {**_Record.to_dict(self), "anchors": [a.to_dict() for a in self.anchors]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Header:
        anchors = _req(d, "anchors", list)
        return cls(
            schema=_req(d, "schema", str),
            run_id=_req(d, "run_id", str),
            voiceaudit_version=_req(d, "voiceaudit_version", str),
            target=_req(d, "target", dict),
            host=_req(d, "host", dict),
            clock=_req(d, "clock", dict),
            anchors=tuple(Anchor.from_dict(a) for a in anchors),
            config=d.get("config", {}) if isinstance(d.get("config", {}), dict) else {},
        )


def _int_list(
    a: Attrs, key: str, n: int | None, *, nulls: bool = False, sizes: bool = False
) -> int:
    """Check ``attrs[key]`` is a list of integers (``n`` of them when given); ``sizes``:
    none negative (a chunk of -480 samples would be a negative duration)."""
    v = a.get(key)
    if type(v) is not list:
        raise ValueError(f"attrs.{key} must be a list")
    if n is not None and len(v) != n:
        raise ValueError(f"attrs.{key} must have one element per item ({n}), not {len(v)}")
    for x in v:
        if type(x) is not int and not (nulls and x is None):
            raise ValueError(f"attrs.{key} must hold integers" + (" or nulls" if nulls else ""))
    # min() runs in C: a test per element in the loop above costs twice as much
    if sizes and v and (low := min(v)) < 0:
        raise ValueError(f"attrs.{key} holds a negative size ({low})")
    return len(v)


def _check_reply_chunks(a: Attrs) -> None:
    n = _int_list(a, "dt_ns", None)
    for key in ("samples", "bytes"):
        _int_list(a, key, n, sizes=True)
    if "wire_bytes" in a:
        _int_list(a, "wire_bytes", n, nulls=True)
    peak = a.get("peak")
    if peak is not None and (
        type(peak) is not list
        or len(peak) != n
        or not all(x is None or type(x) in (int, float) for x in peak)
    ):
        raise ValueError("attrs.peak must be a list of numbers or nulls, one per chunk")
    rate = a.get("rate")
    if type(rate) is not int or rate <= 0:
        raise ValueError("attrs.rate must be a positive integer")
    if "offset" in a and type(a["offset"]) is not int:
        raise ValueError("attrs.offset must be an integer")


def _check_input_frames(a: Attrs) -> None:
    n = _int_list(a, "dt_ns", None)
    for key in ("a", "b", "sched_dt_ns"):
        _int_list(a, key, n)


#: Batched events (schema version 2) and the check of their array attributes: every
#: reader applies it, so analysis code may index the arrays without checking them.
BATCHED: dict[str, Callable[[Attrs], None]] = {
    "reply.chunks": _check_reply_chunks,
    "input.frames": _check_input_frames,
}


def check_batch(name: str, attrs: Attrs) -> None:
    """Raise ``ValueError`` unless the attributes of batched event ``name`` are well formed."""
    try:
        BATCHED[name](attrs)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@_record("event")
@dataclass(frozen=True, slots=True)
class Event(_Record):
    """An instant observation: something happened at ``t_ns``.

    ``turn`` is ``None`` for session-level events (connection setup, for instance).
    """

    session: str
    turn: int | None
    t_ns: int
    source: str
    stage: str
    name: str
    attrs: Attrs = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        ev = cls(**cls._read(d, source=_source(d)))
        if ev.name in BATCHED:
            check_batch(ev.name, ev.attrs)
        return ev


def unbatch(ev: Event) -> list[Event]:
    """A batched event as the per-chunk or per-frame events of schema version 1.

    ``reply.chunks`` becomes one ``reply.chunk`` per chunk (``bytes``, ``samples``,
    ``offset``, ``rate``, and ``wire_bytes`` and ``peak`` where known); ``input.frames``
    one ``input.frame`` per frame (``i``, ``a``, ``b``, ``sched_ns``). Any other event is
    returned alone. The arrays must be well formed (every reader checks them).
    """
    a = ev.attrs
    if ev.name == "reply.chunks":
        out = []
        offset = a.get("offset", 0)
        wire, peak = a.get("wire_bytes"), a.get("peak")
        for i, dt in enumerate(a["dt_ns"]):
            c: Attrs = {
                "bytes": a["bytes"][i],
                "samples": a["samples"][i],
                "offset": offset,
                "rate": a["rate"],
            }
            if wire is not None and wire[i] is not None:
                c["wire_bytes"] = wire[i]
            if peak is not None and peak[i] is not None:
                c["peak"] = peak[i]
            out.append(
                Event(ev.session, ev.turn, ev.t_ns + dt, ev.source, ev.stage, "reply.chunk", c)
            )
            offset += a["samples"][i]
        return out
    if ev.name == "input.frames":
        return [
            Event(
                ev.session,
                ev.turn,
                ev.t_ns + dt,
                ev.source,
                ev.stage,
                "input.frame",
                {"i": i, "a": a["a"][i], "b": a["b"][i], "sched_ns": ev.t_ns + a["sched_dt_ns"][i]},
            )
            for i, dt in enumerate(a["dt_ns"])
        ]
    return [ev]


@_record("span")
@dataclass(frozen=True, slots=True)
class Span(_Record):
    """An interval a source reported (imported OpenTelemetry spans, for instance)."""

    session: str
    turn: int | None
    start_ns: int
    end_ns: int
    source: str
    stage: str
    name: str
    attrs: Attrs = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        source = _source(d)
        start, end = _req(d, "start_ns", int), _req(d, "end_ns", int)
        if end < start:
            raise ValueError("span ends before it starts")
        return cls(**cls._read(d, source=source, start_ns=start, end_ns=end))


@_record("end")
@dataclass(frozen=True, slots=True)
class End(_Record):
    """The closing record. A trace without one was cut short (crash, kill, Ctrl-C)."""

    reason: str
    counts: dict[str, int]
    anchor: Anchor | None = None

    def to_dict(self) -> dict[str, Any]:
        anchor = None if self.anchor is None else self.anchor.to_dict()
        return {**_Record.to_dict(self), "anchor": anchor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> End:
        counts = _req(d, "counts", dict)
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in counts.items()):
            raise ValueError("field 'counts' must map names to integers")
        anchor = d.get("anchor")
        return cls(
            reason=_req(d, "reason", str),
            counts=counts,
            anchor=None if anchor is None else Anchor.from_dict(anchor),
        )


Record = Header | Event | Span | End

_PARSERS: dict[str, Any] = {
    "header": Header.from_dict,
    "event": Event.from_dict,
    "span": Span.from_dict,
    "end": End.from_dict,
}


def record_from_dict(d: Any) -> Record:
    """Build a record from a decoded JSON value; ``ValueError`` says what is wrong."""
    if not isinstance(d, dict):
        raise ValueError("a record must be a JSON object")
    kind = d.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ValueError(f"unknown record type {kind!r}")
    rec: Record = parser(d)
    return rec


def parse_schema(schema: str) -> tuple[str, int]:
    """Split ``voiceaudit.trace/2`` into its name and version."""
    name, _, version = schema.partition("/")
    if name != SCHEMA_NAME or not version.isdigit():
        raise ValueError(f"not a voiceaudit trace schema: {schema!r}")
    return name, int(version)
