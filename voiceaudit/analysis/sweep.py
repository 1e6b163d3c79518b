"""The sweep view: one report per cell of a matrix of pipelines x network conditions.

``voiceaudit sweep`` writes one run directory per cell (pipeline, network, repeat) under
one sweep directory and a manifest, ``sweep.json`` (schema ``voiceaudit.sweep/1``):

.. code-block:: json

    {"schema": "voiceaudit.sweep/1", "created": "...", "options": {...},
     "cells": [{"dir": "websocket--lan--r1", "pipeline": "websocket",
                "protocol": "websocket", "target": null, "network": "lan",
                "impair": "...", "repeat": 1, "status": "ok"}]}

The view groups cells by (pipeline, network), merging repeats, and gives per group the
path it was measured on (phone, webrtc, websocket, ...: results of different paths side
by side, never merged), the turns, voice-to-voice p50/p95, the transport segment's p50,
the greeting latency's p50 (where the target speaks first), what the caller heard of the
playout (latency the buffer added, p50; turns with an underrun; underrun time per turn)
and the failures. Pairwise comparisons (voice-to-voice, two-sided Mann-Whitney U, as in
``voiceaudit report A B``, Holm-corrected over all the pairs of the sweep):
every two pipelines under the same network, and every network against the sweep's first
network for the same pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from voiceaudit import __version__
from voiceaudit.analysis.phone import target_path
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report, build_report
from voiceaudit.analysis.stats import Difference, holm, mann_whitney
from voiceaudit.errors import NoDataError, TraceError

SWEEP_SCHEMA = "voiceaudit.sweep/1"
SWEEP_VIEW_SCHEMA = "voiceaudit.sweep-report/1"
MANIFEST = "sweep.json"


@dataclass
class Cell:
    """One cell of the matrix: a run directory under the sweep directory."""

    dir: str
    pipeline: str
    protocol: str
    network: str
    repeat: int
    target: str | None = None
    impair: str = ""
    status: str = "pending"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "pipeline": self.pipeline,
            "protocol": self.protocol,
            "target": self.target,
            "network": self.network,
            "impair": self.impair,
            "repeat": self.repeat,
            "status": self.status,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(
            dir=str(d["dir"]),
            pipeline=str(d["pipeline"]),
            protocol=str(d["protocol"]),
            network=str(d["network"]),
            repeat=int(d["repeat"]),
            target=None if d.get("target") is None else str(d["target"]),
            impair=str(d.get("impair") or ""),
            status=str(d.get("status") or "pending"),
            error=None if d.get("error") is None else str(d["error"]),
        )


@dataclass
class Manifest:
    cells: list[Cell]
    options: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SWEEP_SCHEMA,
            "voiceaudit_version": __version__,
            "created": self.created,
            "options": self.options,
            "cells": [c.to_dict() for c in self.cells],
        }

    def write(self, sweep_dir: Path) -> None:
        """Write atomically (a crash mid-sweep leaves the previous manifest)."""
        tmp = sweep_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(sweep_dir / MANIFEST)


def is_sweep(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_manifest(sweep_dir: Path) -> Manifest:
    p = sweep_dir / MANIFEST
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except RecursionError:
        raise TraceError("not a sweep manifest: nested too deeply to read", path=str(p)) from None
    except (OSError, ValueError) as exc:
        raise TraceError(f"not a sweep manifest: {exc}", path=str(p)) from None
    if not isinstance(d, dict) or d.get("schema") != SWEEP_SCHEMA:
        raise TraceError(f"not a {SWEEP_SCHEMA} manifest", path=str(p))
    try:
        cells = [Cell.from_dict(c) for c in d["cells"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"malformed sweep manifest ({exc})", path=str(p)) from None
    return Manifest(cells, dict(d.get("options") or {}), str(d.get("created") or ""))


def _p(values: np.ndarray[Any, Any], q: float) -> float | None:
    return None if len(values) == 0 else float(np.percentile(values, q))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(frozen=True)
class Group:
    """The merged repeats of one (pipeline, network)."""

    pipeline: str
    network: str
    cells: tuple[Cell, ...]
    report: Report | None
    #: why there is no report (every cell failed or held no finished turn)
    problem: str | None = None

    @property
    def path(self) -> str:
        """The path the group was measured on (phone, webrtc, websocket, http,
        in-process): its traces' headers, else the cells' protocol; ``a + b`` when its
        runs were on several."""
        if self.report is not None:
            paths = sorted(set(self.report.paths.values()))
        else:
            paths = sorted({target_path({"protocol": c.protocol}) for c in self.cells})
        return " + ".join(paths)

    def greeting_p50_ms(self) -> float | None:
        """The group's greeting latency p50 (sessions that waited for one and heard it)."""
        ph = None if self.report is None else self.report.phone
        if ph is None:
            return None
        return _p(ph.greeting_ms, 50)

    @property
    def v2v(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        if self.report is None:
            return np.zeros(0)
        return self.report.metric_values[VOICE_TO_VOICE]

    def playout(self) -> dict[str, Any]:
        """Buffer latency p50 (ms), share of turns with an underrun, underrun ms per turn."""
        if self.report is None:
            return {"buffer_p50_ms": None, "underrun_turns": 0, "underrun_ms_per_turn": None}
        buf: list[float] = []
        gaps: list[float] = []
        for t in self.report.stats_turns:
            p = getattr(t, "playout", None)
            if p is None:
                continue
            if p.buffer_ns is not None:
                buf.append(p.buffer_ns / 1e6)
            if p.underrun_ns is not None:
                gaps.append(p.underrun_ns / 1e6)
        g = np.asarray(gaps, dtype=np.float64)
        return {
            "buffer_p50_ms": _r(_p(np.asarray(buf, dtype=np.float64), 50)),
            "underrun_turns": int(np.count_nonzero(g > 0)),
            "underrun_ms_per_turn": _r(float(g.mean())) if len(g) else None,
        }

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        v = self.v2v
        transport = r.metric_values.get("transport") if r is not None else None
        return {
            "pipeline": self.pipeline,
            "network": self.network,
            "path": self.path,
            "cells": [c.dir for c in self.cells],
            "turns": 0 if r is None else r.counts["turns"],
            "ok": 0 if r is None else len(r.stats_turns),
            "failed": (0 if r is None else r.counts["failed"])
            + sum(1 for c in self.cells if c.status != "ok"),
            "voice_to_voice_p50_ms": _r(_p(v, 50)),
            "voice_to_voice_p95_ms": _r(_p(v, 95)),
            "transport_p50_ms": _r(None if transport is None else _p(transport, 50)),
            "greeting_p50_ms": _r(self.greeting_p50_ms()),
            **self.playout(),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Pair:
    a: Group
    b: Group
    #: "network" (two pipelines, same network) or "pipeline" (two networks, same pipeline)
    same: str
    test: Difference | None
    significant: bool
    #: Holm-adjusted p-value over the sweep's pairs (None when not tested)
    p_adjusted: float | None = None

    @property
    def diff_p50_ms(self) -> float | None:
        pa, pb = _p(self.a.v2v, 50), _p(self.b.v2v, 50)
        return None if pa is None or pb is None else pb - pa

    def verdict(self) -> str:
        d = self.diff_p50_ms
        if self.test is None or d is None:
            return "not tested (no turns on one side)"
        if not self.significant:
            return "no significant difference"
        return "slower" if d > 0 else "faster"

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"pipeline": self.a.pipeline, "network": self.a.network, "path": self.a.path},
            "b": {"pipeline": self.b.pipeline, "network": self.b.network, "path": self.b.path},
            "same": self.same,
            "diff_p50_ms": _r(self.diff_p50_ms),
            "p_value": None if self.test is None else self.test.p_value,
            "p_adjusted": self.p_adjusted,
            "significant": self.significant,
            "verdict": self.verdict(),
        }


