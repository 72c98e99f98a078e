"""Boot entries for tests of atoll.sysroot.bootloader.bls and bootloader."""

from __future__ import annotations

from atoll.sysroot.bootloader.bls import BootEntry

KDIR = "/atoll/" + "ab" * 32


def make_entry(n: int, **kw: object) -> BootEntry:
    """Entry number *n* of a stateroot "default", with a kernel in KDIR; *kw* overrides."""
    fields: dict[str, object] = {
        "id": f"atoll-default-{n}",
        "title": f"Atoll 42.{n} (default)",
        "linux": f"{KDIR}/vmlinuz-6.1.0",
        "initrd": (f"{KDIR}/initramfs-6.1.0.img",),
        "options": f"root=LABEL=root rw atoll=/atoll/deploy/default/deploy/c{n}.0",
    }
    fields.update(kw)
    return BootEntry(**fields)  # type: ignore[arg-type]
