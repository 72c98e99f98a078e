"""GRUB for atoll: ``grub.cfg`` generated from the boot entries, boot counting in ``grubenv``.

The Boot Loader Specification entries in ``boot/loader/entries`` stay the
source of truth (:mod:`atoll.sysroot.bootloader.entries`).  GRUB cannot rename files,
so on a GRUB machine atoll writes two more files each time the entries change
or a boot is found good::

    BOOT/grub/
    ├── atoll.json      {"version": 1, "bootPrefix": "/boot", "timeout": 0,
    │                   "flushAfterWrite": true}: GRUB is managed by atoll
    │                   (written by `atoll install to-disk`)
    ├── grub.cfg        one menuentry per boot entry, in boot order; the counting logic
    ├── grubenv         boot_counter, boot_success (greenboot's GRUB protocol)
    └── i386-pc/        core.img as installed (for reference; GRUB reads its modules
                        from core.img itself)

**The protocol** (greenboot's, as Fedora's GRUB scripts implement it; Debian's
GRUB has no ``decrement`` command, so the generated ``grub.cfg`` counts down
with ``if``/``elif``):

* ``boot_counter`` set and ``boot_success=0`` means the default entry (menu
  entry 0: the new deployment) is being tried.  At every boot GRUB counts it
  down; once it is ``0`` (or ``-1``) GRUB boots entry 1, the previous
  deployment, and sets it to ``-1``.  That happens in GRUB, before any kernel
  runs: a kernel panic or a hung boot also uses up a try.
* GRUB sets ``boot_success=0`` at every boot; a green boot sets it to ``1`` and
  unsets ``boot_counter`` (:func:`sync_grub` with ``boot_success=True``, called
  from ``mark_boot_good``).
* ``grub.cfg`` lists the entries in the order atoll wrote them, whatever their
  counters (:func:`menu_order`).  When the first carries a BLS counter
  (``ID+3.conf``: a finalized update), atoll sets ``boot_counter`` to its tries
  left and ``boot_success=0``; when it has none, atoll unsets ``boot_counter``.

**Mapping back** (:mod:`atoll.boot.record`): once the system is up, the entry
that booted is found by the kernel's ``atoll=`` argument; GRUB's
``boot_counter`` becomes the BLS counter of the default entry
(``ID+LEFT-DONE.conf``), and a boot of another entry while ``boot_counter`` is
``-1`` is a fallback: the default entry is marked bad (``+0``), and the
health code makes the rollback permanent.  docs/boot.md has the table.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import BootloaderError, from_oserror
from atoll.fsutil import write_atomic
from atoll.sysroot.bootloader.entries import BootEntry, lock_boot, read_entries
from atoll.sysroot.bootloader.flush import flush_filesystem, should_flush
from atoll.sysroot.bootloader.grubenv import update_grubenv

GRUB_DIR = "grub"
CONFIG_NAME = "grub.cfg"
ENV_NAME = "grubenv"
MARKER_NAME = "atoll.json"
GRUB_CONFIG_VERSION = 1
#: The highest counter value grub.cfg counts down from; more tries are capped.
MAX_COUNTER = 9
COUNTER = "boot_counter"
SUCCESS = "boot_success"

_SAFE_WORD = re.compile(r"[A-Za-z0-9._,:/=+@%-]+")


@dataclass(frozen=True)
class GrubSettings:
    """What ``atoll.json`` holds: where ``boot/`` is as GRUB sees it, the menu timeout."""

    boot_prefix: str = "/boot"
    timeout: int = 0
    #: Checkpoint the file system's journal after each write, so that GRUB (which
    #: does not replay it) reads the new files: atoll.sysroot.bootloader.flush.  Set by
    #: ``atoll install to-disk``; honoured only on a machine booted by atoll.
    flush_after_write: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": GRUB_CONFIG_VERSION,
            "bootPrefix": self.boot_prefix,
            "timeout": self.timeout,
            "flushAfterWrite": self.flush_after_write,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> GrubSettings:
        try:
            version = int(data["version"])
            prefix = str(data["bootPrefix"])
            timeout = int(data.get("timeout", 0))
            flush = data.get("flushAfterWrite", False)
        except (KeyError, TypeError, ValueError) as exc:
            raise BootloaderError(f"{where}: malformed ({exc})") from None
        if version > GRUB_CONFIG_VERSION:
            raise BootloaderError(
                f"{where}: format {version} is newer than this atoll understands",
                hint="use the atoll of the image that wrote it",
            )
        if not isinstance(flush, bool):
            raise BootloaderError(f"{where}: flushAfterWrite must be true or false")
        return cls(prefix.rstrip("/"), timeout, flush)


def grub_dir(boot_dir: Path) -> Path:
    return boot_dir / GRUB_DIR


def grub_settings(boot_dir: Path) -> GrubSettings | None:
    """The settings, or None when atoll does not manage GRUB in this ``boot/``."""
    path = grub_dir(boot_dir) / MARKER_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BootloaderError(f"{path}: unreadable ({exc})") from None
    return GrubSettings.from_json(data, str(path))


def _quote(text: str) -> str:
    """GRUB's script quoting is the shell's: single quotes, ``'\\''`` for a quote."""
    return "'" + text.replace("'", "'\\''") + "'"


