"""Arrival times that do not depend on when the probe's event loop gets round to a socket.

The probe runs every session on one asyncio loop. A socket the loop reads itself is read
when the loop is free: a callback that blocks the loop for 20 ms (an import, a first
resample, a trace write) holds every byte that arrives meanwhile, and when the loop comes
back it reads them all at once and stamps them all at once. The stall enters the recorded
arrival times, and from there the playout model (an underrun the caller never heard),
voice-to-voice and barge-in stop latency.

So the reading of a connection is *taken over* (:func:`tap`): one process-wide thread
(:class:`RxThread`, its own ``epoll``) reads every tapped socket as soon as data is there,
with ``recvmsg`` and the kernel's receive timestamp (``SO_TIMESTAMPNS``: for TCP the
arrival of the last segment read, per datagram for UDP), and hands each chunk with its
arrival time to the loop. The loop's transport still does everything else: it parses the
chunk (through :class:`_TappedSocket`, which gives its ``recv`` the chunk the thread read),
sends (straight from the loop, no thread hop on the paced send path), handles EOF, errors,
flow control (``pause_reading`` stops the thread reading that socket, so TCP's window
closes as before) and closes. A stalled loop then delays only the *handling* of the
chunks, not their times: each carries the instant it reached the host.

Kernel timestamps are wall-clock (``CLOCK_REALTIME``); each is mapped onto the monotonic
clock by the offset between the two clocks read right after the read. Without one (not
Linux, or a segment that came before timestamping was on) the thread's own reading of the
monotonic clock is the arrival: still independent of the loop, late only by the thread's
wake-up. Only asyncio's selector transports (the default loop on Linux and macOS) can be
tapped; anything else (uvloop, a proactor loop) is left to the loop, and :func:`tap`
returns None so the caller keeps its own stamps. Under gevent's monkey-patching (Locust
workers) nothing is tapped (:func:`disabled`): its threads are greenlets.

Cost: one thread for the process, one ``call_soon_threadsafe`` per chunk read (measured
in bench/rx_tap.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: ``SO_TIMESTAMPNS`` and its control message ``SCM_TIMESTAMPNS`` (asm-generic; Python's
#: socket module does not name them). Linux only.
SO_TIMESTAMPNS = 35
_ANC_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TIMESPEC = struct.Struct("@qq")
#: a kernel stamp further than this before its read is not believed (a clock step)
_MAX_AGE_NS = 10_000_000_000
#: the most one read takes (asyncio's own transports read 256 KiB)
MAX_READ = 256 * 1024

#: ``deliver(stamp_ns, data, feed)``: called on the loop for each chunk read; ``feed()``
#: hands the chunk to the transport (parsing it); ``data`` is b"" for EOF.
Deliver = Callable[[int, bytes, Callable[[], None]], None]


def kernel_stamp(ancdata: list[tuple[int, int, bytes]], now_mono: int, now_wall: int) -> int | None:
    """The monotonic time of the kernel's receive timestamp in ``ancdata`` (from a
    ``recvmsg`` on a socket with ``SO_TIMESTAMPNS``), given both clocks read right after
    the read; None when there is none or it cannot be right."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            wall = int(sec) * 1_000_000_000 + int(nsec)
            if wall == 0:
                return None  # the segment came before timestamping was on
            age = now_wall - wall
            if not 0 <= age <= _MAX_AGE_NS:
                return None
            return now_mono - age
    return None


#: a pair of clock reads further apart than this was interrupted: read it again
_PAIR_SPAN_NS = 20_000


