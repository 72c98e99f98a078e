"""docs/updates.md's examples, run against a registry and a directory device."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.cli.main import main
from docs.docblocks import find_block, normalized, shown_output
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
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0", add=busybox_files({f"{REQUIRED}/50-app.sh": ""}))
    failing = busybox_files({f"{REQUIRED}/50-app.sh": "exit 3\n"})
    build_os_image(images, "2", version="2.0", add=failing)
    name = f"{registry.host}/os/edge:stable"

    def push(ref: str) -> None:
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:{ref}", f"docker://{name}"
        )

    def atoll(*args: str) -> str:
        capsys.readouterr()
        code = main([*args, "--sysroot", str(sysroot)])
        captured = capsys.readouterr()
        assert code == 0 or args[0] == "boot", captured.err
        return captured.out.rstrip("\n")

    sysroot = tmp_path / "sysroot"
    push("1")
    assert main(["install", "to-filesystem", str(sysroot), "--source", name]) == 0
    atoll("boot")
    push("2")
    atoll("upgrade")
    # Three red boots of 2.0, then the bootloader falls back to 1.0, which is green.
    atoll("boot", "--max-boots", "4")
    printed = atoll(*CHECK.split()[1:])
    hosts = {"registry.example": registry.host}
    assert normalized(printed, hosts) == normalized(shown_output(block, CHECK))
