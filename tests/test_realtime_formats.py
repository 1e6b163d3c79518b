"""Negotiated audio formats on the realtime target: 24 kHz and 8 kHz PCM, G.711 μ-law and
A-law, in the GA and beta shapes, declared by the server or asked for by the user.

The G.711 codecs are checked against Python 3.11's stdlib ``audioop`` over every PCM value
and every code. The runs go against an independent Realtime server on loopback (aiohttp),
which speaks G.711 through ``audioop``, not through voiceaudit's codecs: it decodes what the
probe sends by the format it declared, measures its sample rate from the arrival pace, and
keeps it to compare with the recording; its reply is a known leading silence then a tone,
and it stamps when its first audio delta left (one process: the probe's monotonic clock).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from servers import LoopbackServer

from voiceaudit import codecs
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.failures import failure_kind
from voiceaudit.probe.runner import ProbeOptions, run_probe
from voiceaudit.probe.utterances import Utterance, load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.realtime import RealtimeTarget
from voiceaudit.trace_io import read_trace

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # deprecated since 3.11, removed in 3.13: the independent reference here

MS = 1_000_000
LEAD_MS = 300  # the reply's leading silence
TONE_MS = 400
CHUNK_MS = 20
SPEECH = "pocketsphinx_cards_003.wav"

# --- the codecs against audioop ---------------------------------------------------------

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@pytest.mark.parametrize(
    ("encode", "decode", "lin2x", "x2lin"),
    [
        (codecs.ulaw_encode, codecs.ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
        (codecs.alaw_encode, codecs.alaw_decode, audioop.lin2alaw, audioop.alaw2lin),
    ],
    ids=["ulaw", "alaw"],
)
def test_g711_matches_audioop_everywhere(encode: Any, decode: Any, lin2x: Any, x2lin: Any) -> None:
    pcm = ALL_PCM.astype("<i2").tobytes()
    assert encode(ALL_PCM).tobytes() == lin2x(pcm, 2)
    assert decode(ALL_CODES).astype("<i2").tobytes() == x2lin(ALL_CODES, 2)
    # a uint8 array decodes as its bytes do
    assert np.array_equal(decode(np.frombuffer(ALL_CODES, np.uint8)), decode(ALL_CODES))


def test_codec_bytes_api() -> None:
    pcm = ALL_PCM.astype("<i2").tobytes()
    assert codecs.encode(pcm, "pcmu") == audioop.lin2ulaw(pcm, 2)
    assert codecs.encode(pcm, "pcma") == audioop.lin2alaw(pcm, 2)
    assert codecs.encode(pcm, "pcm16") == pcm
    assert codecs.decode(ALL_CODES, "pcmu") == audioop.ulaw2lin(ALL_CODES, 2)
    assert codecs.decode(ALL_CODES, "pcma") == audioop.alaw2lin(ALL_CODES, 2)
    assert codecs.decode(pcm, "pcm16") == pcm
    # a code decodes to a value that encodes back to the same code (G.711 is idempotent),
    # but for μ-law's negative zero (0x7F), which is zero (0xFF)
    assert codecs.encode(codecs.decode(ALL_CODES, "pcma"), "pcma") == ALL_CODES
    assert codecs.encode(codecs.decode(ALL_CODES, "pcmu"), "pcmu") == ALL_CODES.replace(
        b"\x7f", b"\xff"
    )
    with pytest.raises(ValueError, match="odd byte count"):
        codecs.decode(b"\x00\x01\x02", "pcm16")
    with pytest.raises(ValueError, match="odd byte count"):
        codecs.encode(b"\x00", "pcmu")
    with pytest.raises(ValueError, match="unknown audio encoding"):
        codecs.decode(b"", "opus")
    with pytest.raises(TypeError):
        codecs.ulaw_encode(np.zeros(4, dtype=np.float32))


# --- an independent Realtime server that speaks several formats -------------------------

#: the server's own reading of format names (GA types and beta strings) -> (encoding, rate)
_NAMES = {
    "audio/pcm": "pcm16",
    "pcm16": "pcm16",
    "audio/pcmu": "pcmu",
    "g711_ulaw": "pcmu",
    "audio/pcma": "pcma",
    "g711_alaw": "pcma",
}
_GA = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}
_BETA = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}


def _read_format(raw: Any) -> tuple[str, int]:
    if isinstance(raw, dict):
        enc = _NAMES[raw["type"]]
        return enc, int(raw.get("rate", 24000)) if enc == "pcm16" else 8000
    enc = _NAMES[raw]
    return enc, 24000 if enc == "pcm16" else 8000


def _to_pcm(data: bytes, enc: str) -> np.ndarray[Any, Any]:
    if enc == "pcmu":
        data = audioop.ulaw2lin(data, 2)
    elif enc == "pcma":
        data = audioop.alaw2lin(data, 2)
    return np.frombuffer(data, "<i2").astype(np.int16)


def _from_pcm(x: np.ndarray[Any, Any], enc: str) -> bytes:
    pcm = x.astype("<i2").tobytes()
    if enc == "pcmu":
        return audioop.lin2ulaw(pcm, 2)
    if enc == "pcma":
        return audioop.lin2alaw(pcm, 2)
    return pcm


def reply_pcm(rate: int) -> np.ndarray[Any, Any]:
    """LEAD_MS of digital silence, then TONE_MS of a 440 Hz tone starting at phase 0."""
    lead = np.zeros(rate * LEAD_MS // 1000)
    n = rate * TONE_MS // 1000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 32767
    return np.concatenate([lead, tone]).astype(np.int16)


@dataclass
class Conn:
    """What the server saw and did on one connection."""

    beta: bool
    update: dict[str, Any] | None = None
    fmt_in: tuple[str, int] = ("pcm16", 24000)
    fmt_out: tuple[str, int] = ("pcm16", 24000)
    #: input heard before the first response.create (the first turn's speech)
    first_input: list[np.ndarray[Any, Any]] = field(default_factory=list)
    #: (arrival ns, samples) of every append before the first response.create
    appends: list[tuple[int, int]] = field(default_factory=list)
    #: monotonic ns just before each reply's first audio delta was sent
    first_sent: list[int] = field(default_factory=list)
    responded: bool = False

    def input_rate(self) -> float:
        """Samples per second of the first turn's speech, from the appends' arrival pace
        (the probe sends at real-time pace): the first append's samples came before the
        span began."""
        (t0, _), (t1, _) = self.appends[0], self.appends[-1]
        return sum(n for _, n in self.appends[1:]) / ((t1 - t0) / 1e9)


class FormatServer(LoopbackServer):
    """Realtime events over aiohttp. ``force_in``/``force_out`` (a GA format object; in the
    beta shape its beta string) are declared whatever the client asked; else the request is
    honoured. ``updated=False``: never sends session.updated (``created`` is what its
    greeting's session object holds); ``update_delay_s``: it sends it that late. ``odd``:
    the audio delta of that index has one byte too many. ``refuse``: session.update is
    answered by an error event with that message. ``switch_in``: the second response.create
    on the first connection is answered by a session.updated changing the input format (in
    the middle of the probe's second turn), not by a reply."""

    def __init__(
        self,
        *,
        force_in: Any = None,
        force_out: Any = None,
        updated: bool = True,
        created: dict[str, Any] | None = None,
        update_delay_s: float = 0.0,
        odd: int | None = None,
        switch_in: Any = None,
        refuse: str | None = None,
    ) -> None:
        self.force_in, self.force_out = force_in, force_out
        self.updated, self.created, self.odd = updated, created or {}, odd
        self.update_delay_s = update_delay_s
        self.refuse = refuse
        self.switch_in = switch_in
        self.conns: list[Conn] = []

    def _declare(self, c: Conn) -> dict[str, Any]:
        if c.beta:
            return {
                "input_audio_format": _BETA[c.fmt_in[0]],
                "output_audio_format": _BETA[c.fmt_out[0]],
            }

        def obj(f: tuple[str, int]) -> dict[str, Any]:
            return {"type": _GA[f[0]], "rate": f[1]}

        return {"audio": {"input": {"format": obj(c.fmt_in)}, "output": {"format": obj(c.fmt_out)}}}

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        c = Conn(beta=request.headers.get("OpenAI-Beta") == "realtime=v1")
        self.conns.append(c)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "session": self.created})
        audio = "response.audio.delta" if c.beta else "response.output_audio.delta"
        tasks: list[asyncio.Task[None]] = []

        async def reply() -> None:
            enc, rate = c.fmt_out
            data = _from_pcm(reply_pcm(rate), enc)
            step = rate * CHUNK_MS // 1000 * (2 if enc == "pcm16" else 1)
            await ws.send_json({"type": "response.created", "response": {"id": "r"}})
            for i in range(0, len(data), step):
                chunk = data[i : i + step]
                if self.odd is not None and i == self.odd * step:
                    chunk += b"\x00"
                if i == 0:
                    c.first_sent.append(time.monotonic_ns())
                delta = base64.b64encode(chunk).decode()
                await ws.send_json({"type": audio, "delta": delta, "item_id": "it"})
            await ws.send_json({"type": "response.done", "response": {"status": "completed"}})

        async for msg in ws:
            ev = json.loads(msg.data)
            kind = ev["type"]
            if kind == "session.update" and self.refuse is not None:
                err = {"type": "invalid_request_error", "message": self.refuse}
                await ws.send_json({"type": "error", "error": err})
            elif kind == "session.update":
                s = ev["session"]
                c.update = s
                if c.beta:
                    c.fmt_in = _read_format(s["input_audio_format"])
                    c.fmt_out = _read_format(s["output_audio_format"])
                else:
                    c.fmt_in = _read_format(s["audio"]["input"]["format"])
                    c.fmt_out = _read_format(s["audio"]["output"]["format"])
                if self.force_in is not None:
                    c.fmt_in = _read_format(self.force_in)
                if self.force_out is not None:
                    c.fmt_out = _read_format(self.force_out)
                if self.updated:
                    await asyncio.sleep(self.update_delay_s)
                    await ws.send_json({"type": "session.updated", "session": self._declare(c)})
            elif kind == "input_audio_buffer.append":
                x = _to_pcm(base64.b64decode(ev["audio"]), c.fmt_in[0])
                if not c.responded:
                    c.appends.append((time.monotonic_ns(), x.size))
                    c.first_input.append(x)
            elif kind == "response.create":
                if self.switch_in is not None and c.responded and c is self.conns[0]:
                    c.fmt_in = _read_format(self.switch_in)
                    await ws.send_json({"type": "session.updated", "session": self._declare(c)})
                    continue
                c.responded = True
                tasks.append(asyncio.ensure_future(reply()))
        for t in tasks:
            with contextlib.suppress(Exception):
                await t
        return ws


