"""Start `voiceaudit serve` (the reference pipeline) as a subprocess for a test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve(*args: str, timeout_s: float = 60.0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``voiceaudit serve --port 0 ARGS``; yields the process and its Realtime URL
    (``ws://…/v1/realtime``), and stops it on the way out (SIGTERM, then SIGKILL after
    30 s)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "voiceaudit", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = None
        deadline = time.monotonic() + timeout_s
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            if line.startswith("voiceaudit-serve listening "):
                url = line.split()[-1].replace("http://", "ws://") + "/v1/realtime"
        assert url is not None, "serve did not start"
        yield server, url
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
