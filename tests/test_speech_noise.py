"""Speech detection in noise (issue 25): real LibriVox speech (../shared/realdata/speech)
under seeded pink noise at 10 dB SNR and under -60 dBFS room tone, against the detection
of the same clean speech; a known gap between two utterances; long signals in blocks.

SNR is the speech power over the clean detection's segments against the noise power.
The bounds asserted here are the measured ones (docs/audio-ground-truth.md, "Speech in
noise"), not the issue's 10 ms goal, which faint speech endings under 10 dB of pink noise
do not reach: the test says how far the detector is from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from voiceaudit import audio as A

STEMS = [
    f"pocketsphinx_sense_and_sensibility_01_austen_64kb-{n}"
    for n in ("0870", "0880", "0890", "0920", "0930")
]
#: Their clean detection before the noise work (DETECTOR_VERSION 2): it must not move.
CLEAN = {
    "0870": (3660, 108020),
    "0880": (4100, 44300),
    "0890": (3900, 81260),
    "0920": (4060, 93140),
    "0930": (3940, 48580),
}
RATE = 16000


def pink(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-power pink noise (power density 1/f), no DC."""
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spec.size, dtype=np.float64)
    k[0] = 1.0
    spec /= np.sqrt(k)
    spec[0] = 0.0
    p = np.fft.irfft(spec, n)
    out: npt.NDArray[np.float64] = p / np.sqrt(np.mean(p * p))
    return out


def with_noise(
    x: npt.NDArray[np.float32], segs: list[tuple[int, int]], snr_db: float, seed: int
) -> npt.NDArray[np.float32]:
    """``x`` plus pink noise at ``snr_db`` below the power of ``x`` over ``segs``."""
    speech = np.concatenate([x[a:b] for a, b in segs]).astype(np.float64)
    noise = pink(x.size, np.random.default_rng(seed)) * np.sqrt(
        np.mean(speech * speech) / 10 ** (snr_db / 10)
    )
    return (x + noise).astype(np.float32)


