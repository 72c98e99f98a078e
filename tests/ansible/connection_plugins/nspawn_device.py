# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An Ansible connection into a device booted by ``atoll device boot``: commands
run with nsenter in the namespaces of the container's PID 1, found anew for each
command from the systemd-nspawn process that boots the sysroot (``ansible_host``),
so it follows the device across reboots.  As with SSH, which a device starts late
in its boot, a command runs only once the device's systemd has finished booting
(``systemctl is-system-running --wait``): entered earlier, a module written to /tmp
could be hidden by the boot mounting its /tmp over it.  A test tool, not part of the
collection: community.general's nsenter connection does the same for a fixed PID."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: nspawn_device
short_description: Run commands in a device booted by atoll device boot
description:
  - Enters the namespaces of the booted container's PID 1 with nsenter.
options:
  remote_addr:
    description: The device's sysroot on the controller.
    default: inventory_hostname
    vars:
      - name: ansible_host
"""

ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
NAMESPACES = ["--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd"]
#: How long a connection waits for a device's boot to finish.
BOOT_WAIT = 300
#: Containers (by the host PID of their PID 1) whose boot was seen finished.
_BOOTED: set[str] = set()


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def container_leader(sysroot: str) -> str:
    """The host PID of the container's PID 1 for the nspawn that boots *sysroot*."""
    prefix = f"--directory={Path(sysroot).resolve()}/"
    for proc in Path("/proc").iterdir():
        argv = _cmdline(proc) if proc.name.isdigit() else []
        if not argv or Path(argv[0]).name != "systemd-nspawn":
            continue
        if any(a.startswith(prefix) for a in argv):
            try:
                children = (proc / "task" / proc.name / "children").read_text().split()
            except OSError:
                children = []
            if children:
                return children[0]
    raise AnsibleConnectionFailure(f"no booted device for the sysroot {sysroot}")


class Connection(ConnectionBase):  # type: ignore[misc]
    transport = "nspawn_device"
    has_pipelining = True

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def _enter(self, argv: list[str]) -> list[str]:
        leader = container_leader(self.get_option("remote_addr"))
        entered = ["nsenter", "--target", leader, *NAMESPACES, "--", *ENV]
        if leader not in _BOOTED:
            self._wait_booted(entered)
            _BOOTED.add(leader)
        return [*entered, *argv]

    @staticmethod
    def _wait_booted(entered: list[str]) -> None:
        """Until systemd in the device says its boot has finished.  Entered in the
        first moments of a boot, before systemd answers on its bus, systemctl says
        nothing: that is asked again, as SSH would be retried until it answers, while
        that container lives."""
        deadline = time.monotonic() + BOOT_WAIT
        state = ""
        leader = Path("/proc", entered[2])
        while time.monotonic() < deadline and leader.exists():  # a reboot ends the wait
            wait = [*entered, "systemctl", "is-system-running", "--wait"]
            try:
                proc = subprocess.run(
                    wait, capture_output=True, timeout=deadline - time.monotonic(), check=False
                )
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.decode(errors="replace").strip()
            if state in ("running", "degraded"):
                return
            time.sleep(1)
        raise AnsibleConnectionFailure(
            f"the device did not finish a boot in {BOOT_WAIT} s (systemd: {state!r})"
        )

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = subprocess.run(
            self._enter(["/bin/sh", "-c", cmd]),
            input=in_data or b"",
            capture_output=True,
            check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with Path(in_path).open("rb") as source:
            proc = subprocess.run(
                self._enter(["/bin/sh", "-c", 'cat > "$1"', "sh", out_path]),
                stdin=source,
                capture_output=True,
                check=False,
            )
        if proc.returncode != 0:
            raise AnsibleConnectionFailure(f"cannot write {out_path}: {proc.stderr!r}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        proc = subprocess.run(
            self._enter(["cat", in_path]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AnsibleConnectionFailure(f"cannot read {in_path}: {proc.stderr!r}")
        Path(out_path).write_bytes(proc.stdout)

    def close(self, *args: Any) -> None:
        self._connected = False
