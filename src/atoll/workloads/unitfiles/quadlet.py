"""Quadlet unit files: ``.container``, ``.pod``, ``.volume``, ``.network``,
``.image``, ``.kube`` and ``.build``, read as podman 5.4's quadlet reads them.

The format is systemd's INI dialect with the keys of podman-systemd.unit(5)
(the table is :mod:`atoll.workloads.unitfiles.keys`)::

    # comment                    '#' or ';' at the start of a line
    [Container]                  the kind's own section; every other section
    Image=quay.io/a/b:1          ([Unit], [Service], [Install], ...) is passed
    Environment=A=1 "B=two words"      through to the service
    Exec=/bin/sh -c \\            a trailing backslash joins the next line
         'echo hi'               (podman joins without adding a blank)
    Label=                       an empty value resets a list key
    [Quadlet]
    DefaultDependencies=false    no Wants/After on network-online

A line that is not a comment, a section or ``Key=Value``, a key before any
section and a key the kind does not have are refused, naming the file and line.

Where units are found (the first directory that has a name wins; each
directory's subdirectories are searched after it, except ``*.d``)::

    system:   /run/containers/systemd  /etc/containers/systemd
              /usr/share/containers/systemd
    rootless: $XDG_RUNTIME_DIR/containers/systemd
              $XDG_CONFIG_HOME/containers/systemd
              /etc/containers/systemd/users  /etc/containers/systemd/users/$UID

Drop-ins are ``*.conf`` files, read from each search directory in this order
of directories (for ``web-app@blue.container``)::

    web-app@blue.container.d/   the unit's own
    web-app@.container.d/       the template's
    web-@.container.d/  web-.container.d/           each prefix ending in a dash
    container.d/                every unit of the kind

For one file name the first found wins; the files apply sorted by name, after the unit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.errors import QuadletUnitError, from_oserror
from atoll.workloads.unitfiles.keys import (
    KEYS,
    OPTION_CLASSES,
    QUADLET_KEYS,
    BuildOptions,
    ContainerOptions,
    ImageOptions,
    KeySpec,
    KubeOptions,
    NetworkOptions,
    Options,
    PodOptions,
    UnitKind,
    ValueKind,
    VolumeOptions,
)

__all__ = [
    "KEYS",
    "BuildOptions",
    "ContainerOptions",
    "ImageOptions",
    "KeySpec",
    "KubeOptions",
    "NetworkOptions",
    "Options",
    "PodOptions",
    "UnitKind",
    "ValueKind",
    "VolumeOptions",
]

log = logging.getLogger(__name__)

SYSTEM_DIRS = (
    Path("/run/containers/systemd"),
    Path("/etc/containers/systemd"),
    Path("/usr/share/containers/systemd"),
)
QUADLET_SECTION = "Quadlet"
#: The order podman's quadlet converts kinds in: a resource before its users.
CONVERT_ORDER = {
    UnitKind.IMAGE: 1,
    UnitKind.VOLUME: 2,
    UnitKind.NETWORK: 2,
    UnitKind.BUILD: 3,
    UnitKind.CONTAINER: 4,
    UnitKind.KUBE: 4,
    UnitKind.POD: 5,
}
TRUE_WORDS = ("1", "yes", "true", "on")


@dataclass(frozen=True)
class Entry:
    """One ``Key=Value`` assignment, with where it was written."""

    key: str
    value: str
    path: Path
    line: int


@dataclass(frozen=True)
class ParseWarning:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class QuadletUnit:
    """A unit file with its drop-ins merged, validated and typed."""

    name: str  # e.g. "web.container"
    kind: UnitKind
    path: Path
    options: Options
    dropins: tuple[Path, ...] = ()
    #: Every other section's assignments ([Unit], [Service], [Install], ...), in
    #: file order, passed through to the service.
    passthrough: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    #: [Quadlet] DefaultDependencies=.
    default_dependencies: bool = True

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def template_parts(self) -> tuple[str, str, bool]:
        """``(prefix, instance, is_template)``: ``a@b.container`` is ``("a", "b", True)``."""
        prefix, at, instance = self.stem.partition("@")
        return prefix, instance, bool(at)

    @property
    def service_name(self) -> str:
        custom = self.options.service_name
        if custom is not None:
            return f"{custom}.service"
        return self.kind.service_name(self.stem)

    def section(self, name: str) -> tuple[Entry, ...]:
        return self.passthrough.get(name, ())


@dataclass(frozen=True)
class LoadResult:
    units: tuple[QuadletUnit, ...]
    warnings: tuple[ParseWarning, ...]
    #: Units refused (only with ``strict=False``): podman's quadlet skips them too.
    errors: tuple[QuadletUnitError, ...] = ()

    def by_name(self) -> dict[str, QuadletUnit]:
        return {u.name: u for u in self.units}


_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "s": " ", "\\": "\\", '"': '"', "'": "'", " ": " ",
}  # fmt: skip
#: The hexadecimal escapes of systemd's cunescape(), and their digits.
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_OCTAL = "01234567"


def _unescape(value: str, at: int) -> tuple[str, int]:
    """The character the escape at *value[at]* (just after a backslash) stands for,
    and where the text goes on; as systemd reads it, so that what the generator
    writes as \\xNN (a control character in an Exec= word) reads back the same."""
    c = value[at]
    length = _HEX_DIGITS.get(c, 0)
    if length:
        digits = value[at + 1 : at + 1 + length]
        if len(digits) == length and all(d in "0123456789abcdefABCDEF" for d in digits):
            code = int(digits, 16)
            if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                return chr(code), at + 1 + length
    elif c in _OCTAL:
        digits = value[at : at + 3]
        if len(digits) == 3 and all(d in _OCTAL for d in digits) and int(digits, 8) < 256:
            return chr(int(digits, 8)), at + 3
    return _ESCAPES.get(c, c), at + 1


def split_words(value: str, *, unescape: bool = True) -> list[str]:
    """Split *value* into words as systemd does: quotes group, backslash escapes
    (with *unescape* false the escapes stay as written, as in a strv list)."""
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t\n":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote: str | None = None
        while i < n:
            c = value[i]
            if c == "\\" and i + 1 < n:
                if unescape:
                    decoded, i = _unescape(value, i + 1)
                    word.append(decoded)
                else:
                    word.append(value[i : i + 2])
                    i += 2
                continue
            if quote:
                if c == quote:
                    quote = None
                else:
                    word.append(c)
            elif c in "\"'":
                quote = c
            elif c in " \t\n":
                break
            else:
                word.append(c)
            i += 1
        words.append("".join(word))
    return words


def is_true(value: str) -> bool:
    """podman's reading of a boolean: anything but 1/yes/true/on is false."""
    return value.lower() in TRUE_WORDS


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QuadletUnitError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    if "\0" in text:
        # No value can hold one (a path or an argument ends at it): not a unit file.
        nul_line = text.count("\n", 0, text.index("\0")) + 1
        raise QuadletUnitError(f"{path}:{nul_line}: a NUL byte: not a text file")
    return text


