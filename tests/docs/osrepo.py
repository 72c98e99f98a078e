"""Versions of an OS image in an OCI layout, pushed one at a time to the tag a
device follows in the test registry (the docs' ``registry.example.com/os/edge:stable``)."""

from __future__ import annotations

from pathlib import Path

from helpers.osimage import Spec, build_os_image
from helpers.registry import RegistryView


class OsTag:
    def __init__(self, tmp_path: Path, registry: RegistryView, repo: str) -> None:
        self.layout = tmp_path / "images"
        self.registry = registry
        self.name = f"{registry.host}/{repo}"

    def build(self, ref: str, version: str, add: Spec | None = None) -> None:
        build_os_image(self.layout, ref, version=version, add=add)

    def push(self, ref: str) -> None:
        """Point the tag at the layout's image *ref*."""
        self.registry.skopeo(
            "copy",
            "-q",
            *self.registry.skopeo_args("dest"),
            f"oci:{self.layout}:{ref}",
            f"docker://{self.name}",
        )
