"""Running the real skopeo as an oracle for the local transports' on-disk formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from helpers.parts import require_tool

POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


class Skopeo:
    """skopeo with a policy file of its own, so tests do not depend on /etc."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_tool("skopeo")
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps(POLICY))

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [self.binary, "--policy", str(self.policy), *args],
            capture_output=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"skopeo {' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def copy(self, src: str, dest: str, *, all_images: bool = False) -> None:
        self.run("copy", "--quiet", *(["--all"] if all_images else []), src, dest)

    def raw_manifest(self, name: str) -> bytes:
        return self.run("inspect", "--raw", name).stdout

    def inspect(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("inspect", name).stdout)
        return data
