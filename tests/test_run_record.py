"""``voiceaudit run --record`` (issue 25, "Write: the evidence of a run"): each session's
call as a stereo WAV beside the trace, checked against the trace of the same run.

Real runs of the CLI against the built-in reference pipeline on loopback (subprocesses,
two at a time: the machine has two cores): over Realtime (24 kHz both ways: nothing is
resampled), over the raw PCM WebSocket with the caller at 16 kHz and the replies at 24 kHz
(the caller's channel resampled) and the greeting (``greeting=300ms``), with the replies at
16 kHz and the caller at 24 kHz through the adaptive playout model (the replies resampled
and time-stretched), a scenario that barges in twice with replies released at real time
through a 60 ms jitter buffer, and a phone call (voiceaudit playing a Twilio carrier
toward the reference bot, which greets: 8 kHz, the file's sample 0 at the carrier's
``start``). The file's sample ``k`` is at ``t0_ns + k / rate``
(``session.recording``), so every trace time is a sample of the file:

- the right channel's first audible sample of each reply (the probe's onset detector, run
  on the file from the reply's playout start, as the probe ran it on the reply) is the
  trace's ``reply.audible`` within one sample; so is the greeting's ``greeting.audible``;
  and where nothing is resampled, the reply's samples are the received ones, in place;
- the left channel holds, where nothing is resampled, the very samples sent, each at its
  schedule; the speech detector run on it puts the speech end at ``input.speech_end``
  within one sample (two when resampled);
- a barge-in is cut where ``reply.stop`` says (its last audible sample within one
  sample), and nothing is heard after it until the next reply plays;
- a run cut by Ctrl-C, and one killed outright (SIGKILL), leave a WAV every reader reads,
  holding every finished turn where the trace says.

The ground truth of the other direction (``voiceaudit.analysis.recording.read_call``, the
reader of call recordings) is checked here too: read back from the probe's own recording
of the barge-in run, every turn is found, and each turn's response latency and barge-in
overhang agree with the run's trace within 2 ms. (The scenario barges in 1.2 s and 1.5 s
into the replies: from the audio alone, a caller who resumes within the reader's
``CUT_IN_RESUME_MS``, 1 s, of the agent starting is by definition cutting in, not barging
in, and the two turns read back as one.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from test_run_faults import FaultServer

from voiceaudit import __version__
from voiceaudit.audio import Audio, detect_speech, first_audible, read_audio
from voiceaudit.data import bundled_dir
from voiceaudit.errors import ExitCode
from voiceaudit.model import Event
from voiceaudit.probe.conversation import last_audible
from voiceaudit.probe.recorder import HEADER_BYTES, CallRecorder, recording_name
from voiceaudit.trace_io import Trace, read_trace
from voiceaudit.wavinfo import read_info

pytestmark = pytest.mark.slow

MS = 1_000_000
DEPTH_MS = 60

BARGE = """
gap_ms = 300
[[session]]
name = "barge"
[[session.turn]]
say = "01_weather"
interrupt = { after_reply_ms = 1200, say = "03_lights" }
[[session.turn]]
say = "05_joke"
[[session.turn]]
say = "02_table"
interrupt = { after_reply_ms = 1500, say = "06_thanks" }
"""

RUNS: dict[str, list[str]] = {
    # 24 kHz both ways, nothing resampled
    "realtime": ["--turns", "2", "--save-audio"],
    # caller 16 kHz, replies 24 kHz: the file is at 24 kHz, the caller resampled; a greeting
    "greeting": [
        *("--protocol", "websocket", "-o", "rate=16000", "-o", "out_rate=24000"),
        *("--inject", "greeting=300ms", "--greeting-wait", "3s", "--turns", "2"),
    ],
    # caller 24 kHz, replies 16 kHz through the adaptive model: replies resampled, stretched
    "adaptive": [
        *("--protocol", "websocket", "-o", "rate=24000", "-o", "out_rate=16000"),
        *("--playout", "adaptive", "--turns", "2"),
    ],
    "barge": [
        *("--scenario", "{barge}", "--inject", "slow-audio=1.0"),
        *("--jitter-buffer-ms", str(DEPTH_MS)),
    ],
    # the phone path: voiceaudit plays a Twilio carrier toward the reference bot, which
    # greets; 8 kHz mu-law both ways
    "twilio": ["--protocol", "twilio", "--turns", "2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every run of the module, two at a time. About 80 s in all on the shared 2-core
    machine: each is a real call of 2-5 turns at real time (replies of 4-5 s from the
    reference pipeline), which is what a recording is of; one fixture serves every test."""
    base = tmp_path_factory.mktemp("record")
    barge = base / "barge.toml"
    barge.write_text(BARGE)
    out: dict[str, Path] = {}
    names = list(RUNS)
    for i in range(0, len(names), 2):
        procs = []
        for name in names[i : i + 2]:
            out[name] = base / name
            args = [a.replace("{barge}", str(barge)) for a in RUNS[name]]
            cmd = [sys.executable, "-m", "voiceaudit", "run", "--record", *args]
            log = (base / f"{name}.log").open("w")
            proc = subprocess.Popen(
                [*cmd, "--out", str(out[name])], stdout=log, stderr=subprocess.STDOUT
            )
            procs.append((name, proc))
        for name, proc in procs:
            rc = proc.wait(timeout=600)
            assert rc == 0, f"{name}: exit {rc}\n" + (base / f"{name}.log").read_text()[-3000:]
    return out