def clock_pair(
    mono: Callable[[], int] = time.monotonic_ns, wall_clock: Callable[[], int] = time.time_ns
) -> tuple[int, int]:
    """The monotonic and the wall clock (ns) read as one instant, for :func:`kernel_stamp`.

    Two reads in a row are not one instant: this thread can lose the GIL (or the CPU)
    between them, and a wall clock read that much later makes every kernel stamp mapped
    with it that much early (seen: arrivals 0.13 ms before the server's send on a busy
    machine). So the wall clock is read between two monotonic reads and its instant is
    their midpoint; a pair further apart than ``_PAIR_SPAN_NS`` is read again (at most
    four times; the tightest pair is used)."""
    best_span, best = -1, (0, 0)
    for _ in range(4):
        m1 = mono()
        wall = wall_clock()
        m2 = mono()
        span = m2 - m1
        if best_span < 0 or span < best_span:
            best_span, best = span, ((m1 + m2) // 2, wall)
        if span <= _PAIR_SPAN_NS:
            break
    return best


class _Chunk:
    __slots__ = ("addr", "data", "error", "stamp")

    def __init__(
        self, stamp: int, data: bytes, addr: Any = None, error: OSError | None = None
    ) -> None:
        self.stamp = stamp
        self.data = data
        self.addr = addr
        self.error = error


class RxThread:
    """The one thread that reads every tapped socket (started on first use)."""

    _instance: RxThread | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> RxThread:
        with cls._lock:
            if cls._instance is None or not cls._instance._thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._cmds: deque[Callable[[], None]] = deque()
        self._thread = threading.Thread(target=self._run, name="voiceaudit-rx", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], None], *, wait: bool = False) -> None:
        """Run ``fn`` on the thread (selector changes happen there only); with ``wait``,
        return once it has run."""
        if threading.get_ident() == self._thread.ident:
            fn()
            return
        done = threading.Event() if wait else None

        def cmd() -> None:
            try:
                fn()
            finally:
                if done is not None:
                    done.set()

        self._cmds.append(cmd)
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"x")
        if done is not None:
            done.wait(2.0)

    def register(self, tap: _Tap) -> None:
        def reg() -> None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.register(tap.fd, selectors.EVENT_READ, tap)

        self.call(reg)

    def unregister(self, tap: _Tap, *, wait: bool = False) -> None:
        def unreg() -> None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(tap.fd)

        self.call(unreg, wait=wait)

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                    while self._cmds:
                        self._cmds.popleft()()
                    continue
                tap: _Tap = key.data
                try:
                    tap.readable()
                except Exception as exc:  # never let one socket kill the thread
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._sel.unregister(tap.fd)
                    tap.push(_Chunk(time.monotonic_ns(), b"", error=OSError(str(exc))))


class _TappedSocket:
    """What the transport reads from once tapped: the chunks the thread read, in order.
    Everything else (send, shutdown, options) goes to the real socket."""

    def __init__(self, real: socket.socket, tap: _Tap) -> None:
        self._real = real
        self._tap = tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _take(self) -> _Chunk:
        c = self._tap.current
        if c is None:
            raise BlockingIOError
        self._tap.current = None
        if c.error is not None:
            raise c.error
        return c

    def recv(self, n: int, flags: int = 0) -> bytes:
        c = self._take()
        if len(c.data) > n:
            self._tap.put_back(_Chunk(c.stamp, c.data[n:]))
            return c.data[:n]
        return c.data

    def recv_into(self, buf: Any, nbytes: int = 0, flags: int = 0) -> int:
        c = self._take()
        view = memoryview(buf).cast("B")
        room = len(view) if nbytes <= 0 else min(nbytes, len(view))
        n = min(room, len(c.data))
        view[:n] = c.data[:n]
        if n < len(c.data):
            self._tap.put_back(_Chunk(c.stamp, c.data[n:]))
        return n

    def recvfrom(self, n: int, flags: int = 0) -> tuple[bytes, Any]:
        c = self._take()
        return c.data[:n], c.addr

    def close(self) -> None:
        # The thread must be done with the descriptor before it is closed (and reused).
        self._tap.stop()
        self._real.close()


