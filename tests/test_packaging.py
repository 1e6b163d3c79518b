"""Every module ships: setuptools' package finder (pyproject's ``packages.find``) skips a
folder without an ``__init__.py``, and a wheel built without it lacks the whole folder
(0.2's ``voiceaudit/probe`` and ``voiceaudit/targets`` did)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_every_folder_with_modules_is_a_package_the_build_finds() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    found = set(find_packages(where=str(ROOT), include=find["include"]))
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "voiceaudit").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert folders - found == set()
