"""The playout model: when would the caller hear each reply sample?

Two models, chosen with ``voiceaudit run --playout`` (:data:`PLAYOUT_MODELS`); both take
the reply's chunks in arrival order (a chunk's media position is the sum of the samples
before it) and give, per turn, when each sample is heard (:meth:`Playout.heard_at`), the
underruns (gaps the caller hears) and the latency the buffer adds (:attr:`Playout.buffer_ns`).

``fixed`` (:func:`play`)
    Playback starts when the first chunk arrives plus a fixed jitter-buffer depth
    (``--jitter-buffer-ms``, default 0) and plays continuously at real time: the first
    sample of chunk k > 0 plays at ``max(arrival_k, end of chunk k-1)``, so a chunk up to
    ``depth`` late (against the first one's schedule) waits in the buffer. Whenever a
    chunk arrives after the previous one has finished playing, the caller hears a gap
    (an underrun) that lasts until it arrives.

``adaptive`` (:func:`play_adaptive`)
    A jitter buffer whose target delay follows the measured arrival jitter, as WebRTC's
    NetEQ sets it (``modules/audio_coding/neteq``: ``packet_arrival_history.cc``,
    ``underrun_optimizer.cc``, ``histogram.cc``, ``delay_manager.cc``, and the
    ``enable_stable_playout_delay`` branch of ``decision_logic.cc``), with the defaults
    NetEQ ships (``DelayManager::Config``, ``DecisionLogic::Config``). Every reply is a
    new stream (NetEQ after a reset): the probe models one turn at a time.

    1. **Relative arrival delay.** Chunk k carries media time ``m_k`` (its first sample's
       offset / rate) and arrives at ``a_k``. The arrival history keeps the chunks whose
       media time is within ``window_ms`` = **2000** ms of the newest; its reference is the
       chunk with the smallest ``a - m`` (the one that came through fastest). The
       relative delay of chunk k is ``d_k = max(0, (a_k - m_k) - min_j (a_j - m_j))``,
       computed on its arrival from the second chunk on.
    2. **Resampling.** Every ``resample_ms`` = **500** ms of arrival time (measured from
       the second chunk; an update is due at the first arrival more than 500 ms after
       the last one) the *largest* ``d`` of the interval just ended goes into the
       histogram, so the estimator's time constants are in seconds whatever the chunk
       size.
    3. **Forgetting histogram.** ``buckets`` = **100** buckets of ``bucket_ms`` = **20** ms
       (delays of 2 s or more are not counted), initialised to ``0.5^(i+1)``. Each update
       multiplies every bucket by the forget factor ``f`` and adds ``1 - f`` to the
       bucket of the new value. ``f`` starts at 0 and, after the n-th update, is
       ``min(forget_factor, 1 - start_forget_weight / (n + 1))`` with ``forget_factor`` =
       **0.983** and ``start_forget_weight`` = **2**: at first each update weighs
       ``2 / (n + 1)`` (the first two replace the histogram), from the 117th on 0.017.
    4. **Target delay.** ``T`` = ``(1 + i) * bucket_ms`` where ``i`` is the first bucket
       whose cumulative probability reaches ``quantile`` = **0.95**: the 95th percentile
       of the per-interval maximum delay, rounded *up* to the next 20 ms. Before the first
       histogram update ``T`` = ``start_delay_ms`` = **80** ms. ``T`` is at least the
       duration of the latest chunk (NetEQ: at least one packet) and is clamped to
       [``min_delay_ms``, ``max_delay_ms``] = [**0** (or ``--jitter-buffer-ms``: NetEQ's
       base minimum delay), **2000**] ms.
    5. **Playout.** Playback starts as soon as the first chunk arrives and runs in blocks
       of ``block_ms`` = **10** ms of output (NetEQ's output block). Before each block the
       *playout delay* ``D = t - m(p) - min_j (a_j - m_j)`` (how much later than the
       fastest chunk's pace the next sample ``p`` plays) is compared with
       ``low = max(3T/4, T - 85 ms)`` and ``high = max(T, max_j d_j) + 20 ms`` (``max_j
       d_j``: the largest relative delay in the history window; 85 ms is
       ``deceleration_target_level_offset_ms``, 20 ms ``kDelayAdjustmentGranularityMs``).
       ``D >= high``: *accelerate*, the block plays ``1 + stretch`` of its length of
       media; ``D < low``: *preemptive expand*, it plays ``1 - stretch``; otherwise
       normal. ``stretch`` = **0.1**: 1 ms per 10 ms block, NetEQ's limit of about
       100 ms of time-stretching per second (``kMinTimescaleInterval``). So the delay the
       buffer holds grows or shrinks by at most 100 ms per second of playback. One
       deviation: a block is accelerated only if that plays no sample earlier than the
       no-buffer playout (each chunk at real time as soon as it and the one before it
       are in) would. Accelerating removes delay the buffer added; it never compresses
       audio a sender delivered ahead of real time. (NetEQ's reference, the fastest
       packet, assumes a sender paced in real time, as RTP is; a synthesizer streaming a
       reply over WebSocket faster than real time would otherwise be played 10% fast
       from start to end.)
    6. **Underruns.** When the buffer runs dry (every sample that has arrived has been
       played), the caller hears a gap (NetEQ's expand) from that instant until the next
       chunk arrives; playback resumes at its arrival, so the gap is exactly the time
       between the two, and ``D`` afterwards equals that chunk's relative delay.

    What follows from it (tests/test_playout_adaptive.py checks each): for 20 ms chunks
    with independent jitter uniform on [0, J], the per-interval maximum delay of 25
    chunks has 95th percentile ``J * 0.95^(1/25)`` (about ``0.998 J``), so ``T``
    settles at ``20 * (1 + floor(0.998 J / 20))`` ms (J = 50 ms: 60 ms; J = 110 ms:
    120 ms). With no jitter ``T`` is 20 ms and ``D`` settles at 39 ms (just under
    ``high`` = 40 ms) once the first histogram update, 520 ms after the second chunk, has
    replaced the 80 ms start target (under which ``D`` grew at 1 ms per block). A step up
    in jitter is followed once the new maxima carry 5% of the histogram's weight: 3
    updates in the steady state (``1 - 0.983^3 >= 0.05``), fewer in the first minute
    of a stream, so within **4 intervals** (3, plus the one running when the step
    came; an interval is 500 ms plus up to one chunk's spacing and the jitter: about
    2.1 s for 20 ms chunks). A step down is followed only when the old maxima's weight
    falls below 5%: 175 updates (about 90 s) in the steady state; after n0 updates of
    the old jitter (``n0 <= 116``), ``k`` more with
    ``(n0 + k)(n0 + k + 1) >= 20 n0 (n0 + 1)`` (n0 = 9: k = 33, 17 s). NetEQ is slow to
    lower its delay by design: a late packet costs a gap, a high delay only latency.

    Left out of NetEQ: the reorder optimizer (a chunk stream is in order), fast
    accelerate, the wait after a long expand before playing again, comfort noise and
    packet loss concealment (a gap is a gap).

``Playout.buffer_ns`` is the latency the buffer adds: the mean over the reply's samples of
when the model plays each sample minus when it would play with no buffer at all (the fixed
model with depth 0: each chunk as soon as it arrives and the previous one has played).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from voiceaudit.clock import NS_PER_MS, NS_PER_S


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
    #: (sample, t_ns) points of a piecewise-linear play-time map (time-stretching models);
    #: empty: every chunk plays at real time from its start
    knots: tuple[tuple[int, int], ...] = ()
    #: the latency the buffer adds: mean over the samples of the play time minus the play
    #: time with no buffer (see the module docstring); None: not computed
    buffer_ns: int | None = None
    #: adaptive model: the target delay at the end of the reply
    target_ns: int | None = None
    #: adaptive model: (arrival ns, target delay ns) at the start and at every change
    targets: tuple[tuple[int, int], ...] = ()
    #: the first chunk's arrival (None: not recorded)
    first_arrival_ns: int | None = None

    @property
    def start_ns(self) -> int:
        return self.starts_ns[0]

    @property
    def wait_ns(self) -> int | None:
        """How long the first sample waited in the buffer after the first chunk arrived."""
        if self.first_arrival_ns is None:
            return None
        return self.start_ns - self.first_arrival_ns

    @property
    def underrun_ns(self) -> int:
        return sum(u.gap_ns for u in self.underruns)

    def heard_at(self, sample: int) -> int:
        """When sample ``sample`` of the reply is heard."""
        if sample < 0 or not self.offsets:
            raise ValueError("sample out of range")
        if self.knots:
            return _knot_time(self.knots, sample, self.rate)
        lo, hi = 0, len(self.offsets) - 1
        while lo < hi:  # last chunk whose offset <= sample
            mid = (lo + hi + 1) // 2
            if self.offsets[mid] <= sample:
                lo = mid
            else:
                hi = mid - 1
        return self.starts_ns[lo] + (sample - self.offsets[lo]) * NS_PER_S // self.rate


def _knot_time(knots: tuple[tuple[int, int], ...], sample: int, rate: int) -> int:
    lo, hi = 0, len(knots) - 1
    while lo < hi:  # last knot whose sample <= sample (after a gap: the resumption)
        mid = (lo + hi + 1) // 2
        if knots[mid][0] <= sample:
            lo = mid
        else:
            hi = mid - 1
    s0, t0 = knots[lo]
    if lo + 1 < len(knots):
        s1, t1 = knots[lo + 1]
        if s1 > s0:
            return t0 + (sample - s0) * (t1 - t0) // (s1 - s0)
    return t0 + (sample - s0) * NS_PER_S // rate


def _integral(knots: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> int:
    """Twice the sum over samples of the play time (trapezoids between knots)."""
    total = 0
    for (s0, t0), (s1, t1) in itertools.pairwise(knots):
        total += (s1 - s0) * (t0 + t1)
    return total


def _added_ns(
    knots: list[tuple[int, int]] | tuple[tuple[int, int], ...], imm: Playout, samples: int
) -> int:
    """Mean over ``samples`` samples of the play time under ``knots`` minus under ``imm``."""
    if samples <= 0:
        return 0
    return (_integral(knots) - _integral(_real_knots(imm, samples))) // (2 * samples)


def _real_knots(p: Playout, samples: int) -> list[tuple[int, int]]:
    """Knots of a real-time playout whose chunks hold ``samples`` samples in all."""
    res: list[tuple[int, int]] = []
    bounds = [*p.offsets[1:], samples]
    for off, start, end in zip(p.offsets, p.starts_ns, bounds, strict=True):
        res.append((off, start))
        res.append((end, start + (end - off) * NS_PER_S // p.rate))
    return res


def play(chunks: list[Chunk], rate: int, *, depth_ns: int = 0) -> Playout:
    """Apply the fixed playout model to chunks in arrival order."""
    p = _play_fixed(chunks, rate, depth_ns)
    samples = sum(c.samples for c in chunks)
    if depth_ns == 0:
        buffer = 0
    else:
        buffer = _added_ns(_real_knots(p, samples), _play_fixed(chunks, rate, 0), samples)
    return Playout(
        p.rate,
        p.starts_ns,
        p.offsets,
        p.underruns,
        p.end_ns,
        buffer_ns=buffer,
        first_arrival_ns=chunks[0].arrival_ns,
    )


def _play_fixed(chunks: list[Chunk], rate: int, depth_ns: int) -> Playout:
    if not chunks:
        raise ValueError("no reply audio")
    starts: list[int] = []
    offsets: list[int] = []
    underruns: list[Underrun] = []
    offset = 0
    cursor: int | None = None  # when the previous chunk finishes playing
    for i, ch in enumerate(chunks):
        # The depth holds back the first sample only: a later chunk that arrives before its
        # turn (the end of the previous one) waits in the buffer, so lateness up to the
        # depth is absorbed, as a fixed jitter buffer does.
        ready = ch.arrival_ns + depth_ns if cursor is None else ch.arrival_ns
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


@dataclass(frozen=True, slots=True)
class AdaptiveParams:
    """The adaptive model's parameters; the defaults are NetEQ's (module docstring)."""

    quantile: float = 0.95
    forget_factor: float = 0.983
    start_forget_weight: float = 2.0
    bucket_ms: int = 20
    buckets: int = 100
    resample_ms: int = 500
    window_ms: int = 2000
    start_delay_ms: int = 80
    min_delay_ms: int = 0
    max_delay_ms: int = 2000
    deceleration_offset_ms: int = 85
    granularity_ms: int = 20
    block_ms: int = 10
    stretch: float = 0.1

    def describe(self) -> str:
        return (
            f"adaptive:neteq(quantile={self.quantile:g},forget={self.forget_factor:g},"
            f"start_weight={self.start_forget_weight:g},bucket_ms={self.bucket_ms},"
            f"resample_ms={self.resample_ms},window_ms={self.window_ms},"
            f"start_ms={self.start_delay_ms},min_ms={self.min_delay_ms},"
            f"max_ms={self.max_delay_ms},block_ms={self.block_ms},stretch={self.stretch:g})"
        )


class _Histogram:
    """NetEQ's forgetting histogram (``histogram.cc``), in floating point."""

    def __init__(self, n: int, forget: float, start_weight: float) -> None:
        self.buckets = [0.5 ** (i + 1) for i in range(n)]
        self.base_forget = forget
        self.start_weight = start_weight
        self.forget = 0.0
        self.count = 0

    def add(self, index: int) -> None:
        f = self.forget
        b = self.buckets
        for i in range(len(b)):
            b[i] *= f
        b[index] += 1.0 - f
        self.count += 1
        if self.forget != self.base_forget:
            self.forget = max(
                0.0, min(self.base_forget, 1.0 - self.start_weight / (self.count + 1))
            )

    def quantile(self, q: float) -> int:
        inverse = 1.0 - q
        index = 0
        rest = 1.0 - self.buckets[0]
        while rest > inverse and index < len(self.buckets) - 1:
            index += 1
            rest -= self.buckets[index]
        return index