class Call:
    """A run's recording of one session, with the trace's times as the file's samples."""

    def __init__(self, run: Path, sid: str = "s0") -> None:
        self.trace: Trace = read_trace(run / "trace.jsonl")
        self.events = [e for e in self.trace.events if e.session == sid]
        (rec,) = self.named("session.recording")
        self.rec = rec
        assert rec.turn is None and rec.source == "probe" and rec.stage == "session"
        assert rec.attrs["path"] == recording_name(sid) and rec.attrs["channels"] == 2
        assert rec.t_ns == rec.attrs["t0_ns"]
        self.path = run / rec.attrs["path"]
        x, rate = sf.read(self.path, dtype="int16", always_2d=True)
        assert rate == rec.attrs["rate"] and x.shape[1] == 2
        self.rate: int = rate
        self.t0: int = rec.attrs["t0_ns"]
        self.pcm = x
        self.x = x.astype(np.float32) / 32768.0

    def named(self, name: str, turn: int | None = None) -> list[Event]:
        return [e for e in self.events if e.name == name and (turn is None or e.turn == turn)]

    def one(self, name: str, turn: int | None) -> Event:
        (e,) = self.named(name, turn)
        return e

    def at(self, t_ns: int) -> float:
        """The file's sample (fractional) at ``t_ns``."""
        return (t_ns - self.t0) * self.rate / 1e9

    def idx(self, t_ns: int) -> int:
        return round(self.at(t_ns))

    def turns(self) -> list[int]:
        return sorted({e.turn for e in self.named("turn.end") if e.turn is not None})


def _audible_errors(call: Call) -> list[float]:
    """Per reply: the right channel's first audible sample (the probe's detector, from the
    reply's playout start) minus the trace's ``reply.audible``, in samples."""
    errors = []
    for turn in call.turns():
        audible = call.one("reply.audible", turn)
        lo = call.idx(call.one("reply.playout_start", turn).t_ns)
        hi = call.idx(call.one("reply.end", turn).t_ns) + 1
        k = first_audible(call.x[lo:hi, 1], call.rate)
        assert k is not None, turn
        errors.append(lo + k - call.at(audible.t_ns))
    return errors


def _speech_end_errors(call: Call) -> list[float]:
    """Per turn: the speech detector's end on the left channel (over the turn's audio and
    a second after it) minus the trace's ``input.speech_end``, in samples."""
    errors = []
    for turn in call.turns():
        start = call.one("turn.start", turn)
        lo = call.idx(start.t_ns)
        n = round(start.attrs["n_samples"] * call.rate / start.attrs["rate"])
        seg = np.ascontiguousarray(call.x[lo : lo + n + call.rate, 0])
        info = detect_speech(Audio(samples=seg, rate=call.rate, channels=1, path="left"))
        assert info.speech_end is not None
        errors.append(lo + info.speech_end - call.at(call.one("input.speech_end", turn).t_ns))
    return errors


