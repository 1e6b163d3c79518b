"""LiveKit Agents telemetry → :class:`~voiceaudit.imports.base.Telemetry`.

Two sources:

- OpenTelemetry spans: ``agent_session`` → ``user_turn`` / ``user_speaking`` /
  ``eou_detection`` and ``agent_turn`` → ``llm_node`` (→ ``llm_request``), ``tts_node``
  (→ ``tts_request``), ``agent_speaking``. Attributes: ``lk.speech_id``,
  ``lk.response.ttft`` (llm_node), ``lk.response.ttfb`` (tts_node), ``lk.e2e_latency``
  (agent_turn: agent started speaking - user stopped speaking, on the server),
  ``lk.transcription_delay``, ``lk.end_of_turn_delay``, ``lk.eou.*``, and the JSON blobs
  ``lk.llm_metrics`` / ``lk.tts_metrics`` on the request spans.
- ``metrics_collected`` records, one JSON object per line: ``LLMMetrics`` /
  ``TTSMetrics`` / ``EOUMetrics`` / ``STTMetrics`` dumps (``{"type": "llm_metrics",
  "timestamp": …}``), bare or wrapped as ``{"metrics": {…}}``. ``timestamp`` is the wall
  clock (seconds) when LiveKit emitted the record, at the end of the request, so a
  request began ``timestamp - duration``.
"""

from __future__ import annotations

import json
from typing import Any

from voiceaudit.imports.base import (
    Constraint,
    Item,
    Measure,
    Telemetry,
    epoch_to_ns,
    seconds_to_ns,
    strip_content,
)
from voiceaudit.imports.otel import OtelSpan

FRAMEWORK = "livekit"

SPAN_NAMES = frozenset(
    {
        "agent_session",
        "user_turn",
        "user_speaking",
        "agent_speaking",
        "eou_detection",
        "agent_turn",
        "llm_node",
        "tts_node",
        "llm_request",
        "tts_request",
        "function_tool",
    }
)

METRIC_TYPES = frozenset(
    {
        "llm_metrics",
        "tts_metrics",
        "stt_metrics",
        "eou_metrics",
        "vad_metrics",
        "realtime_model_metrics",
    }
)

_STAGE = {
    "agent_session": "session",
    "user_turn": "endpointing",
    "user_speaking": "input",
    "agent_speaking": "output",
    "eou_detection": "endpointing",
    "agent_turn": "turn",
    "llm_node": "model",
    "llm_request": "model",
    "tts_node": "synthesis",
    "tts_request": "synthesis",
    "function_tool": "model",
}


def looks_like_livekit(spans: list[OtelSpan]) -> bool:
    return any(s.name in SPAN_NAMES or any(k.startswith("lk.") for k in s.attrs) for s in spans)


def _blob(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            d = json.loads(value)
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}
    return {}


