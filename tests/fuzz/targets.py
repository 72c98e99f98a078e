"""Fuzz targets: one function per parser, taking any bytes.

The property every target checks: the parser returns a value or raises an
:class:`atoll.errors.AtollError` (the clean refusal a user sees with its exit
code); any other exception escapes the target and is a finding.  Where a
parser has a writer, the target also checks the round trip.  Hangs are found
by the runner's time limit per input (tests/fuzz/run.py).

The targets take plain bytes so that atheris (tests/fuzz/run.py) and the
replay of the kept corpus (tests/fuzz/test_fuzz.py) drive them alike; they
import nothing from atheris.  Files a parser reads by path are written to a
scratch directory (on tmpfs when there is one: millions of inputs).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from atoll.errors import AtollError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import (
    Descriptor,
    ImageManifest,
    MediaType,
    parse_config,
    parse_manifest,
    require_image_config,
)
from atoll.oci.transports.base import ImageSource

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}


@functools.cache
def scratch() -> Path:
    """A directory for the files of this process's inputs: the one the runner
    made and removes (libFuzzer ends the process without atexit handlers), or
    a fresh one removed at exit."""
    given = os.environ.get("ATOLL_FUZZ_SCRATCH")
    if given:
        return Path(given)
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="atoll-fuzz-", dir=str(shm) if shm.is_dir() else None))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def target(fn: Target) -> Target:
    TARGETS[fn.__name__] = fn
    return fn


def _file(name: str, data: bytes) -> Path:
    path = scratch() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _pieces(data: bytes) -> list[bytes]:
    """*data* cut into pieces whose size its first byte chooses (readers must
    not depend on how a stream is cut)."""
    if not data:
        return []
    size = (data[0] % 16) * 37 + 1 if data[0] < 128 else len(data)
    body = data[1:]
    return [body[i : i + size] for i in range(0, len(body), size)]


# --- the tar stream and the importer ------------------------------------------------------


@target
def tar(data: bytes) -> None:
    from atoll.store.tarstream import ByteReader, TarReader

    reader = TarReader(ByteReader(iter(_pieces(data))), "fuzz")
    with contextlib.suppress(AtollError):
        for n, entry in enumerate(reader.entries()):
            if n % 2:
                reader.content()
            else:
                for _ in reader.content_pieces():
                    pass
            assert isinstance(entry.path, str)


@target
def compression(data: bytes) -> None:
    """gzip and zstd layer streams (the first byte picks), cut into pieces;
    the output is read up to 64 MiB (a bomb is the expand limit's business)."""
    from atoll.oci.compression import decompress
    from atoll.oci.manifest import Compression

    kind = Compression.GZIP if data[:1] in (b"", b"g") else Compression.ZSTD
    expanded = 0
    with contextlib.suppress(AtollError):
        for piece in decompress(iter(_pieces(data[1:])), kind, limit=1 << 16):
            expanded += len(piece)
            if expanded > 64 << 20:
                break


class MemorySource(ImageSource):
    """An image held in memory (blobs by digest)."""

    description = "fuzz"

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        raise AssertionError("the importer is handed the manifest")

    @contextlib.contextmanager
    def _open(self, desc: Descriptor) -> Iterator[Iterator[bytes]]:
        yield iter([self.blobs[desc.digest]])

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        return self._open(desc)


_store_imports = itertools.count()


def _scratch_store() -> object:
    """A store on the scratch directory, made anew now and then so that it stays small."""
    from atoll.fsutil import remove_tree
    from atoll.store import Store

    path = scratch() / "store"
    if next(_store_imports) % 500 == 0 and path.exists():
        remove_tree(path)
    return Store.create(path)


@target
def importer(data: bytes) -> None:
    """One or two uncompressed layers (the first two bytes say where the second starts)."""
    from atoll.store import Store

    cut = int.from_bytes(data[:2], "big") * 512 if len(data) >= 2 else 0
    body = data[2:]
    layers = [body[:cut], body[cut:]] if 0 < cut < len(body) else [body]
    blobs = {Digest.of(layer): layer for layer in layers}
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(la)) for la in layers]},
        }
    ).encode()
    blobs[Digest.of(config)] = config
    manifest_raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG,
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": MediaType.OCI_LAYER,
                    "digest": str(Digest.of(la)),
                    "size": len(la),
                }
                for la in layers
            ],
        }
    ).encode()
    manifest = parse_manifest(manifest_raw, MediaType.OCI_MANIFEST, where="fuzz")
    assert isinstance(manifest, ImageManifest)
    store = _scratch_store()
    assert isinstance(store, Store)
    with contextlib.suppress(AtollError):
        store.import_image(
            MemorySource(blobs),
            manifest,
            config,
            image="fuzz",
            manifest_digest=Digest.of(manifest_raw),
        )