def test_plain_run_every_sample_where_the_trace_says(runs: dict[str, Path]) -> None:
    call = Call(runs["realtime"])
    assert call.rate == 24000  # Realtime's 24 kHz both ways: nothing resampled
    assert call.turns() == [0, 1]
    assert all(e.attrs["ok"] for e in call.named("turn.end"))
    # sample 0 is the start of the call's media (here session.connected)
    assert call.t0 == call.one("session.connected", None).t_ns
    errors = _audible_errors(call)
    assert all(abs(e) <= 1 for e in errors), errors
    ends = _speech_end_errors(call)
    assert all(abs(e) <= 1 for e in ends), ends
    # the left channel is the audio sent, sample for sample, each frame at its schedule
    from voiceaudit.probe.utterances import load_utterances

    utts = {u.name: u for u in load_utterances([bundled_dir()])}
    for turn in call.turns():
        start = call.one("turn.start", turn)
        pcm = np.frombuffer(utts[start.attrs["audio"]].at_rate(24000)[0], dtype="<i2")
        lo = call.idx(start.t_ns)
        assert np.array_equal(call.pcm[lo : lo + pcm.size, 0], pcm), turn
        # the frames' schedule (input.frames' sched_dt_ns): frame [a, b) due at t0 + b/rate
        frames = call.one("input.frames", turn)
        due = frames.t_ns + frames.attrs["sched_dt_ns"][0]
        assert abs(call.at(due) - (lo + frames.attrs["b"][0])) <= 1
        # the right channel holds the reply as received (--save-audio keeps it), in place:
        # one sample earlier or later and it no longer matches. (Where no other reply
        # plays: the reference sends replies faster than real time, and a plain run
        # starts the next turn --gap-ms after the reply was received, so the next reply
        # is heard over the end of this one.)
        reply, rate = sf.read(runs["realtime"] / "reply_audio" / f"s0-t{turn}.wav", dtype="int16")
        assert rate == 24000
        at = call.idx(call.one("reply.playout_start", turn).t_ns)
        lo, hi = 1, reply.size - 1
        if turn - 1 in call.turns():
            lo = max(lo, call.idx(call.one("reply.end", turn - 1).t_ns) + 1 - at)
        if turn + 1 in call.turns():
            hi = min(hi, call.idx(call.one("reply.playout_start", turn + 1).t_ns) - 1 - at)
        assert hi - lo > rate  # more than a second of it heard alone
        alone = reply[lo:hi].astype(np.int32)
        heard = call.pcm[at + lo : at + hi, 1].astype(np.int32)
        assert np.abs(heard - alone).max() <= 1  # (the saved file's float round trip)
        for shift in (-1, 1):
            moved = call.pcm[at + lo + shift : at + hi + shift, 1].astype(np.int32)
            assert np.abs(moved - alone).max() > 100
    # silence before the first turn: nothing was said or heard
    first = call.idx(call.one("turn.start", 0).t_ns)
    assert not call.pcm[:first].any()
    # the file runs to the session's end, or to the last sample heard when the model
    # plays the last reply on after the connection closed
    closed = call.one("session.closed", None)
    last = call.one("reply.end", call.turns()[-1])
    assert abs(call.pcm.shape[0] - call.at(max(closed.t_ns, last.t_ns))) <= 1


def test_greeting_on_the_right_channel_and_the_caller_resampled(runs: dict[str, Path]) -> None:
    call = Call(runs["greeting"])
    assert call.rate == 24000  # the higher of the caller's 16 kHz and the replies' 24 kHz
    audible = call.one("greeting.audible", None)
    end = call.one("greeting.end", None)
    # the greeting is heard from its first chunk (no buffer): search from there
    lo = call.idx(audible.attrs["first_byte_ns"])
    k = first_audible(call.x[lo:, 1], call.rate)
    assert k is not None
    assert abs(lo + k - call.at(audible.t_ns)) <= 1, lo + k - call.at(audible.t_ns)
    # the greeting's samples are all heard, then nothing until the first reply
    played = call.x[lo : call.idx(end.t_ns), 1]
    assert played.size == pytest.approx(end.attrs["samples"], abs=1)
    quiet = call.x[call.idx(end.t_ns) + 1 : call.idx(call.one("reply.first_byte", 0).t_ns), 1]
    assert not quiet.any()
    # greeting latency from the file's start: the file starts at the call's media start
    assert call.t0 == call.one("greeting.wait", None).t_ns
    assert audible.attrs["latency_ns"] == audible.t_ns - call.t0
    errors = _audible_errors(call)
    assert all(abs(e) <= 1 for e in errors), errors
    ends = _speech_end_errors(call)  # the caller resampled from 16 to 24 kHz
    assert all(abs(e) <= 2 for e in ends), ends


