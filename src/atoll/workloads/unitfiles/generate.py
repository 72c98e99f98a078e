"""Turn Quadlet units into the systemd ``.service`` units podman 5.4's Quadlet writes.

====================  ============================  ===========================
unit                  service                       ExecStart
====================  ============================  ===========================
NAME.container        NAME.service                  podman run --name ... IMAGE
NAME.kube             NAME.service                  podman kube play ... YAML
NAME.pod              NAME-pod.service              podman pod start (create in
                                                    ExecStartPre)
NAME.volume           NAME-volume.service           podman volume create
NAME.network          NAME-network.service          podman network create
NAME.image            NAME-image.service            podman image pull
NAME.build            NAME-build.service            podman build
====================  ============================  ===========================

``ServiceName=`` names the service instead. A reference to another unit
(``Network=db.network``, ``Volume=data.volume:/d``, ``Image=base.image``,
``Image=app.build``, ``Pod=app.pod``) becomes the resource's name on the command
line and ``Requires=``/``After=`` (``BindsTo=`` for a pod) in ``[Unit]``.
Units convert in podman's order (images, volumes and networks, builds,
containers and kubes, pods), each by :mod:`atoll.workloads.unitfiles.convert`.

``[Install]`` becomes what ``systemctl enable`` would make, as links beside
the services (what a systemd generator must write itself)::

    OUTDIR/web.service
    OUTDIR/default.target.wants/web.service  -> ../web.service   WantedBy=
    OUTDIR/x.target.requires/web.service     -> ../web.service   RequiredBy=
    OUTDIR/alias.service                     -> web.service      Alias=

A template ``NAME@.container`` is linked only with ``DefaultInstance=``, as
``NAME@INSTANCE.service``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from atoll.errors import AtollError, QuadletUnitError, from_oserror
from atoll.fsutil import write_atomic
from atoll.workloads.unitfiles.convert import CONVERTERS
from atoll.workloads.unitfiles.quadlet import (
    CONVERT_ORDER,
    LoadResult,
    QuadletUnit,
    UnitKind,
    split_words,
)
from atoll.workloads.unitfiles.service import (
    GeneratedService,
    Resolver,
    ServiceBuilder,
    command_line,
    quote_word,
)

__all__ = [
    "GeneratedService",
    "command_line",
    "generate_services",
    "install_links",
    "quote_word",
    "write_services",
]

log = logging.getLogger(__name__)


def _convert(unit: QuadletUnit, resolver: Resolver, *, user: bool) -> GeneratedService:
    svc = ServiceBuilder(unit, unit.service_name)
    if unit.default_dependencies:
        online = "podman-user-wait-network-online.service" if user else "network-online.target"
        svc.prepend("Unit", "After", online)
        svc.prepend("Unit", "Wants", online)
    if unit.kind is UnitKind.BUILD:
        svc.add("Unit", "RequiresMountsFor", "%t/containers")
    svc.add("Unit", "SourcePath", str(unit.path))
    CONVERTERS[unit.kind](svc, resolver)
    return svc.finish()


def generate_services(
    units: LoadResult | Sequence[QuadletUnit],
    *,
    user: bool = False,
    errors: list[AtollError] | None = None,
) -> tuple[GeneratedService, ...]:
    """The services for *units*, sorted by name; references must resolve among them.

    A unit that cannot be converted raises; with an *errors* list it is left
    out and its error appended there (what podman's quadlet does)."""
    all_units = units.units if isinstance(units, LoadResult) else tuple(units)
    resolver = Resolver({u.name: u for u in all_units})
    services: dict[str, GeneratedService] = {}
    for unit in sorted(all_units, key=lambda u: CONVERT_ORDER[u.kind]):
        try:
            service = _convert(unit, resolver, user=user)
        except AtollError as exc:
            if errors is None:
                raise
            log.error("%s", exc)
            errors.append(exc)
            continue
        services[service.name] = service
    return tuple(services[k] for k in sorted(services))


def install_links(service: GeneratedService) -> list[tuple[str, str]]:
    """``(link, target)`` pairs, relative to the output directory, for [Install]."""
    alias = [w for v in service.values("Install", "Alias") for w in split_words(v, unescape=False)]
    links = [os.path.normpath(a) for a in alias]
    name = service.name
    stem, dot, suffix = name.rpartition(".")
    prefix, at, instance = stem.partition("@")
    if at and not instance:
        default = service.values("Install", "DefaultInstance")
        name = f"{prefix}@{default[-1].rstrip().strip(chr(34))}{dot}{suffix}" if default else ""
    if name:
        for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
            for value in service.values("Install", key):
                for target in split_words(value, unescape=False):
                    if "/" not in target:
                        links.append(f"{target}.{kind}/{name}")
    return [(link, os.path.relpath(service.name, Path(link).parent)) for link in links]


def write_services(services: Iterable[GeneratedService], outdir: Path) -> list[Path]:
    """Write each service into *outdir* (each file replaced atomically) with the
    links its [Install] section asks for."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, str(outdir)) from exc
    written = []
    for service in services:
        path = outdir / service.name
        write_atomic(path, service.render().encode())
        written.append(path)
        for link, target in install_links(service):
            _symlink(outdir, link, target)
    return written


def _symlink(outdir: Path, link: str, target: str) -> None:
    path = outdir / link
    if not path.resolve().is_relative_to(outdir.resolve()):
        raise QuadletUnitError(f"{link}: an [Install] link would leave {outdir}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")
        staged.unlink(missing_ok=True)
        staged.symlink_to(target)
        staged.replace(path)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
