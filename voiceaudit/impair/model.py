"""The impairment models, pure and seeded: what happens to each chunk or datagram.

Nothing here touches a socket or a clock; the proxies (:mod:`voiceaudit.impair.tcp`,
:mod:`voiceaudit.impair.udp`) feed arrival times in and send at the times given back, so
the models are tested on their own (tests/test_impair_models.py).

**Randomness.** Every link (one direction of one connection or UDP flow) draws from its
own ``random.Random`` seeded with ``"{seed}:{kind}:{flow}:{direction}:{what}"``, one
stream each for loss, delay and duplication: the n-th packet of a flow meets the same
fate in every run with the same seed, whatever other flows do, and turning jitter on
does not change which packets are lost.

**Loss.** Independent (Bernoulli) with probability ``loss``, or, with ``burst``, a
Gilbert-Elliott chain: states Good and Bad, P(Good→Bad) = p, P(Bad→Good) = r = 1/burst,
loss probability ``good_loss`` in Good and ``bad_loss`` in Bad; p is chosen so the
stationary loss rate is ``loss``: π_Bad = (loss - good_loss)/(bad_loss - good_loss),
p = r·π_Bad/(1 - π_Bad). The chain starts in its stationary distribution and steps once
per packet (per modelled TCP segment), after the packet's fate is drawn.

**Delay.** Each packet: ``delay + U(-jitter, +jitter)`` (never below 0), after waiting for
the rate-capped link (a FIFO serializer: a packet of n bytes occupies it n·8/rate s).

**UDP**: packets keep their own delay, so jitter larger than their spacing reorders them
(as netem does); a duplicate (probability ``dup``) draws its own delay; with a rate cap,
a packet that would wait longer than ``queue`` for the link is dropped (tail drop).

**TCP**: a chunk read from the socket is ceil(bytes/mss) segments; each segment is lost
with the loss model (the chain steps once per segment), and a lost segment is
retransmitted one RTO later; a loss burst is long over by then, so the retransmission is
lost with the long-run rate ``loss`` (each further loss doubling the RTO, as TCP backs
off, at most 6 times).
The chunk is held for the longest of its segments' retransmission times. Bytes are
delivered in order: a chunk is never delivered before the previous one (head-of-line
blocking: one lost segment holds everything behind it). This models TCP's *loss effect*
on an in-order byte stream, not TCP: see docs/network-conditions.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from voiceaudit.impair.spec import Impairment, LinkSpec

#: retransmissions of one segment before the model stops doubling (TCP gives up much later)
MAX_BACKOFF = 6


class LossModel:
    """Independent or Gilbert-Elliott losses, one draw per packet."""

    def __init__(self, link: LinkSpec, rng: random.Random) -> None:
        self.rng = rng
        self.loss = link.loss
        self.ge = link.ge_params()
        self.bad_loss = link.bad_loss
        self.good_loss = link.good_loss
        self.bad = False
        if self.ge is not None:
            p, r = self.ge
            pi_bad = p / (p + r) if p + r > 0 else 0.0
            self.bad = rng.random() < pi_bad

    @property
    def state(self) -> str:
        """``G``/``B`` (Gilbert-Elliott) or ``-`` (independent losses) for the next packet."""
        if self.ge is None:
            return "-"
        return "B" if self.bad else "G"

    def lost(self) -> bool:
        """Draw one packet's fate (and step the chain)."""
        if self.ge is None:
            return self.loss > 0 and self.rng.random() < self.loss
        p, r = self.ge
        prob = self.bad_loss if self.bad else self.good_loss
        out = prob > 0 and self.rng.random() < prob
        if self.bad:
            if self.rng.random() < r:
                self.bad = False
        elif self.rng.random() < p:
            self.bad = True
        return out


def link_rngs(seed: int, kind: str, flow: int, direction: str) -> dict[str, random.Random]:
    return {
        what: random.Random(f"{seed}:{kind}:{flow}:{direction}:{what}")
        for what in ("loss", "delay", "dup")
    }


