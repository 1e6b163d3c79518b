"""The ``gemini-live`` target against a faithful Gemini Live server on loopback (WSS with a
self-signed certificate, tests/gemini_server.py), and Google's own SDK client against the
same server.

Every message the server sends passes the SDK's strict ``LiveServerMessage`` model and every
message voiceaudit sends passes its ``LiveClientMessage`` model (the server records any
that does not: asserted empty). The server records its truth on the host's monotonic clock
(the probe's too: one process): when it sent every reply chunk, ``interrupted``, and the
greeting. The probe's voice-to-voice is checked against it: the server's send time of the
chunk holding the reply's first audible sample plus that sample's offset in it, minus the
instant the caller's last speech sample was spoken. Real speech both ways (realdata).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from gemini_server import OUT_RATE, GeminiLiveServer, ReplyRecord, make_cert, speech_pcm
from google import genai
from google.genai import types
from servers import HandlerServer

from voiceaudit.analysis import build_report
from voiceaudit.audio import from_pcm16
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.model import Event, unbatch
from voiceaudit.probe.conversation import last_audible
from voiceaudit.probe.playout import Chunk, play
from voiceaudit.probe.runner import Probe, ProbeOptions, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.scenario import parse_scenario
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.gemini import GeminiLiveTarget, parse_pcm_mime
from voiceaudit.targets.registry import get_target_class
from voiceaudit.targets.wsbase import tls_context
from voiceaudit.trace_io import Trace, read_trace

MS = 1_000_000
KEY_ENV = "VOICEAUDIT_TEST_GEMINI_KEY"
SECRET = "AIzaTEST-secret-key-0123456789"
CARDS = {
    "pocketsphinx_cards_001.wav": "ten of clubs",
    "pocketsphinx_cards_003.wav": "seven of clubs",
    "pocketsphinx_cards_004.wav": "five five",
    "pocketsphinx_cards_002.wav": "four queen of clubs",
}
REPLY = "pocketsphinx_sense_and_sensibility_01_austen_64kb-0870.wav"
REPLY_TEXT = "and mister john dashwood had then"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def _server(
    cert: tuple[Path, Path], speech: Path, reply_ms: int = 1600, **kw: Any
) -> GeminiLiveServer:
    return GeminiLiveServer(
        cert[0],
        cert[1],
        speech_pcm(speech / REPLY, reply_ms),
        transcripts=list(CARDS.values()),
        reply_text=REPLY_TEXT,
        end_ms=400,
        **kw,
    )


def _target(url: str, cert: tuple[Path, Path], **options: str) -> GeminiLiveTarget:
    config = TargetConfig(
        url=url,
        protocol="gemini-live",
        api_key_env=KEY_ENV,
        options={"ca_file": str(cert[0]), **options},
    )
    target = get_target_class("gemini-live")(config)
    assert isinstance(target, GeminiLiveTarget)
    return target


def _turn_events(tr: Trace, session: str, turn: int) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in sorted(
        (u for e in tr.turn_events(session, turn) for u in unbatch(e)), key=lambda e: e.t_ns
    ):
        out.setdefault(e.name, []).append(e)
    return out


def _heard(rec: ReplyRecord, sample: int) -> int:
    """When the reply's ``sample`` is heard by the server's truth: each chunk played (as
    the probe's immediate playout does) from its send time, or once the chunk before it
    has played (a chunk the server's pacing sent before that waits for it)."""
    n = rec.chunk_samples
    return play([Chunk(t, n) for t in rec.audio_sent_ns], OUT_RATE).heard_at(sample)


def _no_secret(path: Path) -> None:
    text = path.read_text()
    assert SECRET not in text
    assert SECRET[:12] not in text


# --- turns: voice-to-voice against the server's truth -----------------------------------


@pytest.mark.parametrize("vad", ["server", "manual"])
def test_turns_agree_with_server_truth(
    vad: str, cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """Four turns of real speech (cards recordings, 16 kHz PCM at microphone pace) each get
    a reply of real speech (24 kHz ``inlineData`` paced at real time). Voice-to-voice is the
    server's truth within 2 ms (median; never more than 1 ms earlier), the ledger's marks
    are the arrivals of the messages that carry them, the key went as ``x-goog-api-key``
    and never reached the trace, and every message both ways passed the SDK's models. (About
    15 s: four turns of speech and replies at real time.)"""
    # the API sends JSON in binary frames; text frames are read the same. The manual run
    # sends 24 kHz (the API takes any PCM rate its mimeType declares): resampled utterances
    server = _server(cert, speech_dir, frames="text" if vad == "manual" else "binary")
    trace = tmp_path / "trace.jsonl"
    options = {"vad": vad, "rate": "24000"} if vad == "manual" else {}
    rate = 24000 if vad == "manual" else 16000

    async def main() -> None:
        url = await server.start()
        try:
            await run_probe(
                _target(url, cert, **options),
                load_utterances([speech_dir / f for f in CARDS]),
                ProbeOptions(gap_ms=200, timeout_s=8),
                trace,
            )
        finally:
            await server.stop()

    asyncio.run(main())
    assert server.client_errors == []
    assert server.rejected_sent == []
    (conn,) = server.connections
    assert (conn.key_in, conn.key, conn.version) == ("header", key, "v1beta")
    assert conn.input_rate == rate
    assert conn.setup is not None
    assert conn.setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    aad = conn.setup["realtimeInputConfig"]["automaticActivityDetection"]
    assert aad["disabled"] is (vad == "manual")
    _no_secret(trace)
    tr = read_trace(trace)
    # one realtimeInput message per frame the probe sent, every sample of them
    frames = [u for e in tr.events if e.name == "input.frames" for u in unbatch(e)]
    assert conn.audio_messages == len(frames)
    assert conn.input_samples == sum(f.attrs["b"] - f.attrs["a"] for f in frames)
    assert {e.attrs["rate"] for e in tr.events if e.name == "turn.start"} == {rate}
    # the ledger is cut at the API's events and sums to voice-to-voice
    for st in build_report([tr]).stats_turns:
        led = st.ledger
        assert led.voice_to_voice_ns is not None
        assert sum(seg.ns for seg in led.segments) == led.voice_to_voice_ns
        assert {"transcript.final", "llm.first_token"} <= {m.name for m in led.marks}
    turns = sorted(tr.finished_turns(), key=lambda st: st[1])
    records = [r for r in server.records() if r.kind == "turn"]
    assert len(turns) == 4 == len(records)
    errors = []
    for (session, turn), rec, text in zip(turns, records, CARDS.values(), strict=True):
        ev = _turn_events(tr, session, turn)
        assert ev["turn.end"][0].attrs["ok"], ev["turn.end"][0].attrs
        assert rec.completed and rec.interrupted_ns is None
        audible = ev["reply.audible"][0]
        truth = _heard(rec, audible.attrs["sample"]) - ev["input.speech_end"][0].t_ns
        measured = ev["turn.end"][0].attrs["voice_to_voice_ns"]
        assert measured == audible.t_ns - ev["input.speech_end"][0].t_ns
        errors.append(measured - truth)
        # marks at the arrival of their messages: never before the send, on loopback soon
        first = ev["llm.first_token"][0]
        assert first.t_ns == ev["reply.first_byte"][0].t_ns
        final = ev["transcript.final"][0]
        assert final.attrs["text"] == text and final.attrs["finished"] is False
        partials = [e.t_ns for e in ev["transcript.partial"]]
        assert final.t_ns == partials[-1]
        pairs = {
            "inputTranscription": partials[-1],
            "inlineData": first.t_ns,
            "outputTranscription": ev["reply_text.first"][0].t_ns,
            "generationComplete": ev["llm.done"][0].t_ns,
            "turnComplete": ev["response.done"][0].t_ns,
        }
        for name, t in pairs.items():
            assert rec.sent[name] <= t, (name, t - rec.sent[name])
        done = ev["response.done"][0].attrs
        assert done["cut"] is False and done["usage"]["totalTokenCount"] == 100
        chunks = ev["reply.chunk"]
        assert {c.attrs["rate"] for c in chunks} == {OUT_RATE}
        assert len(chunks) == len(rec.audio_sent_ns)
    print(f"gemini-live {vad}: probe - server truth (ms): {[round(e / MS, 3) for e in errors]}")
    assert min(errors) > -1 * MS, errors
    assert sorted(errors)[len(errors) // 2] <= 2 * MS, [e / MS for e in errors]


def test_a_slower_model_is_recovered(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """The server thinks 100 ms, then 400 ms, between its last transcript piece and its
    first audio. The ledger's span from ``transcript.final`` to ``llm.first_token`` is the
    server's own (its send times of the two messages) within 2 ms, median, and never
    shorter than the think time; voice-to-voice is the server's truth within 2 ms, median,
    at both. (About 11 s: two runs of two turns at real time.)"""
    for think in (100, 400):
        server = _server(cert, speech_dir, reply_ms=600, think_ms=think)
        trace = tmp_path / f"trace-{think}.jsonl"

        async def main(server: GeminiLiveServer = server, trace: Path = trace) -> None:
            url = await server.start()
            try:
                utts = load_utterances([speech_dir / f for f in list(CARDS)[:2]])
                await run_probe(_target(url, cert), utts, ProbeOptions(gap_ms=200), trace)
            finally:
                await server.stop()

        asyncio.run(main())
        tr = read_trace(trace)
        turns = sorted(tr.finished_turns(), key=lambda st: st[1])
        records = server.records()
        assert len(turns) == 2 == len(records)
        stage_err, v2v_err = [], []
        for (session, turn), rec in zip(turns, records, strict=True):
            ev = _turn_events(tr, session, turn)
            stage = ev["llm.first_token"][0].t_ns - ev["transcript.final"][0].t_ns
            assert stage >= think * MS - 1 * MS, (think, stage)
            truth = rec.sent["inlineData"] - rec.last_sent["inputTranscription"]
            stage_err.append(stage - truth)
            audible = ev["reply.audible"][0]
            v2v_truth = _heard(rec, audible.attrs["sample"]) - ev["input.speech_end"][0].t_ns
            v2v_err.append(ev["turn.end"][0].attrs["voice_to_voice_ns"] - v2v_truth)
        print(f"think {think} ms: stage - truth {stage_err}, v2v - truth {v2v_err} (ns)")
        for errors in (stage_err, v2v_err):
            assert sorted(errors)[len(errors) // 2] <= 2 * MS and min(errors) > -1 * MS, errors


# --- barge-in ------------------------------------------------------------------------------

BARGE = """
gap_ms = 300
[[session]]
name = "barge"
count = 3
[[session.turn]]
say = "{first}"
interrupt = {{ after_reply_ms = 500, say = "{second}" }}
"""


def test_barge_in_is_cut_by_interrupted(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """Three callers (three sessions at once) each talk over a real-time reply: the server
    hears them, stops sending and says ``interrupted`` then ``turnComplete``. The probe
    marks each reply cut, and its stop latency is what the same playout of the server's own
    send times gives (never earlier; within 2 ms, median: the last chunk's transport); the
    interrupting speech gets its own reply."""
    server = _server(cert, speech_dir, reply_ms=3000)
    trace = tmp_path / "trace.jsonl"
    scenario = parse_scenario(
        BARGE.format(
            first=speech_dir / "pocketsphinx_cards_003.wav",
            second=speech_dir / "pocketsphinx_cards_001.wav",
        )
    )

    async def main() -> None:
        url = await server.start()
        try:
            probe = Probe(
                _target(url, cert), [], ProbeOptions(timeout_s=10), trace, scenario=scenario
            )
            await probe.run()
        finally:
            await server.stop()

    asyncio.run(main())
    assert server.client_errors == []
    tr = read_trace(trace)
    assert len(server.connections) == 3
    by_peer = {c.peer: c for c in server.connections}
    errors = []
    for connected in [e for e in tr.events if e.name == "session.connected"]:
        conn = by_peer[connected.attrs["local"]]
        cut, answer = conn.replies
        assert cut.interrupted_ns is not None and not cut.completed
        assert answer.completed and answer.interrupted_ns is None
        evs = [e for e in tr.events if e.session == connected.session]
        names = [e.name for e in evs]
        assert names.count("interrupted") == 1 and "interruption" not in names
        (stop,) = [e for e in evs if e.name == "reply.stop"]
        a = stop.attrs
        assert a["cut"] is True and a["stopped"] is True, a
        onset = a["onset_ns"]
        assert cut.interrupted_ns > onset
        # the same playout (immediate) of what the server sent, when it sent it
        n = cut.chunk_samples
        sent = [Chunk(t, n) for t in cut.audio_sent_ns]
        last = last_audible(from_pcm16(server.reply_pcm[: 2 * n * len(sent)]), OUT_RATE)
        assert last is not None
        truth = play(sent, OUT_RATE).heard_at(last) + 1_000_000_000 // OUT_RATE - onset
        errors.append(a["stop_ns"] - truth)
        print(f"gemini-live barge-in: stop {a['stop_ns'] / MS:.2f} ms, truth {truth / MS:.2f} ms")
        turns = sorted(
            (st for st in tr.finished_turns() if st[0] == connected.session), key=lambda st: st[1]
        )
        assert len(turns) == 2
        assert _turn_events(tr, *turns[1])["turn.end"][0].attrs["ok"]
    assert len(errors) == 3
    assert min(errors) >= -50_000, errors
    assert sorted(errors)[1] <= 2 * MS, [e / MS for e in errors]


# --- greeting -------------------------------------------------------------------------------


def test_greeting_is_timed_from_its_request(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """With ``greeting=TEXT`` the target asks the agent to speak first (``clientContent``);
    the probe waits for the greeting, and its latency (from that request to the first
    audible sample) is the server's truth within 2 ms; the first turn then completes."""
    server = _server(cert, speech_dir, reply_ms=1200, think_ms=250)
    trace = tmp_path / "trace.jsonl"

    async def main() -> None:
        url = await server.start()
        try:
            utts = load_utterances([speech_dir / "pocketsphinx_cards_001.wav"])
            target = _target(url, cert, greeting="Greet the caller.")
            await run_probe(target, utts, ProbeOptions(gap_ms=200), trace)
        finally:
            await server.stop()

    asyncio.run(main())
    assert server.client_errors == []
    (conn,) = server.connections
    greeting, turn = conn.replies
    assert greeting.kind == "greeting" and turn.kind == "turn"
    assert conn.greeting_request_ns is not None
    tr = read_trace(trace)
    by = {e.name: e for e in tr.events if e.stage == "greeting"}
    audible = by["greeting.audible"]
    truth = _heard(greeting, audible.attrs["sample"]) - conn.greeting_request_ns
    measured = audible.attrs["latency_ns"]
    print(f"gemini-live greeting: {measured / MS:.2f} ms, truth {truth / MS:.2f} ms")
    # timed from the request's send, just before the server's receipt of it
    assert truth - 50_000 <= measured <= truth + 2 * MS, (measured, truth)
    assert measured >= 250 * MS
    ((session, t),) = tr.finished_turns()
    assert _turn_events(tr, session, t)["turn.end"][0].attrs["ok"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inject", "reason"),
    [
        ("parts_not_list", "serverContent.modelTurn.parts is dict, not list"),
        ("not_object", "not a JSON object"),
        ("opus", "declared as 'audio/opus', not audio/pcm"),
        ("odd_bytes", "cannot be 16-bit PCM (an odd byte count)"),
    ],
)
def test_bad_input_fails_the_turn_with_the_reason(
    inject: str, reason: str, cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """A message the SDK's model rejects (``parts`` an object, an array for a message) or
    audio in a format other than declared (Opus, an odd byte count of 16-bit PCM, which the
    SDK's model accepts as bytes): a failed turn whose reason says what was wrong; the
    trace is read back whole (no traceback anywhere)."""
    server = _server(cert, speech_dir, reply_ms=400, inject={inject})
    trace = tmp_path / "trace.jsonl"

    async def main() -> None:
        url = await server.start()
        try:
            utts = load_utterances([speech_dir / "pocketsphinx_cards_001.wav"])
            await run_probe(_target(url, cert), utts, ProbeOptions(gap_ms=100, timeout_s=5), trace)
        finally:
            await server.stop()

    asyncio.run(main())
    if inject in ("parts_not_list", "not_object"):
        assert [n for n, _ in server.rejected_sent] == [inject]
    tr = read_trace(trace)
    ((session, turn),) = tr.finished_turns()
    end = _turn_events(tr, session, turn)["turn.end"][0].attrs
    assert end["ok"] is False
    assert end["failure"] == "protocol_violation", end
    assert reason in end["reason"], end["reason"]
    assert "\n" not in end["reason"] and "Traceback" not in trace.read_text()


def test_an_unknown_field_is_a_mark_and_the_turn_stands(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """A ``serverContent`` key the API does not define (the SDK's model rejects it): the
    mark ``unknown_event`` naming it; the reply is read as usual."""
    server = _server(cert, speech_dir, reply_ms=400, inject={"unknown_field"})
    trace = tmp_path / "trace.jsonl"

    async def main() -> None:
        url = await server.start()
        try:
            utts = load_utterances([speech_dir / "pocketsphinx_cards_001.wav"])
            await run_probe(_target(url, cert), utts, ProbeOptions(gap_ms=100), trace)
        finally:
            await server.stop()

    asyncio.run(main())
    assert [n for n, _ in server.rejected_sent] == ["unknown_field"]
    tr = read_trace(trace)
    unknown = [e.attrs["raw"] for e in tr.events if e.name == "unknown_event"]
    assert unknown == ["serverContent.bogusField"]
    ((session, turn),) = tr.finished_turns()
    assert _turn_events(tr, session, turn)["turn.end"][0].attrs["ok"]


# --- keys, TLS, options -------------------------------------------------------------------


def test_a_wrong_key_in_the_query_fails_the_session_without_leaking_it(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """``key_in=query`` puts the key in the URL's ``key`` parameter (as the API takes it);
    a server that refuses it closes the socket at setup: the session fails with a one-line
    reason (and, no session having opened, so does the run), and neither the URL's query
    nor the key is anywhere in the trace."""
    server = _server(cert, speech_dir, api_key="another-key")
    trace = tmp_path / "trace.jsonl"

    async def main() -> None:
        url = await server.start()
        try:
            utts = load_utterances([speech_dir / "pocketsphinx_cards_001.wav"])
            await run_probe(_target(url, cert, key_in="query"), utts, ProbeOptions(), trace)
        finally:
            await server.stop()

    # no session could open: the run's error (exit code 4, TARGET), one line, no key
    with pytest.raises(TargetError) as err:
        asyncio.run(main())
    assert "\n" not in err.value.message and key not in err.value.message
    assert "closed the connection during setup (code 1008)" in err.value.message
    assert server.connections[0].key_in == "query"
    assert server.connections[0].key == key
    _no_secret(trace)
    tr = read_trace(trace)
    failed = [e for e in tr.events if e.name == "session.failed"]
    assert failed and "closed the connection during setup (code 1008)" in failed[0].attrs["reason"]
    assert "key=" not in trace.read_text()


def test_a_refused_handshake_does_not_quote_the_key(key: str) -> None:
    """A server that refuses the WebSocket handshake itself (HTTP 403): aiohttp's error
    quotes the URL with its query; the session's error has the key blanked out."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="API key not valid")

    async def main() -> str:
        server = HandlerServer(refuse, "/ws/x")
        url = await server.start()
        try:
            config = TargetConfig(
                url=url, protocol="gemini-live", api_key_env=KEY_ENV, options={"key_in": "query"}
            )
            session = GeminiLiveTarget(config).session(_NullSink())
            with pytest.raises(TargetError) as err:
                await session.open()
            return err.value.message
        finally:
            await server.stop()

    message = asyncio.run(main())
    assert "403" in message and key not in message, message


def test_the_self_signed_server_is_refused_without_a_ca(
    cert: tuple[Path, Path], key: str, speech_dir: Path, tmp_path: Path
) -> None:
    """TLS is verified by default: without ``ca_file`` the test server's certificate is
    refused (the session fails, naming the certificate); ``tls_insecure=true`` connects."""
    server = _server(cert, speech_dir)

    async def main() -> tuple[str, str]:
        url = await server.start()
        try:
            reasons = []
            for options in ({}, {"tls_insecure": "true"}):
                config = TargetConfig(url=url, protocol="gemini-live", options=options)
                session = GeminiLiveTarget(config).session(_NullSink())
                try:
                    await session.open()
                    reasons.append("ok")
                except Exception as exc:
                    reasons.append(str(exc))
                finally:
                    await session.close()
            return reasons[0], reasons[1]
        finally:
            await server.stop()

    refused, insecure = asyncio.run(main())
    assert "certificate" in refused.lower(), refused
    assert insecure == "ok"


class _NullSink:
    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        pass

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        pass

    def reply_done(self, t_ns: int) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file='/nonexistent/ca.pem': no such file"),
        ({"tls_insecure": "maybe"}, "tls_insecure='maybe' must be true or false"),
        ({"vad": "client"}, "vad='client' must be server or manual"),
        ({"colour": "blue"}, "unknown gemini-live target option 'colour'"),
        ({"rate": "sixteen"}, "rate='sixteen' must be a whole number"),
    ],
)
def test_bad_options_are_one_line_usage_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        GeminiLiveTarget(TargetConfig(url="wss://h", protocol="gemini-live", options=options))
    assert message in err.value.message and "\n" not in err.value.message


def test_a_ca_file_that_is_not_pem_and_both_tls_options(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    cfg = TargetConfig(url="wss://h", protocol="gemini-live", options={"ca_file": str(bad)})
    with pytest.raises(UsageError, match="not a readable PEM certificate file"):
        tls_context(cfg)
    both = {"ca_file": str(bad), "tls_insecure": "true"}
    with pytest.raises(UsageError, match="do not go together"):
        tls_context(TargetConfig(url="wss://h", protocol="gemini-live", options=both))


def test_the_trace_url_has_no_query(key: str) -> None:
    """The key in the query stays out of what a trace records of the target."""
    cfg = TargetConfig(url=f"wss://h/ws/x?key={key}", protocol="gemini-live", api_key_env=KEY_ENV)
    assert key not in json.dumps(cfg.describe())
    assert key in cfg.secrets()


def test_reply_mime_types() -> None:
    assert parse_pcm_mime("audio/pcm;rate=24000") == 24000
    assert parse_pcm_mime("audio/pcm; rate=16000") == 16000
    assert parse_pcm_mime("audio/pcm") == 24000
    for bad in ("audio/opus", "audio/wav", "audio/pcm;rate=x", "audio/pcm;rate=5", None):
        with pytest.raises(ValueError):
            parse_pcm_mime(bad)


# --- the official SDK client against the same server --------------------------------------


def test_the_sdk_client_completes_a_turn(cert: tuple[Path, Path], speech_dir: Path) -> None:
    """google-genai's own client (``client.aio.live.connect``), pointed at the test server
    (``HttpOptions(base_url=...)``, trusting its certificate through
    ``async_client_args={"ssl": ctx}``), sends real speech and receives the whole reply:
    the input transcription, every audio byte the server sent, the output transcription,
    ``generation_complete`` and ``turn_complete``. Its messages pass the SDK's own client
    models on the server (none recorded as rejected)."""
    server = _server(cert, speech_dir, reply_ms=800)
    utt = speech_pcm(speech_dir / "pocketsphinx_cards_001.wav", 2000, rate=16000)

    async def main() -> dict[str, Any]:
        await server.start()
        got: dict[str, Any] = {"audio": b"", "in": "", "out": "", "flags": []}
        try:
            ctx = ssl.create_default_context(cafile=str(cert[0]))
            client = genai.Client(
                api_key="sdk-key",
                http_options=types.HttpOptions(
                    base_url=server.base, async_client_args={"ssl": ctx}
                ),
            )
            config = types.LiveConnectConfig(
                response_modalities=[types.Modality.AUDIO],
                input_audio_transcription=types.AudioTranscriptionConfig(),
                output_audio_transcription=types.AudioTranscriptionConfig(),
            )
            async with client.aio.live.connect(model="gemini-live-test", config=config) as s:
                step = 640  # 20 ms at 16 kHz
                for i in range(0, len(utt), step):
                    await s.send_realtime_input(
                        audio=types.Blob(data=utt[i : i + step], mime_type="audio/pcm;rate=16000")
                    )
                    await asyncio.sleep(0.02)
                silence = bytes(step)
                sender = asyncio.ensure_future(_silence(s, silence))
                try:
                    async for msg in s.receive():
                        sc = msg.server_content
                        if sc is None:
                            continue
                        if sc.input_transcription and sc.input_transcription.text:
                            got["in"] += sc.input_transcription.text
                        if sc.output_transcription and sc.output_transcription.text:
                            got["out"] += sc.output_transcription.text
                        if sc.model_turn and sc.model_turn.parts:
                            for p in sc.model_turn.parts:
                                if p.inline_data and p.inline_data.data:
                                    got["audio"] += p.inline_data.data
                                    got["mime"] = p.inline_data.mime_type
                        if sc.generation_complete:
                            got["flags"].append("generation_complete")
                        if sc.turn_complete:
                            got["flags"].append("turn_complete")
                            break
                finally:
                    sender.cancel()
        finally:
            await server.stop()
        return got

    got = asyncio.run(main())
    assert server.client_errors == []
    (conn,) = server.connections
    assert conn.key == "sdk-key"
    # google-genai 3.6 asks for the v1 path with the key in x-goog-api-key (voiceaudit's
    # default header; its default path is the v1beta of Google's WebSocket reference)
    assert (conn.version, conn.key_in) == ("v1", "header")
    assert got["in"] == "ten of clubs"
    assert got["out"] == REPLY_TEXT
    assert got["mime"] == f"audio/pcm;rate={OUT_RATE}"
    assert got["audio"] == server.reply_pcm
    assert got["flags"] == ["generation_complete", "turn_complete"]
    # what the SDK sends: its own setup shape, URL-safe base64 audio the server decodes
    assert conn.setup is not None and conn.setup["model"] == "models/gemini-live-test"
    assert conn.input_rate == 16000


async def _silence(s: Any, silence: bytes) -> None:
    while True:
        await s.send_realtime_input(
            audio=types.Blob(data=silence, mime_type="audio/pcm;rate=16000")
        )
        await asyncio.sleep(0.02)


def test_voiceaudit_audio_is_standard_base64_the_sdk_reads() -> None:
    """What voiceaudit sends for a frame is a message the SDK's client model reads back to
    the same samples."""
    from voiceaudit.targets.gemini import GeminiLiveSession

    sent: list[str] = []

    class Capture(GeminiLiveSession):
        async def send_json(self, obj: dict[str, Any]) -> None:
            sent.append(json.dumps(obj))

    cfg = TargetConfig(url="wss://h", protocol="gemini-live")
    s = Capture(cfg, _NullSink())
    pcm = (np.arange(320, dtype="<i2") * 97).tobytes()
    asyncio.run(s.send_audio(pcm))
    m = types.LiveClientMessage.model_validate(json.loads(sent[0]))
    assert m.realtime_input is not None and m.realtime_input.audio is not None
    assert m.realtime_input.audio.data == pcm
    assert m.realtime_input.audio.mime_type == "audio/pcm;rate=16000"
    assert base64.b64decode(json.loads(sent[0])["realtimeInput"]["audio"]["data"]) == pcm


# --- the command line ---------------------------------------------------------------------


def test_the_command_line_runs_a_turn_and_refuses_a_missing_ca(
    cert: tuple[Path, Path],
    key: str,
    speech_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``voiceaudit run --protocol gemini-live URL -o ca_file=… --api-key-env …`` runs a turn
    against the test server (exit 0; the key in neither the run's files nor its output); a
    CA file that does not exist is one line and exit code 2 before anything connects."""
    from voiceaudit.cli import run
    from voiceaudit.errors import ExitCode

    audio = str(speech_dir / "pocketsphinx_cards_001.wav")
    base = ["run", "--protocol", "gemini-live", "--api-key-env", KEY_ENV, "--gap-ms", "100"]
    rc = run([*base, "--target", "wss://127.0.0.1:9", "-o", "ca_file=/no/such/ca.pem", audio])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0] == "error: target option ca_file='/no/such/ca.pem': no such file", err
    assert "Traceback" not in err
    out = tmp_path / "run"
    with _server(cert, speech_dir, reply_ms=400) as server:
        rc = run(
            [*base, "--target", server.url, "-o", f"ca_file={cert[0]}", "--out", str(out), audio]
        )
    captured = capsys.readouterr()
    assert rc == ExitCode.OK, captured.err
    assert key not in captured.out + captured.err
    for f in out.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    assert server.client_errors == []
    assert len([r for r in server.records() if r.completed]) == 1


# --- server messages, one by one -----------------------------------------------------------


class _Recorder(_NullSink):
    def __init__(self) -> None:
        self.marks: list[tuple[str, str, int, dict[str, Any]]] = []
        self.audio: list[tuple[int, bytes, int]] = []
        self.done: list[int] = []
        self.failures: list[str] = []

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.marks.append((name, stage, t_ns, attrs or {}))

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        self.audio.append((t_ns, pcm16, rate))

    def reply_done(self, t_ns: int) -> None:
        self.done.append(t_ns)

    def fail(self, reason: str) -> None:
        self.failures.append(reason)


def _feed(messages: list[Any], *, sdk_accepts: bool = True) -> _Recorder:
    """Feed ``messages`` (each checked first: the SDK's server model accepts them, or
    rejects them when ``sdk_accepts`` is false) to a session, at t = 1, 2, 3 …"""
    from gemini_server import validate_server
    from pydantic import ValidationError

    from voiceaudit.targets.gemini import GeminiLiveSession

    rec = _Recorder()
    s = GeminiLiveSession(TargetConfig(url="wss://h", protocol="gemini-live"), rec)
    s._opened = True
    for t, m in enumerate(messages, start=1):
        if sdk_accepts:
            validate_server(m)
        else:
            with pytest.raises(ValidationError):
                validate_server(m)
        s.on_binary(t, json.dumps(m).encode())
    return rec


def _audio(pcm: bytes, mime: str = "audio/pcm;rate=24000") -> dict[str, Any]:
    blob = {"data": base64.b64encode(pcm).decode(), "mimeType": mime}
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}}


def test_voice_activity_tool_calls_and_go_away_are_marks() -> None:
    rec = _feed(
        [
            {"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}},
            {"voiceActivity": {"voiceActivityType": "ACTIVITY_END"}},
            {"voiceActivityDetectionSignal": {"vadSignalType": "VAD_SIGNAL_TYPE_EOS"}},
            {"toolCall": {"functionCalls": [{"name": "lookup", "args": {}, "id": "1"}]}},
            {"goAway": {"timeLeft": "10s"}},
        ]
    )
    assert [(n, st, t) for n, st, t, _ in rec.marks] == [
        ("speech_started", "endpointing", 1),
        ("endpoint", "endpointing", 2),
        ("endpoint", "endpointing", 3),
        ("tool_call", "model", 4),
        ("go_away", "session", 5),
    ]
    assert rec.marks[3][3]["names"] == ["lookup"]
    assert rec.marks[4][3]["time_left"] == "10s"
    assert rec.failures == []


def test_one_reply_read_from_its_messages() -> None:
    """Transcript pieces, audio at the declared rate (16 kHz here), an interruption while
    it plays, then turnComplete: the marks, in order, at their messages' arrivals."""
    pcm = (np.arange(320, dtype="<i2") * 50).tobytes()
    rec = _feed(
        [
            {"serverContent": {"inputTranscription": {"text": "ten of"}}},
            {"serverContent": {"inputTranscription": {"text": " clubs"}}},
            _audio(pcm, "audio/pcm;rate=16000"),
            {"serverContent": {"outputTranscription": {"text": "Sure"}}},
            _audio(pcm, "audio/pcm;rate=16000"),
            {"serverContent": {"interrupted": True}},
            {"serverContent": {"interrupted": True}},
            {"serverContent": {"turnComplete": True}},
            {"serverContent": {"interrupted": True}},
        ]
    )
    names = [(n, t) for n, _, t, _ in rec.marks]
    assert names == [
        ("transcript.partial", 1),
        ("transcript.partial", 2),
        ("transcript.final", 2),
        ("llm.first_token", 3),
        ("reply_text.first", 4),
        ("interrupted", 6),
        ("interruption", 7),
        ("response.done", 8),
        ("interruption", 9),
    ]
    assert rec.marks[2][3]["text"] == "ten of clubs"
    assert rec.marks[7][3]["cut"] is True
    assert rec.marks[8][3]["bot_speaking"] is False
    assert [(t, r) for t, _, r in rec.audio] == [(3, 16000), (5, 16000)]
    assert rec.done == [8] and rec.failures == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_audio(b"\x00\x01\x02"), "odd byte count"),
        (_audio(b"\x00\x01", "audio/wav"), "declared as 'audio/wav'"),
        ({"serverContent": {"inputTranscription": {"text": 7}}}, "inputTranscription.text is int"),
        ({"serverContent": {"turnComplete": "yes"}}, "serverContent.turnComplete is str"),
        ({"serverContent": {"modelTurn": {"parts": [7]}}}, "parts[0] is not an object"),
    ],
)
def test_a_bad_field_fails_with_its_name(message: dict[str, Any], reason: str) -> None:
    """Fields of the wrong type, and audio in a format other than declared (which the SDK's
    model, reading ``data`` as bytes and ``mimeType`` as any string, lets through)."""
    sdk_accepts = "text" not in reason and "parts[0]" not in reason
    rec = _feed([message], sdk_accepts=sdk_accepts)
    assert len(rec.failures) == 1 and reason in rec.failures[0], rec.failures
    assert rec.failures[0].startswith("protocol: ")
    assert rec.audio == []


def test_a_rate_change_midway_and_bad_frames_fail() -> None:
    pcm = bytes(640)
    rec = _feed([_audio(pcm), _audio(pcm, "audio/pcm;rate=16000"), _audio(pcm)])
    assert len(rec.audio) == 1
    assert rec.failures == ["protocol: reply audio rate changed from 24000 to 16000 Hz midway"]
    rec = _Recorder()
    from voiceaudit.targets.gemini import GeminiLiveSession

    s = GeminiLiveSession(TargetConfig(url="wss://h", protocol="gemini-live"), rec)
    s._opened = True
    s.on_binary(1, b"\xff\xfe not utf-8")
    s.on_text(2, "{not json")
    s.on_text(3, json.dumps(_audio(pcm)).replace('"data": "', '"data": "!!'))
    assert [f.split(":")[0] for f in rec.failures] == ["protocol"] * 3, rec.failures
    assert "inlineData.data is not base64" in rec.failures[2]


def test_late_transcript_pieces_stay_with_their_turn() -> None:
    """An input transcription piece that comes once the reply has begun is a late partial
    of that turn, in no ``transcript.final``; after ``interrupted`` the pieces are the
    interrupting speech's, and make the next reply's ``transcript.final``."""
    pcm = bytes(960)
    rec = _feed(
        [
            {"serverContent": {"inputTranscription": {"text": "ten of clubs"}}},
            _audio(pcm),
            {"serverContent": {"inputTranscription": {"text": " please"}}},
            {"serverContent": {"interrupted": True}},
            {"serverContent": {"inputTranscription": {"text": "stop"}}},
            {"serverContent": {"turnComplete": True}},
            _audio(pcm),
        ]
    )
    finals = [(t, a["text"]) for n, _, t, a in rec.marks if n == "transcript.final"]
    assert finals == [(1, "ten of clubs"), (5, "stop")]
    late = [(t, a.get("late")) for n, _, t, a in rec.marks if n == "transcript.partial"]
    assert late == [(1, None), (3, True), (5, None)]


def test_every_option_makes_a_setup_the_sdk_models_accept() -> None:
    from gemini_server import validate_client

    from voiceaudit.targets.gemini import GeminiLiveSession

    options = {
        "model": "gemini-live-x",
        "voice": "Puck",
        "silence_ms": "600",
        "prefix_padding_ms": "200",
        "system_instruction": "Be brief.",
    }
    cfg = TargetConfig(url="wss://h", protocol="gemini-live", options=options)
    setup = GeminiLiveSession(cfg, _NullSink()).setup_message()
    m = validate_client(setup)
    assert m.setup is not None and m.setup.model == "models/gemini-live-x"
    assert m.setup.generation_config is not None
    speech = m.setup.generation_config.speech_config
    assert speech is not None and speech.voice_config is not None
    assert speech.voice_config.prebuilt_voice_config is not None
    assert speech.voice_config.prebuilt_voice_config.voice_name == "Puck"
    aad = setup["setup"]["realtimeInputConfig"]["automaticActivityDetection"]
    assert aad == {"disabled": False, "silenceDurationMs": 600, "prefixPaddingMs": 200}
    off = TargetConfig(url="wss://h", protocol="gemini-live", options={"transcription": "off"})
    bare = GeminiLiveSession(off, _NullSink()).setup_message()["setup"]
    assert "inputAudioTranscription" not in bare and "outputAudioTranscription" not in bare
    validate_client({"setup": bare})
