"""Workloads on a host with systemd: Quadlet units run by systemd 257 and podman 5.4.2
(Debian trixie booted under systemd-nspawn, helpers.podman5), and atoll's
``--manager systemd`` reading and restarting them.

The supervisor's tests run atoll's own process manager; here systemd runs the
services podman's own quadlet generator made, podman's health checks run from
systemd timers, and atoll talks to them as it does on a real host: status from
``systemctl show`` and ``podman inspect``, restarts through ``systemctl``, and
auto-update's watch window and rollback on top (an image that exits at once,
one that turns unhealthy after 5 s).  atoll runs inside with trixie's python3
(this checkout's package, bound read-only).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atoll.device.netns import Lan
from atoll.errors import WorkloadUpdateFailedError
from helpers.parts import missing, require_tool
from helpers.podman5 import SystemdHost, ensure_tree, unavailable
from helpers.registry import RegistryView
from helpers.workloads import (
    EXITS_AT_ONCE,
    GOOD,
    NEWER_UNITS_RESULTS,
    UNHEALTHY_AFTER_5S,
    build_workload_image,
    free_port,
    http_get,
    newer_units_results,
    push_workload_image,
    wait_for,
    write_newer_units,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATOLL = ("python3", "-m", "atoll")


@pytest.fixture(scope="module")
def trixie_root() -> Path:
    why = unavailable()
    if why is not None:
        missing(f"a host with systemd and podman 5: {why}")
    return ensure_tree()


def serves(port: int) -> str:
    try:
        return http_get(port, timeout=2.0)
    except OSError:
        return ""


def atoll_json(host: SystemdHost, *args: str, code: int = 0) -> Any:
    proc = host.run(*ATOLL, *args, check=False)
    assert proc.returncode == code, f"atoll {' '.join(args)}: {proc.returncode} {proc.stderr}"
    return json.loads(proc.stdout)


def show(host: SystemdHost, prop: str) -> str:
    return host.run("systemctl", "show", "-P", prop, "web.service").stdout.strip()


@pytest.mark.timeout(600)
def test_systemd_runs_the_unit_and_atoll_updates_and_rolls_it_back(
    trixie_root: Path, registry: RegistryView, tmp_path: Path
) -> None:
    repo = registry.new_repo("sysweb")

    def release(version: str, cmd: tuple[str, ...] = GOOD) -> str:
        return push_workload_image(registry, repo, "stable", cmd=cmd, page=f"{version}\n")

    image = release("v1")
    port = free_port()
    host = SystemdHost(trixie_root, tmp_path / "host", (registry.server.host,))
    host.start()
    update = ("workload", "auto-update", "--manager", "systemd", "--format", "json")
    try:
        # podman's quadlet makes the service; systemd runs it and podman's own
        # health-check timers (systemd timers) run the check.
        host.start_units(
            {
                "web.container": f"[Container]\nImage={image}\nAutoUpdate=registry\n"
                f"Network=host\nEnvironment=PORT={port}\n"
                "HealthCmd=test -e /tmp/ok\nHealthInterval=1s\nHealthRetries=2\n"
            }
        )
        wait_for(lambda: serves(port) == "v1\n", "v1 to serve")

        def status() -> Any:
            (unit,) = atoll_json(host, "workload", "status", "web", "--manager", "systemd",
                                 "--json")["units"]  # fmt: skip
            return unit

        wait_for(lambda: status()["health"] == "healthy", "v1 to be healthy")
        first = status()
        assert (first["state"], first["service"]) == ("active", "web.service")
        assert first["container"] == "systemd-web" and first["imageId"]

        # The tag moves: atoll pulls, restarts through systemd, watches, keeps it.
        release("v2")
        (report,) = atoll_json(host, *update, "--watch", "3")["units"]
        assert report["updated"] == "true", report
        assert serves(port) == "v2\n"
        assert show(host, "ActiveState") == "active"
        assert status()["imageId"] != first["imageId"]

        # A version that exits at once: systemd reports the failed restart, atoll
        # puts the previous image back and has systemd start it again.
        rolled_back = WorkloadUpdateFailedError.exit_code
        release("v3", EXITS_AT_ONCE)
        result = atoll_json(host, *update, "--watch", "3", code=rolled_back)
        (report,) = result["units"]
        assert report["updated"] == "rolled back", report
        assert result["rolledBack"] == ["web.container"]
        wait_for(lambda: serves(port) == "v2\n", "v2 to serve again")
        assert show(host, "ActiveState") == "active"

        # The bad digest is remembered: the next run neither pulls nor restarts.
        started = show(host, "ExecMainStartTimestampMonotonic")
        (report,) = atoll_json(host, *update)["units"]
        assert report["updated"] == "false" and "rolled back" in report["reason"]
        assert show(host, "ExecMainStartTimestampMonotonic") == started

        # A version that starts and turns unhealthy after 5 s (podman's health
        # check, run by a systemd timer, says so): caught by the watch window.
        release("v4", UNHEALTHY_AFTER_5S)
        (report,) = atoll_json(host, *update, "--watch", "15", code=rolled_back)["units"]
        assert (report["updated"], report["reason"]) == (
            "rolled back",
            "the container turned unhealthy",
        )
        wait_for(lambda: serves(port) == "v2\n", "v2 to serve after the second rollback")
        wait_for(lambda: status()["health"] == "healthy", "v2 to be healthy again")
    except Exception:
        print(host.journal(lines=80))
        raise
    finally:
        host.stop()


# Network=host: the booted tree's /etc/containers (where podman keeps networks) and
# /proc/sys (which a bridge needs) are read-only.
KEYS_UNITS = {
    "keys.container": """[Container]
