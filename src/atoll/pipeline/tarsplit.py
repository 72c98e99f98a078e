"""Reading image layers without unpacking them: bound images, final file trees, tar-splits.

What the bundles (:mod:`atoll.pipeline.bundle`) need from an OS image's layers:

* :func:`bound_images` — the images bootc would bind (``/usr/lib/bootc/bound-images.d``);
* :func:`final_files` — path → sha256 of each regular file once every layer and
  whiteout is applied (OCI image-spec layer.md);
* :func:`tar_split` / :func:`rebuild` — a layer's tar with file contents replaced
  by references, and the byte-exact tar rebuilt from those references and the
  files of an object-store commit.  A tar-split document (version
  :data:`SPLIT_VERSION`)::

    {"version": 1, "diffId": "sha256:…", "size": TAR BYTES,
     "segments": [["raw", BASE64], ["file", PATH, SIZE, SHA256HEX], …]}

  ``raw`` segments are the tar's own bytes (headers, extended headers,
  padding, the end blocks); ``file`` segments the contents of regular files,
  in tar order.  Concatenated, they are the layer's uncompressed tar.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from atoll.errors import AtollError, BundleError
from atoll.oci.compression import decompress
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, ImageManifest, layer_compression
from atoll.oci.reference import ImageReference

SPLIT_VERSION = 1
BOUND_IMAGES_DIR = "usr/lib/bootc/bound-images.d"
_MAX_UNIT = 64 << 10
_CHUNK = 1 << 20


def blob_path(layout: Path, digest: Digest | str) -> Path:
    """Where an OCI layout keeps a blob."""
    d = digest if isinstance(digest, Digest) else Digest.parse(digest)
    return layout / "blobs" / d.algorithm / d.hex


LayerReader = Callable[[], Iterator[tuple[Descriptor, IO[bytes]]]]


def layer_reader(layout: Path, manifest: ImageManifest) -> LayerReader:
    """The uncompressed layers of an image in *layout*, in order, as tar streams."""

    def layers() -> Iterator[tuple[Descriptor, IO[bytes]]]:
        for desc in manifest.layers:
            with uncompressed(blob_chunks(blob_path(layout, desc.digest)), desc) as fh:
                yield desc, fh

    return layers


def blob_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


@contextlib.contextmanager
def uncompressed(chunks: Iterable[bytes], desc: Descriptor) -> Iterator[IO[bytes]]:
    """The layer's tar in an unnamed temporary file (tarfile needs to seek)."""
    with tempfile.TemporaryFile() as tmp:
        for piece in decompress(chunks, layer_compression(desc.media_type)):
            tmp.write(piece)
        tmp.seek(0)
        yield tmp


# --- bound images -----------------------------------------------------------------------


def bound_images(layers: LayerReader) -> list[tuple[str, ImageReference]]:
    """The images an OS image binds, as bootc reads them: each entry of
    ``/usr/lib/bootc/bound-images.d`` is a symlink to a ``.image`` or ``.container``
    file whose ``Image=`` names the image (or another ``.image`` file)."""
    links: dict[str, str | None] = {}
    units: dict[str, bytes | None] = {}
    for _, fh in layers():
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for info in tar:
                path = _norm(info.name)
                name = PurePosixPath(path).name
                parent = str(PurePosixPath(path).parent)
                if name.startswith(".wh."):
                    gone = f"{parent}/{name[4:]}"
                    for table in (links, units):
                        for key in [k for k in table if k == gone or k.startswith(gone + "/")]:
                            table[key] = None
                    continue
                if parent == BOUND_IMAGES_DIR:
                    links[path] = info.linkname if info.issym() else None
                elif path.endswith((".image", ".container")) and info.isreg():
                    data = tar.extractfile(info)
                    units[path] = data.read(_MAX_UNIT) if data else None
    found: list[tuple[str, ImageReference]] = []
    for link, target in sorted(links.items()):
        if target is None:
            continue
        unit = (
            _norm(str(PurePosixPath(link).parent / target))
            if not target.startswith("/")
            else _norm(target)
        )
        found.append((unit, _unit_image(unit, units, link)))
    return found


