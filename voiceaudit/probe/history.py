"""The run's statistics over time, written while it runs (``stats.jsonl`` beside the trace).

A long run (``voiceaudit run --duration 10m``) or one asked for it (``--stats-every 5s``)
appends one JSON line per window of ``every`` seconds from the run's start, as soon as the
window is over, so a run that is still going (or was killed) shows how its latency moved:

``{"window": k, "start_s", "end_s" (seconds from the run's start), "turns" (finished in the
window), "ok", "failed", "failures" ({kind: n}), "voice_to_voice_p50_ms",
"voice_to_voice_p95_ms" (nearest rank over the window's ok turns, warm-ups excepted; null
without one), "sessions" (running at the window's end)}``

The last, partial window is written when the run ends (``"partial": true``). Each line is
flushed and fsynced in a worker thread, one line after the other, so a slow disk never
holds up the event loop that paces the audio; the file is readable at any moment. The
report's drift view reads the trace itself; this file is the live history (docs/run.md,
"Long calls").
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from voiceaudit.clock import NS_PER_S, Clock
from voiceaudit.probe.session import TurnResult

#: the file, beside the trace
STATS_NAME = "stats.jsonl"
#: the window of a --duration run that did not say --stats-every
STATS_EVERY_S = 10.0


def _nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _append(f: IO[str], text: str) -> None:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


class StatsHistory:
    """Collects finished turns and writes one line per window (see the module doc)."""

    def __init__(self, path: Path, clock: Clock, every_s: float) -> None:
        self.path = path
        self.clock = clock
        self.every_ns = round(every_s * NS_PER_S)
        self.t0 = clock.now_ns()
        self.window = 0
        self.turns: list[TurnResult] = []
        self.sessions = 0
        self._task: asyncio.Task[None] | None = None
        self._file: IO[str] | None = None
        # one worker: lines reach the file in window order
        self._writer: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Open the file and write each window when it is over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="voiceaudit-stats")
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def add(self, result: TurnResult, sessions: int) -> None:
        """A turn finished (its window is the one it finished in)."""
        self.turns.append(result)
        self.sessions = sessions

    async def _tick(self) -> None:
        while True:
            end = self.t0 + (self.window + 1) * self.every_ns
            delay = (end - self.clock.now_ns()) / NS_PER_S
            if delay > 0:
                await asyncio.sleep(delay)
            self._write(end, partial=False)

    def _write(self, end_ns: int, *, partial: bool) -> None:
        """Make the window's line and have it appended (in the worker while the run goes
        on; at once when it ends)."""
        if self._file is None:
            return
        turns, self.turns = self.turns, []
        ok = [t for t in turns if t.ok]
        v2v = [t.voice_to_voice_ns / 1e6 for t in ok if not t.warmup and t.voice_to_voice_ns]
        failures: dict[str, int] = {}
        for t in turns:
            if not t.ok:
                kind = t.failure or "target_error"
                failures[kind] = failures.get(kind, 0) + 1
        p50, p95 = _nearest_rank(v2v, 50), _nearest_rank(v2v, 95)
        line: dict[str, object] = {
            "window": self.window,
            "start_s": round(self.window * self.every_ns / NS_PER_S, 3),
            "end_s": round((end_ns - self.t0) / NS_PER_S, 3),
            "turns": len(turns),
            "ok": len(ok),
            "failed": len(turns) - len(ok),
            "failures": failures,
            "voice_to_voice_p50_ms": None if p50 is None else round(p50, 3),
            "voice_to_voice_p95_ms": None if p95 is None else round(p95, 3),
            "sessions": self.sessions,
        }
        if partial:
            line["partial"] = True
        text = json.dumps(line) + "\n"
        self.window += 1
        if self._writer is not None:
            self._writer.submit(_append, self._file, text)
        else:
            _append(self._file, text)

    def close(self, sessions: int) -> None:
        """The run ended: write the last, partial window and close the file."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._file is None:
            return
        self.sessions = sessions
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # the windows already handed over come first
            self._writer = None
        now = self.clock.now_ns()
        if self.turns or now > self.t0 + self.window * self.every_ns:
            self._write(now, partial=True)
        self._file.close()
        self._file = None
