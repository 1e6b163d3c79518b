"""The carrier targets (twilio, telnyx, plivo, exotel, vonage) against a scripted bot of each
dialect on loopback (tests/carrier_fake_bot.py: every message goes through Pipecat 1.14's
serializer for the dialect).

Full runs (``run_probe``, real speech) check what the probe reports: a reply sent ten
times faster than real time is reported at its play times, each chunk's wait in the
carrier's buffer against the bot's own send times (one-sided: a chunk cannot have arrived
before the bot sent it), the reply's end only once the buffer has drained, mark echoes at
the model's time (and never reaching the bot before the audio could have played), clear.
Direct sessions check DTMF, the continuous line (silence fill), each dialect's fields,
and bad input (a failed turn with the reason, or a mark; never a traceback).

A full run streams its speech at real time: about 4 s each.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from carrier_fake_bot import Call, FakeCarrierBot
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import InputDTMFFrame

from voiceaudit.errors import TargetError, UsageError
from voiceaudit.model import Event
from voiceaudit.probe.runner import ProbeOptions, RunResult, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.carrier import CarrierSession
from voiceaudit.targets.registry import get_target_class
from voiceaudit.trace_io import read_trace

MS = 1_000_000
DIALECTS = ("twilio", "telnyx", "plivo", "exotel", "vonage")
SPEECH = "pocketsphinx_cards_003.wav"
#: the probe waits for no greeting (the fake bot does not greet); where the probe has no
#: such option yet, nothing to pass
_NO_GREETING_WAIT: dict[str, Any] = (
    {"greeting_wait_s": 0.0}
    if "greeting_wait_s" in {f.name for f in dataclasses.fields(ProbeOptions)}
    else {}
)


# -- helpers ---------------------------------------------------------------------------------


class RecordingSink:
    """A target sink that keeps everything, for sessions driven without the probe."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, str, int, dict[str, Any]]] = []
        self.chunks: list[tuple[int, int, int, int | None]] = []
        self.done: list[int] = []
        #: when reply_done was called (this clock), per call
        self.done_called: list[int] = []
        self.fails: list[str] = []

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.marks.append((name, stage, t_ns, dict(attrs or {})))

    def reply_audio(
        self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int, queued_ns: int | None = None
    ) -> None:
        self.chunks.append((t_ns, len(pcm16) // 2, rate, queued_ns))

    def reply_done(self, t_ns: int) -> None:
        self.done.append(t_ns)
        self.done_called.append(time.monotonic_ns())

    def fail(self, reason: str) -> None:
        self.fails.append(reason)

    def named(self, name: str) -> list[tuple[str, str, int, dict[str, Any]]]:
        return [m for m in self.marks if m[0] == name]


def target(dialect: str, url: str, options: dict[str, str] | None = None) -> Any:
    cfg = TargetConfig(url=url, protocol=dialect, options=options or {}, connect_timeout_s=5.0)
    return get_target_class(dialect)(cfg)


def full_run(
    bot: FakeCarrierBot, dialect: str, speech: Path, tmp: Path, options: dict[str, str]
) -> tuple[RunResult, list[Event]]:
    trace = tmp / "trace.jsonl"
    opts = ProbeOptions(turns=1, timeout_s=4.0, idle_s=1.5, gap_ms=100, **_NO_GREETING_WAIT)
    with bot:
        res = asyncio.run(
            run_probe(target(dialect, bot.url, options), load_utterances([speech]), opts, trace)
        )
    return res, read_trace(trace).events


def one(events: list[Event], name: str) -> Event:
    found = [e for e in events if e.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


async def wait_for(pred: Any, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def speech(realdata: Path) -> Path:
    return realdata / "speech" / SPEECH


# -- full runs --------------------------------------------------------------------------------


def test_twilio_burst_reply_is_heard_at_real_time(speech: Path, tmp_path: Path) -> None:
    """The bot sends 2 s of reply in 20 messages of 100 ms, ten times faster than real
    time, then its mark: the probe reports 100 chunks of 20 ms back to back from the first
    one's arrival, each with its wait in the carrier's buffer, the reply done only once the
    buffer drained, and the mark echoed when the last sample has played."""
    bot = FakeCarrierBot("twilio", reply_ms=2000, chunk_ms=100, burst=10.0)
    res, events = full_run(bot, "twilio", speech, tmp_path, {"param.foo": "bar x"})
    assert [t.ok for t in res.turns] == [True], res.turns
    call = bot.calls[0]
    assert call.errors == []
    chunks = one(events, "reply.chunks")
    t0 = chunks.t_ns
    dt, queued = chunks.attrs["dt_ns"], chunks.attrs["queued_ns"]
    assert chunks.attrs["samples"] == [160] * 100
    # back to back at real time, from the first chunk's start
    assert dt == [20 * MS * i for i in range(100)]
    sends = [s.t_ns for s in call.sent if s.kind == "media"]
    assert len(sends) == 20
    # the first piece plays when it arrives, never before the bot sent it
    assert queued[0] == 0
    assert t0 >= sends[0]
    # every piece's arrival (its play time less its wait) is after its message was sent,
    # and the five pieces of a message arrived together
    arrivals = [t0 + d - q for d, q in zip(dt, queued, strict=True)]
    for i, a in enumerate(arrivals):
        assert a >= sends[i // 5], i
        assert a == arrivals[5 * (i // 5)]
    # the burst: the last message waited ~1.8 s behind the audio sent before it
    assert queued[-1] == 1980 * MS - (arrivals[-1] - t0)
    end = t0 + 2000 * MS
    assert one(events, "reply.end").t_ns == end
    # done only after the buffer drained and quiet_ms (500) passed
    assert one(events, "turn.end").t_ns >= end + 500 * MS
    # the mark: queued behind the audio, echoed when the last sample has played
    mark = one(events, "carrier.mark")
    assert mark.attrs["name"] == "reply-0"
    assert mark.attrs["queued_ms"] == pytest.approx((end - mark.t_ns) / MS, abs=0.001)
    echo = one(events, "carrier.mark_echo")
    assert echo.t_ns == end
    assert echo.attrs == {
        "name": "reply-0",
        "mark_ns": mark.t_ns,
        "cleared": False,
        "sent_ns": echo.attrs["sent_ns"],
    }
    assert echo.attrs["sent_ns"] >= end
    # the bot got it no sooner than its audio could have been heard
    assert call.echoes["reply-0"] >= sends[0] + 2000 * MS
    assert call.echoes["reply-0"] >= echo.attrs["sent_ns"]
    # Twilio's exact fields
    start = call.start
    assert start is not None
    s = start["start"]
    assert start["sequenceNumber"] == "1" and start["streamSid"] == s["streamSid"]
    assert s["customParameters"] == {"foo": "bar x"}
    assert s["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert s["tracks"] == ["inbound"]
    assert s["streamSid"].startswith("MZ") and len(s["streamSid"]) == 34
    assert s["callSid"].startswith("CA") and s["accountSid"].startswith("AC")
    kinds = [g.kind for g in call.got]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop"
    assert call.got[0].ev == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    seqs = [g.ev["sequenceNumber"] for g in call.got[1:] if g.ev is not None]
    assert seqs == [str(i) for i in range(1, len(seqs) + 1)]
    media = [g.ev for g in call.got if g.kind == "media" and g.ev is not None]
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * i) for i in range(len(media))]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {len(base64.b64decode(m["media"]["payload"])) for m in media} == {160}
    stop = call.got[-1].ev
    assert stop is not None and stop["stop"] == {
        "accountSid": s["accountSid"],
        "callSid": s["callSid"],
    }
    # the session's path and the start mark
    cs = one(events, "carrier.start")
    assert cs.attrs["dialect"] == "twilio" and cs.attrs["stream_id"] == s["streamSid"]
    assert cs.attrs["encoding"] == "pcmu" and cs.attrs["rate"] == 8000


def test_twilio_clear_cuts_the_playout(speech: Path, tmp_path: Path) -> None:
    """The bot clears 500 ms after its first chunk, having sent all 2 s and its mark: the
    caller heard the samples begun before the clear's arrival, nothing after; the rest is
    dropped and the pending mark is echoed at once."""
    bot = FakeCarrierBot("twilio", reply_ms=2000, chunk_ms=100, burst=10.0, clear_after_ms=500)
    res, events = full_run(bot, "twilio", speech, tmp_path, {"quiet_ms": "300"})
    assert [t.ok for t in res.turns] == [True], res.turns
    call = bot.calls[0]
    assert call.errors == []
    clear = one(events, "carrier.clear")
    sent_clear = [s.t_ns for s in call.sent if s.kind == "clear"]
    assert len(sent_clear) == 1 and clear.t_ns >= sent_clear[0]
    chunks = one(events, "reply.chunks")
    t0 = chunks.t_ns
    # the samples begun before the clear took effect (its arrival, unless the loop handled
    # it after later audio had been released: late_ns)
    cut = clear.t_ns + clear.attrs.get("late_ns", 0)
    heard = -(-(cut - t0) * 8000 // 1_000_000_000)
    assert sum(chunks.attrs["samples"]) == heard
    assert clear.attrs["playing"] is True
    assert clear.attrs["dropped_ms"] == pytest.approx((16000 - heard) * 0.125, abs=0.001)
    assert clear.attrs["marks_echoed"] == 1
    echo = one(events, "carrier.mark_echo")
    assert echo.t_ns == cut and echo.attrs["cleared"] is True
    assert call.echoes["reply-0"] >= sent_clear[0]
    assert one(events, "reply.end").t_ns == t0 + heard * 125_000


@pytest.mark.parametrize("dialect", ["telnyx", "plivo", "exotel", "vonage"])
def test_each_dialect_speaks_to_its_pipecat_serializer(
    dialect: str, speech: Path, tmp_path: Path
) -> None:
    """A turn, its mark echoed and a clear, in each dialect; every message the probe sent
    went through the dialect's Pipecat serializer as the frame expected; a fixed delay of
    150 ms moves every play time and no echo."""
    bot = FakeCarrierBot(dialect, reply_ms=1000, chunk_ms=100, burst=10.0, clear_after_ms=600)
    options = {"param.caller": "probe", "fixed_delay_ms": "150"}
    res, events = full_run(bot, dialect, speech, tmp_path, options)
    assert [t.ok for t in res.turns] == [True], res.turns
    call = bot.calls[0]
    assert call.errors == []
    rate = 16000 if dialect == "vonage" else 8000
    chunks = one(events, "reply.chunks")
    sends = [s.t_ns for s in call.sent if s.kind == "media"]
    assert chunks.attrs["queued_ns"][0] == 0
    assert chunks.t_ns - 150 * MS >= sends[0]
    assert chunks.attrs["rate"] == rate
    clear = one(events, "carrier.clear")
    cut = clear.t_ns + clear.attrs.get("late_ns", 0)
    heard = -(-(cut - (chunks.t_ns - 150 * MS)) * rate // 1_000_000_000)
    assert sum(chunks.attrs["samples"]) == heard
    echo = one(events, "carrier.mark_echo")
    # the mark was sent at ~100 ms, queued behind 1 s of audio: the clear at 600 ms echoes it
    assert echo.t_ns == cut and echo.attrs["cleared"] is True
    assert call.echoes["reply-0"] >= next(s.t_ns for s in call.sent if s.kind == "clear")
    if dialect in ("plivo", "vonage"):
        assert len(call.clear_acks) == 1 and call.clear_acks[0] >= call.echoes["reply-0"]
    else:
        assert call.clear_acks == []
    start = call.start
    assert start is not None
    got = [g for g in call.got if g.kind in ("media", "binary")]
    if dialect == "telnyx":
        assert call.got[0].ev == {"event": "connected", "version": "1.0.0"}
        s = start["start"]
        assert s["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
        assert s["custom_parameters"] == {"caller": "probe"}
        assert s["call_control_id"].startswith("v3:")
        assert {len(base64.b64decode(g.ev["media"]["payload"])) for g in got if g.ev} == {160}
        assert call.got[-1].kind == "stop"
    elif dialect == "plivo":
        assert call.got[0].kind == "start"
        s = start["start"]
        assert s["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}
        assert json.loads(start["extra_headers"]) == {"caller": "probe"}
        assert {g.ev["media"]["chunk"] for g in got[:3] if g.ev} == {1, 2, 3}
        assert call.got[-1].kind == "media"  # Plivo has no stop: the socket closes
    elif dialect == "exotel":
        assert call.got[0].ev == {"event": "connected"}
        s = start["start"]
        assert s["media_format"] == {
            "encoding": "audio/x-raw",
            "sample_rate": "8000",
            "bit_rate": "16",
        }
        assert s["custom_parameters"] == {"caller": "probe"}
        assert start["stream_sid"] == s["stream_sid"]
        # 16-bit PCM, 20 ms a frame
        assert {len(base64.b64decode(g.ev["media"]["payload"])) for g in got if g.ev} == {320}
        assert call.got[-1].kind == "stop"
        # the bot's 100 ms chunks keep Exotel's rule
        assert not [e for e in events if e.name == "carrier.chunk_rule"]
    else:
        assert start == {
            "event": "websocket:connected",
            "content-type": "audio/l16;rate=16000",
            "caller": "probe",
        }
        assert {g.size for g in got} == {640}
        assert all(g.ev is None for g in got)


# -- sessions without the probe ----------------------------------------------------------------


async def _session(
    bot: FakeCarrierBot, dialect: str, options: dict[str, str] | None = None
) -> tuple[CarrierSession, RecordingSink]:
    sink = RecordingSink()
    ts = target(dialect, bot.url, options).session(sink)
    assert isinstance(ts, CarrierSession)
    await ts.open()
    return ts, sink


@pytest.mark.parametrize("dialect", DIALECTS)
def test_dtmf_reaches_the_bot_as_a_key_press(dialect: str) -> None:
    bot = FakeCarrierBot(dialect, replies=False)

    async def go() -> tuple[RecordingSink, Call]:
        ts, sink = await _session(bot, dialect)
        try:
            before = time.monotonic_ns()
            await ts.send_dtmf("5")
            with pytest.raises(TargetError):
                await ts.send_dtmf("x")
            await wait_for(lambda: bool(bot.calls))
            call = bot.calls[0]
            await wait_for(lambda: any("dtmf" in g.kind for g in call.got))
            (m,) = sink.named("carrier.dtmf")
            assert m[1] == "input" and m[3] == {"digit": "5"} and m[2] >= before
            return sink, call
        finally:
            await ts.close()

    with bot:
        sink, call = asyncio.run(go())
    assert call.errors == []
    (got,) = [g for g in call.got if "dtmf" in g.kind]
    assert isinstance(got.frame, InputDTMFFrame) and got.frame.button == KeypadEntry.FIVE
    assert got.t_ns >= sink.named("carrier.dtmf")[0][2]


@pytest.mark.parametrize(
    ("dialect", "rate"), [("twilio", 8000), ("vonage", 16000), ("vonage", 8000)]
)
def test_the_line_is_continuous(dialect: str, rate: int) -> None:
    """Between the probe's frames the session sends silence on the 20 ms clock itself,
    counted in stream_fill_samples; a probe chunk that is not a whole frame is re-framed
    (the remainder goes out padded with counted silence)."""
    bot = FakeCarrierBot(dialect, replies=False, vonage_rate=rate)
    frame = rate // 50
    options = {"rate": str(rate)} if dialect == "vonage" else {}

    async def go() -> tuple[int, int]:
        ts, _ = await _session(bot, dialect, options)
        try:
            assert ts.input_rate == rate and ts.speaks_first
            assert ts.media_start_ns() is not None
            await asyncio.sleep(0.3)
            await ts.start_turn(0)
            fill = ts.stream_fill_samples()
            await asyncio.sleep(0.1)  # held while a turn's speech goes out
            assert ts.stream_fill_samples() == fill
            await ts.send_audio(bytes(2 * (frame + frame // 2)))  # 30 ms: 1 frame + half
            await ts.speech_ended()
            await asyncio.sleep(0.2)
        finally:
            await ts.close()
        # read once closed: nothing more goes out
        return fill, ts.stream_fill_samples()

    with bot:
        fill, total = asyncio.run(go())
        time.sleep(0.1)
    call = bot.calls[0]
    assert call.errors == []
    media = [g for g in call.got if g.kind in ("media", "binary")]
    assert fill >= 5 * frame and fill % frame == 0
    # everything the bot got is the probe's 1.5 frames plus the counted fill
    assert len(media) * frame == total + frame + frame // 2
    assert total % frame == frame // 2
    assert {g.frame.num_frames for g in media} == {frame}  # type: ignore[union-attr]
    if dialect == "twilio":
        ts_ms = [g.ev["media"]["timestamp"] for g in media if g.ev]
        assert ts_ms == [str(20 * i) for i in range(len(media))]
    else:
        assert call.start is not None
        assert call.start["content-type"] == f"audio/l16;rate={rate}"
        assert {g.size for g in media} == {2 * frame}


BAD_INPUT: list[tuple[str, str | bytes, str, str]] = [
    # (dialect, what the bot sends, failure (or mark) expected, its attr text)
    (
        "twilio",
        '{"event":"media","streamSid":"$SID","media":{"payload":"@@not base64@@"}}',
        "fail",
        "protocol: media payload is not base64",
    ),
    (
        "exotel",
        '{"event":"media","stream_sid":"$SID","media":{"payload":"AAEC"}}',
        "fail",
        "protocol: media payload of odd length (3 bytes) for 16-bit PCM",
    ),
    ("twilio", '{"event":"bogus","streamSid":"$SID"}', "unknown_event", "bogus"),
    ("telnyx", '{"event":"transcode"}', "unknown_event", "transcode"),
    ("twilio", '{"event":"clear","streamSid":"MZother"}', "carrier.wrong_stream", "MZother"),
    (
        "twilio",
        '{"event":"mark","streamSid":"MZother","mark":{"name":"x"}}',
        "carrier.wrong_stream",
        "MZother",
    ),
    ("plivo", '{"event":"clearAudio","streamId":"other"}', "carrier.wrong_stream", "other"),
    ("twilio", '{"event":"media"', "fail", "protocol: malformed event"),
    ("twilio", b"\x00\x01", "fail", "protocol: unexpected binary message"),
    (
        "plivo",
        '{"event":"playAudio","streamId":"$SID","media":{"contentType":"audio/x-l16",'
        '"sampleRate":16000,"payload":"AAAA"}}',
        "fail",
        "protocol: playAudio in audio/x-l16 at 16000 Hz",
    ),
    ("vonage", "hello", "fail", "protocol: text that is not JSON"),
    (
        "vonage",
        '{"event":"media","payload":"AAAA"}',
        "fail",
        "protocol: audio in a text message where Vonage takes binary frames",
    ),
    ("vonage", b"\x00\x01\x02", "fail", "protocol: odd-length 16-bit PCM frame (3 bytes)"),
    ("vonage", '{"action":"transfer"}', "unknown_event", "transfer"),
]


@pytest.mark.parametrize(("dialect", "message", "expect", "text"), BAD_INPUT)
def test_bad_input_is_a_failed_turn_or_a_mark(
    dialect: str, message: str | bytes, expect: str, text: str
) -> None:
    bot = FakeCarrierBot(dialect, replies=False, script=[message])

    async def go() -> RecordingSink:
        ts, sink = await _session(bot, dialect)
        try:
            await wait_for(lambda: bool(sink.fails) or bool(sink.named(expect)))
            await asyncio.sleep(0.05)
        finally:
            await ts.close()
        return sink

    with bot:
        sink = asyncio.run(go())
    if expect == "fail":
        assert len(sink.fails) == 1 and sink.fails[0].startswith(text), sink.fails
    else:
        assert sink.fails == []
        (m,) = sink.named(expect)
        assert text in json.dumps(m[3])
        if expect == "carrier.wrong_stream":
            assert m[3]["event"] in ("clear", "mark", "clearAudio")
            assert sink.named("carrier.clear") == sink.named("carrier.mark") == []
    assert sink.chunks == []


def test_bad_payload_in_a_run_fails_the_turn_with_the_reason(speech: Path, tmp_path: Path) -> None:
    """The bot answers the caller's speech with a payload that is not base64."""
    bot = FakeCarrierBot(
        "twilio", reply_script=['{"event":"media","streamSid":"$SID","media":{"payload":"%%%"}}']
    )
    res, _ = full_run(bot, "twilio", speech, tmp_path, {})
    (turn,) = res.turns
    assert not turn.ok and turn.failure == "protocol_violation"
    assert turn.reason == "protocol: media payload is not base64"


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "options", "words"),
    [
        ("twilio", {"bogus": "1"}, "unknown target option 'bogus' for twilio (known: account_id"),
        ("twilio", {"rate": "16000"}, "unknown target option 'rate' for twilio"),
        ("vonage", {"tracks": "both"}, "unknown target option 'tracks' for vonage"),
        ("vonage", {"stream_id": "x"}, "unknown target option 'stream_id' for vonage"),
        ("twilio", {"fixed_delay_ms": "-5"}, "fixed_delay_ms='-5' must be a whole number"),
        ("plivo", {"quiet_ms": "soon"}, "quiet_ms='soon' must be a whole number"),
        ("twilio", {"tracks": "outbound"}, "tracks='outbound' must be inbound or both"),
        ("vonage", {"rate": "11025"}, "rate=11025 must be 8000 or 16000"),
        ("exotel", {"param.a b": "1"}, "bad target option 'param.a b' for exotel"),
        ("telnyx", {"stream_id": "a/b"}, "stream_id='a/b'"),
        ("twilio", {"tls_insecure": "maybe"}, "tls_insecure='maybe' must be true or false"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    dialect: str, options: dict[str, str], words: str
) -> None:
    with pytest.raises(UsageError) as err:
        target(dialect, "ws://127.0.0.1:1/x", options)
    assert words in err.value.message
    assert "\n" not in err.value.message and err.value.hint is None


def test_an_unknown_option_exits_2_with_one_line() -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "voiceaudit",
            "run",
            "--protocol",
            "twilio",
            "-o",
            "bogus=1",
            "--target",
            "ws://127.0.0.1:1/x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown target option 'bogus' for twilio" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_options_shape_the_handshake() -> None:
    opts = {"stream_id": "MZfixed", "call_id": "CAfixed", "account_id": "ACfixed"}
    bot = FakeCarrierBot("twilio", replies=False)

    async def go() -> None:
        ts, sink = await _session(bot, "twilio", {**opts, "tracks": "both"})
        await ts.close()
        (m,) = sink.named("carrier.start")
        assert m[3]["stream_id"] == "MZfixed" and m[3]["call_id"] == "CAfixed"

    with bot:
        asyncio.run(go())
    start = bot.calls[0].start
    assert start is not None
    s = start["start"]
    assert (s["streamSid"], s["callSid"], s["accountSid"]) == ("MZfixed", "CAfixed", "ACfixed")
    assert s["tracks"] == ["inbound", "outbound"]
    t = get_target_class("twilio")
    assert t.path == "phone" and "param.NAME" in t.options


def test_the_greeting_is_heard_through_the_carrier(speech: Path, tmp_path: Path) -> None:
    """The bot greets 200 ms after ``start`` with 1 s of tone sent ten times faster than
    real time: the probe waits for it (the carriers' agents speak first), measures its
    latency from ``start`` and hears it for 1 s before the first turn."""
    bot = FakeCarrierBot("twilio", greet_ms=1000, greet_after_ms=200, burst=10.0)
    trace = tmp_path / "trace.jsonl"
    opts = ProbeOptions(turns=1, timeout_s=4.0, idle_s=1.5, gap_ms=100)
    with bot:
        res = asyncio.run(
            run_probe(target("twilio", bot.url), load_utterances([speech]), opts, trace)
        )
    events = read_trace(trace).events
    assert [t.ok for t in res.turns] == [True], res.turns
    call = bot.calls[0]
    assert call.errors == []
    greet_sends = [s.t_ns for s in call.sent if s.kind == "greeting"]
    start = one(events, "carrier.start")
    wait = one(events, "greeting.wait")
    assert wait.t_ns == start.t_ns
    audible = one(events, "greeting.audible")
    assert audible.attrs["latency_ns"] == audible.t_ns - start.t_ns
    # the bot sent it 200 ms after start at the earliest; heard no sooner than sent
    assert audible.t_ns >= greet_sends[0] >= start.t_ns + 200 * MS
    end = one(events, "greeting.end")
    # the greeting's first chunk played when it arrived, no sooner than the bot sent it
    assert audible.attrs["first_byte_ns"] >= greet_sends[0]
    # sent in 0.1 s, heard for 1 s
    assert end.t_ns == audible.attrs["first_byte_ns"] + 1000 * MS
    assert end.attrs["duration_ns"] == 1000 * MS
    assert greet_sends[-1] - greet_sends[0] < 1000 * MS
    assert one(events, "turn.start").t_ns >= end.t_ns + 100 * MS


def test_tracks_both_forks_what_the_caller_hears_back() -> None:
    """``-o tracks=both``: each piece the caller heard goes back to the bot as ``media`` on
    the outbound track, once played; the bot's serializer reads it as audio."""
    # 50 ms of μ-law, without 0x7F (μ-law's second zero, which comes back as 0xFF)
    codes = bytes(range(0x10, 0x10 + 100)) + bytes(range(0x90, 0x90 + 100))
    audio = base64.b64encode(codes * 2).decode()
    bot = FakeCarrierBot(
        "twilio",
        replies=False,
        script=['{"event":"media","streamSid":"$SID","media":{"payload":"' + audio + '"}}'],
    )

    async def go() -> RecordingSink:
        ts, sink = await _session(bot, "twilio", {"tracks": "both"})
        try:
            await wait_for(lambda: len(sink.chunks) == 3)
            await asyncio.sleep(0.1)
        finally:
            await ts.close()
        return sink

    with bot:
        sink = asyncio.run(go())
    call = bot.calls[0]
    assert call.errors == []
    out = [g.ev for g in call.got if g.ev and g.ev.get("media", {}).get("track") == "outbound"]
    assert len(out) == 3
    sent = base64.b64decode(audio)
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in out) == sent
    ts_ms = [int(m["media"]["timestamp"]) for m in out]
    assert ts_ms[1] - ts_ms[0] == 20 and ts_ms[2] - ts_ms[1] == 20
    assert [c[1] for c in sink.chunks] == [160, 160, 80]


def test_exotel_marks_chunks_that_break_its_rule() -> None:
    """Exotel wants the bot's chunks in multiples of 320 bytes and at least 100 ms: a 40 ms
    chunk is marked once (``carrier.chunk_rule``) and played anyway."""
    pcm = base64.b64encode(bytes(640)).decode()
    msg = '{"event":"media","stream_sid":"$SID","media":{"payload":"' + pcm + '"}}'
    bot = FakeCarrierBot("exotel", replies=False, script=[msg, msg])

    async def go() -> RecordingSink:
        ts, sink = await _session(bot, "exotel")
        try:
            await wait_for(lambda: len(sink.chunks) == 4)
        finally:
            await ts.close()
        return sink

    with bot:
        sink = asyncio.run(go())
    (m,) = sink.named("carrier.chunk_rule")
    assert m[3] == {"bytes": 640, "min_bytes": 1600, "multiple_of": 320}
    assert sink.fails == []


VALID = {
    "param.NAME": ("param.lang", "en-GB"),
    "fixed_delay_ms": ("fixed_delay_ms", "120"),
    "quiet_ms": ("quiet_ms", "250"),
    "stream_id": ("stream_id", "s-1"),
    "call_id": ("call_id", "c-1"),
    "account_id": ("account_id", "a-1"),
    "tracks": ("tracks", "both"),
    "rate": ("rate", "8000"),
    "tls_insecure": ("tls_insecure", "false"),
    "ca_file": ("", ""),  # needs a PEM file: wsbase's own tests cover it
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_declared_option_is_taken(dialect: str) -> None:
    """Each option a carrier target declares (``voiceaudit targets``) is accepted with a
    good value and has its effect on the session; each has one line of help."""
    cls = get_target_class(dialect)
    assert set(cls.options) <= set(VALID)
    assert all(text and "\n" not in text for text in cls.options.values())
    opts = dict(VALID[name] for name in cls.options if VALID[name][0])
    ts = target(dialect, "ws://127.0.0.1:1/x", opts).session(RecordingSink())
    assert isinstance(ts, CarrierSession)
    assert ts.opts.params == {"lang": "en-GB"}
    assert ts.model.fixed_delay_ns == 120 * MS and ts.quiet_ns == 250 * MS
    if "stream_id" in cls.options:
        assert (ts.stream_id, ts.call_id, ts.account_id) == ("s-1", "c-1", "a-1")
    if "rate" in cls.options:
        assert ts.input_rate == 8000
    if "tracks" in cls.options:
        assert ts.opts.tracks == "both"


@pytest.mark.parametrize(("quiet_ms", "fixed_ms"), [(200, 0), (200, 400)])
def test_the_reply_is_done_once_drained_and_quiet(quiet_ms: int, fixed_ms: int) -> None:
    """300 ms of audio sent at once: the reply's end is the end of its last sample (+ the
    fixed delay), signalled no sooner than ``quiet_ms`` after the drain and than the
    caller has heard it end; a second burst after the drain is a second reply."""
    pcm = base64.b64encode(bytes(4800)).decode()  # 300 ms of 16-bit PCM at 8 kHz
    msg = '{"event":"media","stream_sid":"$SID","media":{"payload":"' + pcm + '"}}'
    bot = FakeCarrierBot("exotel", replies=False, script=[msg, "$SLEEP 1200", msg])
    options = {"quiet_ms": str(quiet_ms), "fixed_delay_ms": str(fixed_ms)}

    async def go() -> RecordingSink:
        ts, sink = await _session(bot, "exotel", options)
        try:
            await wait_for(lambda: len(sink.done) == 2)
        finally:
            await ts.close()
        return sink

    with bot:
        sink = asyncio.run(go())
    sent = [s.t_ns for s in bot.calls[0].sent if s.kind == "script"]
    assert len(sent) == 2 and len(sink.chunks) == 30
    for k in (0, 1):
        chunks = sink.chunks[15 * k : 15 * (k + 1)]
        first = chunks[0][0]
        assert [c[1] for c in chunks] == [160] * 15
        assert [c[0] - first for c in chunks] == [20 * MS * i for i in range(15)]
        assert first - fixed_ms * MS >= sent[k]  # played when it arrived, not before sent
        assert sink.done[k] == first + 300 * MS
        drained = sink.done[k] - fixed_ms * MS
        assert sink.done_called[k] >= drained + max(quiet_ms, fixed_ms) * MS


def test_concurrent_calls_are_separate_streams(speech: Path, tmp_path: Path) -> None:
    """``--sessions 3``: three calls at once, each its own stream (ids, sequence numbers,
    buffer), each turn answered and heard at real time."""
    bot = FakeCarrierBot("twilio", reply_ms=1000, chunk_ms=100, burst=10.0)
    trace = tmp_path / "trace.jsonl"
    opts = ProbeOptions(sessions=3, turns=1, timeout_s=4.0, idle_s=1.5, **_NO_GREETING_WAIT)
    with bot:
        res = asyncio.run(
            run_probe(target("twilio", bot.url), load_utterances([speech]), opts, trace)
        )
    assert [t.ok for t in res.turns] == [True] * 3, res.turns
    assert len(bot.calls) == 3 and all(c.errors == [] for c in bot.calls)
    assert len({c.stream_id for c in bot.calls}) == 3
    for c in bot.calls:
        assert c.got[1].ev is not None and c.got[1].ev["sequenceNumber"] == "1"
    events = read_trace(trace).events
    chunks = [e for e in events if e.name == "reply.chunks"]
    assert len(chunks) == 3
    for e in chunks:
        assert e.attrs["dt_ns"] == [20 * MS * i for i in range(50)]
