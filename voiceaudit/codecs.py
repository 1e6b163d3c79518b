"""G.711 (ITU-T) μ-law and A-law, between 8-bit codes and 16-bit linear PCM.

The telephone codecs OpenAI's Realtime API offers as ``audio/pcmu`` and ``audio/pcma``
(beta ``g711_ulaw``, ``g711_alaw``), which phone carriers (RTP payload types 0 and 8) send
too. Encoding follows the reference G.711 segment search, as Sun's ``g711.c`` and Python's
former ``audioop`` do (``lin2ulaw``/``lin2alaw`` and back agree with it for every one of the
65536 PCM values and the 256 codes: tests/test_realtime_formats.py).

Arrays in, arrays out (numpy, vectorized through lookup tables), plus :func:`encode` and
:func:`decode` over little-endian 16-bit PCM bytes by encoding name (:data:`ENCODINGS`).
This module imports nothing of voiceaudit's.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

#: the encodings :func:`encode` and :func:`decode` know, by the names the trace uses
ENCODINGS: Final[tuple[str, ...]] = ("pcm16", "pcmu", "pcma")
#: bytes one sample takes on the wire in each encoding
BYTES_PER_SAMPLE: Final[dict[str, int]] = {"pcm16": 2, "pcmu": 1, "pcma": 1}
#: G.711's one sample rate
G711_RATE: Final[int] = 8000

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_SIGN_BIT = 0x80
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in 14-bit units
# upper ends of the eight segments: μ-law on 14-bit magnitudes (+ bias), A-law on 13-bit
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_table() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int16]]:
    """Every int16 value's code (index: value + 32768), and every code's value."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)  # first segment whose end >= mag
    code = np.where(
        seg >= 8, 0x7F, (seg << _SEG_SHIFT) | ((mag >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK)
    )
    enc = ((code ^ mask) & 0xFF).astype(np.uint8)

    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (u >> _SEG_SHIFT) & 0x07
    dec = np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)
    return enc, dec


def _alaw_table() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int16]]:
    """Every int16 value's code (index: value + 32768), and every code's value."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = np.where(seg >= 8, 0x7F, (seg << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK))
    enc = ((code ^ mask) & 0xFF).astype(np.uint8)

    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg_d = (a >> _SEG_SHIFT) & 0x07
    t = (a & _QUANT_MASK) << 4
    t = np.where(seg_d == 0, t + 8, (t + 0x108) << np.maximum(seg_d - 1, 0))
    dec = np.where(a & _SIGN_BIT, t, -t).astype(np.int16)
    return enc, dec


_ULAW_ENC, _ULAW_DEC = _ulaw_table()
_ALAW_ENC, _ALAW_DEC = _alaw_table()


def _codes(codes: bytes | npt.ArrayLike) -> npt.NDArray[np.uint8]:
    if isinstance(codes, bytes | bytearray | memoryview):
        return np.frombuffer(codes, dtype=np.uint8)
    return np.asarray(codes, dtype=np.uint8)


def _index(samples: npt.ArrayLike) -> npt.NDArray[np.int32]:
    x = np.asarray(samples)
    if x.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, not {x.dtype}")
    return x.astype(np.int32) + 32768


def ulaw_encode(samples: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """μ-law codes of int16 samples."""
    return _ULAW_ENC[_index(samples)]


def ulaw_decode(codes: bytes | npt.ArrayLike) -> npt.NDArray[np.int16]:
    """int16 samples of μ-law codes (bytes or a uint8 array)."""
    return _ULAW_DEC[_codes(codes)]


def alaw_encode(samples: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """A-law codes of int16 samples."""
    return _ALAW_ENC[_index(samples)]


def alaw_decode(codes: bytes | npt.ArrayLike) -> npt.NDArray[np.int16]:
    """int16 samples of A-law codes (bytes or a uint8 array)."""
    return _ALAW_DEC[_codes(codes)]


def encode(pcm16: bytes, encoding: str) -> bytes:
    """Little-endian 16-bit PCM as ``encoding`` (one of :data:`ENCODINGS`); ``pcm16`` is
    returned as it is. ValueError for an odd byte count or an unknown encoding."""
    if encoding not in BYTES_PER_SAMPLE:
        raise ValueError(f"unknown audio encoding {encoding!r}")
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM cannot have an odd byte count ({len(pcm16)})")
    if encoding == "pcm16":
        return bytes(pcm16)
    x = np.frombuffer(pcm16, dtype="<i2").astype(np.int16)
    return (ulaw_encode(x) if encoding == "pcmu" else alaw_encode(x)).tobytes()


def decode(data: bytes, encoding: str) -> bytes:
    """``data`` in ``encoding`` as little-endian 16-bit PCM. ValueError when ``data`` cannot
    be that encoding (an odd byte count for ``pcm16``) or the encoding is unknown."""
    if encoding not in BYTES_PER_SAMPLE:
        raise ValueError(f"unknown audio encoding {encoding!r}")
    if encoding == "pcm16":
        if len(data) % 2:
            raise ValueError(f"16-bit PCM cannot have an odd byte count ({len(data)})")
        return bytes(data)
    x = ulaw_decode(data) if encoding == "pcmu" else alaw_decode(data)
    return x.astype("<i2").tobytes()
