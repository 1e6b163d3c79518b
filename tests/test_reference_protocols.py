"""``voiceaudit serve`` as a subprocess, spoken to over each protocol with real speech:
it must hear the words and answer with audible synthesized speech. The official
``openai`` client is one of the callers, as evidence that the protocols are faithful."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from test_reference_support import (
    CARDS_001,
    CARDS_003,
    ONE_TWO_THREE,
    ROOT,
    SPEECH,
    Served,
    from_pcm16,
    load_speech,
    need_realdata,
    onset,
    pcm16,
    pcm_turn,
    realtime_turn,
    serve,
)

from voiceaudit.reference.dsp import ulaw_decode, ulaw_encode
from voiceaudit.reference.groundtruth import MARKS

#: Marks every spoken turn must have, in the order they must happen.
ORDERED = [
    "speech_started",
    "vad_stop",
    "asr_done",
    "transcript_final",
    "llm_request",
    "llm_first_token",
    "tts_request",
    "tts_first_audio",
    "first_audio_sent",
    "last_audio_sent",
]


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    need_realdata()
    with serve(asr_workers=2) as s:
        yield s


@functools.cache
def _adapter() -> Any:
    from openai.types.realtime.realtime_server_event import RealtimeServerEvent
    from pydantic import TypeAdapter

    return TypeAdapter(RealtimeServerEvent)


def _validate_realtime(raw: str) -> Any:
    """Validate one server event against the official package's pydantic models."""
    return _adapter().validate_json(raw)


def _assert_marks_in_order(marks: dict[str, int | None]) -> None:
    values = [marks[m] for m in ORDERED]
    assert all(v is not None for v in values), {m: marks[m] for m in ORDERED}
    assert values == sorted(values), {m: marks[m] for m in ORDERED}  # type: ignore[type-var]


def _audible_seconds(samples: np.ndarray, rate: int) -> float:
    first = onset(samples, rate)
    assert first is not None, "the reply is silent"
    return (samples.size - first) / rate


async def _exchange(
    server: Served, *messages: dict[str, Any], timeout_s: float, cancel: bool = False
) -> list[dict[str, Any]]:
    """On one Realtime connection, send ``messages`` in order, then collect every event
    until ``response.done`` (``cancel``: answer ``response.created`` with
    ``response.cancel``)."""
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as cs,
        cs.ws_connect(server.ws + "/v1/realtime") as ws,
    ):
        for m in messages:
            await ws.send_json(m)
        async with asyncio.timeout(timeout_s):
            async for msg in ws:
                events.append(json.loads(msg.data))
                if cancel and events[-1]["type"] == "response.created":
                    await ws.send_json({"type": "response.cancel"})
                if events[-1]["type"] == "response.done":
                    break
    return events


# --- command line ------------------------------------------------------------------------


def test_serve_rejects_a_bad_injection_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "voiceaudit", "serve", "--inject", "nagle=on"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown injection 'nagle'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_ground_truth_header_describes_the_server(server: Served) -> None:
    header = server.records()[0]
    assert header["record"] == "header"
    assert header["schema"] == "voiceaudit.groundtruth/1"
    assert header["config"]["responder"] == "scripted"
    assert header["injections_described"] == []
    assert header["clock"]["source"] == "time.monotonic_ns"


# --- OpenAI Realtime -----------------------------------------------------------------------


