"""docs/status.md's example, run: a device that booted 1.0 from a registry and
staged 2.0, and what `atoll status` prints for it, against what the page shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.cli.main import main
from docs.docblocks import find_block, normalized, shown_output
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

#: The block's command, as docs/status.md writes it.
COMMAND = "atoll status --sysroot /sysroot"


@pytest.mark.integration
def test_status_md_example(
    tmp_path: Path, registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    block = find_block("docs/status.md", COMMAND)
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "2", version="2.0", add={"usr/bin/new": b"two"})
    name = f"{registry.host}/os/edge:stable"

    def push(ref: str) -> None:
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:{ref}", f"docker://{name}"
        )

    push("1")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", name]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    push("2")
    assert main(["upgrade", "--sysroot", str(sysroot)]) == 0
    capsys.readouterr()

    argv = COMMAND.split()[1:]
    argv[argv.index("/sysroot")] = str(sysroot)
    assert main(argv) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    hosts = {"registry.example.com": registry.host}
    assert normalized(printed, hosts) == normalized(shown_output(block, COMMAND))
