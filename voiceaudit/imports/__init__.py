"""Framework telemetry in: Pipecat and LiveKit OpenTelemetry spans, LiveKit metrics
records, OpenAI Realtime event logs — put on a probe trace's clock and turns, and
compared with what the caller heard.

Public API::

    result = import_telemetry("spans.jsonl", trace=read_trace("trace.jsonl"))
    rows = framework_vs_heard(result, trace)       # the "framework vs heard" table
    print(format_table(rows))
    write_trace(result, "merged.jsonl", trace=trace)

See docs/telemetry.md.
"""

from voiceaudit.imports.align import AssignedMeasure, ClockAlignment, HeardTurn, heard_turns
from voiceaudit.imports.base import TelemetryError
from voiceaudit.imports.compare import (
    ComparisonRow,
    format_table,
    framework_vs_heard,
    measured_voice_to_voice,
)
from voiceaudit.imports.loader import FORMATS, ImportResult, import_telemetry
from voiceaudit.imports.output import write_trace

__all__ = [
    "FORMATS",
    "AssignedMeasure",
    "ClockAlignment",
    "ComparisonRow",
    "HeardTurn",
    "ImportResult",
    "TelemetryError",
    "format_table",
    "framework_vs_heard",
    "heard_turns",
    "import_telemetry",
    "measured_voice_to_voice",
    "write_trace",
]