def run(
    server: FormatServer,
    trace: Path,
    utt: list[Utterance],
    options: dict[str, str],
    turns: int = 2,
) -> list[dict[str, Any]]:
    """A real probe run (manual commit: the reply follows the speech end at once); the
    trace's events as dicts."""

    async def go() -> None:
        url = await server.start()
        try:
            opts = {"turn_detection": "manual", "format_wait_ms": "300", **options}
            cfg = TargetConfig(url=url, protocol="realtime", options=opts, connect_timeout_s=5)
            await run_probe(
                RealtimeTarget(cfg), utt, ProbeOptions(turns=turns, timeout_s=5, gap_ms=100), trace
            )
        finally:
            await server.stop()

    asyncio.run(go())
    return [
        {"name": e.name, "t_ns": e.t_ns, "turn": e.turn, "session": e.session, **e.attrs}
        for e in read_trace(trace).events
    ]


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["name"] == name]


@pytest.fixture(scope="module")
def utterances(realdata: Path) -> list[Utterance]:
    return load_utterances([realdata / "speech" / SPEECH])


@dataclass(frozen=True)
class Case:
    options: dict[str, str]
    server: dict[str, Any]
    #: (encoding, rate) in and out, and the session.audio_format source the trace must say
    fmt_in: tuple[str, int]
    fmt_out: tuple[str, int]
    source: str


