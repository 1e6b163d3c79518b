"""Endpointing: a streaming server VAD on 16 kHz audio (WebRTC's GMM VAD, webrtcvad).

Audio is cut into 10 ms frames. Speech starts when at least ``START_VOICED`` of the last
``START_WINDOW`` frames are voiced; the start is the first voiced frame of that window.
Speech stops when ``silence_ms`` of consecutive unvoiced frames follow it; like OpenAI's
``server_vad`` the reported ``audio_end_ms`` is the position of that decision, so it
includes the silence duration. Positions are in session audio time: milliseconds of
audio received since the session started.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from voiceaudit.reference.dsp import F32, float_to_pcm16

RATE = 16_000
FRAME_MS = 10
FRAME = RATE * FRAME_MS // 1000
START_WINDOW = 10
START_VOICED = 6


def threshold_to_mode(threshold: float) -> int:
    """OpenAI's 0..1 threshold onto webrtcvad's aggressiveness 0..3 (0.5 → 2)."""
    return min(3, max(0, int(threshold * 4)))


@dataclass(frozen=True, slots=True)
class SpeechStart:
    #: First voiced frame, and that minus the prefix padding (clamped at 0), in ms.
    speech_start_ms: int
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStop:
    #: End of the last voiced frame (the server's view of when the user stopped), in ms.
    speech_end_ms: int
    #: Position of the endpoint decision: speech_end_ms plus the silence duration.
    audio_end_ms: int


VadEvent = SpeechStart | SpeechStop


class Endpointer:
    """Feed 16 kHz float samples; get speech start/stop events in audio order."""

    def __init__(self, *, silence_ms: int, threshold: float = 0.5) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(threshold_to_mode(threshold))
        self.silence_frames = max(1, -(-silence_ms // FRAME_MS))
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames = 0  # frames classified so far
        self._window: deque[bool] = deque(maxlen=START_WINDOW)
        self.in_speech = False
        self._silence_run = 0
        self._last_voiced_end = 0
        self._prefix_ms = 0

    def set_silence_ms(self, silence_ms: int) -> None:
        self.silence_frames = max(1, -(-silence_ms // FRAME_MS))

    @property
    def last_voiced_end_ms(self) -> int:
        return self._last_voiced_end

    @property
    def position_ms(self) -> int:
        return self._frames * FRAME_MS

    def feed(self, samples: F32, prefix_padding_ms: int) -> list[VadEvent]:
        self._pending = np.concatenate([self._pending, samples])
        n = self._pending.size // FRAME
        events: list[VadEvent] = []
        for i in range(n):
            frame = self._pending[i * FRAME : (i + 1) * FRAME]
            voiced = bool(self._vad.is_speech(float_to_pcm16(frame), RATE))
            self._frames += 1
            end_ms = self._frames * FRAME_MS
            self._window.append(voiced)
            if not self.in_speech:
                if sum(self._window) >= START_VOICED:
                    first = len(self._window) - list(self._window).index(True)
                    start_ms = end_ms - first * FRAME_MS
                    self.in_speech = True
                    self._silence_run = 0
                    self._last_voiced_end = end_ms
                    events.append(SpeechStart(start_ms, max(0, start_ms - prefix_padding_ms)))
            elif voiced:
                self._silence_run = 0
                self._last_voiced_end = end_ms
            else:
                self._silence_run += 1
                if self._silence_run >= self.silence_frames:
                    self.in_speech = False
                    self._window.clear()
                    events.append(SpeechStop(self._last_voiced_end, end_ms))
        self._pending = self._pending[n * FRAME :]
        return events

    def force_stop(self) -> SpeechStop | None:
        """End the current speech now (a manual commit)."""
        if not self.in_speech:
            return None
        self.in_speech = False
        self._window.clear()
        return SpeechStop(self._last_voiced_end, self.position_ms)
