"""The ``elevenlabs-agent`` target against a faithful local ElevenLabs Agents server
(``tests/elevenlabs_server.py``), and the official SDK's client against the same server.

Real parts: the server is an aiohttp WebSocket on loopback whose every message passes the
official ``elevenlabs`` SDK's own message reader and event names (and every message it
receives the SDK's client-side shapes); the caller's speech and the agent's replies are
real recordings from ``shared/realdata/speech``; the probe and the server share
``time.monotonic_ns()``, so the server's record of when it sent each reply message is the
truth the probe's voice-to-voice is checked against:

    truth = send time of the message holding the reply's first audible sample
            + that sample's offset in it - the speech end (``input.speech_end``)

The probe may be later only by loopback transport: never earlier by more than rounding,
and within 2 ms for the median turn. The runs take real time (speech is sent at
microphone pace): the module's runs are made once, in fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elevenlabs.types.conversation_initiation_client_data_request_input import (
    ConversationInitiationClientDataRequestInput,
)
from elevenlabs_server import ElevenLabsServer, SdkReader, Speech, client_violation, sdk_rejects

from voiceaudit.analysis import UNEXPLAINED, build_report
from voiceaudit.audio import read_audio
from voiceaudit.errors import TargetError, UsageError
from voiceaudit.model import Event, unbatch
from voiceaudit.probe.runner import Probe, ProbeOptions, run_probe
from voiceaudit.probe.utterances import load_utterances
from voiceaudit.scenario import parse_scenario
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.elevenlabs import (
    ElevenLabsAgentSession,
    ElevenLabsAgentTarget,
    initiation_message,
    parse_format,
)
from voiceaudit.targets.registry import get_target_class
from voiceaudit.trace_io import Trace, read_trace

MS = 1_000_000
KEY_ENV = "VOICEAUDIT_TEST_ELEVENLABS_KEY"
KEY = "xi-test-key-0f3a9c1d77"
CALLER = (
    "pocketsphinx_sense_and_sensibility_01_austen_64kb-0880.wav",
    "pocketsphinx_sense_and_sensibility_01_austen_64kb-0930.wav",
    "pocketsphinx_cards_005.wav",
)
#: one measurement on real loopback timing: a busy machine only adds to it
ONE_OFF_NS = 25 * MS


def speech(speech_dir: Path, name: str, text: str) -> Speech:
    a = read_audio(speech_dir / name)
    return Speech(a.samples, a.rate, text)


def target(url: str, **options: str) -> ElevenLabsAgentTarget:
    cfg = TargetConfig(
        url=url, protocol="elevenlabs-agent", api_key_env=KEY_ENV, options=dict(options)
    )
    cls = get_target_class("elevenlabs-agent")
    assert cls is ElevenLabsAgentTarget
    return ElevenLabsAgentTarget(cfg)


def turn_events(tr: Trace, session: str, turn: int) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in sorted(tr.turn_events(session, turn), key=lambda e: e.t_ns):
        for u in unbatch(e):
            out.setdefault(u.name, []).append(u)
    return out


def named(tr: Trace, name: str) -> list[Event]:
    return [u for e in tr.events for u in unbatch(e) if u.name == name]


# -- a run of two turns with a greeting, pings and the key ---------------------------------


@pytest.fixture(scope="module")
def greeted(
    speech_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Trace, ElevenLabsServer, str]:
    """Three turns after the agent's greeting; replies at 44.1 kHz paced at real time, the
    caller at 16 kHz; the server pings every 300 ms and wants the key."""
    out = tmp_path_factory.mktemp("el-greeted") / "trace.jsonl"
    server = ElevenLabsServer(
        speech(speech_dir, "pocketsphinx_cards_001.wav", "Ten of clubs."),
        greeting=speech(speech_dir, "pocketsphinx_cards_004.wav", "Five five."),
        output_format="pcm_44100",
        ping_ms=300,
        api_key=KEY,
        transcripts=("she was", "and so", "eight of spades"),
    )
    utterances = load_utterances([speech_dir / n for n in CALLER])

    async def go() -> None:
        url = await server.start()
        try:
            await run_probe(
                target(url, agent_id="agent_local"), utterances, ProbeOptions(gap_ms=300), out
            )
        finally:
            await server.stop()

    os.environ[KEY_ENV] = KEY
    try:
        asyncio.run(go())
    finally:
        del os.environ[KEY_ENV]
    return read_trace(out), server, out.read_text()


def truth_errors(tr: Trace, server: ElevenLabsServer) -> list[int]:
    """Per turn: the probe's voice-to-voice minus the server's truth (module doc)."""
    conv = server.conversations[-1]
    errors = []
    for (session, turn), reply in zip(tr.finished_turns(), conv.replies, strict=True):
        evs = turn_events(tr, session, turn)
        end = evs["turn.end"][0]
        assert end.attrs["ok"], end.attrs
        onset = evs["reply.audible"][0].attrs["sample"]
        assert evs["reply.chunk"][0].attrs["rate"] == reply.rate
        truth = reply.heard(onset) - evs["input.speech_end"][0].t_ns
        errors.append(end.attrs["voice_to_voice_ns"] - truth)
    return errors


def test_turns_agree_with_the_server_truth(greeted: tuple[Trace, ElevenLabsServer, str]) -> None:
    tr, server, _ = greeted
    errors = truth_errors(tr, server)
    assert len(errors) == len(CALLER)
    assert min(errors) > -1 * MS, errors  # never earlier than the server made it possible
    assert statistics.median(errors) <= 2 * MS, [e / MS for e in errors]


def test_the_speech_end_the_server_found_is_on_the_probes_clock(
    greeted: tuple[Trace, ElevenLabsServer, str],
) -> None:
    """The server's detector puts the speech end elsewhere than the probe's analysis (its
    energy threshold: tens of ms, either way), but its time for its own speech-end sample,
    from arrivals, is the probe's time for that sample: the two clocks and the two sample
    counts agree up to the loopback delay."""
    tr, server, _ = greeted
    conv = server.conversations[-1]
    offsets = []
    for (session, turn), reply in zip(tr.finished_turns(), conv.replies, strict=True):
        evs = turn_events(tr, session, turn)
        se = evs["input.speech_end"][0]
        start = evs["turn.start"][0].attrs
        assert reply.speech_end is not None and reply.speech_end_ns is not None
        probe_sample = start["session_sample_offset"] + se.attrs["sample"]
        probe_ns = se.t_ns + (reply.speech_end - probe_sample) * 1_000_000_000 // start["rate"]
        offsets.append(reply.speech_end_ns - probe_ns)
    assert min(offsets) > -1 * MS and max(offsets) <= ONE_OFF_NS, [o / MS for o in offsets]
    assert statistics.median(offsets) <= 2 * MS, [o / MS for o in offsets]


def test_the_server_and_voiceaudit_keep_to_the_sdk(
    greeted: tuple[Trace, ElevenLabsServer, str],
) -> None:
    _, server, _ = greeted
    conv = server.conversations[-1]
    assert server.sent_rejected == [], server.sent_rejected
    assert conv.violations == [], conv.violations
    assert conv.initiation is not None
    assert conv.client_kinds["conversation_initiation_client_data"] == 1
    assert conv.client_kinds["user_audio_chunk"] > 100
    # every ping answered with its own id
    assert len(conv.pings) >= 10
    answered = [e for e in conv.pings if e in conv.pongs]
    assert len(answered) >= len(conv.pings) - 1  # the last may cross the close
    assert all(conv.pongs[e] >= conv.pings[e] for e in answered)


def test_marks_formats_and_pings_in_the_trace(
    greeted: tuple[Trace, ElevenLabsServer, str],
) -> None:
    tr, server, _ = greeted
    conv = server.conversations[-1]
    fmt = named(tr, "session.audio_format")
    assert len(fmt) == 1
    assert fmt[0].attrs["input"] == {"encoding": "pcm16", "rate": 16000}
    assert fmt[0].attrs["output"] == {"encoding": "pcm16", "rate": 44100}
    assert fmt[0].attrs["source"] == "declared"
    assert fmt[0].attrs["conversation_id"] == conv.conversation_id
    for (session, turn), reply in zip(tr.finished_turns(), conv.replies, strict=True):
        evs = turn_events(tr, session, turn)
        assert evs["turn.start"][0].attrs["rate"] == 16000
        final = evs["transcript.final"][0]
        assert final.attrs["raw"] == "user_transcript"
        assert final.attrs["event_id"] == reply.event_id
        assert reply.transcript_ns is not None and final.t_ns >= reply.transcript_ns
        text = evs["reply_text.first"][0]
        assert text.attrs["text"] == "Ten of clubs."
        assert reply.response_ns is not None and text.t_ns >= reply.response_ns
        assert evs["committed"][0].t_ns == final.t_ns
        # the caller's speech was transcribed tentatively as it went, before the final
        partial = evs["transcript.partial"]
        assert partial and all(p.t_ns < final.t_ns for p in partial)
        assert {p.attrs["raw"] for p in partial} == {"tentative_user_transcript"}
        # every audio message is one reply chunk, whole, at the declared rate
        chunks = evs["reply.chunk"]
        assert [c.attrs["samples"] for c in chunks] == reply.chunk_samples
        assert {c.attrs["rate"] for c in chunks} == {44100}
    pings = named(tr, "ping")
    assert len(pings) >= 10
    # each ping's figure (the server's last measured round trip) as the server sent it
    assert all(p.attrs.get("ping_ms") == conv.ping_ms[p.attrs["event_id"]] for p in pings)
    assert any(isinstance(p.attrs.get("ping_ms"), int) for p in pings)


def test_the_greeting(greeted: tuple[Trace, ElevenLabsServer, str]) -> None:
    """The agent speaks first: its first message is the greeting, timed from when the
    initiation data left (the server's truth: its receipt of it, to the send time of the
    greeting's first audible sample)."""
    tr, server, _ = greeted
    conv = server.conversations[-1]
    g = conv.greeting
    assert g is not None and g.audio_sent_ns
    audible = named(tr, "greeting.audible")
    assert len(audible) == 1, [e.name for e in tr.events if e.name.startswith("greeting")]
    onset = audible[0].attrs["sample"]
    assert conv.initiation_ns is not None
    truth = g.heard(onset) - conv.initiation_ns
    err = audible[0].attrs["latency_ns"] - truth
    # two loopback crossings (the initiation out, the greeting back), never less
    assert -1 * MS < err <= ONE_OFF_NS, err / MS
    assert named(tr, "greeting.end")


def test_the_key_never_reaches_the_trace(greeted: tuple[Trace, ElevenLabsServer, str]) -> None:
    _, server, text = greeted
    conv = server.conversations[-1]
    assert conv.headers.get("xi-api-key") == KEY  # it was sent, as the header
    assert KEY not in text
    assert server.refused == []


# -- barge-in ------------------------------------------------------------------------------

BARGE = """
gap_ms = 300
[[session]]
name = "barge"
[[session.turn]]
say = "{first}"
interrupt = {{ after_reply_ms = 600, say = "{second}" }}
"""


@pytest.fixture(scope="module")
def barged(
    speech_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Trace, ElevenLabsServer]:
    """A caller who talks over a long reply sent at real time; no greeting."""
    base = tmp_path_factory.mktemp("el-barge")
    out = base / "trace.jsonl"
    server = ElevenLabsServer(
        speech(
            speech_dir,
            "pocketsphinx_sense_and_sensibility_01_austen_64kb-0870.wav",
            "A long answer.",
        ),
        output_format="pcm_24000",
        stale_after_interrupt=2,
    )
    sc = parse_scenario(
        BARGE.format(
            first=speech_dir / CALLER[0], second=speech_dir / "pocketsphinx_cards_002.wav"
        ),
        base_dir=base,
    )

    async def go() -> None:
        url = await server.start()
        try:
            t = target(url + "?agent_id=agent_local", first_message="")
            await Probe(t, [], ProbeOptions(), out, scenario=sc).run()
        finally:
            await server.stop()

    asyncio.run(go())
    return read_trace(out), server


def test_barge_in(barged: tuple[Trace, ElevenLabsServer]) -> None:
    tr, server = barged
    conv = server.conversations[-1]
    assert server.sent_rejected == [] and conv.violations == []
    assert conv.greeting is None  # first_message="" overrode it
    cut = conv.replies[0]
    assert cut.interruption_ns is not None and cut.barge_ns is not None
    interrupted = named(tr, "interrupted")
    assert len(interrupted) == 1
    assert interrupted[0].attrs["event_id"] == cut.event_id
    assert interrupted[0].t_ns >= cut.interruption_ns
    stops = named(tr, "reply.stop")
    assert len(stops) == 1
    stop = stops[0].attrs
    assert stop["cut"] is True and stop["stopped"] is True
    # the chunk holding the last audible sample arrived just after the server sent it
    last_sent = cut.audio_sent_ns[-1]
    arrived = stop["onset_ns"] + stop["received_ns"]
    assert last_sent <= arrived <= last_sent + ONE_OFF_NS, (arrived - last_sent) / MS
    # the server heard the interrupting speech where the probe started it (its 10 ms VAD
    # frames, the energy threshold)
    assert abs(cut.barge_ns - stop["onset_ns"]) <= 60 * MS, (cut.barge_ns - stop["onset_ns"]) / MS
    # what the agent said, cut where its audio was
    corr = named(tr, "reply_text.correction")
    assert len(corr) == 1 and cut.correction_ns is not None
    assert corr[0].attrs["original"] == "A long answer."
    assert "A long answer.".startswith(corr[0].attrs["corrected"])
    # audio of the cut reply still in flight after the interruption is dropped, as the
    # SDK drops it: the reply holds exactly what came before
    discarded = named(tr, "reply.discarded")
    assert len(cut.stale_sent_ns) == 2 and len(discarded) == 1
    assert discarded[0].attrs["event_id"] == cut.event_id
    session, first = tr.finished_turns()[0]
    assert len(turn_events(tr, session, first)["reply.chunk"]) == len(cut.audio_sent_ns)
    # the reply to the interruption is a turn of its own, answered
    ends = named(tr, "turn.end")
    assert len(ends) == 2 and all(e.attrs["ok"] for e in ends), [e.attrs for e in ends]
    assert len(conv.replies) == 2


# -- other formats -------------------------------------------------------------------------


def test_mulaw_input_and_a_burst_reply(speech_dir: Path, tmp_path: Path) -> None:
    """``ulaw_8000`` in (the probe sends 8 kHz, encoded to μ-law here), 16 kHz out sent all
    at once and ended by ``agent_response_complete``, after a client tool call (voiceaudit
    answers that it has no tools); the agent does not speak first; the key fetches a signed
    URL (``auth=signed_url``) and never goes to the WebSocket."""
    out = tmp_path / "trace.jsonl"
    server = ElevenLabsServer(
        speech(speech_dir, "pocketsphinx_cards_003.wav", "Seven of clubs."),
        input_format="ulaw_8000",
        pace=0.0,
        api_key=KEY,
        complete_event=True,
        tool_call=True,
    )
    utterances = load_utterances([speech_dir / CALLER[1]])

    async def go() -> None:
        url = await server.start()
        try:
            t = target(
                url, agent_id="agent_local", first_message="", quiet_ms="300", auth="signed_url"
            )
            await run_probe(t, utterances, ProbeOptions(), out)
        finally:
            await server.stop()

    os.environ[KEY_ENV] = KEY
    try:
        asyncio.run(go())
    finally:
        del os.environ[KEY_ENV]
    tr = read_trace(out)
    conv = server.conversations[-1]
    assert server.sent_rejected == [] and conv.violations == [] and server.refused == []
    assert conv.query.get("conversation_signature") and "xi-api-key" not in conv.headers
    assert KEY not in out.read_text()
    assert [m.attrs["raw"] for m in named(tr, "response.done")] == ["agent_response_complete"]
    assert [m.attrs["raw"] for m in named(tr, "agent.event")] == ["client_tool_call"]
    assert len(conv.tool_results) == 1
    result = conv.tool_results[0]
    assert result["tool_call_id"] == conv.replies[0].tool_call_id and result["is_error"] is True
    assert named(tr, "turn.start")[0].attrs["rate"] == 8000
    fmt = named(tr, "session.audio_format")[0].attrs
    assert fmt["input"] == {"encoding": "pcmu", "rate": 8000}
    errors = truth_errors(tr, server)
    assert -1 * MS < errors[0] <= ONE_OFF_NS, errors[0] / MS
    assert named(tr, "greeting.wait") == []  # the agent does not speak first


class Sink:
    """A target sink that keeps what it is told."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, dict[str, Any] | None]] = []
        self.failures: list[str] = []
        self.audio: list[tuple[int, bytes, int]] = []
        self.done: list[int] = []

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.marks.append((name, attrs))

    def reply_audio(self, t_ns: int, pcm16: bytes, rate: int, *rest: Any) -> None:
        self.audio.append((t_ns, pcm16, rate))

    def reply_done(self, t_ns: int) -> None:
        self.done.append(t_ns)

    def fail(self, reason: str) -> None:
        self.failures.append(reason)


def test_what_ends_a_reply() -> None:
    """Without a server: quiet_ms after the last audio ends a reply (once); an
    interruption ends it at once, and the cut reply's audio still in flight is dropped;
    agent_response_complete ends it; audio decodes at the declared format."""
    sink = Sink()
    s = target("ws://h/x", agent_id="a", quiet_ms="50").session(sink)
    assert isinstance(s, ElevenLabsAgentSession)

    def ev(obj: dict[str, Any]) -> None:
        s.on_text(time.monotonic_ns(), json.dumps(obj))

    def audio(eid: int, pcm: bytes) -> None:
        b64 = base64.b64encode(pcm).decode()
        ev({"type": "audio", "audio_event": {"audio_base_64": b64, "event_id": eid}})

    async def go() -> None:
        ev(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "c1",
                    "agent_output_audio_format": "ulaw_8000",
                    "user_input_audio_format": "pcm_22050",
                },
            }
        )
        assert s.input_rate == 22050
        for _ in range(4):
            audio(1, bytes([0xFF, 0x7F]) * 80)
        assert sink.done == []  # (the watcher has not even run)
        last = sink.audio[-1][0]
        for _ in range(500):  # wait for it, however busy the machine
            if sink.done:
                break
            await asyncio.sleep(0.01)
        assert len(sink.done) == 1 and sink.done[0] - last >= 50 * MS  # quiet_ms after it
        assert all(r == 8000 and len(p) == 320 for _, p, r in sink.audio)  # mu-law decoded
        audio(2, b"\xff" * 160)
        ev({"type": "interruption", "interruption_event": {"event_id": 2}})
        assert len(sink.done) == 2  # at once
        audio(2, b"\xff" * 160)  # in flight: dropped
        audio(2, b"\xff" * 160)
        assert len(sink.audio) == 5
        assert [n for n, _ in sink.marks].count("reply.discarded") == 1
        audio(3, b"\xff" * 160)
        ev({"type": "agent_response_complete"})
        assert len(sink.done) == 3 and len(sink.audio) == 6
        await asyncio.sleep(0.2)
        assert len(sink.done) == 3  # nothing more to end
        assert sink.failures == []
        await s.close()

    asyncio.run(go())


def test_a_wrong_key_fails_the_connect_with_the_reason(speech_dir: Path) -> None:
    """A wrong key is refused, as header and for a signed URL: a one-line TargetError that
    does not hold the key."""
    server = ElevenLabsServer(speech(speech_dir, "pocketsphinx_cards_001.wav", "x"), api_key=KEY)
    wrong = "xi-wrong-key-5e1b"

    async def go() -> list[str]:
        url = await server.start()
        out = []
        try:
            for auth in ("header", "signed_url"):
                ts = target(url, agent_id="agent_local", auth=auth).session(Sink())
                with pytest.raises(TargetError) as exc:
                    await ts.open()
                await ts.close()
                out.append(exc.value.message)
            # a signed URL given as the target, its signature stale: the error names the
            # URL without its query (the signature is a credential)
            signed = f"{url}?agent_id=agent_local&conversation_signature=sig-{wrong}"
            ts = target(signed).session(Sink())
            with pytest.raises(TargetError) as exc:
                await ts.open()
            await ts.close()
            out.append(exc.value.message)
        finally:
            await server.stop()
        return out

    os.environ[KEY_ENV] = wrong
    try:
        messages = asyncio.run(go())
    finally:
        del os.environ[KEY_ENV]
    assert "403" in messages[0] and "401" in messages[1] and "403" in messages[2], messages
    assert all(wrong not in m and "\n" not in m for m in messages)
    assert server.conversations == []


def test_the_ledger_is_cut_by_the_api_events(
    greeted: tuple[Trace, ElevenLabsServer, str],
) -> None:
    """user_transcript ends the endpointing, agent_response the response's start; no time
    is unexplained, and the response's start is what the server took between the two."""
    tr, server, _ = greeted
    rep = build_report([tr])
    conv = server.conversations[-1]
    assert len(rep.turns) == len(conv.replies)
    diffs = []
    for t, reply in zip(rep.turns, conv.replies, strict=True):
        segs = {s.name: s.ns for s in t.ledger.segments}
        assert UNEXPLAINED not in segs, segs
        assert reply.response_ns is not None and reply.transcript_ns is not None
        diffs.append(segs["response_start"] - (reply.response_ns - reply.transcript_ns))
        assert segs["endpointing"] > 0
    assert all(abs(d) <= ONE_OFF_NS for d in diffs), diffs
    assert abs(statistics.median(diffs)) <= 2 * MS, diffs


# -- the official SDK's client against the same server -------------------------------------


def test_the_sdk_client_completes_a_turn(speech_dir: Path) -> None:
    """``AsyncConversation`` (requires_auth: it gets a signed URL with the key first), with
    an audio interface that speaks a real recording in the SDK's recommended 250 ms chunks
    at real time: it hears the greeting and the reply, bit-exact, and answers the pings."""
    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import (
        AsyncAudioInterface,
        AsyncConversation,
    )

    caller = read_audio(speech_dir / CALLER[0], rate=16000).samples
    pcm = (np.clip(caller, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    reply = speech(speech_dir, "pocketsphinx_cards_005.wav", "Eight of spades.")
    greeting = speech(speech_dir, "pocketsphinx_cards_004.wav", "Five five.")
    server = ElevenLabsServer(reply, greeting=greeting, ping_ms=200, api_key=KEY, pace=0.5)

    class Mic(AsyncAudioInterface):
        def __init__(self) -> None:
            self.heard: list[bytes] = []
            self.task: asyncio.Task[None] | None = None

        async def start(self, input_callback: Any) -> None:
            async def speak() -> None:
                step = 4000 * 2
                t0 = time.monotonic()
                # a quiet open microphone while the greeting plays, the question, quiet
                data = bytes(16000 * 2 * 2) + pcm + bytes(16000 * 2 * 3)
                for k, off in enumerate(range(0, len(data), step)):
                    await asyncio.sleep(max(0.0, t0 + k * 0.25 - time.monotonic()))
                    await input_callback(data[off : off + step])

            self.task = asyncio.ensure_future(speak())

        async def stop(self) -> None:
            if self.task is not None:
                self.task.cancel()

        async def output(self, audio: bytes) -> None:
            self.heard.append(audio)

        async def interrupt(self) -> None:
            pass

    async def go() -> tuple[Mic, list[str], list[str], str | None]:
        url = await server.start()
        mic = Mic()
        transcripts: list[str] = []
        responses: list[str] = []

        async def on_transcript(t: str) -> None:
            transcripts.append(t)

        async def on_response(t: str) -> None:
            responses.append(t)

        try:
            client = ElevenLabs(
                api_key=KEY, base_url=url.replace("ws://", "http://").split("/v1")[0]
            )
            conv = AsyncConversation(
                client,
                "agent_local",
                requires_auth=True,
                audio_interface=mic,
                callback_user_transcript=on_transcript,
                callback_agent_response=on_response,
            )
            await conv.start_session()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                c = server.conversations
                if c and c[-1].replies and c[-1].replies[0].done:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await conv.end_session()
            cid = await conv.wait_for_session_end()
        finally:
            await server.stop()
        return mic, transcripts, responses, cid

    mic, transcripts, responses, cid = asyncio.run(go())
    conv = server.conversations[-1]
    assert server.refused == [] and server.sent_rejected == [] and conv.violations == []
    assert conv.query.get("conversation_signature")  # it came through the signed URL
    assert cid == conv.conversation_id
    assert conv.initiation is not None
    assert conv.initiation["source_info"]["source"] == "python_sdk"
    assert transcripts == ["(caller speech)"]
    assert responses == ["Five five.", "Eight of spades."]
    g_bytes, _, _ = greeting.encoded("pcm_16000")
    r_bytes, _, _ = reply.encoded("pcm_16000")
    assert b"".join(mic.heard) == g_bytes + r_bytes
    assert conv.pings and all(e in conv.pongs for e in list(conv.pings)[:-1])


# -- bad input -----------------------------------------------------------------------------

FAULTS = {
    "audio-no-event-id": "audio without an integer audio_event.event_id",
    "odd-audio": "cannot be the declared pcm_16000",
    "bad-base64": "audio_base_64 is not base64",
    "no-type": "malformed event",
}


#: the run's error, for a fault that stops the run (fault -> message)
errors: dict[str, str] = {}


@pytest.fixture(scope="module")
def faulted(
    speech_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Trace, ElevenLabsServer]]:
    """One short turn per injected fault (and one with an event the SDK does not know,
    and one declaring a format voiceaudit cannot decode)."""
    base = tmp_path_factory.mktemp("el-faults")
    errors.clear()
    reply = speech(speech_dir, "pocketsphinx_cards_001.wav", "Ten of clubs.")
    utterances = load_utterances([speech_dir / "pocketsphinx_cards_002.wav"])
    out: dict[str, tuple[Trace, ElevenLabsServer]] = {}

    async def one(fault: str) -> None:
        server = ElevenLabsServer(reply, fault=fault, end_ms=300, think_ms=50, pace=0.0)
        path = base / f"{fault}.jsonl"
        url = await server.start()
        try:
            t = target(url, agent_id="agent_local", first_message="")
            await run_probe(t, utterances, ProbeOptions(timeout_s=5), path)
        except TargetError as exc:
            # the first connect failed: the run stops with the reason (the CLI's one line)
            errors[fault] = exc.message
        finally:
            await server.stop()
        out[fault] = (read_trace(path), server)

    async def go() -> None:
        await asyncio.gather(*(one(f) for f in [*FAULTS, "unknown-event", "bad-format"]))

    asyncio.run(go())
    return out


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_rejected_message_or_undeclared_format_fails_the_turn(
    fault: str, faulted: dict[str, tuple[Trace, ElevenLabsServer]]
) -> None:
    tr, server = faulted[fault]
    assert len(server.injected) == 1
    why = server.injected[0][1]
    if fault == "odd-audio":
        # the SDK plays whatever bytes come: audio that cannot be the declared format is
        # voiceaudit's own check (half a sample would shift the rest of the reply)
        assert why is None
    else:
        assert why is not None  # the SDK's reader (or its names) reject it
    ends = named(tr, "turn.end")
    assert len(ends) == 1
    a = ends[0].attrs
    assert a["ok"] is False and a["failure"] == "protocol_violation", a
    assert FAULTS[fault] in a["reason"], a["reason"]
    assert tr.complete


def test_an_event_unknown_to_the_sdk_is_a_mark(
    faulted: dict[str, tuple[Trace, ElevenLabsServer]],
) -> None:
    tr, server = faulted["unknown-event"]
    assert "not one of the SDK's event names" in str(server.injected[0][1])
    marks = named(tr, "unknown_event")
    assert [m.attrs["raw"] for m in marks] == ["surprise_event"]
    assert named(tr, "turn.end")[0].attrs["ok"] is True


def test_a_format_voiceaudit_cannot_decode_fails_the_connect(
    faulted: dict[str, tuple[Trace, ElevenLabsServer]],
) -> None:
    """The first connect fails with the reason, so the run stops with it (no turn can
    work: the CLI prints it as one line); the trace has the turn, failed ``connect_failed``."""
    tr, server = faulted["bad-format"]
    assert "not a valid out" in str(server.injected[0][1])
    assert "mp3_44100_128" in errors["bad-format"] and "cannot decode" in errors["bad-format"]
    ends = named(tr, "turn.end")
    assert ends and ends[0].attrs["ok"] is False
    assert ends[0].attrs["failure"] == "connect_failed", ends[0].attrs
    assert "mp3_44100_128" in ends[0].attrs["reason"]
    assert set(errors) == {"bad-format"}


# -- units ---------------------------------------------------------------------------------


def test_formats() -> None:
    assert parse_format("pcm_16000") == ("pcm16", 16000)
    assert parse_format("pcm_44100") == ("pcm16", 44100)
    assert parse_format("ulaw_8000") == ("pcmu", 8000)
    for bad in ("mp3_44100_128", "ulaw_16000", "opus_48000", "pcm_x", 16000, None):
        with pytest.raises(ValueError):
            parse_format(bad)


def test_options() -> None:
    url = "ws://127.0.0.1:1/v1/convai/conversation"
    for opts in ({"nope": "1"}, {"auth": "cookie"}, {"quiet_ms": "-1"}, {"quiet_ms": "x"}):
        with pytest.raises(UsageError):
            target(url, agent_id="a1", **opts)
    with pytest.raises(UsageError, match="agent's id"):
        target(url)
    t = target(url, agent_id="a1", **{"dynamic.name": "Ann"})
    s = t.session(Sink())
    assert s.url() == url + "?agent_id=a1"
    assert s.speaks_first is True
    signed = target(url + "?agent_id=a2&conversation_signature=x", agent_id="a1")
    assert signed.session(Sink()).url() == url + "?agent_id=a2&conversation_signature=x"
    assert target(url, agent_id="a1", first_message="").session(Sink()).speaks_first is False


def test_initiation_message_is_what_the_sdk_models_accept() -> None:
    cfg = TargetConfig(
        url="ws://h/x",
        protocol="elevenlabs-agent",
        options={
            "first_message": "Hi",
            "language": "en",
            "prompt": "Be brief.",
            "voice_id": "v1",
            "user_id": "u1",
            "dynamic.name": "Ann",
        },
    )
    msg = initiation_message(cfg)
    assert msg["type"] == "conversation_initiation_client_data"
    body = {k: v for k, v in msg.items() if k != "type"}
    model = ConversationInitiationClientDataRequestInput.model_validate(body)
    assert model.conversation_config_override is not None
    agent = model.conversation_config_override.agent
    assert agent is not None and agent.first_message == "Hi" and agent.language == "en"
    assert model.dynamic_variables == {"name": "Ann"} and model.user_id == "u1"
    assert client_violation(json.dumps(msg), "pcm16", set()) is None


def test_the_servers_checks_can_fail() -> None:
    """The checks the server runs reject what the SDK rejects (so a test that passes them
    says something)."""
    r = SdkReader()
    try:
        good = {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1}}
        assert sdk_rejects(good, r) is None
        assert sdk_rejects({"type": "audio", "audio_event": {"audio_base_64": "AAAA"}}, r)
        assert sdk_rejects({"type": "ping", "ping_event": {}}, r)
        assert sdk_rejects({"type": "nonsense"}, r)
        meta = {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "c",
                "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000",
            },
        }
        assert sdk_rejects(meta, r) is None
        assert sdk_rejects(meta, r)  # a second one: the SDK asserts there is none
    finally:
        r.close()
    chunk = base64.b64encode(b"\x00\x01\x02").decode()
    assert client_violation(json.dumps({"user_audio_chunk": chunk}), "pcm16", set())
    assert client_violation(json.dumps({"user_audio_chunk": chunk}), "pcmu", set()) is None
    assert client_violation(json.dumps({"type": "pong", "event_id": 3}), "pcm16", {3}) is None
    assert client_violation(json.dumps({"type": "pong", "event_id": 4}), "pcm16", {3})
    assert client_violation(json.dumps({"type": "pong", "event_id": "3"}), "pcm16", {3})
    bad = {"type": "conversation_initiation_client_data", "dynamic_variables": "x"}
    assert client_violation(json.dumps(bad), "pcm16", set())


