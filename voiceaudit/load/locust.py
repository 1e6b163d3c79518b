"""voiceaudit sessions as Locust users: many machines through Locust's master and workers.

A locustfile of two lines runs voiceaudit sessions against any target voiceaudit supports::

    from voiceaudit.load.locust import VoiceauditUser  # noqa: F401

    locust -f locustfile.py --master --headless -u 20 -r 2 -t 60s --expect-workers 2 \\
        --va-target ws://HOST:PORT/v1/realtime --va-out traces/ --csv stats
    locust -f locustfile.py --worker --master-host MASTER      # on each worker machine

Each Locust user is one voiceaudit session: a :class:`~voiceaudit.probe.runner.Probe` with
one session that replays speech at real-time pace, turn after turn, until Locust stops the
user (or ``--va-turns`` turns, then the user places its next call). Every turn goes to
Locust's own statistics through ``environment.events.request``: ``voice-to-voice`` (ms,
speech end to the first audible reply sample) and ``first-byte`` (ms, speech end to the
first reply audio byte); a failed turn is a ``voice-to-voice`` failure whose error is the
turn's reason. Warm-up turns (``--va-warmup``) and turns cut short by the stop itself are
in the trace but not in Locust's figures. Each session writes its own trace,
``DIR/<worker>/u<N>.jsonl`` (``DIR/<worker>/u<N>-c<K>.jsonl`` for the user's later calls),
with its own header and clock anchors; session ids start ``<worker>-u<N>-`` (``w0-u3-s0``)
so they stay unique across workers, and ``voiceaudit report DIR`` merges every trace below
the directory into one report. ``<worker>`` is ``w<index>`` (Locust's worker index) in a
distributed run and ``local`` in a single-process one.

Configuration is Locust custom arguments (``--va-*``; the master passes them to its
workers): see :func:`_add_arguments`. An API key is never an argument: ``--va-api-key-env
NAME`` names the environment variable that holds it on each worker, and the trace writer
keeps the key out of every trace; log lines carry the URL without credentials or query.

Design: gevent and asyncio in one process
-----------------------------------------
Locust runs users as greenlets on gevent's hub and monkey-patches the standard library
(``socket``, ``select``, ``selectors``, ``threading``, ``queue``, ``time.sleep``). The
probe is asyncio, and its paced send must not wait for a greenlet to yield:

* **One asyncio loop per Locust process, in a real OS thread** (started with
  ``gevent.monkey.get_original("_thread", "start_new_thread")``), which every user of the
  process shares. The loop waits on the *original* epoll selector, in the kernel, not on
  gevent's hub, and paces frames exactly as ``voiceaudit run`` does. Its default executor
  (the trace's fsync at each turn end, DNS look-ups) is a small pool of real threads fed by
  the original ``queue.SimpleQueue``: a patched thread would be a greenlet of a hub that
  nobody runs. The sockets the loop makes are gevent's socket class (the ``socket`` module
  is patched), used non-blocking as asyncio always does, where gevent's class is a thin
  wrapper over the real socket: it only steps in when a call would block on a socket with
  a timeout, and asyncio sets none.
* **Greenlet → loop**: ``loop.call_soon_threadsafe`` (start a session, stop it).
* **Loop → greenlet**: gevent's objects are not thread-safe, so the loop never touches
  them: the probe's :class:`~voiceaudit.probe.runner.Observer` hands each
  ``TurnResult`` to ``hub.loop.run_callback_threadsafe`` (gevent's way to wake its hub
  from another thread), which runs ``Queue.put_nowait`` in the hub's own thread; the
  user's greenlet takes the results from its queue and fires the Locust events.
* **Stop**: ``on_stop`` (Locust stops or kills the user, at the test's end too) asks the
  probe to stop, on the loop's thread: the turn in flight ends ``interrupted``, the session
  closes and the trace gets its closing record, written by the loop whatever the user does
  next. ``on_stop`` waits only a moment for it (a worker's final statistics reach a
  headless master only within half a second of its quit message); before the process
  exits, Locust's ``quitting`` event waits for every session's closing record (cancelling
  one that takes over 10 s). A worker killed outright leaves traces without one; every
  turn already ended is on disk (the trace is committed at every turn end) and the report
  keeps it, saying which trace was cut short.
* **One pacer**: every session of the process shares one
  :class:`~voiceaudit.probe.pacing.Pacer`, as the sessions of ``voiceaudit run --sessions
  N`` do (a pacer spins through the last 1.5 ms before its deadline: fifty of them would
  spin longer than a frame lasts).

What one worker process holds: its users' sessions run on one asyncio loop, like
``voiceaudit run --sessions N``, and share the GIL with Locust's own thread (which wakes for
its statistics, heartbeats and each turn's event). Every frame's send lateness is in the
trace (``input.pacing``) and the report warns when pacing broke, so a worker that could not
keep up says so (figures in docs/load.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import platform
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from voiceaudit.errors import EnvironmentProblem, VoiceauditError, missing_extra


class LocustMissing(EnvironmentProblem, ImportError):
    """``voiceaudit.load.locust`` imported where the ``load`` extra is not installed."""


try:
    # Locust's own import monkey-patches the standard library: before anything else.
    import locust as _locust
    from gevent import get_hub as _get_hub  # type: ignore[import-untyped]
    from gevent import monkey as _monkey
    from gevent import sleep as _gsleep
    from gevent.queue import Empty as _Empty  # type: ignore[import-untyped]
    from gevent.queue import Queue as _Queue
    from locust import User, events, task
    from locust.env import Environment
    from locust.exception import StopUser
    from locust.runners import MasterRunner, WorkerRunner
except ImportError:
    _err = missing_extra("locust", "load")
    raise LocustMissing(f"{_err.message} ({_err.hint})", hint=_err.hint) from None

from voiceaudit.clock import NS_PER_MS  # noqa: E402
from voiceaudit.probe.pacing import Pacer  # noqa: E402
from voiceaudit.probe.runner import Probe, ProbeOptions, RunResult  # noqa: E402
from voiceaudit.probe.session import TurnResult  # noqa: E402
from voiceaudit.probe.utterances import Utterance, load_utterances  # noqa: E402
from voiceaudit.targets.base import TargetConfig, redact_url  # noqa: E402
from voiceaudit.targets.registry import get_target_class, infer_protocol  # noqa: E402

__all__ = ["LoadConfig", "LocustMissing", "TurnFailed", "VoiceauditUser"]

log = logging.getLogger("voiceaudit.load")

#: Locust's "Type" column for every entry voiceaudit reports
REQUEST_TYPE = "voiceaudit"
VOICE_TO_VOICE = "voice-to-voice"
FIRST_BYTE = "first-byte"
#: how long on_stop waits for the session's last turn to be handed over
STOP_GRACE_S = 0.2
#: how long the process waits at exit for a session to close before cancelling it
STOP_WAIT_S = 10.0
#: the failure of a turn whose reply was audible before its speech ended (as the report)
EARLY_REPLY = (
    "the reply was audible before speech end: a late reply to an earlier turn, "
    "or the pipeline answered before the caller finished"
)
#: the turns of a call that lasts until Locust stops it
UNTIL_STOPPED = 2**62
#: the longest a user's task waits for its next result before returning to Locust. Long:
#: each wake of Locust's thread takes the GIL from the probe's thread for a moment; a
#: graceful stop (--stop-timeout) is then taken after the turn in flight, and a forced one
#: interrupts the wait at once.
LISTEN_POLL_S = 60.0
#: pause before the next call after a session that could not connect
RETRY_S = 1.0

_start_real_thread: Callable[..., int] = _monkey.get_original("_thread", "start_new_thread")
_real_lock: Callable[[], Any] = _monkey.get_original("_thread", "allocate_lock")
_RealSimpleQueue: Any = _monkey.get_original("queue", "SimpleQueue")
_RealSelector: Any = _monkey.get_original("selectors", "DefaultSelector")


class TurnFailed(Exception):
    """A failed turn as Locust records it: the error text is the turn's reason."""

    def __repr__(self) -> str:
        return str(self)


