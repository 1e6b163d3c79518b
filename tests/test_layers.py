"""The package's layers (voiceaudit/__init__.py): no import runs back up, no two modules
import each other.

The checks are scripts/check_layers.py's (one implementation: this test loads the script
and runs its functions, so ``make test`` runs them). They read every module's imports with
``ast`` (those inside functions and under ``TYPE_CHECKING`` too: a lazy import is still a
dependency) and fail on the back edges issue 23 removed (statistics, pacing figures and the
bundled utterances used from above; the targets importing the probe to warm it up; the
runner and the conversation importing each other), on two packages that import each other,
and on two modules that import each other (a package's ``__init__`` and its own submodule
too).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layers = load_script()

#: the package to read (VOICEAUDIT_LAYERS_ROOT: another checkout's, to show that this test
#: fails on the tree before the fix)
PACKAGE = Path(os.environ.get("VOICEAUDIT_LAYERS_ROOT") or layers.PACKAGE)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return layers.import_graph(PACKAGE)


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # the reader finds the imports it must judge, lazy ones included (a reader that
    # found nothing would pass every check below)
    assert "voiceaudit.probe.conversation" in graph["voiceaudit.probe.runner"]
    assert "voiceaudit.analysis.ledger" in graph["voiceaudit.gate.budget"]
    assert "voiceaudit.audio" in graph["voiceaudit.scenario"]  # inside a function


def test_no_module_imports_from_a_layer_above_it(graph: dict[str, set[str]]) -> None:
    assert layers.upward_imports(graph) == []


def test_the_layer_table_is_the_documented_one() -> None:
    # every layer line of voiceaudit/__init__.py's docstring names the packages LAYERS puts
    # there (and the table places nothing the docstring does not name)
    doc = (layers.PACKAGE / "__init__.py").read_text(encoding="utf-8")
    block = doc.split("Layers, top to bottom")[1].split("\n\n")[1]
    documented = {
        name: int(item.split(".")[0])
        for item in re.split(r"\n(?=\d\. )", block)
        # the names of a layer, not those its notes (in parentheses) mention
        for name in re.findall(r"``(\w+)``", re.sub(r"\([^)]*\)", "", item))
    }
    placed = {k: v for k, v in layers.LAYERS.items() if k not in ("", "__main__")}
    assert documented == placed


def test_the_layer_check_catches_an_upward_import() -> None:
    bad = {
        "voiceaudit.model": {"voiceaudit.trace_io"},
        "voiceaudit.trace_io": {"voiceaudit.model"},
        "voiceaudit.newthing": set(),
        "voiceaudit.cli.run_cmd": {"voiceaudit.errors"},
    }
    assert layers.upward_imports(bad) == [
        "voiceaudit.newthing has no layer",
        "voiceaudit.model (layer 5) imports voiceaudit.trace_io (layer 4)",
    ]


def test_no_lower_layer_imports_gate_or_probe(graph: dict[str, set[str]]) -> None:
    assert layers.back_edges(graph) == []


def test_the_probe_package_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert layers.probe_cycles(graph) == []


def test_no_two_packages_import_each_other(graph: dict[str, set[str]]) -> None:
    assert layers.package_cycles(graph) == []


def test_no_two_modules_import_each_other(graph: dict[str, set[str]]) -> None:
    assert layers.mutual_imports(graph) == []


def test_the_checks_catch_what_they_are_for() -> None:
    # the same checks on a made-up graph with each kind of back edge
    bad = {
        "voiceaudit.analysis.compare": {"voiceaudit.gate.significance"},
        "voiceaudit.targets.wsbase": {"voiceaudit.probe.warm"},
        "voiceaudit.probe.runner": {"voiceaudit.probe.conversation"},
        "voiceaudit.probe.conversation": {"voiceaudit.probe.runner"},
        "voiceaudit.gate.significance": set(),
        "voiceaudit.probe.warm": set(),
        "voiceaudit.report": {"voiceaudit.report.html"},
        "voiceaudit.report.html": {"voiceaudit.report"},
    }
    assert layers.back_edges(bad) == [
        "voiceaudit.analysis.compare imports voiceaudit.gate.significance",
        "voiceaudit.targets.wsbase imports voiceaudit.probe.warm",
    ]
    assert layers.cycles(bad, bad) == [
        ["voiceaudit.probe.conversation", "voiceaudit.probe.runner"],
        ["voiceaudit.report", "voiceaudit.report.html"],
    ]
    assert layers.probe_cycles(bad) == [
        ["voiceaudit.probe.conversation", "voiceaudit.probe.runner"]
    ]
    assert layers.mutual_imports(bad) == [
        ("voiceaudit.probe.conversation", "voiceaudit.probe.runner"),
        ("voiceaudit.report", "voiceaudit.report.html"),
    ]
    assert layers.package_cycles({**bad, "voiceaudit.gate.budget": {"voiceaudit.analysis"}}) == [
        ["voiceaudit.analysis", "voiceaudit.gate"]
    ]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root / "voiceaudit"


def test_from_package_import_reads_a_submodule_or_the_init(tmp_path: Path) -> None:
    # `from pkg import sub` is an import of the submodule, `from pkg import NAME` one of
    # pkg/__init__ (where NAME is read from); relative and lazy imports alike
    package = write(
        tmp_path,
        {
            "voiceaudit/__init__.py": "",
            "voiceaudit/report/__init__.py": "from voiceaudit.report import html\nNAME = 1\n",
            "voiceaudit/report/plots.py": "",
            "voiceaudit/report/html.py": "from voiceaudit.report import plots\n",
            "voiceaudit/report/markdown.py": "def f():\n    from . import NAME\n",
            "voiceaudit/report/terminal.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import report\n"
            ),
        },
    )
    graph = layers.import_graph(package)
    assert graph["voiceaudit.report"] == {"voiceaudit.report.html"}
    assert graph["voiceaudit.report.html"] == {"voiceaudit.report.plots"}
    assert graph["voiceaudit.report.markdown"] == {"voiceaudit.report"}
    assert graph["voiceaudit.report.terminal"] == {"voiceaudit.report"}
    assert layers.mutual_imports(graph) == []


def test_the_script_prints_each_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = write(
        tmp_path,
        {
            "voiceaudit/__init__.py": "",
            "voiceaudit/gate/__init__.py": "",
            "voiceaudit/gate/stats.py": "",
            "voiceaudit/analysis/__init__.py": "",
            "voiceaudit/analysis/compare.py": "from voiceaudit.gate.stats import x\n",
            "voiceaudit/capture/__init__.py": "from voiceaudit.capture.analyze import f\n",
            "voiceaudit/capture/analyze.py": "from voiceaudit.capture import DecodeAs\n",
        },
    )
    assert layers.main([str(package)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "upward import: voiceaudit.analysis.compare (layer 3) imports voiceaudit.gate.stats"
        " (layer 2)",
        "back edge: voiceaudit.analysis.compare imports voiceaudit.gate.stats",
        "modules import each other: voiceaudit.capture <-> voiceaudit.capture.analyze",
    ]
    (package / "capture" / "analyze.py").write_text("", encoding="utf-8")
    (package / "analysis" / "compare.py").write_text("", encoding="utf-8")
    assert layers.main([str(package)]) == 0