# --- OCI documents ------------------------------------------------------------------------

_MEDIA_TYPES: list[str | None] = [None, *MediaType]


@target
def manifest(data: bytes) -> None:
    """Manifests and indexes (the first byte picks the declared media type), and configs."""
    media_type = _MEDIA_TYPES[data[0] % len(_MEDIA_TYPES)] if data else None
    raw = data[1:]
    with contextlib.suppress(AtollError):
        parsed = parse_manifest(raw, media_type, where="fuzz")
        if isinstance(parsed, ImageManifest):
            require_image_config(parsed, "fuzz")
    with contextlib.suppress(AtollError):
        parse_config(raw, where="fuzz")


@target
def reference(data: bytes) -> None:
    """Image references and transport names (``docker://…``, ``oci:DIR:REF``, …)."""
    from atoll.oci.reference import ImageReference
    from atoll.oci.transports import ImageName

    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(AtollError):
        ref = ImageReference.parse(text)
        assert ImageReference.parse(str(ref)) == ref, (text, str(ref))
    with contextlib.suppress(AtollError):
        ImageName.parse(text)


# --- configuration files ------------------------------------------------------------------


@target
def policy(data: bytes) -> None:
    from atoll.oci.transports import ImageName
    from atoll.pipeline.policy import parse_policy, requirements_for

    with contextlib.suppress(AtollError):
        parsed = parse_policy(data, "fuzz")
        for name in ("docker://registry.example:5000/ns/app:1", "oci:/srv/layout:app"):
            requirements_for(parsed, ImageName.parse(name))
        for requirement in parsed.default:
            # keyData is read from the input; a keyPath would read any file of this machine.
            if requirement.key_datas and not requirement.key_paths:
                with contextlib.suppress(AtollError):
                    requirement.public_keys()


_QUADLET_KINDS = ("container", "pod", "volume", "network", "image", "kube", "build")


@target
def quadlet(data: bytes) -> None:
    """A unit (the first byte picks its kind) with, when the input holds a NUL, a drop-in."""
    from atoll.workloads import generate_services, parse_unit

    kind = _QUADLET_KINDS[data[0] % len(_QUADLET_KINDS)] if data else "container"
    main, _, dropin = data[1:].partition(b"\0")
    path = _file(f"app.{kind}", main)
    dropins = [_file(f"app.{kind}.d/10.conf", dropin)] if dropin else []
    try:
        unit, _ = parse_unit(path, dropins)
        services = generate_services([unit])
    except AtollError:
        return
    for service in services:
        # No value may start a line of its own in the service file.
        lines = service.render().splitlines()
        expected = 1 + sum(1 + len(pairs) for _, pairs in service.sections)
        assert len(lines) == expected + len(service.sections) - 1, lines


_FROM = re.compile(r"\s*FROM\s", re.IGNORECASE)


@target
def blueprint(data: bytes) -> None:
    from atoll.build.blueprint import load_blueprint
    from atoll.build.containerfile import Family, blueprint_context

    try:
        parsed = load_blueprint(_file("blueprint.toml", data))
    except AtollError:
        return
    for family in Family:
        try:
            context = blueprint_context(
                parsed, "registry.example/base:1", family, hash_password=lambda _: "$6$s$h"
            )
        except AtollError:
            continue
        # No value may start a build stage of its own (issue: a name that wrote FROM).
        lines = context.containerfile.splitlines()
        assert sum(bool(_FROM.match(line)) for line in lines) == 1, context.containerfile