# --- configuration -------------------------------------------------------------------


def _add_arguments(parser: Any) -> None:
    # On the parser itself: Locust's add_argument (not a group's) takes include_in_web_ui.
    g = parser
    g.add_argument(
        "--va-target",
        default="",
        metavar="URL",
        help="URL of the voice pipeline under test (default: Locust's --host).",
    )
    g.add_argument(
        "--va-protocol",
        default="",
        help="realtime | cascade | websocket | webrtc | python (inferred from the URL if clear).",
    )
    g.add_argument(
        "--va-target-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        include_in_web_ui=False,
        help="Protocol option NAME=VALUE (repeatable), as voiceaudit run --target-option.",
    )
    g.add_argument(
        "--va-api-key-env",
        default="",
        metavar="NAME",
        help="Name of the environment variable holding the API key on each worker "
        "(never the key itself).",
    )
    g.add_argument(
        "--va-audio",
        default="",
        metavar="PATHS",
        help="Speech files or directories, comma-separated, present on every worker "
        "(default: the utterances bundled with voiceaudit).",
    )
    g.add_argument(
        "--va-out",
        default="voiceaudit-locust",
        metavar="DIR",
        help="Trace directory: each worker writes DIR/<worker>/u<N>.jsonl; "
        "'voiceaudit report DIR' merges them.",
    )
    g.add_argument(
        "--va-turns",
        type=int,
        default=0,
        help="Turns per call; then the user places its next call (0: one call until the "
        "test stops).",
    )
    g.add_argument("--va-warmup", type=int, default=0, help="Warm-up turns per call.")
    g.add_argument("--va-frame-ms", type=int, default=20, help="Audio frame size sent, in ms.")
    g.add_argument(
        "--va-timeout", type=float, default=15.0, help="Seconds after speech end to wait."
    )
    g.add_argument(
        "--va-gap-ms", type=int, default=500, help="Pause between turns (ms, after the reply)."
    )


