"""`voiceaudit sweep`: the same speech through a matrix of pipelines x network conditions.

One run directory per cell (pipeline, network, repeat) under one sweep directory, each
with its trace, the impairment proxy's ground-truth record and (for the built-in
pipeline) the server's ground truth; ``sweep.json`` lists the cells and is rewritten as
each cell ends, so a sweep cut short keeps every finished cell. At the end the sweep view
(:mod:`voiceaudit.analysis.sweep`) is printed and written as ``sweep-report.md`` and
``sweep-report.json``; ``voiceaudit report DIR`` shows it again (any format).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import ExitCode, LocatedError, UsageError

#: The network label that runs a cell without the impairment proxy.
DIRECT = "direct"


class SweepFileError(LocatedError, UsageError):
    """A sweep file that cannot be used (exit 2); the message names the file and line."""


@dataclass
class SweepSpec:
    #: (label, protocol, target URL or None for the built-in pipeline)
    pipelines: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: (label, impairment spec; "" with DIRECT)
    networks: list[tuple[str, str]] = field(default_factory=list)
    repeats: int = 1
    turns: int | None = None
    playout: str = "adaptive"
    jitter_buffer_ms: int = 0
    inject: list[str] = field(default_factory=list)
    gap_ms: int = 500


def _network(text: str) -> tuple[str, str]:
    """A network entry: a profile name, ``direct``, a spec (labelled as written), or
    ``LABEL=SPEC``. A bad one raises the spec parser's one-line error: of the whole entry
    when it starts with an impairment key (``delay=fast``), else of the SPEC after the
    label (``wan=moon``: "network 'wan': unknown network profile 'moon'")."""
    from voiceaudit.impair import parse_impairment

    t = text.strip()
    if t == DIRECT:
        return DIRECT, ""
    try:
        parse_impairment(t)
    except UsageError as whole:
        label, sep, spec = t.partition("=")
        label, spec = label.strip(), spec.strip()
        if not sep or not label or "," in label:
            raise whole from None
        try:
            parse_impairment(spec)
        except UsageError as part:
            if _is_impairment_key(label):
                raise whole from None
            raise UsageError(f"network {label!r}: {part.message}", hint=part.hint) from None
        return label, spec
    return t.lower() if "=" not in t else t, t


def _is_impairment_key(name: str) -> bool:
    """Whether ``name`` is a key of an impairment spec (``delay``, ``up.loss``, ``seed``)."""
    # the spec module keeps its key tables private; it has no public "is this a key"
    from voiceaudit.impair.spec import _GLOBAL_KEYS, _LINK_KEYS

    direction, dot, bare = name.lower().partition(".")
    if not dot:
        return direction in _LINK_KEYS or direction in _GLOBAL_KEYS
    return direction in ("up", "down") and bare in _LINK_KEYS


#: The protocols the built-in reference pipeline speaks (a sweep pipeline without a target):
#: its own four, and the phone carriers' media streams (it is the bot behind the carrier)
BUILTIN_PROTOCOLS = (
    "realtime",
    "websocket",
    "cascade",
    "webrtc",
    "twilio",
    "telnyx",
    "plivo",
    "exotel",
    "vonage",
)

_SWEEP_KEYS = (
    "pipelines",
    "networks",
    "repeats",
    "turns",
    "playout",
    "jitter_buffer_ms",
    "inject",
    "gap_ms",
)
_PIPELINE_KEYS = ("name", "protocol", "target")
#: runs per cell at most (a file or --repeats)
MAX_REPEATS = 1_000


def _from_file(path: Path) -> SweepSpec:
    """A sweep file (docs/network-conditions.md#sweep-files); errors name the line.

    Every key is checked: a misspelt one (``targt``) is an error, never ignored, so a
    sweep measures only the targets the file names."""
    from voiceaudit.tomlpos import TomlChecker, load_toml

    doc, lines = load_toml(
        path,
        error=SweepFileError,
        what="sweep file",
        why=lambda exc, what: f"cannot read the {what} ({exc.strerror})",
    )
    # A document-level error has no key to point at: it names the first line.
    checker = TomlChecker(path, lines, SweepFileError, default_line=1, known_prefix="keys: ")
    fail = checker.error_at
    checker.check_keys(doc, (), ("sweep",), where="the sweep file")
    sw = doc.get("sweep")
    if not isinstance(sw, dict):
        raise fail(("sweep",), "a sweep file needs a [sweep] table")
    checker.check_keys(sw, ("sweep",), _SWEEP_KEYS, where="[sweep]")
    spec = SweepSpec()
    pipes = sw.get("pipelines", [])
    if not isinstance(pipes, list) or not pipes:
        raise fail(("sweep", "pipelines"), "pipelines must be a non-empty array")
    known_protocols = _known_protocols()
    for i, p in enumerate(pipes):
        at: tuple[str | int, ...] = ("sweep", "pipelines", i)
        if isinstance(p, str):
            if p not in BUILTIN_PROTOCOLS:
                raise fail(
                    at,
                    f"the built-in pipeline does not speak {p!r}",
                    f"choose {', '.join(BUILTIN_PROTOCOLS)}, or give a table with a target",
                )
            spec.pipelines.append((p, p, None))
            continue
        if not isinstance(p, dict):
            raise fail(at, 'a pipeline is a protocol name or { protocol = "...", target = "..." }')
        checker.check_keys(p, at, _PIPELINE_KEYS, where="a pipeline")
        proto = p.get("protocol")
        if not isinstance(proto, str):
            raise fail(at, 'a pipeline table needs protocol = "..."')
        if proto not in known_protocols:
            raise fail(
                (*at, "protocol"),
                f"unknown protocol {proto!r}",
                "known protocols: " + ", ".join(sorted(known_protocols)),
            )
        url = p.get("target")
        if not isinstance(url, str) or not url.strip():
            # Without a target the table would measure the built-in pipeline under the
            # user's name: never measure what the user did not name.
            raise fail(
                (*at, "target") if "target" in p else at,
                'a pipeline table needs target = "URL" (a string)',
                f'the built-in pipeline over a protocol is written as its name: "{proto}"',
            )
        name = p.get("name", proto)
        if not isinstance(name, str) or not name.strip():
            raise fail((*at, "name"), "a pipeline's name must be a non-empty string")
        spec.pipelines.append((name, proto, url))
    nets = sw.get("networks", [])
    if not isinstance(nets, list) or not nets:
        raise fail(("sweep", "networks"), "networks must be a non-empty array")
    for i, n in enumerate(nets):
        if not isinstance(n, str):
            raise fail(("sweep", "networks", i), "a network is a profile name or a spec string")
        try:
            spec.networks.append(_network(n))
        except UsageError as exc:
            raise fail(("sweep", "networks", i), exc.message, exc.hint) from None
    # Upper bounds too: repeats = 9223372036854775807 would build the matrix forever.
    for key, lo, hi in (
        ("repeats", 1, MAX_REPEATS),
        ("turns", 1, 1_000_000),
        ("jitter_buffer_ms", 0, 60_000),
        ("gap_ms", 0, 600_000),
    ):
        if key in sw:
            v = sw[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise fail(("sweep", key), f"{key} must be a whole number in {lo}..{hi}")
            setattr(spec, key, v)
    if "playout" in sw:
        from voiceaudit.probe.playout import PLAYOUT_MODELS

        if sw["playout"] not in PLAYOUT_MODELS:
            raise fail(
                ("sweep", "playout"),
                f"unknown playout model {sw['playout']!r}",
                "choose one of " + ", ".join(PLAYOUT_MODELS),
            )
        spec.playout = sw["playout"]
    if "inject" in sw:
        inj = sw["inject"]
        if not isinstance(inj, list) or not all(isinstance(x, str) for x in inj):
            raise fail(("sweep", "inject"), "inject must be an array of NAME=VALUE strings")
        from voiceaudit.reference.config import parse_injections

        for i, x in enumerate(inj):
            try:
                parse_injections([x])
            except UsageError as exc:
                raise fail(("sweep", "inject", i), exc.message, exc.hint) from None
        if inj and any(url is not None for _, _, url in spec.pipelines):
            raise fail(
                ("sweep", "inject"), "inject applies to the built-in pipeline only (no target)"
            )
        spec.inject = list(inj)
    _check_names(spec, fail)
    return spec


def _known_protocols() -> set[str]:
    from voiceaudit.targets.registry import available

    return set(available())


def _check_names(spec: SweepSpec, fail: Any) -> None:
    """Two pipelines (or networks) with one label would merge in the view: refuse them at
    the line of the second."""
    seen: set[str] = set()
    for i, (label, _, _) in enumerate(spec.pipelines):
        if label in seen:
            raise fail(
                ("sweep", "pipelines", i),
                f"two pipelines are named {label!r}",
                'name them: { name = "...", protocol = "...", target = "..." }',
            )
        seen.add(label)
    nets: set[str] = set()
    for i, (label, _) in enumerate(spec.networks):
        if label in nets:
            raise fail(("sweep", "networks", i), f"the network {label!r} is given twice")
        nets.add(label)


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(
        audio: list[Path] = typer.Argument(
            None, help="Speech files or directories (default: the bundled utterances)."
        ),
        file: Path | None = typer.Option(
            None, "--file", help="A sweep file (TOML) instead of the matrix flags."
        ),
        protocol: list[str] = typer.Option(
            [],
            "--protocol",
            "-p",
            help="A pipeline of the built-in reference over this protocol (repeatable): "
            "realtime, websocket, cascade, webrtc, or a phone carrier (twilio, telnyx, plivo, "
            "exotel, vonage).",
        ),
        target: list[str] = typer.Option(
            [],
            "--target",
            "-t",
            help="A pipeline under test, [NAME=]URL (repeatable; protocol inferred from the "
            "URL, or the single --protocol given).",
        ),
        network: list[str] = typer.Option(
            [],
            "--network",
            help="A network condition (repeatable): a profile (lan, edge, regional-cloud, "
            "cross-continent, mobile-4g, bad-wifi), 'direct' (no proxy), or "
            "[LABEL=]SPEC as for run --impair.",
        ),
        repeats: int = typer.Option(1, "--repeats", help="Runs per cell."),
        turns: int | None = typer.Option(
            None, "--turns", help="Turns per run (default: one pass over the audio)."
        ),
        playout: str = typer.Option(
            "adaptive", "--playout", help="Playout model of every cell: adaptive or fixed."
        ),
        jitter_buffer_ms: int = typer.Option(
            0, "--jitter-buffer-ms", help="With --playout fixed: the buffer depth."
        ),
        inject: list[str] = typer.Option(
            [], "--inject", help="Fault injection of the built-in pipeline (repeatable)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Sweep directory (default ./voiceaudit-sweeps/<timestamp>/)."
        ),
        alpha: float = typer.Option(0.05, "--alpha", help="Significance of the comparisons."),
    ) -> None:
        """Run the same speech through pipelines x network conditions x repeats, one trace
        per cell, and compare the cells."""
        from voiceaudit.probe.runner import ProbeOptions, default_out_dir
        from voiceaudit.probe.utterances import load_utterances
        from voiceaudit.targets.registry import infer_protocol

        if file is not None:
            if protocol or target or network:
                raise UsageError("give the matrix in --file or in flags, not both")
            spec = _from_file(file)
        else:
            spec = SweepSpec(
                repeats=repeats,
                turns=turns,
                playout=playout,
                jitter_buffer_ms=jitter_buffer_ms,
                inject=list(inject),
            )
            for t in target:
                name, sep, url = t.partition("=")
                if not sep or "://" in name:
                    name, url = "", t
                proto = protocol[0] if len(protocol) == 1 else infer_protocol(url)
                if proto not in _known_protocols():
                    # before the sweep directory exists, not when the cell runs
                    raise UsageError(
                        f"unknown protocol {proto!r}",
                        hint="known protocols: " + ", ".join(sorted(_known_protocols())),
                    )
                spec.pipelines.append((name or proto, proto, url))
            if not target:
                spec.pipelines = [(p, p, None) for p in protocol]
            spec.networks = [_network(n) for n in network]
        if not spec.pipelines:
            raise UsageError("no pipeline to sweep", hint="give --protocol or --target")
        if not spec.networks:
            raise UsageError("no network to sweep", hint="give --network lan --network bad-wifi …")
        if not 1 <= spec.repeats <= MAX_REPEATS:
            raise UsageError(f"--repeats must be in 1..{MAX_REPEATS}")
        if spec.inject and any(p[2] is not None for p in spec.pipelines):
            raise UsageError("--inject applies to the built-in pipeline only (no --target)")
        labels = [p[0] for p in spec.pipelines]
        if len(set(labels)) != len(labels):
            raise UsageError("two pipelines have the same name", hint="name them: NAME=URL")
        nlabels = [n[0] for n in spec.networks]
        if len(set(nlabels)) != len(nlabels):
            raise UsageError("a network is given twice")
        for _, proto, where in spec.pipelines:
            if where is None and proto not in BUILTIN_PROTOCOLS:
                raise UsageError(
                    f"the built-in pipeline does not speak {proto!r}",
                    hint="choose " + ", ".join(BUILTIN_PROTOCOLS),
                )
        options = ProbeOptions(
            turns=spec.turns,
            playout=spec.playout,
            jitter_buffer_ms=spec.jitter_buffer_ms,
            gap_ms=spec.gap_ms,
        )
        utterances = load_utterances(list(audio or []))
        sweep_dir = out or default_out_dir(Path("voiceaudit-sweeps"))
        if (sweep_dir / "sweep.json").exists():
            raise UsageError(f"{sweep_dir} holds a sweep already", hint="choose another --out")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        manifest = None
        try:
            interrupted, manifest = asyncio.run(_sweep(spec, options, utterances, sweep_dir))
        except asyncio.CancelledError:
            # The last resort (a third Ctrl-C, or a second that did not end the cell in
            # time): the cell's trace is closed `interrupted`, its turns in flight lost.
            err_console().print(
                "[yellow]interrupted[/]: stopped at once; every finished turn is kept"
            )
            interrupted = True
        from voiceaudit.analysis.sweep import build_sweep_view
        from voiceaudit.report.sweep import render_sweep, render_terminal

        view = build_sweep_view(sweep_dir, alpha=alpha)
        (sweep_dir / "sweep-report.md").write_text(render_sweep(view, "markdown"))
        (sweep_dir / "sweep-report.json").write_text(render_sweep(view, "json"))
        render_terminal(view, out_console())
        out_console().print(f"sweep: {sweep_dir}  (voiceaudit report {sweep_dir})")
        if interrupted:
            raise typer.Exit(ExitCode.INTERRUPTED)
        if manifest is not None and any(c.status != "ok" for c in manifest.cells):
            raise typer.Exit(ExitCode.FAILED)


async def _sweep(
    spec: SweepSpec, options: Any, utterances: list[Any], sweep_dir: Path
) -> tuple[bool, Any]:
    from voiceaudit.analysis.sweep import Manifest, cells_of

    cells = cells_of(spec.pipelines, spec.networks, spec.repeats)
    manifest = Manifest(
        cells,
        {
            "repeats": spec.repeats,
            "turns": spec.turns,
            "playout": spec.playout,
            "jitter_buffer_ms": spec.jitter_buffer_ms,
            "inject": spec.inject,
            "pipelines": [{"name": n, "protocol": p, "target": u} for n, p, u in spec.pipelines],
            "networks": [{"name": n, "impair": s} for n, s in spec.networks],
            "audio": [u.name for u in utterances],
        },
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    manifest.write(sweep_dir)
    from voiceaudit.cli.run_cmd import CUT_GRACE_S

    state: dict[str, Any] = {"probe": None, "stop": False, "interrupts": 0}
    loop = asyncio.get_running_loop()

    def _cancel_all() -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    def _cut() -> None:
        if state["probe"] is not None:
            state["probe"].cut()
        loop.call_later(CUT_GRACE_S, _cancel_all)

    def _on_sigint() -> None:
        # As `voiceaudit run`: 1st: no new cell, no new turn, the turns in flight finish;
        # 2nd: cut them (failed turns, failure `interrupted`); 3rd: cancel at once.
        state["stop"] = True
        state["interrupts"] += 1
        if state["interrupts"] == 1:
            if state["probe"] is not None:
                state["probe"].stop()
            err_console().print(
                "[yellow]stopping[/]: the turns in flight finish, no new turn or cell "
                "starts (Ctrl-C again to cut them)"
            )
        elif state["interrupts"] == 2:
            err_console().print("[yellow]stopping now[/]: the turns in flight are cut")
            _cut()
        else:
            _cancel_all()

    def _on_sigterm() -> None:
        # A service manager's stop: what a second Ctrl-C does.
        state["stop"] = True
        state["interrupts"] = max(state["interrupts"], 2)
        _cut()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, _on_sigint)
        loop.add_signal_handler(signal.SIGTERM, _on_sigterm)
    pool = None
    if any(c.target is None for c in cells):
        from voiceaudit.reference.asr import AsrPool

        pool = AsrPool(2)
        await pool.start()
    err = err_console()
    try:
        for i, cell in enumerate(cells):
            if state["stop"]:
                cell.status = "not run (interrupted)"
                continue
            err.print(
                f"[bold]cell {i + 1}/{len(cells)}[/]: {cell.pipeline} over {cell.network} "
                f"(repeat {cell.repeat})",
                highlight=False,
            )
            try:
                ok = await _cell(cell, spec, options, utterances, sweep_dir / cell.dir, pool, state)
                cell.status = "ok" if ok else "no successful turn"
            except UsageError:
                raise
            except asyncio.CancelledError:
                cell.status = "interrupted"
                for later in cells[i + 1 :]:
                    later.status = "not run (interrupted)"
                raise
            except Exception as exc:  # one broken cell does not end the sweep
                from voiceaudit.errors import VoiceauditError

                cell.status = "failed"
                cell.error = exc.message if isinstance(exc, VoiceauditError) else repr(exc)
                err.print(f"  [red]failed[/]: {cell.error}", highlight=False)
            if state["stop"] and cell.status == "ok":
                cell.status = "interrupted"
            manifest.write(sweep_dir)
    finally:
        if pool is not None:
            await pool.close()
        manifest.write(sweep_dir)
    return bool(state["stop"]), manifest


async def _cell(
    cell: Any,
    spec: SweepSpec,
    options: Any,
    utterances: list[Any],
    run_dir: Path,
    pool: Any,
    state: dict[str, Any],
) -> bool:
    from voiceaudit.cli.run_cmd import reference_options, reference_url
    from voiceaudit.impair import RECORD_NAME, impaired, parse_impairment
    from voiceaudit.probe.runner import Probe
    from voiceaudit.targets.base import TargetConfig
    from voiceaudit.targets.registry import get_target_class

    run_dir.mkdir(parents=True, exist_ok=True)
    server = None
    run_config: dict[str, Any] = {
        "sweep": {
            "cell": cell.dir,
            "pipeline": cell.pipeline,
            "network": cell.network,
            "repeat": cell.repeat,
        }
    }
    try:
        url = cell.target
        topts: dict[str, str] = {}
        if url is None:
            from voiceaudit.reference.config import ServerConfig, parse_injections
            from voiceaudit.reference.server import start_reference_server

            server = await start_reference_server(
                ServerConfig(
                    injections=parse_injections(spec.inject),
                    ground_truth_path=run_dir / "ground_truth.jsonl",
                ),
                asr_pool=pool,
            )
            url = reference_url(server, cell.protocol)
            topts = reference_options(cell.protocol)
            run_config["reference"] = {
                "inject": list(spec.inject),
                "ground_truth": "ground_truth.jsonl",
            }
        imp = parse_impairment(cell.impair) if cell.impair else None
        async with contextlib.AsyncExitStack() as stack:
            if imp is not None:
                from voiceaudit.targets.base import redact_url

                via = await stack.enter_async_context(
                    impaired(url, cell.protocol, imp, run_dir / RECORD_NAME)
                )
                run_config["impairment"] = {
                    **imp.describe(),
                    "target": redact_url(url),
                    "proxy": redact_url(via),
                }
                url = via
            target = get_target_class(cell.protocol)(
                TargetConfig(url=url, protocol=cell.protocol, options=topts)
            )
            probe = Probe(
                target, utterances, options, run_dir / "trace.jsonl", run_config=run_config
            )
            state["probe"] = probe
            try:
                res = await probe.run()
            finally:
                state["probe"] = None
        return bool(res.ok_turns)
    finally:
        if server is not None:
            await server.close()