def test_official_openai_realtime_client_completes_a_turn(server: Served) -> None:
    """The openai package's own realtime client, pointed at the server, gets a full turn;
    every event it receives validates against the package's pydantic models."""
    from openai import AsyncOpenAI

    speech = load_speech(ONE_TWO_THREE, 24000)
    audio = np.concatenate([speech, np.zeros(24000, dtype=np.float32)])

    async def main() -> tuple[list[Any], bytes, str]:
        client = AsyncOpenAI(api_key="sk-not-needed", base_url=server.url + "/v1")
        events: list[Any] = []
        reply = bytearray()
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {
                                "type": "server_vad",
                                "silence_duration_ms": 500,
                                "prefix_padding_ms": 300,
                            },
                        },
                        "output": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "voice": "alloy",
                        },
                    },
                }
            )

            async def send() -> None:
                start = time.monotonic()
                for n, k in enumerate(range(0, audio.size, 480), start=1):
                    chunk = base64.b64encode(pcm16(audio[k : k + 480])).decode()
                    await conn.input_audio_buffer.append(audio=chunk)
                    await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

            sender = asyncio.create_task(send())
            async with asyncio.timeout(30):
                while True:
                    raw = await conn.recv_bytes()
                    event = _validate_realtime(raw.decode())
                    events.append(event)
                    if event.type == "response.output_audio.delta":
                        reply += base64.b64decode(event.delta)
                    if event.type == "response.done":
                        break
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            session_id = events[0].session.id
        return events, bytes(reply), session_id

    events, reply, session_id = asyncio.run(main())
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.done",
    ]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order)
    done = events[-1]
    assert done.response.status == "completed"
    assert done.response.usage.output_token_details.audio_tokens > 0
    transcript = next(
        e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
    )
    assert transcript.transcript == "one two three"
    spoken = from_pcm16(reply)
    assert _audible_seconds(spoken, 24000) > 2.0
    truth = server.turn(session_id)
    assert truth["protocol"] == "realtime"
    assert truth["transcript"] == "one two three"
    assert truth["status"] == "completed"
    _assert_marks_in_order(truth["marks"])


def test_realtime_events_agree_with_the_ground_truth(server: Served) -> None:
    speech = load_speech(CARDS_001, 24000)
    turn = asyncio.run(realtime_turn(server.ws, speech))
    for raw in turn.raw:
        _validate_realtime(raw)
    truth = server.turn(turn.session_id)
    _assert_marks_in_order(truth["marks"])
    _, stopped = turn.first("input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == truth["audio"]["audio_end_ms"]
    assert truth["audio"]["audio_end_ms"] - truth["audio"]["speech_end_ms"] == 500
    t_audio, _ = turn.first("response.output_audio.delta")
    # The first audio delta reaches the client after the server wrote it, promptly.
    assert 0 <= t_audio - truth["marks"]["first_audio_sent"] < 100_000_000
    _, done = turn.first("response.output_audio_transcript.done")
    assert done["transcript"] == truth["reply_text"]
    assert truth["transcript"] == "ten of clubs"
    assert truth["tts_texts"][0] == "You said:"
    reply = from_pcm16(turn.audio())
    assert reply.size / 24000 == pytest.approx(truth["audio"]["reply_audio_ns"] / 1e9, abs=1e-3)


def test_realtime_beta_protocol_uses_the_beta_names(server: Served) -> None:
    speech = load_speech(CARDS_003, 24000)
    beta_session = {
        "modalities": ["text", "audio"],
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
    }
    turn = asyncio.run(
        realtime_turn(
            server.ws, speech, session=beta_session, headers={"OpenAI-Beta": "realtime=v1"}
        )
    )
    types = set(turn.types())
    assert {
        "response.audio.delta",
        "response.audio_transcript.delta",
        "response.audio.done",
    } <= types
    assert "conversation.item.created" in types
    assert not {t for t in types if t.startswith("response.output_audio")}
    created = turn.events[0]["session"]
    assert created["input_audio_format"] == "pcm16" and "audio" not in created
    updated = next(e for e in turn.events if e["type"] == "session.updated")
    assert updated["session"]["turn_detection"]["silence_duration_ms"] == 400
    truth = server.turn(turn.session_id)
    assert truth["protocol"] == "realtime-beta"
    assert truth["audio"]["audio_end_ms"] - truth["audio"]["speech_end_ms"] == 400
    assert _audible_seconds(from_pcm16(turn.audio("response.audio.delta")), 24000) > 1.0


def test_realtime_g711_mulaw_in_and_out(server: Served) -> None:
    """audio/pcmu is 8 kHz µ-law both ways. PocketSphinx's model is wideband, so
    telephone-band speech is harder for it; "one two three" still gets through. The
    turn is committed by hand (turn_detection null) so the VAD cannot split it."""
    speech = load_speech(ONE_TWO_THREE, 8000)

    chunks = [
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(ulaw_encode(speech[k : k + 1600])).decode(),
        }
        for k in range(0, speech.size, 1600)
    ]
    fmt = {"type": "audio/pcmu"}
    events = asyncio.run(
        _exchange(
            server,
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"format": fmt, "turn_detection": None},
                        "output": {"format": fmt},
                    },
                },
            },
            *chunks,
            {"type": "input_audio_buffer.commit"},
            {"type": "response.create"},
            timeout_s=30,
        )
    )
    transcript = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert transcript["transcript"] == "one two three"
    reply = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert _audible_seconds(ulaw_decode(reply), 8000) > 1.0
    updated = next(e for e in events if e["type"] == "session.updated")
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}


