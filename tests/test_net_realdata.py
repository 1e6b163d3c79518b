"""voiceaudit's network analysis on real third-party captures, against Wireshark's figures.

Expected values are the ones written in ``shared/realdata/MANIFEST.md`` (produced there by
TShark 4.0.17) and Wireshark's own test oracle
(``telemetry/wireshark_sharkd_expected_sip-rtp.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from voiceaudit.capture import NetReport, analyze_capture

WIRESHARK_VERSION = "4.0.17"  # the version that produced the expected figures below


def realdata() -> Path:
    env = os.environ.get("VOICEAUDIT_REALDATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
    if not (root / "pcap").is_dir():
        # As the shared conftest does: fail loudly, so a run without the data cannot pass.
        pytest.fail(f"real captures not found at {root} (set VOICEAUDIT_REALDATA)", pytrace=False)
    return root


def pcap(name: str) -> Path:
    return realdata() / "pcap" / name


_cache: dict[tuple[str, bool], NetReport] = {}


def report(name: str, heuristic: bool = False) -> NetReport:
    key = (name, heuristic)
    if key not in _cache:
        _cache[key] = analyze_capture(pcap(name), heuristic_rtp=heuristic)
    return _cache[key]


# (capture, heuristic run, src, dst, SSRC, payload names, packets, lost,
#  min/mean/max delta ms, min/mean/max jitter ms) -- None: not known (no clock rate).
MANIFEST_STREAMS = [
    (
        "wsample_SIP_CALL_RTP_G711.pcap",
        False,
        "200.57.7.202:30000",
        "200.57.7.196:40362",
        0x00002E3D,
        "g711A",
        6,
        0,
        (19.805, 22.008, 30.043),
        (0.012, 0.257, 0.639),
    ),
    (
        "wsample_SIP_CALL_RTP_G711.pcap",
        False,
        "200.57.7.196:40376",
        "200.57.7.204:8000",
        0x58F33DEA,
        "g711A",
        891,
        0,
        (18.870, 20.498, 379.905),
        (0.004, 0.099, 0.251),
    ),
    (
        "wsample_SIP_CALL_RTP_G711.pcap",
        False,
        "200.57.7.204:8000",
        "200.57.7.196:40376",
        0xD2BD4E3E,
        "g711A",
        548,
        0,
        (0.159, 44.102, 5843.742),
        (0.388, 2.517, 7.407),
    ),
    (
        "wsample_sip-rtp-g711.pcap",
        False,
        "10.0.2.15:28102",
        "10.0.2.20:6000",
        0x343FFA34,
        "g711A",
        414,
        0,
        (19.867, 20.000, 20.115),
        (0.001, 0.004, 0.019),
    ),
    (
        "wsample_sip-rtp-g711.pcap",
        False,
        "10.0.2.15:27942",
        "10.0.2.20:6000",
        0x343DA99B,
        "g711U",
        425,
        0,
        (19.957, 20.000, 20.049),
        (0.001, 0.006, 0.010),
    ),
    (
        "wsample_sip-rtp-g722.pcap",
        False,
        "10.0.2.15:17472",
        "10.0.2.20:6000",
        0x043DAABA,
        "g722",
        425,
        0,
        (15.010, 20.000, 24.998),
        (0.001, 0.031, 0.612),
    ),
    (
        "wsample_sip-rtp-opus-hybrid.pcap",
        False,
        "10.0.2.15:24196",
        "10.0.2.20:6000",
        0x043EEE04,
        "opus",
        5,
        311,
        (160.056, 1575.018, 3360.015),
        (0.003, 0.004, 0.004),
    ),
    (
        "wsample_SIP_DTMF2.cap",
        False,
        "192.168.105.172:4376",
        "192.168.105.110:4376",
        0x5711BF84,
        "g711A, telephone-event",
        666,
        0,
        (29.930, 30.001, 30.068),
        (0.002, 1.522, 15.767),
    ),
    (
        "wsample_SIP_DTMF2.cap",
        False,
        "192.168.105.110:4374",
        "192.168.105.172:4376",
        0x9A7B5382,
        "g711A",
        665,
        2,
        (29.902, 30.092, 60.002),
        (0.003, 0.010, 0.019),
    ),
    (
        "wsample_Asterisk_ZFONE_XLITE.pcap",
        False,
        "192.168.10.41:64508",
        "192.168.10.2:18874",
        0xBEE0F2ED,
        "g711U",
        2,
        0,
        (20.427, 20.427, 20.427),
        (0.027, 0.027, 0.027),
    ),
    (
        "wsample_Asterisk_ZFONE_XLITE.pcap",
        False,
        "192.168.10.41:64508",
        "192.168.10.40:49848",
        0xBEE0F2ED,
        "g711U",
        205,
        369,
        (17.818, 56.318, 4680.243),
        (0.138, 0.402, 1.265),
    ),
    (
        "wsample_Asterisk_ZFONE_XLITE.pcap",
        False,
        "192.168.10.40:49848",
        "192.168.10.41:64508",
        0xB72A7104,
        "g711U",
        790,
        1,
        (0.082, 20.075, 102.076),
        (0.100, 0.484, 6.824),
    ),
    (
        "wsample_rtp-protocol.pcap",
        False,
        "10.33.6.101:6040",
        "10.33.6.100:6020",
        0x06C156FD,
        "g711A, CN",
        201,
        0,
        (11.817, 19.983, 24.777),
        (0.027, 2.423, 3.293),
    ),
    (
        "wsample_rtp-protocol.pcap",
        False,
        "10.33.6.100:6020",
        "10.33.6.101:6040",
        0x44C61AFB,
        "g711A, CN",
        47,
        0,
        (15.854, 20.004, 24.232),
        (0.135, 0.309, 0.556),
    ),
    (
        "sipnab_invite-opus-bye.pcap",
        False,
        "127.0.0.1:5084",
        "127.0.0.1:5094",
        0x0EEF0001,
        "opus",
        152,
        0,
        (0.018, 19.868, 20.133),
        (0.010, 0.144, 1.249),
    ),
    (
        "sipnab_invite-opus-bye.pcap",
        False,
        "127.0.0.1:5094",
        "127.0.0.1:5084",
        0x0EEF0001,
        "opus",
        152,
        0,
        (0.025, 19.868, 20.139),
        (0.011, 0.147, 1.248),
    ),
    (
        "sipp_g711a.pcap",
        True,
        "10.1.3.143:5000",
        "10.1.6.18:2006",
        0xDEE0EE8F,
        "g711A",
        236,
        0,
        (25.112, 29.998, 34.829),
        (0.002, 0.350, 0.829),
    ),
    (
        "sipp_dtmf_2833_1.pcap",
        True,
        "192.168.0.3:49176",
        "192.168.0.1:10000",
        0x0E05384E,
        "rtpevent",
        10,
        -2,
        (0.041, 15.548, 20.072),
        None,
    ),
    (
        "srtpdec_WebRTC_PCMA_p2p_SDES_Call_1.pcap",
        True,
        "192.168.1.130:60644",
        "192.168.1.142:56185",
        0x522B93AB,
        "g711A, CN",
        227,
        0,
        (6.380, 18.497, 58.012),
        (9.290, 10.274, 15.637),
    ),
    (
        "srtpdec_WebRTC_PCMA_p2p_SDES_Call_1.pcap",
        True,
        "192.168.1.142:56185",
        "192.168.1.130:60644",
        0xD092D296,
        "g711A, CN",
        259,
        0,
        (10.552, 18.928, 34.989),
        (2.716, 5.360, 7.338),
    ),
    (
        "srtpdec_webrtc_opus_p2p.pcap",
        True,
        "192.168.1.130:57062",
        "192.168.1.142:51466",
        0xE3B9FC5E,
        "RTPType-111",
        498,
        0,
        (4.982, 19.995, 61.630),
        None,
    ),
    (
        "srtpdec_webrtc_opus_p2p.pcap",
        True,
        "192.168.1.142:51466",
        "192.168.1.130:57062",
        0x20C23467,
        "RTPType-111",
        501,
        0,
        (9.998, 19.995, 33.845),
        None,
    ),
    (
        "ndpi_stun_google_meet.pcapng",
        True,
        "192.168.12.156:38152",
        "142.250.82.76:19305",
        0x78691914,
        "RTPType-111",
        11,
        0,
        (5.162, 18.327, 20.859),
        None,
    ),
    (
        "ndpi_stun_google_meet.pcapng",
        True,
        "192.168.12.156:38152",
        "142.250.82.76:3478",
        0x78691914,
        "RTPType-111",
        30,
        0,
        (7.632, 209.562, 587.456),
        None,
    ),
    (
        "ndpi_stun_google_meet.pcapng",
        True,
        "142.250.82.76:19305",
        "192.168.12.156:38152",
        0x00000000,
        "rtp.rfc2198",
        25,
        4,
        (0.004, 2.774, 42.430),
        None,
    ),
]


def _ids(row: tuple[object, ...]) -> str:
    return f"{row[0]}-{'heur' if row[1] else 'default'}-0x{row[4]:08X}-{row[2]}"


@pytest.mark.parametrize("row", MANIFEST_STREAMS, ids=_ids)
def test_rtp_stream_equals_wireshark(row: tuple) -> None:  # type: ignore[type-arg]
    name, heur, src, dst, ssrc, names, pkts, lost, deltas, jitter = row
    runs = [heur] if heur else [False, True]  # signalled streams must survive the heuristic run
    for h in runs:
        s = report(name, h).rtp_stream(ssrc, src, dst)
        assert ", ".join(s.payload_names) == names
        assert s.packets == pkts
        assert s.lost == lost
        got_d = (s.min_delta_ms, s.mean_delta_ms, s.max_delta_ms)
        assert all(v is not None for v in got_d)
        assert tuple(round(v, 3) for v in got_d) == pytest.approx(deltas, abs=1e-9), got_d  # type: ignore[arg-type]
        got_j = (s.min_jitter_ms, s.mean_jitter_ms, s.max_jitter_ms)
        if jitter is None:
            assert got_j == (None, None, None)
        else:
            assert tuple(round(v, 3) for v in got_j) == pytest.approx(jitter, abs=1e-9), got_j  # type: ignore[arg-type]


def test_sharkd_oracle_stream_0xd2bd4e3e() -> None:
    oracle = json.loads(
        (realdata() / "telemetry" / "wireshark_sharkd_expected_sip-rtp.json").read_text()
    )
    exp = oracle["rtp_streams"][0]
    ana = oracle["rtp_analyse_0xd2bd4e3e"]
    r = report("wsample_SIP_CALL_RTP_G711.pcap")
    s = r.rtp_stream(
        int(exp["ssrc"], 16), f"{exp['saddr']}:{exp['sport']}", f"{exp['daddr']}:{exp['dport']}"
    )
    assert s.ssrc_hex == "0xD2BD4E3E"
    assert s.packets == exp["pkts"] == ana["total_nr"]
    assert s.lost == exp["lost"]
    assert s.expected == exp["expectednr"]
    assert s.problem is exp["problem"]
    assert s.sequence_errors == ana["seq_err"]
    # sharkd prints six decimals: equal to 0.000001 ms, well inside the 0.001 ms asked.
    for ours, theirs in (
        (s.min_delta_ms, exp["min_delta"]),
        (s.mean_delta_ms, exp["mean_delta"]),
        (s.max_delta_ms, exp["max_delta"]),
        (s.min_jitter_ms, exp["min_jitter"]),
        (s.mean_jitter_ms, exp["mean_jitter"]),
        (s.max_jitter_ms, exp["max_jitter"]),
        (s.max_skew_ms, ana["max_skew"]),
    ):
        assert ours is not None
        assert abs(ours - theirs) < 0.5e-6 + 1e-9
    assert abs(s.duration_ns / 1e6 - ana["duration_ms"]) < 0.0005
    assert abs((s.start_at_ns - (r.first_at_ns or 0)) / 1e9 - exp["start_time"]) < 1e-6


def test_heuristic_run_adds_the_relay_legs() -> None:
    default = report("wsample_SIP_CALL_RTP_G711.pcap")
    heur = report("wsample_SIP_CALL_RTP_G711.pcap", True)
    assert len(default.rtp_streams) == 3
    assert len(heur.rtp_streams) == 5
    leg = heur.rtp_stream(0x58F33DEA, "200.57.7.199:4800", "200.57.7.196:40378")
    assert leg.packets == 891
    assert leg.min_jitter_ms is not None and leg.mean_jitter_ms is not None
    assert leg.max_jitter_ms is not None
    assert (
        round(leg.min_jitter_ms, 3),
        round(leg.mean_jitter_ms, 3),
        round(leg.max_jitter_ms, 3),
    ) == (0.001, 0.030, 0.078)
    back = heur.rtp_stream(0xD2BD4E3E, "200.57.7.196:40378", "200.57.7.199:4800")
    assert back.packets == 548
    assert back.max_delta_ms is not None and round(back.max_delta_ms, 3) == 5843.747
    assert back.min_jitter_ms is not None and back.mean_jitter_ms is not None
    assert back.max_jitter_ms is not None
    assert (
        round(back.min_jitter_ms, 3),
        round(back.mean_jitter_ms, 3),
        round(back.max_jitter_ms, 3),
    ) == (0.452, 2.548, 7.400)


def test_google_meet_ipv6_and_misdetected_streams() -> None:
    r = report("ndpi_stun_google_meet.pcapng", True)
    v6 = [s for s in r.rtp_streams if s.ssrc == 0xF3EF75B1]
    assert len(v6) == 1 and v6[0].packets == 11 and v6[0].src.startswith("[")
    assert v6[0].mean_delta_ms is not None and round(v6[0].mean_delta_ms, 3) == 19.057
    pt97 = [s for s in r.rtp_streams if s.ssrc == 0 and s.payload_type == 97]
    assert len(pt97) == 1 and pt97[0].packets == 93 and pt97[0].lost == 10


def test_short_webrtc_captures_stream_counts() -> None:
    r = report("ndpi_stun_dtls_rtp.pcapng", True)
    udp = [s for s in r.rtp_streams if s.payload_type == 111]
    assert len(udp) == 1 and udp[0].packets == 11
    assert udp[0].mean_delta_ms is not None and round(udp[0].mean_delta_ms, 3) == 18.571
    pipecat = report("pipecat-1.14.0_smallwebrtc_lo.pcapng", True)
    assert sorted(s.packets for s in pipecat.rtp_streams) == [825, 1098]
    signal = report("ndpi_stun_signal.pcapng", True)
    assert {s.payload_type for s in signal.rtp_streams} >= {102, 118}
    assert "rtpevent" in {n for s in signal.rtp_streams for n in s.payload_names}


def test_no_rtp_without_signalling_unless_heuristic() -> None:
    assert report("sipp_g711a.pcap").rtp_streams == ()
    assert len(report("sipp_g711a.pcap", True).rtp_streams) == 1
    assert report("srtpdec_webrtc_opus_p2p.pcap").rtp_streams == ()


def test_clock_rate_option_gives_jitter_for_dynamic_types() -> None:
    plain = report("srtpdec_webrtc_opus_p2p.pcap", True)
    rated = analyze_capture(
        pcap("srtpdec_webrtc_opus_p2p.pcap"), heuristic_rtp=True, clock_rates={111: 48000}
    )
    for a, b in zip(plain.rtp_streams, rated.rtp_streams, strict=True):
        assert a.min_jitter_ms is None
        assert b.min_jitter_ms is not None and b.max_jitter_ms is not None
        assert 0 <= b.min_jitter_ms <= b.max_jitter_ms < 50
        assert b.clock_rate == 48000
        # The clock rate does not change what does not depend on it.
        assert (a.packets, a.lost, a.min_delta_ms, a.max_delta_ms) == (
            b.packets,
            b.lost,
            b.min_delta_ms,
            b.max_delta_ms,
        )


# ------------------------------------------------------------------ TLS, DTLS, STUN


def _rel_ms(r: NetReport, t: int | None) -> float:
    assert t is not None and r.first_at_ns is not None
    return (t - r.first_at_ns) / 1e6


def test_tls12_handshake_time() -> None:
    r = report("zeek_tls_tls1.2.pcap")
    (h,) = r.tls_handshakes
    assert h.version == "TLS 1.2" and h.transport == "tcp"
    assert round(_rel_ms(r, h.client_hello_at_ns), 3) == 37.056
    assert round(_rel_ms(r, h.server_hello_at_ns), 3) == 78.141
    assert round(_rel_ms(r, h.done_at_ns), 3) == 117.843
    assert h.handshake_ns is not None and round(h.handshake_ns / 1e6, 1) == 80.8


def test_tls13_handshake_time() -> None:
    r = report("zeek_tls_chrome-1250-tls-x25519-kyber.pcap")
    (h,) = r.tls_handshakes
    assert h.version == "TLS 1.3" and h.sni == "lh3.google.com" and "h2" in h.alpn
    assert round(_rel_ms(r, h.client_hello_at_ns), 3) == 19.605
    assert round(_rel_ms(r, h.server_hello_at_ns), 3) == 49.681
    assert h.server_hello_ns is not None and round(h.server_hello_ns / 1e6, 1) == 30.1
    # Done when the client sends its Finished, just after the server's flight.
    assert h.handshake_ns is not None and 30.1 < h.handshake_ns / 1e6 < 31.0


def test_stun_and_dtls_of_a_webrtc_setup() -> None:
    r = report("zeek_tls_webrtc-stun.pcap")
    first = r.stun_transactions[0]
    assert first.method == "Binding" and first.success is True
    assert first.rtt_ns is not None and round(first.rtt_ns / 1e6, 3) == 7.210
    (d,) = r.tls_handshakes
    assert d.transport == "udp"
    assert round(_rel_ms(r, d.client_hello_at_ns), 3) == 17.013
    assert round(_rel_ms(r, d.done_at_ns), 3) == 30.863


def test_dtls12_with_hello_verify() -> None:
    r = report("zeek_tls_dtls1_2.pcap")
    (d,) = r.tls_handshakes
    assert d.version == "DTLS 1.2" and d.hello_retry
    assert round(_rel_ms(r, d.done_at_ns), 3) == 57.024


# ------------------------------------------------------------------ HTTP and WebSocket


def test_websocket_upgrade_times() -> None:
    jup = report("zeek_websocket_jupyter-websocket.pcap")
    (w,) = jup.websocket_sessions
    assert w.upgrade_ns is not None and round(w.upgrade_ns / 1e9, 6) == 0.974127
    assert round(_rel_ms(jup, w.upgrade_response_at_ns) / 1e3, 6) == 0.974586
    broker = report("zeek_websocket_broker-websocket.pcap")
    (b,) = broker.websocket_sessions
    assert b.upgrade_ns is not None and round(b.upgrade_ns / 1e6, 3) == 0.403
    echo = report("zeek_http_websocket.pcap")
    (e,) = echo.websocket_sessions
    assert e.upgrade_ns is not None and round(e.upgrade_ns / 1e6, 1) == 31.6


def test_websocket_frames_several_per_segment() -> None:
    r = report("zeek_websocket_jupyter-websocket.pcap")
    (w,) = r.websocket_sessions
    by_time: dict[int, int] = {}
    for f in w.frames:
        if not f.from_client and f.opcode == 2:
            by_time[f.at_ns] = by_time.get(f.at_ns, 0) + 1
    assert max(by_time.values()) == 9  # one TCP segment carrying 9 binary frames
    assert w.opcodes_from_server.get(8) == 1 and w.opcodes_from_client.get(8) == 1
    assert r.packets == 20


def test_websocket_text_frames_and_close() -> None:
    (b,) = report("zeek_websocket_broker-websocket.pcap").websocket_sessions
    assert b.opcodes_from_client.get(1, 0) + b.opcodes_from_server.get(1, 0) == 8
    assert b.close_at_ns is not None
    assert not b.compressed


def test_websocket_control_and_fragmented_frames() -> None:
    (w,) = report("zeek_websocket_two-binary-fragments.pcap").websocket_sessions
    ops = [(f.opcode, f.fin) for f in w.frames]
    assert (9, True) in ops and (10, True) in ops
    i = ops.index((2, False))
    assert ops[i + 1] == (0, True)
    assert any(op == 8 for op, _fin in ops)


def test_websocket_permessage_deflate() -> None:
    (w,) = report("scapy_websocket_compressed_session.pcap").websocket_sessions
    assert w.compressed
    text = [f for f in w.frames if f.opcode == 1]
    assert len(text) == 4
    # TShark agrees: the client's messages carry RSV1 (compressed), the server's do not.
    assert [f.rsv1 for f in text] == [f.from_client for f in text] == [True, False, True, False]


def test_http_get_times() -> None:
    r = report("zeek_http_get.pcap")
    (x,) = r.http_exchanges
    assert (x.method, x.status) == ("GET", 200)
    assert x.complete_ns is not None and round(x.complete_ns / 1e9, 6) == 0.070248
    assert round(_rel_ms(r, x.response_end_at_ns) / 1e3, 6) == 0.140431
    assert x.first_byte_ns is not None and x.first_byte_ns <= x.complete_ns


def test_http_chunked_time_to_last_byte() -> None:
    r = report("scapy_http_chunk.pcap.gz")
    (x,) = r.http_exchanges
    assert x.chunked and x.status == 200
    assert x.complete_ns is not None and round(x.complete_ns / 1e9, 6) == 3.877870
    assert x.first_data_ns is not None and x.first_data_ns < x.complete_ns


def test_h2c_upgrade_streams() -> None:
    r = report("scapy_http2_h2c.pcap")
    streams = {x.stream_id: x for x in r.http_exchanges if x.protocol == "h2c"}
    assert set(streams) == {1, 3}
    (upgrade,) = [x for x in r.http_exchanges if x.protocol == "HTTP/1.1"]
    assert upgrade.status == 101
    assert round(_rel_ms(r, streams[1].response_at_ns) / 1e3, 1) == 0.6


def test_http2_over_tls_decrypted_with_keylog() -> None:
    keys = pcap("wireshark_http2-data-reassembly.keys")
    r = analyze_capture(pcap("wireshark_http2-data-reassembly.pcap"), keylog=keys)
    assert r.tshark is not None and WIRESHARK_VERSION in r.tshark
    (x,) = [x for x in r.http_exchanges if x.protocol == "h2"]
    assert (x.method, x.target, x.status, x.stream_id) == ("GET", "/wireshark.png", 200, 1)
    assert round(_rel_ms(r, x.request_at_ns), 3) == 31.667
    assert round(_rel_ms(r, x.response_at_ns), 3) == 33.464
    assert x.first_byte_ns is not None and round(x.first_byte_ns / 1e6, 3) == 1.797
    assert round(_rel_ms(r, x.first_data_at_ns), 3) == 33.980
    assert round(_rel_ms(r, x.response_end_at_ns), 3) == 35.356
    assert x.body_bytes == 4 * 16384 + 10555
    assert x.decrypted


def test_stream_order_and_json_keys() -> None:
    r = report("wsample_SIP_CALL_RTP_G711.pcap")
    d = json.loads(r.to_json())
    keys = {
        "ssrc",
        "src",
        "dst",
        "payload_type",
        "packets",
        "lost",
        "min_delta_ms",
        "mean_delta_ms",
        "max_delta_ms",
        "min_jitter_ms",
        "mean_jitter_ms",
        "max_jitter_ms",
        "max_skew_ms",
    }
    for s in d["rtp_streams"]:
        assert keys <= set(s)
    assert {s["ssrc"] for s in d["rtp_streams"]} == {"0x00002E3D", "0x58F33DEA", "0xD2BD4E3E"}
    for k in ("tcp_connections", "tls_handshakes", "http_exchanges", "websocket_sessions"):
        assert isinstance(d[k], list)
    starts = [s.start_at_ns for s in r.rtp_streams]
    assert starts == sorted(starts)
