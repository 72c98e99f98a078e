"""The trees bench/transfer compares, made at bench time from Debian's mirror and cached.

::

    bench/.cache/transfer/
    ├── bookworm/            debootstrap --variant=minbase bookworm (the point release)
    ├── bookworm-security/   bookworm + apt-get upgrade from bookworm-security and -updates
    ├── bookworm-plus-one/   bookworm + one package (apt-get install --no-install-recommends)
    ├── bookworm-rebuilt/    bookworm with the files a rebuild rewrites touched a day later
    └── trixie/              debootstrap --variant=minbase trixie

Each tree is built under NAME.tmp and renamed into place when complete; apt's
lists and caches are emptied in every tree (as an image build does), so the
trees differ only in what the scenario changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
ONE_PACKAGE = "less"
#: Files a rebuild of the same tree writes afresh (the package manager's state).
REBUILT = ("var/lib/dpkg/status", "var/cache/debconf", "var/log", "etc/ld.so.cache")
TREES = ("bookworm", "bookworm-security", "bookworm-plus-one", "bookworm-rebuilt", "trixie")


def _run(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def _debootstrap(suite: str, target: Path) -> None:
    _run(
        ["debootstrap", "--variant=minbase", suite, str(target), MIRROR],
        stdout=subprocess.DEVNULL,
    )


def _clean_apt(root: Path) -> None:
    for sub in ("var/lib/apt/lists", "var/cache/apt"):
        for path in (root / sub).glob("*"):
            if path.is_file() and path.name != "lock":
                path.unlink()
            elif path.is_dir() and path.name not in ("partial", "archives"):
                shutil.rmtree(path)
        for path in (root / sub).glob("archives/*.deb"):
            path.unlink()


def _in_chroot(root: Path, script: str) -> None:
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    proc = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)])
    try:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C",
        }
        _run(["chroot", str(root), "/bin/sh", "-ec", script], env=env, stdout=subprocess.DEVNULL)
    finally:
        _run(["umount", "--lazy", str(proc)])


def _copy(src: Path, dst: Path) -> None:
    _run(["cp", "-a", str(src), str(dst)])


def _security(base: Path, target: Path) -> None:
    _copy(base, target)
    sources = (
        f"deb {MIRROR} bookworm main\n"
        f"deb {MIRROR} bookworm-updates main\n"
        f"deb {SECURITY} bookworm-security main\n"
    )
    (target / "etc/apt/sources.list").write_text(sources)
    _in_chroot(target, "apt-get -q update; apt-get -q -y upgrade")
    (target / "etc/apt/sources.list").write_text(f"deb {MIRROR} bookworm main\n")


def _plus_one(base: Path, target: Path) -> None:
    _copy(base, target)
    _in_chroot(
        target, f"apt-get -q update; apt-get -q -y install --no-install-recommends {ONE_PACKAGE}"
    )


def _rebuilt(base: Path, target: Path) -> None:
    _copy(base, target)
    later = time.time() + 86400
    for name in REBUILT:
        path = target / name
        walk = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in walk:
            os.utime(file, (later, later), follow_symlinks=False)


def ensure_corpora(cache: Path, log: bool = True) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    steps = {
        "bookworm": lambda t: _debootstrap("bookworm", t),
        "bookworm-security": lambda t: _security(cache / "bookworm", t),
        "bookworm-plus-one": lambda t: _plus_one(cache / "bookworm", t),
        "bookworm-rebuilt": lambda t: _rebuilt(cache / "bookworm", t),
        "trixie": lambda t: _debootstrap("trixie", t),
    }
    for name in TREES:
        final = cache / name
        if final.is_dir():
            continue
        tmp = cache / f"{name}.tmp"
        if tmp.exists():
            if (tmp / "proc").is_mount():
                _run(["umount", "--lazy", str(tmp / "proc")])
            shutil.rmtree(tmp)
        if log:
            print(f"making the {name} tree (once; cached in {cache}) ...", flush=True)
        started = time.monotonic()
        steps[name](tmp)
        _clean_apt(tmp)
        tmp.rename(final)
        if log:
            print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)
    return {name: cache / name for name in TREES}


if __name__ == "__main__":
    ensure_corpora(Path(__file__).resolve().parent / ".cache" / "transfer")
