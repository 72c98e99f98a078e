"""A Debian bookworm tree with systemd for container boots, built once and cached.

The tree is made by debootstrap (minbase plus systemd, systemd-sysv and dbus)
and then prepared for quick boots under systemd-nspawn (see :func:`prepare_tree`).
It lives outside the work tree, so it survives between test runs::

    CACHE/                              $ATOLL_TEST_CACHE, else /var/cache/atoll-tests
    ├── .lock                           flock, held while building: one builder at a time
    ├── .build-XXXXXXXX/                a build in progress; one found while holding the
    │                                   lock is a leftover of a killed build and is removed
    └── debian-bookworm-KEY/            KEY: sha256 of RECIPE (suite, packages, mirror,
        │                               PREPARE_VERSION); renamed into place when complete
        ├── rootfs/                     the prepared tree: never boot or change it in place,
        │                               boot a copy made by make_deployment()
        ├── recipe.json                 RECIPE and how long the build took
        ├── base-layer.tar.gz           rootfs as an OCI layer, made on first use
        └── base-layer.json             its digest, diff_id and size; written after the layer

A change to the recipe (bump PREPARE_VERSION when prepare_tree() changes) gives
a new KEY and so a new build; older builds stay until removed by hand
(``rm -rf /var/cache/atoll-tests``).

:func:`build_debian_image` packs the tree into an OCI image layout without
atoll's code: the cached base layer, then a layer of additions (a fake kernel if
asked, and the caller's files).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.demo import basetree
from atoll.demo.basetree import MIRROR, PACKAGES, PREPARE_VERSION, SUITE, lock_cache
from atoll.demo.osimage import Blob as LayerBlob
from atoll.demo.osimage import tree_entries, write_layer
from helpers.osimage import KVER, FileSpec, Spec, _tar, publish_image
from helpers.parts import missing, require_tool

# The suite, mirror, packages and masked units are the demo's: one Debian base for both.
RECIPE = {
    "suite": SUITE,
    "variant": "minbase",
    "include": list(PACKAGES),
    "mirror": MIRROR,
    "prepare": PREPARE_VERSION,
}
DEFAULT_CACHE = Path("/var/cache/atoll-tests")


@dataclass(frozen=True)
class DebianTree:
    """A cached, prepared tree; ``rootfs`` must not be changed."""

    cache: Path

    @property
    def rootfs(self) -> Path:
        return self.cache / "rootfs"

    @property
    def recipe(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.cache / "recipe.json").read_text())
        return data


# Read when pytest loads this module as well: the autouse `hermetic` fixture clears
# ATOLL_* for each test, and the cache must not depend on the order fixtures run in.
_CACHE_AT_IMPORT = os.environ.get("ATOLL_TEST_CACHE")


def cache_root() -> Path:
    return Path(os.environ.get("ATOLL_TEST_CACHE") or _CACHE_AT_IMPORT or DEFAULT_CACHE)


#: The cache's own helpers, for the tests that use them through this module.
TreeRecipe = basetree.TreeRecipe
mounts_under = basetree.mounts_under


def recipe_key(recipe: dict[str, object] | None = None) -> str:
    data = RECIPE if recipe is None else recipe
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def ensure_debian_tree(cache: Path | None = None, recipe: TreeRecipe | None = None) -> DebianTree:
    """The cached tree, built first if there is none for the current recipe."""
    # A lambda: _debootstrap is looked up when called (tests replace it).
    tree = recipe or TreeRecipe(RECIPE, lambda t: _debootstrap(t), prepare_tree)  # noqa: PLW0108
    return DebianTree(basetree.ensure_tree(cache or cache_root(), tree).parent)


def _debootstrap(target: Path, packages: tuple[str, ...] = PACKAGES) -> None:
    basetree.debootstrap(target, packages)


def prepare_tree(root: Path) -> None:
    """Make a debootstrapped tree boot quickly and quietly under systemd-nspawn;
    root logs in on the console without a password
    (`systemd-nspawn -D ROOT --console=interactive -b`)."""
    basetree.prepare_tree(root, root_login=True)


def make_deployment(rootfs: Path, dest: Path, *, link_usr: bool = True) -> tuple[Path, Path]:
    """Copy *rootfs* for one boot; return (root, var).

    ``root`` is the deployment (its own /var empty, as atoll checks one out) and
    ``var`` a copy of the tree's /var to bind there. With *link_usr* /usr is
    hard-linked to the cache, which is safe only while /usr is read-only in the
    container: boot with ``readonly_usr=False`` only a copy made with link_usr=False.
    """
    root, var = dest / "root", dest / "var"
    root.mkdir(parents=True)
    for entry in sorted(rootfs.iterdir()):
        if entry.name in ("usr", "var"):
            continue
        _cp(["-a"], entry, root)
    _cp(["-al"] if link_usr else ["-a"], rootfs / "usr", root)
    (root / "var").mkdir()
    _cp(["-a"], rootfs / "var", dest)
    return root, var


def _cp(flags: list[str], src: Path, dest_dir: Path) -> None:
    subprocess.run(["cp", *flags, "--", str(src), str(dest_dir)], check=True)


def add_unit(root: Path, name: str, text: str, *, wanted_by: str = "multi-user.target") -> None:
    """Install and enable a unit in the deployment at *root*."""
    system = root / "etc/systemd/system"
    (system / name).write_text(text)
    wants = system / f"{wanted_by}.wants"
    wants.mkdir(exist_ok=True)
    (wants / name).symlink_to(f"../{name}")


# --- the OCI image ---------------------------------------------------------------------


def write_tree_layer(root: Path, dest: Path) -> LayerBlob:
    """Write *root* as a gzip tar layer to *dest*: sorted, numeric owners, no device nodes."""
    with dest.open("wb") as raw:
        return write_layer(raw, tree_entries(root))


def base_layer(tree: DebianTree) -> tuple[Path, LayerBlob]:
    """The tree as one layer, made once per cache entry."""
    blob, meta = tree.cache / "base-layer.tar.gz", tree.cache / "base-layer.json"
    if not meta.is_file():
        with lock_cache(tree.cache.parent):
            if not meta.is_file():
                tmp = blob.with_name(f".{blob.name}.{secrets.token_hex(4)}")
                try:
                    layer = write_tree_layer(tree.rootfs, tmp)
                    tmp.rename(blob)
                finally:
                    tmp.unlink(missing_ok=True)
                meta_tmp = meta.with_name(f".{meta.name}.tmp")
                meta_tmp.write_text(json.dumps(layer.__dict__))
                meta_tmp.rename(meta)
    return blob, LayerBlob(**json.loads(meta.read_text()))


def build_debian_image(
    layout: Path,
    ref: str,
    tree: DebianTree,
    *,
    version: str,
    add: Spec | None = None,
    kernel: bool = False,
) -> str:
    """Write the tree as an image to the OCI layout at *layout* under *ref*; return its digest.

    Layer 1 is the tree; layer 2, present when there is something to add, holds a
    fake kernel (``usr/lib/modules/KVER/vmlinuz`` and ``initramfs.img``, with
    *kernel*) and the files of *add* (None whites a path out)."""
    layout.mkdir(parents=True, exist_ok=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    base_path, base = base_layer(tree)
    target = blobs / base.digest.removeprefix("sha256:")
    if not target.exists():
        # A copy, not a hard link: a test that damages a blob must not damage the cache.
        shutil.copyfile(base_path, target)
    layers = [base]
    extra: Spec = {}
    if kernel:
        extra[f"usr/lib/modules/{KVER}/vmlinuz"] = FileSpec(b"KERNEL " + version.encode())
        extra[f"usr/lib/modules/{KVER}/initramfs.img"] = b"INITRAMFS " + version.encode()
    extra.update(add or {})
    if extra:
        tar = _tar(extra)
        gz = gzip.compress(tar, mtime=0)
        digest = _write_blob(layout, gz)
        layers.append(LayerBlob(digest, "sha256:" + hashlib.sha256(tar).hexdigest(), len(gz)))
    config: dict[str, object] = {
        "architecture": _oci_arch(),
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Labels": {"containers.bootc": "1", "org.opencontainers.image.version": version},
            "Cmd": ["/sbin/init"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created_by": f"debootstrap {SUITE} ({recipe_key()})"},
            *([{"created_by": "atoll test additions"}] if extra else []),
        ],
    }
    return publish_image(layout, ref, config, [(layer.digest, layer.size) for layer in layers])


def _write_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# --- the fixture -------------------------------------------------------------------------


def _require_container_boot() -> None:
    require_tool("debootstrap")
    require_tool("systemd-nspawn", "systemd-container")
    if os.geteuid() != 0:
        missing("booting a container with systemd-nspawn needs root")


@pytest.fixture(scope="session")
def debian_tree() -> DebianTree:
    """The cached Debian tree (built on first use: a minute or more)."""
    _require_container_boot()
    return ensure_debian_tree()


@pytest.fixture(scope="session")
def debian_rootfs(debian_tree: DebianTree) -> Path:
    """The prepared root directory of the cached tree; boot copies, not this."""
    return debian_tree.rootfs
