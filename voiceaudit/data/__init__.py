"""Data shipped with the package: the bundled utterances (``utterances/``, made by
scripts/make_utterances.py). A module of its own, below the probe and the scenario
loader, which both need to find them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_dir() -> Path:
    """The directory of the bundled utterances (WAV files and their ``texts.json``)."""
    return Path(str(resources.files("voiceaudit") / "data" / "utterances"))
