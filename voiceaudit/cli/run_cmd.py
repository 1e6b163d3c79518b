"""`voiceaudit run`: replay speech through a pipeline and record a trace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import ExitCode, UsageError


def _parse_pairs(items: list[str], what: str, sep: str = "=") -> list[tuple[str, str]]:
    out = []
    for item in items:
        k, s, v = item.partition(sep)
        if not s or not k.strip():
            raise UsageError(f"{what} {item!r} must look like NAME{sep}VALUE")
        out.append((k.strip(), v.strip()))
    return out


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        audio: list[Path] = typer.Argument(
            None,
            help="Speech files or directories (WAV, FLAC, raw s16le). "
            "Default: the utterances bundled with voiceaudit.",
        ),
        target: str | None = typer.Option(
            None,
            "--target",
            "-t",
            help="URL of the pipeline under test. Default: start the built-in reference "
            "pipeline on loopback.",
        ),
        protocol: str | None = typer.Option(
            None,
            "--protocol",
            "-p",
            help="The target's protocol (inferred from the URL if clear): "
            + " | ".join(_protocol_names())
            + ". `voiceaudit targets` lists them with their options.",
        ),
        target_option: list[str] = typer.Option(
            [], "--target-option", "-o", help="Protocol option NAME=VALUE (repeatable)."
        ),
        header: list[str] = typer.Option(
            [], "--header", "-H", help="Extra connection header 'Name: value' (repeatable)."
        ),
        api_key_env: str | None = typer.Option(
            None,
            "--api-key-env",
            help="Name of the environment variable that holds the API key (never the key).",
        ),
        rate: int | None = typer.Option(None, "--rate", help="Sample rate of raw PCM input files."),
        sessions: int = typer.Option(1, "--sessions", "-n", help="Concurrent sessions."),
        ramp: str | None = typer.Option(
            None,
            "--ramp",
            help="Load profile FROM:TO:EVERY[:BY], e.g. 1:50:10s: start FROM sessions and add "
            "BY (default 1) every EVERY up to TO; sessions run turns until the run ends "
            "(instead of --sessions/--turns).",
        ),
        hold: str = typer.Option(
            "0s",
            "--hold",
            help="With --ramp: keep the TO sessions running this long after the last step "
            "(e.g. 60s).",
        ),
        turns: int | None = typer.Option(
            None, "--turns", help="Turns per session (default: one pass over the audio)."
        ),
        repeat: int = typer.Option(1, "--repeat", help="Passes over the audio per session."),
        warmup: int = typer.Option(
            0, "--warmup", help="Turns per session recorded but left out of statistics."
        ),
        frame_ms: int = typer.Option(20, "--frame-ms", help="Audio frame size sent, in ms."),
        speed: float = typer.Option(
            1.0, "--speed", help="Replay speed; >1 is faster than real time (marked in trace)."
        ),
        timeout: float = typer.Option(
            15.0, "--timeout", help="Seconds after speech end to wait for a reply."
        ),
        gap_ms: int = typer.Option(
            500, "--gap-ms", help="Pause between turns, after the reply ends (ms)."
        ),
        duration: str | None = typer.Option(
            None,
            "--duration",
            help="Keep every session taking turns (the audio over and over) this long, "
            "e.g. 10m; the turns in flight finish. A long call: the report shows latency "
            "over time and by turn, and whether it drifts.",
        ),
        stats_every: str | None = typer.Option(
            None,
            "--stats-every",
            help="Write the run's statistics per window of this long to stats.jsonl while it "
            "runs (default with --duration: 10s).",
        ),
        greeting_wait: str | None = typer.Option(
            None,
            "--greeting-wait",
            help="Before each session's first turn, wait this long for the target's "
            "greeting (e.g. 5s; 0: never). Default: 5s where the agents speak first "
            "(the phone carriers), else no wait.",
        ),
        jitter_buffer_ms: int = typer.Option(
            0,
            "--jitter-buffer-ms",
            help="Playout model: the fixed jitter buffer's depth (with --playout adaptive: "
            "the minimum delay).",
        ),
        playout: str = typer.Option(
            "fixed",
            "--playout",
            help="Playout model: fixed (--jitter-buffer-ms) or adaptive (follows the "
            "measured jitter, docs/run.md).",
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Run directory (default ./voiceaudit-runs/<timestamp>/)."
        ),
        save_audio: bool = typer.Option(False, "--save-audio", help="Keep reply audio as WAV."),
        record: bool = typer.Option(
            False,
            "--record",
            help="Write each session's call as a stereo WAV next to the trace "
            "(call-<session>.wav: left the caller's audio as sent, right what the caller "
            "heard; docs/run.md).",
        ),
        inject: list[str] = typer.Option(
            [],
            "--inject",
            help="With the built-in pipeline only: fault injection NAME=VALUE (repeatable).",
        ),
        capture: bool = typer.Option(
            False,
            "--capture",
            help="Capture the target's traffic with dumpcap into capture.pcapng in the run "
            "directory (needs root or capabilities on dumpcap; runs on without it).",
        ),
        impair: str | None = typer.Option(
            None,
            "--impair",
            help="Impair the network path through a proxy on loopback: KEY=VALUE,... such "
            "as delay=40ms,jitter=15ms,loss=2%,rate=1mbit (up./down. for one direction), "
            "optionally led by a profile (docs/network-conditions.md).",
        ),
        network: str | None = typer.Option(
            None,
            "--network",
            help="Network profile through the impairment proxy: lan, edge, regional-cloud, "
            "cross-continent, mobile-4g, bad-wifi (--impair keys override it).",
        ),
        scenario: Path | None = typer.Option(
            None,
            "--scenario",
            help="A scenario file (TOML, docs/scenarios.md): a scripted conversation per "
            "session, with pauses, interruptions and sounds over the reply, for turn-taking "
            "measurements (barge-in stop latency, cut-ins, false interruptions).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Replay speech through a pipeline at real-time pace and record a trace."""
        from voiceaudit.probe.runner import ProbeOptions, Ramp, default_out_dir, parse_duration
        from voiceaudit.probe.utterances import load_utterances

        ramp_spec = None
        if ramp is not None:
            ramp_spec = Ramp.parse(ramp, hold_s=parse_duration(hold, "--hold"))
            if sessions != 1 or turns is not None:
                raise UsageError(
                    "--ramp sets the sessions and runs until the profile ends",
                    hint="leave out --sessions and --turns with --ramp",
                )
        elif hold != "0s":
            raise UsageError("--hold goes with --ramp")
        options = ProbeOptions(
            duration_s=None if duration is None else parse_duration(duration, "--duration"),
            stats_every_s=None
            if stats_every is None
            else parse_duration(stats_every, "--stats-every"),
            greeting_wait_s=None
            if greeting_wait is None
            else parse_duration(greeting_wait, "--greeting-wait"),
            ramp=ramp_spec,
            playout=playout,
            sessions=sessions,
            turns=turns,
            repeat=repeat,
            warmup=warmup,
            frame_ms=frame_ms,
            speed=speed,
            timeout_s=timeout,
            jitter_buffer_ms=jitter_buffer_ms,
            gap_ms=gap_ms,
            save_audio=save_audio,
            record=record,
        )
        impairment = None
        if impair is not None or network is not None:
            from voiceaudit.impair import parse_impairment

            impairment = parse_impairment(impair or "", profile=network)
        if inject and target is not None:
            raise UsageError("--inject applies to the built-in pipeline only (no --target)")
        headers = [(k, v) for k, v in _parse_pairs(header, "header", ":")]
        topts = dict(_parse_pairs(target_option, "target option"))
        script = None
        run_config: dict[str, Any] = {}
        if scenario is not None:
            script, run_config["scenario"] = _load_scenario(
                scenario, audio, sessions, turns, repeat, ramp_spec
            )
            utterances = []
        else:
            utterances = load_utterances(list(audio or []), rate=rate)
        out_dir = out or default_out_dir()
        trace_path = out_dir / "trace.jsonl"
        if trace_path.exists():
            raise UsageError(f"{trace_path} exists already", hint="choose another --out")
        try:
            result = asyncio.run(
                _run(
                    target,
                    protocol,
                    topts,
                    headers,
                    api_key_env,
                    inject,
                    utterances,
                    options,
                    trace_path,
                    as_json,
                    capture,
                    impairment=impairment,
                    scenario=script,
                    run_config=run_config,
                )
            )
        except asyncio.CancelledError:
            # The last resort (a third Ctrl-C, or a second that did not end the run in
            # time): the trace is closed `interrupted`, the turns in flight are lost.
            err_console().print(
                "[yellow]interrupted[/]: stopped at once; the trace keeps every finished turn"
            )
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        summary = result.summary()
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary)
        if result.interrupted:
            raise typer.Exit(ExitCode.INTERRUPTED)
        if not result.ok_turns:
            raise typer.Exit(ExitCode.FAILED)


