"""Azure AI Voice Live as a dialect of the realtime target (``-o dialect=azure``).

The runs go against a Voice Live server on loopback written from Microsoft's description
(the Realtime event schema with the beta event names, a flat session object, the
``/voice-live/realtime?api-version=…&model=…`` URL and the ``api-key`` header), made honest
by Pipecat's own Voice Live models (``pipecat.services.azure.voice_live.events``, what
Pipecat's ``AzureVoiceLiveLLMService`` sends and parses): every message voiceaudit sends is
validated with the client event model of its type and must survive it unchanged (no field
the model does not know), and every message the server sends passes Pipecat's
``parse_server_event``. The server decides the end of the turn itself (an energy
endpointer with the ``silence_duration_ms`` it was given), waits a known delay, and replies
with a known leading silence then a tone, sent at once, stamping when each audio delta left
(one process: the probe's monotonic clock), so the voice-to-voice the probe reports is
checked against the server's truth. Paced at real time, a reply the caller talks over is
stopped by the server's VAD (``speech_started``, then ``response.done`` cancelled), as
Voice Live's barge-in does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from pipecat.services.azure.voice_live import events as vl
from servers import EnergyEndpointer, LoopbackServer

from voiceaudit.cli import run as cli
from voiceaudit.errors import UsageError
from voiceaudit.model import unbatch
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.realtime import (
    AZURE_API_VERSION,
    RealtimeSession,
    RealtimeTarget,
    azure_url,
    declared_formats,
)
from voiceaudit.trace_io import read_trace

MS = 1_000_000
KEY_ENV = "VOICEAUDIT_TEST_AZURE_KEY"
KEY = "azk-3f9c1e-never-in-a-trace-7d2b"
MODEL = "gpt-realtime"
DELAY_MS = 250  # the server's known delay after it ends the turn
LEAD_MS = 60  # the reply's leading silence
TONE_MS = 300
CHUNK_MS = 20
UTTERANCES = ("01_weather.wav", "06_thanks.wav", "03_lights.wav")

#: the client events voiceaudit may send, by type: Pipecat's Voice Live models
CLIENT_MODELS: dict[str, Any] = {
    "session.update": vl.SessionUpdateEvent,
    "input_audio_buffer.append": vl.InputAudioBufferAppendEvent,
    "input_audio_buffer.commit": vl.InputAudioBufferCommitEvent,
    "response.create": vl.ResponseCreateEvent,
    "response.cancel": vl.ResponseCancelEvent,
    "conversation.item.truncate": vl.ConversationItemTruncateEvent,
}


def validate_client(raw: dict[str, Any]) -> None:
    """The event parses as Pipecat's model of its type and loses nothing doing so."""
    model = CLIENT_MODELS[raw["type"]]
    parsed = model.model_validate(raw)
    assert parsed.model_dump(mode="json", exclude_unset=True) == raw, raw


