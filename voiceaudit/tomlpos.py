"""The TOML front end of every file format (budget, scenario, sweep): errors name their line.

``tomllib`` parses TOML but gives no positions, and an error in a budget, scenario or
sweep file must name its line. :func:`key_lines` walks a document that ``tomllib`` has
already accepted (so it can assume the text is valid TOML 1.0) and records the line on
which each key path first appears: table headers, dotted keys, keys inside inline tables,
and the elements of arrays (by index).

Paths are tuples of keys and array indexes, the way ``tomllib``'s result is indexed:
``[[runs]]`` tables are ``("runs", 0)``, ``("runs", 1)``…, the second element of
``metrics = [...]`` is ``("regression", "metrics", 1)``.

A format reads its file in three steps, each raising the format's
:class:`~voiceaudit.errors.LocatedError`:

1. :func:`read_text`: the file's text (``no such budget file``, ``is a directory, not a
   budget file``, ``cannot read: …``; bytes that are not UTF-8 at their line, by
   :func:`decode_text`);
2. :func:`parse_toml`: the document and the line of each key path (``FILE:LINE: not valid
   TOML: …``); :func:`load_toml` is both in one call;
3. a :class:`TomlChecker` (the base of the format's schema checker): errors at the line of
   a key path, tables, and unknown keys with the closest known one
   (``unknown key 'targt' in a pipeline (did you mean 'target'?)``).
"""

from __future__ import annotations

import contextlib
import difflib
import pathlib
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, NoReturn

from voiceaudit.errors import LocatedError

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: how tomllib ends the message of an error it can place
_TOML_AT = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def key_lines(text: str) -> dict[Path, int]:
    """Line (1-based) of the first appearance of every key path in ``text``.

    ``text`` must be valid TOML (parse it with ``tomllib`` first): on other input the
    result is unspecified but the call still returns.
    """
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError):  # invalid TOML ran off the end: keep what was found
        scanner.document()
    return scanner.lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its longest prefix that has one."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def decode_text(data: bytes, *, path: pathlib.Path, error: type[LocatedError]) -> str:
    """``data`` as UTF-8 text; otherwise ``error`` naming ``path`` and the line of the
    first byte that is not UTF-8 (``FILE:3: not UTF-8 text (byte 0xff at column 12)``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        # characters before it on its line (all valid: this is the first bad byte)
        column = len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode()) + 1
        raise error(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})",
            path=path,
            line=line,
            hint="save the file as UTF-8",
        ) from None


def parse_toml(
    text: str, *, path: pathlib.Path, error: type[LocatedError]
) -> tuple[dict[str, Any], dict[Path, int]]:
    """``text`` parsed, and the line of each of its key paths (:func:`key_lines`).

    Text that is not TOML raises ``error`` naming ``path`` and the line tomllib names:
    ``FILE:LINE: not valid TOML: Unclosed inline table (column 35)``, or
    ``FILE: not valid TOML: …`` when tomllib names no line.
    """
    try:
        doc = tomllib.loads(text)
        lines = key_lines(text)
    except RecursionError:
        # tomllib (and the key scanner) recurse per level of nested arrays and tables.
        raise error(
            "arrays or tables nested too deeply to read",
            path=path,
            line=_deep_line(text),
        ) from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_AT.match(msg)
        if m is None:
            raise error(f"not valid TOML: {msg}", path=path) from None
        raise error(
            f"not valid TOML: {m.group(1)} (column {m.group(3)})", path=path, line=int(m.group(2))
        ) from None
    return doc, lines


def why_unreadable(exc: OSError, what: str) -> str:
    """Why the ``what`` file (``budget file``) could not be read: ``no such budget file``,
    ``is a directory, not a budget file`` or ``cannot read: <strerror>``."""
    if isinstance(exc, FileNotFoundError):
        return f"no such {what}"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory, not a {what}"
    return f"cannot read: {exc.strerror}"


def read_text(
    path: pathlib.Path,
    *,
    error: type[LocatedError],
    what: str,
    unreadable: type[LocatedError] | None = None,
    why: Callable[[OSError, str], str] = why_unreadable,
) -> str:
    """The UTF-8 text of the ``what`` file at ``path``.

    A file that cannot be read raises ``unreadable`` (default ``error``) naming ``path``,
    with the message ``why`` gives (:func:`why_unreadable`); bytes that are not UTF-8
    raise ``error`` at their line (:func:`decode_text`).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise (unreadable or error)(why(exc, what), path=path) from None
    return decode_text(data, path=path, error=error)


