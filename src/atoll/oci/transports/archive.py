"""``oci-archive:FILE[:REF]``: a tar file holding one OCI image layout.

On disk (as skopeo 1.9.3 writes it, and as atoll writes it)::

    FILE (uncompressed tar, entries in this order)
    ├── blobs/                 directory entries, mode 0755
    ├── blobs/sha256/
    ├── blobs/sha256/<hex>     one regular file per blob, mode 0644
    ├── index.json             see atoll.oci.transports.layout
    └── oci-layout

atoll writes it deterministically: names sorted, mtime 0, uid/gid 0 (root),
PAX format (only long or huge members get extended headers).  skopeo writes
the same names in the same order, with the real mtimes.

Reading does not unpack: the tar headers are read once to find each member's
data offset, and blobs are served with ``pread`` from the file.  A member
whose name is absolute or contains ``..`` makes the whole archive invalid
(LayerError); so does any member other than a directory, a regular file or a
hard link to an earlier one.  A gzip or zstd compressed tar (skopeo reads
those too) is first decompressed into an anonymous temporary file.

Writing stages a layout in a temporary directory (``ctx.tmpdir`` or beside
FILE), and at commit tars it to a temporary file beside FILE, fsyncs it and
renames it over FILE.  Like skopeo, writing to an existing archive *replaces*
it: the new file holds only the new image, whatever REF is.  A failed or
aborted copy leaves FILE as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from atoll.errors import (
    InvalidInputError,
    LayerError,
    ManifestError,
    NotFoundError,
    from_oserror,
)
from atoll.fsutil import TMP_PREFIX, atomic_writer, remove_tree
from atoll.oci.context import SystemContext
from atoll.oci.manifest import Descriptor
from atoll.oci.transports import ImageName, Transport
from atoll.oci.transports._local import MAX_INDEX_SIZE
from atoll.oci.transports.base import CHUNK_SIZE, ImageDestination
from atoll.oci.transports.layout import (
    INDEX_FILE,
    LayoutDestination,
    LayoutReader,
    parse_index,
    ref_name_of,
)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


class _ZstdFailed(Exception):
    pass


def _unzstd(fh: IO[bytes], out: IO[bytes]) -> None:
    # zstandard is imported here only: a device reading an uncompressed or gzip
    # archive runs atoll with the standard library alone.
    import zstandard

    try:
        zstandard.ZstdDecompressor().copy_stream(fh, out)
    except zstandard.ZstdError as exc:
        raise _ZstdFailed(str(exc)) from exc


def _safe_member_name(name: str, archive: Path) -> str:
    """The member's path inside the layout, or LayerError if it could escape."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise LayerError(f"{archive}: unsafe tar entry {name!r} (absolute path or '..')")
    return "/".join(p for p in parts if p not in ("", "."))


