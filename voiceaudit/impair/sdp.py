"""Rewriting ICE candidates so that the impairment relay is each side's only peer.

Every UDP candidate (``a=candidate:…`` in an SDP, or a bare ``candidate:…`` string as
trickled ICE sends it) gets the relay's address and the port of the relay socket that
stands in for it; candidates over TCP and IPv6 ones are dropped (the relay is UDP on
IPv4 loopback), and so is a candidate's ``raddr``/``rport``. The ``c=`` line and the
``m=`` port (the default candidate) are rewritten the same way.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

#: (real address, real port) -> relay port
Mapper = Callable[[tuple[str, int]], int]

_CAND = re.compile(
    r"^(?P<pre>(?:a=)?candidate:\S+\s+\d+\s+)(?P<proto>\S+)(?P<mid>\s+\d+\s+)"
    r"(?P<addr>\S+)\s+(?P<port>\d+)(?P<rest>\s+typ\s+\S+.*)$",
    re.IGNORECASE,
)
_RADDR = re.compile(r"\s+raddr\s+\S+\s+rport\s+\d+", re.IGNORECASE)


def _ipv4(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).version == 4
    except ValueError:
        return False


def rewrite_candidate(line: str, mapper: Mapper, host: str) -> str | None:
    """The candidate pointed at the relay, or None when it is to be dropped."""
    m = _CAND.match(line.strip())
    if m is None:
        return line
    if m.group("proto").lower() != "udp" or not _ipv4(m.group("addr")):
        return None
    port = mapper((m.group("addr"), int(m.group("port"))))
    rest = _RADDR.sub("", m.group("rest"))
    return f"{m.group('pre')}{m.group('proto')}{m.group('mid')}{host} {port}{rest}"


def rewrite_sdp(sdp: str, mapper: Mapper, host: str = "127.0.0.1") -> str:
    """The SDP with every candidate, ``c=`` and ``m=`` port pointed at the relay."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    # the first pass maps candidates, so the default candidate (m= port + c=) can follow
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = []
    session_c: str | None = None
    for sec in sections:
        c_addr = session_c
        for line in sec:
            if line.startswith("c=IN IP4 "):
                c_addr = line.split()[2]
                if not sec or not sec[0].startswith("m="):
                    session_c = c_addr
        mapped_default: int | None = None
        new: list[str] = []
        for line in sec:
            if line.lower().startswith("a=candidate:"):
                r = rewrite_candidate(line, mapper, host)
                if r is not None:
                    new.append(r)
                continue
            new.append(line)
        if sec and sec[0].startswith("m=") and c_addr and _ipv4(c_addr):
            parts = sec[0].split()
            try:
                port = int(parts[1])
            except (IndexError, ValueError):
                port = 0
            if port not in (0, 9):
                mapped_default = mapper((c_addr, port))
                parts[1] = str(mapped_default)
                new[0] = " ".join(parts)
        for i, line in enumerate(new):
            keep = line.startswith("c=IN IP4 0.0.0.0") and mapped_default is None
            if line.startswith("c=IN IP4 ") and not keep:
                new[i] = f"c=IN IP4 {host}"
            elif line.startswith("a=rtcp:"):
                bits = line[7:].split()
                if len(bits) >= 4 and _ipv4(bits[3]):
                    new[i] = f"a=rtcp:{mapper((bits[3], int(bits[0])))} IN IP4 {host}"
        out.extend(new)
    return eol.join(out)
