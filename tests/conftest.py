"""Shared test fixtures.

Real third-party data (speech, captures, telemetry) lives outside the repository, because
of its licences: ``../shared/realdata`` relative to the repository root, or the directory
named by ``$VOICEAUDIT_REALDATA``. Tests that need it take the ``realdata`` fixture, which
fails loudly (never skips) when the data is missing, so a CI run without it cannot pass
silently.

Starting what a test talks to (``voiceaudit serve``, the Pipecat test bot, a loopback
aiohttp server) is in ``tests/servers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def realdata_path() -> Path:
    """Where the real data should be: ``$VOICEAUDIT_REALDATA`` or ``../shared/realdata``."""
    env = os.environ.get("VOICEAUDIT_REALDATA")
    return Path(env) if env else ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real-data directory (with ``speech/``, ``pcap/``, ``telemetry/``)."""
    p = realdata_path()
    if not (p / "speech").is_dir():
        pytest.fail(
            f"real data not found at {p}: put shared/realdata next to the repository "
            "or set VOICEAUDIT_REALDATA to its path",
            pytrace=False,
        )
    return p


@pytest.fixture(scope="session")
def speech_dir(realdata: Path) -> Path:
    """``realdata/speech``: real recordings (see its MANIFEST.md)."""
    return realdata / "speech"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep voiceaudit's on-disk caches (``$XDG_CACHE_HOME/voiceaudit``) out of the
    user's home while the tests run; subprocesses inherit the setting."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


#: Test files that capture every UDP packet on loopback while a WebRTC session runs (its
#: media ports are negotiated, so the capture filter keeps all UDP): a WebRTC session of
#: another test would land in their capture. ``make test`` runs them after the rest, on
#: their own (``-m udp_capture``); every other file runs on two workers (``-n 2
#: --dist loadgroup``), a file at a time per worker, so a module's shared recording is made
#: once. Every other capture filters on its own TCP or UDP ports.
UDP_CAPTURE = frozenset({"test_impair_capture.py", "test_webrtc_rtp_injection.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its ``xdist_group`` (its file) and, in ``UDP_CAPTURE``'s files,
    ``udp_capture``."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(name))
        if name in UDP_CAPTURE:
            item.add_marker(pytest.mark.udp_capture)
