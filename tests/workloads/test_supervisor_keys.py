"""The keys podman 5.4 added to Quadlet, and .kube and .build units, run by
``atoll workload run`` with real podman (4.3 here): one unit per family of keys,
checked with ``podman inspect``."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from atoll.workloads.control import UnitStatus
from helpers.workloads import (
    NEWER_UNITS_RESULTS,
    WorkloadEnv,
    newer_units_results,
    push_workload_image,
    wait_for,
    write_newer_units,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _inspect(workload_env: WorkloadEnv, name: str) -> Any:
    return json.loads(workload_env.podman("inspect", name))[0]


def _store_for_shifted_maps(workload_env: WorkloadEnv) -> None:
    """Let a container with a shifted map (its root is host uid 100000) reach its
    layer in the test's vfs store: containers/storage's vfs driver makes
    ``vfs/dir`` mode 0700 and chowns it, at every layer it creates, to the root
    of that layer's map, so with an identity-mapped container created at the same
    time the mapped container's runtime may find the directory owned by root and
    fail to mount its rootfs (permission denied).  Made beforehand with mode 0711
    (storage changes its owner, not its mode), every map's root may pass."""
    graph = workload_env.root / "podman" / "graph"
    for directory in (workload_env.root, graph, graph / "vfs", graph / "vfs" / "dir"):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o711)


def test_device_mount_limits_network_log_signal_and_userns(workload_env: WorkloadEnv) -> None:
    _store_for_shifted_maps(workload_env)
    registry = workload_env.registry
    image = push_workload_image(registry, registry.new_repo("keys"))
    shared = workload_env.root / "shared"
    shared.mkdir()
    workload_env.unit("keys.network", "[Network]\nSubnet=10.89.77.0/24\n")
    workload_env.unit(
        "keys.container",
        f"""[Container]
Image={image}
AddDevice=/dev/null:/dev/xnull
AddDevice=-/dev/atoll-absent
Mount=type=bind,source={shared},destination=/shared,ro=true
Mount=type=tmpfs,destination=/scratch
PidsLimit=64
ShmSize=32m
Ulimit=nofile=512:512
Ulimit=nproc=1024:1024
Network=keys.network
IP=10.89.77.7
NetworkAlias=keys-alias
DNS=192.0.2.53
DNSSearch=keys.example
AddHost=db.keys:10.89.77.8
LogDriver=k8s-file
LogOpt=max-size=1mb
StopSignal=SIGUSR1
GlobalArgs=--log-level=warn
""",
    )
    workload_env.unit(
        "mapped.container",
        f"[Container]\nImage={image}\nUIDMap=0:100000:65536\nGIDMap=0:100000:65536\n",
    )
    sup = workload_env.start_supervisor("keys", "mapped")

    def active(unit: str) -> UnitStatus | None:
        status = sup.status(unit)
        return status if status.state == "active" else None

    for unit in ("keys", "mapped"):
        wait_for(lambda u=unit: active(u), f"{unit} to be active")
    info = _inspect(workload_env, "systemd-keys")
    host = info["HostConfig"]
    assert [d["PathInContainer"] for d in host["Devices"]] == ["/dev/xnull"]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/shared"]["Source"] == str(shared) and not mounts["/shared"]["RW"]
    assert "/scratch" in host["Tmpfs"]
    assert host["PidsLimit"] == 64
    assert host["ShmSize"] == 32 * 1024 * 1024
    assert {"Name": "RLIMIT_NOFILE", "Soft": 512, "Hard": 512} in host["Ulimits"]
    network = info["NetworkSettings"]["Networks"]["systemd-keys"]
    assert network["IPAddress"] == "10.89.77.7"
    assert "keys-alias" in network["Aliases"]
    assert host["Dns"] == ["192.0.2.53"] and host["DnsSearch"] == ["keys.example"]
    assert host["ExtraHosts"] == ["db.keys:10.89.77.8"]
    assert host["LogConfig"]["Type"] == "k8s-file" and host["LogConfig"]["Size"] == "1MB"
    assert info["Config"]["StopSignal"] == 10  # SIGUSR1
    mapped = _inspect(workload_env, "systemd-mapped")
    assert mapped["State"]["Running"] and info["State"]["Running"]
    maps = mapped["HostConfig"]["IDMappings"]
    assert (maps["UidMap"], maps["GidMap"]) == (["0:100000:65536"], ["0:100000:65536"])
    # The container's root is host uid 100000.
    assert set(workload_env.podman("top", "systemd-mapped", "user", "huser").split()[2:]) == {
        "root",
        "100000",
    }


def test_an_instance_runs_with_its_templates_dropins(workload_env: WorkloadEnv) -> None:
    registry = workload_env.registry
    image = push_workload_image(registry, registry.new_repo("tmpl"))
    workload_env.unit("tmpl@.container", f"[Container]\nImage={image}\nEnvironment=WHO=%i\n")
    workload_env.unit("tmpl@blue.container", f"[Container]\nImage={image}\n")
    (workload_env.units / "tmpl@.container.d").mkdir()
    workload_env.unit("tmpl@.container.d/10.conf", "[Container]\nLabel=from=template\n")
    sup = workload_env.start_supervisor()  # every unit: the template itself does not run
    wait_for(lambda: sup.status("tmpl@blue").state == "active" or None, "tmpl@blue to be active")
    info = _inspect(workload_env, "systemd-tmpl_blue")
    assert info["Config"]["Labels"]["from"] == "template"
    names = workload_env.podman("ps", "-a", "--format", "{{.Names}}").split()
    assert names == ["systemd-tmpl_blue"]