@dataclass(frozen=True)
class SweepView:
    path: str
    manifest: Manifest
    groups: tuple[Group, ...]
    pairs: tuple[Pair, ...]
    alpha: float
    warnings: tuple[str, ...] = ()

    @property
    def pipelines(self) -> list[str]:
        return list(dict.fromkeys(g.pipeline for g in self.groups))

    @property
    def networks(self) -> list[str]:
        return list(dict.fromkeys(g.network for g in self.groups))

    def group(self, pipeline: str, network: str) -> Group | None:
        return next(
            (g for g in self.groups if g.pipeline == pipeline and g.network == network), None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SWEEP_VIEW_SCHEMA,
            "voiceaudit_version": __version__,
            "sweep": self.path,
            "options": self.manifest.options,
            "alpha": self.alpha,
            "test": "Mann-Whitney U on voice-to-voice, two-sided, Holm-corrected over the pairs",
            "cells": [c.to_dict() for c in self.manifest.cells],
            "groups": [g.to_dict() for g in self.groups],
            "pairs": [p.to_dict() for p in self.pairs],
            "warnings": list(self.warnings),
        }


def _pairs(groups: Sequence[Group], alpha: float) -> tuple[Pair, ...]:
    from voiceaudit.analysis.significance import holm_adjusted

    by = {(g.pipeline, g.network): g for g in groups}
    pipelines = list(dict.fromkeys(g.pipeline for g in groups))
    networks = list(dict.fromkeys(g.network for g in groups))
    cand: list[tuple[Group, Group, str]] = []
    for net in networks:
        for pa, pb in combinations(pipelines, 2):
            if (pa, net) in by and (pb, net) in by:
                cand.append((by[(pa, net)], by[(pb, net)], "network"))
    for pipe in pipelines:
        first = networks[0]
        for net in networks[1:]:
            if (pipe, first) in by and (pipe, net) in by:
                cand.append((by[(pipe, first)], by[(pipe, net)], "pipeline"))
    tests = [mann_whitney(a.v2v, b.v2v) if len(a.v2v) and len(b.v2v) else None for a, b, _ in cand]
    tested = [i for i, t in enumerate(tests) if t is not None]
    raw = [tests[i].p_value for i in tested]  # type: ignore[union-attr]
    significant = dict(zip(tested, holm(raw, alpha), strict=True))
    adjusted = dict(zip(tested, holm_adjusted(raw), strict=True))
    return tuple(
        Pair(a, b, same, tests[i], significant.get(i, False), adjusted.get(i))
        for i, (a, b, same) in enumerate(cand)
    )