def _word(text: str) -> str:
    return text if _SAFE_WORD.fullmatch(text) else _quote(text)


def _serial_console(options: str) -> str | None:
    """``--unit=N --speed=S`` when the kernel's console is a serial port."""
    for arg in shlex.split(options):
        match = re.fullmatch(r"console=ttyS(\d+)(?:,(\d+))?\S*", arg)
        if match:
            return f"--unit={match.group(1)} --speed={match.group(2) or '115200'}"
    return None


def _countdown(max_counter: int) -> list[str]:
    lines = ['  if [ "${boot_counter}" = "0" -o "${boot_counter}" = "-1" ]; then']
    lines += ["    set default=1", "    set boot_counter=-1"]
    for value in range(1, max_counter + 1):
        lines.append(f'  elif [ "${{boot_counter}}" = "{value}" ]; then')
        lines.append(f"    set boot_counter={value - 1}")
    lines += ["  else", "    set default=1", "    set boot_counter=-1", "  fi"]
    return lines


def grub_config(entries: Sequence[BootEntry], settings: GrubSettings) -> str:
    """``grub.cfg`` for *entries*, given in boot order (entry 0 is the default)."""
    if not entries:
        raise BootloaderError("no boot entries: refusing to write a grub.cfg that boots nothing")
    lines = [
        "# Written by atoll from boot/loader/entries; changes are overwritten.",
        "# The protocol (greenboot's boot_counter/boot_success) is in docs/boot.md.",
    ]
    serial = _serial_console(entries[0].options)
    if serial:
        lines += [
            f"serial {serial}",
            "terminal_input serial console",
            "terminal_output serial console",
        ]
    lines += [
        f"set timeout={settings.timeout}",
        "set timeout_style=menu" if settings.timeout else "set timeout_style=hidden",
        "set default=0",
        "set fallback=1",
        "load_env",
        'if [ -n "${boot_counter}" -a "${boot_success}" = "0" ]; then',
        *_countdown(MAX_COUNTER),
        "  save_env boot_counter",
        "fi",
        "set boot_success=0",
        "save_env boot_success",
        "",
    ]
    prefix = settings.boot_prefix
    for entry in entries:
        title = entry.title or entry.id
        lines.append(f"menuentry {_quote(title)} --id {_quote(entry.id)} {{")
        args = " ".join(_word(a) for a in shlex.split(entry.options))
        lines.append(f"  linux {_word(prefix + entry.linux)}" + (f" {args}" if args else ""))
        if entry.initrd:
            lines.append("  initrd " + " ".join(_word(prefix + p) for p in entry.initrd))
        lines.append("}")
    return "\n".join(lines) + "\n"


def counter_for(first: BootEntry) -> int | None:
    """``boot_counter`` for the default entry's BLS counter (None: unset).  At
    ``+0`` it is 0, which sends GRUB to entry 1 at the next boot."""
    if first.tries_left is None:
        return None
    return min(first.tries_left, MAX_COUNTER)


def menu_order(entries: Sequence[BootEntry]) -> list[BootEntry]:
    """The entries in the order atoll wrote them (``version`` N, N-1, ... 1),
    whatever their counters say: GRUB's entry 0 is atoll's default, entry 1 the
    one to fall back to, and the counter in grubenv decides between them."""
    return sorted(entries, key=lambda e: -int(e.version) if e.version.isdigit() else 0)


def install_grub_config(boot_dir: Path, settings: GrubSettings) -> None:
    """Start managing GRUB in *boot_dir*: write ``atoll.json``, then ``grub.cfg``
    and ``grubenv`` from the current entries."""
    directory = grub_dir(boot_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, str(directory)) from exc
    write_atomic(directory / MARKER_NAME, json.dumps(settings.to_json(), indent=2).encode() + b"\n")
    sync_grub(boot_dir)


def sync_grub(boot_dir: Path, *, boot_success: bool | None = None) -> bool:
    """Bring ``grub.cfg`` and ``grubenv`` in step with the boot entries; with
    *boot_success* True, also record a green boot.  Returns False (and does
    nothing) where atoll does not manage GRUB."""
    settings = grub_settings(boot_dir)
    if settings is None:
        return False
    directory = grub_dir(boot_dir)
    with lock_boot(boot_dir):
        entries = menu_order(read_entries(boot_dir))
        write_atomic(directory / CONFIG_NAME, grub_config(entries, settings).encode())
        counter = counter_for(entries[0])
        set_vars: dict[str, str] = {}
        unset: list[str] = []
        if counter is not None:
            # The BLS counter is the truth: once a boot is up, atoll.boot.record
            # has copied GRUB's count into it, and a new entry starts afresh.
            set_vars[COUNTER] = str(counter)
            set_vars[SUCCESS] = "0"
        else:
            unset.append(COUNTER)
        if boot_success:
            set_vars[SUCCESS] = "1"
        update_grubenv(directory / ENV_NAME, set_vars, unset)
        if should_flush(settings.flush_after_write):
            # Kernels, entries, grub.cfg and grubenv are written by now: put them
            # where GRUB reads them before anything can power the machine off.
            flush_filesystem(directory)
    return True
