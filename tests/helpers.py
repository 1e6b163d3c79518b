"""Small helpers several test files (and the bench scripts) share.

Servers the tests start (the reference pipeline, the Pipecat bots) have their own fixture
module; this one holds what is smaller than a fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from voiceaudit.model import Event


def with_attrs(
    events: Iterable[Event], name: str, attrs: Mapping[str, Callable[[Event], Any]]
) -> list[Event]:
    """The events, those named ``name`` with each of ``attrs`` set to its function of the
    event."""
    return [
        dataclasses.replace(e, attrs={**e.attrs, **{k: f(e) for k, f in attrs.items()}})
        if e.name == name
        else e
        for e in events
    ]


async def serve_local(path: str, handler: Any) -> tuple[web.AppRunner, int]:
    """An aiohttp app answering GET ``path`` with ``handler``, started on 127.0.0.1 at a free
    port: its runner (to clean up) and the port."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


def serve_forever(path: str, handler: Any, port_q: Any) -> None:
    """Serve ``handler`` at ``path`` on a free loopback port until the process ends, after
    putting the port on ``port_q`` (a server in a child process)."""

    async def main() -> None:
        _runner, port = await serve_local(path, handler)
        port_q.put(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def budget_toml(voice_to_voice: str, model_first_token: str, min_turns: int) -> str:
    """A ``[budget]`` table in the layout the gate tests use: the given voice-to-voice and
    first-token limits, leading silence at most 50 ms, no failed turn, at least
    ``min_turns`` turns."""
    return (
        "[budget]\n"
        f"voice_to_voice = {{ {voice_to_voice} }}\n"
        f'"segment.model_first_token" = {{ {model_first_token} }}\n'
        '"segment.leading_silence" = { max = "50ms" }\n'
        "failed_turns = { max = 0 }\n"
        f"min_turns = {min_turns}\n"
    )


def refuses_missing_and_directory(
    read: Callable[[Path], object], error: type[Exception], missing: Path, directory: str
) -> None:
    """``read`` raises ``error`` saying "no such file" for the ``missing`` file and
    ``directory`` for the directory it would be in."""
    with pytest.raises(error, match="no such file"):
        read(missing)
    with pytest.raises(error, match=directory):
        read(missing.parent)
