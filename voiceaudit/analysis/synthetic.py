"""Synthetic traces with known delays, for tests and benchmarks.

A :class:`TurnSpec` says how long each stage of a turn takes; :func:`turn_events` lays the
turn out on the clock with exactly those durations, using the documented event
vocabulary (docs/trace-format.md) the way the probe and its targets write it. Analysis
tests build traces from specs and check that the report recovers every duration; the
report benchmark writes 100,000 turns of them.

Nothing here is measured: a synthetic trace is labelled as such in its header
(``target.protocol = "synthetic"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from voiceaudit import __version__
from voiceaudit.clock import Anchor
from voiceaudit.model import SCHEMA_NAME, SCHEMA_VERSION, Event, Header
from voiceaudit.pacing_stats import pacing_attrs
from voiceaudit.trace_io import TraceWriter

MS = 1_000_000


def _ns(ms: float) -> int:
    return round(ms * MS)


@dataclass(frozen=True)
class TurnSpec:
    """Stage durations of one synthetic turn, in ms; ``None`` leaves that mark out.

    Stage durations are between *server* times of consecutive marks; each pipeline mark
    reaches the probe ``notify_ms`` after it happened (its ``t_ns``), and carries its
    server time in ``attrs.server_t_ns`` when ``server_times`` is true.
    """

    framing_ms: float | None = 12.0
    endpointing_ms: float | None = 300.0
    transcription_ms: float | None = 80.0
    handoff_ms: float | None = 5.0
    first_token_ms: float | None = 150.0
    aggregation_ms: float | None = 20.0
    synthesis_ms: float | None = 60.0
    transport_ms: float | None = 1.0
    #: write ``audio.first_sent`` this long after tts.first_byte (inside transport)
    send_wait_ms: float | None = None
    playout_ms: float | None = 0.0
    onset_ms: float = 10.0
    #: first token to llm.done; synthesis first byte to tts.done
    llm_total_ms: float = 400.0
    tts_total_ms: float = 300.0
    #: characters of the whole model result and of the first synthesis request
    llm_chars: int = 120
    tts_request_chars: int = 40
    notify_ms: float = 0.5
    server_times: bool = True
    #: input audio: length and where speech ends (s), sample rate
    audio_s: float = 3.0
    speech_end_s: float = 2.5
    rate: int = 16000
    frame_ms: int = 20
    #: write one input.frame per frame
    frames: bool = False
    #: reply audio: length, chunking, delivery speed (x real time), wire bytes per byte
    reply_ms: float = 2000.0
    chunk_ms: float = 40.0
    first_chunk_ms: float | None = None
    delivery_x: float = 4.0
    wire_factor: float = 1.0
    reply_rate: int = 24000
    #: gaps heard in the reply (ms), placed after the first audible sample
    underrun_gaps_ms: tuple[float, ...] = ()
    partials: int = 3
    #: a connection set up inside the turn, starting this long after speech end (ms)
    connect_at_ms: float | None = None
    connect_ms: float = 0.0
    ok: bool = True
    reason: str | None = None
    warmup: bool = False
    #: speech-to-speech (Realtime-style) marks instead of cascade ones
    speech_to_speech: bool = False
    #: a late input transcript in a speech-to-speech turn, this long after reply.first_byte
    s2s_transcript_after_ms: float | None = 150.0
    text: str = "what is the weather like tomorrow"
    transcript: str | None = None
    audio: str = "synthetic.wav"
    #: extra (name, ms after speech end, attrs) pipeline marks, as arrival times
    extra_marks: tuple[tuple[str, float, dict[str, Any]], ...] = ()
    #: marks to drop from the output
    drop: frozenset[str] = field(default_factory=frozenset)

    def with_(self, **kw: Any) -> TurnSpec:
        return replace(self, **kw)


def synthetic_header(
    run_id: str = "synthetic",
    config: dict[str, Any] | None = None,
    *,
    version: int = SCHEMA_VERSION,
) -> Header:
    return Header(
        schema=f"{SCHEMA_NAME}/{version}",
        run_id=run_id,
        voiceaudit_version=__version__,
        target={"protocol": "synthetic", "url": "", "description": "synthetic trace"},
        host={"hostname": "synthetic", "platform": "", "python": "", "cpu_count": 1},
        clock={"name": "monotonic", "resolution_ns": 1},
        anchors=(Anchor(wall_ns=1_700_000_000 * 10**9, mono_ns=0, uncertainty_ns=0),),
        config=config or {"frame_ms": 20, "warmup": 0},
    )


@dataclass(frozen=True)
class Laid:
    """Where a spec's marks fell on the clock (server times), for tests to check against."""

    t0: int
    speech_end: int
    times: dict[str, int]