def from_spans(spans: list[OtelSpan], fmt: str, *, keep_content: bool) -> Telemetry:
    tel = Telemetry(framework=FRAMEWORK, format=fmt)
    by_id = {s.span_id: s for s in spans}
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))

    def ancestor(s: OtelSpan, name: str) -> OtelSpan | None:
        p = by_id.get(s.parent_id) if s.parent_id else None
        for _ in range(64):
            if p is None:
                return None
            if p.name == name:
                return p
            p = by_id.get(p.parent_id) if p.parent_id else None
        return None

    def group_of(s: OtelSpan) -> str | None:
        sid = s.attrs.get("lk.speech_id")
        if isinstance(sid, str):
            return sid
        turn = s if s.name == "agent_turn" else ancestor(s, "agent_turn")
        if turn is not None:
            sid = turn.attrs.get("lk.speech_id")
            return sid if isinstance(sid, str) else turn.span_id
        return None

    # llm_request / tts_request metrics are only used when their node did not report.
    node_has = {
        ("llm", s.span_id) for s in spans if s.name == "llm_node" and "lk.response.ttft" in s.attrs
    } | {
        ("tts", s.span_id) for s in spans if s.name == "tts_node" and "lk.response.ttfb" in s.attrs
    }

    for s in spans:
        conv = s.trace_id
        if s.name == "agent_session":
            tel.add_conversation(conv, session_span=s.span_id)
        else:
            tel.add_conversation(conv)
    for s in spans:
        conv = s.trace_id
        attrs, dropped = strip_content(s.attrs, keep_content)
        tel.dropped_content += dropped
        group = group_of(s)
        stage = _STAGE.get(s.name, "other")
        base = {
            "framework": FRAMEWORK,
            "span": s.name,
            "span_id": s.span_id,
            **({"parent_id": s.parent_id} if s.parent_id else {}),
            **attrs,
        }
        ev = {"framework": FRAMEWORK, "span_id": s.span_id}
        turn_span = s if s.name == "agent_turn" else ancestor(s, "agent_turn")
        user_span = s if s.name == "user_turn" else ancestor(s, "user_turn")
        if turn_span is not None:
            anchor = turn_span.start_ns  # the reply this span is part of
        elif user_span is not None:
            # The user's turn precedes the reply that answers it; its end may overlap the
            # reply's start (preemptive generation), its start does not.
            anchor = user_span.start_ns
        else:
            anchor = s.start_ns
        tel.items.append(
            Item(
                "span",
                conv,
                s.start_ns,
                s.end_ns,
                stage,
                f"livekit.{s.name}",
                base,
                anchor,
                group,
                per_turn=s.name != "agent_session",
            )
        )

        def mark(
            t: int,
            name: str,
            st: str,
            frm: str,
            *,
            g: str | None = group,
            a: int = anchor,
            conv: str = conv,
            ev: dict[str, Any] = ev,
        ) -> None:
            tel.items.append(Item("event", conv, t, t, st, name, {**ev, "from": frm}, a, g))

        def measure(
            metric: str,
            value: Any,
            label: str,
            *,
            a: int = anchor,
            conv: str = conv,
            span: str = s.name,
            group: str | None = group,
        ) -> int | None:
            ns = seconds_to_ns(value)
            if ns is not None:
                tel.measures.append(
                    Measure(FRAMEWORK, conv, metric, ns, f"{label} on span {span}", a, group)
                )
            return ns

        if s.name == "user_speaking":
            mark(s.start_ns, "speech_started", "endpointing", "user_speaking span start")
            mark(s.end_ns, "framework.speech_end", "endpointing", "user_speaking span end")
        elif s.name == "eou_detection":
            mark(s.end_ns, "endpoint", "endpointing", "eou_detection span end")
            tel.constraints.append(Constraint(conv, s.end_ns, "after_speech_end", "eou end"))
        elif s.name == "user_turn":
            mark(s.end_ns, "committed", "endpointing", "user_turn span end")
        elif s.name == "agent_turn":
            tel.replies[conv].append((s.start_ns, group))
            tel.constraints.append(
                Constraint(conv, s.start_ns, "after_speech_end", "agent_turn start")
            )
            tel.constraints.append(Constraint(conv, s.start_ns, "before_reply", "agent_turn start"))
        elif s.name == "agent_speaking":
            mark(s.start_ns, "bot.started_speaking", "output", "agent_speaking span start")
        elif s.name in ("llm_node", "llm_request", "tts_node", "tts_request"):
            llm = s.name.startswith("llm")
            node = s.name.endswith("_node")
            key, blob, metric = (
                ("lk.response.ttft", "lk.llm_metrics", "llm_ttft")
                if llm
                else ("lk.response.ttfb", "lk.tts_metrics", "tts_ttfb")
            )
            parent = by_id.get(s.parent_id) if s.parent_id else None
            under_node = parent is not None and parent.name == ("llm_node" if llm else "tts_node")
            raw: Any = s.attrs.get(key)
            label = key
            if not node:
                raw = _blob(s.attrs.get(blob)).get("ttft" if llm else "ttfb", raw)
                label = f"{blob}.{'ttft' if llm else 'ttfb'}"
                kind0 = "llm" if llm else "tts"
                if parent is not None and under_node and (kind0, parent.span_id) in node_has:
                    raw = None
            st = "model" if llm else "synthesis"
            kind = "llm" if llm else "tts"
            if not under_node:
                mark(s.start_ns, f"{kind}.request", st, f"{s.name} span start")
                mark(s.end_ns, f"{kind}.done", st, f"{s.name} span end")
                if not llm:
                    tel.constraints.append(
                        Constraint(conv, s.start_ns, "before_reply", "tts start")
                    )
            first = measure(metric, raw, label)
            if first is not None:
                name = "llm.first_token" if llm else "tts.first_byte"
                mark(s.start_ns + first, name, st, f"{s.name} span start + {label}")
                if not llm:
                    tel.constraints.append(
                        Constraint(
                            conv, s.start_ns + first, "before_reply", "tts first byte", anchor
                        )
                    )
        measure("e2e_latency", s.attrs.get("lk.e2e_latency"), "lk.e2e_latency")
        measure(
            "transcription_delay",
            s.attrs.get("lk.transcription_delay"),
            "lk.transcription_delay",
        )
        measure(
            "end_of_turn_delay",
            s.attrs.get("lk.end_of_turn_delay"),
            "lk.end_of_turn_delay",
        )
        measure(
            "eou_endpointing_delay",
            s.attrs.get("lk.eou.endpointing_delay"),
            "lk.eou.endpointing_delay",
        )
    return tel