@dataclass(frozen=True)
class LoadConfig:
    """The ``--va-*`` arguments, checked."""

    target: str
    protocol: str
    options: tuple[tuple[str, str], ...]
    api_key_env: str | None
    audio: tuple[Path, ...]
    out: Path
    turns: int | None
    warmup: int
    frame_ms: int
    timeout_s: float
    gap_ms: int

    @classmethod
    def from_options(cls, ns: Any, host: str | None = None) -> LoadConfig:
        """From Locust's parsed options; raises UsageError (one line) on bad input."""
        from voiceaudit.errors import UsageError

        target = str(getattr(ns, "va_target", "") or host or "").strip()
        if not target:
            raise UsageError(
                "no target: give --va-target URL (or Locust's --host)",
                hint="e.g. --va-target ws://127.0.0.1:8000/v1/realtime",
            )
        protocol = str(getattr(ns, "va_protocol", "") or "").strip() or infer_protocol(target)
        get_target_class(protocol)  # an unknown protocol is a UsageError naming the known ones
        opts: list[tuple[str, str]] = []
        for item in getattr(ns, "va_target_option", None) or []:
            k, sep, v = str(item).partition("=")
            if not sep or not k.strip():
                raise UsageError(f"--va-target-option {item!r} must look like NAME=VALUE")
            opts.append((k.strip(), v.strip()))
        key_env = str(getattr(ns, "va_api_key_env", "") or "").strip() or None
        if key_env is not None and not key_env.replace("_", "").isalnum():
            raise UsageError(
                "--va-api-key-env takes the NAME of an environment variable, not a key",
                hint="e.g. --va-api-key-env OPENAI_API_KEY",
            )
        audio = tuple(
            Path(p.strip()) for p in str(getattr(ns, "va_audio", "") or "").split(",") if p.strip()
        )
        turns = int(getattr(ns, "va_turns", 0) or 0)
        if turns < 0:
            raise UsageError("--va-turns cannot be negative (0: until the test stops)")
        cfg = cls(
            target=target,
            protocol=protocol,
            options=tuple(opts),
            api_key_env=key_env,
            audio=audio,
            out=Path(str(getattr(ns, "va_out", "") or "voiceaudit-locust")),
            turns=turns or None,
            warmup=int(getattr(ns, "va_warmup", 0) or 0),
            frame_ms=int(getattr(ns, "va_frame_ms", 20)),
            timeout_s=float(getattr(ns, "va_timeout", 15.0)),
            gap_ms=int(getattr(ns, "va_gap_ms", 500)),
        )
        cfg.probe_options("")  # ProbeOptions checks the rest (one-line UsageErrors)
        return cfg

    def probe_options(self, prefix: str) -> ProbeOptions:
        return ProbeOptions(
            sessions=1,
            # no --va-turns: "until stopped" (Locust stops the user, which stops the probe)
            turns=self.turns or UNTIL_STOPPED,
            warmup=self.warmup,
            frame_ms=self.frame_ms,
            timeout_s=self.timeout_s,
            gap_ms=self.gap_ms,
            session_prefix=prefix,
        )

    def target_config(self) -> TargetConfig:
        return TargetConfig(
            url=self.target,
            protocol=self.protocol,
            api_key_env=self.api_key_env,
            options=dict(self.options),
        )

    def describe(self) -> str:
        """For log lines: no credentials, no query string, no key."""
        return f"{redact_url(self.target)} ({self.protocol})"


