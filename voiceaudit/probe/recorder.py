"""Call recordings (``voiceaudit run --record``): each session's call as a stereo WAV.

One file per session (connection), ``call-<session>.wav`` next to the trace, 16-bit PCM,
two channels, both on the probe's monotonic clock: sample ``k`` of the file is heard or
spoken at ``t0_ns + k / rate``, where ``t0_ns`` is the start of the call's media (a phone
carrier's ``start`` message, else ``session.connected``: the origin of greeting latency).

- **Left: the caller**, as sent. Every frame the probe sent is placed at its schedule:
  sample ``a`` of a turn's audio at the turn's ``t0 + a / rate`` (the instant it was
  "spoken", the convention of ``input.speech_end``), not at the frame's actual send time
  (which the trace gives, ``input.frames``). Frames not sent (a turn cut short) are not in
  it; the silence between turns is silence.
- **Right: what the caller heard**, through the run's playout model
  (:mod:`voiceaudit.probe.playout`): every sample of each reply, and of the greeting, at
  :meth:`~voiceaudit.probe.playout.Playout.heard_at`; silence where nothing played, so an
  underrun is a gap and a barge-in is cut where the reply's audio stopped. Replies heard at
  once (an interrupted reply still playing while the next begins) are mixed.

**Rate.** The file's rate is chosen when it is first written (at the end of the greeting
or of the session's first turn: the first one with any audio): the highest of the
session's input rate and the rates of the reply audio heard so far. Audio at another
rate (the lower of the two, a later reply at another rate) is resampled to it with
:func:`voiceaudit.audio.resample`; the adaptive playout model's time-stretched stretches
are read off the reply by linear interpolation. Where no resampling happens a sample is
bit-exact and sits within half a sample of its time (rounded to the nearest sample of
the file).

**Durable at every turn end.** Nothing is written on the paced-send path: audio is kept
in memory and written when a turn ends (and when the greeting ends, and when the session
closes), in a worker thread the session does not wait for; then the RIFF header's sizes
are rewritten and the file fsync'd. So a crash, a kill or Ctrl-C leaves a complete WAV
(any reader reads it) holding every finished turn. Audio that falls on a stretch already
written (a reply still playing when a later turn ends) is mixed into it in place. When
the session closes the file is padded with silence to that instant (the file runs on
where the model still plays a reply after it). A recording that cannot be written (disk
full, the 4 GiB limit of a WAV) stops with a one-line warning; the run goes on.

**Says what it is.** A ``LIST``/``INFO`` chunk before the audio names the software
(``ISFT``: ``voiceaudit <version>``) and the layout (``ICMT``:
:data:`voiceaudit.wavinfo.CALL_LAYOUT`), so ``voiceaudit report CALL.wav`` knows its
channels (it gives no "channels look swapped" warning for a call the caller opens); any
WAV reader skips the chunk.

Trace: a session-level probe event ``session.recording`` (docs/trace-format.md) names
the file (relative to the trace), its rate, channels and ``t0_ns``.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from voiceaudit import __version__
from voiceaudit.clock import NS_PER_S
from voiceaudit.probe.playout import Chunk, Playout, play_model
from voiceaudit.probe.session import RawChunk
from voiceaudit.trace_io import TraceWriter
from voiceaudit.wavinfo import CALL_LAYOUT, info_chunk

CHANNELS = 2
LEFT, RIGHT = 0, 1
_INFO = info_chunk({"ISFT": f"voiceaudit {__version__}", "ICMT": CALL_LAYOUT})
#: bytes before the first sample: RIFF/WAVE, fmt, LIST/INFO, the data chunk's header
HEADER_BYTES = 12 + 24 + len(_INFO) + 8
_FRAME_BYTES = 2 * CHANNELS
#: the largest data chunk a RIFF header can state
_MAX_DATA = 0xFFFFFFFF - (HEADER_BYTES - 8)


def recording_name(sid: str) -> str:
    """The file name of a session's recording (``call-<session>.wav``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sid)
    return f"call-{safe}.wav"


