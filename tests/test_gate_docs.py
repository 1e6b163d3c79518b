"""docs/ci.md stays true: its example files are the ones in examples/gate/, its budgets
parse, its options exist, its error messages are the real ones, and the CI recipes'
own commands run (in a scratch git repository, with short runs)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import JUnitXml

from voiceaudit.gate.budget import BudgetError, parse_budget

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ci.md"
EXAMPLES = ROOT / "examples" / "gate"
EXAMPLE_FILES = (
    "voiceaudit.toml",
    "ci/record-latency.sh",
    ".github/workflows/voice-latency.yml",
    ".gitlab-ci.yml",
)
VENV_BIN = Path(sys.executable).parent


def _blocks(lang: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.S | re.M)


def test_example_files_are_in_the_doc_verbatim() -> None:
    blocks = _blocks(r"\w+")
    for name in EXAMPLE_FILES:
        text = (EXAMPLES / name).read_text(encoding="utf-8")
        assert text in blocks, f"examples/gate/{name} differs from its copy in docs/ci.md"
    assert os.access(EXAMPLES / "ci" / "record-latency.sh", os.X_OK)


def test_every_budget_in_the_doc_parses() -> None:
    blocks = _blocks("toml")
    assert len(blocks) >= 2
    for text in blocks:
        budget = parse_budget(text)
        assert not budget.empty


def test_every_json_example_is_json() -> None:
    import json

    blocks = _blocks("json")
    assert blocks
    for text in blocks:
        doc = json.loads(text)
        assert doc["schema"] == "voiceaudit.gate/1"


def test_the_options_table_matches_the_command() -> None:
    from voiceaudit.cli import run

    doc = DOC.read_text(encoding="utf-8")
    table = doc.split("| option | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"--[a-z][a-z-]+", table))
    out = subprocess.run(
        [str(VENV_BIN / "voiceaudit"), "gate", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    real = set(re.findall(r"--[a-z][a-z-]+", out)) - {"--help"}
    assert documented == real
    assert run(["gate", "--help"]) == 0


@pytest.mark.parametrize(
    ("budget", "line"),
    [
        ('[budget]\nmin_turns = 3\n"segment.model_first_tokn" = { p95 = "400ms" }\n', 0),
        ("[budget]\nvoice_to_voice = { p95 = 1300 }\n", 1),
        (
            '[budget]\nmin_turns = 3\n\n\n\n\n\n\n\n[regression]\nmax_increse = "5%"\n',
            3,
        ),
        ('[budget]\nvoice_to_voice = { p95 = "1300ms" ]\n', 4),
    ],
)
def test_the_error_examples_are_real(budget: str, line: int) -> None:
    example = next(b for b in _blocks("text") if b.startswith("error:")).splitlines()
    with pytest.raises(BudgetError) as info:
        parse_budget(budget, path=Path("voiceaudit.toml"))
    printed = f"error: {info.value.message}"
    assert printed == example[line]
    if info.value.hint and line + 1 < len(example) and example[line + 1].startswith("hint:"):
        assert example[line + 1] == f"hint: {info.value.hint}"


def test_the_ci_files_are_valid_yaml() -> None:
    gh = yaml.safe_load((EXAMPLES / ".github/workflows/voice-latency.yml").read_text())
    steps = gh["jobs"]["latency"]["steps"]
    assert all(("run" in s) != ("uses" in s) for s in steps)
    gl = yaml.safe_load((EXAMPLES / ".gitlab-ci.yml").read_text())
    job = gl["voice-latency"]
    assert job["artifacts"]["reports"]["junit"] == "voiceaudit-junit.xml"
    assert all(isinstance(line, str) for line in job["script"])


# -- the recipes, run ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _repo(tmp: Path) -> tuple[Path, str]:
    """A git repository with the example files (the base commit) and one more commit."""
    repo = tmp / "bot"
    shutil.copytree(EXAMPLES, repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True)
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    (repo / "CHANGE").write_text("the pull request\n")
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "change"], cwd=repo, check=True)
    return repo, base


def _sh(cmd: str, repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", cmd],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _env(tmp: Path, turns: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["BOT_PORT"] = str(_free_port())
    env["VOICEAUDIT_RUN_ARGS"] = f"--turns {turns}"
    return env


def _check_gate(proc: subprocess.CompletedProcess[str], junit: Path) -> None:
    # two-turn runs cannot meet min_turns = 20: the gate must fail, for that reason
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  min_turns >= 20: 2 turns in the statistics" in proc.stderr or (
        "FAIL  min_turns >= 20: 1 turns in the statistics" in proc.stderr
    ), proc.stderr
    suite = next(iter(JUnitXml.fromfile(str(junit))))
    assert suite.failures >= 1 and suite.tests == 8


@pytest.mark.slow
def test_the_github_workflow_runs(tmp_path: Path) -> None:
    repo, base = _repo(tmp_path)
    wf: dict[str, Any] = yaml.safe_load((repo / ".github/workflows/voice-latency.yml").read_text())
    env = _env(tmp_path, turns=2)
    summary = tmp_path / "step_summary.md"
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    runs = [s for s in wf["jobs"]["latency"]["steps"] if "run" in s]
    assert runs[0]["name"] == "Install voiceaudit"
    for step in runs[1:]:
        cmd = step["run"].replace("${{ github.event.pull_request.base.sha }}", base)
        proc = _sh(cmd, repo, env)
        if step["name"] == "Gate":
            _check_gate(proc, repo / "reports" / "voiceaudit-junit.xml")
        else:
            assert proc.returncode == 0, (step["name"], proc.stdout, proc.stderr)
    assert (repo / "runs" / "base" / "trace.jsonl").is_file()
    assert (repo / "runs" / "pr" / "trace.jsonl").is_file()
    assert summary.read_text().startswith("### ❌ voiceaudit gate: FAILED")


@pytest.mark.slow
def test_the_gitlab_job_runs(tmp_path: Path) -> None:
    repo, base = _repo(tmp_path)
    job: dict[str, Any] = yaml.safe_load((repo / ".gitlab-ci.yml").read_text())["voice-latency"]
    env = _env(tmp_path, turns=1)
    env["CI_MERGE_REQUEST_DIFF_BASE_SHA"] = base
    lines = job["script"]
    assert lines[0].startswith("pip install")
    for line in lines[1:-1]:
        proc = _sh(line, repo, env)
        assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
    _check_gate(_sh(lines[-1], repo, env), repo / job["artifacts"]["reports"]["junit"])
    assert (repo / "voiceaudit-gate.md").read_text().startswith("### ❌")
