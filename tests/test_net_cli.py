"""`voiceaudit net` end to end, in process: output formats, options, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_net_realdata import pcap

from voiceaudit.capture.synth import CaptureBuilder, rtp_packet, udp_datagram
from voiceaudit.cli import run
from voiceaudit.errors import ExitCode


def net(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["net", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = net(capsys, str(pcap("wsample_SIP_CALL_RTP_G711.pcap")))
    assert code == ExitCode.OK, err
    assert "RTP streams" in out and "TCP connections" in out and "HTTP exchanges" in out
    assert "0xD2BD4E3E" in out and "200.57.7.204:8000" in out
    assert "5843.742" in out and "7.407" in out  # max delta, max jitter as Wireshark shows
    assert "44.102" in out and "319.289" in out  # no column cut when not on a terminal


def test_json_report_and_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _err = net(capsys, str(pcap("sipnab_invite-opus-bye.pcap")), "--format", "json")
    assert code == ExitCode.OK
    d = json.loads(out)
    assert d["schema"] == "voiceaudit.net/1"
    assert [s["ssrc"] for s in d["rtp_streams"]] == ["0x0EEF0001", "0x0EEF0001"]
    assert d["rtp_streams"][0]["payload_names"] == ["opus"]
    target = tmp_path / "net.json"
    code, out, _err = net(
        capsys,
        str(pcap("sipnab_invite-opus-bye.pcap")),
        "--format",
        "json",
        "--output",
        str(target),
    )
    assert code == ExitCode.OK and out == ""
    assert json.loads(target.read_text()) == d


def test_heuristic_decode_as_and_clock_rate(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(pcap("srtpdec_webrtc_opus_p2p.pcap"))
    code, out, _ = net(capsys, path, "--format", "json")
    assert code == ExitCode.OK and json.loads(out)["rtp_streams"] == []
    code, out, _ = net(capsys, path, "--format", "json", "--enable-heuristic", "rtp_udp")
    streams = json.loads(out)["rtp_streams"]
    assert len(streams) == 2 and all(s["min_jitter_ms"] is None for s in streams)
    code, out, _ = net(
        capsys,
        path,
        "--format",
        "json",
        "--enable-heuristic",
        "rtp_udp",
        "--clock-rate",
        "111=48000",
    )
    assert all(s["min_jitter_ms"] is not None for s in json.loads(out)["rtp_streams"])
    code, out, _ = net(capsys, path, "--format", "json", "-d", "udp.port==51466,rtp")
    assert len(json.loads(out)["rtp_streams"]) == 2


def test_decrypting_with_a_keylog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = net(
        capsys,
        str(pcap("wireshark_http2-data-reassembly.pcap")),
        "--keylog",
        str(pcap("wireshark_http2-data-reassembly.keys")),
    )
    assert code == ExitCode.OK, err
    assert "h2 #1" in out and "GET /wireshark.png" in out and "1.797" in out


def test_bad_input_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_text("hello")
    code, out, err = net(capsys, str(junk))
    assert code == ExitCode.BAD_INPUT and out == ""
    assert err.startswith("error:") and "not a pcap or pcapng" in err
    assert "Traceback" not in err
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert net(capsys, str(empty))[0] == ExitCode.BAD_INPUT
    assert net(capsys, str(tmp_path / "missing.pcap"))[0] == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    "args",
    [
        ["--decode-as", "udp.port=5004,rtp"],
        ["--decode-as", "tcp.port==80,smtp"],
        ["--clock-rate", "111:48000"],
        ["--clock-rate", "200=48000"],
        ["--enable-heuristic", "rtp_tcp"],
        ["--format", "xml"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _out, err = net(capsys, str(pcap("sipp_g711a.pcap")), *args)
    assert code == ExitCode.USAGE, err
    assert "Traceback" not in err


def test_truncated_capture_warns_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = pcap("wsample_sip-rtp-g711.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 3])
    code, out, err = net(capsys, str(cut), "--format", "json")
    assert code == ExitCode.OK
    assert "warning:" in err and "truncated" in err
    d = json.loads(out)
    assert d["capture"]["truncated"] and 0 < d["capture"]["packets"] < 852
    assert d["rtp_streams"]


def test_keylog_without_tshark(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tshark on this PATH
    code, out, err = net(
        capsys,
        str(pcap("wireshark_http2-data-reassembly.pcap")),
        "--keylog",
        str(pcap("wireshark_http2-data-reassembly.keys")),
    )
    assert code == ExitCode.ENVIRONMENT and out == ""
    assert "tshark" in err and "apt install tshark" in err


def test_capture_with_no_rtp_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = CaptureBuilder()
    b.add(10**18, udp_datagram("10.0.0.1", 4000, "10.0.0.2", 4002, b"\x01" * 40))
    p = tmp_path / "udp.pcap"
    b.write(p, fmt="pcap")
    code, out, _ = net(capsys, str(p))
    assert code == ExitCode.OK and "no RTP streams" in out and "--enable-heuristic" in out
    b.add(
        10**18 + 20_000_000,
        udp_datagram("10.0.0.1", 4000, "10.0.0.2", 4002, rtp_packet(1, 160, 5, 8)),
    )
    b.write(p, fmt="pcap")
    code, out, _ = net(capsys, str(p), "--enable-heuristic", "rtp_udp")
    assert code == ExitCode.OK and "0x00000005" in out


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = net(capsys, "--help")
    assert code == ExitCode.OK
    for opt in (
        "--format",
        "--decode-as",
        "--keylog",
        "--clock-rate",
        "--enable-heuristic",
        "--output",
    ):
        assert opt in out
    assert os.environ.get("PATH")
