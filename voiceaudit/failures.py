"""Why a turn failed: the fixed set of failure kinds that ``turn.end`` carries.

A failed turn's ``turn.end`` has ``ok: false``, ``reason`` (one human line) and, since
voiceaudit 0.3, ``failure`` (one of :data:`FAILURE_KINDS`). Traces written before that
carry only ``reason``; :func:`failure_kind` reads the kind from it, so the report's failure
table, ``report A B`` and the gate count old and new traces alike.

This module sits below the probe, the analysis and the gate: it imports nothing of
voiceaudit's.
"""

from __future__ import annotations

from typing import Any, Final

#: The failure kinds, in the order the report lists them.
FAILURE_KINDS: Final[tuple[str, ...]] = (
    "connect_failed",
    "no_reply",
    "reply_cut",
    "protocol_violation",
    "target_error",
    "timeout",
    "interrupted",
    "discarded",
)

#: One line each, for the report and docs/report-format.md.
FAILURE_LABELS: Final[dict[str, str]] = {
    "connect_failed": "connect failed",
    "no_reply": "no reply",
    "reply_cut": "reply cut",
    "protocol_violation": "protocol violation",
    "target_error": "target error",
    "timeout": "timeout",
    "interrupted": "interrupted",
    "discarded": "discarded",
}

FAILURE_MEANINGS: Final[dict[str, str]] = {
    "connect_failed": "the session's connection could not be opened",
    "no_reply": "the target ended its reply without an audible sample (no audio, or silence)",
    "reply_cut": "the connection closed, was reset or was lost during the turn",
    "protocol_violation": "the target sent something its protocol does not allow "
    "(malformed event, unexpected frame, audio that cannot be the declared format)",
    "target_error": "the target reported an error (an error event, a pipeline exception)",
    "timeout": "no reply audio within --timeout of the speech end, or the reply stalled",
    "interrupted": "the run was stopped (Ctrl-C) before the turn finished",
    "discarded": "a turn of a call recording on which the two speech detectors disagreed by "
    "more than the margin: no figure could be measured (docs/recordings.md)",
}

# Reason prefixes as the probe and the targets have always written them (older traces).
_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("connect failed", "connect_failed"),
    ("cannot connect", "connect_failed"),
    ("protocol:", "protocol_violation"),
    ("target error", "target_error"),
    ("pipeline raised", "target_error"),
    ("timeout", "timeout"),
    ("interrupted", "interrupted"),
    ("reply audio is silent", "no_reply"),
    ("no reply", "no_reply"),
    ("target closed", "reply_cut"),
    ("connection", "reply_cut"),
    ("send failed", "reply_cut"),
    ("webrtc:", "reply_cut"),
    ("pipeline returned", "reply_cut"),
    ("reply cut", "reply_cut"),
    ("discarded", "discarded"),
)


def failure_kind(reason: str | None, declared: Any = None) -> str:
    """The failure kind of a failed turn: ``declared`` (``turn.end``'s ``failure``) when it
    is one of :data:`FAILURE_KINDS`, else read from ``reason``; an unknown reason counts as
    ``target_error`` (the target did something the probe could not use)."""
    if isinstance(declared, str) and declared in FAILURE_LABELS:
        return declared
    text = (reason or "").strip().lower()
    for prefix, kind in _PREFIXES:
        if text.startswith(prefix):
            return kind
    return "target_error"
