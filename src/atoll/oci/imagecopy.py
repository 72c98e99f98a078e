"""The copy engine: move one image (or a whole index) between any two transports.

Order of work, which is what makes a failed copy leave nothing visible:

1. read the top-level manifest; pick the platform's image from an index unless
   ``all_images`` is set;
2. copy every blob (configs and layers), several at once, each verified by the
   destination before it becomes visible; blobs the destination has are skipped,
   blobs on the same registry are mounted;
3. write instance manifests, then the top-level manifest;
4. commit: only now does a tag, ``index.json`` entry or archive name point at it.

Without a format change the manifest bytes are written as they were read, so
the digest is preserved.  ``dest_compression`` re-compresses layers and so
rewrites manifests (and, for zstd, turns Docker manifests into OCI ones).
"""

# No "from __future__ import annotations" here: NamedTuple types each field from
# its annotation, and compiles a string one when the class is made (about 20 µs a
# field, at every start of an image copy; tests/cli/test_imports.py).
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from atoll.errors import (
    AtollError,
    ConflictError,
    DigestMismatchError,
    ManifestError,
    NetworkError,
    TLSError,
    from_oserror,
)
from atoll.fsutil import write_atomic
from atoll.logs import Logger
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import (
    Compression,
    Descriptor,
    ImageIndex,
    ImageManifest,
    MediaType,
    layer_compression,
    parse_manifest,
)
from atoll.oci.transports import ImageName, Transport, open_destination, open_source
from atoll.oci.transports.base import CHUNK_SIZE, ImageDestination, ImageSource
from atoll.progress import NullProgress, ProgressSink

if TYPE_CHECKING:
    # Imported where a copy makes or reads zstd:chunked layers: a plain copy
    # does not pay for them.
    from atoll.oci.chunked import ChunkedLayer
    from atoll.oci.reference import ImageReference

log = Logger(__name__)


class CopyOptions(NamedTuple):
    """How a copy treats indexes, digests and compression."""

    all_images: bool = False
    preserve_digests: bool = False
    dest_compression: Compression | None = None
    #: With ZSTD: write zstd:chunked layers (see :mod:`atoll.oci.chunked`).
    zstd_chunked: bool = False


class CopyResult(NamedTuple):
    """What a copy did."""

    source: str
    destination: str
    digest: Digest
    media_type: str
    images: int = 0
    blobs: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    converted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": str(self.digest),
            "mediaType": self.media_type,
            "images": self.images,
            "blobs": self.blobs,
            "blobsCopied": self.blobs_copied,
            "blobsSkipped": self.blobs_skipped,
            "blobsMounted": self.blobs_mounted,
            "bytesCopied": self.bytes_copied,
            "converted": self.converted,
        }


def copy_image(
    src: ImageName,
    dst: ImageName,
    *,
    src_ctx: SystemContext | None = None,
    dst_ctx: SystemContext | None = None,
    options: CopyOptions | None = None,
    progress: ProgressSink | None = None,
    digestfile: Path | None = None,
) -> CopyResult:
    src_ctx = src_ctx or SystemContext()
    dst_ctx = dst_ctx or src_ctx
    options = options or CopyOptions()
    progress = progress or NullProgress()
    source, destination = _open_pair(src, dst, src_ctx, dst_ctx)
    with source, destination:
        if options.preserve_digests and not destination.preserves_digests:
            raise ConflictError(
                f"{destination.description} re-encodes images, so digests cannot be preserved",
                hint="drop --preserve-digests, or copy to docker://, oci: or dir:",
            )
        copier = _Copier(source, destination, src_ctx, dst_ctx, options, progress)
        ok = False
        try:
            result = copier.run(str(src), str(dst))
            destination.commit()
            ok = True
        finally:
            progress.end(ok)
    if digestfile is not None:
        write_atomic(digestfile, str(result.digest).encode())
    return result


