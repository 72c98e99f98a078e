"""Binary deltas (atoll.oci.delta) published to and used from the real registry.

v1 and v2 share most files; three big ones change by a few bytes (a rebuilt
binary), one small one is new.  A store holding v1 imports v2 with a delta
from v1, and must make the very commit a whole import of v2 makes.  Bad
deltas (for another OLD, truncated, making other files) are refused or
fallen back from, and nothing they make enters the store unverified.  The
faults run against index version 2 (files by sha256, as older publishers
write it) and version 3 (files by path, TOCs as patches).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.errors import DeltaError
from atoll.oci.chunked import chunked_info
from atoll.oci.context import SystemContext
from atoll.oci.delta import (
    ARTIFACT_TYPE,
    BSDIFF,
    PATCH,
    DeltaFile,
    DeltaIndex,
    TocPatch,
    apply_patch,
    digests_text,
    find_delta,
    make_bsdiff,
    make_patch,
    make_whole,
    push_delta,
    referrers_tag,
    sha256_hex,
    toc_json,
)
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression, Descriptor, MediaType
from atoll.oci.transports import ImageName
from atoll.oci.transports.docker import DockerSource
from atoll.pipeline.deltacreate import create_delta
from atoll.store import ImportResult, Store
from atoll.store.partial import DELTA, RANGES, TransferReport
from atoll.store.tocs import find_toc, keep_toc
from atoll.sysroot.fetch import import_remote
from helpers.registry import FaultProxyView, RegistryView
from helpers.treeimage import build_tree_image

pytestmark = pytest.mark.integration

BIG = 150_000
CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)


def _noise(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)  # incompressible, the same every run


def _bumped(seed: str, version: str) -> bytes:
    data = bytearray(_noise(seed, BIG))
    if version != "1":
        # A version string in three places, as a rebuilt binary changes.
        for at in (1000, 70_000, 140_000):
            data[at : at + 12] = f"version={version:>4}".encode()[:12]
    return bytes(data)


def layers(version: str) -> list[dict[str, Any]]:
    files: dict[str, Any] = {f"usr/lib/same{i}.bin": _noise(f"s{i}", 40_000) for i in range(8)}
    files |= {f"usr/bin/big{i}": _bumped(f"b{i}", version) for i in range(3)}
    files["etc/os-release"] = f"VERSION={version}\n"
    if version != "1":
        files["usr/share/new.txt"] = _noise("new", 3000)
    return [files, {"etc/motd": f"hello {version}\n"}]


def push(view: RegistryView, tmp: Path, repo: str, version: str) -> tuple[str, Digest]:
    layout = tmp / f"layout-{version}"
    build_tree_image(layout, layers(version), ref=version)
    name = f"docker://{view.host}/{repo}:{version}"
    copy_image(
        ImageName.parse(f"oci:{layout}:{version}"),
        ImageName.parse(name),
        src_ctx=view.ctx(),
        options=CHUNKED,
    )
    raw = view.skopeo("inspect", "--raw", name).stdout.encode()
    return name, Digest.of(raw)


def pull(
    store: Store, name: str, ctx: SystemContext, delta_from: Digest | None = None
) -> tuple[ImportResult, TransferReport]:
    return import_remote(store, ImageName.parse(name), ctx, delta_from=delta_from)


@pytest.fixture
def images(registry: RegistryView, tmp_path: Path) -> dict[str, Any]:
    repo = registry.new_repo("delta")
    v1, d1 = push(registry, tmp_path, repo, "1")
    v2, d2 = push(registry, tmp_path, repo, "2")
    ctx = registry.ctx()
    # The commit every path must make, and what ranges alone move.
    plain = Store.create(tmp_path / "plain")
    pull(plain, v1, ctx)
    ranged, ranges = pull(plain, v2, ctx)
    return {"repo": repo, "v1": v1, "v2": v2, "d1": d1, "d2": d2, "ctx": ctx,
            "commit": ranged.commit_id, "ranges": ranges}  # fmt: skip


def _device(tmp_path: Path, images: dict[str, Any]) -> Store:
    store = Store.create(tmp_path / "device")
    pull(store, images["v1"], images["ctx"])
    return store


def test_patches_make_the_new_files_exactly() -> None:
    old = _bumped("x", "1")
    new = _bumped("x", "2")
    patch = make_patch(old, new)
    assert len(patch) < len(make_whole(new)) / 20
    assert apply_patch("zstd-patch", patch, old, len(new), "t") == new


def test_upgrade_with_a_delta_moves_less_and_makes_the_same_commit(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    ctx = images["ctx"]
    summary = create_delta(
        ImageName.parse(images["v1"]),
        ImageName.parse(images["v2"]),
        ImageName.parse(f"docker://{registry.host}/{images['repo']}"),
        ctx,
    )
    assert summary.patched == 3 and summary.payload < summary.frames / 10
    # Listed under the referrers tag of v2 (Distribution 2.8 has no referrers API).
    tag = f"docker://{registry.host}/{images['repo']}:{referrers_tag(images['d2'])}"
    listed = json.loads(registry.skopeo("inspect", "--raw", tag).stdout)
    assert [m["artifactType"] for m in listed["manifests"]] == [ARTIFACT_TYPE]

    store = _device(tmp_path, images)
    # Without the import record of v1 the running commit is found by its manifest digest.
    (store.path / "state" / "manifests" / images["d1"].hex).unlink()
    result, report = pull(store, images["v2"], ctx, delta_from=images["d1"])
    assert result.commit_id == images["commit"]
    assert report.delta == str(summary.manifest)
    totals = report.totals()
    assert totals[DELTA]["files"] == 3
    assert report.layers[0].path in (DELTA, RANGES)
    ranges = images["ranges"]
    assert report.bytes_moved < ranges.bytes_moved / 3
    assert sum(row["bytes"] for row in totals.values() if row is not totals["present"]) == (
        report.bytes_moved
    )
    assert json.loads(json.dumps(report.to_json()))["paths"][DELTA]["files"] == 3
    # Both changed layers' TOCs came as patches against v1's, kept at its import:
    # no layer fetched its own metadata.
    assert summary.tocs == 2
    assert [layer.metadata_bytes for layer in report.layers] == [0, 0]
    with DockerSource(ImageName.parse(images["v2"]), ctx) as source:
        found = find_delta(source.client, images["repo"], images["d1"], images["d2"])
    assert found is not None
    # The changed layer's TOC patch leaves out the digests of the files the delta makes.
    assert sorted(t.files for t in found.index.tocs.values()) == [False, True]
    assert store.read_file(result.commit_id, "usr/bin/big1") == _bumped("b1", "2")


def _publish(
    registry: RegistryView, images: dict[str, Any], old: Digest, files: list[DeltaFile],
    payload: bytes, tocs: tuple[TocPatch, ...] = (),
) -> None:  # fmt: skip
    name = ImageName.parse(f"docker://{registry.host}/{images['repo']}")
    with DockerSource(name, images["ctx"]) as source:
        raw, _ = source.get_manifest(images["d2"])
        subject = Descriptor(MediaType.OCI_MANIFEST, images["d2"], len(raw))
        version = 3 if tocs or any(f.path for f in files) else 2
        keyed = {f.path or f.sha256: f for f in files}
        index = DeltaIndex(old, images["d2"], keyed, version, {t.toc: t for t in tocs})
        push_delta(source.client, images["repo"], index, payload, subject)


def _entry(
    new: bytes, blob: bytes, base: bytes, method: str = PATCH, version: int = 2,
    base_path: str = "usr/bin/big0",
) -> DeltaFile:  # fmt: skip
    if version == 3:
        return DeltaFile(
            "", len(new), method, 0, len(blob), "", len(base), "usr/bin/big0", base_path
        )
    return DeltaFile(sha256_hex(new), len(new), method, 0, len(blob), sha256_hex(base), len(base))


def _falls_back(tmp_path: Path, images: dict[str, Any], why: str) -> None:
    store = _device(tmp_path, images)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    assert report.delta.startswith("refused") and why in report.delta, report.delta
    assert report.totals()[DELTA]["files"] == 0
    assert result.commit_id == images["commit"]
    assert store.read_file(result.commit_id, "usr/bin/big0") == _bumped("b0", "2")


@pytest.mark.parametrize(
    ("method", "made", "cut", "why", "version"),
    [
        # The entry is named for big0's v2 contents but makes other bytes of its size.
        (PATCH, "9", 0, "other contents than", 2),
        (BSDIFF, "9", 0, "other contents than", 2),
        (PATCH, "9", 0, "other contents than", 3),
        # The payload ends before the entry does.
        (PATCH, "2", 4, "past the end of the payload", 3),
        # A bsdiff patch whose header is damaged.
        (BSDIFF, "2", -4, "bsdiff patch does not apply", 2),
    ],
)
def test_a_bad_delta_is_refused_and_ranges_take_over(
    registry: RegistryView,
    tmp_path: Path,
    images: dict[str, Any],
    method: str,
    made: str,
    cut: int,
    why: str,
    version: int,
) -> None:
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    make = make_bsdiff if method == BSDIFF else make_patch
    blob = make(old, _bumped("b0", made))
    # cut < 0: the payload has the entry's length, its magic damaged.
    payload = b"BSDIFF39" + blob[8:] if cut < 0 else blob[: len(blob) - cut]
    entry = _entry(new, blob, old, method, version)
    _publish(registry, images, images["d1"], [entry], payload)
    _falls_back(tmp_path, images, why)


def test_a_base_path_the_running_commit_lacks_falls_back_to_ranges(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    blob = make_patch(old, new)
    entry = _entry(new, blob, old, PATCH, 3, base_path="usr/bin/gone")
    _publish(registry, images, images["d1"], [entry], blob)
    store = _device(tmp_path, images)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    # The delta is sound; the file it cannot make is looked up by content and fetched.
    assert not report.delta.startswith("refused"), report.delta
    assert report.totals()[DELTA]["files"] == 0
    assert "1 files of the delta have no base at their path" in report.layers[0].reason
    assert result.commit_id == images["commit"]
    assert store.read_file(result.commit_id, "usr/bin/big0") == new


def _first_tocs(images: dict[str, Any]) -> tuple[Any, Any]:
    """The chunked info of layer 0 of v1 and of v2."""
    with DockerSource(ImageName.parse(images["v2"]), images["ctx"]) as source:
        out = []
        for digest in (images["d1"], images["d2"]):
            raw, _ = source.get_manifest(digest)
            layer = json.loads(raw)["layers"][0]
            out.append(chunked_info(layer["annotations"], layer["size"], "t"))
    return out[0], out[1]


def test_a_toc_patch_that_makes_another_toc_is_refused_and_the_toc_fetched(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    store = _device(tmp_path, images)
    old_info, new_info = _first_tocs(images)
    # The device kept v1's TOC when it imported v1 whole.
    kept = find_toc(store, old_info.toc_digest)
    assert kept is not None
    # A patch that makes a TOC of the right size with other contents.
    patch = make_patch(toc_json(kept, "t"), b" " * new_info.toc.uncompressed)
    toc = TocPatch(
        new_info.toc_digest, old_info.toc_digest, new_info.toc.uncompressed, 0, len(patch)
    )
    _publish(registry, images, images["d1"], [], patch, (toc,))
    before = set(store.commit_ids())
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    assert "does not match the manifest's annotation: fetched whole" in report.layers[0].reason
    assert report.layers[0].metadata_bytes > 0
    assert result.commit_id == images["commit"]
    assert set(store.commit_ids()) - before == {result.commit_id}


def _new_toc(images: dict[str, Any]) -> bytes:
    """The compressed TOC of v2's layer 0, as its blob holds it."""
    with DockerSource(ImageName.parse(images["v2"]), images["ctx"]) as source:
        raw, _ = source.get_manifest(images["d2"])
        layer = json.loads(raw)["layers"][0]
        info = chunked_info(layer["annotations"], layer["size"], "t")
        blob = source.client.fetch_blob(
            images["repo"], Digest.parse(layer["digest"]), layer["size"]
        )
    return blob[info.toc.offset : info.toc.offset + info.toc.length]


