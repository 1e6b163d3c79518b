"""The ground-truth file: what the reference pipeline injected and when each stage happened.

JSON Lines. The first line is a header (schema ``voiceaudit.groundtruth/1``, server
configuration, injections, clock); then one ``turn`` record per finished turn (or HTTP
request), written and flushed as soon as the turn ends. Times are integer nanoseconds of
``time.monotonic_ns()`` in the server process — the same clock the probe reads on this
host. A mark that did not happen is ``null``. See docs/reference-pipeline.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from voiceaudit.clock import MonotonicClock, take_anchor
from voiceaudit.reference import GROUND_TRUTH_SCHEMA as SCHEMA

#: Stage marks in pipeline order (the keys of a turn record's ``marks``).
MARKS = (
    "speech_started",
    "speech_end_received",
    "vad_stop",
    "asr_done",
    "transcript_final",
    "llm_request",
    "llm_first_token",
    "llm_done",
    "tts_request",
    "tts_first_audio",
    "first_audio_sent",
    "last_audio_sent",
)


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass
class TurnRecord:
    """One turn's truth, filled in as the turn runs and written when it ends."""

    session_id: str
    turn: int
    protocol: str
    injections: dict[str, Any]
    stage: str | None = None
    client_turn: str | None = None
    marks: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(MARKS))
    #: Session audio time (ms of audio received) of the VAD's decisions.
    audio_start_ms: int | None = None
    speech_start_ms: int | None = None
    speech_end_ms: int | None = None
    audio_end_ms: int | None = None
    input_rate: int | None = None
    output_rate: int | None = None
    transcript: str | None = None
    reply_text: str | None = None
    tts_texts: list[str] = field(default_factory=list)
    injected: dict[str, Any] = field(default_factory=dict)
    asr: dict[str, Any] = field(default_factory=dict)
    reply_audio_ns: int = 0
    audio_messages: int = 0
    #: When each reply audio message was handed to the socket.
    audio_sent_ns: list[int] = field(default_factory=list)
    status: str = "in_progress"
    error: str | None = None
    #: stages already announced to the client (voiceaudit.reference.stages); not written
    announced: set[str] = field(default_factory=set)

    def mark(self, name: str, t_ns: int | None = None, *, overwrite: bool = False) -> int:
        """Record stage ``name`` at ``t_ns`` (now by default); first occurrence wins."""
        if name not in self.marks:
            raise KeyError(name)
        t = now_ns() if t_ns is None else t_ns
        if overwrite or self.marks[name] is None:
            self.marks[name] = t
        value = self.marks[name]
        assert value is not None
        return value

    def add_injected(self, key: str, ns: int) -> None:
        self.injected[key] = int(self.injected.get(key, 0)) + int(ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": "turn",
            "session_id": self.session_id,
            "turn": self.turn,
            "protocol": self.protocol,
            "stage": self.stage,
            "client_turn": self.client_turn,
            "status": self.status,
            "error": self.error,
            "marks": dict(self.marks),
            "audio": {
                "input_rate": self.input_rate,
                "output_rate": self.output_rate,
                "audio_start_ms": self.audio_start_ms,
                "speech_start_ms": self.speech_start_ms,
                "speech_end_ms": self.speech_end_ms,
                "audio_end_ms": self.audio_end_ms,
                "reply_audio_ns": self.reply_audio_ns,
                "reply_audio_messages": self.audio_messages,
            },
            "transcript": self.transcript,
            "reply_text": self.reply_text,
            "tts_texts": list(self.tts_texts),
            "injections": self.injections,
            "injected": dict(self.injected),
            "asr": dict(self.asr),
            "audio_sent_ns": list(self.audio_sent_ns),
        }


class GroundTruth:
    """Collects turn records in memory and, given a path, appends them to a JSONL file."""

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        clock = MonotonicClock()
        self.header: dict[str, Any] = {
            "record": "header",
            "schema": SCHEMA,
            "pid": os.getpid(),
            "clock": {
                "name": "monotonic",
                "source": "time.monotonic_ns",
                "resolution_ns": clock.resolution_ns(),
                "anchor": take_anchor(clock).to_dict(),
            },
            **header,
        }
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", encoding="utf-8")
            self._write(self.header)

    def _write(self, obj: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._fh.flush()

    def write_turn(self, record: TurnRecord) -> None:
        d = record.to_dict()
        with self._lock:
            self.records.append(d)
            self._write(d)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._write(
                    {
                        "record": "footer",
                        "turns": len(self.records),
                        "anchor": take_anchor(MonotonicClock()).to_dict(),
                    }
                )
                self._fh.close()
                self._fh = None


def read_ground_truth(path: Path) -> list[dict[str, Any]]:
    """Every record of a ground-truth file (header, turns, footer), tolerating a torn tail."""
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                break  # a crash mid-write leaves a partial last line
            if isinstance(obj, dict):
                out.append(obj)
    return out
