"""The atoll.edge modules on a device booted under systemd-nspawn (``atoll device
boot --keep-running``): Ansible reaches it through the test's ``nspawn_device``
connection (nsenter into the container's namespaces), runs the device's own
python3 and the atoll installed in its image, with the default sysroot
``/sysroot`` and root ``/``, and systemd answering for the workloads.  The
playbook switches to a new image and reboots into it with
``ansible.builtin.reboot``; ``atoll device boot`` boots the container again,
into the staged deployment, as firmware would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atoll.oci.transports import parse_bootc_name
from atoll.sysroot.lifecycle import Device
from atoll.units import install_atoll, install_units
from helpers.ansible import Collection, playbook_run
from helpers.debian import DebianTree, build_debian_image
from helpers.osimage import tree_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ansible"
PLUGINS = Path(__file__).resolve().parent / "connection_plugins"
_BOOT_WAIT = 150.0


def _image_spec(stage: Path) -> dict[str, object]:
    install_atoll(stage)
    install_units(stage)
    return dict(tree_spec(stage))


def _wait_green(
    sysroot: Path, boot: subprocess.Popen[str], console: Path, deployment: str = ""
) -> dict[str, object]:
    """Wait for a green boot (of *deployment*, when given); the health report."""
    last = sysroot / "atoll/health/last.json"
    deadline = time.monotonic() + _BOOT_WAIT
    while time.monotonic() < deadline:
        if boot.poll() is not None:
            pytest.fail(f"the device stopped: {console.read_text()[-3000:]}")
        report = json.loads(last.read_text()) if last.exists() else {}
        if report.get("outcome") == "green" and deployment in str(report["deployment"]):
            return dict(report)
        time.sleep(0.5)
    pytest.fail(f"no green boot in {_BOOT_WAIT} s: {console.read_text()[-3000:]}")


def test_booted_device_playbook_twice(
    collection: Collection, debian_tree: DebianTree, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    spec = _image_spec(tmp_path / "stage")
    build_debian_image(images, "1", debian_tree, version="1.0", add=spec, kernel=True)  # type: ignore[arg-type]
    build_debian_image(images, "2", debian_tree, version="2.0", add=spec, kernel=True)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    installer = Device(sysroot)
    installer.install(parse_bootc_name(f"oci:{images}:1", None))
    # The device reaches the images through its sysroot (/sysroot/images inside).
    images.rename(sysroot / "images")
    console = tmp_path / "console.log"
    boot = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atoll",
            "device",
            "boot",
            "--sysroot",
            str(sysroot),
            "--keep-running",
            "--max-boots",
            "3",
            # The whole of each boot: the two runs of the playbook happen in the second.
            "--timeout",
            "900s",
            "--console-log",
            str(console),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        before = _wait_green(sysroot, boot, console)
        variables = {"os_image": "oci:/sysroot/images:2"}
        inventory = {
            "booted": {
                "hosts": {
                    "dev": {
                        "ansible_connection": "nspawn_device",
                        "ansible_host": str(sysroot),
                        "ansible_python_interpreter": "/usr/bin/python3",
                    }
                }
            }
        }
        env = {"ANSIBLE_CONNECTION_PLUGINS": str(PLUGINS), "ANSIBLE_PIPELINING": "1"}
        first = playbook_run(
            collection, DOCS / "booted.yml", variables, tmp_path, inventory=inventory, env=env
        )
        assert first.failed == 0, first.output
        # the policy, the volume, the switch, the reboot
        assert first.changed == 4, first.output
        assert "booted 2.0, staged none, root /, data.volume inactive" in first.output
        state = Device(sysroot).state()
        assert state.booted is not None and state.booted.origin.image_version == "2.0"
        assert state.staged is None
        assert (state.path(state.booted) / "etc/containers/systemd/data.volume").is_file()
        # ansible.builtin.reboot waited for the boot id to change: systemd-nspawn
        # gives each boot of the container its own.
        after = _wait_green(sysroot, boot, console, state.booted.id)
        assert before["bootId"] != after["bootId"]
        second = playbook_run(
            collection, DOCS / "booted.yml", variables, tmp_path, inventory=inventory, env=env
        )
        assert (second.failed, second.changed) == (0, 0), second.output
        assert "booted 2.0, staged none, root /, data.volume inactive" in second.output
    finally:
        os.killpg(boot.pid, signal.SIGTERM)
        boot.communicate(timeout=60)
