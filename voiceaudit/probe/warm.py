"""First-use costs paid before the first connection, off the probe's loop.

The probe's reply analysis runs on its one event loop, and the first time each part runs
it costs far more than afterwards: ``scipy.signal`` is imported by the first resample
(0.8 s here), the first :func:`~voiceaudit.audio.first_audible` takes 6 ms against
1.5 ms later, the first adaptive playout 8.6 ms against 0.1 ms (measured with
``python -X importtime`` and a timer around each first call). Paid on the loop, that is a
stall at the first reply of a run, which every session sharing the loop feels: its
frames leave late, and (before arrival times were taken on the receive thread) its
replies' chunks were stamped late.

:func:`warm_up` runs each of them once on a thread of its own, once per process; the
probe awaits it before it opens a session that asks for it
(:attr:`~voiceaudit.targets.base.TargetSession.warm_up_first`: the WebSocket and WebRTC
targets), so no connection is open while the bulk of it runs (a session opening later
finds it done). The targets only say so: they sit below the probe and do not import it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading

_lock = threading.Lock()
_future: concurrent.futures.Future[None] | None = None


def warm_sync() -> None:
    """Run once what the probe's reply analysis runs on its loop (module docstring)."""
    import numpy as np

    from voiceaudit.audio import first_audible, resample
    from voiceaudit.pacing_stats import pacing_attrs
    from voiceaudit.probe.conversation import last_audible
    from voiceaudit.probe.playout import PLAYOUT_MODELS, Chunk, play_model

    rng = np.random.default_rng(0)
    x = np.zeros(4800, dtype=np.float32)
    x[1200:] = rng.standard_normal(3600).astype(np.float32) * 0.1
    for a, b in ((16000, 24000), (24000, 16000), (16000, 48000), (48000, 16000)):
        resample(x, a, b)
    first_audible(x, 24000)
    last_audible(x, 24000)
    chunks = [Chunk(k * 20_000_000 + (k % 3) * 1_000_000, 480) for k in range(60)]
    for model in PLAYOUT_MODELS:
        play_model(chunks, 24000, model=model, depth_ns=0)
    pacing_attrs([k * 20_000_000 for k in range(10)], [k * 20_000_000 for k in range(10)])


def _start() -> concurrent.futures.Future[None]:
    global _future
    with _lock:
        if _future is None:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                # best effort: a failure here shows up, with its message, where the
                # probe calls the same code for real
                with contextlib.suppress(BaseException):
                    warm_sync()
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    fut.set_result(None)

            threading.Thread(target=run, name="voiceaudit-warm", daemon=True).start()
            _future = fut
        return _future


async def warm_up(timeout_s: float = 30.0) -> None:
    """Wait (at most ``timeout_s``) for the one warm-up of this process, starting it if
    needed; the loop keeps running meanwhile."""
    from voiceaudit.targets.rxstamp import gevent_patched

    if gevent_patched():
        return  # its threads are greenlets (Locust workers): the loop pays, as before
    fut = _start()
    if fut.done():
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout_s)