#: after the second Ctrl-C, how long the turns in flight get to end as failed turns before
#: the run is cancelled outright (a connect or close that hangs)
CUT_GRACE_S = 5.0


async def _run(
    target_url: str | None,
    protocol: str | None,
    topts: dict[str, str],
    headers: list[tuple[str, str]],
    api_key_env: str | None,
    inject: list[str],
    utterances: list[Any],
    options: Any,
    trace_path: Path,
    quiet: bool,
    capture: bool = False,
    impairment: Any = None,
    scenario: Any = None,
    run_config: dict[str, Any] | None = None,
) -> Any:
    from voiceaudit.probe.runner import Probe
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class, infer_protocol

    server = None
    run_config = dict(run_config or {})
    stack = contextlib.AsyncExitStack()
    try:
        if target_url is None:
            from voiceaudit.reference.config import ServerConfig, parse_injections
            from voiceaudit.reference.server import start_reference_server

            cfg = ServerConfig(
                injections=parse_injections(inject),
                ground_truth_path=trace_path.parent / "ground_truth.jsonl",
            )
            trace_path.parent.mkdir(parents=True, exist_ok=True)
            err_console().print("[dim]starting the built-in reference pipeline …[/]")
            server = await start_reference_server(cfg)
            protocol = protocol or "realtime"
            target_url = reference_url(server, protocol)
            topts = {**reference_options(protocol), **topts}
            run_config["reference"] = {"inject": list(inject), "ground_truth": "ground_truth.jsonl"}
        proto = protocol or infer_protocol(target_url)
        real_url = target_url
        if impairment is not None:
            target_url = await _impair(stack, target_url, proto, impairment, trace_path, run_config)
        config = TargetConfig(
            url=target_url,
            protocol=proto,
            api_key_env=api_key_env,
            headers=tuple(headers),
            options=topts,
        )
        target = get_target_class(proto)(config)
        dumpcap = (
            _start_capture(target_url, proto, trace_path.parent, run_config, also=real_url)
            if capture
            else None
        )
        observer = _ProgressObserver(quiet=quiet)
        probe = Probe(
            target,
            utterances,
            options,
            trace_path,
            observer=observer,
            run_config=run_config,
            scenario=scenario,
        )
        loop = asyncio.get_running_loop()
        interrupts = 0

        def _cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        def _cut() -> None:
            probe.cut()
            loop.call_later(CUT_GRACE_S, _cancel_all)

        def _on_sigint() -> None:
            # 1st: no new turn, the turns in flight finish; 2nd: cut them (failed turns,
            # failure `interrupted`); 3rd: cancel at once.
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                probe.stop()
                err_console().print(
                    "[yellow]stopping[/]: the turns in flight finish, no new turn starts "
                    "(Ctrl-C again to cut them)"
                )
            elif interrupts == 2:
                err_console().print("[yellow]stopping now[/]: the turns in flight are cut")
                _cut()
            else:
                _cancel_all()

        def _on_sigterm() -> None:
            # A service manager's stop: what a second Ctrl-C does.
            nonlocal interrupts
            interrupts = max(interrupts, 2)
            _cut()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, _on_sigint)
            loop.add_signal_handler(signal.SIGTERM, _on_sigterm)
        err_console().print(
            f"[dim]voiceaudit run → {config.describe()['url']} ({proto}); trace: {trace_path}[/]"
        )
        try:
            return await probe.run()
        finally:
            observer.close()
            if dumpcap is not None:
                res = dumpcap.stop()
                err_console().print(
                    f"[dim]capture: {res.path} ({res.packets if res.packets is not None else '?'}"
                    " packets)[/]"
                )
    finally:
        await stack.aclose()
        if server is not None:
            await server.close()


