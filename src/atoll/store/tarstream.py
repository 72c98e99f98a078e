"""Reading a layer as a stream: blob bytes in, verified tar entries out.

:class:`LayerFeed` fetches a layer blob in a background thread, hashes it
against its descriptor, decompresses it and hashes the result against the
layer's diff_id; the importer's thread takes the decompressed pieces from a
small bounded queue.  Memory is the queue (a few MiB) however large the layer.
The digests are checked when the stream ends: a layer's objects are only
staged until then, never published (see :mod:`atoll.store.objects`).

:class:`TarReader` parses POSIX ustar, pax (``x`` and ``g`` headers, with
``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` extended attributes) and GNU
(``L``/``K`` long names, base-256 numbers) archives, as OCI layers use them.
It is written for speed: one slice per header, no per-entry objects beyond a
small slotted record.  Every header's checksum is checked, as GNU tar does (the
diff_id only proves the bytes are the ones the image names, not that they are
a sound archive).  Every number is checked for range before it is used: ids
up to :data:`MAX_ID` (``(uid_t)-1`` means "no change" to chown, so it cannot
be stored), sizes up to :data:`MAX_SIZE`, device numbers up to 32 bits, pax
headers and GNU long names up to :data:`MAX_META`.  ``mtime`` is not read: the
store keeps no times.

An archive that ends without its two zero blocks is read to its last entry
(GNU tar lists it too); a layer with no bytes at all is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import queue
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from atoll.errors import DigestMismatchError, LayerError, NoSpaceError
from atoll.oci.compression import decompress
from atoll.oci.digest import Digest, Verifier
from atoll.oci.manifest import Compression, Descriptor
from atoll.oci.transports.base import ImageSource
from atoll.phases import DECOMPRESS, FETCH, VERIFY, PhaseClock
from atoll.progress import ProgressSink
from atoll.store.format import MAX_ID

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_QUEUE_DEPTH = 8
#: Largest entry size (the file object header stores a u64; files are offsets in off_t).
MAX_SIZE = 2**63 - 1
#: Largest device major or minor number (Linux keeps 32 bits of each).
MAX_DEV = 2**32 - 1
#: Largest pax header or GNU long name/link (as GNU tar and Go's archive/tar cap them).
MAX_META = 1 << 20
#: Longest decimal number accepted in a pax record (2**64 has 20 digits).
_MAX_DIGITS = 20
_OCTAL = frozenset(b"01234567")

# Entry types, as the importer sees them.
REGULAR = "0"
HARDLINK = "1"
SYMLINK = "2"
CHAR = "3"
BLOCKDEV = "4"
DIRECTORY = "5"
FIFO = "6"

_REGULAR_FLAGS = {b"0": REGULAR, b"\x00": REGULAR, b"7": REGULAR}
_OTHER_FLAGS = {
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHAR,
    b"4": BLOCKDEV,
    b"5": DIRECTORY,
    b"6": FIFO,
}


class TarEntry:
    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "kind",
        "linkname",
        "mode",
        "path",
        "size",
        "uid",
        "xattrs",
    )

    def __init__(
        self,
        path: str,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        linkname: str,
        devmajor: int,
        devminor: int,
        xattrs: dict[str, bytes] | None,
    ) -> None:
        self.path = path
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs


class _Truncated(Exception):
    pass


class ByteReader:
    """Exact reads over an iterator of byte pieces."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._pos = 0

    def _more(self) -> bytes:
        for piece in self._pieces:
            if piece:
                return piece
        return b""

    def read(self, n: int) -> bytes:
        """Exactly *n* bytes; b"" at a clean end; _Truncated in between."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        need = end - len(self._buf)
        while need > 0:
            piece = self._more()
            if not piece:
                if need == n:
                    self._buf, self._pos = b"", 0
                    return b""
                raise _Truncated
            if len(piece) >= need:
                parts.append(piece[:need])
                self._buf, self._pos = piece, need
                need = 0
            else:
                parts.append(piece)
                need -= len(piece)
        return b"".join(parts)

    def read_exact(self, n: int) -> bytes:
        if n == 0:
            return b""
        data = self.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def pieces(self, n: int) -> Iterator[bytes]:
        """*n* bytes as a sequence of pieces (for contents too large to hold)."""
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail == 0:
                piece = self._more()
                if not piece:
                    raise _Truncated
                self._buf, self._pos = piece, 0
                avail = len(piece)
            take = min(avail, n)
            yield self._buf[self._pos : self._pos + take]
            self._pos += take
            n -= take

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def drain(self) -> None:
        self._buf, self._pos = b"", 0
        for _ in self._pieces:
            pass


def _number(field: bytes) -> int:
    """A numeric header field; ValueError when it is not one (int() alone would
    take signs, underscores and inner spaces)."""
    if field and field[0] & 0x80:
        # GNU base-256: the first byte only flags it (0x80 positive, 0xff negative).
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 256 ** (len(field) - 1)
        return value
    text = field.split(b"\x00", 1)[0].strip(b" \x00")
    if not _OCTAL.issuperset(text):
        raise ValueError("not an octal number")
    return int(text, 8) if text else 0


def _pax_number(records: dict[str, bytes], key: str, default: int) -> int:
    value = records.get(key)
    if value is None:
        return default
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise ValueError(f"pax {key} {value[:40]!r} is not a decimal number in range")
    return int(value)


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    # The checksum field counts as eight spaces (8 * 32 = 256).
    unsigned = sum(block) - sum(block[148:156]) + 256
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
    return stored == signed


def _parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        digits = data[pos:space]
        if not digits.isdigit():
            raise LayerError(f"{where}: malformed pax header")
        length = int(digits)
        if length <= 0 or pos + length > len(data):
            raise LayerError(f"{where}: malformed pax header")
        record = data[space + 1 : pos + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep:
            raise LayerError(f"{where}: malformed pax header record")
        records[_decode(key)] = value
        pos += length
    return records


class TarReader:
    """Iterate a tar stream's entries; read or skip each entry's content."""

    def __init__(self, reader: ByteReader, where: str) -> None:
        self._r = reader
        self._where = where
        self._unread = 0
        self._pad = 0

    def _data(self, size: int) -> bytes:
        data = self._r.read_exact(size)
        self._r.skip(-size % BLOCK)
        return data

    def _truncated(self) -> LayerError:
        return LayerError(f"{self._where}: the tar stream ends in the middle of an entry")

    def content(self) -> bytes:
        """The current entry's content (call once, for small entries)."""
        n, self._unread = self._unread, 0
        try:
            return self._r.read_exact(n)
        except _Truncated:
            raise self._truncated() from None

    def content_pieces(self) -> Iterator[bytes]:
        """The current entry's content in pieces (for large entries)."""
        n, self._unread = self._unread, 0
        try:
            yield from self._r.pieces(n)
        except _Truncated:
            raise self._truncated() from None

    def entries(self) -> Iterator[TarEntry]:
        try:
            yield from self._entries()
        except _Truncated:
            raise self._truncated() from None
        except ValueError:
            raise LayerError(f"{self._where}: not a tar archive (malformed header)") from None

    def _entries(self) -> Iterator[TarEntry]:
        pax_global: dict[str, bytes] = {}
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        r = self._r
        first = True
        while True:
            if self._unread:
                r.skip(self._unread)
                self._unread = 0
            if self._pad:
                r.skip(self._pad)
                self._pad = 0
            block = r.read(BLOCK)
            if not block:
                if first:
                    raise LayerError(
                        f"{self._where}: the layer is empty (not even the end of a tar archive)"
                    )
                # No end-of-archive blocks: GNU tar accepts this, and so do we.
                return
            first = False
            if block == _ZERO_BLOCK:
                return
            if not _checksum_ok(block):
                raise LayerError(
                    f"{self._where}: not a tar archive, or a corrupt one (bad header checksum)"
                )
            magic = block[257:263]
            flag = block[156:157]
            size = _number(block[124:136])
            if flag in (b"x", b"g", b"L", b"K"):
                if not 0 <= size <= MAX_META:
                    raise LayerError(
                        f"{self._where}: a pax header or GNU long name of {size} bytes "
                        f"(more than {MAX_META})"
                    )
                data = self._data(size)
                if flag == b"x":
                    pax = _parse_pax(data, self._where)
                elif flag == b"g":
                    pax_global.update(_parse_pax(data, self._where))
                elif flag == b"L":
                    long_name = _cstr(data)
                else:
                    long_link = _cstr(data)
                continue
            kind = _REGULAR_FLAGS.get(flag) or _OTHER_FLAGS.get(flag)
            name = _cstr(block[0:100])
            if magic == b"ustar\x00":
                prefix = _cstr(block[345:500])
                if prefix:
                    name = prefix + b"/" + name
            if long_name is not None:
                name, long_name = long_name, None
            linkname = _cstr(block[157:257])
            if long_link is not None:
                linkname, long_link = long_link, None
            if kind is None:
                raise LayerError(
                    f"{self._where}: {_decode(name)}: unsupported tar entry type {flag!r}"
                    + (" (GNU sparse file)" if flag == b"S" else "")
                )
            if kind == REGULAR and flag == b"\x00" and name.endswith(b"/"):
                kind = DIRECTORY
            uid = _number(block[108:116])
            gid = _number(block[116:124])
            devmajor = devminor = 0
            if kind in (CHAR, BLOCKDEV):
                devmajor = _number(block[329:337])
                devminor = _number(block[337:345])
            xattrs: dict[str, bytes] | None = None
            records = {**pax_global, **pax} if pax_global else pax
            if records:
                pax = {}
                path_raw = records.get("path")
                if path_raw is not None:
                    name = path_raw
                link_raw = records.get("linkpath")
                if link_raw is not None:
                    linkname = link_raw
                try:
                    size = _pax_number(records, "size", size)
                    uid = _pax_number(records, "uid", uid)
                    gid = _pax_number(records, "gid", gid)
                    devmajor = _pax_number(records, "SCHILY.devmajor", devmajor)
                    devminor = _pax_number(records, "SCHILY.devminor", devminor)
                except ValueError as exc:
                    raise LayerError(f"{self._where}: {_decode(name)}: {exc}") from None
                xattrs = _xattrs_of(records, self._where, name)
            mode = _number(block[100:108])
            self._check_ranges(name, mode, uid, gid, size, devmajor, devminor)
            mode &= 0o7777
            data_size = size if kind == REGULAR else 0
            self._unread = data_size
            self._pad = -data_size % BLOCK
            yield TarEntry(
                _decode(name),
                kind,
                mode,
                uid,
                gid,
                data_size,
                _decode(linkname),
                devmajor,
                devminor,
                xattrs,
            )

    def _check_ranges(
        self, name: bytes, mode: int, uid: int, gid: int, size: int, major: int, minor: int
    ) -> None:
        what = f"{self._where}: {_decode(name)}"
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise LayerError(
                f"{what}: owner {uid}:{gid} is out of range (ids go from 0 to {MAX_ID})"
            )
        if not 0 <= size <= MAX_SIZE:
            raise LayerError(f"{what}: size {size} is out of range")
        if mode < 0:
            raise LayerError(f"{what}: mode {mode} is out of range")
        if not (0 <= major <= MAX_DEV and 0 <= minor <= MAX_DEV):
            raise LayerError(f"{what}: device number {major}:{minor} is out of range")


