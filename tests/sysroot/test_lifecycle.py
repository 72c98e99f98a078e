"""A directory device from install to rollback, through the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from helpers.osimage import build_os_image
from helpers.registry import RegistryView


def atoll(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> Any:
    result = main(list(args))
    captured = capsys.readouterr()
    assert result == code, captured.err
    if "--json" in args or "--format" in args:
        return json.loads(captured.out)
    return captured.out


def status(capsys: pytest.CaptureFixture[str], sysroot: Path) -> dict[str, Any]:
    doc: dict[str, Any] = atoll(capsys, "status", "--sysroot", str(sysroot), "--format", "json")
    return doc


def slot(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = doc["status"][name]
    return value


def version_of(doc: dict[str, Any], name: str) -> str | None:
    entry = slot(doc, name)
    return entry["image"]["version"] if entry else None


@pytest.fixture
def images(tmp_path: Path) -> Path:
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    build_os_image(
        layout,
        "2",
        version="2.0",
        add={"usr/bin/strace": b"\x7fELF strace", "etc/app.conf": "setting = default-2.0\n"},
    )
    build_os_image(layout, "3", version="3.0", add={"usr/bin/new-in-3": b"three"})
    return layout


@pytest.mark.integration
def test_install_upgrade_boot_rollback_switch(
    registry: RegistryView,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = registry.new_repo("os")
    ref = f"{registry.host}/{repo}:stable"
    # v1 in the registry, installed from there.
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:1", f"docker://{ref}"
    )
    sysroot = tmp_path / "sysroot"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", ref)
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    doc = status(capsys, sysroot)
    assert version_of(doc, "booted") == "1.0"
    assert slot(doc, "staged") is None and slot(doc, "rollback") is None
    assert doc["spec"]["image"] == {"image": ref, "transport": "registry"}
    booted_commit = slot(doc, "booted")["atoll"]["commit"]  # type: ignore[index]
    deployment = sysroot / "atoll/deploy/default/deploy" / f"{booted_commit}.0"
    var = sysroot / "atoll/deploy/default/var"
    assert (var / "lib/app/seed").read_text() == "seeded at install\n"

    # The administrator changes /etc and /var on the running v1.
    (deployment / "etc/app.conf").write_text("setting = mine\n")
    (deployment / "etc/local.conf").write_text("added here\n")
    (deployment / "etc/hostname").unlink()
    (var / "lib/app/data").write_text("written on v1\n")

    # v2 appears in the registry: check, then upgrade.
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:2", f"docker://{ref}"
    )
    check = atoll(capsys, "upgrade", "--check", "--json", "--sysroot", str(sysroot))
    assert check["changed"] is True and check["available"]["version"] == "2.0"
    assert status(capsys, sysroot)["status"]["staged"] is None  # --check stages nothing
    before = sorted(p.name for p in deployment.rglob("*"))
    atoll(capsys, "upgrade", "--sysroot", str(sysroot))
    assert sorted(p.name for p in deployment.rglob("*")) == before  # booted one untouched
    doc = status(capsys, sysroot)
    assert version_of(doc, "staged") == "2.0" and version_of(doc, "booted") == "1.0"

    # "Reboot": the boot finalizes the staged deployment and boots it.
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    doc = status(capsys, sysroot)
    assert version_of(doc, "booted") == "2.0" and version_of(doc, "rollback") == "1.0"
    v2 = slot(doc, "booted")["atoll"]  # type: ignore[index]
    new_root = sysroot / "atoll/deploy/default/deploy" / f"{v2['commit']}.{v2['deploySerial']}"
    assert (new_root / "usr/bin/strace").exists()
    assert (new_root / "etc/app.conf").read_text() == "setting = mine\n"  # local change wins
    assert (new_root / "etc/local.conf").read_text() == "added here\n"
    assert not (new_root / "etc/hostname").exists()  # local deletion carried
    assert (var / "lib/app/data").read_text() == "written on v1\n"  # /var is shared

    # Roll back: v1 boots next, v2 stays as the rollback.
    atoll(capsys, "rollback", "--sysroot", str(sysroot))
    doc = status(capsys, sysroot)
    assert doc["status"]["rollbackQueued"] is True
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    doc = status(capsys, sysroot)
    assert version_of(doc, "booted") == "1.0" and version_of(doc, "rollback") == "2.0"

    # Switch to an image in an oci-archive: file.
    archive = tmp_path / "v3.tar"
    registry.skopeo("copy", "-q", f"oci:{images}:3", f"oci-archive:{archive}:3")
    atoll(capsys, "switch", "--sysroot", str(sysroot), "--transport", "oci-archive", f"{archive}:3")
    doc = status(capsys, sysroot)
    assert slot(doc, "staged")["image"]["image"] == {  # type: ignore[index]
        "image": f"{archive}:3",
        "transport": "oci-archive",
    }
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    doc = status(capsys, sysroot)
    assert version_of(doc, "booted") == "3.0" and version_of(doc, "rollback") == "1.0"
    assert doc["spec"]["image"]["transport"] == "oci-archive"
    assert atoll(capsys, "store", "fsck", "--store", str(sysroot / "atoll/store"), "--json")


def test_install_from_a_layout_and_no_kernel(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_os_image(images, "nokernel", version="9.0", kernel=False)
    sysroot = tmp_path / "s"
    atoll(
        capsys,
        "install",
        "to-filesystem",
        str(sysroot),
        "--source",
        f"oci:{images}:nokernel",
        code=41,
    )
    assert not any((sysroot / "atoll/deploy").glob("*/deploy/*")) if sysroot.exists() else True
    atoll(
        capsys,
        "install",
        "to-filesystem",
        str(sysroot),
        "--source",
        f"oci:{images}:nokernel",
        "--allow-no-kernel",
    )
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    assert version_of(status(capsys, sysroot), "booted") == "9.0"


def test_newer_sysroot_is_refused(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysroot = tmp_path / "s"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    (sysroot / "atoll/sysroot.json").write_text('{"version": 99}')
    assert main(["status", "--sysroot", str(sysroot)]) == 40
    err = capsys.readouterr().err
    assert "sysroot format 99 is newer" in err


def test_download_only_then_apply(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysroot = tmp_path / "s"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    atoll(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    # Re-staging the same image with --download-only is what upgrade does for a fresh pull:
    atoll(capsys, "rollback", "--sysroot", str(sysroot), code=42)  # nothing to roll back to yet
    doc = status(capsys, sysroot)
    assert slot(doc, "staged")["downloadOnly"] is False  # type: ignore[index]
    atoll(capsys, "finalize", "--sysroot", str(sysroot))
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    assert version_of(status(capsys, sysroot), "booted") == "2.0"
    assert (sysroot / "boot/loader/entries").is_dir()


def test_download_only_waits_for_from_downloaded(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysroot = tmp_path / "s"
    s = ("--sysroot", str(sysroot))
    layout = tmp_path / "moving"
    build_os_image(layout, "stable", version="1.0")
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{layout}:stable")
    atoll(capsys, "boot", *s)
    build_os_image(layout, "stable", version="2.0", add={"usr/bin/new": b"new"})
    atoll(capsys, "upgrade", *s, "--download-only")
    staged = slot(status(capsys, sysroot), "staged")
    assert staged is not None and staged["downloadOnly"] is True
    # Shutdown does not apply a download-only deployment: the device stays on 1.0.
    atoll(capsys, "finalize", *s)
    atoll(capsys, "boot", *s)
    assert version_of(status(capsys, sysroot), "booted") == "1.0"
    # --from-downloaded applies it without fetching (the layout could be gone).
    (layout / "index.json").rename(layout / "index.json.away")
    atoll(capsys, "upgrade", *s, "--from-downloaded")
    atoll(capsys, "boot", *s)
    assert version_of(status(capsys, sysroot), "booted") == "2.0"


def test_pin_keeps_a_deployment_and_config_diff_lists_local_changes(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysroot = tmp_path / "s"
    s = ("--sysroot", str(sysroot))
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    atoll(capsys, "boot", *s)
    v1 = slot(status(capsys, sysroot), "booted")
    assert v1 is not None
    root = sysroot / "atoll/deploy/default/deploy" / f"{v1['atoll']['commit']}.0"
    (root / "etc/app.conf").write_text("mine\n")
    (root / "etc/extra.conf").write_text("x\n")
    (root / "etc/hostname").unlink()
    diff = atoll(capsys, "config-diff", *s, "--json")
    assert {(c["path"], c["kind"]) for c in diff} == {
        ("app.conf", "modified"),
        ("extra.conf", "added"),
        ("hostname", "deleted"),
    }
    pinned = atoll(capsys, "pin", *s, "--json")
    assert pinned["pinned"] is True
    # Two upgrades later the pinned v1 is still there, as a third boot entry.
    for ref in ("2", "3"):
        atoll(capsys, "switch", *s, f"oci:{images}:{ref}")
        atoll(capsys, "boot", *s)
    entries = sorted((sysroot / "boot/loader/entries").iterdir())
    assert len(entries) == 3
    assert root.is_dir()
    atoll(capsys, "unpin", *s, v1["atoll"]["commit"][:12], "--json")
    atoll(capsys, "switch", *s, f"oci:{images}:1")
    atoll(capsys, "boot", *s)
    atoll(capsys, "cleanup", *s)
    assert len(list((sysroot / "boot/loader/entries").iterdir())) == 2


@pytest.mark.integration
def test_an_offline_install_follows_its_target_image(
    registry: RegistryView, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Installed from a local copy (oci-archive:, as from a stick), the device tracks
    the registry image given by --target-image: its next upgrade comes from there."""
    ref = f"{registry.host}/{registry.new_repo('os')}:stable"
    archive = tmp_path / "v1.tar"
    atoll(capsys, "image", "copy", f"oci:{images}:1", f"oci-archive:{archive}")
    sysroot = tmp_path / "sysroot"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source",
          f"oci-archive:{archive}", "--target-image", ref)  # fmt: skip
    assert status(capsys, sysroot)["spec"]["image"] == {"image": ref, "transport": "registry"}
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:2", f"docker://{ref}"
    )
    atoll(capsys, "upgrade", "--sysroot", str(sysroot))
    assert version_of(status(capsys, sysroot), "staged") == "2.0"
