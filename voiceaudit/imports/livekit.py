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
    Telemetry,
    epoch_to_ns,
    seconds_to_ns,
    strip_content,
)
from voiceaudit.imports.otel import OtelSpan
from voiceaudit.imports.spans import SpanRecords, SpanTree, record_attrs

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


#: numbers any span may carry: (metric, attribute)
_SPAN_FIGURES = (
    ("e2e_latency", "lk.e2e_latency"),
    ("transcription_delay", "lk.transcription_delay"),
    ("end_of_turn_delay", "lk.end_of_turn_delay"),
    ("eou_endpointing_delay", "lk.eou.endpointing_delay"),
)


def _measure(rec: SpanRecords, metric: str, value: Any, label: str) -> int | None:
    ns = seconds_to_ns(value)
    if ns is not None:
        rec.measure(metric, ns, label)
    return ns


def from_spans(spans: list[OtelSpan], fmt: str, *, keep_content: bool) -> Telemetry:
    """LiveKit's spans (``fmt``: the JSON shape they came in) as telemetry."""
    tel = Telemetry(framework=FRAMEWORK, format=fmt)
    tree = SpanTree(spans)
    # llm_request / tts_request metrics are only used when their node did not report.
    node_has = {
        ("llm", s.span_id)
        for s in tree.spans
        if s.name == "llm_node" and "lk.response.ttft" in s.attrs
    } | {
        ("tts", s.span_id)
        for s in tree.spans
        if s.name == "tts_node" and "lk.response.ttfb" in s.attrs
    }
    tree.add_conversations(tel, "agent_session", lambda s: {"session_span": s.span_id})
    for s in tree.spans:
        conv = s.trace_id
        base = record_attrs(tel, s, keep_content)
        turn_span = tree.within(s, "agent_turn")
        user_span = tree.within(s, "user_turn")
        group = s.attrs.get("lk.speech_id")
        if not isinstance(group, str):
            group = None
            if turn_span is not None:
                sid = turn_span.attrs.get("lk.speech_id")
                group = sid if isinstance(sid, str) else turn_span.span_id
        if turn_span is not None:
            anchor = turn_span.start_ns  # the reply this span is part of
        elif user_span is not None:
            # The user's turn precedes the reply that answers it; its end may overlap the
            # reply's start (preemptive generation), its start does not.
            anchor = user_span.start_ns
        else:
            anchor = s.start_ns
        rec = SpanRecords(tel, s, anchor, group)
        stage = _STAGE.get(s.name, "other")
        rec.record(stage, f"livekit.{s.name}", base, per_turn=s.name != "agent_session")
        if s.name == "user_speaking":
            rec.mark(s.start_ns, "endpointing", "speech_started", "user_speaking span start")
            rec.mark(s.end_ns, "endpointing", "framework.speech_end", "user_speaking span end")
        elif s.name == "eou_detection":
            rec.mark(s.end_ns, "endpointing", "endpoint", "eou_detection span end")
            tel.constraints.append(Constraint(conv, s.end_ns, "after_speech_end", "eou end"))
        elif s.name == "user_turn":
            rec.mark(s.end_ns, "endpointing", "committed", "user_turn span end")
        elif s.name == "agent_turn":
            tel.add_reply(conv, s.start_ns, "agent_turn start", group)
        elif s.name == "agent_speaking":
            rec.mark(s.start_ns, "output", "bot.started_speaking", "agent_speaking span start")
        elif s.name in ("llm_node", "llm_request", "tts_node", "tts_request"):
            _request(rec, tree.parent(s), node_has)
        for metric, key in _SPAN_FIGURES:
            _measure(rec, metric, s.attrs.get(key), key)
    return tel


