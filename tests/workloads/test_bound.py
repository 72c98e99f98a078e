"""Logically bound images: bound-images.d read from a deployment, pulled at staging.

The staging tests use a real directory device, a real registry and a real
podman whose store is the test's own (``CONTAINERS_*`` point at it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from atoll.cli.hostdevice import open_device
from atoll.errors import BoundImageError
from atoll.oci.transports import ImageName
from atoll.podman import isolated_environment
from atoll.workloads.autoupdate.localimages import Podman
from atoll.workloads.bound import BOUND_IMAGES_DIR, BoundImage, find_bound_images
from helpers.osimage import FileSpec, Spec, build_os_image
from helpers.parts import require_tool
from helpers.registry import RegistryView

QUADLET = "usr/share/containers/systemd"


def _tree(root: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, target in links.items():
        path = root / BOUND_IMAGES_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    return root


def test_links_resolve_inside_the_deployment(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "root",
        {
            f"{QUADLET}/web.container": "[Container]\nImage=reg.example:5000/web:1\n",
            f"{QUADLET}/base.image": "[Image]\nImage=reg.example/base@sha256:" + "a" * 64 + "\n",
            f"{QUADLET}/dup.container": "[Container]\nImage=reg.example:5000/web:1\n",
        },
        {
            "10-web.container": f"/{QUADLET}/web.container",
            "20-base.image": f"../../../../{QUADLET}/base.image",
            "30-dup.container": f"/{QUADLET}/dup.container",
        },
    )
    # A host file at the same absolute path must not be what is read.
    assert not Path(f"/{QUADLET}/web.container").exists()
    assert find_bound_images(root) == [
        BoundImage("10-web.container", f"/{QUADLET}/web.container", "reg.example:5000/web:1"),
        BoundImage(
            "20-base.image", f"/{QUADLET}/base.image", "reg.example/base@sha256:" + "a" * 64
        ),
    ]
    assert find_bound_images(tmp_path / "empty") == []


@pytest.mark.parametrize(
    ("unit", "link", "message"),
    [
        ("[Container]\nImage=busybox\n", None, "not fully qualified"),
        ("[Container]\nImage=base.image\n", None, "runs base.image, another unit"),
        ("[Container]\nExec=true\n", None, "has no Image="),
        ("[Container]\nImage=reg.example/a:1\n", "/nowhere/w.container", "does not exist"),
        ("[Container]\nImage=reg.example/a:1\n", "file", "not a symlink"),
    ],
)
def test_bad_declarations_are_refused(
    tmp_path: Path, unit: str, link: str | None, message: str
) -> None:
    root = _tree(tmp_path, {f"{QUADLET}/w.container": unit}, {})
    entry = root / BOUND_IMAGES_DIR / "w.container"
    entry.parent.mkdir(parents=True)
    if link == "file":
        entry.write_text(unit)
    else:
        entry.symlink_to(link or f"/{QUADLET}/w.container")
    with pytest.raises(BoundImageError, match=message):
        find_bound_images(root)


@pytest.fixture
def podman_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Podman:
    """The host's container storage, for this test: a store in tmp_path."""
    require_tool("podman")
    conf = Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    for key, value in isolated_environment(tmp_path / "podman", registries_conf=conf).items():
        monkeypatch.setenv(key, value)
    return Podman()


def _os_image(layout: Path, ref: str, version: str, images: dict[str, str]) -> None:
    add: Spec = {}
    for name, image in images.items():
        add[f"{QUADLET}/{name}"] = f"[Container]\nImage={image}\nAutoUpdate=registry\n"
        add[f"{BOUND_IMAGES_DIR}/{name}"] = FileSpec(symlink=f"/{QUADLET}/{name}")
    build_os_image(layout, ref, version=version, add=add)


@pytest.mark.integration
def test_staging_pulls_bound_images_or_stages_nothing(
    tmp_path: Path,
    registry: RegistryView,
    podman_env: Podman,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = registry.new_repo("bound")
    web = f"{registry.host}/{repo}:web"
    pushed = registry.push_test_image(repo, "db", layers=1, layer_size=256, seed="db")
    registry.push_test_image(repo, "web", layers=1, layer_size=256, seed="web")
    db = f"{registry.host}/{repo}@{pushed.manifest_digest}"
    layout = tmp_path / "os"
    build_os_image(layout, "1", version="1.0")
    _os_image(layout, "2", "2.0", {"web.container": web, "db.container": db})
    _os_image(layout, "3", "3.0", {"gone.container": f"{registry.host}/{repo}:missing"})

    device = open_device(tmp_path / "sysroot", registry.ctx())
    device.install(ImageName.parse(f"oci:{layout}:1"))
    device.boot()
    deploy_dir = tmp_path / "sysroot/atoll/deploy/default/deploy"
    booted = sorted(p.name for p in deploy_dir.iterdir())

    # A pull that fails: nothing staged, the checked-out deployment removed.
    with pytest.raises(BoundImageError, match=r"pulling the bound images .*:missing failed"):
        device.stage(ImageName.parse(f"oci:{layout}:3"))
    assert device.state().staged is None
    assert sorted(p.name for p in deploy_dir.iterdir()) == booted

    result = device.stage(ImageName.parse(f"oci:{layout}:2"))
    assert result.changed and device.state().staged is not None
    assert podman_env.exists(web) and podman_env.exists(db)

    # No podman on the host: a warning, and the update is staged all the same.
    device.finalize()
    device.boot()
    empty = tmp_path / "nopath"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with caplog.at_level(logging.WARNING):
        result = device.stage(ImageName.parse(f"oci:{layout}:3"))
    assert result.changed
    assert "bound image(s) of the new deployment not pulled: podman is not installed" in (
        caplog.text
    )