def test_realtime_manual_commit_and_response_create(server: Served) -> None:
    """turn_detection null: the client commits and asks for the response itself."""
    speech = load_speech(CARDS_001, 24000)

    chunks = [
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(pcm16(speech[k : k + 4800])).decode(),
        }
        for k in range(0, speech.size, 4800)
    ]
    events = asyncio.run(
        _exchange(
            server,
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            },
            *chunks,
            {"type": "input_audio_buffer.commit"},
            {"type": "response.create"},
            timeout_s=30,
        )
    )
    types = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in types
    assert "input_audio_buffer.committed" in types
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert "ten of clubs" in done["output"][0]["content"][0]["transcript"]


# --- raw PCM WebSocket -----------------------------------------------------------------------


def test_pcm_websocket_turn_with_stage_marks(server: Served) -> None:
    speech = load_speech(CARDS_001, 16000)
    turn = asyncio.run(pcm_turn(server.ws, speech))
    done = turn.event("turn_done")
    assert done["status"] == "completed"
    assert done["transcript"] == "ten of clubs"
    assert _audible_seconds(turn.audio, 16000) > 2.0
    truth = server.turn(turn.session_id)
    _assert_marks_in_order(truth["marks"])
    for name in ORDERED:
        if name in ("speech_started",):
            continue
        assert turn.event(name)["t_ns"] == truth["marks"][name], name
    # Same host, same clock: each mark is sent after it happened.
    for name in ORDERED:
        assert turn.event_times[name] >= truth["marks"][name]
    assert turn.frames[0][0] >= truth["marks"]["first_audio_sent"]
    assert set(truth["marks"]) == set(MARKS)
    assert truth["marks"]["speech_end_received"] <= truth["marks"]["vad_stop"]


def test_pcm_websocket_other_rates(server: Served) -> None:
    """48 kHz in, 8 kHz out: resampled both ways, words and reply intact."""
    speech = load_speech(CARDS_003, 48000)
    turn = asyncio.run(pcm_turn(server.ws, speech, rate=48000, out_rate=8000, speed=2.0))
    assert turn.event("session.started")["out_rate"] == 8000
    assert turn.event("turn_done")["transcript"] == "seven of clubs"
    truth = server.turn(turn.session_id)
    assert turn.audio.size == round(truth["audio"]["reply_audio_ns"] * 8000 / 1e9)
    assert _audible_seconds(turn.audio, 8000) > 2.0


@pytest.mark.parametrize("query", ["rate=5", "rate=abc", "encoding=f32le", "channels=2"])
def test_pcm_handshake_refuses_bad_parameters(server: Served, query: str) -> None:
    async def main() -> int:
        async with aiohttp.ClientSession() as cs:
            try:
                async with cs.ws_connect(f"{server.ws}/v1/pcm?{query}"):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(main()) == 400


# --- OpenAI-compatible HTTP ------------------------------------------------------------------


def test_http_stages_with_the_official_client(server: Served) -> None:
    """transcriptions → chat completions (streamed) → speech (streamed), each driven by the
    openai package, as the cascade target does."""
    from openai import OpenAI

    client = OpenAI(api_key="sk-not-needed", base_url=server.url + "/v1")
    with (SPEECH / CARDS_003).open("rb") as fh:
        tr = client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert tr.text == "seven of clubs"
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": tr.text}]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("You said: seven of clubs.")
    pcm = bytearray()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    ) as resp:
        for chunk in resp.iter_bytes():
            pcm += chunk
    assert _audible_seconds(from_pcm16(bytes(pcm)), 24000) > 2.0
    for stage in ("transcription", "chat", "speech"):
        assert server.wait_turns(lambda r, s=stage: r["stage"] == s), stage


