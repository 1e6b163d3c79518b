"""Latency against concurrency, and the knee.

Every turn the probe records carries ``concurrency``: how many of the run's sessions were
running when the turn's speech end was sent (``input.speech_end_sent``). A ramp
(``voiceaudit run --ramp``) spreads turns over many levels; so do merged runs at
different ``--sessions``.

Per level the view gives the number of turns and voice-to-voice p50 and p95. The
**knee** is the lowest level whose p95 exceeds the baseline's (the lowest level measured,
normally one session) by more than a margin (default +10 %), *significantly*: a one-sided
percentile bootstrap of ``p95(level) - allowed(p95(baseline))``
(:func:`voiceaudit.analysis.significance.bootstrap_greater`, seeded, so the same traces give
the same knee), with Holm's correction over the levels tested. A level with fewer than
``min_turns`` turns is shown but not tested (its p95 would be its maximum). No knee means
no level was significantly above the margin: the pipeline held up to the highest level
measured, as far as these turns can tell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceaudit.analysis.significance import Figure, Increase, bootstrap_greater, holm_adjusted
from voiceaudit.analysis.stats import as_sorted, percentile

#: how much above the baseline's p95 a level must be (significantly) to be the knee
DEFAULT_MARGIN = Increase(relative=0.10)
#: significance level of each level's test (Holm-corrected over the levels)
DEFAULT_ALPHA = 0.05
#: a level with fewer turns than this is not tested
MIN_TURNS = 5
P95 = Figure("p95", 95.0)


@dataclass(frozen=True)
class Level:
    concurrency: int
    turns: int
    p50_ms: float
    p95_ms: float
    #: Holm-adjusted one-sided p-value of "p95 above the baseline's plus the margin";
    #: None for the baseline and for levels with too few turns
    p_value: float | None = None
    #: significantly above the baseline's p95 plus the margin
    above: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "turns": self.turns,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p_value": None if self.p_value is None else round(self.p_value, 6),
            "above": self.above,
        }


@dataclass(frozen=True)
class ConcurrencyView:
    levels: tuple[Level, ...]
    #: the level the others are tested against (the lowest one measured)
    baseline: int
    margin: Increase
    alpha: float
    min_turns: int
    #: the lowest level significantly above the baseline plus the margin; None: none was
    knee: int | None

    @property
    def highest(self) -> int:
        return self.levels[-1].concurrency

    def describe_knee(self) -> str:
        if self.knee is not None:
            return (
                f"knee at {self.knee} concurrent sessions: voice-to-voice p95 above the "
                f"{self.baseline}-session baseline {self.margin} (significant, alpha "
                f"{self.alpha:g})"
            )
        return (
            f"no knee up to {self.highest} concurrent sessions: no level's voice-to-voice "
            f"p95 was significantly above the {self.baseline}-session baseline {self.margin}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "margin": str(self.margin),
            "alpha": self.alpha,
            "min_turns": self.min_turns,
            "test": f"bootstrap on the p95, one-sided, against the baseline {self.margin}, "
            "Holm-corrected over the levels",
            "knee": self.knee,
            "highest": self.highest,
            "levels": [lv.to_dict() for lv in self.levels],
        }


def concurrency_view(
    turns: Iterable[tuple[int | None, int | None]],
    *,
    margin: Increase = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    min_turns: int = MIN_TURNS,
) -> ConcurrencyView | None:
    """The view over ``(concurrency, voice_to_voice_ns)`` pairs of the statistics turns;
    None when fewer than two levels have a measured turn."""
    per: dict[int, list[float]] = {}
    for c, ns in turns:
        if c is not None and ns is not None:
            per.setdefault(c, []).append(ns / 1e6)
    if len(per) < 2:
        return None
    order = sorted(per)
    values = {c: as_sorted(np.asarray(per[c], dtype=np.float64)) for c in order}
    base = order[0]
    a = values[base]
    tested = [c for c in order[1:] if len(values[c]) >= min_turns] if len(a) >= min_turns else []
    raw = [bootstrap_greater(a, values[c], P95, margin).p_value for c in tested]
    adjusted = dict(zip(tested, holm_adjusted(raw), strict=True)) if raw else {}
    levels = []
    for c in order:
        v = values[c]
        p = adjusted.get(c)
        levels.append(
            Level(
                concurrency=c,
                turns=len(v),
                p50_ms=percentile(v, 50),
                p95_ms=percentile(v, 95),
                p_value=p,
                above=p is not None and p < alpha,
            )
        )
    knee = next((lv.concurrency for lv in levels if lv.above), None)
    return ConcurrencyView(tuple(levels), base, margin, alpha, min_turns, knee)