class VoiceLiveServer(LoopbackServer):
    """A Voice Live endpoint: ``GET /voice-live/realtime``; see the module docstring."""

    path = "/voice-live/realtime"

    def __init__(self, tone_ms: int = TONE_MS, paced: bool = False) -> None:
        #: the reply's tone; ``paced``: deltas sent at real time (else all at once)
        self.tone_ms, self.paced = tone_ms, paced
        #: monotonic ns when the caller's speech over a reply stopped it
        self.cuts: list[int] = []
        self.truncates: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.client_types: list[str] = []
        self.problems: list[str] = []
        #: per reply: monotonic ns just before each audio delta was sent, and its samples
        self.sent: list[list[tuple[int, int]]] = []
        self.out_rate = 24000

    async def send(self, ws: web.WebSocketResponse, event: dict[str, Any]) -> None:
        parsed = vl.parse_server_event(json.dumps(event))
        if parsed is None:
            self.problems.append(f"the server sent {event['type']}, which Pipecat does not know")
        await ws.send_json(event)

    def declared(self, s: dict[str, Any]) -> dict[str, Any]:
        """The session object as Voice Live echoes it in ``session.updated``."""
        return {"id": "sess_1", "object": "realtime.session", "model": MODEL, **s}

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        self.requests.append(
            {"path": request.path, "query": dict(request.query), "headers": dict(request.headers)}
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.send(ws, {"type": "session.created", "session": self.declared({})})
        endpointer: EnergyEndpointer | None = None
        in_rate = 24000
        tasks: list[asyncio.Task[None]] = []
        replying = False
        current: asyncio.Task[None] | None = None

        async def reply() -> None:
            nonlocal replying
            await asyncio.sleep(DELAY_MS / 1000)
            rate = self.out_rate
            lead = np.zeros(rate * LEAD_MS // 1000)
            n = rate * self.tone_ms // 1000
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 32767
            pcm = np.concatenate([lead, tone]).astype("<i2").tobytes()
            step = rate * CHUNK_MS // 1000 * 2
            await self.send(ws, {"type": "response.created", "response": {"id": "resp_1"}})
            stamps: list[tuple[int, int]] = []
            self.sent.append(stamps)
            t0 = time.monotonic()
            for i in range(0, len(pcm), step):
                if self.paced:
                    due = t0 + i // step * CHUNK_MS / 1000
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                chunk = pcm[i : i + step]
                stamps.append((time.monotonic_ns(), len(chunk) // 2))
                delta = base64.b64encode(chunk).decode()
                await self.send(
                    ws,
                    {"type": "response.audio.delta", "response_id": "resp_1", "item_id": "item_1",
                     "output_index": 0, "content_index": 0, "delta": delta},
                )  # fmt: skip
            await self.send(ws, {"type": "response.audio.done", "item_id": "item_1"})
            done = {"id": "resp_1", "status": "completed"}
            await self.send(ws, {"type": "response.done", "response": done})
            replying = False

        async for msg in ws:
            ev = json.loads(msg.data)
            self.client_types.append(ev["type"])
            try:
                validate_client(ev)
            except Exception as exc:
                self.problems.append(f"{ev['type']}: {exc}"[:300])
            if ev["type"] == "response.create" and not replying:
                replying = True  # manual turn detection: the client says when
                tasks.append(asyncio.ensure_future(reply()))
            elif ev["type"] == "conversation.item.truncate":
                self.truncates.append(ev)
            elif ev["type"] == "session.update":
                s = ev["session"]
                self.sessions.append(s)
                in_rate = s.get("input_audio_sampling_rate", 24000)
                self.out_rate = {"pcm16_16000hz": 16000, "pcm16_8000hz": 8000}.get(
                    s["output_audio_format"], 24000
                )
                td = s.get("turn_detection") or {}
                endpointer = EnergyEndpointer(in_rate, td.get("silence_duration_ms", 500))
                await self.send(ws, {"type": "session.updated", "session": self.declared(s)})
            elif ev["type"] == "input_audio_buffer.append" and endpointer is not None:
                x = np.frombuffer(base64.b64decode(ev["audio"]), "<i2").astype(np.float64)
                if endpointer.feed(x):
                    await self.send(ws, {"type": "input_audio_buffer.speech_started",
                                         "audio_start_ms": 0, "item_id": "item_0"})  # fmt: skip
                    if current is not None and not current.done():
                        # the caller talks over the reply: Voice Live stops it
                        current.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await current
                        self.cuts.append(time.monotonic_ns())
                        replying = False
                        done = {"id": "resp_1", "status": "cancelled"}
                        await self.send(ws, {"type": "response.done", "response": done})
                if endpointer.turn_ended and not replying:
                    endpointer.reset()
                    replying = True
                    await self.send(ws, {"type": "input_audio_buffer.speech_stopped",
                                         "audio_end_ms": 0, "item_id": "item_0"})  # fmt: skip
                    current = asyncio.ensure_future(reply())
                    tasks.append(current)
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        return ws


# --- the URL, the key and the session.update ---------------------------------------------


def _config(url: str, **options: str) -> TargetConfig:
    return TargetConfig(
        url=url, protocol="realtime", api_key_env=KEY_ENV, options={"dialect": "azure", **options}
    )


def test_the_voice_live_url_shape() -> None:
    cfg = _config("https://myres.services.ai.azure.com", model=MODEL)
    assert azure_url(cfg) == (
        f"wss://myres.services.ai.azure.com/voice-live/realtime"
        f"?api-version={AZURE_API_VERSION}&model={MODEL}"
    )
    # a full URL keeps what it says; an older resource's host; a chosen api-version
    full = (
        "wss://old.cognitiveservices.azure.com/voice-live/realtime?api-version=2025-05-01-preview"
    )
    assert azure_url(_config(full, model="gpt-4o-mini")) == full + "&model=gpt-4o-mini"
    agent = _config("wss://r.services.ai.azure.com/?agent_id=a1&project_id=p", api_version="v9")
    RealtimeTarget(agent)  # an agent needs no model
    assert azure_url(agent) == (
        "wss://r.services.ai.azure.com/voice-live/realtime?agent_id=a1&project_id=p&api-version=v9"
    )


def test_the_key_goes_in_the_api_key_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)

    class Sink:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    cfg = _config("wss://r.services.ai.azure.com", model=MODEL)
    assert RealtimeSession(cfg, Sink()).headers() == {"api-key": KEY}  # type: ignore[arg-type]
    bearer = _config("wss://r.services.ai.azure.com", model=MODEL, auth="bearer")
    assert RealtimeSession(bearer, Sink()).headers() == {"Authorization": f"Bearer {KEY}"}  # type: ignore[arg-type]
    assert KEY in cfg.secrets()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dialect": "azur"}, "target option dialect='azur' is not a dialect"),
        ({"dialect": "azure"}, "dialect=azure needs the model Voice Live runs"),
        (
            {"dialect": "azure", "model": MODEL, "api": "beta"},
            "target option api is for the openai",
        ),
        ({"dialect": "azure", "model": MODEL, "rate": "8000"}, "PCM input at 16000 or 24000 Hz"),
        ({"dialect": "azure", "model": MODEL, "noise_reduction": "max"}, "noise_reduction='max'"),
        ({"dialect": "azure", "model": MODEL, "turn_detection": "vad"}, "turn_detection='vad'"),
        ({"dialect": "azure", "model": MODEL, "auth": "token"}, "auth='token'"),
        ({"noise_reduction": "far_field"}, "noise_reduction is for -o dialect=azure"),
        ({"threshold": "high"}, "target option threshold must be a number"),
        ({"dialect": "azure", "model": MODEL, "silence_ms": "-5"}, "silence_ms cannot be neg"),
    ],
)
def test_bad_dialect_options_are_usage_errors(
    options: dict[str, str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "wss://r.services.ai.azure.com"
    with pytest.raises(UsageError) as info:
        RealtimeTarget(TargetConfig(url=url, protocol="realtime", options=options))
    assert message in info.value.message
    args = [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
    out = tmp_path / "run"
    code = cli(["run", "--target", url, "--protocol", "realtime", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_voice_live_declarations_are_read() -> None:
    session = {
        "input_audio_format": "pcm16",
        "input_audio_sampling_rate": 16000,
        "output_audio_format": "pcm16_16000hz",
    }
    got = declared_formats(session, 24000, 24000)
    assert [(f.encoding, f.rate) for f in got if f] == [("pcm16", 16000), ("pcm16", 16000)]
    got = declared_formats({"input_audio_format": "pcm16", "output_audio_format": "pcm16"},
                           24000, 24000)  # fmt: skip
    assert [(f.encoding, f.rate) for f in got if f] == [("pcm16", 24000), ("pcm16", 24000)]
    got = declared_formats({"output_audio_format": "pcm16_8000hz"}, 24000, 24000)
    assert got[1] is not None and (got[1].encoding, got[1].rate) == ("pcm16", 8000)


# --- a run against the server -----------------------------------------------------------


def test_a_voice_live_run_matches_the_servers_truth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three turns against the Voice Live server (about 12 s of real time)."""
    from voiceaudit.data import bundled_dir

    monkeypatch.setenv(KEY_ENV, KEY)
    server = VoiceLiveServer()
    out = tmp_path / "run"
    with server:
        endpoint = f"https://127.0.0.1:{server.port}".replace("https", "http")
        code = cli(
            ["run", *[str(bundled_dir() / u) for u in UTTERANCES], "--target", endpoint,
             "--protocol", "realtime", "--api-key-env", KEY_ENV, "--out", str(out),
             "-o", "dialect=azure", "-o", f"model={MODEL}", "-o", "rate=16000",
             "-o", "turn_detection=azure_semantic_vad", "-o", "silence_ms=400",
             "-o", "noise_reduction=azure_deep_noise_suppression", "-o", "echo_cancellation=on",
             "-o", "remove_filler_words=on", "-o", "end_of_utterance=semantic_detection_v1",
             "-o", "voice=en-US-AvaNeural"]
        )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert not server.problems, server.problems

    # the URL, the headers and the session Voice Live expects
    (req,) = server.requests
    assert req["path"] == "/voice-live/realtime"
    assert req["query"] == {"api-version": AZURE_API_VERSION, "model": MODEL}
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["api-key"] == KEY
    assert "authorization" not in headers and "x-voiceaudit-stages" not in headers
    (session,) = server.sessions
    assert session == {
        "modalities": ["text", "audio"],
        "input_audio_format": "pcm16",
        "input_audio_sampling_rate": 16000,
        "output_audio_format": "pcm16_16000hz",
        "turn_detection": {
            "type": "azure_semantic_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 400,
            "remove_filler_words": True,
            "end_of_utterance_detection": {"model": "semantic_detection_v1"},
        },
        "input_audio_transcription": {"model": "azure-speech"},
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "voice": {"name": "en-US-AvaNeural", "type": "azure-standard"},
    }
    assert set(server.client_types) == {"session.update", "input_audio_buffer.append"}

    # the key is nowhere voiceaudit wrote or printed
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in printed.out + printed.err

    tr = read_trace(out / "trace.jsonl")
    fmt = next(e for e in tr.events if e.name == "session.audio_format")
    assert fmt.attrs["input"] == {"encoding": "pcm16", "rate": 16000}
    assert fmt.attrs["output"] == {"encoding": "pcm16", "rate": 16000}
    assert fmt.attrs["source"] == "declared"
    finished = tr.finished_turns()
    assert len(finished) == len(UTTERANCES) == len(server.sent)
    errors = []
    for (session_id, turn), stamps in zip(finished, server.sent, strict=True):
        evs: dict[str, Any] = {}
        for e in sorted(
            (u for e in tr.turn_events(session_id, turn) for u in unbatch(e)),
            key=lambda e: e.t_ns,
        ):
            evs.setdefault(e.name, e)
        assert evs["turn.end"].attrs["ok"], evs["turn.end"].attrs
        assert {"speech_started", "endpoint", "response.created", "tts.done"} <= set(evs)
        onset = evs["reply.audible"].attrs["sample"]
        # The server sends its deltas as fast as it can (as Voice Live does): the caller
        # hears each at its send time or when the audio before it has played, if later.
        k, before, play = 0, 0, stamps[0][0]
        while before + stamps[k][1] <= onset:
            play = max(stamps[k][0], play) + stamps[k][1] * 1_000_000_000 // 16000
            before += stamps[k][1]
            k += 1
        heard = max(stamps[k][0], play) + (onset - before) * 1_000_000_000 // 16000
        speech_end = evs["input.speech_end"].t_ns
        truth = heard - speech_end
        measured = evs["turn.end"].attrs["voice_to_voice_ns"]
        assert measured == evs["reply.audible"].t_ns - speech_end
        # the server's silence and its known delay are in both (never less)
        assert truth >= (400 + DELAY_MS) * MS and measured >= (400 + DELAY_MS) * MS
        errors.append(measured - truth)
    print("probe - server truth (ms):", [round(e / MS, 3) for e in errors])
    assert min(errors) > -1 * MS, errors
    assert sorted(errors)[len(errors) // 2] <= 5 * MS, [e / MS for e in errors]


def test_manual_turns_at_24khz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Push-to-talk on Voice Live: ``turn_detection`` off, the probe commits and asks for the
    response at the speech end (both messages pass Pipecat's models); 24 kHz PCM is Voice
    Live's plain ``pcm16``. One turn, about 4 s."""
    from voiceaudit.data import bundled_dir

    monkeypatch.setenv(KEY_ENV, KEY)
    server = VoiceLiveServer()
    out = tmp_path / "run"
    with server:
        url = f"ws://127.0.0.1:{server.port}/voice-live/realtime?api-version=2025-05-01-preview"
        code = cli(
            ["run", str(bundled_dir() / "06_thanks.wav"), "--target", url, "--protocol",
             "realtime", "--api-key-env", KEY_ENV, "--out", str(out), "-o", "dialect=azure",
             "-o", "model=gpt-4o-mini", "-o", "turn_detection=manual"]
        )  # fmt: skip
    assert code == 0
    assert not server.problems, server.problems
    (req,) = server.requests
    assert req["query"] == {"api-version": "2025-05-01-preview", "model": "gpt-4o-mini"}
    (session,) = server.sessions
    assert session["turn_detection"] is None
    assert session["input_audio_sampling_rate"] == 24000
    assert session["output_audio_format"] == "pcm16"
    assert "voice" not in session and "input_audio_noise_reduction" not in session
    assert server.client_types.count("input_audio_buffer.commit") == 1
    assert server.client_types.count("response.create") == 1
    tr = read_trace(out / "trace.jsonl")
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert len(ends) == 1 and ends[0].attrs["ok"]
    assert ends[0].attrs["voice_to_voice_ns"] >= DELAY_MS * MS
    fmt = next(e for e in tr.events if e.name == "session.audio_format")
    assert fmt.attrs["output"] == {"encoding": "pcm16", "rate": 24000}


def test_a_barge_in_stops_the_voice_live_reply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The caller talks over a reply Voice Live sends at real time: the server's VAD stops it
    (``speech_started``, ``response.done`` cancelled), the probe truncates the item (the
    message passes Pipecat's model) and measures the stop from the caller's side. Two
    turns, about 10 s."""
    monkeypatch.setenv(KEY_ENV, KEY)
    scenario = tmp_path / "barge-in.toml"
    scenario.write_text(
        'gap_ms = 300\n[[session]]\nname = "azure"\n[[session.turn]]\nsay = "01_weather"\n'
        'interrupt = { after_reply_ms = 500, say = "06_thanks" }\n'
    )
    server = VoiceLiveServer(tone_ms=3000, paced=True)
    out = tmp_path / "run"
    with server:
        code = cli(
            ["run", "--scenario", str(scenario), "--target", f"ws://127.0.0.1:{server.port}",
             "--protocol", "realtime", "--api-key-env", KEY_ENV, "--out", str(out),
             "-o", "dialect=azure", "-o", f"model={MODEL}", "-o", "rate=16000"]
        )  # fmt: skip
    assert code == 0
    assert not server.problems, server.problems
    assert len(server.cuts) == 1 and len(server.sent) == 2
    (trunc,) = server.truncates
    assert trunc["item_id"] == "item_1" and trunc["content_index"] == 0
    tr = read_trace(out / "trace.jsonl")
    (stop,) = [e for e in tr.events if e.name == "reply.stop"]
    assert stop.attrs["kind"] == "interrupt" and stop.attrs["cut"] is True and stop.attrs["stopped"]
    onset = stop.attrs["onset_ns"]
    # The server stopped only once it heard the caller, and the caller heard it stop after
    # (never before) the end of the last audio it sent, played as the probe plays: each
    # delta at its send time or when the audio before it has played, if later (a late
    # delta delays the rest of the reply for the caller).
    play = server.sent[0][0][0]
    for sent, samples in server.sent[0]:
        play = max(sent, play) + samples * 1_000_000_000 // 16000
    server_stop = play - onset
    assert server.cuts[0] > onset
    assert stop.attrs["stop_ns"] > server_stop - 3 * MS, (stop.attrs["stop_ns"], server_stop)
    print("stop latency (ms): probe", stop.attrs["stop_ns"] / MS, "server", server_stop / MS)
    # the truncation claims no more than the audio sent before the cut
    sent_ms = sum(n for _, n in server.sent[0]) * 1000 // 16000
    assert 0 < trunc["audio_end_ms"] <= sent_ms
    ends = [e for e in tr.events if e.name == "turn.end"]
    assert len(ends) == 2 and ends[1].attrs["ok"]  # the interruption is answered
