"""Where each key of a TOML document is: key path → line number.

``tomllib`` parses TOML but gives no positions, and a budget error must name its line.
This scanner walks a document that ``tomllib`` has already accepted (so it can assume the
text is valid TOML 1.0) and records the line on which each key path first appears: table
headers, dotted keys, keys inside inline tables, and the elements of arrays (by index).

Paths are tuples of keys and array indexes, the way ``tomllib``'s result is indexed:
``[[runs]]`` tables are ``("runs", 0)``, ``("runs", 1)``…, the second element of
``metrics = [...]`` is ``("regression", "metrics", 1)``.
"""

from __future__ import annotations

import contextlib
import tomllib

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


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
                key = self.key()
                path = table + tuple(key)
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
            line = self.line
            key = self.key()
            sub = path + tuple(key)
            self.note(sub, line)
            self.skip_ws()
            self.i += 1  # "="
            self.skip_ws()
            self.value(sub)
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
