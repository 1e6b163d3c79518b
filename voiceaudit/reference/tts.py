"""eSpeak NG speech synthesis through ctypes (the ``espeakng-loader`` wheel ships the
library and its voice data, so nothing is downloaded).

eSpeak NG keeps one global synthesizer per process, so every call goes through one
dedicated thread. ctypes releases the GIL while the C code runs, and the callback that
hands each piece of audio (eSpeak makes 60 ms pieces) back to the event loop is tiny, so
synthesis does not stall the loop. It runs 500-1000 times faster than real time here.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from voiceaudit.errors import EnvironmentProblem

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
#: Requested callback buffer; eSpeak NG 1.52 never goes below 60 ms pieces.
BUFFER_MS = 20

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

Chunk = npt.NDArray[np.int16]


class Espeak:
    """The process-wide eSpeak NG instance (use :func:`espeak`)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise EnvironmentProblem(
                "the optional dependency 'espeakng-loader' is not installed",
                hint="pip install 'voiceaudit[reference]'",
            ) from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, espeakng_loader.get_data_path().encode(), 0
        )
        if rate <= 0:
            raise EnvironmentProblem("eSpeak NG failed to initialise")
        self.rate: int = rate
        self._lib = lib
        self._sink: Callable[[Chunk], bool] | None = None
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds it
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._wpm: int | None = None
        self._lock = threading.Lock()

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
        sink = self._sink
        if sink is None:
            return 1
        if n > 0 and wav:
            piece = np.ctypeslib.as_array(wav, shape=(n,)).copy()
            if not sink(piece):
                return 1  # abort synthesis
        return 0

    def synthesize(
        self, text: str, sink: Callable[[Chunk], bool], *, voice: str = "en-us", wpm: int = 175
    ) -> None:
        """Synthesize ``text``, calling ``sink`` with each piece (return False to stop).

        Blocks until done; call it from the synthesis thread (see :class:`Synthesizer`).
        """
        with self._lock:
            if voice != self._voice:
                if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"eSpeak NG has no voice {voice!r}")
                self._voice = voice
                self._wpm = None
            if wpm != self._wpm:
                self._lib.espeak_SetParameter(_ESPEAK_RATE, int(wpm), 0)
                self._wpm = wpm
            data = text.encode("utf-8") + b"\0"
            self._sink = sink
            try:
                self._lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
                )
            finally:
                self._sink = None

    def synthesize_all(self, text: str, *, voice: str = "en-us", wpm: int = 175) -> Chunk:
        pieces: list[Chunk] = []

        def keep(p: Chunk) -> bool:
            pieces.append(p)
            return True

        self.synthesize(text, keep, voice=voice, wpm=wpm)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


_instance: Espeak | None = None
_instance_lock = threading.Lock()


def espeak() -> Espeak:
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Espeak()
        return _instance


class Synthesizer:
    """Async streaming front end: one synthesis thread shared by every session."""

    _executor: ThreadPoolExecutor | None = None

    def __init__(self, *, voice: str = "en-us", wpm: int = 175) -> None:
        self.voice = voice
        self.wpm = wpm
        self.engine = espeak()
        self.rate = self.engine.rate
        if Synthesizer._executor is None:
            Synthesizer._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")

    async def warm_up(self) -> None:
        """Load the voice and its dictionary now (about 0.3 s), not in the first reply."""
        async for _ in self.stream("Ready."):
            pass

    async def stream(self, text: str, *, wpm: int | None = None) -> AsyncIterator[Chunk]:
        """Yield int16 pieces at :attr:`rate` as eSpeak produces them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def sink(piece: Chunk) -> bool:
            if cancelled.is_set():
                return False
            loop.call_soon_threadsafe(queue.put_nowait, piece)
            return True

        def work() -> None:
            try:
                self.engine.synthesize(text, sink, voice=self.voice, wpm=wpm or self.wpm)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        assert Synthesizer._executor is not None
        fut = loop.run_in_executor(Synthesizer._executor, work)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            if not fut.done():
                # Let the thread finish (it stops at its next piece) without awaiting here.
                fut.add_done_callback(lambda f: f.exception())
