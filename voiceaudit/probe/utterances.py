"""What the probe replays: speech files with their ground-truth speech end."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceaudit.data import bundled_dir
from voiceaudit.errors import AudioError, InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".raw", ".pcm", ".s16")


@dataclass
class Utterance:
    """One recording to replay, resampled on demand to the rate a target takes."""

    path: Path
    samples: npt.NDArray[np.float32]
    rate: int
    speech_start: int
    speech_end: int
    sha256: str
    text: str | None = None
    _pcm: dict[int, tuple[bytes, int, int]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def at_rate(self, rate: int) -> tuple[bytes, int, int]:
        """(16-bit PCM, speech start, speech end) at ``rate``; sample indices at that rate."""
        cached = self._pcm.get(rate)
        if cached is None:
            from voiceaudit.audio import resample, to_pcm16

            x = self.samples if rate == self.rate else resample(self.samples, self.rate, rate)
            start = round(self.speech_start * rate / self.rate)
            end = min(len(x), round(self.speech_end * rate / self.rate))
            cached = (to_pcm16(x), start, end)
            self._pcm[rate] = cached
        return cached


def _texts(directory: Path) -> dict[str, str]:
    """``texts.json`` beside the audio files: what each file says (``{"name.wav": "…"}``).

    One that cannot be read is an error naming it (exit 3), never a crash."""
    index = directory / "texts.json"
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", path=str(index), line=exc.lineno) from None
    except (OSError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise InputError(f"cannot read the texts index ({why})", path=str(index)) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(
            'not a texts index: it must be a JSON object {"file.wav": "what it says", …}',
            path=str(index),
        )
    return {str(k): v for k, v in data.items()}


def expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise InputError("no audio files in this directory", path=str(p))
            out.extend(found)
        else:
            out.append(p)
    return out


def load_utterances(paths: list[Path], *, rate: int | None = None) -> list[Utterance]:
    """Read each file once and find its speech end (cached per file content)."""
    from voiceaudit.audio import read_audio, speech_info_cached

    files = expand(paths) if paths else expand([bundled_dir()])
    texts: dict[Path, dict[str, str]] = {}
    out: list[Utterance] = []
    for f in files:
        audio = read_audio(f, rate=rate)
        info = speech_info_cached(f, rate=rate)
        if info.speech_end is None or info.speech_start is None:
            raise AudioError("no speech found in this file", path=str(f))
        if f.parent not in texts:
            texts[f.parent] = _texts(f.parent)
        out.append(
            Utterance(
                path=f,
                samples=audio.samples,
                rate=audio.rate,
                speech_start=info.speech_start,
                speech_end=info.speech_end,
                sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                text=texts[f.parent].get(f.name),
            )
        )
    return out
