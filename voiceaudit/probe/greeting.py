"""The target's greeting: agents that speak first (phone bots) greet the caller before the
caller says anything, and the caller waits until the greeting has been heard.

Before its first turn a session waits for a greeting when the user asks for it
(``run --greeting-wait``, a scenario's ``greeting_wait_ms``) or, by default, when the target's
protocol says its agents speak first (:attr:`TargetSession.speaks_first`: the phone
carriers). Reply audio that arrives while it waits is the greeting; the wait ends when the
target says the greeting is done, after ``idle_s`` without audio, or, when no audio came at
all, after the wait. What the caller heard is computed with the run's playout model, as a
reply's is. Greeting latency runs from the start of the call's media
(:meth:`TargetSession.media_start_ns`: a carrier's ``start`` message; otherwise the session's
``session.connected``) to the greeting's first audible sample. The first turn starts
``gap_ms`` after the greeting's last sample is heard (or after the wait, without one).

Trace events (session level, turn ``null``, stage ``greeting``): ``greeting.wait``,
``greeting.audible``, ``greeting.end``, ``greeting.none`` (docs/trace-format.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from voiceaudit.clock import NS_PER_S
from voiceaudit.probe.playout import Chunk, play_model
from voiceaudit.probe.session import RawChunk
from voiceaudit.targets.base import TargetSession
from voiceaudit.trace_io import TraceWriter

#: how long a session waits for a greeting when the target speaks first and the user did
#: not say (``run --greeting-wait``)
DEFAULT_WAIT_S = 5.0


@dataclass
class GreetingCollector:
    """Where a session's sink files reply audio while the probe waits for the greeting."""

    chunks: list[RawChunk] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_ns: int = 0

    def add(self, chunk: RawChunk) -> None:
        """A chunk of the greeting arrived."""
        if not chunk[1]:
            return
        self.chunks.append(chunk)
        self.last_ns = chunk[0]
        self.first.set()


def wait_seconds(configured: float | None, ts: TargetSession) -> float:
    """How long to wait for a greeting: as configured, else the protocol's default."""
    if configured is not None:
        return configured
    return DEFAULT_WAIT_S if ts.speaks_first else 0.0


async def _wait_any(events: list[asyncio.Event], timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout_s), return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()


@dataclass(frozen=True)
class Greeting:
    """What the wait found: when the first turn may start, and the greeting's figures."""

    #: when the first turn may start (the greeting heard to its end, or the wait over)
    ready_ns: int
    #: greeting latency (media start to the first audible sample); None without a greeting
    latency_ns: int | None


async def await_greeting(
    *,
    ts: TargetSession,
    collector: GreetingCollector,
    writer: TraceWriter,
    sid: str,
    connected_ns: int,
    wait_s: float,
    idle_s: float,
    playout: str,
    depth_ns: int,
    now: Callable[[], int],
    stop: list[asyncio.Event],
    failed: Callable[[], bool],
) -> Greeting:
    """Wait for the greeting, write its events and say when the first turn may start.

    ``collector`` must be receiving the session's reply audio while this runs (the caller
    attaches it to its sink before and detaches it after); ``stop`` are events that end the
    wait early (a failure, Ctrl-C), ``failed`` says whether the session broke."""
    from voiceaudit.audio import first_audible, from_pcm16

    start_ns = ts.media_start_ns() or connected_ns
    wait_ns = round(wait_s * NS_PER_S)
    writer.event(sid, None, start_ns, "probe", "greeting", "greeting.wait", {"wait_ns": wait_ns})
    deadline = start_ns + wait_ns
    while not collector.first.is_set() and not failed() and not any(e.is_set() for e in stop):
        left = deadline - now()
        if left <= 0:
            break
        await _wait_any([collector.first, *stop], min(left / NS_PER_S, 0.05))
    if not collector.chunks:
        t = now()
        writer.event(
            sid, None, t, "probe", "greeting", "greeting.none", {"waited_ns": t - start_ns}
        )
        return Greeting(t, None)
    idle_ns = round(idle_s * NS_PER_S)
    while not (collector.done.is_set() or failed() or any(e.is_set() for e in stop)):
        if now() - collector.last_ns >= idle_ns:
            break
        await _wait_any([collector.done, *stop], 0.05)
    chunks = list(collector.chunks)
    rate = chunks[0][2]
    played = [Chunk(c[0], len(c[1]) // 2) for c in chunks]
    p = play_model(played, rate, model=playout, depth_ns=depth_ns)
    total = sum(c.samples for c in played)
    audio = from_pcm16(b"".join(c[1] for c in chunks))
    onset = first_audible(audio, rate)
    latency: int | None = None
    if onset is not None:
        heard = p.heard_at(onset)
        latency = heard - start_ns
        writer.event(
            sid,
            None,
            heard,
            "probe",
            "greeting",
            "greeting.audible",
            {
                "latency_ns": latency,
                "first_byte_ns": min(c[0] for c in chunks),
                "sample": onset,
                "onset_ms": round(onset * 1000 / rate, 3),
            },
        )
    end_ns = p.end_ns
    writer.event(
        sid,
        None,
        end_ns,
        "probe",
        "greeting",
        "greeting.end",
        {
            "samples": total,
            "rate": rate,
            "duration_ns": end_ns - p.start_ns,
            "audible": onset is not None,
        },
    )
    return Greeting(max(end_ns, now()), latency)


__all__ = [
    "DEFAULT_WAIT_S",
    "Greeting",
    "GreetingCollector",
    "await_greeting",
    "wait_seconds",
]
