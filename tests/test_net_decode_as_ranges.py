"""``--decode-as`` with port ranges (``udp.port==40100-40140,rtp``), as TShark takes them.

Each rule is checked against the installed TShark on a real capture: a range covering the
port finds what the single port finds (and what TShark finds with the same rule), a range
not covering it finds nothing; rules TShark refuses are refused with a one-line error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_net_realdata import pcap
from test_net_wireshark import Row, ours, parse_streams

from voiceaudit.capture import DecodeAs, analyze_capture, parse_decode_as
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode, UsageError

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

# sipp_g711a.pcap: RTP only, no signalling, 10.1.3.143:5000 -> 10.1.6.18:2006.
SIPP = "sipp_g711a.pcap"
SIPP_STREAM = ("10.1.3.143:5000", "10.1.6.18:2006", "0xDEE0EE8F")


def _tshark(path: Path, *rules: str) -> tuple[int, dict[tuple[str, str, str], Row], str]:
    argv = ["tshark", "-n", "-r", str(path), "-q", "-z", "rtp,streams"]
    for r in rules:
        argv += ["-d", r]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, parse_streams(proc.stdout), proc.stderr


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        ("udp.port==2006,rtp", True),
        ("udp.port==2000-2010,rtp", True),
        ("udp.port==2006-2006,rtp", True),
        ("udp.port==2000:10,rtp", True),  # 10 ports from 2000
        ("udp.port==2006:1,rtp", True),
        ("udp.port==4990-5010,rtp", True),  # the source port
        ("udp.port==0x7d0-0x7da,rtp", True),  # TShark reads numbers as C does
        ("udp.port == 2000-2010, rtp", True),
        ("udp.port==2007-2100,rtp", False),
        ("udp.port==1990:16,rtp", False),  # 1990-2005
        ("udp.port==40100-40140,rtp", False),
    ],
)
def test_range_finds_what_tshark_finds(rule: str, found: bool) -> None:
    path = pcap(SIPP)
    code, theirs, err = _tshark(path, rule)
    assert code == 0, err
    report = analyze_capture(path, decode_as=[rule])
    assert ours(report) == theirs
    assert (SIPP_STREAM in theirs) is found
    single = analyze_capture(path, decode_as=["udp.port==2006,rtp"])
    if found:
        assert report.rtp_streams == single.rtp_streams
    else:
        assert report.rtp_streams == ()


def test_range_adds_the_relay_legs_as_the_single_port_does() -> None:
    """The SIP call's relay legs (port 40378, no SDP for them) appear with a range."""
    path = pcap("wsample_SIP_CALL_RTP_G711.pcap")
    _, by_port, _ = _tshark(path, "udp.port==40378,rtp")
    _, by_range, _ = _tshark(path, "udp.port==40370-40380,rtp")
    _, outside, _ = _tshark(path, "udp.port==40100-40140,rtp")
    assert len(by_port) == len(by_range) == 5 and len(outside) == 3
    single = analyze_capture(path, decode_as=["udp.port==40378,rtp"])
    ranged = analyze_capture(path, decode_as=["udp.port==40370-40380,rtp"])
    assert ours(single) == by_port and ours(ranged) == by_range
    assert ranged.rtp_streams == single.rtp_streams
    assert ours(analyze_capture(path, decode_as=["udp.port==40100-40140,rtp"])) == outside


def test_a_later_rule_overrides_a_range_as_in_tshark() -> None:
    path = pcap(SIPP)
    for rules in (
        ["udp.port==2000-2010,rtp", "udp.port==2006,stun"],
        ["udp.port==2006,stun", "udp.port==2000-2010,rtp"],
    ):
        _, theirs, _ = _tshark(path, *rules)
        assert ours(analyze_capture(path, decode_as=rules)) == theirs
    assert not _tshark(path, "udp.port==2000-2010,rtp", "udp.port==2006,stun")[1]


def test_tcp_range_in_the_fast_path() -> None:
    """A TCP range forces the protocol of the connections on it (Pipecat's ws on 8766)."""
    path = pcap("pipecat-1.14.0_websocket_lo.pcapng")
    plain = analyze_capture(path)
    assert [c.protocol for c in plain.tcp_connections] == ["websocket"]
    single = analyze_capture(path, decode_as=["tcp.port==8766,tls"])
    ranged = analyze_capture(path, decode_as=["tcp.port==8760-8770,tls"])
    assert [c.protocol for c in ranged.tcp_connections] == ["tls"]
    assert ranged.tcp_connections == single.tcp_connections
    assert not ranged.websocket_sessions
    missed = analyze_capture(path, decode_as=["tcp.port==8767-8770,tls"])
    assert missed.tcp_connections == plain.tcp_connections
    assert missed.websocket_sessions == plain.websocket_sessions


