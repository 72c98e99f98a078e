"""Which layer each file of an OS image goes to: files that change together share one.

The rule, applied to the flattened tree of an image (see atoll.build.rechunk)::

    package manager state   var/lib/dpkg/status*, var/lib/apt, var/log, …   -> "state"
    a big package           its files (and its dpkg info files)             -> "pkg/NAME"
    a small package         by sha256(NAME) into LAYOUT.package_buckets     -> "pkgs/NN"
    a file no package owns  by sha256(its directory) into directory_buckets -> "files/NN"

Every rule is a function of the file's own name and owner, never of the other
packages, so a new package lands in one bucket and leaves the others' digests
alone.  Which packages are big is decided once: the largest packages (at least
:data:`MIN_ALONE_BYTES`) get the layers left after the buckets, and a later
version given the previous :class:`Layout` keeps that choice, adding big
packages only where slots are free.  A group larger than the *split* share of
the image is cut into parts by sha256 of the path (``NAME~K``), so no single
layer dominates; only when that leaves more groups than allowed are the
smallest merged.

The layout is carried in the image as the config label :data:`LAYOUT_LABEL`
(canonical JSON, version :data:`LAYOUT_VERSION`)::

    {"alone":["coreutils","libc6",…],"directory_buckets":8,"max_layers":64,
     "package_buckets":16,"version":1}

and each layer's descriptor names its group in the annotation
:data:`GROUP_ANNOTATION`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from atoll.errors import RechunkError

LAYOUT_LABEL = "dev.atoll.rechunk.layout"
GROUP_ANNOTATION = "dev.atoll.rechunk.group"
LAYOUT_VERSION = 1
#: The fewest layers a grouping can be written in (state, a bucket of each kind, one more).
MIN_LAYERS = 4
#: A package smaller than this never gets a layer of its own.
MIN_ALONE_BYTES = 256 * 1024
#: A group holding more than this share of the image is split.
SPLIT_SHARE = 0.2
STATE = "state"

#: Paths the package manager rewrites whenever any package changes.
_STATE_PREFIXES = (
    "var/lib/dpkg/status",
    "var/lib/dpkg/available",
    "var/lib/dpkg/diversions",
    "var/lib/dpkg/statoverride",
    "var/lib/dpkg/triggers/",
    "var/lib/dpkg/lock",
    "var/lib/apt/",
    "var/cache/apt/",
    "var/cache/debconf/",
    "var/cache/ldconfig/",
    "var/log/",
    "etc/ld.so.cache",
    "var/lib/rpm/",
    "usr/lib/sysimage/rpm/",
    "var/lib/dnf/",
    "var/cache/dnf/",
)


@dataclass(frozen=True)
class Layout:
    """The parameters of a grouping that a later version must keep to stay stable."""

    max_layers: int
    package_buckets: int
    directory_buckets: int
    alone: tuple[str, ...]
    version: int = LAYOUT_VERSION

    def to_label(self) -> str:
        return json.dumps(
            {
                "alone": sorted(self.alone),
                "directory_buckets": self.directory_buckets,
                "max_layers": self.max_layers,
                "package_buckets": self.package_buckets,
                "version": self.version,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_label(cls, text: str, where: str) -> Layout:
        try:
            data = json.loads(text)
            version = data["version"]
            if not isinstance(version, int) or version > LAYOUT_VERSION:
                raise RechunkError(
                    f"{where}: label {LAYOUT_LABEL} is of layout version {version}, "
                    f"newer than this atoll's {LAYOUT_VERSION}",
                    hint="rechunk with a newer atoll, or without --previous",
                )
            layout = cls(
                max_layers=int(data["max_layers"]),
                package_buckets=int(data["package_buckets"]),
                directory_buckets=int(data["directory_buckets"]),
                alone=tuple(str(a) for a in data["alone"]),
                version=version,
            )
        except (ValueError, KeyError, TypeError):
            raise RechunkError(
                f"{where}: label {LAYOUT_LABEL} is not a rechunk layout",
                hint="rechunk without --previous to start a new layout",
            ) from None
        if layout.package_buckets < 1 or layout.directory_buckets < 1:
            raise RechunkError(f"{where}: label {LAYOUT_LABEL} has no buckets")
        return layout


@dataclass(frozen=True)
class Group:
    name: str
    paths: tuple[str, ...]
    size: int


def _bucket(key: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def _slots(max_layers: int) -> tuple[int, int, int]:
    """Package buckets, directory buckets and the layers for big packages; an
    eighth of the layers stays free for splits of oversized groups."""
    if max_layers < MIN_LAYERS:
        raise RechunkError(
            f"--max-layers {max_layers} is too few: an OS image needs at least {MIN_LAYERS}"
        )
    package_buckets = max(1, max_layers // 4)
    directory_buckets = max(1, max_layers // 8)
    alone = max(0, max_layers - package_buckets - directory_buckets - 1 - max_layers // 8)
    return package_buckets, directory_buckets, alone


def plan_layout(
    package_sizes: Mapping[str, int], max_layers: int, previous: Layout | None = None
) -> Layout:
    """The layout for a tree whose packages have *package_sizes* (bytes)."""
    if previous is not None and previous.max_layers == max_layers:
        kept = tuple(sorted(p for p in previous.alone if p in package_sizes))
        _, _, slots = _slots(max_layers)
        package_buckets, directory_buckets = previous.package_buckets, previous.directory_buckets
    else:
        kept = ()
        package_buckets, directory_buckets, slots = _slots(max_layers)
    candidates = sorted(
        (p for p, size in package_sizes.items() if size >= MIN_ALONE_BYTES and p not in kept),
        key=lambda p: (-package_sizes[p], p),
    )
    alone = tuple(sorted([*kept, *candidates[: max(0, slots - len(kept))]]))
    return Layout(max_layers, package_buckets, directory_buckets, alone)


def is_state(path: str) -> bool:
    return path.startswith(_STATE_PREFIXES)


def group_of(path: str, owner: str | None, layout: Layout, alone: frozenset[str]) -> str:
    if is_state(path):
        return STATE
    if owner is not None:
        if owner in alone:
            return f"pkg/{owner}"
        return f"pkgs/{_bucket(owner, layout.package_buckets):02d}"
    directory = path.rpartition("/")[0]
    return f"files/{_bucket(directory, layout.directory_buckets):02d}"


def group_files(
    sizes: Mapping[str, int],
    owners: Mapping[str, str],
    layout: Layout,
    *,
    follow: Mapping[str, str] | None = None,
    split_share: float = SPLIT_SHARE,
) -> list[Group]:
    """The groups of the paths in *sizes* (path -> bytes), sorted by name.

    *owners* maps a path to its package; *follow* maps a path to another whose
    group it must share (the other names of a hard-linked file)."""
    alone = frozenset(layout.alone)
    members: dict[str, list[str]] = {}
    for path in sizes:
        if follow and path in follow:
            continue
        members.setdefault(group_of(path, owners.get(path), layout, alone), []).append(path)
    total = sum(sizes.values()) or 1
    cap = max(int(total * split_share), 1)
    groups: dict[str, list[str]] = {}
    for name, paths in members.items():
        size = sum(sizes[p] for p in paths)
        if size <= cap or len(paths) == 1:
            groups[name] = paths
            continue
        # Twice the parts the sizes need: hashing does not fill parts evenly.
        parts = math.ceil(2 * size / cap)
        for path in paths:
            groups.setdefault(f"{name}~{_bucket(path, parts)}", []).append(path)
    where = {p: name for name, paths in groups.items() for p in paths}
    for path, lead in sorted((follow or {}).items()):
        name = where.get(lead) or group_of(lead, owners.get(lead), layout, alone)
        groups.setdefault(name, []).append(path)
    return _merge_to(
        [
            Group(name, tuple(sorted(paths)), sum(sizes[p] for p in paths))
            for name, paths in sorted(groups.items())
            if paths
        ],
        layout.max_layers,
    )


def _merge_to(groups: list[Group], limit: int) -> list[Group]:
    """Merge the two smallest groups until at most *limit* are left."""
    while len(groups) > limit:
        ordered = sorted(groups, key=lambda g: (g.size, g.name))
        a, b = ordered[0], ordered[1]
        name = f"{min(a.name, b.name)}+{max(a.name, b.name)}"
        merged = Group(name, tuple(sorted(a.paths + b.paths)), a.size + b.size)
        groups = sorted([g for g in groups if g not in (a, b)] + [merged], key=lambda g: g.name)
    return groups