def _xattrs_of(records: dict[str, bytes], where: str, name: bytes) -> dict[str, bytes] | None:
    xattrs: dict[str, bytes] = {}
    for key, value in records.items():
        if key.startswith("SCHILY.xattr."):
            xattrs[key[len("SCHILY.xattr.") :]] = value
        elif key.startswith("LIBARCHIVE.xattr."):
            attr = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                xattrs.setdefault(attr, base64.b64decode(value + b"=" * (-len(value) % 4)))
            except ValueError:
                raise LayerError(f"{where}: {_decode(name)}: malformed xattr {attr}") from None
        elif key.startswith("GNU.sparse."):
            raise LayerError(f"{where}: {_decode(name)}: GNU sparse files are not supported")
    return xattrs or None


# --- the layer feed -----------------------------------------------------------------------

_END = object()
#: How long the consumer waits for the next piece before it looks whether the
#: producer is still there (it never waits on a thread that has ended).
_POLL = 0.5


@dataclass(frozen=True)
class ExpandLimit:
    """The most bytes one layer may expand to, and why."""

    size: int
    #: The store directory (named in the error).
    store: str
    #: True: the free space of the store's file system; False: the store's
    #: ``max_layer_size``.
    free_space: bool

    def error(self, where: str) -> Exception:
        if self.free_space:
            return NoSpaceError(
                f"{where}: no space left: the layer expands to more than the "
                f"{self.size} bytes free for the object store {self.store}",
                hint="free some space (atoll store gc removes what no deployment needs)",
            )
        return LayerError(
            f"{where}: the layer expands to more than max_layer_size ({self.size} bytes) "
            f"of the object store {self.store}",
            hint="raise max_layer_size in the store's store.json if the image is trusted",
        )


