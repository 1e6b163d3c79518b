"""The cascade target's per-hop connection marks, against the reference pipeline on loopback.

Three recordings, made once and at the same time (one shared speech-recognition pool):

- ``reuse``: two turns on one session. The first hop of turn 0 (recognition) opens a
  connection; the model's request takes it back from the pool (recognition read its whole
  body, which released it); the first sentence's synthesis, sent while the model's stream
  still holds that connection, opens a second one; every hop of turn 1 reuses one of
  the two (the reference server keeps connections alive, aiohttp's client pool keeps them
  15 s). The server's own ground truth counts the TCP connections it saw (one session id
  per connection) and must agree. The URL names ``localhost``, so the first connection
  resolves it and the second finds it in aiohttp's DNS cache.
- ``queue``: one turn with ``max_connections=1``: the first sentence's synthesis waits in
  the pool's queue until the model's stream gives the one connection back.
- ``delay``: one turn against a server with ``connect-delay``. The reference server
  injects it *after* accepting the connection (it holds the first response on each new
  TCP connection), so the kernel's loopback TCP connect inside aiohttp's
  ``connect_start`` -> ``connected`` does not contain it: it shows between
  ``http.request_headers_sent`` and ``http.headers`` of exactly the hops whose connection
  is new, which the server's ground truth confirms request by request (stage and count).

Time bounds are one-sided: a loaded machine only adds time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.model import Event
from voiceaudit.reference.groundtruth import read_ground_truth
from voiceaudit.trace_io import Trace, read_trace

pytestmark = pytest.mark.slow

MS = 1_000_000
DELAY_MS = 150
UTTERANCES = ("05_joke.wav", "03_lights.wav")  # short, and their replies have two sentences
#: (turns, target options, server injections) per recording
RUNS: dict[str, tuple[int, dict[str, str], tuple[str, ...]]] = {
    "reuse": (2, {}, ()),
    "queue": (1, {"max_connections": "1"}, ()),
    "delay": (1, {}, (f"connect-delay={DELAY_MS}ms",)),
}
CONNECTION_MARKS = {
    "http.queue_start",
    "http.queue_done",
    "http.connect_start",
    "http.dns_start",
    "http.dns_done",
    "http.dns_cache_hit",
    "http.connected",
    "http.conn_reused",
    "http.request_headers_sent",
}
#: the reference server's stage names for the cascade's hops
SERVER_STAGE = {"transcription": "asr", "chat": "llm", "speech": "tts"}


@dataclass
class Recording:
    trace: Trace
    truth: list[dict[str, Any]]
    host: str

    def hops(self, turn: int) -> dict[str, list[list[Event]]]:
        """The turn's ``http.*`` marks per stage, one list per request (they start with
        ``http.request_sent``; a stage's requests never overlap)."""
        (session,) = {s for s, _ in self.trace.finished_turns()}
        out: dict[str, list[list[Event]]] = {}
        evs = sorted(self.trace.turn_events(session, turn), key=lambda e: e.t_ns)
        for e in evs:
            if not e.name.startswith("http."):
                continue
            assert e.stage in ("asr", "llm", "tts"), e
            if e.name == "http.request_sent":
                out.setdefault(e.stage, []).append([])
            out[e.stage][-1].append(e)
        return out

    def server_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.truth if r.get("record") == "turn" and r["protocol"] == "http"]


async def _record(base: Path) -> dict[str, tuple[Path, Path, str]]:
    from voiceaudit.cli.run_cmd import reference_url
    from voiceaudit.data import bundled_dir
    from voiceaudit.probe.runner import ProbeOptions, run_probe
    from voiceaudit.probe.utterances import load_utterances
    from voiceaudit.reference.asr import AsrPool
    from voiceaudit.reference.config import ServerConfig, parse_injections
    from voiceaudit.reference.server import ReferenceServer, start_reference_server
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class

    utterances = load_utterances([bundled_dir() / u for u in UTTERANCES])
    pool = AsrPool(len(RUNS))
    await pool.start()
    servers: list[ReferenceServer] = []
    out: dict[str, tuple[Path, Path, str]] = {}
    try:
        probes = []
        for name, (turns, options, inject) in RUNS.items():
            truth = base / f"{name}.truth.jsonl"
            server = await start_reference_server(
                ServerConfig(injections=parse_injections(inject), ground_truth_path=truth),
                asr_pool=pool,
            )
            servers.append(server)
            url = reference_url(server, "cascade").replace("127.0.0.1", "localhost", 1)
            assert "localhost" in url
            target = get_target_class("cascade")(
                TargetConfig(url=url, protocol="cascade", options=options)
            )
            trace = base / f"{name}.jsonl"
            probes.append(
                run_probe(target, utterances, ProbeOptions(turns=turns, gap_ms=100), trace)
            )
            out[name] = (trace, truth, f"localhost:{server.port}")
        await asyncio.gather(*probes)
    finally:
        for server in servers:
            await server.close()
        await pool.close()
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recording]:
    base = tmp_path_factory.mktemp("cascade-connections")
    paths = asyncio.run(_record(base))
    out = {}
    for name, (trace, truth, host) in paths.items():
        tr = read_trace(trace)
        turns = RUNS[name][0]
        ends = [e for e in tr.events if e.name == "turn.end"]
        assert len(ends) == turns and all(e.attrs["ok"] for e in ends), [e.attrs for e in ends]
        out[name] = Recording(tr, read_ground_truth(truth), host)
    return out


