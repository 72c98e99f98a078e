"""Logically bound images: the container images an OS image declares it needs.

bootc's layout, read from the root of a deployment (never from the host)::

    /usr/lib/bootc/bound-images.d/
    ├── 10-web.container -> /usr/share/containers/systemd/web.container
    └── 20-base.image    -> ../../../share/containers/systemd/base.image

Each entry is a symlink to a Quadlet ``.container`` or ``.image`` file; its
``Image=`` is the image to pull.  Links are resolved inside the deployment
(an absolute target is relative to the deployment's root), and the image
name must be fully qualified (``registry.example.com/app:1`` or
``…@sha256:…``): what the workloads will run is decided by the OS image, not
by the host's search registries.  A ``.container`` whose ``Image=`` names a
``NAME.image`` unit is refused, as bootc does: link the ``.image`` file.

When an update is staged, the images are pulled into the host's container
storage (one ``podman pull`` for all; an image named by digest that is
already there is not pulled again), so the new deployment starts its
workloads without network.  A failed pull fails the staging; a host without
podman stages with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from atoll import strictjson
from atoll.errors import AtollError, BoundImageError, ToolMissingError
from atoll.progress import ProgressSink
from atoll.workloads.autoupdate.localimages import Podman
from atoll.workloads.unitfiles.quadlet import ContainerOptions, ImageOptions, parse_unit

log = logging.getLogger(__name__)

BOUND_IMAGES_DIR = "usr/lib/bootc/bound-images.d"
#: The annotation an OCI layout names its images by.
REF_NAME = "org.opencontainers.image.ref.name"
_MAX_LINKS = 40


@dataclass(frozen=True)
class BoundImage:
    #: The entry in bound-images.d.
    entry: str
    #: The unit file it points to, as a path inside the deployment.
    unit: str
    image: str


def find_bound_images(root: Path) -> list[BoundImage]:
    """The images the tree at *root* binds, in entry-name order (duplicates kept once)."""
    directory = root / BOUND_IMAGES_DIR
    if not directory.is_dir():
        return []
    found: list[BoundImage] = []
    seen: set[str] = set()
    for entry in sorted(directory.iterdir()):
        where = f"/{BOUND_IMAGES_DIR}/{entry.name}"
        if not entry.name.endswith((".container", ".image")):
            raise BoundImageError(
                f"{where}: not a .container or .image link",
                hint="bound-images.d holds symlinks to Quadlet .container or .image files",
            )
        if not entry.is_symlink():
            raise BoundImageError(
                f"{where}: not a symlink",
                hint="link the unit file, e.g. ln -s /usr/share/containers/systemd/web.container",
            )
        inside = _resolve(root, entry)
        target = root / inside.lstrip("/")
        if not target.is_file():
            raise BoundImageError(f"{where}: points to {inside}, which does not exist")
        image = _image_of(target, inside, where)
        if image not in seen:
            seen.add(image)
            found.append(BoundImage(entry.name, inside, image))
    return found


def _resolve(root: Path, link: Path) -> str:
    """Where *link* leads, as an absolute path inside *root* (symlinks followed there)."""
    parts = [p for p in str(link.relative_to(root)).split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                raise BoundImageError(f"/{link.relative_to(root)}: too many levels of symlinks")
            target = str(candidate.readlink())
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def _image_of(target: Path, inside: str, where: str) -> str:
    try:
        unit, _ = parse_unit(target)
    except AtollError as exc:
        raise BoundImageError(f"{where}: {inside}: {exc.message}") from None
    options = unit.options
    image = options.image if isinstance(options, ContainerOptions | ImageOptions) else None
    if not image:
        raise BoundImageError(f"{where}: {inside} has no Image=")
    if image.endswith(".image"):
        raise BoundImageError(
            f"{where}: {inside} runs {image}, another unit",
            hint=f"link {image} itself into bound-images.d",
        )
    first, sep, _ = image.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        raise BoundImageError(
            f"{where}: {inside}: Image={image} is not fully qualified",
            hint="bound images name their registry, e.g. registry.example.com/app:1",
        )
    return image


def _layout_refs(layout: Path | None) -> set[str]:
    """The image names an OCI layout holds (``org.opencontainers.image.ref.name``)."""
    if layout is None or not (layout / "index.json").is_file():
        return set()
    try:
        index = strictjson.loads((layout / "index.json").read_bytes())
        return {
            str(m["annotations"][REF_NAME])
            for m in index.get("manifests", [])
            if REF_NAME in (m.get("annotations") or {})
        }
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BoundImageError(f"{layout}: cannot read the bound images' layout: {exc}") from None


def pull_bound_images(
    root: Path,
    *,
    podman: Podman | None = None,
    progress: ProgressSink | None = None,
    layout: Path | None = None,
) -> list[BoundImage]:
    """Pull what the deployment at *root* binds into the host's container storage.

    An image that the OCI layout *layout* holds under its name (what
    ``atoll bundle apply`` unpacks) is taken from there, without network, and
    tagged with its name; the others come from their registries.  Returns the
    images pulled (none when it binds none, or when podman is missing: then a
    warning is logged and the workloads pull at first start)."""
    images = find_bound_images(root)
    if not images:
        return []
    podman = podman or Podman()
    try:
        podman.binary  # noqa: B018 - find podman before anything else
    except ToolMissingError:
        log.warning(
            "%d bound image(s) of the new deployment not pulled: podman is not installed; "
            "its workloads will pull them when they first start",
            len(images),
        )
        return []
    wanted = [b for b in images if "@" not in b.image or not podman.exists(b.image)]
    if not wanted:
        return []
    if progress is not None:
        progress.begin("bound-images", "pulling bound images", "bound-images", len(wanted))
        for bound in wanted:
            progress.subtask(bound.image, "image", f"pulling {bound.image}", 0)
    local = _layout_refs(layout)
    try:
        for bound in wanted:
            if bound.image in local:
                (image_id,) = podman.pull([f"oci:{layout}:{bound.image}"])
                if "@" not in bound.image:
                    podman.tag(image_id, bound.image)
        podman.pull([b.image for b in wanted if b.image not in local])
    except AtollError as exc:
        if progress is not None:
            progress.end(False)
        names = ", ".join(b.image for b in wanted)
        raise BoundImageError(
            f"pulling the bound images {names} failed: {exc.message}",
            hint="the update was not staged; check the network and the image names in "
            f"/{BOUND_IMAGES_DIR}",
        ) from None
    if progress is not None:
        for bound in wanted:
            progress.done(bound.image)
        progress.end(True)
    return wanted
