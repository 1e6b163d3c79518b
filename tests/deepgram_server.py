"""A faithful local Deepgram Voice Agent API server, for tests (no tests here).

It speaks the API as docs/apis/deepgram-agent.md and ../shared/PROTOCOLS.md describe it,
at ``ws://127.0.0.1:PORT/v1/agent/converse`` (the path the official SDK appends to its
``agent`` environment URL), in a process of its own by default (``serve()``: the probe's
process holds the GIL for milliseconds at a time, and a server thread waiting on it would
send late while recording the time it meant to send), or on a thread of this process
(``serve(process=False)``, where its timing is not what is tested):

- checks ``Authorization: Token KEY`` when made with a key (401 otherwise);
- sends ``Welcome``; the first client message must be ``Settings``, validated with the SDK's
  ``AgentV1Settings``; answers ``SettingsApplied`` (or ``Error`` for a format it does not
  serve: linear16, mulaw and alaw in, the same out, ``container`` ``none``);
- with ``agent.greeting`` set, speaks first: ``ConversationText`` (assistant),
  ``AgentStartedSpeaking``, the greeting's audio, ``AgentAudioDone``;
- reads the caller's binary audio in the declared encoding and rate with a speech detector
  over 10 ms frames (energy, or webrtcvad) (``start_ms`` of speech begins an utterance and sends
  ``UserStartedSpeaking``, ``endpoint_ms`` of silence ends it), and answers each
  utterance: ``ConversationText`` (user) at the end of the turn, ``AgentThinking``,
  ``ConversationText`` (assistant) ``ttt_ms`` after it, ``AgentStartedSpeaking`` with its
  own ``total_latency`` (end of turn -> first reply audio), ``ttt_latency`` and
  ``tts_latency`` another ``tts_ms`` later, the reply audio (real speech, resampled to the
  declared output rate) in ``chunk_ms`` binary frames paced at real time, then
  ``AgentAudioDone``;
- ``UserStartedSpeaking`` while it speaks is a barge-in: it stops the reply's audio
  (``barge_in_delay_ms`` later) and sends no ``AgentAudioDone`` for it;
- takes ``KeepAlive`` (validated) and closes a connection that sent neither audio nor
  ``KeepAlive`` for ``idle_timeout_s``, with an ``Error`` first, as the API does.

Every message it sends is validated with the SDK's model of that message
(``deepgram.agent.v1.types``, ``model_validate``) before it goes; every client message
with the SDK's client-message models. A faulty message a test asks for (``bad_event``,
``odd_audio``, ``wav_audio``) is recorded with the SDK's verdict on it.

**Truth.** All times are ``time.monotonic_ns()`` on this host (the probe's clock):
``truth`` records per connection (``kind`` ``turn``, ``greeting``, ``barge_in``), each with
when the server did what: for a turn the utterance's onset and end (the first and one past
the last non-zero sample of the caller's audio around it, as a session sample index, and
when that sample was spoken: the arrival of the frame holding it less the samples after it
in the frame), the end-of-turn decision, every event's send time, and every reply audio
frame's send time and samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from deepgram.agent.v1 import types as dg

from voiceaudit import codecs
from voiceaudit.audio import read_audio, resample, to_pcm16

SPEECH = Path("/work/shared/realdata/speech")
#: real speech with transcripts (pocketsphinx's test data, see realdata/MANIFEST.md)
REPLY_CLIP = (SPEECH / "pocketsphinx_cards_002.wav", "four queen of clubs")
LONG_REPLY_CLIP = (
    SPEECH / "pocketsphinx_cards_005.wav",
    "eight of spades four of clubs seven of hearts",
)
GREETING_CLIP = (SPEECH / "pocketsphinx_cards_001.wav", "ten of clubs")

#: the SDK's model of every message the server sends, by type
SERVER_MODELS: dict[str, Any] = {
    "Welcome": dg.AgentV1Welcome,
    "SettingsApplied": dg.AgentV1SettingsApplied,
    "UserStartedSpeaking": dg.AgentV1UserStartedSpeaking,
    "ConversationText": dg.AgentV1ConversationText,
    "AgentThinking": dg.AgentV1AgentThinking,
    "AgentStartedSpeaking": dg.AgentV1AgentStartedSpeaking,
    "AgentAudioDone": dg.AgentV1AgentAudioDone,
    "LatencyReport": dg.AgentV1LatencyReport,
    "Warning": dg.AgentV1Warning,
    "Error": dg.AgentV1Error,
}
#: the SDK's model of every message a client may send, by type
CLIENT_MODELS: dict[str, Any] = {
    "Settings": dg.AgentV1Settings,
    "KeepAlive": dg.AgentV1KeepAlive,
    "UpdateSpeak": dg.AgentV1UpdateSpeak,
    "UpdatePrompt": dg.AgentV1UpdatePrompt,
    "UpdateThink": dg.AgentV1UpdateThink,
    "InjectAgentMessage": dg.AgentV1InjectAgentMessage,
    "InjectUserMessage": dg.AgentV1InjectUserMessage,
    "FunctionCallResponse": dg.AgentV1SendFunctionCallResponse,
    "ForceEndTurn": dg.AgentV1ForceEndTurn,
}
_CODECS = {"linear16": "pcm16", "mulaw": "pcmu", "alaw": "pcma"}


def sdk_accepts(msg: dict[str, Any]) -> bool:
    """Whether the SDK's model of ``msg``'s type accepts it (False for an unknown type)."""
    model = SERVER_MODELS.get(msg.get("type", "")) or CLIENT_MODELS.get(msg.get("type", ""))
    if model is None:
        return False
    try:
        model.model_validate(msg)
    except Exception:
        return False
    return True


def clip_pcm(path: Path, rate: int) -> bytes:
    """A speech file as 16-bit PCM at ``rate``."""
    a = read_audio(path)
    return to_pcm16(resample(a.samples, a.rate, rate))


@dataclass
class ServerConfig:
    """How the server behaves (times in ms); the faults are off by default."""

    api_key: str | None = None
    start_ms: int = 60
    endpoint_ms: int = 400
    #: the speech detector over 10 ms frames: ``energy`` (RMS above ``speech_dbfs``) or
    #: ``webrtc`` (webrtcvad at ``webrtc_mode``; input rates 8, 16, 32 or 48 kHz)
    vad: str = "energy"
    #: a 10 ms frame is speech above this level (dBFS, RMS)
    speech_dbfs: float = -45.0
    webrtc_mode: int = 3
    ttt_ms: int = 150
    tts_ms: int = 120
    greeting_ms: int = 200
    chunk_ms: int = 20
    #: realtime: frames on absolute real-time deadlines; burst: all at once
    pace: str = "realtime"
    #: how long after hearing the caller it stops a reply's audio, barge-in by barge-in
    #: (cycled)
    barge_in_delay_ms: tuple[int, ...] = (0,)
    idle_timeout_s: float = 10.0
    reply_clip: tuple[Path, str] = REPLY_CLIP
    greeting_clip: tuple[Path, str] = GREETING_CLIP
    #: send this (a message the SDK should reject) instead of AgentStartedSpeaking
    bad_event: dict[str, Any] | None = None
    #: the first reply frame has an odd byte count (cannot be linear16)
    odd_audio: bool = False
    #: the reply comes in a WAV container though none was declared
    wav_audio: bool = False
    #: send a LatencyReport after each reply's first audio
    latency_report: bool = False


@dataclass
class Connection:
    """One client connection's record."""

    auth: str | None
    settings: dict[str, Any] | None = None
    settings_ns: int | None = None
    client_messages: list[dict[str, Any]] = field(default_factory=list)
    keepalives: int = 0
    #: what the client did that the API does not allow, one line each
    violations: list[str] = field(default_factory=list)
    #: (type, send time ns, sdk verdict) of every message sent
    sent: list[tuple[str, int, bool]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    audio_samples: int = 0
    closed_reason: str | None = None


class DeepgramAgentServer:
    """The server (module docstring): ``url``, ``connections``, ``truth()``."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.connections: list[Connection] = []
        self.url = ""
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._clips: dict[tuple[Path, int], bytes] = {}

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="deepgram-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Deepgram test server did not start")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/agent/converse", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"ws://127.0.0.1:{port}"
        self.url = f"{self.base_url}/v1/agent/converse"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def truth(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every truth record so far (of ``kind``), connection by connection."""
        return [r for c in self.connections for r in c.truth if kind in (None, r["kind"])]

    def snapshot(self) -> list[dict[str, Any]]:
        """The connections' records as plain data, copied on the server's own loop (so
        none is half-written)."""

        async def copy() -> list[dict[str, Any]]:
            return [dataclasses.asdict(c) for c in self.connections]

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(10)

    def clip(self, path: Path, rate: int) -> bytes:
        key = (path, rate)
        if key not in self._clips:
            self._clips[key] = clip_pcm(path, rate)
        return self._clips[key]

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        if self.config.api_key is not None and auth != f"Token {self.config.api_key}":
            return web.Response(status=401, text="INVALID_AUTH")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(auth=auth)
        self.connections.append(conn)
        await _Session(self, ws, conn).run()
        return ws


class _Session:
    def __init__(self, server: DeepgramAgentServer, ws: web.WebSocketResponse, conn: Connection):
        self.server = server
        self.cfg = server.config
        self.ws = ws
        self.conn = conn
        self.in_enc = "pcm16"
        self.in_rate = 16000
        self.out_enc = "pcm16"
        self.out_rate = 24000
        self.last_heard = time.monotonic_ns()
        #: speech detector state, in session samples
        self.pending = np.zeros(0, dtype=np.int16)
        self.frames_seen = 0
        self.in_speech = False
        self.run_speech = 0
        self.run_silence = 0
        self.utterance: dict[str, Any] | None = None
        #: (arrival ns, first sample, samples) of each received audio frame, recent ones
        self.arrivals: list[tuple[int, int, int]] = []
        self.last_nonzero = -1
        #: the last seconds of the caller's audio, from session sample ``hist_start``
        self.hist = np.zeros(0, dtype=np.int16)
        self.hist_start = 0
        self.reply: asyncio.Task[None] | None = None
        self.reply_record: dict[str, Any] | None = None
        self.speaking = False
        self.turns = 0
        self.barge_ins = 0
        self.webrtc: Any = None

    # sending, every message checked by the SDK's model first
    async def send(self, msg: dict[str, Any], *, must_pass: bool = True) -> int:
        ok = sdk_accepts(msg)
        if must_pass and not ok:
            raise AssertionError(f"the test server would send an invalid {msg}")
        t = time.monotonic_ns()
        self.conn.sent.append((str(msg.get("type")), t, ok))
        await self.ws.send_str(json.dumps(msg))
        return t

    async def run(self) -> None:
        idle = asyncio.create_task(self._idle_watch())
        try:
            await self.send({"type": "Welcome", "request_id": str(uuid.uuid4())})
            async for msg in self.ws:
                t = time.monotonic_ns()
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(t, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._on_audio(t, msg.data)
                else:
                    break
        finally:
            idle.cancel()
            if self.reply is not None:
                self.reply.cancel()

    async def _idle_watch(self) -> None:
        limit = round(self.cfg.idle_timeout_s * 1e9)
        while True:
            left = self.last_heard + limit - time.monotonic_ns()
            if left > 0:
                await asyncio.sleep(left / 1e9)
                continue
            self.conn.closed_reason = "idle"
            await self.send(
                {
                    "type": "Error",
                    "code": "CLIENT_MESSAGE_TIMEOUT",
                    "description": "We did not receive audio within our timeout.",
                }
            )
            await self.ws.close(code=1011, message=b"idle")
            return

    async def _on_text(self, t: int, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            self.conn.violations.append(f"not JSON: {data[:60]!r}")
            return
        self.conn.client_messages.append(msg)
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in CLIENT_MODELS:
            self.conn.violations.append(f"unknown client message {kind!r}")
            return
        if not sdk_accepts(msg):
            self.conn.violations.append(f"{kind} rejected by the SDK's model")
            return
        if kind == "Settings":
            await self._settings(t, msg)
        elif self.conn.settings is None:
            self.conn.violations.append(f"{kind} before Settings")
        elif kind == "KeepAlive":
            self.conn.keepalives += 1
            self.last_heard = t

    async def _settings(self, t: int, msg: dict[str, Any]) -> None:
        if self.conn.settings is not None:
            self.conn.violations.append("a second Settings")
            return
        audio = msg["audio"]
        inp, out = audio.get("input") or {}, audio.get("output") or {}
        in_enc, out_enc = inp.get("encoding", "linear16"), out.get("encoding", "linear16")
        if (
            in_enc not in _CODECS
            or out_enc not in _CODECS
            or out.get("container", "none") != "none"
        ):
            await self.send(
                {
                    "type": "Error",
                    "code": "UNSUPPORTED_AUDIO_FORMAT",
                    "description": f"this server serves linear16/mulaw/alaw only, not {audio}",
                }
            )
            await self.ws.close()
            return
        self.conn.settings, self.conn.settings_ns = msg, t
        self.in_enc, self.in_rate = _CODECS[in_enc], int(inp.get("sample_rate", 24000))
        self.out_enc, self.out_rate = _CODECS[out_enc], int(out.get("sample_rate", 24000))
        self.last_heard = t
        await self.send({"type": "SettingsApplied"})
        agent = msg.get("agent")
        greeting = agent.get("greeting") if isinstance(agent, dict) else None
        if greeting:
            rec: dict[str, Any] = {"kind": "greeting", "settings_ns": t, "text": greeting}
            self.conn.truth.append(rec)
            self.reply = asyncio.create_task(
                self._speak(rec, t, self.cfg.greeting_ms, 0, self.cfg.greeting_clip, greeting)
            )

    # -- the caller's audio -----------------------------------------------------------

    async def _on_audio(self, t: int, data: bytes) -> None:
        if self.conn.settings is None:
            self.conn.violations.append("audio before Settings")
            return
        if self.in_enc == "pcm16" and len(data) % 2:
            self.conn.violations.append(f"an audio frame of {len(data)} bytes is not linear16")
            return
        self.last_heard = t
        pcm = np.frombuffer(codecs.decode(data, self.in_enc), dtype="<i2")
        start = self.conn.audio_samples
        self.conn.audio_samples += pcm.size
        self.arrivals.append((t, start, pcm.size))
        del self.arrivals[:-500]
        nz = np.flatnonzero(pcm)
        if nz.size:
            self.last_nonzero = start + int(nz[-1])
        self.hist = np.concatenate([self.hist, pcm])
        if self.hist.size > 4 * self.in_rate:
            cut = self.hist.size - 4 * self.in_rate
            self.hist, self.hist_start = self.hist[cut:], self.hist_start + cut
        self.pending = np.concatenate([self.pending, pcm])
        step = self.in_rate // 100
        while self.pending.size >= step:
            frame, self.pending = self.pending[:step], self.pending[step:]
            await self._frame(frame)

    def spoken_ns(self, sample: int) -> int | None:
        """When session sample ``sample`` was spoken: the arrival of the frame holding it,
        less the samples after it in that frame."""
        for t, a, n in reversed(self.arrivals):
            if a <= sample < a + n:
                return t - round((a + n - sample) * 1e9 / self.in_rate)
        return None

    async def _frame(self, frame: np.ndarray[Any, Any]) -> None:
        self.frames_seen += 1
        if self.cfg.vad == "webrtc":
            if self.webrtc is None:
                import webrtcvad

                self.webrtc = webrtcvad.Vad(self.cfg.webrtc_mode)
            loud = bool(self.webrtc.is_speech(frame.astype("<i2").tobytes(), self.in_rate))
        else:
            rms = float(np.sqrt(np.mean((frame.astype(np.float64) / 32768) ** 2)))
            loud = rms > 10 ** (self.cfg.speech_dbfs / 20)
        if loud:
            self.run_speech += 10
            self.run_silence = 0
        else:
            self.run_silence += 10
            self.run_speech = 0
        if not self.in_speech and self.run_speech >= self.cfg.start_ms:
            self.in_speech = True
            await self._speech_started()
        elif self.in_speech and self.run_silence >= self.cfg.endpoint_ms:
            self.in_speech = False
            await self._end_of_turn()

    def onset_before(self, sample: int) -> int | None:
        """The first sample of the sound that holds ``sample``: the end of the last run of
        at least 8 digital zeros before it (None: no such silence in the recent audio)."""
        x = self.hist[: max(0, sample - self.hist_start)]
        zero = np.concatenate([[False], x == 0, [False]])
        edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
        runs = edges.reshape(-1, 2) if edges.size else np.zeros((0, 2), dtype=np.int64)
        long_runs = runs[runs[:, 1] - runs[:, 0] >= 8]
        if not long_runs.size:
            return None
        return self.hist_start + int(long_runs[-1, 1])

    async def _speech_started(self) -> None:
        step = self.in_rate // 100
        first_loud = (self.frames_seen - self.cfg.start_ms // 10) * step
        onset = self.onset_before(first_loud + 1)
        self.utterance = {
            "kind": "turn",
            "onset_sample": onset,
            "onset_ns": None if onset is None else self.spoken_ns(onset),
        }
        t = await self.send({"type": "UserStartedSpeaking"})
        self.utterance["user_started_sent_ns"] = t
        if self.speaking and self.reply is not None and self.reply_record is not None:
            rec = self.reply_record
            cut = {
                "kind": "barge_in",
                "reply_of": rec.get("kind"),
                "onset_sample": onset,
                "onset_ns": self.utterance["onset_ns"],
                "detected_ns": t,
            }
            self.conn.truth.append(cut)
            rec["interrupted"] = True
            self.speaking = False
            asyncio.get_running_loop().create_task(self._cut(rec, cut, self.reply))

    async def _cut(
        self, rec: dict[str, Any], cut: dict[str, Any], reply: asyncio.Task[None]
    ) -> None:
        """Stop the reply's audio (``barge_in_delay_ms`` after the caller was heard)."""
        delays = self.cfg.barge_in_delay_ms
        delay = delays[self.barge_ins % len(delays)]
        self.barge_ins += 1
        cut["delay_ms"] = delay
        if delay:
            await asyncio.sleep(delay / 1000)
        reply.cancel()
        sent = rec.get("audio_sent_ns") or []
        cut["stopped_ns"] = time.monotonic_ns()
        cut["last_audio_sent_ns"] = sent[-1] if sent else None
        cut["samples_sent"] = sum(rec.get("audio_samples") or [])

    async def _end_of_turn(self) -> None:
        rec = self.utterance or {"kind": "turn", "onset_sample": None, "onset_ns": None}
        self.utterance = None
        end = self.last_nonzero + 1
        rec["speech_end_sample"] = end
        rec["speech_end_ns"] = self.spoken_ns(self.last_nonzero)
        if rec["speech_end_ns"] is not None:
            rec["speech_end_ns"] += round(1e9 / self.in_rate)  # one past the last sample
        rec["turn"] = self.turns
        self.turns += 1
        eot = await self.send(
            {"type": "ConversationText", "role": "user", "content": f"(utterance {rec['turn']})"}
        )
        rec["eot_ns"] = eot
        self.conn.truth.append(rec)
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
        self.reply = asyncio.create_task(
            self._speak(rec, eot, self.cfg.ttt_ms, self.cfg.tts_ms, self.cfg.reply_clip, None)
        )

    # -- the agent's reply --------------------------------------------------------------

    async def _speak(
        self,
        rec: dict[str, Any],
        t0: int,
        ttt_ms: int,
        tts_ms: int,
        clip: tuple[Path, str],
        text: str | None,
    ) -> None:
        """Think ``ttt_ms``, synthesise ``tts_ms``, then send ``clip`` (times from ``t0``)."""
        greeting = text is not None
        if not greeting:
            rec["thinking_ns"] = await self.send({"type": "AgentThinking", "content": "thinking"})
        await _sleep_until(t0 + ttt_ms * 1_000_000)
        rec["assistant_text_ns"] = await self.send(
            {"type": "ConversationText", "role": "assistant", "content": text or clip[1]}
        )
        await _sleep_until(t0 + (ttt_ms + tts_ms) * 1_000_000)
        self.reply_record = rec
        self.speaking = True
        pcm = self.server.clip(clip[0], self.out_rate)
        wire = codecs.encode(pcm, self.out_enc)
        per_sample = codecs.BYTES_PER_SAMPLE[self.out_enc]
        step = self.out_rate * self.cfg.chunk_ms // 1000
        if self.cfg.wav_audio and not greeting:
            wire = _wav_header(len(wire), self.out_rate) + wire
        started = time.monotonic_ns()
        total = (started - t0) / 1e9
        msg: dict[str, Any] = {
            "type": "AgentStartedSpeaking",
            "total_latency": total,
            "ttt_latency": 0.0 if greeting else ttt_ms / 1000,
            "tts_latency": 0.0 if greeting else tts_ms / 1000,
        }
        bad = self.cfg.bad_event if not greeting else None
        if bad is not None:
            rec["bad_event"] = bad
            rec["bad_event_sdk_accepts"] = sdk_accepts(bad)
            rec["started_ns"] = await self.send(bad, must_pass=False)
        else:
            rec["started_ns"] = await self.send(msg)
            rec["reported"] = {k: msg[k] for k in ("total_latency", "ttt_latency", "tts_latency")}
        sent: list[int] = []
        samples: list[int] = []
        rec["audio_sent_ns"], rec["audio_samples"] = sent, samples
        rec["rate"] = self.out_rate
        rec["clip"] = clip[0].name
        first_wire = t_first = None
        i = 0
        n_bytes = len(wire)
        while i < n_bytes:
            j = min(i + step * per_sample, n_bytes)
            if i == 0 and self.cfg.wav_audio and not greeting:
                j = min(44 + step * per_sample, n_bytes)
            frame = wire[i:j]
            if i == 0 and self.cfg.odd_audio and not greeting:
                frame = frame[:-1]
            if self.cfg.pace == "realtime" and t_first is not None:
                await _sleep_until(t_first + round(sum(samples) * 1e9 / self.out_rate))
            t = time.monotonic_ns()
            await self.ws.send_bytes(frame)
            if t_first is None:
                t_first = first_wire = t
            sent.append(t)
            samples.append(len(frame) // per_sample)
            i = j
            if len(sent) == 1 and self.cfg.latency_report and not greeting:
                await self.send(
                    {
                        "type": "LatencyReport",
                        "ttt_text_latency": ttt_ms / 1000,
                        "tts_latency": tts_ms / 1000,
                        "total_latency": total,
                    }
                )
        rec["first_audio_sent_ns"] = first_wire
        if self.cfg.pace == "realtime" and t_first is not None:
            await _sleep_until(t_first + round(sum(samples) * 1e9 / self.out_rate))
        self.speaking = False
        rec["done_ns"] = await self.send({"type": "AgentAudioDone"})


async def _sleep_until(t_ns: int) -> None:
    left = t_ns - time.monotonic_ns()
    if left > 0:
        await asyncio.sleep(left / 1e9)


def _wav_header(n: int, rate: int) -> bytes:
    import struct

    return (
        b"RIFF"
        + struct.pack("<I", 36 + n)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", n)
    )


def _config_json(cfg: ServerConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), default=str)


def _config_from(raw: str) -> ServerConfig:
    d = json.loads(raw)
    for k in ("reply_clip", "greeting_clip"):
        d[k] = (Path(d[k][0]), d[k][1])
    d["barge_in_delay_ms"] = tuple(d["barge_in_delay_ms"])
    return ServerConfig(**d)


class ServerProcess:
    """The server in a process of its own (``serve(process=True)``): the probe's process
    holds the GIL for milliseconds at a time (numpy over a reply, the trace), and a server
    thread waiting on it would send late and record it as sent on time. Same attributes
    as :class:`DeepgramAgentServer`: ``url``, ``base_url``, ``config``, ``connections``
    (read from the process when asked, kept once it has stopped), ``truth()``."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._proc = subprocess.Popen(
            [sys.executable, __file__, _config_json(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("ws://"):
            self._proc.kill()
            raise RuntimeError(f"the Deepgram test server did not start ({line!r})")
        self.url = line
        self.base_url = line.removesuffix("/v1/agent/converse")
        self._final: list[Connection] | None = None

    @property
    def connections(self) -> list[Connection]:
        if self._final is not None:
            return self._final
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("dump\n")
        self._proc.stdin.flush()
        return [Connection(**c) for c in json.loads(self._proc.stdout.readline())]

    def truth(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every truth record so far (of ``kind``), connection by connection."""
        return [r for c in self.connections for r in c.truth if kind in (None, r["kind"])]

    def stop(self) -> None:
        if self._final is None and self._proc.poll() is None:
            self._final = self.connections
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextmanager
def serve(config: ServerConfig | None = None, *, process: bool = True) -> Iterator[Any]:
    """A running server for a ``with`` block (stopped on the way out): in a process of its
    own (:class:`ServerProcess`), or with ``process=False`` on a thread of this one."""
    server: DeepgramAgentServer | ServerProcess
    if process:
        server = ServerProcess(config)
    else:
        server = DeepgramAgentServer(config)
        server.start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    """The server process: argv[1] is its config (JSON); it prints its URL, answers each
    ``dump`` line on stdin with its connections (one JSON line) and stops at EOF."""
    server = DeepgramAgentServer(_config_from(sys.argv[1]))
    server.start()
    print(server.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            print(json.dumps(server.snapshot()), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