CASES: dict[str, Case] = {
    "pcm24-default": Case({}, {}, ("pcm16", 24000), ("pcm16", 24000), "declared"),
    # the server: 8 kHz PCM declared whatever was asked
    "pcm8-declared": Case(
        {},
        {
            "force_in": {"type": "audio/pcm", "rate": 8000},
            "force_out": {"type": "audio/pcm", "rate": 8000},
        },
        ("pcm16", 8000),
        ("pcm16", 8000),
        "declared",
    ),
    "pcmu-ga-requested": Case(
        {"input_format": "pcmu", "output_format": "pcmu"},
        {},
        ("pcmu", 8000),
        ("pcmu", 8000),
        "declared",
    ),
    "pcma-ga-declared": Case(
        {},
        {"force_in": {"type": "audio/pcma"}, "force_out": {"type": "audio/pcma"}},
        ("pcma", 8000),
        ("pcma", 8000),
        "declared",
    ),
    "pcmu-beta-requested": Case(
        {"api": "beta", "input_format": "g711_ulaw", "output_format": "g711_ulaw"},
        {},
        ("pcmu", 8000),
        ("pcmu", 8000),
        "declared",
    ),
    "pcma-beta-declared": Case(
        {"api": "beta"},
        {"force_in": "g711_alaw", "force_out": "g711_alaw"},
        ("pcma", 8000),
        ("pcma", 8000),
        "declared",
    ),
    # mixed directions, asked for, from a server that never confirms
    "pcmu-in-pcm-out-unconfirmed": Case(
        {"input_format": "pcmu", "output_format": "pcm16"},
        {"updated": False},
        ("pcmu", 8000),
        ("pcm16", 24000),
        "requested",
    ),
}


