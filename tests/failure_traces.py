"""Traces with known failures for the failure-table tests of the report and the gate:
written with the real TraceWriter, each failed turn's turn.end as the probe writes it
(``failure``, ``informative_voice_to_voice_ns``) or as an older trace has it (a reason
only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from voiceaudit.analysis.synthetic import TurnSpec, schedule, synthetic_header, turn_events
from voiceaudit.trace_io import TraceWriter

OK = TurnSpec()
CUT = "target closed the connection mid-reply (12 of 25 chunks)"


def failed(
    reason: str, kind: str | None = None, *, heard: bool = False, **kw: Any
) -> tuple[TurnSpec, dict[str, Any]]:
    """A failed turn: its spec and what its turn.end says (``failure`` as the probe now
    writes it, when ``kind`` is given; without, an older trace's reason only).
    ``heard``: reply audio was heard before the fault, so the turn has a reply and its
    turn.end an ``informative_voice_to_voice_ns``."""
    end: dict[str, Any] = {"ok": False, "reason": reason}
    if kind is not None:
        end["failure"] = kind
    if heard:
        return OK.with_(**kw), {**end, "heard": True}
    return OK.with_(ok=False, reason=reason, **kw), end


Turn = TurnSpec | tuple[TurnSpec, dict[str, Any]]


def write(
    path: Path,
    turns: list[Turn],
    *,
    sessions: int = 1,
    unfinished: int = 0,
    formats: dict[str, dict[str, Any]] | None = None,
    run_id: str = "failures",
    drop_audible: set[int] | None = None,
) -> Path:
    """A trace of ``turns`` (round-robin over sessions); ``unfinished`` more turns in s0
    have no turn.end; ``formats``: session -> session.audio_format attrs (written twice,
    the first an older value the report must not take)."""
    specs = [t if isinstance(t, TurnSpec) else t[0] for t in turns]
    extras = [{} if isinstance(t, TurnSpec) else t[1] for t in turns]
    path.parent.mkdir(parents=True, exist_ok=True)
    w = TraceWriter(path, synthetic_header(run_id))
    for k in range(sessions):
        w.event(f"s{k}", None, 10**12 - 10**9, "probe", "session", "session.connect_start")
        w.event(f"s{k}", None, 10**12 - 10**8, "probe", "session", "session.connected")
        if formats and f"s{k}" in formats:
            old = {"input": {"encoding": "pcm16", "rate": 24000}, "source": "default"}
            old["output"] = old["input"]
            w.event(
                f"s{k}", None, 10**12 - 10**7, "pipeline", "session", "session.audio_format", old
            )
            w.event(
                f"s{k}", None, 10**12 - 10**6, "pipeline", "session", "session.audio_format",
                formats[f"s{k}"],
            )  # fmt: skip
    last = 0
    for i, (spec, session, turn, t0) in enumerate(schedule(specs, sessions=sessions)):
        for ev in turn_events(spec, session, turn, t0):
            if ev.name == "turn.end" and extras[i]:
                attrs = {**ev.attrs, **extras[i]}
                v2v = attrs.pop("voice_to_voice_ns", None)
                if attrs.pop("heard", False):
                    attrs["informative_voice_to_voice_ns"] = v2v
                ev = replace(ev, attrs=attrs)
            if ev.name == "reply.audible" and drop_audible and i in drop_audible:
                continue
            w.write(ev)
            last = max(last, ev.t_ns)
        w.commit()
    for j in range(unfinished):
        t0 = last + 10**10 * (j + 1)
        for ev in turn_events(OK, "s0", 1000 + j, t0):
            if ev.name != "turn.end":
                w.write(ev)
        w.commit()
    w.close("complete")
    return path
