"""The shell command blocks of README.md and docs/*.md, and the markers before them.

A command block is a fenced block in ``console``, ``sh``, ``bash`` or
``shell``, or a fenced or indented block without a language whose first line
is a command (``$ …`` or ``atoll …``).  The line before it (blank lines
skipped) may be a marker:

``<!-- doc-test: runs in tests/docs/test_X.py -->``
    the block runs in that test, which names the block by its first line;
``<!-- doc-test: not runnable: REASON -->``
    it cannot run here, and why (a real disk, a second machine, …).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = frozenset({"console", "sh", "bash", "shell"})
_MARKER = re.compile(r"<!--\s*doc-test:\s*(runs in|not runnable:)\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first line of content
    language: str
    text: str
    marker: str | None  # "runs in" or "not runnable:"
    detail: str  # the test file, or the reason

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((x.strip() for x in self.text.splitlines() if x.strip()), "")

    def commands(self) -> list[str]:
        """The commands of a console block (``$ `` lines, with their ``\\``
        continuations); of a script block, its lines."""
        lines = self.text.splitlines()
        if not any(x.lstrip().startswith("$ ") for x in lines):
            return [x for x in lines if x.strip() and not x.lstrip().startswith("#")]
        commands: list[str] = []
        current: str | None = None
        for line in lines:
            stripped = line.strip()
            if current is not None:
                current += " " + stripped.removesuffix("\\").strip()
                if not stripped.endswith("\\"):
                    commands.append(current)
                    current = None
            elif stripped.startswith("$ "):
                body = stripped[2:]
                if body.endswith("\\"):
                    current = body.removesuffix("\\").strip()
                else:
                    commands.append(body)
        return commands


def _is_command(first: str) -> bool:
    return first.startswith(("$ ", "atoll ", "sudo atoll "))


def _is_file(first: str) -> bool:
    """A script or configuration file shown whole (``#!/bin/sh``, ``# /etc/…``):
    content, not commands to type."""
    return first.startswith(("#!", "# /"))


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            indent, mark, language = fence.groups()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(mark):
                end += 1
            body = [x.removeprefix(indent) for x in lines[i + 1 : end]]
            text = "\n".join(body)
            first = next((x.strip() for x in body if x.strip()), "")
            shell = language in SHELL_LANGUAGES and not _is_file(first)
            if shell or (not language and _is_command(first)):
                found.append(_block(path, i + 2, language or "-", text, previous))
            previous = lines[end] if end < len(lines) else ""
            i = end + 1
            continue
        if (
            line.startswith("    ")
            and not previous.startswith("    ")
            and _is_command(line.strip())
            and (i == 0 or not lines[i - 1].strip())
        ):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            text = "\n".join(x[4:] for x in lines[i:end]).rstrip()
            found.append(_block(path, i + 1, "indented", text, previous))
            previous = lines[end - 1]
            i = end
            continue
        if line.strip():
            previous = line
        i += 1
    return found


def _block(path: Path, line: int, language: str, text: str, previous: str) -> Block:
    marker = _MARKER.search(previous)
    if marker is None:
        return Block(path, line, language, text, None, "")
    kind = "runs in" if marker.group(1) == "runs in" else "not runnable:"
    return Block(path, line, language, text, kind, marker.group(2))


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_blocks() -> list[Block]:
    return [b for path in documents() for b in blocks_of(path)]


def find_block(document: str, first_command: str) -> Block:
    """The command block of *document* (``docs/status.md``) whose first command
    is *first_command*."""
    for block in blocks_of(ROOT / document):
        commands = block.commands()
        if commands and commands[0] == first_command:
            return block
    raise AssertionError(f"{document} has no block starting with {first_command!r}")


def shown_output(block: Block, command: str) -> str:
    """The output a console block shows under ``$ COMMAND``."""
    lines = block.text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip() == f"$ {command}")
    shown: list[str] = []
    for line in lines[start + 1 :]:
        if line.lstrip().startswith("$ "):
            break
        shown.append(line)
    return "\n".join(shown).rstrip("\n")


#: What differs from run to run in atoll's output (digests, deployment ids),
#: written in the docs shortened or as they were on the day.
_VARIABLE = [
    (re.compile(r"sha256:[0-9a-f]+…?"), "sha256:…"),
    (re.compile(r"\b[0-9a-f]{12}\.\d+\b"), "DEPLOYMENT"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "TIME"),
]


def normalized(text: str, hosts: dict[str, str] | None = None) -> str:
    """*text* with the example host names of the docs put for the test's own
    (*hosts*: doc name -> test name, applied in reverse) and run-to-run values
    replaced by placeholders."""
    for doc_name, real in (hosts or {}).items():
        text = text.replace(real, doc_name)
    for pattern, placeholder in _VARIABLE:
        text = pattern.sub(placeholder, text)
    return text
