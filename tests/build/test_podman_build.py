"""Builds with the real podman, registry and a local apt repository.

A small Debian base (the cached debootstrap tree, a fake kernel: the lint checks
that a kernel and an initramfs are there, not that they boot) has its apt
sources pointed at a repository on loopback (helpers.aptrepo), so v2 of the
blueprint installs strace without the internet; podman runs RUN steps with
``--network host`` to reach it.  v1 is built once per session, into a work
directory the tests share (podman's store there keeps the base loaded).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from atoll.build.blueprint import parse_blueprint
from atoll.build.imagetree import ImageTree, read_image_tree
from atoll.build.podman_build import BuildResult, BuildSettings, build_blueprint
from atoll.oci.context import SystemContext
from atoll.oci.imagecopy import copy_image
from atoll.oci.transports import ImageName
from atoll.progress import NullProgress
from atoll.units import UNITS
from helpers.cli import run_atoll
from helpers.debian import DebianTree, build_debian_image
from helpers.parts import missing, require_tool
from helpers.registry import RegistryView

if TYPE_CHECKING:
    # Imported by pytest as a plugin (below) first: no assertion rewriting lost.
    from helpers.aptrepo import AptRepo

pytest_plugins = ["helpers.aptrepo"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

V1 = """\
name = "edge"
description = "Edge devices"
version = "1.0.0"

[[customizations.group]]
name = "app"
gid = 1100

[[customizations.user]]
name = "admin"
password = "$6$rounds=5000$salt$Y3G9bOdl1N1dhl8bUFpJBRiN6c4uEp0Tr9Mvgp3yH3C"
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1bL admin@example"
groups = ["app"]
uid = 1001

[[customizations.files]]
path = "/etc/app/app.conf"
data = "listen = 8080\\n"
mode = "0640"
user = "admin"
group = "app"

[[customizations.directories]]
path = "/etc/app"
mode = "0750"
group = "app"

[customizations.services]
disabled = ["systemd-networkd.service"]

[customizations.kernel]
append = "console=ttyS0"

