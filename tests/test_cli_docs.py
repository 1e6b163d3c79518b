"""The CLI reference is generated from the real --help and must be current; every command
is documented in the README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_command_is_in_the_readme_and_reference() -> None:
    from voiceaudit.cli import app

    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "cli.md").read_text()
    names = [c.name for c in app.registered_commands if c.name]
    assert set(names) >= {"run", "report", "gate", "net", "serve", "export", "import", "inspect"}
    for name in names:
        assert f"`voiceaudit {name}" in readme, name
        assert f"## voiceaudit {name}\n" in reference, name


def test_every_exit_code_is_in_the_readme() -> None:
    from voiceaudit.errors import ExitCode

    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert f"\n| {int(code)} |" in readme, code


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "voiceaudit", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("voiceaudit ")
