"""The playout model: when would the caller hear each reply sample?

Playback starts when the first chunk arrives (plus an optional fixed jitter-buffer depth)
and plays continuously: the first sample of chunk k plays at
``max(arrival_k + depth, end of chunk k-1)``. Whenever a chunk arrives after the previous
one has finished playing, the caller hears a gap (an underrun).
"""

from __future__ import annotations

from dataclasses import dataclass

from voiceaudit.clock import NS_PER_S


@dataclass(frozen=True, slots=True)
class Chunk:
    arrival_ns: int
    samples: int


@dataclass(frozen=True, slots=True)
class Underrun:
    at_ns: int
    gap_ns: int
    chunk: int


@dataclass(frozen=True, slots=True)
class Playout:
    rate: int
    #: play start time of each chunk's first sample
    starts_ns: tuple[int, ...]
    #: sample offset of each chunk in the reply
    offsets: tuple[int, ...]
    underruns: tuple[Underrun, ...]
    end_ns: int

    @property
    def start_ns(self) -> int:
        return self.starts_ns[0]

    def heard_at(self, sample: int) -> int:
        """When sample ``sample`` of the reply is heard."""
        if sample < 0 or not self.offsets:
            raise ValueError("sample out of range")
        lo, hi = 0, len(self.offsets) - 1
        while lo < hi:  # last chunk whose offset <= sample
            mid = (lo + hi + 1) // 2
            if self.offsets[mid] <= sample:
                lo = mid
            else:
                hi = mid - 1
        return self.starts_ns[lo] + (sample - self.offsets[lo]) * NS_PER_S // self.rate


def play(chunks: list[Chunk], rate: int, *, depth_ns: int = 0) -> Playout:
    """Apply the playout model to chunks in arrival order."""
    if not chunks:
        raise ValueError("no reply audio")
    starts: list[int] = []
    offsets: list[int] = []
    underruns: list[Underrun] = []
    offset = 0
    cursor: int | None = None  # when the previous chunk finishes playing
    for i, ch in enumerate(chunks):
        ready = ch.arrival_ns + depth_ns
        if cursor is None:
            start = ready
        elif ready > cursor:
            underruns.append(Underrun(at_ns=cursor, gap_ns=ready - cursor, chunk=i))
            start = ready
        else:
            start = cursor
        starts.append(start)
        offsets.append(offset)
        offset += ch.samples
        cursor = start + ch.samples * NS_PER_S // rate
    assert cursor is not None
    return Playout(rate, tuple(starts), tuple(offsets), tuple(underruns), cursor)


#: the playout models ``play_model`` knows
PLAYOUT_MODELS = ("fixed",)


def play_model(chunks: list[Chunk], rate: int, *, model: str, depth_ns: int = 0) -> Playout:
    """Apply the named playout model (see ``PLAYOUT_MODELS``)."""
    if model == "fixed":
        return play(chunks, rate, depth_ns=depth_ns)
    raise ValueError(f"unknown playout model {model!r}")
