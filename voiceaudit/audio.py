"""Audio ground truth: reading, resampling, speech boundaries and the first audible sample.

The two ends of the voice-to-voice interval come from audio:

* the **speech end** of the replayed file (:func:`detect_speech`, cached per file content by
  :func:`speech_info_cached`): when the caller stops talking;
* the **first audible sample** of the received reply (:func:`first_audible`): when the caller
  starts hearing the bot.

:func:`speech_segments` is the same detector for a signal of any length (a recorded call),
analysed in blocks with bounded memory; its thresholds follow the noise, so speech under
background noise is neither lost nor split.

The detector and the reasons for each rule are documented, with the measurements that chose
them, in ``docs/audio-ground-truth.md``. Every sample index here is an ``int`` into the mono
``float32`` samples of an :class:`Audio`; "missing" is ``None``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voiceaudit.errors import AudioError

__all__ = [
    "DETECTOR_VERSION",
    "HEADERLESS_SUFFIXES",
    "Audio",
    "SampleSource",
    "SpeechInfo",
    "cache_dir",
    "detect_speech",
    "first_audible",
    "from_pcm16",
    "inspect_audio",
    "read_audio",
    "resample",
    "speech_info_cached",
    "speech_segments",
    "to_pcm16",
]

#: Bump whenever :func:`detect_speech` can give a different answer: it invalidates the caches.
DETECTOR_VERSION = 5

#: Suffixes read as headerless 16-bit little-endian mono PCM (``rate`` is required).
HEADERLESS_SUFFIXES = (".raw", ".pcm", ".s16")

#: One step of 16-bit PCM in float units; anything at or below it is digital silence.
LSB = 1.0 / 32768.0

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Mono audio: ``samples`` are float32 in [-1, 1], channels mixed down by averaging."""

    samples: F32
    rate: int
    #: Channel count of the source (the samples are always mono).
    channels: int
    path: str | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_ns(self) -> int:
        return _samples_to_ns(self.n_samples, self.rate)

    @property
    def duration_ms(self) -> float:
        return self.n_samples * 1000.0 / self.rate