class _Wav:
    """A 16-bit stereo PCM WAV written in place: a block can be mixed in anywhere (past
    the end the file grows with silence), and :meth:`sync` makes the header state what
    the file holds and fsyncs it."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.frames = 0
        self.f: BinaryIO = path.open("w+b")
        self._header()

    def _header(self) -> None:
        data = self.frames * _FRAME_BYTES
        fmt = struct.pack(
            "<IHHIIHH", 16, 1, CHANNELS, self.rate, self.rate * _FRAME_BYTES, _FRAME_BYTES, 16
        )
        head = b"RIFF" + struct.pack("<I", HEADER_BYTES - 8 + data) + b"WAVE" + b"fmt " + fmt
        self.f.seek(0)
        self.f.write(head + _INFO + b"data" + struct.pack("<I", data))

    def mix(self, channel: int, start: int, samples: np.ndarray[Any, Any]) -> None:
        """Add ``samples`` (int16 units) to ``channel`` from frame ``start`` on."""
        if start < 0:
            samples = samples[-start:]
            start = 0
        n = int(samples.size)
        if n == 0:
            return
        end = start + n
        if end * _FRAME_BYTES > _MAX_DATA:
            raise OSError("the recording reached the 4 GiB limit of a WAV file")
        block = np.zeros((n, CHANNELS), dtype=np.int32)
        have = min(end, self.frames) - start
        if have > 0:
            self.f.seek(HEADER_BYTES + start * _FRAME_BYTES)
            old = np.frombuffer(self.f.read(have * _FRAME_BYTES), dtype="<i2")
            block[: old.size // CHANNELS] = old.reshape(-1, CHANNELS)
        block[:, channel] += samples.astype(np.int32)
        np.clip(block, -32768, 32767, out=block)
        if start > self.frames:
            self.f.truncate(HEADER_BYTES + start * _FRAME_BYTES)  # silence up to the block
        self.f.seek(HEADER_BYTES + start * _FRAME_BYTES)
        self.f.write(block.astype("<i2").tobytes())
        self.frames = max(self.frames, end)

    def extend(self, frames: int) -> None:
        """Pad with silence to ``frames`` frames."""
        if frames > self.frames:
            if frames * _FRAME_BYTES > _MAX_DATA:
                frames = _MAX_DATA // _FRAME_BYTES
            self.f.truncate(HEADER_BYTES + frames * _FRAME_BYTES)
            self.frames = max(self.frames, frames)

    def sync(self) -> None:
        self._header()
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class _Caller:
    t_ns: int
    pcm16: bytes
    rate: int


@dataclass(frozen=True)
class _Heard:
    chunks: tuple[RawChunk, ...]


class CallRecorder:
    """Records one session's call (see the module docstring). The session's coroutine
    hands it audio (:meth:`caller`, :meth:`heard`) and writes it at each turn end
    (:func:`flush_recording`); :func:`close_recording` ends it."""

    def __init__(
        self,
        path: Path,
        t0_ns: int,
        *,
        input_rate: int,
        playout: str,
        depth_ns: int,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        #: where a recording that stopped says why (one line, once)
        self.warn = warn
        #: the file's sample 0 on the probe's clock
        self.t0_ns = t0_ns
        self.input_rate = input_rate
        self.playout = playout
        self.depth_ns = depth_ns
        self._pending: list[_Caller | _Heard] = []
        self._wav: _Wav | None = None
        self._rate: int | None = None
        #: why the recording stopped (one line), once it has
        self.error: str | None = None
        self._warned = False
        self._announced = False
        self._closed = False
        self._lock = threading.Lock()
        #: guards ``_pending``: the session hands audio over while a write runs
        self._plock = threading.Lock()

    @property
    def rate(self) -> int | None:
        """The file's sample rate, once chosen (at the first write)."""
        return self._rate

    def choose_rate(self) -> int | None:
        """Fix the file's rate, if not yet and there is audio to write: the highest of the
        input rate and the rates of the replies handed over so far."""
        with self._plock:
            if self._rate is None and self._pending:
                rates = [self.input_rate]
                rates += [p.chunks[0][2] for p in self._pending if isinstance(p, _Heard)]
                self._rate = max(rates)
            return self._rate

    # -- what the session hands over (on the event loop, no I/O) ----------------------

    def caller(self, t_ns: int, pcm16: bytes, rate: int) -> None:
        """Caller audio as sent: contiguous 16-bit PCM at ``rate`` whose first sample was
        spoken at ``t_ns`` (sample ``a`` at ``t_ns + a / rate``)."""
        if pcm16 and self.error is None:
            with self._plock:
                self._pending.append(_Caller(t_ns, pcm16, rate))

    def heard(self, chunks: Sequence[RawChunk]) -> None:
        """A reply (or the greeting) as received: played through the run's playout model
        into the right channel."""
        got = tuple(c for c in chunks if c[1])
        if got and self.error is None:
            with self._plock:
                self._pending.append(_Heard(got))

    # -- writing (in a worker thread) -----------------------------------------------

    def flush(self) -> None:
        """Write everything handed over so far, rewrite the header and fsync."""
        with self._lock:
            if self._closed or self.error is not None:
                return
            try:
                self._write()
            except OSError as exc:
                self.error = f"{self.path.name}: {exc.strerror or exc}"

    def close(self, end_ns: int) -> None:
        """Write what is left, pad the file with silence to ``end_ns`` and close it."""
        with self._lock:
            if self._closed:
                return
            try:
                if self.error is None:
                    self._write(end_ns)
            except OSError as exc:
                self.error = f"{self.path.name}: {exc.strerror or exc}"
            finally:
                self._closed = True
                if self._wav is not None:
                    self._wav.close()

    def _index(self, t_ns: int, rate: int) -> int:
        """The file's sample nearest to ``t_ns``."""
        return ((t_ns - self.t0_ns) * rate + NS_PER_S // 2) // NS_PER_S

    def _write(self, end_ns: int | None = None) -> None:
        if self._wav is None and not self._pending and end_ns is None:
            return  # nothing yet (a wait for a greeting that never came): no rate to choose
        if self._wav is None:
            self._wav = _Wav(self.path, self.choose_rate() or self.input_rate)
            self._rate = self._wav.rate
        with self._plock:
            pending, self._pending = self._pending, []
        wav = self._wav
        for item in pending:
            if isinstance(item, _Caller):
                x = _at_rate(np.frombuffer(item.pcm16, dtype="<i2"), item.rate, wav.rate)
                wav.mix(LEFT, self._index(item.t_ns, wav.rate), x)
            else:
                for start, x in self._render(item.chunks, wav.rate):
                    wav.mix(RIGHT, start, x)
        if end_ns is not None:
            wav.extend(self._index(end_ns, wav.rate))
        wav.sync()

    def _render(
        self, chunks: tuple[RawChunk, ...], out_rate: int
    ) -> list[tuple[int, np.ndarray[Any, Any]]]:
        """A reply's samples as heard: (file sample, int16 samples) runs."""
        rate = chunks[0][2]
        pcm = np.frombuffer(b"".join(c[1] for c in chunks), dtype="<i2")
        played = [Chunk(c[0], len(c[1]) // 2) for c in chunks]
        p = play_model(played, rate, model=self.playout, depth_ns=self.depth_ns)
        if p.knots:
            return self._render_knots(p, pcm, rate, out_rate)
        out = []
        for s0, s1, t_ns in _runs(p, int(pcm.size)):
            out.append((self._index(t_ns, out_rate), _at_rate(pcm[s0:s1], rate, out_rate)))
        return out

    def _render_knots(
        self, p: Playout, pcm: np.ndarray[Any, Any], rate: int, out_rate: int
    ) -> list[tuple[int, np.ndarray[Any, Any]]]:
        """A time-stretched playout (the adaptive model): each file sample takes the reply
        at the position the knots map its time to (linear interpolation)."""
        out = []
        x = pcm.astype(np.float64)
        for ks in _pieces(p.knots):
            s = np.array([k[0] for k in ks], dtype=np.float64)
            t = np.array([k[1] - self.t0_ns for k in ks], dtype=np.float64)
            i0 = self._index(ks[0][1], out_rate)
            i1 = self._index(ks[-1][1], out_rate)
            if i1 <= i0:
                continue
            times = np.arange(i0, i1, dtype=np.float64) * (NS_PER_S / out_rate)
            pos = np.interp(times, t, s)
            last = len(x) - 1
            y = np.interp(np.minimum(pos, last), np.arange(len(x), dtype=np.float64), x)
            out.append((i0, np.rint(y).astype(np.int32)))
        return out


def _at_rate(x: np.ndarray[Any, Any], rate: int, out_rate: int) -> np.ndarray[Any, Any]:
    """int16 samples at ``rate`` as int32 samples at ``out_rate`` (resampled if needed)."""
    if rate == out_rate:
        return x.astype(np.int32)
    from voiceaudit.audio import resample

    y = resample(x.astype(np.float32) / np.float32(32768.0), rate, out_rate)
    return np.clip(np.rint(y.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int32)


def _runs(p: Playout, total: int) -> list[tuple[int, int, int]]:
    """A real-time playout as runs of samples played back to back: (first sample, end,
    when the first is heard)."""
    runs: list[tuple[int, int, int]] = []
    cursor: int | None = None
    bounds = [*p.offsets[1:], total]
    for off, start, end in zip(p.offsets, p.starts_ns, bounds, strict=True):
        if end <= off:
            continue
        if runs and cursor == start and runs[-1][1] == off:
            runs[-1] = (runs[-1][0], end, runs[-1][2])
        else:
            runs.append((off, end, start))
        cursor = start + (end - off) * NS_PER_S // p.rate
    return runs


def _pieces(knots: tuple[tuple[int, int], ...]) -> list[list[tuple[int, int]]]:
    """The knots cut at the gaps (two knots at one sample: an underrun), each piece a
    continuous map from time to sample."""
    pieces: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    for k in knots:
        if cur and k[0] <= cur[-1][0]:
            if len(cur) > 1:
                pieces.append(cur)
            cur = []
        cur.append(k)
    if len(cur) > 1:
        pieces.append(cur)
    return pieces


def _announce(rec: CallRecorder, writer: TraceWriter, sid: str) -> None:
    if not rec._announced and rec.rate is not None:
        rec._announced = True
        writer.event(
            sid,
            None,
            rec.t0_ns,
            "probe",
            "session",
            "session.recording",
            {
                "path": rec.path.name,
                "rate": rec.rate,
                "channels": CHANNELS,
                "t0_ns": rec.t0_ns,
            },
        )
    _warn(rec)


def _warn(rec: CallRecorder) -> None:
    if rec.error is not None and not rec._warned:
        rec._warned = True
        if rec.warn is not None:
            rec.warn(f"recording stopped: {rec.error}")


def flush_recording(rec: CallRecorder | None, writer: TraceWriter, sid: str) -> None:
    """At a turn's end: have the session's recording so far written in a worker thread,
    without holding the session up (a scenario's microphone keeps its pace), and, the
    first time, write its trace event (committed with the turn)."""
    if rec is None:
        return
    rec.choose_rate()
    _announce(rec, writer, sid)
    fut = asyncio.get_running_loop().run_in_executor(None, rec.flush)
    fut.add_done_callback(lambda _: _warn(rec))


def close_recording(rec: CallRecorder | None, writer: TraceWriter, sid: str, end_ns: int) -> None:
    """When the session closes: write the rest of its recording and close the file."""
    if rec is None:
        return
    rec.close(end_ns)
    _announce(rec, writer, sid)


__all__ = [
    "CallRecorder",
    "close_recording",
    "flush_recording",
    "recording_name",
]
