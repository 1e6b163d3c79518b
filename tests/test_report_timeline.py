"""The HTML report's call timeline (issue 25, "Write: the evidence of a run"): per turn, a
strip of both channels with the turn's marks, and a player of that stretch of the call.

Two real sources of call recordings:

- a real ``voiceaudit run --record`` (in-process CLI) against a small bot on loopback that
  speaks raw PCM over a WebSocket (the ``websocket`` protocol): it answers each caller
  turn ``DELAY_MS`` after its energy endpointer fires with 100 ms of digital silence then
  a tone, so the heard channel is exactly zero until the reply's first audible sample;
- a synthetic dual-channel call of LibriVox speech (``test_recording.build_call``: a
  cut-in and a barge-in at known places) read by ``voiceaudit report CALL.wav``.

Checked: every turn gets a strip and a player; the player's embedded WAV holds exactly
the file's samples of the stretch, which starts ``PAD_NS`` before the trace's speech end
(computed here from the trace's own ``session.recording`` and ``input.speech_end``); every
mark sits at its trace time (the positions computed, and the heard channel of the
embedded audio turning non-zero at the first-audible mark); a tiny embed limit turns
players into links with the stretch as a media fragment; the cap on strips; and a report
whose recording is gone renders exactly as before.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp import WSMsgType, web
from servers import EnergyEndpointer, HandlerServer
from test_recording import build_call, write_call

from voiceaudit.analysis import build_report
from voiceaudit.analysis.recording import read_call
from voiceaudit.analysis.report import Report
from voiceaudit.report import Format, html, render, timeline
from voiceaudit.trace_io import Trace, read_trace

RATE = 16000
MS = 1_000_000
DELAY_MS = 300
DATA_WAV = re.compile(r'src="data:audio/wav;base64,([^"]+)"')


def _tone(ms: int, lead_ms: int = 100) -> bytes:
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return bytes(RATE * lead_ms // 1000 * 2) + x.tobytes()


async def _bot(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    ep = EnergyEndpointer(RATE)
    async for msg in ws:
        if msg.type != WSMsgType.BINARY:
            continue
        ep.feed(np.frombuffer(msg.data, "<i2").astype(np.float64))
        if ep.turn_ended:
            ep.reset()
            await asyncio.sleep(DELAY_MS / 1000)
            await ws.send_bytes(_tone(400))
            await ws.send_str(json.dumps({"type": "turn_done"}))
    return ws


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real recorded run of two turns (about 4 s of real time: the call itself)."""
    from voiceaudit.cli import run
    from voiceaudit.data import bundled_dir

    out = tmp_path_factory.mktemp("timeline") / "run"
    with HandlerServer(_bot, "/pcm") as server:
        rc = run(
            [
                "run",
                str(bundled_dir() / "06_thanks.wav"),
                *("--target", server.url, "--protocol", "websocket"),
                *("--turns", "2", "--gap-ms", "200", "--record", "--out", str(out)),
            ]
        )
    assert rc == 0
    return out


def _report(path: Path | Trace) -> Report:
    return build_report([path], keep_observations=True)


def _wavs(page: str) -> list[np.ndarray]:
    out = []
    for data in DATA_WAV.findall(page):
        x, rate = sf.read(io.BytesIO(base64.b64decode(data)), dtype="int16", always_2d=True)
        assert rate == RATE
        out.append(x)
    return out


def _events(trace: Trace, name: str, turn: int | None = None) -> list[int]:
    return [e.t_ns for e in trace.events if e.name == name and e.turn == turn]


def _sample(t_ns: int, t0: int, rate: int) -> int:
    return round((t_ns - t0) * rate / 1e9)


