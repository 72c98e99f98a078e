"""The demo's OS: a base image written from the Debian tree, and three blueprints.

The base image (``oci:WORKDIR/images:base``) is the tree as one layer (made once
and kept in the cache) and, when the demo is given an apt source, a second
layer making it the image's only apt source. ``atoll build --blueprint`` turns it
into the three versions of the story (atoll and its units are added by the
build)::

    v1.0  wanted check 00-remember.sh (notes the deployment of the first boot)
    v2.0  + the strace package, a required check 50-web-config.sh and
          /usr/lib/edge/web.conf with a typo: the check fails, every boot is red
    v3.0  web.conf fixed: the check passes

The images carry no kernel: the container-boot device boots the tree with
systemd-nspawn. So the builds skip the bootable-image lint (``--no-lint``) and
install and upgrade take ``--allow-no-kernel``.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from atoll.treecache import (
    Blob,
    _Entry,
    base_layer,
    put_blob,
    tree_entries,
    write_image_layout,
    write_layer,
)

__all__ = ["Blob", "tree_entries", "write_layer"]

PACKAGE = "usr/bin/strace"
CHECK = "50-web-config.sh"

REMEMBER = """#!/bin/sh
# Note which deployment booted first (kept in /var, which updates never touch).
mkdir -p /var/lib/edge
[ -f /var/lib/edge/first ] || echo "$ATOLL_DEPLOYMENT" > /var/lib/edge/first
"""
WEB_CONFIG_CHECK = """#!/bin/sh
# The web service needs a port in its configuration.
if ! grep -q '^port=' /usr/lib/edge/web.conf; then
  echo "/usr/lib/edge/web.conf sets no port= (found: $(head -n1 /usr/lib/edge/web.conf))"
  exit 1
fi
"""


@dataclass(frozen=True)
class OSVersion:
    version: str
    blueprint: str
    note: str


def _file(path: str, data: str, mode: str = "0644") -> str:
    body = data.replace("\\", "\\\\").replace('"""', '\\"""')
    return f'[[customizations.files]]\npath = "{path}"\nmode = "{mode}"\ndata = """\n{body}"""\n'


def versions() -> list[OSVersion]:
    top = 'name = "edge-os"\ndescription = "The demo\'s edge OS"\nversion = "{v}"\n\n'
    # keepalived and the unit that writes its configuration from /etc/atoll/failover.toml.
    top += "[customizations.failover]\nenabled = true\n\n"
    remember = _file("/usr/lib/greenboot/check/wanted.d/00-remember.sh", REMEMBER, "0755")
    check = _file(f"/usr/lib/greenboot/check/required.d/{CHECK}", WEB_CONFIG_CHECK, "0755")
    strace = '[[packages]]\nname = "strace"\n\n'
    return [
        OSVersion("1.0", top.format(v="1.0") + remember, "the base with atoll, a wanted check"),
        OSVersion(
            "2.0",
            top.format(v="2.0")
            + strace
            + remember
            + check
            + _file("/usr/lib/edge/web.conf", "listen=8080\n")
            + _file("/etc/greenboot/greenboot.conf", "GREENBOOT_MAX_BOOT_ATTEMPTS=2\n"),
            "adds strace and a required check; web.conf has a typo; two boot attempts",
        ),
        OSVersion(
            "3.0",
            top.format(v="3.0")
            + strace
            + remember
            + check
            + _file("/usr/lib/edge/web.conf", "port=8080\n"),
            "web.conf fixed: the check passes",
        ),
    ]


def write_base(layout: Path, tree: Path, cache: Path, apt_source: str | None) -> str:
    """Write the base image to the OCI layout *layout* as ``base``; return its digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    base_path, base = base_layer(tree, cache)
    target = blobs / base.digest.removeprefix("sha256:")
    if not target.exists():
        shutil.copyfile(base_path, target)
    layers = [base]
    if apt_source:
        raw = io.BytesIO()
        layers.append(write_layer(raw, list(_file_entries(_apt_files(tree, apt_source), set()))))
        put_blob(blobs, raw.getvalue())
    return _publish(layout, layers, "0")


def _apt_files(tree: Path, apt_source: str) -> dict[str, tuple[bytes, int]]:
    """The apt source as the image's only one: ``/etc/apt/sources.list`` replaced, and
    each file of the tree's ``sources.list.d`` removed by a whiteout.  The builds
    install the blueprints' packages and those atoll needs on a device
    (python3-zstandard, …) from there alone."""
    files = {"etc/apt/sources.list": ((apt_source.strip() + "\n").encode(), 0o644)}
    parts = tree / "etc/apt/sources.list.d"
    for entry in sorted(parts.iterdir()) if parts.is_dir() else []:
        files[f"etc/apt/sources.list.d/.wh.{entry.name}"] = (b"", 0o644)
    return files


def _publish(layout: Path, layers: list[Blob], version: str) -> str:
    config = json.dumps(
        {
            "architecture": _arch(),
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "Labels": {
                    "containers.bootc": "1",
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.title": "Debian bookworm for the atoll demo",
                },
                "Cmd": ["/sbin/init"],
            },
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
            "history": [
                {"created_by": "debootstrap bookworm (systemd, python3)"},
                *([{"created_by": "apt sources"}] if len(layers) > 1 else []),
            ],
        },
        sort_keys=True,
    ).encode()
    return write_image_layout(layout, config, layers, "base")


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# --- tar layers --------------------------------------------------------------------------


def _file_entries(files: Mapping[str, tuple[bytes, int]], known: set[str]) -> Iterator[_Entry]:
    dirs = set(known)
    for name in sorted(files):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in dirs:
                dirs.add(parent)
                info = tarfile.TarInfo(parent)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_767_225_600
                yield info, None
        data, mode = files[name]
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 1_767_225_600
        yield info, data
