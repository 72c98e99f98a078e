"""docs/updates.md's examples, run against a registry and a directory device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.cli.main import main
from docs.docblocks import ROOT, blocks_of, find_block, normalized, shown_output
from docs.osrepo import OsTag
from helpers.busybox_root import REQUIRED, busybox_files
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

#: The block's command, as docs/updates.md writes it (on the device: --sysroot /sysroot).
CHECK = "atoll upgrade --check"


@pytest.mark.integration
def test_a_rolled_back_image_is_not_taken_again(
    tmp_path: Path, registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    block = find_block("docs/updates.md", CHECK)
    tag = OsTag(tmp_path, registry, "os/edge:stable")
    tag.build("1", "1.0", busybox_files({f"{REQUIRED}/50-app.sh": ""}))  # type: ignore[arg-type]
    tag.build("2", "2.0", busybox_files({f"{REQUIRED}/50-app.sh": "exit 3\n"}))  # type: ignore[arg-type]

    def atoll(*args: str) -> str:
        capsys.readouterr()
        code = main([*args, "--sysroot", str(sysroot)])
        captured = capsys.readouterr()
        assert code == 0 or args[0] == "boot", captured.err
        return captured.out.rstrip("\n")

    sysroot = tmp_path / "sysroot"
    tag.push("1")
    assert main(["install", "to-filesystem", str(sysroot), "--source", tag.name]) == 0
    atoll("boot")
    tag.push("2")
    atoll("upgrade")
    # Three red boots of 2.0, then the bootloader falls back to 1.0, which is green.
    atoll("boot", "--max-boots", "4")
    printed = atoll(*CHECK.split()[1:])
    hosts = {"registry.example": registry.host}
    assert normalized(printed, hosts) == normalized(shown_output(block, CHECK))


DIFF = "atoll config-diff"


def test_config_diff_lists_the_local_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's example: image 1 ships chrony.conf, motd and ssh/sshd_config;
    on the device chrony.conf is edited, sshd_config made root-only, motd
    deleted and myapp/app.conf added."""
    block = find_block("docs/updates.md", DIFF)
    images = tmp_path / "images"
    etc = {"etc/chrony.conf": "pool 2.debian.pool.ntp.org iburst\n", "etc/motd": "hello\n"}
    etc["etc/ssh/sshd_config"] = "PermitRootLogin no\n"
    build_os_image(images, "1", version="1.0", add=etc)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    s = ["--sysroot", str(sysroot)]
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
    assert main(["boot", *s]) == 0
    capsys.readouterr()
    assert main(["status", *s, "--json"]) == 0
    commit = json.loads(capsys.readouterr().out)["status"]["booted"]["atoll"]["commit"]
    root = sysroot / "atoll/deploy/default/deploy" / f"{commit}.0"
    (root / "etc/chrony.conf").write_text("server ntp.lan iburst\n")
    (root / "etc/ssh/sshd_config").chmod(0o600)
    (root / "etc/motd").unlink()
    (root / "etc/myapp").mkdir()
    (root / "etc/myapp/app.conf").write_text("level = 2\n")
    assert main([*DIFF.split()[1:], *s]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed == shown_output(block, DIFF)


RUN = "atoll updates run"


def test_a_mistake_in_updates_toml_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a booted device the file is /etc/atoll/updates.toml; on the directory
    device it is the booted deployment's, whose path is put back to /."""
    block = find_block("docs/updates.md", RUN)
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    sysroot = tmp_path / "sysroot"
    s = ["--sysroot", str(sysroot)]
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
    assert main(["boot", *s]) == 0
    (root,) = (sysroot / "atoll/deploy/default/deploy").glob("*.0")
    (root / "etc/atoll").mkdir(exist_ok=True)
    (root / "etc/atoll/updates.toml").write_text('[download]\ntimezone = "Europe/Atlantis"\n')
    capsys.readouterr()
    assert main([*RUN.split()[1:], *s]) == 4
    printed = capsys.readouterr().err.rstrip("\n")
    assert printed.replace(str(root), "") == shown_output(block, RUN)


UPGRADE = "atoll upgrade"


@pytest.mark.integration
def test_an_upgrade_without_python3_httpx_names_the_package(
    tmp_path: Path, registry: RegistryView
) -> None:
    """A device installed from a registry, whose python3 lacks httpx (the
    standard library alone, as tests/test_requires.py runs atoll)."""
    from test_requires import stdlib_atoll

    block = next(
        b
        for b in blocks_of(ROOT / "docs/updates.md")
        if b.commands() == [UPGRADE] and "httpx" in b.text
    )
    tag = OsTag(tmp_path, registry, "os/edge:stable")
    tag.build("1", "1.0")
    tag.push("1")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", tag.name]) == 0
    upgraded = stdlib_atoll(*UPGRADE.split()[1:], "--sysroot", str(sysroot))
    assert upgraded.returncode == 79, upgraded.stderr
    assert upgraded.stderr.rstrip("\n") == shown_output(block, UPGRADE)


@pytest.mark.integration
def test_an_upgrade_does_not_follow_a_tag_back(
    tmp_path: Path, registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tag the device follows is moved back from 2.0 to 1.0."""
    block = next(
        b
        for b in blocks_of(ROOT / "docs/updates.md")
        if b.commands() == [UPGRADE] and "older than" in b.text
    )
    tag = OsTag(tmp_path, registry, "prod/os:stable")
    tag.build("1", "1.0")
    tag.build("2", "2.0", {"usr/bin/new": b"two"})
    tag.push("2")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", tag.name]) == 0
    tag.push("1")
    capsys.readouterr()
    assert main([*UPGRADE.split()[1:], "--sysroot", str(sysroot)]) != 0
    printed = capsys.readouterr().err.rstrip("\n")
    hosts = {"127.0.0.1:5000": registry.host}
    assert normalized(printed, hosts) == normalized(shown_output(block, UPGRADE))
