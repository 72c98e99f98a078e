"""File plumbing shared by the local transports (``oci:``, ``oci-archive:``, ``dir:``).

Every blob that becomes visible in a local transport went through
:func:`write_verified`: written under a temporary name in its final directory,
hashed and counted by :class:`~atoll.oci.digest.Verifier` as it streamed in,
fsynced, then renamed into place.  A rename onto an existing blob is success
(same digest, same bytes).  Paths are only ever built from a re-validated
:class:`~atoll.oci.digest.Digest`, never from text read out of a manifest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from atoll.errors import InvalidInputError, ManifestError, NotFoundError, from_oserror
from atoll.fsutil import fsync_dir, temp_sibling
from atoll.oci.digest import Digest, Verifier
from atoll.oci.manifest import Descriptor
from atoll.oci.transports.base import CHUNK_SIZE

#: Largest manifest a local transport reads into memory (containers/image uses 4 MiB too).
MAX_MANIFEST_SIZE = 4 << 20
#: Largest index.json read into memory; a layout may list many images.
MAX_INDEX_SIZE = 64 << 20


def checked_digest(digest: Digest) -> Digest:
    """*digest* again, after proving it is ``ALGORITHM:HEX`` and nothing else.

    A Digest can be built directly, skipping :meth:`Digest.parse`; a file name
    made of an unchecked one could climb out of the blob directory."""
    try:
        return Digest.parse(str(digest))
    except Exception as exc:
        raise ManifestError(f"refusing to use {str(digest)!r} as a blob name: {exc}") from None


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The whole file, refusing files larger than *limit* bytes."""
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a directory, expected the {what}") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    if len(data) > limit:
        raise ManifestError(f"{path}: {what} is larger than {limit} bytes")
    return data


def _chunks(fh: IO[bytes], path: Path) -> Iterator[bytes]:
    while True:
        try:
            chunk = fh.read(CHUNK_SIZE)
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        if not chunk:
            return
        yield chunk


@contextlib.contextmanager
def open_chunks(path: Path, what: str) -> Iterator[Iterator[bytes]]:
    """Stream *path* in CHUNK_SIZE pieces; NotFoundError names *what* and the path."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    with fh:
        yield _chunks(fh, path)


def write_verified(target: Path, desc: Descriptor, chunks: Iterable[bytes], what: str) -> bool:
    """Store a blob at *target* only if its bytes match *desc* (digest and size).

    Returns True when *target* did not exist before, so a caller can tell the
    blobs it added from those that were already there.  Safe to call from
    several threads, also for the same digest: each call has its own
    temporary file and the final rename is atomic."""
    tmp = temp_sibling(target)
    verifier = Verifier(desc.digest, desc.size, what)
    try:
        with tmp.open("xb") as fh:
            for chunk in chunks:
                verifier.update(chunk)
                fh.write(chunk)
            verifier.verify()
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        existed = target.exists()
        tmp.replace(target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_oserror(exc, f"{what} ({target})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return not existed


def has_file(path: Path, size: int) -> bool:
    """True if *path* is a regular file of *size* bytes (size < 0: any size)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return path.is_file() and (size < 0 or st.st_size == size)