def _samples_to_ns(n: int, rate: int) -> int:
    """``n`` samples at ``rate`` in integer nanoseconds, rounded half up."""
    return (n * 1_000_000_000 + rate // 2) // rate


def read_audio(
    path: str | os.PathLike[str], *, rate: int | None = None, guess_pcm: bool = True
) -> Audio:
    """Read an audio file as mono float32.

    WAV (8/16/24/32-bit integer or float, any channel count), FLAC and the other formats
    libsndfile reads are decoded from their header. Files named ``*.raw``, ``*.pcm`` or
    ``*.s16``, and (with ``guess_pcm``) files with no recognisable header when ``rate`` is
    given, are read as headerless 16-bit little-endian mono PCM at ``rate`` (required for
    them).

    ``rate`` is the sample rate of the returned samples: the recorded rate of a headerless
    file, and for a file with a header the rate to resample to (nothing happens when it
    matches the header). Pass ``guess_pcm=False`` when ``rate`` is only the rate wanted
    (a scenario's), not the user's word that the file is raw PCM: then a file with no
    header is refused unless its suffix says PCM, so a text file (or ``/etc/passwd``) is
    never replayed as noise.

    Raises :class:`~voiceaudit.errors.AudioError` (one line naming the file) when the file
    is missing, empty, not audio, truncated or has a header that claims more data than the
    file holds.
    """
    p = Path(path)
    data = _read_bytes(p)
    return _decode(data, p, rate, guess_pcm)


def _read_bytes(p: Path) -> bytes:
    name = str(p)
    if not p.exists():
        raise AudioError("no such file", path=name)
    if p.is_dir():
        raise AudioError("is a directory, not an audio file", path=name)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AudioError(f"cannot read: {exc.strerror or exc}", path=name) from None
    if not data:
        raise AudioError("empty file", path=name)
    return data


def _check_rate(rate: int | None, name: str) -> None:
    if rate is not None and (not isinstance(rate, int) or rate <= 0):
        raise AudioError(f"invalid sample rate {rate!r}", path=name)


def _decode(data: bytes, p: Path, rate: int | None, guess_pcm: bool = True) -> Audio:
    name = str(p)
    _check_rate(rate, name)
    if p.suffix.lower() in HEADERLESS_SUFFIXES:
        return _decode_headerless(data, name, rate)
    data = _check_riff(data, name)
    try:
        samples, src_rate, channels = _decode_with_soundfile(data)
    except _NotRecognised as exc:
        if rate is not None and guess_pcm:
            # The caller says what this is: headerless PCM at ``rate``.
            return _decode_headerless(data, name, rate)
        raise AudioError(
            f"not an audio file ({exc})",
            path=name,
            hint="headerless 16-bit PCM needs a .raw/.pcm/.s16 suffix"
            + (" or --rate" if guess_pcm else ""),
        ) from None
    except _Broken as exc:
        raise AudioError(str(exc), path=name) from None
    if samples.size == 0:
        raise AudioError("holds no audio samples", path=name)
    if rate is not None and rate != src_rate:
        samples = resample(samples, src_rate, rate)
        src_rate = rate
    return Audio(samples=samples, rate=src_rate, channels=channels, path=name)


def _decode_headerless(data: bytes, name: str, rate: int | None) -> Audio:
    if rate is None:
        raise AudioError(
            "headerless PCM: the sample rate is unknown",
            path=name,
            hint="give the rate, e.g. --rate 16000",
        )
    if len(data) % 2:
        raise AudioError(
            f"not 16-bit PCM: {len(data)} bytes is an odd count (truncated?)", path=name
        )
    return Audio(samples=from_pcm16(data), rate=rate, channels=1, path=name)


class _NotRecognised(Exception):
    """libsndfile does not know the format."""


class _Broken(Exception):
    """A known format whose content is damaged."""


def _decode_with_soundfile(data: bytes) -> tuple[F32, int, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            src_rate = int(f.samplerate)
            channels = int(f.channels)
            declared = int(f.frames)
            try:
                x = f.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise _Broken(f"damaged or truncated {f.format} data: {_one_line(exc)}") from None
    except _Broken:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        msg = _one_line(exc)
        if "not recognised" in msg.lower() or "unknown format" in msg.lower():
            raise _NotRecognised("format not recognised") from None
        raise _Broken(f"cannot decode: {msg}") from None
    if src_rate <= 0 or channels <= 0:
        raise _Broken(f"header says {src_rate} Hz and {channels} channels")
    if 0 < declared < 2**62 and x.shape[0] < declared:
        raise _Broken(f"truncated: the header says {declared} frames, only {x.shape[0]} decode")
    if not np.all(np.isfinite(x)):
        raise _Broken("holds NaN or infinite samples")
    mono = x[:, 0] if channels == 1 else x.mean(axis=1, dtype=np.float64)
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(mono), src_rate, channels


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # libsndfile puts the (here meaningless) in-memory file name into its messages.
    return text.replace("Error opening <_io.BytesIO object", "error opening").strip()


def _check_riff(data: bytes, name: str) -> bytes:
    """Refuse a WAV whose chunk sizes claim more bytes than the file holds; return the
    bytes to decode.

    libsndfile quietly reads what is there, so a cut-off download or a header that lies
    would otherwise pass as a shorter recording. ``0xFFFFFFFF`` and 0 as the data size
    are the placeholders of streaming writers (the sizes are filled in when the stream
    ends, which never happened): the data runs to the end of the file. libsndfile takes
    a 0 at its word (no samples), so such a header is given the real sizes first.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return data
    endian = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4 : pos + 8])
        body = pos + 8
        if cid == b"data":
            if size in (0, 0xFFFFFFFF):
                real = min(len(data) - body, 0xFFFFFFFF - 36)
                if size == 0 and real > 0:
                    riff = min(len(data) - 8, 0xFFFFFFFF)
                    data = (
                        data[:4]
                        + struct.pack(endian + "I", riff)
                        + data[8 : pos + 4]
                        + struct.pack(endian + "I", real)
                        + data[body:]
                    )
                return data
            if body + size > len(data):
                raise AudioError(
                    f"WAV header claims {size} bytes of audio but the file holds only "
                    f"{len(data) - body} (truncated or corrupt)",
                    path=name,
                )
            return data
        if body + size > len(data):
            raise AudioError(
                f"WAV chunk {cid.decode('latin-1')!r} runs past the end of the file "
                "(truncated or corrupt)",
                path=name,
            )
        pos = body + size + (size & 1)
    raise AudioError("WAV file has no 'data' chunk", path=name)


# --------------------------------------------------------------------------------------
# Sample conversions
# --------------------------------------------------------------------------------------


def resample(samples: npt.NDArray[np.float32], from_rate: int, to_rate: int) -> F32:
    """Polyphase resampling (``scipy.signal.resample_poly``) to exactly
    ``round(len(samples) * to_rate / from_rate)`` samples.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("resample takes mono (1-D) samples")
    n_out = round(Fraction(x.shape[0] * to_rate, from_rate))
    if from_rate == to_rate:
        return x.copy()
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(from_rate, to_rate)
    y = resample_poly(x, to_rate // g, from_rate // g)
    if y.shape[0] >= n_out:
        y = y[:n_out]
    else:
        y = np.concatenate([y, np.zeros(n_out - y.shape[0], dtype=y.dtype)])
    return np.ascontiguousarray(y, dtype=np.float32)


def to_pcm16(samples: npt.NDArray[np.floating[Any]]) -> bytes:
    """float samples (full scale 1.0) → 16-bit little-endian PCM, rounded, clipped.

    Exact inverse of :func:`from_pcm16`: ``to_pcm16(from_pcm16(b)) == b``.
    """
    x = np.asarray(samples, dtype=np.float64)
    q = np.clip(np.rint(x * 32768.0), -32768, 32767)
    return q.astype("<i2").tobytes()


def from_pcm16(data: bytes) -> F32:
    """16-bit little-endian PCM → float32 in [-1, 1) (divided by 32768)."""
    if len(data) % 2:
        raise AudioError(f"16-bit PCM must have an even byte count, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


# --------------------------------------------------------------------------------------
# Speech detection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechInfo:
    """Where the speech is in a file, as sample indices at ``rate``."""

    rate: int
    n_samples: int
    #: ``[start, end)`` sample ranges of speech, in order, not overlapping.
    segments: tuple[tuple[int, int], ...]
    #: First speech sample, or None when there is no speech.
    speech_start: int | None
    #: One past the last speech sample, or None when there is no speech.
    speech_end: int | None

    def _ms(self, n: int | None) -> float | None:
        return None if n is None else round(n * 1000.0 / self.rate, 3)

    @property
    def speech_start_ms(self) -> float | None:
        return self._ms(self.speech_start)

    @property
    def speech_end_ms(self) -> float | None:
        return self._ms(self.speech_end)

    @property
    def leading_silence_ms(self) -> float | None:
        """Time before the speech starts (None when there is no speech)."""
        return self._ms(self.speech_start)

    @property
    def duration_ms(self) -> float:
        return round(self.n_samples * 1000.0 / self.rate, 3)

    @property
    def speech_start_ns(self) -> int | None:
        return None if self.speech_start is None else _samples_to_ns(self.speech_start, self.rate)

    @property
    def speech_end_ns(self) -> int | None:
        return None if self.speech_end is None else _samples_to_ns(self.speech_end, self.rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "n_samples": self.n_samples,
            "segments": [list(s) for s in self.segments],
            "speech_start": self.speech_start,
            "speech_end": self.speech_end,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeechInfo:
        segs = tuple((int(a), int(b)) for a, b in d["segments"])
        start, end = d["speech_start"], d["speech_end"]
        info = cls(
            rate=int(d["rate"]),
            n_samples=int(d["n_samples"]),
            segments=segs,
            speech_start=None if start is None else int(start),
            speech_end=None if end is None else int(end),
        )
        if info.rate <= 0 or (segs and (start != segs[0][0] or end != segs[-1][1])):
            raise ValueError("inconsistent speech info")
        return info


# The detector's constants; docs/audio-ground-truth.md gives the measurements behind them.
_ANALYSIS_RATE = 16_000  # analyse at 16 kHz (or at the file's rate when lower)
_MIN_RATE = 4_000
_FRAME_MS = 20.0  # Hann-windowed spectral frames ...
_HOP_MS = 2.5  # ... every 2.5 ms: the resolution of an edge away from digital silence
_COARSE_HOP_MS = 10.0  # long signals: frames every 10 ms, edges then placed every 2.5 ms
_BAND_HZ = 100.0  # ignore rumble, hum and DC below this
_NOISE_PERCENTILE = 10.0  # noise spectrum: this percentile of each bin's power over time
_FLOOR_PERCENTILE = 4.0  # floor of the whitened energy: this percentile over the frames
_EDGE_DB = 5.0  # a region extends while the whitened energy is this far above the floor ...
_CORE_DB = 12.0  # ... and counts only if it reaches this far above it ...
_MIN_CORE_MS = 30.0  # ... for this long (a click smeared by the 20 ms frames is shorter)
_VOICING_WINDOW_MS = 40.0
_VOICING_RATE = 8_000
_VOICING_HOP_MS = 10.0
_VOICING_SPAN_PAD_MS = 250.0  # long signals: the voicing filter runs this far around regions
_VOICING_BAND_HZ = (80.0, 1000.0)
_PITCH_RANGE_HZ = (70.0, 400.0)
_VOICED = 0.7  # normalised autocorrelation at a pitch lag that makes a frame voiced
_MIN_VOICED_MS = 30.0  # a region needs this much voicing: breaths, clicks, noise have none
# Unvoiced sound (s, f, a plosive release) counts only this close to voiced speech:
_ATTACH_AFTER_MS = 110.0  # after it (a final stop's silent closure comes first)
_ATTACH_BEFORE_MS = 40.0  # before it (an initial consonant runs into its vowel)
_MERGE_MS = 300.0  # pauses shorter than this do not split a segment (the hangover)
# An edge this close to digital silence moves onto it exactly. Ends get longer: speech
# fades out (final consonants, decay) but starts abruptly.
_SNAP_START_MS = 50.0
_SNAP_END_MS = 150.0
_SILENT_RUN_MS = 2.0  # digital silence: at least this long at or below one 16-bit step
_CLEAN_FRACTION = 0.02  # this much digital silence inside the sound makes a signal clean
# Noise: the range of the whitened energy (its 90th percentile over its floor) says how far
# the speech stands above the noise. From _QUIET_RANGE_DB[1] up the thresholds above hold
# (recordings in their own quiet); down to _QUIET_RANGE_DB[0] they slide linearly to the
# noisy values below, which hold under it (speech 10 dB over pink noise spans 10-18 dB).
_QUIET_RANGE_DB = (15.0, 30.0)
# Analysed at 8 kHz (a band to 3.8 kHz), speech 10 dB over pink noise spans 18-20 dB, not
# 10-18: there the low end of the slide is this much higher (at 16 kHz and up, none;
# linear in octaves between). Recordings in their own quiet (>= 30 dB) are not affected.
_LOW_RATE_RANGE_DB = 5.0
_EDGE_DB_NOISY = 1.0  # the frames of stationary noise vary by about +-0.5 dB
_CORE_DB_NOISY = 4.0
_ATTACH_AFTER_MS_NOISY = 250.0  # a vowel's tail sinks into the noise early, so the gap ...
_ATTACH_BEFORE_MS_NOISY = 100.0  # ... to its consonants looks longer
_MERGE_MS_NOISY = 450.0  # the hangover: noise hides the weak speech around a pause


def detect_speech(audio: Audio) -> SpeechInfo:
    """Find the speech in ``audio``: segments, first speech sample, one past the last.

    Band energy relative to the file's own noise spectrum (a whitened energy), with an
    adaptive floor and hysteresis, decides where there is sound; voicing (periodicity at a
    pitch lag) decides which sounds are speech; digital silence pins edges to the exact
    sample. The thresholds follow the noise: the further the noise is above the recording's
    quiet, the lower they sit. The segments are :func:`speech_segments` of the samples.
    ``docs/audio-ground-truth.md`` explains each rule and the measurements.
    """
    rate = audio.rate
    if rate < _MIN_RATE:
        raise AudioError(f"sample rate {rate} Hz is too low for speech detection", path=audio.path)
    n = int(audio.samples.shape[0])
    segs = speech_segments(audio.samples, rate)
    if not segs:
        return SpeechInfo(rate, n, (), None, None)
    return SpeechInfo(rate, n, tuple(segs), segs[0][0], segs[-1][1])


#: :func:`speech_segments` analyses a long signal in blocks of this many seconds ...
SEGMENT_BLOCK_S = 120.0
#: ... each seen with this much of its neighbours on both sides (its edges need context).
SEGMENT_OVERLAP_S = 5.0


class SampleSource(Protocol):
    """A mono signal read by slices: a float array or ``numpy.memmap``, or a wrapper that
    converts a file's samples to float in [-1, 1] one slice at a time."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> npt.ArrayLike: ...


def speech_segments(samples: SampleSource, rate: int) -> list[tuple[int, int]]:
    """Every speech segment ``[start, end)`` (sample indices at ``rate``) of a mono signal.

    This is the detector of :func:`detect_speech` (whose ``segments`` it gives) for
    signals of any length. A signal of up to :data:`SEGMENT_BLOCK_S` plus twice
    :data:`SEGMENT_OVERLAP_S` (130 s) is one block, analysed with frames every 2.5 ms. A
    longer one (a recorded call) is analysed block by block, each block with
    :data:`SEGMENT_OVERLAP_S` of context on both sides and its own noise estimate (so the
    detector follows noise that changes over an hour), with frames every 10 ms whose
    region edges are then placed on the 2.5 ms grid (a quarter of the work); pieces are
    clipped to their block and joined where they touch or lie closer than the 300 ms
    hangover. Working memory is bounded by the block, not the signal: ``samples`` may be
    a ``numpy.memmap`` or any sliceable 1-D sequence of floats in [-1, 1] (a
    :class:`SampleSource`), read one block at a time. Segments are in order and
    disjoint, at least the hangover apart. Raises :class:`~voiceaudit.errors.AudioError`
    for sample rates under 4 kHz. ``docs/audio-ground-truth.md`` ("Speech in noise")
    gives what it guarantees in noise, measured.
    """
    if rate < _MIN_RATE:
        raise AudioError(f"sample rate {rate} Hz is too low for speech detection")
    n = len(samples)
    block = round(SEGMENT_BLOCK_S * rate)
    overlap = round(SEGMENT_OVERLAP_S * rate)
    if n <= block + 2 * overlap:
        return _detect(np.asarray(samples[0:n], dtype=np.float32), rate)
    pieces: list[tuple[int, int]] = []
    for c0 in range(0, n, block):
        c1 = min(n, c0 + block)
        lo, hi = max(0, c0 - overlap), min(n, c1 + overlap)
        x = np.asarray(samples[lo:hi], dtype=np.float32)
        for a, b in _detect(x, rate, coarse=True):
            a, b = max(a + lo, c0), min(b + lo, c1)
            if b > a:
                pieces.append((a, b))
    return _merge(pieces, round(_MERGE_MS * rate / 1000))


def _detect(x: F32, rate: int, coarse: bool = False) -> list[tuple[int, int]]:
    """Speech segments of ``x`` analysed as one block (``coarse``: see _sound_regions)."""
    n = int(x.shape[0])
    if n == 0:
        return []
    arate = min(rate, _ANALYSIS_RATE)
    xa = x if arate == rate else resample(x, rate, arate)
    segs_a = _segments(xa.astype(np.float64), arate, coarse)
    segs: list[tuple[int, int]] = []
    for a, b in segs_a:
        s = min(n, round(a * rate / arate))
        e = min(n, round(b * rate / arate))
        s, e = _snap_to_digital_silence(x, rate, s, e)
        if e > s:
            segs.append((s, e))
    return _merge(segs, round(_MERGE_MS * rate / 1000))


def _runs(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Start and end (exclusive) indices of the runs of True in ``mask``."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


_BLOCK = 2048  # frames per FFT block: bounds memory on long files
_NOISE_SAMPLE = 8192  # at most this many frames feed the noise spectrum estimate ...
_NOISE_SAMPLE_COARSE = 4096  # ... of a block of a long signal (evenly spread)


def _segments(x: F64, rate: int, coarse: bool = False) -> list[tuple[int, int]]:
    """Speech regions ``[start, end)`` in samples of ``x`` (at ``rate``), before merging."""
    n = x.shape[0]
    s_start, s_end = _silent_runs(x.astype(np.float32), rate)
    silent = np.zeros(n, dtype=bool)
    for a, b in zip(s_start, s_end, strict=True):
        silent[a:b] = True
    if silent.all():
        return []
    sound = np.flatnonzero(~silent)
    span = int(sound[-1]) + 1 - int(sound[0])
    interior = (s_start > sound[0]) & (s_end <= sound[-1])
    if int((s_end - s_start)[interior].sum()) >= _CLEAN_FRACTION * span:
        # The sound keeps returning to exact digital silence (synthesized speech, a gated
        # signal): its background is silence, not noise. Every stretch of sound is a
        # candidate, with exact edges. Real recordings hold next to none (< 0.2 %).
        starts, ends = _runs(~silent)
        noisy = 0.0
    else:
        starts, ends, noisy = _sound_regions(x, rate, silent, coarse)
    if starts.size == 0:
        return []
    # A dip shorter than a frame is below the resolution of the frames: not a pause.
    joined = np.concatenate(([True], starts[1:] - ends[:-1] >= _FRAME_MS * rate / 1000))
    starts, ends = starts[joined], ends[np.concatenate((joined[1:], [True]))]
    voiced_at = _voiced_frame_centres(x, rate, starts, ends, fast=coarse)
    n_voiced = np.searchsorted(voiced_at, ends) - np.searchsorted(voiced_at, starts)
    voiced = n_voiced * _VOICING_HOP_MS >= _MIN_VOICED_MS
    # An unvoiced region (a fricative, a plosive release) belongs to the speech when it
    # follows a voiced region within _ATTACH_AFTER_MS (a final stop's closure is silent) or
    # precedes one within _ATTACH_BEFORE_MS (an initial consonant runs into its vowel).
    # Only direct neighbours count, so a run of unvoiced bursts (breaths, clicks, crowd
    # noise) cannot chain itself onto the speech.
    gap_before = np.concatenate(([np.inf], starts[1:] - ends[:-1]))
    gap_after = np.concatenate((starts[1:] - ends[:-1], [np.inf]))
    voiced_before = np.concatenate(([False], voiced[:-1]))
    voiced_after = np.concatenate((voiced[1:], [False]))
    after_ms = _slide(_ATTACH_AFTER_MS, _ATTACH_AFTER_MS_NOISY, noisy)
    before_ms = _slide(_ATTACH_BEFORE_MS, _ATTACH_BEFORE_MS_NOISY, noisy)
    kept = (
        voiced
        | (voiced_before & (gap_before < after_ms * rate / 1000))
        | (voiced_after & (gap_after < before_ms * rate / 1000))
    )
    segs = [(int(a), int(b)) for a, b in zip(starts[kept], ends[kept], strict=True)]
    if noisy > 0.0 and segs:
        segs, abrupt = _refine_abrupt_edges(x, rate, segs)
        if noisy >= _FAINT_MIN_NOISY:
            segs = _extend_faint_edges(x, rate, segs, abrupt)
        # Noise hides the weak speech on both sides of a pause, so it looks longer.
        segs = _merge(segs, round(_slide(_MERGE_MS, _MERGE_MS_NOISY, noisy) * rate / 1000))
    return segs


_EDGE_WINDOW_MS = 1.0  # abrupt starts in noise: energy of the pre-emphasised signal in 1 ms
_EDGE_SEARCH_MS = 12.5  # ... looked for this far inside a region's start (the frames' smear)
_EDGE_LOW = 2.0  # ... below this many times the noise's median energy is noise ...
_EDGE_HIGH = 10.0  # ... and a rise from it to this many times within ...
_EDGE_RISE_MS = 3.0  # ... this long is an abrupt edge, placed where the energy left the noise
_EDGE_NOISE_WINDOWS = 65_536  # the noise's median energy: from at most this many windows
_EDGE_DEEP_MS = 60.0  # an edge not found within the smear: looked for this far in, ...
_EDGE_NOISE_LIKE = 1.3  # ... when the stretch before it holds at most this many times the
#                         noise's mean energy (it is noise the frames took in)


def _window_energies(x: F64, pre: bool, starts: npt.NDArray[np.intp], count: int, w: int) -> F64:
    """Mean energy of the ``w``-sample windows of ``x`` (``pre``: of its first difference,
    0 before the first sample) starting at ``starts[i] + j`` for ``j < count``: one row per
    start (windows past the end of ``x`` are garbage; the caller masks them)."""
    n = x.shape[0]
    at = starts[:, None] + np.arange(count + w - 1)
    y = x[np.clip(at, 0, n - 1)]
    if pre:
        y = y - x[np.clip(at - 1, 0, n - 1)]
    c = np.concatenate((np.zeros((starts.shape[0], 1)), np.cumsum(y * y, axis=1)), axis=1)
    out: F64 = (c[:, w:] - c[:, :-w]) / w
    return out


def _refine_abrupt_edges(
    x: F64, rate: int, segs: list[tuple[int, int]]
) -> tuple[list[tuple[int, int]], list[tuple[bool, bool]]]:
    """Move region edges that are abrupt (a cut, a loud onset, speech that stops dead)
    onto the sample where the energy leaves or reaches the noise.

    The 20 ms frames smear such an edge outward by up to half a frame plus a hop. In
    noise, 1 ms windows of the signal find it: the last window at noise level (under 2x
    the noise's median energy) before a rise to 10x within 3 ms, or the first after such
    a fall, no further in than the smear. Starts are looked for in the pre-emphasised
    signal (the first difference, which flattens pink and brown noise and shows the
    consonants and onsets); ends there, then in the signal itself (a vowel cut off over
    pink noise; for starts this view moved natural onsets, measured). A gradual edge has
    no such rise or fall, and keeps its place. The noise's median is taken over the
    windows outside the regions (evenly spaced, at most 65,536 of them: every one in a
    signal of a few seconds); the windows' energies only next to each edge. Also says, per
    region, whether its start and its end were abrupt (moved).
    """
    w = max(1, round(_EDGE_WINDOW_MS * rate / 1000))
    reach = round(_EDGE_SEARCH_MS * rate / 1000)
    rise = max(1, round(_EDGE_RISE_MS * rate / 1000))
    n_env = max(0, x.shape[0] - w + 1)
    outside = np.ones(n_env, dtype=bool)
    for a, b in segs:
        outside[max(0, a - reach) : b + reach] = False
    at = np.flatnonzero(outside)
    if at.size < 50 * w:
        return segs, [(False, False)] * len(segs)
    at = at[:: max(1, -(-at.size // _EDGE_NOISE_WINDOWS))]
    views: list[tuple[bool, float, float]] = []
    noise_mean: list[float] = []
    for pre in (True, False):
        if pre:
            idx = np.maximum(at[:, None] - 1 + np.arange(w + 1), 0)
            g = x[idx]
            e = np.diff(g, axis=1)
        else:
            e = x[at[:, None] + np.arange(w)]
        energies = (e * e).sum(axis=1) / w
        noise = float(np.median(energies))
        if noise > 0.0:
            views.append((pre, _EDGE_LOW * noise, _EDGE_HIGH * noise))
            noise_mean.append(float(energies.mean()))
    if not views:
        return segs, [(False, False)] * len(segs)
    a0 = np.array([a for a, _ in segs], dtype=np.intp)
    b0 = np.array([b for _, b in segs], dtype=np.intp)
    a1 = a0.copy()
    # Starts (the first view only): the last quiet window before the first loud one.
    pre, low, high = views[0]
    span = reach + rise
    env = _window_energies(x, pre, a0, span, w)
    pos = np.arange(span)
    valid = pos < (np.minimum(np.minimum(b0, a0 + span), n_env) - a0)[:, None]
    loud = valid & (env > high)
    k = np.argmax(loud, axis=1)
    quiet = valid & (env < low) & (pos < k[:, None])
    q_last = span - 1 - np.argmax(quiet[:, ::-1], axis=1)
    ok = loud.any(axis=1) & quiet.any(axis=1) & (k - q_last <= rise)
    a1[ok] = np.minimum(a0 + q_last + w, a0 + reach)[ok]
    # Deeper in: the frames can take in more noise than their smear (a threshold near the
    # noise's own level); an abrupt start up to 60 ms in counts when all before it is noise.
    deep = ~ok
    if deep.any():
        a1[deep] = _deep_edges(x, pre, a0[deep], b0[deep], w, low, high, noise_mean[0], rate, n_env)
    # Ends (each view in turn, until one finds it): the first quiet window after the
    # last loud one.
    b1 = b0.copy()
    todo = np.ones(len(segs), dtype=bool)
    span = reach + rise + w
    pos = np.arange(span)
    for pre, low, high in views:
        lo = np.maximum(a1, b0 - span)
        env = _window_energies(x, pre, lo, span, w)
        valid = pos < (np.minimum(b0, n_env) - lo)[:, None]
        loud = valid & (env > high)
        k = span - 1 - np.argmax(loud[:, ::-1], axis=1)
        quiet = valid & (env < low) & (pos >= k[:, None])
        q0 = np.argmax(quiet, axis=1) - k
        ok = todo & loud.any(axis=1) & quiet.any(axis=1) & (q0 <= rise)
        b1[ok] = np.maximum(lo + k + q0, b0 - reach)[ok]
        todo &= ~ok
    if todo.any():  # deeper in, as for starts (the first view)
        pre, low, high = views[0]
        b1[todo] = _deep_edges(
            x, pre, a1[todo], b0[todo], w, low, high, noise_mean[0], rate, n_env, end=True
        )
    out: list[tuple[int, int]] = []
    abrupt: list[tuple[bool, bool]] = []
    for a, b, sa, sb in zip(
        a1.tolist(), b1.tolist(), (a1 != a0).tolist(), (b1 != b0).tolist(), strict=True
    ):
        if b > a:
            out.append((a, b))
            abrupt.append((sa, sb))
    return out, abrupt


def _deep_edges(
    x: F64,
    pre: bool,
    a: npt.NDArray[np.intp],
    b: npt.NDArray[np.intp],
    w: int,
    low: float,
    high: float,
    noise_mean: float,
    rate: int,
    n_env: int,
    *,
    end: bool = False,
) -> npt.NDArray[np.intp]:
    """Regions' starts (``end``: ends) moved onto an abrupt edge up to
    :data:`_EDGE_DEEP_MS` inside them, where the stretch between the region's edge and
    the abrupt one is noise (its mean window energy at most :data:`_EDGE_NOISE_LIKE`
    times the noise's mean): the last quiet window before the first loud one (``end``:
    the first quiet one after the last loud one), the rise or fall within
    :data:`_EDGE_RISE_MS`. Edges without such a rise or fall keep their place."""
    rise = max(1, round(_EDGE_RISE_MS * rate / 1000))
    span = round(_EDGE_DEEP_MS * rate / 1000) + rise + w
    pos = np.arange(span)
    if not end:
        env = _window_energies(x, pre, a, span, w)
        valid = pos < (np.minimum(np.minimum(b, a + span), n_env) - a)[:, None]
        loud = valid & (env > high)
        k = np.argmax(loud, axis=1)
        quiet = valid & (env < low) & (pos < k[:, None])
        q = span - 1 - np.argmax(quiet[:, ::-1], axis=1)
        before = np.cumsum(np.where(valid, env, 0.0), axis=1)
        mean_before = before[np.arange(a.size), q] / (q + 1)
        ok = loud.any(axis=1) & quiet.any(axis=1) & (k - q <= rise)
        ok &= mean_before <= _EDGE_NOISE_LIKE * noise_mean
        out = np.where(ok, a + q + w, a)
        return out.astype(np.intp)
    lo = np.maximum(a, b - span)
    env = _window_energies(x, pre, lo, span, w)
    stop = np.minimum(b, n_env) - lo
    valid = pos < stop[:, None]
    loud = valid & (env > high)
    k = span - 1 - np.argmax(loud[:, ::-1], axis=1)
    quiet = valid & (env < low) & (pos >= k[:, None])
    q = np.argmax(quiet, axis=1)
    after = np.cumsum(np.where(valid, env, 0.0)[:, ::-1], axis=1)[:, ::-1]
    n_after = np.maximum(1, stop - q)
    mean_after = after[np.arange(b.size), np.minimum(q, span - 1)] / n_after
    ok = loud.any(axis=1) & quiet.any(axis=1) & (q - k <= rise)
    ok &= mean_after <= _EDGE_NOISE_LIKE * noise_mean
    out = np.where(ok, lo + q, b)
    return out.astype(np.intp)


# In heavy noise (noisiness from _FAINT_MIN_NOISY up) each gradual edge (not abrupt) is
# placed again by a detector matched to the speech just inside it:
_FAINT_MIN_NOISY = 0.7  # (in lighter noise it found tails the quiet rules leave out)
_FAINT_WINDOW_MS = 10.0  # Hann-windowed frames this long ...
_FAINT_HOP_MS = 1.25  # ... every 1.25 ms;
_FAINT_INSIDE_MS = (20.0, 60.0)  # the speech's spectrum: frames (every 2.5 ms) this far in;
_FAINT_ANCHOR_MS = 30.0  # the run of speech frames is followed out from this far inside ...
_FAINT_REACH_MS = 250.0  # ... to at most this far outside;
_FAINT_QUANTILE = 95.0  # a frame is speech over this percentile of the statistic in noise;
_FAINT_GAP_MS = 10.0  # frames under it for at most this long do not end the run
_FAINT_NOISE_FRAMES = 512  # the noise: at most this many frames, 50 ms off the regions
_FAINT_CHUNK = 32  # frames looked at a time, outward


def _extend_faint_edges(
    x: F64, rate: int, segs: list[tuple[int, int]], abrupt: list[tuple[bool, bool]]
) -> list[tuple[int, int]]:
    """Place each gradual region edge (``abrupt`` says which are not) again, by a detector
    matched to the speech just inside it: out over the faint speech that the frames' mean
    whitened energy misses, in over the noise that the hysteresis took in.

    Per frequency bin k of 10 ms frames, the speech's SNR ``xi_k`` 20-60 ms inside the
    edge (its mean power over the noise's, less 1) gives the weight ``xi_k / (1 + xi_k)``
    (the per-bin log-likelihood ratio of a Gaussian signal in Gaussian noise, Sohn et al.
    1999, with the a priori SNR from inside the edge), and a frame's statistic is the
    weighted sum of its power over the noise's, less 1. From 30 ms inside the edge, the
    run of frames over the 95th percentile of that statistic in the noise (the frames
    outside the regions), through gaps of up to 10 ms, ends where the edge goes (at most
    250 ms out; never across a neighbouring region's edge). The weights put the test where
    this speech stands over the noise (a vowel's low harmonics, a fricative's high band),
    which the mean over all bins dilutes. All edges of ``x`` are tested together.
    """
    import scipy.fft

    n = x.shape[0]
    w = round(_FAINT_WINDOW_MS * rate / 1000)
    hop = max(1, round(_FAINT_HOP_MS * rate / 1000))
    if n < 2 * w:
        return segs
    win = np.hanning(w)
    freqs = np.fft.rfftfreq(w, 1.0 / rate)
    band = (freqs >= _BAND_HZ) & (freqs <= 0.95 * rate / 2)
    margin = round(0.05 * rate)
    ok = np.ones(n, dtype=bool)
    for a, b in segs:
        ok[max(0, a - margin) : b + margin] = False
    ok[: w // 2 + 1] = False
    ok[max(0, n - w // 2 - 1) :] = False
    cand = np.flatnonzero(ok[::hop]) * hop
    if cand.size < 50:
        return segs
    cand = cand[np.linspace(0, cand.size - 1, min(cand.size, _FAINT_NOISE_FRAMES)).astype(np.intp)]

    frames = np.lib.stride_tricks.sliding_window_view(x, w)

    def power(centres: npt.NDArray[np.intp]) -> F64:
        """Power spectra (the band's bins) of the frames centred on ``centres`` (any shape)."""
        spec = scipy.fft.rfft(frames[np.clip(centres - w // 2, 0, n - w)] * win, axis=-1)
        spec = spec[..., band]
        out: F64 = spec.real**2 + spec.imag**2
        return out

    noise_frames = power(cand)
    noise = noise_frames.mean(axis=0) + 1e-30
    g_noise = noise_frames / noise - 1.0
    # The edges to place: position, direction out (+1 an end, -1 a start), and the limit
    # (a neighbour's edge) they may not reach.
    edge, sign, limit = [], [], []
    for i, ((a, b), (sharp_a, sharp_b)) in enumerate(zip(segs, abrupt, strict=True)):
        if not sharp_a:
            edge.append(a)
            sign.append(-1)
            limit.append(segs[i - 1][1] if i else -1)
        if not sharp_b:
            edge.append(b)
            sign.append(1)
            limit.append(segs[i + 1][0] if i + 1 < len(segs) else n + 1)
    if not edge:
        return segs
    e, sg, lim = np.array(edge), np.array(sign), np.array(limit)
    inside = np.arange(
        round(_FAINT_INSIDE_MS[0] * rate / 1000), round(_FAINT_INSIDE_MS[1] * rate / 1000), 2 * hop
    )
    c_in = e[:, None] - sg[:, None] * inside
    valid = (c_in >= 0) & (c_in < n)
    p_in = power(c_in) / noise
    xi = np.maximum(
        (p_in * valid[..., None]).sum(axis=1) / np.maximum(1, valid.sum(axis=1))[:, None] - 1.0, 0.0
    )
    weight = xi / (1.0 + xi)
    thr = np.percentile(np.einsum("fk,ek->fe", g_noise, weight), _FAINT_QUANTILE, axis=0)
    anchor = round(_FAINT_ANCHOR_MS * rate / 1000)
    total = (round(_FAINT_REACH_MS * rate / 1000) + anchor + hop - 1) // hop
    gap = max(1, round(_FAINT_GAP_MS / _FAINT_HOP_MS))
    last = np.full(e.size, -1)  # the last frame over the threshold in the run
    running = np.flatnonzero(xi.any(axis=1))
    for c0 in range(0, total, _FAINT_CHUNK):
        if running.size == 0:
            break
        js = np.arange(c0, min(total, c0 + _FAINT_CHUNK))
        centres = (e - sg * anchor)[running, None] + (sg[running, None] * hop) * js
        inside_limits = (sg[running, None] * (lim[running, None] - centres) > 0) & (
            (centres >= 0) & (centres < n)
        )
        stat = np.einsum("ejk,ek->ej", power(centres) / noise - 1.0, weight[running])
        over = (stat > thr[running, None]) & inside_limits
        still = []
        for r, row, fits in zip(running, over, inside_limits, strict=True):
            stop = False
            for k in np.flatnonzero(row) + c0:
                if k - last[r] > gap + 1:  # (the frame before the first counts as -1)
                    stop = True
                    break
                last[r] = k
            if not (stop or not fits.all() or js[-1] - last[r] > gap + 1):
                still.append(r)
        running = np.array(still, dtype=np.intp)
    placed = np.where(last >= 0, e - sg * anchor + sg * hop * last, e)
    moved = dict(zip(zip(e.tolist(), sg.tolist(), strict=True), placed.tolist(), strict=True))
    out: list[tuple[int, int]] = []
    for a, b in segs:
        a1 = max(0, moved.get((a, -1), a))
        b1 = min(n, moved.get((b, 1), b))
        if b1 > a1:
            out.append((a1, b1))
    return out


def _slide(quiet: float, noisy: float, noisiness: float) -> float:
    """A constant between its value in quiet (``noisiness`` 0) and in noise (1)."""
    return quiet if noisiness <= 0.0 else quiet + (noisy - quiet) * noisiness


def _sound_regions(
    x: F64, rate: int, silent: npt.NDArray[np.bool_], coarse: bool = False
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], float]:
    """Regions where the band energy, whitened by the file's own noise spectrum, rises
    above the noise: hysteresis between an edge and a core threshold over an adaptive
    floor. Also how noisy the signal is: 0 when the speech stands far above the noise (the
    thresholds are the quiet ones), up to 1 in heavy noise (the noisy ones).

    ``coarse`` (long signals): the frames step by :data:`_COARSE_HOP_MS`, a quarter of the
    work, and each region edge is then placed on the 2.5 ms grid by the frames of that
    grid around it, with the same noise spectrum and floor."""
    import scipy.fft

    n = x.shape[0]
    size = round(_FRAME_MS * rate / 1000)
    fine = max(1, round(_HOP_MS * rate / 1000))
    ratio = max(1, round(_COARSE_HOP_MS / _HOP_MS)) if coarse else 1
    hop = fine * ratio
    hop_ms = _HOP_MS * ratio
    count = (n + hop - 1) // hop  # frame i is centred on sample i * hop
    # Mirror the ends: zeros would cut the waveform off mid-frame, and that step's
    # broadband splatter would look like sound at the edges of every file.
    padded = np.pad(x, (size // 2, size), mode="symmetric")
    starts = np.arange(count) * hop
    # Frames of digital silence are never sound; frames that touch digital silence stay
    # out of the estimates, so padding a recording with zeros does not move them.
    sq = np.concatenate(([0.0], np.cumsum(padded * padded)))
    sounding = (sq[starts + size] - sq[starts]) / size > LSB * LSB
    if silent.any():
        sc = np.concatenate(([0], np.cumsum(np.pad(silent, (size // 2, size), mode="symmetric"))))
        clean = sounding & (sc[starts + size] == sc[starts])
    else:
        clean = sounding
    if not clean.any():
        clean = sounding
    empty = np.zeros(0, dtype=np.intp)
    if not clean.any():
        return empty, empty, 0.0

    nfft = 1 << (size - 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    in_band = np.flatnonzero((freqs >= _BAND_HZ) & (freqs <= 0.95 * rate / 2))
    band = slice(int(in_band[0]), int(in_band[-1]) + 1)  # contiguous: a view, no copy
    window = np.hanning(size).astype(np.float32)
    # The samples are float32 values (in float64 for the filters): the frames are taken
    # from a float32 copy, which is exact, and saves a conversion per frame.
    windows32 = np.lib.stride_tricks.sliding_window_view(padded.astype(np.float32), size)
    frames32 = windows32[::hop][:count]

    # The power spectrum of every frame, block by block (bounded by the signal block
    # speech_segments hands over: 130 s at 16 kHz is 52,000 frames, 50 MB).
    spectra = np.empty((count, band.stop - band.start), dtype=np.float32)
    for b in range(0, count, _BLOCK):
        spec = scipy.fft.rfft(frames32[b : b + _BLOCK] * window, nfft, axis=1)[:, band]
        out = spectra[b : b + _BLOCK]
        np.multiply(spec.real, spec.real, out=out)
        out += spec.imag * spec.imag
    # Noise spectrum: per frequency bin, a low percentile of the power over time. Speech
    # leaves every bin quiet now and then, so this works even with few pauses.
    pick = np.flatnonzero(clean)
    most = _NOISE_SAMPLE_COARSE if coarse else _NOISE_SAMPLE
    if pick.size > most:
        pick = pick[np.linspace(0, pick.size - 1, most).astype(np.intp)]
    noise = np.percentile(spectra[pick], _NOISE_PERCENTILE, axis=0).astype(np.float64)
    noise = np.maximum(noise, 1e-3 * float(np.median(noise))) + 1e-30
    inv_noise = (1.0 / noise).astype(np.float32)
    # The statistic: mean over the band of power / noise power, i.e. the energy of the
    # whitened signal. Speech that is weak overall but stands out in its own band (a tail
    # at 2 kHz over low-frequency rumble) still rises well above the floor.
    stat = np.concatenate(
        [np.einsum("ij,j->i", spectra[b : b + _BLOCK], inv_noise) for b in range(0, count, _BLOCK)]
    ) / np.float32(inv_noise.size)
    db = np.full(count, -np.inf)
    db[sounding] = 10.0 * np.log10(stat[sounding].astype(np.float64) + 1e-30)
    floor = float(np.percentile(db[clean], _FLOOR_PERCENTILE))
    span = float(np.percentile(db[clean], 90.0)) - floor
    lo_db, hi_db = _QUIET_RANGE_DB
    lo_db += _LOW_RATE_RANGE_DB * min(1.0, max(0.0, math.log2(_ANALYSIS_RATE / rate)))
    noisy = min(1.0, max(0.0, (hi_db - span) / (hi_db - lo_db)))
    edge_db = floor + _slide(_EDGE_DB, _EDGE_DB_NOISY, noisy)
    edge = db > edge_db
    core = db > floor + _slide(_CORE_DB, _CORE_DB_NOISY, noisy)
    r_start, r_end = _runs(edge)
    core_c = np.concatenate(([0], np.cumsum(core)))
    keep = (core_c[r_end] - core_c[r_start]) * hop_ms >= _MIN_CORE_MS
    r_start, r_end = r_start[keep], r_end[keep]
    if ratio > 1 and r_start.size:
        # Each edge lies between a coarse frame under the threshold and one over it: the
        # fine frames between them say where.
        n_fine = (n + fine - 1) // fine
        steps = np.arange(ratio)
        first = np.clip((r_start * ratio)[:, None] - ratio + 1 + steps, 0, n_fine - 1)
        last = np.clip((r_end * ratio)[:, None] - ratio + steps, 0, n_fine - 1)
        idx = np.concatenate([first.ravel(), last.ravel()])
        fr = windows32[idx * fine]
        spec = scipy.fft.rfft(fr * window, nfft, axis=1)[:, band]
        st = ((spec.real * spec.real + spec.imag * spec.imag) @ inv_noise) / np.float32(
            inv_noise.size
        )
        loud = np.einsum("ij,ij->i", fr, fr) / size > LSB * LSB
        above = loud & (10.0 * np.log10(st.astype(np.float64) + 1e-30) > edge_db)
        a_first = above[: first.size].reshape(first.shape)
        a_last = above[first.size :].reshape(last.shape)
        # First fine frame over the threshold (the coarse one is, at the latest) ...
        j0 = first[np.arange(first.shape[0]), np.argmax(a_first, axis=1)]
        j0 = np.where(a_first.any(axis=1), j0, r_start * ratio)
        # ... and one past the last one over it (the coarse one before the end is).
        k_last = ratio - 1 - np.argmax(a_last[:, ::-1], axis=1)
        j1 = last[np.arange(last.shape[0]), k_last] + 1
        j1 = np.where(a_last.any(axis=1), j1, (r_end - 1) * ratio + 1)
        s = np.clip(j0 * fine - fine // 2, 0, n)
        e = np.clip(j1 * fine - fine // 2, 0, n)
    else:
        s = np.clip(r_start * hop - hop // 2, 0, n)
        e = np.clip(r_end * hop - hop // 2, 0, n)
    return s.astype(np.intp), e.astype(np.intp), noisy


def _voiced_frame_centres(
    x: F64,
    rate: int,
    starts: npt.NDArray[np.intp] | None = None,
    ends: npt.NDArray[np.intp] | None = None,
    fast: bool = False,
) -> npt.NDArray[np.intp]:
    """Centres (sample indices at ``rate``, ascending) of the voiced analysis frames; with
    ``starts`` and ``ends`` (ascending, disjoint regions), only of the frames centred in
    them (the others are not analysed). ``fast`` (long signals): the shortest FFT that
    holds the autocorrelation, in float32 throughout (the same test, other roundings)."""
    import scipy.fft
    from scipy.signal import butter, sosfiltfilt

    if x.shape[0] <= 27:  # sosfiltfilt needs some padding room
        return np.zeros(0, dtype=np.intp)
    lo_hz, hi_hz = _VOICING_BAND_HZ
    hi_hz = min(hi_hz, 0.45 * rate)
    sos = butter(4, [lo_hz, hi_hz], btype="bandpass", fs=rate, output="sos")
    # The band ends at 1 kHz: 8 kHz is plenty, and half the work of 16 kHz.
    step = max(1, rate // _VOICING_RATE)
    vrate = rate / step
    if fast and starts is not None and ends is not None and starts.size:
        # Only around the regions (their frames are all that is analysed), far enough out
        # that the filter has settled: the stretches between them are never filtered.
        y = np.zeros((x.shape[0] + step - 1) // step)
        pad = round(_VOICING_SPAN_PAD_MS * rate / 1000)
        lo = np.maximum(0, starts - pad) // step * step
        hi = np.minimum(x.shape[0], ends + pad)
        joined = np.concatenate(([True], lo[1:] > hi[:-1]))
        span_lo = lo[joined]
        span_hi = np.maximum.reduceat(hi, np.flatnonzero(joined))
        for a, b in zip(span_lo.tolist(), span_hi.tolist(), strict=True):
            if b - a > 27:  # sosfiltfilt needs some padding room
                part = sosfiltfilt(sos, x[a:b])[::step]
                y[a // step : a // step + part.shape[0]] = part
    else:
        y = np.asarray(sosfiltfilt(sos, x), dtype=np.float64)[::step]
    size = round(_VOICING_WINDOW_MS * vrate / 1000)
    hop = round(_VOICING_HOP_MS * vrate / 1000)
    if y.shape[0] < size:
        return np.zeros(0, dtype=np.intp)
    count = 1 + (y.shape[0] - size) // hop
    frames = np.lib.stride_tricks.sliding_window_view(y, size)[::hop][:count]
    nfft = 2 * size if fast else 1 << (2 * size - 1).bit_length()
    lag_lo = max(1, int(vrate / _PITCH_RANGE_HZ[1]))
    lag_hi = min(size - 1, math.ceil(vrate / _PITCH_RANGE_HZ[0]))
    lags = np.arange(lag_lo, lag_hi)
    unbias = size / (size - lags)  # undo the taper of the biased autocorrelation
    unbias32 = unbias.astype(np.float32)
    centres = (np.arange(count) * hop + size // 2) * step
    todo = np.arange(count)
    if starts is not None and ends is not None:
        inside = np.searchsorted(ends, centres, side="right") < np.searchsorted(
            starts, centres, side="right"
        )
        todo = todo[inside]
    voiced = np.zeros(count, dtype=bool)
    for b0 in range(0, todo.size, _BLOCK):
        pick = todo[b0 : b0 + _BLOCK]
        fr = frames[pick]
        fr = (fr - fr.mean(axis=1, keepdims=True)).astype(np.float32)
        spec = scipy.fft.rfft(fr, nfft, axis=1)
        ac = scipy.fft.irfft(spec.real**2 + spec.imag**2, nfft, axis=1)
        ac0 = ac[:, 0].astype(np.float64)
        ok = ac0 > 1e-12 * size
        if fast:
            peak = (ac[:, lag_lo:lag_hi] * unbias32).max(axis=1)
            voiced[pick] = ok & (peak > _VOICED * ac0)
            continue
        r = ac[:, lag_lo:lag_hi] * unbias / np.where(ok, ac0, 1.0)[:, None]
        voiced[pick] = ok & (r.max(axis=1) > _VOICED)
    return centres[voiced].astype(np.intp)


def _silent_runs(x: F32, rate: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Runs of digital silence (|x| <= one 16-bit step) at least _SILENT_RUN_MS long."""
    quiet = np.abs(x) <= LSB * 1.0001
    starts, ends = _runs(quiet)
    long_ = (ends - starts) >= max(1, round(_SILENT_RUN_MS * rate / 1000))
    return starts[long_], ends[long_]


def _snap_to_digital_silence(x: F32, rate: int, s: int, e: int) -> tuple[int, int]:
    """Move segment edges next to digital silence onto the exact first/last sounding sample.

    The spectral frames place an edge to a few ms; where the sound runs into digital
    silence (a cut, a synthesized clip, padding) the boundary is known exactly.
    """
    reach = round((_FRAME_MS / 2 + _HOP_MS) * rate / 1000)  # how far the frames smear
    n = x.shape[0]
    lo, hi = max(0, s - round(_SNAP_START_MS * rate / 1000)), min(n, s + reach)
    starts, ends = _silent_runs(x[lo:hi], rate)
    if ends.size:
        s_new = lo + int(ends[-1])
        if s_new < e:
            s = s_new
    lo, hi = max(s, e - reach), min(n, e + round(_SNAP_END_MS * rate / 1000))
    starts, ends = _silent_runs(x[lo:hi], rate)
    if starts.size:
        e_new = lo + int(starts[0])
        if e_new > s:
            e = e_new
    return s, e


def _merge(segs: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in segs:
        if out and a - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------

_memo: dict[tuple[str, int | None], SpeechInfo] = {}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/voiceaudit`` (or ``~/.cache/voiceaudit``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voiceaudit"


def _cache_file(digest: str, rate: int | None) -> Path:
    tag = "hdr" if rate is None else str(rate)
    return cache_dir() / "speech" / f"v{DETECTOR_VERSION}" / f"{digest}-{tag}.json"


def speech_info_cached(path: str | os.PathLike[str], *, rate: int | None = None) -> SpeechInfo:
    """:func:`detect_speech` of :func:`read_audio` ``(path, rate=rate)``, computed once per
    file content (sha256) and ``rate``: kept in this process and on disk under
    :func:`cache_dir`, invalidated by :data:`DETECTOR_VERSION`. A cache that cannot be
    read or written is ignored. A caller that must not take a headerless file for PCM
    reads it with ``read_audio(…, guess_pcm=False)`` first (a cached result is not
    decoded again).
    """
    p = Path(path)
    data = _read_bytes(p)
    digest = hashlib.sha256(data).hexdigest()
    key = (digest, rate)
    hit = _memo.get(key)
    if hit is not None:
        return hit
    cf = _cache_file(digest, rate)
    info = _load_cached(cf, digest)
    if info is None:
        info = detect_speech(_decode(data, p, rate))
        _store_cached(cf, digest, info)
    _memo[key] = info
    return info


def _load_cached(cf: Path, digest: str) -> SpeechInfo | None:
    try:
        d = json.loads(cf.read_text(encoding="utf-8"))
        if d.get("detector_version") != DETECTOR_VERSION or d.get("sha256") != digest:
            return None
        return SpeechInfo.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _store_cached(cf: Path, digest: str, info: SpeechInfo) -> None:
    d = {"detector_version": DETECTOR_VERSION, "sha256": digest, **info.to_dict()}
    try:
        cf.parent.mkdir(parents=True, exist_ok=True)
        tmp = cf.with_name(f".{cf.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(d), encoding="utf-8")
        os.replace(tmp, cf)
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# First audible sample of received audio
# --------------------------------------------------------------------------------------

_AUDIBLE_WINDOW_MS = 5.0
_AUDIBLE_DBFS = -50.0  # a 5 ms window with an RMS above this is audible ...
#: A steady level above this (from the first sample, no silence anywhere) is sound, not noise.
_NOISE_CEILING_DBFS = -35.0
_AUDIBLE_OVER_NOISE = 4.0  # ... if it is also 4x (12 dB) the RMS of the noise before it
_NOISE_LOOKBACK_MS = (100.0, 25.0)  # the local noise peak is measured in this stretch
_QUIET_RUN_MS = 2.0  # the onset follows the last run this long at the noise level
_NEAR_SILENT = 4.0  # up to this many 16-bit steps is dither, not sound


def first_audible(
    samples: npt.NDArray[np.float32], rate: int, *, threshold: float | None = None
) -> int | None:
    """Index of the first audible sample of received audio, or None when it is silent.

    Coarse step: the first 5 ms window whose RMS is above ``threshold`` (linear, full scale
    1.0). By default that is -50 dBFS, raised to 12 dB over the noise when the audio before
    that window is noise rather than digital silence (the median RMS of its windows; when
    the sound starts at once and the buffer holds no digital silence, the 10th percentile
    of the whole buffer).

    Fine step: the noise peak is the largest sample 100 to 25 ms before that window (or,
    with less room, of the digital silence or dither just before it; never below one
    16-bit step). The onset is the first sample above the noise peak after the last run
    of at least 2 ms at or below it. Over digital silence or dither that is the exact
    sample the sound rises out of, wherever the sound sits in the buffer; over a noise
    floor it is where the sound rises above the noise's peaks.
    """
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    x = np.abs(np.asarray(samples, dtype=np.float64))
    if x.ndim != 1:
        raise ValueError("first_audible takes mono (1-D) samples")
    n = x.shape[0]
    if n == 0:
        return None
    if threshold is not None and not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    w = min(n, max(1, round(_AUDIBLE_WINDOW_MS * rate / 1000)))
    run = max(1, round(_QUIET_RUN_MS * rate / 1000))
    c = np.concatenate(([0.0], np.cumsum(x * x)))
    ms = (c[w:] - c[:-w]) / w  # mean square of the window starting at each sample
    level = 10.0 ** (_AUDIBLE_DBFS / 20.0) if threshold is None else float(threshold)
    above = np.flatnonzero(ms > level * level)
    if above.size == 0:
        return None
    k0 = int(above[0])
    noise_rms = 0.0
    if threshold is None:
        lead = ms[: max(0, k0 - w)]  # windows wholly before the candidate
        lead = lead[lead > LSB * LSB]  # digital silence is no noise floor
        if lead.size:
            noise_rms = math.sqrt(float(np.median(lead)))
        elif _silent_runs(np.asarray(samples, dtype=np.float32), rate)[0].size == 0:
            # Sound from (almost) the first sample and no digital silence anywhere: the
            # buffer may be noise throughout, and its quiet parts tell how loud that noise is.
            sounding = ms[ms > LSB * LSB]
            noise_rms = math.sqrt(float(np.percentile(sounding, 10.0)))
            if noise_rms > 10.0 ** (_NOISE_CEILING_DBFS / 20.0):
                # Too loud to be a noise floor: the reply is sound from its first sample.
                noise_rms = 0.0
        if noise_rms * _AUDIBLE_OVER_NOISE > level:
            level = noise_rms * _AUDIBLE_OVER_NOISE
            above = np.flatnonzero(ms > level * level)
            if above.size == 0:
                return None
            k0 = int(above[0])
    anchor = k0 + int(np.argmax(x[k0 : k0 + w] > math.sqrt(float(ms[k0])) * 0.999))
    far = round(_NOISE_LOOKBACK_MS[0] * rate / 1000)
    near = round(_NOISE_LOOKBACK_MS[1] * rate / 1000)
    p0, p1 = max(0, k0 - far), max(0, k0 - near)
    if p1 - p0 >= run:
        noise = float(x[p0:p1].max())
    else:  # no room for a look back: near-silence before it, or the noise estimate
        before = x[:anchor]
        qs, qe = _runs(before <= _NEAR_SILENT * LSB)
        long_ = (qe - qs) >= run
        if long_.any():  # digital silence or dither: its own peak is the noise
            noise = max(float(before[a:b].max()) for a, b in zip(qs[long_], qe[long_], strict=True))
        else:
            noise = _AUDIBLE_OVER_NOISE * noise_rms
    noise = max(noise, LSB * 1.0001)  # one 16-bit step is silence, as in detect_speech
    loud = x[p1 : anchor + 1] > noise
    if not loud[-1]:  # a louder burst in the look-back than at the onset: keep the anchor
        return anchor
    qs, qe = _runs(~loud)
    ends = qe[(qe - qs) >= run]
    start = int(ends[-1]) if ends.size else 0
    return p1 + start + int(np.argmax(loud[start:]))


# --------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------


def inspect_audio(path: str | os.PathLike[str], *, rate: int | None = None) -> dict[str, object]:
    """What the probe will take as speech in ``path``, in milliseconds (JSON-ready)."""
    audio = read_audio(path, rate=rate)
    info = detect_speech(audio)
    r = audio.rate

    def ms(i: int) -> float:
        return round(i * 1000.0 / r, 3)

    return {
        "path": str(path),
        "sample_rate": r,
        "channels": audio.channels,
        "duration_ms": info.duration_ms,
        "segments": [[ms(a), ms(b)] for a, b in info.segments],
        "speech_start_ms": info.speech_start_ms,
        "speech_end_ms": info.speech_end_ms,
        "leading_silence_ms": info.leading_silence_ms,
    }
