"""The probe's run options (:class:`ProbeOptions`) and load profile (:class:`Ramp`).

Below the runner and the conversation, which both read them (the runner re-exports them,
where their users have always found them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from voiceaudit.errors import UsageError
from voiceaudit.probe.playout import PLAYOUT_MODELS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: str, what: str) -> float:
    """Seconds from "10s", "500ms", "2m" (a bare number is seconds)."""
    m = _DURATION.match(text)
    if m is None:
        raise UsageError(f"{what}: {text!r} is not a duration", hint="e.g. 10s, 500ms, 2m")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}[unit]


@dataclass(frozen=True)
class Ramp:
    """A load profile: ``start`` sessions at once, ``by`` more every ``every_s`` up to
    ``end``, then ``hold_s`` at ``end``; the run ends after that (turns in flight finish)."""

    start: int
    end: int
    every_s: float
    by: int = 1
    hold_s: float = 0.0

    @classmethod
    def parse(cls, text: str, *, hold_s: float = 0.0) -> Ramp:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise UsageError(
                f"--ramp {text!r} must look like FROM:TO:EVERY[:BY]", hint="e.g. 1:50:10s"
            )
        try:
            start, end = int(parts[0]), int(parts[1])
            by = int(parts[3]) if len(parts) == 4 else 1
        except ValueError:
            raise UsageError(
                f"--ramp {text!r}: FROM, TO and BY are whole numbers", hint="e.g. 1:50:10s:5"
            ) from None
        return cls(start, end, parse_duration(parts[2], "--ramp EVERY"), by, hold_s)

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < self.start:
            raise UsageError("--ramp needs 1 <= FROM <= TO")
        if self.by < 1:
            raise UsageError("--ramp BY must be at least 1")
        if self.every_s <= 0 and self.end > self.start:
            raise UsageError("--ramp EVERY must be positive")
        if self.hold_s < 0:
            raise UsageError("--hold cannot be negative")

    def levels(self) -> list[tuple[float, int]]:
        """(seconds from the run's start, sessions running from then on), one per step."""
        out = [(0.0, self.start)]
        n = self.start
        while n < self.end:
            n = min(self.end, n + self.by)
            out.append((len(out) * self.every_s, n))
        return out

    @property
    def duration_s(self) -> float:
        """When the run ends: the last step plus the hold."""
        return self.levels()[-1][0] + self.hold_s

    def describe(self) -> dict[str, Any]:
        return {
            "from": self.start,
            "to": self.end,
            "every_s": self.every_s,
            "by": self.by,
            "hold_s": self.hold_s,
        }


@dataclass(frozen=True)
class ProbeOptions:
    sessions: int = 1
    #: turns per session; None = one pass over the utterances (times ``repeat``)
    turns: int | None = None
    repeat: int = 1
    warmup: int = 0
    frame_ms: int = 20
    speed: float = 1.0
    #: give up on a turn that has no reply audio this long after speech end
    timeout_s: float = 15.0
    #: a reply with audio but no "done" event ends after this much quiet
    idle_s: float = 1.5
    #: pause between turns (after the reply ends)
    gap_ms: int = 500
    jitter_buffer_ms: int = 0
    #: keep the received reply audio as WAV files next to the trace
    save_audio: bool = False
    #: write each session's call as a stereo WAV next to the trace (the caller as sent,
    #: what the caller heard): :mod:`voiceaudit.probe.recorder`
    record: bool = False
    #: playout model: "fixed" (a fixed jitter-buffer depth, ``jitter_buffer_ms``) or
    #: "adaptive" (see :mod:`voiceaudit.probe.playout`)
    playout: str = "fixed"
    #: put before every session id ("w1-" gives "w1-s0"): keeps ids unique when the traces
    #: of several probes (Locust workers) are merged into one report
    session_prefix: str = ""
    #: a load profile instead of ``sessions`` fixed sessions of ``turns`` turns
    ramp: Ramp | None = None
    #: how long each session waits for the target's greeting before its first turn (s);
    #: None: the protocol's default (voiceaudit.probe.greeting: 5 s where the agents speak
    #: first, the phone carriers; else no wait), 0: never wait
    greeting_wait_s: float | None = None
    #: keep every session taking turns (the utterances over and over) this long (s), then
    #: let the turns in flight finish: a long call, to see latency drift
    duration_s: float | None = None
    #: write the run's statistics per window of this many seconds to ``stats.jsonl`` beside
    #: the trace while it runs (None: only with ``duration_s``, every 10 s)
    stats_every_s: float | None = None

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise UsageError("--sessions must be at least 1")
        if self.turns is not None and self.turns < 1:
            raise UsageError("--turns must be at least 1")
        if self.repeat < 1:
            raise UsageError("--repeat must be at least 1")
        if self.warmup < 0:
            raise UsageError("--warmup cannot be negative")
        if not 5 <= self.frame_ms <= 1000:
            raise UsageError("--frame-ms must be between 5 and 1000")
        if not 0.1 <= self.speed <= 100:
            raise UsageError("--speed must be between 0.1 and 100")
        if self.record and self.speed != 1.0:
            raise UsageError(
                "--record needs --speed 1: a call recording is on the probe's real clock"
            )
        if self.timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        if self.greeting_wait_s is not None and not 0 <= self.greeting_wait_s <= 600:
            raise UsageError("--greeting-wait must be between 0 and 10 minutes")
        if self.duration_s is not None:
            if self.duration_s <= 0:
                raise UsageError("--duration must be positive")
            if self.ramp is not None or self.turns is not None:
                raise UsageError(
                    "--duration sets how long each session takes turns",
                    hint="leave out --turns and --ramp with --duration",
                )
        if self.stats_every_s is not None and not 0.5 <= self.stats_every_s <= 3600:
            raise UsageError("--stats-every must be between 0.5 s and 1 hour")
        if self.gap_ms < 0 or self.jitter_buffer_ms < 0:
            raise UsageError("--gap-ms and --jitter-buffer-ms cannot be negative")
        if self.playout not in PLAYOUT_MODELS:
            raise UsageError(
                f"unknown playout model {self.playout!r}",
                hint="choose one of " + ", ".join(PLAYOUT_MODELS),
            )
        if any(c.isspace() for c in self.session_prefix):
            raise UsageError("the session prefix cannot contain spaces")
