"""Chrome trace-event JSON (opens in https://ui.perfetto.dev and ``chrome://tracing``).

One process per trace; per session a group of thread tracks:

- ``<session> turns``: the session, each turn, its voice-to-voice interval and, nested in
  it, the latency-ledger segments (they sum exactly to voice-to-voice);
- ``<session> input``: each utterance as sent, with the speech part nested;
- ``<session> reply``: the reply audio from first byte to the end of playout, with the
  playout nested and underruns as instants;
- ``<session> marks``: every probe and pipeline mark as an instant;
- ``<session> <span name>``: spans a source reported (imported framework telemetry);
- counters: reply audio buffered ahead of playout (ms) per session, and the reply's
  level where the trace has it (``reply.chunk`` ``peak``) or the saved reply audio is
  next to the trace.

Complete events (``ph: "X"``) on one thread track must nest; slices that would overlap
without nesting (a reply still playing when the next turn starts) go to an extra lane.
Times are microseconds (with ns precision) from the first event of the trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voiceaudit.exports.common import BULK, SessionView, TurnView, scalar_attrs, sessions_of
from voiceaudit.trace_io import Trace

PID = 1


@dataclass
class _Slice:
    name: str
    start: int
    end: int
    cat: str
    args: dict[str, Any] = field(default_factory=dict)


def _layout(slices: list[_Slice]) -> list[list[_Slice]]:
    """Lanes in which every pair of slices is disjoint or nested."""
    lanes: list[tuple[list[_Slice], list[_Slice]]] = []  # (slices, open stack)
    # Parents before children; at one start, zero-length slices first so they stay
    # siblings of what follows (a 0 ms ledger segment) rather than its children.
    for s in sorted(slices, key=lambda x: (x.start, x.end != x.start, -x.end)):
        for placed, stack in lanes:
            while stack and stack[-1].end <= s.start:
                stack.pop()
            if not stack or s.end <= stack[-1].end:
                placed.append(s)
                stack.append(s)
                break
        else:
            lanes.append(([s], [s]))
    return [placed for placed, _ in lanes]


class _Builder:
    def __init__(self, t0: int) -> None:
        self.t0 = t0
        self.events: list[dict[str, Any]] = []
        self.next_tid = 1

    def us(self, ns: int) -> float:
        return round((ns - self.t0) / 1000, 3)

    def thread(self, name: str) -> int:
        tid = self.next_tid
        self.next_tid += 1
        self.events.append(
            {"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )
        self.events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": tid,
                "name": "thread_sort_index",
                "args": {"sort_index": tid},
            }
        )
        return tid

    def track(self, name: str, slices: list[_Slice]) -> None:
        # An interval that ends before it starts (a reply heard before the speech it
        # answers ended) has no slice; its numbers stay in the turn's args.
        slices = [s for s in slices if s.end >= s.start]
        for i, lane in enumerate(_layout(slices)):
            tid = self.thread(name if i == 0 else f"{name} ({i + 1})")
            for s in lane:
                self.events.append(
                    {
                        "ph": "X",
                        "pid": PID,
                        "tid": tid,
                        "name": s.name,
                        "cat": s.cat,
                        "ts": self.us(s.start),
                        "dur": round((s.end - s.start) / 1000, 3),
                        "args": s.args,
                    }
                )

    def instants(self, tid: int, items: list[tuple[str, int, str, dict[str, Any]]]) -> None:
        for name, t, cat, args in items:
            self.events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "pid": PID,
                    "tid": tid,
                    "name": name,
                    "cat": cat,
                    "ts": self.us(t),
                    "args": args,
                }
            )

    def counter(self, name: str, points: list[tuple[int, dict[str, float]]]) -> None:
        for t, values in points:
            self.events.append(
                {"ph": "C", "pid": PID, "name": name, "ts": self.us(t), "args": values}
            )


def _turn_label(tv: TurnView) -> str:
    label = f"turn {tv.turn}"
    if tv.warmup:
        label += " (warm-up)"
    if tv.ok is False:
        label += " FAILED"
    return label


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _turn_slices(sv: SessionView) -> list[_Slice]:
    lo, hi = sv.extent
    out = [_Slice(f"session {sv.session}", lo, hi, "session", {"session": sv.session})]
    for tv in sorted(sv.turns.values(), key=lambda t: t.turn):
        a, b = tv.extent
        out.append(
            _Slice(
                _turn_label(tv),
                a,
                b,
                "turn",
                {
                    "session": tv.session,
                    "turn": tv.turn,
                    "ok": tv.ok,
                    "warmup": tv.warmup,
                    "audio": tv.audio,
                    "voice_to_voice_ms": _ms(tv.voice_to_voice_ns),
                    **({"reason": tv.reason} if tv.reason else {}),
                },
            )
        )
        if tv.speech_end_ns is not None and tv.audible_ns is not None and tv.ok:
            out.append(
                _Slice(
                    "voice-to-voice",
                    tv.speech_end_ns,
                    tv.audible_ns,
                    "ledger",
                    {"ms": _ms(tv.audible_ns - tv.speech_end_ns)},
                )
            )
        for seg in tv.segments:
            args: dict[str, Any] = {
                "ms": _ms(seg.end_ns - seg.start_ns),
                "from": seg.start_mark,
                "to": seg.end_mark,
            }
            if seg.covers:
                args["covers"] = list(seg.covers)
            out.append(_Slice(seg.name, seg.start_ns, seg.end_ns, "ledger", args))
    return out


def _input_slices(sv: SessionView) -> list[_Slice]:
    out = []
    for tv in sv.turns.values():
        start = tv.first("turn.start")
        done = tv.first("input.done")
        if start is None:
            continue
        end = done.t_ns if done is not None else (tv.speech_end_ns or start.t_ns)
        out.append(_Slice(f"utterance {tv.audio or tv.turn}", start.t_ns, end, "input", {}))
        rate = start.attrs.get("rate")
        speed = start.attrs.get("speed", 1.0)
        first = start.attrs.get("speech_start_sample")
        if (
            tv.speech_end_ns is not None
            and isinstance(rate, int)
            and rate > 0
            and isinstance(first, int)
            and isinstance(speed, int | float)
            and speed > 0
        ):
            s0 = start.t_ns + round(first * 1e9 / (rate * speed))
            if s0 <= tv.speech_end_ns <= end:
                out.append(_Slice("speech", s0, tv.speech_end_ns, "input", {}))
    return out


def _reply(sv: SessionView, trace_dir: Path | None) -> tuple[list[_Slice], list[Any], list[Any]]:
    slices: list[_Slice] = []
    buffer_pts: list[tuple[int, dict[str, float]]] = []
    level_pts: list[tuple[int, dict[str, float]]] = []
    for tv in sorted(sv.turns.values(), key=lambda t: t.turn):
        fb = tv.first("reply.first_byte")
        po = tv.first("reply.playout_start")
        end = tv.first("reply.end")
        if fb is None or end is None:
            continue
        slices.append(_Slice("reply audio", fb.t_ns, max(fb.t_ns, end.t_ns), "reply", {}))
        if po is not None and fb.t_ns <= po.t_ns <= end.t_ns:
            slices.append(
                _Slice("playout", po.t_ns, end.t_ns, "reply", {"model": po.attrs.get("model")})
            )
        chunks = [e for e in tv.events if e.name == "reply.chunk"]
        if po is not None and chunks:
            buffer_pts.extend(_buffer_curve(chunks, po.t_ns, end.t_ns))
            peaks = [(c.t_ns, c.attrs.get("peak")) for c in chunks]
            if all(isinstance(p, int | float) for _, p in peaks):
                for t, p in peaks:
                    assert isinstance(p, int | float)
                    level_pts.append((t, {"peak": float(p)}))
            elif trace_dir is not None:
                level_pts.extend(_wav_levels(trace_dir, tv, po.t_ns))
    return slices, buffer_pts, level_pts


def _buffer_curve(chunks: list[Any], playout: int, end: int) -> list[tuple[int, dict[str, float]]]:
    """Reply audio received but not yet played, in ms, at each arrival (and at the end)."""
    out = []
    received = 0.0
    for c in sorted(chunks, key=lambda e: e.t_ns):
        n, rate = c.attrs.get("samples"), c.attrs.get("rate")
        if not (isinstance(n, int) and isinstance(rate, int) and rate > 0):
            continue
        received += n / rate * 1000
        played = max(0.0, (c.t_ns - playout) / 1e6)
        out.append((c.t_ns, {"ms": round(max(0.0, received - played), 3)}))
    out.append((end, {"ms": 0.0}))
    return out


def _wav_levels(trace_dir: Path, tv: TurnView, playout: int) -> list[tuple[int, dict[str, float]]]:
    path = trace_dir / "reply_audio" / f"{tv.session}-t{tv.turn}.wav"
    if not path.is_file():
        return []
    import numpy as np
    import soundfile

    try:
        x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError:
        return []
    mono = x.mean(axis=1)
    win = max(1, rate // 50)  # 20 ms
    out = []
    for i in range(0, len(mono) - win + 1, win):
        rms = float(np.sqrt(np.mean(mono[i : i + win] ** 2)))
        db = 20 * math.log10(rms) if rms > 0 else -120.0
        out.append((playout + round(i * 1e9 / rate), {"dBFS": round(max(db, -120.0), 2)}))
    return out


def _marks(tv_events: list[Any]) -> list[tuple[str, int, str, dict[str, Any]]]:
    out = []
    for e in tv_events:
        if e.name in BULK:
            continue
        args = {"source": e.source, "stage": e.stage, **scalar_attrs(e.attrs)}
        out.append((e.name, e.t_ns, e.source, args))
    return out


def to_trace_events(trace: Trace) -> dict[str, Any]:
    """The trace as a Chrome trace-event JSON object (``{"traceEvents": [...]}``)."""
    sessions = sessions_of(trace)
    times = [e.t_ns for e in trace.events] + [s.start_ns for s in trace.spans]
    t0 = min(times) if times else 0
    b = _Builder(t0)
    h = trace.header
    b.events.append(
        {
            "ph": "M",
            "pid": PID,
            "name": "process_name",
            "args": {"name": f"voiceaudit {h.run_id} ({h.target.get('protocol', '?')})"},
        }
    )
    trace_dir = Path(trace.path).parent if trace.path else None
    for sv in sessions:
        s = sv.session
        b.track(f"{s} turns", _turn_slices(sv))
        b.track(f"{s} input", _input_slices(sv))
        reply, buffer_pts, level_pts = _reply(sv, trace_dir)
        b.track(f"{s} reply", reply)
        tid = b.thread(f"{s} marks")
        items = _marks(sv.events)
        for tv in sv.turns.values():
            items += _marks(tv.events)
            for ev in tv.events:
                if ev.name == "reply.underrun":
                    gap = ev.attrs.get("gap_ns")
                    items.append(
                        (
                            "underrun",
                            ev.t_ns,
                            "reply",
                            {"gap_ms": _ms(gap) if isinstance(gap, int) else None},
                        )
                    )
        b.instants(tid, sorted(items, key=lambda x: x[1]))
        by_name: dict[str, list[_Slice]] = {}
        spans = list(sv.spans) + [sp for tv in sv.turns.values() for sp in tv.spans]
        for sp in spans:
            args = {
                "source": sp.source,
                "stage": sp.stage,
                "turn": sp.turn,
                **scalar_attrs(sp.attrs),
            }
            by_name.setdefault(sp.name, []).append(
                _Slice(sp.name, sp.start_ns, sp.end_ns, sp.source, args)
            )
        for name in sorted(by_name):
            b.track(f"{s} {name}", by_name[name])
        if buffer_pts:
            b.counter(f"{s} reply buffered (ms)", buffer_pts)
        if level_pts:
            b.counter(f"{s} reply level", level_pts)
    return {
        "traceEvents": b.events,
        "displayTimeUnit": "ms",
        "metadata": {
            "voiceaudit.run_id": h.run_id,
            "voiceaudit.schema": h.schema,
            "voiceaudit.target": h.target.get("url"),
            "voiceaudit.t0_monotonic_ns": t0,
            "voiceaudit.t0_wall_ns": trace.clock_map().mono_to_wall(t0),
        },
    }
