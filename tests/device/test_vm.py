"""The device as a real machine: disks made by ``atoll install to-disk`` and by
the installer ISO, booted in QEMU (UEFI firmware, GRUB for EFI, the Debian
kernel and an initramfs with atoll's hook).

**Two machines at a time.**  Under TCG each virtual CPU is a host thread and this
machine has two cores, so the module runs two lines of one-CPU machines side by
side: the scenario's main disk in the test's own thread, and in a second lane
(:func:`lane`) the installer ISO, the disk it installs
(:func:`install_from_iso`) and a disk with an XFS root (:func:`boot_an_xfs_root`).
Each start is one that a proof needs: the firmware, GRUB and the kernel are
started directly (``-kernel``) only where the bootloader is not under test.

The scenario's main disk is ``--boot hybrid --secure-boot``: every boot but the
last goes through OVMF with Secure Boot enforced and Microsoft's keys enrolled
(shim signed by Microsoft, GRUB and the kernel signed by Debian), and the
kernel says Secure Boot is on; the last boot is SeaBIOS through the BIOS boot
code of the same disk, reading the same grubenv counter.

v1 is installed from an ``oci-archive:`` (offline) to follow a registry image
(``--target-image``) and boots green; the device's own update timer (``atoll
updates run``, policy ``apply``) pulls v2 from the test registry over QEMU's
user network (the host's loopback is 10.0.2.2 in the guest), stages it and
reboots into it; v2 ships a required check that fails, so each of its boots is
red and reboots; GRUB counts the attempts in grubenv and, after three
(greenboot's default), boots v1 on its own; atoll records the rollback and why;
the timer pulls v3, which goes green. Data written to /var before the first
upgrade is there at the end, on /var's own partition (``--layout``: mounted
through the deployment's fstab, udev making /dev/disk/by-uuid), and /usr is
read-only in every deployment. The disk is made 3 GiB and grown to 4 GiB before
the first boot, which grows the root partition and its file system to the end
(systemd-repart, systemd-growfs). Each boot is a fresh QEMU process
(``-no-reboot``); the VM reports on its serial console (lines starting with
``VMTEST``, from helpers.vm.DRIVER_FILES).

The disk the installer ISO writes follows a registry image too: its own
timer pulls an update whose kernel is not signed, which shim refuses under
Secure Boot while GRUB boots the previous deployment (:func:`install_from_iso`);
it goes to vmdk and back before its first start and to vhdx and back before its
second.  GRUB waits ten seconds for a key after shim refused a kernel; the
test types one on the serial console (``answers`` of :func:`boot_vm`).

v1 and v2 carry an initramfs made by initramfs-tools (Debian's generator);
v3's is made by dracut (the Fedora/RHEL family's), so the last upgrade boots
through atoll's dracut module.  Then each of the two initramfs is started
directly (``-kernel``/``-initrd``) with ``atoll=`` naming a deployment that
does not exist, initramfs-tools' on the main disk and dracut's on the
ISO-installed one (the two lanes end closer together): each refuses it on the
console and reboots.
Every poweroff and every refusal leaves the root file system clean (no
journal to replay).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atoll.build.disk import CONVERSIONS, ImageType
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
from helpers.osimage import FileSpec, Spec
from helpers.parts import missing, require_tool
from helpers.registry import RegistryView
from helpers.vm import (
    HOST_FROM_GUEST,
    STEP_FILE,
    TEST_KARGS,
    XFS_MODULES,
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

#: How long one boot may take before it counts as hung: generous, because two
#: machines share the cores with whatever else runs (a boot that takes 30 s on an
#: idle machine took over 240 s at a load average of 30).
BOOT_TIMEOUT = 600
#: Each machine gets one virtual CPU: two run side by side (TCG: a host thread per
#: virtual CPU, and two cores here), and a lone boot barely uses a second one.
CPUS = 1
#: A boot in which the device updates itself: it also fetches, imports and checks
#: out the new version, and finalizes it on the way down.
UPDATE_BOOT_TIMEOUT = 1200
UDEV_UNITS = (
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
)
UDEV_TRIGGER_DROPIN = "etc/systemd/system/systemd-udev-trigger.service.d/vmtest.conf"
#: At boot udev replays the kernel's events of block devices only: the disks are
#: what it is there for (the machine's other devices need no rules), and replaying
#: every device's took about 3 s more of each start under emulation.
UDEV_TRIGGER_BLOCK = """\
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=block
"""
#: The test disks' kernel arguments; net.ifnames=0: udev keeps the name eth0,
#: which the test's driver brings up.
NET_KARGS = (*TEST_KARGS, "net.ifnames=0")
#: What GRUB shows when an entry failed to boot (shim refused its kernel) before
#: it boots the fallback entry: it waits ten seconds for a key, and gets one.
GRUB_WAITS = "Press any key to continue..."
#: The boot attempts v2 gets (greenboot's default): GRUB falls back after this many red boots.
TRIES = 3
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


def report(said: str) -> dict[str, Any]:
    """The VMTEST lines in what one boot *said* on the console."""
    lines = [line.split("VMTEST ", 1)[1] for line in said.splitlines() if "VMTEST " in line]
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
            target, fstype, options = rest.split()
            found["mounts"][target] = options.split(",")
            found.setdefault("fstypes", {})[target] = fstype
        elif word == "grubenv":
            found["grubenv"] = dict(item.split("=", 1) for item in rest.split())
        elif word == "secureboot":
            found["secureboot"] = rest.strip()
    return found


class Machine:
    """One machine: its disk, its console log, its UEFI variable store (kept
    across its boots, as on a real one), and how long each of its boots took."""

    def __init__(
        self, disk: Path, console: Path, efi_vars: Path | None = None, *, memory_mib: int = 1024
    ) -> None:
        self.disk = disk
        self.console = console
        #: Microsoft's keys enrolled, Secure Boot on (OVMF's secboot build enforces it).
        self.efi_vars = efi_vars
        self.memory_mib = memory_mib
        self.boots: list[tuple[str, VMBoot]] = []
        self.began = time.monotonic()
        self.prepared = 0.0
        self.ended = 0.0

    def start(
        self,
        label: str,
        expect: DeviceBootOutcome,
        *,
        firmware: Firmware,
        disk: Path | None = None,
        timeout: float = BOOT_TIMEOUT,
        **kwargs: Any,
    ) -> str:
        """One boot of *disk* (the machine's own by default); what it said on the console."""
        start = self.console.stat().st_size if self.console.exists() else 0
        result = boot_vm(
            disk or self.disk,
            timeout=timeout,
            console_log=self.console,
            firmware=firmware,
            efi_vars=self.efi_vars if firmware is Firmware.UEFI else None,
            secure_boot=firmware is Firmware.UEFI and self.efi_vars is not None,
            memory_mib=self.memory_mib,
            cpus=CPUS,
            answers=[(GRUB_WAITS, "\r")],
            **kwargs,
        )
        self.boots.append((f"{label} ({firmware})", result))
        assert result.outcome is expect, (
            f"boot {len(self.boots)} ({label}): {result.outcome} after {result.duration:.0f} s, "
            f"not {expect}:\n{result.console_tail}"
        )
        return self.console.read_bytes()[start:].decode(errors="replace")

    def boot(
        self,
        data: Path,
        expect: DeviceBootOutcome,
        *,
        timeout: float = BOOT_TIMEOUT,
        firmware: Firmware = Firmware.UEFI,
        disk: Path | None = None,
    ) -> dict[str, Any]:
        """A boot of *disk* (the machine's own by default) with *data* as its data
        disk, on QEMU's user network: the driver's report, and under ``said`` the
        whole console."""
        said = self.start(
            data.name, expect, firmware=firmware, timeout=timeout, disk=disk,
            extra_disks=[data], network=True,
        )  # fmt: skip
        return {**report(said), "said": said}

    def summary(self, name: str) -> str:
        timings = ", ".join(f"{label} {b.outcome} {b.duration:.0f}s" for label, b in self.boots)
        accel = self.boots[0][1].accel if self.boots else "-"
        took = (self.ended or time.monotonic()) - self.began
        return (
            f"{name} ({accel}): {took:.0f} s, prepared in {self.prepared:.0f} s; boots: {timings}"
        )


def refuse_missing_deployment(
    machine: Machine, disk: Path, vm_tree: DebianTree, initrds: list[Path]
) -> None:
    """Each initramfs in *initrds*, started directly (no bootloader: SeaBIOS hands
    QEMU's ``-kernel`` over sooner than OVMF) with *disk*'s kernel arguments but
    ``atoll=`` naming a deployment that is not there: it says so and reboots, and
    leaves the root file system clean."""
    linux = next(
        line.split()
        for line in disk_file(disk, "/boot/grub/grub.cfg").splitlines()
        if line.strip().startswith("linux ")
    )
    booted = next(a for a in linux if a.startswith("atoll=")).removeprefix("atoll=")
    ghost = booted.rsplit("/", 1)[0] + "/" + "0" * 64 + ".0"
    args = [f"atoll={ghost}" if a.startswith("atoll=") else a for a in linux[2:]]
    assert f"atoll={ghost}" in args
    vmlinuz = vm_tree.rootfs / "usr/lib/modules" / tree_kver(vm_tree) / "vmlinuz"
    for initrd in initrds:
        direct = DirectKernel(vmlinuz, initrd, " ".join(args))
        said = machine.start(f"{initrd.name} direct", DeviceBootOutcome.REBOOT,
                             firmware=Firmware.BIOS, disk=disk, direct=direct)  # fmt: skip
        assert f"atoll: cannot boot {ghost}: the deployment does not exist" in said
        # Both wait as long as the kernel argument panic=1 asks, not their 5 s default.
        assert "atoll: the deployment cannot be booted; rebooting (panic=1)" in said
        assert clean(disk), f"{initrd.name} rebooted with the root file system dirty"


#: The nice value of the module's threads, and so of the machines and commands
#: they start: the module is the suite's longest path, and a machine under
#: emulation slows down more than in proportion to the CPU it loses to the other
#: worker (a quiet UEFI start of the scenario's disk: 33 s; beside three busy
#: loops: 71 s; docs/performance.md, VM tests).  It counts against the other
#: worker's own processes, which beside this module are the unit tests'
#: (tests/conftest.py); containers' processes are in sessions of their own,
#: which the kernel's autogroups share the CPU between whatever their nice value.
NICE = -5


@pytest.fixture(scope="module", autouse=True)
def ahead_of_the_other_worker() -> Iterator[None]:
    """The module's threads at :data:`NICE` (root may raise a priority): set before
    the lane's thread is made, which takes this thread's value; put back at the
    end, so the worker's next modules run as the rest of the suite does."""
    before = os.getpriority(os.PRIO_PROCESS, 0)  # Linux: this thread's
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except PermissionError:
        yield  # not root: the tree fixture skips the module anyway
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


@pytest.fixture(scope="module")
def lane() -> Iterator[ThreadPoolExecutor]:
    """The second line of machines, beside the test's own: its jobs run one at a time."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vm-lane")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class LaneJob:
    """A job in the lane: the machine it boots (for its timings) and its end."""

    machine: Machine
    future: Future[None]


def run_in_lane(lane: ThreadPoolExecutor, machine: Machine, job: Callable[[], None]) -> LaneJob:
    def timed() -> None:
        machine.began = time.monotonic()
        try:
            job()
        finally:
            machine.ended = time.monotonic()

    return LaneJob(machine, lane.submit(timed))


@pytest.mark.timeout(5400)
@pytest.mark.usefixtures("iso_install")  # started first: it runs in the lane beside this test
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
        UDEV_TRIGGER_DROPIN: UDEV_TRIGGER_BLOCK,
    }
    v2 = {
        **common,
        f"{REQUIRED}/50-control-plane.sh": FileSpec(FAILING_CHECK.encode(), 0o755),
    }
    kver = tree_kver(vm_tree)
    dracut = make_initramfs(vm_tree, "dracut")
    v3 = {**common, f"usr/lib/modules/{kver}/initramfs.img": FileSpec(dracut.read_bytes(), 0o644)}
    for ref, version, add in (("1", "1.0", common), ("2", "2.0", v2), ("3", "3.0", v3)):
        build_vm_image(layout, ref, vm_tree, platform, version=version, add=add)  # type: ignore[arg-type]
    atoll("image", "copy", f"oci:{layout}:1", f"oci-archive:{images}/os.tar")

    def publish(ref: str) -> None:
        publish_stable(registry, layout, ref, repo)

    kargs = [arg for karg in NET_KARGS for arg in ("--karg", karg)]
    data_update = make_data_disk(tmp_path / "data-update.img", {STEP_FILE: "selfupdate"})
    data_report = make_data_disk(tmp_path / "data-report.img", {STEP_FILE: "report"})

    disk = tmp_path / "disk.raw"
    # /var on a partition of its own, before the root (docs/install.md, Partition layouts).
    layout_file = tmp_path / "layout.toml"
    layout_file.write_text('[[partition]]\nmount = "/var"\nsize = "256M"\n')
    atoll("install", "to-disk", str(disk), "--source", f"oci-archive:{images}/os.tar",
          "--target-image", tracked, "--size", "3G", "--boot", "hybrid", "--secure-boot",
          "--layout", str(layout_file), *kargs)  # fmt: skip
    (images / "os.tar").unlink()
    publish("2")
    # Written to a bigger disk than it was made for: the first boot grows the root
    # partition (systemd-repart) and its file system (systemd-growfs) to the end.
    end, _, made_fs = root_extent(disk)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(disk), "4G"], check=True)
    (tmp_path / "first").mkdir()
    vm = Machine(
        disk, tmp_path / "console.log", fresh_efi_vars(tmp_path / "first", secure_boot=True)
    )
    vm.began = started
    vm.prepared = time.monotonic() - started
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
        assert env.get("boot_counter") == str(TRIES) and env.get("boot_success") == "0"
        menu = [m for m in disk_file(disk, "/boot/grub/grub.cfg").splitlines() if "menuentry" in m]
        assert " 2.0 (" in menu[0] and " 1.0 (" in menu[1]  # v2 is tried first, v1 is next
        # v2: red at each of its boots; GRUB counts each down before the kernel starts.
        for left in map(str, reversed(range(TRIES))):
            red = vm.boot(data_report, DeviceBootOutcome.REBOOT)
            assert red["lines"] == []  # the driver runs only after a green check
            assert grubenv(disk).get("boot_counter") == left
        # GRUB falls back to v1 by itself; atoll records why; the timer pulls v3.
        publish("3")
        back = vm.boot(data_update, DeviceBootOutcome.REBOOT, timeout=UPDATE_BOOT_TIMEOUT)
        assert back["version"] == "1.0" and back["secureboot"] == "enabled"
        assert back["data"] == "written by 1.0"
        assert back["usr"] == "read-only"
        rollback = back["status"]["status"]["atoll"]["lastRollback"]
        assert rollback["attemptsUsed"] == TRIES
        assert rollback["reason"]["name"] == "50-control-plane.sh"
        assert rollback["reason"]["exitCode"] == 7
        assert "control plane" in rollback["reason"]["output"]
        assert back["status"]["status"]["rollback"]["image"]["version"] == "2.0"
        # v2 came from the registry: the driver only waited, the update timer fetched it.
        assert back["status"]["status"]["rollback"]["image"]["image"]["image"] == tracked
        assert back["status"]["status"]["rollback"]["atoll"]["bootState"] == "bad"
        outcomes = [h["outcome"] for h in back["history"]]
        assert outcomes[-TRIES - 1 :] == ["red"] * TRIES + ["green"]
        assert "done" in back["lines"]
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
        # Each initramfs, started directly, refuses a deployment that is not there.
        refuse_missing_deployment(vm, disk, vm_tree, [make_initramfs(vm_tree)])
        vm.ended = time.monotonic()
    finally:
        print(f"\n{vm.summary('VM scenario')}")


def publish_stable(registry: RegistryView, layout: Path, ref: str, repo: str) -> None:
    """Tag *ref* of the OCI layout *layout* as ``REPO:stable`` in *registry*."""
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:{ref}",
        f"docker://{registry.host}/{repo}:stable",
    )  # fmt: skip


def zeroes(disk: Path) -> bool:
    """Whether nothing was ever written to the (sparse) disk image."""
    return disk.stat().st_blocks == 0


def qemu_img(*args: str | Path) -> str:
    return subprocess.run(
        ["qemu-img", *map(str, args)], capture_output=True, text=True, check=True
    ).stdout


def install_from_iso(machine: Machine, vm_tree: DebianTree, registry: RegistryView) -> None:
    """The installer ISO with the image embedded: with two disks its rules match
    it writes neither and powers off; with one blank disk and no network it
    installs it (``boot = "hybrid"``, ``secure-boot = true``: shim and GRUB for
    UEFI and GRUB for BIOS, made by the installer inside the VM) and powers off.
    The installed disk goes to vmdk (as ``atoll disk-image`` converts) and back
    to raw, byte for byte the same, and that copy starts through SeaBIOS (the
    hybrid disk's BIOS path): green, and its own update timer pulls the image
    the install config tracks, 2.5, from the test registry.  The disk then goes
    to vhdx and back, and starts through OVMF with Secure Boot enforced:
    2.5's kernel is not signed, so shim refuses it and GRUB boots 1.0, green,
    in the same start.  The ISO installs through OVMF (its UEFI start); the
    ISO's two-disk refusal starts through SeaBIOS, which hands QEMU's
    ``-kernel`` over sooner.  Then dracut's initramfs refuses a deployment
    that is not there on that disk (:func:`refuse_missing_deployment`), and
    the lane boots an XFS root (:func:`boot_an_xfs_root`)."""
    require_tool("xorriso", "xorriso")
    require_tool("qemu-img", "qemu-utils")
    work = machine.console.parent
    layout = work / "layout"
    platform = platform_files(vm_tree, work / "stage")
    port = registry.host.rsplit(":", 1)[1]
    repo = registry.new_repo("os")
    tracked = f"{HOST_FROM_GUEST}:{port}/{repo}:stable"
    common: dict[str, str | FileSpec] = {
        "etc/vmtest-images": "/run/vmtest\n",
        "etc/containers/registries.conf": registries_conf(int(port)),
    }
    kver = tree_kver(vm_tree)
    vmlinuz = vm_tree.rootfs / "usr/lib/modules" / kver / "vmlinuz"
    # 2.5: Debian's kernel with its signature taken off (it would boot without Secure Boot).
    unsigned = {**common, f"usr/lib/modules/{kver}/vmlinuz": FileSpec(unsign(vmlinuz), 0o644)}
    platform = {**platform, **installer_tools()}
    build_vm_image(layout, "1", vm_tree, platform, version="1.0", add=common)  # type: ignore[arg-type]
    build_vm_image(layout, "unsigned", vm_tree, platform, version="2.5", add=unsigned)  # type: ignore[arg-type]
    publish_stable(registry, layout, "unsigned", repo)
    config = work / "install.toml"
    kargs = ", ".join(f'"{karg}"' for karg in NET_KARGS)
    config.write_text(
        f'version = 1\nhostname = "from-iso"\n[image]\nsource = "embedded"\ntrack = "{tracked}"\n'
        f'[disk]\nmin-size = "2G"\nboot = "hybrid"\nsecure-boot = true\n'
        f"[kernel]\nargs = [{kargs}]\n"
    )
    iso = machine.disk
    atoll("disk-image", "--type", "iso", f"oci:{layout}:1", "--config", str(config),
          "-o", str(iso), "--karg", "console=ttyS0,115200", "--karg", "quiet",
          "--karg", "no_timer_check")  # fmt: skip
    first, second = work / "first.raw", work / "second.raw"
    for blank in (first, second):
        with blank.open("wb") as fh:
            fh.truncate(3 * 1024**3)
    data_update = make_data_disk(work / "data-update.img", {STEP_FILE: "selfupdate"})
    data_report = make_data_disk(work / "data-report.img", {STEP_FILE: "report"})
    machine.prepared = time.monotonic() - machine.began
    # Two disks match min-size: the installer refuses to guess, writes neither,
    # powers off.  (The ISO's kernel started directly: the firmware is not under test.)
    grub_cfg = work / "iso-grub.cfg"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/boot/grub/grub.cfg",
         str(grub_cfg)], capture_output=True, check=True,
    )  # fmt: skip
    linux = next(
        line.split()
        for line in grub_cfg.read_text().splitlines()
        if line.strip().startswith("linux ")
    )
    direct = DirectKernel(vmlinuz, make_initramfs(vm_tree), " ".join(linux[2:]))
    said = machine.start("two disks", DeviceBootOutcome.POWEROFF, firmware=Firmware.BIOS,
                         direct=direct, extra_disks=[first, second],
                         extra_writable=True)  # fmt: skip
    assert "2 disks match the install config (at least 2147483648 bytes)" in said
    assert "atoll installer: the install failed (exit code 112); powering off" in said
    assert zeroes(first) and zeroes(second)
    # One blank disk, no network: the ISO, started by OVMF (GRUB from the ISO's
    # EFI system partition; a fresh variable store, no Secure Boot: that GRUB is
    # grub-mkrescue's, unsigned), installs the embedded image on it and powers off.
    assert machine.efi_vars is None
    said = machine.start("install", DeviceBootOutcome.POWEROFF, firmware=Firmware.UEFI,
                         timeout=UPDATE_BOOT_TIMEOUT, extra_disks=[first],
                         extra_writable=True)  # fmt: skip
    assert "atoll installer: installed in" in said, said[-3000:]
    assert "Made /dev/vdb (raw, 3072 MiB)" in said
    assert "boot_counter" not in grubenv(first)  # a first install is not on trial
    types = [p["type"] for p in json.loads(subprocess.run(
        ["sfdisk", "--json", str(first)], capture_output=True, check=True,
    ).stdout)["partitiontable"]["partitions"]]  # fmt: skip
    assert types[:2] == [BIOS_BOOT_TYPE, ESP_TYPE]
    # The installed disk to vmdk (stream-optimized, what vSphere imports) and back:
    # the machine's disk from now on.
    installed = round_trip(first, ImageType.VMDK)
    # Its first start, through SeaBIOS (the hybrid disk's BIOS path, GRUB for BIOS
    # as the installer made it): green, with the config applied; then its own update
    # timer pulls the tracked image (2.5) from the registry and reboots.
    found = machine.boot(data_update, DeviceBootOutcome.REBOOT, timeout=UPDATE_BOOT_TIMEOUT,
                         firmware=Firmware.BIOS, disk=installed)  # fmt: skip
    assert found["version"] == "1.0" and found["usr"] == "read-only"
    assert found["secureboot"] == ""  # SeaBIOS: no UEFI
    booted = found["status"]["status"]["booted"]
    assert booted["image"]["image"] == {"image": tracked, "transport": "registry"}
    assert found["history"][-1]["outcome"] == "green"
    assert found["grubenv"].get("boot_success") == "1"
    assert "done" in found["lines"]
    cfg = disk_file(installed, "/boot/grub/grub.cfg")
    deployment = next(w for w in cfg.split() if w.startswith("atoll=")).removeprefix("atoll=")
    assert disk_file(installed, f"{deployment}/etc/hostname") == "from-iso\n"
    assert "fsck.mode=skip" in cfg and "init=" not in cfg
    menu = [m for m in cfg.splitlines() if "menuentry" in m]
    assert " 2.5 (" in menu[0] and " 1.0 (" in menu[1]  # pulled from the registry, staged
    assert clean(installed)
    # The same disk to vhdx and back, then on a machine with Secure Boot enforced:
    # 2.5's kernel is not signed, so shim refuses it and GRUB boots the next entry
    # (1.0), green, in the same start.
    installed = round_trip(installed, ImageType.VHDX)
    (work / "vars").mkdir()
    machine.efi_vars = fresh_efi_vars(work / "vars", secure_boot=True)
    refused = machine.boot(data_report, DeviceBootOutcome.POWEROFF, disk=installed)
    assert "bad shim signature" in refused["said"] and GRUB_WAITS in refused["said"]
    assert "Falling back to `" in refused["said"]
    assert refused["version"] == "1.0" and refused["secureboot"] == "enabled"
    assert refused["status"]["status"]["booted"]["image"]["version"] == "1.0"
    assert refused["history"][-1]["outcome"] == "green"
    assert "done" in refused["lines"]
    assert clean(installed)
    # dracut's initramfs (made by the main test before the ISO's first start),
    # started directly, refuses a deployment that is not there.
    refuse_missing_deployment(machine, installed, vm_tree, [make_initramfs(vm_tree, "dracut")])
    boot_an_xfs_root(machine, vm_tree, layout, platform, common, data_report)


def boot_an_xfs_root(
    machine: Machine,
    vm_tree: DebianTree,
    layout: Path,
    platform: Spec,
    add: Spec,
    data: Path,
) -> None:
    """``--rootfs xfs``: a BIOS disk of 1.0 whose root file system is XFS, its
    initramfs made with XFS's module, through SeaBIOS: GRUB reads the kernel
    and the initramfs from XFS, the initramfs mounts it, the boot is green."""
    require_tool("mkfs.xfs", "xfsprogs")
    initramfs = make_initramfs(vm_tree, modules=XFS_MODULES)
    image: Spec = {
        **add,
        f"usr/lib/modules/{tree_kver(vm_tree)}/initramfs.img": FileSpec(
            initramfs.read_bytes(), 0o644
        ),
    }
    build_vm_image(layout, "xfs", vm_tree, platform, version="1.0", add=image)
    disk = machine.console.parent / "xfs.raw"
    kargs = [arg for karg in NET_KARGS for arg in ("--karg", karg)]
    atoll("install", "to-disk", str(disk), "--source", f"oci:{layout}:xfs", "--size", "2G",
          "--boot", "bios", "--rootfs", "xfs", *kargs)  # fmt: skip
    said = machine.start("XFS root", DeviceBootOutcome.POWEROFF, firmware=Firmware.BIOS,
                         disk=disk, extra_disks=[data])  # fmt: skip
    found = report(said)
    assert found["version"] == "1.0" and found["history"][-1]["outcome"] == "green"
    assert found["fstypes"]["/"] == "xfs" and found["fstypes"]["/sysroot"] == "xfs"
    assert found["usr"] == "read-only" and "done" in found["lines"]


def round_trip(disk: Path, image_type: ImageType) -> Path:
    """*disk* converted as ``atoll disk-image --type IMAGE_TYPE`` converts and back
    to raw, byte for byte the same; the copy (*disk* is removed)."""
    fmt, options = CONVERSIONS[image_type]
    converted = disk.with_name(f"{disk.stem}.{fmt}")
    copy = disk.with_name(f"{disk.stem}-from-{fmt}.raw")
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, disk, converted)
    info = json.loads(qemu_img("info", "--output", "json", converted))
    assert info["format"] == fmt
    if image_type is ImageType.VMDK:  # what vSphere imports
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    qemu_img("convert", "-f", fmt, "-O", "raw", converted, copy)
    converted.unlink()
    # The same bytes (qemu-img reads holes as holes, where cmp reads 3 GiB of each).
    same = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", disk, copy], check=False
    )
    assert same.returncode == 0, f"{disk} came back from {fmt} changed"
    disk.unlink()
    return copy


@pytest.fixture(scope="module")
def iso_install(
    vm_tree: DebianTree,
    lane: ThreadPoolExecutor,
    registry_servers: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> LaneJob:
    """The installer ISO's machines, in the lane from the first test that asks."""
    work = tmp_path_factory.mktemp("iso")
    registry = RegistryView(registry_servers.get("plain"), work, registry_servers.policy)
    machine = Machine(work / "installer.iso", work / "console.log", memory_mib=1536)
    return run_in_lane(lane, machine, lambda: install_from_iso(machine, vm_tree, registry))


@pytest.mark.timeout(5400)
def test_an_iso_installs_a_blank_disk_offline_which_updates_itself(iso_install: LaneJob) -> None:
    """See :func:`install_from_iso`: run in the lane, it has been going since the
    module's first test started."""
    try:
        iso_install.future.result()
    finally:
        print(f"\n{iso_install.machine.summary('ISO install, vmdk, vhdx, self-update, XFS root')}")
