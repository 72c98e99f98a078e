"""A deliberately naive copy loop for transport tests: NOT atoll.oci.imagecopy.

Transport tests drive sources and destinations with this loop so they do not
depend on the real copy engine (tested on its own).  It copies every instance
of an index, puts blobs from several threads at once (destinations must be
thread-safe) and commits; it converts nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, ImageIndex, ImageManifest, parse_manifest
from atoll.oci.transports.base import ImageDestination, ImageSource


@dataclass(frozen=True)
class NaiveCopyResult:
    manifest: bytes
    media_type: str
    digest: Digest


def naive_copy_blobs(
    src: ImageSource, dest: ImageDestination, blobs: list[Descriptor], workers: int = 4
) -> None:
    def one(desc: Descriptor) -> None:
        if dest.has_blob(desc):
            return
        with src.open_blob(desc) as chunks:
            dest.put_blob(desc, chunks)

    unique = list({d.digest: d for d in blobs}.values())
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, d) for d in unique]:
            future.result()


def naive_copy(src: ImageSource, dest: ImageDestination, *, commit: bool = True) -> NaiveCopyResult:
    """Copy the image *src* names to *dest*, bytes unchanged; commit unless told not to."""
    raw, declared = src.get_manifest()
    top = parse_manifest(raw, declared, where=src.description)
    if isinstance(top, ImageIndex):
        for child_desc in top.manifests:
            child_raw, child_declared = src.get_manifest(child_desc.digest)
            child = parse_manifest(
                child_raw, child_declared or child_desc.media_type, where=src.description
            )
            assert isinstance(child, ImageManifest), "nested indexes are not used in tests"
            naive_copy_blobs(src, dest, list(child.blobs()))
            dest.put_manifest(child_raw, child.media_type, top_level=False)
    else:
        naive_copy_blobs(src, dest, list(top.blobs()))
    dest.put_manifest(raw, top.media_type, top_level=True)
    if commit:
        dest.commit()
    return NaiveCopyResult(raw, top.media_type, Digest.of(raw))