def test_phone_call_from_the_carrier_start(runs: dict[str, Path]) -> None:
    call = Call(runs["twilio"])
    assert call.rate == 8000
    # sample 0 is the carrier's start message: greeting latency from the file's start
    (start,) = [e for e in call.events if e.name == "carrier.start"]
    assert call.t0 == start.t_ns == call.one("greeting.wait", None).t_ns
    audible = call.one("greeting.audible", None)
    lo = call.idx(audible.attrs["first_byte_ns"])
    k = first_audible(call.x[lo:, 1], call.rate)
    assert k is not None
    assert abs(lo + k - call.at(audible.t_ns)) <= 1, lo + k - call.at(audible.t_ns)
    errors = _audible_errors(call)
    assert len(errors) == 2 and all(abs(e) <= 1 for e in errors), errors
    ends = _speech_end_errors(call)
    assert all(abs(e) <= 1 for e in ends), ends


def test_adaptive_playout_replies_resampled_and_stretched(runs: dict[str, Path]) -> None:
    call = Call(runs["adaptive"])
    assert call.rate == 24000
    assert "adaptive" in call.one("reply.playout_start", 0).attrs["model"]
    errors = _audible_errors(call)
    assert all(abs(e) <= 1 for e in errors), errors
    ends = _speech_end_errors(call)
    assert all(abs(e) <= 1 for e in ends), ends
    # the last reply is heard to its end (reply.end), and no longer
    turn = call.turns()[-1]
    start = call.idx(call.one("reply.playout_start", turn).t_ns)
    stop = call.at(call.one("reply.end", turn).t_ns)
    last = last_audible(call.x[start:, 1], call.rate)
    assert last is not None and 0 <= stop - (start + last + 1) < call.rate // 10


