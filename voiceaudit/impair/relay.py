"""What every impaired path (the TCP proxy, the UDP relay) holds: the impairment it
applies, the recorder of what it did, the loopback host it listens on, and the pacer that
releases each chunk or datagram at its due time."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

from voiceaudit.impair.record import Recorder
from voiceaudit.impair.spec import Impairment
from voiceaudit.pacing import Pacer


@dataclass(eq=False)
class Relay:
    """The state a :class:`~voiceaudit.impair.tcp.TcpProxy` and a
    :class:`~voiceaudit.impair.udp.UdpRelay` share (each subclass adds its own fields)."""

    imp: Impairment
    rec: Recorder
    _: KW_ONLY
    #: the loopback address the path listens on
    host: str = "127.0.0.1"
    #: releases each chunk or datagram at its due time (a pacer of its own when not given)
    pacer: Pacer = field(default_factory=Pacer)
