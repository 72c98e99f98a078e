"""The format-2 parts of a bundle: the description's per-file delta, and the
ranges a bundle serves in a registry's place (fast; the end-to-end test is
test_bundle_delta.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.errors import BundleError
from atoll.oci.digest import Digest
from atoll.oci.transports.archive import write_layout_tar
from atoll.pipeline.bundle import (
    BUNDLE_VERSION,
    BlobRanges,
    BundleImage,
    BundleReader,
    Delta,
    Description,
)
from atoll.pipeline.bundlecreate import _put_blob, _write_bundle_manifest
from atoll.pipeline.bundledelta import REPOSITORY, BundleRegistry, merge

OS = BundleImage("os", "example.com/os:2", "sha256:" + "1" * 64)


def test_extents_merge_sorted_and_joined() -> None:
    assert merge([(50, 60), (0, 10), (10, 20), (55, 58), (70, 70)]) == ((0, 20), (50, 10))


def test_a_format_2_description_round_trips_and_a_newer_one_is_refused() -> None:
    delta = Delta(
        "example.com/os:1",
        "sha256:" + "2" * 64,
        (),
        "sha256:" + "3" * 64,
        (BlobRanges("sha256:" + "4" * 64, "sha256:" + "5" * 64, ((0, 10), (20, 5))),),
    )
    description = Description("2026-12-06T00:00:00Z", (OS,), delta, BUNDLE_VERSION)
    raw = json.dumps(description.to_json()).encode()
    assert Description.from_json(raw, "here") == description
    newer = json.dumps({**description.to_json(), "atollBundle": BUNDLE_VERSION + 1}).encode()
    with pytest.raises(BundleError, match=f"bundle format {BUNDLE_VERSION + 1} is newer"):
        Description.from_json(newer, "here")
    for extents in ([[0, 10], [5, 10]], [[0]], [["0", 1]], [[3, 0]]):
        doc = description.to_json()
        doc["delta"]["ranges"][0]["extents"] = extents
        with pytest.raises(BundleError, match="malformed bundle description"):
            Description.from_json(json.dumps(doc).encode(), "here")


def test_ranges_are_served_from_what_the_bundle_holds(tmp_path: Path) -> None:
    """Bytes between held extents read as zeros; a range that starts or ends in
    bytes the bundle lacks is refused."""
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    layer = bytes(range(256)) * 4  # the blob the bundle holds parts of
    extents = ((100, 50), (300, 20))
    held = _put_blob(layout, layer[100:150] + layer[300:320])
    ranges = BlobRanges(str(Digest.of(layer)), str(held), extents)
    delta = Delta("example.com/os:1", "sha256:" + "2" * 64, (), None, (ranges,))
    _write_bundle_manifest(layout, Description("2026-12-06T00:00:00Z", (OS,), delta, 2))
    path = tmp_path / "b.bundle"
    with path.open("wb") as fh:
        write_layout_tar(layout, fh)
    with BundleReader(path) as bundle:
        served = BundleRegistry(bundle, Digest.parse(OS.digest), None, [ranges])
        registry = served.as_client()
        digest = Digest.of(layer)
        assert registry.fetch_range(REPOSITORY, digest, 110, 20) == layer[110:130]
        assert served.holes == 0
        spanned = registry.fetch_range(REPOSITORY, digest, 140, 170)
        assert spanned[:10] == layer[140:150] and spanned[160:] == layer[300:310]
        assert spanned[10:160] == bytes(150)
        assert served.holes == 1
        for start, length in ((90, 20), (140, 15), (200, 10)):
            with pytest.raises(BundleError, match="which the bundle does not hold"):
                registry.fetch_range(REPOSITORY, digest, start, length)
        with pytest.raises(BundleError, match="which the bundle does not hold"):
            registry.fetch_range(REPOSITORY, Digest.of(b"other"), 0, 1)
        # The delta's referrers: none named.
        listed = json.loads(registry.referrers(REPOSITORY, digest, "x") or b"{}")
        assert listed["manifests"] == []