@dataclass
class Outcome:
    events: list[dict[str, Any]]
    server: FormatServer
    utt: Utterance


@pytest.fixture(scope="module")
def outcomes(
    utterances: list[Utterance], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """Each case's run, once per module (the format cases and the cross-format check share
    them)."""

    class Lazy(dict[str, Outcome]):
        def __missing__(self, key: str) -> Outcome:
            case = CASES[key]
            server = FormatServer(**case.server)
            trace = tmp_path_factory.mktemp(key) / "trace.jsonl"
            events = run(server, trace, utterances, case.options)
            self[key] = Outcome(events, server, utterances[0])
            return self[key]

    return Lazy()


@pytest.mark.parametrize("name", list(CASES))
def test_format_is_honoured(name: str, outcomes: dict[str, Outcome]) -> None:
    case, out = CASES[name], outcomes[name]
    ev = out.events
    enc_in, rate_in = case.fmt_in
    enc_out, rate_out = case.fmt_out
    # the trace says which format was used
    (fmt,) = named(ev, "session.audio_format")
    assert fmt["input"] == {"encoding": enc_in, "rate": rate_in}
    assert fmt["output"] == {"encoding": enc_out, "rate": rate_out}
    assert fmt["source"] == case.source
    assert fmt["turn"] is None  # a session fact, before the first turn
    (conn,) = out.server.conns
    # what the user asked for went out in session.update (the server's own reading)
    assert conn.update is not None
    assert conn.fmt_in == case.fmt_in and conn.fmt_out == case.fmt_out
    # the probe cut its speech at the input rate, and the server heard it at that rate
    starts = named(ev, "turn.start")
    assert [s["rate"] for s in starts] == [rate_in, rate_in]
    assert abs(conn.input_rate() / rate_in - 1) < 0.03, conn.input_rate()
    # ...and it is the recording, not noise: the server's decoding of the first turn's
    # audio against the recording at that rate (G.711 keeps ~38 dB; a wrong reading < 0 dB)
    pcm, _, _ = out.utt.at_rate(rate_in)
    want = np.frombuffer(pcm, "<i2").astype(np.float64)
    got = np.concatenate(conn.first_input).astype(np.float64)[: want.size]
    want = want[: got.size]
    assert got.size > rate_in  # more than a second of the speech went out before the reply
    if enc_in == "pcm16":
        assert np.array_equal(got, want)
    else:
        snr = 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))
        assert snr > 30, snr
    # reply audio was read at the output rate, and its onset is the known leading silence
    ends = named(ev, "turn.end")
    assert [e["ok"] for e in ends] == [True, True], ends
    for chunks in named(ev, "reply.chunks"):
        assert chunks["rate"] == rate_out
        assert sum(chunks["samples"]) == len(reply_pcm(rate_out))
    for aud in named(ev, "reply.audible"):
        assert abs(aud["onset_ms"] - LEAD_MS) <= 1.0, aud
    # the first reply byte's arrival: never before the server sent it, and on loopback
    # within 2 ms of it in the quickest turn (a busy machine only delays some reads)
    lags = [
        fb["t_ns"] - sent
        for fb, sent in zip(named(ev, "reply.first_byte"), conn.first_sent, strict=True)
    ]
    assert min(lags) >= 0 and min(lags) <= 2 * MS, lags


