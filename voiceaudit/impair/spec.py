"""Impairment specs: ``delay=40ms,jitter=15ms,loss=2%,rate=1mbit`` and named profiles.

A spec is a comma-separated list of ``KEY=VALUE`` items, optionally led by a profile name
(``regional-cloud,loss=1%`` is the profile with its loss replaced). Link keys apply to
both directions; ``up.KEY`` (probe → target, the caller's uplink) or ``down.KEY``
(target → probe) to one. See docs/network-conditions.md for the model behind each key.

Link keys: ``delay`` (one-way, a duration), ``jitter`` (a duration J: each packet's delay
is ``delay + U(-J, +J)``), ``loss`` (a percentage: the long-run loss rate), ``burst``
(mean loss-burst length in packets: Gilbert-Elliott instead of independent losses),
``bad-loss`` / ``good-loss`` (loss probability in the Gilbert-Elliott Bad / Good state,
default 100 % / 0 %), ``dup`` (a percentage of datagrams sent twice; UDP only), ``rate``
(a bandwidth cap: ``bit``, ``kbit``, ``mbit``, ``gbit``), ``queue`` (with ``rate``: the
longest a datagram may wait for the link before it is dropped; default 200 ms).
Global keys: ``seed`` (an integer; default 1), ``rto`` (TCP's minimum retransmission
timeout, default 200 ms as Linux's ``TCP_RTO_MIN``), ``mss`` (bytes per modelled TCP
segment, default 1448).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from voiceaudit.errors import UsageError

MS = 1_000_000

#: link keys and what their values are
_LINK_KEYS = {
    "delay": "duration",
    "jitter": "duration",
    "loss": "percent",
    "burst": "number",
    "bad-loss": "percent",
    "good-loss": "percent",
    "dup": "percent",
    "rate": "rate",
    "queue": "duration",
}
_GLOBAL_KEYS = {"seed": "integer", "rto": "duration", "mss": "integer"}


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What one direction of the path does to the traffic."""

    delay_ns: int = 0
    jitter_ns: int = 0
    #: long-run loss probability
    loss: float = 0.0
    #: mean length of a Bad-state sojourn (packets); None: independent (Bernoulli) losses
    burst: float | None = None
    #: Gilbert-Elliott loss probability in the Bad and Good states
    bad_loss: float = 1.0
    good_loss: float = 0.0
    #: probability that a datagram is duplicated (UDP)
    dup: float = 0.0
    #: bandwidth cap in bits per second (None: no cap)
    rate_bps: int | None = None
    #: with a rate cap: the longest queueing delay before a datagram is dropped (UDP)
    queue_ns: int = 200 * MS

    @property
    def is_identity(self) -> bool:
        return (
            self.delay_ns == 0
            and self.jitter_ns == 0
            and self.loss == 0
            and self.dup == 0
            and self.rate_bps is None
        )

    def ge_params(self) -> tuple[float, float] | None:
        """Gilbert-Elliott transition probabilities (p = P(Good→Bad), r = P(Bad→Good)),
        chosen so the long-run loss rate is ``loss`` and a Bad sojourn lasts ``burst``
        packets on average; None for independent losses."""
        if self.burst is None or self.loss == 0:
            return None
        r = 1.0 / self.burst
        pi_bad = (self.loss - self.good_loss) / (self.bad_loss - self.good_loss)
        if pi_bad >= 1:
            return (1.0, 0.0)
        return (r * pi_bad / (1 - pi_bad), r)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"delay_ms": self.delay_ns / MS, "jitter_ms": self.jitter_ns / MS}
        d["loss_percent"] = round(self.loss * 100, 6)
        if self.burst is not None:
            d["burst"] = self.burst
            d["bad_loss_percent"] = round(self.bad_loss * 100, 6)
            d["good_loss_percent"] = round(self.good_loss * 100, 6)
            ge = self.ge_params()
            if ge is not None:
                d["ge_p"], d["ge_r"] = round(ge[0], 9), round(ge[1], 9)
        if self.dup:
            d["dup_percent"] = round(self.dup * 100, 6)
        if self.rate_bps is not None:
            d["rate_bps"] = self.rate_bps
            d["queue_ms"] = self.queue_ns / MS
        return d


