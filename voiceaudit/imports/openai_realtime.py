"""OpenAI Realtime event logs → :class:`~voiceaudit.imports.base.Telemetry`.

A log is JSON lines of server events as a client received them, each with the receive
time. Accepted shapes (the ones client code tends to write):

- the event itself with a time key added: ``{"type": "response.created", …,
  "received_at": 1732412345.123}``;
- a wrapper: ``{"received_at": …, "event": {…}}`` (also ``data`` / ``message``), with
  ``"direction": "client"`` records skipped.

Time keys tried, in order: ``received_at``, ``recv_ts``, ``receive_time``, ``timestamp``,
``ts``, ``time``, ``t`` — Unix seconds, ms, µs or ns (told apart by magnitude) or ISO 8601.
GA and beta event names are both read. One log is one conversation; an exchange runs from
``input_audio_buffer.speech_stopped`` (or ``committed``) to ``response.done``.
"""

from __future__ import annotations

from typing import Any

from voiceaudit.imports.base import (
    Constraint,
    Telemetry,
    epoch_to_ns,
    obj_at,
    strip_content,
)

FRAMEWORK = "openai-realtime"

TIME_KEYS = ("received_at", "recv_ts", "receive_time", "timestamp", "ts", "time", "t")
WRAP_KEYS = ("event", "data", "message")

_AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
_MARKS: dict[str, tuple[str, str]] = {
    "input_audio_buffer.speech_started": ("speech_started", "endpointing"),
    "input_audio_buffer.speech_stopped": ("endpoint", "endpointing"),
    "input_audio_buffer.committed": ("committed", "endpointing"),
    "conversation.item.input_audio_transcription.completed": ("transcript.final", "transcription"),
    "response.created": ("response.created", "model"),
    "response.output_audio.done": ("tts.done", "synthesis"),
    "response.audio.done": ("tts.done", "synthesis"),
    "response.done": ("response.done", "model"),
}
_PREFIXES = ("session.", "input_audio_buffer.", "conversation.", "response.", "rate_limits.")


def _unwrap(obj: Any) -> tuple[dict[str, Any], Any] | None:
    """(event, time value) or None when the object is not a logged Realtime event."""
    if not isinstance(obj, dict):
        return None
    if obj.get("direction") in ("client", "sent", "out"):
        return ({}, None)
    ev: Any = obj
    for k in WRAP_KEYS:
        inner = obj.get(k)
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            ev = inner
            break
    kind = ev.get("type")
    if not isinstance(kind, str) or not (kind.startswith(_PREFIXES) or kind == "error"):
        return None
    for k in TIME_KEYS:
        t = obj.get(k)
        if t is not None and not isinstance(t, dict | list | bool):
            return ev, t
    return ev, None


def is_event_record(obj: Any) -> bool:
    u = _unwrap(obj)
    return u is not None


def from_events(objs: list[Any], *, keep_content: bool) -> Telemetry:
    tel = Telemetry(framework=FRAMEWORK, format="openai-realtime-events")
    conv = "openai-realtime"
    tel.add_conversation(conv)
    events: list[tuple[int, dict[str, Any]]] = []
    for i, obj in enumerate(objs):
        u = _unwrap(obj)
        if u is None:
            raise ValueError(f"record {i + 1} is not an OpenAI Realtime server event")
        ev, traw = u
        if not ev:
            continue  # a client event
        t = epoch_to_ns(traw)
        if t is None:
            raise ValueError(
                f"record {i + 1} ({ev.get('type')}) has no receive time "
                f"(looked for {', '.join(TIME_KEYS)})"
            )
        if ev.get("type") == "session.created":
            sess = obj_at(ev, "session")
            if isinstance(sess.get("id"), str):
                tel.conversations[conv]["session_id"] = sess["id"]
        events.append((t, ev))
    events.sort(key=lambda e: e[0])

    stopped: int | None = None
    reply: int | None = None  # response.created of the current exchange
    first_audio_seen = False
    for t, ev in events:
        kind = ev["type"]
        if kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
            reply = None
        if kind == "response.created":
            reply = t
        # Items after the reply began belong to that reply's exchange.
        anchor = t if reply is None else reply
        attrs: dict[str, Any] = {"framework": FRAMEWORK, "raw": kind}
        for k in ("audio_start_ms", "audio_end_ms", "item_id", "response_id", "transcript"):
            if k in ev:
                attrs[k] = ev[k]
        attrs, dropped = strip_content(attrs, keep_content)
        tel.dropped_content += dropped
        if kind in _AUDIO_DELTA:
            if not first_audio_seen:
                first_audio_seen = True
                frm = {**attrs, "from": "first audio delta received"}
                tel.add_mark(conv, t, "reply", "reply.first_audio_event", frm, anchor)
                tel.constraints.append(
                    Constraint(conv, t, "before_reply", "first audio delta", anchor)
                )
                if stopped is not None:
                    tel.add_measure(
                        conv,
                        "response_latency",
                        t - stopped,
                        "first audio delta - speech_stopped (as received)",
                        anchor,
                    )
            continue
        if kind == "input_audio_buffer.speech_stopped":
            stopped = t
            first_audio_seen = False
            tel.constraints.append(Constraint(conv, t, "after_speech_end", "speech_stopped"))
        elif kind == "response.created":
            tel.add_reply(conv, t, "response.created")
        if kind in _MARKS:
            name, stage = _MARKS[kind]
            if kind == "response.done":
                resp = obj_at(ev, "response")
                attrs["status"] = resp.get("status")
            tel.add_mark(conv, t, stage, name, attrs, anchor)
        elif kind == "error":
            err = obj_at(ev, "error")
            msg = {**attrs, "message": str(err.get("message", ""))}
            tel.add_mark(conv, t, "error", "error", msg, anchor)
    return tel
