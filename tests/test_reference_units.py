"""Unit tests of the reference pipeline's parts, on real speech where it matters:
streaming resampler, G.711, endpointing, recognition workers, responder, chunker,
injection parsing and the ground-truth file."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reference_support import (
    CARDS_001,
    CARDS_003,
    ONE_TWO_THREE,
    SPEECH,
    load_speech,
    need_realdata,
    pcm16,
)

from voiceaudit.errors import UsageError
from voiceaudit.reference.config import (
    INJECTION_EXAMPLES,
    Injections,
    ServerConfig,
    apply_injection,
    parse_duration_ns,
    parse_injections,
)
from voiceaudit.reference.dsp import (
    StreamResampler,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    pcm16_to_float,
    streaming_wav_header,
    ulaw_decode,
    ulaw_encode,
)
from voiceaudit.reference.groundtruth import GroundTruth, TurnRecord, read_ground_truth
from voiceaudit.reference.responder import (
    SCRIPT_TAIL,
    ScriptedResponder,
    TextChunker,
    script_reply,
    tokenize,
)
from voiceaudit.reference.vad import Endpointer, SpeechStart, SpeechStop

MS = 1_000_000

# --- resampling ------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from(
        [
            (24000, 16000),
            (22050, 24000),
            (22050, 16000),
            (22050, 8000),
            (8000, 16000),
            (44100, 16000),
        ]
    ),
    pieces=st.lists(st.integers(min_value=1, max_value=1500), min_size=1, max_size=40),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_stream_resampler_equals_whole_signal_resampling(
    pair: tuple[int, int], pieces: list[int], seed: int
) -> None:
    """Piece by piece gives exactly scipy's resample_poly of the whole signal: no seams."""
    from scipy.signal import resample_poly

    src, dst = pair
    x = np.random.default_rng(seed).standard_normal(sum(pieces)).astype(np.float32) * 0.1
    rs = StreamResampler(src, dst)
    out, i = [], 0
    for n in pieces:
        out.append(rs.process(x[i : i + n]))
        i += n
    out.append(rs.flush())
    y = np.concatenate(out)
    g = np.gcd(src, dst)
    ref = resample_poly(x.astype(np.float64), dst // g, src // g)
    assert y.size == ref.size
    assert np.max(np.abs(y - ref)) < 1e-5


def test_stream_resampler_keeps_time_alignment() -> None:
    """A click at t=0.5 s stays at 0.5 s after resampling (the filter delay is removed)."""
    x = np.zeros(24000, dtype=np.float32)
    x[12000] = 1.0
    rs = StreamResampler(24000, 16000)
    y = np.concatenate([rs.process(x[:5000]), rs.process(x[5000:]), rs.flush()])
    assert int(np.argmax(np.abs(y))) == 8000


def test_pcm16_round_trip_and_clipping() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5], dtype=np.float32)
    y = pcm16_to_float(float_to_pcm16(x))
    assert y[0] == 0.0 and abs(y[1] - 0.5) < 1e-4 and y[3] == 32767 / 32768 and y[4] == -1.0


