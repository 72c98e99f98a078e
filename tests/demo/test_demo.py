"""``atoll demo --fast`` from start to end, with every real part: the registry,
podman, systemd-nspawn, blueprint builds, a LAN of network namespaces, and in each
device its own podman and keepalived.

The demo runs in a network namespace whose only interface is loopback: the builds
install their packages from a repository of the cached tree's missing packages,
served there (helpers.offline); a request beyond loopback fails the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.build.blueprint import parse_blueprint
from atoll.build.containerfile import FAILOVER_PACKAGE
from atoll.demo import osimage
from atoll.requires import DEVICE_PACKAGES
from helpers import offline
from helpers.aptrepo import ensure_tree_repo
from helpers.debian import cache_root
from helpers.lan import ensure_podman_lan_tree
from helpers.parts import missing, require_tool


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def mounts_under(path: Path) -> list[str]:
    top = os.path.realpath(path)
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(top + "/")
    ]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_demo_tells_the_whole_story_and_cleans_up(tmp_path: Path) -> None:
    for tool, package in (
        ("docker-registry", None),
        ("podman", None),
        ("runc", None),
        ("busybox", "busybox-static"),
        ("curl", None),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ):
        require_tool(tool, package)
    if os.geteuid() != 0:
        missing("the demo boots containers with systemd-nspawn: it needs root")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    env["TMPDIR"] = str(scratch)
    # The devices' tree: trixie with podman and keepalived (the failover tests' own).
    tree = ensure_podman_lan_tree()
    # What the builds install: the blueprints' packages and atoll's on a device.
    packages = [
        p.name for v in osimage.versions() for p in parse_blueprint(v.blueprint, "bp").packages
    ]
    repo = ensure_tree_repo(
        tree, str(tree.recipe["suite"]), (*packages, FAILOVER_PACKAGE, *DEVICE_PACKAGES)
    )
    proc = subprocess.run(
        [
            "unshare", "--net", sys.executable, offline.__file__, str(repo), "--",
            sys.executable, "-m", "atoll", "demo", "--fast",
            "--base-tree", str(tree.rootfs),
            "--cache", str(cache_root() / "demo"),
            "--apt-source", "{apt_source}",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1440,
        check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    # 2: built from blueprints, promoted, signed and verified.
    assert out.count("$ atoll build --blueprint") == 3
    assert "$ atoll promote" in out
    assert re.search(r"Verified \S+/prod/edge-os:stable \(sha256:", out)
    # 3: the devices booted on their own network, running their own containers.
    assert re.search(r"\$ atoll device boot .* --network \S+-dev1 --containers", out)
    # 4: the master (dev1 unless its check failed meanwhile) held the virtual IP and
    # served; powered off, the standby took it over; the master came back as standby.
    assert re.search(r"ip -n \S+-dev[12] -br addr show eth0\n.*10\.77\.0\.100/24", out)
    served = re.search(r"curl -s -m 2 http://10\.77\.0\.100:8080/\n\s+web v1 on (dev[12])", out)
    assert served is not None
    standby = {"dev1": "dev2", "dev2": "dev1"}[served[1]]
    assert re.search(rf"\$ kill -KILL \d+ .*\n(.*\n)*?\s+web v1 on {standby}", out)
    assert "web: MASTER since" in out and "web: BACKUP since" in out
    # 5: the killed web container came back under the device's systemd.
    assert re.search(r"podman kill --signal KILL web\n(.*\n)*?\s+NRestarts=1", out)
    # 6: in both devices v2 taken by podman auto-update, the broken v3 rolled back, v2
    # still answering on the virtual IP and on each device's own address.
    after_v3 = out.split("apps/web:prod now names v3")[-1].split("7. A fleet")[0]
    for device in ("dev1", "dev2"):
        assert f"web v2 on {device}" in out
        assert f"web v2 on {device}" in after_v3
    assert after_v3.count("rolled back") >= 2
    # 7: the fleet: both devices enrolled; v2 rolled out in two batches: dev1 staged it,
    # booted it red twice (v2's greenboot.conf allows two attempts) and fell back to v1
    # with the reason, the rollout paused at its error threshold and dev2 never took v2;
    # v3 in two batches, green on both.
    fleet = out.split("7. A fleet")[-1]
    approved = r"device dev1: enrollment approved\n(.*\n)*?.*device dev2: enrollment approved"
    assert re.search(approved, fleet)
    assert "Rolled back on" in fleet
    assert re.search(r"(?m)dev1: boots (?:green, )*red, red, green$", fleet), fleet[-3000:]
    assert "required check 50-web-config.sh failed (exit code 1)" in fleet
    paused = fleet.split("$ atoll fleet rollout status v2")[-1].split("$ ")[0]
    assert re.search(r"rollout v2: paused, fleet edge, batch 0 of 2\n", paused)
    assert re.search(
        r"reason: batch 0: error threshold: 1 of 1 devices failed \(dev1: .+\)", paused
    )
    assert re.search(r"batch 0: dev1 failed\n\s+batch 1: dev2 waiting", paused)
    assert "dev2 never took v2.0" in fleet
    done = fleet.split("$ atoll fleet rollout status v3")[-1].split("$ ")[0]
    assert re.search(r"rollout v3: done, fleet edge, batch 1 of 2\n", done)
    assert re.search(r"batch 0: dev1 succeeded\n\s+batch 1: dev2 succeeded", done)
    assert re.search(r"-rwx\S* .*/usr/bin/strace", fleet)
    assert re.search(r"the dashboard: http://127\.0\.0\.1:\d+/ui/", fleet)
    # 8 and the summary.
    assert "Transfers" in out
    # The devices' own updates, by path from their status, against the install.
    assert re.search(r"Against the install:\s+dev1\s+update\s+to\s+v2\.0:\s+\d+%", out)
    assert "What happened" in out
    summary = out.split("What happened")[-1]
    assert re.findall(r"│ (\d)\. .*? │ (\w+) +│", summary) == [(str(n), "ok") for n in range(1, 9)]
    # Everything it started is stopped, nothing is mounted, its directory is gone.
    assert processes_mentioning(str(scratch)) == []
    assert mounts_under(scratch) == []
    assert list(scratch.iterdir()) == []
    # Its LAN's namespaces are gone.
    lan = re.search(r"LAN (demo[0-9a-f]{6}) ", out)
    assert lan is not None
    netns = Path("/run/netns")
    leftovers = [n.name for n in netns.iterdir()] if netns.is_dir() else []
    assert [n for n in leftovers if n.startswith(f"{lan[1]}-")] == []
