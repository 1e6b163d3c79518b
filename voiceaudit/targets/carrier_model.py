"""The phone carrier's playout of the bot's audio: a pure model (no I/O, no clock).

A carrier (Twilio, Telnyx, Plivo, Exotel, Vonage) plays the audio a bot sends at real time
from an unbounded buffer of its own (docs/phone.md, "The carrier model"):

- a media message starts playing when it arrives if nothing is playing (no alignment to a
  frame clock whose phase cannot be known), otherwise right after the audio queued before
  it;
- a mark is echoed when all audio queued before it has played (at once if nothing is
  queued);
- a clear drops the queued audio: the samples that began playing before the clear's arrival
  are heard, nothing after them; every pending mark is echoed at once;
- ``fixed_delay_ns``: the carrier's own fixed delays (its jitter buffer, the phone network
  to the handset), which cannot be seen from the WebSocket: added to every play time
  reported (never to mark echo times: a carrier echoes a mark when its own playout has
  passed it).

Times are integers in ns, on whatever clock the caller gives arrivals in. The audio of a
message is cut into pieces of at most ``piece_ms`` (20 ms); a piece is *released* (handed
back by :meth:`CarrierModel.advance`) once it has played, at its end, truncated to what
played before a clear. Inputs come in arrival order; a mark or clear given with a time
before the model's horizon (the time of the last piece end or echo released by
:meth:`~CarrierModel.advance`) is taken at the horizon, since what was released cannot be
taken back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

NS_PER_S = 1_000_000_000


def span_ns(samples: int, rate: int) -> int:
    """How long ``samples`` play at ``rate`` (floored to the ns; exact at 8 and 16 kHz)."""
    return samples * NS_PER_S // rate


@dataclass(frozen=True)
class Piece:
    """At most ``piece_ms`` of one media message, as queued in the carrier's buffer."""

    #: when its message arrived at the carrier
    arrival_ns: int
    #: when it starts playing (without the fixed delay)
    start_ns: int
    #: 16-bit mono PCM
    pcm16: bytes
    rate: int
    #: its share of its message's size on the wire
    wire_bytes: int
    #: cut short by a clear
    truncated: bool = False

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2

    @property
    def end_ns(self) -> int:
        return self.start_ns + span_ns(self.samples, self.rate)


@dataclass(frozen=True)
class Played:
    """A piece that has played (truncated when a clear cut it)."""

    #: when it started playing, fixed delay included (the chunk time the probe reports)
    t_play_ns: int
    #: when its last sample ended, fixed delay included
    end_ns: int
    pcm16: bytes
    rate: int
    wire_bytes: int
    #: how long it waited in the buffer: its start minus its arrival (no fixed delay)
    queued_ns: int
    arrival_ns: int
    #: cut by a clear
    truncated: bool = False

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2


@dataclass(frozen=True)
class Echo:
    """A mark the carrier echoes back to the bot."""

    name: str
    #: when the bot's mark arrived
    mark_ns: int
    #: when the carrier echoes it (no fixed delay)
    t_ns: int
    #: echoed by a clear rather than by its audio having played
    cleared: bool
    #: whatever the session attached to the mark (Vonage's notify payload)
    data: Any = None


@dataclass(frozen=True)
class Cleared:
    """What a clear did."""

    #: when it took effect (its arrival, or the model's horizon when that is later)
    t_ns: int
    #: queued audio it dropped, in ns of playout
    dropped_ns: int
    #: audio was playing (or queued) when it arrived
    playing: bool
    #: the marks it echoed, in order
    echoed: tuple[Echo, ...]


@dataclass
class _Mark:
    name: str
    mark_ns: int
    due_ns: int
    seq: int
    data: Any