def test_startup_check_kube_and_build(workload_env: WorkloadEnv) -> None:
    """HealthStartup*= run by the supervisor (podman 4.3 has no --health-startup-*):
    the start-up check runs until it has passed HealthStartupSuccess= times, then
    only the regular check runs; HealthLog*= is dropped with a message.  A .kube
    plays its YAML with its ConfigMap=, and a supervisor killed and started again
    adopts it.  A .build builds the image its container runs, before it (see
    helpers.workloads.write_newer_units), then is inactive (Type=oneshot, as podman
    5.4's quadlet writes it) and builds again whenever its container starts again
    (here by Restart=); a failed build fails its container.  The same units run
    under systemd with podman 5 in test_systemd_host.py."""
    registry = workload_env.registry
    image = push_workload_image(registry, registry.new_repo("newer"))
    names = write_newer_units(workload_env.units, image)
    with (workload_env.units / "built.container").open("a") as unit:
        unit.write("[Service]\nRestart=on-failure\nRestartSec=0\n")
    workload_env.unit("bad.build", "[Build]\nImageTag=localhost/bad\nFile=Absentfile\n"
                      "SetWorkingDirectory=unit\n")  # fmt: skip
    workload_env.unit("bad.container", "[Container]\nImage=bad.build\n")
    workload_env.unit(
        "never.container",
        f"""[Container]
Image={image}
HealthCmd=true
HealthStartupCmd=["sh", "-c", "exit 1"]
HealthStartupInterval=1s
HealthStartupRetries=2
[Service]
Restart=on-failure
RestartSec=1
""",
    )
    sup = workload_env.start_supervisor()  # every unit: a .kube starts as a .container does
    for name in names:
        wait_for(lambda n=name: sup.status(n).state == "active" or None, f"{name} to be active")
    assert newer_units_results(workload_env.podman) == NEWER_UNITS_RESULTS
    assert sup.status("starty").health == "healthy"
    built = sup.status("img.build")
    assert (built.state, built.result, built.exit_status) == ("inactive", "success", 0)
    wait_for(lambda: sup.status("bad").state == "failed" or None, "bad to fail")
    bad = sup.status("bad.build")
    assert (bad.state, bad.result, bad.exit_status) == ("failed", "exit-code", 125)
    assert sup.status("bad").result == "dependency"
    output = sup.output()
    assert "no run --health-log-destination option: HealthLogDestination=" in output
    assert "HealthMaxLogCount= is not honoured" in output
    assert "no kube play --service-exit-code-propagation option" in output
    service = _inspect(workload_env, sup.status("kapp").container_id or "")
    assert service["IsService"]
    assert service["Config"]["Labels"]["PODMAN_SYSTEMD_UNIT"] == "kapp.service"
    # After HealthStartupRetries= failures the container is stopped and Restart= restarts it.
    wait_for(lambda: sup.status("never").restarts >= 1 or None, "never to be restarted")
    assert "never.service: start-up check failed 2 times" in sup.output()
    sup.client.stop("never")  # no more restarts to load the machine

    def page() -> str:
        return workload_env.podman(
            "exec", "systemd-built", "/bin/busybox", "cat", "/www/index.html"
        )

    # Started again (here by Restart=), the container's image is built again first:
    # the changed page is in it.
    (workload_env.units / "page.html").write_text("second build\n")
    workload_env.podman("kill", "systemd-built")
    wait_for(lambda: sup.status("built").restarts >= 1 or None, "built to be restarted")
    wait_for(lambda: sup.status("built").state == "active" or None, "built to be active")
    assert page() == "second build\n"
    assert sup.status("img.build").state == "inactive"
    # A supervisor killed and started again adopts the kube: the same containers.
    kube = sup.status("kapp")
    web_id = _inspect(workload_env, "kapp-web")["Id"]
    sup.stop(signal.SIGKILL)
    sup = workload_env.start_supervisor("kapp", state_dir=sup.state_dir)
    wait_for(lambda: sup.status("kapp").state == "active" or None, "kapp to be adopted")
    assert sup.status("kapp").container_id == kube.container_id
    assert _inspect(workload_env, "kapp-web")["Id"] == web_id
    # The pod's last container ends: podman stops the service container, the unit ends.
    workload_env.podman("stop", "--time", "0", "kapp-web")
    wait_for(lambda: sup.status("kapp").state in ("failed", "inactive") or None, "kapp to end")
    ended = sup.status("kapp")
    # podman 4.3 kills the service container (no --service-exit-code-propagation).
    assert (ended.state, ended.result, ended.exit_status) == ("failed", "signal", 137)
    wait_for(lambda: not workload_env.podman("pod", "ps", "-q") or None, "kube down")