# --- the asyncio loop in a real thread -----------------------------------------------


class _Future(concurrent.futures.Future[Any]):
    """A Future whose lock is a real one: it is set in one OS thread and read in another,
    and the patched ``threading`` would give it a gevent lock."""

    def __init__(self) -> None:
        super().__init__()
        self._condition = threading.Condition(_real_lock())


class _RealThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: ``workers`` real OS threads (fsync, DNS look-ups).

    A ThreadPoolExecutor by type only (asyncio takes no other as its default): its own
    threads, queue and locks would be the patched, greenlet-based ones, so none of its
    machinery is used (its ``__init__`` is not called)."""

    def __init__(self, workers: int = 2) -> None:
        self._jobs: Any = _RealSimpleQueue()
        for _ in range(workers):
            _start_real_thread(self._work, ())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Future:
        fut = _Future()
        self._jobs.put((fut, fn, args, kwargs))
        return fut

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args, kwargs = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in range(8):
            self._jobs.put(None)


class _LoopThread:
    """The process's one asyncio loop, running in a real OS thread."""

    _instance: _LoopThread | None = None

    @classmethod
    def get(cls) -> _LoopThread:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        started = _real_lock()
        started.acquire()
        box: list[asyncio.AbstractEventLoop] = []

        def main() -> None:
            loop = asyncio.SelectorEventLoop(_RealSelector())
            loop.set_default_executor(_RealThreadExecutor())
            asyncio.set_event_loop(loop)
            box.append(loop)
            started.release()
            loop.run_forever()

        _start_real_thread(main, ())
        started.acquire()  # the thread's start-up: milliseconds, once per process
        self.loop = box[0]
        #: the frame deadlines of every session of the process (used on the loop only)
        self.pacer = Pacer()
        #: the gevent hub of Locust's thread, which the loop wakes to hand results back
        self.hub: Any = _get_hub()

    def to_greenlets(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the hub's thread (call from the loop's thread)."""
        self.hub.loop.run_callback_threadsafe(fn, *args)

    def start(
        self, coro: Coroutine[Any, Any, RunResult], done: Callable[[_Ended], None]
    ) -> Callable[[], None]:
        """Run ``coro`` on the loop; ``done(_Ended)`` runs in the hub's thread when it ends.
        Returns a function (for the hub's thread) that cancels it."""
        box: list[asyncio.Task[RunResult]] = []

        def begin() -> None:
            t = self.loop.create_task(coro)
            box.append(t)
            t.add_done_callback(finished)

        def finished(t: asyncio.Task[RunResult]) -> None:
            if t.cancelled():
                end = _Ended(None, None)
            elif (exc := t.exception()) is not None:
                end = _Ended(None, exc)
            else:
                end = _Ended(t.result(), None)
            self.to_greenlets(done, end)

        def cancel() -> None:
            for t in box:
                t.cancel()

        self.loop.call_soon_threadsafe(begin)
        return lambda: self.call(cancel)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the loop (call from any thread)."""
        self.loop.call_soon_threadsafe(fn)


@dataclass(frozen=True)
class _Ended:
    """A session's run is over (result, or the exception that ended it)."""

    result: RunResult | None
    error: BaseException | None


class _Relay:
    """The probe's observer: called on the loop's thread, hands every result over to the
    user's queue in the hub's thread."""

    def __init__(self, loop: _LoopThread, inbox: Any) -> None:
        self._loop = loop
        self._inbox = inbox

    def turn_done(self, result: TurnResult) -> None:
        self._loop.to_greenlets(self._inbox.put_nowait, result)

    def message(self, text: str) -> None:
        self._loop.to_greenlets(log.info, "%s", text)


# --- per-process state (one test at a time) ------------------------------------------


class _Process:
    """What the users of this Locust process share during a test."""

    config: ClassVar[LoadConfig | None] = None
    error: ClassVar[str | None] = None
    utterances: ClassVar[list[Utterance]] = []
    worker: ClassVar[str] = "local"
    directory: ClassVar[Path] = Path()
    users: ClassVar[Iterator[int]] = itertools.count()


def _worker_name(environment: Environment) -> str:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return f"w{runner.worker_index}"
    return "local"


def _fresh(base: Path, name: str) -> str:
    """``name``, or ``name``-r2, -r3 … when DIR/name already holds a test's traces (a second
    test in the same process, or an old run in the same directory)."""
    if not (base / name).exists() or not any((base / name).iterdir()):
        return name
    i = 2
    while (base / f"{name}r{i}").exists():
        i += 1
    return f"{name}r{i}"


def _fail_setup(environment: Environment, exc: VoiceauditError) -> str:
    line = f"error: voiceaudit: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "")
    log.error(line)
    environment.process_exit_code = int(exc.exit_code)
    return line


def _on_parser(parser: Any, **_: Any) -> None:
    _add_arguments(parser)


def _on_init(environment: Environment, **_: Any) -> None:
    """Check the arguments where they were given (master or single process): a bad one
    ends Locust at once with one line and exit code 2, not one traceback per user."""
    opts = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or opts is None:
        return  # a worker gets its arguments from the master at each test start
    if not (getattr(opts, "headless", False) or getattr(opts, "autostart", False)):
        return  # the web UI can still set them; the test's start checks them
    try:
        LoadConfig.from_options(environment.parsed_options, environment.host)
    except VoiceauditError as exc:
        _fail_setup(environment, exc)
        raise SystemExit(int(exc.exit_code)) from None


def _prepare(
    ns: Any, host: str | None, worker: str
) -> tuple[LoadConfig, list[Utterance], str] | VoiceauditError:
    """The test's set-up: check the arguments, import the target's adapter, read the audio
    (and find its speech ends), choose the worker's trace directory. Seconds of work on a
    cold cache: it runs in one of gevent's real threads, since on the hub it would stop
    the worker's heartbeats and the master would take the worker for lost. An expected
    failure is returned, not raised (gevent prints a traceback for what a thread raises)."""
    try:
        cfg = LoadConfig.from_options(ns, host)
        utterances = load_utterances(list(cfg.audio))
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)
            name = _fresh(cfg.out, worker)
            (cfg.out / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot write the traces under {cfg.out}: {exc.strerror or exc}"
            ) from None
    except VoiceauditError as exc:
        return exc
    return cfg, utterances, name