@target
def updates(data: bytes) -> None:
    from atoll.updates.config import config_path, load_config

    root = scratch() / "updates-root"
    path = config_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with contextlib.suppress(AtollError):
        load_config(root)


@target
def registries(data: bytes) -> None:
    from atoll.oci.registries_conf import load_registries_conf

    path = _file("registries.conf", data)
    with contextlib.suppress(AtollError):
        load_registries_conf(SystemContext(registries_conf=path))


@target
def auth(data: bytes) -> None:
    """auth.json (or, after a first byte ``d``, .dockercfg), and WWW-Authenticate headers."""
    from atoll.oci.auth import parse_www_authenticate, read_auth_entries

    name, text = (".dockercfg", data[1:]) if data[:1] == b"d" else ("auth.json", data)
    with contextlib.suppress(AtollError):
        read_auth_entries(_file(name, text))
    headers = data.decode("latin-1").split("\n")
    with contextlib.suppress(AtollError):
        parse_www_authenticate(headers)


# --- bundles and the boot loader ----------------------------------------------------------


def _layout_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of *files* (what bundle create writes)."""
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            out.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def _bundle_from_parts(data: bytes) -> bytes:
    """A bundle whose blobs the input gives and whose digests the target computes
    (a fuzzer cannot): parts split at NUL: the description, a signature payload,
    the signature manifest and the bundle manifest; ``@D0@`` … ``@D2@`` in a
    later part stand for the digests of the earlier ones."""
    parts = [*data.split(b"\0", 3), b"", b"", b"", b""][:4]
    blobs: list[bytes] = []
    for part in parts:
        blob = part
        for i, done in enumerate(blobs):
            blob = blob.replace(f"@D{i}@".encode(), str(Digest.of(done)).encode())
        blobs.append(blob)
    signature_manifest, top = blobs[2], blobs[3]
    entries = [("atoll-bundle", top), ("atoll-bundle.sig", signature_manifest)]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MediaType.OCI_MANIFEST,
                "digest": str(Digest.of(blob)),
                "size": len(blob),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
            for name, blob in entries
        ],
    }
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps(index).encode(),
    }
    for blob in blobs:
        files[f"blobs/sha256/{Digest.of(blob).hex}"] = blob
    return _layout_tar(files)


@target
def bundle(data: bytes) -> None:
    """A bundle file (an oci-archive): its index, manifest, description,
    signatures and blobs.  An input that starts with ``{`` is the bundle's
    blobs (see _bundle_from_parts); any other is the file itself."""
    from atoll.pipeline.bundle import BundleReader
    from atoll.pipeline.sigstore import parse_payload

    path = _file("bundle.tar", _bundle_from_parts(data) if data[:1] == b"{" else data)
    with contextlib.suppress(AtollError), BundleReader(path, SystemContext(tmpdir=scratch())) as b:
        b.info()
        # What bundle apply reads next: the signatures, then every other blob.
        for name in b.entries:
            for sig in (b.attached(name) or []) if name.endswith(".sig") else []:
                sig.signature_bytes()
                with contextlib.suppress(AtollError):
                    parse_payload(sig.payload)
        b.verify_rest()


@target
def grubenv(data: bytes) -> None:
    """An environment block, as given and padded to its size; what parses
    and can be written again reads back the same."""
    from atoll.sysroot.bootloader.grubenv import ENVBLK_SIZE, SIGNATURE, format_grubenv
    from atoll.sysroot.bootloader.grubenv import parse_grubenv as parse

    padded = (SIGNATURE + data)[:ENVBLK_SIZE]
    padded += b"#" * (ENVBLK_SIZE - len(padded))
    for block in (data, padded):
        try:
            variables = parse(block)
            written = format_grubenv(variables)
        except AtollError:
            continue
        assert parse(written) == variables, (variables, written)


def digest_name(data: bytes) -> str:
    """The file name a corpus entry gets (as libFuzzer names them)."""
    return hashlib.sha1(data).hexdigest()
