"""The reference pipeline's stage events, as the targets read them.

The reference pipeline (voiceaudit.reference.stages) sends ``voiceaudit.stage`` extension
events to a client that asks with the header :data:`STAGES_HEADER`: one per stage of its
cascade, with the server's monotonic time. The ``realtime`` and ``webrtc`` targets ask by
default (target option ``stage_events=on|off``) and turn each into the matching mark at
the server's time (``attrs.server_t_ns``). Other servers ignore the header and send none.
"""

from __future__ import annotations

from typing import Any

from voiceaudit.errors import UsageError
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.websocket import EVENT_MARKS

#: The extension event's type.
STAGE_EVENT = "voiceaudit.stage"
#: The request header that asks for stage events (value ``1``).
STAGES_HEADER = "X-Voiceaudit-Stages"


def wants_stage_events(config: TargetConfig) -> bool:
    """The ``stage_events`` target option (default ``on``)."""
    value = config.option("stage_events", "on")
    if value not in ("on", "off"):
        raise UsageError(f"target option stage_events={value!r} must be 'on' or 'off'")
    return value == "on"


def stage_mark(ev: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(mark name, stage, attrs) of a stage event, or ``None`` for an unknown stage."""
    stage = ev.get("stage")
    mapped = EVENT_MARKS.get(stage) if isinstance(stage, str) else None
    if mapped is None:
        return None
    attrs: dict[str, Any] = {"raw": STAGE_EVENT}
    server_t = ev.get("t_ns")
    if type(server_t) is int:
        attrs["server_t_ns"] = server_t
    pts = ev.get("pts")
    if mapped[0] == "audio.first_sent" and type(pts) is int:
        attrs["pts"] = pts
    return mapped[0], mapped[1], attrs