def _check_hop(hop: list[Event], host: str) -> str:
    """The order and attributes of one request's marks; returns ``new`` or ``reused``."""
    names = [e.name for e in hop]
    at = {e.name: e.t_ns for e in hop}
    assert names[0] == "http.request_sent"
    assert names.count("http.request_headers_sent") == 1
    assert names.count("http.headers") == 1
    for e in hop:
        if e.name in CONNECTION_MARKS:
            assert e.attrs["host"] == host, e
            assert e.name in ("http.queue_start", "http.queue_done") or "conn" in e.attrs, e
    times = [e.t_ns for e in hop]
    assert times == sorted(times)
    # The connection marks, in the order aiohttp goes through them, all between the
    # request being issued and its headers going out.
    setup = [n for n in names if n in CONNECTION_MARKS]
    assert setup[-1] == "http.request_headers_sent", names
    sent = hop[names.index("http.request_headers_sent")]
    assert at["http.request_sent"] <= sent.t_ns <= at["http.headers"]
    if "http.queue_start" in setup:
        assert setup[:2] == ["http.queue_start", "http.queue_done"], names
        setup = setup[2:]
    if setup[0] == "http.conn_reused":
        assert setup == ["http.conn_reused", "http.request_headers_sent"], names
        assert sent.attrs["conn"] == "reused"
        assert hop[names.index("http.conn_reused")].attrs == {
            "host": host,
            "conn": "reused",
            "tls": False,
        }
        return "reused"
    assert setup[0] == "http.connect_start" and setup[-2] == "http.connected", names
    assert setup[1:-2] in (["http.dns_start", "http.dns_done"], ["http.dns_cache_hit"]), names
    assert at["http.connect_start"] <= at["http.connected"] <= sent.t_ns <= at["http.headers"]
    for name in ("http.connect_start", "http.connected"):
        assert hop[names.index(name)].attrs == {"host": host, "conn": "new", "tls": False}
    assert sent.attrs["conn"] == "new"
    return "new"


def _conns(rec: Recording, turn: int) -> dict[str, list[str]]:
    return {
        stage: [_check_hop(h, rec.host) for h in hops] for stage, hops in rec.hops(turn).items()
    }


def test_first_turn_connects_later_turns_reuse(recorded: dict[str, Recording]) -> None:
    rec = recorded["reuse"]
    first = _conns(rec, 0)
    # recognition: nothing pooled yet; the model: recognition's connection, given back;
    # the first sentence's synthesis: the model's stream holds that one, so a second;
    # the second sentence's: whichever is free.
    assert first["asr"] == ["new"]
    assert first["llm"] == ["reused"]
    assert first["tts"][0] == "new" and len(first["tts"]) >= 2
    assert first["tts"][1:] == ["reused"] * (len(first["tts"]) - 1)
    # the first lookup resolved localhost, the second connection found it in the cache
    tts0 = [e.name for e in rec.hops(0)["tts"][0]]
    assert "http.dns_start" in [e.name for e in rec.hops(0)["asr"][0]]
    assert "http.dns_cache_hit" in tts0
    later = _conns(rec, 1)
    assert set(later) == {"asr", "llm", "tts"}
    assert all(c == "reused" for cs in later.values() for c in cs), later
    # The server saw as many TCP connections as the marks say were opened (one session id
    # per connection), and served every request the marks account for.
    server = rec.server_requests()
    assert len({r["session_id"] for r in server}) == 2
    hops = [h for turn in (0, 1) for hs in rec.hops(turn).values() for h in hs]
    assert len(server) == len(hops)


def test_queue_wait_when_the_pool_is_full(recorded: dict[str, Recording]) -> None:
    rec = recorded["queue"]
    conns = _conns(rec, 0)
    assert conns["asr"] == ["new"]
    assert conns["llm"] == ["reused"]
    assert set(conns["tts"]) == {"reused"}  # one connection for everything
    hops = rec.hops(0)
    tts0 = {e.name: e.t_ns for e in hops["tts"][0]}
    llm = {e.name: e.t_ns for e in hops["llm"][0]}
    # the first sentence is ready while the model still streams: it waits for the model's
    # connection, and gets it only after the model's response began
    assert "http.queue_start" in tts0, [e.name for e in hops["tts"][0]]
    assert llm["http.headers"] <= tts0["http.queue_start"] <= tts0["http.queue_done"]
    assert len({r["session_id"] for r in rec.server_requests()}) == 1


def test_connect_delay_lands_on_the_hops_with_new_connections(
    recorded: dict[str, Recording],
) -> None:
    rec = recorded["delay"]
    new_hops: Counter[str] = Counter()
    for stage, hops in rec.hops(0).items():
        for hop in hops:
            at = {e.name: e.t_ns for e in hop}
            if _check_hop(hop, rec.host) == "new":
                new_hops[stage] += 1
                # held by the server after the request reached it on the new connection
                waited = at["http.headers"] - at["http.request_headers_sent"]
                assert waited >= DELAY_MS * MS, (stage, waited / MS)
    assert new_hops == Counter({"asr": 1, "tts": 1})
    # the server says the same requests paid it
    paid = Counter(
        SERVER_STAGE[r["stage"]]
        for r in rec.server_requests()
        if r["injected"].get("connect_delay_ns") == DELAY_MS * MS
    )
    assert paid == new_hops
