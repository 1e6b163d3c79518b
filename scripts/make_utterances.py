"""Regenerate the utterances bundled with voiceaudit (voiceaudit/data/utterances/).

They are synthesized by the project itself with eSpeak NG (espeakng-loader), so the
project ships no third-party audio. Each file is 16 kHz mono 16-bit WAV: 250 ms of
digital silence, then the speech, ending on digital silence, so the speech end is exact
to the sample. texts.json maps file name -> text.

    .venv/bin/python scripts/make_utterances.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from voiceaudit.audio import resample
from voiceaudit.reference.tts import espeak

OUT = Path(__file__).resolve().parent.parent / "voiceaudit" / "data" / "utterances"
RATE = 16000
LEAD_MS = 250

UTTERANCES = [
    ("01_weather.wav", "What is the weather like in Boston today?", "en-us", 165),
    ("02_table.wav", "Please book a table for two at seven tonight.", "en", 160),
    ("03_lights.wav", "Turn off the lights in the kitchen.", "en-us", 170),
    ("04_airport.wav", "How long does it take to get to the airport?", "en-US-nyc", 160),
    ("05_joke.wav", "Can you tell me a short joke?", "en-GB-x-rp", 165),
    ("06_thanks.wav", "Thank you, that is all for now.", "en-us", 170),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    engine = espeak()
    texts = {}
    for name, text, voice, wpm in UTTERANCES:
        pcm = engine.synthesize_all(text, voice=voice, wpm=wpm)
        x = pcm.astype(np.float32) / 32768.0
        x = resample(x, engine.rate, RATE)
        q = np.round(x * 32767).astype(np.int16)
        nz = np.flatnonzero(q)
        q = q[nz[0] : nz[-1] + 1]  # trim to the first and last non-zero sample
        out = np.concatenate([np.zeros(RATE * LEAD_MS // 1000, np.int16), q])
        soundfile.write(str(OUT / name), out, RATE, subtype="PCM_16")
        texts[name] = text
        print(f"{name}: {len(out) / RATE:.2f} s  {text}")
    (OUT / "texts.json").write_text(json.dumps(texts, indent=2) + "\n")


if __name__ == "__main__":
    main()
