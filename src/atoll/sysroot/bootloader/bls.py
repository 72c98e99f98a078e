"""Boot Loader Specification type #1 entries: the file format and the boot order.

Pure functions, no file system state: :mod:`atoll.sysroot.bootloader.entries` writes
these entries into the sysroot's ``boot/`` and counts boots with them.

**Entry files.**  ``ID.conf``, or ``ID+LEFT.conf`` / ``ID+LEFT-DONE.conf`` with
a boot counter (tries left, tries done).  ID uses letters, digits, ``.``, ``_``
and ``-`` (no ``+``: that starts the counter).  One ``key value`` per line::

    title Atoll 42.20260101 (default)
    version 2
    sort-key atoll
    linux /atoll/SHA256/vmlinuz-6.1.0-18-amd64
    initrd /atoll/SHA256/initramfs-6.1.0-18-amd64.img
    options root=LABEL=root rw atoll=/atoll/deploy/default/deploy/COMMIT.0
    architecture x64

``initrd`` is repeated once per image; ``options`` is the kernel command line,
which for atoll carries ``atoll=/atoll/deploy/STATEROOT/deploy/COMMIT.SERIAL``
(:attr:`BootEntry.deployment_path` reads it back).  Other keys (``machine-id``,
``devicetree``, ...) are kept as they are, in order.  Reading skips blank lines
and ``#`` comments, takes a key and its value separated by spaces or tabs, lets
the last of a repeated single key win (as systemd-boot does), joins repeated
``options`` lines with a space (as the BLS says) and requires ``linux``.

**Order.**  :func:`bootloader_order` sorts as the Boot Loader Specification
says (section "Sorting") and as systemd-boot's ``boot_entry_compare()`` does:

1. an entry whose counter is at ``+0`` (bad) sorts after all others;
2. entries that both have a sort-key sort by it (byte-wise ascending), then by
   machine-id (unset lowest), then by version *descending* in the UAPI version
   format (:func:`compare_versions`, systemd's ``strverscmp_improved()``:
   ``10`` is newer than ``9``);
3. an entry with a sort-key sorts before one without;
4. last, by file name without the counter, descending in the same version order
   (systemd-boot lowercases it and keeps ``.conf``; so do we); between two
   counted entries otherwise equal, more tries left first, then fewer done.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from atoll.errors import BootEntryError, from_oserror

#: The kernel argument that names the deployment to boot.
KARG = "atoll"

_ID = re.compile(r"[A-Za-z0-9._-]+")
_FILE_NAME = re.compile(r"(?P<id>[A-Za-z0-9._-]+?)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf")
_KNOWN_KEYS = frozenset(
    {"title", "version", "sort-key", "linux", "initrd", "options", "architecture"}
)
_BAD_CHARS = re.compile(r"[\x00\r\n]")
_EXTRA_KEY = re.compile(r"[^\s#][^\s]*")
_LINE = re.compile(r"([^ \t]+)[ \t]*(.*)")
_WS = " \t"


class BootState(StrEnum):
    """What boot counting says about an entry (BLS, "Boot counting")."""

    GOOD = "good"  # no counter
    INDETERMINATE = "indeterminate"  # tries left > 0
    BAD = "bad"  # tries left == 0


@dataclass(frozen=True, kw_only=True)
class BootEntry:
    """One type #1 entry.  ``id`` is the file name without counter and ``.conf``."""

    id: str
    linux: str
    title: str = ""
    version: str = ""
    sort_key: str = ""
    initrd: tuple[str, ...] = ()
    options: str = ""
    architecture: str | None = None
    tries_left: int | None = None
    tries_done: int = 0
    #: Keys atoll does not interpret (``machine-id``, ``devicetree``, ...), in file order.
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.id) or len(self.id) > 240:
            raise BootEntryError(
                f"boot entry id {self.id!r} is not valid: use 1 to 240 letters, digits, "
                "'.', '_' and '-'"
            )
        if not self.linux:
            raise BootEntryError(f"boot entry {self.id}: 'linux' is empty")
        values = [self.title, self.version, self.sort_key, self.linux, *self.initrd, self.options]
        values += [self.architecture or "", *(v for _, v in self.extra)]
        for value in values:
            if _BAD_CHARS.search(value) or value != value.strip(_WS):
                raise BootEntryError(
                    f"boot entry {self.id}: value {value!r} has a line break, a NUL or "
                    "surrounding white space"
                )
        if any(not path for path in self.initrd) or self.architecture == "":
            raise BootEntryError(f"boot entry {self.id}: empty 'initrd' or 'architecture'")
        for key, _ in self.extra:
            if not _EXTRA_KEY.fullmatch(key) or key in _KNOWN_KEYS:
                raise BootEntryError(f"boot entry {self.id}: extra key {key!r} is not valid")
        if self.tries_left is not None and self.tries_left < 0:
            raise BootEntryError(f"boot entry {self.id}: tries left must not be negative")
        if self.tries_done < 0 or (self.tries_left is None and self.tries_done):
            raise BootEntryError(f"boot entry {self.id}: tries done needs a tries-left counter")

    @property
    def filename(self) -> str:
        """``ID.conf``, ``ID+LEFT.conf`` or ``ID+LEFT-DONE.conf``."""
        if self.tries_left is None:
            return f"{self.id}.conf"
        if self.tries_done == 0:
            return f"{self.id}+{self.tries_left}.conf"
        return f"{self.id}+{self.tries_left}-{self.tries_done}.conf"

    @property
    def state(self) -> BootState:
        if self.tries_left is None:
            return BootState.GOOD
        return BootState.BAD if self.tries_left == 0 else BootState.INDETERMINATE

    @property
    def deployment_path(self) -> str | None:
        """The value of the last ``atoll=`` kernel argument, or None."""
        found = None
        for arg in self.options.split():
            if arg == "--":  # the rest goes to init, not the kernel
                break
            if arg.startswith(f"{KARG}="):
                found = arg[len(KARG) + 1 :]
        return found

    def extra_value(self, key: str) -> str | None:
        values = [v for k, v in self.extra if k == key]
        return values[-1] if values else None


