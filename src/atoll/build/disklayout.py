"""Partition layouts from a small TOML file: ``--layout FILE`` of ``atoll
install to-disk`` and ``atoll disk-image`` (docs/install.md).

The format (version 1; every key but ``mount`` and ``size`` optional)::

    [root]
    filesystem = "xfs"         # ext4 or xfs (default: --rootfs, else ext4)

    [[partition]]              # one table per partition, in disk order
    mount = "/var"             # /var, or a directory under it
    size = "2G"                # bytes, or a number with K, M, G or T
    filesystem = "ext4"        # ext4 (default) or xfs

The root partition always comes last and takes the rest of the disk, so that
first boot can grow it (atoll.build.growfs).  A partition holds what the
stateroot's /var (or the directory under it) holds at install, and is mounted
at boot by two lines atoll adds to the deployment's ``/etc/fstab`` (carried
over by every update's /etc merge): one on the path the system uses
(``/var``), one on the stateroot's directory under ``/sysroot``
(``/sysroot/atoll/deploy/STATEROOT/var``), where atoll itself looks for /var,
so both see the same file system.

Anything else (an unknown key, a value of the wrong type, a mount point
outside /var or given twice, a size that is not one) is refused before any
work starts, naming the file, the line and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid as uuid_mod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from atoll import stricttoml
from atoll.configfile import KeyLines, KeyPath, kind_of, locate, toml_syntax_error
from atoll.errors import InvalidInputError, from_oserror
from atoll.fsutil import write_atomic

LAYOUT_VERSION = 1
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Filesystem(StrEnum):
    EXT4 = "ext4"
    XFS = "xfs"


@dataclass(frozen=True)
class PartitionSpec:
    """A partition of its own for /var or a directory under it."""

    mount: str
    size: int
    filesystem: Filesystem = Filesystem.EXT4

    @property
    def under_var(self) -> str:
        """The mount point's path below /var: ``""`` for /var itself."""
        return self.mount.removeprefix("/var").lstrip("/")


@dataclass(frozen=True)
class DiskLayout:
    """The partitions besides the boot ones and the root (in disk order)."""

    partitions: tuple[PartitionSpec, ...] = ()
    #: None: what --rootfs says.
    root_filesystem: Filesystem | None = None


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``1073741824``: bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * _UNITS[unit])
    except ValueError:
        raise InvalidInputError(
            f"size {text!r} is not a size", hint="give bytes or a number with K, M, G or T"
        ) from None
    if size <= 0:
        raise InvalidInputError(f"size {text!r} must be more than 0")
    return size


class _Reader:
    def __init__(self, source: str, lines: KeyLines) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: KeyPath, problem: str, hint: str) -> InvalidInputError:
        return InvalidInputError(f"{locate(self.source, self.lines, path)}{problem}", hint=hint)

    def table(self, value: Any, path: KeyPath, known: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, got {kind_of(value)}",
                            "see docs/install.md, Partition layouts")  # fmt: skip
        for key in value:
            if key not in known:
                raise self.fail((*path, key), "unknown key",
                                f"the keys here are {', '.join(known)}")  # fmt: skip
        return value

    def filesystem(self, table: dict[str, Any], path: KeyPath) -> Filesystem | None:
        value = table.get("filesystem")
        if value is None:
            return None
        choices = [f.value for f in Filesystem]
        if value not in choices:
            raise self.fail((*path, "filesystem"), f"{value!r} is not a file system atoll makes",
                            f"write one of: {', '.join(choices)}")  # fmt: skip
        return Filesystem(value)

    def partition(self, value: Any, path: KeyPath) -> PartitionSpec:
        table = self.table(value, path, ("mount", "size", "filesystem"))
        for key in ("mount", "size"):
            if key not in table:
                raise self.fail(path, f"no {key}", f'add {key} = "…" to this [[partition]]')
        mount = table["mount"]
        if not isinstance(mount, str):
            raise self.fail((*path, "mount"), f"expected a string, got {kind_of(mount)}",
                            'write it as mount = "/var"')  # fmt: skip
        clean = PurePosixPath(mount)
        parts = clean.parts
        if (
            not mount.startswith("/")
            or parts[1:2] != ("var",)
            or any(p in (".", "..") for p in mount.split("/"))
            or not all(re.fullmatch(r"[A-Za-z0-9._@+-]+", p) for p in parts[1:])
        ):
            raise self.fail((*path, "mount"), f"{mount!r} is not /var or a directory under it",
                            "a partition of its own holds /var or a directory under /var "
                            "(the rest of the system comes from the image)")  # fmt: skip
        raw = table["size"]
        size = raw if type(raw) is int else None
        if isinstance(raw, str):
            try:
                size = parse_size(raw)
            except InvalidInputError:
                size = None
        if size is None or size <= 0:
            raise self.fail((*path, "size"), f"{raw!r} is not a size",
                            'write bytes or a number with K, M, G or T: size = "2G"')  # fmt: skip
        return PartitionSpec(str(clean), size, self.filesystem(table, path) or Filesystem.EXT4)

    def layout(self, data: dict[str, Any]) -> DiskLayout:
        self.table(data, (), ("root", "partition"))
        root = self.table(data.get("root", {}), ("root",), ("filesystem",))
        items = data.get("partition", [])
        if not isinstance(items, list):
            raise self.fail(("partition",), f"expected [[partition]] tables, got {kind_of(items)}",
                            "write each partition as a [[partition]] table")  # fmt: skip
        partitions = tuple(self.partition(item, ("partition", i)) for i, item in enumerate(items))
        seen: set[str] = set()
        for i, part in enumerate(partitions):
            if part.mount in seen:
                raise self.fail(("partition", i, "mount"), f"{part.mount} is given twice",
                                "give each mount point one partition")  # fmt: skip
            seen.add(part.mount)
        return DiskLayout(partitions, self.filesystem(root, ("root",)))