def _publish_files_toc_patch(
    registry: RegistryView,
    images: dict[str, Any],
    store: Store,
    entry: DeltaFile,
    blob: bytes,
    new: bytes,
) -> None:
    """Publish a delta of *entry* (payload *blob*) whose first layer's TOC comes as
    a ``toc+files`` patch: against the kept old TOC followed by *new*'s digest."""
    old_info, new_info = _first_tocs(images)
    kept = find_toc(store, old_info.toc_digest)
    assert kept is not None
    text = toc_json(_new_toc(images), "t")
    assert f'"digest":"sha256:{sha256_hex(new)}"'.encode() in text
    patch = make_patch(toc_json(kept, "t") + digests_text([sha256_hex(new)]), text)
    toc = TocPatch(new_info.toc_digest, old_info.toc_digest, len(text), len(blob), len(patch), True)
    _publish(registry, images, images["d1"], [entry], blob + patch, (toc,))


@pytest.mark.parametrize("made", ["2", "9"])
def test_a_toc_patch_against_the_files_digests(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any], made: str
) -> None:
    # The TOC patch's dictionary ends with big0's v2 digest.  The delta's entry
    # makes big0 v2 ("2"), or other bytes ("9"): then the device's dictionary
    # holds another digest than the patch was built with.
    store = _device(tmp_path, images)
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    blob = make_patch(old, _bumped("b0", made))
    _publish_files_toc_patch(registry, images, store, _entry(new, blob, old, PATCH, 3), blob, new)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    assert result.commit_id == images["commit"]
    assert store.read_file(result.commit_id, "usr/bin/big0") == new
    if made == "2":
        assert report.layers[0].metadata_bytes == 0, report.layers[0].reason
        assert report.totals()[DELTA]["files"] == 1
    else:
        assert "does not match the manifest's annotation: fetched whole" in (
            report.layers[0].reason
        )
        assert report.layers[0].metadata_bytes > 0
        assert report.totals()[DELTA]["files"] == 0