# --- the file format ---------------------------------------------------------------


def format_entry(entry: BootEntry) -> str:
    """The text of ``entry.filename``."""
    lines = [f"title {entry.title}"] if entry.title else []
    if entry.version:
        lines.append(f"version {entry.version}")
    if entry.sort_key:
        lines.append(f"sort-key {entry.sort_key}")
    lines.append(f"linux {entry.linux}")
    lines += [f"initrd {path}" for path in entry.initrd]
    if entry.options:
        lines.append(f"options {entry.options}")
    if entry.architecture:
        lines.append(f"architecture {entry.architecture}")
    lines += [f"{key} {value}".rstrip() for key, value in entry.extra]
    return "\n".join(lines) + "\n"


def parse_filename(filename: str) -> tuple[str, int | None, int]:
    """Split ``ID+LEFT-DONE.conf`` into id, tries left (None: no counter), tries done."""
    name = PurePosixPath(filename).name
    match = _FILE_NAME.fullmatch(name)
    if match is None or len(name) > 255:
        raise BootEntryError(
            f"{filename}: not a boot entry file name (ID.conf, ID+LEFT.conf or "
            "ID+LEFT-DONE.conf; ID of letters, digits, '.', '_', '-')"
        )
    left = match["left"]
    return match["id"], None if left is None else int(left), int(match["done"] or 0)


def parse_entry(text: str, filename: str) -> BootEntry:
    """Parse the text of a type #1 entry; *filename* (a path or a name) gives the
    id and the counter, and names the file in errors."""
    entry_id, tries_left, tries_done = parse_filename(filename)
    single: dict[str, str] = {}
    initrd: list[str] = []
    options: list[str] = []
    extra: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(_WS + "\r")
        if not line or line.startswith("#"):
            continue
        if "\x00" in line or "\r" in line:
            raise BootEntryError(f"{filename}:{lineno}: a NUL or carriage return in the line")
        match = _LINE.fullmatch(line)
        assert match is not None  # a non-empty line without surrounding blanks
        key, value = match[1], match[2].strip(_WS)
        if key in ("linux", "initrd") and not value:
            raise BootEntryError(f"{filename}:{lineno}: '{key}' needs a path")
        if key == "initrd":
            initrd.append(value)
        elif key == "options":
            if value:
                options.append(value)
        elif key in _KNOWN_KEYS:
            single[key] = value  # the last one wins, as in systemd-boot
        else:
            extra.append((key, value))
    if "linux" not in single:
        raise BootEntryError(f"{filename}: no 'linux' line: a boot entry must name its kernel")
    try:
        return BootEntry(
            id=entry_id,
            title=single.get("title", ""),
            version=single.get("version", ""),
            sort_key=single.get("sort-key", ""),
            linux=single["linux"],
            initrd=tuple(initrd),
            options=" ".join(options),
            architecture=single.get("architecture") or None,
            tries_left=tries_left,
            tries_done=tries_done,
            extra=tuple(extra),
        )
    except BootEntryError as exc:
        raise BootEntryError(f"{filename}: {exc.message}") from None


