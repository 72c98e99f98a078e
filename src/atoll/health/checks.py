"""Finding the checks: greenboot's directories, merged by name.

Each kind of script has two directories inside the root, the image's and the
administrator's::

    /usr/lib/greenboot/check/required.d/   /etc/greenboot/check/required.d/   must pass
    /usr/lib/greenboot/check/wanted.d/     /etc/greenboot/check/wanted.d/     may fail
    /usr/lib/greenboot/green.d/            /etc/greenboot/green.d/            after a green boot
    /usr/lib/greenboot/red.d/              /etc/greenboot/red.d/              after a red boot

Rules (see docs/health.md for how they compare with greenboot's):

* The two directories of a kind are merged and run in the byte order of the
  file names (``LC_ALL=C sort``), whichever directory a script is in.
* A script in ``/etc`` replaces the one of the same name in ``/usr/lib``; a
  symlink in ``/etc`` to ``/dev/null`` masks it (nothing of that name runs).
* Hidden files and package-manager or editor leftovers (``*.rpmnew``,
  ``*.dpkg-old``, ``*~``, ...) are ignored; so, with a warning, is anything that
  is not a regular file (a directory, a dangling symlink).
* A name in ``DISABLED_HEALTHCHECKS`` does not run; it is listed as disabled.
* A file without an execute bit cannot run.  A required check that cannot run
  fails the boot; a wanted, green or red script that cannot run is a warning.

Symlinks are followed as the checks will see them: inside the root.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from atoll.fsutil import resolve_in_root
from atoll.health.config import HealthConfig


class CheckKind(StrEnum):
    REQUIRED = "required"
    WANTED = "wanted"
    GREEN = "green"
    RED = "red"
    #: atoll's built-in watchdog check, which runs with the required ones.
    WATCHDOG = "watchdog"


#: The directories of each kind of script, inside the root, lowest precedence first.
SEARCH_DIRS: dict[CheckKind, tuple[str, str]] = {
    CheckKind.REQUIRED: ("/usr/lib/greenboot/check/required.d", "/etc/greenboot/check/required.d"),
    CheckKind.WANTED: ("/usr/lib/greenboot/check/wanted.d", "/etc/greenboot/check/wanted.d"),
    CheckKind.GREEN: ("/usr/lib/greenboot/green.d", "/etc/greenboot/green.d"),
    CheckKind.RED: ("/usr/lib/greenboot/red.d", "/etc/greenboot/red.d"),
}

#: Names the built-in watchdog check answers to in DISABLED_HEALTHCHECKS
#: (the second is greenboot's script that it stands in for).
WATCHDOG_NAMES = ("watchdog", "02_watchdog.sh")

_IGNORED_SUFFIXES = (
    "~",
    ".rpmnew",
    ".rpmsave",
    ".rpmorig",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-dist",
    ".dpkg-tmp",
    ".dpkg-bak",
    ".ucf-old",
    ".ucf-new",
    ".ucf-dist",
    ".swp",
)


@dataclass(frozen=True)
class Check:
    """One script found in the check directories."""

    name: str
    kind: CheckKind
    #: Where it is, as seen inside the root: ``/etc/greenboot/check/required.d/10-x.sh``.
    path: str
    #: Why it does not run although it could (disabled, masked); None: it runs.
    skip_reason: str | None = None
    #: True when greenboot.conf turned it off (DISABLED_HEALTHCHECKS).
    disabled: bool = False
    #: Why it cannot run (not executable); None: nothing wrong.
    problem: str | None = None
    #: The ``/usr/lib`` script of the same name this one replaces.
    overrides: str | None = None

    @property
    def runnable(self) -> bool:
        return self.skip_reason is None and self.problem is None


@dataclass(frozen=True)
class CheckPlan:
    """Every script of every kind, in the order they run."""

    required: tuple[Check, ...] = ()
    wanted: tuple[Check, ...] = ()
    green: tuple[Check, ...] = ()
    red: tuple[Check, ...] = ()
    warnings: tuple[str, ...] = ()

    def of_kind(self, kind: CheckKind) -> tuple[Check, ...]:
        return {
            CheckKind.REQUIRED: self.required,
            CheckKind.WANTED: self.wanted,
            CheckKind.GREEN: self.green,
            CheckKind.RED: self.red,
        }.get(kind, ())

    @property
    def skipped(self) -> tuple[Check, ...]:
        return tuple(
            c for c in (*self.required, *self.wanted, *self.green, *self.red) if c.skip_reason
        )


def discover(root: Path, config: HealthConfig) -> CheckPlan:
    """The checks and green/red scripts of the system at *root*."""
    warnings: list[str] = []
    found: dict[CheckKind, tuple[Check, ...]] = {}
    names_seen: set[str] = set()
    for kind, dirs in SEARCH_DIRS.items():
        checks = _merge(root, kind, dirs, config, warnings)
        names_seen.update(c.name for c in checks)
        found[kind] = checks
    for name in sorted(config.disabled - names_seen - set(WATCHDOG_NAMES)):
        warnings.append(
            f"DISABLED_HEALTHCHECKS names {name!r}, but no check has that name (misspelled?)"
        )
    return CheckPlan(
        required=found[CheckKind.REQUIRED],
        wanted=found[CheckKind.WANTED],
        green=found[CheckKind.GREEN],
        red=found[CheckKind.RED],
        warnings=tuple(warnings),
    )


def _merge(
    root: Path, kind: CheckKind, dirs: tuple[str, ...], config: HealthConfig, warnings: list[str]
) -> tuple[Check, ...]:
    chosen: dict[str, Check] = {}
    for directory in dirs:
        for name in _list(root, directory, warnings):
            inside = f"{directory}/{name}"
            replaced = chosen.get(name)
            check = _examine(root, kind, name, inside, config, warnings)
            if check is None:
                continue
            if replaced is not None:
                check = replace(check, overrides=replaced.path)
            chosen[name] = check
    return tuple(chosen[name] for name in sorted(chosen, key=lambda n: n.encode()))


def _list(root: Path, directory: str, warnings: list[str]) -> list[str]:
    try:
        host = resolve_in_root(root, directory)
        names = [p.name for p in host.iterdir()]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        warnings.append(f"{directory}: not a directory; no scripts read from it")
        return []
    except OSError as exc:
        warnings.append(f"{directory}: cannot be read ({exc.strerror}); no scripts read from it")
        return []
    return sorted(n for n in names if not n.startswith(".") and not n.endswith(_IGNORED_SUFFIXES))


def _examine(
    root: Path,
    kind: CheckKind,
    name: str,
    inside: str,
    config: HealthConfig,
    warnings: list[str],
) -> Check | None:
    link = root / inside.lstrip("/")
    if link.is_symlink() and str(link.readlink()) == "/dev/null":
        return Check(name, kind, inside, skip_reason=f"masked: {inside} is a symlink to /dev/null")
    if name in config.disabled:
        return Check(name, kind, inside, skip_reason="disabled in greenboot.conf", disabled=True)
    try:
        info = resolve_in_root(root, inside).stat()
    except OSError as exc:
        warnings.append(f"{inside}: {exc.strerror or exc}; ignored")
        return None
    if not stat.S_ISREG(info.st_mode):
        warnings.append(f"{inside}: not a regular file; ignored")
        return None
    if info.st_mode & 0o111:
        return Check(name, kind, inside)
    problem = f"not executable (chmod +x {inside})"
    if kind is not CheckKind.REQUIRED:
        warnings.append(f"{inside}: {problem}: it does not run")
    return Check(name, kind, inside, problem=problem)