class _Link:
    def __init__(self, link: LinkSpec, rngs: dict[str, random.Random]) -> None:
        self.spec = link
        self.loss = LossModel(link, rngs["loss"])
        self.delay_rng = rngs["delay"]
        self.dup_rng = rngs["dup"]
        #: when the rate-capped link is free again
        self.free_at = 0

    def sample_delay(self) -> int:
        s = self.spec
        if s.jitter_ns == 0:
            return s.delay_ns
        return max(0, s.delay_ns + round(self.delay_rng.uniform(-s.jitter_ns, s.jitter_ns)))

    def serialize(self, t_ns: int, nbytes: int) -> tuple[int, int]:
        """(start, end) of the packet's time on the rate-capped link."""
        rate = self.spec.rate_bps
        if rate is None:
            return t_ns, t_ns
        start = max(t_ns, self.free_at)
        end = start + nbytes * 8 * 1_000_000_000 // rate
        return start, end


@dataclass(frozen=True, slots=True)
class ChunkFate:
    """What the TCP model does to one chunk."""

    #: when the chunk's bytes are due at the far side
    due_ns: int
    #: when it would have arrived by its own delay alone (before in-order delivery)
    arrival_ns: int
    #: the one-way delay drawn for it (jitter included)
    delay_ns: int
    #: time spent waiting for and on the rate-capped link
    queue_ns: int
    segments: int
    #: segment losses (retransmissions) in this chunk
    losses: int
    #: the retransmission hold added (0 when nothing was lost)
    hold_ns: int
    #: Gilbert-Elliott state at the chunk's first segment
    state: str


class TcpLinkModel(_Link):
    """One direction of one TCP connection (see the module docstring)."""

    def __init__(self, imp: Impairment, link: LinkSpec, rngs: dict[str, random.Random]) -> None:
        super().__init__(link, rngs)
        self.mss = imp.mss
        self.rto_ns = imp.rto_ns
        self.last_due = 0

    def chunk(self, t_ns: int, nbytes: int) -> ChunkFate:
        segments = max(1, math.ceil(nbytes / self.mss))
        state = self.loss.state
        hold = 0
        losses = 0
        for _ in range(segments):
            k = 0
            if self.loss.lost():
                # the retransmission leaves an RTO (>= 200 ms) later, when the burst that
                # took the original is over: it meets the long-run loss rate
                k = 1
                while k < 64 and self.loss.rng.random() < self.loss.loss:
                    k += 1
            if k:
                losses += k
                seg_hold = sum(self.rto_ns << min(i, MAX_BACKOFF) for i in range(k))
                hold = max(hold, seg_hold)
        _start, end = self.serialize(t_ns, nbytes)
        self.free_at = end
        delay = self.sample_delay()
        arrival = end + delay + hold
        due = max(arrival, self.last_due)
        self.last_due = due
        return ChunkFate(due, arrival, delay, end - t_ns, segments, losses, hold, state)


@dataclass(frozen=True, slots=True)
class DatagramFate:
    """What the UDP model does to one datagram: ``due_ns`` holds one send time per copy
    (empty: dropped)."""

    due_ns: tuple[int, ...]
    lost: bool
    queue_drop: bool
    delays_ns: tuple[int, ...]
    queue_ns: int
    state: str


class UdpLinkModel(_Link):
    """One direction of one UDP flow (see the module docstring)."""

    def datagram(self, t_ns: int, nbytes: int) -> DatagramFate:
        state = self.loss.state
        lost = self.loss.lost()
        dup = self.spec.dup > 0 and self.dup_rng.random() < self.spec.dup
        if lost:
            return DatagramFate((), True, False, (), 0, state)
        start, end = self.serialize(t_ns, nbytes)
        if self.spec.rate_bps is not None and start - t_ns > self.spec.queue_ns:
            return DatagramFate((), False, True, (), start - t_ns, state)
        self.free_at = end
        delays = [self.sample_delay()]
        if dup:
            delays.append(self.sample_delay())
        return DatagramFate(
            tuple(end + d for d in delays), False, False, tuple(delays), end - t_ns, state
        )