def _load_scenario(
    path: Path,
    audio: list[Path] | None,
    sessions: int,
    turns: int | None,
    repeat: int,
    ramp: Any,
) -> tuple[Any, dict[str, Any]]:
    """Read a scenario file for --scenario; it replaces the audio and the session counts."""
    import hashlib

    from voiceaudit.scenario import load_scenario

    clash = [
        name
        for name, given in (
            ("audio files", bool(audio)),
            ("--sessions", sessions != 1),
            ("--turns", turns is not None),
            ("--repeat", repeat != 1),
            ("--ramp", ramp is not None),
        )
        if given
    ]
    if clash:
        raise UsageError(
            f"--scenario says what each session does: leave out {', '.join(clash)}",
            hint="set count and repeat in the scenario file",
        )
    script = load_scenario(path)
    return script, {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "sessions": [s.name for s in script.sessions],
    }


async def _impair(
    stack: contextlib.AsyncExitStack,
    url: str,
    protocol: str,
    impairment: Any,
    trace_path: Path,
    run_config: dict[str, Any],
) -> str:
    """Put the impairment proxy in front of the target; the URL to connect to instead."""
    from voiceaudit.impair import RECORD_NAME, impaired
    from voiceaudit.targets.base import redact_url

    via = await stack.enter_async_context(
        impaired(url, protocol, impairment, trace_path.parent / RECORD_NAME)
    )
    run_config["impairment"] = {
        **impairment.describe(),
        "target": redact_url(url),
        "proxy": redact_url(via),
    }
    err_console().print(f"[dim]network: {impairment.text} (impairment proxy {via})[/]")
    return str(via)


