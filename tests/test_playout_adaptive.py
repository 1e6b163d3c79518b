"""The adaptive playout model (voiceaudit/probe/playout.py) against what its documented
algorithm implies: the target delay it converges to for known jitter, the exact gaps of
deliberately late chunks, how fast it follows a step in jitter, and the probe's trace
with ``--playout adaptive`` against the reference pipeline.

Everything but the last test is a pure function of a synthetic, seeded arrival series:
no wall clock is involved, so a busy machine cannot change the outcome.
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path

import pytest

from voiceaudit.probe.playout import (
    PLAYOUT_MODELS,
    AdaptiveParams,
    Chunk,
    Playout,
    play,
    play_adaptive,
    play_model,
    playout_name,
)

MS = 1_000_000
RATE = 16_000
CHUNK = 320  # 20 ms at 16 kHz
CHUNK_NS = 20 * MS
P = AdaptiveParams()


def _jittered(n: int, spread_ms: list[float], seed: int) -> list[Chunk]:
    """20 ms chunks sent in real time, each delayed by uniform [0, spread] jitter; the
    stream is in order (a byte stream), so a chunk is never usable before the one ahead."""
    rng = random.Random(seed)
    out: list[Chunk] = []
    last = 0
    for k in range(n):
        a = k * CHUNK_NS + round(rng.uniform(0.0, spread_ms[k] * MS))
        last = max(last, a)
        out.append(Chunk(last, CHUNK))
    return out


def _late(n: int, late_ms: dict[int, int]) -> list[Chunk]:
    """On-time 20 ms chunks except chunk k, ``late_ms[k]`` ms late; the chunks behind it
    wait for it (head-of-line blocking) and arrive with it."""
    out: list[Chunk] = []
    hold = 0
    for k in range(n):
        a = k * CHUNK_NS
        if k in late_ms:
            hold = a + late_ms[k] * MS
        out.append(Chunk(max(a, hold), CHUNK))
    return out


def _target_at(p: Playout, t_ns: int) -> int:
    cur = p.targets[0][1]
    for t, v in p.targets:
        if t <= t_ns:
            cur = v
    return cur


def _expected_target_ms(spread_ms: float, per_interval: int) -> int:
    """The documented target for uniform [0, J] jitter: the 95% quantile of the maximum
    of ``per_interval`` relative delays, J * 0.95^(1/n), rounded up to the next 20 ms."""
    q = spread_ms * P.quantile ** (1 / per_interval)
    return P.bucket_ms * (1 + math.floor(q / P.bucket_ms))


@pytest.mark.parametrize(("spread_ms", "expected_ms"), [(50.0, 60), (110.0, 120)])
def test_target_converges_to_the_quantile_of_the_jitter(spread_ms: float, expected_ms: int) -> None:
    # An update is due at the first arrival more than 500 ms after the last: every 520 ms
    # (26 chunks) here, whose interval holds 25 or 26 delays; both give the same bucket.
    assert _expected_target_ms(spread_ms, 25) == expected_ms
    assert _expected_target_ms(spread_ms, 26) == expected_ms
    chunks = _jittered(3000, [spread_ms] * 3000, seed=int(spread_ms))  # 60 s
    p = play_adaptive(chunks, RATE)
    # Tolerance: none. The estimator's output is a bucket; the quantile lies 10 ms and
    # 9.8 ms from the nearest bucket edge, and the other buckets are reachable only when
    # over 95% of the histogram's weight came from intervals whose maximum fell below the
    # edge, each with probability (edge / J)^25 (0.4% and 9%): it does not happen.
    assert p.target_ns == expected_ms * MS
    # ... and it holds from the 10th second on (after the start phase).
    assert {v for t, v in p.targets if t >= 10_000 * MS} <= {expected_ms * MS}
    assert _target_at(p, 10_000 * MS) == expected_ms * MS
    # The playout delay (play time minus the fastest chunk's pace) ends within the
    # documented band [low, high] of the target.
    base = min(c.arrival_ns - k * CHUNK_NS for k, c in enumerate(chunks))
    target = expected_ms * MS
    low = max(target * 3 // 4, target - P.deceleration_offset_ms * MS)
    high = max(target, round(spread_ms * MS)) + P.granularity_ms * MS
    for k in range(2500, 3000, 50):
        delay = p.heard_at(k * CHUNK) - k * CHUNK_NS - base
        assert low - 2 * MS <= delay <= high + 2 * MS, (k, delay / MS)


def test_no_jitter_settles_at_the_documented_delay() -> None:
    p = play_adaptive(_late(500, {}), RATE)
    # The 80 ms start target until the first histogram update (at 540 ms: the first
    # arrival more than 500 ms after the second chunk's), then one bucket.
    assert p.targets == ((0, 80 * MS), (540 * MS, 20 * MS))
    assert not p.underruns
    assert p.start_ns == 0 and p.wait_ns == 0
    # From 10 s on the playout delay is 39 ms: accelerated down to just under high = 40 ms.
    for k in range(100, 500, 20):
        assert p.heard_at(k * CHUNK) - k * CHUNK_NS == 39 * MS
    # The buffer added 39 ms to most of the reply (less to its first second).
    assert 30 * MS < (p.buffer_ns or 0) < 39 * MS


def test_underruns_are_exactly_the_constructed_gaps() -> None:
    # Three late chunks (100, 250, 400 ms late, one second apart) in an otherwise on-time
    # stream. What the documented rules give:
    # - before the first, the delay is 39 ms (no jitter): the buffer runs dry 39 ms after
    #   chunk 150 was due and the gap lasts 100 - 39 = 61 ms;
    # - playback resumes at the chunk's arrival, so the delay is then its relative delay,
    #   100 ms; the target becomes 120 ms (low 90 ms, high max(120, 100) + 20 = 140 ms), so
    #   the delay stays 100 ms and the next gap is 250 - 100 = 150 ms;
    # - likewise the third: 400 - 250 = 150 ms (target 260 ms: low 195 ms, high 280 ms).
    p = play_adaptive(_late(400, {150: 100, 200: 250, 250: 400}), RATE)
    assert [(u.chunk, u.at_ns, u.gap_ns) for u in p.underruns] == [
        (150, 3039 * MS, 61 * MS),
        (200, 4100 * MS, 150 * MS),
        (250, 5250 * MS, 150 * MS),
    ]
    assert p.underrun_ns == 361 * MS
    # Each gap ends when the late chunk arrives: its first sample is heard then.
    for k, late in ((150, 100), (200, 250), (250, 400)):
        assert p.heard_at(k * CHUNK) == (k * 20 + late) * MS
    # The fixed model with no buffer hears each late chunk's lateness beyond the previous
    # one's as a gap: 400 ms in all.
    fixed = play(_late(400, {150: 100, 200: 250, 250: 400}), RATE)
    assert [u.gap_ns for u in fixed.underruns] == [100 * MS, 150 * MS, 150 * MS]


def test_a_late_chunk_within_the_delay_is_no_gap() -> None:
    # 30 ms late is less than the 39 ms the buffer holds: nothing is heard.
    p = play_adaptive(_late(400, {150: 30}), RATE)
    assert p.underruns == ()
    assert len(play(_late(400, {150: 30}), RATE).underruns) == 1


def _updates_before(step_ns: int) -> int:
    """Histogram updates before ``step_ns`` for on-grid 20 ms arrivals, an upper bound
    when arrivals are jittered (one per 520 ms from the second chunk, at 20 ms)."""
    return (step_ns - CHUNK_NS) // (P.resample_ms * MS) + 1


def test_a_step_up_in_jitter_is_followed_within_the_documented_time() -> None:
    step_k = 1000  # 20 s of jitter uniform on [0, 20] ms, then [0, 100] ms
    spread = [20.0] * step_k + [100.0] * 1000
    p = play_adaptive(_jittered(2000, spread, seed=7), RATE)
    step_ns = step_k * CHUNK_NS
    assert _target_at(p, step_ns) == _expected_target_ms(20.0, 25) * MS == 20 * MS
    after = _expected_target_ms(100.0, 25) * MS
    assert after == 100 * MS
    reached = min(t for t, v in p.targets if t >= step_ns and v == after)
    # Documented: 3 updates at most (1 - 0.983^3 >= 0.05) after the interval running at
    # the step: 4 intervals, each the first arrival more than 500 ms after the last.
    interval_ns = P.resample_ms * MS + CHUNK_NS + 100 * MS  # + a chunk + the jitter
    assert reached - step_ns <= 4 * interval_ns
    assert p.target_ns == after


def test_a_step_down_in_jitter_is_followed_slowly_as_documented() -> None:
    step_k = 250  # 5 s of jitter on [0, 100] ms, then [0, 20] ms
    spread = [100.0] * step_k + [20.0] * 2250
    p = play_adaptive(_jittered(2500, spread, seed=11), RATE)
    step_ns = step_k * CHUNK_NS
    assert _target_at(p, step_ns) == 100 * MS
    reached = min(t for t, v in p.targets if t >= step_ns and v == 20 * MS)

    # Documented: after n0 updates of the old jitter, k more with
    # (n0 + k)(n0 + k + 1) >= 20 n0 (n0 + 1) bring the old maxima's weight under 5%.
    def k_for(n0: int) -> int:
        k = 0
        while (n0 + k) * (n0 + k + 1) < 20 * n0 * (n0 + 1):
            k += 1
        return k

    n_hi = _updates_before(step_ns)
    n_lo = n_hi - 2
    slow = (P.resample_ms * MS + CHUNK_NS + 100 * MS) * (k_for(n_hi) + 2)
    fast = P.resample_ms * MS * (k_for(n_lo) - 1)
    assert fast <= reached - step_ns <= slow


def test_play_model_dispatch_and_names() -> None:
    assert PLAYOUT_MODELS == ("fixed", "adaptive")
    chunks = _late(50, {})
    assert play_model(chunks, RATE, model="adaptive").targets
    assert play_model(chunks, RATE, model="fixed").targets == ()
    with pytest.raises(ValueError, match="unknown playout model"):
        play_model(chunks, RATE, model="nope")
    assert playout_name("fixed") == "immediate"
    assert playout_name("fixed", 60 * MS) == "jitter_buffer:60"
    name = playout_name("adaptive")
    assert name.startswith("adaptive:neteq(") and "quantile=0.95" in name
    assert "min_ms=60" in playout_name("adaptive", 60 * MS)
    # A minimum delay (--jitter-buffer-ms with the adaptive model) holds the target up.
    p = play_adaptive(chunks, RATE, min_delay_ns=100 * MS)
    assert min(v for _, v in p.targets) == 100 * MS


def test_fixed_model_buffer_is_its_depth() -> None:
    chunks = _late(50, {})
    assert play(chunks, RATE).buffer_ns == 0
    p = play(chunks, RATE, depth_ns=60 * MS)
    assert p.buffer_ns == 60 * MS
    assert p.wait_ns == 60 * MS
    # The depth holds back the first sample; a later chunk plays at max(arrival, end of
    # the previous one). A chunk 40 ms late against a 60 ms depth waits in the buffer:
    # no gap (with no buffer: a 40 ms gap); the buffer then adds 60 ms before it and
    # 60 - 40 = 20 ms after it (the no-buffer playout shifted by the gap).
    late = _late(50, {25: 40})
    assert [u.gap_ns for u in play(late, RATE).underruns] == [40 * MS]
    deep = play(late, RATE, depth_ns=60 * MS)
    assert deep.underruns == ()
    n = 50 * CHUNK
    before = 25 * CHUNK
    assert deep.buffer_ns == pytest.approx((60 * before + 20 * (n - before)) / n * MS, abs=MS / 10)
    # Later than the depth: the gap is what the depth could not absorb.
    very = play(_late(50, {25: 100}), RATE, depth_ns=60 * MS)
    assert [u.gap_ns for u in very.underruns] == [40 * MS]


def test_heard_at_is_monotonic_and_never_before_arrival() -> None:
    chunks = _jittered(600, [80.0] * 600, seed=5)
    p = play_adaptive(chunks, RATE)
    prev = -1
    for s in range(0, 600 * CHUNK, 97):
        t = p.heard_at(s)
        assert t >= prev
        prev = t
    for k, c in enumerate(chunks):
        assert p.heard_at(k * CHUNK) >= c.arrival_ns
    assert p.end_ns >= p.heard_at(600 * CHUNK - 1)
    # The time played plus the gaps covers the media, give or take the 10% stretching.
    media = 600 * CHUNK_NS
    played = p.end_ns - p.start_ns - p.underrun_ns
    assert 0.9 * media <= played <= 1.12 * media


@pytest.mark.slow
def test_probe_with_adaptive_playout_against_the_reference(tmp_path: Path) -> None:
    from voiceaudit.analysis import build_report
    from voiceaudit.cli.run_cmd import reference_options, reference_url
    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.reference.config import ServerConfig
    from voiceaudit.reference.server import start_reference_server
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class
    from voiceaudit.trace_io import read_trace

    utterances = load_utterances([bundled_dir() / u for u in ("01_weather.wav", "06_thanks.wav")])
    path = tmp_path / "trace.jsonl"

    async def main() -> None:
        server = await start_reference_server(ServerConfig())
        try:
            target = get_target_class("realtime")(
                TargetConfig(
                    url=reference_url(server, "realtime"),
                    protocol="realtime",
                    options=reference_options("realtime"),
                )
            )
            await run_probe(target, utterances, ProbeOptions(gap_ms=300, playout="adaptive"), path)
        finally:
            await server.close()

    asyncio.run(main())
    trace = read_trace(path)
    assert trace.header.config["playout"] == playout_name("adaptive")
    starts = [e for e in trace.events if e.name == "reply.playout_start"]
    ends = [e for e in trace.events if e.name == "reply.end"]
    assert len(starts) == len(ends) == 2
    for s in starts:
        assert s.attrs["model"] == playout_name("adaptive")
        assert s.attrs["wait_ns"] == 0  # playback starts as the first chunk arrives
    for e in ends:
        assert type(e.attrs["buffer_ns"]) is int
        assert e.attrs["target_ns"] % (P.bucket_ms * MS) == 0
        assert P.bucket_ms * MS <= e.attrs["target_ns"] <= P.max_delay_ms * MS
        assert e.attrs["underrun_ns"] >= 0
    report = build_report([path])
    turns = report.to_dict()["turns"]
    assert [t["ok"] for t in turns] == [True, True]
    for t, e in zip(turns, ends, strict=True):
        assert t["voice_to_voice_ms"] > 0
        pl = t["playout"]  # the report's per-turn playout figures
        assert pl["model"] == playout_name("adaptive")
        assert pl["wait_ms"] == 0.0
        assert pl["buffer_ms"] == e.attrs["buffer_ns"] / 1e6
        assert pl["underruns"] == e.attrs["underruns"]
        assert pl["underrun_ms"] == e.attrs["underrun_ns"] / 1e6
        assert pl["target_ms"] == e.attrs["target_ns"] / 1e6


def test_a_reply_faster_than_real_time_is_not_accelerated() -> None:
    # 5 s of reply arriving in 50 ms (a synthesizer over WebSocket): NetEQ's reference
    # (the fastest chunk) would see 5 s of excess delay and accelerate all of it; the
    # model plays no sample earlier than the no-buffer playout, so this is real time.
    chunks = [Chunk(k * MS // 5, CHUNK) for k in range(250)]
    p = play_adaptive(chunks, RATE)
    imm = play(chunks, RATE)
    for s in range(0, 250 * CHUNK, 131):
        assert p.heard_at(s) >= imm.heard_at(s)
    assert p.underruns == ()
    assert p.end_ns - p.start_ns == 250 * CHUNK_NS
    # Only the first block was stretched (1 ms: one chunk in, below the start target),
    # and caught up at once: well under a millisecond on average.
    assert 0 <= (p.buffer_ns or 0) < MS
    # With jitter too, nothing is heard before the no-buffer playout would play it.
    jit = _jittered(600, [80.0] * 600, seed=9)
    pj, ij = play_adaptive(jit, RATE), play(jit, RATE)
    assert all(pj.heard_at(s) >= ij.heard_at(s) for s in range(0, 600 * CHUNK, 89))
    assert (pj.buffer_ns or 0) >= 0


def test_an_empty_first_chunk_delays_the_start_without_a_gap() -> None:
    p = play_adaptive([Chunk(0, 0), Chunk(30 * MS, CHUNK), Chunk(50 * MS, CHUNK)], RATE)
    assert p.underruns == ()
    assert p.start_ns == 30 * MS and p.wait_ns == 30 * MS
