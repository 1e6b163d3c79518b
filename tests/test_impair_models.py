"""The impairment models on their own: seeded, counted, order kept (TCP) or not (UDP),
Gilbert-Elliott burst statistics, the SDP rewriting, and the spec parser."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from voiceaudit.errors import UsageError
from voiceaudit.impair import PROFILES, parse_impairment
from voiceaudit.impair.model import LossModel, TcpLinkModel, UdpLinkModel, link_rngs
from voiceaudit.impair.sdp import rewrite_candidate, rewrite_sdp
from voiceaudit.impair.spec import MS, LinkSpec

N = 200_000


def _losses(link: LinkSpec, n: int = N, seed: int = 7) -> list[bool]:
    m = LossModel(link, random.Random(seed))
    return [m.lost() for _ in range(n)]


def _runs(xs: list[bool]) -> list[int]:
    out, k = [], 0
    for x in xs:
        if x:
            k += 1
        elif k:
            out.append(k)
            k = 0
    if k:
        out.append(k)
    return out


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_bernoulli_loss_counts_and_independence() -> None:
    xs = _losses(LinkSpec(loss=0.02))
    assert _binomial_ok(sum(xs), N, 0.02)
    # independent: a loss after a loss is as likely as any loss
    after = [b for a, b in itertools.pairwise(xs) if a]
    assert abs(sum(after) / len(after) - 0.02) < 0.01
    # mean run length of a Bernoulli process: 1 / (1 - p)
    assert abs(statistics.mean(_runs(xs)) - 1 / 0.98) < 0.01


def test_gilbert_elliott_burst_statistics() -> None:
    link = LinkSpec(loss=0.03, burst=4)
    p, r = link.ge_params() or (0.0, 0.0)
    assert r == pytest.approx(0.25)
    assert p / (p + r) == pytest.approx(0.03)  # stationary Bad share = the loss rate
    xs = _losses(link)
    assert abs(sum(xs) / N - 0.03) < 0.004
    runs = _runs(xs)
    # with bad-loss 100 %, good-loss 0 % every Bad sojourn is one loss burst: geometric, mean 4
    assert abs(statistics.mean(runs) - 4) < 0.25
    # P(loss | previous loss) = 1 - r, far above the loss rate
    after = [b for a, b in itertools.pairwise(xs) if a]
    assert abs(sum(after) / len(after) - 0.75) < 0.03
    # a geometric tail: P(run >= 8) = 0.75^7
    assert abs(sum(k >= 8 for k in runs) / len(runs) - 0.75**7) < 0.03


def test_gilbert_elliott_with_partial_loss_in_both_states() -> None:
    link = LinkSpec(loss=0.05, burst=10, bad_loss=0.5, good_loss=0.01)
    xs = _losses(link)
    assert abs(sum(xs) / N - 0.05) < 0.006


def test_seeded_and_reproducible() -> None:
    imp = parse_impairment("delay=20ms,jitter=10ms,loss=5%,burst=2,dup=3%,seed=42")

    def fates(seed_imp: object) -> list[object]:
        m = UdpLinkModel(imp.down, link_rngs(imp.seed, "udp", 1, "down"))
        return [m.datagram(i * 20 * MS, 160) for i in range(2000)]

    assert fates(imp) == fates(imp)
    other = UdpLinkModel(imp.down, link_rngs(43, "udp", 1, "down"))
    assert [other.datagram(i * 20 * MS, 160) for i in range(2000)] != fates(imp)
    # the loss stream does not depend on jitter being on
    a = UdpLinkModel(LinkSpec(loss=0.05), link_rngs(1, "udp", 1, "up"))
    b = UdpLinkModel(LinkSpec(loss=0.05, jitter_ns=9 * MS), link_rngs(1, "udp", 1, "up"))
    assert [a.datagram(i, 100).lost for i in range(3000)] == [
        b.datagram(i, 100).lost for i in range(3000)
    ]


def test_udp_jitter_reorders_and_keeps_the_mean() -> None:
    link = LinkSpec(delay_ns=40 * MS, jitter_ns=15 * MS)
    m = UdpLinkModel(link, link_rngs(1, "udp", 1, "up"))
    sent = [i * 20 * MS for i in range(20_000)]
    due = [m.datagram(t, 160).due_ns[0] for t in sent]
    delays = [d - t for d, t in zip(due, sent, strict=True)]
    assert min(delays) >= 25 * MS and max(delays) <= 55 * MS
    assert abs(statistics.mean(delays) - 40 * MS) < 0.3 * MS
    # uniform on [-J, J]: standard deviation J / sqrt(3)
    assert abs(statistics.pstdev(delays) - 15 * MS / math.sqrt(3)) < 0.3 * MS
    order = sorted(range(len(due)), key=lambda i: due[i])
    assert order != list(range(len(due))), "jitter of 15 ms over 20 ms spacing must reorder"
    # RFC 3550 jitter of i.i.d. uniform delays: E|X - Y| = 2J/3
    j = 0.0
    for k in range(1, len(delays)):
        j += (abs(delays[k] - delays[k - 1]) - j) / 16
    assert abs(statistics.mean(abs(delays[k] - delays[k - 1]) for k in range(1, len(delays)))
               - 2 * 15 * MS / 3) < 0.3 * MS  # fmt: skip


def test_udp_duplication_and_rate_queue() -> None:
    m = UdpLinkModel(LinkSpec(dup=0.1), link_rngs(1, "udp", 1, "up"))
    fates = [m.datagram(i * MS, 100) for i in range(N // 4)]
    dups = sum(len(f.due_ns) == 2 for f in fates)
    assert _binomial_ok(dups, N // 4, 0.1)
    # 64 kbit/s = 8 bytes per ms: 160-byte packets every 10 ms need 20 ms each, so the
    # queue grows by 10 ms per packet until it passes 200 ms and the tail is dropped
    q = UdpLinkModel(LinkSpec(rate_bps=64_000), link_rngs(1, "udp", 1, "up"))
    out = [q.datagram(i * 10 * MS, 160) for i in range(100)]
    assert out[0].due_ns == (20 * MS,)
    # queue_ns counts the wait for the link and the packet's own 20 ms on it
    assert all(f.queue_ns <= 220 * MS for f in out if f.due_ns)
    assert any(f.queue_drop for f in out)
    sent = sorted(d for f in out for d in f.due_ns)
    assert all(b - a >= 20 * MS for a, b in itertools.pairwise(sent))


def test_tcp_keeps_order_and_holds_for_an_rto() -> None:
    imp = parse_impairment("delay=30ms,jitter=20ms,loss=3%,seed=5")
    assert imp.rto_ns == 60 * MS + 200 * MS  # SRTT + max(200 ms, 4 x 10 ms)
    m = TcpLinkModel(imp, imp.down, link_rngs(imp.seed, "tcp", 1, "down"))
    fates = [m.chunk(i * 20 * MS, 1000) for i in range(20_000)]
    dues = [f.due_ns for f in fates]
    assert dues == sorted(dues), "TCP delivers in order"
    lost = [f for f in fates if f.losses]
    assert _binomial_ok(sum(f.losses for f in fates), 20_000, 0.03 / 0.97 * 1.0, sigmas=6)
    # a lost segment is held one RTO (two after a lost retransmission), and everything
    # behind it waits: head-of-line blocking
    for f in lost:
        assert f.hold_ns in (imp.rto_ns, imp.rto_ns * 3, imp.rto_ns * 7)
        assert f.arrival_ns >= f.hold_ns + 10 * MS
    i = next(k for k, f in enumerate(fates) if f.losses == 1)
    blocked = fates[i + 1]
    assert blocked.due_ns == fates[i].due_ns or blocked.due_ns > fates[i].due_ns
    assert blocked.due_ns - (i + 1) * 20 * MS > 200 * MS
    # a chunk of many segments is hit more often than a one-segment chunk
    big = TcpLinkModel(imp, imp.down, link_rngs(imp.seed, "tcp", 2, "down"))
    hit = sum(bool(big.chunk(k * 20 * MS, 14_480).losses) for k in range(5000))
    assert _binomial_ok(hit, 5000, 1 - 0.97**10, sigmas=6)


def test_tcp_retransmission_outlives_the_burst() -> None:
    # a Wi-Fi-like burst (mean 4 packets) takes the original segment, but the
    # retransmission an RTO later meets only the long-run 3 %: a second loss is rare
    imp = parse_impairment("loss=3%,burst=4,seed=2")
    m = TcpLinkModel(imp, imp.down, link_rngs(imp.seed, "tcp", 1, "down"))
    fates = [m.chunk(i * 20 * MS, 500) for i in range(50_000)]
    hit = [f for f in fates if f.losses]
    assert _binomial_ok(len(hit), 50_000, 0.03)
    again = sum(f.losses > 1 for f in hit)
    assert _binomial_ok(again, len(hit), 0.03, sigmas=6)


def test_tcp_rate_cap_serializes() -> None:
    imp = parse_impairment("rate=1mbit,delay=10ms")
    m = TcpLinkModel(imp, imp.up, link_rngs(1, "tcp", 1, "up"))
    a = m.chunk(0, 12_500)  # 100 ms at 1 Mbit/s
    b = m.chunk(0, 12_500)
    assert a.due_ns == 110 * MS and b.due_ns == 210 * MS


def test_spec_parsing() -> None:
    imp = parse_impairment("delay=40ms,jitter=15ms,loss=2%,rate=1mbit")
    assert imp.up == imp.down
    assert imp.up.delay_ns == 40 * MS and imp.up.jitter_ns == 15 * MS
    assert imp.up.loss == pytest.approx(0.02) and imp.up.rate_bps == 1_000_000
    one_way = parse_impairment("down.delay=5ms,up.loss=1.5%,seed=9,rto=300ms")
    assert one_way.down.delay_ns == 5 * MS and one_way.up.delay_ns == 0
    assert one_way.up.loss == pytest.approx(0.015) and one_way.down.loss == 0
    assert one_way.seed == 9 and one_way.rto_min_ns == 300 * MS
    prof = parse_impairment("regional-cloud,loss=1%")
    assert prof.profile == "regional-cloud" and prof.up.delay_ns == 30 * MS
    assert prof.up.loss == pytest.approx(0.01)
    assert parse_impairment("", profile="edge").rtt_ns == 10 * MS
    for name, p in PROFILES.items():
        got = parse_impairment(name)
        assert got.profile == name and p.source and got.describe()["profile_source"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("delay=40", "not a duration"),
        ("loss=2", "not a percentage"),
        ("loss=120%", "above 100%"),
        ("rate=1mbps", "not a rate"),
        ("wobble=3", "unknown impairment key"),
        ("sideways.delay=3ms", "unknown impairment key"),
        ("delay=1ms,,loss=1%", "empty item"),
        ("delay=1ms,delay=2ms", "given twice"),
        ("moon", "unknown network profile"),
        ("loss=2%,burst=0.5", "at least 1 packet"),
        ("loss=60%,burst=3,bad-loss=50%", "must lie between"),
        ("seed=x", "not an integer"),
        ("delay", "unknown network profile"),
    ],
)
def test_bad_specs_are_usage_errors(spec: str, words: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_impairment(spec)
    assert words in e.value.message and "\n" not in e.value.message


def test_candidate_rewriting() -> None:
    ports = {("127.0.0.1", 5000): 6000}

    def mapper(a: tuple[str, int]) -> int:
        return ports.setdefault(a, 7000 + len(ports))

    line = "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
    assert rewrite_candidate(line, mapper, "127.0.0.1") == (
        "a=candidate:1 1 udp 2130706431 127.0.0.1 6000 typ host"
    )
    srflx = "candidate:2 1 UDP 1694498815 10.1.2.3 5001 typ srflx raddr 0.0.0.0 rport 0"
    assert rewrite_candidate(srflx, mapper, "127.0.0.1") == (
        "candidate:2 1 UDP 1694498815 127.0.0.1 7001 typ srflx"
    )
    assert rewrite_candidate("a=candidate:3 1 tcp 1 127.0.0.1 9 typ host", mapper, "h") is None
    assert rewrite_candidate("a=candidate:4 1 udp 1 ::1 5000 typ host", mapper, "h") is None
    sdp = "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "m=audio 5000 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 127.0.0.1",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            "a=candidate:5 1 udp 2130706431 ::1 5002 typ host",
            "a=end-of-candidates",
            "",
        ]
    )
    out = rewrite_sdp(sdp, mapper)
    assert "m=audio 6000 UDP/TLS/RTP/SAVPF 96" in out and "::1" not in out
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1 6000 typ host" in out
    assert out.endswith("\r\n") and "a=end-of-candidates" in out