class _DelayManager:
    """Arrival history, resampling, histogram and target delay (steps 1-4)."""

    def __init__(self, params: AdaptiveParams, rate: int, min_delay_ns: int) -> None:
        self.p = params
        self.rate = rate
        self.window_ns = params.window_ms * NS_PER_MS
        self.bucket_ns = params.bucket_ms * NS_PER_MS
        self.resample_ns = params.resample_ms * NS_PER_MS
        self.min_ns = max(params.min_delay_ms * NS_PER_MS, min_delay_ns)
        self.max_ns = params.max_delay_ms * NS_PER_MS
        self.hist = _Histogram(params.buckets, params.forget_factor, params.start_forget_weight)
        #: (media ns, arrival ns) of the chunks in the window
        self.history: deque[tuple[int, int]] = deque()
        self.newest_media = -1
        self.base = 0  # min (a - m) in the window
        self.max_delay = 0  # max relative delay in the window
        self.optimal: int | None = None
        self.stopwatch: int | None = None
        self.interval_max = 0
        self.packet_ns = 0
        self.arrivals = 0
        self.target = self._clamp(params.start_delay_ms * NS_PER_MS)

    def _clamp(self, t: int) -> int:
        t = max(t, self.packet_ns, self.min_ns)
        return min(t, max(self.max_ns, self.min_ns))

    def arrive(self, media_ns: int, arrival_ns: int, duration_ns: int) -> None:
        if duration_ns > 0:
            self.packet_ns = duration_ns
        self.arrivals += 1
        self.history.append((media_ns, arrival_ns))
        self.newest_media = max(self.newest_media, media_ns)
        while self.history[0][0] + self.window_ns < self.newest_media:
            self.history.popleft()
        transit = [a - m for m, a in self.history]
        self.base = min(transit)
        self.max_delay = max(transit) - self.base
        if self.arrivals >= 2:  # no delay estimate from a single chunk
            self._update(max(0, arrival_ns - media_ns - self.base), arrival_ns)
        self.target = self._clamp(self.target if self.optimal is None else self.optimal)

    def _update(self, delay: int, now: int) -> None:
        if self.stopwatch is None:
            self.stopwatch = now
        elif now - self.stopwatch > self.resample_ns:
            index = self.interval_max // self.bucket_ns
            if index < self.p.buckets:
                self.hist.add(index)
            self.optimal = (1 + self.hist.quantile(self.p.quantile)) * self.bucket_ns
            self.stopwatch = now
            self.interval_max = 0
        self.interval_max = max(self.interval_max, delay)


