"""The package's layers (voiceaudit/__init__.py): no import runs back up.

Reads every module's imports with ``ast`` (those inside functions and under
``TYPE_CHECKING`` too: a lazy import is still a dependency) and fails on the back edges
issue 23 removed: statistics, pacing figures and the bundled utterances used from above
(analysis, the renderers, the targets and the scenario loader importing ``gate/`` or
``probe/``), the targets importing the probe to warm it up, and the runner and the
conversation importing each other.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

import voiceaudit

#: the package to read (VOICEAUDIT_LAYERS_ROOT: another checkout's, to show that this test
#: fails on the tree before the fix)
PACKAGE = Path(os.environ.get("VOICEAUDIT_LAYERS_ROOT") or Path(voiceaudit.__file__).parent)

#: (importer, imported): a module in the first (a package or a module, by dotted prefix)
#: never imports one in the second
FORBIDDEN = [
    (low, high)
    for low in (
        "voiceaudit.analysis",
        "voiceaudit.report",
        "voiceaudit.targets",
        "voiceaudit.capture",
        "voiceaudit.scenario",
        "voiceaudit.pacing_stats",
        "voiceaudit.data",
    )
    for high in ("voiceaudit.gate", "voiceaudit.probe")
] + [("voiceaudit.gate", "voiceaudit.probe")]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every voiceaudit module ``path`` imports, at any depth of its code; ``from A import
    b`` yields ``A`` and ``A.b`` (which may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m == "voiceaudit" or m.startswith("voiceaudit.")}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules dropped)."""
    found = {module_name(p, root): imports_of(p, module_name(p, root)) for p in root.rglob("*.py")}
    return {m: {d for d in deps if d in found and d != m} for m, deps in found.items()}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        for low, high in FORBIDDEN
        if under(m, low) and under(d, high)
    )


def cycles(graph: dict[str, set[str]], within: Iterable[str]) -> list[list[str]]:
    """The strongly connected components (more than one module) of the graph restricted to
    ``within`` (Tarjan's algorithm)."""
    nodes = set(within)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, set()) & nodes):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # the reader finds the imports it must judge, lazy ones included (a reader that
    # found nothing would pass every check below)
    assert "voiceaudit.probe.conversation" in graph["voiceaudit.probe.runner"]
    assert "voiceaudit.analysis.ledger" in graph["voiceaudit.gate.budget"]
    assert "voiceaudit.audio" in graph["voiceaudit.scenario"]  # inside a function


def test_no_lower_layer_imports_gate_or_probe(graph: dict[str, set[str]]) -> None:
    assert back_edges(graph) == []


def test_the_probe_package_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    probe = [m for m in graph if under(m, "voiceaudit.probe") and m != "voiceaudit.probe"]
    assert cycles(graph, probe) == []


def test_no_two_packages_import_each_other(graph: dict[str, set[str]]) -> None:
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for m, deps in graph.items():
        packages.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    assert cycles(packages, packages) == []


def test_the_checks_catch_what_they_are_for() -> None:
    # the same checks on a made-up graph with each kind of back edge
    bad = {
        "voiceaudit.analysis.compare": {"voiceaudit.gate.significance"},
        "voiceaudit.targets.wsbase": {"voiceaudit.probe.warm"},
        "voiceaudit.probe.runner": {"voiceaudit.probe.conversation"},
        "voiceaudit.probe.conversation": {"voiceaudit.probe.runner"},
    }
    assert back_edges(bad) == [
        "voiceaudit.analysis.compare imports voiceaudit.gate.significance",
        "voiceaudit.targets.wsbase imports voiceaudit.probe.warm",
    ]
    assert cycles(bad, bad) == [["voiceaudit.probe.conversation", "voiceaudit.probe.runner"]]
