"""Container workloads: Quadlet units and the systemd services they become."""

from atoll.workloads.generate import GeneratedService, generate_services, write_services
from atoll.workloads.quadlet import (
    KEYS,
    LoadResult,
    ParseWarning,
    QuadletUnit,
    UnitKind,
    default_roots,
    load_units,
    parse_unit,
    split_words,
)

__all__ = [
    "KEYS",
    "GeneratedService",
    "LoadResult",
    "ParseWarning",
    "QuadletUnit",
    "UnitKind",
    "default_roots",
    "generate_services",
    "load_units",
    "parse_unit",
    "split_words",
    "write_services",
]
