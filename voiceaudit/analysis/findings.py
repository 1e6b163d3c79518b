"""Findings: named, costed hidden delays, one small detector each.

A detector looks at one turn (its observations and its ledger) and returns findings, each
with ``kind``, a cost in nanoseconds (the time it added to this turn, or for
``audio_underrun`` the silence it put into the reply) and the evidence it saw. Thresholds
are in :class:`FindingRules`; every detector and its cost is documented in
docs/report-format.md ("Findings").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from voiceaudit.analysis.ledger import AUDIBLE, SPEECH_END, Ledger
from voiceaudit.analysis.phone import Greeting, PhoneTurn, was_cleared
from voiceaudit.analysis.turns import PROBE, ReplyChunk, SessionObs, TurnObs
from voiceaudit.analysis.turntaking import SPLIT_LABELS, TurnTaking
from voiceaudit.model import Span

if TYPE_CHECKING:
    from voiceaudit.analysis.drift import DriftView

NS_PER_MS = 1_000_000


class Finding(NamedTuple):
    """One hidden delay in one turn."""

    kind: str
    ns: int
    evidence: dict[str, Any]


@dataclass(frozen=True)
class FindingRules:
    """Thresholds: a finding is reported only when its evidence reaches them."""

    #: silence before the first audible reply sample
    leading_silence_ms: float = 50.0
    #: synthesis start after the model's first token (a phrase-at-a-time handoff of a
    #: 50 tokens/s model waits about 40 ms; sentence aggregation 100-200 ms)
    aggregation_ms: float = 80.0
    #: a whole-result handoff is only called when the upstream result took this long
    #: from its first to its last piece (a shorter one has nothing to stream)
    whole_result_ms: float = 50.0
    #: model request to first token
    slow_first_token_ms: float = 400.0
    #: connection setup overlapping the turn
    connection_setup_ms: float = 1.0
    #: audio in the first reply chunk
    large_buffer_ms: float = 200.0
    #: a normal chunk, subtracted when estimating the time to fill a large one
    nominal_chunk_ms: float = 20.0
    #: total gaps heard in the reply
    underrun_ms: float = 10.0
    #: speech end (last speech frame sent) to the pipeline's endpoint; a 500 ms silence
    #: setting (a common default) measures 550-650 ms, more on a loaded server
    endpointing_wait_ms: float = 800.0
    #: wire bytes per audio byte
    encoding_overhead_ratio: float = 1.10
    #: link rate at which byte overhead is costed (bits per second)
    link_bits_per_s: float = 2_000_000.0
    # Turn-taking (scenario runs); see TURN_TAKING_RULES.
    #: barge-in stop latency: the caller's speech onset to the last reply sample heard
    barge_in_stop_ms: float = 300.0
    #: reply audio the client still played from its buffer after the last chunk arrived
    barge_in_client_buffer_ms: float = 100.0
    #: |heard - truncated at| of a Realtime conversation.item.truncate
    truncation_mismatch_ms: float = 100.0
    # Phone paths and agents that speak first; see PHONE_RULES.
    #: a barge-in's onset to the bot's ``clear`` (a bot that clears on the caller's
    #: speech start, after a 200-300 ms VAD, stays well under it)
    late_clear_ms: float = 500.0
    #: reply audio sent after a mark and heard after its echo (one 20 ms frame)
    mark_early_ms: float = 20.0
    #: the call's media start to the first audible sample of the greeting
    slow_greeting_ms: float = 2000.0

    def to_dict(self, *, turn_taking: bool = False, phone: bool = False) -> dict[str, float]:
        """The thresholds by name; the turn-taking ones only with ``turn_taking`` (a
        report shows them when its traces have turn-taking events, so the report of a
        plain run stays as it was), the phone ones only with ``phone`` (likewise)."""
        return {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if (turn_taking or k not in TURN_TAKING_RULES) and (phone or k not in PHONE_RULES)
        }


#: The thresholds of the turn-taking detectors.
TURN_TAKING_RULES: frozenset[str] = frozenset(
    {"barge_in_stop_ms", "barge_in_client_buffer_ms", "truncation_mismatch_ms"}
)


#: Every finding kind, in the order reports list them when costs tie, with a one-line
#: description.
KINDS: dict[str, str] = {
    "leading_silence": "silence at the start of the reply audio, heard before the first word",
    "whole_result_handoff": "a stage waited for the previous stage's whole result, "
    "although that result streams",
    "sentence_aggregation": "synthesis waited for text to build up after the model's first token",
    "slow_first_token": "the model took long to produce its first token",
    "connection_setup": "a connection was set up inside the turn instead of reused",
    "large_audio_buffer": "reply audio was held back to fill a large buffer",
    "audio_underrun": "reply audio arrived slower than real time: the caller hears gaps",
    "endpointing_wait": "the pipeline waited a long silence before deciding the caller "
    "had finished",
    "encoding_overhead": "reply audio carried with encoding overhead (e.g. base64 in JSON)",
}

#: The turn-taking finding kinds (from the events of scenario runs), described. They cost
#: what the caller heard (or lost), not voice-to-voice: see docs/report-format.md.
TURN_TAKING_KINDS: dict[str, str] = {
    "slow_barge_in_stop": "the reply went on too long after the caller barged in",
    "no_barge_in": "the reply did not stop when the caller barged in",
    "barge_in_client_buffer": "after a barge-in the client kept playing buffered reply audio",
    "cut_in": "the target took the turn while the caller was pausing mid-utterance "
    "(premature endpointing)",
    "false_interruption": "a short sound (not speech) stopped the reply",
    "truncation_mismatch": "the audio the client said it played (truncate) differs from "
    "what the caller heard",
}

#: The thresholds of the phone and greeting detectors.
PHONE_RULES: frozenset[str] = frozenset({"late_clear_ms", "mark_early_ms", "slow_greeting_ms"})

#: The phone finding kinds (a carrier's ``clear`` and marks), described. Like the
#: turn-taking kinds they are counted over failed turns too, and cost what the caller
#: heard, not voice-to-voice.
PHONE_KINDS: dict[str, str] = {
    "no_clear": "the bot sent no clear when the caller barged in: the carrier played "
    "its queued reply on",
    "late_clear": "the bot's clear came long after the caller barged in",
    "mark_early": "a mark was echoed while reply audio sent after it was still to be "
    "heard: the bot took for played what the caller had not heard",
}

#: The greeting kinds: one per session (not per turn), costed by the silence the caller
#: sat through.
GREETING_KINDS: dict[str, str] = {
    "no_greeting": "the target speaks first, but no greeting was heard",
    "slow_greeting": "a long silence before the greeting",
}

#: The long-call kind: one per report at most (not per turn), raised by the trend test
#: of analysis/drift.py and costed by the change in voice-to-voice over the run.
DRIFT_KINDS: dict[str, str] = {
    "drift": "voice-to-voice drifted over the run (a significant trend against time or turn index)",
}

#: Kinds counted over every turn (failed ones too), not only the statistics' turns.
ALL_TURN_KINDS: frozenset[str] = frozenset(TURN_TAKING_KINDS) | frozenset(PHONE_KINDS)

#: Kinds whose cost the trace cannot measure (a false interruption costs the rest of the
#: reply, which was never sent). They are costed 0 ms, so they add nothing to a budget or a
#: ranking, and the reports print "not measured" for them instead of a cost.
UNCOSTED: frozenset[str] = frozenset({"false_interruption"})

#: Every kind, in report order.
ALL_KINDS: dict[str, str] = {
    **KINDS,
    **TURN_TAKING_KINDS,
    **PHONE_KINDS,
    **GREETING_KINDS,
    **DRIFT_KINDS,
}


class TurnContext:
    """What a detector may look at (read-only by convention)."""

    __slots__ = ("config", "ledger", "obs", "rules", "session")

    def __init__(
        self,
        obs: TurnObs,
        ledger: Ledger,
        rules: FindingRules,
        session: SessionObs | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.obs = obs
        self.ledger = ledger
        self.rules = rules
        self.session = session
        self.config: Mapping[str, Any] = config if config is not None else {}

    def rel_ms(self, t_ns: int) -> float:
        """A time as ms after speech end (or after turn start when speech end is absent)."""
        t0 = self.ledger.times.get(SPEECH_END, self.ledger.times.get("turn.start", 0))
        return round((t_ns - t0) / NS_PER_MS, 3)


def _ms(ns: float) -> float:
    return round(ns / NS_PER_MS, 3)


def _thr(ms: float) -> int:
    return round(ms * NS_PER_MS)


Detector = Callable[[TurnContext], list[Finding]]


def leading_silence(ctx: TurnContext) -> list[Finding]:
    onset = ctx.obs.attrs(AUDIBLE).get("onset_ms")
    seg = ctx.ledger.segment_ns("leading_silence")
    if seg is not None:
        cost = seg
    elif isinstance(onset, (int, float)) and not isinstance(onset, bool):
        cost = round(onset * NS_PER_MS)
    else:
        return []
    if cost < _thr(ctx.rules.leading_silence_ms):
        return []
    ev: dict[str, Any] = {"silence_ms": _ms(cost)}
    if type(onset) in (int, float):
        ev["onset_ms"] = onset
    sample = ctx.obs.attrs(AUDIBLE).get("sample")
    if type(sample) is int:
        ev["first_audible_sample"] = sample
    ev["measured_from"] = "reply.playout_start" if seg is not None else "reply.audible onset_ms"
    return [Finding("leading_silence", cost, ev)]


def _chars(ctx: TurnContext, name: str) -> int | None:
    v = ctx.obs.attrs(name).get("chars")
    return v if type(v) is int else None


def handoffs(ctx: TurnContext) -> list[Finding]:
    """``sentence_aggregation`` and ``whole_result_handoff`` (they share their evidence)."""
    t = ctx.ledger.times
    out: list[Finding] = []
    ft, req, done = t.get("llm.first_token"), t.get("tts.request"), t.get("llm.done")
    if ft is not None and req is not None and req >= ft:
        wait = req - ft
        partial = (
            (tc := _chars(ctx, "tts.request")) is not None
            and (dc := _chars(ctx, "llm.done")) is not None
            and tc < dc
        )
        if (
            done is not None
            and req >= done
            and done - ft >= _thr(ctx.rules.whole_result_ms)
            and not partial
        ):
            out.append(
                Finding(
                    "whole_result_handoff",
                    wait,
                    {
                        "upstream": "model",
                        "downstream": "synthesis",
                        "upstream_first_ms": ctx.rel_ms(ft),
                        "upstream_done_ms": ctx.rel_ms(done),
                        "downstream_start_ms": ctx.rel_ms(req),
                        "wait_ms": _ms(wait),
                    },
                )
            )
        elif wait >= _thr(ctx.rules.aggregation_ms):
            ev: dict[str, Any] = {
                "first_token_ms": ctx.rel_ms(ft),
                "synthesis_request_ms": ctx.rel_ms(req),
                "wait_ms": _ms(wait),
            }
            if done is not None:
                ev["model_done_ms"] = ctx.rel_ms(done)
            if (tc := _chars(ctx, "tts.request")) is not None:
                ev["first_request_chars"] = tc
            out.append(Finding("sentence_aggregation", wait, ev))
    fb, sdone = t.get("tts.first_byte"), t.get("tts.done")
    sent = t.get("audio.first_sent")
    out_mark = "audio.first_sent" if sent is not None else "reply.first_byte"
    sent = sent if sent is not None else t.get("reply.first_byte")
    if (
        fb is not None
        and sdone is not None
        and sent is not None
        and not ctx.ledger.speech_to_speech
        and sent >= sdone >= fb
        and sdone - fb >= _thr(ctx.rules.whole_result_ms)
    ):
        out.append(
            Finding(
                "whole_result_handoff",
                sdone - fb,
                {
                    "upstream": "synthesis",
                    "downstream": "transport",
                    "upstream_first_ms": ctx.rel_ms(fb),
                    "upstream_done_ms": ctx.rel_ms(sdone),
                    "downstream_start_ms": ctx.rel_ms(sent),
                    "downstream_mark": out_mark,
                    "wait_ms": _ms(sdone - fb),
                },
            )
        )
    return out


def slow_first_token(ctx: TurnContext) -> list[Finding]:
    t = ctx.ledger.times
    seg = ctx.ledger.segment_ns("model_first_token")
    start_name = next((m.name for m in ctx.ledger.marks if m.name in _REQUESTS), None)
    if seg is None:
        ft = t.get("llm.first_token")
        start_name = next((n for n in _REQUESTS if n in t), None)
        if ft is None or start_name is None or ft < t[start_name]:
            return []
        seg = ft - t[start_name]
    if seg < _thr(ctx.rules.slow_first_token_ms):
        return []
    return [
        Finding(
            "slow_first_token",
            seg,
            {
                "from": start_name,
                "first_token_ms": _ms(seg),
                "threshold_ms": ctx.rules.slow_first_token_ms,
            },
        )
    ]


_REQUESTS = ("llm.request", "response.created")
_CONNECT_SPANS = frozenset({"connect", "tcp.connect", "tls.handshake", "ws.connect"})


def _window(ctx: TurnContext) -> tuple[int, int] | None:
    t = ctx.ledger.times
    start = t.get(SPEECH_END)
    end = t.get(AUDIBLE)
    if start is None or end is None or end < start:
        return None
    return start, end


#: Mark names that are neither ``X.connect_start`` nor a per-hop ``<stage>:…`` mark
#: (learnt as turns are read; bounded)
_NOT_CONNECTION: set[str] = set()


def connection_setup(ctx: TurnContext) -> list[Finding]:
    # The only detector that reads session-level records. The report analyses a turn as
    # soon as its turn.end is read; analysis.turns.collect_file reads the trace again
    # when a session-level record read later could change this detector's answer (keep
    # its rule in step with what is read here).
    win = _window(ctx)
    if win is None:
        return []
    lo, hi = win
    found: list[dict[str, Any]] = []

    def consider(what: str, start: int, end: int) -> None:
        overlap = min(end, hi) - max(start, lo)
        if overlap > 0:
            found.append(
                {
                    "what": what,
                    "start_ms": ctx.rel_ms(start),
                    "ms": _ms(end - start),
                    "in_turn_ms": _ms(overlap),
                }
            )

    # Connection events recorded in the turn or for its session: X.connect_start → X.connected.
    pairs: list[tuple[str, int, int]] = []
    marks = ctx.obs.marks
    # Most turns have no connection marks: names known to be neither kind are passed by.
    relevant = [n for n in marks if n not in _NOT_CONNECTION]
    for name in relevant:
        if name.endswith(".connect_start"):
            done = marks.get(name[: -len("connect_start")] + "connected", [])
            for o in marks[name]:
                end = next((d[0] for d in done if d[0] >= o[0]), None)
                if end is not None:
                    pairs.append((name[: -len(".connect_start")], o[0], end))
        elif ":" not in name and len(_NOT_CONNECTION) < 4096:
            _NOT_CONNECTION.add(name)
    if ctx.session is not None:
        starts = [(n, t) for n, t, _ in ctx.session.events if n.endswith(".connect_start")]
        for n, t0 in starts:
            want = n[: -len("connect_start")] + "connected"
            end = next((t for m, t, _ in ctx.session.events if m == want and t >= t0), None)
            if end is not None:
                pairs.append((n[: -len(".connect_start")], t0, end))
    for what, start, end in pairs:
        consider(what, start, end)
    # Per-hop marks (``<stage>:http.*``) that carry the connection time they needed.
    for name in relevant:
        if ":" not in name:
            continue
        for t, _, a in marks[name]:
            c = a.get("connect_ns")
            if type(c) is int and c > 0:
                consider(f"{name} connect", t - c, t)
    spans: list[Span] = list(ctx.obs.spans)
    if ctx.session is not None:
        spans += ctx.session.spans
    for sp in spans:
        if sp.name in _CONNECT_SPANS or sp.name.endswith(".connect"):
            consider(sp.name, sp.start_ns, sp.end_ns)
    if not found:
        return []
    cost = round(sum(f["in_turn_ms"] for f in found) * NS_PER_MS)
    if cost < _thr(ctx.rules.connection_setup_ms):
        return []
    return [Finding("connection_setup", cost, {"connections": found})]


def _chunk_seconds(c: ReplyChunk) -> float | None:
    if c.rate is None or c.rate <= 0:
        return None
    samples: int | None = c.samples
    if samples is None and c.bytes is not None:
        samples = c.bytes // 2
    return None if samples is None else samples / c.rate


def large_audio_buffer(ctx: TurnContext) -> list[Finding]:
    # Look at the first chunk before building them all: most turns stop here.
    c0 = ctx.obs.first_chunk()
    first = None if c0 is None else _chunk_seconds(c0)
    if first is None or first * 1000 < ctx.rules.large_buffer_ms:
        return []
    ev: dict[str, Any] = {
        "first_chunk_audio_ms": round(first * 1000, 3),
        "chunks": ctx.obs.chunk_count,
    }
    # Best evidence: the target's own times of its first synthesized audio and of handing
    # the first audio to its socket; the difference is how long the buffer held it.
    t = ctx.ledger.times
    fb_clock = next((m.clock for m in ctx.ledger.marks if m.name == "tts.first_byte"), None)
    transport = next((s for s in ctx.ledger.segments if s.name == "transport"), None)
    fb, sent = t.get("tts.first_byte"), t.get("audio.first_sent")
    if fb is not None and sent is not None and sent >= fb:
        ev["measured_from"] = "tts.first_byte to audio.first_sent"
        cost = sent - fb
    elif transport is not None and fb_clock == "server":
        ev["measured_from"] = "tts.first_byte (server time) to reply.first_byte"
        cost = transport.ns
    else:
        # Estimate from the delivery rate of the rest of the reply: filling the first
        # chunk took about its audio length divided by that rate.
        chunks = ctx.obs.chunks
        durations = [_chunk_seconds(c) for c in chunks]
        later = [d for d in durations[1:] if d is not None]
        span_ns = chunks[-1].t_ns - chunks[0].t_ns
        if not later or span_ns <= 0:
            ev["measured_from"] = "one chunk only: cost unknown"
            cost = 0
        else:
            rate = sum(later) / (span_ns / 1e9)  # audio seconds delivered per second
            ev["delivery_rate_x_realtime"] = round(rate, 3)
            ev["measured_from"] = "first chunk size and the delivery rate of the rest"
            excess = max(0.0, first - ctx.rules.nominal_chunk_ms / 1000)
            cost = round(excess / rate * 1e9)
    return [Finding("large_audio_buffer", cost, ev)]


def audio_underrun(ctx: TurnContext) -> list[Finding]:
    gaps = [g for _, g in ctx.obs.underruns]
    total = sum(gaps)
    if not gaps:
        end = ctx.obs.attrs("reply.end")
        u = end.get("underrun_ns")
        if type(u) is int and u > 0:
            total = u
            gaps = [u]
    if total < _thr(ctx.rules.underrun_ms) or total <= 0:
        return []
    ev: dict[str, Any] = {
        "gaps": len(gaps) if ctx.obs.underruns else ctx.obs.attrs("reply.end").get("underruns"),
        "total_ms": _ms(total),
        "longest_ms": _ms(max(gaps)),
    }
    if ctx.obs.underruns:
        ev["first_gap_ms"] = ctx.rel_ms(min(t for t, _ in ctx.obs.underruns))
    return [Finding("audio_underrun", total, ev)]


def endpointing_wait(ctx: TurnContext) -> list[Finding]:
    seg = ctx.ledger.segment_ns("endpointing")
    if seg is None or seg < _thr(ctx.rules.endpointing_wait_ms):
        return []
    ev: dict[str, Any] = {"endpointing_ms": _ms(seg)}
    ep = next((m.name for m in ctx.ledger.marks if m.name in ("endpoint", "committed")), None)
    if ep is not None:
        ev["mark"] = ep
        for k in ("audio_end_ms", "silence_duration_ms", "by"):
            v = ctx.obs.attrs(ep).get(k)
            if v is not None:
                ev[k] = v
        heard = ctx.obs.attrs(ep).get("speech_end_received_ns")
        if type(heard) is int:
            # The target's own view: from the last voiced audio it received to its decision.
            ep_t = ctx.ledger.times.get(ep)
            if ep_t is not None and ep_t >= heard:
                ev["target_wait_ms"] = _ms(ep_t - heard)
    for k in ("silence_duration_ms", "silence_ms", "endpointing_ms"):
        v = ctx.config.get(k)
        if v is not None:
            ev[f"configured_{k}"] = v
    return [Finding("endpointing_wait", seg, ev)]


def encoding_overhead(ctx: TurnContext) -> list[Finding]:
    # Sum over the raw chunk attributes first: most turns stop at the ratio.
    audio, wire = ctx.obs.audio_and_wire_bytes()
    if audio <= 0 or wire < audio * ctx.rules.encoding_overhead_ratio:
        return []
    chunks = [c for c in ctx.obs.chunks if c.wire_bytes is not None and c.bytes is not None]
    onset = ctx.obs.attrs(AUDIBLE).get("sample")
    if type(onset) is int:
        needed = [c for c in chunks if c.offset is None or c.offset <= onset]
    else:
        needed = sorted(chunks, key=lambda c: c.t_ns)[:1]
    extra = sum((c.wire_bytes or 0) - (c.bytes or 0) for c in needed)
    cost = round(max(0, extra) * 8 / ctx.rules.link_bits_per_s * 1e9)
    return [
        Finding(
            "encoding_overhead",
            cost,
            {
                "wire_bytes": wire,
                "audio_bytes": audio,
                "ratio": round(wire / audio, 3),
                "extra_bytes_before_audible": extra,
                "costed_at_bits_per_s": ctx.rules.link_bits_per_s,
            },
        )
    ]


#: The detectors, run in this order.
DETECTORS: tuple[Detector, ...] = (
    leading_silence,
    handoffs,
    slow_first_token,
    connection_setup,
    large_audio_buffer,
    audio_underrun,
    endpointing_wait,
    encoding_overhead,
)


def detect(ctx: TurnContext) -> tuple[Finding, ...]:
    """Every finding in one turn (the turn-taking ones: :func:`detect_turn_taking`)."""
    out: list[Finding] = []
    for d in DETECTORS:
        out.extend(d(ctx))
    return tuple(out)


# -- turn-taking ----------------------------------------------------------------------------
# These read a turn's TurnTaking (voiceaudit.analysis.turntaking), not its ledger: they
# apply to failed turns too (a cut-in is often why a turn got no reply of its own).

FLUSH_ADVICE = (
    "flush the client's playout buffer when the server signals the caller's speech "
    "(e.g. Realtime input_audio_buffer.speech_started), instead of playing out what arrived"
)


def _split_ms(split: Mapping[str, int]) -> dict[str, float]:
    return {k: _ms(v) for k, v in split.items()}


def barge_in_findings(tt: TurnTaking, rules: FindingRules) -> list[Finding]:
    """``slow_barge_in_stop``, ``no_barge_in`` and ``barge_in_client_buffer``."""
    out: list[Finding] = []
    for b in tt.barge_ins:
        base: dict[str, Any] = {"stop_ms": _ms(b.stop_ns)}
        if b.opens_turn is not None:
            base["interrupting_turn"] = b.opens_turn
        if b.stopped is False:
            ev = {**base, "heard_after_ms": b.heard_after_ms, "cut": b.cut}
            out.append(Finding("no_barge_in", b.stop_ns, ev))
            continue
        split = b.split
        thr = _thr(rules.barge_in_stop_ms)
        if b.stop_ns > thr:
            ev = {**base, "threshold_ms": rules.barge_in_stop_ms, "split_ms": _split_ms(split)}
            big = b.biggest_part()
            if big is not None:
                ev["biggest"] = SPLIT_LABELS[big[0]]
                ev["biggest_ms"] = _ms(big[1])
            out.append(Finding("slow_barge_in_stop", b.stop_ns - thr, ev))
        buf = split.get("client_buffer")
        if buf is not None and buf > _thr(rules.barge_in_client_buffer_ms):
            ev = {
                **base,
                "client_buffer_ms": _ms(buf),
                "threshold_ms": rules.barge_in_client_buffer_ms,
                "advice": FLUSH_ADVICE,
            }
            out.append(Finding("barge_in_client_buffer", buf, ev))
    return out


def cut_in_findings(tt: TurnTaking) -> list[Finding]:
    """``cut_in``: premature endpointing, costed by how early the target took the turn."""
    out = []
    for c in tt.cut_ins:
        ev: dict[str, Any] = {
            "pause_ms": c.pause_ms,
            "pause_index": c.pause_index,
            "before_speech_end_ms": _ms(c.before_speech_end_ns),
            "after_pause_start_ms": None
            if c.after_pause_start_ns is None
            else _ms(c.after_pause_start_ns),
            "audible": c.audible,
            "endpointed": c.endpointed,
        }
        out.append(Finding("cut_in", max(0, c.before_speech_end_ns), ev))
    return out


def false_interruption_findings(tt: TurnTaking) -> list[Finding]:
    """``false_interruption``: a sound stopped the reply. Costed 0 ms: what it costs is
    the rest of the reply, which was never sent, so the trace cannot measure it."""
    out = []
    for s in tt.sounds:
        if s.false_interruption is True:
            ev: dict[str, Any] = {"heard_after_ms": s.heard_after_ms, "stop_ms": _ms(s.stop_ns)}
            if s.clip is not None:
                ev["sound"] = s.clip
            ev["cost"] = "the unsaid rest of the reply (not measured)"
            out.append(Finding("false_interruption", 0, ev))
    return out


def truncation_findings(tt: TurnTaking, rules: FindingRules) -> list[Finding]:
    """``truncation_mismatch``: |unclaimed_ms| over the rule; costed by that audio."""
    out = []
    for tr in tt.truncates:
        u = tr.unclaimed_ms
        if u is None or abs(u) <= rules.truncation_mismatch_ms:
            continue
        what = (
            "the caller heard audio the model's context says was never said"
            if u > 0
            else "the model's context holds audio the caller never heard"
        )
        ev: dict[str, Any] = {
            "audio_end_ms": tr.audio_end_ms,
            "heard_ms": tr.heard_ms,
            "unclaimed_ms": u,
            "threshold_ms": rules.truncation_mismatch_ms,
            "meaning": what,
        }
        out.append(Finding("truncation_mismatch", round(abs(u) * NS_PER_MS), ev))
    return out


def detect_turn_taking(tt: TurnTaking | None, rules: FindingRules) -> tuple[Finding, ...]:
    """Every turn-taking finding in one turn (none without turn-taking observations)."""
    if tt is None:
        return ()
    return (
        *barge_in_findings(tt, rules),
        *cut_in_findings(tt),
        *false_interruption_findings(tt),
        *truncation_findings(tt, rules),
    )


# -- phone --------------------------------------------------------------------------------


def phone_findings(pt: PhoneTurn | None, rules: FindingRules) -> tuple[Finding, ...]:
    """``no_clear``, ``late_clear`` and ``mark_early`` of one turn heard through a phone
    carrier (none without carrier data)."""
    if pt is None:
        return ()
    out: list[Finding] = []
    thr = _thr(rules.late_clear_ms)
    for b in pt.barge_ins:
        base: dict[str, Any] = {"stop_ms": _ms(b.stop_ns)}
        if b.deaf_window_ns is not None:
            base["deaf_window_ms"] = _ms(b.deaf_window_ns)
        if not was_cleared(b):
            heard = b.heard_ns
            if heard > 0:
                ev = {**base, "heard_after_ms": _ms(heard)}
                if b.reply_heard_ns is not None and b.heard_after_ms is not None:
                    # reply.stop's figure may run on into the bot's next reply
                    ev["heard_after_stop_event_ms"] = b.heard_after_ms
                if b.clear_ns is not None:
                    ev["clear_after_last_heard_ms"] = _ms(b.clear_ns)
                out.append(Finding("no_clear", heard, ev))
        elif b.clear_ns is not None and b.clear_ns > thr:
            ev = {**base, "clear_ms": _ms(b.clear_ns), "threshold_ms": rules.late_clear_ms}
            if b.after_clear_ns is not None:
                ev["after_clear_ms"] = _ms(b.after_clear_ns)
            out.append(Finding("late_clear", b.clear_ns, ev))
    mthr = _thr(rules.mark_early_ms)
    for m in pt.marks:
        if m.heard_after_echo_ns >= mthr and m.heard_after_echo_ns > 0:
            ev = {
                "mark": m.name,
                "echo_after_mark_ms": _ms(m.echo_ns - m.mark_ns),
                "heard_after_echo_ms": _ms(m.heard_after_echo_ns),
                "threshold_ms": rules.mark_early_ms,
            }
            out.append(Finding("mark_early", m.heard_after_echo_ns, ev))
    return tuple(out)


def greeting_findings(g: Greeting, speaks_first: bool, rules: FindingRules) -> list[Finding]:
    """``no_greeting`` (costed by how long the caller waited for one: only where the
    path speaks first) and ``slow_greeting`` (costed by the silence before it)."""
    if g.latency_ns is None:
        if not speaks_first or g.waited_ns is None:
            return []
        return [Finding("no_greeting", g.waited_ns, {"waited_ms": _ms(g.waited_ns)})]
    if g.latency_ns > _thr(rules.slow_greeting_ms):
        ev: dict[str, Any] = {
            "greeting_latency_ms": _ms(g.latency_ns),
            "threshold_ms": rules.slow_greeting_ms,
        }
        return [Finding("slow_greeting", g.latency_ns, ev)]
    return []


def drift_finding(view: DriftView | None) -> Finding | None:
    """``drift`` when the view's trend test says voice-to-voice drifted
    (:attr:`~voiceaudit.analysis.drift.DriftView.drift`), costed by the change the slope
    makes over the run (its absolute value); None otherwise."""
    tr = None if view is None else view.drift
    if tr is None:
        return None
    ev: dict[str, Any] = {
        "axis": tr.axis,
        "slope": round(tr.slope, 4),
        "unit": tr.unit,
        "ci95": [round(tr.low, 4), round(tr.high, 4)],
        "spearman_rho": round(tr.rho, 4),
        "p": tr.p,
        "change_ms": round(tr.change_ms, 3),
        "turns": tr.n,
    }
    return Finding("drift", round(abs(tr.change_ms) * NS_PER_MS), ev)


def probe_lateness(obs: TurnObs) -> int | None:
    """How late the probe sent the frame carrying the last speech sample (ns)."""
    occ = obs.first("input.speech_end_sent", PROBE)
    if occ is None:
        return None
    v = occ[2].get("late_ns")
    return v if type(v) is int else None