class TarLayout:
    """The members of an OCI layout tar, indexed once, read by offset.

    Thread-safe: reads use ``os.pread``, which does not move a shared offset."""

    def __init__(self, path: Path, tmpdir: Path | None = None) -> None:
        self.path = path
        self._fh = self._open(tmpdir)
        try:
            self._members = self._index()
        except BaseException:
            self._fh.close()
            raise

    def _open(self, tmpdir: Path | None) -> IO[bytes]:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"oci-archive:{self.path}: no such file") from None
        except IsADirectoryError:
            raise InvalidInputError(
                f"oci-archive:{self.path}: is a directory, not a tar file",
                hint=f"use oci:{self.path} for an OCI layout directory",
            ) from None
        except OSError as exc:
            raise from_oserror(exc, str(self.path)) from exc
        magic = fh.read(4)
        fh.seek(0)
        if not (magic.startswith(_GZIP_MAGIC) or magic == _ZSTD_MAGIC):
            return fh
        # Member offsets need a seekable uncompressed stream; an unnamed
        # temporary file disappears by itself whatever happens.
        with fh:
            out = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - returned open
            try:
                if magic.startswith(_GZIP_MAGIC):
                    with gzip.GzipFile(fileobj=fh) as gz:
                        while chunk := gz.read(CHUNK_SIZE):
                            out.write(chunk)
                else:
                    _unzstd(fh, out)
                out.flush()
                out.seek(0)
            except (OSError, EOFError, zlib.error, _ZstdFailed) as exc:
                out.close()
                raise LayerError(f"oci-archive:{self.path}: cannot decompress: {exc}") from None
            return out

    def _index(self) -> dict[str, _Member]:
        members: dict[str, _Member] = {}
        file_size = os.fstat(self._fh.fileno()).st_size
        end = 0
        try:
            with tarfile.open(fileobj=self._fh, mode="r:") as tar:
                for info in tar:
                    name = _safe_member_name(info.name, self.path)
                    if info.isdir():
                        continue
                    if info.islnk():
                        target = members.get(_safe_member_name(info.linkname, self.path))
                        if target is None:
                            raise LayerError(
                                f"{self.path}: tar entry {info.name!r} links to "
                                f"{info.linkname!r}, which comes nowhere before it"
                            )
                        members[name] = target
                        continue
                    if not info.isreg() or info.sparse is not None:
                        raise LayerError(
                            f"{self.path}: tar entry {info.name!r} is not a regular file "
                            "or directory; an OCI archive holds nothing else"
                        )
                    if info.offset_data + info.size > file_size:
                        raise LayerError(f"{self.path}: truncated in tar entry {info.name!r}")
                    members[name] = _Member(info.offset_data, info.size)
                end = tar.offset
        except tarfile.TarError as exc:
            raise LayerError(f"{self.path}: not a valid tar file ({exc})") from None
        self._check_end(end)
        return members

    def _check_end(self, offset: int) -> None:
        """Refuse an archive whose reading stopped at a damaged header.

        tarfile ends the listing quietly at the first header after the first
        that fails its checksum, which would make the members after it look
        absent; GNU tar reports the damage.  What follows the last member must
        be the end of the file or the zero blocks that end an archive."""
        block = os.pread(self._fh.fileno(), tarfile.BLOCKSIZE, offset)
        if block and block.count(0) != len(block):
            raise LayerError(
                f"{self.path}: the tar header at byte {offset} is damaged (bad checksum "
                "or not a header): the archive is corrupt",
                hint="copy the file again; the members after that point cannot be read",
            )

    def names(self) -> list[str]:
        return sorted(self._members)

    def _member(self, relpath: str, what: str) -> _Member:
        member = self._members.get(relpath)
        if member is None:
            raise NotFoundError(f"{what} not found: {self.path}: {relpath}")
        return member

    def _pread(self, size: int, offset: int) -> bytes:
        try:
            data = os.pread(self._fh.fileno(), size, offset)
        except OSError as exc:
            raise from_oserror(exc, str(self.path)) from exc
        if len(data) < size:
            raise LayerError(f"{self.path}: file shrank while reading it")
        return data

    def read(self, relpath: str, limit: int, what: str) -> bytes:
        member = self._member(relpath, what)
        if member.size > limit:
            raise ManifestError(f"{self.path}: {relpath}: {what} is larger than {limit} bytes")
        return self._pread(member.size, member.offset)

    def read_range(self, relpath: str, start: int, length: int, what: str) -> bytes:
        """*length* bytes of a member from *start*, which must lie inside it."""
        member = self._member(relpath, what)
        if start < 0 or length < 0 or start + length > member.size:
            raise LayerError(
                f"{self.path}: {relpath}: bytes {start}-{start + length} of {what} lie "
                f"outside its {member.size} bytes"
            )
        return self._pread(length, member.offset + start)

    def open(self, relpath: str, what: str) -> AbstractContextManager[Iterator[bytes]]:
        member = self._member(relpath, what)

        def chunks() -> Iterator[bytes]:
            done = 0
            while done < member.size:
                n = min(CHUNK_SIZE, member.size - done)
                yield self._pread(n, member.offset + done)
                done += n

        return contextlib.nullcontext(chunks())

    def close(self) -> None:
        self._fh.close()


