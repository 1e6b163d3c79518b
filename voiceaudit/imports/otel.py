"""OpenTelemetry spans from the two JSON shapes people actually have on disk.

- ``span.to_json()`` objects (the Python SDK's ``ConsoleSpanExporter`` and the usual
  hand-written file exporters): one per line, pretty-printed one after another, or a JSON
  array of them. Times are ISO 8601 strings, ids ``0x``-prefixed hex.
- OTLP/JSON (``TracesData`` / ``ExportTraceServiceRequest``: ``{"resourceSpans": …}``), a
  whole document or one per line (the OpenTelemetry Collector's file exporter). Times are
  ``*UnixNano`` (strings or numbers), attribute values typed (``stringValue``,
  ``intValue``, …), ids hex (the OTLP/JSON rule) or base64 (protobuf's generic JSON
  mapping); both are read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from voiceaudit.imports.base import obj_at, parse_iso_ns


@dataclass(frozen=True, slots=True)
class OtelEvent:
    name: str
    t_ns: int
    attrs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OtelSpan:
    """One span, normalised: Unix-ns times, lower-case hex ids without ``0x``."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    resource: dict[str, Any]
    events: tuple[OtelEvent, ...] = ()
    scope: str | None = None


class NotSpans(ValueError):
    """The JSON is not OpenTelemetry spans (message says what is wrong)."""