def load_entry(path: Path) -> BootEntry:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        raise BootEntryError(f"{path}:{lineno}: not UTF-8") from None
    return parse_entry(text, str(path))


# --- the order ---------------------------------------------------------------------

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VERSION_CHARS = _DIGITS | _ALPHA | frozenset("~-^.")


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def compare_versions(a: str, b: str) -> int:
    """Compare two versions as the UAPI Version Format Specification says
    (systemd's ``strverscmp_improved()``): negative if *a* is older, 0, positive.

    Segments are runs of digits or of letters; ``~`` marks a pre-release (oldest),
    ``-`` separates version and release, ``^`` a patched release, ``.`` a point
    release; other characters only separate segments.  So ``122.1 < 123~rc1-1 <
    123 < 123-a < 123-1 < 123^post1 < 123.a-1 < 123.1-1 < 123a-1 < 124-1``."""
    i = j = 0
    while True:
        while i < len(a) and a[i] not in _VERSION_CHARS:
            i += 1
        while j < len(b) and b[j] not in _VERSION_CHARS:
            j += 1
        ca, cb = a[i : i + 1], b[j : j + 1]
        if "~" in (ca, cb):
            if (ca == "~") != (cb == "~"):
                return -1 if ca == "~" else 1  # a pre-release is older
            i, j = i + 1, j + 1
        ca, cb = a[i : i + 1], b[j : j + 1]
        if not ca or not cb:
            return _cmp(ca, cb)  # the one with more segments is newer
        for mark in ("-", "^", "."):
            ca, cb = a[i : i + 1], b[j : j + 1]
            if mark in (ca, cb):
                if (ca == mark) != (cb == mark):
                    return -1 if ca == mark else 1  # the separator's segment is older
                i, j = i + 1, j + 1
        ca, cb = a[i : i + 1], b[j : j + 1]
        if ca in _DIGITS or cb in _DIGITS:
            ea, eb = i, j
            while ea < len(a) and a[ea] in _DIGITS:
                ea += 1
            while eb < len(b) and b[eb] in _DIGITS:
                eb += 1
            r = _cmp(ea != i, eb != j)  # a number is newer than letters or nothing
            if r:
                return r
            while i < ea and a[i] == "0":
                i += 1
            while j < eb and b[j] == "0":
                j += 1
            r = _cmp(ea - i, eb - j) or _cmp(a[i:ea], b[j:eb])
        else:
            ea, eb = i, j
            while ea < len(a) and a[ea] in _ALPHA:
                ea += 1
            while eb < len(b) and b[eb] in _ALPHA:
                eb += 1
            n = min(ea - i, eb - j)
            r = _cmp(a[i : i + n], b[j : j + n]) or _cmp(ea - i, eb - j)
        if r:
            return r
        i, j = ea, eb


def _compare_strings(a: str | None, b: str | None) -> int:
    """strcmp(3) on UTF-8; unset or empty compares lowest (BLS "Alphanumerical Order")."""
    return _cmp((a or "").encode(), (b or "").encode())


def _compare_entries(a: BootEntry, b: BootEntry) -> int:
    r = _cmp(a.tries_left == 0, b.tries_left == 0)
    if r:
        return r
    r = _cmp(not a.sort_key, not b.sort_key)
    if r:
        return r
    if a.sort_key and b.sort_key:
        r = (
            _compare_strings(a.sort_key, b.sort_key)
            or _compare_strings(a.extra_value("machine-id"), b.extra_value("machine-id"))
            or -compare_versions(a.version, b.version)
        )
        if r:
            return r
    r = -compare_versions(f"{a.id}.conf".lower(), f"{b.id}.conf".lower())
    if r or a.tries_left is None or b.tries_left is None:
        return r
    return -_cmp(a.tries_left, b.tries_left) or _cmp(a.tries_done, b.tries_done)


def bootloader_order(entries: Iterable[BootEntry]) -> list[BootEntry]:
    """The entries in the order systemd-boot shows them; the first good or
    indeterminate one is what it boots."""
    by_name = sorted(entries, key=lambda e: e.filename)
    return sorted(by_name, key=functools.cmp_to_key(_compare_entries))
