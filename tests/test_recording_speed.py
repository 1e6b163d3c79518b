"""What makes reading a long call recording fast (issue 25, "Performance") keeps its
figures: the two channels analysed in two threads give the very trace one thread gives;
the cached block reads give the file's samples exactly (16-bit PCM read as integers, a
float file's NaNs as 0, mu-law, two tracks of different lengths, reads across block
edges and past the end), and the cache stays bounded. The speed itself is measured by
bench/recording_speed.py (no wall-clock threshold here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_recording import build_call, with_echo, with_noise, write_call

import voiceaudit.analysis.recording as rec
from voiceaudit.analysis.recording import open_source, read_call


@pytest.mark.parametrize(
    ("rate", "subtype", "echo"), [(16000, "PCM_16", True), (8000, "ULAW", False)]
)
def test_two_threads_give_the_trace_one_thread_gives(
    speech_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rate: int,
    subtype: str,
    echo: bool,
) -> None:
    """Both channels noisy (both go to the noise-robust detector, side by side), with
    echo on the caller's: the same events, warnings and header with one worker."""
    call = build_call(speech_dir, rate)
    caller = with_echo(call.caller, call.agent, -20.0, 0.030, rate) if echo else call.caller
    p = write_call(
        tmp_path / "call.wav",
        with_noise(caller, 10.0, seed=1),
        with_noise(call.agent, 10.0, seed=2),
        rate,
        subtype,
    )
    two = read_call(p)
    assert two.header.config["recording"]["detector"] == {"caller": "spectral", "agent": "spectral"}
    monkeypatch.setattr(rec, "WORKERS", 1)
    one = read_call(p)
    assert two.events == one.events
    assert two.warnings == one.warnings
    assert two.header == one.header


def _direct(p: Path, start: int, stop: int) -> np.ndarray:
    with sf.SoundFile(str(p)) as f:
        f.seek(max(0, start))
        return f.read(max(0, min(stop, f.frames) - max(0, start)), dtype="float32", always_2d=True)


@pytest.mark.parametrize("subtype", ["PCM_16", "ULAW", "FLOAT"])
def test_cached_reads_are_the_files_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subtype: str
) -> None:
    rate = 8000
    monkeypatch.setattr(rec, "CACHE_BLOCK_S", 1)
    monkeypatch.setattr(rec, "CACHE_S", 3)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((rate * 7 + 123, 2)) * 0.2).clip(-1, 1).astype(np.float32)
    if subtype == "FLOAT":
        x[rate + 5, 0] = np.nan
        x[3 * rate - 1, 1] = np.inf
    p = tmp_path / "x.wav"
    sf.write(p, x, rate, subtype=subtype)
    src = open_source(p, caller="right")
    assert src._pcm16 == (subtype == "PCM_16")
    assert src._finite_only == (subtype != "FLOAT")
    n = src.frames
    spans = [
        (0, 10),
        (-50, 400),
        (rate - 3, rate + 3),
        (rate // 2, 5 * rate + 7),
        (n - 20, n + 500),
    ]
    spans += [
        (int(a), int(a) + int(b))
        for a, b in zip(rng.integers(0, n, 20), rng.integers(0, 3 * rate, 20), strict=True)
    ]
    for start, stop in spans:
        c, a = src.read(start, stop)
        want = np.nan_to_num(_direct(p, start, stop), posinf=0.0, neginf=0.0)
        np.testing.assert_array_equal(c, want[:, 1])  # the caller is on the right
        np.testing.assert_array_equal(a, want[:, 0])
        assert len(src._cache) <= 3
        c[:] = 7.0  # the caller owns what it got: the cache is not changed through it
    np.testing.assert_array_equal(src.read(0, 10)[0], _direct(p, 0, 10)[:, 1])
    src.close()
    assert not src._cache and not src._files


def test_two_tracks_of_different_lengths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shorter track reads as zeros after its end; the longer one sets the length."""
    monkeypatch.setattr(rec, "CACHE_BLOCK_S", 1)
    rate = 8000
    rng = np.random.default_rng(6)
    c = (rng.standard_normal(rate * 3 + 10) * 0.1).astype(np.float32)
    a = (rng.standard_normal(rate * 5 + 3) * 0.1).astype(np.float32)
    sf.write(tmp_path / "c.wav", c, rate, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", a, rate, subtype="PCM_16")
    src = open_source(caller_track=tmp_path / "c.wav", agent_track=tmp_path / "a.flac")
    assert src._pcm16 and src.frames == a.shape[0]
    got_c, got_a = src.read(rate * 2, rate * 6)
    assert got_c.shape == got_a.shape == (rate * 3 + 3,)
    want_c = sf.read(tmp_path / "c.wav", dtype="float32")[0][rate * 2 :]
    np.testing.assert_array_equal(got_c[: want_c.shape[0]], want_c)
    assert not got_c[want_c.shape[0] :].any()
    np.testing.assert_array_equal(
        got_a, sf.read(tmp_path / "a.flac", dtype="float32")[0][rate * 2 :]
    )
    src.close()
