"""The demo's base OS: a Debian trixie tree with systemd, python3, podman and keepalived
(the tests' trees start from the same bookworm packages, without the last three).

Made once per machine with debootstrap and kept in a cache, because it takes a
minute and fetches about 40 MB from deb.debian.org.  The tests keep their
trees (this one, and others: :class:`TreeRecipe`) in a cache of the same
layout, built by the same code::

    CACHE/                          --cache DIR, $ATOLL_DEMO_CACHE, else /var/cache/atoll/demo
    ├── .lock                       flock held while building: one builder at a time
    ├── .build-XXXXXXXX/            a build in progress; one found while holding the
    │                               lock is a leftover of a killed build and is removed
    └── debian-SUITE-KEY/           KEY: a hash of the recipe; renamed into place when done
        ├── rootfs/                 the prepared tree (never booted or changed in place)
        └── recipe.json             the recipe and how long debootstrap took

Prepared for quick container boots: timers and units that make no sense in a
container are masked, /etc/machine-id is empty (a new id each boot), there is
no /etc/hostname (the machine name is used), and apt's lists and downloaded
packages are removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from atoll.run import find_tool
from atoll.treecache import (
    TreeRecipe,
    ensure_tree,
    lock_cache,
    mounts_under,
    remove_build,
    run_bootstrap,
)

__all__ = ["TreeRecipe", "ensure_tree", "lock_cache", "mounts_under", "remove_build"]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: python3 runs atoll inside the booted image: its units call it.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3-minimal", "libpython3-stdlib")
#: Bump when prepare_tree() changes what it does: that rebuilds the caches.
PREPARE_VERSION = 1
DEFAULT_CACHE = Path("/var/cache/atoll/demo")
#: Units that slow a container boot, fail in a container or start timers: masked.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "systemd-networkd-wait-online.service",
    "systemd-timesyncd.service",
    "systemd-firstboot.service",
    "console-getty.service",
    "getty@tty1.service",
)


def recipe() -> dict[str, object]:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "include": list(PACKAGES),
        "mirror": MIRROR,
        "prepare": PREPARE_VERSION,
    }


def cache_dir(given: Path | None = None) -> Path:
    return given or Path(os.environ.get("ATOLL_DEMO_CACHE") or DEFAULT_CACHE)


#: The demo's devices run their workload under their own podman and fail over
#: with keepalived: Debian trixie (podman 5) with both, and what atoll imports.
DEMO_SUITE = "trixie"
DEMO_PACKAGES = (
    *PACKAGES,
    "podman",
    "crun",
    "conmon",
    "netavark",
    "keepalived",
    "iproute2",
    "python3-httpx",
    "python3-zstandard",
    "python3-cryptography",
    # What zstandard and cryptography depend on through a virtual package
    # (python3-cffi-backend-api-*), which debootstrap does not resolve by itself.
    "python3-cffi-backend",
)


def demo_recipe() -> TreeRecipe:
    return TreeRecipe(
        {**recipe(), "suite": DEMO_SUITE, "include": list(DEMO_PACKAGES)},
        lambda target: debootstrap(target, DEMO_PACKAGES, suite=DEMO_SUITE),
        _prepare_demo_tree,
    )


def _prepare_demo_tree(root: Path) -> None:
    prepare_tree(root)
    # Each device's keepalived.conf is written at boot from its own settings.
    (root / "etc/keepalived/keepalived.conf").unlink(missing_ok=True)
    for unit in ("podman-auto-update.timer", "podman-clean-transient.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")


def cached_tree(cache: Path) -> Path | None:
    """The prepared tree if it is in the cache already."""
    final = demo_recipe().entry(cache)
    return final / "rootfs" if (final / "recipe.json").is_file() else None


def debootstrap(target: Path, packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> None:
    """A minbase Debian *suite* tree with *packages* at *target*, from the mirror."""
    argv = [
        find_tool("debootstrap"),
        "--variant=minbase",
        f"--include={','.join(packages)}",
        suite,
        str(target),
        MIRROR,
    ]
    run_bootstrap(argv)


def prepare_tree(root: Path, *, root_login: bool = False) -> None:
    """Make a debootstrapped tree boot quickly and quietly under systemd-nspawn;
    with *root_login*, root logs in on the console without a password."""
    system = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        for wants in system.glob(f"*.wants/{unit}"):
            wants.unlink()
        link = system / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Empty: systemd makes up an id at each boot (from the container's UUID), as on
    # a freshly installed image. dbus's own copy would be used instead, so it goes.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # No /etc/hostname: the container is called by its machine name.
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    (root / "etc/resolv.conf").write_text("")  # debootstrap copied the host's
    if root_login:
        shadow = root / "etc/shadow"
        lines = [
            ":".join(["root", "", *line.split(":")[2:]]) if line.startswith("root:") else line
            for line in shadow.read_text().splitlines()
        ]
        shadow.write_text("\n".join(lines) + "\n")
    # Package lists and downloaded .debs: a third of the tree, needed by nothing here.
    for junk in (root / "var/lib/apt/lists", root / "var/cache/apt"):
        for entry in junk.iterdir():
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
            elif entry.is_dir() and entry.name == "archives":
                for deb in entry.glob("*.deb"):
                    deb.unlink()
    for log in (root / "var/log").rglob("*.log"):
        log.write_text("")
