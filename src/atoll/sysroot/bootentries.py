"""A sysroot's boot entries: one per deployment, in boot order, each with its
kernel installed under /boot, its title, its kernel command line (``atoll=``
naming the deployment) and, for a new deployment, its boot counter; then the
bootloader's own files brought in step (docs/boot.md).

:class:`atoll.sysroot.lifecycle.Device` calls these at each step that changes
the boot order: install, finalize, rollback, boot.
"""

from __future__ import annotations

from collections.abc import Sequence

from atoll.store import Store
from atoll.sysroot.bootloader import entries as bootloader
from atoll.sysroot.bootloader.backend import Bootloader, detect_bootloader
from atoll.sysroot.bootloader.entries import BootEntry
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment
from atoll.sysroot.state import SysrootState


def write_boot_entries(
    sysroot: Sysroot,
    store: Store,
    backend: Bootloader | None,
    order: Sequence[Deployment],
    counting: dict[str, int],
    *,
    state: SysrootState | None = None,
    extra_options: Sequence[str] = (),
    inherit: Deployment | None = None,
) -> None:
    """Write the entries of *order* (first boots first) in one swap; *counting*
    gives a deployment id its boot tries.  A deployment keeps the arguments and
    counter of its entry in *state*; one without an entry yet starts from
    *inherit*'s arguments (the deployment it was staged on, as ostree does), or
    from ``rw`` and *extra_options* on a first install."""
    current = {d.id: state.entry_for(d) for d in order} if state else {}
    template = state.entry_for(inherit) if state and inherit else None
    entries = []
    for deployment in order:
        old = current.get(deployment.id)
        linux, initrd = _install_kernel(sysroot, store, deployment)
        entries.append(
            BootEntry(
                id=f"atoll-{deployment.stateroot}-{deployment.short}",
                title=_title(deployment),
                linux=linux,
                initrd=initrd,
                options=_options(old or template, extra_options, deployment),
                tries_left=old.tries_left if old else None,
                tries_done=old.tries_done if old else 0,
            )
        )
    ids = {d.id: e.id for d, e in zip(order, entries, strict=True)}
    bootloader.write_entries(
        sysroot.boot, entries, counting={ids[k]: v for k, v in counting.items()}
    )
    sync_bootloader(sysroot, backend)


def sync_bootloader(
    sysroot: Sysroot, backend: Bootloader | None, *, boot_success: bool | None = None
) -> None:
    """Keep the bootloader's own files (GRUB's grub.cfg and grubenv, where atoll
    manages GRUB) in step with the entries; *backend* None: the one /boot shows."""
    (backend or detect_bootloader(sysroot.boot)).sync(sysroot.boot, boot_success=boot_success)


def _install_kernel(
    sysroot: Sysroot, store: Store, deployment: Deployment
) -> tuple[str, tuple[str, ...]]:
    info = store.kernel(deployment.commit)
    if info is None:
        # Only with --allow-no-kernel: the directory device can still "boot" it.
        return "/atoll/no-kernel", ()
    linux, initrd = bootloader.install_kernel(sysroot.boot, info.kver, info.vmlinuz, info.initramfs)
    return linux, (initrd,) if initrd else ()


def _title(deployment: Deployment) -> str:
    origin = deployment.origin
    version = f" {origin.image_version}" if origin.image_version else ""
    return f"{origin.image}{version} ({deployment.stateroot}, {deployment.short})"


def _options(old: BootEntry | None, extra: Sequence[str], deployment: Deployment) -> str:
    """The kernel command line: the old entry's (or the install's) arguments with
    ``atoll=`` naming this deployment."""
    args = old.options.split() if old else ["rw", *extra]
    args = [a for a in args if not a.startswith(f"{bootloader.KARG}=")]
    path = f"/atoll/deploy/{deployment.stateroot}/deploy/{deployment.id}"
    return " ".join([*args, f"{bootloader.KARG}={path}"])