@dataclass(frozen=True, slots=True)
class Impairment:
    """Both directions, the seed and the TCP loss model's parameters."""

    up: LinkSpec = field(default_factory=LinkSpec)
    down: LinkSpec = field(default_factory=LinkSpec)
    seed: int = 1
    rto_min_ns: int = 200 * MS
    mss: int = 1448
    #: the profile it started from, if any
    profile: str | None = None
    #: the spec as given (for the trace header)
    text: str = ""

    @property
    def rtt_ns(self) -> int:
        """The path's base round trip (both one-way delays)."""
        return self.up.delay_ns + self.down.delay_ns

    @property
    def rto_ns(self) -> int:
        """The modelled TCP retransmission timeout: SRTT + max(RTO_min, 4·RTTVAR), with
        SRTT the base RTT and RTTVAR the mean absolute deviation of the RTT that the two
        directions' uniform jitters give (J/2 each), as Linux computes it (its RTTVAR
        never drops below ``tcp_rto_min``)."""
        rttvar = (self.up.jitter_ns + self.down.jitter_ns) // 2
        return self.rtt_ns + max(self.rto_min_ns, 4 * rttvar)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.text}
        if self.profile:
            d["profile"] = self.profile
            d["profile_source"] = PROFILES[self.profile].source
        d.update(
            {
                "up": self.up.describe(),
                "down": self.down.describe(),
                "seed": self.seed,
                "tcp": {
                    "rto_ms": self.rto_ns / MS,
                    "rto_min_ms": self.rto_min_ns / MS,
                    "mss": self.mss,
                },
                "record": "impairment.jsonl",
            }
        )
        return d


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    spec: str
    summary: str
    #: where the figures come from (docs/network-conditions.md has the full citations)
    source: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "lan",
            "delay=0.25ms,jitter=0.1ms",
            "wired LAN: ~0.5 ms RTT",
            "switched Ethernet RTT under 1 ms; the proxy's own timer resolution (~0.1 ms) "
            "is of the same order",
        ),
        Profile(
            "edge",
            "delay=5ms,jitter=1ms",
            "edge / same-metro server: ~10 ms RTT",
            "metro-area RTTs of 5-15 ms (WonderNetwork city-pair pings; Martinez et al. "
            "2023, arXiv:2301.07788)",
        ),
        Profile(
            "regional-cloud",
            "delay=30ms,jitter=3ms,loss=0.1%",
            "cloud region in the same continent: ~60 ms RTT",
            "WonderNetwork city pairs within a continent: Dallas-Fremont 44 ms, "
            "Fremont-New York 77 ms, Milan-Moscow 67 ms",
        ),
        Profile(
            "cross-continent",
            "delay=75ms,jitter=5ms,loss=0.3%",
            "server on another continent: ~150 ms RTT",
            "WonderNetwork: Fremont-Paris 176 ms, Baltimore-Moscow 141 ms, New York-Milan "
            "112 ms; ITU-T G.114's 150 ms one-way limit",
        ),
        Profile(
            "mobile-4g",
            "delay=25ms,jitter=12ms,loss=1%,burst=3",
            "4G/LTE phone: ~50 ms RTT, jitter, short loss bursts",
            "OpenSignal 2019: no country's 4G latency experience under 30 ms, 13 of 87 "
            "under 40 ms; Rohde & Schwarz TWAMP measurements of LTE jitter",
        ),
        Profile(
            "bad-wifi",
            "delay=4ms,jitter=8ms,loss=3%,burst=4",
            "congested Wi-Fi hop: loss bursts and jitter",
            "Wi-Fi hop latency above 20 ms for over half of TCP packets on a campus "
            "(Hu et al., 'WiFi can be the weakest link'); bursty 802.11 loss "
            "(Gilbert-Elliott fits, Cardoso & de Rezende 2009)",
        ),
    )
}

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(us|ms|s)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)%$")
_RATE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}
_TIME_UNITS = {"us": 1_000, "ms": MS, "s": 1_000_000_000}

_KEYS_HINT = (
    "keys: delay, jitter, loss, burst, bad-loss, good-loss, dup, rate, queue (each also as "
    "up.KEY / down.KEY), seed, rto, mss; profiles: " + ", ".join(PROFILES)
)


#: kind -> (pattern of a number and its unit, the unit's scale, what it is, how to write it)
_WITH_UNIT: dict[str, tuple[re.Pattern[str], dict[str, int], str, str]] = {
    "duration": (_DURATION, _TIME_UNITS, "a duration", "write it with a unit: 40ms, 1.5s, 500us"),
    "rate": (
        _RATE,
        _RATE_UNITS,
        "a rate",
        "bits per second with a unit: 64kbit, 1mbit, 2.5mbit, 1gbit",
    ),
}


