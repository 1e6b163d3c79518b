"""The target's own figures, in the trace: "the framework says / the caller heard" without
an import.

Some speech-to-speech APIs report their own latency inside the protocol (Deepgram's Voice
Agent API: ``AgentStartedSpeaking`` ``total_latency``, ``tts_latency``, ``ttt_latency``;
its ``LatencyReport``). Their targets keep those figures as pipeline marks whose attributes
end in ``_latency_ns`` (docs/trace-format.md). This module turns them into the rows of the
"framework vs heard" table (:class:`~voiceaudit.imports.compare.ComparisonRow`), as the
telemetry import does for a framework's own telemetry:

- ``total_latency`` is the API's whole "user stopped → agent speaking" figure: it is set
  beside voice-to-voice (two durations: no clock alignment). What it leaves out (the
  API's end-of-turn wait, the network, the playout) is the difference.
- the other figures (``tts_latency``, ``ttt_latency``, ``stt_latency`` …) time stages the
  caller cannot see from outside: they are shown as reported, with nothing measured
  beside them.

The first value of each figure per turn is shown (a reply with several messages has
several), with a note.
"""

from __future__ import annotations

from voiceaudit.imports.align import heard_turns
from voiceaudit.imports.compare import ComparisonRow, measured_voice_to_voice
from voiceaudit.trace_io import Trace

#: figures that claim to be the whole "user stopped -> agent heard" delay
HEADLINE = {"total_latency"}
_SUFFIX = "_latency_ns"


def inline_figures(trace: Trace) -> list[ComparisonRow]:
    """The "framework vs heard" rows of the figures the target reported in its protocol."""
    framework = str(trace.header.target.get("protocol") or "target")
    v2v = measured_voice_to_voice(trace)
    warm = {(h.session, h.turn): h.warmup for h in heard_turns(trace)}
    firsts: dict[tuple[str, int, str], tuple[int, int, str]] = {}
    counts: dict[tuple[str, int, str], int] = {}
    for ev in trace.events:
        if ev.source != "pipeline" or ev.turn is None or not ev.attrs:
            continue
        for key, value in ev.attrs.items():
            if not key.endswith(_SUFFIX) or type(value) is not int or value < 0:
                continue
            metric = key[: -len("_ns")]
            k = (ev.session, ev.turn, metric)
            counts[k] = counts.get(k, 0) + 1
            raw = str(ev.attrs.get("raw") or ev.name)
            if k not in firsts or ev.t_ns < firsts[k][0]:
                firsts[k] = (ev.t_ns, value, f"{metric} on {raw}")
    rows: list[ComparisonRow] = []
    for (session, turn, metric), (_, value, label) in firsts.items():
        headline = metric in HEADLINE
        measured = v2v.get((session, turn)) if headline else None
        n = counts[(session, turn, metric)]
        rows.append(
            ComparisonRow(
                session,
                turn,
                framework,
                metric,
                label,
                value,
                measured,
                "voice-to-voice (speech end → first audible reply)" if headline else None,
                False,
                f"{n} values in this turn; the first is shown" if n > 1 else None,
                warm.get((session, turn), False),
            )
        )
    order = {m: 0 for m in HEADLINE}
    rows.sort(key=lambda r: (r.session, r.turn, order.get(r.metric, 1), r.metric))
    return rows
