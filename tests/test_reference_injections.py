"""Every fault injection of ``voiceaudit serve``, measured from the client side and checked
against the injected amount and the server's ground-truth file.

Each server runs as a subprocess; all start together (their start-up overlaps). Turns
speak a real recording ("ten of clubs") and the client keeps its microphone open (it
keeps sending silence while the reply plays), as a caller does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
from test_reference_support import (
    CARDS_001,
    PcmTurn,
    RealtimeTurn,
    Served,
    load_speech,
    need_realdata,
    onset,
    pcm_turn,
    realtime_turn,
    serve_many,
)

MS = 1_000_000
RATE = 16_000


def within(value: float, expected: float, below: float = 20, above: float = 60) -> bool:
    """``expected`` recovered from client-side times. A busy machine only ever adds time
    (a process not scheduled, a late wake-up), so the bound above is looser than below."""
    return expected - below <= value <= expected + above


SERVERS = {
    "base": [],
    "timing": [
        "--inject",
        "leading-silence=300ms",
        "--inject",
        "llm-ttft=400ms",
        "--inject",
        "connect-delay=200ms",
        "--inject",
        "stage-delay=asr:150ms",
    ],
    "sentence": ["--inject", "sentence-aggregation=on"],
    "whole": ["--inject", "whole-result-handoff"],
    "small": ["--inject", "small-writes"],
    "chunk": ["--inject", "audio-chunk=1000ms"],
    # Audio released at real time (slow-audio=1.0, as a streaming synthesizer would), so
    # each message's own random delay shows in when it arrives.
    "jitter": ["--inject", "jitter=20ms", "--inject", "slow-audio=1.0", "--seed", "7"],
    "slow": ["--inject", "slow-audio=0.8"],
    "tts": ["--inject", "stage-delay=tts:100ms"],
}


@dataclass
class Bench:
    servers: dict[str, Served]
    pcm: dict[str, PcmTurn]
    realtime: dict[str, RealtimeTurn]

    def pcm_turn(self, name: str) -> PcmTurn:
        if name not in self.pcm:
            speech = load_speech(CARDS_001, RATE)
            self.pcm[name] = asyncio.run(pcm_turn(self.servers[name].ws, speech, speed=2.0))
            assert self.pcm[name].event("turn_done")["transcript"] == "ten of clubs"
        return self.pcm[name]

    def realtime_turn(self, name: str) -> RealtimeTurn:
        if name not in self.realtime:
            speech = load_speech(CARDS_001, 24_000)
            turn = asyncio.run(realtime_turn(self.servers[name].ws, speech, speed=2.0))
            self.realtime[name] = turn
        return self.realtime[name]

    def truth(self, name: str, turn: PcmTurn | RealtimeTurn) -> dict[str, Any]:
        return self.servers[name].turn(turn.session_id)


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    need_realdata()
    names = list(SERVERS)
    with serve_many([SERVERS[n] for n in names]) as servers:
        yield Bench(dict(zip(names, servers, strict=True)), {}, {})


def _ms(ns: float) -> float:
    return ns / MS


# --- leading silence ------------------------------------------------------------------------


def test_leading_silence_is_heard_as_silence_before_the_first_audible_sample(bench: Bench) -> None:
    base = bench.pcm_turn("base")
    padded = bench.pcm_turn("timing")
    b, p = onset(base.audio, RATE), onset(padded.audio, RATE)
    assert b is not None and p is not None
    extra_ms = (p - b) * 1000 / RATE
    assert extra_ms == pytest.approx(300, abs=5)
    truth = bench.truth("timing", padded)
    assert truth["injected"]["leading_silence_ns"] == 300 * MS
    assert truth["injections"]["leading_silence_ns"] == 300 * MS
    # Every synthesis request is padded (three phrases: three pads).
    assert truth["injected"]["leading_silence_total_ns"] == 3 * 300 * MS


# --- language model time to first token -------------------------------------------------------


def test_llm_ttft_delays_the_first_token_by_the_injected_amount(bench: Bench) -> None:
    def ttft(turn: PcmTurn) -> float:
        return _ms(turn.event_times["llm_first_token"] - turn.event_times["transcript_final"])

    base, slow = ttft(bench.pcm_turn("base")), ttft(bench.pcm_turn("timing"))
    assert within(base, 200)  # the configured --ttft-ms
    assert within(slow - base, 400), (base, slow)
    truth = bench.truth("timing", bench.pcm_turn("timing"))
    assert truth["injected"]["llm_ttft_ns"] == 400 * MS
    marks = truth["marks"]
    # On the server's clock the first token's deadline is 200 + 400 ms after the request
    # (one-sided: a late timer only adds; the client-side check above bounds it from both
    # sides, with room for the machine)
    assert _ms(marks["llm_first_token"] - marks["llm_request"]) >= 600


# --- extra processing in a stage ----------------------------------------------------------------


def test_stage_delay_asr_holds_the_transcript(bench: Bench) -> None:
    """The client sees the transcript 150 ms after the recognizer had it (asr_done)."""

    def hold(name: str) -> float:
        turn = bench.pcm_turn(name)
        return _ms(turn.event_times["transcript_final"] - turn.event("asr_done")["t_ns"])

    assert hold("base") < 30
    assert within(hold("timing"), 150, below=5), hold("timing")
    truth = bench.truth("timing", bench.pcm_turn("timing"))
    assert truth["injected"]["stage_delay_asr_ns"] == 150 * MS
    marks = truth["marks"]
    assert marks["transcript_final"] - marks["asr_done"] >= 150 * MS


def test_stage_delay_tts_holds_each_synthesis_request(bench: Bench) -> None:
    def first_audio(name: str) -> float:
        turn = bench.pcm_turn(name)
        return _ms(turn.frames[0][0] - turn.event("tts_request")["t_ns"])

    assert first_audio("base") < 40
    assert within(first_audio("tts") - first_audio("base"), 100)
    truth = bench.truth("tts", bench.pcm_turn("tts"))
    assert truth["injected"]["stage_delay_tts_ns"] == 100 * MS
    assert truth["injected"]["stage_delay_tts_total_ns"] == 100 * MS * len(truth["tts_texts"])


# --- connection setup -----------------------------------------------------------------------------


def test_connect_delay_slows_each_new_connection_once(bench: Bench) -> None:
    async def handshakes(url: str) -> float:
        times = []
        async with aiohttp.ClientSession() as cs:
            for _ in range(3):
                t0 = time.monotonic_ns()
                async with cs.ws_connect(url + "/v1/pcm"):
                    times.append(_ms(time.monotonic_ns() - t0))
        return float(np.median(times))

    base = asyncio.run(handshakes(bench.servers["base"].ws))
    slow = asyncio.run(handshakes(bench.servers["timing"].ws))
    assert within(slow - base, 200), (base, slow)
    truth = bench.truth("timing", bench.pcm_turn("timing"))
    assert truth["injected"]["connect_delay_ns"] == 200 * MS

    async def http_times(url: str) -> tuple[float, float]:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as cs:  # keep-alive: the second reuses it
            out = []
            for _ in range(2):
                t0 = time.monotonic_ns()
                r = await cs.post(url + "/v1/chat/completions", json=body)
                await r.read()
                out.append(_ms(time.monotonic_ns() - t0))
            return out[0], out[1]

    first, reused = asyncio.run(http_times(bench.servers["timing"].url))
    # Both pay the responder (200 ms + 400 ms llm-ttft); only the new connection pays 200 more.
    assert within(first - reused, 200, below=40), (first, reused)


# --- hand-off from the language model to synthesis ------------------------------------------------


def _tokens_before_audio(turn: RealtimeTurn) -> tuple[int, float]:
    """Transcript deltas received before the first audio delta, and the time between the
    first transcript delta and the first audio delta (client clock, ms)."""
    t_audio, _ = turn.first("response.output_audio.delta")
    t_token, _ = turn.first("response.output_audio_transcript.delta")
    n = sum(
        1
        for t, e in zip(turn.times, turn.events, strict=True)
        if e["type"] == "response.output_audio_transcript.delta" and t < t_audio
    )
    return n, _ms(t_audio - t_token)


def test_sentence_aggregation_waits_for_the_end_of_the_sentence(bench: Bench) -> None:
    """ "You said:" is spoken as soon as it is written; with aggregation the audio waits for
    "You said: ten of clubs." — four more tokens at 50 tokens/s."""
    n_base, wait_base = _tokens_before_audio(bench.realtime_turn("base"))
    n_sent, wait_sent = _tokens_before_audio(bench.realtime_turn("sentence"))
    assert n_base in (3, 4)
    assert n_sent in (7, 8)
    assert within(wait_sent - wait_base, 80), (wait_base, wait_sent)
    truth = bench.truth("sentence", bench.realtime_turn("sentence"))
    assert truth["tts_texts"][0] == "You said: ten of clubs."
    marks = truth["marks"]
    # Synthesis was asked for after the sentence's 7th token: on the server's clock that
    # token's deadline is 200 ms + 6 x 20 ms after the request (the token deadlines are
    # absolute, so the first token's own lateness does not move it; one-sided, a late
    # timer only adds)
    assert _ms(marks["tts_request"] - marks["llm_request"]) >= 200 + 6 * 20


def test_whole_result_handoff_waits_for_the_whole_reply(bench: Bench) -> None:
    turn = bench.realtime_turn("whole")
    n_whole, wait_whole = _tokens_before_audio(turn)
    all_tokens = sum(
        1 for e in turn.events if e["type"] == "response.output_audio_transcript.delta"
    )
    assert n_whole == all_tokens
    _, wait_base = _tokens_before_audio(bench.realtime_turn("base"))
    assert within(wait_whole - wait_base, (all_tokens - 3) * 20), (wait_base, wait_whole)
    truth = bench.truth("whole", turn)
    assert truth["tts_texts"] == [truth["reply_text"]]
    assert truth["marks"]["tts_request"] >= truth["marks"]["llm_done"]


# --- how audio is written -------------------------------------------------------------------------


def _delivery_lag_ms(bench: Bench, name: str) -> np.ndarray:
    """Per reply message: client arrival minus the server's write time (same host clock)."""
    turn = bench.pcm_turn(name)
    sent = np.array(bench.truth(name, turn)["audio_sent_ns"], dtype=np.int64)
    arrived = np.array([t for t, _ in turn.frames], dtype=np.int64)
    assert sent.size == arrived.size
    return (arrived - sent) / MS