def load_toml(
    path: pathlib.Path,
    *,
    error: type[LocatedError],
    what: str,
    why: Callable[[OSError, str], str] = why_unreadable,
) -> tuple[dict[str, Any], dict[Path, int]]:
    """The ``what`` file at ``path`` read (:func:`read_text`) and parsed (:func:`parse_toml`)."""
    text = read_text(path, error=error, what=what, why=why)
    return parse_toml(text, path=path, error=error)


#: nesting deeper than this is where a too-deep file is said to go wrong
_DEEP = 100


def _deep_line(text: str) -> int:
    """The line where brackets first nest ``_DEEP`` deep (strings are not skipped: this
    only places the error of a file that cannot be read anyway)."""
    depth = 0
    for i, c in enumerate(text):
        if c in "[{":
            depth += 1
            if depth >= _DEEP:
                return text.count("\n", 0, i) + 1
        elif c in "]}":
            depth -= 1
    return 1


#: What messages call each kind of TOML value (``"must be a table, not an array"``), in
#: the order they are tried (a bool is an int); a format may rename some.
KINDS: Mapping[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def kind_of(value: Any, names: Mapping[type, str] = KINDS) -> str:
    """What ``value`` is, for a message: ``a boolean``, ``an integer``, … (:data:`KINDS`)."""
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


@dataclass(eq=False)
class TomlChecker:
    """Errors at key paths of one TOML file: each is ``error`` with the file and the line
    of the path (or of its nearest parent that has one; else ``default_line``)."""

    #: how this format's messages name the kinds of value (:func:`kind_of`)
    kinds: ClassVar[Mapping[type, str]] = KINDS

    #: the file as messages name it
    path: pathlib.Path
    #: the line of each key path (:func:`key_lines`)
    lines: dict[Path, int]
    error: type[LocatedError]
    _: KW_ONLY
    #: the line of an error at a path with no line (a format may name the first)
    default_line: int | None = None
    #: what the hint of an unknown key says before the known keys
    known_prefix: str = "known: "

    def line(self, at: Path) -> int | None:
        """The line of the key path ``at`` (or of its nearest parent that has one)."""
        return line_of(self.lines, at)

    def error_at(self, at: Path, message: str, hint: str | None = None) -> LocatedError:
        """The error ``message`` at the line of ``at``."""
        line = self.line(at)
        return self.error(
            message, path=self.path, line=self.default_line if line is None else line, hint=hint
        )

    def fail(self, at: Path, message: str, hint: str | None = None) -> NoReturn:
        """Raise the error ``message`` at the line of ``at``."""
        raise self.error_at(at, message, hint)

    def kind(self, value: Any) -> str:
        """What ``value`` is, in this format's words (:attr:`kinds`)."""
        return kind_of(value, self.kinds)

    def table(self, value: Any, at: Path, what: str) -> dict[str, Any]:
        """``value`` if it is a table, else ``WHAT must be a table, not a …``."""
        if not isinstance(value, dict):
            self.fail(at, f"{what} must be a table, not {self.kind(value)}")
        return value

    def unknown(
        self,
        at: Path,
        known: Sequence[str],
        *,
        what: str = "key",
        where: str | None = None,
        hint: str | None = None,
    ) -> NoReturn:
        """``unknown WHAT 'KEY'`` (``KEY``: the last part of ``at``), ``in WHERE`` when
        given, then the closest known key (``(did you mean 'target'?)``); the hint lists
        the known keys (after :attr:`known_prefix`) unless ``hint`` is given."""
        key = str(at[-1])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        extra = f" (did you mean {close[0]!r}?)" if close else ""
        inside = "" if where is None else f" in {where}"
        self.fail(
            at,
            f"unknown {what} {key!r}{inside}{extra}",
            hint or self.known_prefix + ", ".join(known),
        )

    def check_keys(
        self,
        table: Mapping[str, Any],
        at: Path,
        known: Sequence[str],
        *,
        what: str = "key",
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        """Fail at the first key of ``table`` (at ``at``) that is not ``known``
        (:meth:`unknown`)."""
        for key in table:
            if key not in known:
                self.unknown((*at, key), known, what=what, where=where, hint=hint)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        #: array-of-tables path → how many tables it has so far
        self.aot: dict[Path, int] = {}

    # -- low level ------------------------------------------------------------------------

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def jump(self, j: int) -> None:
        """Advance to ``j``, counting the newlines passed."""
        self.line += self.s.count("\n", self.i, j)
        self.i = j

    def skip_ws(self) -> None:
        while self.i < self.n and self.s[self.i] in " \t":
            self.i += 1

    def skip_blank(self) -> None:
        """Whitespace, newlines and comments."""
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\n":
                self.line += 1
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = self.n if end < 0 else end
            else:
                break

    def note(self, path: Path, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    # -- grammar --------------------------------------------------------------------------

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank()
            if self.i >= self.n:
                return
            line = self.line
            if self.peek() == "[":
                aot = self.peek(1) == "["
                self.i += 2 if aot else 1
                self.skip_ws()
                key = self.key()
                self.skip_ws()
                self.i += 2 if aot else 1
                if aot:
                    parent = (*self.resolve(key[:-1]), key[-1])
                    index = self.aot.get(parent, 0)
                    self.aot[parent] = index + 1
                    table = (*parent, index)
                else:
                    table = self.resolve(key)
                self.note(table, line)
            else:
                self.key_value(table, line)

    def key_value(self, table: Path, line: int) -> None:
        """``key = value`` in ``table``, the key on ``line``."""
        path = table + tuple(self.key())
        self.note(path, line)
        self.skip_ws()
        self.i += 1  # "="
        self.skip_ws()
        self.value(path)

    def resolve(self, key: list[str]) -> Path:
        """A header's path, with the current index after each array of tables in it."""
        out: list[str | int] = []
        for part in key:
            out.append(part)
            count = self.aot.get(tuple(out))
            if count:
                out.append(count - 1)
        return tuple(out)

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_ws()
            c = self.peek()
            if c == '"' or c == "'":
                start = self.i
                if c == '"':
                    self.basic_string()
                else:
                    self.literal_string()
                parts.append(_decode_key(self.s[start : self.i]))
            else:
                start = self.i
                while self.i < self.n and self.s[self.i] in _BARE:
                    self.i += 1
                parts.append(self.s[start : self.i])
            self.skip_ws()
            if self.peek() == ".":
                self.i += 1
                continue
            return parts

    def value(self, path: Path) -> None:
        s, i = self.s, self.i
        if s.startswith('"""', i) or s.startswith("'''", i):
            self.multiline_string(s[i : i + 3])
        elif s[i] == '"':
            self.basic_string()
        elif s[i] == "'":
            self.literal_string()
        elif s[i] == "{":
            self.inline_table(path)
        elif s[i] == "[":
            self.array(path)
        else:  # number, boolean, date-time: up to a delimiter
            while self.i < self.n and self.s[self.i] not in ",]}\n#":
                self.i += 1

    def basic_string(self) -> None:
        j = self.i + 1
        while self.s[j] != '"':
            j += 2 if self.s[j] == "\\" else 1
        self.jump(j + 1)

    def literal_string(self) -> None:
        self.jump(self.s.index("'", self.i + 1) + 1)

    def multiline_string(self, quotes: str) -> None:
        j = self.i + 3
        while True:
            if quotes == '"""' and self.s[j] == "\\":
                j += 2
            elif self.s.startswith(quotes, j):
                j += 3
                # up to two quotes right before the delimiter belong to the string
                extra = 0
                while extra < 2 and j < self.n and self.s[j] == quotes[0]:
                    j += 1
                    extra += 1
                break
            else:
                j += 1
        self.jump(j)

    def inline_table(self, path: Path) -> None:
        self.i += 1
        while True:
            self.skip_blank()
            if self.peek() == "}":
                self.i += 1
                return
            self.key_value(path, self.line)
            self.skip_blank()
            if self.peek() == ",":
                self.i += 1

    def array(self, path: Path) -> None:
        self.i += 1
        index = 0
        while True:
            self.skip_blank()
            if self.peek() == "]":
                self.i += 1
                return
            sub = (*path, index)
            self.note(sub, self.line)
            self.value(sub)
            self.skip_blank()
            if self.peek() == ",":
                self.i += 1
            index += 1


def _decode_key(quoted: str) -> str:
    """A quoted key's text, decoded exactly as tomllib decodes it."""
    value = tomllib.loads(f"k = {quoted}")["k"]
    assert isinstance(value, str)
    return value