def read_sections(path: Path, warnings: list[ParseWarning]) -> list[tuple[str, Entry]]:
    """The ``(section, entry)`` pairs of a systemd unit (systemd's reading:
    continued lines are joined with a blank), problems as *warnings*."""
    text = _read_text(path)
    result: list[tuple[str, Entry]] = []
    section: str | None = None
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if pending and stripped[:1] in ("#", ";"):
            continue  # systemd skips comment lines inside a continuation
        if not pending:
            start = number
            if not stripped or stripped[0] in "#;":
                continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        line = " ".join([*pending, stripped]) if pending else stripped
        pending = []
        if line.startswith("["):
            if not line.endswith("]"):
                raise QuadletUnitError(f"{path}:{start}: section header {line!r} has no ']'")
            section = line[1:-1].strip()
            continue
        key, eq, value = line.partition("=")
        if not eq:
            warnings.append(ParseWarning(path, start, f"line is not Key=Value, ignored: {line!r}"))
            continue
        if section is None:
            warnings.append(ParseWarning(path, start, f"{key.strip()} is outside any section"))
            continue
        result.append((section, Entry(key.strip(), value.strip(), path, start)))
    if pending:
        warnings.append(ParseWarning(path, start, "file ends in a line continuation"))
    return result


def _group_name(line: str) -> str | None:
    """The section a ``[Name]`` line opens (blanks may follow the ``]``), else None."""
    end = line.find("]")
    if not line.startswith("[") or end < 0 or line[end + 1 :].strip(" \t"):
        return None
    return line[1:end]