def test_small_writes_stall_delivery(bench: Bench) -> None:
    """TCP_NODELAY off and audio written in 64-byte pieces: Nagle holds each piece until
    the caller's ACK, which the caller delays while its microphone is sending."""
    base = float(np.median(_delivery_lag_ms(bench, "base")))
    small = float(np.median(_delivery_lag_ms(bench, "small")))
    assert base < 2.0
    assert small > 3.0 and small > 3 * base
    truth = bench.truth("small", bench.pcm_turn("small"))
    assert truth["injections"]["small_writes"] and truth["injections"]["small_write_bytes"] == 64


def test_audio_chunk_sends_large_buffers(bench: Bench) -> None:
    base, big = bench.pcm_turn("base"), bench.pcm_turn("chunk")
    sizes = [len(d) // 2 for _, d in big.frames]
    assert all(n == RATE for n in sizes[:-1]) and 0 < sizes[-1] <= RATE
    assert max(len(d) // 2 for _, d in base.frames) == RATE * 20 // 1000
    # The first message waits until a whole second of speech is synthesized, which needs
    # later text than the first phrase.
    wait_base = _ms(base.frames[0][0] - base.event("tts_first_audio")["t_ns"])
    wait_big = _ms(big.frames[0][0] - big.event("tts_first_audio")["t_ns"])
    assert wait_base < 40
    assert wait_big > 50
    truth = bench.truth("chunk", big)
    assert truth["injections"]["audio_chunk_ns"] == 1000 * MS
    assert truth["audio"]["reply_audio_messages"] == len(sizes)


def test_jitter_delays_each_message_by_its_seeded_amount(bench: Bench) -> None:
    """With audio released at real time, message k should arrive at t0 + (audio before k);
    the lateness the client sees is that message's injected delay (relative to the first)."""
    turn = bench.pcm_turn("jitter")
    truth = bench.truth("jitter", turn)
    delays = np.array(truth["injected"]["jitter_each_ns"], dtype=np.int64) / MS
    assert delays.size == len(turn.frames)
    assert delays.min() >= 0 and delays.max() <= 20
    assert delays.std() > 3  # spread over the range, not a constant
    arrival = np.array([t for t, _ in turn.frames], dtype=np.int64)
    samples_before = np.concatenate([[0], np.cumsum([len(d) // 2 for _, d in turn.frames])[:-1]])
    lateness = (arrival - arrival[0]) / MS - samples_before * 1000 / RATE
    expected = delays - delays[0]
    close = np.abs(lateness - expected) < 5.0
    assert close.mean() > 0.75, np.round(lateness - expected, 1)
    assert np.corrcoef(lateness, expected)[0, 1] > 0.8
    # And every message, the first included, left the server no earlier than its real-time
    # slot after the first synthesized audio plus its own injected delay (the server's
    # clock: a busy machine only makes it later), and reached the caller after it left.
    # (Comparing the caller's first-message wait with a base server's, each with its own
    # synthesis and scheduling time, once gave -1.2 ms against the 6.0 ms injected.)
    sent = np.array(truth["audio_sent_ns"], dtype=np.int64)
    slot = truth["marks"]["tts_first_audio"] + np.round(samples_before * 1e9 / RATE)
    assert np.all(sent - slot >= delays * MS), (sent - slot) / MS - delays
    assert np.all(arrival >= sent)
    assert truth["injections"]["jitter_ns"] == 20 * MS


def test_slow_audio_leaves_gaps_in_playback(bench: Bench) -> None:
    """Audio produced at 0.8x real time: a caller playing it from the first message runs
    dry; the silence heard is the shortfall, 25% of the reply's length."""

    def playback_gaps(turn: PcmTurn) -> tuple[float, float]:
        t0 = turn.frames[0][0]
        clock = 0.0  # ms of audio played, playback starting at the first arrival
        stalled = 0.0
        for t, data in turn.frames:
            arrival = _ms(t - t0)
            if arrival > clock:
                stalled += arrival - clock
                clock = arrival
            clock += len(data) / 2 / RATE * 1000
        return stalled, clock - stalled

    stalled, duration = playback_gaps(bench.pcm_turn("slow"))
    base_stalled, _ = playback_gaps(bench.pcm_turn("base"))
    assert base_stalled < 50
    last = len(bench.pcm_turn("slow").frames[-1][1]) / 2 / RATE * 1000
    # Message k leaves at (audio before k) / 0.8, so the gaps add up to
    # (duration - last message) * (1/0.8 - 1).
    assert stalled == pytest.approx((duration - last) * 0.25, rel=0.05)
    truth = bench.truth("slow", bench.pcm_turn("slow"))
    assert truth["injections"]["slow_audio"] == 0.8
    assert truth["injected"]["slow_audio_wait_ns"] > 0