def test_a_files_toc_patch_without_the_files_base_fetches_the_toc(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    store = _device(tmp_path, images)
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    blob = make_patch(old, new)
    entry = _entry(new, blob, old, PATCH, 3, base_path="usr/bin/gone")
    _publish_files_toc_patch(registry, images, store, entry, blob, new)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    # Nothing made first, so nothing to rebuild the TOC with: fetched, the file by range.
    assert "no usr/bin/gone in the running commit" in report.layers[0].reason
    assert report.layers[0].metadata_bytes > 0
    assert result.commit_id == images["commit"]


def test_a_bsdiff_entry_makes_the_file_on_the_device(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    blob = make_bsdiff(old, new)
    _publish(registry, images, images["d1"], [_entry(new, blob, old, BSDIFF)], blob)
    store = _device(tmp_path, images)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    assert not report.delta.startswith("refused"), report.delta
    assert report.totals()[DELTA]["files"] == 1
    assert result.commit_id == images["commit"]
    assert store.read_file(result.commit_id, "usr/bin/big0") == new


def test_a_delta_for_another_old_image_is_not_used(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    old, new = _bumped("b0", "1"), _bumped("b0", "2")
    blob = make_patch(old, new)
    other = Digest.of(b"another image")
    _publish(registry, images, other, [_entry(new, blob, old)], blob)
    store = _device(tmp_path, images)
    result, report = pull(store, images["v2"], images["ctx"], delta_from=images["d1"])
    assert report.delta == f"none published from {images['d1']}"
    assert result.commit_id == images["commit"]
    # It is there, for the other image.
    with DockerSource(ImageName.parse(images["v2"]), images["ctx"]) as source:
        assert find_delta(source.client, images["repo"], other, images["d2"]) is not None


def test_delta_create_refuses_a_new_image_without_a_toc(
    registry: RegistryView,
    tmp_path: Path,
    images: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gzip = f"docker://{registry.host}/{images['repo']}:2-gzip"
    copy_image(
        ImageName.parse(f"oci:{tmp_path / 'layout-2'}:2"), ImageName.parse(gzip),
        src_ctx=images["ctx"],
    )  # fmt: skip
    repo = f"docker://{registry.host}/{images['repo']}"
    code = main(["delta", "create", images["v1"], gzip, "--to", repo])
    assert code == DeltaError.exit_code == 26
    assert "no zstd:chunked layer" in capsys.readouterr().err


def test_a_delta_cut_in_transit_is_refused_and_ranges_take_over(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    upstream = fault_proxy.registry
    repo = upstream.new_repo("delta")
    v1, d1 = push(upstream, tmp_path, repo, "1")
    v2, d2 = push(upstream, tmp_path, repo, "2")
    ctx = upstream.ctx()
    where = ImageName.parse(f"docker://{upstream.host}/{repo}")
    create_delta(ImageName.parse(v1), ImageName.parse(v2), where, ctx)
    with DockerSource(ImageName.parse(v2), ctx) as source:
        found = find_delta(source.client, repo, d1, d2)
    assert found is not None
    whole_store = Store.create(tmp_path / "whole")
    whole, _ = pull(whole_store, v2, ctx)

    proxied = f"docker://{fault_proxy.host}/{repo}"
    store = Store.create(tmp_path / "device")
    pull(store, f"{proxied}:1", fault_proxy.ctx())
    before = set(store.commit_ids())
    # The payload's range answer ends early (with a Content-Length that says so).
    fault_proxy.proxy.truncate(f"blobs/{found.payload.digest}", 10, ranged=True)
    result, report = pull(store, f"{proxied}:2", fault_proxy.ctx(), delta_from=d1)
    assert report.delta.startswith("refused") and "not" in report.delta, report.delta
    assert report.totals()[DELTA]["files"] == 0
    # The same files as a whole pull (the commits differ by the image's name only).
    assert store.commit(result.commit_id).tree == whole_store.commit(whole.commit_id).tree
    assert set(store.commit_ids()) - before == {result.commit_id}


def test_a_toc_the_store_kept_is_not_fetched_again(
    registry: RegistryView, tmp_path: Path, images: dict[str, Any]
) -> None:
    # A store that took v2 whole (a first install) kept its TOCs as they passed.
    other = Store.create(tmp_path / "other")
    pull(other, images["v2"], images["ctx"])
    _, new_info = _first_tocs(images)
    toc = find_toc(other, new_info.toc_digest)
    assert toc is not None
    # The device holds v1 and, from elsewhere, the TOC of v2's first layer.
    store = _device(tmp_path, images)
    diff_id = other.commit(other.commit_ids()[0]).diff_ids[0]
    assert keep_toc(store, diff_id, new_info.toc_digest, toc)
    result, report = pull(store, images["v2"], images["ctx"])
    # Layer 0 read its TOC from the store; layer 1 (new files only) fetched its own.
    assert report.layers[0].path == RANGES and report.layers[0].metadata_bytes == 0
    assert report.layers[1].metadata_bytes > 0
    assert result.commit_id == images["commit"]
