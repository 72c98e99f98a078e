"""docs/status.md's example, run: a device that booted 1.0 from a registry and
staged 2.0, and what `atoll status` prints for it, against what the page shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.cli.main import main
from docs.docblocks import find_block, normalized, shown_output
from docs.osrepo import OsTag
from helpers.registry import RegistryView

#: The block's command, as docs/status.md writes it.
COMMAND = "atoll status --sysroot /sysroot"


@pytest.mark.integration
def test_status_md_example(
    tmp_path: Path, registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    block = find_block("docs/status.md", COMMAND)
    tag = OsTag(tmp_path, registry, "os/edge:stable")
    tag.build("1", "1.0")
    tag.build("2", "2.0", {"usr/bin/new": b"two"})
    tag.push("1")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", tag.name]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    tag.push("2")
    assert main(["upgrade", "--sysroot", str(sysroot)]) == 0
    capsys.readouterr()

    argv = COMMAND.split()[1:]
    argv[argv.index("/sysroot")] = str(sysroot)
    assert main(argv) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    hosts = {"registry.example.com": registry.host}
    assert normalized(printed, hosts) == normalized(shown_output(block, COMMAND))
