"""Write imported telemetry as a voiceaudit trace (alone, or merged into a probe trace)."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from voiceaudit import __version__
from voiceaudit.clock import Anchor
from voiceaudit.errors import UsageError
from voiceaudit.imports.loader import ImportResult
from voiceaudit.model import Header
from voiceaudit.trace_io import Trace, TraceWriter


def _import_facts(result: ImportResult) -> dict[str, Any]:
    return {
        "file": Path(result.path).name,
        "framework": result.framework,
        "format": result.format,
        "alignment": None if result.alignment is None else result.alignment.to_dict(),
        "sessions": dict(result.sessions),
        "dropped_content_attributes": result.dropped_content,
    }


def write_trace(
    result: ImportResult | Sequence[ImportResult],
    out: str | os.PathLike[str],
    *,
    trace: Trace | None = None,
) -> Path:
    """Write imported telemetry as a trace at ``out`` (which must not exist).

    With ``trace`` (the one the import was placed on), the output is that trace with the
    imported spans and marks added, so every tool reads them together. Without one, the
    output stands alone: its clock is the framework's wall clock (the header says so, with
    an identity anchor), its sessions the framework's conversations, its turns the
    framework's replies in order.
    """
    results = [result] if isinstance(result, ImportResult) else list(result)
    if not results:
        raise UsageError("nothing to write: no imports")
    path = Path(out)
    if path.exists():
        raise UsageError(f"{path} already exists", hint="choose another -o or remove it")
    if trace is not None and any(r.trace_path != trace.path for r in results):
        raise UsageError("an import was not placed on this trace; import it with trace=")
    facts = [_import_facts(r) for r in results]
    if trace is not None:
        h = trace.header
        imports = list(h.config.get("imports", [])) if isinstance(h.config, dict) else []
        w = TraceWriter(path, replace(h, config={**h.config, "imports": [*imports, *facts]}))
        for ev in trace.events:
            w.write(ev)
        for sp in trace.spans:
            w.write(sp)
        for r in results:
            _write_imported(w, r)
        end = trace.end
        if end is not None:
            for k, v in end.counts.items():
                if k not in ("events", "spans"):
                    w.count(k, v)
        w.close(
            end.reason if end is not None else "interrupted",
            anchor=None if end is None else end.anchor,
        )
        return path
    times = [s.start_ns for r in results for s in r.spans]
    times += [e.t_ns for r in results for e in r.events]
    t0 = min(times) if times else 0
    names = ",".join(Path(r.path).name for r in results)
    digest = hashlib.sha256(names.encode() + str(t0).encode()).hexdigest()
    first = results[0]
    header = Header(
        run_id="import-" + digest[:10],
        voiceaudit_version=__version__,
        target={
            "protocol": first.framework,
            "url": "",
            "description": f"imported from {names}",
        },
        host={
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        # Imported times are the framework's wall clock (Unix ns); the identity anchor says
        # so to anything that maps wall time (packet captures) onto this trace.
        clock={"name": "wall (imported)", "resolution_ns": 1000},
        anchors=(Anchor(wall_ns=t0, mono_ns=t0, uncertainty_ns=0),),
        config={"imports": facts},
    )
    w = TraceWriter(path, header)
    for r in results:
        _write_imported(w, r)
    w.close("complete")
    return path


def _write_imported(w: TraceWriter, result: ImportResult) -> None:
    for sp in result.spans:
        w.write(sp)
    for ev in result.events:
        w.write(ev)
    w.commit()
