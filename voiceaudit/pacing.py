"""Real-time pacing like a microphone, with sub-millisecond send precision.

asyncio's timers wake through epoll, whose timeout is rounded up to whole milliseconds,
so a plain ``asyncio.sleep`` sends frames up to ~1 ms late, jittering. The :class:`Pacer`
keeps one heap of deadlines for every session in the process and arms a single loop
timer ``spin_ns`` before the earliest; when it fires it busy-waits the last fraction and
releases every waiter whose deadline has passed. Deadlines are absolute (t0 + b/rate), so
lateness never accumulates. One pacer serves all sessions: spinning once per deadline
group, not once per session, keeps the spin cost flat as sessions are added.

Below the probe and ``impair`` (which paces the packets it delays with the same pacer), so
neither imports the other; :mod:`voiceaudit.probe.pacing` re-exports it. What the pacing
achieved (``input.pacing``, its histogram and thresholds) is measured in
:mod:`voiceaudit.pacing_stats`, which the report reads without importing the probe.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

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
