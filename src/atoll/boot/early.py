"""atoll's early-boot step, as files an image carries.

The files live in this package under ``files/``, laid out as in an image, and
:func:`install_early_boot` copies them into an image tree::

    usr/lib/atoll/prepare-root                          the step itself (POSIX sh):
                                                        atoll= -> / , /var, read-only /usr,
                                                        the physical root at /sysroot
    usr/share/initramfs-tools/hooks/atoll               Debian family: puts prepare-root
                                                        into the initramfs
    usr/share/initramfs-tools/scripts/local-bottom/atoll    runs it once the root is mounted
    usr/lib/dracut/modules.d/50atoll/module-setup.sh    Fedora/RHEL family: the dracut module
    usr/lib/dracut/modules.d/50atoll/atoll-prepare-root.sh  its pre-pivot hook

The initramfs is made by the image's own generator (``update-initramfs``,
``dracut``) when the image is built; a deployment's initramfs is
``usr/lib/modules/KVER/initramfs.img``.  docs/boot.md, "Early boot", says what
the step does and how it refuses a deployment.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from atoll.errors import from_oserror

PREPARE_ROOT = "usr/lib/atoll/prepare-root"
INITRAMFS_TOOLS_HOOK = "usr/share/initramfs-tools/hooks/atoll"
INITRAMFS_TOOLS_SCRIPT = "usr/share/initramfs-tools/scripts/local-bottom/atoll"
DRACUT_MODULE = "usr/lib/dracut/modules.d/50atoll/module-setup.sh"
DRACUT_HOOK = "usr/lib/dracut/modules.d/50atoll/atoll-prepare-root.sh"
#: Every early-boot file, as a path relative to the image root.
EARLY_BOOT_FILES = (
    PREPARE_ROOT,
    INITRAMFS_TOOLS_HOOK,
    INITRAMFS_TOOLS_SCRIPT,
    DRACUT_MODULE,
    DRACUT_HOOK,
)
#: The files that show an image carries the step, one per initramfs generator.
HOOKS = (INITRAMFS_TOOLS_HOOK, DRACUT_MODULE)


def early_boot_file(path: str) -> bytes:
    """The content of one of :data:`EARLY_BOOT_FILES`."""
    if path not in EARLY_BOOT_FILES:
        raise KeyError(path)
    return resources.files(__package__).joinpath("files", *path.split("/")).read_bytes()


def early_boot_digest() -> str:
    """sha256 over the names and contents of the files: a cache key for an
    initramfs made with them."""
    digest = hashlib.sha256()
    for path in EARLY_BOOT_FILES:
        data = early_boot_file(path)
        digest.update(f"{path}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def install_early_boot(root: Path) -> list[Path]:
    """Write the early-boot files into the image tree at *root* (mode 0755, new
    inodes: a file hard-linked elsewhere is replaced, not changed); return them."""
    written = []
    for path in EARLY_BOOT_FILES:
        dest = root / path
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)
            dest.write_bytes(early_boot_file(path))
            dest.chmod(0o755)
        except OSError as exc:
            raise from_oserror(exc, str(dest)) from exc
        written.append(dest)
    return written


def has_early_boot(root: Path) -> bool:
    """True when the tree at *root* carries the hook of some initramfs generator."""
    return any((root / hook).is_file() for hook in HOOKS)