def test_http_transcription_formats_and_streaming(server: Served) -> None:
    async def main() -> tuple[Any, str, str]:
        data = (SPEECH / CARDS_001).read_bytes()
        async with aiohttp.ClientSession() as cs:

            def form(**fields: str) -> aiohttp.FormData:
                fd = aiohttp.FormData()
                fd.add_field("file", io.BytesIO(data), filename="a.wav")
                for k, v in fields.items():
                    fd.add_field(k, v)
                return fd

            r1 = await cs.post(server.url + "/v1/audio/transcriptions", data=form(model="x"))
            j = await r1.json()
            r2 = await cs.post(
                server.url + "/v1/audio/transcriptions", data=form(response_format="text")
            )
            t = await r2.text()
            r3 = await cs.post(server.url + "/v1/audio/transcriptions", data=form(stream="true"))
            sse = await r3.text()
            return j, t, sse

    j, t, sse = asyncio.run(main())
    assert j["text"] == "ten of clubs" and j["usage"]["type"] == "duration"
    assert t.strip() == "ten of clubs"
    events = [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data:")]
    assert events[-1] == {
        "type": "transcript.text.done",
        "text": "ten of clubs",
        "usage": events[-1]["usage"],
    }


def test_http_speech_streams_wav(server: Served) -> None:
    import soundfile as sf

    async def main() -> tuple[bytes, float, float]:
        async with aiohttp.ClientSession() as cs:
            t0 = time.monotonic()
            r = await cs.post(
                server.url + "/v1/audio/speech",
                json={"model": "tts-1", "input": "Ten of clubs. Seven of hearts.", "voice": "x"},
            )
            first = None
            body = bytearray()
            async for chunk in r.content.iter_any():
                first = first if first is not None else time.monotonic() - t0
                body += chunk
            return bytes(body), first or 0.0, time.monotonic() - t0

    body, _, _ = asyncio.run(main())
    assert body[:4] == b"RIFF"
    x = from_pcm16(body[44:])
    assert _audible_seconds(x, 24000) > 1.0
    # A reader that trusts the header still gets the audio.
    data, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == 24000 and data.size == x.size


@pytest.mark.parametrize(
    ("path", "kwargs", "param"),
    [
        (
            "/v1/audio/speech",
            {"json": {"input": "hi", "response_format": "mp3"}},
            "response_format",
        ),
        ("/v1/audio/speech", {"json": {"model": "tts-1"}}, "input"),
        ("/v1/chat/completions", {"data": b"{not json"}, None),
        ("/v1/chat/completions", {"json": {"messages": []}}, None),
        ("/v1/audio/transcriptions", {"data": b"x"}, None),
    ],
)
def test_http_bad_requests_get_openai_style_errors(
    server: Served, path: str, kwargs: dict[str, Any], param: str | None
) -> None:
    async def main() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as cs:
            r = await cs.post(server.url + path, **kwargs)
            return r.status, await r.json()

    status, body = asyncio.run(main())
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


# --- bad input, disconnects, and other sessions keep being served ------------------------------


def test_bad_realtime_input_gets_error_events_and_the_session_goes_on(server: Served) -> None:
    bad = [
        "{this is not json",
        json.dumps({"type": "input_audio_buffer.explode"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}),
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\x01\x02\x03").decode(),
            }
        ),
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            }
        ),
        json.dumps({"type": "response.cancel"}),
    ]
    speech = load_speech(CARDS_003, 24000)
    turn = asyncio.run(realtime_turn(server.ws, speech, before=bad, speed=2.0))
    errors = [e["error"] for e in turn.events if e["type"] == "error"]
    codes = [e["code"] for e in errors]
    assert codes == [
        "invalid_json",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "response_cancel_not_active",
    ]
    assert errors[5]["param"] == "session.audio.input.format.rate"
    for raw in turn.raw:
        _validate_realtime(raw)
    # The same session still hears and answers.
    assert turn.events[-1]["type"] == "response.done"
    assert turn.events[-1]["response"]["status"] == "completed"
    transcript = next(
        e
        for e in turn.events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert transcript["transcript"] == "seven of clubs"


def test_disconnect_mid_turn_leaves_other_sessions_served(server: Served) -> None:
    """One caller hangs up in the middle of the reply while another is mid-turn: the
    second is answered, the first's turn is recorded as cancelled, the server lives on."""
    speech24 = load_speech(CARDS_001, 24000)
    speech16 = load_speech(CARDS_003, 16000)

    async def quitter() -> str:
        audio = np.concatenate([speech24, np.zeros(24000, dtype=np.float32)])
        async with (
            aiohttp.ClientSession() as cs,
            cs.ws_connect(server.ws + "/v1/realtime") as ws,
        ):
            created = json.loads((await ws.receive()).data)
            for k in range(0, audio.size, 4800):
                await ws.send_json(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm16(audio[k : k + 4800])).decode(),
                    }
                )
                await asyncio.sleep(0.1)
            async for msg in ws:
                if json.loads(msg.data)["type"] == "response.output_audio_transcript.delta":
                    break  # hang up mid-reply, without a close handshake
            assert ws._response.connection is not None
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
            return str(created["session"]["id"])

    async def main() -> tuple[str, Any]:
        return await asyncio.gather(quitter(), pcm_turn(server.ws, speech16, speed=1.0))

    quit_id, other = asyncio.run(main())
    assert other.event("turn_done")["status"] == "completed"
    assert other.event("turn_done")["transcript"] == "seven of clubs"
    truth = server.turn(quit_id)
    assert truth["status"] in ("cancelled", "client_disconnected")

    async def status() -> dict[str, Any]:
        async with aiohttp.ClientSession() as cs:
            r = await cs.get(server.url + "/voiceaudit/status")
            return dict(await r.json())

    deadline = time.monotonic() + 5
    while (st := asyncio.run(status()))["active_sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert st["active_sessions"] == 0
    assert all(w["alive"] for w in st["asr_workers"])


def test_bad_pcm_frames_get_error_events(server: Served) -> None:
    async def main() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as cs,
            cs.ws_connect(server.ws + "/v1/pcm") as ws,
        ):
            await ws.receive()  # session.started
            await ws.send_bytes(b"\x00\x01\x02")
            await ws.send_str("{nope")
            await ws.send_str(json.dumps({"type": "dance"}))
            await ws.send_str(json.dumps({"type": "ping"}))
            out = []
            async with asyncio.timeout(10):
                while len(out) < 4:
                    out.append(json.loads((await ws.receive()).data))
            return out

    events = asyncio.run(main())
    assert [e.get("code", e["type"]) for e in events] == [
        "bad_frame",
        "invalid_json",
        "unknown_type",
        "pong",
    ]


