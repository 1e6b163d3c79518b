"""Test support for the telemetry tests: real-data paths, traces built from real captures.

``trace_from_pipecat_capture`` reads Pipecat's protobuf WebSocket frames out of a real
loopback capture with tshark and writes the trace the probe would have written had it
been the client: when the caller's speech ended (from the audio the client sent, sample
by sample), when the reply's first byte and first audible sample arrived. The capture's
timestamps are wall clock; the trace's anchor maps them 1:1, which is what a probe on
the bot's host records.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voiceaudit.clock import Anchor
from voiceaudit.model import Header
from voiceaudit.targets.pipecat_ws import decode_frame
from voiceaudit.trace_io import TraceWriter

ROOT = Path(__file__).resolve().parent.parent


def realdata() -> Path:
    env = os.environ.get("VOICEAUDIT_REALDATA")
    p = Path(env) if env else ROOT.parent / "shared" / "realdata"
    if not p.is_dir():
        pytest.skip(f"real data not found at {p} (set VOICEAUDIT_REALDATA)")
    return p


def epoch_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


@dataclass
class CapturedTurn:
    start_ns: int
    speech_end_ns: int
    speech_end_sent_ns: int
    first_byte_ns: int | None
    audible_ns: int | None


def _levels(x: np.ndarray, rate: int) -> np.ndarray:
    win = rate // 100
    n = len(x) // win
    w = x[: n * win].reshape(n, win)
    return 20 * np.log10(np.sqrt(np.mean(w**2, axis=1)) + 1e-12)


def captured_turns(pcap: Path, *, threshold_db: float = -60.0) -> list[CapturedTurn]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            "websocket",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "data.data",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    client: list[tuple[int, np.ndarray, int]] = []
    server: list[tuple[int, np.ndarray, int]] = []
    for line in out.splitlines():
        t, _, data = line.partition("\t")
        if not data:
            continue
        f = decode_frame(bytes.fromhex(data.split(",")[0]))
        if f.kind != "audio":
            continue
        pcm = f.fields["audio"]
        rate = f.fields["sample_rate"]
        assert isinstance(pcm, bytes) and isinstance(rate, int)
        x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
        # Pipecat names its output frames (OutputAudioRawFrame#0); clients do not.
        (server if "name" in f.fields else client).append((epoch_ns(t), x, rate))
    rate = client[0][2]
    # The client's audio as one stream; each frame was sent when its last sample was due.
    audio = np.concatenate([x for _, x, _ in client])
    ends = np.cumsum([len(x) for _, x, _ in client])
    sent = np.array([t for t, _, _ in client])
    speech = _levels(audio, rate) > threshold_db
    win = rate // 100
    idx = np.flatnonzero(speech)
    # utterances: speech windows separated by at least a second of silence
    cuts = np.flatnonzero(np.diff(idx) > 100)
    segments = np.split(idx, cuts + 1)
    turns = []
    for seg in segments:
        first_sample = int(seg[0]) * win
        last_sample = int(seg[-1] + 1) * win  # one past the last speech sample
        fi = int(np.searchsorted(ends, last_sample, side="left"))
        spoken = int(sent[fi] - (ends[fi] - last_sample) * 1_000_000_000 // rate)
        start_fi = int(np.searchsorted(ends, first_sample, side="right"))
        turns.append(
            CapturedTurn(int(sent[start_fi]) - 300_000_000, spoken, int(sent[fi]), None, None)
        )
    # replies: runs of server audio frames
    replies: list[list[tuple[int, np.ndarray, int]]] = []
    for fr in server:
        if not replies or fr[0] - replies[-1][-1][0] > 300_000_000:
            replies.append([])
        replies[-1].append(fr)
    for rep in replies:
        t0 = rep[0][0]
        r_rate = rep[0][2]
        x = np.concatenate([f[1] for f in rep])
        loud = np.flatnonzero(_levels(x, r_rate) > threshold_db)
        turn = max((t for t in turns if t.speech_end_ns < t0), key=lambda t: t.speech_end_ns)
        if turn.first_byte_ns is None:
            turn.first_byte_ns = t0
            if len(loud):
                turn.audible_ns = t0 + int(loud[0]) * (r_rate // 100) * 1_000_000_000 // r_rate
    return turns


def write_trace(path: Path, turns: list[CapturedTurn], *, session: str = "s0") -> Path:
    t0 = turns[0].start_ns - 1_000_000_000
    header = Header(
        run_id="from-capture",
        voiceaudit_version="test",
        target={"protocol": "pipecat-websocket", "url": "ws://127.0.0.1/"},
        host={},
        clock={"name": "monotonic", "resolution_ns": 1},
        anchors=(Anchor(wall_ns=t0, mono_ns=t0, uncertainty_ns=0),),
    )
    with TraceWriter(path, header) as w:
        w.event(session, None, t0, "probe", "session", "session.connected")
        for i, t in enumerate(turns):
            w.event(session, i, t.start_ns, "probe", "turn", "turn.start", {"warmup": False})
            w.event(session, i, t.speech_end_ns, "probe", "input", "input.speech_end")
            w.event(session, i, t.speech_end_sent_ns, "probe", "input", "input.speech_end_sent")
            attrs: dict[str, object] = {"ok": t.audible_ns is not None, "warmup": False}
            if t.first_byte_ns is not None:
                w.event(session, i, t.first_byte_ns, "probe", "reply", "reply.first_byte")
            if t.audible_ns is not None:
                w.event(session, i, t.audible_ns, "probe", "reply", "reply.audible")
                attrs["voice_to_voice_ns"] = t.audible_ns - t.speech_end_ns
            end = max(x for x in (t.audible_ns, t.first_byte_ns, t.speech_end_sent_ns) if x)
            w.event(session, i, end + 1_000_000_000, "probe", "turn", "turn.end", attrs)
            w.commit()
    return path
