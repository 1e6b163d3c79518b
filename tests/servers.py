"""Starting what the tests talk to, in one place: the reference pipeline (``voiceaudit
serve`` as a subprocess), the Pipecat test bot (``tests/pipecat_bot.py``, over WebSocket or
WebRTC), small aiohttp test servers on loopback, and ``voiceaudit run`` against them.

Test support code (no tests here). Every server binds 127.0.0.1 on a port the kernel picks
(the Pipecat WebSocket bot: a free port chosen just before it starts) and is stopped on the
way out of its ``with`` block, also when the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
PIPECAT_BOT = Path(__file__).with_name("pipecat_bot.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[str], timeout_s: float, terminate: bool = True) -> None:
    """SIGTERM (if it still runs; ``terminate=False``: it was sent already), then SIGKILL
    after ``timeout_s``; reaps it."""
    if terminate and proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def capture_marks() -> list[pytest.MarkDecorator]:
    """The marks of a module that captures loopback traffic (dumpcap) and dissects it
    (tshark): ``capture`` and ``slow``, skipped where a tool or the capture rights lack."""
    from voiceaudit.capture.dumpcap import capture_rights_problem

    return [
        pytest.mark.capture,
        pytest.mark.slow,
        pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap not installed"),
        pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
        pytest.mark.skipif(capture_rights_problem() is not None, reason="no capture rights here"),
    ]


# --- the reference pipeline as a subprocess ----------------------------------------------


@dataclass
class Served:
    """A running ``voiceaudit serve``: its HTTP URL, process, ground-truth file and stderr."""

    url: str
    proc: subprocess.Popen[str]
    ground_truth: Path
    stderr_path: Path

    @property
    def ws(self) -> str:
        """The server's base URL as ``ws://``."""
        return self.url.replace("http://", "ws://", 1)

    @property
    def realtime(self) -> str:
        """Its OpenAI-Realtime endpoint."""
        return self.ws + "/v1/realtime"

    def records(self) -> list[dict[str, Any]]:
        """Every ground-truth record written so far."""
        from voiceaudit.reference import read_ground_truth

        return read_ground_truth(self.ground_truth)

    def turns(self) -> list[dict[str, Any]]:
        """The ground-truth turn records written so far."""
        return [r for r in self.records() if r.get("record") == "turn"]

    def wait_turns(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Turn records matching ``pred``, waiting until there is at least one."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.turns() if pred(r)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def turn(self, session_id: str, turn: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """The ground-truth record of one turn (waits for it to be written)."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.turns():
                if r["session_id"] == session_id and r["turn"] == turn:
                    return r
            if time.monotonic() > deadline:
                raise AssertionError(f"no ground truth for {session_id} turn {turn}")
            time.sleep(0.05)


@contextmanager
def serve(
    *args: str, asr_workers: int | None = 1, timeout: float = 90.0, stop_s: float = 10.0
) -> Iterator[Served]:
    """Run ``voiceaudit serve --port 0 ARGS`` and yield it once it listens
    (``asr_workers=None``: the command's own default)."""
    with serve_many(
        [list(args)], asr_workers=asr_workers, timeout=timeout, stop_s=stop_s
    ) as servers:
        yield servers[0]


@contextmanager
def serve_many(
    arg_lists: list[list[str]],
    *,
    asr_workers: int | None = 1,
    timeout: float = 120.0,
    stop_s: float = 10.0,
) -> Iterator[list[Served]]:
    """Start several servers at once (their start-up overlaps) and yield them all; on the
    way out each gets SIGTERM, then SIGKILL after ``stop_s``."""
    started: list[tuple[subprocess.Popen[str], Path, Path, Any]] = []
    try:
        for args in arg_lists:
            tmp = Path(tempfile.mkdtemp(prefix="va-ref-"))
            gt = tmp / "truth.jsonl"
            err_path = tmp / "stderr.txt"
            err = err_path.open("w")
            workers = [] if asr_workers is None else ["--asr-workers", str(asr_workers)]
            cmd = [sys.executable, "-m", "voiceaudit", "serve", "--port", "0", *workers,
                   "--ground-truth", str(gt), *args]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
            started.append((proc, gt, err_path, err))
        servers = [
            Served(_read_url(proc, timeout, err_path), proc, gt, err_path)
            for proc, gt, err_path, _ in started
        ]
        yield servers
    finally:
        for proc, _, _, _ in started:
            proc.terminate()
        for proc, _, _, err in started:
            stop_process(proc, stop_s, terminate=False)
            err.close()


def _read_url(proc: subprocess.Popen[str], timeout: float, err_path: Path) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("voiceaudit-serve listening "):
                return line.split()[-1]
        if proc.poll() is not None:
            break
    raise AssertionError(f"voiceaudit serve did not start: {err_path.read_text()[-2000:]}")


def start_run(
    out: Path, *args: str, first_turn_s: float = 60.0
) -> tuple[subprocess.Popen[str], Path]:
    """``voiceaudit run ARGS --out OUT`` as a subprocess (stdout and stderr piped); returns
    once its trace holds a finished turn (or after ``first_turn_s``), with the trace's path."""
    run = subprocess.Popen(
        [sys.executable, "-m", "voiceaudit", "run", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    trace = out / "trace.jsonl"
    deadline = time.monotonic() + first_turn_s
    while time.monotonic() < deadline:
        if trace.exists() and '"turn.end"' in trace.read_text():
            break
        time.sleep(0.05)
    return run, trace


# --- the Pipecat test bot ----------------------------------------------------------------


class PipecatBot:
    """``tests/pipecat_bot.py --transport TRANSPORT ARGS`` as a subprocess, its stderr in
    ``log``. Start several, then :meth:`wait_ready` each (their model loading overlaps); as
    a context manager it waits until ready and stops the bot on the way out."""

    def __init__(
        self, log: Path, *args: str, transport: str = "websocket", ready_s: float = 180.0
    ) -> None:
        self.log = log
        self.ready_s = ready_s
        self.transport = transport
        #: the WebSocket bot is told its port; the WebRTC bot says which it took
        self.port = free_port() if transport == "websocket" else 0
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(PIPECAT_BOT), "--transport", transport,
                 "--port", str(self.port), *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        """Where a client reaches the bot (the WebRTC bot: its signalling endpoint)."""
        if self.transport == "websocket":
            return f"ws://127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}/api/offer"

    def wait_ready(self) -> int:
        """Wait for the bot's ``READY <port>``; returns the port. A bot that exits or is
        not ready within ``ready_s`` is killed and fails the test with its log's tail."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                self.port = int(line.split()[1])
                return self.port
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        self.proc.wait()
        raise AssertionError("the Pipecat bot did not start:\n" + self.log.read_text()[-3000:])

    def log_tail(self) -> str:
        """The last 3000 characters of the bot's stderr."""
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (nothing if it has exited)."""
        stop_process(self.proc, 15)

    def __enter__(self) -> PipecatBot:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- small aiohttp servers on loopback ---------------------------------------------------


class LoopbackServer:
    """An aiohttp app on a free 127.0.0.1 port, for a test's own fake target.

    A subclass writes ``handler`` (served with GET at ``path``) or overrides ``routes``.
    In a test's event loop: ``url = await server.start()`` … ``await server.stop()``; for
    code that runs its own loop (the CLI, ``asyncio.run``): ``with server:`` serves from a
    thread of its own.
    """

    path = "/v1/realtime"
    scheme = "ws"
    #: how long stopping waits for handlers still running (aiohttp's default: 60 s)
    shutdown_timeout = 60.0
    runner: web.AppRunner | None = None
    port = 0

    async def handler(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def routes(self, app: web.Application) -> None:
        """Add the app's routes (default: GET ``path`` to ``handler``)."""
        app.router.add_get(self.path, self.handler)

    @property
    def url(self) -> str:
        """The URL of ``path`` once started."""
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> str:
        """Listen; returns :attr:`url`."""
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=self.shutdown_timeout)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()
        return self.url

    async def stop(self) -> None:
        """Stop listening and end the connections (a second call does nothing)."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            with contextlib.suppress(Exception):
                await runner.cleanup()

    def __enter__(self) -> Any:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert started.wait(30), "the test server did not start"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(30)


def appended_pcm(event: dict[str, Any]) -> np.ndarray:
    """The samples (float64) of a Realtime ``input_audio_buffer.append`` (16-bit PCM)."""
    return np.frombuffer(base64.b64decode(event["audio"]), "<i2").astype(np.float64)


class EnergyEndpointer:
    """A fake server's endpointing: an input chunk whose RMS is above 300 (of 32767) is
    speech; ``end_ms`` of quieter input after speech ends the caller's turn."""

    def __init__(self, rate: int, end_ms: int = 300) -> None:
        self.rate = rate
        self.end_ms = end_ms
        self.speech_ms = 0
        self.quiet_ms = 0

    def feed(self, x: np.ndarray) -> bool:
        """Take the next chunk; True when it is the first loud one of a turn."""
        ms = 1000 * x.size // self.rate
        if x.size and float(np.sqrt(np.mean(x * x))) > 300.0:
            first = self.speech_ms == 0
            self.speech_ms += ms
            self.quiet_ms = 0
            return first
        if self.speech_ms:
            self.quiet_ms += ms
        return False

    @property
    def turn_ended(self) -> bool:
        """Speech, then ``end_ms`` of quiet (until :meth:`reset`)."""
        return self.speech_ms > 0 and self.quiet_ms >= self.end_ms

    def reset(self) -> None:
        """Start listening for the next turn."""
        self.speech_ms = self.quiet_ms = 0


class HandlerServer(LoopbackServer):
    """A :class:`LoopbackServer` for one handler function at ``path``."""

    def __init__(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str
    ) -> None:
        self.handler = handler  # type: ignore[method-assign]
        self.path = path