def test_g711_voice_to_voice_matches_pcm(outcomes: dict[str, Outcome]) -> None:
    """The same reply, heard through each format: the probe's voice-to-voice is what the
    server's own send time gives (its first audio delta's send, plus the reply's leading
    silence, after the speech end), in every format alike. Checked per turn against the
    server's record, not between two runs' figures: a busy machine can delay the server's
    answer in one run and not the other, and that is no error of the probe's."""

    def excess(key: str) -> list[int]:
        """Per turn: voice-to-voice minus the server's own figure."""
        o = outcomes[key]
        ends = {e["turn"]: e["t_ns"] for e in named(o.events, "input.speech_end")}
        v2v = {e["turn"]: e["voice_to_voice_ns"] for e in named(o.events, "turn.end")}
        sent = [t for c in o.server.conns for t in c.first_sent]
        assert len(v2v) == 2 and len(sent) == 2, (v2v, sent)
        pairs = zip(sorted(v2v), sent, strict=True)
        return [v2v[i] - (s + LEAD_MS * MS - ends[i]) for i, s in pairs]

    base = excess("pcm24-default")
    for key in CASES:
        got = excess(key)
        # never heard before the server sent it (one 8 kHz sample of onset slack); the
        # quickest turn within 3 ms of the server's figure (loopback and onset detection)
        assert all(x >= -MS // 2 for x in got), (key, got)
        assert min(got) <= 3 * MS, (key, got)
        # and the formats agree with 24 kHz PCM in their quickest turns
        assert abs(min(got) - min(base)) <= 3 * MS, (key, got, base)


# --- faults --------------------------------------------------------------------------


def test_odd_pcm16_byte_count_fails_the_turn(utterances: list[Utterance], tmp_path: Path) -> None:
    ev = run(FormatServer(odd=0), tmp_path / "t.jsonl", utterances, {}, turns=1)
    (end,) = named(ev, "turn.end")
    assert end["ok"] is False
    assert "odd byte count" in end["reason"] and end["reason"].startswith("protocol:")
    assert failure_kind(end["reason"], end.get("failure")) == "protocol_violation"
    assert not named(ev, "reply.audible")


def test_g711_odd_byte_count_is_audio(utterances: list[Utterance], tmp_path: Path) -> None:
    """One byte is one G.711 sample: an odd count is no fault there."""
    server = FormatServer(odd=0)
    ev = run(server, tmp_path / "t.jsonl", utterances, {"output_format": "pcma"}, turns=1)
    (end,) = named(ev, "turn.end")
    assert end["ok"] is True, end


def test_odd_byte_count_mid_reply_keeps_only_the_audio_before(
    utterances: list[Utterance], tmp_path: Path
) -> None:
    """The fault in the 18th delta (after the tone began): the turn fails as a protocol
    violation; the 17 deltas before it are the reply heard (its onset, and voice-to-voice
    kept only as an informative figure), none after it."""
    ev = run(FormatServer(odd=17), tmp_path / "t.jsonl", utterances, {}, turns=1)
    (end,) = named(ev, "turn.end")
    assert end["ok"] is False and "odd byte count" in end["reason"], end
    assert failure_kind(end["reason"], end.get("failure")) == "protocol_violation"
    assert "voice_to_voice_ns" not in end
    assert isinstance(end.get("informative_voice_to_voice_ns"), int)
    (chunks,) = named(ev, "reply.chunks")
    assert sum(chunks["samples"]) == 17 * 24000 * CHUNK_MS // 1000
    (aud,) = named(ev, "reply.audible")
    assert abs(aud["onset_ms"] - LEAD_MS) <= 1.0


@pytest.mark.parametrize(
    ("force_out", "beta", "words"),
    [
        ({"type": "audio/opus", "rate": 48000}, False, "'audio/opus'"),
        ({"type": "audio/pcmu", "rate": 16000}, False, "G.711 is 8000 Hz"),
        ("opus", True, "'opus'"),
    ],
)
def test_undecodable_format_fails_the_session_open(
    force_out: Any, beta: bool, words: str, utterances: list[Utterance], tmp_path: Path
) -> None:
    server = FormatServer()
    server._declare = lambda c: (  # type: ignore[method-assign]
        {"input_audio_format": "pcm16", "output_audio_format": force_out}
        if beta
        else {
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                "output": {"format": force_out},
            }
        }
    )
    opts = {"api": "beta"} if beta else {}
    with pytest.raises(TargetError) as err:
        run(server, tmp_path / "t.jsonl", utterances, opts, turns=1)
    msg = err.value.message
    assert "output audio format" in msg and words in msg and "cannot decode" in msg, msg
    ev = [{"name": e.name, **e.attrs} for e in read_trace(tmp_path / "t.jsonl").events]
    (failed,) = named(ev, "session.failed")
    assert failed["reason"] == msg
    assert not named(ev, "session.audio_format")


