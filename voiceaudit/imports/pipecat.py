"""Pipecat's OpenTelemetry spans → :class:`~voiceaudit.imports.base.Telemetry`.

Span names (Pipecat ≥ mid-2025): ``conversation`` → ``turn`` → ``stt``, ``llm``, ``tts``;
older releases named the service spans ``stt_<service>``, ``llm_<service>``,
``tts_<service>``; speech-to-speech services emit ``llm_setup``, ``llm_request`` and
``llm_response``. What each span's edges mean (Pipecat 1.14 source):

- ``stt``: from the VAD's speech start of a segment to the finalized transcript;
  ``metrics.ttfb`` is timed from Pipecat's estimate of the speech end (VAD stop minus
  ``stop_secs``) to that transcript.
- ``llm``: the completion call; ``metrics.ttfb`` is request → first token.
- ``tts``: from the synthesis request (audio context created) to the last audio;
  ``metrics.ttfb`` is request → first audio byte.
- ``turn``: ``turn.user_bot_latency_seconds`` is the server's "bot started speaking"
  minus (VAD stop - ``stop_secs``). Pipecat sets it each time it measures, so a ``turn``
  span that folded several exchanges keeps only the last value.
"""

from __future__ import annotations

from typing import Any

from voiceaudit.imports.base import Telemetry, seconds_to_ns
from voiceaudit.imports.otel import OtelSpan
from voiceaudit.imports.spans import SpanRecords, SpanTree, record_attrs

FRAMEWORK = "pipecat"

_S2S = {"llm_setup", "llm_request", "llm_response"}


def service_kind(name: str) -> str | None:
    """``stt``/``llm``/``tts``/``s2s`` for a Pipecat service span name, else None."""
    if name in _S2S:
        return "s2s"
    for kind in ("stt", "llm", "tts"):
        if name == kind or name.startswith(kind + "_"):
            return kind
    return None


def looks_like_pipecat(spans: list[OtelSpan]) -> bool:
    for s in spans:
        if s.name in ("conversation", "turn") and (
            "conversation.id" in s.attrs or "turn.number" in s.attrs
        ):
            return True
        if service_kind(s.name) is not None and any(
            k in s.attrs for k in ("gen_ai.provider.name", "gen_ai.system", "metrics.ttfb")
        ):
            return True
    return False


_STAGE = {"stt": "transcription", "llm": "model", "tts": "synthesis", "s2s": "model"}


def _conversation_facts(s: OtelSpan) -> dict[str, Any]:
    return {
        "conversation_id": s.attrs.get("conversation.id"),
        "service": s.resource.get("service.name"),
    }


def from_spans(spans: list[OtelSpan], fmt: str, *, keep_content: bool) -> Telemetry:
    """Pipecat's spans (``fmt``: the JSON shape they came in) as telemetry."""
    tel = Telemetry(framework=FRAMEWORK, format=fmt)
    tree = SpanTree(spans)
    tree.add_conversations(tel, "conversation", _conversation_facts)
    for s in tree.spans:
        base = record_attrs(tel, s, keep_content)
        kind = service_kind(s.name)
        turn = tree.ancestor(s, "turn")
        group = turn.span_id if turn is not None else None
        if s.name == "conversation":
            rec = SpanRecords(tel, s, s.start_ns, None)
            rec.record("session", "pipecat.conversation", base, per_turn=False)
        elif s.name == "turn":
            # a turn span folding several replies goes with the first
            SpanRecords(tel, s, s.start_ns, s.span_id).record("turn", "pipecat.turn", base)
        elif kind is None:
            SpanRecords(tel, s, s.start_ns, group).record("other", f"pipecat.{s.name}", base)
        else:
            _service(
                SpanRecords(tel, s, s.end_ns if kind == "stt" else s.start_ns, group), kind, base
            )
    _turn_measures(tel, [s for s in tree.spans if s.name == "turn"])
    return tel


def _service(rec: SpanRecords, kind: str, base: dict[str, Any]) -> None:
    """The records of an stt, llm, tts or speech-to-speech span."""
    s, tel, conv = rec.span, rec.tel, rec.span.trace_id
    ttfb = seconds_to_ns(s.attrs.get("metrics.ttfb"))
    provider = s.attrs.get("gen_ai.provider.name", s.attrs.get("gen_ai.system"))
    detail = f" ({provider})" if provider else ""
    if kind == "s2s":
        rec.record("model", f"pipecat.{s.name}", base)
        if s.name == "llm_request":
            rec.mark(s.start_ns, "model", "llm.request", "llm_request span start")
            tel.add_reply(conv, s.start_ns, "llm_request start", rec.group)
        elif s.name == "llm_response":
            rec.mark(s.start_ns, "model", "response.done", "llm_response span start")
            if ttfb is not None:
                rec.measure("llm_ttfb", ttfb, "metrics.ttfb", detail)
        return
    rec.record(_STAGE[kind], f"pipecat.{kind}", base)
    if kind == "stt":
        rec.mark(s.start_ns, "endpointing", "speech_started", "stt span start (VAD speech start)")
        final = s.attrs.get("is_final")
        if final is None or final is True:
            rec.mark(s.end_ns, "transcription", "transcript.final", "stt span end")
        if ttfb is not None:
            rec.mark(
                s.end_ns - ttfb,
                "endpointing",
                "framework.speech_end",
                "stt span end - metrics.ttfb (Pipecat's speech end)",
            )
            rec.measure("stt_ttfb", ttfb, "metrics.ttfb", detail)
        return
    _request_marks(rec, kind, ttfb)
    if ttfb is not None:
        rec.measure(f"{kind}_ttfb", ttfb, "metrics.ttfb", detail)
    if kind == "tts":
        if ttfb is not None:
            rec.first_byte(s.start_ns + ttfb)
        tel.add_reply(conv, s.start_ns, "tts start", rec.group)
    else:
        tel.add_window(conv, s.start_ns, "llm start")


def _request_marks(rec: SpanRecords, kind: str, ttfb: int | None) -> None:
    """Request, first token or byte (from ``metrics.ttfb``), done: from an llm or tts span."""
    s, st = rec.span, _STAGE[kind]
    rec.mark(s.start_ns, st, f"{kind}.request", f"{s.name} span start")
    if ttfb is not None:
        first = "llm.first_token" if kind == "llm" else "tts.first_byte"
        rec.mark(s.start_ns + ttfb, st, first, f"{s.name} span start + metrics.ttfb")
    rec.mark(s.end_ns, st, f"{kind}.done", f"{s.name} span end")


def _turn_measures(tel: Telemetry, turn_spans: list[OtelSpan]) -> None:
    """``turn.user_bot_latency_seconds``, tied to the last reply inside its turn span."""
    for t in turn_spans:
        value = seconds_to_ns(t.attrs.get("turn.user_bot_latency_seconds"))
        if value is None:
            continue
        replies = [r for r, _ in tel.replies.get(t.trace_id, []) if t.start_ns <= r <= t.end_ns]
        anchor = replies[-1] if replies else t.end_ns
        note = None
        if len(replies) > 1:
            note = (
                f"Pipecat's turn span #{t.attrs.get('turn.number', '?')} folded "
                f"{len(replies)} replies into one turn; it keeps only the last latency"
            )
        tel.add_measure(
            t.trace_id,
            "user_bot_latency",
            value,
            "turn.user_bot_latency_seconds on span turn",
            anchor,
            t.span_id,
            note,
        )
        if note is not None:
            tel.warnings.append(note)