def test_tcp_range_passed_to_tshark_for_decryption() -> None:
    path = pcap("wireshark_http2-data-reassembly.pcap")
    keys = pcap("wireshark_http2-data-reassembly.keys")
    report = analyze_capture(path, decode_as=["tcp.port==8440-8450,tls"], keylog=keys)
    assert report.warnings == () and report.tshark
    assert report.decode_as == ("tcp.port==8440-8450,tls",)
    assert [(x.method, x.target) for x in report.http_exchanges] == [("GET", "/wireshark.png")]


def test_parsed_rules() -> None:
    assert parse_decode_as("udp.port==40100-40140,rtp") == DecodeAs("udp", 40100, "rtp", 40140)
    assert list(parse_decode_as("udp.port==5004:3,rtp").ports) == [5004, 5005, 5006]
    assert parse_decode_as("udp.port==5004:3,rtp").spec == "udp.port==5004-5006,rtp"
    assert parse_decode_as("udp.port==5004,rtp").spec == "udp.port==5004,rtp"
    assert parse_decode_as("udp.port==5004,rtp") == DecodeAs("udp", 5004, "rtp")
    assert parse_decode_as("udp.port==011614,rtp").port == 5004  # octal, as TShark reads it
    assert parse_decode_as("tcp.port==8443-8445,ssl").spec == "tcp.port==8443-8445,tls"
    with pytest.raises(UsageError):
        DecodeAs("udp", 5010, "rtp", 5000)


# Rules TShark itself refuses (exit 1, "Invalid selector ...").
TSHARK_REFUSES = [
    "udp.port==2010-2000,rtp",  # reversed
    "udp.port==2006:0,rtp",  # no port
    "udp.port==2006-,rtp",
    "udp.port==-2006,rtp",
    "udp.port==2000--2010,rtp",
    "udp.port==2000-2010-2020,rtp",
    "udp.port==2006;2007,rtp",
    "udp.port==abc,rtp",
    "udp.port==08000,rtp",  # not octal
    "udp.port==2000-2010,2006,rtp",  # no lists
]
# Rules TShark takes but that name no port (it never matches them): refused here.
NOT_A_PORT = ["udp.port==70000,rtp", "udp.port==2000-70000,rtp", "udp.port==65530:10,rtp"]


@pytest.mark.parametrize("rule", TSHARK_REFUSES)
def test_tshark_refuses_these_too(rule: str) -> None:
    code, _, err = _tshark(pcap(SIPP), rule)
    assert code != 0 and ("Invalid selector" in err or "Unknown protocol" in err), err


@pytest.mark.parametrize("rule", TSHARK_REFUSES + NOT_A_PORT)
def test_malformed_rules_are_usage_errors(rule: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError):
        parse_decode_as(rule)
    with pytest.raises(UsageError):
        analyze_capture(pcap(SIPP), decode_as=[rule])
    code = run(["net", str(pcap(SIPP)), "--decode-as", rule])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith("error:") and "Traceback" not in err
    first = err.splitlines()[0]
    assert "decode-as rule" in first or "cannot read" in first


def test_cli_range(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(pcap(SIPP))
    code = run(["net", path, "--format", "json", "-d", "udp.port==2006,rtp"])
    single = json.loads(capsys.readouterr()[0])
    code = run(["net", path, "--format", "json", "--decode-as", "udp.port==2000:10,rtp"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    ranged = json.loads(out)
    assert ranged["options"]["decode_as"] == ["udp.port==2000-2009,rtp"]
    assert [s["ssrc"] for s in ranged["rtp_streams"]] == ["0xDEE0EE8F"]
    assert ranged["rtp_streams"] == single["rtp_streams"]
    code = run(["net", path, "--format", "json", "-d", "udp.port==40100-40140,rtp"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    assert json.loads(out)["rtp_streams"] == []
    code = run(["net", path, "-d", "udp.port==2000-2010,rtp"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    assert "0xDEE0EE8F" in out and "udp.port==2000-2010,rtp" in out