def room_tone(x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    """``x`` plus pink noise at -60 dBFS RMS."""
    return (x + pink(x.size, np.random.default_rng(seed)) * 1e-3).astype(np.float32)


def ms(n: int) -> float:
    return n * 1000.0 / RATE


@pytest.fixture(scope="module")
def librivox(speech_dir: Path) -> dict[str, npt.NDArray[np.float32]]:
    return {s[-4:]: A.read_audio(speech_dir / f"{s}.wav").samples for s in STEMS}


def test_clean_speech_is_unchanged(librivox: dict[str, npt.NDArray[np.float32]]) -> None:
    for name, x in librivox.items():
        segs = A.speech_segments(x, RATE)
        assert segs == [CLEAN[name]], name
        assert A.detect_speech(A.Audio(x, RATE, 1)).segments == tuple(segs)


@pytest.mark.parametrize("name", list(CLEAN))
def test_pink_noise_at_10_db_snr(librivox: dict[str, npt.NDArray[np.float32]], name: str) -> None:
    """Before this detector: 0930 lost entirely, others split into 2-4 segments, ends up to
    3.6 s early. Now: at most one split (measured: 0890 with seed 1 splits at a 0.6 s
    pause whose weak speech sinks into the noise; the other 9 are one segment), start
    within 215 ms and end within 250 ms of the clean detection (measured worst: start
    +211 ms, end -242 ms; faint endings sink into the noise and are cut early, see docs).
    The start bound was 200 ms under DETECTOR_VERSION 3 (measured +195 ms): 0930's first
    ~200 ms lie under the noise (bench/noise_edges.py: d' 0.2 for its first 10 ms, which
    no detector can find), and the matched placement of gradual edges (version 4) gives
    up 16 ms more of it while it puts detectable starts within a few ms (see
    test_bundled_starts_in_pink_noise)."""
    x = librivox[name]
    clean = A.speech_segments(x, RATE)
    splits = 0
    for seed in (1, 2):
        got = A.speech_segments(with_noise(x, clean, 10.0, seed), RATE)
        assert 1 <= len(got) <= 2, (name, seed, got)
        splits += len(got) - 1
        assert abs(ms(got[0][0] - clean[0][0])) <= 215, (name, seed)
        assert abs(ms(got[-1][1] - clean[-1][1])) <= 250, (name, seed)
        # Never later than the speech itself: noise does not extend the speech.
        assert got[-1][1] <= clean[-1][1] + 0.01 * RATE
    assert splits <= 1


def test_room_tone_at_minus_60_dbfs(
    librivox: dict[str, npt.NDArray[np.float32]],
) -> None:
    """Measured: 0880, 0890, 0920 within 7.5 ms; 0870 starts 15 ms late, 0930 30 ms late
    and ends 20 ms early (their faint onsets and endings are at the recording's own
    floor, which the tone raises)."""
    within = 0
    for name, x in librivox.items():
        clean = A.speech_segments(x, RATE)
        got = A.speech_segments(room_tone(x, 1), RATE)
        assert len(got) == len(clean) == 1, name
        ds, de = ms(got[0][0] - clean[0][0]), ms(got[-1][1] - clean[-1][1])
        assert abs(ds) <= 32.5 and abs(de) <= 22.5, (name, ds, de)
        within += (abs(ds) <= 10) + (abs(de) <= 10)
    assert within >= 7


def test_room_tone_on_the_bundled_utterances() -> None:
    """The synthesized utterances lose their digital silence under room tone: start and end
    stay within 10 ms of the clean answer (measured: starts up to 8.8 ms early, ends
    within 0.3 ms)."""
    from voiceaudit.data import bundled_dir

    for f in sorted(bundled_dir().glob("*.wav")):
        a = A.read_audio(f)
        clean = A.detect_speech(a)
        assert clean.speech_start is not None and clean.speech_end is not None
        got = A.speech_segments(room_tone(a.samples, 1), a.rate)
        assert len(got) == 1, f.name
        assert abs(got[0][0] - clean.speech_start) <= 0.010 * a.rate, f.name
        assert abs(got[-1][1] - clean.speech_end) <= 0.010 * a.rate, f.name


def _loudest(x: npt.NDArray[np.float32], lo: int, hi: int) -> int:
    """Start of the loudest 10 ms window in ``x[lo:hi]``."""
    w = RATE // 100
    energy = np.convolve(x[lo:hi].astype(np.float64) ** 2, np.ones(w), mode="valid")
    return lo + int(np.argmax(energy))


@pytest.mark.parametrize(("first", "second"), [("0870", "0880"), ("0890", "0920")])
def test_a_known_gap_in_noise(
    librivox: dict[str, npt.NDArray[np.float32]], first: str, second: str
) -> None:
    """Two utterances cut in loud speech, 0.54 s of silence between them at a known place,
    pink noise at 10 dB SNR over all: the second utterance starts within 2 ms of the
    known sample and the first ends within 7.5 ms of it (measured over five pairs and
    three seeds: starts 0-1.9 ms, ends 0-7.1 ms, most to the sample; abrupt edges are
    refined to where the energy leaves the noise). One pair not tested here, 0880 then
    0890, loses its last 160 ms in two seeds of three: its cut ends on weak speech."""
    a, b = librivox[first], librivox[second]
    cut_a = _loudest(a, CLEAN[first][1] - RATE // 2, CLEAN[first][1] - RATE // 10)
    cut_b = _loudest(b, CLEAN[second][0] + RATE // 10, CLEAN[second][0] + RATE // 2)
    gap = RATE // 2 + 37
    y = np.concatenate([a[:cut_a], np.zeros(gap, np.float32), b[cut_b:]])
    clean = A.speech_segments(y, RATE)
    assert clean[-1][0] == cut_a + gap  # exact in digital silence
    for seed in (1, 2):
        got = A.speech_segments(with_noise(y, clean, 10.0, seed), RATE)
        start = min((s for s, _ in got), key=lambda s: abs(s - (cut_a + gap)))
        end = min((e for _, e in got), key=lambda e: abs(e - cut_a))
        assert abs(ms(start - (cut_a + gap))) <= 2.0, (seed, ms(start - cut_a - gap))
        assert abs(ms(end - cut_a)) <= 7.5, (seed, ms(end - cut_a))
        assert not any(cut_a + 0.05 * RATE < s < cut_a + gap - 0.05 * RATE for s, _ in got)


def test_a_long_signal_is_analysed_in_blocks(
    librivox: dict[str, npt.NDArray[np.float32]],
) -> None:
    """150 s of the five recordings repeated, with gaps of 0.5-2 s at known places, in
    -60 dBFS room tone: longer than one block, so analysed in two (120 s blocks, 5 s of
    context, frames every 10 ms and edges on the 2.5 ms grid). Every utterance is found,
    in order. Against the whole signal analysed as one block with 2.5 ms frames: 49 of 50
    edges within 2.5 ms, the other within 20 ms (measured 17.5 ms: 0870's faint ending).
    Against each recording alone: within 40 ms (measured: starts up to 20 ms early, ends
    up to 38 ms late; the room tone in the gaps is quieter than the recordings' own
    background, so the floor is lower than each file's own)."""
    rng = np.random.default_rng(3)
    parts: list[npt.NDArray[np.float32]] = []
    want: list[tuple[int, int]] = []
    pos = 0
    while pos < 150 * RATE:
        for name, x in librivox.items():
            lead = int(rng.integers(RATE // 2, 2 * RATE))
            parts += [np.zeros(lead, np.float32), x]
            want.append((pos + lead + CLEAN[name][0], pos + lead + CLEAN[name][1]))
            pos += lead + x.size
    y = room_tone(np.concatenate(parts), 7)
    assert y.size > (A.SEGMENT_BLOCK_S + 2 * A.SEGMENT_OVERLAP_S) * RATE
    got = A.speech_segments(y, RATE)
    whole = A._detect(y, RATE)  # one block, 2.5 ms frames
    assert len(got) == len(whole) == len(want)
    diffs = sorted(
        abs(ms(p - q)) for g, w in zip(got, whole, strict=True) for p, q in zip(g, w, strict=True)
    )
    assert diffs[-2] <= 2.5 and diffs[-1] <= 20.0, diffs[-3:]
    for (s, e), (ws, we) in zip(got, want, strict=True):
        assert abs(ms(s - ws)) <= 40 and abs(ms(e - we)) <= 40, (ms(s - ws), ms(e - we))


def test_bundled_utterances_in_pink_noise() -> None:
    """The six bundled utterances under 10 dB pink noise (seeds 1-3), analysed at 16 kHz
    and at 8 kHz (the recording path's rate for noisy channels), against their clean
    detection (exact, in digital silence). Edges whose first or last 10 ms stand over the
    noise are placed within 10 ms; the others are not findable by any detector
    (bench/noise_edges.py's oracle: 05_joke's last 10 ms have d' 0.5-1.1; 06_thanks'
    first 10 ms at 8 kHz 0.4, its sound is above 4 kHz). Measured at 16 kHz: 15 of 18
    starts within 10 ms (DETECTOR_VERSION 3: 13), worst +27 ms (04_airport, d' 2.6-3.6),
    11 of 18 ends (3: 11); at 8 kHz 11 of 18 starts (3: 4) and 12 of 18 ends (3: 9:
    04_airport's final /t/ was lost at 8 kHz, 95 ms early). Noise never makes an edge
    more than 10 ms too early a start or too late an end."""
    from voiceaudit.data import bundled_dir

    want = {16000: (15, 11, 30.0), 8000: (11, 12, 90.0)}
    for rate, (n_starts, n_ends, worst_start) in want.items():
        starts = ends = 0
        for f in sorted(bundled_dir().glob("*.wav")):
            a = A.read_audio(f)
            (s0, e0), *_ = A.speech_segments(a.samples, a.rate)
            for seed in (1, 2, 3):
                y = with_noise(a.samples, [(s0, e0)], 10.0, seed)
                y = y if rate == a.rate else A.resample(y, a.rate, rate)
                got = A.speech_segments(y, rate)
                ds = got[0][0] * 1000 / rate - s0 * 1000 / a.rate
                de = got[-1][1] * 1000 / rate - e0 * 1000 / a.rate
                assert -10.0 <= ds <= worst_start and de <= 10.0, (f.name, seed, rate, ds, de)
                starts += abs(ds) <= 10
                ends += abs(de) <= 10
        assert starts >= n_starts and ends >= n_ends, (rate, starts, ends)


#: (clip, from s, to s) of the clean speech: the pieces of tests/test_recording.py's call
_PIECES = [
    (1, 0.0, 1.5), (1, 0.0, 10.0), (3, 0.0, 2.0), (4, 0.0, 10.0), (2, 0.0, 0.6), (0, 0.0, 2.5),
    (2, 1.0, 2.2), (3, 2.0, 3.45), (0, 3.0, 5.0), (0, 5.0, 6.3), (2, 2.5, 4.6), (3, 3.5, 5.0),
]  # fmt: skip


def _cut_in_loud_speech(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``x`` cut at its loudest 10 ms in the 300 ms after its speech starts and after its
    loudest 10 ms in the 300 ms before its speech ends: abrupt edges, at known samples."""
    info = A.detect_speech(A.Audio(x, RATE, 1))
    assert info.speech_start is not None and info.speech_end is not None
    s, e = info.speech_start, info.speech_end
    s2 = _loudest(x, s, min(e, s + 3 * RATE // 10))
    e2 = _loudest(x, max(s2 + RATE // 10, e - 3 * RATE // 10), e) + RATE // 100
    return x[s2:e2]


@pytest.mark.parametrize(("rate", "least"), [(16000, 134), (8000, 142)])
def test_abrupt_edges_in_pink_noise_within_10_ms(
    librivox: dict[str, npt.NDArray[np.float32]], rate: int, least: int
) -> None:
    """Twelve pieces of the LibriVox utterances cut in loud speech (abrupt edges at known
    samples), 0.6-1.5 s apart, under pink noise at 10 dB SNR (seeds 1-6), analysed at
    16 kHz and (resampled) at 8 kHz: every piece found, and of the 144 edges at least
    ``least`` within 10 ms of the truth.

    Measured, version 4: 130 (16 kHz) and 129 (8 kHz) of 144; its frames started regions
    20-40 ms early and ended them up to 48 ms late over the noise when the abrupt edge lay
    deeper in than their smear. Version 5 looks up to 60 ms in for the edge when all
    before it is noise: 135 and 143. The rest at 16 kHz: piece 7 (0890 from 1.0 s) ends
    309-317 ms early in every seed (its last stretch, found at 8 kHz, is lost at 16 kHz),
    and at 8 kHz one end 38 ms late."""
    names = list(CLEAN)
    rng = np.random.default_rng(11)
    parts: list[npt.NDArray[np.float32]] = []
    truth: list[tuple[int, int]] = []
    pos = 0
    for k, a, b in _PIECES:
        lo = CLEAN[names[k]][0]
        piece = _cut_in_loud_speech(librivox[names[k]][lo + round(a * RATE) : lo + round(b * RATE)])
        gap = int(rng.integers(6 * RATE // 10, 3 * RATE // 2))
        parts += [np.zeros(gap, np.float32), piece]
        truth.append((pos + gap, pos + gap + piece.size))
        pos += gap + piece.size
    parts.append(np.zeros(RATE, np.float32))
    y = np.concatenate(parts)
    errs: list[float] = []
    for seed in range(1, 7):
        noisy = with_noise(y, truth, 10.0, seed)
        if rate != RATE:
            noisy = A.resample(noisy, RATE, rate)
        got = A.speech_segments(noisy, rate)
        assert len(got) == len(truth), (seed, got)
        errs += [
            abs(g - t * rate / RATE) * 1000 / rate
            for gs, ts in zip(got, truth, strict=True)
            for g, t in zip(gs, ts, strict=True)
        ]
    within = sum(e <= 10.0 for e in errs)
    assert within >= least, (within, sorted(errs)[-10:])
