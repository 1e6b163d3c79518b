"""Write docs/cli.md from the real ``--help`` of every command.

    .venv/bin/python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale

tests/test_cli_docs.py runs the check, so the reference cannot rot.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def help_text(args: list[str]) -> str:
    os.environ["COLUMNS"] = "100"
    os.environ["NO_COLOR"] = "1"
    os.environ["TERM"] = "dumb"
    from voiceaudit.cli import run

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        run([*args, "--help"])
    return "\n".join(line.rstrip() for line in buf.getvalue().strip("\n").splitlines())


def commands() -> list[str]:
    from voiceaudit.cli import app

    return [c.name for c in app.registered_commands if c.name]


def render() -> str:
    parts = [
        "# Command-line reference",
        "",
        "Generated from `--help` by `scripts/gen_cli_docs.py`; a test keeps it current.",
        "",
        "## voiceaudit",
        "",
        "```",
        help_text([]),
        "```",
    ]
    for name in commands():
        parts += ["", f"## voiceaudit {name}", "", "```", help_text([name]), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