def lay_out(spec: TurnSpec, t0: int) -> Laid:
    """The server time of every chain mark of ``spec`` when the turn starts at ``t0``."""
    speech_end = t0 + _ns(spec.speech_end_s * 1000)
    t = speech_end
    times: dict[str, int] = {"input.speech_end": speech_end}
    chain: list[tuple[str, float | None]] = [
        ("input.speech_end_sent", spec.framing_ms),
        ("endpoint", spec.endpointing_ms),
    ]
    if spec.speech_to_speech:
        chain += [
            ("response.created", spec.handoff_ms),
            ("llm.first_token", spec.first_token_ms),
            ("reply.first_byte", spec.transport_ms),
        ]
    else:
        chain += [
            ("transcript.final", spec.transcription_ms),
            ("llm.request", spec.handoff_ms),
            ("llm.first_token", spec.first_token_ms),
            ("tts.request", spec.aggregation_ms),
            ("tts.first_byte", spec.synthesis_ms),
            ("reply.first_byte", spec.transport_ms),
        ]
    chain += [("reply.playout_start", spec.playout_ms)]
    for name, d in chain:
        if d is None:
            continue
        t += _ns(d)
        times[name] = t
    times["reply.audible"] = t + _ns(spec.onset_ms)
    return Laid(t0, speech_end, times)


_STAGE = {
    "endpoint": "endpointing",
    "speech_started": "endpointing",
    "committed": "endpointing",
    "transcript.partial": "transcription",
    "transcript.final": "transcription",
    "llm.request": "model",
    "llm.first_token": "model",
    "llm.done": "model",
    "response.created": "model",
    "response.done": "model",
    "tts.request": "synthesis",
    "tts.first_byte": "synthesis",
    "tts.done": "synthesis",
    "audio.first_sent": "transport",
}


