"""Real-time pacing like a microphone, with sub-millisecond send precision.

asyncio's timers wake through epoll, whose timeout is rounded up to whole milliseconds,
so a plain ``asyncio.sleep`` sends frames up to ~1 ms late, jittering. The :class:`Pacer`
keeps one heap of deadlines for every session in the process and arms a single loop
timer ``spin_ns`` before the earliest; when it fires it busy-waits the last fraction and
releases every waiter whose deadline has passed. Deadlines are absolute (t0 + b/rate), so
lateness never accumulates. One pacer serves all sessions: spinning once per deadline
group, not once per session, keeps the spin cost flat as sessions are added.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

DEFAULT_SPIN_NS = 1_500_000


class Pacer:
    """Releases awaiting coroutines at absolute monotonic deadlines (integer ns)."""

    def __init__(
        self,
        *,
        spin_ns: int = DEFAULT_SPIN_NS,
        now_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._spin_ns = spin_ns
        self._now_ns = now_ns
        self._heap: list[tuple[int, int, asyncio.Future[int]]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    async def wait_until(self, deadline_ns: int) -> int:
        """Return at ``deadline_ns`` (or as soon after as possible); returns the time released."""
        now = self._now_ns()
        if deadline_ns <= now:
            return now
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        heapq.heappush(self._heap, (deadline_ns, next(self._seq), fut))
        if self._armed_for is None or deadline_ns < self._armed_for:
            self._arm(loop)
        return await fut

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_for = None
        while self._heap and self._heap[0][2].done():  # cancelled waiters
            heapq.heappop(self._heap)
        if not self._heap:
            return
        deadline = self._heap[0][0]
        # loop.time() is time.monotonic(): the same clock as monotonic_ns.
        wake = loop.time() + (deadline - self._now_ns() - self._spin_ns) / 1e9
        self._handle = loop.call_at(wake, self._fire, loop)
        self._armed_for = deadline

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        self._armed_for = None
        if not self._heap:
            return
        deadline = self._heap[0][0]
        now = self._now_ns()
        while now < deadline:  # the last fraction of a millisecond: spin
            now = self._now_ns()
        while self._heap and self._heap[0][0] <= now:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(now)
        self._arm(loop)


# -- measured pacing -----------------------------------------------------------------------

#: A turn's pacing broke when any of its frames left later than this after its deadline:
#: a quarter of a 20 ms frame, and the width below which the report calls no interval wide
#: (see docs/run.md, "Pacing is measured").
BROKE_NS = 5_000_000
#: The run (or report) warns when the p99 lateness over all frames is above this.
P99_GOAL_NS = 2_000_000
#: Resolution of the lateness histogram written per turn (``input.pacing``).
HIST_BIN_NS = 100_000


def _rank(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile (a value of the data, never an interpolation)."""
    i = max(0, -(-len(ordered) * q // 100) - 1)
    return ordered[int(min(i, len(ordered) - 1))]


def pacing_attrs(sent_ns: list[int], deadlines: list[int]) -> dict[str, Any]:
    """The ``input.pacing`` attributes of one turn's frames (see docs/trace-format.md):
    how late each frame left after its deadline, summarised; never empty input."""
    late = [t - d for t, d in zip(sent_ns, deadlines, strict=True)]
    ordered = sorted(late)
    worst = ordered[-1]
    hist: dict[int, int] = {}
    for v in late:
        b = v // HIST_BIN_NS if v > 0 else 0
        hist[b] = hist.get(b, 0) + 1
    bins = sorted(hist)
    return {
        "frames": len(late),
        "p50_ns": _rank(ordered, 50),
        "p99_ns": _rank(ordered, 99),
        "max_ns": worst,
        "max_frame": late.index(worst),
        "over_broke": sum(1 for v in late if v > BROKE_NS),
        "broke_ns": BROKE_NS,
        "hist_bin_ns": HIST_BIN_NS,
        "hist_bins": bins,
        "hist_counts": [hist[b] for b in bins],
    }


class PacingHistogram:
    """Frame lateness merged over turns, from their ``input.pacing`` histograms: the
    percentiles are bin upper edges, so never below the true value and at most one bin
    (0.1 ms) above it."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.bin_ns = HIST_BIN_NS
        self.frames = 0

    def add(self, bin_ns: int, bins: list[int], counts: list[int]) -> None:
        if bin_ns != self.bin_ns:  # another resolution: re-bin onto ours (rounding up)
            bins = [-(-(b + 1) * bin_ns // self.bin_ns) - 1 for b in bins]
        for b, c in zip(bins, counts, strict=True):
            self.counts[b] = self.counts.get(b, 0) + c
            self.frames += c

    def percentile_ns(self, q: float) -> int | None:
        if self.frames == 0:
            return None
        need = max(1, -(-self.frames * q // 100))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= need:
                return (b + 1) * self.bin_ns
        return (max(self.counts) + 1) * self.bin_ns
