"""Clocks: integer nanoseconds from one monotonic clock, plus wall-clock anchors.

All durations in voiceaudit are integer nanoseconds read from ``time.monotonic_ns()``
(CLOCK_MONOTONIC on Linux: not slewed by NTP steps, shared by every process on the host,
so a server on loopback and the probe read the same clock). Wall-clock time appears only
in :class:`Anchor` pairs, which map packet timestamps (wall clock) onto the monotonic
clock and let drift between the two be estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


class Clock(Protocol):
    """Anything that tells monotonic time in integer nanoseconds."""

    name: str

    def now_ns(self) -> int: ...

    def wall_ns(self) -> int: ...

    def resolution_ns(self) -> int: ...


class MonotonicClock:
    """The real clock: ``time.monotonic_ns`` and ``time.time_ns``."""

    name = "monotonic"

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def resolution_ns(self) -> int:
        return max(1, round(time.get_clock_info("monotonic").resolution * NS_PER_S))


class FakeClock:
    """A clock the tests drive by hand."""

    name = "fake"

    def __init__(self, start_ns: int = 1_000 * NS_PER_S, wall_offset_ns: int = 0) -> None:
        self._now = start_ns
        self._wall_offset = wall_offset_ns

    def now_ns(self) -> int:
        return self._now

    def wall_ns(self) -> int:
        return self._now + self._wall_offset

    def resolution_ns(self) -> int:
        return 1

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("a monotonic clock never goes back")
        self._now += ns


@dataclass(frozen=True, slots=True)
class Anchor:
    """One simultaneous reading of the wall clock and the monotonic clock.

    ``uncertainty_ns`` is half the width of the monotonic interval that bracketed the
    wall-clock read: the anchor is exact to within it.
    """

    wall_ns: int
    mono_ns: int
    uncertainty_ns: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "wall_ns": self.wall_ns,
            "mono_ns": self.mono_ns,
            "uncertainty_ns": self.uncertainty_ns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Anchor:
        wall, mono, unc = d.get("wall_ns"), d.get("mono_ns"), d.get("uncertainty_ns", 0)
        if not (isinstance(wall, int) and isinstance(mono, int) and isinstance(unc, int)):
            raise ValueError("an anchor needs integer wall_ns and mono_ns")
        return cls(wall, mono, unc)


def take_anchor(clock: Clock, tries: int = 5) -> Anchor:
    """Read wall and monotonic time as close together as possible.

    Brackets the wall read between two monotonic reads and keeps the tightest of a few
    tries, so a preemption between the reads does not skew the anchor.
    """
    best: Anchor | None = None
    for _ in range(tries):
        m0 = clock.now_ns()
        w = clock.wall_ns()
        m1 = clock.now_ns()
        cand = Anchor(wall_ns=w, mono_ns=(m0 + m1) // 2, uncertainty_ns=(m1 - m0 + 1) // 2)
        if best is None or cand.uncertainty_ns < best.uncertainty_ns:
            best = cand
    assert best is not None
    return best


@dataclass(frozen=True, slots=True)
class ClockMap:
    """Maps wall-clock nanoseconds onto the monotonic clock through anchors.

    With one anchor the map is a pure offset; with two or more it is the straight line
    through the first and last, so a constant drift between the clocks is corrected and
    reported as ``drift_ppm``.
    """

    anchors: tuple[Anchor, ...]

    def __post_init__(self) -> None:
        if not self.anchors:
            raise ValueError("a clock map needs at least one anchor")

    @property
    def drift_ppm(self) -> float:
        first, last = self.anchors[0], self.anchors[-1]
        dw = last.wall_ns - first.wall_ns
        if dw == 0:
            return 0.0
        return ((last.mono_ns - first.mono_ns) - dw) / dw * 1e6

    def wall_to_mono(self, wall_ns: int) -> int:
        """A wall-clock time on the monotonic clock."""
        first, last = self.anchors[0], self.anchors[-1]
        return _on_line(wall_ns, (first.wall_ns, first.mono_ns), (last.wall_ns, last.mono_ns))

    def mono_to_wall(self, mono_ns: int) -> int:
        """A monotonic time on the wall clock."""
        first, last = self.anchors[0], self.anchors[-1]
        return _on_line(mono_ns, (first.mono_ns, first.wall_ns), (last.mono_ns, last.wall_ns))


def _on_line(x: int, first: tuple[int, int], last: tuple[int, int]) -> int:
    """``x`` mapped along the straight line through the points ``first`` and ``last``
    (``(x, y)`` pairs); a pure offset when they share their ``x``."""
    (x0, y0), (x1, y1) = first, last
    dx = x1 - x0
    if dx == 0:
        return x - x0 + y0
    slope = (y1 - y0) / dx
    return y0 + round((x - x0) * slope)


def ms(ns: int | float) -> float:
    """Nanoseconds to milliseconds, for display only."""
    return ns / NS_PER_MS
