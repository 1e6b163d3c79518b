"""Streaming speech recognition through a pool of PocketSphinx worker processes.

The event loop only writes audio to a worker's stdin and reads results from its stdout
(both asyncio pipes), so decoding never holds the server's GIL. Each utterance is a
stream pinned to the least busy worker; a worker decodes its streams' audio as it
arrives, so the final transcript is ready a short ``end_utt`` after the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass

import voiceaudit.reference.asr_protocol as wire
from voiceaudit.errors import EnvironmentProblem, VoiceauditError

#: How long a worker may take to load its model and answer READY.
STARTUP_TIMEOUT_S = 60.0


class AsrError(VoiceauditError):
    """Speech recognition failed for one utterance (the worker died or rejected it)."""


@dataclass(frozen=True, slots=True)
class AsrResult:
    text: str
    #: Worker-side time spent in process_raw for this utterance, and in end_utt.
    decode_ns: int
    end_ns: int
    worker: int


class _Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.active: dict[int, asyncio.Future[AsrResult]] = {}
        self.open_streams = 0
        self.alive = True
        self.reader: asyncio.Task[None] | None = None

    def write(self, op: int, sid: int, payload: bytes = b"") -> None:
        stdin = self.proc.stdin
        if not self.alive or stdin is None or stdin.is_closing():
            raise AsrError(f"speech recognition worker {self.index} is not running")
        stdin.write(wire.frame(op, sid, payload))


class AsrStream:
    """One utterance being recognized. Feed 16 kHz mono s16le, then :meth:`finish`."""

    def __init__(self, pool: AsrPool, worker: _Worker, sid: int) -> None:
        self._pool = pool
        self._worker = worker
        self.sid = sid
        self._done = False
        self.bytes_fed = 0

    def feed(self, pcm16: bytes) -> None:
        if self._done or not pcm16:
            return
        self.bytes_fed += len(pcm16)
        self._worker.write(wire.OP_AUDIO, self.sid, pcm16)

    async def finish(self) -> AsrResult:
        """End the utterance and wait for its transcript."""
        if self._done:
            raise AsrError("this utterance was already finished")
        self._done = True
        fut: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self._worker.active[self.sid] = fut
        try:
            self._worker.write(wire.OP_END, self.sid)
            stdin = self._worker.proc.stdin
            if stdin is not None:
                await stdin.drain()
            return await fut
        finally:
            self._worker.active.pop(self.sid, None)
            self._worker.open_streams -= 1

    def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        self._worker.open_streams -= 1
        with contextlib.suppress(AsrError):
            self._worker.write(wire.OP_CANCEL, self.sid)


class AsrPool:
    """A warm pool of recognition worker processes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._workers: list[_Worker | None] = [None] * size
        self._next_sid = 1
        self._started = False
        self._closing = False
        self._respawn_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded its model."""
        if self._started:
            return
        self._started = True
        workers = await asyncio.gather(*(self._spawn(i) for i in range(self.size)))
        for w in workers:
            self._workers[w.index] = w

    async def _spawn(self, index: int) -> _Worker:
        try:
            import pocketsphinx  # noqa: F401  (fail here, with a hint, not in the child)
        except ImportError as exc:
            raise EnvironmentProblem(
                "the optional dependency 'pocketsphinx' is not installed",
                hint="pip install 'voiceaudit[reference]'",
            ) from exc
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voiceaudit.reference._asr_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(index, proc)
        assert proc.stdout is not None
        try:
            head = await asyncio.wait_for(
                proc.stdout.readexactly(wire.HEADER.size), timeout=STARTUP_TIMEOUT_S
            )
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise EnvironmentProblem(
                "the speech recognition worker did not start",
                hint="check that pocketsphinx imports: python -c 'import pocketsphinx'",
            ) from exc
        op, _, _ = wire.HEADER.unpack(head)
        if op != wire.OP_READY:
            proc.kill()
            raise EnvironmentProblem(f"the speech recognition worker said {op:#x}, not READY")
        worker.reader = asyncio.create_task(self._read(worker), name=f"asr-reader-{index}")
        return worker

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.proc.stdout
        assert stdout is not None
        try:
            while True:
                head = await stdout.readexactly(wire.HEADER.size)
                op, sid, length = wire.HEADER.unpack(head)
                payload = await stdout.readexactly(length) if length else b""
                fut = worker.active.get(sid)
                if fut is None or fut.done():
                    continue
                body = json.loads(payload.decode("utf-8")) if payload else {}
                if op == wire.OP_FINAL:
                    fut.set_result(
                        AsrResult(
                            text=str(body.get("text", "")),
                            decode_ns=int(body.get("decode_ns", 0)),
                            end_ns=int(body.get("end_ns", 0)),
                            worker=worker.index,
                        )
                    )
                elif op == wire.OP_ERROR:
                    fut.set_exception(AsrError(str(body.get("message", "recognition failed"))))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            worker.alive = False
            for fut in worker.active.values():
                if not fut.done():
                    fut.set_exception(AsrError(f"speech recognition worker {worker.index} stopped"))

    async def _usable_worker(self) -> _Worker:
        if not self._started:
            await self.start()
        if self._closing:
            raise AsrError("the speech recognition pool is shut down")
        async with self._respawn_lock:
            for i, w in enumerate(self._workers):
                if w is None or not w.alive:
                    self._workers[i] = await self._spawn(i)
        live = [w for w in self._workers if w is not None and w.alive]
        return min(live, key=lambda w: (w.open_streams, w.index))

    async def open_stream(self) -> AsrStream:
        worker = await self._usable_worker()
        sid = self._next_sid
        self._next_sid += 1
        worker.write(wire.OP_START, sid)
        worker.open_streams += 1
        return AsrStream(self, worker, sid)

    async def transcribe(self, pcm16_16k: bytes, piece_bytes: int = 32_000) -> AsrResult:
        """Recognize a whole recording (16 kHz mono s16le)."""
        stream = await self.open_stream()
        try:
            for i in range(0, len(pcm16_16k), piece_bytes):
                stream.feed(pcm16_16k[i : i + piece_bytes])
                stdin = stream._worker.proc.stdin
                if stdin is not None:
                    await stdin.drain()
        except BaseException:
            stream.cancel()
            raise
        return await stream.finish()

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "worker": i,
                "pid": w.proc.pid if w is not None else None,
                "alive": bool(w is not None and w.alive),
                "open_streams": w.open_streams if w is not None else 0,
            }
            for i, w in enumerate(self._workers)
        ]

    async def close(self) -> None:
        self._closing = True
        for w in self._workers:
            if w is None:
                continue
            stdin = w.proc.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.close()
        deadline = time.monotonic() + 5.0
        for w in self._workers:
            if w is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
            if w.reader is not None:
                w.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.reader