def read_quadlet_sections(path: Path) -> list[tuple[str, Entry]]:
    """The ``(section, entry)`` pairs of a Quadlet file, read as podman reads it."""
    lines = _read_text(path).removesuffix("\n").split("\n")
    result: list[tuple[str, Entry]] = []
    section: str | None = None
    pending: str | None = None  # the text of a line continued so far
    start = 1
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue  # a comment, also inside a continuation
        if pending is None:
            start = number
        if line.endswith("\\") and number != len(lines):
            pending = (pending or "") + line[:-1]
            continue
        line = (pending or "") + line.removesuffix("\\")
        pending = None
        where = f"{path}:{start}"
        group = _group_name(line)
        if group is not None:
            if not group or any(c in "[]" or not c.isprintable() for c in group):
                raise QuadletUnitError(f"{where}: {group!r} is not a section name")
            section = group
            continue
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise QuadletUnitError(
                f"{where}: {line!r} is not Key=Value, a [Section] or a comment",
                hint="write Key=Value under a [Section] header",
            )
        if section is None:
            raise QuadletUnitError(f"{where}: {key.strip()}= comes before any [Section]")
        result.append((section, Entry(key.rstrip(), value.lstrip(), path, start)))
    return result


def _fold_values(spec: KeySpec, entries: Sequence[Entry]) -> Any:
    """The value of one key from its assignments, as podman's lookups give it."""
    kind = spec.kind
    if kind is ValueKind.EXEC:
        return entries[-1].value
    if kind is ValueKind.STRING:
        return entries[-1].value.rstrip().strip('"')
    if kind is ValueKind.BOOL:
        return is_true(entries[-1].value.rstrip().strip('"'))
    values: list[str] = []
    for entry in entries:
        if not entry.value:
            values = []  # an empty assignment drops what came before
        elif kind is ValueKind.LIST:
            values.append(entry.value)
        else:
            values += split_words(entry.value, unescape=kind is not ValueKind.WORDS)
    return tuple(values)


def _fold(
    kind: UnitKind, entries: Iterable[tuple[str, Entry]]
) -> tuple[Options, dict[str, tuple[Entry, ...]], bool]:
    specs = {s.key: s for s in KEYS[kind]}
    quadlet_specs = {s.key: s for s in QUADLET_KEYS}
    own: dict[str, list[Entry]] = {}
    quadlet: dict[str, list[Entry]] = {}
    passthrough: dict[str, list[Entry]] = {}
    for section, entry in entries:
        if section == kind.section:
            allowed, into = specs, own
        elif section == QUADLET_SECTION:
            allowed, into = quadlet_specs, quadlet
        else:
            passthrough.setdefault(section, []).append(entry)
            continue
        if entry.key not in allowed:
            raise QuadletUnitError(
                f"{entry.path}:{entry.line}: unsupported key {entry.key} in [{section}]",
                hint="see the key table in docs/workloads.md",
            )
        into.setdefault(entry.key, []).append(entry)
    values = {specs[k].field: _fold_values(specs[k], v) for k, v in own.items()}
    options: Options = OPTION_CLASSES[kind](**values)
    dependencies = quadlet.get("DefaultDependencies")
    default_dependencies = _fold_values(QUADLET_KEYS[0], dependencies) if dependencies else True
    return options, {k: tuple(v) for k, v in passthrough.items()}, default_dependencies


