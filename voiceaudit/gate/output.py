"""What the gate writes: a text summary, Markdown, JUnit XML and JSON.

Plain text only (the CLI adds colour); nothing here imports rich.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from voiceaudit import __version__
from voiceaudit.analysis.report import Report
from voiceaudit.gate.evaluate import FRACTION, Check, GateResult

GATE_SCHEMA = "voiceaudit.gate/1"


def headline(result: GateResult) -> str:
    n = len(result.checks)
    bad = len(result.failed)
    if result.passed:
        return f"voiceaudit gate: passed: all {n} checks pass"
    return f"voiceaudit gate: FAILED: {bad} of {n} checks failed"


def _population(label: str, r: Report) -> str:
    c = r.counts
    parts = [f"{c['ok']} ok", f"{c['failed']} failed"]
    if c["warmup"]:
        parts.append(f"{c['warmup']} warm-up")
    if c["unfinished"]:
        parts.append(f"{c['unfinished']} cut short")
    srcs = ", ".join(s.path for s in r.sources[:3]) + (", …" if len(r.sources) > 3 else "")
    return (
        f"{label}: {c['in_statistics']} turns in the statistics of {c['turns']} "
        f"({', '.join(parts)}) from {len(r.sources)} trace(s): {srcs}"
    )


def _where(result: GateResult, c: Check) -> str:
    if c.line is None or result.budget.path is None:
        return ""
    return f"  [{result.budget.path}:{c.line}]"


def summary_lines(result: GateResult) -> list[tuple[str, str]]:
    """The stderr summary as (style, text) lines; style is ``pass``, ``fail``, ``warn``,
    ``head`` or ``""``."""
    out: list[tuple[str, str]] = [("pass" if result.passed else "fail", headline(result))]
    out.append(("", _population("traces", result.current)))
    if result.baseline is not None:
        out.append(("", _population("baseline", result.baseline)))
    if result.budget.path is not None:
        out.append(("", f"budget: {result.budget.path}"))
    for c in result.checks:
        tag = "PASS" if c.passed else "FAIL"
        out.append((c.status, f"  {tag}  {c.name}: {c.detail}{_where(result, c)}"))
        for note in c.notes:
            out.append(("", f"        note: {note}"))
    for k, (a, b) in result.differences.items():
        out.append(("warn", f"differs: {k}: baseline {_short(a)}, traces {_short(b)}"))
    for w in result.warnings:
        out.append(("warn", f"warning: {w}"))
    return out


def _short(v: Any, limit: int = 120) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_text(result: GateResult) -> str:
    return "\n".join(text for _, text in summary_lines(result)) + "\n"


# -- Markdown -------------------------------------------------------------------------------


def _md(text: object) -> str:
    """Text from traces or files, safe in a Markdown table cell."""
    s = html.escape(str(text), quote=False)
    return s.replace("|", "\\|").replace("\n", " ").replace("`", "\\`")


def _val(c: Check, x: float | None) -> str:
    if x is None:
        return ""
    if c.unit in ("turns", "sessions"):
        return f"{x:.0f}"
    if c.unit == FRACTION:
        return f"{x * 100:.1f}%"
    if c.unit == "ms/min":
        return f"{x:.2f} ms/min"
    return f"{x:.1f} ms" if abs(x) < 100 else f"{x:.0f} ms"


def render_markdown(result: GateResult) -> str:
    icon = "✅" if result.passed else "❌"
    lines = [f"### {icon} {_md(headline(result))}", ""]
    lines.append(f"- {_md(_population('traces', result.current))}")
    if result.baseline is not None:
        lines.append(f"- {_md(_population('baseline', result.baseline))}")
    if result.budget.path is not None:
        lines.append(f"- budget: `{_md(result.budget.path)}`")
    lines += ["", "| | check | observed | limit | detail |", "|---|---|---:|---:|---|"]
    for c in result.checks:
        mark = "✅" if c.passed else "❌"
        detail = c.detail + "".join(f" ({n})" for n in c.notes)
        cells = [mark, _md(c.name), _val(c, c.observed), _val(c, c.limit), _md(detail)]
        lines.append("| " + " | ".join(cells) + " |")
    extra = [
        f"differs: {k}: baseline {_short(a)}, traces {_short(b)}"
        for k, (a, b) in result.differences.items()
    ] + [f"warning: {w}" for w in result.warnings]
    if extra:
        lines.append("")
        lines.extend(f"- {_md(x)}" for x in extra)
    return "\n".join(lines) + "\n\n"


# -- JUnit XML ------------------------------------------------------------------------------

#: Characters XML 1.0 cannot carry at all (text from traces could hold them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: object) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def render_junit(result: GateResult, *, timestamp: datetime | None = None) -> str:
    """One ``<testsuite>`` with one ``<testcase>`` per check; failed checks carry a
    ``<failure>`` with the reason. Reads in Jenkins, GitLab, GitHub test reporters and
    junitparser."""
    n = len(result.checks)
    bad = len(result.failed)
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element(
        "testsuites",
        {
            "name": "voiceaudit gate",
            "tests": str(n),
            "failures": str(bad),
            "errors": "0",
            "time": "0",
        },
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": "voiceaudit gate",
            "tests": str(n),
            "failures": str(bad),
            "errors": "0",
            "skipped": "0",
            "time": "0",
            "timestamp": stamp,
        },
    )
    props = ET.SubElement(suite, "properties")

    def prop(name: str, value: object) -> None:
        ET.SubElement(props, "property", {"name": name, "value": _x(value)})

    prop("voiceaudit.version", __version__)
    if result.budget.path is not None:
        prop("budget", result.budget.path)
    prop("traces", ", ".join(s.path for s in result.current.sources))
    prop("turns_in_statistics", len(result.current.stats_turns))
    if result.baseline is not None:
        prop("baseline", ", ".join(s.path for s in result.baseline.sources))
        prop("baseline_turns_in_statistics", len(result.baseline.stats_turns))
    for c in result.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            {"name": _x(c.name), "classname": f"voiceaudit.gate.{c.kind}", "time": "0"},
        )
        body = [c.detail, *(f"note: {x}" for x in c.notes)]
        if c.line is not None and result.budget.path is not None:
            body.append(f"defined at {result.budget.path}:{c.line}")
        if not c.passed:
            failure = ET.SubElement(
                case, "failure", {"message": _x(c.detail), "type": _x(c.problem or "failed")}
            )
            failure.text = _x("\n".join(body))
        else:
            ET.SubElement(case, "system-out").text = _x("\n".join(body))
    tail = [text for _, text in summary_lines(result)]
    ET.SubElement(suite, "system-out").text = _x("\n".join(tail))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- JSON -----------------------------------------------------------------------------------


def _population_dict(r: Report) -> dict[str, Any]:
    return {"sources": [s.to_dict() for s in r.sources], "counts": r.counts}


def to_dict(result: GateResult) -> dict[str, Any]:
    """The ``voiceaudit.gate/1`` document (docs/ci.md)."""
    return {
        "schema": GATE_SCHEMA,
        "voiceaudit_version": __version__,
        "passed": result.passed,
        "exit_code": 0 if result.passed else 1,
        "budget": None if result.budget.path is None else str(result.budget.path),
        "summary": {
            "checks": len(result.checks),
            "passed": len(result.checks) - len(result.failed),
            "failed": len(result.failed),
        },
        "traces": _population_dict(result.current),
        "baseline": None if result.baseline is None else _population_dict(result.baseline),
        "checks": [c.to_dict() for c in result.checks],
        "differences": {
            k: {"baseline": a, "traces": b} for k, (a, b) in result.differences.items()
        },
        "warnings": list(result.warnings),
    }


def render_json(result: GateResult) -> str:
    return json.dumps(to_dict(result), indent=1, ensure_ascii=False) + "\n"