[customizations.timezone]
timezone = "Europe/Berlin"
"""
# v2 adds a package from the loopback repository, and a clear-text password.
V2 = (
    V1.replace('version = "1.0.0"', 'version = "2.0.0"')
    + '\n[[packages]]\nname = "strace"\n\n[[customizations.user]]\nname = "ops"\n'
    'password = "not-a-hash"\n'
)
WANTED = ("etc/passwd", "etc/group", "etc/app/app.conf", "usr/lib/bootc/kargs.d/10-blueprint.toml")


@dataclass
class Recorder(NullProgress):
    """A progress sink that keeps the tasks and subtasks it was told of."""

    tasks: list[str]
    subtasks: list[str]

    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None:
        self.tasks.append(task)

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None:
        self.subtasks.append(f"{kind}: {description}")


@dataclass(frozen=True)
class Built:
    base: ImageName
    workdir: Path
    v1: ImageName
    result: BuildResult
    progress: Recorder


@pytest.fixture(scope="session")
def podman_build_parts() -> None:
    require_tool("podman")
    require_tool("runc")
    if os.geteuid() != 0:
        missing("podman build with runc and vfs needs root here")


@pytest.fixture(scope="session")
def built_v1(
    podman_build_parts: None,
    debian_tree: DebianTree,
    apt_repo: AptRepo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("build")
    build_debian_image(
        root / "base",
        "base",
        debian_tree,
        version="0",
        kernel=True,
        add={"etc/apt/sources.list": apt_repo.sources_line},
    )
    base = ImageName.parse(f"oci:{root / 'base'}:base")
    v1 = ImageName.parse(f"oci:{root / 'out'}:1.0.0")
    progress = Recorder([], [])
    settings = BuildSettings(network="host", workdir=root / "work")
    result = build_blueprint(
        parse_blueprint(V1, "v1.toml"), base, v1, SystemContext(), settings, progress=progress
    )
    yield Built(base, root / "work", v1, result, progress)
    shutil.rmtree(root / "work", ignore_errors=True)


def _v1_in_registry(built: Built, registry: RegistryView) -> str:
    """A new repository of *registry* that holds v1 as 1.0.0: ``HOST/REPO``."""
    repo = f"{registry.host}/{registry.new_repo('edge')}"
    copy_image(built.v1, ImageName.parse(f"docker://{repo}:1.0.0"))
    return repo


def _layers(registry: RegistryView, ref: str) -> list[dict[str, Any]]:
    raw = registry.skopeo("inspect", "--raw", *registry.skopeo_args(), f"docker://{ref}").stdout
    layers: list[dict[str, Any]] = json.loads(raw)["layers"]
    return layers


def _tree(name: ImageName | str) -> ImageTree:
    if isinstance(name, str):
        name = ImageName.parse(name)
    return read_image_tree(name, SystemContext(), want=WANTED)


def test_v1_from_a_blueprint_is_bootable_and_customized(built_v1: Built) -> None:
    result = built_v1.result
    assert result.lint is not None and result.lint.ok and result.lint.fatal == 0
    assert result.family is not None and result.family.value == "debian"
    assert {"atoll", *UNITS, "usr/share/initramfs-tools/hooks/atoll"} <= set(result.added)
    # Progress: the copies, the build with one subtask per step, the read for the lint.
    assert {"copy", "build", "read"} <= set(built_v1.progress.tasks)
    assert any(s.startswith("step: STEP 1/") for s in built_v1.progress.subtasks)
    # Rechunked by default: many layers, grouped by the dpkg database.
    assert result.rechunk is not None and result.rechunk.package_format == "dpkg"
    assert 8 < len(result.rechunk.layers) <= 64
    assert "rechunk" in built_v1.progress.tasks

    tree = _tree(built_v1.v1)
    labels = tree.config.labels
    assert labels["org.opencontainers.image.version"] == "1.0.0"
    assert labels["containers.bootc"] == "1"
    passwd = (tree.read("etc/passwd") or b"").decode()
    assert "admin:x:1001:" in passwd
    assert "app:x:1100:admin" in (tree.read("etc/group") or b"").decode()
    conf = tree.node("etc/app/app.conf")
    assert conf is not None and conf.mode == 0o640 and conf.uid == 1001 and conf.gid == 1100
    assert tree.read("etc/app/app.conf") == b"listen = 8080\n"
    app_dir = tree.node("etc/app")
    assert app_dir is not None and app_dir.mode == 0o750 and app_dir.gid == 1100
    assert tree.read("usr/lib/bootc/kargs.d/10-blueprint.toml") == b'kargs = ["console=ttyS0"]\n'
    keys = tree.node("home/admin/.ssh/authorized_keys")
    assert keys is not None and keys.mode == 0o600 and keys.uid == 1001
    localtime = tree.entries["etc/localtime"]
    assert localtime.linkname == "../usr/share/zoneinfo/Europe/Berlin"
    assert "etc/systemd/system/multi-user.target.wants/systemd-networkd.service" not in tree.entries
    assert "usr/bin/strace" not in tree.entries
    assert tree.node("usr/bin/atoll") is not None
    assert "etc/systemd/system/timers.target.wants/atoll-fetch-apply-updates.timer" in tree.entries


def test_v2_adds_a_package_and_goes_to_a_registry(
    built_v1: Built, registry: RegistryView, tmp_path: Path
) -> None:
    repo = _v1_in_registry(built_v1, registry)
    blueprint = tmp_path / "v2.toml"
    blueprint.write_text(V2)
    target = f"docker://{repo}:2.0.0"
    proc = run_atoll(
        "build",
        "--blueprint",
        str(blueprint),
        "--base",
        str(built_v1.base),
        "-t",
        target,
        "--network",
        "host",
        "--workdir",
        str(built_v1.workdir),
        "--previous",
        f"docker://{repo}:1.0.0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = V2.splitlines().index('password = "not-a-hash"') + 1
    assert f"line {line}: customizations.user[1].password: user ops has a clear-text" in proc.stderr
    data = json.loads(proc.stdout)
    assert data["image"] == target and data["digest"].startswith("sha256:")
    assert data["lint"]["ok"] is True and data["lint"]["fatal"] == 0
    # With v1's layout kept, most of v1's layers are v2's too: a device fetches the rest.
    old = {d["digest"] for d in _layers(registry, f"{repo}:1.0.0")}
    new = _layers(registry, f"{repo}:2.0.0")
    assert len(new) == data["layers"]
    fetched = sum(d["size"] for d in new if d["digest"] not in old)
    assert fetched < 0.3 * sum(d["size"] for d in new), (fetched, new)

    v1, v2 = _tree(f"docker://{repo}:1.0.0"), _tree(target)
    assert "usr/bin/strace" not in v1.entries
    strace = v2.node("usr/bin/strace")
    assert strace is not None and strace.is_file and strace.mode & 0o111
    assert v2.config.labels["org.opencontainers.image.version"] == "2.0.0"
    assert "ops:" in (v2.read("etc/passwd") or b"").decode()
    # apt's lists were cleaned in the same step: they do not bloat /var.
    assert not [p for p in v2.entries if p.startswith("var/lib/apt/lists/") and "lock" not in p]

    lint = run_atoll("lint", target, "--json")
    assert lint.returncode == 0, lint.stderr
    assert json.loads(lint.stdout)["ok"] is True


def test_containerfile_build_and_the_lint_catches_a_broken_image(
    built_v1: Built, registry: RegistryView, tmp_path: Path
) -> None:
    repo = _v1_in_registry(built_v1, registry)
    context = tmp_path / "context"
    context.mkdir()
    (context / "motd").write_text("broken on purpose\n")
    (context / "Containerfile").write_text(
        f"FROM {repo}:1.0.0\n"
        "COPY motd /etc/motd\n"
        "RUN rm -rf /usr/lib/modules/* /usr/bin/atoll && mkdir -p /usr/etc && "
        "echo x > /usr/etc/broken.conf\n"
    )
    target = f"oci:{tmp_path / 'out'}:broken"
    proc = run_atoll(
        "build", "-t", target, str(context), "--no-lint", "--workdir", str(built_v1.workdir),
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    # The atoll step puts back what the Containerfile removed of atoll.
    assert data["added"] == ["atoll"] and data["lint"] is None

    lint = run_atoll("lint", target, "--json")
    assert lint.returncode == 69
    report = json.loads(lint.stdout)
    fatal = {f["check"] for f in report["findings"] if f["level"] == "fatal"}
    assert fatal == {"kernel", "usr-etc"}
    assert "fails the lint (2 fatal" in lint.stderr
    tree = _tree(target)
    assert tree.node("etc/motd") is not None and tree.node("usr/bin/atoll") is not None


def test_a_failing_lint_writes_nothing(podman_build_parts: None, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "os-release").write_text("ID=debian\n")
    (context / "Containerfile").write_text("FROM scratch\nCOPY os-release /etc/os-release\n")
    out = tmp_path / "out"
    proc = run_atoll("build", "-t", f"oci:{out}:x", "--no-atoll", str(context))
    assert proc.returncode == 69, proc.stderr
    assert "fatal: kernel: no kernel" in proc.stdout
    assert "it was not written to oci:" in proc.stderr
    assert not (out / "index.json").exists()


def test_a_failing_step_is_a_build_error(podman_build_parts: None, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text("FROM scratch\nRUN /no/such/program\n")
    proc = run_atoll("build", "-t", f"oci:{tmp_path / 'out'}:x", str(context))
    assert proc.returncode == 68, proc.stderr
    assert proc.stderr.startswith("atoll: error: podman build of oci:")
    assert "hint: run with --verbose" in proc.stderr