def _start_capture(
    url: str, protocol: str, run_dir: Path, run_config: dict[str, Any], also: str | None = None
) -> Any:
    """Start dumpcap for the target; on missing rights, say what to do and run on."""
    import os

    from voiceaudit.capture.dumpcap import KEYLOG_NAME, Dumpcap, plan_capture
    from voiceaudit.errors import EnvironmentProblem

    if protocol == "python":
        raise UsageError("--capture needs a network target (not python://)")
    plan = plan_capture(url, media_udp=protocol == "webrtc")
    capture_filter = plan.capture_filter
    if also is not None and also != url:  # through the impairment proxy: both legs
        other = plan_capture(also, media_udp=protocol == "webrtc").capture_filter
        capture_filter = f"({capture_filter}) or ({other})"
    if plan.tls:
        # Python's ssl honours SSLKEYLOGFILE in every default context made after this.
        os.environ["SSLKEYLOGFILE"] = str(run_dir / KEYLOG_NAME)
        run_config["tls_keylog"] = KEYLOG_NAME
    cap = Dumpcap(
        run_dir / "capture.pcapng", interface=plan.interface, capture_filter=capture_filter
    )
    try:
        cap.start()
    except EnvironmentProblem as exc:
        err_console().print(f"[yellow]warning:[/] no capture: {exc.message}")
        if exc.hint:
            err_console().print(f"[dim]hint:[/] {exc.hint}")
        return None
    run_config["capture"] = {
        "file": "capture.pcapng",
        "interface": plan.interface,
        "filter": capture_filter,
    }
    return cap


def _protocol_names() -> list[str]:
    """Every protocol, built in or from a plugin (for --protocol's help)."""
    from voiceaudit.targets.registry import available

    try:
        return sorted(available())
    except Exception:  # a broken plugin environment must not break --help
        from voiceaudit.targets.registry import BUILTINS

        return sorted(BUILTINS)


def reference_options(protocol: str) -> dict[str, str]:
    """Target options for the built-in pipeline: over WebRTC its events (and its stage
    events) travel on a data channel, which the probe opens only when asked."""
    return {"datachannel": "oai-events"} if protocol == "webrtc" else {}


#: the phone carriers' protocols, which the built-in pipeline serves as a bot at /<name>
CARRIERS = ("twilio", "telnyx", "plivo", "exotel", "vonage")


def _ws(url: str) -> str:
    return "ws" + url[4:] if url.startswith("http") else url


