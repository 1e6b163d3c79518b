"""Small helpers several test files (and the bench scripts) share.

Servers the tests start (the reference pipeline, the Pipecat bots) have their own fixture
module; this one holds what is smaller than a fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable, Iterable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import strategies as st

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


#: the reference pipeline's marks in the order they happen, and the ledger's stage from
#: each to the next
PIPELINE_MARKS = (
    "vad_stop",
    "transcript_final",
    "llm_request",
    "llm_first_token",
    "tts_request",
    "tts_first_audio",
)
PIPELINE_STAGES = (
    "transcription",
    "handoff",
    "model_first_token",
    "aggregation",
    "synthesis_first_byte",
)


def assert_pipeline_stages(segments: Mapping[str, int], marks: Mapping[str, int]) -> None:
    """Each of ``PIPELINE_STAGES`` in a ledger's ``segments`` (by name) is exactly the ground
    truth's time between its two ``marks``."""
    for stage, (start, end) in zip(PIPELINE_STAGES, pairwise(PIPELINE_MARKS), strict=True):
        truth = marks[end] - marks[start]
        assert segments[stage] == truth, (stage, segments[stage], truth)


def refuses_missing_and_directory(
    read: Callable[[Path], object], error: type[Exception], missing: Path, directory: str
) -> None:
    """``read`` raises ``error`` saying "no such file" for the ``missing`` file and
    ``directory`` for the directory it would be in."""
    with pytest.raises(error, match="no such file"):
        read(missing)
    with pytest.raises(error, match=directory):
        read(missing.parent)


def json_values(
    *, text: int = 20, items: int = 4, keys: int = 8, leaves: int = 10, floats: bool = False
) -> st.SearchStrategy[Any]:
    """JSON values: null, booleans, 63-bit integers, strings up to ``text`` characters (and
    finite floats with ``floats``), in lists and objects of up to ``items`` members."""
    scalars: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(-(2**62), 2**62),
        st.text(max_size=text),
    ]
    if floats:
        scalars.append(st.floats(allow_nan=False, allow_infinity=False))
    return st.recursive(
        st.one_of(*scalars),
        lambda inner: st.one_of(
            st.lists(inner, max_size=items),
            st.dictionaries(st.text(max_size=keys), inner, max_size=items),
        ),
        max_leaves=leaves,
    )


def events(
    values: st.SearchStrategy[Any],
    names: st.SearchStrategy[str],
    *,
    text: int = 10,
    turns: int = 10_000,
    t_ns: int = 2**62,
    stage: int = 12,
    keys: int = 8,
    attrs: int = 5,
) -> st.SearchStrategy[Event]:
    """Events of any source, with texts of up to ``text`` characters (the stage ``stage``),
    turns up to ``turns``, times up to ``t_ns`` and up to ``attrs`` attributes of
    ``values``."""
    return st.builds(
        Event,
        session=st.text(min_size=1, max_size=text),
        turn=st.one_of(st.none(), st.integers(0, turns)),
        t_ns=st.integers(0, t_ns),
        source=st.sampled_from(["probe", "pipeline", "network", "import"]),
        stage=st.text(max_size=stage),
        name=names,
        attrs=st.dictionaries(st.text(max_size=keys), values, max_size=attrs),
    )
