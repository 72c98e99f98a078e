"""Kill atoll with SIGKILL at every crash point of upgrade, finalize, rollback and
cleanup; the device must still boot a complete old or new deployment, the store
must be consistent and local /etc and /var changes must survive."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from helpers.cli import run_atoll
from helpers.osimage import build_os_image

SRC = Path(__file__).resolve().parents[2] / "src" / "atoll"
#: Crash points outside the device lifecycle (image copies, workload auto-update:
#: tests of their own).
ELSEWHERE = re.compile(r"^(copy|layout|archive|autoupdate)-")
#: Reached only after a deployment used up its boot attempts: a test of its own.
FALLBACK = re.compile(r"^fallback-")


def crash_points() -> list[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        names.update(re.findall(r'crashpoint\(\s*"([a-z0-9-]+)"', path.read_text()))
    return sorted(n for n in names if not ELSEWHERE.match(n))


def lifecycle_points() -> list[str]:
    return [n for n in crash_points() if not FALLBACK.match(n)]


def atoll(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_atoll(*args, crash_at=crash_at, timeout=120)


def ok(*args: str) -> str:
    proc = atoll(*args)
    assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_every_crash_point_is_found() -> None:
    points = crash_points()
    # The lifecycle, the boot entries and the store all have theirs.
    assert {"stage-imported", "finalize-entries-written", "boot-swapped"} <= set(points)


@pytest.mark.slow
@pytest.mark.parametrize("point", lifecycle_points())
def test_device_survives_sigkill(point: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "2", version="2.0", add={"usr/bin/strace": b"strace"})
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    ok("install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    ok("boot", *s)
    booted = json.loads(ok("status", *s, "--format", "json"))["status"]["booted"]["atoll"]
    deploy = sysroot / "atoll/deploy/default/deploy" / f"{booted['commit']}.0"
    (deploy / "etc/app.conf").write_text("setting = local\n")
    (sysroot / "atoll/deploy/default/var/lib/app/data").write_text("kept\n")

    # Walk the lifecycle; the process dies at the crash point wherever it is.
    steps = [
        ("switch", *s, f"oci:{images}:2"),
        ("finalize", *s),
        ("boot", *s),
        ("rollback", *s),
        ("cleanup", *s),
    ]
    killed = None
    for step in steps:
        proc = atoll(*step, crash_at=point)
        if proc.returncode == -signal.SIGKILL:
            killed = step[0]
            break
        assert proc.returncode == 0, f"{step[0]}: {proc.stderr}"
    assert killed is not None, f"no step reached crash point {point}"

    # After the crash: it boots a complete deployment, old or new.
    record = json.loads(ok("boot", *s, "--json"))
    doc = json.loads(ok("status", *s, "--format", "json"))
    version = doc["status"]["booted"]["image"]["version"]
    assert version in ("1.0", "2.0")
    root = sysroot / "atoll/deploy/default/deploy" / record["deployment"]
    assert (root / "usr/lib/os-release").read_text().endswith(f'VERSION_ID="{version}"\n')
    assert (root / "usr/bin/strace").exists() == (version == "2.0")
    assert (root / "etc/app.conf").read_text() == "setting = local\n"
    assert (sysroot / "atoll/deploy/default/var/lib/app/data").read_text() == "kept\n"
    fsck = atoll("store", "fsck", "--store", str(sysroot / "atoll/store"))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # And it can carry on: a full update cycle works afterwards.
    ok("switch", *s, f"oci:{images}:2")
    ok("boot", *s)
    ok("cleanup", *s)


@pytest.mark.slow
@pytest.mark.parametrize("point", [n for n in crash_points() if FALLBACK.match(n)])
def test_fallback_survives_sigkill(point: str, tmp_path: Path) -> None:
    """Killed while making a fallback permanent: the next boot settles it."""
    from helpers.busybox_root import REQUIRED, busybox_files

    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0", add=busybox_files({}))  # type: ignore[arg-type]
    failing = busybox_files({f"{REQUIRED}/10-fail.sh": "echo broken; exit 1\n"})
    build_os_image(images, "2", version="2.0", add=failing)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    ok("install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    ok("boot", *s)
    ok("switch", *s, f"oci:{images}:2")
    for _ in range(3):  # three red boots of 2.0 use its attempts up
        assert atoll("boot", *s).returncode == 46
    proc = atoll("boot", *s, crash_at=point)  # the fallback boot of 1.0
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    record = json.loads(ok("boot", *s, "--json"))
    assert record["outcome"] == "green"
    doc = json.loads(ok("status", *s, "--format", "json"))
    assert doc["status"]["booted"]["image"]["version"] == "1.0"
    assert doc["status"]["rollback"]["atoll"]["bootState"] == "bad"
    # The rollback became permanent: 1.0 is the default even without counting.
    assert doc["status"]["rollbackQueued"] is False
    fsck = atoll("store", "fsck", "--store", str(sysroot / "atoll/store"))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