def _value(key: str, kind: str, raw: str) -> Any:
    v = raw.strip().lower()
    if kind in _WITH_UNIT:
        pattern, units, what, hint = _WITH_UNIT[kind]
        m = pattern.match(v)
        if not m:
            raise UsageError(f"impairment {key}={raw!r} is not {what}", hint=hint)
        n = round(float(m.group(1)) * units[m.group(2)])
        if kind == "rate" and n < 8_000:
            raise UsageError(f"impairment {key}={raw!r} is below 8kbit (one byte per ms)")
        return n
    if kind == "percent":
        m = _PERCENT.match(v)
        if not m:
            raise UsageError(
                f"impairment {key}={raw!r} is not a percentage", hint="write it as 2% or 0.5%"
            )
        p = float(m.group(1)) / 100
        if p > 1:
            raise UsageError(f"impairment {key}={raw!r} is above 100%")
        return p
    if kind == "number":
        try:
            x = float(v)
        except ValueError:
            raise UsageError(f"impairment {key}={raw!r} is not a number") from None
        if not math.isfinite(x) or x < 1:
            raise UsageError(
                f"impairment {key}={raw!r}: a mean burst is at least 1 packet",
                hint="burst=3 means loss bursts of 3 packets on average",
            )
        return x
    try:
        return int(v, 10)
    except ValueError:
        raise UsageError(f"impairment {key}={raw!r} is not an integer") from None


_FIELD = {
    "delay": "delay_ns",
    "jitter": "jitter_ns",
    "loss": "loss",
    "burst": "burst",
    "bad-loss": "bad_loss",
    "good-loss": "good_loss",
    "dup": "dup",
    "rate": "rate_bps",
    "queue": "queue_ns",
}


def _check_link(name: str, link: LinkSpec) -> None:
    mixed = link.good_loss <= link.loss <= link.bad_loss and link.good_loss < link.bad_loss
    if link.burst is not None and link.loss > 0 and not mixed:
        raise UsageError(
            f"impairment {name}: loss {link.loss:.2%} must lie between good-loss "
            f"{link.good_loss:.2%} and bad-loss {link.bad_loss:.2%}",
            hint="the long-run loss of a Gilbert-Elliott channel is a mix of its two states'",
        )
    if link.delay_ns > 60_000_000_000 or link.jitter_ns > 60_000_000_000:
        raise UsageError(f"impairment {name}: delay and jitter above 60s are not a network")


def parse_impairment(text: str, *, profile: str | None = None) -> Impairment:
    """Parse a spec (see the module docstring); ``profile`` (``--network``) is a base the
    spec's keys override. Raises :class:`UsageError` with one line for anything wrong."""
    items = [s.strip() for s in text.split(",")] if text.strip() else []
    if any(not s for s in items):
        raise UsageError(f"impairment {text!r} has an empty item", hint=_KEYS_HINT)
    if items and "=" not in items[0]:
        if profile is not None:
            raise UsageError(
                f"impairment {text!r} names a profile and --network names {profile!r}",
                hint="give the profile once",
            )
        profile, items = items[0], items[1:]
    base: list[str] = []
    if profile is not None:
        key = profile.strip().lower()
        if key not in PROFILES:
            raise UsageError(f"unknown network profile {profile!r}", hint=_KEYS_HINT)
        profile = key
        base = PROFILES[key].spec.split(",")
    up: dict[str, Any] = {}
    down: dict[str, Any] = {}
    glob: dict[str, Any] = {}
    for source, group in (("profile", base), ("spec", items)):
        seen: set[str] = set()
        for item in group:
            k, sep, v = item.partition("=")
            k = k.strip().lower()
            if not sep or not k or not v.strip():
                raise UsageError(
                    f"impairment item {item!r} must look like KEY=VALUE", hint=_KEYS_HINT
                )
            if source == "spec":
                if k in seen:
                    raise UsageError(f"impairment key {k!r} is given twice")
                seen.add(k)
            direction, dot, bare = k.partition(".")
            if not dot:
                direction, bare = "both", k
            if direction not in ("both", "up", "down"):
                raise UsageError(f"unknown impairment key {k!r}", hint=_KEYS_HINT)
            if bare in _GLOBAL_KEYS and direction == "both":
                glob[bare] = _value(k, _GLOBAL_KEYS[bare], v)
                continue
            if bare not in _LINK_KEYS:
                raise UsageError(f"unknown impairment key {k!r}", hint=_KEYS_HINT)
            val = _value(k, _LINK_KEYS[bare], v)
            if direction in ("both", "up"):
                up[_FIELD[bare]] = val
            if direction in ("both", "down"):
                down[_FIELD[bare]] = val
    up_l = dataclasses.replace(LinkSpec(), **up)
    down_l = dataclasses.replace(LinkSpec(), **down)
    _check_link("up", up_l)
    _check_link("down", down_l)
    mss = glob.get("mss", 1448)
    if not 64 <= mss <= 65535:
        raise UsageError(f"impairment mss={mss} is outside 64-65535")
    seed = glob.get("seed", 1)
    if seed < 0:
        raise UsageError("impairment seed must not be negative")
    rto = glob.get("rto", 200 * MS)
    if rto <= 0:
        raise UsageError("impairment rto must be positive")
    shown = ",".join(([profile] if profile else []) + items)
    return Impairment(
        up=up_l, down=down_l, seed=seed, rto_min_ns=rto, mss=mss, profile=profile, text=shown
    )