def build_sweep_view(
    sweep_dir: Path,
    *,
    alpha: float = 0.05,
    include_warmup: bool = False,
    progress: Any = None,
) -> SweepView:
    """The sweep view of a directory written by ``voiceaudit sweep``."""
    manifest = read_manifest(sweep_dir)
    if not manifest.cells:
        raise NoDataError(f"{sweep_dir}: the sweep has no cells")
    keys: list[tuple[str, str]] = list(
        dict.fromkeys((c.pipeline, c.network) for c in manifest.cells)
    )
    groups = []
    warnings: list[str] = []
    for pipe, net in keys:
        cells = tuple(c for c in manifest.cells if c.pipeline == pipe and c.network == net)
        traces = [sweep_dir / c.dir for c in cells if (sweep_dir / c.dir / "trace.jsonl").exists()]
        for c in cells:
            if c.status != "ok":
                warnings.append(f"cell {c.dir}: {c.status}" + (f" ({c.error})" if c.error else ""))
        report: Report | None = None
        problem: str | None = None
        if traces:
            if progress is not None:
                progress(f"reading {pipe} over {net}")
            try:
                report = build_report(
                    traces, include_warmup=include_warmup, label=f"{pipe} over {net}"
                )
                warnings.extend(f"{pipe} over {net}: {w}" for w in report.warnings)
            except NoDataError as exc:
                problem = exc.message
        else:
            problem = "no trace recorded"
        groups.append(Group(pipe, net, cells, report, problem))
    return SweepView(
        str(sweep_dir), manifest, tuple(groups), _pairs(groups, alpha), alpha, tuple(warnings)
    )


def cells_of(
    pipelines: Iterable[tuple[str, str, str | None]],
    networks: Iterable[tuple[str, str]],
    repeats: int,
) -> list[Cell]:
    """The matrix, pipeline-major: ``pipelines`` (label, protocol, target URL or None for
    the built-in pipeline) x ``networks`` (label, impairment spec) x repeats."""
    nets = list(networks)
    out = []
    for label, protocol, target in pipelines:
        for net, spec in nets:
            for r in range(1, repeats + 1):
                d = f"{_slug(label)}--{_slug(net)}--r{r}"
                out.append(Cell(d, label, protocol, net, r, target, spec))
    return out


def _slug(text: str) -> str:
    s = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)
    return s.strip("-") or "x"