def test_g711_matches_the_reference_codec() -> None:
    """Every 16-bit value encodes exactly as CPython's audioop (the ITU reference code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    allv = np.arange(-32768, 32768, dtype=np.int16)
    raw = allv.tobytes()
    f = allv.astype(np.float32) / 32768
    assert ulaw_encode(f) == audioop.lin2ulaw(raw, 2)
    assert alaw_encode(f) == audioop.lin2alaw(raw, 2)
    codes = bytes(range(256))
    assert np.array_equal(ulaw_decode(codes), pcm16_to_float(audioop.ulaw2lin(codes, 2)))
    assert np.array_equal(alaw_decode(codes), pcm16_to_float(audioop.alaw2lin(codes, 2)))


def test_streaming_wav_header_is_readable(tmp_path: Path) -> None:
    import soundfile as sf

    tone = np.sin(np.arange(2400) / 5).astype(np.float32) * 0.3
    data = streaming_wav_header(24000) + float_to_pcm16(tone)
    p = tmp_path / "stream.wav"
    p.write_bytes(data)
    x, sr = sf.read(p, dtype="float32")
    assert sr == 24000 and x.size == tone.size


# --- endpointing on real speech ----------------------------------------------------------


def _endpoint(name: str, silence_ms: int = 500) -> list[SpeechStart | SpeechStop]:
    x = load_speech(name, 16000)
    x = np.concatenate([x, np.zeros(16000 * 2, dtype=np.float32)])
    ep = Endpointer(silence_ms=silence_ms)
    events: list[SpeechStart | SpeechStop] = []
    for i in range(0, x.size, 320):
        events += ep.feed(x[i : i + 320], prefix_padding_ms=300)
    return events


@pytest.mark.parametrize("n", ["0870", "0880", "0890", "0920", "0930"])
def test_endpoint_matches_librivox_silence_labels(n: str) -> None:
    """The .lab files give speech start and silence start; the VAD's speech end lands
    at or shortly after the labelled silence (webrtcvad hangs over on breath noise)."""
    name = f"pocketsphinx_sense_and_sensibility_01_austen_64kb-{n}.wav"
    lab = (SPEECH / name.replace(".wav", ".lab")).read_text().split()
    speech_start_ms = float(lab[0]) * 1000
    silence_ms = float(lab[3]) * 1000
    events = _endpoint(name)
    assert [type(e) for e in events] == [SpeechStart, SpeechStop]
    start, stop = events
    assert isinstance(start, SpeechStart) and isinstance(stop, SpeechStop)
    assert start.speech_start_ms <= speech_start_ms + 60
    assert -60 <= stop.speech_end_ms - silence_ms <= 350
    assert stop.audio_end_ms - stop.speech_end_ms == 500  # the decision includes the silence


def test_endpoint_silence_setting_moves_the_decision() -> None:
    short = _endpoint(CARDS_001, silence_ms=200)
    long = _endpoint(CARDS_001, silence_ms=900)
    s_stop = next(e for e in short if isinstance(e, SpeechStop))
    l_stop = next(e for e in long if isinstance(e, SpeechStop))
    assert s_stop.speech_end_ms == l_stop.speech_end_ms
    assert l_stop.audio_end_ms - s_stop.audio_end_ms == 700


def test_endpoint_splits_pauses_longer_than_the_silence() -> None:
    """vosk_test.wav says three digit strings with long pauses: three turns."""
    events = _endpoint("vosk_test.wav")
    assert sum(isinstance(e, SpeechStop) for e in events) == 3


def test_endpoint_prefix_padding_is_clamped_at_zero() -> None:
    start = _endpoint(CARDS_001)[0]
    assert isinstance(start, SpeechStart)
    assert start.audio_start_ms == max(0, start.speech_start_ms - 300)


# --- speech recognition workers ------------------------------------------------------------


def test_asr_pool_transcribes_real_speech_concurrently_and_deterministically() -> None:
    """Interleaved utterances on two workers give the transcripts the files carry, and the
    same transcript whatever the worker heard before (each utterance starts afresh)."""
    need_realdata()
    from voiceaudit.reference.asr import AsrPool

    files = [CARDS_001, CARDS_003, ONE_TWO_THREE, CARDS_001]

    async def main() -> list[str]:
        pool = AsrPool(2)
        await pool.start()
        try:
            pcm = [pcm16(load_speech(f, 16000)) for f in files]
            results = await asyncio.gather(*(pool.transcribe(p, piece_bytes=640) for p in pcm))
            return [r.text for r in results]
        finally:
            await pool.close()

    texts = asyncio.run(main())
    assert texts[0] == "ten of clubs"
    assert texts[1] == "seven of clubs"
    assert texts[2] == "one two three"
    assert texts[3] == texts[0]


def test_asr_worker_death_fails_the_utterance_and_the_pool_recovers() -> None:
    need_realdata()
    from voiceaudit.reference.asr import AsrError, AsrPool

    async def main() -> str:
        pool = AsrPool(1)
        await pool.start()
        try:
            stream = await pool.open_stream()
            stream.feed(pcm16(load_speech(CARDS_001, 16000))[:8000])
            worker = pool._workers[0]
            assert worker is not None
            worker.proc.kill()
            with pytest.raises(AsrError):
                await stream.finish()
            result = await pool.transcribe(pcm16(load_speech(CARDS_003, 16000)))
            return result.text
        finally:
            await pool.close()

    assert asyncio.run(main()) == "seven of clubs"


# --- responder and text hand-off -----------------------------------------------------------


def test_script_reply_and_tokens() -> None:
    assert script_reply("ten of clubs") == f"You said: ten of clubs. {SCRIPT_TAIL}"
    assert "did not catch" in script_reply("   ")
    toks = tokenize("You said: ten of clubs.")
    assert toks == ["You", " said", ":", " ten", " of", " clubs", "."]
    assert "".join(toks) == "You said: ten of clubs."


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("phrase", ["You said:", "ten of clubs.", SCRIPT_TAIL]),
        ("sentence", ["You said: ten of clubs.", SCRIPT_TAIL]),
        ("whole", [f"You said: ten of clubs. {SCRIPT_TAIL}"]),
    ],
)
def test_text_chunker_hands_off_at_its_boundaries(mode: str, expected: list[str]) -> None:
    chunker = TextChunker(mode)
    out = [s for t in tokenize(script_reply("ten of clubs")) if (s := chunker.push(t))]
    rest = chunker.flush()
    assert out + ([rest] if rest else []) == expected


def test_scripted_responder_time_to_first_token_and_rate() -> None:
    """The known delays the responder promises are the ones a caller sees."""
    from voiceaudit.reference.responder import Message

    async def main() -> list[int]:
        r = ScriptedResponder(ttft_ms=120, token_rate=40)
        t0 = time.monotonic_ns()
        times = []
        async for _ in r.stream([Message("user", "ten of clubs")], extra_ttft_ns=80 * MS):
            times.append(time.monotonic_ns() - t0)
        return times

    times = asyncio.run(main())
    assert 200 * MS <= times[0] < 200 * MS + 15 * MS
    # Absolute deadlines: token k arrives at ttft + k/rate, never drifting.
    k = len(times) - 1
    assert times[-1] >= 200 * MS + k * 25 * MS
    assert times[-1] < 200 * MS + k * 25 * MS + 15 * MS


# --- injections ----------------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration_ns("300ms", what="x") == 300 * MS
    assert parse_duration_ns("0.3s", what="x") == 300 * MS
    assert parse_duration_ns("1500us", what="x") == 1_500_000
    assert parse_duration_ns("250", what="x") == 250 * MS
    with pytest.raises(UsageError):
        parse_duration_ns("fast", what="x")


def test_every_injection_parses_and_is_recorded() -> None:
    inj = parse_injections(
        [
            "leading-silence=300ms",
            "llm-ttft=400ms",
            "whole-result-handoff",
            "sentence-aggregation=on",
            "small-writes",
            "audio-chunk=1000ms",
            "connect-delay=200ms",
            "jitter=20ms",
            "slow-audio=0.8",
            "stage-delay=asr:150ms",
            "stage-delay=tts:20ms,llm:1s",
        ]
    )
    d = inj.to_dict()
    assert d["leading_silence_ns"] == 300 * MS
    assert d["llm_ttft_ns"] == 400 * MS
    assert d["whole_result_handoff"] and d["sentence_aggregation"] and d["small_writes"]
    assert d["small_write_bytes"] == 64
    assert d["audio_chunk_ns"] == 1000 * MS
    assert d["connect_delay_ns"] == 200 * MS
    assert d["jitter_ns"] == 20 * MS
    assert d["slow_audio"] == 0.8
    assert d["stage_delay_ns"] == {"asr": 150 * MS, "llm": 1000 * MS, "tts": 20 * MS}
    assert len(inj.describe()) == 12
    assert parse_injections(inj.describe()) == inj  # describe() round-trips
    assert apply_injection(Injections(), "small-writes=200").small_writes_bytes == 200
    assert not apply_injection(inj, "small-writes=off").small_writes


def test_every_injection_has_an_example_that_applies() -> None:
    """``serve --help`` lists INJECTION_EXAMPLES: each example is a real spec of its own
    injection (it parses, changes the injections, and describe() names it), and the help
    lists every one."""
    import typer.main

    from voiceaudit.cli import app

    for name, example in INJECTION_EXAMPLES.items():
        assert example.partition("=")[0] == name, example
        inj = apply_injection(Injections(), example)
        assert inj != Injections(), example
        assert any(d.startswith(name) for d in inj.describe()), (example, inj.describe())
    serve = typer.main.get_group(app).commands["serve"]
    (inject,) = [p for p in serve.params if p.name == "inject"]
    helptext = getattr(inject, "help", "") or ""
    assert all(example in helptext for example in INJECTION_EXAMPLES.values()), helptext


@pytest.mark.parametrize(
    "spec",
    [
        "nagle=on",
        "leading-silence",
        "leading-silence=loud",
        "slow-audio=fast",
        "slow-audio=0",
        "stage-delay=gpu:10ms",
        "stage-delay=150ms",
        "sentence-aggregation=maybe",
        "audio-chunk=0ms",
    ],
)
def test_bad_injections_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_injections([spec])
    assert "\n" not in info.value.message


def test_server_config_validates() -> None:
    with pytest.raises(UsageError):
        ServerConfig(silence_ms=0)
    with pytest.raises(UsageError):
        ServerConfig(token_rate=0)
    cfg = ServerConfig.from_injections(["jitter=5ms"], seed=3)
    assert cfg.injections.jitter_ns == 5 * MS and cfg.seed == 3


# --- ground truth ----------------------------------------------------------------------------


def test_ground_truth_file_round_trip_and_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "gt.jsonl"
    gt = GroundTruth(path, {"server": "test"})
    rec = TurnRecord("sess_1", 0, "pcm", Injections().to_dict())
    rec.mark("vad_stop", 5)
    rec.mark("vad_stop", 9)  # first occurrence wins
    rec.mark("last_audio_sent", 7)
    rec.mark("last_audio_sent", 8, overwrite=True)
    gt.write_turn(rec)
    gt.close()
    records = read_ground_truth(path)
    assert [r["record"] for r in records] == ["header", "turn", "footer"]
    assert records[0]["schema"] == "voiceaudit.groundtruth/1"
    assert records[1]["marks"]["vad_stop"] == 5
    assert records[1]["marks"]["last_audio_sent"] == 8
    assert records[1]["marks"]["tts_request"] is None
    with path.open("a") as fh:
        fh.write('{"record": "turn", "sess')  # a crash mid-line
    assert len(read_ground_truth(path)) == 3
    json.loads(path.read_text().splitlines()[0])
