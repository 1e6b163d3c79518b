"""Measured pacing: how late the probe's frames left, per turn and merged over turns.

The probe writes these figures (``input.pacing``, docs/trace-format.md) and the analysis
and the reports read them back, so they live here, below both, not in
:mod:`voiceaudit.pacing` (the pacer itself).
"""

from __future__ import annotations

from typing import Any

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
