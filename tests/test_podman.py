"""atoll.podman's settings for podman on a host without systemd (``atoll
workload run``): the host's containers.conf files merged, atoll's where they
say nothing, in a file podman itself reads back."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from atoll.podman import SYSTEMD_LESS, host_containers_conf
from helpers.parts import require_tool


def test_the_hosts_values_win_and_atolls_fill_the_gaps(tmp_path: Path) -> None:
    shared, local = tmp_path / "share.conf", tmp_path / "etc.conf"
    shared.write_text(
        '[containers]\ndefault_sysctls = ["net.ipv4.ping_group_range=0 0"]\n'
        '[engine]\nevents_logger = "journald"\n[engine.runtimes]\nrunc = ["/usr/bin/runc"]\n'
    )
    local.write_text('[engine]\nevents_logger = "none"\n[network]\nnetwork_backend = "netavark"\n')
    dest = host_containers_conf(
        tmp_path / "out/containers.conf", {}, systemd=tmp_path / "none", files=[shared, local]
    )
    assert dest is not None
    conf = tomllib.loads(dest.read_text())
    assert conf["containers"] == {
        "default_sysctls": ["net.ipv4.ping_group_range=0 0"],
        "default_ulimits": SYSTEMD_LESS["containers"]["default_ulimits"],
    }
    # events_logger: the later host file's; cgroup_manager: unset there, atoll's.
    assert conf["engine"] == {
        "events_logger": "none",
        "runtimes": {"runc": ["/usr/bin/runc"]},
        "cgroup_manager": "cgroupfs",
    }
    assert conf["network"] == {"network_backend": "netavark"}


def test_nothing_is_written_under_systemd_or_a_chosen_file(tmp_path: Path) -> None:
    dest = tmp_path / "containers.conf"
    assert host_containers_conf(dest, {"CONTAINERS_CONF": "/etc/mine.conf"}) is None
    assert host_containers_conf(dest, {}, systemd=tmp_path) is None  # a directory: systemd runs
    assert not dest.exists()


def test_podman_reads_the_file(tmp_path: Path) -> None:
    """The real host files, merged and written back, are what podman runs with."""
    podman = require_tool("podman")
    dest = host_containers_conf(tmp_path / "containers.conf", {}, systemd=tmp_path / "none")
    assert dest is not None
    proc = subprocess.run(
        [podman, "info", "--format", "json"],
        env={**os.environ, "CONTAINERS_CONF": str(dest)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"podman info with {dest}: {proc.stderr[-500:]}")
    host = json.loads(proc.stdout)["host"]
    assert host["cgroupManager"] == "cgroupfs"
    assert host["eventLogger"] == "file"
