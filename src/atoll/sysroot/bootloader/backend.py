"""The bootloader backends behind one protocol.

The Boot Loader Specification entries in ``boot/`` (:mod:`.entries`) are the
truth for every backend.  A backend is told each time they change, and when a
boot was found good, so that it can keep its own files in step:

* :class:`BlsBootloader`: a bootloader that reads the entries as they are and
  renames their counters itself (systemd-boot), or atoll playing the
  bootloader on the directory device: nothing more to write.
* :class:`GrubBootloader`: ``grub.cfg`` and ``grubenv`` made from the entries
  (:mod:`.grub`), where ``atoll install to-disk`` left ``grub/atoll.json``.

:func:`detect_bootloader` chooses by what ``boot/`` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from atoll.sysroot.bootloader.grub import grub_settings, sync_grub


class Bootloader(Protocol):
    """What the sysroot asks of a bootloader backend."""

    name: str

    def sync(self, boot_dir: Path, *, boot_success: bool | None = None) -> None:
        """Bring the backend's files in step with the entries in *boot_dir*;
        *boot_success* True: the booted entry was found good."""


class BlsBootloader:
    name = "bls"

    def sync(self, boot_dir: Path, *, boot_success: bool | None = None) -> None:
        """The entries are all this bootloader reads."""


class GrubBootloader:
    name = "grub"

    def sync(self, boot_dir: Path, *, boot_success: bool | None = None) -> None:
        sync_grub(boot_dir, boot_success=boot_success)


def detect_bootloader(boot_dir: Path) -> Bootloader:
    """GRUB where atoll manages it in *boot_dir*, the entries alone elsewhere."""
    if grub_settings(boot_dir) is not None:
        return GrubBootloader()
    return BlsBootloader()
