"""Unit tests of the probe's pacing and playout model."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voiceaudit.clock import NS_PER_MS, NS_PER_S
from voiceaudit.probe.pacing import Pacer
from voiceaudit.probe.playout import Chunk, play
from voiceaudit.targets.base import TargetConfig, redact_url
from voiceaudit.targets.registry import get_target_class, infer_protocol


def test_pacer_releases_in_deadline_order_and_never_early() -> None:
    async def main() -> list[tuple[int, int]]:
        pacer = Pacer()
        base = time.monotonic_ns() + 20 * NS_PER_MS
        deadlines = [base + d * NS_PER_MS for d in (7, 1, 4, 4, 12, 0)]
        released = await asyncio.gather(*(pacer.wait_until(d) for d in deadlines))
        return list(zip(deadlines, released, strict=True))

    for deadline, released in asyncio.run(main()):
        assert released >= deadline


def test_pacer_deadlines_do_not_drift() -> None:
    """Absolute deadlines: 100 frames of 10 ms end 1 s after the start, not later."""

    async def main() -> int:
        pacer = Pacer()
        t0 = time.monotonic_ns()
        for k in range(1, 101):
            await pacer.wait_until(t0 + k * 10 * NS_PER_MS)
        return time.monotonic_ns() - t0

    elapsed = asyncio.run(main())
    # No drift: the last release is tied to its own deadline, not to the sum of sleeps.
    assert NS_PER_S <= elapsed < NS_PER_S + 50 * NS_PER_MS


def test_past_deadline_returns_at_once() -> None:
    async def main() -> int:
        return await Pacer().wait_until(0)

    assert asyncio.run(main()) > 0


def test_playout_continuous_stream() -> None:
    # Three 20 ms chunks arriving faster than real time play back to back.
    rate = 16000
    chunks = [Chunk(1000 * NS_PER_MS + i * NS_PER_MS, 320) for i in range(3)]
    p = play(chunks, rate)
    assert p.start_ns == 1000 * NS_PER_MS
    assert p.starts_ns == tuple(1000 * NS_PER_MS + i * 20 * NS_PER_MS for i in range(3))
    assert not p.underruns
    assert p.end_ns == 1060 * NS_PER_MS
    # sample 400 is 80 samples into chunk 1 -> 20 ms + 5 ms after start
    assert p.heard_at(400) == 1025 * NS_PER_MS


def test_playout_underrun_is_a_gap() -> None:
    rate = 8000
    # Chunk 1 arrives 50 ms after chunk 0 started, but chunk 0 lasts only 20 ms.
    chunks = [Chunk(0, 160), Chunk(50 * NS_PER_MS, 160)]
    p = play(chunks, rate)
    assert len(p.underruns) == 1
    assert p.underruns[0].at_ns == 20 * NS_PER_MS
    assert p.underruns[0].gap_ns == 30 * NS_PER_MS
    assert p.heard_at(160) == 50 * NS_PER_MS


def test_jitter_buffer_depth_delays_start() -> None:
    p = play([Chunk(0, 160)], 8000, depth_ns=60 * NS_PER_MS)
    assert p.start_ns == 60 * NS_PER_MS


@given(
    st.lists(st.tuples(st.integers(0, 50_000_000), st.integers(1, 4000)), min_size=1, max_size=30)
)
def test_playout_invariants(raw: list[tuple[int, int]]) -> None:
    t = 0
    chunks = []
    for gap, n in raw:
        t += gap
        chunks.append(Chunk(t, n))
    p = play(chunks, 16000)
    for ch, start in zip(chunks, p.starts_ns, strict=True):
        assert start >= ch.arrival_ns  # never played before it arrived
    assert all(b >= a for a, b in zip(p.starts_ns, p.starts_ns[1:], strict=False))
    total_audio = sum(c.samples for c in chunks) * NS_PER_S // 16000
    gaps = sum(u.gap_ns for u in p.underruns)
    assert abs((p.end_ns - p.start_ns) - (total_audio + gaps)) <= len(chunks)


def test_redact_url_drops_credentials_and_query() -> None:
    assert (
        redact_url("wss://user:pw@api.example.com:8443/v1/realtime?model=x&key=sk-123")
        == "wss://api.example.com:8443/v1/realtime"
    )


def test_secrets_collected_from_env_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VA_TEST_KEY", "sk-planted")
    cfg = TargetConfig(
        url="ws://h/v1/realtime",
        protocol="realtime",
        api_key_env="VA_TEST_KEY",
        headers=(("X-Api-Key", "hdr-secret"), ("X-Other", "fine")),
    )
    assert set(cfg.secrets()) == {"sk-planted", "hdr-secret"}
    assert "sk-planted" not in str(cfg.describe())


@pytest.mark.parametrize(
    ("url", "proto"),
    [
        ("ws://127.0.0.1:1/v1/realtime", "realtime"),
        ("wss://api.openai.com/v1/realtime?model=m", "realtime"),
        ("ws://127.0.0.1:1/v1/pcm", "websocket"),
        ("http://127.0.0.1:1/v1", "cascade"),
        ("python://pkg.mod:fn", "python"),
    ],
)
def test_protocol_inference(url: str, proto: str) -> None:
    assert infer_protocol(url) == proto
    assert get_target_class(proto).protocol == proto


def test_socket_facts_name_endpoints_as_a_capture_does() -> None:
    """``session.connected``'s ``local``/``remote`` must equal the capture's endpoint names
    (``host:port``, ``[host]:port`` for IPv6), or the report cannot match the probe's
    socket to its connection; sockets with no such endpoints give none."""
    import socket

    from voiceaudit.targets.base import socket_facts

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as listener, socket.socket(family) as client:
            listener.bind((host, 0))
            listener.listen()
            client.connect(listener.getsockname())
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = f"[{host}]" if family == socket.AF_INET6 else host
            assert socket_facts(client) == {
                "local": f"{name}:{client.getsockname()[1]}",
                "remote": f"{name}:{listener.getsockname()[1]}",
                "tcp_nodelay": True,
            }
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            assert socket_facts(client)["tcp_nodelay"] is False  # type: ignore[index]
    a, b = socket.socketpair()  # a Unix socket
    with a, b, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert socket_facts(a) is None and socket_facts(udp) is None and socket_facts(None) is None