def test_each_turn_gets_a_strip_and_the_player_plays_exactly_its_stretch(run_dir: Path) -> None:
    trace = read_trace(run_dir / "trace.jsonl")
    (rec,) = [e for e in trace.events if e.name == "session.recording"]
    t0, rate = rec.attrs["t0_ns"], rec.attrs["rate"]
    assert rate == RATE
    report = _report(run_dir / "trace.jsonl")
    page = render(report, Format.HTML)
    assert "<h2>Call timeline</h2>" in page
    assert page.count("<svg") == 2 and page.count("<audio controls") == 2
    assert f'content="{html.CSP_AUDIO}"' in page
    wavs = _wavs(page)
    assert len(wavs) == 2
    calls, file_rate = sf.read(run_dir / rec.attrs["path"], dtype="int16", always_2d=True)
    assert file_rate == RATE
    strips = timeline.strips(report)
    for k, (s, wav) in enumerate(zip(strips, wavs, strict=True)):
        assert s.turn.turn == k
        (speech_end,) = _events(trace, "input.speech_end", k)
        first = _sample(speech_end - timeline.PAD_NS, t0, rate)
        assert s.first == first
        assert s.stop > _sample(max(_events(trace, "reply.end", k)), t0, rate)
        assert wav.shape == (s.stop - s.first, 2)
        assert np.array_equal(wav, calls[s.first : s.stop])
        # the stretch as the page says it, seconds in the file
        assert f"{s.first / rate:.3f} s to {s.stop / rate:.3f} s of call-s0.wav" in page


def test_marks_are_at_the_trace_times(run_dir: Path) -> None:
    trace = read_trace(run_dir / "trace.jsonl")
    (rec,) = [e for e in trace.events if e.name == "session.recording"]
    t0 = rec.attrs["t0_ns"]
    report = _report(run_dir / "trace.jsonl")
    wavs = _wavs(render(report, Format.HTML))
    for s, wav in zip(timeline.strips(report), wavs, strict=True):
        k = s.turn.turn
        (speech_end,) = _events(trace, "input.speech_end", k)
        (audible,) = _events(trace, "reply.audible", k)
        by_kind = {m.kind: m for m in s.marks}
        assert by_kind["speech end"].t_ns == speech_end
        assert by_kind["first audible"].t_ns == audible
        # the bot's delay is in the gap between them (one-sided: the machine adds time)
        assert audible - speech_end >= DELAY_MS * MS
        span = s.end_ns - s.start_ns
        assert s.start_ns == t0 + s.first * 1_000_000_000 // RATE
        for m in s.marks:
            assert m.x == pytest.approx((m.t_ns - s.start_ns) * timeline.WIDTH / span)
            assert f'x1="{m.x:.2f}"' in s.svg
        # every chain mark of the ledger is a segment boundary on the strip
        segs = {(m.label, m.t_ns) for m in s.marks if m.kind == "segment"}
        for m in s.turn.ledger.marks:
            if m.name not in ("input.speech_end", "reply.audible"):
                assert (m.name, m.t_ns) in segs
        # what was heard: nothing from the speech end until the first audible sample,
        # then the tone (its first sample is zero: sin 0)
        heard = wav[:, 1]
        a = _sample(audible, t0, RATE) - s.first
        e = _sample(speech_end, t0, RATE) - s.first
        assert not heard[e : a - 1].any()
        assert heard[a - 1 : a + 3].any()
        # and the caller's speech ends at the speech end
        assert wav[: e + 1, 0].any() and not wav[e + 2 : a, 0].any()


