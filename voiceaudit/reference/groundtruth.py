"""The ground-truth file: what the reference pipeline injected and when each stage happened.

JSON Lines. The first line is a header (schema ``voiceaudit.groundtruth/1``, server
configuration, injections, clock); then one ``turn`` record per finished turn (or HTTP
request), written and flushed as soon as the turn ends. Times are integer nanoseconds of
``time.monotonic_ns()`` in the server process — the same clock the probe reads on this
host. A mark that did not happen is ``null``. See docs/reference-pipeline.md.

Phone carriers (``/twilio``, ``/telnyx``, ``/plivo``, ``/exotel``, ``/vonage``): a turn
record also carries ``carrier`` (what the caller heard through the carrier's buffer), and
the bot's greeting is a ``{"record": "greeting", ...}`` line of its own.

Turn-taking: a turn whose reply the caller talked over carries ``barge_in`` (when the
VAD heard the caller, what reply audio still went out after that, whether the reply was
cut), ``cancel`` (a client's ``response.cancel``) and ``truncate`` (a client's
``conversation.item.truncate``). A truncate that arrives after its turn was written is
appended as its own ``{"record": "truncate", "session_id", "turn", ...}`` line (the file
stays append-only); :func:`turn_records` folds those into their turns.
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

#: The ground-truth file's schema (``voiceaudit.reference.GROUND_TRUTH_SCHEMA``).
SCHEMA = "voiceaudit.groundtruth/1"

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
    #: Reply audio written, in samples at ``output_rate`` (exact; ``reply_audio_ns`` rounds).
    reply_audio_samples: int = 0
    #: The reply stopped before all its audio went out (barge-in, cancel, the next turn).
    reply_cut: bool = False
    #: The caller spoke during this turn's reply (see :meth:`barge_in_detected`).
    barge_in: dict[str, Any] | None = None
    #: A client's ``response.cancel`` for this turn's reply: ``t_ns``, ``event_id``.
    cancel: dict[str, Any] | None = None
    #: A client's ``conversation.item.truncate`` of this turn's reply item.
    truncate: dict[str, Any] | None = None
    status: str = "in_progress"
    error: str | None = None
    #: Carrier paths (``/twilio`` …): what the caller heard through the carrier's buffer
    #: (voiceaudit.reference.carrier); written only when set.
    carrier: dict[str, Any] | None = None
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

    def barge_in_detected(
        self,
        t_ns: int,
        *,
        turn: int | None,
        speech_start_ms: int | None,
        delay_ns: int | None,
        sent_samples: int | None = None,
    ) -> dict[str, Any]:
        """The caller's speech was detected (server clock ``t_ns``) while this turn's reply
        was being produced or sent. ``delay_ns`` is how long reply audio may still go out
        (``None``: barge-in is off, the reply is not stopped). The first detection wins;
        the audio fields are settled by :meth:`settle_barge_in` when the reply ends."""
        if self.barge_in is None:
            self.barge_in = {
                "detected_ns": t_ns,
                "by_turn": turn,
                "speech_start_ms": speech_start_ms,
                "delay_ns": delay_ns,
                "stop_at_ns": None if delay_ns is None else t_ns + delay_ns,
                "stopped_ns": None,
                "last_audio_sent_ns": None,
                "audio_after_samples": 0,
                "audio_after_ns": 0,
                "scheduled_after_samples": 0,
                "scheduled_after_ns": 0,
                "messages_after": 0,
                "audio_before_samples": self.reply_audio_samples
                if sent_samples is None
                else sent_samples,
                "cut": False,
            }
        return self.barge_in

    def settle_barge_in(self, *, stopped_ns: int | None = None) -> None:
        """Fill in the barge-in's audio fields from what was sent (call when the reply has
        ended; idempotent)."""
        b = self.barge_in
        if b is None:
            return
        t = int(b["detected_ns"])
        after = [s for s in self.audio_sent_ns if s > t]
        b["messages_after"] = len(after)
        b["last_audio_sent_ns"] = after[-1] if after else None
        before = int(b["audio_before_samples"])
        b["audio_after_samples"] = max(0, self.reply_audio_samples - before)
        if self.output_rate:
            b["audio_after_ns"] = round(b["audio_after_samples"] * 1e9 / self.output_rate)
            b["scheduled_after_ns"] = round(b["scheduled_after_samples"] * 1e9 / self.output_rate)
        b["cut"] = self.reply_cut
        if b["stopped_ns"] is None:
            b["stopped_ns"] = stopped_ns if stopped_ns is not None else now_ns()

    def to_dict(self) -> dict[str, Any]:
        d = self._to_dict()
        if self.carrier is not None:
            d["carrier"] = dict(self.carrier)
        return d

    def _to_dict(self) -> dict[str, Any]:
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
                "reply_audio_samples": self.reply_audio_samples,
            },
            "reply_cut": self.reply_cut,
            "barge_in": None if self.barge_in is None else dict(self.barge_in),
            "cancel": None if self.cancel is None else dict(self.cancel),
            "truncate": None if self.truncate is None else dict(self.truncate),
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
        #: records that are not turns (``greeting``), in the order written
        self.other_records: list[dict[str, Any]] = []
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

    def write_record(self, obj: dict[str, Any]) -> None:
        """Append a record of another kind (``greeting``) to the file; in memory it goes
        to :attr:`other_records`, not to the turns."""
        with self._lock:
            self.other_records.append(obj)
            self._write(obj)

    def write_truncate(self, record: TurnRecord) -> None:
        """``record.truncate`` arrived after ``record`` was written: append it as its own
        line and update the in-memory turn."""
        if record.truncate is None:
            return
        line = {
            "record": "truncate",
            "session_id": record.session_id,
            "turn": record.turn,
            **record.truncate,
        }
        with self._lock:
            for d in reversed(self.records):
                if d.get("session_id") == record.session_id and d.get("turn") == record.turn:
                    d["truncate"] = dict(record.truncate)
                    break
            self._write(line)

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


def turn_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``turn`` records of a ground-truth file (as :func:`read_ground_truth` returns
    it), each with any later ``truncate`` record folded into its ``truncate`` field."""
    turns = [dict(r) for r in records if r.get("record") == "turn"]
    by_key = {(t.get("session_id"), t.get("turn")): t for t in turns}
    for r in records:
        if r.get("record") == "truncate":
            t = by_key.get((r.get("session_id"), r.get("turn")))
            if t is not None:
                t["truncate"] = {
                    k: v for k, v in r.items() if k not in ("record", "session_id", "turn")
                }
    return turns