def _open_pair(
    src: ImageName, dst: ImageName, src_ctx: SystemContext, dst_ctx: SystemContext
) -> tuple[ImageSource, ImageDestination]:
    """Open both ends; two names on one registry share one client (one ping, one
    token cache, one connection pool), unless registries.conf sends the source's
    reads elsewhere (mirrors, a ``location``)."""
    if (
        src.transport is Transport.DOCKER
        and dst.transport is Transport.DOCKER
        and src.reference is not None
        and dst.reference is not None
        and src.reference.registry == dst.reference.registry
        and src_ctx == dst_ctx
        and _reads_go_as_written(src.reference, src_ctx)
    ):
        from atoll.oci.client import RegistryClient
        from atoll.oci.transports.docker import DockerDestination, DockerSource

        client = RegistryClient(src.reference.registry, src_ctx)
        docker_source = DockerSource(src, src_ctx, client=client)
        try:
            return docker_source, DockerDestination(dst, dst_ctx, client=client, owns_client=True)
        except BaseException:
            client.close()
            raise
    source = open_source(src, src_ctx)
    try:
        return source, open_destination(dst, dst_ctx)
    except BaseException:
        source.close()
        raise


def _reads_go_as_written(reference: "ImageReference", ctx: SystemContext) -> bool:
    from atoll.oci.pullsource import is_direct

    return is_direct(reference, ctx)