def test_a_tiny_embed_limit_turns_players_into_links(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report(run_dir / "trace.jsonl")
    monkeypatch.setenv("VOICEAUDIT_MAX_EMBED_MB", "0")
    page = render(report, Format.HTML)
    assert "<audio" not in page and page.count("<svg") == 2
    for s in timeline.strips(report, 0):
        assert s.wav is None
        href = f"{(run_dir / 'call-s0.wav').as_posix()}#t={s.first / RATE:.3f},{s.stop / RATE:.3f}"
        assert f'<a href="{href}">call-s0.wav</a>' in page
    # a limit that holds the first stretch only: the second is linked
    first = timeline.strips(report)[0]
    assert first.wav is not None
    both = timeline.strips(report, len(first.wav))
    assert both[0].wav == first.wav and both[1].wav is None


def test_the_strips_are_capped(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline, "MAX_STRIP_TURNS", 1)
    page = render(_report(run_dir / "trace.jsonl"), Format.HTML)
    assert page.count("<svg") == 1 and page.count("<audio controls") == 1
    assert "Strips for the first 1 of 2 turns." in page


def test_without_the_recording_the_page_is_as_before(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with_rec = render(_report(copy / "trace.jsonl"), Format.HTML)
    (copy / "call-s0.wav").unlink()
    without = render(_report(copy / "trace.jsonl"), Format.HTML)
    assert "Call timeline" not in without and "<audio" not in without
    assert f'content="{html.CSP}"' in without
    a, b = with_rec.index("<h2>Call timeline</h2>"), with_rec.rindex("</audio>")
    b = with_rec.index("\n", b)
    cut = with_rec[:a] + with_rec[b + 1 :]
    assert cut.replace(html.CSP_AUDIO, html.CSP) == without


def test_a_read_recording_shows_strips_with_its_barge_in_and_cut_in(
    speech_dir: Path, tmp_path: Path
) -> None:
    from voiceaudit.cli import run

    call = build_call(speech_dir)
    wav = write_call(tmp_path / "call.wav", call.caller, call.agent, 16000, "PCM_16")
    trace = read_call(wav)
    report = _report(trace)
    strips = timeline.strips(report)
    assert [s.turn.turn for s in strips] == [t.turn for t in report.turns]
    assert all(s.call.t0_ns == 0 and s.call.caller == 0 for s in strips)
    samples, _ = sf.read(wav, dtype="int16", always_2d=True)
    marks = {(m.kind, m.t_ns) for s in strips for m in s.marks}
    for e in trace.events:
        if e.name == "reply.cut_in":
            assert ("cut-in", e.t_ns) in marks
        if e.name == "reply.stop":
            assert ("barge-in stop", e.t_ns) in marks
            assert ("barge-in onset", e.attrs["onset_ns"]) in marks
        if e.name in ("input.speech_end", "reply.audible"):
            assert (("speech end", "first audible")[e.name == "reply.audible"], e.t_ns) in marks
    kinds = {k for k, _ in marks}
    assert {"cut-in", "barge-in onset", "barge-in stop"} <= kinds
    for s in strips:
        assert s.wav is not None
        x, _ = sf.read(io.BytesIO(s.wav), dtype="int16", always_2d=True)
        assert np.array_equal(x, samples[s.first : s.stop])
    # the command line: `voiceaudit report CALL.wav --format html`
    out = tmp_path / "r.html"
    assert run(["report", str(wav), "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count("<svg") == len(strips) and page.count("<audio controls") == len(strips)


def _chromium_log(page: str, path: Path) -> str:
    """Chromium's console log of ``page`` loaded with its players' audio fetched."""
    path.write_text(page.replace('preload="none"', 'preload="auto"'), encoding="utf-8")
    chromium = _chromium()
    assert chromium is not None
    out = subprocess.run(
        [
            chromium,
            *("--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr"),
            *("--v=0", "--virtual-time-budget=2000", "--dump-dom", path.as_uri()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Call timeline" in out.stdout, out.stderr[-2000:]
    return out.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


# `make test` installs Debian's chromium, so under CI a missing browser is a failure, not a skip.
@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"), reason="no Chromium installed"
)
def test_the_page_policy_lets_the_embedded_audio_play_in_chromium(
    run_dir: Path, tmp_path: Path
) -> None:
    page = render(_report(run_dir / "trace.jsonl"), Format.HTML)
    blocked = "violates the following Content Security Policy"
    assert blocked not in _chromium_log(page, tmp_path / "r.html")
    # the control: without media-src the same page's audio is refused
    strict = page.replace(html.CSP_AUDIO, html.CSP)
    assert blocked in _chromium_log(strict, tmp_path / "strict.html")