Image={image}
AddDevice=/dev/null:/dev/xnull
AddDevice=-/dev/atoll-absent
Mount=type=bind,source=/etc/containers,destination=/shared,ro=true
Mount=type=tmpfs,destination=/scratch
ShmSize=32m
Ulimit=nofile=512:512
Ulimit=nproc=1024:1024
Network=host
LogDriver=k8s-file
StopSignal=SIGUSR1
GlobalArgs=--log-level=warn
""",
}


def _start(host: SystemdHost, names: list[str]) -> None:
    services = [name.rsplit(".", 1)[0] + ".service" for name in names]
    if host.run("systemctl", "start", *services, check=False).returncode != 0:
        journals = "\n".join(host.journal(service, lines=60) for service in services)
        raise RuntimeError(f"systemctl start {' '.join(services)} failed:\n{journals}")


def _newer_results(host: SystemdHost) -> dict[str, object]:
    return newer_units_results(lambda *args: host.run("podman", *args).stdout)


def _keys_settings(host: SystemdHost) -> dict[str, Any]:
    (info,) = json.loads(host.run("podman", "inspect", "systemd-keys").stdout)
    hostconfig = info["HostConfig"]
    return {
        "devices": [d["PathInContainer"] for d in hostconfig["Devices"]],
        "shared": [(m["Source"], m["RW"]) for m in info["Mounts"] if m["Destination"] == "/shared"],
        "tmpfs": sorted(hostconfig["Tmpfs"]),
        "shm": hostconfig["ShmSize"],
        "nofile": [u for u in hostconfig["Ulimits"] if u["Name"] == "RLIMIT_NOFILE"],
        "log": hostconfig["LogConfig"]["Type"],
        "signal": info["Config"]["StopSignal"],
    }


@pytest.mark.timeout(600)
def test_podmans_generator_and_atolls_give_the_same_container(
    trixie_root: Path, registry: RegistryView, tmp_path: Path
) -> None:
    image = push_workload_image(registry, registry.new_repo("syskeys"))
    host = SystemdHost(trixie_root, tmp_path / "host", (registry.server.host,))
    host.start()
    units = {"keys.container": KEYS_UNITS["keys.container"].format(image=image)}
    newer = write_newer_units(host.units, image, host_network=True)
    try:
        host.start_units(units)
        _start(host, newer)
        newer_results = _newer_results(host)
        build = host.run(
            "systemctl", "show", "-p", "ActiveState,Result,ExecMainStatus", "img-build.service"
        ).stdout.split()
        by_podman = _keys_settings(host)
        host.stop_units(["keys.container", *newer])
        for name in newer:  # atoll's generator makes the same text of them (test_parity.py)
            (host.units / name).unlink()
        # atoll's generator in place of podman's: the same name in a directory
        # that systemd reads first hides /usr/lib/systemd/system-generators/'s.
        script = '#!/bin/sh\nexec python3 -m atoll workload generate "$@"\n'
        generators = "/run/systemd/system-generators"
        target = f"{generators}/podman-system-generator"
        install = f"mkdir -p {generators} && cat > {target} && chmod 755 {target}"
        host.run("sh", "-c", install, input_text=script)
        host.start_units(units)
        assert "Generated by atoll" in host.run("systemctl", "cat", "keys.service").stdout
        by_atoll = _keys_settings(host)
    except Exception:
        print(host.journal(lines=80))
        raise
    finally:
        host.stop()
    assert by_atoll == by_podman
    # podman 5 runs the start-up check, the .kube and the .build as atoll's
    # supervisor does with podman 4.3 (test_supervisor_keys.py).
    assert newer_results == NEWER_UNITS_RESULTS
    # A finished build is inactive, as under atoll's supervisor.
    assert sorted(build) == ["ActiveState=inactive", "ExecMainStatus=0", "Result=success"]
    assert by_podman == {
        "devices": ["/dev/xnull"],
        "shared": [("/etc/containers", False)],
        "tmpfs": ["/scratch"],
        "shm": 32 * 1024 * 1024,
        "nofile": [{"Name": "RLIMIT_NOFILE", "Soft": 512, "Hard": 512}],
        "log": "k8s-file",
        "signal": "SIGUSR1",  # podman 5 reports the name, 4.3 the number
    }


@pytest.mark.timeout(300)
def test_a_quadlet_workload_serves_on_the_devices_own_lan(
    trixie_root: Path, tmp_path: Path
) -> None:
    """The device's own systemd and podman run the Quadlet unit, podman's storage
    in the device's /var, and the device is in a network namespace of its own:
    a client in another namespace of the LAN reaches it, the host does not."""
    require_tool("ip", "iproute2")
    layout = build_workload_image(tmp_path / "web", "v1", cmd=GOOD, page="v1 on dev1\n")
    with Lan.create(f"pw{secrets.token_hex(3)}") as lan:
        path = lan.add("dev1", "10.97.0.11/24")
        lan.add("client", "10.97.0.20/24")
        host = SystemdHost(trixie_root, tmp_path / "host", netns=path, binds=((layout, "/mnt"),))
        host.start()
        try:
            host.start_units(
                {
                    "web.container": "[Container]\nImage=oci:/mnt:v1\n"
                    "Network=host\nEnvironment=PORT=8080\n"
                }
            )
            code = (
                "import sys, urllib.request\n"
                "print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end='')\n"
            )
            get = ["ip", "netns", "exec", lan.netns("client"), sys.executable, "-c", code]

            def answer() -> str:
                done = subprocess.run(
                    [*get, "http://10.97.0.11:8080/"], capture_output=True, text=True, check=False
                )
                return done.stdout

            wait_for(lambda: answer() == "v1 on dev1\n", "the device's workload to serve")
            storage = host.run("podman", "info", "--format", "{{.Store.GraphRoot}}").stdout
            assert storage.strip() == "/var/lib/containers/storage"
            ps = host.run("podman", "ps", "--format", "{{.Names}}").stdout.split()
            assert ps == ["systemd-web"]
            # Nothing of the device is on the host's network.
            assert (
                "10.97.0.11"
                not in subprocess.run(
                    ["ip", "addr"], capture_output=True, text=True, check=True
                ).stdout
            )
        except Exception:
            print(host.journal(lines=80))
            raise
        finally:
            host.stop()
