"""The TCP impairment proxy: a listener on loopback relaying each connection to the
target, with one :class:`~voiceaudit.impair.model.TcpLinkModel` per direction.

Each direction reads chunks from its socket (asyncio streams, up to 64 KiB at a time),
asks the model when each is due at the far side, and one writer task per direction
writes them in order at that time (:class:`voiceaudit.pacing.Pacer`: sub-millisecond
release). Reading pauses while more than ``BUFFER_LIMIT`` bytes wait, so a slow link
pushes back on the sender as TCP flow control would. An end of stream is passed on after
the last chunk has been delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from voiceaudit.impair.model import TcpLinkModel, link_rngs
from voiceaudit.impair.relay import Relay

READ_SIZE = 65536
#: bytes waiting for delivery before the proxy stops reading from the sender
BUFFER_LIMIT = 4 * 1024 * 1024


def _addr(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{sockname[0]}:{sockname[1]}"
    return str(sockname)


@dataclass(eq=False)
class TcpProxy(Relay):
    """``TcpProxy(impairment, recorder, upstream=(host, port))``: ``await start()``, then
    connect to ``port``; ``await close()`` at the end."""

    #: the target's address, where each accepted connection is relayed
    upstream: tuple[str, int]
    #: the port the proxy listens on, once started
    port: int = field(default=0, init=False)
    _server: asyncio.AbstractServer | None = field(default=None, init=False)
    _conns: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                c_writer.close()
                return
            for w in (c_writer, s_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            flow = self.rec.new_flow(
                "tcp",
                client=_addr(c_writer.get_extra_info("peername")),
                via=_addr(c_writer.get_extra_info("sockname")),
                upstream=_addr(s_writer.get_extra_info("sockname")),
                server=_addr(s_writer.get_extra_info("peername")),
            )
            up = _Direction(self, flow, "up", c_reader, s_writer, self.imp.up)
            down = _Direction(self, flow, "down", s_reader, c_writer, self.imp.down)
            try:
                await asyncio.gather(up.run(), down.run())
            except asyncio.CancelledError:
                pass  # the proxy is closing: drop the connection (a handler must not raise)
            finally:
                for w in (c_writer, s_writer):
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
        finally:
            if task is not None:
                self._conns.discard(task)


class _Direction:
    def __init__(
        self,
        proxy: TcpProxy,
        flow: int,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: object,
    ) -> None:
        from voiceaudit.impair.spec import LinkSpec

        assert isinstance(link, LinkSpec)
        self.proxy = proxy
        self.flow = flow
        self.name = name
        self.reader = reader
        self.writer = writer
        self.model = TcpLinkModel(proxy.imp, link, link_rngs(proxy.imp.seed, "tcp", flow, name))
        self.queue: deque[tuple[int, bytes, dict[str, object]] | None] = deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.buffered = 0
        self.offset = 0

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await writer

    async def _read(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_SIZE)
                t = time.monotonic_ns()
                if not data:
                    break
                fate = self.model.chunk(t, len(data))
                rec: dict[str, object] = {
                    "record": "chunk",
                    "flow": self.flow,
                    "dir": self.name,
                    "off": self.offset,
                    "len": len(data),
                    "rx_ns": t,
                    "due_ns": fate.due_ns,
                    "delay_ns": fate.delay_ns,
                    "queue_ns": fate.queue_ns,
                    "segments": fate.segments,
                    "losses": fate.losses,
                    "hold_ns": fate.hold_ns,
                    "state": fate.state,
                }
                self.offset += len(data)
                self.buffered += len(data)
                if self.buffered > BUFFER_LIMIT:
                    self.room.clear()
                self.queue.append((fate.due_ns, data, rec))
                self.ready.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.queue.append(None)
            self.ready.set()

    async def _write(self) -> None:
        pacer = self.proxy.pacer
        broken = False
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            item = self.queue.popleft()
            if item is None:
                if not broken:
                    with contextlib.suppress(OSError, RuntimeError):
                        if self.writer.can_write_eof():
                            self.writer.write_eof()
                return
            due, data, rec = item
            await pacer.wait_until(due)
            if not broken:
                try:
                    rec["tx_ns"] = time.monotonic_ns()
                    self.writer.write(data)  # asyncio sends at once when nothing is queued
                    rec["tx_done_ns"] = time.monotonic_ns()
                    await self.writer.drain()
                except (ConnectionError, OSError, RuntimeError):
                    broken = True
                    rec["tx_ns"] = None
            else:
                rec["tx_ns"] = None
            rec["fate"] = "unsent" if rec["tx_ns"] is None else "delivered"
            self.proxy.rec.write(rec)
            self.buffered -= len(data)
            if self.buffered <= BUFFER_LIMIT:
                self.room.set()