class CarrierModel:
    """The carrier's buffer: feed it the bot's media, marks and clears with their arrival
    times; :meth:`advance` hands back, in time order, what has played and what has been
    echoed by a given time."""

    def __init__(self, fixed_delay_ns: int = 0, piece_ms: int = 20) -> None:
        if fixed_delay_ns < 0:
            raise ValueError("fixed_delay_ns must be >= 0")
        if piece_ms <= 0:
            raise ValueError("piece_ms must be > 0")
        self.fixed_delay_ns = fixed_delay_ns
        self.piece_ms = piece_ms
        #: when the audio queued so far ends playing (no fixed delay); 0: nothing ever
        self.end_ns = 0
        #: the time of the last event released: a mark or clear cannot take effect before it
        self.horizon_ns = 0
        self._pieces: deque[tuple[int, Piece]] = deque()
        self._marks: deque[_Mark] = deque()
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- inputs --------------------------------------------------------------------------

    def media(self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int = 0) -> list[Piece]:
        """Queue a media message (16-bit mono PCM at ``rate``) that arrived at ``t_ns``;
        returns its pieces."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        n = len(pcm16) // 2
        if n == 0:
            return []
        start = max(t_ns, self.end_ns)
        step = max(1, rate * self.piece_ms // 1000)
        out: list[Piece] = []
        given = 0
        for a in range(0, n, step):
            b = min(n, a + step)
            share = wire_bytes * b // n - given
            given += share
            piece = Piece(
                arrival_ns=t_ns,
                start_ns=start + span_ns(a, rate),
                pcm16=pcm16[2 * a : 2 * b],
                rate=rate,
                wire_bytes=share,
            )
            self._pieces.append((self._next_seq(), piece))
            out.append(piece)
        self.end_ns = start + span_ns(n, rate)
        return out

    def mark(self, t_ns: int, name: str, data: Any = None) -> int:
        """Queue a mark that arrived at ``t_ns``; returns when it will be echoed (at once
        when nothing is queued, else when the audio queued before it has played)."""
        t = max(t_ns, self.horizon_ns)
        due = max(t, self.end_ns)
        self._marks.append(_Mark(name, t_ns, due, self._next_seq(), data))
        return due

    def queued_ns(self, t_ns: int) -> int:
        """Audio queued ahead at ``t_ns`` (what is left to play), in ns."""
        return max(0, self.end_ns - t_ns)

    def clear(self, t_ns: int) -> Cleared:
        """A clear arrived at ``t_ns``: drop the queued audio (the samples that began
        playing before it stay), echo every pending mark at once."""
        t = max(t_ns, self.horizon_ns)
        playing = self.end_ns > t
        dropped = 0
        kept: deque[tuple[int, Piece]] = deque()
        for seq, p in self._pieces:
            if p.end_ns <= t:
                kept.append((seq, p))
            elif p.start_ns < t:
                # the samples that began before t are heard: ceil((t - start) * rate / 1e9)
                heard = -(-(t - p.start_ns) * p.rate // NS_PER_S)
                dropped += span_ns(p.samples, p.rate) - span_ns(heard, p.rate)
                cut = Piece(
                    p.arrival_ns, p.start_ns, p.pcm16[: 2 * heard], p.rate, p.wire_bytes, True
                )
                kept.append((seq, cut))
            else:
                dropped += span_ns(p.samples, p.rate)
        self._pieces = kept
        if playing:
            self.end_ns = max(t, kept[-1][1].end_ns) if kept else t
        echoed: list[Echo] = []
        still: deque[_Mark] = deque()
        for m in self._marks:
            if m.due_ns > t:
                echoed.append(Echo(m.name, m.mark_ns, t, True, m.data))
            else:
                still.append(m)
        self._marks = still
        return Cleared(t, dropped, playing, tuple(echoed))

    # -- output --------------------------------------------------------------------------

    def next_due_ns(self) -> int | None:
        """When the next piece ends or the next mark is due (None: nothing pending)."""
        times = []
        if self._pieces:
            times.append(self._pieces[0][1].end_ns)
        if self._marks:
            times.append(self._marks[0].due_ns)
        return min(times) if times else None

    def pending(self) -> bool:
        """Pieces or marks are still to be released."""
        return bool(self._pieces or self._marks)

    def advance(self, now_ns: int) -> list[Played | Echo]:
        """Release, in time order, the pieces that have ended and the marks that are due by
        ``now_ns`` (a piece before a mark due at its end)."""
        out: list[tuple[int, int, Played | Echo]] = []
        while self._pieces and self._pieces[0][1].end_ns <= now_ns:
            seq, p = self._pieces.popleft()
            out.append(
                (
                    p.end_ns,
                    seq,
                    Played(
                        t_play_ns=p.start_ns + self.fixed_delay_ns,
                        end_ns=p.end_ns + self.fixed_delay_ns,
                        pcm16=p.pcm16,
                        rate=p.rate,
                        wire_bytes=p.wire_bytes,
                        queued_ns=max(0, p.start_ns - p.arrival_ns),
                        arrival_ns=p.arrival_ns,
                        truncated=p.truncated,
                    ),
                )
            )
        while self._marks and self._marks[0].due_ns <= now_ns:
            m = self._marks.popleft()
            out.append((m.due_ns, m.seq, Echo(m.name, m.mark_ns, m.due_ns, False, m.data)))
        out.sort(key=lambda x: (x[0], x[1]))
        if out:
            self.horizon_ns = max(self.horizon_ns, out[-1][0])
        return [e for _, _, e in out]
