"""Packet captures: record them (dumpcap), analyse them, put them on the probe's clock.

The public surface:

- :func:`analyze_capture` reads a pcap/pcapng file and returns a :class:`NetReport`
  (RTP streams with Wireshark-equal statistics, TCP connections, TLS/DTLS handshakes,
  HTTP exchanges, WebSocket sessions, STUN transactions);
- :class:`Dumpcap` records a capture while a run goes on;
- :func:`to_probe_clock` and :func:`network_events` map a report onto the probe's
  monotonic clock for the latency ledger.
"""

from voiceaudit.capture.analyze import DecodeAs, analyze_capture, parse_clock_rate, parse_decode_as
from voiceaudit.capture.model import (
    Distribution,
    HttpExchange,
    NetReport,
    RtpStream,
    SmallWriteStall,
    StunTransaction,
    TcpConnection,
    TcpEvent,
    TlsHandshake,
    WebSocketFrame,
    WebSocketSession,
)

__all__ = [
    "DecodeAs",
    "Distribution",
    "HttpExchange",
    "NetReport",
    "RtpStream",
    "SmallWriteStall",
    "StunTransaction",
    "TcpConnection",
    "TcpEvent",
    "TlsHandshake",
    "WebSocketFrame",
    "WebSocketSession",
    "analyze_capture",
    "parse_clock_rate",
    "parse_decode_as",
]