def reference_url(server: Any, protocol: str) -> str:
    """The built-in pipeline's URL for a protocol."""
    urls = {
        "realtime": server.realtime_url,
        "websocket": server.pcm_url,
        "cascade": server.url + "/v1",
        "webrtc": server.url + "/v1/webrtc/offer",
        # the phone carriers: the reference is the bot each carrier connects to
        **{name: _ws(server.url) + "/" + name for name in CARRIERS},
    }
    if protocol not in urls:
        raise UsageError(
            f"the built-in pipeline does not speak {protocol!r}",
            hint="choose one of " + ", ".join(urls),
        )
    return str(urls[protocol])


class _ProgressObserver:
    """Prints one line per turn on stderr (the probe itself never imports rich)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.console = err_console()

    def turn_done(self, result: Any) -> None:
        if result.ok:
            v = result.voice_to_voice_ns / 1e6 if result.voice_to_voice_ns is not None else 0
            tag = " (warm-up)" if result.warmup else ""
            self.console.print(
                f"  {result.session} turn {result.turn}: voice-to-voice {v:7.1f} ms{tag}"
            )
        else:
            from rich.markup import escape

            from voiceaudit.failures import FAILURE_LABELS, failure_kind

            label = FAILURE_LABELS[failure_kind(result.reason, result.failure)]
            heard = result.informative_voice_to_voice_ns
            extra = "" if heard is None else f" (reply heard at {heard / 1e6:.1f} ms, not counted)"
            self.console.print(
                f"  {result.session} turn {result.turn}: [red]failed[/] ({label}) — "
                f"{escape(result.reason or '')}{extra}",
                highlight=False,
            )

    def message(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        sys.stderr.flush()


def _print_summary(summary: dict[str, Any]) -> None:
    out = out_console()
    v = summary["voice_to_voice_ms"]
    out.print(
        f"turns: {summary['turns']} (ok {summary['ok']}, failed {summary['failed']}, "
        f"warm-up {summary['warmup']})"
    )
    by_kind = summary.get("failed_by_kind")
    if by_kind:
        from voiceaudit.failures import FAILURE_LABELS

        err_console().print(
            f"{summary['failed']} failed: "
            + ", ".join(f"{n} {FAILURE_LABELS.get(k, k)}" for k, n in by_kind.items()),
            highlight=False,
        )
    if v:
        out.print(
            f"voice-to-voice: p50 {v['p50']:.1f} ms, p95 {v['p95']:.1f} ms "
            f"(min {v['min']:.1f}, max {v['max']:.1f}, n={v['n']})"
        )
    pacing = summary.get("pacing")
    if pacing:
        w = pacing["worst"]
        out.print(
            f"pacing: p99 {pacing['p99_ms']:.1f} ms, worst frame {pacing['worst_ms']:.1f} ms "
            f"late ({w['session']} turn {w['turn']} frame {w['frame']}; "
            f"{pacing['frames']} frames)"
        )
        if pacing["broke"]:
            err_console().print(
                f"[yellow]warning:[/] pacing broke: {pacing['broke_turns']} turn(s) had a frame "
                f"sent more than {pacing['broke_over_ms']:g} ms late, p99 "
                f"{pacing['p99_ms']:.1f} ms (goal {pacing['p99_goal_ms']:g} ms): the probe "
                "could not keep up (machine busy, or an in-process target blocked its event loop); "
                "the report marks those turns"
            )
    tt = summary.get("turn_taking")
    if tt:
        stop = tt["stop_ms"]
        line = f"turn-taking: {tt['barge_ins']} barge-in(s)"
        if stop:
            line += f", stop latency p50 {stop['p50']:.0f} ms, max {stop['max']:.0f} ms"
        line += f"; {tt['cut_ins']} cut-in(s)"
        if tt.get("sounds"):
            line += f"; {tt['sounds']} sound(s), {tt['false_interruptions']} stopped the reply"
        out.print(line)
    levels = summary.get("by_concurrency")
    if levels:
        out.print(
            "by concurrency (sessions: voice-to-voice p50/p95 ms, turns): "
            + "; ".join(
                f"{lv['concurrency']}: {lv['p50']:.0f}/{lv['p95']:.0f} ({lv['n']})" for lv in levels
            )
        )
    for f in summary["failures"][:10]:
        out.print(f"failed: {f['session']} turn {f['turn']} ({f['failure']}): {f['reason']}")
    out.print(f"trace: {summary['trace']}")
    out.print(f"next: voiceaudit report {summary['trace']}")
