"""Check the package's layers (voiceaudit/__init__.py): no import runs back up, no two
modules import each other.

    .venv/bin/python scripts/check_layers.py            # check ./voiceaudit
    .venv/bin/python scripts/check_layers.py OTHER/voiceaudit   # another checkout's package

Reads every module's imports with ``ast`` (those inside functions and under
``TYPE_CHECKING`` too: a lazy import is still a dependency), prints each back edge and
each cycle, and exits 1 when there is one (0 when there is none). tests/test_layers.py runs
the same checks on the same code, so ``make test`` runs them.

The checks:

- every import between two top-level packages or modules goes down ``LAYERS`` (the
  table in voiceaudit/__init__.py's docstring) or stays in its layer, and every top-level
  package or module has a layer;
- the back edges issue 23 removed: statistics, pacing figures and the bundled utterances
  used from above (analysis, the renderers, the targets and the scenario loader importing
  ``gate/`` or ``probe/``), the targets importing the probe to warm it up;
- no import cycle inside ``probe/`` (the runner and the conversation once imported each
  other);
- no two packages import each other;
- no two modules import each other, a package's ``__init__`` and its own submodule
  included (the ``__init__`` may import its submodules; a submodule must not import from
  its package's ``__init__``).

``from pkg import name`` is an import of the submodule ``pkg.name`` where there is one, and
otherwise of ``pkg`` (its ``__init__``), which is where ``name`` is then read from.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

#: the package checked when no other is named
PACKAGE = Path(__file__).resolve().parent.parent / "voiceaudit"

#: the import graph: module -> the package's modules it imports
Graph = Mapping[str, set[str]]

#: the layers of voiceaudit/__init__.py's docstring, top (1) to bottom: a module imports
#: only from its own layer or those below it ("" is the package's own __init__)
LAYERS: dict[str, int] = {
    **dict.fromkeys(("__main__", "cli", "load"), 1),
    **dict.fromkeys(("report", "gate", "exports"), 2),
    **dict.fromkeys(("analysis", "imports", "probe"), 3),
    **dict.fromkeys(("trace_io", "capture", "reference", "scenario", "impair"), 4),
    **dict.fromkeys(("targets", "model", "audio", "pacing", "pacing_stats", "data"), 5),
    **dict.fromkeys(("", "errors", "clock", "failures", "tomlpos", "codecs", "wavinfo"), 6),
}

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
    """The dotted name of the module at ``path`` in the package at ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """The modules (of ``modules``) that the module ``name`` at ``path`` imports, at any
    depth of its code; ``from A import b`` is an import of ``A.b`` where that is a module,
    else of ``A``."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    return {m for m in out if m in known and m != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package at ``root`` it imports."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {name: imports_of(path, name, paths) for name, path in paths.items()}


def under(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or inside it."""
    return module == prefix or module.startswith(prefix + ".")


def back_edges(graph: Graph) -> list[str]:
    """Each import that runs from a lower layer to a higher one (``FORBIDDEN``)."""
    return sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        for low, high in FORBIDDEN
        if under(m, low) and under(d, high)
    )


def layer_of(module: str) -> int | None:
    """The layer of the top-level package or module ``module`` belongs to (None: none)."""
    return LAYERS.get(".".join(module.split(".")[1:2]))


def upward_imports(graph: Graph) -> list[str]:
    """Each import from a layer to one above it, and each top-level package or module that
    ``LAYERS`` does not place."""
    unplaced = sorted({m.split(".")[1] for m in graph if "." in m and layer_of(m) is None})
    up = sorted(
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in graph.items()
        for d in deps
        if (lm := layer_of(m)) is not None and (ld := layer_of(d)) is not None and ld < lm
    )
    return [f"voiceaudit.{name} has no layer" for name in unplaced] + up


def cycles(graph: Graph, within: Iterable[str]) -> list[list[str]]:
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


def probe_cycles(graph: Graph) -> list[list[str]]:
    """The import cycles among the probe package's modules."""
    return cycles(graph, [m for m in graph if under(m, "voiceaudit.probe")])


def package_graph(graph: Graph) -> dict[str, set[str]]:
    """The graph of the top-level packages and modules (``voiceaudit.x``) that the
    modules' imports make."""

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for m, deps in graph.items():
        packages.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    return packages


def package_cycles(graph: Graph) -> list[list[str]]:
    """The cycles among the top-level packages."""
    packages = package_graph(graph)
    return cycles(packages, packages)


def mutual_imports(graph: Graph) -> list[tuple[str, str]]:
    """Each pair of modules that import each other (a package's ``__init__`` named by the
    package)."""
    return sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph[b])


def problems(graph: Graph) -> list[str]:
    """One line for each back edge and each cycle the checks find."""
    return (
        [f"upward import: {edge}" for edge in upward_imports(graph)]
        + [f"back edge: {edge}" for edge in back_edges(graph)]
        + [f"import cycle in probe/: {', '.join(c)}" for c in probe_cycles(graph)]
        + [f"packages import each other: {', '.join(c)}" for c in package_cycles(graph)]
        + [f"modules import each other: {a} <-> {b}" for a, b in mutual_imports(graph)]
    )


def main(argv: list[str] | None = None) -> int:
    """Check the package named in ``argv`` (default ``PACKAGE``); 1 when a check fails."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else PACKAGE
    found = problems(import_graph(root))
    for line in found:
        print(line)
    if not found:
        print(f"{root}: no back edge, no cycle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
