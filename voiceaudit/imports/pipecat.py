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

from voiceaudit.imports.base import (
    Constraint,
    Item,
    Measure,
    Telemetry,
    seconds_to_ns,
    strip_content,
)
from voiceaudit.imports.otel import OtelSpan

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


def from_spans(spans: list[OtelSpan], fmt: str, *, keep_content: bool) -> Telemetry:
    tel = Telemetry(framework=FRAMEWORK, format=fmt)
    by_id = {s.span_id: s for s in spans}
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))

    def turn_of(s: OtelSpan) -> OtelSpan | None:
        seen = 0
        p = by_id.get(s.parent_id) if s.parent_id else None
        while p is not None and seen < 64:
            if p.name == "turn":
                return p
            p = by_id.get(p.parent_id) if p.parent_id else None
            seen += 1
        return None

    for s in spans:
        conv = s.trace_id
        if s.name == "conversation":
            tel.add_conversation(
                conv,
                conversation_id=s.attrs.get("conversation.id"),
                service=s.resource.get("service.name"),
            )
        else:
            tel.add_conversation(conv)

    turn_spans = [s for s in spans if s.name == "turn"]
    for s in spans:
        conv = s.trace_id
        attrs, dropped = strip_content(s.attrs, keep_content)
        tel.dropped_content += dropped
        base = {
            "framework": FRAMEWORK,
            "span": s.name,
            "span_id": s.span_id,
            **({"parent_id": s.parent_id} if s.parent_id else {}),
            **attrs,
        }
        kind = service_kind(s.name)
        turn = turn_of(s)
        group = turn.span_id if turn is not None else None
        if s.name == "conversation":
            tel.items.append(
                Item(
                    "span",
                    conv,
                    s.start_ns,
                    s.end_ns,
                    "session",
                    "pipecat.conversation",
                    base,
                    s.start_ns,
                    per_turn=False,
                )
            )
            continue
        if s.name == "turn":
            tel.items.append(
                Item(
                    "span",
                    conv,
                    s.start_ns,
                    s.end_ns,
                    "turn",
                    "pipecat.turn",
                    base,
                    s.start_ns,  # a turn span folding several replies goes with the first
                    s.span_id,
                )
            )
            continue
        if kind is None:
            tel.items.append(
                Item(
                    "span",
                    conv,
                    s.start_ns,
                    s.end_ns,
                    "other",
                    f"pipecat.{s.name}",
                    base,
                    s.start_ns,
                    group,
                )
            )
            continue
        ttfb = seconds_to_ns(s.attrs.get("metrics.ttfb"))
        provider = s.attrs.get("gen_ai.provider.name", s.attrs.get("gen_ai.system"))
        label_tail = f" on span {s.name}" + (f" ({provider})" if provider else "")
        if kind == "stt":
            anchor = s.end_ns
            tel.items.append(
                Item(
                    "span",
                    conv,
                    s.start_ns,
                    s.end_ns,
                    "transcription",
                    "pipecat.stt",
                    base,
                    anchor,
                    group,
                )
            )
            ev = {"framework": FRAMEWORK, "span_id": s.span_id}
            tel.items.append(
                Item(
                    "event",
                    conv,
                    s.start_ns,
                    s.start_ns,
                    "endpointing",
                    "speech_started",
                    {**ev, "from": "stt span start (VAD speech start)"},
                    anchor,
                    group,
                )
            )
            final = s.attrs.get("is_final")
            if final is None or final is True:
                tel.items.append(
                    Item(
                        "event",
                        conv,
                        s.end_ns,
                        s.end_ns,
                        "transcription",
                        "transcript.final",
                        {**ev, "from": "stt span end"},
                        anchor,
                        group,
                    )
                )
            if ttfb is not None:
                t = s.end_ns - ttfb
                tel.items.append(
                    Item(
                        "event",
                        conv,
                        t,
                        t,
                        "endpointing",
                        "framework.speech_end",
                        {**ev, "from": "stt span end - metrics.ttfb (Pipecat's speech end)"},
                        anchor,
                        group,
                    )
                )
                tel.measures.append(
                    Measure(
                        FRAMEWORK,
                        conv,
                        "stt_ttfb",
                        ttfb,
                        "metrics.ttfb" + label_tail,
                        anchor,
                        group,
                    )
                )
        elif kind == "llm":
            anchor = s.start_ns
            tel.items.append(
                Item(
                    "span", conv, s.start_ns, s.end_ns, "model", "pipecat.llm", base, anchor, group
                )
            )
            _request_marks(tel, conv, s, "llm", ttfb, anchor, group)
            if ttfb is not None:
                tel.measures.append(
                    Measure(
                        FRAMEWORK,
                        conv,
                        "llm_ttfb",
                        ttfb,
                        "metrics.ttfb" + label_tail,
                        anchor,
                        group,
                    )
                )
            tel.constraints.append(Constraint(conv, s.start_ns, "after_speech_end", "llm start"))
            tel.constraints.append(Constraint(conv, s.start_ns, "before_reply", "llm start"))
        elif kind == "tts":
            anchor = s.start_ns
            tel.items.append(
                Item(
                    "span",
                    conv,
                    s.start_ns,
                    s.end_ns,
                    "synthesis",
                    "pipecat.tts",
                    base,
                    anchor,
                    group,
                )
            )
            _request_marks(tel, conv, s, "tts", ttfb, anchor, group)
            tel.replies[conv].append((s.start_ns, group))
            if ttfb is not None:
                tel.measures.append(
                    Measure(
                        FRAMEWORK,
                        conv,
                        "tts_ttfb",
                        ttfb,
                        "metrics.ttfb" + label_tail,
                        anchor,
                        group,
                    )
                )
                tel.constraints.append(
                    Constraint(
                        conv, s.start_ns + ttfb, "before_reply", "tts first byte", s.start_ns
                    )
                )
            tel.constraints.append(Constraint(conv, s.start_ns, "after_speech_end", "tts start"))
            tel.constraints.append(Constraint(conv, s.start_ns, "before_reply", "tts start"))
        else:  # speech-to-speech
            _s2s(tel, conv, s, base, ttfb, label_tail, group)

    _turn_measures(tel, turn_spans)
    return tel


