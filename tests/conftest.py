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


#: Test files that send or capture UDP on loopback while they run (WebRTC sessions, the
#: impairment relay, captures that keep every UDP packet because WebRTC's ports are
#: negotiated) or drive a Pipecat bot under capture: under ``pytest -n`` (make test) they
#: run one after another on one worker, so no capture sees another test's packets. Every
#: other file is one group of its own, so a module's shared recording is made once.
LIVE_UDP = frozenset(
    {
        "test_capture_dumpcap.py",
        "test_capture_reference.py",
        "test_impair_capture.py",
        "test_impair_cli.py",
        "test_ledger_clocks_capture.py",
        "test_pipecat_e2e.py",
        "test_pipecat_interrupt.py",
        "test_probe_stall.py",
        "test_probe_stall_rxstamp.py",
        "test_reference_barge_in.py",
        "test_reference_pipecat_offer.py",
        "test_report_network.py",
        "test_report_wire_to_app.py",
        "test_run_capture.py",
        "test_run_ground_truth.py",
        "test_turntaking_reference.py",
        "test_webrtc_pipecat.py",
        "test_webrtc_reply_start.py",
        "test_webrtc_rtp_injection.py",
        "test_webrtc_track.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put each test in its ``xdist_group`` (``--dist loadgroup``): its file, or
    ``live-udp`` for the files in ``LIVE_UDP``."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("live-udp" if name in LIVE_UDP else name))