def parse_layout(text: str, source: str = "layout") -> DiskLayout:
    """Parse and validate a layout file's text."""
    try:
        data = stricttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(toml_syntax_error(source, exc)) from None
    return _Reader(source, KeyLines(text)).layout(data)


def load_layout(path: Path) -> DiskLayout:
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text", hint="save the file as UTF-8") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from None
    return parse_layout(text, str(path))


@dataclass(frozen=True)
class DataPartition:
    """A partition of the layout as it is being made: its content, moved out of
    the staging sysroot, and its file system's identity."""

    spec: PartitionSpec
    tree: Path
    uuid: str
    label: str

    def to_json(self, offset: int, size: int) -> dict[str, Any]:
        return {
            "mount": self.spec.mount,
            "offset": offset,
            "size": size,
            "filesystem": {"type": self.spec.filesystem.value, "uuid": self.uuid,
                           "label": self.label},
        }  # fmt: skip


def split_trees(var: Path, layout: DiskLayout, staging: Path) -> list[DataPartition]:
    """Move each partition's content out of the stateroot's /var (*var*) into a
    directory of its own under *staging*, deepest mount point first, leaving an
    empty directory to mount it on; returns them in disk order."""
    made: dict[int, DataPartition] = {}
    order = sorted(
        range(len(layout.partitions)), key=lambda i: -layout.partitions[i].mount.count("/")
    )
    try:
        for index in order:
            spec = layout.partitions[index]
            source = var / spec.under_var
            source.mkdir(mode=0o755, parents=True, exist_ok=True)
            tree = staging / f"partition-{index}"
            tree.mkdir(parents=True)
            st = source.lstat()
            os.chown(tree, st.st_uid, st.st_gid)
            tree.chmod(st.st_mode & 0o7777)
            for entry in os.scandir(source):
                Path(entry.path).rename(tree / entry.name)
            label = spec.under_var.rsplit("/", 1)[-1] if spec.under_var else "var"
            made[index] = DataPartition(spec, tree, str(uuid_mod.uuid4()), label[:12])
    except OSError as exc:
        raise from_oserror(exc, str(var)) from exc
    return [made[i] for i in range(len(layout.partitions))]


def write_fstab(deployment_root: Path, parts: list[DataPartition], stateroot: str) -> None:
    """Add two lines per partition to the deployment's /etc/fstab: its mount point,
    and the same directory in the stateroot's /var under /sysroot."""
    if not parts:
        return
    path = deployment_root / "etc/fstab"
    lines = [
        "# Written by atoll install --layout: /var's partitions, each mounted where the",
        "# system sees it and where atoll finds it (the stateroot's /var in /sysroot).",
    ]
    for part in parts:
        fs = part.spec.filesystem.value
        under = f"/{part.spec.under_var}" if part.spec.under_var else ""
        lines.append(f"UUID={part.uuid} {part.spec.mount} {fs} defaults 0 2")
        lines.append(
            f"UUID={part.uuid} /sysroot/atoll/deploy/{stateroot}/var{under} {fs} defaults 0 0"
        )
    try:
        old = path.read_bytes() if path.exists() else b""
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        if old and not old.endswith(b"\n"):
            old += b"\n"
        write_atomic(path, old + ("\n".join(lines) + "\n").encode(), mode)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
