"""The WebRTC target's outgoing track: silence fills an idle microphone (a reply playing,
between turns), never while a turn's speech goes out, and what it added is counted (real
aiortc track, real asyncio timing: every bound here is one-sided, a busy machine only makes
the probe's frames later)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from voiceaudit.targets.webrtc import FILL_FRAME, IDLE_FILL_NS, _make_track


def _frames(hold: bool, pause_s: float) -> tuple[list[bool], int]:
    """Two probe frames ``pause_s`` apart; what the track sent meanwhile (True: a probe
    frame, False: its own silence) and the samples it added."""

    async def main() -> tuple[list[bool], int]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        track = _make_track(queue)
        track.hold_fill = hold
        tone = np.full(FILL_FRAME, 1000, dtype="<i2").tobytes()
        got: list[bool] = []

        async def feed() -> None:
            queue.put_nowait(tone)
            await asyncio.sleep(pause_s)
            queue.put_nowait(tone)

        feeder = asyncio.create_task(feed())
        while got.count(True) < 2:
            frame = await asyncio.wait_for(track.recv(), 5)
            got.append(bool(frame.to_ndarray().any()))
        await feeder
        return got, int(track.fill_samples)

    return asyncio.run(main())


def test_idle_microphone_is_filled_and_counted() -> None:
    pause = 0.2
    t = time.monotonic()
    got, added = _frames(hold=False, pause_s=pause)
    late = time.monotonic() - t - pause  # how late this loop ran (the machine adds it)
    # 40 ms of quiet, then a silent frame every 20 ms until the probe's next frame: at
    # least (200 - 40) / 20 of them, more only by the loop's own lateness
    fills = got.count(False)
    assert got[0] and got[-1] and fills >= (pause * 1e9 - IDLE_FILL_NS) // 20e6
    assert fills <= (pause * 1e9 - IDLE_FILL_NS + late * 1e9) // 20e6 + 1
    assert added == fills * FILL_FRAME


def test_no_fill_inside_a_turn() -> None:
    # the probe fell 200 ms behind within a turn's speech: its frame goes out late, nothing
    # between
    got, added = _frames(hold=True, pause_s=0.2)
    assert got == [True, True] and added == 0
