"""Pulls through the ``[[registry.mirror]]`` entries and the ``location`` of
registries.conf, against real registries on loopback: mirrors in order, then
the primary at its location; and the readers other than a pull (tag listing,
auto-update checks, signatures, ``atoll mirror``'s source) going the same way."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from atoll.errors import AtollError
from atoll.oci.catalog import list_tags
from atoll.oci.imagecopy import copy_image
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName
from atoll.pipeline.mirror import mirror
from atoll.pipeline.sigstore import read_signatures, sign_image
from atoll.workloads.autoupdate.checks import check_references
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


def test_location_replaces_the_prefix_of_what_is_pulled(registry: RegistryView) -> None:
    """``prefix`` is the name as written, ``location`` where it is: the name's
    prefix is replaced by the location, for a pull and for a tag listing."""
    logical = f"{_closed_port()}/team"
    name = registry.new_repo("app")
    image = registry.push_test_image(f"real/{name}", "1.0")
    _add_conf(
        f'\n[[registry]]\nprefix = "{logical}"\nlocation = "{registry.host}/real"\n'
        "insecure = true\n"
    )
    assert _pull(registry, f"{logical}/{name}:1.0", "by-tag") == image.manifest_digest
    assert list_tags(ImageName.parse(f"docker://{logical}/{name}"), registry.ctx()) == ["1.0"]


def test_readers_besides_the_pull_go_to_the_mirror(registry: RegistryView) -> None:
    """With the primary down, tags, an auto-update check, the signatures and
    ``atoll mirror``'s source are all read from the mirror."""
    primary = _closed_port()
    name = registry.new_repo("app")
    image = registry.push_test_image(f"mirrored/{name}", "1.0")
    key = ec.generate_private_key(ec.SECP256R1())
    ctx = registry.ctx(retries=1)
    sign_image(ImageReference.parse(f"{registry.host}/mirrored/{name}:1.0"), key, ctx)
    _mirrored(primary, f"{registry.host}/mirrored")
    logical = f"{primary}/{name}"

    assert sorted(list_tags(ImageName.parse(f"docker://{logical}"), ctx)) == [
        "1.0",
        image.manifest_digest.replace(":", "-") + ".sig",
    ]
    ref = ImageReference.parse(f"{logical}:1.0")
    [check] = check_references([ref], ctx).values()
    assert (check.digest, check.error) == (image.manifest_digest, None)
    digest, signatures = read_signatures(ref, ctx)
    assert str(digest) == image.manifest_digest and len(signatures) == 1
    copied = mirror(
        ImageReference.parse(logical),
        ImageReference.parse(f"{registry.host}/copy/{name}"),
        src_ctx=ctx,
        tags="^1",
    )
    assert [(t.tag, t.digest, t.action) for t in copied.tags] == [
        ("1.0", image.manifest_digest, "copied")
    ]
