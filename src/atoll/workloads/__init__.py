"""Container workloads: Quadlet units and the systemd services they become.

Every name is imported on first use: the units, the generated services, the
managers, the supervisor, auto-update and bound images.  Importing them all
would double the start-up time of ``atoll workload list``, and the
supervisor's control socket opens before the unit files' modules load
(supervise/controlserver.py).
"""

from __future__ import annotations

from atoll.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from atoll.workloads.autoupdate.units import Workload, workloads_from
    from atoll.workloads.autoupdate.updater import (
        AutoUpdateOptions,
        AutoUpdater,
        AutoUpdateResult,
        Updated,
        run_auto_update,
    )
    from atoll.workloads.bound import BoundImage, find_bound_images, pull_bound_images
    from atoll.workloads.control import (
        Health,
        SupervisorClient,
        UnitManager,
        UnitState,
        UnitStatus,
    )
    from atoll.workloads.supervise.supervisor import Supervisor
    from atoll.workloads.systemd import SystemdManager
    from atoll.workloads.unitfiles.generate import (
        GeneratedService,
        generate_services,
        write_services,
    )
    from atoll.workloads.unitfiles.quadlet import (
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

#: The names imported on first use, by the module that defines them.
_LAZY = {
    "autoupdate.updater": (
        "AutoUpdateOptions",
        "AutoUpdater",
        "AutoUpdateResult",
        "Updated",
        "run_auto_update",
    ),
    "bound": ("BoundImage", "find_bound_images", "pull_bound_images"),
    "unitfiles.generate": ("GeneratedService", "generate_services", "write_services"),
    "unitfiles.quadlet": (
        "KEYS",
        "LoadResult",
        "ParseWarning",
        "QuadletUnit",
        "UnitKind",
        "default_roots",
        "load_units",
        "parse_unit",
        "split_words",
    ),
    "control": (
        "Health",
        "SupervisorClient",
        "UnitManager",
        "UnitState",
        "UnitStatus",
    ),
    "systemd": ("SystemdManager",),
    "supervise.supervisor": ("Supervisor",),
    "autoupdate.units": ("Workload", "workloads_from"),
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "KEYS",
    "AutoUpdateOptions",
    "AutoUpdateResult",
    "AutoUpdater",
    "BoundImage",
    "GeneratedService",
    "Health",
    "LoadResult",
    "ParseWarning",
    "QuadletUnit",
    "Supervisor",
    "SupervisorClient",
    "SystemdManager",
    "UnitKind",
    "UnitManager",
    "UnitState",
    "UnitStatus",
    "Updated",
    "Workload",
    "default_roots",
    "find_bound_images",
    "generate_services",
    "load_units",
    "parse_unit",
    "pull_bound_images",
    "run_auto_update",
    "split_words",
    "workloads_from",
    "write_services",
]