def _on_test_start(environment: Environment, **_: Any) -> None:
    """Where users run (a worker, or a single process): read the arguments as the master
    sent them, load the audio once, choose the worker's trace directory. Users are spawned
    after this returns."""
    if isinstance(environment.runner, MasterRunner):
        return
    _Process.config, _Process.error = None, None
    # The trace header's host facts: platform runs `uname -p` once and caches it. Here, in
    # the hub's thread, where the patched subprocess works (gevent watches children only
    # from its main loop, not from the probe's thread).
    platform.platform()
    prepared = _get_hub().threadpool.apply(
        _prepare, (environment.parsed_options, environment.host, _worker_name(environment))
    )
    if isinstance(prepared, VoiceauditError):
        _Process.error = _fail_setup(environment, prepared)
        return
    cfg, utterances, name = prepared
    _Process.config, _Process.utterances, _Process.worker = cfg, utterances, name
    _Process.directory = cfg.out / name
    _Process.users = itertools.count()
    log.info("voiceaudit: sessions against %s; traces in %s", cfg.describe(), _Process.directory)


events.init_command_line_parser.add_listener(_on_parser)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]


# --- the user ------------------------------------------------------------------------


class _Session:
    """One call: a probe running on the loop, seen from the hub's thread."""

    def __init__(self, loop: _LoopThread, probe: Probe, inbox: Any) -> None:
        self._loop = loop
        self._probe = probe
        self._inbox = inbox
        self.ended = False
        _LIVE.add(self)
        self._cancel = loop.start(probe.run(), self._done)

    def _done(self, end: _Ended) -> None:  # in the hub's thread
        self.ended = True
        _LIVE.discard(self)
        self._inbox.put_nowait(end)

    def stop(self) -> None:
        """Stop the probe now: the turn in flight ends "interrupted" (``Probe.cut``)."""
        self._loop.call(self._probe.cut)

    def wait(self, seconds: float) -> bool:
        """Wait (cooperatively) up to ``seconds`` for the run's end; True when it ended."""
        waited = 0.0
        while not self.ended and waited < seconds:
            _gsleep(0.02)
            waited += 0.02
        return self.ended

    def cancel(self) -> None:
        self._cancel()


#: the sessions still running in this process
_LIVE: set[_Session] = set()


def _on_quitting(environment: Environment, **_: Any) -> None:
    """Before the process exits: let every session write its closing record (the loop's
    thread is not joined at exit), cancelling one that does not stop in time."""
    live = list(_LIVE)
    for s in live:
        s.stop()
    for s in live:
        if not s.wait(STOP_WAIT_S):
            log.warning("voiceaudit: a session did not stop in %g s; cancelled", STOP_WAIT_S)
            s.cancel()
            s.wait(2.0)


