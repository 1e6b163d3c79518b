"""Standard traces out: Perfetto / Chrome trace-event JSON and OpenTelemetry OTLP/JSON.

::

    from voiceaudit.exports import export_trace
    export_trace(read_trace("run/trace.jsonl"), "perfetto", "run/trace.perfetto.json")

See docs/telemetry.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from voiceaudit.errors import UsageError
from voiceaudit.trace_io import Trace

#: what ``--format`` accepts
FORMATS = ("perfetto", "otlp")


def export_document(trace: Trace, fmt: str) -> dict[str, Any]:
    """The export of ``trace`` in ``fmt`` as a JSON-ready object."""
    if fmt == "perfetto":
        from voiceaudit.exports.perfetto import to_trace_events

        return to_trace_events(trace)
    if fmt == "otlp":
        from voiceaudit.exports.otlp import to_otlp

        return to_otlp(trace)
    raise UsageError(f"unknown export format {fmt!r}", hint="one of: " + ", ".join(FORMATS))


def export_trace(trace: Trace, fmt: str, out: str | os.PathLike[str]) -> Path:
    """Write the export of ``trace`` in ``fmt`` to ``out`` (``-`` is not a path here)."""
    doc = export_document(trace, fmt)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    tmp.replace(path)
    return path


__all__ = ["FORMATS", "export_document", "export_trace"]