def _unit_image(
    unit: str, units: dict[str, bytes | None], link: str, depth: int = 0
) -> ImageReference:
    content = units.get(unit)
    if content is None or depth > 4:
        raise BundleError(f"{link}: the bound image's unit /{unit} is not in the image")
    value = None
    section = ""
    for raw_line in content.decode("utf-8", "replace").splitlines():
        line = raw_line.strip()
        if line.startswith("["):
            section = line
        elif section in ("[Image]", "[Container]") and line.startswith("Image="):
            value = line[len("Image=") :].strip()
    if not value:
        raise BundleError(f"/{unit}: no Image= in its [Image] or [Container] section")
    if value.endswith(".image"):
        sibling = str(PurePosixPath(unit).parent / value)
        return _unit_image(sibling, units, link, depth + 1)
    try:
        return ImageReference.parse(value)
    except AtollError as exc:
        raise BundleError(f"/{unit}: Image={value}: {exc.message}") from None


def _norm(name: str) -> str:
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


# --- deltas: tar-split ------------------------------------------------------------------


def tar_split(fh: IO[bytes]) -> tuple[list[list[Any]], int]:
    """The segments of the tar in *fh* (see the module) and its size."""
    segments: list[list[Any]] = []
    pos = 0

    def raw(upto: int) -> None:
        nonlocal pos
        if upto > pos:
            fh.seek(pos)
            segments.append(["raw", base64.b64encode(fh.read(upto - pos)).decode()])
            pos = upto

    with tarfile.open(fileobj=fh, mode="r:") as tar:
        members = list(tar)
    for info in members:
        if info.isreg() and info.size > 0 and info.sparse is None:
            raw(info.offset_data)
            fh.seek(info.offset_data)
            digest = hashlib.sha256()
            left = info.size
            while left:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    raise BundleError(f"layer tar ends inside {info.name!r}")
                digest.update(chunk)
                left -= len(chunk)
            segments.append(["file", _norm(info.name), info.size, digest.hexdigest()])
            pos = info.offset_data + info.size
    end = fh.seek(0, 2)
    raw(end)
    return segments, end


def final_files(layers: LayerReader) -> dict[str, str | None]:
    """Path → sha256 of every regular file in the image's final tree (None for
    directories, symlinks and other kinds), with OCI whiteouts applied."""
    files: dict[str, str | None] = {}

    def drop_under(prefix: str, keep_self: bool) -> None:
        for key in [
            k for k in files if k.startswith(prefix + "/") or (not keep_self and k == prefix)
        ]:
            del files[key]

    for _, fh in layers():
        own: dict[str, str | None] = {}
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for info in tar:
                path = _norm(info.name)
                name = PurePosixPath(path).name
                parent = str(PurePosixPath(path).parent) if "/" in path else ""
                if name == ".wh..wh..opq":
                    drop_under(parent, keep_self=True)
                elif name.startswith(".wh."):
                    drop_under(f"{parent}/{name[4:]}" if parent else name[4:], keep_self=False)
                elif info.isreg():
                    data = tar.extractfile(info)
                    digest = hashlib.sha256()
                    while data is not None and (chunk := data.read(_CHUNK)):
                        digest.update(chunk)
                    own[path] = digest.hexdigest()
                elif info.islnk():
                    target = _norm(info.linkname)
                    own[path] = own.get(target, files.get(target))
                else:
                    own[path] = "dir" if info.isdir() else None
        for path, value in own.items():
            if value != "dir" and files.get(path) == "dir":
                drop_under(path, keep_self=True)
            files[path] = value
    return {k: (None if v == "dir" else v) for k, v in files.items()}


def rebuild(split: dict[str, Any], store: Any, commit: str, where: Path) -> Iterator[bytes]:
    from atoll.store.format import EntryKind

    for segment in split["segments"]:
        if segment[0] == "raw":
            yield base64.b64decode(segment[1])
            continue
        _, path, size, sha = segment
        entry = store.lookup(commit, path)
        if entry is None or entry.kind is not EntryKind.FILE or entry.size != size:
            raise BundleError(f"{where}: /{path} is not in the device's image as the delta expects")
        hasher = hashlib.sha256()
        with store.object_path(entry.object_id).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != sha:
            raise BundleError(f"{where}: /{path} in the device's image differs from the delta's")
