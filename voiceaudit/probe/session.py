"""The turn machinery the probe's plain sessions and its scripted conversations share.

:class:`~voiceaudit.probe.runner.Probe` owns the run: it opens sessions, paces turns and
closes each reply (:meth:`TurnHost.close_reply`). A scripted conversation
(:mod:`voiceaudit.probe.conversation`) runs inside one of the probe's sessions and reaches
the probe only through :class:`TurnHost`, so neither module imports the other (the runner
imports the conversation; the conversation imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from voiceaudit.clock import Clock
from voiceaudit.errors import TargetError
from voiceaudit.pacing import Pacer
from voiceaudit.pacing_stats import BROKE_NS, PacingHistogram
from voiceaudit.probe.options import ProbeOptions
from voiceaudit.targets.base import TargetSession, TargetSink
from voiceaudit.trace_io import TraceWriter

#: a chunk of reply audio as a target session reported it (TargetSink.reply_audio's
#: arguments): time, 16-bit PCM, rate, wire bytes, and the far end's buffer wait or None
RawChunk = tuple[int, bytes, int, int, int | None]


@dataclass(frozen=True)
class TurnResult:
    session: str
    turn: int
    ok: bool
    warmup: bool
    voice_to_voice_ns: int | None
    reason: str | None = None
    #: the turn's latest frame send after its deadline (ns), and that frame's index
    pacing_max_ns: int | None = None
    pacing_max_frame: int | None = None
    #: speech end (as sent) to the first reply audio byte read, when a reply came
    first_byte_ns: int | None = None
    #: the run's sessions running when the speech end was sent
    concurrency: int | None = None
    #: scenario runs: the barge-in stop latency of this turn's interrupted reply
    barge_in_stop_ns: int | None = None
    #: scenario runs: replies heard while the caller was still speaking (cut-ins)
    cut_ins: int = 0
    #: scenario runs: sounds placed over this turn's reply, and how many stopped it
    sounds: int = 0
    false_interruptions: int = 0
    #: a failed turn's kind (one of ``voiceaudit.failures.FAILURE_KINDS``); None when ok
    failure: str | None = None
    #: a failed turn whose reply was heard before the fault: its voice-to-voice, kept as
    #: an informative figure (never in statistics)
    informative_voice_to_voice_ns: int | None = None

    @property
    def pacing_broke(self) -> bool:
        """A frame of this turn left more than ``BROKE_NS`` after its deadline."""
        return self.pacing_max_ns is not None and self.pacing_max_ns > BROKE_NS


@dataclass(frozen=True)
class ReplyOutcome:
    """How a turn's reply came out, for :meth:`TurnHost.close_reply` to judge and write."""

    sid: str
    turn: int
    #: the reply audio: (arrival ns, PCM, rate, wire bytes) per chunk
    chunks: list[RawChunk]
    #: the target's failure during the turn (when ``failed``)
    failure: str | None
    failed: bool
    #: the target said the reply was done
    done: bool
    speech_end_ns: int
    warm: bool
    #: the target signalled the end of an earlier reply on this connection: one that goes
    #: quiet without it stalled
    expects_done: bool = False


def note_after_reply(
    writer: TraceWriter, sid: str, turn: int, t_ns: int, failure: str | None
) -> None:
    """``turn.note`` of a failure that came after the turn's reply was complete: the turn
    stands, the connection does not."""
    note = {"note": f"after the reply: {failure}"}
    writer.event(sid, turn, t_ns, "probe", "turn", "turn.note", note)


def fill_attrs(ts: TargetSession) -> dict[str, int]:
    """``turn.start``'s ``stream_fill_samples``, where the transport added silence of its own
    to the session's audio before the turn (WebRTC's idle fill between turns)."""
    fill = ts.stream_fill_samples()
    return {"stream_fill_samples": fill} if fill else {}


def connected(writer: TraceWriter, sid: str, t_ns: int, ts: TargetSession) -> None:
    """``session.connected``, with the probe's end of the session's TCP connection where it
    has one (so a capture's stalls of a sender with Nagle off can be ruled out)."""
    writer.event(sid, None, t_ns, "probe", "session", "session.connected", ts.connection())


def closed(writer: TraceWriter, sid: str, t_ns: int, broke: str | None) -> None:
    """``session.closed`` (with the failure that broke the connection as ``reason``), made
    durable."""
    attrs = None if broke is None else {"reason": broke}
    writer.event(sid, None, t_ns, "probe", "session", "session.closed", attrs)
    writer.commit()


async def send_frame(ts: TargetSession, sink: TargetSink, data: bytes) -> bool:
    """Send one microphone frame; a target that fails fails the turn through ``sink``
    (False: stop sending)."""
    try:
        await ts.send_audio(data)
    except TargetError as exc:
        sink.fail(exc.message)
        return False
    except (ConnectionError, OSError) as exc:
        sink.fail(f"send failed: {exc}")
        return False
    return True


def session_failed(writer: TraceWriter, sid: str, at_ns: int, exc: TargetError) -> None:
    """The ``session.failed`` event of a session whose connection could not be opened."""
    writer.event(sid, None, at_ns, "probe", "session", "session.failed", {"reason": exc.message})


class TurnHost(Protocol):
    """The probe as a conversation sees it: its options, clock and pacer, whether it is
    stopping, and the turn machinery it owns (the probe implements it)."""

    @property
    def options(self) -> ProbeOptions: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def pacer(self) -> Pacer: ...
    @property
    def pacing(self) -> PacingHistogram:
        """Every frame's lateness over the run."""
        ...

    @property
    def active_sessions(self) -> int:
        """Sessions running now (connected or connecting, not yet closed)."""
        ...

    def stopping(self) -> bool:
        """No new turn starts (first Ctrl-C)."""
        ...

    def winding_down(self) -> bool:
        """A ramp's profile is over: no new turns, the ones in flight finish."""
        ...

    def cutting(self) -> bool:
        """The turns in flight end now, failed ``interrupted`` (second Ctrl-C)."""
        ...

    def phased(self, earliest_ns: int, slot: int, frame_ns: float) -> int:
        """The first instant from ``earliest_ns`` at this slot's frame phase."""
        ...

    def record_failed(
        self, writer: TraceWriter, sid: str, turn: int, reason: str, failure: str | None = None
    ) -> None:
        """A turn that never ran: its failed ``turn.end``, counted in the result."""
        ...

    def close_reply(self, writer: TraceWriter, out: ReplyOutcome) -> TurnResult:
        """Analyse a turn's reply, write its reply events and ``turn.end``."""
        ...

    def add_turn(self, result: TurnResult) -> None:
        """A finished turn: into the run's result, and to the observer."""
        ...
