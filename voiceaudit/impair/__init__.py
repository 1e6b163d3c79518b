"""A user-space network impairment layer on loopback (docs/network-conditions.md).

- :func:`parse_impairment` reads ``delay=40ms,jitter=15ms,loss=2%,rate=1mbit`` or a named
  profile (:data:`PROFILES`) into an :class:`Impairment`;
- :func:`impaired` is an async context manager that places the proxy between the probe
  and a target and yields the URL to connect to; every chunk's and datagram's fate goes
  to the ground-truth record (:mod:`voiceaudit.impair.record`).
"""

from voiceaudit.impair.proxy import RECORD_NAME, impaired
from voiceaudit.impair.record import read_record
from voiceaudit.impair.spec import PROFILES, Impairment, LinkSpec, Profile, parse_impairment

__all__ = [
    "PROFILES",
    "RECORD_NAME",
    "Impairment",
    "LinkSpec",
    "Profile",
    "impaired",
    "parse_impairment",
    "read_record",
]
