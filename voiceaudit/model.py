"""Trace records: the raw observations every report is derived from.

Schema ``voiceaudit.trace/1`` (see docs/trace-format.md for the format and its history).
Records are frozen dataclasses; times are integer nanoseconds on the probe's monotonic
clock; a missing value is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from voiceaudit.clock import Anchor

SCHEMA_NAME = "voiceaudit.trace"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"

#: What changed in each schema version. Readers accept every version listed here.
SCHEMA_HISTORY: dict[int, str] = {
    1: "First version: header, event, span and end records.",
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


@dataclass(frozen=True, slots=True)
class Header:
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
        return {
            "type": "header",
            "schema": self.schema,
            "run_id": self.run_id,
            "voiceaudit_version": self.voiceaudit_version,
            "target": self.target,
            "host": self.host,
            "clock": self.clock,
            "anchors": [a.to_dict() for a in self.anchors],
            "config": self.config,
        }

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


@dataclass(frozen=True, slots=True)
class Event:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "event",
            "session": self.session,
            "turn": self.turn,
            "t_ns": self.t_ns,
            "source": self.source,
            "stage": self.stage,
            "name": self.name,
            "attrs": self.attrs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        source = _req(d, "source", str)
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        return cls(
            session=_req(d, "session", str),
            turn=_req(d, "turn", (int, type(None))),
            t_ns=_req(d, "t_ns", int),
            source=source,
            stage=_req(d, "stage", str),
            name=_req(d, "name", str),
            attrs=_attrs(d),
        )


@dataclass(frozen=True, slots=True)
class Span:
    """An interval a source reported (imported OpenTelemetry spans, for instance)."""

    session: str
    turn: int | None
    start_ns: int
    end_ns: int
    source: str
    stage: str
    name: str
    attrs: Attrs = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "span",
            "session": self.session,
            "turn": self.turn,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "source": self.source,
            "stage": self.stage,
            "name": self.name,
            "attrs": self.attrs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        source = _req(d, "source", str)
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        start, end = _req(d, "start_ns", int), _req(d, "end_ns", int)
        if end < start:
            raise ValueError("span ends before it starts")
        return cls(
            session=_req(d, "session", str),
            turn=_req(d, "turn", (int, type(None))),
            start_ns=start,
            end_ns=end,
            source=source,
            stage=_req(d, "stage", str),
            name=_req(d, "name", str),
            attrs=_attrs(d),
        )


@dataclass(frozen=True, slots=True)
class End:
    """The closing record. A trace without one was cut short (crash, kill, Ctrl-C)."""

    reason: str
    counts: dict[str, int]
    anchor: Anchor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "end",
            "reason": self.reason,
            "counts": self.counts,
            "anchor": None if self.anchor is None else self.anchor.to_dict(),
        }

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
    """Split ``voiceaudit.trace/1`` into its name and version."""
    name, _, version = schema.partition("/")
    if name != SCHEMA_NAME or not version.isdigit():
        raise ValueError(f"not a voiceaudit trace schema: {schema!r}")
    return name, int(version)
