"""File-level partial pulls of zstd:chunked layers from the real registry.

Images are written as ordinary gzip OCI layouts (helpers.treeimage) and pushed
with ``atoll image copy --dest-compress-format zstd:chunked``; a store that
holds v1 then imports v2 through :class:`~atoll.store.partial.PartialPuller`.
Faults come from helpers.fault_proxy in front of the same registry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from atoll.errors import AtollError, LayerError, NetworkError, RegistryError
from atoll.oci import chunked
from atoll.oci.chunked import (
    MANIFEST_CHECKSUM,
    MANIFEST_POSITION,
    TAR_FROM_TOC,
    SplitEntry,
    Toc,
    TocFile,
)
from atoll.oci.context import SystemContext
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression
from atoll.oci.transports import ImageName
from atoll.store import ImportResult, Store
from atoll.store.partial import PRESENT, RANGES, WHOLE, TransferReport, coalesce
from atoll.sysroot.fetch import import_remote
from helpers.registry import FaultProxyView, RegistryView
from helpers.treeimage import WHITEOUT, Node, build_tree_image, hardlink, symlink

pytestmark = pytest.mark.integration

CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)


def _noise(seed: str, size: int) -> bytes:
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def base_layer(version: str) -> dict[str, Any]:
    """A 'big' layer: 60 files of incompressible data; v2 changes three and adds one."""
    files: dict[str, Any] = {
        f"usr/lib/pkg/file{i:02d}.bin": _noise(f"f{i}", 20_000) for i in range(60)
    }
    files["usr/bin/tool"] = Node(content=b"#!/bin/sh\necho v1\n", mode=0o755)
    files["usr/bin/tool-link"] = symlink("tool")
    files["usr/bin/tool-hard"] = hardlink("usr/bin/tool")
    files["etc/os-release"] = f"VERSION={version}\n"
    files["etc/empty"] = b""
    files["usr/share/dup-a"] = _noise("dup", 5000)
    files["usr/share/dup-b"] = _noise("dup", 5000)
    if version == "2":
        for i in (3, 30, 31):
            files[f"usr/lib/pkg/file{i:02d}.bin"] = _noise(f"f{i}-v2", 20_000)
        files["usr/lib/pkg/new.bin"] = _noise("new", 30_000)
        files["usr/bin/tool"] = Node(content=b"#!/bin/sh\necho v2\n", mode=0o755)
    return files


def top_layer(version: str) -> dict[str, Any]:
    top: dict[str, Any] = {"etc/motd": f"hello {version}\n"}
    if version == "2":
        top["usr/lib/pkg/file59.bin"] = WHITEOUT
    return top


def push(view: RegistryView, tmp: Path, repo: str, version: str) -> str:
    layout = tmp / f"layout-{version}"
    build_tree_image(layout, [base_layer(version), top_layer(version)], ref=version)
    upstream = view.registry if isinstance(view, FaultProxyView) else view
    dst = f"docker://{upstream.host}/{repo}:{version}"
    ctx = upstream.ctx()
    copy_image(
        ImageName.parse(f"oci:{layout}:{version}"),
        ImageName.parse(dst),
        src_ctx=ctx,
        options=CHUNKED,
    )
    return f"docker://{view.host}/{repo}:{version}"


def pull(
    store: Store, name: str, ctx: SystemContext, *, partial: bool = True
) -> tuple[ImportResult, TransferReport]:
    return import_remote(store, ImageName.parse(name), ctx, partial=partial)


def test_partial_pull_fetches_only_missing_files_and_makes_the_same_commit(
    registry: RegistryView, tmp_path: Path
) -> None:
    repo = registry.new_repo("chunked")
    v1 = push(registry, tmp_path, repo, "1")
    v2 = push(registry, tmp_path, repo, "2")
    ctx = registry.ctx()
    raw = json.loads(registry.skopeo("inspect", "--raw", v1).stdout)
    assert all(MANIFEST_CHECKSUM in layer["annotations"] for layer in raw["layers"])
    # tarfile wrote these layers: the TOC alone rebuilds them.
    assert all(TAR_FROM_TOC in layer["annotations"] for layer in raw["layers"])

    store = Store.create(tmp_path / "store")
    first, report1 = pull(store, v1, ctx)
    assert report1 is not None
    # Its contents are indexed at once, so the next update's pull does not begin
    # by hashing the store (only a chunked image's pull leaves this behind).
    assert (store.path / "state" / "content" / first.commit_id).is_file()
    # An empty store: every layer whole, without asking for a TOC first.
    assert {layer.path for layer in report1.layers} == {WHOLE}
    assert {layer.reason for layer in report1.layers} == {"the store has no files yet"}
    assert report1.bytes_moved == sum(layer.size for layer in report1.layers)

    second, report2 = pull(store, v2, ctx)
    assert report2 is not None
    base, top = report2.layers
    assert base.path == RANGES and top.path in (RANGES, WHOLE)
    # Three changed, one new, the changed tool and os-release.
    assert base.files_fetched == 6
    assert base.bytes < base.size / 3
    # The TOC in one request (no tar-split), the files coalesced into few more.
    assert 2 <= base.requests <= 6
    assert base.metadata_bytes == _toc_length(registry, v2, 0)
    totals = report2.totals()
    assert totals[RANGES]["bytes"] + totals[WHOLE]["bytes"] == report2.bytes_moved

    # A whole-layer import of v2 into an empty store: the very same commit.
    other = Store.create(tmp_path / "other")
    whole, _ = pull(other, v2, ctx, partial=False)
    assert whole.commit_id == second.commit_id
    assert store.commit(whole.commit_id).tree == other.commit(whole.commit_id).tree
    assert store.read_file(second.commit_id, "usr/bin/tool") == b"#!/bin/sh\necho v2\n"
    assert store.lookup(second.commit_id, "usr/lib/pkg/file59.bin") is None

    # v2 again: every layer is present, nothing moves.
    _, report3 = pull(store, v2, ctx)
    assert report3 is not None and {layer.path for layer in report3.layers} == {PRESENT}


def _toc_length(view: RegistryView, name: str, layer: int) -> int:
    raw = json.loads(view.skopeo("inspect", "--raw", name).stdout)
    return int(raw["layers"][layer]["annotations"][MANIFEST_POSITION].split(":")[1])


def test_a_tar_rebuilt_from_the_toc_that_does_not_match_fetches_the_tar_split(
    registry: RegistryView, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a device whose Python's tarfile writes other headers than the builder's.
    def other_tarfile(toc: Toc) -> list[SplitEntry] | None:
        entries = chunked.split_from_toc(toc)
        assert entries is not None and entries[0].raw is not None
        return [SplitEntry(entries[0].raw[:-1] + b"x"), *entries[1:]]

    monkeypatch.setattr("atoll.store.partial.split_from_toc", other_tarfile)
    repo = registry.new_repo("chunked")
    v1, v2 = (push(registry, tmp_path, repo, v) for v in ("1", "2"))
    store = Store.create(tmp_path / "store")
    pull(store, v1, registry.ctx())
    second, report = pull(store, v2, registry.ctx())
    base = report.layers[0]
    assert base.path == RANGES and base.files_fetched == 6
    raw = json.loads(registry.skopeo("inspect", "--raw", v2).stdout)
    split = int(raw["layers"][0]["annotations"][chunked.TARSPLIT_POSITION].split(":")[1])
    assert base.metadata_bytes == _toc_length(registry, v2, 0) + split
    other = Store.create(tmp_path / "other")
    whole, _ = pull(other, v2, registry.ctx(), partial=False)
    assert second.commit_id == whole.commit_id


def _stores_with_v1(view: FaultProxyView, tmp_path: Path) -> tuple[Store, str, SystemContext]:
    repo = view.registry.new_repo("faults")
    v1 = push(view, tmp_path, repo, "1")
    v2 = push(view, tmp_path, repo, "2")
    store = Store.create(tmp_path / "store")
    pull(store, v1, view.ctx())
    view.proxy.reset()
    return store, v2, view.ctx()


def _no_new_commit(store: Store, before: list[str]) -> None:
    assert store.commit_ids() == before
    tmp = store.path / "tmp"
    assert not any(tmp.iterdir()) if tmp.exists() else True


BLOB = r"/v2/.*/blobs/sha256:"


def test_registry_ignoring_range_falls_back_to_whole_layers(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    store, v2, ctx = _stores_with_v1(fault_proxy, tmp_path)
    fault_proxy.proxy.ignore_range(BLOB)
    result, report = pull(store, v2, ctx)
    assert report is not None
    assert [layer.path for layer in report.layers] == [WHOLE, WHOLE]
    assert "ignores Range" in report.layers[0].reason
    # Only one range was asked before the fallback; the second layer was not tried.
    ranged = [r for r in fault_proxy.proxy.requests if "range" in r.headers]
    assert len(ranged) == 1
    other = Store.create(tmp_path / "other")
    assert pull(other, v2, ctx, partial=False)[0].commit_id == result.commit_id


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        # The TOC+tar-split range, cut short: the wrong length.
        (lambda p: p.truncate(BLOB, 10, ranged=True), RegistryError, "sent 10 bytes"),
        # Its first byte flipped: the TOC no longer matches the annotation.
        (
            lambda p: p.corrupt(BLOB, 0, times=1, ranged=True),
            LayerError,
            "does not match the manifest",
        ),
    ],
    ids=["short-range", "toc-not-annotation"],
)
def test_bad_range_answers_are_refused(
    fault_proxy: FaultProxyView, tmp_path: Path, fault: Any, error: type[AtollError], message: str
) -> None:
    store, v2, ctx = _stores_with_v1(fault_proxy, tmp_path)
    before = store.commit_ids()
    fault(fault_proxy.proxy)
    with pytest.raises(error, match=message):
        pull(store, v2, ctx)
    _no_new_commit(store, before)


def test_file_frames_that_disagree_with_the_toc_are_refused(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    store, v2, ctx = _stores_with_v1(fault_proxy, tmp_path)
    before = store.commit_ids()
    # The first range of the base layer is its metadata: let it pass, corrupt the
    # first byte of the next, where a file's frame starts (ranges run in parallel,
    # so which file it is varies; a byte in a gap between files would go unused).
    fault_proxy.proxy.corrupt(BLOB, 0, times=1, ranged=True, skip=1)
    with pytest.raises(LayerError, match=r"frames of .* (are not valid zstd|do not hold)"):
        pull(store, v2, ctx)
    _no_new_commit(store, before)


def test_dropped_connection_mid_range_is_resumed(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    store, v2, ctx = _stores_with_v1(fault_proxy, tmp_path)
    fault_proxy.proxy.drop_after(BLOB, 100, times=2, ranged=True)
    result, report = pull(store, v2, ctx)
    assert report is not None and report.layers[0].path == RANGES
    resumed = [r.headers["range"] for r in fault_proxy.proxy.requests if "range" in r.headers]
    starts = [int(h.split("=")[1].split("-")[0]) for h in resumed]
    assert starts[1] == starts[0] + 100  # asked again for the rest only
    other = Store.create(tmp_path / "other")
    assert pull(other, v2, ctx, partial=False)[0].commit_id == result.commit_id


def test_dropped_connections_past_the_retries_fail_cleanly(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    store, v2, ctx = _stores_with_v1(fault_proxy, tmp_path)
    before = store.commit_ids()
    fault_proxy.proxy.drop_after(BLOB, 0, times=None, ranged=True)
    with pytest.raises(NetworkError):
        pull(store, v2, ctx)
    _no_new_commit(store, before)


def test_local_sources_and_gzip_layers_go_whole(registry: RegistryView, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    build_tree_image(layout, [base_layer("1")], ref="1")
    store = Store.create(tmp_path / "store")
    _, report = pull(store, f"oci:{layout}:1", SystemContext())
    assert report is not None and report.layers[0].reason == "not a zstd layer"
    assert not (store.path / "state" / "content").exists()  # gzip: no partial pull to come
    chunked = tmp_path / "chunked"
    copy_image(
        ImageName.parse(f"oci:{layout}:1"), ImageName.parse(f"oci:{chunked}:1"), options=CHUNKED
    )
    _, report = pull(Store.create(tmp_path / "s2"), f"oci:{chunked}:1", SystemContext())
    assert report is not None and report.layers[0].reason == "a local source"


def _f(offset: int, end: int) -> TocFile:
    return TocFile(f"f{offset}", end - offset, "0" * 64, offset, end)


def test_coalesce_merges_near_ranges_and_caps_requests() -> None:
    files = [_f(0, 10), _f(20, 30), _f(100_000, 100_010), _f(200_000, 200_010)]
    spans = coalesce(files, gap=100, cap=10)
    assert [(s.start, s.end) for s in spans] == [(0, 30), (100_000, 100_010), (200_000, 200_010)]
    spans = coalesce(files, gap=100, cap=2)
    assert len(spans) == 2
    assert sorted(f.name for s in spans for f in s.files) == sorted(f.name for f in files)
    many = [_f(i * 1000, i * 1000 + 10) for i in range(500)]
    assert len(coalesce(many, gap=10, cap=64)) <= 64


def test_content_index_finds_files_by_content(registry: RegistryView, tmp_path: Path) -> None:
    from atoll.store.contentindex import ContentIndex

    layout = tmp_path / "layout"
    build_tree_image(layout, [base_layer("1")], ref="1")
    store = Store.create(tmp_path / "store")
    pull(store, f"oci:{layout}:1", SystemContext(), partial=False)
    index = ContentIndex.load(store)
    data = _noise("f7", 20_000)
    path = index.path(hashlib.sha256(data).hexdigest())
    assert path is not None and path.read_bytes() == data
    # Written once, then read back (no hashing the second time).
    (idx,) = (store.path / "state" / "content").iterdir()
    assert ContentIndex.load(store).by_sha == index.by_sha
    assert idx.stat().st_size > 0
    # A commit whose trees are gone (fsck --repair removed them) lends nothing, and
    # fails nothing.
    idx.unlink()
    commit = store.commit(store.commit_ids()[0])
    store.object_path(commit.tree, "tree").unlink()
    assert ContentIndex.load(Store.open(store.path)).by_sha == {}


def _forge_toc(layout: Path, ref: str, edit: Any) -> None:
    """Append a TOC changed by *edit* to the first layer of *ref* in *layout* and
    point the annotations at it, as a publisher who signs a bad image would."""
    import zstandard

    from atoll.oci.chunked import FRAME_HEADER, SKIPPABLE_MAGIC

    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    blob = (blobs / layer["digest"].split(":")[1]).read_bytes()
    offset, length, *_ = map(int, layer["annotations"][MANIFEST_POSITION].split(":"))
    toc = json.loads(zstandard.ZstdDecompressor().decompress(blob[offset : offset + length]))
    edit(toc["entries"], len(blob))
    raw = json.dumps(toc).encode()
    packed = zstandard.ZstdCompressor().compress(raw)
    new_offset = len(blob) + FRAME_HEADER
    blob += SKIPPABLE_MAGIC + len(packed).to_bytes(4, "little") + packed
    digest = hashlib.sha256(blob).hexdigest()
    (blobs / digest).write_bytes(blob)
    layer.update(digest=f"sha256:{digest}", size=len(blob))
    layer["annotations"][MANIFEST_POSITION] = f"{new_offset}:{len(packed)}:{len(raw)}:1"
    layer["annotations"][MANIFEST_CHECKSUM] = "sha256:" + hashlib.sha256(packed).hexdigest()
    data = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(data).hexdigest()
    (blobs / mdigest).write_bytes(data)
    entry.update(digest=f"sha256:{mdigest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


def test_toc_pointing_outside_the_layer_is_refused(registry: RegistryView, tmp_path: Path) -> None:
    repo = registry.new_repo("forged")
    v1 = push(registry, tmp_path, repo, "1")
    v2 = push(registry, tmp_path, repo, "2")
    ctx = registry.ctx()
    layout = tmp_path / "forged"
    copy_image(ImageName.parse(v2), ImageName.parse(f"oci:{layout}:2"), src_ctx=ctx)

    def outside(entries: list[dict[str, Any]], size: int) -> None:
        for e in entries:
            if e.get("name", "").endswith("file03.bin"):
                e["offset"], e["endOffset"] = size - 10, size + 5000

    _forge_toc(layout, "2", outside)
    forged = f"docker://{registry.host}/{repo}:forged"
    copy_image(ImageName.parse(f"oci:{layout}:2"), ImageName.parse(forged), src_ctx=ctx)
    store = Store.create(tmp_path / "store")
    pull(store, v1, ctx)
    before = store.commit_ids()
    with pytest.raises(LayerError, match="outside the layer's data"):
        pull(store, forged, ctx)
    _no_new_commit(store, before)
