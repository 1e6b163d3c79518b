"""`voiceaudit net`: the network path of any pcap/pcapng capture."""

from __future__ import annotations

import sys
from collections.abc import Callable, Container, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import UsageError

_T = TypeVar("_T")


class NetFormat(StrEnum):
    text = "text"
    json = "json"


def _ms(ns: int | None, nd: int = 3) -> str:
    return "-" if ns is None else f"{ns / 1e6:.{nd}f}"


def _f(v: float | None, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _cut(text: str, most: int) -> str:
    """``text``, cut to ``most`` characters with an ellipsis when longer."""
    return text if len(text) <= most else text[: most - 3] + "…"


def _print_table(
    console: Any,
    title: str,
    columns: Sequence[str],
    left: Container[str],
    items: Sequence[_T],
    row: Callable[[_T], Sequence[str]],
    *,
    most: int | None = None,
) -> None:
    """A rich table of one ``row`` per item under ``columns`` (those in ``left``
    left-aligned, the others right-aligned), printed to ``console``; nothing when there
    are no items. With ``most``: the first ``most`` items, then how many more there are."""
    from rich.table import Table

    if not items:
        return
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right")
    for item in items[:most]:
        t.add_row(*row(item))
    console.print(t)
    if most is not None and len(items) > most:
        console.print(f"[dim]… {len(items) - most} more (see --format json)[/]")


#: WebSocket opcodes by name, for the frame counts
_OPCODES = {0: "cont", 1: "text", 2: "bin", 8: "close", 9: "ping", 10: "pong"}


def _opcodes(counts: dict[int, int]) -> str:
    """Frame counts by opcode: ``text:3 bin:120``."""
    return " ".join(f"{_OPCODES.get(k, k)}:{v}" for k, v in sorted(counts.items())) or "-"


def render_text(report: object, console: object) -> None:
    """Rich tables for a NetReport (kept here: the library never imports rich)."""
    from rich.console import Console

    from voiceaudit.capture.model import NetReport

    assert isinstance(report, NetReport) and isinstance(console, Console)
    r = report
    origin = r.first_at_ns or 0

    def rel(t: int | None) -> str:
        return "-" if t is None else f"{(t - origin) / 1e9:.6f}"

    dur = (
        "-"
        if r.first_at_ns is None or r.last_at_ns is None
        else f"{(r.last_at_ns - r.first_at_ns) / 1e9:.6f} s"
    )
    console.print(
        f"[bold]{r.path}[/]: {r.format}, {r.packets} packets, {dur}"
        + (f", clock {r.clock}" if r.clock != "wall" else "")
        + (", [yellow]truncated[/]" if r.truncated else "")
    )
    opts = []
    if r.heuristic_rtp:
        opts.append("heuristic RTP")
    if r.decode_as:
        opts.append("decode-as " + " ".join(r.decode_as))
    if r.tshark:
        opts.append(f"TLS decrypted by {r.tshark}")
    if opts:
        console.print("[dim]" + "; ".join(opts) + "[/]")

    _print_table(
        console,
        "RTP streams",
        (
            "start s",
            "src",
            "dst",
            "SSRC",
            "payload",
            "pkts",
            "lost",
            "min Δ ms",
            "mean Δ ms",
            "max Δ ms",
            "min jit",
            "mean jit",
            "max jit",
            "max skew",
        ),
        ("src", "dst", "payload"),
        r.rtp_streams,
        lambda s: (
            rel(s.start_at_ns),
            s.src,
            s.dst,
            s.ssrc_hex,
            ", ".join(s.payload_names),
            str(s.packets),
            f"{s.lost} ({s.lost_percent:.1f}%)" if s.lost else "0",
            _f(s.min_delta_ms),
            _f(s.mean_delta_ms),
            _f(s.max_delta_ms),
            _f(s.min_jitter_ms),
            _f(s.mean_jitter_ms),
            _f(s.max_jitter_ms),
            _f(s.max_skew_ms),
        ),
    )
    if any(s.min_jitter_ms is None and s.min_delta_ms is not None for s in r.rtp_streams):
        console.print("[dim]jitter needs the RTP clock rate: give it with --clock-rate PT=RATE[/]")
    elif not r.rtp_streams and r.counts.get("udp"):
        hint = "" if r.heuristic_rtp else " (without signalling, try --enable-heuristic rtp_udp)"
        console.print(f"[dim]no RTP streams{hint}[/]")

    _print_table(
        console,
        "TCP connections",
        (
            "start s",
            "client",
            "server",
            "proto",
            "connect ms",
            "rtt p50",
            "rtt p90",
            "rtt max",
            "retrans",
            "zero win",
            "stalls",
            "pkts",
        ),
        ("client", "server", "proto"),
        r.tcp_connections,
        lambda c: (
            rel(c.first_at_ns),
            c.client,
            c.server,
            c.protocol or "-",
            _ms(c.connect_ns),
            _ms(c.ack_rtt.p50_ns),
            _ms(c.ack_rtt.p90_ns),
            _ms(c.ack_rtt.max_ns),
            str(c.retransmissions),
            str(c.zero_windows),
            str(len(c.small_write_stalls)),
            str(c.packets),
        ),
    )
    _print_table(
        console,
        "Small-write stalls (Nagle + delayed ACK)",
        ("at s", "sender", "held ms", "ACK delay ms", "bytes"),
        ("sender",),
        [s for c in r.tcp_connections for s in c.small_write_stalls],
        lambda stall: (
            rel(stall.released_at_ns),
            stall.sender,
            _ms(stall.held_ns),
            _ms(stall.ack_delay_ns),
            str(stall.length),
        ),
        most=50,
    )
    _print_table(
        console,
        "TLS / DTLS handshakes",
        ("start s", "client", "server", "version", "SNI", "ServerHello ms", "handshake ms"),
        ("client", "server", "version", "SNI"),
        r.tls_handshakes,
        lambda h: (
            rel(h.client_hello_at_ns),
            h.client,
            h.server,
            f"{h.version or '?'} ({h.transport})",
            h.sni or "-",
            _ms(h.server_hello_ns),
            _ms(h.handshake_ns),
        ),
    )
    _print_table(
        console,
        "HTTP exchanges",
        (
            "start s",
            "server",
            "proto",
            "request",
            "status",
            "first byte ms",
            "first data ms",
            "complete ms",
            "bytes",
        ),
        ("server", "proto", "request"),
        r.http_exchanges,
        lambda x: (
            rel(x.request_at_ns),
            x.server,
            x.protocol + (f" #{x.stream_id}" if x.stream_id is not None else ""),
            _cut(f"{x.method or '?'} {x.target or ''}".strip(), 60),
            "-" if x.status is None else str(x.status),
            _ms(x.first_byte_ns),
            _ms(x.first_data_ns),
            _ms(x.complete_ns),
            str(x.body_bytes),
        ),
        most=200,
    )
    _print_table(
        console,
        "WebSocket sessions",
        (
            "start s",
            "server",
            "target",
            "upgrade ms",
            "frames",
            "from client",
            "from server",
            "bytes c→s",
            "bytes s→c",
        ),
        ("server", "target"),
        r.websocket_sessions,
        lambda w: (
            rel(w.upgrade_request_at_ns),
            w.server,
            _cut(w.target or "-", 40),
            _ms(w.upgrade_ns),
            str(w.frames_total),
            _opcodes(w.opcodes_from_client),
            _opcodes(w.opcodes_from_server),
            str(w.bytes_from_client),
            str(w.bytes_from_server),
        ),
    )
    _print_table(
        console,
        "STUN transactions",
        ("start s", "client", "server", "method", "rtt ms", "result", "retries"),
        ("client", "server", "method", "result"),
        r.stun_transactions[:100],  # the rest only in --format json
        lambda tx: (
            rel(tx.request_at_ns),
            tx.client,
            tx.server,
            tx.method,
            _ms(tx.rtt_ns),
            "-" if tx.success is None else ("success" if tx.success else "error"),
            str(tx.retransmits),
        ),
    )
    if not (r.rtp_streams or r.tcp_connections or r.tls_handshakes or r.stun_transactions):
        console.print(
            "[dim]nothing voiceaudit reads in this capture (no TCP, RTP, STUN or DTLS)[/]"
        )


def register(app: typer.Typer) -> None:
    @app.command("net")
    def net(
        capture: Path = typer.Argument(..., help="A pcap or pcapng file (gzip allowed)."),
        fmt: NetFormat = typer.Option(NetFormat.text, "--format", help="text (tables) or json."),
        decode_as: list[str] = typer.Option(
            [],
            "--decode-as",
            "-d",
            help="Read a port or port range as a protocol, TShark style: "
            "udp.port==5004,rtp, udp.port==40100-40140,rtp (or 40100:41, 41 ports) or "
            "tcp.port==8443,tls (repeatable).",
        ),
        keylog: Path | None = typer.Option(
            None,
            "--keylog",
            help="TLS key log (SSLKEYLOGFILE format): TShark decrypts HTTPS, "
            "HTTP/2 and WSS with it.",
        ),
        clock_rate: list[str] = typer.Option(
            [],
            "--clock-rate",
            help="RTP clock rate of a payload type, PT=RATE (repeatable), "
            "for dynamic types the capture does not describe.",
        ),
        enable_heuristic: list[str] = typer.Option(
            [],
            "--enable-heuristic",
            help="Find RTP without signalling: --enable-heuristic rtp_udp (as TShark).",
        ),
        count_marked: bool = typer.Option(
            False,
            "--count-marked",
            help="Count RTP packets with the marker bit in delta/jitter statistics "
            "(Wireshark leaves them out; aiortc marks every audio packet).",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write the report to this file instead of stdout."
        ),
    ) -> None:
        """Analyse the network path of a capture: RTP, TCP, TLS, HTTP, WebSocket, STUN."""
        from voiceaudit.capture.analyze import analyze_capture, parse_clock_rate, parse_decode_as

        heuristics = {h.strip().lower() for h in enable_heuristic}
        unknown = heuristics - {"rtp_udp"}
        if unknown:
            raise UsageError(
                f"unknown heuristic {', '.join(sorted(unknown))!r}",
                hint="voiceaudit knows --enable-heuristic rtp_udp",
            )
        rules = [parse_decode_as(d) for d in decode_as]
        rates = dict(parse_clock_rate(c) for c in clock_rate)

        err = err_console()
        show = err.is_terminal
        status = err.status("reading the capture…") if show else None

        def progress(n: int) -> None:
            if status is not None:
                status.update(f"reading the capture… {n:,} packets")

        if status is not None:
            status.start()
        try:
            report = analyze_capture(
                capture,
                decode_as=rules,
                keylog=keylog,
                clock_rates=rates,
                heuristic_rtp="rtp_udp" in heuristics,
                count_marked=count_marked,
                progress=progress,
            )
        finally:
            if status is not None:
                status.stop()
        for w in report.warnings:
            err.print(f"[yellow]warning:[/] {w}", highlight=False)
        if fmt is NetFormat.json:
            text = report.to_json() + "\n"
            if output is None:
                sys.stdout.write(text)
            else:
                output.write_text(text, encoding="utf-8")
            return
        if output is None:
            con = out_console()
            if not con.is_terminal:
                # Piped or redirected: wide enough that no column is cut.
                from rich.console import Console

                con = Console(width=200, highlight=False, soft_wrap=True)
            render_text(report, con)
        else:
            from rich.console import Console

            with output.open("w", encoding="utf-8") as f:
                render_text(report, Console(file=f, width=200, no_color=True, highlight=False))
