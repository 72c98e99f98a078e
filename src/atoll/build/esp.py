"""The EFI system partition of a UEFI disk, made without mounting it.

The ESP holds one file, at the path UEFI firmware boots from removable media
when it has no boot entry of its own (so the disk boots on a machine that never
saw it, with no ``efibootmgr`` run)::

    ESP (FAT32, label ATOLL-ESP, ``mkfs.fat --offset`` on the disk itself)
    └── EFI/BOOT/BOOTX64.EFI     GRUB for x86_64-efi (grub-mkimage), with an early
                                 configuration that finds the root file system by
                                 UUID and reads /boot/grub/grub.cfg from it

With ``--secure-boot`` the ESP holds Debian's signed boot chain instead, which
firmware with Microsoft's keys enrolled accepts::

    ESP
    ├── EFI/BOOT/BOOTX64.EFI     shim, signed by Microsoft (shim-signed)
    ├── EFI/BOOT/grubx64.efi     GRUB, signed by Debian (grub-efi-amd64-signed): shim
    │                            checks it against the Debian key built into shim
    ├── EFI/BOOT/mmx64.efi       MokManager, which shim starts when a check fails
    ├── EFI/debian/grub.cfg      the signed GRUB's built-in prefix: finds the root
    └── EFI/BOOT/grub.cfg        file system by UUID and reads /boot/grub/grub.cfg
                                 (the second is where it looks when the first is gone)

GRUB then has shim check each kernel it starts (the image's kernel must be
signed by a key shim trusts, as Debian's are); the initramfs is not checked.

From there on a UEFI boot is the BIOS boot: the same ``grub.cfg`` and the same
``grubenv`` counter on the root file system (:mod:`atoll.sysroot.bootloader.grub`),
so boot counting and fallback do not depend on the firmware.  Files are put in
with mtools (``mcopy -i DISK@@OFFSET``).
"""

from __future__ import annotations

from pathlib import Path

from atoll.build.partition import GRUB_COMMON_MODULES, SECTOR, Extent, grub_mkimage
from atoll.errors import DiskError
from atoll.run import base_environment, find_tool, run

GRUB_EFI_PLATFORM = "x86_64-efi"
GRUB_EFI_DIR = Path("/usr/lib/grub") / GRUB_EFI_PLATFORM
#: Where firmware looks on removable media (UEFI 2.10, 3.5.1.1) for x86-64.
REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"
ESP_LABEL = "ATOLL-ESP"
#: The modules BOOTX64.EFI carries: it then needs nothing from the ESP but itself.
GRUB_EFI_MODULES = ("fat", "efi_gop", *GRUB_COMMON_MODULES)


def make_grub_efi(dest: Path, uuid: str, prefix: str = "/boot/grub") -> Path:
    """GRUB for x86_64-efi as one PE file: finds the file system by UUID, then
    reads PREFIX/grub.cfg."""
    if not (GRUB_EFI_DIR / "linux.mod").is_file():
        raise DiskError(
            f"GRUB for UEFI is not installed ({GRUB_EFI_DIR} has no linux.mod)",
            hint="install it with: apt-get install grub-efi-amd64-bin",
        )
    return grub_mkimage(dest, uuid, GRUB_EFI_PLATFORM, GRUB_EFI_MODULES, prefix)


SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
MOK_MANAGER = Path("/usr/lib/shim/mmx64.efi.signed")
SIGNED_GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")


def secure_boot_files(staging: Path, uuid: str, prefix: str = "/boot/grub") -> dict[str, Path]:
    """The ESP's files for Secure Boot (path in the ESP -> file to copy)."""
    for path, package in ((SHIM, "shim-signed"), (SIGNED_GRUB, "grub-efi-amd64-signed")):
        if not path.is_file():
            raise DiskError(
                f"{path}: no such file (the signed boot chain for --secure-boot)",
                hint=f"install it with: apt-get install {package}",
            )
    stub = staging / "grub-stub.cfg"
    stub.write_text(
        f"search.fs_uuid {uuid} root\nset prefix=($root){prefix}\nconfigfile $prefix/grub.cfg\n"
    )
    files = {
        REMOVABLE_PATH: SHIM,
        "EFI/BOOT/grubx64.efi": SIGNED_GRUB,
        "EFI/debian/grub.cfg": stub,
        "EFI/BOOT/grub.cfg": stub,
    }
    if MOK_MANAGER.is_file():
        files["EFI/BOOT/mmx64.efi"] = MOK_MANAGER
    return files


def make_esp(target: Path, esp: Extent, files: dict[str, Path]) -> None:
    """A FAT32 file system at *esp* of *target* holding *files* (path in the ESP
    -> file to copy), directories made as needed."""
    mkfs = find_tool("mkfs.fat", "dosfstools")
    mmd = find_tool("mmd", "mtools")
    mcopy = find_tool("mcopy", "mtools")
    sectors = str(esp.offset // SECTOR)
    # One sector per cluster: 64 MiB is then well past FAT32's fewest clusters
    # (mkfs.fat would size clusters for the whole disk); hidden sectors = offset,
    # as on a partition made by any other tool.
    run(
        [mkfs, "-F", "32", "-s", "1", "-h", sectors, "-n", ESP_LABEL, "--offset", sectors,
         target, str(esp.size // 1024)]
    )  # fmt: skip
    image = f"{target}@@{esp.offset}"
    # mtools checks the geometry a floppy would have; a partition has none.
    env = base_environment({"MTOOLS_SKIP_CHECK": "1"})
    made: set[str] = set()
    for path in sorted(files):
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in made:
                run([mmd, "-i", image, f"::{directory}"], env=env)
                made.add(directory)
        run([mcopy, "-i", image, files[path], f"::{path}"], env=env)


def read_esp_file(target: Path, offset: int, path: str) -> bytes:
    """A file of the ESP at *offset* of *target*, read with mtools."""
    mtype = find_tool("mtype", "mtools")
    env = base_environment({"MTOOLS_SKIP_CHECK": "1"})
    return run([mtype, "-i", f"{target}@@{offset}", f"::{path}"], env=env).stdout
