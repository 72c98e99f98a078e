"""Recording a boot that GRUB and the kernel made, once the system is up.

On the directory and container devices atoll plays the bootloader and writes
``run/booted.json`` itself (:meth:`atoll.sysroot.lifecycle.Device.boot`).  On a
machine GRUB chose the entry and counted the attempt in ``grubenv``;
:func:`record_kernel_boot` reads what happened and writes it the same way, so
that the health code that follows (settle a fallback, run the checks, mark the
boot good) works unchanged.  It runs first in ``atoll health boot``:

1. the entry that booted is the one whose ``atoll=`` is the kernel's (from
   ``/proc/cmdline``);
2. if it is the default (first in the order atoll wrote) and that entry has a
   BLS counter, GRUB's ``boot_counter`` is copied into it: ``ID+LEFT-DONE.conf``
   with LEFT = ``boot_counter`` and DONE = the tries it started with minus LEFT;
3. if it is another entry and ``boot_counter`` is ``-1``, GRUB fell back: the
   default is marked bad with all its tries done, and the boot is recorded as
   a fallback (another entry booted otherwise, by a choice in the menu or
   because ``grub.cfg`` was not yet rewritten, is no verdict on the default);
4. ``run/booted.json`` is written with the kernel's boot id, so running this
   again in the same boot changes nothing.

Nothing happens where the kernel command line has no ``atoll=``: inside a
container the kernel is the host's, and its container harness has recorded the
boot already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import DeploymentError
from atoll.fsutil import write_atomic
from atoll.sysroot.bootloader import entries as bootloader
from atoll.sysroot.bootloader.bls import KARG
from atoll.sysroot.bootloader.grub import COUNTER, ENV_NAME, grub_dir, grub_settings, sync_grub
from atoll.sysroot.bootloader.grubenv import read_grubenv
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.state import BootRecord, deployment_key
from atoll.timeutil import utc_timestamp

CMDLINE = Path("/proc/cmdline")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class KernelBoot:
    """What the running kernel says about this boot."""

    deployment_path: str
    boot_id: str

    @classmethod
    def read(cls, cmdline: Path = CMDLINE, boot_id: Path = BOOT_ID) -> KernelBoot | None:
        try:
            words = cmdline.read_text().split()
            ident = boot_id.read_text().strip().replace("-", "")
        except OSError:
            return None
        found = None
        for word in words:
            if word == "--":
                break
            if word.startswith(f"{KARG}="):
                found = word[len(KARG) + 1 :]
        return cls(found, ident) if found else None


def record_kernel_boot(device: Device, kernel: KernelBoot | None = None) -> BootRecord | None:
    """Record the boot *kernel* describes (default: this machine's); None when
    the kernel names no deployment or the boot is recorded already."""
    kernel = kernel if kernel is not None else KernelBoot.read()
    if kernel is None:
        return None
    key = deployment_key(kernel.deployment_path)
    if key is None:
        raise DeploymentError(
            f"kernel argument {KARG}={kernel.deployment_path} does not name a deployment",
            hint=f"it must be {KARG}=/atoll/deploy/STATEROOT/deploy/COMMIT.SERIAL",
        )
    sysroot = device.sysroot
    boot_dir = sysroot.boot
    with sysroot.lock():
        state = device.state()
        old = state.booted_record
        if old is not None and old.boot_id == kernel.boot_id:
            return None
        booted = next(
            (e for e in state.entries if e.deployment_path == kernel.deployment_path), None
        )
        if booted is None:
            raise DeploymentError(
                f"{sysroot.root}: no boot entry has {KARG}={kernel.deployment_path}",
                hint="the machine booted something atoll did not write; reinstall or repair",
            )
        intended = state.intended_entries()
        first = intended[0]
        managed = grub_settings(boot_dir) is not None
        counter = read_grubenv(grub_dir(boot_dir) / ENV_NAME).get(COUNTER) if managed else None
        tries_left = booted.tries_left
        if booted.id == first.id:
            fallback = False
            if first.tries_left is not None and counter is not None and counter.isdigit():
                total = first.tries_left + first.tries_done
                left = min(int(counter), total)
                bootloader.set_counter(boot_dir, first.id, left, total - left)
                tries_left = left
        elif managed:
            # GRUB falls back with boot_counter=-1; any other way to another entry
            # (a menu choice, a grub.cfg not yet rewritten) is no verdict on the default.
            fallback = first.tries_left is not None and counter == "-1"
            if first.tries_left is not None and fallback:
                bootloader.set_counter(boot_dir, first.id, 0, first.tries_left + first.tries_done)
        else:
            # A bootloader that renames the entry files itself (systemd-boot).
            fallback = first.tries_left == 0
        record = BootRecord(
            stateroot=key[0],
            deployment=key[1],
            entry=booted.id,
            tries_left=tries_left,
            fallback=fallback,
            boot_id=kernel.boot_id,
            time=utc_timestamp(),
        )
        sysroot.booted_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(sysroot.booted_file, json.dumps(record.to_json()).encode())
        sync_grub(boot_dir)
        return record
