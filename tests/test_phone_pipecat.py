"""Real third-party phone bots: Pipecat 1.14 on ``FastAPIWebsocketTransport`` with each
carrier serializer (Twilio, Telnyx, Plivo, Exotel, Vonage), offline (tests/pipecat_bot.py
``--transport phone``: Silero VAD, PocketSphinx, a rule-based responder, eSpeak NG).

Here the test plays a carrier at its smallest (:class:`MiniCarrier`): the dialect's
handshake, a caller's real recorded speech as 20 ms frames at real time (μ-law 8 kHz, or
16-bit PCM for Exotel and Vonage), and what the bot sends back, with arrival times. It checks
that each serializer's bot speaks its dialect: it greets when the call starts, answers a
question with media, and sends its ``clear`` when the caller talks over the reply
(interruptions on, Pipecat's default); with ``--no-interruptions`` it never does.

Real time is the cost: every call streams its audio at the pace of speech, and a bot's
reply is sent at about twice real time by Pipecat's output transport. Bounds are
one-sided (a busy machine only makes the bot later).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pipecat_capture import realdata
from servers import PipecatBot

from voiceaudit.audio import read_audio, to_pcm16
from voiceaudit.codecs import ulaw_encode

#: real speech (pocketsphinx test data): a LibriVox sentence (2.99 s) and a card name
#: (1.96 s) said over the reply
QUESTION = "pocketsphinx_sense_and_sensibility_01_austen_64kb-0880.wav"
BARGE_IN = "pocketsphinx_cards_002.wav"
DIALECTS = ("twilio", "telnyx", "plivo", "exotel", "vonage")
GREETING = "Hello, thanks for calling."

# -- a carrier, at its smallest ---------------------------------------------------------------


@dataclass
class Heard:
    """A message from the bot: when it arrived (s since the call's start was sent), what
    it is (``media`` | ``clear`` | ``other``) and the audio it carried (samples)."""

    t: float
    kind: str
    samples: int = 0
    raw: str = ""


@dataclass
class MiniCarrier:
    """The messages of one carrier dialect (shapes from docs/PROTOCOLS and what Pipecat's
    serializer and ``parse_telephony_websocket`` read), for one call."""

    dialect: str
    stream: str = "MZ00000000000000000000000000000001"
    call: str = "CA00000000000000000000000000000001"
    heard: list[Heard] = field(default_factory=list)

    @property
    def rate(self) -> int:
        """The caller's audio rate (Vonage: 16 kHz L16; the others 8 kHz)."""
        return 16000 if self.dialect == "vonage" else 8000

    def handshake(self) -> list[str]:
        """The carrier's first messages, in order."""
        d, s, c = self.dialect, self.stream, self.call
        if d == "twilio":
            return [
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": "1",
                        "streamSid": s,
                        "start": {
                            "streamSid": s,
                            "accountSid": "AC0000000000000000000000000000000a",
                            "callSid": c,
                            "tracks": ["inbound"],
                            "customParameters": {},
                            "mediaFormat": {
                                "encoding": "audio/x-mulaw",
                                "sampleRate": 8000,
                                "channels": 1,
                            },
                        },
                    }
                ),
            ]
        if d == "telnyx":
            return [
                json.dumps({"event": "connected", "version": "1.0.0"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": "1",
                        "stream_id": s,
                        "start": {
                            "call_control_id": c,
                            "from": "+15550001111",
                            "to": "+15550002222",
                            "media_format": {
                                "encoding": "PCMU",
                                "sample_rate": 8000,
                                "channels": 1,
                            },
                        },
                    }
                ),
            ]
        if d == "plivo":
            return [
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": 0,
                        "start": {
                            "callId": c,
                            "streamId": s,
                            "accountId": "MA000000000000000000",
                            "tracks": ["inbound"],
                            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                        },
                    }
                )
            ]
        if d == "exotel":
            return [
                json.dumps({"event": "connected"}),
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": 1,
                        "stream_sid": s,
                        "start": {
                            "stream_sid": s,
                            "call_sid": c,
                            "account_sid": "exotel-account",
                            "from": "09000000001",
                            "to": "09000000002",
                            "custom_parameters": {},
                            "media_format": {
                                "encoding": "base64",
                                "sample_rate": "8000",
                                "bit_rate": "16",
                            },
                        },
                    }
                ),
            ]
        return [
            json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})
        ]

    def media(self, pcm: bytes, n: int) -> str | bytes:
        """The ``n``-th (from 0) 20 ms frame of the caller's 16-bit PCM at :attr:`rate`."""
        d, ms = self.dialect, str(20 * n)
        if d == "vonage":
            return pcm
        if d == "exotel":
            media = {"chunk": n + 1, "timestamp": ms, "payload": base64.b64encode(pcm).decode()}
            return json.dumps(
                {
                    "event": "media",
                    "sequence_number": n + 2,
                    "stream_sid": self.stream,
                    "media": media,
                }
            )
        ulaw = ulaw_encode(np.frombuffer(pcm, dtype="<i2")).tobytes()
        payload = base64.b64encode(ulaw).decode()
        if d == "twilio":
            media = {"track": "inbound", "chunk": str(n + 1), "timestamp": ms, "payload": payload}
            return json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(n + 2),
                    "streamSid": self.stream,
                    "media": media,
                }
            )
        if d == "telnyx":
            media = {"track": "inbound", "chunk": str(n + 1), "timestamp": ms, "payload": payload}
            return json.dumps(
                {
                    "event": "media",
                    "sequence_number": str(n + 2),
                    "stream_id": self.stream,
                    "media": media,
                }
            )
        media = {"track": "inbound", "chunk": n + 1, "timestamp": ms, "payload": payload}
        return json.dumps(
            {"event": "media", "sequenceNumber": n + 1, "streamId": self.stream, "media": media}
        )

    def read(self, t: float, msg: str | bytes) -> Heard:
        """What a message from the bot is."""
        if isinstance(msg, bytes):  # Vonage: 16-bit PCM
            return Heard(t, "media", len(msg) // 2)
        m = json.loads(msg)
        event = m.get("event") or m.get("action")
        if event in ("media", "playAudio"):
            payload = base64.b64decode(m["media"]["payload"])
            width = 2 if self.dialect == "exotel" else 1
            return Heard(t, "media", len(payload) // width, msg[:120])
        if event in ("clear", "clearAudio"):
            return Heard(t, "clear", raw=msg)
        return Heard(t, "other", raw=msg[:200])


def caller_audio(path: Path, rate: int) -> bytes:
    """A real recording as 16-bit PCM at ``rate``."""
    return to_pcm16(read_audio(path, rate=rate).samples)


def frames(pcm: bytes, rate: int) -> Iterator[bytes]:
    """20 ms frames (the last one padded with silence)."""
    step = rate // 50 * 2
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step].ljust(step, b"\0")


async def place_call(url: str, carrier: MiniCarrier, script: list[bytes | float]) -> float:
    """Calls the bot at ``url``: the handshake, then ``script`` on the 20 ms media clock
    (PCM to say, or seconds of silence), then hangs up. Every message from the bot goes to
    ``carrier.heard``. Returns the call's length (s)."""
    import websockets

    rate = carrier.rate
    pcm = b"".join(
        item if isinstance(item, bytes) else bytes(2 * round(item * rate)) for item in script
    )
    async with websockets.connect(url, max_size=None) as ws:
        t0 = time.monotonic()
        for m in carrier.handshake():
            await ws.send(m)

        async def receive() -> None:
            async for msg in ws:
                carrier.heard.append(carrier.read(time.monotonic() - t0, msg))

        rx = asyncio.create_task(receive())
        for n, frame in enumerate(frames(pcm, rate)):
            await asyncio.sleep(max(0.0, t0 + 0.02 * n - time.monotonic()))
            await ws.send(carrier.media(frame, n))
        length = time.monotonic() - t0
        rx.cancel()
        await asyncio.gather(rx, return_exceptions=True)
    return length


def onsets(script: list[bytes | float], rate: int) -> list[tuple[float, float]]:
    """(start, end) in s of each piece of speech in ``script``."""
    t, out = 0.0, []
    for item in script:
        d = len(item) / 2 / rate if isinstance(item, bytes) else item
        if isinstance(item, bytes):
            out.append((t, t + d))
        t += d
    return out


# -- the bots ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phone_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipecatBot]:
    """One bot process serving every dialect (``/twilio`` … ``/vonage``), interruptions on,
    long replies (8-10 s) so that there is reply left to talk over, and a greeting."""
    log = tmp_path_factory.mktemp("phone-bot") / "bot.log"
    bot = PipecatBot(log, "--greeting", GREETING, "--long-reply", transport="phone")
    with bot:
        yield bot


def check_call(
    carrier: MiniCarrier, script: list[bytes | float], interruptions: bool, log: str
) -> None:
    """The greeting, the reply to the question and (interruptions on) a ``clear`` after the
    barge-in's onset, and no ``clear`` otherwise."""
    (q0, q1), (b0, _) = onsets(script, carrier.rate)
    heard = carrier.heard
    media = [h for h in heard if h.kind == "media"]
    clears = [h for h in heard if h.kind == "clear"]
    assert not [h for h in heard if h.kind == "other"], heard
    greeting = [h for h in media if h.t < q0]
    assert greeting, log
    # eSpeak's greeting, about 1.5 s of audio at 8 kHz (16 kHz for Vonage)
    assert sum(h.samples for h in greeting) > carrier.rate, log
    reply = [h for h in media if q1 < h.t]
    assert reply and reply[0].t > q1, log
    if interruptions:
        # Pipecat interrupts at every user turn start: at the question (the bot is
        # silent then) and at the barge-in, over the reply
        assert [c for c in clears if c.t > b0], (clears, log)
        cut = min(c.t for c in clears if c.t > b0)
        # the reply was still being sent when the caller talked over it
        assert [h for h in reply if h.t < cut], log
    else:
        assert clears == [], log


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_pipecat_carrier_bot_speaks_its_dialect(phone_bot: PipecatBot, dialect: str) -> None:
    """A greeting, a question, and 1.2 s after the question's end the caller talks over
    the (long) reply. About 11 s of real time per dialect: the call is streamed at the
    pace of speech."""
    speech = realdata() / "speech"
    carrier = MiniCarrier(dialect)
    rate = carrier.rate
    script: list[bytes | float] = [
        3.0,  # the greeting
        caller_audio(speech / QUESTION, rate),
        1.2,  # the bot's turn starts (endpointing) and its reply begins
        caller_audio(speech / BARGE_IN, rate),
        2.0,
    ]
    url = f"ws://127.0.0.1:{phone_bot.port}/{dialect}"
    asyncio.run(place_call(url, carrier, script))
    check_call(carrier, script, True, phone_bot.log_tail())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pipecat_twilio_bot_without_interruptions_never_clears(tmp_path: Path) -> None:
    """The same call to a Twilio bot with ``--no-interruptions``: no ``clear``, ever, and
    the reply keeps coming over the caller's barge-in. About 11 s of real time."""
    speech = realdata() / "speech"
    carrier = MiniCarrier("twilio")
    script: list[bytes | float] = [
        3.0,
        caller_audio(speech / QUESTION, 8000),
        1.2,
        caller_audio(speech / BARGE_IN, 8000),
        2.0,
    ]
    bot = PipecatBot(
        tmp_path / "bot.log",
        *("--greeting", GREETING, "--long-reply", "--no-interruptions"),
        transport="twilio",
    )
    with bot:
        asyncio.run(place_call(f"ws://127.0.0.1:{bot.port}/ws", carrier, script))
    check_call(carrier, script, False, bot.log_tail())
    b1 = onsets(script, 8000)[1][1]
    # the reply is sent on through the caller's speech and after it
    assert [h for h in carrier.heard if h.kind == "media" and h.t > b1 + 0.5], bot.log_tail()
