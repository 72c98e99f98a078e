"""OCI and Docker manifests, indexes, image configs and platform selection.

Parsing is strict about what atoll relies on (digests, sizes, media types) and
lenient about the rest, which is carried through untouched: a copy without a
format change writes the very bytes it read, so digests are preserved.
"""

# No "from __future__ import annotations" here: NamedTuple types each field from
# its annotation, and compiles a string one when the class is made (about 20 µs a
# field, at every start of an image copy; tests/cli/test_imports.py).
import json
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from atoll import strictjson
from atoll.errors import ManifestError, NoMatchingPlatformError, UnsupportedError
from atoll.oci.digest import Digest


class MediaType(StrEnum):
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


IMAGE_MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
#: What atoll sends in ``Accept`` when fetching a manifest.
ACCEPT_MANIFEST = ", ".join(
    [
        MediaType.OCI_INDEX,
        MediaType.OCI_MANIFEST,
        MediaType.DOCKER_LIST,
        MediaType.DOCKER_MANIFEST,
    ]
)


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def layer_compression(media_type: str) -> Compression:
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        return Compression.GZIP
    if media_type.endswith("+zstd"):
        return Compression.ZSTD
    return Compression.NONE


def is_layer(media_type: str) -> bool:
    return ".layer." in media_type or "rootfs" in media_type


class Platform(NamedTuple):
    """An OS and architecture, as an index entry or a config names them."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``linux/arm64/v8`` style, as podman's ``--platform`` takes it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UnsupportedError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> "Platform":
        machine = os.uname().machine.lower()  # platform.machine()'s answer on Linux
        arch, variant = _GOARCH.get(machine, (machine, None))
        return cls("linux", arch, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out


_GOARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


#: The empty annotations of a descriptor that has none (read-only: one is shared by all).
NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})


class Descriptor(NamedTuple):
    """A reference to a blob or a manifest: media type, digest and size."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = NO_ANNOTATIONS
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Descriptor":
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: descriptor is not an object")
        try:
            media_type = data["mediaType"]
            digest_text = data["digest"]
            size = data["size"]
        except KeyError as exc:
            raise ManifestError(f"{where}: descriptor has no {exc.args[0]!r}") from None
        if not isinstance(media_type, str) or not isinstance(digest_text, str):
            raise ManifestError(f"{where}: mediaType and digest must be strings")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: size must be a non-negative integer")
        try:
            digest = Digest.parse(digest_text)
        except Exception as exc:
            raise ManifestError(f"{where}: {exc}") from None
        plat = None
        raw_platform = data.get("platform")
        if isinstance(raw_platform, dict):
            plat = Platform(
                str(raw_platform.get("os", "")),
                str(raw_platform.get("architecture", "")),
                raw_platform.get("variant") or None,
                raw_platform.get("os.version") or None,
            )
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ManifestError(f"{where}: annotations must be an object")
        urls = data.get("urls") or []
        return cls(media_type, digest, size, plat, dict(annotations), tuple(urls))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out


