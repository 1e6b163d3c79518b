"""Load and networks work unchanged for the phone targets (issue 24): many phone sessions
at once through an impairment proxy, a sweep with a phone pipeline beside a WebSocket one,
and Locust users calling a phone bot. The bot is the reference pipeline's Twilio bot
(``voiceaudit serve``, ``/twilio``).

Each check is about the quantity the path changes: every turn completes and is heard
through the carrier; the proxy's delay is on the path (one-sided: every greeting is heard
at least the proxy's round trip after the call's media began); the sweep labels the phone
cell by its path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Served, serve

from voiceaudit.trace_io import read_trace

MS = 1_000_000
DELAY_MS = 60


@pytest.fixture(scope="module")
def bot() -> Iterator[Served]:
    """The reference's Twilio bot (``voiceaudit serve``), greeting on every call."""
    with serve(asr_workers=None, timeout=120, stop_s=30) as server:
        yield server


def _voiceaudit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "voiceaudit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


def test_phone_sessions_at_once_through_an_impaired_network(bot: Served, tmp_path: Path) -> None:
    """Three phone calls at once, each through the impairment proxy (60 ms each way on
    the WebSocket's path): every turn is heard through the carrier, and every greeting at
    least the proxy's round trip after the call's media began."""
    out = tmp_path / "run"
    run = _voiceaudit(
        "run",
        "--target",
        bot.ws + "/twilio",
        "--protocol",
        "twilio",
        "--sessions",
        "3",
        "--turns",
        "2",
        "--impair",
        f"delay={DELAY_MS}ms",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    tr = read_trace(out / "trace.jsonl")
    assert tr.header.target["path"] == "phone"
    assert tr.header.config["impairment"]["proxy"]
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert len(ends) == 6 and all(e.attrs["ok"] for e in ends), [e.attrs for e in ends]
    greetings = [e for e in tr.events if e.name == "greeting.audible"]
    assert len(greetings) == 3  # every call greeted, and the greeting was waited for
    # one-sided: the carrier's start goes to the bot and the greeting comes back through the
    # proxy, so each greeting is heard at least the round trip after the media began
    assert all(g.attrs["latency_ns"] >= 2 * DELAY_MS * MS for g in greetings), greetings


def test_a_sweep_puts_the_phone_path_beside_websocket(tmp_path: Path) -> None:
    from voiceaudit.analysis.sweep import build_sweep_view

    out = tmp_path / "sweep"
    run = _voiceaudit(
        "sweep",
        "--protocol",
        "twilio",
        "--protocol",
        "websocket",
        "--network",
        "lan",
        "--turns",
        "1",
        "--out",
        str(out),
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    d = build_sweep_view(out).to_dict()
    groups = {g["pipeline"]: g for g in d["groups"]}
    assert groups["twilio"]["path"] == "phone" and groups["websocket"]["path"] == "websocket"
    assert groups["twilio"]["ok"] == 1 and groups["websocket"]["ok"] == 1
    assert groups["twilio"]["greeting_p50_ms"] is not None  # the phone bot greeted


LOCUSTFILE = "from voiceaudit.load.locust import VoiceauditUser  # noqa: F401\n"


def test_locust_users_call_a_phone_bot(bot: Served, tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    traces = tmp_path / "traces"
    argv = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless"]
    argv += ["-u", "2", "-r", "2", "-t", "30s", "--only-summary"]
    argv += ["--va-target", bot.ws + "/twilio", "--va-protocol", "twilio"]
    argv += ["--va-out", str(traces), "--va-turns", "1", "--va-timeout", "20"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    found = sorted(traces.rglob("*.jsonl"))
    assert found, run.stderr[-3000:]
    ok = 0
    for path in found:
        tr = read_trace(path)
        assert tr.header.target["path"] == "phone"
        ok += sum(1 for e in tr.events if e.name == "turn.end" and e.attrs["ok"])
    assert ok >= 2  # each user completed at least its call's turn