class _Copier:
    def __init__(
        self,
        source: ImageSource,
        destination: ImageDestination,
        src_ctx: SystemContext,
        dst_ctx: SystemContext,
        options: CopyOptions,
        progress: ProgressSink,
    ) -> None:
        self.source = source
        self.destination = destination
        self.src_ctx = src_ctx
        self.options = options
        self.progress = progress
        self.pool = _Workers(max(1, min(src_ctx.parallel, dst_ctx.parallel)))
        self._blob_futures: dict[Digest, _Job] = {}
        self._lock = threading.Lock()
        self.stats = _Stats()

    def run(self, src_text: str, dst_text: str) -> CopyResult:
        try:
            raw, declared = self.source.get_manifest(None)
            top = parse_manifest(raw, declared, where=self.source.description)
            if isinstance(top, ImageIndex):
                if self.options.all_images:
                    raw, media_type = self._copy_index(top)
                else:
                    desc = top.select(self.src_ctx.platform)
                    child = self._fetch_instance(desc)
                    raw, media_type = self._copy_image(child, top_level=True)
            else:
                raw, media_type = self._copy_image(top, top_level=True)
        finally:
            self.pool.shutdown()
        return CopyResult(
            source=src_text,
            destination=dst_text,
            digest=Digest.of(raw),
            media_type=media_type,
            images=self.stats.images,
            blobs=len(self._blob_futures),
            blobs_copied=self.stats.copied,
            blobs_skipped=self.stats.skipped,
            blobs_mounted=self.stats.mounted,
            bytes_copied=self.stats.bytes,
            converted=self.stats.converted,
        )

    def _fetch_instance(self, desc: Descriptor) -> ImageManifest:
        raw, declared = self.source.get_manifest(desc.digest)
        if Digest.of(raw, desc.digest.algorithm) != desc.digest:
            raise DigestMismatchError(
                f"{self.source.description}: manifest {desc.digest} does not match its digest"
            )
        where = f"{self.source.description}@{desc.digest}"
        manifest = parse_manifest(raw, declared or desc.media_type, where=where)
        if not isinstance(manifest, ImageManifest):
            raise ManifestError(f"{where}: nested indexes are not supported")
        return manifest

    def _copy_index(self, index: ImageIndex) -> tuple[bytes, str]:
        children = [self._fetch_instance(d) for d in index.manifests]
        self._begin(sum(len(_unique_blobs(c)) for c in children))
        new_descs: list[Descriptor] = []
        for desc, child in zip(index.manifests, children, strict=True):
            raw, media_type = self._copy_image(child, top_level=False, begun=True)
            new_descs.append(
                desc._replace(digest=Digest.of(raw), size=len(raw), media_type=media_type)
            )
        if all(n == o for n, o in zip(new_descs, index.manifests, strict=True)):
            raw, media_type = index.raw, index.media_type
        else:
            raw, media_type = _rewrite_index(index, new_descs)
        self.destination.put_manifest(raw, media_type, top_level=True)
        return raw, media_type

    def _begin(self, steps: int) -> None:
        self.progress.begin(
            "copy",
            f"Copying {self.source.description} to {self.destination.description}",
            self.destination.description,
            steps,
        )

    def _copy_image(
        self, manifest: ImageManifest, *, top_level: bool, begun: bool = False
    ) -> tuple[bytes, str]:
        self.stats.images += 1
        convert = self._conversion_for(manifest)
        if not begun:
            self._begin(len(_unique_blobs(manifest)))
        futures = [self._schedule(d, "config", None) for d in [manifest.config]]
        futures += [self._schedule(d, "layer", convert) for d in manifest.layers]
        new_blobs = [f.result() for f in futures]
        if convert is None:
            raw, media_type = manifest.raw, manifest.media_type
        else:
            raw, media_type = _rewrite_manifest(manifest, new_blobs, convert)
            self.stats.converted = True
        self.destination.put_manifest(raw, media_type, top_level=top_level)
        return raw, media_type

    def _conversion_for(self, manifest: ImageManifest) -> Compression | None:
        want = self.options.dest_compression
        if want is None:
            return None
        needs = any(self._needs_conversion(layer, want) for layer in manifest.layers)
        if not needs and not (
            want is Compression.ZSTD and manifest.media_type == MediaType.DOCKER_MANIFEST
        ):
            return None
        if self.options.preserve_digests:
            raise ConflictError(
                f"cannot compress layers as {want} and preserve digests "
                f"({self.source.description} has layers in another format)",
                hint="drop --preserve-digests or --dest-compress-format",
            )
        return want

    def _needs_conversion(self, desc: Descriptor, want: Compression) -> bool:
        if desc.media_type == MediaType.DOCKER_FOREIGN_LAYER:
            return False
        if layer_compression(desc.media_type) != want:
            return True
        if not self.options.zstd_chunked:
            return False
        from atoll.oci.chunked import chunked_info

        return chunked_info(desc.annotations, desc.size, self.source.description) is None

    def _schedule(self, desc: Descriptor, kind: str, convert: Compression | None) -> "_Job":
        with self._lock:
            future = self._blob_futures.get(desc.digest)
            if future is None:
                self.progress.subtask(
                    str(desc.digest), kind, f"{kind} {desc.digest.short}", desc.size
                )
                future = self.pool.submit(lambda: self._copy_blob(desc, kind, convert))
                self._blob_futures[desc.digest] = future
            return future

    def _copy_blob(self, desc: Descriptor, kind: str, convert: Compression | None) -> Descriptor:
        ident = str(desc.digest)
        if convert is not None and self._needs_conversion(desc, convert):
            return self._recompress(desc, convert)
        # A mount on the same registry answers "already there" too, in one request,
        # so it goes first; other destinations refuse it without a request.
        origin = self.source.mount_origin
        if origin is not None and self.destination.mount_blob(desc, origin):
            self.stats.add(mounted=1)
            self.progress.done(ident, cached=True)
            return desc
        if self.destination.has_blob(desc):
            self.stats.add(skipped=1)
            self.progress.done(ident, cached=True)
            return desc
        self._transfer(desc, kind)
        self.stats.add(copied=1, nbytes=desc.size)
        self.progress.done(ident)
        return desc

    def _transfer(self, desc: Descriptor, kind: str) -> None:
        """Stream one blob from source to destination.  The client retries single
        requests; a stream that breaks on the way up (an upload cannot be resumed)
        is sent again from the start, up to the context's number of attempts."""
        ident = str(desc.digest)
        attempts = max(1, self.src_ctx.retries)
        for attempt in range(1, attempts + 1):
            try:
                with self.source.open_blob(desc) as chunks:
                    self.destination.put_blob(desc, self._counted(ident, chunks))
                return
            except DigestMismatchError as exc:
                raise DigestMismatchError(
                    f"{self.source.description}: blob {desc.digest}: {_reason(exc)}"
                ) from exc
            except NetworkError as exc:
                if isinstance(exc, TLSError) or attempt == attempts:
                    raise
                delay = self.src_ctx.retry_delay * 2 ** (attempt - 1)
                log.warning("%s: %s; sending it again in %.1f s", desc.digest.short, exc, delay)
                time.sleep(delay)
                # Start the blob's progress over rather than count its bytes twice.
                self.progress.subtask(ident, kind, f"{kind} {desc.digest.short}", desc.size)

    def _counted(self, ident: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.progress.advance(ident, len(chunk))
            yield chunk

    def _recompress(self, desc: Descriptor, want: Compression) -> Descriptor:
        """Decompress a layer, verifying it, and compress it as *want* in a temp file."""
        import tempfile  # only conversions spill to disk; a copy does not pay for it

        from atoll.oci.compression import decompress

        ident = str(desc.digest)
        with tempfile.TemporaryFile(dir=self.src_ctx.tmpdir) as tmp:
            compressed_hash = desc.digest.hasher()
            count = 0
            try:
                with self.source.open_blob(desc) as chunks:
                    verified = _verify_stream(chunks, desc, self.source.description)
                    plain = decompress(
                        self._counted(ident, verified), layer_compression(desc.media_type)
                    )
                    if self.options.zstd_chunked and want is Compression.ZSTD:
                        layer = _compress_chunked(plain, tmp, self.src_ctx.tmpdir)
                        count = layer.size
                    else:
                        layer = None
                        for piece in _compress(plain, want):
                            tmp.write(piece)
                            compressed_hash.update(piece)
                            count += len(piece)
            except OSError as exc:
                raise from_oserror(exc, "a temporary file for layer conversion") from exc
            new = Descriptor(
                _layer_media_type(want),
                Digest.parse(layer.digest)
                if layer is not None
                else Digest(desc.digest.algorithm, compressed_hash.hexdigest()),
                count,
                annotations={**desc.annotations, **(layer.annotations if layer else {})},
            )
            if not self.destination.has_blob(new):
                tmp.seek(0)
                self.destination.put_blob(new, _read_chunks(tmp))
        self.stats.add(copied=1, nbytes=count)
        self.progress.done(ident)
        return new


class _Job:
    """One blob's copy, run by one of the copy's threads."""

    __slots__ = ("_done", "_error", "_value", "work")

    def __init__(self, work: Callable[[], Descriptor]) -> None:
        self.work = work
        self._done = threading.Event()
        self._value: Descriptor | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self.work()
        except BaseException as exc:  # handed to result(), as a Future does
            self._error = exc
        finally:
            self._done.set()

    def cancel(self) -> None:
        self._error = RuntimeError("cancelled: the copy stopped before this blob's turn")
        self._done.set()

    def result(self) -> Descriptor:
        """The job's return value, once it has run; its exception if it raised one."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class _Workers:
    """Up to *size* threads running jobs in the order they come: a thread starts
    when a job comes and fewer than *size* run, and ends when no job is waiting.
    What the copy used ``concurrent.futures.ThreadPoolExecutor`` for, without
    importing it (it loads :mod:`logging`, see :mod:`atoll.logs`)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._waiting: deque[_Job] = deque()
        self._threads: list[threading.Thread] = []
        self._running = 0

    def submit(self, work: Callable[[], Descriptor]) -> _Job:
        job = _Job(work)
        with self._lock:
            self._waiting.append(job)
            if self._running >= self._size:
                return job
            self._running += 1
            thread = threading.Thread(target=self._work, name="atoll-copy", daemon=True)
            self._threads.append(thread)
        thread.start()
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    # Decided under the lock that submit() takes: a job added after
                    # this starts a thread of its own.
                    self._running -= 1
                    return
                job = self._waiting.popleft()
            job.run()

    def shutdown(self) -> None:
        """Cancel the jobs not started, and wait for those running to end."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
            threads = list(self._threads)
        for job in waiting:
            job.cancel()
        for thread in threads:
            thread.join()


class _Stats:
    """Counts of a copy, updated from its worker threads."""

    def __init__(self) -> None:
        self.images = 0
        self.copied = 0
        self.skipped = 0
        self.mounted = 0
        self.bytes = 0
        self.converted = False
        self._lock = threading.Lock()

    def add(self, *, copied: int = 0, skipped: int = 0, mounted: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.copied += copied
            self.skipped += skipped
            self.mounted += mounted
            self.bytes += nbytes


def _reason(exc: AtollError) -> str:
    text = exc.message
    return text.split(": ", 1)[-1] if ": " in text else text


def _unique_blobs(manifest: ImageManifest) -> set[Digest]:
    return {d.digest for d in manifest.blobs()}


def _read_chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK_SIZE):
        yield chunk


def _verify_stream(chunks: Iterable[bytes], desc: Descriptor, where: str) -> Iterator[bytes]:
    from atoll.oci.digest import Verifier

    verifier = Verifier(desc.digest, desc.size, f"{where}: blob {desc.digest}")
    for chunk in chunks:
        verifier.update(chunk)
        yield chunk
    verifier.verify()


def _compress(chunks: Iterable[bytes], want: Compression) -> Iterator[bytes]:
    if want is Compression.GZIP:
        import zlib

        deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        for chunk in chunks:
            yield deflater.compress(chunk)
        yield deflater.flush()
    elif want is Compression.ZSTD:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        for chunk in chunks:
            yield compressor.compress(chunk)
        yield compressor.flush()
    else:
        yield from chunks


def _compress_chunked(
    plain: Iterable[bytes], out: IO[bytes], tmpdir: Path | None
) -> "ChunkedLayer":
    """Write the tar *plain* as a zstd:chunked blob into *out* (it needs the
    whole tar in a file first: frames follow the tar's entries)."""
    import tempfile

    from atoll.oci.chunked import compress_tar_zstd_chunked

    with tempfile.TemporaryDirectory(dir=tmpdir) as work:
        tar = Path(work) / "layer.tar"
        with tar.open("wb") as fh:
            for piece in plain:
                fh.write(piece)
        blob = Path(work) / "layer.zst"
        layer = compress_tar_zstd_chunked(tar, blob)
        tar.unlink()
        with blob.open("rb") as fh:
            for chunk in _read_chunks(fh):
                out.write(chunk)
    return layer


def _layer_media_type(want: Compression) -> str:
    return {
        Compression.GZIP: MediaType.OCI_LAYER_GZIP,
        Compression.ZSTD: MediaType.OCI_LAYER_ZSTD,
        Compression.NONE: MediaType.OCI_LAYER,
    }[want]


def _rewrite_manifest(
    manifest: ImageManifest, blobs: list[Descriptor], want: Compression
) -> tuple[bytes, str]:
    data = json.loads(manifest.raw)
    to_oci = manifest.media_type == MediaType.DOCKER_MANIFEST and want is Compression.ZSTD
    docker = manifest.media_type == MediaType.DOCKER_MANIFEST and not to_oci
    layers = []
    for old, new in zip(data["layers"], blobs[1:], strict=True):
        entry = dict(old)
        entry.update(digest=str(new.digest), size=new.size)
        if new.media_type != MediaType.DOCKER_FOREIGN_LAYER:
            entry["mediaType"] = MediaType.DOCKER_LAYER_GZIP if docker else new.media_type
        if new.annotations:
            entry["annotations"] = dict(new.annotations)
        layers.append(entry)
    data["layers"] = layers
    media_type = manifest.media_type
    if to_oci:
        media_type = MediaType.OCI_MANIFEST
        data["mediaType"] = media_type
        data["config"]["mediaType"] = MediaType.OCI_CONFIG
    return json.dumps(data, separators=(",", ":")).encode(), media_type


def _rewrite_index(index: ImageIndex, descs: list[Descriptor]) -> tuple[bytes, str]:
    data = json.loads(index.raw)
    entries = []
    for old, new in zip(data["manifests"], descs, strict=True):
        entry = dict(old)
        entry.update(digest=str(new.digest), size=new.size, mediaType=new.media_type)
        entries.append(entry)
    data["manifests"] = entries
    media_type = index.media_type
    if media_type == MediaType.DOCKER_LIST and any(
        d.media_type == MediaType.OCI_MANIFEST for d in descs
    ):
        media_type = MediaType.OCI_INDEX
        data["mediaType"] = media_type
    return json.dumps(data, separators=(",", ":")).encode(), media_type
