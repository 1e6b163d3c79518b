"""Call recordings read back as traces: latency from the audio of a recorded call alone.

A two-channel recording of a call (a stereo file, one channel per side, or two mono
tracks) becomes a trace in the voiceaudit vocabulary (docs/trace-format.md), so every
report format, statistic, finding, ``report A B`` and ``gate`` work on it unchanged:

- each caller turn is a turn (``turn.start`` at its first speech sample, ``input.speech_end``
  at its last), the agent's answer its reply (``reply.first_byte`` and ``reply.audible`` at
  the agent's first audible sample, ``reply.end`` at its last), ``turn.end`` with
  voice-to-voice = **response latency**;
- agent speech before the caller's first turn is the greeting (``greeting.wait`` at the
  recording's start or the answer time given, ``greeting.audible``, ``greeting.end``);
- the caller speaking over the agent is a barge-in (``reply.stop`` on the interrupted
  turn: how long the agent kept talking), the agent starting inside a caller pause after
  which the caller resumes within :data:`CUT_IN_RESUME_MS` a cut-in (``reply.cut_in``);
- what has no probe equivalent is named ``recording.*`` (``recording.dead_air``,
  ``recording.long_wait``, ``recording.talk_over``, ``recording.echo``,
  ``recording.detectors``) and, for the figures a reader should see, a ``turn.note``.

Speech detection (``_Analysis.detect_segments``, the one place the detector is chosen):
per 10 ms frame, the energy of the frame with its own mean removed against the channel's
noise floor, with hysteresis (:func:`energy_segments`); segments closer than
:data:`MERGE_MS` merge. On a quiet channel each edge is then refined to the sample by
:func:`voiceaudit.audio.first_audible` (the probe's onset detector; run backwards for an
end); a noisy channel goes to the project's noise-robust detector
(:func:`voiceaudit.audio.speech_segments`), read block by block. The background's DC
offset is removed first. A second detector (webrtcvad) checks
every caller speech end and agent onset a figure rests on; a turn where they disagree by
more than :data:`DISAGREE_MS` (or, for sound webrtcvad does not call speech,
:data:`DISAGREE_UNVOICED_MS`) is discarded with the reason (``turn.end`` ``ok: false``,
``failure: discarded``): it is counted and shown, never given a figure.

Echo (the agent's voice leaking into the caller's track) is found by cross-correlating
the two channels over the agent's speech (delay and gain); the caller's frames are then
speech only well above the echo the agent's channel predicts, and the echo is subtracted
before an edge is refined.

Speed and memory: the file is streamed in blocks (:data:`BLOCK_S`) for the frame
energies; the later reads (the noise-robust detector's blocks, each edge's surroundings)
come from a cache of decoded blocks (:data:`CACHE_BLOCK_S` each, at most :data:`CACHE_S`
seconds). The two channels are analysed side by side in :data:`WORKERS` threads (numpy,
the FFTs and libsndfile release the GIL; each thread keeps OpenBLAS to one thread), which
read each block of the file once for both. Memory grows with the number of 10 ms frames
(a few tens of bytes a frame), not with the samples; bench/recording_speed.py measures it.

Errors are :class:`~voiceaudit.errors.InputError` (exit 3, one line naming the file) or
:class:`~voiceaudit.errors.NoDataError` (exit 5: no caller turn in the recording). An odd
but usable file (clipping, a DC offset, channels that look swapped, a truncated WAV)
gives a trace with a warning. docs/recordings.md is the user's guide.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from voiceaudit import __version__
from voiceaudit.audio import LSB, first_audible, resample
from voiceaudit.clock import Anchor
from voiceaudit.errors import AudioError, InputError, NoDataError, UsageError
from voiceaudit.model import SCHEMA, End, Event, Header
from voiceaudit.trace_io import Trace
from voiceaudit.wavinfo import CALL_LAYOUT, read_info

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Suffixes read as recordings (anything libsndfile reads; these are the documented ones).
SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg", ".oga")

# -- documented thresholds (docs/recordings.md) -----------------------------------------
FRAME_MS = 10  #: analysis frame
BLOCK_S = 30  #: seconds read at a time
CACHE_BLOCK_S = 10  #: later reads: the file is decoded in blocks this long ...
CACHE_S = 320  #: ... and this many seconds of them are kept (both channels, float32)
WORKERS = 2  #: threads: the two channels' passes and speech detection run side by side
EDGE_DB = 6.0  #: a speech region extends while a frame is this far above the noise floor ...
CORE_DB = 15.0  #: ... and counts if it reaches this far above it ...
MIN_CORE_MS = 40  #: ... for this long
MIN_LEVEL_DBFS = -55.0  #: frames quieter than this are never speech
MERGE_MS = 300  #: pauses shorter than this do not split a segment
DEAD_AIR_MS = 1000  #: a silence inside a reply at least this long is dead air
LONG_WAIT_MS = 2000  #: a response latency at least this long is a long wait
CUT_IN_RESUME_MS = 1000  #: agent onset in a caller pause, caller resumes within this: cut-in
NOISY_RATE = 8000  #: the noise-robust detector reads a noisy channel at this rate (speed)
SPLIT_GAP_MS = 1000  #: noisy channels: a segment is split where energy hears nothing this long
NOISY_RANGE_DB = 40.0  #: speech less than this over the channel's floor: the noisy detector
DISAGREE_MS = 150  #: the energy edge may miss this much of what webrtcvad calls speech ...
DISAGREE_UNVOICED_MS = 300  #: ... and hold this much sound it does not (breath, consonant)
SWAPPED_OPENING_MS = 1000  #: the caller's channel opening the call this long: looks swapped
STOPPED_MS = 2000  #: a barged-in agent that stopped within this counts as stopped
ECHO_MAX_DELAY_MS = 500  #: echo searched up to this delay
ECHO_MIN_CORRELATION = 0.5  #: normalised correlation that says the caller's track has echo
ECHO_MARGIN_DB = 10.0  #: caller speech must be this far above the predicted echo
CLIP_FRACTION = 0.001  #: more samples than this at full scale: the channel clips
DC_OFFSET = 0.01  #: a channel mean above this (full scale 1.0) is a DC offset (warned)
SILENT_DBFS = -70.0  #: a channel whose loudest frame is quieter than this is silent
_REFINE_BEFORE_MS = 150
_REFINE_AFTER_MS = 60
_VAD_WINDOW_MS = 400
VAD_MODE = 3  #: webrtcvad aggressiveness (0-3) of the second detector
VAD_NOISE_MAX = 0.2  #: webrtcvad calling more of a channel's pauses speech: not used there
_VAD_RATES = (8000, 16000, 32000, 48000)

_NS = 1_000_000_000


def _ns(samples: int, rate: int) -> int:
    return (samples * _NS + rate // 2) // rate


# --------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Where the two sides' samples come from: one stereo file, or two mono files."""

    caller_path: Path
    agent_path: Path | None  # None: stereo file
    caller_channel: int  # stereo: the caller's channel index
    rate: int = 0
    frames: int = 0
    warnings: list[str] = field(default_factory=list)
    nonfinite: int = 0
    #: ``voiceaudit <version>`` when the file says it is a call recording voiceaudit wrote
    #: (its INFO chunk, :data:`voiceaudit.wavinfo.CALL_LAYOUT`): the caller is on the left
    written_by: str | None = None
    #: the files' samples cannot be NaN or infinite (integer PCM, mu-law, A-law)
    _finite_only: bool = False
    #: every file is 16-bit PCM: read as int16 and scaled here (exactly libsndfile's float
    #: conversion, x / 32768, in half the time)
    _pcm16: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cache: OrderedDict[int, tuple[F32, F32]] = field(default_factory=OrderedDict, repr=False)
    _files: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        if self.agent_path is None:
            return str(self.caller_path)
        return f"{self.caller_path} + {self.agent_path}"

    def blocks(self, block: int) -> Iterator[tuple[F32, F32]]:
        """(caller, agent) float32 blocks of ``block`` frames, in order (samples that are
        not numbers, in a float file, become 0 and are counted in :attr:`nonfinite`)."""
        try:
            for c, a in self._blocks(block):
                if self._finite_only:
                    yield c, a
                else:
                    yield self._finite(c), self._finite(a)
        except (RuntimeError, OSError, ValueError) as exc:
            raise AudioError(
                f"cannot be read to its end ({_one_line(exc)})", path=self.label
            ) from None

    def _finite(self, x: F32) -> F32:
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        return x

    def _blocks(self, block: int) -> Iterator[tuple[F32, F32]]:
        dtype = "int16" if self._pcm16 else "float32"
        if self.agent_path is None:
            with _open_sf(self.caller_path) as f:
                for b in f.blocks(blocksize=block, dtype=dtype, always_2d=True):
                    yield _f32(b[:, self.caller_channel]), _f32(b[:, 1 - self.caller_channel])
            return
        with _open_sf(self.caller_path) as fc, _open_sf(self.agent_path) as fa:
            while True:
                c = _f32(fc.read(block, dtype=dtype, always_2d=True)[:, 0])
                a = _f32(fa.read(block, dtype=dtype, always_2d=True)[:, 0])
                if c.shape[0] == 0 and a.shape[0] == 0:
                    return
                n = max(c.shape[0], a.shape[0])
                yield _pad(c, n), _pad(a, n)

    def read(self, start: int, stop: int) -> tuple[F32, F32]:
        """(caller, agent) samples ``[start, stop)`` clipped to the file (``start`` below 0
        reads from 0; zeros beyond a shorter track's end), as new arrays. Served from a
        small cache of decoded blocks (:data:`CACHE_BLOCK_S` each, at most
        :data:`CACHE_S` seconds of audio), shared by the threads that read the two
        channels: each block of the file is decoded about once per pass."""
        start = max(0, start)
        stop = max(start, min(stop, self.frames))
        cs: list[F32] = []
        as_: list[F32] = []
        size = self._cache_block()
        for j in range(start // size, -(-stop // size)):
            c, a = self._cached(j)
            lo, hi = max(start - j * size, 0), min(stop - j * size, c.shape[0])
            cs.append(c[lo:hi])
            as_.append(a[lo:hi])
        if not cs:
            z = np.zeros(0, dtype=np.float32)
            return z, z.copy()
        return np.concatenate(cs), np.concatenate(as_)

    def _cache_block(self) -> int:
        return max(1, self.rate * CACHE_BLOCK_S)

    def _cached(self, j: int) -> tuple[F32, F32]:
        with self._lock:
            hit = self._cache.get(j)
            if hit is not None:
                self._cache.move_to_end(j)
                return hit
            size = self._cache_block()
            start = j * size
            n = max(0, min(self.frames, start + size) - start)
            try:
                c, a = self._read(start, start + n)
            except (RuntimeError, OSError, ValueError) as exc:
                raise AudioError(f"cannot be read ({_one_line(exc)})", path=self.label) from None
            if not self._finite_only:
                c = np.nan_to_num(c, posinf=0.0, neginf=0.0)
                a = np.nan_to_num(a, posinf=0.0, neginf=0.0)
            self._cache[j] = (c, a)
            while len(self._cache) > max(2, CACHE_S // CACHE_BLOCK_S):
                self._cache.popitem(last=False)
            return c, a

    def _handle(self, p: Path) -> Any:
        """An open SoundFile of ``p``, kept for the source's reads (under the lock)."""
        f = self._files.get(p)
        if f is None:
            f = _open_sf(p)
            self._files[p] = f
        return f

    def close(self) -> None:
        """Close the files the reads keep open and drop the cache."""
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
            self._cache.clear()

    def _read(self, start: int, stop: int) -> tuple[F32, F32]:
        n = stop - start
        dtype = "int16" if self._pcm16 else "float32"
        if self.agent_path is None:
            f = self._handle(self.caller_path)
            f.seek(start)
            b = f.read(n, dtype=dtype, always_2d=True)
            c, a = _f32(b[:, self.caller_channel]), _f32(b[:, 1 - self.caller_channel])
            return _pad(c, n), _pad(a, n)
        out = []
        for p in (self.caller_path, self.agent_path):
            f = self._handle(p)
            if start < f.frames:
                f.seek(start)
                x = _f32(f.read(n, dtype=dtype, always_2d=True)[:, 0])
            else:
                x = np.zeros(0, dtype=np.float32)
            out.append(_pad(x, n))
        return out[0], out[1]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _f32(x: npt.NDArray[Any]) -> F32:
    """float32 samples in [-1, 1): int16 scaled by 1/32768 (as libsndfile does), else
    ``x`` itself."""
    if x.dtype != np.int16:
        return x
    y = x.astype(np.float32)
    y *= np.float32(1.0 / 32768.0)
    return y


def _pad(x: F32, n: int) -> F32:
    if x.shape[0] >= n:
        return np.ascontiguousarray(x[:n])
    return np.concatenate([x, np.zeros(n - x.shape[0], dtype=np.float32)])


def _open_sf(p: Path) -> Any:
    import soundfile as sf

    try:
        return sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        msg = str(exc).split(":")[-1].strip() or "unreadable"
        raise AudioError(f"not a readable recording ({msg})", path=str(p)) from None


def _wav_truncation(p: Path) -> str | None:
    """A warning when a WAV's header claims more data than the file holds."""
    try:
        with p.open("rb") as f:
            head = f.read(4096)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, n = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            held = size - (pos + 8)
            if n not in (0, 0xFFFFFFFF) and held < n:
                return (
                    f"truncated: the header announces {n} bytes of audio, the file holds "
                    f"{held}; analysed what is there"
                )
            return None
        pos += 8 + n + (n & 1)
    return None


#: subtypes whose samples are always finite (integers, companded integers)
_FINITE_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW")


def _subtype(p: Path) -> str:
    """libsndfile's name of ``p``'s sample encoding (``PCM_16``, ``ULAW``, ``FLOAT``...)."""
    with _open_sf(p) as f:
        return str(f.subtype)


def _set_encoding(src: _Source, *paths: Path) -> None:
    """How the source's samples are read: whether they can hold NaN or infinities (float
    files: they are checked), whether all are 16-bit PCM (read as int16)."""
    subtypes = [_subtype(p) for p in paths]
    src._finite_only = all(t in _FINITE_SUBTYPES for t in subtypes)
    src._pcm16 = all(t == "PCM_16" for t in subtypes)


def _probe_file(p: Path) -> tuple[int, int, int]:
    """(rate, channels, frames) of an audio file, or an AudioError in one line."""
    if not p.exists():
        raise AudioError("no such file", path=str(p))
    if p.is_dir():
        raise AudioError("is a directory, not a recording", path=str(p))
    if p.stat().st_size == 0:
        raise AudioError("empty file", path=str(p))
    with _open_sf(p) as f:
        rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    if rate < 8000:
        raise AudioError(f"sample rate {rate} Hz is below 8 kHz: not a call recording", path=str(p))
    if frames <= 0:
        raise AudioError("holds no audio", path=str(p))
    return rate, channels, frames


def open_source(
    path: str | os.PathLike[str] | None = None,
    *,
    caller: str = "left",
    caller_track: str | os.PathLike[str] | None = None,
    agent_track: str | os.PathLike[str] | None = None,
) -> _Source:
    """Check a recording (a stereo ``path``, or ``caller_track`` and ``agent_track``) and
    say where each side's samples are. Raises InputError/UsageError in one line."""
    if caller not in ("left", "right"):
        raise UsageError(f"--caller {caller!r}: use left or right")
    if path is not None:
        p = Path(path)
        rate, channels, frames = _probe_file(p)
        if channels == 1:
            raise InputError(
                "mono recording: a call needs two channels (caller and agent)",
                path=str(p),
                hint="give a stereo file, or two mono tracks with "
                "--caller-track A.wav --agent-track B.wav",
            )
        if channels != 2:
            raise InputError(f"{channels} channels: a call recording has two", path=str(p))
        src = _Source(p, None, 0 if caller == "left" else 1, rate, frames)
        _set_encoding(src, p)
        info = read_info(p)
        if info.get("ICMT") == CALL_LAYOUT:
            src.written_by = info.get("ISFT") or "voiceaudit"
            if caller != "left":
                src.warnings.append(
                    f"{src.written_by} wrote this call with the caller on the left; "
                    "analysed with --caller right, as asked"
                )
        w = _wav_truncation(p)
        if w:
            src.warnings.append(w)
        return src
    if caller_track is None or agent_track is None:
        raise UsageError("give a stereo recording, or both --caller-track and --agent-track")
    pc, pa = Path(caller_track), Path(agent_track)
    rc, cc, fc = _probe_file(pc)
    ra, ca, fa = _probe_file(pa)
    for p, ch in ((pc, cc), (pa, ca)):
        if ch != 1:
            raise InputError(f"{ch} channels: a track must be mono", path=str(p))
    if rc != ra:
        raise InputError(
            f"the tracks differ in sample rate ({rc} Hz and {ra} Hz at {pa})", path=str(pc)
        )
    src = _Source(pc, pa, 0, rc, max(fc, fa))
    _set_encoding(src, pc, pa)
    if abs(fc - fa) > rc:
        src.warnings.append(
            f"the tracks differ in length by {abs(fc - fa) / rc:.1f} s; the shorter one is "
            "taken as silent after its end"
        )
    for p in (pc, pa):
        w = _wav_truncation(p)
        if w:
            src.warnings.append(f"{p.name}: {w}")
    return src


# --------------------------------------------------------------------------------------
# Pass 1: frame energies, streamed
# --------------------------------------------------------------------------------------


@dataclass
class _Frames:
    """Per 10 ms frame and channel: energy with the frame's own mean removed (float64)."""

    caller: F64
    agent: F64
    hop: int  # samples per frame
    clipped: tuple[int, int]
    mean: tuple[float, float]
    samples: int
    frame_mean: tuple[F32, F32]  # per frame and channel: the frame's mean


def _frame_energies(src: _Source, pool: ThreadPoolExecutor | None = None) -> _Frames:
    """Pass 1 over the file: per frame and channel the energy and mean, and per channel
    the clipped samples and the mean (the two channels in ``pool``'s threads, if given)."""
    rate = src.rate
    hop = rate * FRAME_MS // 1000
    block = hop * (rate * BLOCK_S // hop)
    outs: tuple[list[F64], list[F64]] = ([], [])
    means: tuple[list[F32], list[F32]] = ([], [])
    clip = [0, 0]
    sums = [0.0, 0.0]
    total = 0
    carry = [np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)]
    for c, a in src.blocks(block):
        total += c.shape[0]
        if pool is None:
            stats = [_frame_stats(x, carry[i], hop) for i, x in enumerate((c, a))]
        else:
            jobs = [pool.submit(_frame_stats, x, carry[i], hop) for i, x in enumerate((c, a))]
            stats = [j.result() for j in jobs]
        for i, (energy, mean, clipped, total_i, rest) in enumerate(stats):
            outs[i].append(energy)
            means[i].append(mean)
            clip[i] += clipped
            sums[i] += total_i
            carry[i] = rest
    for x, out, m in ((carry[0], outs[0], means[0]), (carry[1], outs[1], means[1])):
        if x.shape[0]:
            out.append(np.array([float(np.var(x.astype(np.float64)))]))
            m.append(np.array([float(np.mean(x))], dtype=np.float32))
    if total == 0:
        raise AudioError("holds no audio", path=src.label)
    src.frames = total
    return _Frames(
        np.concatenate(outs[0]) if outs[0] else np.zeros(0),
        np.concatenate(outs[1]) if outs[1] else np.zeros(0),
        hop,
        (clip[0], clip[1]),
        (sums[0] / total, sums[1] / total),
        total,
        (_cat32(means[0]), _cat32(means[1])),
    )


def _frame_stats(x: F32, carry: F32, hop: int) -> tuple[F64, F32, int, float, F32]:
    """One channel's block: (frame energies, frame means, clipped samples, sum of the
    samples, the samples left over for the next block)."""
    clipped = int(np.count_nonzero(np.abs(x) >= 0.999))
    total = float(x.sum(dtype=np.float64))
    if carry.shape[0]:
        x = np.concatenate([carry, x])
    k = x.shape[0] // hop
    fr = x[: k * hop].reshape(k, hop).astype(np.float64)
    # fr.var(axis=1) and fr.mean(axis=1), the same operations, the sum done once
    mean = np.add.reduce(fr, axis=1, keepdims=True) / hop
    fr -= mean
    np.multiply(fr, fr, out=fr)
    energy: F64 = np.add.reduce(fr, axis=1) / hop
    return energy, mean[:, 0].astype(np.float32), clipped, total, x[k * hop :]


def _cat32(xs: list[F32]) -> F32:
    return np.concatenate(xs) if xs else np.zeros(0, dtype=np.float32)


def background_dc(energy: F64, frame_mean: F32) -> float:
    """The DC offset of a channel's background: the median mean of its quietest tenth of
    frames (0 over digital silence; speech's own small DC does not count)."""
    if energy.size == 0:
        return 0.0
    quiet = energy <= np.percentile(energy, 10.0)
    return float(np.median(frame_mean[quiet]))


# --------------------------------------------------------------------------------------
# Speech detection
# --------------------------------------------------------------------------------------


def _db(e: F64) -> F64:
    out: F64 = 10.0 * np.log10(e + 1e-20)
    return out


def _runs(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def noise_floor_db(energy: F64) -> float:
    """The channel's noise floor: the 10th percentile of its frames' energy (dB; -120
    for digital silence)."""
    if energy.size == 0:
        return -120.0
    return max(-120.0, float(np.percentile(_db(energy), 10.0)))


def _rms(db: float) -> float:
    return 0.0 if db <= -100.0 else 10.0 ** (db / 20.0)


def energy_segments(
    energy: F64, hop: int, rate: int, *, floor_db: float | None = None, mask: Any = None
) -> list[tuple[int, int]]:
    """Speech ``[start, end)`` in samples from per-frame energies (the one place the
    recording reader's speech detector lives; frame-accurate, refined later).

    A region runs while frames are :data:`EDGE_DB` over the noise floor and counts when
    :data:`MIN_CORE_MS` of it is :data:`CORE_DB` over it (and over
    :data:`MIN_LEVEL_DBFS`); ``mask`` (bool per frame) vetoes frames (echo); regions
    closer than :data:`MERGE_MS` merge.
    """
    if energy.size == 0:
        return []
    db = _db(energy)
    floor = noise_floor_db(energy) if floor_db is None else floor_db
    edge = (db > floor + EDGE_DB) & (db > MIN_LEVEL_DBFS - 6.0)
    core = (db > floor + CORE_DB) & (db > MIN_LEVEL_DBFS)
    if mask is not None:
        edge &= mask
        core &= mask
    starts, ends = _runs(edge)
    cc = np.concatenate(([0], np.cumsum(core)))
    keep = (cc[ends] - cc[starts]) * FRAME_MS >= MIN_CORE_MS
    segs: list[tuple[int, int]] = []
    gap = MERGE_MS // FRAME_MS
    for s, e in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True):
        if segs and s - segs[-1][1] < gap:
            segs[-1] = (segs[-1][0], e)
        else:
            segs.append((s, e))
    return [(s * hop, e * hop) for s, e in segs]


def _refine(x: F32, rate: int, coarse: int, *, end: bool, noise_rms: float = 0.0) -> int | None:
    """The exact first (or, with ``end``, one past the last) audible sample of ``x`` near
    ``coarse`` (an index into ``x``): the probe's onset detector
    (:func:`~voiceaudit.audio.first_audible`; run backwards for an end), then back to the
    end of the last 2 ms run at the channel's noise level (:data:`NOISE_PEAK` times its
    RMS, at least one 16-bit step) before it: a quiet start of speech over digital
    silence belongs to the speech."""
    if end:
        lo = max(0, coarse - _REFINE_AFTER_MS * rate // 1000)
        hi = min(x.shape[0], coarse + _REFINE_BEFORE_MS * rate // 1000)
        k = _onset(np.ascontiguousarray(x[lo:hi][::-1]), rate, noise_rms)
        return None if k is None else hi - k
    lo = max(0, coarse - _REFINE_BEFORE_MS * rate // 1000)
    hi = min(x.shape[0], coarse + _REFINE_AFTER_MS * rate // 1000)
    k = _onset(np.ascontiguousarray(x[lo:hi]), rate, noise_rms)
    return None if k is None else lo + k


NOISE_PEAK = 3.5  #: samples up to this many noise RMS are the noise floor, not speech
_QUIET_RUN_MS = 2.0


def _onset(x: F32, rate: int, noise_rms: float) -> int | None:
    k = first_audible(x, rate)
    if k is None:
        return None
    thr = max(LSB * 1.0001, NOISE_PEAK * noise_rms)
    quiet = np.abs(x[:k]) <= thr
    starts, ends = _runs(quiet)
    long_ = (ends - starts) >= max(1, round(_QUIET_RUN_MS * rate / 1000))
    if long_.any():
        return int(ends[long_][-1])
    return k


def _vad_frames(x: F32, rate: int) -> tuple[npt.NDArray[np.bool_], int]:
    """webrtcvad's decision per 10 ms frame of ``x`` and the frame length in samples of
    ``x`` (the rates it does not take are resampled to 16 kHz)."""
    import webrtcvad

    vrate = rate if rate in _VAD_RATES else 16000
    y = x if vrate == rate else resample(np.ascontiguousarray(x), rate, vrate)
    y16 = (np.clip(y, -1.0, 1.0) * 32767.0).astype("<i2")
    step = vrate // 100
    vad = webrtcvad.Vad(VAD_MODE)
    n = y16.shape[0] // step
    voiced = np.array(
        [vad.is_speech(y16[i * step : (i + 1) * step].tobytes(), vrate) for i in range(n)],
        dtype=bool,
    )
    return voiced, rate // 100


def _vad_edge(x: F32, rate: int, at: int, *, end: bool) -> int | None:
    """The second detector (webrtcvad): the start (or, with ``end``, the end) of its
    voiced run nearest to sample ``at`` of ``x``; None when it hears no speech."""
    voiced, step = _vad_frames(x, rate)
    starts, ends = _runs(voiced)
    if starts.size == 0:
        return None
    gap = np.maximum(0, np.maximum(starts * step - at, at - ends * step))
    k = int(np.argmin(gap))
    return int(ends[k] * step) if end else int(starts[k] * step)


# --------------------------------------------------------------------------------------
# Echo
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Echo:
    """The agent's voice in the caller's track: ``caller ~ gain * agent(t - delay)``."""

    delay_samples: int
    gain: float
    correlation: float
    rate: int

    @property
    def delay_ms(self) -> float:
        return self.delay_samples * 1000.0 / self.rate

    @property
    def gain_db(self) -> float:
        return 20.0 * math.log10(max(self.gain, 1e-12))


def estimate_echo(caller: F32, agent: F32, rate: int) -> Echo | None:
    """Delay and gain of the agent's voice in the caller's track by cross-correlation over
    lags 0 to :data:`ECHO_MAX_DELAY_MS`; None below :data:`ECHO_MIN_CORRELATION`."""
    import scipy.fft

    n = caller.shape[0]
    maxlag = min(n - 1, ECHO_MAX_DELAY_MS * rate // 1000)
    if n < rate // 4 or maxlag <= 0:
        return None
    c = caller.astype(np.float64) - float(caller.mean())
    a = agent.astype(np.float64) - float(agent.mean())
    size = scipy.fft.next_fast_len(2 * n)
    xc = scipy.fft.irfft(scipy.fft.rfft(c, size) * np.conj(scipy.fft.rfft(a, size)), size)
    lags = xc[: maxlag + 1]
    ca = np.concatenate(([0.0], np.cumsum(a * a)))
    ea = ca[n - np.arange(maxlag + 1)]  # energy of a[: n - lag]
    cc = np.concatenate(([0.0], np.cumsum(c * c)))
    ec = cc[n] - cc[np.arange(maxlag + 1)]  # energy of c[lag:]
    rho = lags / np.sqrt(ea * ec + 1e-30)
    k = int(np.argmax(rho))
    if rho[k] < ECHO_MIN_CORRELATION or ea[k] <= 0:
        return None
    return Echo(k, float(lags[k] / ea[k]), float(rho[k]), rate)


def _find_echo(src: _Source, agent_segs: list[tuple[int, int]]) -> Echo | None:
    """The echo over up to five of the agent's longest segments (the median estimate)."""
    rate = src.rate
    picks = sorted(agent_segs, key=lambda s: s[0] - s[1])[:5]
    found: list[Echo] = []
    for s, e in picks:
        e = min(e, s + 4 * rate)
        c, a = src.read(s, e + ECHO_MAX_DELAY_MS * rate // 1000)
        echo = estimate_echo(c, a, rate)
        if echo is not None:
            found.append(echo)
    if len(found) * 2 < max(1, len(picks)):
        return None
    found.sort(key=lambda x: x.delay_samples)
    return found[len(found) // 2]


# --------------------------------------------------------------------------------------
# The call
# --------------------------------------------------------------------------------------


@dataclass
class _Turn:
    segs: list[tuple[int, int]]  # the caller's speech segments of the turn
    interrupts: int | None = None

    @property
    def start(self) -> int:
        return self.segs[0][0]

    @property
    def end(self) -> int:
        return self.segs[-1][1]


def _overlap(segs: Sequence[tuple[int, int]], t: int) -> tuple[int, int] | None:
    for s, e in segs:
        if s <= t < e:
            return (s, e)
    return None


def read_call(
    path: str | os.PathLike[str] | None = None,
    *,
    caller: str = "left",
    caller_track: str | os.PathLike[str] | None = None,
    agent_track: str | os.PathLike[str] | None = None,
    answer_at_s: float | None = None,
    path_label: str = "recording",
) -> Trace:
    """Read a two-channel call recording and return it as a trace (see the module doc).

    ``path``: a stereo file whose ``caller`` channel (``left`` or ``right``) is the
    caller; or ``caller_track`` and ``agent_track``, two mono files. ``answer_at_s``:
    when the call was answered, seconds into the recording (greeting latency is measured
    from it; default: the recording's start). Raises InputError (exit 3), NoDataError
    (exit 5) or UsageError (exit 2), each in one line.
    """
    if answer_at_s is not None and not (answer_at_s >= 0 and math.isfinite(answer_at_s)):
        raise UsageError(f"--answer-at {answer_at_s}: give seconds >= 0 into the recording")
    src = open_source(path, caller=caller, caller_track=caller_track, agent_track=agent_track)
    try:
        return _Analysis(src, caller, answer_at_s, path_label).trace()
    finally:
        src.close()


def _split_on_energy(
    segs: list[tuple[int, int]], coarse: list[tuple[int, int]], gap: int
) -> list[tuple[int, int]]:
    """Split each segment of the noise-robust detector where the energy detector hears
    nothing for ``gap`` samples or more inside it, and trim such a stretch off its start
    or end (a bridge over seconds of noise would make several turns one); the new edges
    are the energy detector's."""
    out: list[tuple[int, int]] = []
    for s, e in segs:
        inside = [(a, b) for a, b in coarse if b > s and a < e]
        if inside and inside[0][0] - s >= gap:  # seconds of noise taken in before it
            s = inside[0][0]
        if inside and e - inside[-1][1] >= gap:  # ... or after it
            e = inside[-1][1]
        cur = s
        for (_, b1), (a2, _) in itertools.pairwise(inside):
            if a2 - b1 >= gap:
                out.append((cur, b1))
                cur = a2
        out.append((cur, e))
    return out


_R = TypeVar("_R")


def _openblas_local_setters() -> tuple[Any, ...]:
    """``openblas_set_num_threads_local`` of each OpenBLAS this process has loaded (numpy's
    and scipy's wheels bundle one each; found in /proc/self/maps, so Linux only; none
    elsewhere or in OpenBLAS before 0.3.27)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return ()
    out = []
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        out.append(fn)
    return tuple(out)


def _one_blas_thread(fn: Callable[..., _R], *args: Any) -> _R:
    """``fn(*args)`` with OpenBLAS on one thread in the calling thread only: the two
    channels' detectors run side by side on the machine's cores, and a matrix product that
    also spread over every core would leave them spinning against each other (measured:
    a noisy hour at 16 kHz took 21 s of CPU instead of 16)."""
    for setter in _openblas_local_setters():
        setter(1)
    return fn(*args)


def _disagree(missed: int, rate: int) -> bool:
    """Whether the detectors disagree on an edge: ``missed`` is how many samples of what
    webrtcvad calls speech the energy edge leaves out (negative: sound it takes in that
    webrtcvad does not call speech, which unvoiced starts and ends have)."""
    if missed >= 0:
        return missed * 1000 > DISAGREE_MS * rate
    return -missed * 1000 > DISAGREE_UNVOICED_MS * rate


class _Channel:
    """One side of the call as a sliceable signal (what
    :func:`voiceaudit.audio.speech_segments` reads block by block)."""

    def __init__(self, analysis: _Analysis, who: str, rate: int) -> None:
        self.a = analysis
        self.who = who
        self.rate = rate  # the rate the signal is given at (the file's, or lower)
        self.n = analysis.src.frames * rate // analysis.rate

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice, /) -> F32:
        lo, hi, _ = index.indices(self.n)
        full = self.a.rate
        a, b = lo * full // self.rate, hi * full // self.rate
        x = self.a._caller_snip(a, b) if self.who == "caller" else self.a._agent_snip(a, b)
        if full == self.rate:
            return x
        return _pad(resample(x, full, self.rate), hi - lo)


class _Analysis:
    def __init__(self, src: _Source, caller: str, answer_at_s: float | None, label: str) -> None:
        self.src = src
        self.caller_name = caller if src.agent_path is None else "caller track"
        self.agent_name = (
            ("right" if caller == "left" else "left") if src.agent_path is None else "agent track"
        )
        self.answer_at_s = answer_at_s
        self.label = label
        self.rate = src.rate
        self.session = src.caller_path.name
        self.events: list[Event] = []
        self.warnings = list(src.warnings)
        self.echo: Echo | None = None
        self.disagree: dict[str, int] = {}
        self.vad_usable: dict[str, bool] = {}
        self.detector: dict[str, str] = {}
        self.vad_noise: dict[str, float | None] = {}

    # -- helpers -----------------------------------------------------------------------
    def t(self, sample: int) -> int:
        return _ns(sample, self.rate)

    def ev(
        self, turn: int | None, sample_or_ns: int, stage: str, name: str, attrs: dict[str, Any]
    ) -> None:
        self.events.append(Event(self.session, turn, sample_or_ns, "probe", stage, name, attrs))

    def _caller_snip(self, lo: int, hi: int) -> F32:
        """The caller's samples ``[lo, hi)``, DC and (when found) the echo removed."""
        c, _ = self.src.read(lo, hi)
        c = c - np.float32(self.mean[0])
        if self.echo is not None:
            d = self.echo.delay_samples
            _, a = self.src.read(max(0, lo - d), hi - d)
            a = np.concatenate([np.zeros(max(0, d - lo), dtype=np.float32), a])[: hi - lo]
            c = c - np.float32(self.echo.gain) * (_pad(a, hi - lo) - np.float32(self.mean[1]))
        return np.ascontiguousarray(c, dtype=np.float32)

    def _agent_snip(self, lo: int, hi: int) -> F32:
        _, a = self.src.read(lo, hi)
        return np.ascontiguousarray(a - np.float32(self.mean[1]), dtype=np.float32)

    def detect_segments(
        self, who: str, coarse: list[tuple[int, int]], energy: F64
    ) -> tuple[list[tuple[int, int]], list[tuple[int | None, int | None]]]:
        """A channel's speech segments, exact to the sample, and the second detector's
        edges for each (the one place the detector is chosen).

        A quiet channel (digital silence, or a floor :data:`NOISY_RANGE_DB` or more below
        its speech): the energy segments refined by the probe's onset detector. A noisy
        one: the project's noise-robust detector
        (:func:`voiceaudit.audio.speech_segments`, read block by block from the file, the
        DC and any echo removed), which costs more time.
        """
        floor = noise_floor_db(energy)
        loud = float(np.percentile(_db(energy), 95.0)) if energy.size else floor
        noisy = floor > -90.0 and loud - floor < NOISY_RANGE_DB
        self.detector[who] = "spectral" if noisy else "energy"
        if not noisy:
            return self._edges(coarse, who, _rms(floor))
        from voiceaudit.audio import speech_segments

        drate = min(self.rate, NOISY_RATE)
        ch = _Channel(self, who, drate)
        segs = [
            (s * self.rate // drate, e * self.rate // drate) for s, e in speech_segments(ch, drate)
        ]
        gap = SPLIT_GAP_MS * self.rate // 1000
        return self._edges(_split_on_energy(segs, coarse, gap), who, _rms(floor), refine=False)

    def _check_vad(self, segs: list[tuple[int, int]], who: str) -> None:
        """Whether the second detector can tell this channel's noise from speech: webrtcvad
        over up to 3 s of the channel's pauses (300 ms away from any speech) must call at
        most :data:`VAD_NOISE_MAX` of it speech."""
        rate = self.rate
        margin = 300 * rate // 1000
        bounds = [0, *(v for seg in segs for v in seg), self.src.frames]
        picks: list[F32] = []
        left = 3 * rate
        for a, b in zip(bounds[::2], bounds[1::2], strict=True):
            lo, hi = a + margin, min(b - margin, a + margin + left)
            if hi - lo >= rate // 5 and left > 0:
                c, ag = self.src.read(lo, hi)
                x = c if who == "caller" else ag
                picks.append(x - np.float32(self.mean[0 if who == "caller" else 1]))
                left -= hi - lo
        if not picks:
            self.vad_usable[who] = True
            self.vad_noise[who] = None
            return
        voiced = np.concatenate([_vad_frames(x, rate)[0] for x in picks])
        frac = float(voiced.mean()) if voiced.size else 0.0
        self.vad_noise[who] = round(frac, 3)
        self.vad_usable[who] = frac <= VAD_NOISE_MAX
        if not self.vad_usable[who]:
            self.warnings.append(
                f"the second detector (webrtcvad) calls {100 * frac:.0f} % of the {who}'s "
                f"pauses speech (noise): the {who}'s edges rest on the energy detector alone"
            )

    def _edges(
        self, segs: list[tuple[int, int]], who: str, noise: float, *, refine: bool = True
    ) -> tuple[list[tuple[int, int]], list[tuple[int | None, int | None]]]:
        """Refined segments, and webrtcvad's (start, end) for each; ``noise``: the
        channel's noise RMS."""
        rate = self.rate
        pad = (_REFINE_BEFORE_MS + _VAD_WINDOW_MS) * rate // 1000
        out: list[tuple[int, int]] = []
        vad: list[tuple[int | None, int | None]] = []
        snip = self._caller_snip if who == "caller" else self._agent_snip
        for s, e in segs:
            lo, hi = max(0, s - pad), min(self.src.frames, e + pad)
            x = snip(lo, hi)
            rs = _refine(x, rate, s - lo, end=False, noise_rms=noise) if refine else None
            re_ = _refine(x, rate, e - lo, end=True, noise_rms=noise) if refine else None
            s2 = s if rs is None else lo + rs
            e2 = e if re_ is None else lo + re_
            if e2 <= s2:
                s2, e2 = s, e
            out.append((s2, e2))
            w = _VAD_WINDOW_MS * rate // 1000
            a0, a1 = max(0, s2 - w - lo), min(x.shape[0], s2 + w - lo)
            b0, b1 = max(0, e2 - w - lo), min(x.shape[0], e2 + w - lo)
            if not self.vad_usable[who]:
                vad.append((None, None))
                continue
            vs = _vad_edge(x[a0:a1], rate, s2 - lo - a0, end=False)
            ve = _vad_edge(x[b0:b1], rate, e2 - lo - b0, end=True)
            vad.append((None if vs is None else lo + a0 + vs, None if ve is None else lo + b0 + ve))
        return out, vad

    # -- the analysis --------------------------------------------------------------------
    def trace(self) -> Trace:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            return self._trace_in(pool)

    def _trace_in(self, pool: ThreadPoolExecutor) -> Trace:
        src, rate = self.src, self.rate
        fr = _frame_energies(src, pool)
        # the background's offset is removed (a recorder's DC); the DC speech itself has
        # is not: taking it off would lift digital silence off zero and blur exact edges
        self.mean = (
            background_dc(fr.caller, fr.frame_mean[0]),
            background_dc(fr.agent, fr.frame_mean[1]),
        )
        if src.nonfinite:
            self.warnings.append(
                f"{src.nonfinite} samples are not numbers (NaN or infinite): taken as silence"
            )
        for i, name in ((0, self.caller_name), (1, self.agent_name)):
            who = "caller" if i == 0 else "agent"
            energy = fr.caller if i == 0 else fr.agent
            if energy.size == 0 or float(_db(energy).max()) < SILENT_DBFS:
                raise InputError(
                    f"the {who}'s channel ({name}) is silent: nothing to measure",
                    path=src.label,
                    hint="check --caller, or that the recording holds both sides",
                )
            if fr.clipped[i] > CLIP_FRACTION * fr.samples:
                self.warnings.append(
                    f"the {who}'s channel ({name}) clips: "
                    f"{100.0 * fr.clipped[i] / fr.samples:.2f} % of its samples at full "
                    "scale; edges may be off"
                )
            if abs(fr.mean[i]) > DC_OFFSET:
                self.warnings.append(
                    f"the {who}'s channel ({name}) has a DC offset of {fr.mean[i]:+.3f} "
                    "(full scale 1.0): removed before the analysis"
                )
        agent_coarse = energy_segments(fr.agent, fr.hop, rate)
        # echo: the agent's voice leaking into the caller's track
        self.echo = _find_echo(src, agent_coarse) if agent_coarse else None
        mask = None
        if self.echo is not None:
            d = round(self.echo.delay_samples / fr.hop)
            pred = np.zeros_like(fr.caller)
            k = min(pred.size, fr.agent.size)
            shifted = np.concatenate([np.zeros(d), fr.agent])[:k]
            # the frame before and after too: the delay is not a whole number of frames
            spread = np.maximum(shifted, np.concatenate([[0.0], shifted[:-1]]))
            spread = np.maximum(spread, np.concatenate([shifted[1:], [0.0]]))
            pred[:k] = spread * self.echo.gain**2
            mask = fr.caller > pred * 10 ** (ECHO_MARGIN_DB / 10)
            self.warnings.append(
                f"echo on the caller's channel: the agent's voice {self.echo.gain_db:.1f} dB, "
                f"{self.echo.delay_ms:.1f} ms late (correlation {self.echo.correlation:.2f}); "
                "not counted as the caller's speech"
            )
        floor = noise_floor_db(fr.caller)
        caller_coarse = energy_segments(fr.caller, fr.hop, rate, floor_db=floor, mask=mask)
        self._check_vad(caller_coarse, "caller")
        self._check_vad(agent_coarse, "agent")
        # the two channels at once (numpy, the FFTs and libsndfile release the GIL; the
        # file's blocks are decoded once for both, through the source's cache)
        cjob = pool.submit(
            _one_blas_thread, self.detect_segments, "caller", caller_coarse, fr.caller
        )
        ajob = pool.submit(_one_blas_thread, self.detect_segments, "agent", agent_coarse, fr.agent)
        caller, cvad = cjob.result()
        agent, avad = ajob.result()
        if self.echo is not None:
            self.ev(
                None,
                0,
                "other",
                "recording.echo",
                {
                    "delay_ns": self.t(self.echo.delay_samples),
                    "gain_db": round(self.echo.gain_db, 2),
                    "correlation": round(self.echo.correlation, 3),
                },
            )
        if not caller:
            raise NoDataError(
                f"{src.label}: no caller turns: the caller's channel ({self.caller_name}) "
                "holds no speech",
                hint="check --caller (which channel is the caller)",
            )
        self._swapped(caller, agent)
        answer = 0 if self.answer_at_s is None else round(self.answer_at_s * rate)
        turns = self._turns(caller, agent)
        self._greeting(answer, turns[0].start, agent)
        cvad_end = {caller[i][1]: cvad[i][1] for i in range(len(caller))}
        avad_start = {agent[i][0]: avad[i][0] for i in range(len(agent))}
        for k, turn in enumerate(turns):
            nxt = turns[k + 1].start if k + 1 < len(turns) else src.frames
            self._turn(k, turn, nxt, agent, cvad_end, avad_start)
        self._talk_over(caller, agent, turns)
        self.events.sort(key=lambda e: (e.t_ns, e.turn if e.turn is not None else -1))
        return self._trace(turns)

    def _swapped(self, caller: list[tuple[int, int]], agent: list[tuple[int, int]]) -> None:
        """Warn when the caller's channel has the agent's pattern: it opens the call with
        a sentence (:data:`SWAPPED_OPENING_MS` or more of speech, the length of a greeting,
        before the other side says anything) and the other side answers it."""
        if not agent or caller[0][0] >= agent[0][0] or self.src.written_by is not None:
            return  # (a call voiceaudit recorded names its channels)
        opening = sum(min(e, agent[0][0]) - s for s, e in caller if s < agent[0][0])
        if opening * 1000 < SWAPPED_OPENING_MS * self.rate:
            return
        other = "right" if self.caller_name == "left" else "left"
        self.warnings.append(
            f"the channels look swapped: the caller's channel ({self.caller_name}) opens the "
            f"call with {opening / self.rate:.1f} s of speech before the other side says "
            "anything, as an agent's greeting does"
            + (
                f"; if the caller is on the {other}, give --caller {other}"
                if self.src.agent_path is None
                else ""
            )
        )

    def _turns(self, caller: list[tuple[int, int]], agent: list[tuple[int, int]]) -> list[_Turn]:
        """Group the caller's segments into turns: a new turn unless the agent spoke in the
        pause and the caller resumed within CUT_IN_RESUME_MS of its onset (a cut-in) or
        the agent did not speak at all in the pause."""
        resume = CUT_IN_RESUME_MS * self.rate // 1000
        turns: list[_Turn] = [_Turn([caller[0]])]
        for s, e in caller[1:]:
            prev_end = turns[-1].end
            onsets = [a for a, b in agent if prev_end <= a < s]
            talking = _overlap(agent, s)
            heard = any(a < s and b > prev_end for a, b in agent)
            if not heard:
                turns[-1].segs.append((s, e))  # a pause with no agent speech
                continue
            if onsets and talking is not None and s - onsets[0] <= resume:
                turns[-1].segs.append((s, e))  # cut-in: the agent started in the pause
                continue
            if onsets and talking is None and s - onsets[0] <= resume and len(onsets) == 1:
                turns[-1].segs.append((s, e))
                continue
            t = _Turn([(s, e)])
            if talking is not None:
                t.interrupts = len(turns) - 1
            turns.append(t)
        return turns

    def _greeting(self, answer: int, first_caller: int, agent: list[tuple[int, int]]) -> None:
        greet = [(s, e) for s, e in agent if s < first_caller and s >= answer]
        if not greet:
            return
        t0 = self.t(answer)
        s0 = greet[0][0]
        self.ev(None, t0, "greeting", "greeting.wait", {"wait_ns": None, "answer_sample": answer})
        self.ev(
            None,
            self.t(s0),
            "greeting",
            "greeting.audible",
            {
                "latency_ns": self.t(s0) - t0,
                "first_byte_ns": self.t(s0),
                "sample": 0,
                "onset_ms": 0.0,
            },
        )
        end = greet[-1][1]
        self.ev(
            None,
            self.t(end),
            "greeting",
            "greeting.end",
            {
                "samples": end - s0,
                "rate": self.rate,
                "duration_ns": self.t(end) - self.t(s0),
                "audible": True,
            },
        )

    def _turn(
        self,
        k: int,
        turn: _Turn,
        nxt: int,
        agent: list[tuple[int, int]],
        cvad_end: dict[int, int | None],
        avad_start: dict[int, int | None],
    ) -> None:
        rate = self.rate
        s, e = turn.start, turn.end
        pauses = [
            [a_end - s, b_start - a_end]
            for (_, a_end), (b_start, _) in zip(turn.segs, turn.segs[1:], strict=False)
        ]
        start_attrs: dict[str, Any] = {
            "audio": self.session,
            "rate": rate,
            "n_samples": e - s,
            "speech_start_sample": 0,
            "speech_end_sample": e - s,
            "warmup": False,
            "speed": 1.0,
            "text": None,
            "recording_sample": s,
        }
        if pauses:
            start_attrs["pauses"] = pauses
        if turn.interrupts is not None:
            start_attrs["interrupts_turn"] = turn.interrupts
        self.ev(k, self.t(s), "turn", "turn.start", start_attrs)
        self.ev(k, self.t(e), "input", "input.speech_end", {"sample": e - s})
        # cut-ins: an agent onset inside one of the turn's pauses
        for i, ((_, p_end), (r_start, _)) in enumerate(zip(turn.segs, turn.segs[1:], strict=False)):
            onset = next((a for a, _ in agent if p_end <= a < r_start), None)
            if onset is None:
                continue
            self.ev(
                k,
                self.t(onset),
                "reply",
                "reply.cut_in",
                {
                    "pause_index": i,
                    "pause_ms": round((r_start - p_end) * 1000 / rate, 3),
                    "pause_start_ns": self.t(p_end),
                    "after_pause_start_ns": self.t(onset) - self.t(p_end),
                    "before_speech_end_ns": self.t(e) - self.t(onset),
                    "endpoint_ns": None,
                    "audible": True,
                    "heard_ns": self.t(onset),
                },
            )
        # the reply: the agent's speech from the first onset after the speech end up to
        # the next turn's start (and the segment the next turn talks over)
        reply = [(a, b) for a, b in agent if e <= a < nxt]
        over_end = _overlap(agent, e)
        if over_end is not None and over_end[1] - e > 0:
            self.ev(
                k,
                self.t(e),
                "turn",
                "turn.note",
                {"note": "the agent was still speaking when the caller finished (talk-over)"},
            )
        if not reply and over_end is not None:
            # the agent was already speaking when the caller's speech ended: no response
            # latency (talk-over, or a detector that ran the caller's speech on into it)
            self.ev(
                k,
                max(self.t(over_end[1]), self.t(e)) + 1,
                "turn",
                "turn.end",
                {
                    "ok": False,
                    "reason": "discarded: the agent started speaking at "
                    f"{over_end[0] / rate:.3f} s, before the caller's speech ended at "
                    f"{e / rate:.3f} s: no response latency",
                    "failure": "discarded",
                    "warmup": False,
                },
            )
            self.disagree[str(k)] = 1
            return
        if not reply:
            reason = (
                "no reply: the agent did not speak before the caller spoke again"
                if nxt < self.src.frames
                else "no reply: the agent did not speak before the recording ended"
            )
            self.ev(
                k,
                self.t(min(nxt, self.src.frames)),
                "turn",
                "turn.end",
                {"ok": False, "reason": reason, "failure": "no_reply", "warmup": False},
            )
            return
        onset = reply[0][0]
        # the second detector's view of the two edges the figure rests on
        problems = []
        ve = cvad_end.get(e)
        if ve is not None and _disagree(ve - e, rate):
            problems.append(
                f"the caller's speech end by {abs(ve - e) * 1000 / rate:.0f} ms "
                f"(energy {e / rate:.3f} s, webrtcvad {ve / rate:.3f} s)"
            )
        vs = avad_start.get(onset)
        if vs is not None and _disagree(onset - vs, rate):
            problems.append(
                f"the agent's onset by {abs(vs - onset) * 1000 / rate:.0f} ms "
                f"(energy {onset / rate:.3f} s, webrtcvad {vs / rate:.3f} s)"
            )
        self.ev(
            k,
            self.t(onset),
            "reply",
            "reply.first_byte",
            {},
        )
        self.ev(k, self.t(onset), "reply", "reply.audible", {"sample": 0, "onset_ms": 0.0})
        # dead air inside the reply
        for (_, b), (a2, _) in itertools.pairwise(reply):
            if (a2 - b) * 1000 >= DEAD_AIR_MS * rate:
                gap = self.t(a2) - self.t(b)
                self.ev(k, self.t(b), "reply", "recording.dead_air", {"gap_ns": gap})
                self.ev(
                    k,
                    self.t(b),
                    "turn",
                    "turn.note",
                    {"note": f"dead air: {gap / 1e9:.2f} s of silence inside the reply"},
                )
        wait = self.t(onset) - self.t(e)
        if wait >= LONG_WAIT_MS * 1_000_000:
            self.ev(k, self.t(e), "reply", "recording.long_wait", {"wait_ns": wait})
            self.ev(
                k,
                self.t(e),
                "turn",
                "turn.note",
                {"note": f"long wait: {wait / 1e9:.2f} s before the agent answered"},
            )
        last = reply[-1]
        barged = nxt < self.src.frames and last[0] < nxt < last[1]
        end_s = last[1]
        if barged:
            stop = end_s
            onset_ns = self.t(nxt)
            kept = self.t(stop) - onset_ns
            self.ev(
                k,
                self.t(stop),
                "reply",
                "reply.stop",
                {
                    "kind": "interrupt",
                    "onset_ns": onset_ns,
                    "stop_ns": kept,
                    "received_ns": None,
                    "client_buffer_ns": None,
                    "server_ns": None,
                    "in_flight_ns": None,
                    "heard_after_ms": round(kept / 1e6, 3),
                    "cut": None,
                    "stopped": kept < STOPPED_MS * 1_000_000,
                },
            )
        self.ev(
            k,
            self.t(end_s),
            "reply",
            "reply.end",
            {"samples": end_s - onset, "underruns": 0, "underrun_ns": 0, "rate": rate},
        )
        end_t = max(self.t(end_s), self.t(e)) + 1
        if problems:
            self.disagree[str(k)] = 1
            self.ev(
                k,
                end_t,
                "turn",
                "turn.end",
                {
                    "ok": False,
                    "reason": "discarded: the detectors disagree on "
                    + " and on ".join(problems)
                    + f" (margins {DISAGREE_MS} ms, {DISAGREE_UNVOICED_MS} ms unvoiced)",
                    "failure": "discarded",
                    "informative_voice_to_voice_ns": wait,
                    "warmup": False,
                },
            )
            return
        self.ev(
            k,
            end_t,
            "turn",
            "turn.end",
            {"ok": True, "voice_to_voice_ns": wait, "warmup": False},
        )

    def _talk_over(
        self, caller: list[tuple[int, int]], agent: list[tuple[int, int]], turns: list[_Turn]
    ) -> None:
        """Every stretch where both sides speak, on the turn the caller was saying or had
        just said."""
        starts = [t.start for t in turns]
        i = j = 0
        while i < len(caller) and j < len(agent):
            cs, ce = caller[i]
            as_, ae = agent[j]
            lo, hi = max(cs, as_), min(ce, ae)
            if lo < hi:
                k = max(0, int(np.searchsorted(starts, lo, side="right")) - 1)
                self.ev(
                    k,
                    self.t(lo),
                    "other",
                    "recording.talk_over",
                    {
                        "duration_ns": self.t(hi) - self.t(lo),
                        "started_by": "caller" if cs > as_ else "agent",
                    },
                )
            if ce < ae:
                i += 1
            else:
                j += 1

    def _trace(self, turns: list[_Turn]) -> Trace:
        src = self.src
        try:
            mtime = int(src.caller_path.stat().st_mtime * _NS)
        except OSError:  # pragma: no cover - the file was just read
            mtime = 0
        duration = self.t(src.frames)
        ok = sum(1 for e in self.events if e.name == "turn.end" and e.attrs.get("ok"))
        failed = sum(1 for e in self.events if e.name == "turn.end" and not e.attrs.get("ok"))
        config: dict[str, Any] = {
            "frame_ms": FRAME_MS,
            "warmup": 0,
            "sessions": 1,
            "recording": {
                "file": str(src.caller_path),
                "agent_track": None if src.agent_path is None else str(src.agent_path),
                "caller": self.caller_name,
                "rate": src.rate,
                "duration_s": round(src.frames / src.rate, 3),
                "answer_at_s": self.answer_at_s,
                "written_by": src.written_by,
                "echo": None
                if self.echo is None
                else {
                    "delay_ms": round(self.echo.delay_ms, 2),
                    "gain_db": round(self.echo.gain_db, 2),
                    "correlation": round(self.echo.correlation, 3),
                },
                "discarded": len(self.disagree),
                "detector": dict(self.detector),
                "second_detector": {
                    who: {"used": self.vad_usable.get(who), "noise_voiced": self.vad_noise.get(who)}
                    for who in ("caller", "agent")
                },
                "thresholds": {
                    "dead_air_ms": DEAD_AIR_MS,
                    "long_wait_ms": LONG_WAIT_MS,
                    "cut_in_resume_ms": CUT_IN_RESUME_MS,
                    "disagree_ms": DISAGREE_MS,
                    "disagree_unvoiced_ms": DISAGREE_UNVOICED_MS,
                    "merge_ms": MERGE_MS,
                },
            },
        }
        header = Header(
            schema=SCHEMA,
            run_id=f"recording:{self.session}",
            voiceaudit_version=__version__,
            target={
                "protocol": "recording",
                "url": "",
                "description": "call recording",
                "path": self.label,
            },
            host={"hostname": "", "platform": "", "python": "", "cpu_count": 0},
            clock={"name": "recording", "resolution_ns": _ns(1, src.rate)},
            anchors=(Anchor(wall_ns=max(0, mtime - duration), mono_ns=0, uncertainty_ns=duration),),
            config=config,
        )
        end = End(
            "complete",
            {"events": len(self.events), "spans": 0, "turns_ok": ok, "turns_failed": failed},
            None,
        )
        return Trace(
            str(src.caller_path), header, tuple(self.events), (), end, tuple(self.warnings)
        )


# --------------------------------------------------------------------------------------
# Many recordings
# --------------------------------------------------------------------------------------


def is_recording(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a recording (by its suffix) or a directory of recordings: one
    that holds recordings and no trace (a run directory of ``run --record`` holds its
    trace beside its ``call-*.wav``: it is a run, not a directory of calls)."""
    p = Path(path)
    if p.is_dir():
        files = [q for q in p.iterdir() if q.is_file()]
        if any(q.name.endswith((".jsonl", ".jsonl.gz")) for q in files):
            return False
        return any(q.suffix.lower() in SUFFIXES for q in files)
    return p.suffix.lower() in SUFFIXES


def recording_inputs(
    paths: Sequence[str | os.PathLike[str]],
    caller: str = "left",
    caller_track: str | os.PathLike[str] | None = None,
    agent_track: str | os.PathLike[str] | None = None,
    answer_time: float | None = None,
) -> list[Trace]:
    """The traces of recordings for ``report``/``gate``: one per file (a directory: each
    recording in it, by name, one session per file), or the pair of tracks.

    In a directory a file that cannot be used is skipped with a warning (on the first
    trace); one file given alone raises its error. NoDataError when nothing is left.
    """
    if caller_track is not None or agent_track is not None:
        if paths:
            raise UsageError("give either recordings or --caller-track/--agent-track, not both")
        return [
            read_call(
                caller=caller,
                caller_track=caller_track,
                agent_track=agent_track,
                answer_at_s=answer_time,
            )
        ]
    traces: list[Trace] = []
    skipped: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUFFIXES)
            if not files:
                raise NoDataError(f"{p}: no recordings ({', '.join(SUFFIXES)}) in the directory")
            for q in files:
                try:
                    traces.append(read_call(q, caller=caller, answer_at_s=answer_time))
                except (InputError, NoDataError) as exc:
                    skipped.append(f"skipped {exc.message}")
        else:
            traces.append(read_call(p, caller=caller, answer_at_s=answer_time))
    if not traces:
        raise NoDataError(
            "no usable recording: " + "; ".join(skipped) if skipped else "no recordings given"
        )
    if skipped:
        first = traces[0]
        traces[0] = Trace(
            first.path,
            first.header,
            first.events,
            first.spans,
            first.end,
            (*first.warnings, *skipped),
        )
    return traces


# --------------------------------------------------------------------------------------
# Per-call figures
# --------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return None if not xs else float(np.median(np.asarray(xs)))


class CallTable:
    """Per-call figures of many recordings and the overall row (the report's "Calls"
    section beside the merged statistics): turns, answered, discarded, unanswered,
    response latency p50 and max, greeting latency, barge-ins, cut-ins, dead air, long
    waits, seconds of talk-over, echo. ``render_text()`` and ``to_dict()`` as the
    report's extra sections have."""

    COLUMNS = (
        "call",
        "turns",
        "ok",
        "discarded",
        "no reply",
        "p50 ms",
        "max ms",
        "greeting ms",
        "barge-ins",
        "cut-ins",
        "dead air",
        "long waits",
        "talk-over s",
        "echo",
    )

    def __init__(self, traces: Sequence[Trace]) -> None:
        self.rows: list[dict[str, Any]] = [self._row(t) for t in traces]
        latencies = [v for t in traces for v in self._latencies(t)]
        total: dict[str, Any] = {"call": f"all {len(traces)} calls"}
        for key in ("turns", "ok", "discarded", "no reply", "barge-ins", "cut-ins"):
            total[key] = sum(r[key] for r in self.rows)
        for key in ("dead air", "long waits", "talk-over s"):
            total[key] = sum(r[key] for r in self.rows)
        total["p50 ms"] = _median(latencies)
        total["max ms"] = max(latencies) if latencies else None
        greetings = [r["greeting ms"] for r in self.rows if r["greeting ms"] is not None]
        total["greeting ms"] = _median(greetings)
        total["echo"] = sum(1 for r in self.rows if r["echo"])
        self.total = total

    @staticmethod
    def _latencies(t: Trace) -> list[float]:
        return [
            e.attrs["voice_to_voice_ns"] / 1e6
            for e in t.events
            if e.name == "turn.end" and e.attrs.get("ok")
        ]

    def _row(self, t: Trace) -> dict[str, Any]:
        ends = [e for e in t.events if e.name == "turn.end"]
        lat = self._latencies(t)
        names = [e.name for e in t.events]
        greeting = next(
            (e.attrs["latency_ns"] for e in t.events if e.name == "greeting.audible"), None
        )
        echo = t.header.config.get("recording", {}).get("echo")
        return {
            "call": t.events[0].session if t.events else Path(t.path).name,
            "turns": len(ends),
            "ok": len(lat),
            "discarded": sum(1 for e in ends if e.attrs.get("failure") == "discarded"),
            "no reply": sum(1 for e in ends if e.attrs.get("failure") == "no_reply"),
            "p50 ms": _median(lat),
            "max ms": max(lat) if lat else None,
            "greeting ms": None if greeting is None else greeting / 1e6,
            "barge-ins": names.count("reply.stop"),
            "cut-ins": names.count("reply.cut_in"),
            "dead air": names.count("recording.dead_air"),
            "long waits": names.count("recording.long_wait"),
            "talk-over s": round(
                sum(e.attrs["duration_ns"] for e in t.events if e.name == "recording.talk_over")
                / 1e9,
                2,
            ),
            "echo": None if not echo else f"{echo['gain_db']:.0f} dB, {echo['delay_ms']:.0f} ms",
        }

    @staticmethod
    def _cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 10 or v == 0 else f"{v:.2f}"
        return str(v)

    def render_text(self) -> str:
        """The table as fixed-width text (every format shows it this way)."""
        rows = [*self.rows, self.total]
        cells = [[self._cell(r[c]) for c in self.COLUMNS] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(self.COLUMNS)]
        line = "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(self.COLUMNS, widths, strict=True))
        )
        out = [line]
        for row in cells:
            out.append(
                "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The rows and the overall row as JSON-ready objects."""
        return {"calls": self.rows, "overall": self.total}
