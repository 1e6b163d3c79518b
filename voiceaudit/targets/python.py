"""An in-process pipeline given as ``python://package.module:callable``.

The callable is a coroutine function ``pipeline(frames, emit)``, run once per session:

- ``frames`` is an async iterator of input frames (16-bit mono PCM bytes at ``emit.rate``);
  it ends when the session closes.
- ``emit.audio(pcm16)`` sends reply audio, ``emit.mark(name, stage, **attrs)`` reports a
  stage mark (names from docs/trace-format.md), ``emit.done()`` ends the reply, and
  ``emit.error(message)`` fails the turn.

Options: ``rate`` (default 16000). Everything runs on the probe's event loop, so the
pipeline must not block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.targets.base import (
    Target,
    TargetConfig,
    TargetSession,
    TargetSink,
    cancel_quietly,
)


class Emitter:
    """What the pipeline uses to talk back to the probe."""

    def __init__(self, sink: TargetSink, rate: int) -> None:
        self._sink = sink
        self.rate = rate

    def audio(self, pcm16: bytes) -> None:
        self._sink.reply_audio(time.monotonic_ns(), pcm16, self.rate, len(pcm16))

    def mark(self, name: str, stage: str, **attrs: Any) -> None:
        self._sink.mark(name, stage, time.monotonic_ns(), attrs)

    def done(self) -> None:
        self._sink.reply_done(time.monotonic_ns())

    def error(self, message: str) -> None:
        self._sink.mark("error", "error", time.monotonic_ns(), {"message": message})
        self._sink.fail(f"target error: {message}")


Pipeline = Callable[[AsyncIterator[bytes], Emitter], Awaitable[None]]


def load_callable(url: str) -> Pipeline:
    spec = url.removeprefix("python://") if url.startswith("python://") else url
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UsageError(f"{url!r} must look like python://package.module:callable")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {spec}: {exc}") from None
    if not callable(obj):
        raise UsageError(f"{spec} is not callable")
    fn: Pipeline = obj
    return fn


class PythonSession(TargetSession):
    def __init__(self, config: TargetConfig, sink: TargetSink, fn: Pipeline) -> None:
        super().__init__(config, sink)
        self.input_rate = config.int_option("rate", 16000)
        self._fn = fn
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _frames(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def open(self) -> None:
        emitter = Emitter(self.sink, self.input_rate)
        self._task = asyncio.create_task(self._main(emitter))

    async def _main(self, emitter: Emitter) -> None:
        try:
            await self._fn(self._frames(), emitter)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the pipeline under test crashed: a failed turn, not ours
            self.sink.fail(f"pipeline raised {type(exc).__name__}: {exc}")
        else:
            self.sink.fail("pipeline returned (session over)")

    async def send_audio(self, pcm16: bytes) -> None:
        if self._task is None or self._task.done():
            raise TargetError("the pipeline is not running")
        self._queue.put_nowait(pcm16)

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            await cancel_quietly(self._task)
            self._task = None


class PythonTarget(Target):
    protocol = "python"
    path = "in-process"
    schemes = ("python",)
    description = "an in-process pipeline: python://package.module:callable"
    options = {  # noqa: RUF012 - read-only, as in Target
        "rate": "sample rate of the frames the pipeline gets and emits (default 16000)",
    }

    def __init__(self, config: TargetConfig) -> None:
        super().__init__(config)
        if urlsplit(config.url).scheme not in ("python", ""):
            raise UsageError("the python protocol takes python://package.module:callable")
        self._fn = load_callable(config.url)

    def session(self, sink: TargetSink) -> TargetSession:
        return PythonSession(self.config, sink, self._fn)