def _archive_path(name: ImageName) -> Path:
    if name.path is None:
        raise InvalidInputError(f"{name}: no file name")
    return name.path


class ArchiveSource(LayoutReader):
    """Reads ``oci-archive:FILE[:REF]`` without unpacking it."""

    def __init__(self, name: ImageName, ctx: SystemContext, *, description: str | None = None):
        super().__init__(description or str(name), name.ref_name)
        self.path = _archive_path(name)
        self._tar = TarLayout(self.path, ctx.tmpdir)
        try:
            self._load()
        except BaseException:
            self._tar.close()
            raise

    def _where(self, relpath: str) -> str:
        return f"{self.path}: {relpath}"

    def _read(self, relpath: str, limit: int, what: str) -> bytes:
        return self._tar.read(relpath, limit, what)

    def _open(self, relpath: str, what: str) -> AbstractContextManager[Iterator[bytes]]:
        return self._tar.open(relpath, what)

    def close(self) -> None:
        self._tar.close()


def list_archive_ref_names(path: Path, ctx: SystemContext | None = None) -> list[str]:
    """The ref names in the archive's ``index.json`` (``atoll image tags oci-archive:FILE``)."""
    tar = TarLayout(path, ctx.tmpdir if ctx else None)
    try:
        raw = tar.read(INDEX_FILE, MAX_INDEX_SIZE, "OCI layout index")
    finally:
        tar.close()
    out: list[str] = []
    for entry in parse_index(raw, f"{path}: {INDEX_FILE}").manifests:
        name = ref_name_of(entry)
        if name and name not in out:
            out.append(name)
    return out


def write_layout_tar(layout: Path, out: IO[bytes]) -> None:
    """Tar the layout directory *layout* into *out*, deterministically."""
    paths = sorted(layout.rglob("*"), key=lambda p: p.relative_to(layout).as_posix())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(path.relative_to(layout).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.mode = 0o644
            with path.open("rb") as fh:
                info.size = os.fstat(fh.fileno()).st_size
                tar.addfile(info, fh)


class ArchiveDestination(ImageDestination):
    """Writes ``oci-archive:FILE[:REF]``, replacing FILE at commit."""

    def __init__(self, name: ImageName, ctx: SystemContext, *, description: str | None = None):
        self.description = description or str(name)
        self.path = _archive_path(name)
        if self.path.is_dir():
            raise InvalidInputError(
                f"{self.description}: {self.path} is a directory, not an archive file",
                hint=f"use oci:{self.path} to write an OCI layout directory",
            )
        stage_parent = ctx.tmpdir or self.path.parent
        try:
            stage_parent.mkdir(parents=True, exist_ok=True)
            self._stage = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=stage_parent))
        except OSError as exc:
            raise from_oserror(exc, str(stage_parent)) from exc
        self._finished = False
        try:
            self._layout = LayoutDestination(
                ImageName(Transport.OCI, path=self._stage / "layout", ref_name=name.ref_name),
                ctx,
                description=self.description,
            )
        except BaseException:
            remove_tree(self._stage)
            raise

    def has_blob(self, desc: Descriptor) -> bool:
        return self._layout.has_blob(desc)

    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        self._layout.put_blob(desc, chunks)

    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        self._layout.put_manifest(raw, media_type, top_level=top_level)

    def commit(self) -> None:
        self._layout.commit()
        try:
            with atomic_writer(self.path) as fh:
                write_layout_tar(self._stage / "layout", fh)
        except OSError as exc:
            raise from_oserror(exc, f"{self.description}: writing the archive") from exc
        finally:
            remove_tree(self._stage)
        self._finished = True

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._layout.abort()
        remove_tree(self._stage)

    def close(self) -> None:
        self.abort()