# --- a real LLM endpoint instead of the script ---------------------------------------------------


def test_llm_url_streams_from_a_real_chat_completions_server(server: Served) -> None:
    """--llm points the responder at an OpenAI-compatible server (here: the first server's
    own /v1/chat/completions, over real HTTP/SSE)."""
    speech = load_speech(CARDS_001, 16000)
    with serve("--llm", server.url + "/v1", "--llm-model", "any") as second:
        turn = asyncio.run(pcm_turn(second.ws, speech, speed=2.0))
        assert second.records()[0]["config"]["responder"] == "llm"
        truth = second.turn(turn.session_id)
    assert turn.event("turn_done")["reply_text"].startswith("You said: ten of clubs.")
    _assert_marks_in_order(truth["marks"])
    chats = [r for r in server.turns() if r.get("stage") == "chat"]
    assert any(r["transcript"] == "ten of clubs" for r in chats)


def test_realtime_text_item_and_text_only_response(server: Served) -> None:
    """conversation.item.create with text, then response.create, with output_modalities
    ['text']: a text response (response.output_text.delta) and no audio."""

    events = asyncio.run(
        _exchange(
            server,
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text"]},
            },
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "queen of hearts"}],
                },
            },
            {"type": "response.create"},
            timeout_s=20,
        )
    )
    for e in events:
        _validate_realtime(json.dumps(e))
    types = [e["type"] for e in events]
    assert "response.output_text.delta" in types
    assert not any(t.startswith("response.output_audio") for t in types)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"].startswith("You said: queen of hearts.")
    truth = server.wait_turns(lambda r: r["reply_text"] and "queen of hearts" in r["reply_text"])
    assert truth and truth[0]["marks"]["tts_request"] is None
    assert truth[0]["marks"]["first_audio_sent"] is None


def test_realtime_response_cancel(server: Served) -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "two of spades"}],
    }
    events = asyncio.run(
        _exchange(
            server,
            {"type": "conversation.item.create", "item": item},
            {"type": "response.create"},
            timeout_s=20,
            cancel=True,
        )
    )
    final = events[-1]["response"]
    assert final["status"] == "cancelled"
    assert final["status_details"]["reason"] == "client_cancelled"
    assert final["output"][0]["status"] == "incomplete"
    _validate_realtime(json.dumps(events[-1]))
