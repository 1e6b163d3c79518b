"""`voiceaudit report`: latency ledger, hidden delays and statistics from traces.

One trace (or run directory): the report. Two: a side-by-side comparison, B against A.
The report goes to stdout or ``--output``; progress and warnings go to stderr.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import typer

from voiceaudit.cli.console import err_console, out_console
from voiceaudit.errors import CheckFailed, UsageError

_FORMATS = ("terminal", "markdown", "html", "json")
#: Width of terminal-format text written to a pipe or a file.
TEXT_WIDTH = 120


def _label(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix) and name != suffix:
            stem = name[: -len(suffix)]
            # "run-dir/trace.jsonl" is better named after its run directory.
            return path.parent.name if stem == "trace" and path.parent.name else stem
    return name


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        traces: list[Path] = typer.Argument(
            None,
            help="A trace file or run directory; give two to compare them (B against A). "
            "A call recording (.wav, .flac, .ogg) or a directory of them is read as a call "
            "(docs/recordings.md).",
            show_default=False,
        ),
        fmt: str | None = typer.Option(
            None,
            "--format",
            "-f",
            help="terminal, markdown, html or json (default: from --output's suffix, "
            "else terminal).",
            show_default=False,
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write the report here instead of stdout."
        ),
        include_warmup: bool = typer.Option(
            False, "--include-warmup", help="Count warm-up turns in the statistics."
        ),
        arrival_times: bool = typer.Option(
            False,
            "--arrival-times",
            help="Place pipeline marks at their arrival at the probe, even when the "
            "target reported its own (same-host) times.",
        ),
        merge: bool = typer.Option(
            False, "--merge", help="Merge all the traces given into one report."
        ),
        alpha: float = typer.Option(
            0.05, "--alpha", help="Significance level of a comparison (Holm-corrected)."
        ),
        knee_margin: str = typer.Option(
            "10%",
            "--knee-margin",
            help="Latency by concurrency: the knee is the lowest level whose p95 is "
            "significantly more than this above one session's ('10%' or '50ms').",
        ),
        pcap: Path | None = typer.Option(
            None,
            "--pcap",
            help="Join a packet capture of the run (default: the run directory's "
            "capture.pcapng when 'run --capture' made one).",
        ),
        telemetry: list[Path] = typer.Option(
            [],
            "--telemetry",
            help="Framework telemetry (Pipecat/LiveKit spans, OpenAI event logs) to set "
            "beside what the caller heard (repeatable).",
        ),
        keep_content: bool = typer.Option(
            False, "--keep-content", help="Keep transcripts and texts from imported telemetry."
        ),
        caller: str = typer.Option(
            "left", "--caller", help="Recordings: the caller's channel, left or right."
        ),
        caller_track: Path | None = typer.Option(
            None,
            "--caller-track",
            help="Recordings: the caller's mono track (with --agent-track).",
        ),
        agent_track: Path | None = typer.Option(
            None,
            "--agent-track",
            help="Recordings: the agent's mono track (with --caller-track).",
        ),
        answer_at: float | None = typer.Option(
            None,
            "--answer-at",
            help="Recordings: when the call was answered, seconds into the recording "
            "(greeting latency is measured from it; default: the recording's start).",
        ),
    ) -> int:
        """Attribute voice-to-voice latency to stages, find hidden delays, give statistics."""
        from voiceaudit.analysis import build_report, compare
        from voiceaudit.analysis.significance import parse_increase
        from voiceaudit.report import Format, render

        chosen = _format(fmt, output)
        from voiceaudit.analysis.recording import is_recording
        from voiceaudit.analysis.sweep import is_sweep

        traces = list(traces or [])
        recorded = caller_track is not None or agent_track is not None
        if not traces and not recorded:
            raise UsageError(
                "give a trace, a run directory or a recording",
                hint="voiceaudit report TRACE, or --caller-track A.wav --agent-track B.wav",
            )
        if recorded or any(is_recording(t) for t in traces):
            return _recording_report(
                traces,
                chosen,
                output,
                include_warmup,
                merge,
                alpha,
                (caller, caller_track, agent_track, answer_at),
            )
        if len(traces) == 1 and is_sweep(traces[0]) and not merge:
            return _sweep_report(traces[0], chosen, output, alpha, include_warmup)
        margin = parse_increase(knee_margin)
        if margin is None:
            raise UsageError(
                f"--knee-margin {knee_margin!r} is neither a percentage nor a duration",
                hint="write it like 10% or 50ms",
            )
        if len(traces) > 2 and not merge:
            raise UsageError(
                f"{len(traces)} traces given: give one (a report) or two (a comparison)",
                hint="use --merge to merge them into one report, or put them in one directory",
            )
        mark_time = "arrival" if arrival_times else "auto"
        needs_obs = chosen is Format.HTML
        err = err_console()
        status: AbstractContextManager[Any] = (
            err.status("reading traces…") if err.is_terminal else nullcontext()
        )

        def progress(msg: str) -> None:
            if hasattr(status, "update"):
                status.update(msg)

        with status:
            groups = [traces] if merge or len(traces) == 1 else [[traces[0]], [traces[1]]]
            single = len(groups) == 1 and not merge
            trace, join = (
                _capture_join(traces[0], pcap, telemetry, progress) if single else (None, None)
            )
            reports = [
                build_report(
                    g,
                    include_warmup=include_warmup,
                    mark_time=mark_time,  # type: ignore[arg-type]
                    keep_observations=needs_obs,
                    progress=progress,
                    label=", ".join(_label(p) for p in g),
                    wire_marks=None if join is None else join.wire_marks(),
                    knee_margin=margin,
                )
                for g in groups
            ]
            obj: Any = reports[0] if len(reports) == 1 else compare(*reports, alpha=alpha)
            extras = (
                _extras(trace, join, telemetry, keep_content, progress) if trace is not None else []
            )
            if (pcap is not None or telemetry) and not extras:
                raise UsageError("--pcap and --telemetry go with one trace (not a comparison)")
            progress("rendering…")
            # Colours and the terminal's width only when stdout is a terminal; a pipe or a
            # file gets plain text at a fixed width, the same on every machine.
            to_tty = chosen is Format.TERMINAL and output is None and sys.stdout.isatty()
            text = None if to_tty else render(obj, chosen, width=TEXT_WIDTH)
            if text is not None and extras:
                text = _with_extras(text, chosen, extras)
        from voiceaudit.report.common import failure_banner

        for r in reports:
            for w in r.warnings:
                err.print(f"[yellow]warning:[/] {w}", highlight=False, markup=True)
            # on stderr too, so a report written to a file still warns of its failures
            banner = failure_banner(r)
            if banner is not None:
                what = f"{r.label}: " if len(reports) > 1 else ""
                err.print(f"{what}{banner}", style="bold red", highlight=False, markup=False)
        return _emit(obj, reports, extras, text, output, "the trace", "successful")


def _format(fmt: str | None, output: Path | None) -> Any:
    from voiceaudit.report import Format

    if fmt is not None:
        if fmt not in _FORMATS:
            raise UsageError(f"unknown format {fmt!r}", hint=f"use one of: {', '.join(_FORMATS)}")
        return Format(fmt)
    if output is not None:
        by_suffix = Format.from_suffix(output.suffix)
        if by_suffix is not None:
            return by_suffix
    return Format.TERMINAL


Extra = tuple[str, str, Any]  # (title, JSON key, object with render_text() and to_dict())


def _capture_join(
    trace_path: Path, pcap: Path | None, telemetry: list[Path], progress: Any
) -> tuple[Any, Any]:
    """(the trace, its capture joined to it, or None) for a report of one trace file;
    (None, None) for a directory of traces. The join comes first because the ledger
    takes the first reply audio on the wire from it."""
    from voiceaudit.trace_io import find_traces, read_trace

    files = find_traces(trace_path)
    if len(files) != 1:
        if pcap is not None or telemetry:
            raise UsageError("--pcap and --telemetry go with a single trace file")
        return None, None
    trace = read_trace(files[0])
    if pcap is None:
        cap = trace.header.config.get("capture")
        if isinstance(cap, dict) and isinstance(cap.get("file"), str):
            candidate = files[0].parent / cap["file"]
            pcap = candidate if candidate.is_file() else None
    if pcap is None:
        return trace, None
    from voiceaudit.analysis.network import join_capture

    progress("reading the capture…")
    return trace, join_capture(trace, pcap)


def _extras(
    trace: Any,
    join: Any,
    telemetry: list[Path],
    keep_content: bool,
    progress: Any,
) -> list[Extra]:
    """Sections joined from a capture and from framework telemetry, for one trace."""
    out: list[Extra] = []
    if join is not None:
        out.append(("Network path", "network", join))
    timeline = _ConnectionTimeline(trace)
    if timeline.sessions:
        out.append(("Connection timeline", "connection_timeline", timeline))
    from voiceaudit.imports.inline import inline_figures

    own = inline_figures(trace)
    if own:
        # the target's own latency figures, sent in its protocol (Deepgram's total_latency)
        out.append(("The target says / the caller heard", "target_figures", _Rows(own)))
    if telemetry:
        from voiceaudit.imports import import_telemetry

        progress("importing telemetry…")
        results = [import_telemetry(f, trace=trace, keep_content=keep_content) for f in telemetry]
        out.append(("Framework vs heard", "framework_vs_heard", _FrameworkRows(results, trace)))
    return out


class _ConnectionTimeline:
    """Per session, the connection marks (WebRTC: offer, answer, ICE, DTLS, first RTP),
    in ms from the session's connection attempt. Shown for sessions with WebRTC marks."""

    def __init__(self, trace: Any) -> None:
        self.sessions: dict[str, list[tuple[str, float]]] = {}
        starts: dict[str, int] = {}
        marks: dict[str, list[tuple[str, int]]] = {}
        for e in trace.events:
            if e.turn is not None and not e.name.startswith("webrtc.first_rtp"):
                continue
            if e.name == "session.connect_start":
                starts.setdefault(e.session, e.t_ns)
            elif e.name.startswith(("webrtc.", "session.")):
                marks.setdefault(e.session, []).append((e.name, e.t_ns))
        for session, items in marks.items():
            if session not in starts or not any(n.startswith("webrtc.") for n, _ in items):
                continue
            t0 = starts[session]
            self.sessions[session] = [
                (name, round((t - t0) / 1e6, 3)) for name, t in sorted(items, key=lambda x: x[1])
            ]

    def render_text(self) -> str:
        lines = []
        for session, items in self.sessions.items():
            lines.append(f"session {session} (ms from the connection attempt)")
            lines += [f"  {ms:>10.3f}  {name}" for name, ms in items]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {s: [{"mark": n, "ms": ms} for n, ms in items] for s, items in self.sessions.items()}


