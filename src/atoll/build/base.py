"""``atoll base create``: a base image for ``atoll build --blueprint`` made from
distribution packages.

The tree comes from debootstrap (the apt family) or ``dnf --installroot`` (the
dnf family, where the host has dnf) and is kept in a cache of the layout of
:mod:`atoll.treecache` (``$XDG_CACHE_HOME/atoll/base``, as root
``/var/cache/atoll/base``), keyed by the recipe: distribution, release, mirror
and package set.  The image has two layers: the tree, then atoll's own files
(the program, its units, the early-boot hook), and is written to any transport
atoll writes.

Reproducible: the same recipe and the same ``SOURCE_DATE_EPOCH`` give the same
digest.  The tree's entries are sorted, owners numeric, mtimes clamped to the
epoch, and the files a package install leaves that differ from run to run are
removed or emptied (:data:`VARYING`, the machine id, the host's resolv.conf).

Bytecode: a deployment's files have mtime 0, so the timestamp bytecode that the
packages compiled at install time is stale on a device (``atoll lint``'s
``python-bytecode``), and atoll's own modules come without bytecode.  The second
layer carries hash-checked bytecode for both, compiled by this host's Python
where its bytecode is the tree's (the same magic number); the tree's part is
kept beside the cached tree, so the tree itself is neither rebuilt nor changed.
Where the host's Python differs, the bytecode is left as it is and the lint
says so.

Initramfs: the packages made the kernel's initramfs before atoll's early-boot
hook was there.  The second layer carries one made again by the tree's own
generator (``mkinitramfs`` for the apt family, ``dracut`` for the dnf family)
with atoll's early-boot files added, in a chroot of a hard-linked copy of the
tree (the generator writes only its output), and kept beside the tree per
content of those files::

    CACHE/NAME-KEY/
    ├── rootfs/                             the tree (atoll.treecache)
    ├── bytecode-VERSION-MAGIC/usr/…        hash-checked bytecode at the tree's paths
    └── initramfs/DIGEST/KVER/initramfs.img DIGEST: atoll.boot.early_boot_digest()
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from atoll.boot.early import early_boot_digest, install_early_boot
from atoll.build.containerfile import write_additions
from atoll.errors import BaseImageError
from atoll.fsutil import resolve_in_root
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import copy_image
from atoll.oci.transports import ImageName
from atoll.requires import DEVICE_PACKAGES
from atoll.run import base_environment, find_tool, run
from atoll.timeutil import utc_timestamp
from atoll.treecache import (
    Blob,
    TreeRecipe,
    base_layer,
    ensure_tree,
    run_bootstrap,
    tree_entries,
    write_image_layout,
    write_layer,
)
from atoll.units import ATOLL_PACKAGE

APT_DISTROS = {
    "debian": "http://deb.debian.org/debian",
    "ubuntu": "http://archive.ubuntu.com/ubuntu",
}
DNF_DISTROS = frozenset({"fedora", "centos", "rhel", "almalinux", "rocky"})
#: systemd as init, and python3 with the modules atoll imports on a device.
#: What debootstrap installs; apt-get installs the rest of the packages.
APT_BOOTSTRAP = ("systemd", "systemd-sysv", "dbus")
APT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", *DEVICE_PACKAGES)
DNF_PACKAGES = ("systemd", "python3", "python3-httpx", "python3-zstandard", "python3-cryptography")
#: Bump when _prepare() changes what it does: that rebuilds the cached trees.
PREPARE_VERSION = 1
#: Files that differ between two installs of the same packages: removed (globs).
VARYING = (
    "var/log/**/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/cache/ldconfig/aux-cache",
    "var/cache/dnf/**/*",
    "var/lib/dnf/history*",
    "var/lib/rpm/__db*",
    "var/lib/dbus/machine-id",
    "etc/hostname",
    "vmlinuz",
    "vmlinuz.old",
    "initrd.img",
    "initrd.img.old",
)
#: Bump when tree_bytecode() changes what it makes: it is made again beside each tree.
BYTECODE_VERSION = 1
#: 2026-01-01: the epoch when SOURCE_DATE_EPOCH is not set.
DEFAULT_EPOCH = 1_767_225_600


@dataclass(frozen=True)
class BaseSpec:
    distro: str
    release: str
    mirror: str | None = None
    packages: tuple[str, ...] = ()
    kernel: bool = True

    @property
    def family(self) -> str:
        if self.distro in APT_DISTROS:
            return "apt"
        if self.distro in DNF_DISTROS:
            return "dnf"
        known = ", ".join(sorted([*APT_DISTROS, *DNF_DISTROS]))
        raise BaseImageError(
            f"no way to make a base of {self.distro!r}", hint=f"--distro is one of {known}"
        )

    def all_packages(self) -> tuple[str, ...]:
        if self.family == "apt":
            kernel = ("linux-image-" + _deb_arch(), "initramfs-tools") if self.kernel else ()
            wanted = (*APT_PACKAGES, *kernel, *self.packages)
        else:
            kernel = ("kernel", "dracut") if self.kernel else ()
            wanted = (*DNF_PACKAGES, *kernel, *self.packages)
        return tuple(sorted(set(wanted)))

    def recipe(self) -> dict[str, object]:
        return {
            "suite": self.release,
            "distro": self.distro,
            "mirror": self.mirror or APT_DISTROS.get(self.distro, ""),
            "include": list(self.all_packages()),
            "prepare": PREPARE_VERSION,
            "base": 1,
        }


@dataclass(frozen=True)
class CreatedBase:
    digest: Digest
    tree: Path
    packages: tuple[str, ...]


def default_cache() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/atoll/base")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "atoll" / "base"


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_EPOCH
    if not value.isdigit():
        raise BaseImageError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
            hint="set it to a Unix time, e.g. $(git log -1 --format=%ct)",
        )
    return int(value)


def create_base(
    spec: BaseSpec,
    dest: ImageName | str,
    *,
    cache: Path | None = None,
    ctx: SystemContext | None = None,
) -> CreatedBase:
    """Make (or take from the cache) the tree of *spec* and write it with atoll's
    files as an image to *dest*."""
    target = ImageName.parse(dest) if isinstance(dest, str) else dest
    recipe = TreeRecipe(
        spec.recipe(), lambda root: _bootstrap(spec, root), lambda root: _prepare(spec, root)
    )
    if not (recipe.entry(cache or default_cache()) / "recipe.json").is_file():
        bootstrap_tool(spec)  # a missing tool fails before the cache is touched
    tree = ensure_tree(cache or default_cache(), recipe)
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="atoll-base-") as tmp:
        layout = Path(tmp) / "layout"
        additions = Path(tmp) / "additions"
        staged = Path(tmp) / "staged"
        write_additions(additions)
        family_hook = additions / "boot" / ("debian" if spec.family == "apt" else "fedora")
        for part in (additions / "atoll", additions / "units", family_hook):
            if part.is_dir():
                shutil.copytree(part, staged, symlinks=True, dirs_exist_ok=True)
        # What the second layer replaces is left out of the tree's layer.
        replaced: set[str] = set()
        if host_compiles_for(tree):
            bytecode = tree_bytecode(tree)
            shutil.copytree(bytecode, staged, symlinks=True, dirs_exist_ok=True)
            replaced |= {p.relative_to(bytecode).as_posix() for p in bytecode.rglob("*.pyc")}
            compile_hashed(staged, [staged / ATOLL_PACKAGE])
        if spec.kernel:
            for kver, image in tree_initramfs(tree, epoch, spec.family).items():
                (staged / "usr/lib/modules" / kver).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, staged / "usr/lib/modules" / kver / "initramfs.img")
                replaced.add(f"usr/lib/modules/{kver}/initramfs.img")
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        # The tree's layer is kept beside the tree: packing it takes most of a minute.
        cached, base = base_layer(tree, tree.parent, clamp=epoch, leave_out=frozenset(replaced))
        shutil.copyfile(cached, blobs / base.digest.removeprefix("sha256:"))
        layers = [base, _layer(staged, blobs, epoch)]
        _write_layout(layout, layers, spec, epoch)
        result = copy_image(ImageName.parse(f"oci:{layout}:base"), target, src_ctx=ctx)
    return CreatedBase(result.digest, tree, spec.all_packages())


def host_compiles_for(tree: Path) -> bool:
    """Does this Python write the bytecode the tree's python3 reads: the same
    version (``usr/lib/python3.N``) and, where the tree has bytecode, its magic number?"""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not (tree / "usr/lib" / version).is_dir():
        return False
    magic = importlib.util.MAGIC_NUMBER
    for pyc in (tree / "usr/lib" / version / "__pycache__").glob("*.pyc"):
        with pyc.open("rb") as fh:
            return fh.read(len(magic)) == magic
    return True


def stale_bytecode(tree: Path) -> dict[Path, Path]:
    """The sources under the tree's /usr whose bytecode records their mtime (which
    is not 0), stale once deployed: each with the file it is (a symlink followed
    inside the tree, as Python on the device reads it)."""
    from atoll.build.lint import stale_on_device

    sources: dict[Path, Path] = {}
    for pyc in sorted((tree / "usr").rglob("__pycache__/*.pyc")):
        with pyc.open("rb") as fh:
            if not stale_on_device(fh.read(16)):
                continue
        try:
            source = Path(importlib.util.source_from_cache(str(pyc)))
        except ValueError:  # another Python's, or optimised: not this host's to write
            continue
        try:
            content = resolve_in_root(tree, "/" + str(source.relative_to(tree)))
        except OSError:
            continue
        if content.is_file():
            sources[source] = content
    return sources


def tree_bytecode(tree: Path) -> Path:
    """A directory beside the (cached, never changed) *tree* with hash-checked
    bytecode for its stale bytecode, at the same paths; made once."""
    done = tree.parent / f"bytecode-{BYTECODE_VERSION}-{importlib.util.MAGIC_NUMBER.hex()}"
    if done.is_dir():
        return done
    work = tree.parent / f".bytecode-{secrets.token_hex(4)}"
    try:
        for source, content in stale_bytecode(tree).items():
            rel = source.relative_to(tree)
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(content, work / rel)
        compile_hashed(work, [work / "usr"])
        for copied in [p for p in work.rglob("*.py") if "__pycache__" not in p.parts]:
            copied.unlink()
        work.rename(done)
    except OSError:
        if not done.is_dir():  # not another process having made it first
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


def tree_initramfs(tree: Path, epoch: int, family: str = "apt") -> dict[str, Path]:
    """For each kernel of the (cached, never changed) *tree*, an initramfs with
    atoll's early-boot step, made by the generator the *family*'s trees carry
    (:func:`generator_argv`), once per content of the early-boot files."""
    kvers = sorted(p.parent.name for p in tree.glob("usr/lib/modules/*/vmlinuz"))
    made = {}
    for kver in kvers:
        final = tree.parent / "initramfs" / early_boot_digest()[:16] / kver / "initramfs.img"
        if not final.is_file():
            _make_initramfs(tree, kver, final, epoch, family)
        made[kver] = final
    return made


def generator_argv(family: str, kver: str) -> list[str]:
    """The command that makes kernel *kver*'s initramfs at ``/initramfs.img`` in
    a tree of *family*: initramfs-tools' ``mkinitramfs`` (apt), ``dracut`` (dnf)
    not host-only, as the image boots on machines other than the one that made
    it; both read the tree's own configuration (``/etc/initramfs-tools``,
    ``/etc/dracut.conf.d``)."""
    if family == "apt":
        return ["mkinitramfs", "-o", "/initramfs.img", kver]
    return [
        "dracut", "--quiet", "--force", "--reproducible", "--no-hostonly",
        "--no-hostonly-cmdline", "--add", "atoll", "--kver", kver, "/initramfs.img",
    ]  # fmt: skip


def _make_initramfs(tree: Path, kver: str, final: Path, epoch: int, family: str) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as work:
        root = Path(work) / "root"
        # Hard links are safe: the generators write only their output, and the
        # files added here replace links instead of writing through them.
        run(["cp", "-al", "--", tree, root])
        install_early_boot(root)
        if family == "apt":  # mkinitramfs reads which compressions the kernel unpacks
            _kernel_config(root, kver)
        env = base_environment({"SOURCE_DATE_EPOCH": str(epoch)})
        mount_proc = 'mount -t proc proc "$1/proc" && exec chroot "$@"'
        argv: list[str | Path] = ["unshare", "--mount", "sh", "-c", mount_proc, "-", root]
        run([*argv, *generator_argv(family, kver)], env=env)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.copyfile(root / "initramfs.img", tmp)
        tmp.rename(final)


#: The first bytes of an initramfs compressed by each compressor mkinitramfs knows,
#: and the kernel option that unpacks it.
_COMPRESSED = {
    b"\x28\xb5\x2f\xfd": "CONFIG_RD_ZSTD",
    b"\x1f\x8b": "CONFIG_RD_GZIP",
    b"\xfd7zXZ": "CONFIG_RD_XZ",
    b"\x02\x21\x4c\x18": "CONFIG_RD_LZ4",
}


def _kernel_config(root: Path, kver: str) -> None:
    """``/boot/config-KVER`` for mkinitramfs, which reads there which compressions
    the kernel unpacks.  The tree's /boot was emptied when it was prepared: the
    kernel's own config where the tree keeps one (``usr/lib/modules/KVER/config``),
    else the option of the compression of the initramfs the packages made (which
    mkinitramfs chose after reading the config then)."""
    modules = root / "usr/lib/modules" / kver
    dest = root / "boot" / f"config-{kver}"
    dest.parent.mkdir(exist_ok=True)
    if (modules / "config").is_file():
        shutil.copyfile(modules / "config", dest)
        return
    head = (
        (modules / "initramfs.img").read_bytes()[:6]
        if (modules / "initramfs.img").is_file()
        else b""
    )
    option = next((o for magic, o in _COMPRESSED.items() if head.startswith(magic)), None)
    if option is None:
        raise BaseImageError(
            f"{modules}: no kernel config and no initramfs to tell which compression "
            "the kernel unpacks: cannot make an initramfs with atoll's early-boot step"
        )
    dest.write_text(f"{option}=y\n")


def compile_hashed(root: Path, dirs: list[Path]) -> None:
    """Hash-checked bytecode for the modules in *dirs* (under *root*, which stands
    for the image's /), by this Python in a process of its own with a fixed hash
    seed and in one worker: the same sources give the same bytes (marshal marks
    objects shared within a process, so workers that split the files differently
    would write different ones)."""
    existing = [str(d) for d in dirs if d.is_dir()]
    if not existing:
        return
    argv = [sys.executable, "-m", "compileall", "-q", "-f"]
    argv += ["--invalidation-mode", "checked-hash", "-s", str(root), "-p", "/", *existing]
    run(argv, env=base_environment({"PYTHONHASHSEED": "0"}))


def _layer(root: Path, blobs: Path, epoch: int) -> Blob:
    fd, name = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as out:
        blob = write_layer(out, tree_entries(root, clamp=epoch))
    Path(name).replace(blobs / blob.digest.removeprefix("sha256:"))
    return blob


def _write_layout(layout: Path, layers: list[Blob], spec: BaseSpec, epoch: int) -> None:
    created = utc_timestamp(epoch)
    config = json.dumps(
        {
            "architecture": _oci_arch(),
            "os": "linux",
            "created": created,
            "config": {
                "Labels": {
                    "containers.bootc": "1",
                    "org.opencontainers.image.title": f"{spec.distro} {spec.release} base",
                    "org.opencontainers.image.version": spec.release,
                },
                "Cmd": ["/sbin/init"],
            },
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
            "history": [
                {"created": created, "created_by": f"atoll base create: {spec.distro} packages"},
                {"created": created, "created_by": "atoll base create: atoll and its units"},
            ],
        },
        sort_keys=True,
    ).encode()
    write_image_layout(layout, config, layers, "base")


def _deb_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _oci_arch() -> str:
    return _deb_arch()


def bootstrap_tool(spec: BaseSpec) -> str:
    """The program that makes *spec*'s tree on this host (debootstrap, dnf), or
    an error naming what is missing, before anything is written."""
    if spec.family == "apt":
        return find_tool("debootstrap")
    dnf = shutil.which("dnf") or shutil.which("dnf5")
    if dnf is None:
        raise BaseImageError(
            f"a {spec.distro} base needs dnf (or dnf5) on this host, and there is none",
            hint="run atoll base create on a host with dnf (e.g. in a Fedora container)",
        )
    return dnf


def _bootstrap(spec: BaseSpec, root: Path) -> None:
    packages = spec.all_packages()
    if spec.family == "apt":
        # debootstrap configures --include'd packages in an order of its own, which
        # python3 modules do not survive (their postinst needs python3 configured):
        # it makes the init system only, apt installs the rest.
        run_bootstrap(
            [
                bootstrap_tool(spec),
                "--variant=minbase",
                f"--include={','.join(APT_BOOTSTRAP)}",
                spec.release,
                str(root),
                spec.mirror or APT_DISTROS[spec.distro],
            ]
        )
        rest = [p for p in packages if p not in APT_BOOTSTRAP]
        run(["mount", "-t", "proc", "proc", root / "proc"])
        try:
            _chroot_apt(root, ["update"])
            _chroot_apt(root, ["install", "-y", "--no-install-recommends", *rest])
            _chroot_apt(root, ["clean"])
        finally:
            run(["umount", "--lazy", root / "proc"], check=False)
        return
    root.mkdir(parents=True)
    argv = [
        bootstrap_tool(spec),
        "--installroot",
        str(root),
        "--releasever",
        spec.release,
        "--setopt=install_weak_deps=False",
        "--assumeyes",
        *([f"--repofrompath=base,{spec.mirror}", "--repo=base"] if spec.mirror else []),
        "install",
        *packages,
    ]
    run_bootstrap(argv)


def _chroot_apt(root: Path, args: list[str]) -> None:
    env = {
        "DEBIAN_FRONTEND": "noninteractive",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
    }
    run_bootstrap(["chroot", str(root), "apt-get", *args], env=env)


def _prepare(spec: BaseSpec, root: Path) -> None:
    """Kernels to /usr/lib/modules/KVER (vmlinuz, initramfs.img), /boot emptied,
    the files that vary between installs removed, no machine id of the build host."""
    boot = root / "boot"
    for vmlinuz in sorted(boot.glob("vmlinuz-*")):
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        modules = root / "usr/lib/modules" / kver
        modules.mkdir(parents=True, exist_ok=True)
        shutil.move(vmlinuz, modules / "vmlinuz")
        for initrd in (boot / f"initrd.img-{kver}", boot / f"initramfs-{kver}.img"):
            if initrd.is_file():
                shutil.move(initrd, modules / "initramfs.img")
    if boot.is_dir():
        for entry in boot.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for pattern in VARYING:
        # A literal name is looked at itself: glob skips dangling symlinks (/vmlinuz).
        found = list(root.glob(pattern)) if "*" in pattern else [root / pattern]
        for path in found:
            if path.is_file() or path.is_symlink():
                path.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