def play_adaptive(
    chunks: list[Chunk],
    rate: int,
    *,
    params: AdaptiveParams | None = None,
    min_delay_ns: int = 0,
) -> Playout:
    """Apply the adaptive (NetEQ-like) playout model to chunks in arrival order."""
    if not chunks:
        raise ValueError("no reply audio")
    prm = params or AdaptiveParams()
    dm = _DelayManager(prm, rate, min_delay_ns)
    offsets: list[int] = []
    ends: list[int] = []
    arrivals: list[int] = []
    off = 0
    last = chunks[0].arrival_ns
    for ch in chunks:
        offsets.append(off)
        off += ch.samples
        ends.append(off)
        last = max(last, ch.arrival_ns)  # a byte stream: nothing is usable before what precedes it
        arrivals.append(last)
    total = off

    def media(s: int) -> int:
        return s * NS_PER_S // rate

    block = max(1, round(rate * prm.block_ms / 1000))
    block_ns = block * NS_PER_S // rate
    step = round(block * prm.stretch)
    granularity = prm.granularity_ms * NS_PER_MS
    decel = prm.deceleration_offset_ms * NS_PER_MS

    imm = _play_fixed(chunks, rate, 0)  # the no-buffer playout: nothing plays before it
    t = arrivals[0]
    p = 0  # samples played
    avail = 0  # samples arrived
    i = 0  # next chunk to arrive
    knots: list[tuple[int, int]] = [(0, t)]
    slope: tuple[int, int] | None = None  # (samples, ns) of the last knot segment
    underruns: list[Underrun] = []
    targets: list[tuple[int, int]] = [(t, dm.target)]
    n = len(chunks)
    while True:
        while i < n and arrivals[i] <= t:
            ch = chunks[i]
            dm.arrive(media(offsets[i]), arrivals[i], media(ch.samples))
            if dm.target != targets[-1][1]:
                targets.append((arrivals[i], dm.target))
            avail = ends[i]
            i += 1
        if p >= total:
            break
        if avail <= p:  # the buffer ran dry: a gap until the next chunk arrives
            nxt = arrivals[i]
            if p > 0:  # (before the first sample it is a later start, not a gap)
                underruns.append(Underrun(at_ns=t, gap_ns=nxt - t, chunk=i))
            t = nxt
            knots.append((p, t))
            slope = None
            continue
        target = dm.target
        delay = t - media(p) - dm.base
        low = max(target * 3 // 4, target - decel)
        high = max(target, dm.max_delay) + granularity
        want = block
        if delay >= high and imm.heard_at(p + block + step) <= t + block_ns:
            want = block + step
        elif delay < low:
            want = block - step
        take = min(want, avail - p)
        dur = block_ns if take == want else block_ns * take // want
        p += take
        t += dur
        seg = (want, block_ns)
        if take == want and slope == seg and len(knots) >= 2:
            knots[-1] = (p, t)
        else:
            knots.append((p, t))
            slope = seg if take == want else None
    starts = tuple(_knot_time(tuple(knots), o, rate) if o < total else t for o in offsets)
    kt = tuple(knots)
    buffer = _added_ns(kt, imm, total)
    return Playout(
        rate,
        starts,
        tuple(offsets),
        tuple(underruns),
        t,
        knots=kt,
        buffer_ns=buffer,
        target_ns=dm.target,
        targets=tuple(targets),
        first_arrival_ns=chunks[0].arrival_ns,
    )


#: the playout models ``play_model`` knows
PLAYOUT_MODELS = ("fixed", "adaptive")


def play_model(chunks: list[Chunk], rate: int, *, model: str, depth_ns: int = 0) -> Playout:
    """Apply the named playout model (see ``PLAYOUT_MODELS``).

    ``depth_ns`` is the fixed model's jitter-buffer depth, and the adaptive model's
    minimum target delay (NetEQ's base minimum delay).
    """
    if model == "fixed":
        return play(chunks, rate, depth_ns=depth_ns)
    if model == "adaptive":
        return play_adaptive(chunks, rate, min_delay_ns=depth_ns)
    raise ValueError(f"unknown playout model {model!r}")


def playout_name(model: str, depth_ns: int = 0) -> str:
    """How a trace names the playout model (header ``config.playout``, event attrs)."""
    if model == "adaptive":
        prm = AdaptiveParams()
        if depth_ns > 0:
            prm = AdaptiveParams(min_delay_ms=max(prm.min_delay_ms, depth_ns // NS_PER_MS))
        return prm.describe()
    ms = depth_ns // NS_PER_MS
    return "immediate" if ms == 0 else f"jitter_buffer:{ms}"
