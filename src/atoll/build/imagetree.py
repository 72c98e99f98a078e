"""An image's file tree as its layers stack up, read without unpacking anything.

Each layer streams through :class:`atoll.store.tarstream.LayerFeed` (digest and
diff_id checked) and :class:`~atoll.store.tarstream.TarReader`; what is kept is
one small record per path (type, mode, owner, size, link target) and the
content of the few files the caller asks for (and, for files a predicate picks,
their first :data:`HEAD_BYTES` bytes: a header to look at).  Whiteouts apply as on an
overlay file system: ``DIR/.wh.NAME`` removes NAME from lower layers,
``DIR/.wh..wh..opq`` empties DIR of lower layers' entries; neither touches
entries of its own layer.  Paths are relative, without a leading ``/``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import ImageConfig, ImageManifest, layer_compression, parse_config
from atoll.oci.transports import ImageName, ImageSource, open_source
from atoll.progress import NullProgress, ProgressSink
from atoll.store.tarstream import DIRECTORY, HARDLINK, REGULAR, SYMLINK, ByteReader, LayerFeed
from atoll.store.tarstream import TarReader as _TarReader

#: Largest file whose content is kept when asked for.
MAX_CONTENT = 1 << 20
#: How much of a file picked by ``heads`` is kept: a .pyc header (16 bytes), or a
#: kernel's PE headers up to its data directories (lint's kernel-signed).
HEAD_BYTES = 512
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_LINKS = 40


@dataclass(frozen=True, slots=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    #: Index of the layer that wrote it (0 = bottom).
    layer: int

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY

    @property
    def is_file(self) -> bool:
        return self.kind == REGULAR

    @property
    def is_symlink(self) -> bool:
        return self.kind == SYMLINK


@dataclass
class ImageTree:
    """The merged tree of an image, and the contents read on request."""

    name: str
    digest: Digest
    config: ImageConfig
    entries: dict[str, Node] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    #: The first HEAD_BYTES bytes of the files the ``heads`` predicate picked.
    heads: dict[str, bytes] = field(default_factory=dict)
    #: The size of each layer blob as the manifest gives it, bottom first.
    layer_sizes: tuple[int, ...] = ()

    def resolve(self, path: str) -> str | None:
        """*path* with symlinks in it followed inside the image (absolute targets
        are the image's root); None when it leads nowhere."""
        return resolve_path(path, self._link)

    def _link(self, path: str) -> str | bool | None:
        node = self.entries.get(path)
        if node is None:
            return False
        return node.linkname if node.is_symlink else None

    def node(self, path: str) -> Node | None:
        """The node at *path*, symlinks followed."""
        resolved = self.resolve(path)
        return self.entries.get(resolved) if resolved is not None else None

    def read(self, path: str) -> bytes | None:
        """The content of *path* (symlinks followed), if it was asked for and is a file."""
        resolved = self.resolve(path)
        return self.contents.get(resolved) if resolved is not None else None

    def under(self, prefix: str) -> Iterator[tuple[str, Node]]:
        """Entries strictly below the directory *prefix*, in path order."""
        start = prefix.strip("/") + "/"
        for path in sorted(self.entries):
            if path.startswith(start):
                yield path, self.entries[path]

    def children(self, prefix: str) -> list[str]:
        """Names directly in the directory *prefix*."""
        start = prefix.strip("/") + "/"
        return sorted(
            {p[len(start) :].split("/", 1)[0] for p in self.entries if p.startswith(start)}
        )


def resolve_path(
    path: str, link: Callable[[str], str | bool | None], *, follow_last: bool = True
) -> str | None:
    """*path* with the symlinks in it followed, where *link* tells for a path the
    target of the symlink there, None for another kind of entry and False for
    nothing; absolute targets start at the root.  None when the path leads nowhere."""
    parts = [p for p in path.strip("/").split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        current = "/".join([*done, part])
        target = link(current)
        if target is False:
            return None
        if isinstance(target, str) and (parts or follow_last):
            hops += 1
            if hops > _MAX_LINKS:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/".join(done)


def _normalize(path: str) -> str:
    path = path.lstrip("/")
    while path.startswith("./"):
        path = path[2:]
    path = posixpath.normpath(path) if path else ""
    return "" if path == "." else path


def _apply_layer(
    tree: ImageTree,
    layer: dict[str, Node],
    contents: dict[str, bytes],
    removed: set[str],
    opaque: set[str],
    firsts: dict[str, bytes],
) -> None:
    if removed or opaque:

        def hidden(path: str) -> bool:
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                here = "/".join(parts[:i])
                if here in removed:
                    return True
                if i < len(parts) and here in opaque:
                    return True
            return "" in opaque

        for path in [p for p in tree.entries if hidden(p)]:
            del tree.entries[path]
            tree.contents.pop(path, None)
            tree.heads.pop(path, None)
    for path, node in layer.items():
        tree.entries[path] = node
        tree.contents.pop(path, None)
        tree.heads.pop(path, None)
    tree.contents.update(contents)
    tree.heads.update(firsts)


def read_image_tree(
    name: ImageName,
    ctx: SystemContext,
    *,
    want: Collection[str] = (),
    heads: Callable[[str], bool] | None = None,
    progress: ProgressSink | None = None,
) -> ImageTree:
    """Read every layer of *name* (the platform's image of an index) into an
    :class:`ImageTree`, keeping the contents of the files whose paths are in *want*
    and the first bytes of the regular files whose paths *heads* picks."""
    progress = progress or NullProgress()
    wanted = {_normalize(w) for w in want}
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        config = parse_config(read_config(source, manifest), where=source.description)
        tree = ImageTree(str(name), manifest.digest, config)
        tree.layer_sizes = tuple(desc.size for desc in manifest.layers)
        for index, where, feed in layer_feeds(source, manifest, config, str(name), progress):
            _read_layer(tree, feed, index, wanted, heads, where)
    return tree


def layer_feeds(
    source: ImageSource,
    manifest: ImageManifest,
    config: ImageConfig,
    name: str,
    progress: ProgressSink,
) -> Iterator[tuple[int, str, LayerFeed]]:
    """Each layer of *manifest*, bottom first, as a verifying :class:`LayerFeed`
    (with its index and a name for messages), under a "read" progress task."""
    where = source.description
    progress.begin("read", f"Reading {name}", name, len(manifest.layers))
    ok = False
    try:
        for index, (desc, diff_id) in enumerate(
            zip(manifest.layers, config.diff_ids, strict=False)
        ):
            ident = str(desc.digest)
            progress.subtask(ident, "layer", f"layer {desc.digest.short}", desc.size)
            feed = LayerFeed(
                source, desc, layer_compression(desc.media_type), diff_id, where, progress
            )
            try:
                yield index, f"{where}: layer {desc.digest}", feed
            finally:
                feed.close()
            progress.done(ident)
        ok = True
    finally:
        progress.end(ok)


def _read_layer(
    tree: ImageTree,
    feed: LayerFeed,
    index: int,
    wanted: set[str],
    heads: Callable[[str], bool] | None,
    where: str,
) -> None:
    reader = _TarReader(ByteReader(iter(feed)), where)
    layer: dict[str, Node] = {}
    contents: dict[str, bytes] = {}
    firsts: dict[str, bytes] = {}
    removed: set[str] = set()
    opaque: set[str] = set()
    for entry in reader.entries():
        path = _normalize(entry.path)
        if not path:
            continue
        parent, _, base = path.rpartition("/")
        if base == _OPAQUE:
            opaque.add(parent)
            continue
        if base.startswith(_WHITEOUT):
            removed.add(posixpath.join(parent, base[len(_WHITEOUT) :]))
            continue
        kind, size, link = entry.kind, entry.size, entry.linkname
        if kind == HARDLINK:
            # A hard link is another name of a file met before, in this layer or below.
            source = _normalize(link)
            target = layer.get(source) or tree.entries.get(source)
            kind, size, link = REGULAR, target.size if target else 0, ""
            data = contents.get(source, tree.contents.get(source))
            if path in wanted and data is not None:
                contents[path] = data
            first = firsts.get(source, tree.heads.get(source))
            if heads is not None and first is not None and heads(path):
                firsts[path] = first
        layer[path] = Node(kind, entry.mode, entry.uid, entry.gid, size, link, index)
        if entry.kind != REGULAR:
            continue
        if path in wanted and entry.size <= MAX_CONTENT:
            contents[path] = reader.content()
            if heads is not None and heads(path):
                firsts[path] = contents[path][:HEAD_BYTES]
        elif heads is not None and heads(path):
            first = b""
            for piece in reader.content_pieces():
                if len(first) < HEAD_BYTES:
                    first += piece[: HEAD_BYTES - len(first)]
            firsts[path] = first
    _apply_layer(tree, layer, contents, removed, opaque, firsts)
