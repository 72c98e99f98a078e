"""The device as a real machine: a disk made by ``atoll install to-disk``, booted
in QEMU (UEFI firmware, GRUB for EFI, the Debian kernel and an initramfs with
atoll's hook).  The disk is ``--boot hybrid --secure-boot``: every boot but the
last goes through OVMF with Secure Boot enforced and Microsoft's keys enrolled
(shim signed by Microsoft, GRUB and the kernel signed by Debian), and the
kernel says Secure Boot is on; the last boot is SeaBIOS through the BIOS boot
code of the same disk, reading the same grubenv counter.

v1 is installed from an ``oci-archive:`` (offline) to follow a registry image
(``--target-image``) and boots green; the device's own update timer
(``atoll updates run``, policy ``apply``) pulls v2 from the test registry over
QEMU's user network (the host's loopback is 10.0.2.2 in the guest), stages it
and reboots into it; v2 ships a required check that fails, so each of its boots
is red and reboots; GRUB counts the attempts in grubenv and, after three, boots
v1 on its own; atoll records the rollback and why; the timer pulls v3, which
goes green.  Data written to /var before the first upgrade
is there at the end, on /var's own partition (``--layout``: mounted through the
deployment's fstab), and /usr is read-only in every deployment.  The disk is
made 3 GiB and grown to 4 GiB before the first boot, which grows the root
partition and its file system to the end (systemd-repart, systemd-growfs).  Each boot is a
fresh QEMU process (``-no-reboot``); the VM reports on its serial console
(lines starting with ``VMTEST``, from helpers.vm.DRIVER_FILES).

v1 and v2 carry an initramfs made by initramfs-tools (Debian's generator);
v3's is made by dracut (the Fedora/RHEL family's), so the last upgrade boots
through atoll's dracut module.  At the end, each initramfs is started directly
(``-kernel``/``-initrd``) with ``atoll=`` naming a deployment that does not
exist: each refuses it on the console and reboots.  Every poweroff and every
refusal leaves the root file system clean (no journal to replay).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from atoll.build.esp import SHIM, SIGNED_GRUB
from atoll.build.partition import BIOS_BOOT_TYPE, ESP_TYPE
from atoll.device.nspawn import DeviceBootOutcome
from atoll.device.qemu import (
    OVMF_VARS_MS,
    DirectKernel,
    Firmware,
    VMBoot,
    boot_vm,
    fresh_efi_vars,
    ovmf_file,
)
from atoll.errors import FirmwareError
from helpers.busybox_root import REQUIRED
from helpers.cli import run_atoll
from helpers.debian import DebianTree
from helpers.osimage import FileSpec
from helpers.parts import missing, require_tool
from helpers.registry import RegistryView
from helpers.vm import (
    HOST_FROM_GUEST,
    STEP_FILE,
    TEST_KARGS,
    build_vm_image,
    ensure_vm_tree,
    installer_tools,
    make_data_disk,
    make_initramfs,
    platform_files,
    registries_conf,
    tree_kver,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.integration]

BOOT_TIMEOUT = 240
#: A boot in which the device updates itself: it also fetches, imports and checks
#: out the new version, and finalizes it on the way down.
UPDATE_BOOT_TIMEOUT = 480
UDEV_UNITS = (
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
)
FAILING_CHECK = "#!/bin/sh\necho 'v2 cannot reach its control plane (on purpose)'\nexit 7\n"


@pytest.fixture(scope="module")
def vm_tree() -> DebianTree:
    if os.geteuid() != 0:
        missing("making the VM's Debian tree (debootstrap, chroot) needs root")
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debootstrap", None),
        ("sfdisk", "fdisk"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("dumpe2fs", "e2fsprogs"),
        ("grub-mkimage", "grub-common"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
    ):
        require_tool(tool, package)
    if not Path("/usr/lib/grub/i386-pc/boot.img").is_file():
        missing("GRUB for BIOS is not installed (apt-get install grub-pc-bin)")
    if not Path("/usr/lib/grub/x86_64-efi/linux.mod").is_file():
        missing("GRUB for UEFI is not installed (apt-get install grub-efi-amd64-bin)")
    try:
        ovmf_file("OVMF_CODE_4M.secboot.fd")
        ovmf_file(OVMF_VARS_MS)
    except FirmwareError:
        missing("UEFI firmware for QEMU is not installed (apt-get install ovmf)")
    if not SHIM.is_file() or not SIGNED_GRUB.is_file():
        missing("no signed shim or GRUB (apt-get install shim-signed grub-efi-amd64-signed)")
    return ensure_vm_tree()


def atoll(*args: str) -> str:
    proc = run_atoll(*args)
    assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def root_offset(disk: Path, index: int = -1) -> int:
    """Where the root file system starts: the disk's last partition (or another)."""
    table = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(table)["partitiontable"]["partitions"][index]["start"]) * 512


