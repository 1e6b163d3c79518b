"""The ground-truth record of an impaired run: ``impairment.jsonl`` in the run directory.

One JSON object per line (layout ``voiceaudit.impairment/1``, docs/network-conditions.md):
a ``header`` (the impairment, the clock and a wall/monotonic anchor), one ``flow`` per TCP
connection or UDP flow, one ``chunk`` per TCP chunk and one ``datagram`` per UDP datagram
the proxy handled (its fate and times), and an ``end`` with counts. Times are integer
nanoseconds on the monotonic clock the probe's trace uses.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from voiceaudit.errors import InputError
from voiceaudit.impair.spec import Impairment

SCHEMA = "voiceaudit.impairment/1"


class Recorder:
    """Appends records; flushed every ``flush_every`` records and at close."""

    def __init__(
        self, path: Path | None, impairment: Impairment, *, flush_every: int = 200
    ) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._flows = 0
        self._n = 0
        self._flush_every = flush_every
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", encoding="utf-8")
        self.write(
            {
                "record": "header",
                "schema": SCHEMA,
                "impairment": impairment.describe(),
                "clock": "monotonic",
                "anchor": {"wall_ns": time.time_ns(), "mono_ns": time.monotonic_ns()},
            }
        )

    def new_flow(self, kind: str, **attrs: Any) -> int:
        self._flows += 1
        self.write({"record": "flow", "flow": self._flows, "kind": kind,
                    "t_ns": time.monotonic_ns(), **attrs})  # fmt: skip
        return self._flows

    def write(self, rec: dict[str, Any]) -> None:
        kind = rec.get("record")
        if kind in ("chunk", "datagram"):
            self.counts[f"{kind}s"] += 1
            fate = rec.get("fate")
            if fate:
                self.counts[f"{kind}s_{fate}"] += 1
            if rec.get("losses"):
                self.counts["tcp_segment_losses"] += int(rec["losses"])
        if self._fh is None:
            return
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._n += 1
        if self._n % self._flush_every == 0:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is None:
            return
        self.write({"record": "end", "t_ns": time.monotonic_ns(), "flows": self._flows,
                    "counts": dict(sorted(self.counts.items()))})  # fmt: skip
        self._fh.close()
        self._fh = None


def read_record(path: Path) -> list[dict[str, Any]]:
    """Every record of an ``impairment.jsonl`` (a cut-short last line is left out)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read the impairment record: {exc.strerror}", path=str(path)
        ) from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(text.splitlines()):
                break
            raise InputError("not a JSON line", path=str(path), line=i) from None
        out.append(rec)
    if not out or out[0].get("schema") != SCHEMA:
        raise InputError(f"not an impairment record ({SCHEMA})", path=str(path))
    return out
