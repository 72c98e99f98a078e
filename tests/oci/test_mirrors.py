"""Pulls through the ``[[registry.mirror]]`` entries of registries.conf, against
real registries on loopback: mirrors in order, then the primary."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from atoll.errors import AtollError
from atoll.oci.imagecopy import copy_image
from atoll.oci.transports import ImageName
from helpers.registry import RegistryView


def _closed_port() -> str:
    """A loopback address nothing listens on: a primary registry that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _add_conf(text: str) -> None:
    path = Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    path.write_text(path.read_text() + text)


def _mirrored(primary: str, *mirrors: str, pull: str = "all") -> None:
    text = f'\n[[registry]]\nlocation = "{primary}"\ninsecure = true\n'
    for location in mirrors:
        text += (
            f'\n[[registry.mirror]]\nlocation = "{location}"\ninsecure = true\n'
            f'pull-from-mirror = "{pull}"\n'
        )
    _add_conf(text)


def _pull(view: RegistryView, ref: str, out: str) -> str:
    result = copy_image(
        ImageName.parse(f"docker://{ref}"),
        ImageName.parse(f"oci:{view.tmp_path / out}:x"),
        src_ctx=view.ctx(retries=1),
    )
    return str(result.digest)


def test_mirror_serves_while_the_primary_is_down(registry: RegistryView) -> None:
    primary = _closed_port()
    name = registry.new_repo("team")
    image = registry.push_test_image(f"mirrored/{name}", "1.0")
    # The prefix (the primary host) is replaced by the mirror's location; an
    # absent mirror comes first and is skipped.
    _mirrored(primary, f"{registry.host}/absent", f"{registry.host}/mirrored")
    assert _pull(registry, f"{primary}/{name}:1.0", "by-tag") == image.manifest_digest
    by_digest = f"{primary}/{name}@{image.manifest_digest}"
    assert _pull(registry, by_digest, "by-digest") == image.manifest_digest


def test_digest_only_mirror_is_not_asked_for_tags(registry: RegistryView) -> None:
    primary = _closed_port()
    name = registry.new_repo("app")
    image = registry.push_test_image(f"digestonly/{name}", "1.0")
    _mirrored(primary, f"{registry.host}/digestonly", pull="digest-only")
    by_digest = f"{primary}/{name}@{image.manifest_digest}"
    assert _pull(registry, by_digest, "by-digest") == image.manifest_digest
    with pytest.raises(AtollError, match=primary):
        _pull(registry, f"{primary}/{name}:1.0", "by-tag")


def test_primary_serves_when_no_mirror_has_the_image(
    registry: RegistryView, auth_registry: RegistryView
) -> None:
    repo = auth_registry.new_repo()
    image = auth_registry.push_test_image(repo, "1.0")
    _mirrored(auth_registry.host, f"{registry.host}/nothing-here")
    ref = f"{auth_registry.host}/{repo}:1.0"
    assert _pull(auth_registry, ref, "from-primary") == image.manifest_digest
