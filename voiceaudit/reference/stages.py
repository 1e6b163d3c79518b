"""The reference pipeline's stage announcements: a documented extension of its protocols.

The OpenAI Realtime protocol (and its WebRTC data channel) tells a client when the
response starts and when its first text and audio go out, but nothing about the stages
inside a cascade: when the language model was asked, when its first token came, when
synthesis was asked and produced its first audio, when that audio was handed to the
socket. The reference pipeline knows all of them. A client that asks for them (the
handshake or offer request carries the header :data:`STAGES_HEADER` with value ``1``) gets
one extension event per stage, **clearly not part of the protocol**::

    {"type": "voiceaudit.stage", "event_id": "...", "stage": "llm_first_token",
     "turn": 0, "t_ns": 4944870120420}

``stage`` is a ground-truth mark name (:data:`ANNOUNCED`, in pipeline order) and ``t_ns``
the server's ``time.monotonic_ns()`` when the stage happened (the same clock as the
probe's when both run on one host). Each stage is announced once per turn, after the
protocol's own event for that moment, so the standard events are never delayed by it.
The raw PCM WebSocket (``/v1/pcm``) has always sent these marks under their own names;
third-party servers send none, and voiceaudit then splits the turn by the protocol's own
events only.
"""

from __future__ import annotations

from voiceaudit.reference.groundtruth import TurnRecord
from voiceaudit.targets.stages import STAGE_EVENT, STAGES_HEADER

__all__ = ["ANNOUNCED", "STAGES_HEADER", "STAGE_EVENT", "pending_stages", "wants_stages"]

#: Ground-truth marks announced, in pipeline order.
ANNOUNCED: tuple[str, ...] = (
    "speech_started",
    "vad_stop",
    "asr_done",
    "transcript_final",
    "llm_request",
    "llm_first_token",
    "tts_request",
    "tts_first_audio",
    "first_audio_sent",
    "llm_done",
    "last_audio_sent",
)
#: Marks announced only once the reply is over (they move while it plays).
_AT_END = frozenset({"last_audio_sent"})


def wants_stages(headers: object) -> bool:
    """Whether a request's headers ask for stage events."""
    get = getattr(headers, "get", None)
    return get is not None and str(get(STAGES_HEADER, "")).strip() == "1"


def pending_stages(
    record: TurnRecord, *, final: bool = False, hold: frozenset[str] = frozenset()
) -> list[tuple[str, int]]:
    """The stages of ``record`` reached but not yet announced, in pipeline order (and
    from now on counted as announced). ``final``: the reply is over, so marks that move
    while it plays (the last audio sent) are settled too. ``hold``: marks not settled yet
    (WebRTC hands audio to its track later than the pipeline emits it)."""
    out: list[tuple[str, int]] = []
    for name in ANNOUNCED:
        if name in record.announced or name in hold or (name in _AT_END and not final):
            continue
        t = record.marks.get(name)
        if t is not None:
            record.announced.add(name)
            out.append((name, t))
    return out
