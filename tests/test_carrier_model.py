"""The carrier's playout model, exactly (times in ns, arrivals given)."""

from __future__ import annotations

import numpy as np
import pytest

from voiceaudit.targets.carrier_model import CarrierModel, Echo, Played, span_ns

MS = 1_000_000
S = 1_000_000_000
RATE = 8000


def pcm(ms: int, rate: int = RATE, seed: int = 0) -> bytes:
    """``ms`` of distinct 16-bit samples (so slices can be checked)."""
    n = rate * ms // 1000
    return (np.arange(n, dtype=np.int64) * 7 + seed).astype("<i2").tobytes()


def played(events: list[Played | Echo]) -> list[Played]:
    return [e for e in events if isinstance(e, Played)]


def echoes(events: list[Played | Echo]) -> list[Echo]:
    return [e for e in events if isinstance(e, Echo)]


def test_a_burst_is_heard_at_real_time() -> None:
    """9.5 s of reply sent in 0.85 s (95 messages of 100 ms) plays for 9.5 s: piece i of
    20 ms starts at t0 + 20 i ms, whatever its message's arrival."""
    m = CarrierModel()
    t0 = 3 * S + 12_345
    arrivals = [t0 + k * 850 * MS // 94 for k in range(95)]
    audio = [pcm(100, seed=k) for k in range(95)]
    for t, a in zip(arrivals, audio, strict=True):
        m.media(t, a, RATE, wire_bytes=1000)
    assert m.end_ns == t0 + 9_500 * MS
    assert m.queued_ns(t0 + 850 * MS) == 8_650 * MS
    # nothing has played before the first piece's end
    assert m.advance(t0 + 20 * MS - 1) == []
    out = played(m.advance(t0 + 9_500 * MS))
    assert len(out) == 475
    assert [p.t_play_ns for p in out] == [t0 + 20 * MS * i for i in range(475)]
    assert [p.end_ns for p in out] == [t0 + 20 * MS * (i + 1) for i in range(475)]
    assert [p.queued_ns for p in out] == [t0 + 20 * MS * i - arrivals[i // 5] for i in range(475)]
    assert out[0].queued_ns == 0
    assert out[-1].queued_ns == 9_480 * MS - 850 * MS
    assert b"".join(p.pcm16 for p in out) == b"".join(audio)
    assert sum(p.wire_bytes for p in out) == 95_000
    assert not m.pending()


def test_queue_behind_earlier_audio_and_no_frame_alignment() -> None:
    m = CarrierModel()
    m.media(0, pcm(1000), RATE)  # plays 0 .. 1 s
    m.media(300 * MS, pcm(500), RATE)  # queued: 1 s .. 1.5 s
    odd = 2 * S + 7  # after the buffer drained: starts at once, off any 20 ms grid
    m.media(odd, pcm(40), RATE)
    out = played(m.advance(3 * S))
    starts = [p.t_play_ns for p in out]
    assert starts[:50] == [20 * MS * i for i in range(50)]
    assert starts[50:75] == [S + 20 * MS * i for i in range(25)]
    assert starts[75:] == [odd, odd + 20 * MS]
    assert [p.queued_ns for p in out[50:75]] == [700 * MS + 20 * MS * i for i in range(25)]
    assert out[75].queued_ns == 0


def test_pieces_are_at_most_20_ms() -> None:
    m = CarrierModel()
    pieces = m.media(0, pcm(50), RATE)
    assert [p.samples for p in pieces] == [160, 160, 80]
    assert [p.start_ns for p in pieces] == [0, 20 * MS, 40 * MS]
    # 16 kHz: 320 samples a piece, 62.5 us a sample
    pieces = m.media(0, pcm(30, rate=16000), 16000)
    assert [p.samples for p in pieces] == [320, 160]
    assert pieces[0].start_ns == 50 * MS and pieces[1].end_ns == 80 * MS


def test_mark_echo_times() -> None:
    m = CarrierModel()
    # nothing queued: echoed at its arrival
    assert m.mark(5 * MS, "idle") == 5 * MS
    assert m.advance(5 * MS) == [Echo("idle", 5 * MS, 5 * MS, False)]
    m.media(10 * MS, pcm(1000), RATE)  # plays 10 ms .. 1010 ms
    assert m.mark(400 * MS, "after-1s") == 1010 * MS
    m.media(500 * MS, pcm(200), RATE)  # 1010 .. 1210
    assert m.mark(600 * MS, "after-all", data={"k": 1}) == 1210 * MS
    assert echoes(m.advance(1010 * MS - 1)) == []
    ev = m.advance(1010 * MS)
    # the piece ending at the mark's time comes first
    assert isinstance(ev[-2], Played) and ev[-2].end_ns == 1010 * MS
    assert ev[-1] == Echo("after-1s", 400 * MS, 1010 * MS, False)
    ev = m.advance(2 * S)
    assert ev[-1] == Echo("after-all", 600 * MS, 1210 * MS, False, {"k": 1})
    # drained: a new mark is echoed at once
    assert m.mark(3 * S, "late") == 3 * S


def test_clear_drops_the_queue_and_echoes_pending_marks() -> None:
    m = CarrierModel()
    m.media(0, pcm(2000), RATE)  # 0 .. 2 s
    m.mark(1 * MS, "a")  # due 2 s
    m.media(2 * MS, pcm(1000), RATE)  # 2 .. 3 s
    m.mark(3 * MS, "b")  # due 3 s
    early = m.mark(4 * MS, "c")
    assert early == 3 * S
    done = m.advance(500 * MS)
    assert len(played(done)) == 25
    c = m.clear(500 * MS)
    assert c.playing and c.t_ns == 500 * MS
    assert c.dropped_ns == 2_500 * MS
    assert [e.name for e in c.echoed] == ["a", "b", "c"]
    assert all(e.cleared and e.t_ns == 500 * MS for e in c.echoed)
    assert m.end_ns == 500 * MS
    assert not m.pending()
    assert m.queued_ns(500 * MS) == 0
    # after the clear, new audio starts when it arrives
    m.media(700 * MS, pcm(20), RATE)
    assert played(m.advance(S))[0].t_play_ns == 700 * MS


def test_clear_mid_piece_truncates_exactly() -> None:
    """The samples that began playing before the clear's arrival are heard: a clear at
    7 ms + 1 ns into a piece keeps ceil(56.000008) = 57 samples; at exactly 7 ms, 56."""
    for at, heard in ((7 * MS + 1, 57), (7 * MS, 56), (1, 1), (20 * MS - 1, 160)):
        m = CarrierModel()
        audio = pcm(40)
        m.media(0, audio, RATE)
        m.mark(0, "m")
        c = m.clear(at)
        dropped = span_ns(320 - heard, RATE)
        assert c.dropped_ns == dropped, at
        out = played(m.advance(S))
        assert len(out) == 1
        assert out[0].pcm16 == audio[: 2 * heard]
        assert out[0].truncated
        assert out[0].end_ns == span_ns(heard, RATE)
        assert m.end_ns == span_ns(heard, RATE)
        assert [e.t_ns for e in c.echoed] == [at]
    # a clear exactly on a piece boundary keeps the ended piece whole, drops the next
    m = CarrierModel()
    m.media(0, pcm(40), RATE)
    c = m.clear(20 * MS)
    out = played(m.advance(S))
    assert [p.samples for p in out] == [160] and not out[0].truncated
    assert c.dropped_ns == 20 * MS and c.playing


def test_clear_when_idle() -> None:
    m = CarrierModel()
    m.media(0, pcm(20), RATE)
    c = m.clear(50 * MS)
    assert not c.playing and c.dropped_ns == 0 and c.echoed == ()
    assert len(played(m.advance(S))) == 1


def test_fixed_delay_is_added_to_play_times_only() -> None:
    m = CarrierModel(fixed_delay_ns=150 * MS)
    m.media(10 * MS, pcm(40), RATE)
    m.mark(11 * MS, "x")
    ev = m.advance(50 * MS)
    ps = played(ev)
    assert [p.t_play_ns for p in ps] == [160 * MS, 180 * MS]
    assert [p.end_ns for p in ps] == [180 * MS, 200 * MS]
    assert [p.queued_ns for p in ps] == [0, 20 * MS]
    # a mark is echoed when the carrier's own playout has passed it: no fixed delay
    assert echoes(ev) == [Echo("x", 11 * MS, 50 * MS, False)]
    with pytest.raises(ValueError):
        CarrierModel(fixed_delay_ns=-1)


def test_late_inputs_are_taken_at_the_horizon() -> None:
    m = CarrierModel()
    m.media(0, pcm(1000), RATE)
    m.advance(610 * MS)  # releases the pieces up to 600 ms
    assert m.horizon_ns == 600 * MS
    # a clear whose arrival is before what was released already takes effect at the horizon
    c = m.clear(400 * MS)
    assert c.t_ns == 600 * MS and c.dropped_ns == 400 * MS
    assert m.mark(500 * MS, "late") == 600 * MS
    # one that arrived after the last release but before the advance is exact
    m = CarrierModel()
    m.media(0, pcm(1000), RATE)
    m.advance(610 * MS)
    c = m.clear(605 * MS)
    assert c.t_ns == 605 * MS and c.dropped_ns == 395 * MS


def test_wire_bytes_are_shared_out() -> None:
    m = CarrierModel()
    pieces = m.media(0, pcm(50), RATE, wire_bytes=1001)
    assert sum(p.wire_bytes for p in pieces) == 1001
    assert [p.wire_bytes for p in pieces] == [400, 400, 201]