def test_barge_in_is_cut_where_reply_stop_says(runs: dict[str, Path]) -> None:
    call = Call(runs["barge"])
    stops = call.named("reply.stop")
    assert len(stops) == 2 and all(s.attrs["kind"] == "interrupt" for s in stops)
    errors = _audible_errors(call)
    assert len(errors) == 5 and all(abs(e) <= 1 for e in errors), errors
    # the left channel holds each turn's audio as sent (the clip at the session's rate:
    # turn.start's audio_sha256), from its turn.start
    for turn in call.turns():
        start = call.one("turn.start", turn)
        lo = call.idx(start.t_ns)
        sent = call.pcm[lo : lo + start.attrs["n_samples"], 0].astype("<i2").tobytes()
        assert hashlib.sha256(sent).hexdigest() == start.attrs["audio_sha256"], turn
        se = call.one("input.speech_end", turn)
        assert abs(call.at(se.t_ns) - (lo + start.attrs["speech_end_sample"])) <= 1
    # the speech detector on the left channel: within 0.5 ms (a scenario scales each
    # clip's speech end from the clip's own rate; here 16 to 24 kHz)
    ends = _speech_end_errors(call)
    assert all(abs(e) <= call.rate // 2000 for e in ends), ends
    for stop in stops:
        assert stop.turn is not None
        onset = call.idx(stop.attrs["onset_ns"])
        # the reply to the interruption: the turn the interruption opened
        (overlap,) = call.named("input.overlap", stop.turn)
        nxt = call.idx(call.one("reply.playout_start", overlap.attrs["opens_turn"]).t_ns)
        last = last_audible(call.x[onset:nxt, 1], call.rate)
        assert last is not None
        # reply.stop is the instant after the last audible sample as heard
        err = onset + last + 1 - call.at(stop.t_ns)
        assert abs(err) <= 1, err
        assert stop.attrs["stop_ns"] > 0
        # the caller's interrupting speech is on the left channel from the onset
        k = first_audible(call.x[call.idx(overlap.attrs["start_ns"]) :, 0], call.rate)
        assert k is not None


def test_recording_read_back_agrees_with_the_trace(runs: dict[str, Path]) -> None:
    """Ground truth (issue 25): the reader of call recordings, on the probe's own recording
    of a run against the reference pipeline, finds every turn, and each turn's response
    latency and barge-in overhang agree with the run's trace within 2 ms."""
    from voiceaudit.analysis.recording import read_call

    call = Call(runs["barge"])
    back = read_call(call.path)
    # the file says it is a voiceaudit call (caller left): the caller opens this call, and
    # the same audio without that INFO chunk looks swapped, the heuristic's pattern
    assert back.header.config["recording"]["written_by"] == f"voiceaudit {__version__}"
    assert not any("swapped" in w for w in back.warnings), back.warnings
    bare = call.path.with_name("bare.wav")
    sf.write(bare, call.pcm, call.rate, subtype="PCM_16")
    assert read_info(bare) == {}
    assert any("swapped" in w for w in read_call(bare).warnings)
    assert any("caller on the left" in w for w in read_call(call.path, caller="right").warnings)
    truth = {t: call.one("turn.end", t).attrs["voice_to_voice_ns"] for t in call.turns()}
    # the run's caller speech ends on the file's clock, to match the turns read back
    ends = {t: call.one("input.speech_end", t).t_ns - call.t0 for t in call.turns()}
    found = _read_back_turns(back)
    assert len(found) == len(truth), (found, truth)
    for t, end in ends.items():
        got = min(found, key=lambda f: abs(f["speech_end_ns"] - end))
        assert abs(got["speech_end_ns"] - end) < 50 * MS, (t, got, end)
        assert got["v2v_ns"] is not None, (t, got)
        assert abs(got["v2v_ns"] - truth[t]) <= 2 * MS, (t, got["v2v_ns"], truth[t])
    for stop in call.named("reply.stop"):
        assert stop.turn is not None
        end = ends[stop.turn]
        got = min(found, key=lambda f: abs(f["speech_end_ns"] - end))
        assert got["stop_ns"] is not None, (stop.turn, got)
        assert abs(got["stop_ns"] - stop.attrs["stop_ns"]) <= 2 * MS, (
            stop.turn,
            got["stop_ns"],
            stop.attrs["stop_ns"],
        )


def _read_back_turns(tr: Trace) -> list[dict[str, Any]]:
    """Per turn read back: its speech end, response latency and barge-in overhang."""
    out = []
    for e in tr.events:
        if e.name != "turn.end" or e.turn is None:
            continue
        se = [x for x in tr.events if x.turn == e.turn and x.name == "input.speech_end"]
        stop = [x for x in tr.events if x.turn == e.turn and x.name == "reply.stop"]
        out.append(
            {
                "turn": e.turn,
                "ok": e.attrs.get("ok"),
                "speech_end_ns": se[0].t_ns if se else None,
                "v2v_ns": e.attrs.get("voice_to_voice_ns"),
                "stop_ns": stop[0].attrs["stop_ns"] if stop else None,
            }
        )
    return out


# -- Ctrl-C and crashes --------------------------------------------------------------


def _fault_run(url: str, audio: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voiceaudit", "run", str(audio), "--target", url,
         "--protocol", "realtime", "--turns", "4", "--timeout", "60", "--gap-ms", "100",
         "--record", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_turn_1(server: FaultServer, run: subprocess.Popen[str]) -> None:
    """Until the server has heard turn 1's speech end: turn 0 is finished (and written)."""
    deadline = time.monotonic() + 120
    while server.replies < 2:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "turn 1 never reached the server"
        time.sleep(0.02)


def _finished_turn_0_is_in(run: Path, wav: Path) -> None:
    """The WAV reads (voiceaudit's reader and libsndfile) and holds turn 0 where the trace
    says: its reply's first audible sample within one sample of ``reply.audible``."""
    mono = read_audio(wav)  # voiceaudit's reader: no "truncated" complaint
    assert mono.channels == 2
    call = Call(run)
    assert call.pcm.shape[0] == mono.samples.size
    lo = call.idx(call.one("reply.playout_start", 0).t_ns)
    k = first_audible(call.x[lo:, 1], call.rate)
    assert k is not None
    err = lo + k - call.at(call.one("reply.audible", 0).t_ns)
    assert abs(err) <= 1, err
    start = call.idx(call.one("turn.start", 0).t_ns)
    n = call.one("turn.start", 0).attrs["n_samples"]
    assert np.abs(call.x[start : start + n, 0]).max() > 0.01  # the caller's turn 0


@pytest.fixture
def speech(realdata: Path) -> Path:
    return realdata / "speech" / "pocketsphinx_cards_003.wav"


@pytest.mark.slow
def test_ctrl_c_leaves_a_readable_wav_with_every_finished_turn(
    speech: Path, tmp_path: Path
) -> None:
    """Two Ctrl-Cs while turn 1's reply is held back: the run is cut (exit 130); the WAV
    is complete, with turn 0 and what was sent of turn 1."""
    server = FaultServer()
    server.delay_s, server.delay_from = 60.0, 1
    with server:
        run = _fault_run(server.url, speech, tmp_path / "run")
        _wait_for_turn_1(server, run)
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert run.returncode == ExitCode.INTERRUPTED, (run.returncode, stderr)
    wav = tmp_path / "run" / "call-s0.wav"
    _finished_turn_0_is_in(tmp_path / "run", wav)
    call = Call(tmp_path / "run")
    # turn 1 was cut: its caller audio (sent before the cut) is there too
    start1 = call.idx(call.one("turn.start", 1).t_ns)
    assert np.abs(call.x[start1 : start1 + 24000, 0]).max() > 0.01
    # closed: the header states the whole file
    assert wav.stat().st_size == HEADER_BYTES + 4 * call.pcm.shape[0]


@pytest.mark.slow
def test_a_killed_run_leaves_a_readable_wav_with_every_finished_turn(
    speech: Path, tmp_path: Path
) -> None:
    """SIGKILL (no clean-up at all) while turn 1's reply is held back: the WAV written at
    turn 0's end is a complete file every reader reads, holding turn 0."""
    server = FaultServer()
    server.delay_s, server.delay_from = 60.0, 1
    with server:
        run = _fault_run(server.url, speech, tmp_path / "run")
        _wait_for_turn_1(server, run)
        os.kill(run.pid, signal.SIGKILL)
        run.communicate(timeout=60)
    wav = tmp_path / "run" / "call-s0.wav"
    _finished_turn_0_is_in(tmp_path / "run", wav)


# -- the recorder on its own ------------------------------------------------------------


def _tone(n: int, rate: int, lead: int = 0) -> bytes:
    t = np.arange(n) / rate
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return bytes(2 * lead) + x.tobytes()


def test_recorder_file_is_complete_after_every_flush_and_mixes_late_audio(
    tmp_path: Path,
) -> None:
    from voiceaudit.probe.playout import Chunk, play

    t0 = 10**12
    rate = 16000
    path = tmp_path / "call.wav"
    rec = CallRecorder(path, t0, input_rate=rate, playout="fixed", depth_ns=0)
    # a reply of two 20 ms chunks, the second 50 ms late: a 30 ms gap the caller hears
    c1, c2 = _tone(320, rate), _tone(320, rate)
    chunks = [(t0 + 100 * MS, c1, rate, 640, None), (t0 + 170 * MS, c2, rate, 640, None)]
    rec.heard(chunks)
    rec.caller(t0 + 50 * MS, _tone(800, rate), rate)
    rec.flush()
    x, r = sf.read(path, dtype="int16", always_2d=True)  # the file is open and complete
    assert r == rate and x.shape[1] == 2
    p = play([Chunk(c[0], 320) for c in chunks], rate)
    assert len(p.underruns) == 1
    a = (p.starts_ns[0] - t0) * rate // 10**9
    b = (p.starts_ns[1] - t0) * rate // 10**9
    assert np.array_equal(x[a : a + 320, 1], np.frombuffer(c1, "<i2"))
    assert not x[a + 320 : b, 1].any()  # the underrun is a gap
    assert np.array_equal(x[b : b + 320, 1], np.frombuffer(c2, "<i2"))
    assert np.array_equal(x[800 : 800 + 800, 0], np.frombuffer(_tone(800, rate), "<i2"))
    # audio landing on a stretch already written is mixed in, not written over
    rec.heard([(t0 + 100 * MS, c1, rate, 640, None)])
    rec.flush()
    y, _ = sf.read(path, dtype="int16", always_2d=True)
    doubled = np.clip(2 * np.frombuffer(c1, "<i2").astype(np.int32), -32768, 32767)
    assert np.array_equal(y[a : a + 320, 1], doubled)
    assert np.array_equal(y[:, 0], x[:, 0])
    rec.close(t0 + 2 * 10**9)
    z, _ = sf.read(path, dtype="int16", always_2d=True)
    assert z.shape[0] == 2 * rate  # padded with silence to the session's end


def test_recorder_rate_is_the_higher_of_the_first_audio(tmp_path: Path) -> None:
    """No greeting came: nothing is written yet, so the first turn's 24 kHz reply sets the
    rate, and the 16 kHz caller is resampled (sample 0 of its turn at the turn's time)."""
    t0 = 10**12
    path = tmp_path / "call.wav"
    rec = CallRecorder(path, t0, input_rate=16000, playout="fixed", depth_ns=0)
    rec.flush()  # the greeting's end, without a greeting
    assert rec.rate is None and not path.exists()
    rec.caller(t0 + 100 * MS, _tone(1600, 16000, lead=800), 16000)
    reply = _tone(2400, 24000, lead=240)
    rec.heard([(t0 + 500 * MS, reply, 24000, len(reply), None)])
    rec.close(t0 + 1 * 10**9)
    x, r = sf.read(path, dtype="float32", always_2d=True)
    assert r == 24000 and rec.rate == 24000
    # 100 ms + 50 ms of lead; the tone starts abruptly, and the resampling filter rings
    # ahead of it by up to its half-length (10 taps of the 48 kHz intermediate on each
    # side of the 3/2 polyphase filter: 15 samples at 24 kHz)
    k = first_audible(x[:, 0], r)
    assert k is not None and -15 <= k - (2400 + 1200) <= 1, k - 3600
    onset = first_audible(np.frombuffer(reply, "<i2").astype(np.float32) / 32768, 24000)
    k = first_audible(x[:, 1], r)
    assert onset is not None and k == 12000 + onset  # at 500 ms, not resampled


def test_recorder_adaptive_model_places_the_onset_at_heard_at(tmp_path: Path) -> None:
    """The adaptive model stretches time; each reply sample is still heard where the
    model says (its first audible sample within one sample), and a reply at a lower rate
    than the file's is resampled."""
    from voiceaudit.probe.playout import Chunk, play_adaptive

    t0 = 10**12
    rate = 16000
    rng = np.random.default_rng(7)
    pcm = _tone(rate * 2, rate, lead=rate // 10)  # 100 ms of silence, then 2 s of tone
    step = 320
    chunks = []
    for i in range(0, len(pcm) // 2, step):
        jitter = int(rng.uniform(0, 40)) * MS
        chunks.append((t0 + 200 * MS + i * 10**9 // rate + jitter, pcm[2 * i : 2 * (i + step)],
                       rate, 2 * step, None))  # fmt: skip
    path = tmp_path / "call.wav"
    rec = CallRecorder(path, t0, input_rate=24000, playout="adaptive", depth_ns=0)
    rec.heard(chunks)
    rec.close(t0 + 4 * 10**9)
    x, r = sf.read(path, dtype="float32", always_2d=True)
    assert r == 24000
    p = play_adaptive([Chunk(c[0], len(c[1]) // 2) for c in chunks], rate)
    assert p.knots
    onset = first_audible(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, rate)
    assert onset is not None
    heard = (p.heard_at(onset) - t0) * r / 1e9
    lo = round((p.start_ns - t0) * r / 1e9)
    k = first_audible(x[lo:, 1], r)
    assert k is not None and abs(lo + k - heard) <= 1, lo + k - heard
    end = (p.end_ns - t0) * r / 1e9
    last = last_audible(x[:, 1], r)
    assert last is not None and abs(last + 1 - end) <= 2, last + 1 - end


def test_record_needs_real_time(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "voiceaudit", "run", "--record", "--speed", "2",
         "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--record needs --speed 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