def test_error_answering_session_update_fails_the_open(
    utterances: list[Utterance], tmp_path: Path
) -> None:
    """A server that refuses the format asked for keeps its own: the session cannot be
    used, and the connect fails with the server's words."""
    server = FormatServer(refuse="Invalid value: 'audio/pcmu'.")
    with pytest.raises(TargetError) as err:
        run(server, tmp_path / "t.jsonl", utterances, {"input_format": "pcmu"}, turns=1)
    msg = err.value.message
    assert msg == "target error answering session.update: Invalid value: 'audio/pcmu'."
    ev = [{"name": e.name, **e.attrs} for e in read_trace(tmp_path / "t.jsonl").events]
    (end,) = named(ev, "turn.end")
    assert end["ok"] is False
    assert failure_kind(end["reason"], end.get("failure")) == "connect_failed"


def test_created_declaration_conflict_waits_for_updated(
    utterances: list[Utterance], tmp_path: Path
) -> None:
    """A greeting declares 24 kHz PCM, the user asked for μ-law: the probe waits for the
    server's answer (beyond format_wait_ms) instead of cutting audio for the greeting's
    format; the answer, late, decides."""
    greeting = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    server = FormatServer(created=greeting, update_delay_s=0.8)  # format_wait_ms is 300
    ev = run(server, tmp_path / "t.jsonl", utterances, {"input_format": "pcmu"}, turns=1)
    (fmt,) = named(ev, "session.audio_format")
    assert fmt["input"] == {"encoding": "pcmu", "rate": 8000} and fmt["source"] == "declared"
    assert [e["ok"] for e in named(ev, "turn.end")] == [True]


