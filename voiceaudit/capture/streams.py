"""Application protocols read from reassembled TCP byte streams, timed per segment: the
parser interface, the sink the parsers fill, and telling a stream's protocol.

Each parser is fed ``(from_client, bytes, ts_ns)`` in stream order and keeps only what it
needs to find message boundaries (a header being read, a count of body bytes still to
skip), so memory stays small however long the connection. A byte's time is the time of
the segment that carried it: "first byte" marks use the segment with the first byte,
"complete" marks the segment with the last one, as Wireshark does.

The parsers, one module a protocol: :mod:`~voiceaudit.capture.http` (HTTP/1.x requests,
responses, chunked and streaming bodies, Upgrade; cleartext HTTP/2, h2c or prior
knowledge), :mod:`~voiceaudit.capture.websocket` (RFC 6455 frames, several per segment,
masked or not), :mod:`~voiceaudit.capture.tls` (TLS records and handshake messages) and
:mod:`~voiceaudit.capture.sdp` (SIP over TCP, for SDP).
:class:`~voiceaudit.capture.tcp.TcpTracker` picks a connection's parser from :func:`sniff`
(or a decode-as rule) and feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceaudit.capture.model import HttpExchange, TlsHandshake, WebSocketSession

#: A message head longer than this is taken as a stream we are not in step with.
MAX_HEAD = 64 * 1024
_HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)
#: The start lines of SIP requests and responses.
SIP_STARTS = (
    b"INVITE ",
    b"ACK ",
    b"BYE ",
    b"CANCEL ",
    b"REGISTER ",
    b"OPTIONS ",
    b"PRACK ",
    b"SUBSCRIBE ",
    b"NOTIFY ",
    b"PUBLISH ",
    b"INFO ",
    b"REFER ",
    b"MESSAGE ",
    b"UPDATE ",
    b"SIP/2.0 ",
)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def sniff(first: bytes, from_client: bool) -> str | None:
    """Name the protocol a stream speaks from its first bytes (``None``: unknown yet/never)."""
    if from_client:
        if len(first) >= 3 and first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04:
            return "tls"
        if first.startswith(b"PRI * HTTP/2.0"):
            return "http2"
        if first.startswith(_HTTP_METHODS):
            return "http"
    if first.startswith(SIP_STARTS):
        return "sip"
    return None


def parse_headers(head: bytes) -> tuple[str, dict[str, str]]:
    """Start line and lower-cased headers of an HTTP or SIP head (last value wins)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class StreamParser:
    """Base of the per-connection application parsers."""

    lost_sync = False

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        raise NotImplementedError

    def gap(self, from_client: bool) -> None:
        self.lost_sync = True

    def close(self, from_client: bool, ts: int) -> None:
        """The ``from_client`` side sent FIN or RST at ``ts``."""

    def finish(self, sink: Results) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class Results:
    """Where the parsers put what they found (shared across all connections)."""

    http: list[HttpExchange] = field(default_factory=list)
    websocket: list[WebSocketSession] = field(default_factory=list)
    tls: list[TlsHandshake] = field(default_factory=list)
    max_frames: int = 10_000
    max_exchanges: int = 100_000
    dropped_exchanges: int = 0


class OpaqueParser(StreamParser):
    """A stream we do not read (after an unknown Upgrade, or an unknown protocol)."""

    def feed(self, from_client: bool, data: bytes, ts: int) -> None:
        return

    def finish(self, sink: Results) -> None:
        return