def _request(rec: SpanRecords, parent: OtelSpan | None, node_has: set[tuple[str, str]]) -> None:
    """The marks and time to first token or byte of an llm/tts node or request span."""
    s = rec.span
    llm = s.name.startswith("llm")
    kind, stage = ("llm", "model") if llm else ("tts", "synthesis")
    key, blob, metric = (
        ("lk.response.ttft", "lk.llm_metrics", "llm_ttft")
        if llm
        else ("lk.response.ttfb", "lk.tts_metrics", "tts_ttfb")
    )
    under_node = parent is not None and parent.name == f"{kind}_node"
    raw: Any = s.attrs.get(key)
    label = key
    if not s.name.endswith("_node"):
        raw = _blob(s.attrs.get(blob)).get("ttft" if llm else "ttfb", raw)
        label = f"{blob}.{'ttft' if llm else 'ttfb'}"
        if parent is not None and under_node and (kind, parent.span_id) in node_has:
            raw = None
    if not under_node:
        rec.mark(s.start_ns, stage, f"{kind}.request", f"{s.name} span start")
        rec.mark(s.end_ns, stage, f"{kind}.done", f"{s.name} span end")
        if not llm:
            rec.tel.constraints.append(
                Constraint(s.trace_id, s.start_ns, "before_reply", "tts start")
            )
    first = _measure(rec, metric, raw, label)
    if first is not None:
        name = "llm.first_token" if llm else "tts.first_byte"
        rec.mark(s.start_ns + first, stage, name, f"{s.name} span start + {label}")
        if not llm:
            rec.first_byte(s.start_ns + first)


def is_metrics_record(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    inner = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else obj
    return isinstance(inner, dict) and inner.get("type") in METRIC_TYPES and "timestamp" in inner


#: metrics records of a request: (stage, request kind, metric, time-to-first key, its mark)
_REQUESTS = {
    "llm_metrics": ("model", "llm", "llm_ttft", "ttft", "llm.first_token"),
    "realtime_model_metrics": ("model", "llm", "llm_ttft", "ttft", "llm.first_token"),
    "tts_metrics": ("synthesis", "tts", "tts_ttfb", "ttfb", "tts.first_byte"),
}


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
        attrs, dropped = strip_content(
            {k: v for k, v in m.items() if not isinstance(v, dict | list)}, keep_content
        )
        tel.dropped_content += dropped
        ev = {"framework": FRAMEWORK, "record": kind}
        record = {"framework": FRAMEWORK, **attrs}
        if kind in _REQUESTS:
            stage, what, metric, key, first_mark = _REQUESTS[kind]
            start = t - (seconds_to_ns(m.get("duration")) or 0)
            tel.add_span(conv, start, t, stage, f"livekit.{kind}", record, start, sid)
            frm = {**ev, "from": "timestamp - duration"}
            tel.add_mark(conv, start, stage, f"{what}.request", frm, start, sid)
            first = seconds_to_ns(m.get(key))
            if first is not None:
                tel.add_measure(conv, metric, first, f"{kind}.{key}", start, sid)
            if first is not None and first > 0:
                frm = {**ev, "from": f"request start + {key}"}
                tel.add_mark(conv, start + first, stage, first_mark, frm, start, sid)
                if what == "tts":
                    tel.add_first_byte(conv, start + first, start)
            if what == "llm":
                tel.add_reply(conv, start, "llm request", sid)
        elif kind == "eou_metrics":
            frm = {**ev, "from": "eou_metrics timestamp"}
            tel.add_mark(conv, t, "endpointing", "endpoint", frm, t, sid)
            for key in ("end_of_utterance_delay", "transcription_delay"):
                value = seconds_to_ns(m.get(key))
                if value is not None:
                    tel.add_measure(conv, key, value, f"{kind}.{key}", t, sid)
            tel.constraints.append(Constraint(conv, t, "after_speech_end", "eou decision"))
        elif kind == "stt_metrics":
            tel.add_mark(conv, t, "transcription", "framework.stt_metrics", record, t, sid)
        else:
            tel.add_mark(conv, t, "other", f"livekit.{kind}", record, t, sid)
    return tel