def test_input_format_change_mid_session_reconnects(
    utterances: list[Utterance], tmp_path: Path
) -> None:
    """In turn 1 the server switches its input to μ-law: the audio already cut for PCM
    cannot go on, so that turn fails as a protocol fault and the probe reconnects; the new
    connection settles the format afresh and turn 2 is measured."""
    server = FormatServer(switch_in={"type": "audio/pcmu"})
    ev = run(server, tmp_path / "t.jsonl", utterances, {}, turns=3)
    ends = named(ev, "turn.end")
    assert [e["ok"] for e in ends] == [True, False, True], ends
    assert (
        "changed its input audio format mid-session (pcm16 24000 Hz -> pcmu 8000 Hz)"
        in (ends[1]["reason"])
    )
    assert failure_kind(ends[1]["reason"], ends[1].get("failure")) == "protocol_violation"
    fmts = named(ev, "session.audio_format")
    assert [(f["session"], f["input"]["encoding"]) for f in fmts] == [
        (ends[0]["session"], "pcm16"),
        (ends[0]["session"], "pcmu"),  # the change, recorded when it came
        (ends[2]["session"], "pcm16"),
    ]
    assert ends[2]["session"] != ends[0]["session"] and len(server.conns) == 2


def test_bad_format_option_is_a_usage_error() -> None:
    bad = (
        {"input_format": "opus"},
        {"output_format": "pcm8"},
        {"rate": "0"},
        {"format_wait_ms": "-1"},
    )
    for opt in bad:
        with pytest.raises(UsageError):
            RealtimeTarget(TargetConfig(url="ws://127.0.0.1:9/", protocol="realtime", options=opt))


# --- the reference pipeline in G.711, against its own truth ----------------------------


@pytest.mark.slow
def test_reference_pipeline_in_g711_agrees_with_its_truth(tmp_path: Path) -> None:
    """The built-in pipeline speaks μ-law in and A-law out when asked: each turn's
    voice-to-voice against the server's own record of when it sent the reply audio (as
    tests/test_run_ground_truth.py checks it for 24 kHz PCM)."""
    from test_run_ground_truth import _truth_v2v

    from voiceaudit.cli.run_cmd import reference_url
    from voiceaudit.data import bundled_dir
    from voiceaudit.model import unbatch
    from voiceaudit.reference.config import ServerConfig
    from voiceaudit.reference.groundtruth import read_ground_truth
    from voiceaudit.reference.server import start_reference_server

    async def go() -> None:
        server = await start_reference_server(
            ServerConfig(ground_truth_path=tmp_path / "ground_truth.jsonl")
        )
        try:
            opts = {"input_format": "pcmu", "output_format": "pcma"}
            cfg = TargetConfig(reference_url(server, "realtime"), "realtime", options=opts)
            utt = load_utterances([bundled_dir() / u for u in ("01_weather.wav", "03_lights.wav")])
            await run_probe(
                RealtimeTarget(cfg), utt, ProbeOptions(gap_ms=300), tmp_path / "t.jsonl"
            )
        finally:
            await server.close()

    asyncio.run(go())
    tr = read_trace(tmp_path / "t.jsonl")
    truth = [
        r for r in read_ground_truth(tmp_path / "ground_truth.jsonl") if r.get("record") == "turn"
    ]
    fmt = [e.attrs for e in tr.events if e.name == "session.audio_format"]
    assert fmt == [
        {
            "input": {"encoding": "pcmu", "rate": 8000},
            "output": {"encoding": "pcma", "rate": 8000},
            "source": "declared",
        }
    ]
    errors = []
    for session, turn in tr.finished_turns():
        evs: dict[str, Any] = {}
        chunks = []
        for e in sorted(
            (u for e in tr.turn_events(session, turn) for u in unbatch(e)), key=lambda e: e.t_ns
        ):
            evs.setdefault(e.name, e)
            if e.name == "reply.chunk":
                chunks.append(e)
        assert evs["turn.end"].attrs["ok"], evs["turn.end"].attrs
        assert evs["turn.start"].attrs["rate"] == 8000 and chunks[0].attrs["rate"] == 8000
        want = _truth_v2v(evs, chunks, truth)
        assert want is not None
        errors.append(evs["turn.end"].attrs["voice_to_voice_ns"] - want)
    assert len(errors) == 2
    # never earlier than the server made it; loopback adds little (the quickest turn: a
    # busy machine only adds time)
    assert min(errors) > -1 * MS and min(errors) <= 5 * MS, [e / MS for e in errors]
