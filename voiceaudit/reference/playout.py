"""Reply audio played out on a media clock: the shape of media-stream transports.

A WebRTC track (and any RTP stream) does not send reply audio as the pipeline produces
it: the transport pulls one fixed-size frame at a time on its own clock (frame k due at
its start + k frame periods) and sends silence between replies, since the stream never
stops. :class:`Playout` is the queue between the two: the session's reply sink enqueues
audio per turn, the transport's clock takes frames with :meth:`Playout.next_frame`, and
what each turn's reply really put on the stream (which frames, when, how many samples,
whether barge-in or a cancel dropped the rest) is settled into its ground truth by
:meth:`Playout.settle`. Nothing here knows a protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from voiceaudit.reference.dsp import F32
from voiceaudit.reference.groundtruth import TurnRecord


class Playout:
    """The reply audio waiting for a media clock, and what it took of each turn's reply."""

    def __init__(self, rate: int, frame: int, on_first: Callable[[TurnRecord], None]) -> None:
        self.rate, self.frame = rate, frame
        #: ns between frames on the clock
        self.period_ns = frame * 1_000_000_000 // rate
        #: called when a reply's first frame is taken (``first_audio_sent`` is marked)
        self.on_first = on_first
        self._out: deque[tuple[TurnRecord, np.ndarray[Any, Any]]] = deque()
        self._pos = 0
        #: id(record) -> when each frame carrying that reply was taken
        self.sent: dict[int, list[int]] = {}
        #: id(record) -> barge-in stop time: no frame due after it carries that reply
        self.stop_at: dict[int, int] = {}
        #: id(record) -> reply samples the clock has taken (what went out)
        self.taken: dict[int, int] = {}
        #: id(record) -> its reply audio was dropped before it all went out
        self.cut: set[int] = set()
        #: id(record) -> media time (pts, samples) of the reply's first and last frame
        self.first_pts: dict[int, int] = {}
        self.last_pts: dict[int, int] = {}
        #: when the clock's first frame was due (frame k at + k periods)
        self.start_ns: int | None = None
        #: the clock's time of the last frame taken
        self.when = 0

    def enqueue(self, record: TurnRecord, samples: F32) -> None:
        """Reply audio of ``record`` at ``rate``, to be played after what is queued."""
        if samples.size:
            self._out.append((record, samples.astype(np.float32)))

    def holds(self, record: TurnRecord) -> bool:
        """Whether some of ``record``'s reply audio is still waiting for the clock."""
        return any(r is record for r, _ in self._out)

    def drop(self, record: TurnRecord) -> None:
        """Remove ``record``'s reply audio the clock has not taken yet."""
        kept: deque[tuple[TurnRecord, np.ndarray[Any, Any]]] = deque()
        dropped = False
        for i, (rec, chunk) in enumerate(self._out):
            if rec is record:
                dropped = True
                if i == 0:
                    self._pos = 0
            else:
                kept.append((rec, chunk))
        if dropped:
            self.cut.add(id(record))
        self._out = kept

    def stream_pts(self, t_ns: int) -> int:
        """Media time (samples) of the first frame due after ``t_ns``, by the clock."""
        if self.start_ns is None:
            return 0
        k = max(0, -(-(t_ns - self.start_ns) // self.period_ns))
        return int(k * self.frame)

    def next_frame(self, t_ns: int, pts: int = 0, due: int | None = None) -> bytes:
        """The next frame of the stream (``pts``: its media time in samples from the
        stream's first frame; ``due``: when the clock says it leaves) as 16-bit PCM: reply
        audio, else silence. A reply whose barge-in stop time is before ``due`` is dropped
        here: the stream goes back to silence."""
        out = np.zeros(self.frame, dtype=np.float32)
        filled = 0
        record: TurnRecord | None = None
        when = t_ns if due is None else due
        self.when = when
        while filled < self.frame and self._out:
            rec, chunk = self._out[0]
            stop_at = self.stop_at.get(id(rec))
            if stop_at is not None and when > stop_at:
                self.drop(rec)
                continue
            record = record or rec
            take = min(self.frame - filled, chunk.size - self._pos)
            out[filled : filled + take] = chunk[self._pos : self._pos + take]
            filled += take
            self._pos += take
            self.taken[id(rec)] = self.taken.get(id(rec), 0) + take
            b = rec.barge_in
            if b is not None and when > b["detected_ns"]:
                # the clock says this frame leaves after the caller was heard
                b["scheduled_after_samples"] += take
            if self._pos >= chunk.size:
                self._out.popleft()
                self._pos = 0
        if record is not None:
            self.last_pts[id(record)] = pts
            sent = self.sent.setdefault(id(record), [])
            first = not sent
            sent.append(t_ns)
            if first:
                record.mark("first_audio_sent", t_ns, overwrite=True)
                self.first_pts[id(record)] = pts
                self.on_first(record)
        return (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes()

    def settle(self, record: TurnRecord) -> None:
        """The turn is over: drop what a cancelled reply has not played, and record what
        went out (the frames' times, the samples, whether the reply was cut)."""
        key = id(record)
        if record.status == "cancelled":
            self.drop(record)
        sent = self.sent.pop(key, [])
        self.stop_at.pop(key, None)
        taken = self.taken.pop(key, 0)
        record.audio_sent_ns = sent
        if sent:
            record.mark("first_audio_sent", sent[0], overwrite=True)
            record.mark("last_audio_sent", sent[-1], overwrite=True)
        if key in self.cut or record.reply_audio_samples != taken:
            # what went out on the stream, not what synthesis produced
            record.reply_audio_samples = taken
            record.reply_audio_ns = round(taken * 1e9 / self.rate)
            record.audio_messages = len(sent)
        record.reply_cut = record.reply_cut or key in self.cut
        self.cut.discard(key)

    def forget(self, record: TurnRecord) -> None:
        """Forget the reply's media times (after its last events)."""
        self.first_pts.pop(id(record), None)
        self.last_pts.pop(id(record), None)
