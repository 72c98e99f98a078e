"""The atoll.edge modules on a device booted under systemd-nspawn (``atoll device
boot --keep-running``): Ansible reaches it through the test's ``nspawn_device``
connection (nsenter into the container's namespaces), runs the device's own
python3 and the atoll installed in its image, with the default sysroot
``/sysroot`` and root ``/``, and systemd answering for the workloads."""

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


def _wait_green(sysroot: Path, boot: subprocess.Popen[str], console: Path) -> None:
    last = sysroot / "atoll/health/last.json"
    deadline = time.monotonic() + _BOOT_WAIT
    while time.monotonic() < deadline:
        if boot.poll() is not None:
            pytest.fail(f"the device stopped: {console.read_text()[-3000:]}")
        if last.exists() and json.loads(last.read_text())["outcome"] == "green":
            return
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
            "1",
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
        _wait_green(sysroot, boot, console)
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
        assert first.changed == 3, first.output  # the policy, the volume, the staged image
        assert "booted 1.0, staged 2.0, root /, data.volume inactive" in first.output
        state = Device(sysroot).state()
        assert state.staged is not None and state.staged.origin.image_version == "2.0"
        booted = state.path(state.booted or state.current)
        assert (booted / "etc/containers/systemd/data.volume").is_file()
        second = playbook_run(
            collection, DOCS / "booted.yml", variables, tmp_path, inventory=inventory, env=env
        )
        assert (second.failed, second.changed) == (0, 0), second.output
    finally:
        os.killpg(boot.pid, signal.SIGTERM)
        boot.communicate(timeout=60)