def _request_marks(
    tel: Telemetry,
    conv: str,
    s: OtelSpan,
    stage: str,
    ttfb: int | None,
    anchor: int,
    group: str | None,
) -> None:
    ev = {"framework": FRAMEWORK, "span_id": s.span_id}
    st = _STAGE[stage]
    tel.items.append(
        Item(
            "event",
            conv,
            s.start_ns,
            s.start_ns,
            st,
            f"{stage}.request",
            {**ev, "from": f"{s.name} span start"},
            anchor,
            group,
        )
    )
    if ttfb is not None:
        first = "llm.first_token" if stage == "llm" else "tts.first_byte"
        tel.items.append(
            Item(
                "event",
                conv,
                s.start_ns + ttfb,
                s.start_ns + ttfb,
                st,
                first,
                {**ev, "from": f"{s.name} span start + metrics.ttfb"},
                anchor,
                group,
            )
        )
    tel.items.append(
        Item(
            "event",
            conv,
            s.end_ns,
            s.end_ns,
            st,
            f"{stage}.done",
            {**ev, "from": f"{s.name} span end"},
            anchor,
            group,
        )
    )


def _s2s(
    tel: Telemetry,
    conv: str,
    s: OtelSpan,
    base: dict[str, Any],
    ttfb: int | None,
    label_tail: str,
    group: str | None,
) -> None:
    ev = {"framework": FRAMEWORK, "span_id": s.span_id}
    anchor = s.start_ns
    tel.items.append(
        Item("span", conv, s.start_ns, s.end_ns, "model", f"pipecat.{s.name}", base, anchor, group)
    )
    if s.name == "llm_request":
        tel.items.append(
            Item(
                "event",
                conv,
                s.start_ns,
                s.start_ns,
                "model",
                "llm.request",
                {**ev, "from": "llm_request span start"},
                anchor,
                group,
            )
        )
        tel.replies[conv].append((s.start_ns, group))
        tel.constraints.append(
            Constraint(conv, s.start_ns, "after_speech_end", "llm_request start")
        )
        tel.constraints.append(Constraint(conv, s.start_ns, "before_reply", "llm_request start"))
    elif s.name == "llm_response":
        tel.items.append(
            Item(
                "event",
                conv,
                s.start_ns,
                s.start_ns,
                "model",
                "response.done",
                {**ev, "from": "llm_response span start"},
                anchor,
                group,
            )
        )
        if ttfb is not None:
            tel.measures.append(
                Measure(
                    FRAMEWORK, conv, "llm_ttfb", ttfb, "metrics.ttfb" + label_tail, anchor, group
                )
            )


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
        tel.measures.append(
            Measure(
                FRAMEWORK,
                t.trace_id,
                "user_bot_latency",
                value,
                "turn.user_bot_latency_seconds on span turn",
                anchor,
                t.span_id,
                note,
            )
        )
        if note is not None:
            tel.warnings.append(note)