events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]


class VoiceauditUser(User):
    """One voiceaudit session (a call) per Locust user, turn after turn until stopped."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._inbox: Any = _Queue()
        self._number = -1
        self._calls = 0
        self._session: _Session | None = None
        self._idle = False

    # Locust's hooks

    def on_start(self) -> None:
        if _Process.config is None:
            # The set-up error was logged once, at the test's start; the task stops the user
            # (StopUser raised here would be logged with a traceback, once per user).
            self._idle = True
            return
        self._number = next(_Process.users)
        self._begin()

    @task
    def listen(self) -> None:
        """Fire the Locust events of the turns that ended; place the next call when one
        ends."""
        if self._idle:
            raise StopUser()
        try:
            item = self._inbox.get(timeout=LISTEN_POLL_S)
        except _Empty:
            return
        if isinstance(item, TurnResult):
            self._fire(item)
            return
        assert isinstance(item, _Ended)
        self._session = None
        if isinstance(item.error, VoiceauditError) and not item.result:
            if item.error.exit_code == 2:  # bad configuration: every call would fail alike
                _fail_setup(self.environment, item.error)
                raise StopUser()
            _gsleep(RETRY_S)  # the target was not there: the failure is in the stats
        elif item.error is not None:
            log.error("voiceaudit: session ended by %r", item.error)
            _gsleep(RETRY_S)
        self._begin()

    def on_stop(self) -> None:
        """Stop the session; fire what ends in the next moment. The trace's closing record
        is written on the loop's thread whatever this user does next; before the process
        exits, the ``quitting`` hook waits for it. (Not waiting here keeps the worker's
        final statistics report within the half second the master waits for it.)"""
        session = self._session
        if session is None:
            return
        session.stop()
        session.wait(STOP_GRACE_S)
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, TurnResult):
                self._fire(item)

    # the session

    def _begin(self) -> None:
        cfg = _Process.config
        if cfg is None:
            raise StopUser()
        k = self._calls
        self._calls += 1
        wid = _Process.worker
        prefix = f"{wid}-u{self._number}-" + (f"c{k}-" if k else "")
        path = _Process.directory / (f"u{self._number}" + (f"-c{k}" if k else "") + ".jsonl")
        loop = _LoopThread.get()
        target = get_target_class(cfg.protocol)(cfg.target_config())
        probe = Probe(
            target,
            _Process.utterances,
            cfg.probe_options(prefix),
            path,
            observer=_Relay(loop, self._inbox),
            run_config={
                "locust": {"worker": wid, "pid": os.getpid(), "user": self._number, "call": k}
            },
        )
        # One pacer for every session on the loop, as in `voiceaudit run --sessions N`: each
        # pacer spins through the last 1.5 ms before its deadline, and fifty of them would
        # spin longer than a frame lasts.
        probe.pacer = loop.pacer
        self._session = _Session(loop, probe, self._inbox)

    def _fire(self, r: TurnResult) -> None:
        if r.warmup or r.reason == "interrupted":
            return  # left out of the statistics, as the report does; still in the trace
        fire = self.environment.events.request.fire
        ctx = {"session": r.session, "turn": r.turn}
        if r.first_byte_ns is not None and r.first_byte_ns >= 0:
            fire(
                request_type=REQUEST_TYPE,
                name=FIRST_BYTE,
                response_time=r.first_byte_ns / NS_PER_MS,
                response_length=0,
                exception=None,
                context=ctx,
            )
        v2v = r.voice_to_voice_ns
        if r.ok and v2v is not None and v2v >= 0:
            fire(
                request_type=REQUEST_TYPE,
                name=VOICE_TO_VOICE,
                response_time=v2v / NS_PER_MS,
                response_length=0,
                exception=None,
                context=ctx,
            )
            return
        # ok but audible before speech end: the report takes it for a failed turn too
        reason = EARLY_REPLY if r.ok else (r.reason or "failed")
        cfg = _Process.config
        # What the caller waited in vain: the timeout for a turn that never heard a reply.
        waited = cfg.timeout_s * 1000 if cfg is not None and reason.startswith("timeout") else 0
        fire(
            request_type=REQUEST_TYPE,
            name=VOICE_TO_VOICE,
            response_time=waited,
            response_length=0,
            exception=TurnFailed(reason),
            context=ctx,
        )


_ = _locust  # imported first for its monkey patching