# -- the command line ----------------------------------------------------------------------


def test_voiceaudit_run_on_the_command_line(
    speech_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``voiceaudit run --protocol elevenlabs-agent``: a run that works (exit 0), no agent
    id (exit 2) and a wrong key (exit 4), each a line, never a traceback; the key is in no
    file the run writes and on no stream."""
    from voiceaudit.cli import run as cli
    from voiceaudit.errors import ExitCode

    clip = str(speech_dir / "pocketsphinx_cards_002.wav")
    server = ElevenLabsServer(
        speech(speech_dir, "pocketsphinx_cards_001.wav", "Ten of clubs."),
        greeting=speech(speech_dir, "pocketsphinx_cards_004.wav", "Five five."),
        api_key=KEY,
    )

    def run(*args: str) -> tuple[int, str, str]:
        code = cli(["run", "--protocol", "elevenlabs-agent", "--api-key-env", KEY_ENV, *args])
        out, err = capsys.readouterr()
        return code, out, err

    os.environ[KEY_ENV] = KEY
    try:
        with server:
            agent = ["--target", server.url, "-o", "agent_id=agent_local"]
            ok = run(*agent, "--out", str(tmp_path / "ok"), clip)
            no_agent = run("--target", server.url, "--out", str(tmp_path / "no"), clip)
            os.environ[KEY_ENV] = "xi-wrong-key-77"
            wrong = run(*agent, "--out", str(tmp_path / "wrong"), clip)
    finally:
        del os.environ[KEY_ENV]
    assert ok[0] == ExitCode.OK, ok
    assert "voice-to-voice" in ok[1]
    assert no_agent[0] == ExitCode.USAGE and "needs the agent's id" in no_agent[2], no_agent
    assert wrong[0] == ExitCode.TARGET and "403" in wrong[2], wrong
    for _, out, err in (ok, no_agent, wrong):
        assert "Traceback" not in out + err and KEY not in out + err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(KEY.encode() not in p.read_bytes() for p in written)
    tr = read_trace(tmp_path / "ok" / "trace.jsonl")
    assert named(tr, "greeting.audible") and named(tr, "turn.end")[0].attrs["ok"]