def turn_events(
    spec: TurnSpec, session: str, turn: int, t0: int, *, batched: bool = True
) -> list[Event]:
    """The events of one turn, in the order a probe would write them.

    ``batched``: input frames and reply chunks as one ``input.frames`` and one
    ``reply.chunks`` event (trace schema version 2, what the probe writes); else one
    ``input.frame`` per frame and one ``reply.chunk`` per chunk (version 1).
    """
    lay = lay_out(spec, t0)
    times = lay.times
    evs: list[Event] = []

    def probe(name: str, stage: str, t: int, attrs: dict[str, Any] | None = None) -> None:
        if name not in spec.drop:
            evs.append(Event(session, turn, t, "probe", stage, name, attrs or {}))

    def mark(name: str, server_t: int, attrs: dict[str, Any] | None = None) -> None:
        if name in spec.drop:
            return
        a = dict(attrs or {})
        if spec.server_times:
            a["server_t_ns"] = server_t
        evs.append(
            Event(session, turn, server_t + _ns(spec.notify_ms), "pipeline", _STAGE[name], name, a)
        )

    rate = spec.rate
    n_samples = round(spec.audio_s * rate)
    end_sample = round(spec.speech_end_s * rate)
    probe(
        "turn.start",
        "turn",
        t0,
        {
            "audio": spec.audio,
            "audio_sha256": "0" * 64,
            "rate": rate,
            "n_samples": n_samples,
            "speech_start_sample": round(0.3 * rate),
            "speech_end_sample": end_sample,
            "warmup": spec.warmup,
            "speed": 1.0,
            "text": spec.text,
        },
    )
    speech_end = lay.speech_end
    probe("input.speech_end", "input", speech_end, {"sample": end_sample})
    frame = rate * spec.frame_ms // 1000
    if spec.frames:
        n_frames = n_samples // frame
        starts = [i * frame for i in range(n_frames)]
        ends = [a + frame for a in starts]
        scheds = [t0 + b * 1_000_000_000 // rate for b in ends]
        if batched and n_frames:
            first = scheds[0] + 50_000
            probe(
                "input.frames",
                "input",
                first,
                {
                    "dt_ns": [s + 50_000 - first for s in scheds],
                    "a": starts,
                    "b": ends,
                    "sched_dt_ns": [s - first for s in scheds],
                },
            )
        elif not batched:
            for i, (a, b, sched) in enumerate(zip(starts, ends, scheds, strict=True)):
                probe(
                    "input.frame",
                    "input",
                    sched + 50_000,
                    {"i": i, "a": a, "b": b, "sched_ns": sched},
                )
        if n_frames:
            # the probe's per-turn pacing summary, as `voiceaudit run` writes it (both forms)
            probe(
                "input.pacing",
                "input",
                scheds[-1] + 60_000,
                pacing_attrs([s + 50_000 for s in scheds], scheds),
            )
    if "input.speech_end_sent" in times:
        probe(
            "input.speech_end_sent",
            "input",
            times["input.speech_end_sent"],
            {"frame": end_sample // frame, "late_ns": 50_000},
        )
    mark("speech_started", t0 + _ns(350))
    for k in range(spec.partials):
        mark("transcript.partial", t0 + _ns(600 + 500 * k), {"text": "what is"})
    if "endpoint" in times:
        mark("endpoint", times["endpoint"], {"raw": "speech_stopped"})
        mark("committed", times["endpoint"] + _ns(0.2))
    ft = times.get("llm.first_token")
    if spec.speech_to_speech:
        if "response.created" in times:
            mark("response.created", times["response.created"])
        if ft is not None:
            mark("llm.first_token", ft)
        if spec.s2s_transcript_after_ms is not None and "reply.first_byte" in times:
            mark(
                "transcript.final",
                times["reply.first_byte"] + _ns(spec.s2s_transcript_after_ms),
                {"text": spec.transcript or spec.text},
            )
    else:
        if "transcript.final" in times:
            mark(
                "transcript.final",
                times["transcript.final"],
                {"text": spec.transcript or spec.text},
            )
        if "llm.request" in times:
            mark("llm.request", times["llm.request"])
        if ft is not None:
            mark("llm.first_token", ft)
            mark("llm.done", ft + _ns(spec.llm_total_ms), {"chars": spec.llm_chars})
        if "tts.request" in times:
            mark("tts.request", times["tts.request"], {"chars": spec.tts_request_chars})
        if "tts.first_byte" in times:
            mark("tts.first_byte", times["tts.first_byte"])
            mark("tts.done", times["tts.first_byte"] + _ns(spec.tts_total_ms))
            if spec.send_wait_ms is not None:
                mark("audio.first_sent", times["tts.first_byte"] + _ns(spec.send_wait_ms))
    for name, at_ms, attrs in spec.extra_marks:
        evs.append(
            Event(
                session,
                turn,
                speech_end + _ns(at_ms),
                "pipeline",
                _STAGE.get(name, "other"),
                name,
                attrs,
            )
        )
    if spec.connect_at_ms is not None:
        c0 = speech_end + _ns(spec.connect_at_ms)
        probe("session.connect_start", "session", c0, {"url": "ws://127.0.0.1:1/"})
        probe("session.connected", "session", c0 + _ns(spec.connect_ms))

    reply_end = None
    if spec.ok and "reply.first_byte" in times:
        first_byte = times["reply.first_byte"]
        r = spec.reply_rate
        total = round(spec.reply_ms * r / 1000)
        sizes: list[int] = []
        first = round((spec.first_chunk_ms or spec.chunk_ms) * r / 1000)
        left = total
        size = first
        while left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
            size = round(spec.chunk_ms * r / 1000)
        arrivals: list[int] = []
        t = first_byte
        for k, s in enumerate(sizes):
            if k:
                # a chunk leaves when the sender has produced it: its length at delivery_x
                t += round(s * 1_000_000_000 / r / spec.delivery_x)
            arrivals.append(t)
        if batched:
            if sizes:
                probe(
                    "reply.chunks",
                    "reply",
                    first_byte,
                    {
                        "dt_ns": [a - first_byte for a in arrivals],
                        "samples": sizes,
                        "bytes": [2 * s for s in sizes],
                        "wire_bytes": [round(2 * s * spec.wire_factor) for s in sizes],
                        "rate": r,
                    },
                )
        else:
            offset = 0
            for t, s in zip(arrivals, sizes, strict=True):
                nbytes = 2 * s
                probe(
                    "reply.chunk",
                    "reply",
                    t,
                    {
                        "bytes": nbytes,
                        "samples": s,
                        "offset": offset,
                        "rate": r,
                        "wire_bytes": round(nbytes * spec.wire_factor),
                    },
                )
                offset += s
        probe("reply.first_byte", "reply", first_byte)
        playout = times.get("reply.playout_start", first_byte)
        probe("reply.playout_start", "reply", playout, {"model": "immediate"})
        audible = times["reply.audible"]
        at = audible + _ns(100)
        for g in spec.underrun_gaps_ms:
            probe("reply.underrun", "reply", at, {"gap_ns": _ns(g), "chunk": 1})
            at += _ns(g) + _ns(100)
        reply_end = playout + _ns(spec.reply_ms) + sum(_ns(g) for g in spec.underrun_gaps_ms)
        probe(
            "reply.end",
            "reply",
            reply_end,
            {
                "samples": total,
                "underruns": len(spec.underrun_gaps_ms),
                "underrun_ns": sum(_ns(g) for g in spec.underrun_gaps_ms),
            },
        )
        probe(
            "reply.audible",
            "reply",
            audible,
            {"sample": round(spec.onset_ms * r / 1000), "onset_ms": spec.onset_ms},
        )
        if spec.speech_to_speech:
            mark("tts.done", first_byte + _ns(spec.reply_ms / spec.delivery_x))
            mark("response.done", first_byte + _ns(spec.reply_ms / spec.delivery_x) + _ns(1))
    end_t = (reply_end if reply_end is not None else speech_end + _ns(5000)) + _ns(1)
    end_attrs: dict[str, Any] = {"ok": spec.ok, "warmup": spec.warmup}
    if spec.ok:
        end_attrs["voice_to_voice_ns"] = times["reply.audible"] - speech_end
    else:
        end_attrs["reason"] = spec.reason or "timeout: no reply audio"
    probe("turn.end", "turn", end_t, end_attrs)
    return evs


def turn_duration_ns(spec: TurnSpec) -> int:
    """How long a turn of ``spec`` occupies the clock (start to turn.end), plus a gap."""
    lay = lay_out(spec, 0)
    last = max(lay.times.values()) + _ns(spec.reply_ms) + _ns(sum(spec.underrun_gaps_ms))
    return max(last, lay.speech_end + _ns(5000)) + _ns(500)


def schedule(
    specs: Iterable[TurnSpec], *, sessions: int = 1, start_ns: int = 10**12
) -> Iterator[tuple[TurnSpec, str, int, int]]:
    """(spec, session, turn, t0) for each spec, dealt round-robin over sessions."""
    clocks = [start_ns + k * _ns(7) for k in range(sessions)]
    counts = [0] * sessions
    for i, spec in enumerate(specs):
        k = i % sessions
        yield spec, f"s{k}", counts[k], clocks[k]
        counts[k] += 1
        clocks[k] += turn_duration_ns(spec)


def write_trace(
    path: str | os.PathLike[str],
    specs: Sequence[TurnSpec] | Iterable[TurnSpec],
    *,
    sessions: int = 1,
    run_id: str = "synthetic",
    close: bool = True,
    config: dict[str, Any] | None = None,
    version: int = SCHEMA_VERSION,
) -> Path:
    """Write a synthetic trace with :class:`~voiceaudit.trace_io.TraceWriter`.

    ``version`` 1 writes the per-chunk and per-frame events of trace schema version 1.
    """
    p = Path(path)
    w = TraceWriter(p, synthetic_header(run_id, config, version=version))
    for k in range(sessions):
        w.event(f"s{k}", None, 10**12 - 10**9 + k, "probe", "session", "session.connect_start")
        w.event(f"s{k}", None, 10**12 - 10**8 + k, "probe", "session", "session.connected")
    for spec, session, turn, t0 in schedule(specs, sessions=sessions):
        for ev in turn_events(spec, session, turn, t0, batched=version >= 2):
            w.write(ev)
        w.count("turns_ok" if spec.ok else "turns_failed")
        w.commit()
    if close:
        w.close("complete")
    return p


def write_trace_fast(
    path: str | os.PathLike[str],
    specs: Iterable[TurnSpec],
    *,
    sessions: int = 1,
    run_id: str = "synthetic",
    version: int = SCHEMA_VERSION,
) -> Path:
    """The same file :func:`write_trace` writes, without fsync per turn (for benchmarks)."""
    p = Path(path)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    counts = {"events": 0, "spans": 0}
    with p.open("x", encoding="utf-8", newline="\n") as f:
        f.write(dumps(synthetic_header(run_id, version=version).to_dict()) + "\n")
        for k in range(sessions):
            for t, name in (
                (10**12 - 10**9 + k, "session.connect_start"),
                (10**12 - 10**8 + k, "session.connected"),
            ):
                f.write(dumps(Event(f"s{k}", None, t, "probe", "session", name).to_dict()) + "\n")
                counts["events"] += 1
        buf: list[str] = []
        for spec, session, turn, t0 in schedule(specs, sessions=sessions):
            for ev in turn_events(spec, session, turn, t0, batched=version >= 2):
                buf.append(dumps(ev.to_dict()))
            counts["events"] += len(buf)
            key = "turns_ok" if spec.ok else "turns_failed"
            counts[key] = counts.get(key, 0) + 1
            f.write("\n".join(buf) + "\n")
            buf.clear()
        f.write(
            dumps({"type": "end", "reason": "complete", "counts": counts, "anchor": None}) + "\n"
        )
    return p
