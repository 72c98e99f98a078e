"""What every configuration file atoll reads shares: where a key is, how
it is named and what a value is called in an error.

tomllib gives values without their lines; :class:`KeyLines` finds the line of
each key path (``("customizations", "user", 0, "name")``) by scanning the
text, so an error can say ``FILE: line N: KEY: PROBLEM`` (:func:`locate`) and
name what was expected and what was found (:func:`kind_of`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from typing import Any

#: A key's path from the top of the document; ints index arrays of tables.
KeyPath = tuple[str | int, ...]

_BARE_KEY = r"[A-Za-z0-9_-]+"
_QUOTED_KEY = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE_KEY}|{_QUOTED_KEY})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(#.*)?$")
_ARRAY_TABLE_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]\s*(#.*)?$")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_KEY_PART_RE = re.compile(_KEY)


def _split_dotted(text: str) -> list[str]:
    parts = []
    for match in _KEY_PART_RE.finditer(text):
        part = match.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return parts


class KeyLines:
    """Maps key paths (``("customizations", "user", 0, "name")``) to the line
    that defines them, by scanning the text: tomllib does not tell."""

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        counts: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            array = _ARRAY_TABLE_RE.match(line)
            plain = _TABLE_RE.match(line) if array is None else None
            if array is not None:
                names = self._resolve(_split_dotted(array.group(1)), counts)
                index = counts.get(names, 0)
                counts[names] = index + 1
                table = (*names, index)
                self.lines.setdefault(names, number)
                self.lines[table] = number
            elif plain is not None:
                table = self._resolve(_split_dotted(plain.group(1)), counts)
                self.lines.setdefault(table, number)
            else:
                assign = _ASSIGN_RE.match(line)
                if assign is not None:
                    self.lines.setdefault((*table, *_split_dotted(assign.group(1))), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_string = quote
                    break

    def _resolve(self, names: list[str], counts: dict[KeyPath, int]) -> KeyPath:
        """A table header's path, with the current index of each array of tables in it
        (``[customizations.user.x]`` after ``[[customizations.user]]`` is in the last one)."""
        out: list[str | int] = []
        for name in names:
            out.append(name)
            seen = counts.get(tuple(out))
            if seen is not None and len(out) < len(names):
                out.append(seen - 1)
        return tuple(out)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of *path*, else of its nearest enclosing key or table."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None


def show_key(path: KeyPath) -> str:
    """*path* as written in the file: ``customizations.user[0].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def kind_of(value: Any) -> str:
    """What TOML calls *value*'s type: ``a string``, ``an array``, ``a table``…"""
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    for cls, name in names.items():
        if type(value) is cls:
            return name
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date or time"
    return type(value).__name__


def at_line(source: str, line: int | None) -> str:
    """``FILE: line N: ``, the start of every config error or warning with a
    line (``FILE: `` when the line is not known), whatever the file's syntax."""
    return f"{source}: line {line}: " if line is not None else f"{source}: "


def where(source: str, lines: KeyLines | None, path: KeyPath) -> str:
    """``FILE: line N: ``, the line of *path* (``FILE: `` when it is not known)."""
    return at_line(source, lines.line_of(path) if lines is not None else None)


def locate(source: str, lines: KeyLines | None, path: KeyPath) -> str:
    """The start of an error about *path*: ``FILE: line N: KEY: `` (what is known of it)."""
    place = where(source, lines, path)
    return f"{place}{show_key(path)}: " if path else place


def json_key_lines(text: str) -> KeyLines:
    """The line of each key and array item of the JSON document *text*, by path
    (``("transports", "docker", "quay.io", 0, "type")``), so errors about a
    JSON file can name a line as those about TOML files do.  *text* must be a
    document that parses; a scan that goes wrong yields what it found so far."""
    lines: dict[KeyPath, int] = {}
    decoder = json.JSONDecoder()
    blank = re.compile(r"[ \t\r\n]*")

    def skip(pos: int) -> int:
        match = blank.match(text, pos)
        return match.end() if match is not None else pos

    def value(pos: int, path: KeyPath) -> int:
        """Scan the value at *pos* (blanks first); the position after it."""
        pos = skip(pos)
        if not text.startswith(("{", "["), pos):
            return decoder.raw_decode(text, pos)[1]
        closing, index = ("}" if text[pos] == "{" else "]"), 0
        pos = skip(pos + 1)
        while pos < len(text) and text[pos] != closing:
            item: KeyPath = (*path, index)
            line = text.count("\n", 0, pos) + 1
            if closing == "}":
                key, after = decoder.raw_decode(text, pos)
                item = (*path, key)
                pos = skip(after) + 1  # past the ':'
            lines.setdefault(item, line)
            index += 1
            pos = skip(value(pos, item))
            if text.startswith(",", pos):
                pos = skip(pos + 1)
        return pos + 1

    with contextlib.suppress(ValueError, IndexError):
        value(0, ())
    found = KeyLines("")
    found.lines = lines
    return found


_PATH_PART = re.compile(r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def key_path(path: str) -> KeyPath:
    """A key as errors write it, ``$.transports.docker["quay.io"][0]`` (JSON) or
    ``download.window`` (TOML), as a key path; the parts after one that does not
    read are dropped."""
    out: list[str | int] = []
    pos = 1 if path.startswith("$") else 0
    if pos == 0:
        path = "." + path
    while (match := _PATH_PART.match(path, pos)) is not None:
        name, index, quoted = match.groups()
        out.append(name if name is not None else int(index) if index else json.loads(quoted))
        pos = match.end()
    return tuple(out)


_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


def toml_syntax_error(source: str, exc: ValueError) -> str:
    """tomllib's error about *source* in the shape of the others: ``FILE: line N:
    not valid TOML: WHAT`` (tomllib ends its message with ``(at line N, column M)``)."""
    message = str(exc)
    found = _TOML_AT.search(message)
    if found is None:
        return f"{source}: not valid TOML: {message}"
    message = message.replace(found.group(0), "").strip()
    return f"{at_line(source, int(found.group(1)))}not valid TOML: {message}"