class LayerFeed:
    """The decompressed bytes of one layer, produced by a background thread that
    fetches, verifies, decompresses and hashes them.  Iterating raises the
    producer's error, including DigestMismatchError when the blob does not
    match its descriptor or the decompressed bytes do not match *diff_id*, and
    the error of *limit* when the layer expands to more than it allows.

    The stream can be iterated any number of times: once it has ended (or
    failed), iterating again returns at once (or raises the same error), so a
    reader that stops at the archive's end and one that reads to the stream's
    end never wait for a piece that will not come."""

    def __init__(
        self,
        source: ImageSource,
        desc: Descriptor,
        compression: Compression,
        diff_id: Digest,
        where: str,
        progress: ProgressSink,
        limit: ExpandLimit | None = None,
        clock: PhaseClock | None = None,
        keep: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        #: Bytes [start, end) of the blob, copied as they pass (a zstd:chunked
        #: layer's TOC, for :mod:`atoll.store.tocs`); not verified here.
        self.keep = keep
        self.kept = bytearray()
        self.desc = desc
        self.compression = compression
        self.diff_id = diff_id
        self.where = where
        self.progress = progress
        self.fetched = 0
        self.limit = limit
        self.clock = clock or PhaseClock()
        self._ended = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="layer-feed", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _counted(self, chunks: Iterator[bytes], verifier: Verifier) -> Iterator[bytes]:
        ident = str(self.desc.digest)
        for chunk in chunks:
            if self._stop.is_set():
                return
            with self.clock.phase(VERIFY):
                verifier.update(chunk)
            if self.keep is not None:
                start, end = self.keep
                at = self.fetched
                if at < end and at + len(chunk) > start:
                    self.kept += chunk[max(start - at, 0) : end - at]
            self.fetched += len(chunk)
            self.progress.advance(ident, len(chunk))
            yield chunk

    def _produce(self) -> None:
        try:
            desc = self.desc
            verifier = Verifier(desc.digest, desc.size, f"{self.where}: blob {desc.digest}")
            # An uncompressed layer's diff_id is its digest: hash it once.
            same = self.compression is Compression.NONE and self.diff_id == desc.digest
            diff = None if same else hashlib.new(self.diff_id.algorithm)
            limit = self.limit
            expanded = 0
            clock = self.clock
            with self.source.open_blob(desc) as chunks:
                fetched = self._counted(clock.timed(chunks, FETCH), verifier)
                for piece in clock.timed(decompress(fetched, self.compression), DECOMPRESS):
                    expanded += len(piece)
                    if limit is not None and expanded > limit.size:
                        raise limit.error(f"{self.where}: layer {desc.digest}")
                    if diff is not None:
                        with clock.phase(VERIFY):
                            diff.update(piece)
                    self._put(piece)
            if self._stop.is_set():
                return
            verifier.verify()
            if diff is not None and diff.hexdigest() != self.diff_id.hex:
                raise DigestMismatchError(
                    f"{self.where}: layer {desc.digest}: its uncompressed content does not "
                    f"match diff_id {self.diff_id} from the image config "
                    f"(got {self.diff_id.algorithm}:{diff.hexdigest()})"
                )
            self._put(_END)
        except BaseException as exc:
            self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while not self._ended:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                # A producer that has ended put everything it will ever put.
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                self._ended = True
                self._error = LayerError(f"{self.where}: the layer stream stopped early")
                break
            if item is _END:
                self._ended = True
                return
            if isinstance(item, BaseException):
                self._ended = True
                self._error = item
                break
            yield item
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the producer (if it still runs) and wait for it.  A stream
        closed before its end raises when read again, whatever is queued."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
        if not self._ended:
            self._ended = True
            self._error = LayerError(f"{self.where}: the layer stream stopped early")


def verify_blob(source: ImageSource, desc: Descriptor, where: str) -> None:
    """Read a blob once more and check it against its descriptor (used to tell
    a corrupt download from a malformed layer after a parse error)."""
    verifier = Verifier(desc.digest, desc.size, f"{where}: blob {desc.digest}")
    with source.open_blob(desc) as chunks:
        for chunk in chunks:
            verifier.update(chunk)
    verifier.verify()
