"""Which units auto-update looks after, read from their Quadlet files.

A ``.container`` unit with ``AutoUpdate=registry`` or ``AutoUpdate=local``
becomes a :class:`Workload`: its image (through a ``.image`` unit when
``Image=`` names one), its update window (the labels
``io.atoll.autoupdate.window=CRON`` and ``io.atoll.autoupdate.timezone=ZONE``)
and the units it is ordered after.  See :mod:`atoll.workloads.autoupdate.updater`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from atoll.errors import AtollError
from atoll.updates.cron import CronExpression
from atoll.updates.window import Window
from atoll.workloads.unitfiles.quadlet import (
    ContainerOptions,
    ImageOptions,
    LoadResult,
    QuadletUnit,
)

WINDOW_LABEL = "io.atoll.autoupdate.window"
TIMEZONE_LABEL = "io.atoll.autoupdate.timezone"
_DEPENDENCY_KEYS = ("After", "Requires", "Wants", "BindsTo", "Requisite", "PartOf")


class AutoUpdatePolicy(StrEnum):
    REGISTRY = "registry"
    LOCAL = "local"


@dataclass(frozen=True)
class Workload:
    """A unit auto-update looks after, as its files declare it."""

    unit: str
    service: str
    image: str
    policy: str
    window: Window = field(default_factory=Window)
    #: Other units (names) this one is ordered after.
    after: tuple[str, ...] = ()
    #: Why the unit cannot be updated as declared (a bad window, an unknown policy).
    problem: str | None = None


def workloads_from(loaded: LoadResult) -> list[Workload]:
    """The container units that ask for auto-update, with their images resolved."""
    units = loaded.by_name()
    found: list[Workload] = []
    for unit in loaded.units:
        options = unit.options
        if not isinstance(options, ContainerOptions) or not options.auto_update:
            continue
        image = _image_of(options, units)
        problem = None
        if options.auto_update not in (AutoUpdatePolicy.REGISTRY, AutoUpdatePolicy.LOCAL):
            problem = f"AutoUpdate={options.auto_update} is not registry or local"
        labels = _labels(options.label)
        window = Window()
        if WINDOW_LABEL in labels:
            try:
                window = _window(labels[WINDOW_LABEL], labels.get(TIMEZONE_LABEL, "UTC"))
            except AtollError as exc:
                problem = f"{unit.path}: {WINDOW_LABEL}: {exc.message}"
        if not image:
            problem = f"{unit.path}: no Image="
        found.append(
            Workload(
                unit=unit.name,
                service=unit.service_name,
                image=image,
                policy=options.auto_update,
                window=window,
                after=_dependencies(unit, units),
                problem=problem,
            )
        )
    return found


def _image_of(options: ContainerOptions, units: Mapping[str, QuadletUnit]) -> str:
    image = options.image or ""
    if image.endswith(".image") and image in units:
        target = units[image].options
        if isinstance(target, ImageOptions):
            return target.image_tag or target.image or ""
    return image


def _labels(words: Iterable[str]) -> dict[str, str]:
    labels = {}
    for word in words:
        key, _, value = word.partition("=")
        labels[key] = value
    return labels


def _window(expression: str, zone_name: str) -> Window:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AtollError(f"unknown time zone {zone_name!r}") from None
    return Window(CronExpression.parse(expression, zone), zone_name)


def _dependencies(unit: QuadletUnit, units: Mapping[str, QuadletUnit]) -> tuple[str, ...]:
    by_service = {u.service_name: u.name for u in units.values()}
    names: list[str] = []
    for entry in unit.passthrough.get("Unit", ()):
        if entry.key in _DEPENDENCY_KEYS:
            for word in entry.value.split():
                name = by_service.get(word) or (word if word in units else None)
                if name and name != unit.name and name not in names:
                    names.append(name)
    return tuple(names)