class _Rows:
    """Framework-vs-heard rows of figures the trace itself holds (no import, no alignment)."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def render_text(self) -> str:
        from voiceaudit.imports.compare import format_table

        return format_table(self.rows) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [row.to_dict() for row in self.rows]}


class _FrameworkRows:
    def __init__(self, results: list[Any], trace: Any) -> None:
        from voiceaudit.imports import framework_vs_heard

        self.results = results
        self.rows = framework_vs_heard(results, trace)

    def render_text(self) -> str:
        from voiceaudit.imports.compare import format_table

        head = [r.alignment.describe() for r in self.results if r.alignment is not None]
        warnings = [f"warning: {w}" for r in self.results for w in r.warnings]
        return "\n".join([*head, format_table(self.rows), *warnings]) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "alignment": [r.alignment.describe() for r in self.results if r.alignment is not None],
            "rows": [row.to_dict() for row in self.rows],
        }


def _with_extras(text: str, fmt: Any, extras: list[Extra]) -> str:
    import html
    import json

    from voiceaudit.report import Format

    if fmt is Format.JSON:
        data = json.loads(text)
        for _, key, section in extras:
            data[key] = section.to_dict()
        return json.dumps(data, indent=2) + "\n"
    if fmt is Format.HTML:
        blocks = "".join(
            f"<section><h2>{html.escape(title)}</h2><pre>{html.escape(section.render_text())}"
            "</pre></section>"
            for title, _, section in extras
        )
        i = text.rfind("</body>")
        return text[:i] + blocks + text[i:] if i >= 0 else text + blocks
    if fmt is Format.MARKDOWN:
        return text + "".join(
            f"\n## {title}\n\n```\n{section.render_text()}```\n" for title, _, section in extras
        )
    return text + "".join(f"\n{title}\n{section.render_text()}" for title, _, section in extras)


def _sweep_report(
    sweep_dir: Path, chosen: Any, output: Path | None, alpha: float, include_warmup: bool
) -> int:
    """The sweep view of a directory written by ``voiceaudit sweep``."""
    from voiceaudit.analysis.sweep import build_sweep_view
    from voiceaudit.report.sweep import render_sweep, render_terminal

    view = build_sweep_view(sweep_dir, alpha=alpha, include_warmup=include_warmup)
    fmt = str(chosen.value)
    if fmt == "terminal" and output is None and sys.stdout.isatty():
        render_terminal(view, out_console())
        return 0
    text = render_sweep(view, fmt, width=TEXT_WIDTH)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
        err_console().print(f"wrote {output}", highlight=False)
    return 0


def _recording_report(
    paths: list[Path],
    chosen: Any,
    output: Path | None,
    include_warmup: bool,
    merge: bool,
    alpha: float,
    how: tuple[str, Path | None, Path | None, float | None],
) -> int:
    """The report of call recordings (docs/recordings.md): one recording, a directory of
    them or two tracks; two recordings: B against A; ``--merge``: all in one. ``how``:
    the caller's channel, the two tracks, the answer time."""
    from voiceaudit.analysis import build_report, compare
    from voiceaudit.analysis.recording import CallTable, recording_inputs
    from voiceaudit.report import render
    from voiceaudit.report.common import failure_banner

    caller, caller_track, agent_track, answer_at = how
    if len(paths) > 2 and not merge:
        raise UsageError(
            f"{len(paths)} recordings given: give one (a report) or two (a comparison)",
            hint="use --merge, or put them in one directory",
        )
    if len(paths) == 2 and not merge:
        sides = [recording_inputs([p], caller, None, None, answer_at) for p in paths]
        labels = [_label(p) for p in paths]
    else:
        sides = [recording_inputs(paths, caller, caller_track, agent_track, answer_at)]
        names = [p.name for p in paths] or [p.name for p in (caller_track, agent_track) if p]
        labels = [", ".join(names)]
    reports = [
        build_report(s, include_warmup=include_warmup, keep_observations=True, label=lab)
        for s, lab in zip(sides, labels, strict=True)
    ]
    obj: Any = reports[0] if len(reports) == 1 else compare(*reports, alpha=alpha)
    extras: list[Extra] = [("Calls", "calls", CallTable([t for s in sides for t in s]))]
    err = err_console()
    to_tty = chosen.value == "terminal" and output is None and sys.stdout.isatty()
    text = None if to_tty else _with_extras(render(obj, chosen, width=TEXT_WIDTH), chosen, extras)
    for r in reports:
        for w in r.warnings:
            err.print(f"[yellow]warning:[/] {w}", highlight=False, markup=True)
        banner = failure_banner(r)
        if banner is not None:
            err.print(banner, style="bold red", highlight=False, markup=False)
    return _emit(obj, reports, extras, text, output, "the recording", "measured")


def _emit(
    obj: Any,
    reports: list[Any],
    extras: list[Extra],
    text: str | None,
    output: Path | None,
    what: str,
    kind: str,
) -> int:
    """Print the report (``text`` None: to the terminal, with its extra sections) or write
    ``text`` to ``output`` or stdout; CheckFailed when a report has no turn to measure
    (``what``: the report's subject, ``kind``: its turns' word)."""
    from voiceaudit.report import print_to

    if text is None:
        print_to(obj, out_console())
        for title, _, section in extras:
            out_console().print(f"\n[bold]{title}[/]")
            out_console().print(section.render_text(), highlight=False, markup=False)
    elif output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
        err_console().print(f"wrote {output}", highlight=False)
    for r in reports:
        if not r.stats_turns:
            raise CheckFailed(
                f"{r.label or what}: no {kind} turns ({r.counts['failed']} failed)",
                hint="the report lists why each turn failed",
            )
    return 0