def default_roots(*, user: bool = False) -> tuple[Path, ...]:
    """The directories podman's Quadlet reads, in order of precedence
    (``$QUADLET_UNIT_DIRS``, colon-separated, replaces them, as for podman's)."""
    override = os.environ.get("QUADLET_UNIT_DIRS")
    if override:
        return tuple(Path(d) for d in override.split(":") if d.startswith("/"))
    if not user:
        return SYSTEM_DIRS
    home = Path(os.environ.get("HOME", "/root"))
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
    return (
        runtime / "containers/systemd",
        config / "containers/systemd",
        Path("/etc/containers/systemd/users"),
        Path(f"/etc/containers/systemd/users/{os.getuid()}"),
    )


def search_dirs(roots: Sequence[Path]) -> list[Path]:
    """*roots* with their subdirectories (depth first, by name; not ``*.d``,
    not ``/etc/containers/systemd/users`` below the system root), each once."""
    found: list[Path] = []
    users = Path("/etc/containers/systemd/users")

    def walk(directory: Path, under_system: bool) -> None:
        if directory in found or directory.name.endswith(".d") or not directory.is_dir():
            return
        if under_system and directory == users:
            return
        found.append(directory)
        try:
            children = sorted(directory.iterdir())
        except OSError:
            return
        for child in children:
            walk(child, under_system)

    for root in roots:
        walk(root, root == Path("/etc/containers/systemd"))
    return found


def kind_of(name: str) -> UnitKind | None:
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    try:
        return UnitKind(suffix)
    except ValueError:
        return None


def dropin_dirs(name: str) -> list[str]:
    """The drop-in directories of the unit *name*, most specific first."""
    stem, _, suffix = name.rpartition(".")
    prefix, at, instance = stem.partition("@")
    ext = f".{suffix}.d"
    broad = [ext[1:]]
    parts = prefix.split("-")
    for i in range(1, len(parts)):
        truncated = "-".join(parts[:i]) + "-"
        broad.append(truncated + ext)
        if at:
            broad.append(truncated + "@" + ext)
    if instance:
        broad.append(f"{prefix}@{ext}")
    broad.append(f"{name}.d")
    return broad[::-1]


def find_dropins(name: str, dirs: Sequence[Path]) -> list[Path]:
    chosen: dict[str, Path] = {}
    for root in dirs:
        for sub in dropin_dirs(name):
            directory = root / sub
            if directory.is_dir():
                for conf in sorted(directory.glob("*.conf")):
                    chosen.setdefault(conf.name, conf)
    return [chosen[k] for k in sorted(chosen)]


def parse_unit(path: Path, dropins: Sequence[Path] = ()) -> tuple[QuadletUnit, list[ParseWarning]]:
    """Parse one unit file and its drop-ins (already in the order to apply them)."""
    kind = kind_of(path.name)
    if kind is None:
        raise QuadletUnitError(
            f"{path}: not a Quadlet unit",
            hint="name it NAME.container, .pod, .volume, .network, .image, .kube or .build",
        )
    entries = read_quadlet_sections(path)
    for dropin in dropins:
        entries.extend(read_quadlet_sections(dropin))
    options, passthrough, dependencies = _fold(kind, entries)
    unit = QuadletUnit(path.name, kind, path, options, tuple(dropins), passthrough, dependencies)
    return unit, []


def load_units(
    roots: Sequence[Path] | None = None, *, user: bool = False, strict: bool = True
) -> LoadResult:
    """Every unit under *roots* (default: podman's directories), drop-ins merged.

    A unit that does not parse raises, or with *strict* false is left out and
    its error kept in :attr:`LoadResult.errors` (what podman's quadlet does)."""
    dirs = search_dirs(tuple(roots) if roots is not None else default_roots(user=user))
    found: dict[str, Path] = {}
    for root in dirs:
        for path in sorted(root.iterdir()):
            if kind_of(path.name) is not None and path.is_file():
                found.setdefault(path.name, path)
    units: list[QuadletUnit] = []
    errors: list[QuadletUnitError] = []
    for name, path in found.items():  # in the order of the directories, as podman reads them
        try:
            unit, _ = parse_unit(path, find_dropins(name, dirs))
        except QuadletUnitError as exc:
            if strict:
                raise
            log.error("%s", exc)
            errors.append(exc)
            continue
        units.append(unit)
    return LoadResult(tuple(units), (), tuple(errors))
