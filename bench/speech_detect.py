"""How fast `voiceaudit.audio.speech_segments` finds the speech in a long recording.

Builds a long 16 kHz mono 16-bit WAV (default one hour) from real speech: silero-vad's
60 s multi-utterance test file (``../shared/realdata/speech/silero_test.wav``, or under
``$VOICEAUDIT_REALDATA``), repeated, with seeded pink noise added at ``--snr`` dB (speech
power over the file's speech segments against the noise power; ``--snr none`` for the
recording as it is). Then, in one process, it runs ``speech_segments`` on the file read
one block at a time with libsndfile (as a recording analysis does) and prints
the wall-clock and CPU time, the ratio to real time (goal: >= 360x, one hour in 10 s),
the segments found and the peak memory of the process.

    .venv/bin/python bench/speech_detect.py [--minutes 60] [--snr 10|none] [--dir DIR]

CPU time says more than wall-clock time on a shared machine: the ratio is printed for
both.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from voiceaudit import audio as A

RATE = 16_000


class _WavBlocks:
    """The samples of a mono WAV as float32, read by slices with libsndfile (seek and read,
    as a recording analysis reads a file): only the slice asked for is in memory."""

    def __init__(self, path: Path) -> None:
        self._file = sf.SoundFile(str(path))
        if self._file.channels != 1:
            raise SystemExit(f"{path}: expected mono")
        self._frames = int(self._file.frames)

    def __len__(self) -> int:
        return self._frames

    def __getitem__(self, index: slice, /) -> npt.NDArray[np.float32]:
        start, stop, _ = index.indices(self._frames)
        self._file.seek(start)
        out: npt.NDArray[np.float32] = self._file.read(max(0, stop - start), dtype="float32")
        return out


def _pink(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-power pink (1/f power) noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spec.size, dtype=np.float64)
    k[0] = 1.0
    spec /= np.sqrt(k)
    spec[0] = 0.0
    p = np.fft.irfft(spec, n)
    out: npt.NDArray[np.float64] = p / np.sqrt(np.mean(p * p))
    return out


def _speech_dir() -> Path:
    env = os.environ.get("VOICEAUDIT_REALDATA")
    root = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared/realdata"
    return root / "speech"


def build(path: Path, minutes: float, snr_db: float | None) -> None:
    """Write ``minutes`` of real speech (repeated), with pink noise at ``snr_db``."""
    src = A.read_audio(_speech_dir() / "silero_test.wav", rate=RATE)
    x = src.samples.astype(np.float64)
    segs = A.speech_segments(src.samples, RATE)
    power = float(np.mean(np.concatenate([x[a:b] for a, b in segs]) ** 2))
    total = round(minutes * 60 * RATE)
    rng = np.random.default_rng(25)
    with sf.SoundFile(str(path), "w", RATE, 1, subtype="PCM_16", format="WAV") as f:
        done = 0
        while done < total:
            k = min(x.size, total - done)
            y = x[:k].copy()
            if snr_db is not None:
                y += _pink(k, rng) * np.sqrt(power / 10 ** (snr_db / 10))
            f.write(np.clip(y, -1.0, 1.0 - 1.0 / 32768))
            done += k


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--snr", default="10", help="dB of speech over pink noise, or 'none'")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the WAV")
    args = ap.parse_args()
    snr = None if args.snr == "none" else float(args.snr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "long.wav"
        t = time.perf_counter()
        build(path, args.minutes, snr)
        print(
            f"built {args.minutes:g} min at {RATE} Hz, snr {args.snr} dB "
            f"in {time.perf_counter() - t:.1f} s"
        )
        src = _WavBlocks(path)
        seconds = len(src) / RATE
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w0, c0 = time.perf_counter(), time.process_time()
        segs = A.speech_segments(src, RATE)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    speech = sum(b - a for a, b in segs) / RATE
    print(f"speech_segments: {len(segs)} segments, {speech:.0f} s of speech in {seconds:.0f} s")
    print(
        f"wall {wall:.2f} s = {seconds / wall:.0f}x real time; "
        f"cpu {cpu:.2f} s = {seconds / cpu:.0f}x real time (goal >= 360x)"
    )
    print(f"peak RSS {rss1 / 1024:.0f} MiB (before the detection {rss0 / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