def disk_file(disk: Path, path: str, index: int = -1) -> str:
    """A file of the disk's root file system (or another partition's), read
    without mounting it."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{disk}?offset={root_offset(disk, index)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def clean(disk: Path) -> bool:
    """Whether the root file system was left clean (its journal needs no replay)."""
    proc = subprocess.run(
        ["dumpe2fs", "-h", f"{disk}?offset={root_offset(disk)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    features = next(
        line for line in proc.stdout.splitlines() if line.startswith("Filesystem features:")
    )
    return "needs_recovery" not in features.split()


def root_extent(disk: Path) -> tuple[int, int, int]:
    """(root partition's end, its size, its file system's size) in bytes."""
    table = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    root = json.loads(table)["partitiontable"]["partitions"][-1]
    header = subprocess.run(
        ["dumpe2fs", "-h", f"{disk}?offset={root_offset(disk)}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    fs = int(fields["Block count"]) * int(fields["Block size"])
    return (root["start"] + root["size"]) * 512, root["size"] * 512, fs


def unsign(kernel: Path) -> bytes:
    """*kernel* (a signed PE image) without its Authenticode signature: the PE
    certificate table emptied and the certificates cut off the end."""
    data = bytearray(kernel.read_bytes())
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    assert data[pe : pe + 4] == b"PE\0\0"
    optional = pe + 24
    assert struct.unpack_from("<H", data, optional)[0] == 0x20B  # PE32+
    entry = optional + 112 + 8 * 4  # the data directories; 4: the certificate table
    offset, length = struct.unpack_from("<II", data, entry)
    assert length > 0 and offset + length == len(data), "not a signed kernel"
    struct.pack_into("<II", data, entry, 0, 0)
    return bytes(data[:offset])


def grubenv(disk: Path) -> dict[str, str]:
    text = disk_file(disk, "/boot/grub/grubenv")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def report(console: Path, start: int) -> dict[str, Any]:
    """The VMTEST lines the boot printed after byte *start* of the console log."""
    text = console.read_bytes()[start:].decode(errors="replace")
    lines = [line.split("VMTEST ", 1)[1] for line in text.splitlines() if "VMTEST " in line]
    found: dict[str, Any] = {"lines": lines, "mounts": {}}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "status":
            found[word] = json.loads(rest)
        elif word == "history":  # health/history.jsonl, its lines joined by spaces
            decoder, text, records = json.JSONDecoder(), rest.strip(), []
            while text:
                record, end = decoder.raw_decode(text)
                records.append(record)
                text = text[end:].lstrip()
            found[word] = records
        elif word == "boot":
            # NAME=VALUE pairs; a value may hold spaces ("data=written by 1.0").
            found.update(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", rest))
        elif word == "mount" and rest:
            target, options = rest.split()
            found["mounts"][target] = options.split(",")
        elif word == "grubenv":
            found["grubenv"] = dict(item.split("=", 1) for item in rest.split())
        elif word == "secureboot":
            found["secureboot"] = rest.strip()
    return found


class Machine:
    def __init__(self, disk: Path, console: Path, efi_vars: Path) -> None:
        self.disk = disk
        self.console = console
        #: The machine's UEFI variable store, kept across its boots as on a real one:
        #: Microsoft's keys enrolled, Secure Boot on (OVMF's secboot build enforces it).
        self.efi_vars = efi_vars
        self.boots: list[tuple[str, VMBoot]] = []

    def boot(
        self,
        data: Path | None,
        expect: DeviceBootOutcome,
        direct: DirectKernel | None = None,
        *,
        timeout: float = BOOT_TIMEOUT,
        firmware: Firmware = Firmware.UEFI,
    ) -> dict[str, Any]:
        start = self.console.stat().st_size if self.console.exists() else 0
        result = boot_vm(
            self.disk,
            extra_disks=[data] if data else [],
            timeout=timeout,
            console_log=self.console,
            direct=direct,
            network=direct is None,
            firmware=firmware,
            efi_vars=self.efi_vars if firmware is Firmware.UEFI else None,
            secure_boot=firmware is Firmware.UEFI,
        )
        name = data.name if data else direct.initrd.name if direct else "-"
        self.boots.append((f"{name} ({firmware})", result))
        assert result.outcome is expect, (
            f"boot {len(self.boots)}: {result.outcome} after {result.duration:.0f} s, "
            f"not {expect}:\n{result.console_tail}"
        )
        return report(self.console, start)


@pytest.mark.timeout(1800)
def test_upgrade_bootloader_fallback_and_recovery(
    tmp_path: Path, vm_tree: DebianTree, registry: RegistryView
) -> None:
    started = time.monotonic()
    images = tmp_path / "images"  # the same path inside the VM, where the data disk goes
    images.mkdir()
    layout = tmp_path / "layout"
    platform = platform_files(vm_tree, tmp_path / "stage")
    port = registry.host.rsplit(":", 1)[1]
    repo = registry.new_repo("os")
    tracked = f"{HOST_FROM_GUEST}:{port}/{repo}:stable"  # the image, as the device names it
    common: dict[str, object] = {
        "etc/vmtest-images": f"{images}\n",
        "etc/containers/registries.conf": registries_conf(int(port)),
        # udev, which the VM tree masks, makes /dev/disk/by-uuid, through which the
        # deployment's fstab mounts /var's own partition.
        **{f"etc/systemd/system/{unit}": None for unit in UDEV_UNITS},
    }
    v2 = {**common, f"{REQUIRED}/50-control-plane.sh": FileSpec(FAILING_CHECK.encode(), 0o755)}
    kver = tree_kver(vm_tree)
    dracut = make_initramfs(vm_tree, "dracut")
    v3 = {**common, f"usr/lib/modules/{kver}/initramfs.img": FileSpec(dracut.read_bytes(), 0o644)}
    vmlinuz = vm_tree.rootfs / "usr/lib/modules" / kver / "vmlinuz"
    # 2.5: Debian's kernel with its signature taken off (it would boot without Secure Boot).
    unsigned = {**common, f"usr/lib/modules/{kver}/vmlinuz": FileSpec(unsign(vmlinuz), 0o644)}
    for ref, version, add in (
        ("1", "1.0", common), ("2", "2.0", v2), ("unsigned", "2.5", unsigned), ("3", "3.0", v3),
    ):  # fmt: skip
        build_vm_image(layout, ref, vm_tree, platform, version=version, add=add)  # type: ignore[arg-type]
    atoll("image", "copy", f"oci:{layout}:1", f"oci-archive:{images}/os.tar")

    def publish(ref: str) -> None:
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:{ref}",
            f"docker://{registry.host}/{repo}:stable",
        )  # fmt: skip

    disk = tmp_path / "disk.raw"
    # net.ifnames=0: udev keeps the name eth0, which the test's driver brings up.
    kargs = [arg for karg in (*TEST_KARGS, "net.ifnames=0") for arg in ("--karg", karg)]
    # /var on a partition of its own, before the root (docs/install.md, Partition layouts).
    layout_file = tmp_path / "layout.toml"
    layout_file.write_text('[[partition]]\nmount = "/var"\nsize = "256M"\n')
    atoll("install", "to-disk", str(disk), "--source", f"oci-archive:{images}/os.tar",
          "--target-image", tracked, "--size", "3G", "--boot", "hybrid", "--secure-boot",
          "--layout", str(layout_file), *kargs)  # fmt: skip
    (images / "os.tar").unlink()
    data_update = make_data_disk(tmp_path / "data-update.img", {STEP_FILE: "selfupdate"})
    data_report = make_data_disk(tmp_path / "data-report.img", {STEP_FILE: "report"})
    publish("2")
    # Written to a bigger disk than it was made for: the first boot grows the root
    # partition (systemd-repart) and its file system (systemd-growfs) to the end.
    end, _, made_fs = root_extent(disk)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(disk), "4G"], check=True)
    prepared = time.monotonic() - started

    efi_vars = fresh_efi_vars(tmp_path, secure_boot=True)
    vm = Machine(disk, tmp_path / "console.log", efi_vars)
    try:
        # v1, installed: green; writes /var data; its update timer pulls v2 from the
        # registry, stages it, and reboots into it (finalized on the way down).
        first = vm.boot(data_update, DeviceBootOutcome.REBOOT, timeout=UPDATE_BOOT_TIMEOUT)
        assert first["version"] == "1.0"
        assert first["initrd"] == "script"  # initramfs-tools
        # Shim (Microsoft's signature), GRUB and the kernel (Debian's) passed the checks.
        assert first["secureboot"] == "enabled"
        assert first["usr"] == "read-only" and "ro" in first["mounts"]["/usr"]
        assert "rw" in first["mounts"]["/"] and "rw" in first["mounts"]["/var"]
        assert first["data"] == "none"
        assert "done" in first["lines"]
        booted = first["status"]["status"]["booted"]
        assert booted["image"]["version"] == "1.0"
        assert booted["image"]["image"] == {"image": tracked, "transport": "registry"}
        assert clean(disk), "the reboot left the root file system's journal to replay"
        grown_end, grown_size, grown_fs = root_extent(disk)
        assert made_fs < 3 * 1024**3 < grown_fs
        # The partition reaches the end (before GPT's copy), the file system fills it.
        assert grown_end > disk.stat().st_size - 1024**2 > end
        assert grown_size - grown_fs < 4096
        env = grubenv(disk)
        assert env.get("boot_counter") == "3" and env.get("boot_success") == "0"
        menu = [m for m in disk_file(disk, "/boot/grub/grub.cfg").splitlines() if "menuentry" in m]
        assert " 2.0 (" in menu[0] and " 1.0 (" in menu[1]  # v2 is tried first, v1 is next
        # v2: three red boots; GRUB counts each down before the kernel starts.
        for left in ("2", "1", "0"):
            red = vm.boot(data_report, DeviceBootOutcome.REBOOT)
            assert red["lines"] == []  # the driver runs only after a green check
            assert grubenv(disk).get("boot_counter") == left
        # GRUB falls back to v1 by itself; atoll records why; the timer pulls 2.5,
        # whose kernel is not signed.
        publish("unsigned")
        back = vm.boot(data_update, DeviceBootOutcome.REBOOT, timeout=UPDATE_BOOT_TIMEOUT)
        assert back["version"] == "1.0"
        assert back["data"] == "written by 1.0"
        assert back["usr"] == "read-only"
        rollback = back["status"]["status"]["atoll"]["lastRollback"]
        assert rollback["attemptsUsed"] == 3
        assert rollback["reason"]["name"] == "50-control-plane.sh"
        assert rollback["reason"]["exitCode"] == 7
        assert "control plane" in rollback["reason"]["output"]
        assert back["status"]["status"]["rollback"]["image"]["version"] == "2.0"
        # v2 came from the registry: the driver only waited, the update timer fetched it.
        assert back["status"]["status"]["rollback"]["image"]["image"]["image"] == tracked
        assert back["status"]["status"]["rollback"]["atoll"]["bootState"] == "bad"
        outcomes = [h["outcome"] for h in back["history"]]
        assert outcomes[-4:] == ["red", "red", "red", "green"]
        assert "done" in back["lines"]
        # 2.5's kernel: signed GRUB has shim check it, shim refuses it, and GRUB boots
        # the next entry (v1) in the same boot; v1's timer pulls v3.
        publish("3")
        start = vm.console.stat().st_size
        refused = vm.boot(data_update, DeviceBootOutcome.REBOOT, timeout=UPDATE_BOOT_TIMEOUT)
        said = vm.console.read_bytes()[start:].decode(errors="replace")
        assert "bad shim signature" in said
        assert "Falling back to `" in said
        assert refused["version"] == "1.0" and refused["secureboot"] == "enabled"
        assert refused["data"] == "written by 1.0"
        assert "done" in refused["lines"]
        # v3: green, the /var data still there, /usr read-only, the counter gone; this
        # boot is the same disk's BIOS path (SeaBIOS, boot.img, core.img).
        last = vm.boot(data_report, DeviceBootOutcome.POWEROFF, firmware=Firmware.BIOS)
        assert last["version"] == "3.0"
        assert last["initrd"] == "systemd"  # dracut: its module made the deployment the root
        assert last["secureboot"] == ""  # SeaBIOS: no UEFI, no Secure Boot
        assert last["data"] == "written by 1.0"
        # The data is on the /var partition (mounted from the deployment's fstab, by
        # v1, v2 and v3 alike), and the root file system's /var is its empty mount point.
        assert disk_file(disk, "/lib/vmtest/data", index=-2) == "written by 1.0\n"
        assert disk_file(disk, "/atoll/deploy/default/var/lib/vmtest/data") == ""
        assert last["usr"] == "read-only"
        assert last["status"]["status"]["booted"]["atoll"]["bootState"] == "good"
        assert last["status"]["status"]["booted"]["image"]["image"]["image"] == tracked
        assert last["mounts"]["/sysroot"]
        env = grubenv(disk)
        assert env.get("boot_success") == "1" and "boot_counter" not in env
        assert clean(disk)
        # Each initramfs refuses a deployment that is not there, says so, and reboots.
        linux = next(
            line.split()
            for line in disk_file(disk, "/boot/grub/grub.cfg").splitlines()
            if line.strip().startswith("linux ")
        )
        booted = next(a for a in linux if a.startswith("atoll=")).removeprefix("atoll=")
        ghost = booted.rsplit("/", 1)[0] + "/" + "0" * 64 + ".0"
        args = [f"atoll={ghost}" if a.startswith("atoll=") else a for a in linux[2:]]
        assert f"atoll={ghost}" in args
        for initrd in (make_initramfs(vm_tree), dracut):
            start = vm.console.stat().st_size
            # No bootloader here: SeaBIOS hands QEMU's -kernel over sooner than OVMF.
            direct = DirectKernel(vmlinuz, initrd, " ".join(args))
            vm.boot(None, DeviceBootOutcome.REBOOT, direct, firmware=Firmware.BIOS)
            said = vm.console.read_bytes()[start:].decode(errors="replace")
            assert f"atoll: cannot boot {ghost}: the deployment does not exist" in said
            assert "atoll: the deployment cannot be booted; rebooting" in said
            assert clean(disk), f"{initrd.name} rebooted with the root file system dirty"
    finally:
        timings = ", ".join(f"{name} {b.outcome} {b.duration:.0f}s" for name, b in vm.boots)
        accel = vm.boots[0][1].accel if vm.boots else "-"
        print(f"\nVM scenario ({accel}): prepared in {prepared:.0f} s; boots: {timings}")


def zeroes(disk: Path) -> bool:
    """Whether nothing was ever written to the (sparse) disk image."""
    return disk.stat().st_blocks == 0


@pytest.mark.timeout(2400)
def test_an_iso_installs_a_blank_disk_offline(tmp_path: Path, vm_tree: DebianTree) -> None:
    """The installer ISO with the image embedded: with two disks its rules match
    it writes neither and powers off; with one blank disk and no network it
    installs it and powers off; the installed disk (``boot = "hybrid"``: GRUB for
    UEFI and BIOS, both made by the installer inside the VM) boots green.  The
    firmware boots are SeaBIOS's: OVMF costs more time under emulation, and the
    UEFI path of a disk is the scenario test's."""
    require_tool("xorriso", "xorriso")
    started = time.monotonic()
    layout = tmp_path / "layout"
    platform = platform_files(vm_tree, tmp_path / "stage")
    build_vm_image(layout, "1", vm_tree, {**platform, **installer_tools()}, version="1.0")
    tracked = "registry.example.com/os/edge:stable"
    config = tmp_path / "install.toml"
    kargs = ", ".join(f'"{karg}"' for karg in TEST_KARGS)
    config.write_text(
        f'version = 1\nhostname = "from-iso"\n[image]\nsource = "embedded"\ntrack = "{tracked}"\n'
        f'[disk]\nmin-size = "2G"\nboot = "hybrid"\n[kernel]\nargs = [{kargs}]\n'
    )
    iso = tmp_path / "installer.iso"
    atoll("disk-image", "--type", "iso", f"oci:{layout}:1", "--config", str(config),
          "-o", str(iso), "--karg", "console=ttyS0,115200", "--karg", "quiet")  # fmt: skip
    first, second = tmp_path / "first.raw", tmp_path / "second.raw"
    for blank in (first, second):
        with blank.open("wb") as fh:
            fh.truncate(3 * 1024**3)
    prepared = time.monotonic() - started
    console = tmp_path / "console.log"
    boots: list[tuple[str, VMBoot]] = []
    boots_at: list[int] = []

    def boot(name: str, disk: Path, expect: DeviceBootOutcome, **kwargs: Any) -> str:
        start = console.stat().st_size if console.exists() else 0
        boots_at.append(start)
        result = boot_vm(disk, console_log=console, memory_mib=1536, **kwargs)
        boots.append((name, result))
        assert result.outcome is expect, f"{name}: {result.outcome}:\n{result.console_tail}"
        return console.read_bytes()[start:].decode(errors="replace")

    try:
        # Two disks match min-size: the installer refuses to guess, writes neither,
        # powers off.  (The ISO's kernel started directly: the firmware is not under test.)
        grub_cfg = tmp_path / "iso-grub.cfg"
        subprocess.run(
            ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/boot/grub/grub.cfg",
             str(grub_cfg)], capture_output=True, check=True,
        )  # fmt: skip
        linux = next(
            line.split()
            for line in grub_cfg.read_text().splitlines()
            if line.strip().startswith("linux ")
        )
        kver = tree_kver(vm_tree)
        direct = DirectKernel(
            vm_tree.rootfs / "usr/lib/modules" / kver / "vmlinuz",
            make_initramfs(vm_tree),
            " ".join(linux[2:]),
        )
        said = boot("two disks", iso, DeviceBootOutcome.POWEROFF, timeout=BOOT_TIMEOUT,
                    direct=direct, extra_disks=[first, second], extra_writable=True)  # fmt: skip
        assert "2 disks match the install config (at least 2147483648 bytes)" in said
        assert "atoll installer: the install failed (exit code 112); powering off" in said
        assert zeroes(first) and zeroes(second)
        # One blank disk, no network: the ISO (SeaBIOS, GRUB from El Torito's
        # hybrid MBR) installs the embedded image on it and powers off.
        said = boot("install", iso, DeviceBootOutcome.POWEROFF, timeout=UPDATE_BOOT_TIMEOUT * 2,
                    extra_disks=[first], extra_writable=True, firmware=Firmware.BIOS)  # fmt: skip
        assert "atoll installer: installed in" in said, said[-3000:]
        assert "Made /dev/vdb (raw, 3072 MiB)" in said
        assert "boot_counter" not in grubenv(first)  # a first install is not on trial
        types = [p["type"] for p in json.loads(subprocess.run(
            ["sfdisk", "--json", str(first)], capture_output=True, check=True,
        ).stdout)["partitiontable"]["partitions"]]  # fmt: skip
        assert types[:2] == [BIOS_BOOT_TYPE, ESP_TYPE]
        # The installed disk, alone: green first boot, the config applied.
        said = boot("installed", first, DeviceBootOutcome.POWEROFF, timeout=BOOT_TIMEOUT,
                    firmware=Firmware.BIOS)  # fmt: skip
        found = report(console, boots_at[-1])
        assert found["version"] == "1.0" and found["usr"] == "read-only"
        booted = found["status"]["status"]["booted"]
        assert booted["image"]["image"] == {"image": tracked, "transport": "registry"}
        assert found["history"][-1]["outcome"] == "green"
        assert found["grubenv"].get("boot_success") == "1"
        cfg = disk_file(first, "/boot/grub/grub.cfg")
        deployment = next(w for w in cfg.split() if w.startswith("atoll=")).removeprefix("atoll=")
        assert disk_file(first, f"{deployment}/etc/hostname") == "from-iso\n"
        assert "fsck.mode=skip" in cfg and "init=" not in cfg
        assert clean(first)
    finally:
        timings = ", ".join(f"{name} {b.outcome} {b.duration:.0f}s" for name, b in boots)
        print(f"\nISO install: prepared in {prepared:.0f} s; boots: {timings}")
