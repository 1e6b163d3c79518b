"""Streaming signal helpers for the reference pipeline.

A stateful polyphase resampler (so audio arriving in arbitrary pieces is resampled with
no seams at piece boundaries), 16-bit PCM conversions, G.711 µ-law / A-law codecs and a
streaming WAV header. Everything works on numpy arrays and never blocks for long: a 20 ms
piece costs microseconds.
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]


@lru_cache(maxsize=32)
def _filter(up: int, down: int) -> tuple[npt.NDArray[np.float64], int, int]:
    """The anti-aliasing FIR of ``scipy.signal.resample_poly`` (Kaiser-windowed sinc, beta 5).

    Built with numpy alone: importing scipy.signal inside a running server would stall
    its event loop for a second or more.
    """
    half = 10 * max(up, down)
    cutoff = 1.0 / max(up, down)
    n = np.arange(2 * half + 1, dtype=np.float64) - half
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, 5.0)
    h = h / h.sum() * up
    taps_per_phase = math.ceil(len(h) / up)
    padded = np.zeros(taps_per_phase * up, dtype=np.float64)
    padded[: len(h)] = h
    return padded, taps_per_phase, half


class StreamResampler:
    """Resamples a stream piece by piece, exactly as if the whole stream were done at once.

    Output sample ``m`` is the filtered input at time ``m / to_rate`` (the filter delay
    is compensated), so stream positions stay aligned across rates. The newest few input
    samples (about 10 output samples' worth of filter) are held until more input arrives
    or :meth:`flush` is called.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(from_rate, to_rate)
        self.from_rate = from_rate
        self.to_rate = to_rate
        self.up = to_rate // g
        self.down = from_rate // g
        self._passthrough = self.up == self.down
        if not self._passthrough:
            self._h, self._taps, self._delay = _filter(self.up, self.down)
        self._buf = np.zeros(0, dtype=np.float64)
        self._buf_start = 0  # global input index of _buf[0]
        self._n_in = 0  # input samples received
        self._next_out = 0  # global index of the next output sample

    def _emit(self, last_input: int) -> F32:
        """Every output sample whose filter window ends at or before input ``last_input``."""
        up, down = self.up, self.down
        # Output m needs input up to (m*down + delay) // up.
        m_end = ((last_input + 1) * up - self._delay + down - 1) // down
        m0 = self._next_out
        if m_end <= m0:
            return np.zeros(0, dtype=np.float32)
        m = np.arange(m0, m_end, dtype=np.int64)
        j = m * down + self._delay
        base = j // up
        phase = j % up
        t = np.arange(self._taps, dtype=np.int64)
        idx = base[:, None] - t[None, :] - self._buf_start
        coeffs = self._h[phase[:, None] + t[None, :] * up]
        valid = idx >= 0  # before the stream started the input is zero
        samples = np.where(valid, self._buf[np.clip(idx, 0, None)], 0.0)
        out = np.sum(samples * coeffs, axis=1)
        self._next_out = m_end
        # Keep only the history the next outputs can still reach.
        keep_from = max(0, (m_end * down + self._delay) // up - self._taps + 1 - self._buf_start)
        if keep_from > 0:
            self._buf = self._buf[keep_from:]
            self._buf_start += keep_from
        return np.asarray(out, dtype=np.float32)

    def process(self, samples: F32) -> F32:
        """Feed float samples, get the resampled samples that are ready."""
        if self._passthrough:
            return np.asarray(samples, dtype=np.float32)
        x = np.asarray(samples, dtype=np.float64)
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, x])
        self._n_in += x.size
        return self._emit(self._n_in - 1)

    def flush(self) -> F32:
        """Emit the held-back tail, treating the stream as ended (zeros after it)."""
        if self._passthrough or self._n_in == 0:
            return np.zeros(0, dtype=np.float32)
        total_out = (self._n_in * self.up + self.down - 1) // self.down
        pad = self._taps + 2
        self._buf = np.concatenate([self._buf, np.zeros(pad)])
        out = self._emit(self._n_in - 1 + pad)
        # Only the outputs inside the real stream's duration.
        excess = self._next_out - total_out
        if excess > 0:
            out = out[: max(0, out.size - excess)]
        self._next_out = total_out
        return out


def pcm16_to_float(data: bytes) -> F32:
    """Little-endian signed 16-bit PCM bytes to float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: F32) -> bytes:
    """Float samples to little-endian signed 16-bit PCM bytes (clipped)."""
    x = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    return x.astype("<i2").tobytes()


def float_to_int16(samples: F32) -> I16:
    x = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    return x.astype(np.int16)


# --- G.711 (ITU-T), as used by audio/pcmu and audio/pcma at 8 kHz -------------------------


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


_ULAW_DEC = _ulaw_decode_table()
_ALAW_DEC = _alaw_decode_table()


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """Every int16 value's µ-law code, by the reference G.711 segment search."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF))
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    """Every int16 value's A-law code, by the reference G.711 segment search."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), mag)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    aval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> shift) & 0xF))
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


_ULAW_ENC: npt.NDArray[np.uint8] | None = None
_ALAW_ENC: npt.NDArray[np.uint8] | None = None


def ulaw_decode(data: bytes) -> F32:
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0


def alaw_decode(data: bytes) -> F32:
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0


def ulaw_encode(samples: F32) -> bytes:
    global _ULAW_ENC
    if _ULAW_ENC is None:
        _ULAW_ENC = _ulaw_encode_table()
    return bytes(_ULAW_ENC[float_to_int16(samples).astype(np.int32) + 32768])


def alaw_encode(samples: F32) -> bytes:
    global _ALAW_ENC
    if _ALAW_ENC is None:
        _ALAW_ENC = _alaw_encode_table()
    return bytes(_ALAW_ENC[float_to_int16(samples).astype(np.int32) + 32768])


def streaming_wav_header(rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte WAV header for a stream of unknown length (sizes set to 0xFFFFFFFF)."""
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )
