"""A Debian bookworm tree that boots on a virtual machine, and images made from it.

The tree is the container tree's recipe (tests/helpers/debian.py) plus a kernel,
initramfs-tools and udev, cached the same way under its own key::

    CACHE/debian-bookworm-KEY/          KEY: sha256 of VM_RECIPE
    ├── rootfs/                         kernel at usr/lib/modules/KVER/vmlinuz, no initramfs
    ├── base-layer.tar.gz               the tree as one OCI layer (helpers.debian.base_layer)
    ├── initramfs/DIGEST/KVER/initramfs.img       mkinitramfs's, per content of atoll's
    │                                             early-boot files (DIGEST)
    ├── modules-xfs/                    the tree with xfs in initramfs-tools' module list
    │   ├── rootfs/
    │   └── initramfs/DIGEST/KVER/initramfs.img   mkinitramfs's, for an XFS root
    └── dracut-core_VERSION-CONF/       the tree with dracut-core unpacked into it
        ├── rootfs/
        └── initramfs/DIGEST/KVER/initramfs.img   dracut's

Both initramfs images are made by the function ``atoll base create`` uses
(:func:`atoll.build.base.tree_initramfs`), in a chroot of a copy of the tree
with atoll's early-boot files added: the tree's own ``mkinitramfs``
(``MODULES=list``: only virtio and ext4, and XFS for an XFS root), or dracut
(the Fedora/RHEL family's generator, which cannot be installed beside
initramfs-tools, so it is unpacked into a copy of the tree).  Changing the hook makes new ones.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from atoll.boot import install_early_boot
from atoll.build.base import source_date_epoch, tree_initramfs
from atoll.requires import DEVICE_PACKAGES
from atoll.units import install_atoll, install_units
from helpers import debian
from helpers.osimage import FileSpec, Spec, _tar, publish_image, tree_spec
from helpers.parts import missing

#: Kernel modules the slim initramfs carries: a virtio disk with ext4 on it.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
#: What an initramfs adds for an XFS root (``make_initramfs(..., modules=XFS_MODULES)``):
#: the others do without it, since loading it costs each boot time under emulation.
XFS_MODULES = ("xfs",)
VM_PACKAGES = (
    *debian.PACKAGES,
    "linux-image-amd64",
    "initramfs-tools",
    "udev",
    "e2fsprogs",
    "iproute2",  # ip, to bring up the virtual network card
)
#: Bump when prepare_vm_tree() changes.
VM_PREPARE_VERSION = 7
VM_RECIPE: dict[str, object] = {
    **debian.RECIPE,
    "include": list(VM_PACKAGES),
    # What atoll needs on the device to update itself from a registry, installed by
    # apt after debootstrap (as atoll build does): debootstrap's own pass configures
    # python3-zstandard before python3 and fails.
    "device": list(DEVICE_PACKAGES),
    "prepare": f"vm-{VM_PREPARE_VERSION}",
}
#: The kernel modules the tree keeps (paths under usr/lib/modules/KVER/kernel/, or
#: their directories): a virtio machine with ext4 disks needs no others; XFS's
#: are there for the test of an XFS root (its initramfs adds :data:`XFS_MODULES`).
KEPT_MODULES = (
    "drivers/virtio/",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "net/core/failover.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/hw_random/virtio-rng.ko",
    "drivers/firmware/qemu_fw_cfg.ko",
    "fs/ext4/",
    "fs/jbd2/",
    "fs/mbcache.ko",
    "fs/xfs/",
    "lib/libcrc32c.ko",
    "lib/crc16.ko",
    "crypto/crc32c_generic.ko",
    "arch/x86/crypto/crc32c-intel.ko",
)
#: Units a VM boot does not need (on top of helpers.debian.MASKED_UNITS).
VM_MASKED_UNITS = (
    "serial-getty@ttyS0.service",
    "systemd-udev-settle.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-hwdb-update.service",
    "systemd-binfmt.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "ifupdown-pre.service",
    "networking.service",
    "logrotate.timer",
    "man-db.timer",
    # Nothing here needs device events, D-Bus or logins: the disks are there from the
    # start (devtmpfs), systemctl talks to systemd directly, nobody logs in.
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "dbus.service",
    "dbus.socket",
    "systemd-logind.service",
    "getty.target",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
)
#: Documentation, translations and hardware databases: a third of the tree, read
#: by nothing in a test VM, and every byte of it is imported again at each upgrade.
TRIMMED = (
    "usr/share/locale",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/lib/udev/hwdb.d",
    "usr/lib/udev/hwdb.bin",
    "etc/udev/hwdb.bin",
)


def prepare_vm_tree(root: Path) -> None:
    """The container preparation, then: the kernel where atoll looks for it, a
    slim initramfs configuration, no gettys on the serial console."""
    debian.prepare_tree(root)
    system = root / "etc/systemd/system"
    for unit in VM_MASKED_UNITS:
        link = system / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"{boot}: expected one kernel, found {[k.name for k in kernels]}")
    kver = kernels[0].name.removeprefix("vmlinuz-")
    shutil.move(kernels[0], root / "usr/lib/modules" / kver / "vmlinuz")
    # Where bootc images keep it; mkinitramfs reads it from /boot (see make_initramfs).
    shutil.move(boot / f"config-{kver}", root / "usr/lib/modules" / kver / "config")
    for leftover in [*boot.iterdir(), *root.glob("vmlinuz*"), *root.glob("initrd.img*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    _prune_modules(root, kver)
    for path in TRIMMED:
        target = root / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            target.mkdir()
        else:
            target.unlink(missing_ok=True)
    _hash_based_bytecode(root)
    conf = root / "etc/initramfs-tools"
    text = (conf / "initramfs.conf").read_text()
    text = text.replace("MODULES=most", "MODULES=list")
    text = text.replace("COMPRESS=zstd", "COMPRESS=gzip")  # the tree has no zstd
    (conf / "initramfs.conf").write_text(text)
    (conf / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
    (conf / "conf.d").mkdir(exist_ok=True)
    (conf / "conf.d/resume").write_text("RESUME=none\n")


def _hash_based_bytecode(root: Path) -> None:
    """Compile Python's standard library to hash-checked bytecode. Deployments
    have mtime 0, so Python finds every timestamp-based .pyc stale and, /usr being
    read-only, compiles the modules again at each start: under emulation that was
    most of the seven seconds each ``atoll`` command took to start."""
    dirs = [f"/{p.relative_to(root)}" for p in sorted(root.glob("usr/lib/python3*")) if p.is_dir()]
    subprocess.run(
        ["chroot", str(root), "python3", "-m", "compileall", "-q", "-f",
         "--invalidation-mode", "checked-hash", *dirs],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _prune_modules(root: Path, kver: str) -> None:
    """Keep only :data:`KEPT_MODULES` (400 MB of drivers become a few) and re-run depmod."""
    kernel = root / "usr/lib/modules" / kver / "kernel"
    for module in sorted(kernel.rglob("*.ko*")):
        rel = module.relative_to(kernel).as_posix()
        if not any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEPT_MODULES):
            module.unlink()
    for directory in sorted(kernel.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    subprocess.run(["chroot", str(root), "depmod", "-a", kver], check=True)


def _bootstrap_vm_tree(target: Path) -> None:
    debian._debootstrap(target, VM_PACKAGES)
    script = (
        'mount -t proc proc "$1/proc" && chroot "$1" sh -c "apt-get update -q && '
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $2 && "
        'apt-get clean"; code=$?; umount "$1/proc"; exit $code'
    )
    subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "-", str(target), " ".join(DEVICE_PACKAGES)],
        check=True,
        capture_output=True,
    )


VM_TREE = debian.TreeRecipe(VM_RECIPE, _bootstrap_vm_tree, prepare_vm_tree)


def ensure_vm_tree(cache: Path | None = None) -> debian.DebianTree:
    return debian.ensure_debian_tree(cache, VM_TREE)


def tree_kver(tree: debian.DebianTree) -> str:
    found = sorted(p.parent.name for p in tree.rootfs.glob("usr/lib/modules/*/vmlinuz"))
    if len(found) != 1:
        raise RuntimeError(f"{tree.rootfs}: expected one kernel, found {found}")
    return found[0]


#: Kernel arguments of the test disks: the console on the serial port, little of it.
TEST_KARGS = (
    "console=ttyS0,115200",
    "quiet",
    "loglevel=3",
    "systemd.show_status=false",
    "fsck.mode=skip",
    "panic=1",
    # Under emulation on a loaded host the kernel's check that the PIT's interrupt
    # reaches the IO-APIC can time out, and the kernel then panics ("IO-APIC +
    # timer doesn't work!"); QEMU's timer is wired right, so skip the check.
    "no_timer_check",
)
#: Where the data disk (/dev/vdb) is mounted in the VM; the same path on the host
#: holds os.tar, so an image installed from oci-archive:IMAGES/os.tar upgrades from it.
STEP_FILE = "step"

#: The address of the host's loopback from inside the VM (QEMU's user network).
HOST_FROM_GUEST = "10.0.2.2"
#: The unit and script that report each green boot on the console and do the
#: step the data disk asks for, then power off; for the step ``selfupdate`` they
#: leave the machine to the update timer, which fires once they are done (so the
#: report is on the console first) and reboots into the update.  The VM's network
#: card is brought up for the update service (QEMU's user network: the guest is
#: 10.0.2.15, the host's loopback is 10.0.2.2).
DRIVER_FILES = {
    "usr/lib/systemd/system/vmtest.service": """\
[Unit]
Description=atoll VM test: report this boot, do the step the data disk asks for
Requires=atoll-healthcheck.service
After=multi-user.target atoll-healthcheck.service
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest-step
StandardOutput=journal+console
StandardError=journal+console
""",
    "usr/local/sbin/vmtest-step": """\
#!/bin/sh
# Lines for the test start with VMTEST; one line each, so they survive the console.
say() { echo "VMTEST $*"; }
images="$(cat /etc/vmtest-images)"
mkdir -p "$images"
mount -o ro /dev/vdb "$images" || say "no data disk"
step="$(cat "$images/step" 2>/dev/null || echo none)"
if touch /usr/.vmtest 2>/dev/null; then usr=writable; rm -f /usr/.vmtest; else usr=read-only; fi
data="$(cat /var/lib/vmtest/data 2>/dev/null || echo none)"
# systemd records the initramfs's start only when it ran there too (dracut's kind).
initrd=systemd
[ "$(systemctl show -P InitRDTimestampMonotonic)" = 0 ] && initrd=script
say "boot version=$(cat /etc/atoll-version) initrd=$initrd usr=$usr data=$data step=$step"
for m in / /usr /var /sysroot; do say "mount $(findmnt -n -o TARGET,FSTYPE,OPTIONS "$m")"; done
say "status $(atoll status --sysroot /sysroot --format json | tr -d '\\n')"
say "history $(tr '\\n' ' ' < /sysroot/atoll/health/history.jsonl)"
say "grubenv $(grep -v '^#' /sysroot/boot/grub/grubenv | tr '\\n' ' ')"
# The kernel says whether the firmware booted it with Secure Boot on.
say "secureboot $(dmesg | grep -o 'Secure boot [a-z]*' | head -n 1 | cut -d' ' -f3)"
if [ "$step" = upgrade ]; then
    mkdir -p /var/lib/vmtest
    data=/var/lib/vmtest/data
    [ -f $data ] || echo "written by $(cat /etc/atoll-version)" > $data
    if atoll upgrade --sysroot /sysroot; then say "upgraded"; else say "upgrade failed: $?"; fi
fi
if [ "$step" = selfupdate ]; then
    mkdir -p /var/lib/vmtest
    data=/var/lib/vmtest/data
    [ -f $data ] || echo "written by $(cat /etc/atoll-version)" > $data
fi
umount "$images" 2>/dev/null
say "done"
[ "$step" = selfupdate ] || systemctl poweroff --no-block
""",
    "etc/systemd/system/atoll-fetch-apply-updates.timer.d/vmtest.conf": """\
# Fire once the driver is done with this boot, instead of hourly at random;
# AccuracySec: the unit's 1min lets systemd fire it up to a minute late (it
# did: 4-44 s after the driver was done).
[Unit]
DefaultDependencies=no
After=vmtest.service
Conflicts=shutdown.target
[Timer]
OnActiveSec=1s
RandomizedDelaySec=0
AccuracySec=1s
""",
    "etc/systemd/system/atoll-fetch-apply-updates.service.d/vmtest.conf": """\
# What the device's own update run says goes to the console (and so into the test's log).
[Service]
StandardOutput=journal+console
StandardError=journal+console
""",
    "etc/atoll/updates.toml": 'policy = "apply"\n',
    "usr/lib/systemd/system/vmtest-network.service": """\
[Unit]
Description=atoll VM test: the network card on QEMU's user network
Before=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vmtest-network

[Install]
WantedBy=network-online.target
""",
    "usr/local/sbin/vmtest-network": """\
#!/bin/sh
# No udev in the test VM: load the driver; the card keeps the kernel's name.
modprobe virtio_net
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
""",
}
#: systemd's generators a test VM does not need, masked in every image
#: (/etc/systemd/system-generators/NAME -> /dev/null): each is a process that
#: systemd runs before it starts any unit.  Two boots side by side under load,
#: the same disk with and without these masked: 12.7 s and 17.6 s from
#: systemd's start to its first job.  fstab's stays (/var's own partition).
MASKED_GENERATORS = (
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
)
#: Where each driver file is enabled (unit -> the target that wants it).
DRIVER_WANTS = {
    "vmtest.service": "multi-user.target",
    "vmtest-network.service": "network-online.target",
}


def registries_conf(port: int) -> str:
    """A registries.conf for the VM: the test registry, on the host's loopback, in plain HTTP."""
    return f'[[registry]]\nlocation = "{HOST_FROM_GUEST}:{port}"\ninsecure = true\n'


#: dracut-core's package file, fetched by ``make deps`` (Makefile, ``tools``). dracut
#: conflicts with initramfs-tools, so it is unpacked into a copy of the VM tree
#: (as the tree of a Fedora-family image would carry it), not installed here.
DRACUT_PACKAGES = Path(__file__).resolve().parents[2] / ".tools" / "dracut"
#: dracut modules a virtio machine with an ext4 root does not need.
DRACUT_OMIT = ("crypt", "dm", "nvdimm", "lunmask", "resume", "terminfo", "virtiofs", "i18n")


def make_initramfs(
    tree: debian.DebianTree, generator: str = "initramfs-tools", modules: tuple[str, ...] = ()
) -> Path:
    """The tree's initramfs with atoll's early-boot step in it, made by
    *generator* (``initramfs-tools`` or ``dracut``) with the function ``atoll base
    create`` uses, once per content of the early-boot files
    (``initramfs/DIGEST/KVER/initramfs.img`` beside the tree, or beside the
    derived tree it was made in); *modules*: kernel modules an initramfs-tools
    one loads beside :data:`INITRAMFS_MODULES` (:data:`XFS_MODULES`)."""
    if generator == "dracut" and not modules:
        root, family = dracut_tree(tree), "dnf"
    elif generator == "initramfs-tools":
        root, family = (modules_tree(tree, modules) if modules else tree.rootfs), "apt"
    else:
        raise ValueError(f"no initramfs by {generator!r} with modules {modules!r}")
    (made,) = tree_initramfs(root, source_date_epoch(), family).values()
    return made


#: dracut's configuration in :func:`dracut_tree`: the modules a virtio machine with
#: an ext4 root needs (initramfs-tools' MODULES=list), gzip as the tree's kernel unpacks it.
DRACUT_CONF = (
    f'omit_dracutmodules+=" {" ".join(DRACUT_OMIT)} "\n'
    f'add_drivers+=" {" ".join(INITRAMFS_MODULES)} "\n'
    'compress="gzip"\n'
)


def dracut_tree(tree: debian.DebianTree) -> Path:
    """The VM tree with dracut-core unpacked into it (as a Fedora-family tree
    carries its generator) and :data:`DRACUT_CONF` (:func:`derived_tree`)."""
    debs = sorted(DRACUT_PACKAGES.glob("dracut-core_*.deb"))
    if not debs:
        missing(f"no dracut-core package in {DRACUT_PACKAGES} (make deps fetches it)")
    conf_key = hashlib.sha256(DRACUT_CONF.encode()).hexdigest()[:8]

    def add_dracut(root: Path) -> None:
        # tar replaces a file it extracts instead of writing through the hard link.
        unpack = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE
        )
        subprocess.run(
            ["tar", "-x", "-C", str(root), "--keep-directory-symlink"],
            stdin=unpack.stdout,
            check=True,
        )
        if unpack.wait() != 0:
            raise RuntimeError(f"{debs[-1]}: dpkg-deb failed")
        (root / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/dracut.conf.d/90-vm.conf").write_text(DRACUT_CONF)

    return derived_tree(tree, f"{debs[-1].stem}-{conf_key}", add_dracut)


def modules_tree(tree: debian.DebianTree, modules: tuple[str, ...]) -> Path:
    """The VM tree with *modules* added to initramfs-tools' module list
    (:func:`derived_tree`)."""

    def add_modules(root: Path) -> None:
        listed = root / "etc/initramfs-tools/modules"
        text = listed.read_text() + "".join(f"{m}\n" for m in modules)
        listed.unlink()  # a hard link to the cached tree's: not written through
        listed.write_text(text)

    return derived_tree(tree, "modules-" + "+".join(modules), add_modules)


def derived_tree(tree: debian.DebianTree, name: str, change: Callable[[Path], None]) -> Path:
    """A hard-linked copy of the VM tree that *change* adds to (replacing files,
    never writing through a link), made once at ``CACHE/.../NAME/rootfs`` beside
    the tree and never changed afterwards."""
    done = tree.cache / name
    if (done / "rootfs").is_dir():
        return done / "rootfs"
    with tempfile.TemporaryDirectory(dir=tree.cache) as work:
        root = Path(work) / "rootfs"
        subprocess.run(["cp", "-al", "--", str(tree.rootfs), str(root)], check=True)
        change(root)
        Path(work).chmod(0o755)
        try:
            Path(work).rename(done)
        except OSError:  # another worker made it first
            if not (done / "rootfs").is_dir():
                raise
        else:
            Path(work).mkdir()  # for TemporaryDirectory's cleanup
    return done / "rootfs"


def platform_files(tree: debian.DebianTree, stage: Path) -> Spec:
    """What every version of a test image adds to the tree: atoll, its units, its
    early-boot files and the initramfs made with them."""
    install_atoll(stage)
    install_units(stage)
    install_early_boot(stage)
    if sys.version_info[:2] == (3, 11):  # bookworm's python3: the same bytecode
        # /usr is read-only on the device: without these, every atoll command would
        # compile its modules again, which takes seconds under emulation.
        package = stage / "usr/lib/python3/dist-packages/atoll"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "--invalidation-mode",
                "unchecked-hash",
                "-d",
                "/usr/lib/python3/dist-packages/atoll",
                str(package),
            ],
            check=True,
        )
    for path, text in DRIVER_FILES.items():
        target = stage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755 if "/sbin/" in path else 0o644)
    for unit, wanted_by in DRIVER_WANTS.items():
        wants = stage / f"etc/systemd/system/{wanted_by}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(f"/usr/lib/systemd/system/{unit}")
    generators = stage / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for generator in MASKED_GENERATORS:
        (generators / generator).symlink_to("/dev/null")
    kver = tree_kver(tree)
    initramfs = stage / "usr/lib/modules" / kver / "initramfs.img"
    initramfs.parent.mkdir(parents=True)
    shutil.copyfile(make_initramfs(tree), initramfs)
    return tree_spec(stage)


def _layer(layout: Path, files: Spec) -> tuple[str, str, int]:
    tar = _tar(files)
    gz = gzip.compress(tar, compresslevel=1, mtime=0)
    digest = hashlib.sha256(gz).hexdigest()
    blob = layout / "blobs" / "sha256" / digest
    if not blob.exists():
        blob.write_bytes(gz)
    return f"sha256:{digest}", "sha256:" + hashlib.sha256(tar).hexdigest(), len(gz)


def build_vm_image(
    layout: Path,
    ref: str,
    tree: debian.DebianTree,
    platform: Spec,
    *,
    version: str,
    add: Spec | None = None,
) -> str:
    """An image of the VM tree in the OCI layout at *layout*: the cached tree, the
    *platform* layer (the same in every version, so an upgrade fetches it once),
    and the version's own files."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    base_path, base = debian.base_layer(tree)
    target = blobs / base.digest.removeprefix("sha256:")
    if not target.exists():
        shutil.copyfile(base_path, target)
    layers = [(base.digest, base.diff_id, base.size), _layer(layout, platform)]
    layers.append(_layer(layout, {"etc/atoll-version": f"{version}\n", **(add or {})}))
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Labels": {"containers.bootc": "1", "org.opencontainers.image.version": version},
            "Cmd": ["/sbin/init"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
    }
    return publish_image(layout, ref, config, [(digest, size) for digest, _, size in layers])


def make_data_disk(path: Path, files: dict[str, Path | str]) -> Path:
    """A small ext4 disk image holding *files* (name -> a file to hard-link, or text)."""
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        root = Path(work)
        size = 16 * 1024 * 1024
        for name, content in files.items():
            if isinstance(content, Path):
                os.link(content, root / name)
                size += content.stat().st_size
            else:
                (root / name).write_text(content)
        path.unlink(missing_ok=True)
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "vmtest",
                "-d",
                str(root),
                str(path),
                f"{int(size * 1.2) // 1024}k",
            ],
            check=True,
            capture_output=True,
        )
    return path


#: What ``atoll install to-disk`` runs inside an image that installs itself from an
#: ISO, and the Debian packages that have it: copied from this (bookworm) host,
#: as an image would carry them from the same packages.
INSTALLER_TOOLS = {
    "fdisk": ("sbin/sfdisk",),
    "dosfstools": ("sbin/mkfs.fat",),
    "mtools": ("usr/bin/mtools", "usr/bin/mcopy", "usr/bin/mformat", "usr/bin/mmd"),
    "grub-common": ("usr/bin/grub-mkimage", "usr/bin/grub-editenv"),
    "grub-pc-bin": ("usr/lib/grub/i386-pc/",),
    "grub-efi-amd64-bin": ("usr/lib/grub/x86_64-efi/",),
    # Secure Boot: shim signed by Microsoft, GRUB signed by Debian.
    "shim-signed": ("usr/lib/shim/shimx64.efi.signed",),
    "grub-efi-amd64-signed": ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",),
}


def installer_tools() -> Spec:
    """The files of :data:`INSTALLER_TOOLS` (merged /usr: ``sbin/`` goes to ``usr/sbin/``)."""
    spec: Spec = {}
    for package, paths in INSTALLER_TOOLS.items():
        listed = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=True
        ).stdout.split()
        for name in listed:
            rel = name.lstrip("/")
            if not any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in paths):
                continue
            path = Path(name)
            dest = f"usr/{rel}" if rel.startswith(("sbin/", "bin/")) else rel
            if path.is_symlink():
                spec[dest] = FileSpec(symlink=str(path.readlink()))
            elif path.is_file():
                spec[dest] = FileSpec(path.read_bytes(), path.stat().st_mode & 0o7777)
    return spec