def is_metrics_record(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    inner = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else obj
    return isinstance(inner, dict) and inner.get("type") in METRIC_TYPES and "timestamp" in inner


def from_metrics(objs: list[Any], *, keep_content: bool) -> Telemetry:
    """``metrics_collected`` records (one conversation per file)."""
    tel = Telemetry(framework=FRAMEWORK, format="livekit-metrics")
    conv = "livekit"
    tel.add_conversation(conv)
    records = []
    for i, obj in enumerate(objs):
        inner = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else obj
        t = epoch_to_ns(inner.get("timestamp"))
        if t is None:
            raise ValueError(f"record {i + 1}: timestamp {inner.get('timestamp')!r} is not a time")
        records.append((t, inner))
    records.sort(key=lambda r: r[0])
    for t, m in records:
        kind = m["type"]
        sid = m.get("speech_id") if isinstance(m.get("speech_id"), str) else None
        duration = seconds_to_ns(m.get("duration")) or 0
        attrs, dropped = strip_content(
            {k: v for k, v in m.items() if not isinstance(v, dict | list)}, keep_content
        )
        tel.dropped_content += dropped
        ev = {"framework": FRAMEWORK, "record": kind}
        start = t - duration

        def measure(
            metric: str,
            key: str,
            anchor: int,
            *,
            m: dict[str, Any] = m,
            kind: str = kind,
            sid: str | None = sid,
        ) -> int | None:
            ns = seconds_to_ns(m.get(key))
            if ns is not None:
                tel.measures.append(
                    Measure(FRAMEWORK, conv, metric, ns, f"{kind}.{key}", anchor, sid)
                )
            return ns

        if kind == "llm_metrics" or kind == "realtime_model_metrics":
            tel.items.append(
                Item(
                    "span",
                    conv,
                    start,
                    t,
                    "model",
                    f"livekit.{kind}",
                    {"framework": FRAMEWORK, **attrs},
                    start,
                    sid,
                )
            )
            tel.items.append(
                Item(
                    "event",
                    conv,
                    start,
                    start,
                    "model",
                    "llm.request",
                    {**ev, "from": "timestamp - duration"},
                    start,
                    sid,
                )
            )
            ttft = measure("llm_ttft", "ttft", start)
            if ttft is not None and ttft > 0:
                tel.items.append(
                    Item(
                        "event",
                        conv,
                        start + ttft,
                        start + ttft,
                        "model",
                        "llm.first_token",
                        {**ev, "from": "request start + ttft"},
                        start,
                        sid,
                    )
                )
            tel.replies[conv].append((start, sid))
            tel.constraints.append(Constraint(conv, start, "after_speech_end", "llm request"))
            tel.constraints.append(Constraint(conv, start, "before_reply", "llm request"))
        elif kind == "tts_metrics":
            tel.items.append(
                Item(
                    "span",
                    conv,
                    start,
                    t,
                    "synthesis",
                    "livekit.tts_metrics",
                    {"framework": FRAMEWORK, **attrs},
                    start,
                    sid,
                )
            )
            tel.items.append(
                Item(
                    "event",
                    conv,
                    start,
                    start,
                    "synthesis",
                    "tts.request",
                    {**ev, "from": "timestamp - duration"},
                    start,
                    sid,
                )
            )
            ttfb = measure("tts_ttfb", "ttfb", start)
            if ttfb is not None and ttfb > 0:
                tel.items.append(
                    Item(
                        "event",
                        conv,
                        start + ttfb,
                        start + ttfb,
                        "synthesis",
                        "tts.first_byte",
                        {**ev, "from": "request start + ttfb"},
                        start,
                        sid,
                    )
                )
                tel.constraints.append(
                    Constraint(conv, start + ttfb, "before_reply", "tts first byte", start)
                )
        elif kind == "eou_metrics":
            tel.items.append(
                Item(
                    "event",
                    conv,
                    t,
                    t,
                    "endpointing",
                    "endpoint",
                    {**ev, "from": "eou_metrics timestamp"},
                    t,
                    sid,
                )
            )
            measure("end_of_utterance_delay", "end_of_utterance_delay", t)
            measure("transcription_delay", "transcription_delay", t)
            tel.constraints.append(Constraint(conv, t, "after_speech_end", "eou decision"))
        elif kind == "stt_metrics":
            tel.items.append(
                Item(
                    "event",
                    conv,
                    t,
                    t,
                    "transcription",
                    "framework.stt_metrics",
                    {"framework": FRAMEWORK, **attrs},
                    t,
                    sid,
                )
            )
        else:
            tel.items.append(
                Item(
                    "event",
                    conv,
                    t,
                    t,
                    "other",
                    f"livekit.{kind}",
                    {"framework": FRAMEWORK, **attrs},
                    t,
                    sid,
                )
            )
    return tel
