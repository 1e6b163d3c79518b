"""What the two span importers (Pipecat, LiveKit) share: the span tree, the attributes a
span record keeps, and the records one span gives (:class:`SpanRecords`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voiceaudit.imports.base import Telemetry, strip_content
from voiceaudit.imports.otel import OtelSpan

#: how far up the parent chain :meth:`SpanTree.ancestor` looks (a cycle ends there)
MAX_DEPTH = 64


class SpanTree:
    """A file's spans in start order, and their parents by id."""

    def __init__(self, spans: list[OtelSpan]) -> None:
        self.by_id = {s.span_id: s for s in spans}
        self.spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))

    def parent(self, s: OtelSpan) -> OtelSpan | None:
        """The span's parent when it is in the file."""
        return self.by_id.get(s.parent_id) if s.parent_id else None

    def ancestor(self, s: OtelSpan, name: str) -> OtelSpan | None:
        """The nearest ancestor called ``name``."""
        p = self.parent(s)
        for _ in range(MAX_DEPTH):
            if p is None:
                return None
            if p.name == name:
                return p
            p = self.parent(p)
        return None

    def within(self, s: OtelSpan, name: str) -> OtelSpan | None:
        """The span itself when it is called ``name``, else its nearest such ancestor."""
        return s if s.name == name else self.ancestor(s, name)

    def add_conversations(
        self, tel: Telemetry, root: str, facts: Callable[[OtelSpan], dict[str, Any]]
    ) -> None:
        """One conversation per trace id, with ``facts`` from its ``root`` span."""
        for s in self.spans:
            tel.add_conversation(s.trace_id, **(facts(s) if s.name == root else {}))


def record_attrs(tel: Telemetry, s: OtelSpan, keep_content: bool) -> dict[str, Any]:
    """The attributes of the span record made from ``s`` (content dropped and counted)."""
    attrs, dropped = strip_content(s.attrs, keep_content)
    tel.dropped_content += dropped
    return {
        "framework": tel.framework,
        "span": s.name,
        "span_id": s.span_id,
        **({"parent_id": s.parent_id} if s.parent_id else {}),
        **attrs,
    }


@dataclass(frozen=True, slots=True)
class SpanRecords:
    """Where the records made from one span go: its conversation (the trace id), the
    instant that places them in an exchange, and the framework's turn key."""

    tel: Telemetry
    span: OtelSpan
    anchor: int
    group: str | None

    def record(
        self, stage: str, name: str, attrs: dict[str, Any], *, per_turn: bool = True
    ) -> None:
        """The span itself, as a span record."""
        s = self.span
        self.tel.add_span(
            s.trace_id,
            s.start_ns,
            s.end_ns,
            stage,
            name,
            attrs,
            self.anchor,
            self.group,
            per_turn=per_turn,
        )

    def mark(self, t_ns: int, stage: str, name: str, frm: str) -> None:
        """An event derived from the span; ``frm`` says how."""
        attrs = {"framework": self.tel.framework, "span_id": self.span.span_id, "from": frm}
        self.tel.add_mark(self.span.trace_id, t_ns, stage, name, attrs, self.anchor, self.group)

    def measure(self, metric: str, value_ns: int, label: str, detail: str = "") -> None:
        """A number the span reported, ``label`` naming the attribute."""
        label = f"{label} on span {self.span.name}{detail}"
        self.tel.add_measure(self.span.trace_id, metric, value_ns, label, self.anchor, self.group)

    def first_byte(self, t_ns: int) -> None:
        """The synthesis's first byte (at ``t_ns``)."""
        self.tel.add_first_byte(self.span.trace_id, t_ns, self.anchor)