class ImageManifest(NamedTuple):
    """An OCI image manifest or a Docker schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]
    raw: bytes

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


class ImageIndex(NamedTuple):
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str]
    raw: bytes

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def select(self, want: Platform | None = None) -> Descriptor:
        want = want or Platform.host()
        candidates = [
            d
            for d in self.manifests
            if d.platform is not None
            and d.platform.os == want.os
            and d.platform.architecture == want.architecture
        ]
        if want.variant:
            exact = [d for d in candidates if d.platform and d.platform.variant == want.variant]
            if exact:
                return exact[0]
            # arm64 images usually omit the "v8" variant that the host reports.
            if want.architecture == "arm64" and want.variant == "v8":
                plain = [d for d in candidates if d.platform and not d.platform.variant]
                if plain:
                    return plain[0]
            candidates = []
        if candidates:
            return candidates[0]
        offered = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise NoMatchingPlatformError(
            f"no image for platform {want} in the index (offered: {offered})",
            hint="choose one with --override-os/--override-arch, or copy them all with --all",
        )


AnyManifest = ImageManifest | ImageIndex


def detect_media_type(data: Mapping[str, Any]) -> str:
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if data.get("schemaVersion") == 1:
        return MediaType.DOCKER_SCHEMA1
    if "manifests" in data:
        return MediaType.OCI_INDEX
    if "config" in data or "layers" in data:
        return MediaType.OCI_MANIFEST
    return ""


def parse_manifest(raw: bytes, media_type: str | None = None, *, where: str) -> AnyManifest:
    """Parse manifest bytes; *media_type* is what the transport said, if anything."""
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise ManifestError(f"{where}: manifest {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: manifest is not a JSON object")
    inner = detect_media_type(data)
    declared = media_type if media_type and media_type in MANIFEST_TYPES else None
    kind = inner if inner in MANIFEST_TYPES else declared or inner
    if declared and inner in MANIFEST_TYPES and inner != declared:
        raise ManifestError(f"{where}: served as {declared} but the manifest says {inner}")
    if kind in (MediaType.DOCKER_SCHEMA1, MediaType.DOCKER_SCHEMA1_SIGNED):
        raise UnsupportedError(
            f"{where}: Docker schema 1 manifests are not supported",
            hint="re-push the image with a current tool to get a schema 2 or OCI manifest",
        )
    if data.get("schemaVersion") != 2:
        raise ManifestError(f"{where}: schemaVersion must be 2")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{where}: annotations must be an object")
    if kind in INDEX_TYPES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError(f"{where}: index has no 'manifests' list")
        manifests = tuple(
            Descriptor.from_json(d, f"{where}: manifests[{i}]") for i, d in enumerate(entries)
        )
        return ImageIndex(kind, manifests, annotations, raw)
    if kind in IMAGE_MANIFEST_TYPES:
        if "config" not in data:
            raise ManifestError(f"{where}: manifest has no 'config'")
        config = Descriptor.from_json(data["config"], f"{where}: config")
        layers_json = data.get("layers")
        if not isinstance(layers_json, list):
            raise ManifestError(f"{where}: manifest has no 'layers' list")
        layers = tuple(
            Descriptor.from_json(d, f"{where}: layers[{i}]") for i, d in enumerate(layers_json)
        )
        return ImageManifest(kind, config, layers, annotations, raw)
    raise UnsupportedError(f"{where}: unsupported manifest media type {kind or 'unknown'!r}")


class ImageConfig(NamedTuple):
    """The parts of an image config atoll reads; the raw JSON is kept."""

    architecture: str
    os: str
    variant: str | None
    created: str | None
    labels: Mapping[str, str]
    diff_ids: tuple[Digest, ...]
    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    raw: bytes

    @property
    def version(self) -> str | None:
        return self.labels.get("org.opencontainers.image.version")

    @property
    def bootable(self) -> bool:
        return self.labels.get("containers.bootc") == "1"

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


def parse_config(raw: bytes, *, where: str) -> ImageConfig:
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise ManifestError(f"{where}: image config {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: image config is not a JSON object")
    # Each field has the type containers/image decodes it into; a value of another
    # type is refused there, so it is here, instead of being shown as its repr.
    inner = _typed(data, "config", dict, where) or {}
    labels = _typed(inner, "Labels", dict, where, "config.") or {}
    for key, value in labels.items():
        if value is not None and not isinstance(value, str):
            raise ManifestError(
                f"{where}: image config: config.Labels[{json.dumps(key)}] must be a string, "
                f"not {type(value).__name__}"
            )
    rootfs = _typed(data, "rootfs", dict, where) or {}
    diff_ids_json = _string_list(rootfs, "diff_ids", where, "rootfs.")
    try:
        diff_ids = tuple(Digest.parse(d) for d in diff_ids_json)
    except Exception as exc:
        raise ManifestError(f"{where}: rootfs.diff_ids: {exc}") from None
    created = _typed(data, "created", str, where)
    if created is not None and not _is_rfc3339(created):
        raise ManifestError(
            f"{where}: image config: created {created!r} is not an RFC 3339 date and time"
        )
    return ImageConfig(
        architecture=_typed(data, "architecture", str, where) or "",
        os=_typed(data, "os", str, where) or "",
        variant=_typed(data, "variant", str, where) or None,
        created=created,
        labels={k: v for k, v in labels.items() if v is not None},
        diff_ids=diff_ids,
        env=_string_list(inner, "Env", where, "config."),
        entrypoint=_string_list(inner, "Entrypoint", where, "config."),
        cmd=_string_list(inner, "Cmd", where, "config."),
        raw=raw,
    )


#: Compiled on first use (re caches it), not at start-up.
_RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"


def _is_rfc3339(text: str) -> bool:
    """As Go's time.RFC3339Nano parses it (which containers/image uses)."""
    if not re.fullmatch(_RFC3339, text):
        return False
    import datetime  # only configs are checked: a copy that reads none does not load it

    try:
        # fromisoformat takes at most 6 fractional digits; Go takes nine.
        whole, _, rest = text.partition(".")
        zone = rest.lstrip("0123456789") if rest else ""
        datetime.datetime.fromisoformat((whole + zone).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _typed(data: Mapping[str, Any], key: str, kind: type, where: str, prefix: str = "") -> Any:
    """``data[key]`` if it is a *kind* or null (None when absent)."""
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        expected = {"dict": "an object", "list": "an array", "str": "a string"}[kind.__name__]
        raise ManifestError(
            f"{where}: image config: {prefix}{key} must be {expected}, not {type(value).__name__}"
        )
    return value


def _string_list(data: Mapping[str, Any], key: str, where: str, prefix: str) -> tuple[str, ...]:
    items = _typed(data, key, list, where, prefix) or []
    if not all(isinstance(item, str) for item in items):
        raise ManifestError(f"{where}: image config: {prefix}{key} must hold strings only")
    return tuple(items)


#: The config media types of a runnable image (an OS image is one).
IMAGE_CONFIG_TYPES = frozenset({MediaType.OCI_CONFIG.value, MediaType.DOCKER_CONFIG.value})


def require_image_config(manifest: ImageManifest, where: str) -> None:
    """Refuse a manifest whose config is not an image config (an artifact's, or
    the empty descriptor): it describes no file system to boot."""
    media_type = str(manifest.config.media_type)
    if media_type not in IMAGE_CONFIG_TYPES:
        raise ManifestError(
            f"{where}: not an OS image: its config has media type {media_type!r}, "
            f"not {MediaType.OCI_CONFIG.value!r}",
            hint="this is an artifact (or a signature), not a container image",
        )


def canonical_json(data: Any) -> bytes:
    """Bytes atoll writes for a document it generates (not for ones it copies)."""
    return json.dumps(data, indent=None, separators=(",", ":"), sort_keys=False).encode()