class _Tap:
    """One tapped transport: read on :class:`RxThread`, handled on the loop."""

    def __init__(
        self,
        transport: Any,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
        *,
        stream: bool,
    ) -> None:
        self.transport = transport
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.deliver = deliver
        self.stream = stream
        self.rx = RxThread.get()
        self._chunks: deque[_Chunk] = deque()
        self._scheduled = False
        self.paused = False
        self.stopped = False
        #: a stream's EOF or error was read: nothing more to read from it
        self.ended = False
        #: the chunk the transport is reading now (see _TappedSocket)
        self.current: _Chunk | None = None
        #: chunks read: with a kernel timestamp, and in all
        self.kernel_stamped = 0
        self.chunks = 0
        self._last_stamp = 0

    # -- the thread's side ----------------------------------------------------------------

    def readable(self) -> None:
        try:
            data, anc, _flags, addr = self.sock.recvmsg(MAX_READ, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if self.stream:
                self.ended = True
                self.rx.unregister(self)
            self.push(_Chunk(time.monotonic_ns(), b"", error=exc))
            return
        now, wall = clock_pair()
        stamp = kernel_stamp(anc, now, wall) if anc else None
        self.chunks += 1
        if stamp is None:
            stamp = now
        else:
            self.kernel_stamped += 1
        if self.stream:
            # TCP stamps the last segment read, which flow control and coalescing can make
            # earlier than the previous read's: bytes later in a stream were not there first
            stamp = max(stamp, self._last_stamp)
            self._last_stamp = stamp
        if self.stream and not data:
            self.ended = True
            self.rx.unregister(self)  # EOF: nothing more to read
        self.push(_Chunk(stamp, data, addr))

    def push(self, chunk: _Chunk) -> None:
        self._chunks.append(chunk)
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody will read
                self.stopped = True
                self.rx.unregister(self)

    # -- the loop's side ------------------------------------------------------------------

    def put_back(self, chunk: _Chunk) -> None:
        self._chunks.appendleft(chunk)

    def _drain(self) -> None:
        self._scheduled = False
        t = self.transport
        while self._chunks and not self.paused and not self.stopped:
            chunk = self._chunks.popleft()
            self.current = chunk

            def feed(c: _Chunk = chunk) -> None:
                if self.current is c:
                    t._read_ready()

            try:
                self.deliver(chunk.stamp, chunk.data, feed)
            except Exception as exc:  # the stamps' bookkeeping failed: the data must not
                self.loop.call_exception_handler(
                    {"message": "voiceaudit receive tap: deliver failed", "exception": exc}
                )
            finally:
                if self.current is chunk:
                    feed()  # the deliverer did not feed it: the transport still must
                self.current = None

    def pause(self) -> None:
        if not self.paused and not self.stopped:
            self.paused = True
            self.rx.unregister(self)

    def resume(self) -> None:
        if self.paused and not self.stopped and not self.transport.is_closing():
            self.paused = False
            if not self.ended:
                self.rx.register(self)
            if self._chunks and not self._scheduled:
                self._scheduled = True
                self.loop.call_soon(self._drain)

    def is_reading(self) -> bool:
        return not self.paused and not self.stopped and not self.transport.is_closing()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.rx.unregister(self, wait=True)


def _plain_deliver(stamp: int, data: bytes, feed: Callable[[], None]) -> None:
    feed()


def _no_reader(*_args: Any) -> None:
    pass


def raw_transport(transport: Any) -> Any:
    """The socket transport under ``transport`` (asyncio's TLS transport wraps one)."""
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:
        return getattr(ssl_protocol, "_transport", None)
    return transport


def tap(transport: Any, deliver: Deliver | None = None) -> _Tap | None:
    """Take over the reading of ``transport`` (a TCP or UDP transport of asyncio's
    selector loop, or its TLS wrapper): from now on its data is read on the
    :class:`RxThread` with each chunk's arrival time, and ``deliver(stamp, data, feed)``
    runs on the loop for each (``feed()`` parses it). Returns None, changing nothing,
    where that cannot be done (another loop or transport kind, a closing transport)."""
    from asyncio import selector_events

    raw = raw_transport(transport)
    stream_cls = getattr(selector_events, "_SelectorSocketTransport", None)
    datagram_cls = getattr(selector_events, "_SelectorDatagramTransport", None)
    stream = stream_cls is not None and isinstance(raw, stream_cls)
    datagram = datagram_cls is not None and isinstance(raw, datagram_cls)
    if not (stream or datagram) or raw.is_closing():
        return None
    sock = getattr(raw, "_sock", None)
    loop = getattr(raw, "_loop", None)
    if not isinstance(sock, socket.socket) or loop is None or not hasattr(sock, "recvmsg"):
        return None
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    t = _Tap(raw, sock, loop, deliver or _plain_deliver, stream=stream)
    was_paused = not raw.is_reading()
    # The loop stops watching the socket for reading, for good: the transport's own
    # pause/resume would add the loop's reader back, so they steer the thread instead.
    raw.pause_reading()
    raw._sock = _TappedSocket(sock, t)
    raw.pause_reading = t.pause
    raw.resume_reading = t.resume
    raw.is_reading = t.is_reading
    raw._add_reader = _no_reader  # a resume scheduled before the tap must not add it back
    if was_paused:
        t.paused = True
    else:
        t.rx.register(t)
    return t


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process (a Locust worker,
    voiceaudit/load/locust.py): a thread started the usual way is then a greenlet on
    another thread's hub, and gevent's locks are not for crossing OS threads."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:
        return True


def disabled() -> bool:
    """Reading stays with the loop: asked for with ``VOICEAUDIT_RX_TAP=0`` (for comparison,
    bench/rx_tap.py), and under gevent's monkey-patching (:func:`gevent_patched`)."""
    return os.environ.get("VOICEAUDIT_RX_TAP", "1") == "0" or gevent_patched()