def norm_id(value: Any) -> str | None:
    """Hex (with or without ``0x``) or base64 ids to lower-case hex; None for empty."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:x}"
    if not isinstance(value, str):
        raise NotSpans(f"an id must be a string, not {type(value).__name__}")
    s = value.strip()
    prefixed = s.lower().startswith("0x")
    if prefixed:
        s = s[2:]
    is_hex = bool(s) and all(c in "0123456789abcdefABCDEF" for c in s)
    if is_hex and (prefixed or len(s) in (16, 32)):
        return s.lower()
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) in (8, 16):
        return raw.hex()
    if is_hex:
        return s.lower()
    raise NotSpans(f"id {value!r} is neither hex nor base64")


def is_to_json_span(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and "name" in obj
        and "start_time" in obj
        and isinstance(obj.get("context"), dict)
    )


def is_otlp(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("resourceSpans"), list)


def from_to_json(obj: dict[str, Any]) -> OtelSpan:
    """A span from ``ReadableSpan.to_json()``."""
    name = obj.get("name")
    if not isinstance(name, str):
        raise NotSpans("span without a name")
    ctx = obj["context"]
    try:
        start = parse_iso_ns(str(obj["start_time"]))
        end_raw = obj.get("end_time")
        end = parse_iso_ns(str(end_raw)) if end_raw else start
    except (KeyError, ValueError) as exc:
        raise NotSpans(f"span {name!r} has a bad time: {exc}") from None
    attrs = obj.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise NotSpans(f"span {name!r}: attributes must be an object")
    res = obj.get("resource") or {}
    res_attrs = res.get("attributes", {}) if isinstance(res, dict) else {}
    events = []
    for ev in obj.get("events") or []:
        if isinstance(ev, dict) and isinstance(ev.get("name"), str) and ev.get("timestamp"):
            try:
                t = parse_iso_ns(str(ev["timestamp"]))
            except ValueError:
                continue
            ea = obj_at(ev, "attributes")
            events.append(OtelEvent(ev["name"], t, dict(ea)))
    ids = _ids(
        name, ctx.get("span_id"), ctx.get("trace_id"), obj.get("parent_id"), "span_id/trace_id"
    )
    resource = dict(res_attrs) if isinstance(res_attrs, dict) else {}
    return OtelSpan(name, *ids, start, max(start, end), dict(attrs), resource, tuple(events))


def _ids(name: str, span: Any, trace: Any, parent: Any, what: str) -> tuple[str, str, str | None]:
    """(trace id, span id, parent id) as lower-case hex; a span must have the first two."""
    span_id = norm_id(span)
    trace_id = norm_id(trace)
    if span_id is None or trace_id is None:
        raise NotSpans(f"span {name!r} has no {what}")
    return trace_id, span_id, norm_id(parent)


def any_value(v: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value."""
    if not isinstance(v, dict):
        return v
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            raise NotSpans(f"intValue {v['intValue']!r} is not an integer") from None
    if "doubleValue" in v:
        d = v["doubleValue"]
        if isinstance(d, str):  # "NaN", "Infinity"
            return float(d)
        return float(d)
    if "arrayValue" in v:
        arr = v["arrayValue"] or {}
        return [any_value(x) for x in arr.get("values", [])]
    if "kvlistValue" in v:
        kv = v["kvlistValue"] or {}
        return key_values(kv.get("values", []))
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def key_values(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        raise NotSpans("attributes must be a list of {key, value}")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise NotSpans("an attribute without a key")
        out[kv["key"]] = any_value(kv.get("value"))
    return out


def _nanos(v: Any, what: str) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise NotSpans(f"{what} {v!r} is not an integer") from None
    return n


def from_otlp(doc: dict[str, Any]) -> list[OtelSpan]:
    """Every span of an OTLP/JSON ``TracesData`` document."""
    out: list[OtelSpan] = []
    for rs in doc["resourceSpans"]:
        if not isinstance(rs, dict):
            raise NotSpans("resourceSpans entries must be objects")
        res = rs.get("resource") or {}
        resource = key_values(res.get("attributes", [])) if isinstance(res, dict) else {}
        scopes = rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", []))
        if not isinstance(scopes, list):
            raise NotSpans("scopeSpans must be a list")
        for ss in scopes:
            if not isinstance(ss, dict):
                raise NotSpans("scopeSpans entries must be objects")
            scope = ss.get("scope", ss.get("instrumentationLibrary")) or {}
            scope_name = scope.get("name") if isinstance(scope, dict) else None
            for s in ss.get("spans", []) or []:
                out.append(_otlp_span(s, resource, scope_name))
    return out


def _otlp_span(s: Any, resource: dict[str, Any], scope: str | None) -> OtelSpan:
    if not isinstance(s, dict) or not isinstance(s.get("name"), str):
        raise NotSpans("an OTLP span without a name")
    name = s["name"]
    start = _nanos(s.get("startTimeUnixNano"), f"span {name!r} startTimeUnixNano")
    end_raw = s.get("endTimeUnixNano")
    end = _nanos(end_raw, f"span {name!r} endTimeUnixNano") if end_raw not in (None, "") else start
    events = []
    for ev in s.get("events", []) or []:
        if isinstance(ev, dict) and isinstance(ev.get("name"), str):
            events.append(
                OtelEvent(
                    ev["name"],
                    _nanos(ev.get("timeUnixNano"), "event timeUnixNano"),
                    key_values(ev.get("attributes", [])),
                )
            )
    ids = _ids(name, s.get("spanId"), s.get("traceId"), s.get("parentSpanId"), "spanId/traceId")
    return OtelSpan(
        name,
        *ids,
        start,
        max(start, end),
        key_values(s.get("attributes", [])),
        resource,
        tuple(events),
        scope if isinstance(scope, str) else None,
    )


def spans_from_objects(objs: list[Any]) -> tuple[list[OtelSpan], str]:
    """Spans from decoded JSON values; (spans, format name). :class:`NotSpans` otherwise."""
    spans: list[OtelSpan] = []
    kinds: set[str] = set()
    for i, obj in enumerate(objs):
        if is_otlp(obj):
            spans.extend(from_otlp(obj))
            kinds.add("otlp-json")
        elif is_to_json_span(obj):
            spans.append(from_to_json(obj))
            kinds.add("otel-span-json")
        else:
            raise NotSpans(f"JSON value {i + 1} is not an OpenTelemetry span or OTLP document")
    if not kinds:
        raise NotSpans("no spans")
    return spans, "+".join(sorted(kinds))
