"""Consoles: the report goes to stdout, progress and messages to stderr."""

from __future__ import annotations

from rich.console import Console


def out_console() -> Console:
    """A console on the current stdout (looked up per call so tests can capture it)."""
    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)
