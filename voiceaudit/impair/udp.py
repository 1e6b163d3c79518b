"""The UDP impairment relay for WebRTC media: the proxy is each side's ICE peer.

Each real ICE candidate (address, port) of one side is stood in for by a socket of the
relay on loopback: the SDP offer reaching the target names, instead of the probe's
candidates, relay sockets ("the probe as the target sees it"), and the answer reaching
the probe names relay sockets standing in for the target's candidates
(:mod:`voiceaudit.impair.sdp`). A datagram arriving on the socket that stands in for
party X is sent to X from the socket that stands in for its sender, so every path (STUN
checks, DTLS, SRTP, SCTP) runs through the relay in both directions and ICE pairs only
relay addresses. An address first seen as a source (an ICE peer-reflexive candidate) gets
its stand-in socket when it first appears.

Arrival times are the kernel's receive timestamps (``SO_TIMESTAMPNS``, mapped from
CLOCK_REALTIME onto the monotonic clock) when the kernel gives them, so a datagram's
applied delay is counted from the moment it reached the host, as a packet capture sees
it, not from when the event loop got round to it. Each datagram's fate goes to the
record (``datagram``: its RTP sequence number, timestamp and SSRC when it is RTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from voiceaudit.impair.model import UdpLinkModel, link_rngs
from voiceaudit.impair.relay import Relay

#: Linux's SO_TIMESTAMPNS (asm-generic; Python's socket module does not name it)
SO_TIMESTAMPNS = 35
_CMSG_SPACE = socket.CMSG_SPACE(16)

Addr = tuple[str, int]


def classify(data: bytes) -> dict[str, Any]:
    """RFC 7983 demultiplexing of a WebRTC datagram, and the RTP/RTCP header fields."""
    if not data:
        return {"kind": "other"}
    b = data[0]
    if b <= 3:
        return {"kind": "stun"}
    if 20 <= b <= 63:
        return {"kind": "dtls"}
    if 128 <= b <= 191 and len(data) >= 8:
        pt = data[1] & 0x7F
        if 64 <= pt <= 95:  # RTCP (RFC 5761): 200-204 with the marker bit
            return {"kind": "rtcp", "pt": data[1]}
        if len(data) >= 12:
            seq, ts, ssrc = struct.unpack("!HII", data[2:12])
            return {"kind": "rtp", "pt": pt, "seq": seq, "ts": ts, "ssrc": ssrc}
    return {"kind": "other"}


def _clock_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few samples."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) // 2)
    assert best is not None
    return best[1]


class _Flow:
    def __init__(self, relay: UdpRelay, client: Addr, server: Addr) -> None:
        imp = relay.imp
        host = relay.host
        self.id = relay.rec.new_flow(
            "udp",
            client=f"{client[0]}:{client[1]}",
            server=f"{server[0]}:{server[1]}",
            #: the relay sockets each side talks to: the server's stand-in (the probe
            #: sends to it) and the client's stand-in (the target sends to it)
            via=f"{host}:{relay.stand_in(server, 'server')}",
            upstream=f"{host}:{relay.stand_in(client, 'client')}",
        )
        self.links = {
            "up": UdpLinkModel(imp.up, link_rngs(imp.seed, "udp", self.id, "up")),
            "down": UdpLinkModel(imp.down, link_rngs(imp.seed, "udp", self.id, "down")),
        }
        self.n = {"up": 0, "down": 0}


@dataclass(eq=False)
class UdpRelay(Relay):
    """``UdpRelay(impairment, recorder)``: stand-in sockets for both sides' candidates (see
    the module docstring)."""

    #: real address -> its stand-in socket
    _standin: dict[Addr, socket.socket] = field(default_factory=dict, init=False)
    #: stand-in port -> which side it stands in for ("client" | "server") and the address
    _side: dict[int, tuple[str, Addr]] = field(default_factory=dict, init=False)
    _flows: dict[tuple[Addr, Addr], _Flow] = field(default_factory=dict, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _offset: int = field(default_factory=_clock_offset, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    kernel_stamps: int = field(default=0, init=False)
    user_stamps: int = field(default=0, init=False)

    def stand_in(self, addr: Addr, side: str) -> int:
        """The relay port standing in for ``addr`` (a ``client`` or ``server`` address)."""
        sock = self._standin.get(addr)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.host, 0))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._standin[addr] = sock
            self._side[sock.fileno()] = (side, addr)
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop.add_reader(sock.fileno(), self._readable, sock)
        port: int = sock.getsockname()[1]
        return port

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, src = sock.recvmsg(65535, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = time.monotonic_ns()
            t = now
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    k = sec * 1_000_000_000 + nsec - self._offset
                    if k <= now:
                        t = k
                        self.kernel_stamps += 1
                    break
            else:
                self.user_stamps += 1
            self._relay(sock, data, (src[0], src[1]), t, now)

    def _relay(self, sock: socket.socket, data: bytes, src: Addr, t_ns: int, now: int) -> None:
        side, target = self._side[sock.fileno()]
        # sock stands in for `target` (on `side`); the sender is on the other side
        if side == "server":
            direction, client, server = "up", src, target
            sender_side = "client"
        else:
            direction, client, server = "down", target, src
            sender_side = "server"
        self.stand_in(src, sender_side)
        out_sock = self._standin[src]
        key = (client, server)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(self, client, server)
        link = flow.links[direction]
        n = flow.n[direction]
        flow.n[direction] = n + 1
        fate = link.datagram(t_ns, len(data))
        rec: dict[str, Any] = {
            "record": "datagram",
            "flow": flow.id,
            "dir": direction,
            "n": n,
            "len": len(data),
            **classify(data),
            "rx_ns": t_ns,
            "seen_ns": now,
            "state": fate.state,
        }
        if not fate.due_ns:
            rec["fate"] = "queue-drop" if fate.queue_drop else "lost"
            if fate.queue_drop:
                rec["queue_ns"] = fate.queue_ns
            self.rec.write(rec)
            return
        rec["fate"] = "duplicated" if len(fate.due_ns) > 1 else "delivered"
        rec["due_ns"] = list(fate.due_ns)
        rec["delay_ns"] = list(fate.delays_ns)
        rec["queue_ns"] = fate.queue_ns
        rec["tx_ns"] = [None] * len(fate.due_ns)
        rec["tx_done_ns"] = [None] * len(fate.due_ns)
        pending = [len(fate.due_ns)]
        for i, due in enumerate(fate.due_ns):
            task = asyncio.ensure_future(self._send(out_sock, data, target, due, rec, i, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        sock: socket.socket,
        data: bytes,
        dest: Addr,
        due: int,
        rec: dict[str, Any],
        i: int,
        pending: list[int],
    ) -> None:
        try:
            await self.pacer.wait_until(due)
            t = time.monotonic_ns()
            with contextlib.suppress(OSError):
                sock.sendto(data, dest)
                # the datagram is on the wire between the two: a process descheduled
                # inside sendto() reads its second clock late, never its first
                rec["tx_ns"][i] = t
                rec["tx_done_ns"][i] = time.monotonic_ns()
        finally:
            pending[0] -= 1
            if pending[0] == 0:
                if all(t is None for t in rec["tx_ns"]):
                    rec["fate"] = "unsent"  # the relay closed (or the send failed) first
                self.rec.write(rec)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._standin.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._standin.clear()
