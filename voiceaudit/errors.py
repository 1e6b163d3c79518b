"""One exception tree and the exit codes it maps to.

Every expected failure is a :class:`VoiceauditError` carrying a one-line message, an
optional hint and the exit code the CLI returns. The CLI prints ``error: <message>`` and
``hint: <hint>`` and never a traceback unless ``--traceback`` is given.
"""

from __future__ import annotations

import os
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses. Documented in README.md; never renumber."""

    OK = 0
    #: A check failed: a gate budget or regression, or a run in which every turn failed.
    FAILED = 1
    #: Bad command line or configuration (unknown option, malformed budget file).
    USAGE = 2
    #: An input file is missing, unreadable or not what it claims to be (audio, trace, capture).
    BAD_INPUT = 3
    #: The target could not be reached or broke the protocol before any turn finished.
    TARGET = 4
    #: The input is valid but holds nothing to work on (no finished turns, no traces).
    NO_DATA = 5
    #: A command or feature that is not built yet.
    NOT_IMPLEMENTED = 6
    #: Something the machine lacks: a tool (tshark, dumpcap), a permission, an optional extra.
    ENVIRONMENT = 7
    #: A bug in voiceaudit itself (an unexpected exception).
    INTERNAL = 70
    #: Interrupted by Ctrl-C (128 + SIGINT); whatever was recorded is kept.
    INTERRUPTED = 130


class VoiceauditError(Exception):
    """Base of every expected failure."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VoiceauditError):
    """Bad options or configuration."""

    exit_code = ExitCode.USAGE


class LocatedError(VoiceauditError):
    """A failure at a place in a file: the message starts with ``FILE:LINE: `` (``FILE: ``
    when the line is not known, nothing when there is no file).

    It sets no exit code of its own: an error class takes it from the class it is mixed
    with, e.g. ``class BudgetError(LocatedError, UsageError)`` exits 2, and
    :class:`InputError` (a subclass) exits 3.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message, hint=hint)
        self.path = path
        self.line = line


class InputError(LocatedError):
    """A file given to voiceaudit cannot be used."""

    exit_code = ExitCode.BAD_INPUT


class AudioError(InputError):
    """Audio that cannot be read or decoded."""


class TraceError(InputError):
    """A trace file that is not a valid voiceaudit trace."""


class CaptureError(InputError):
    """A packet capture that cannot be read."""


class NoDataError(VoiceauditError):
    """Valid input with nothing in it to analyse."""

    exit_code = ExitCode.NO_DATA


class TargetError(VoiceauditError):
    """The pipeline under test could not be reached or broke its protocol."""

    exit_code = ExitCode.TARGET


class EnvironmentProblem(VoiceauditError):
    """A tool, permission or optional dependency this machine lacks."""

    exit_code = ExitCode.ENVIRONMENT


class NotBuiltYet(VoiceauditError):
    """A command that exists in the interface but is not implemented yet."""

    exit_code = ExitCode.NOT_IMPLEMENTED


class CheckFailed(VoiceauditError):
    """A gate check (budget or regression) failed."""

    exit_code = ExitCode.FAILED


def missing_extra(module: str, extra: str) -> EnvironmentProblem:
    """The error for an optional dependency that is not installed."""
    return EnvironmentProblem(
        f"the optional dependency {module!r} is not installed",
        hint=f"pip install 'voiceaudit[{extra}]'",
    )
