"""The workload manager of hosts whose services systemd runs: ``systemctl
show/start/stop/restart`` for the state and the jobs, ``podman inspect`` for the
container, answering as a :class:`~atoll.workloads.control.UnitManager`."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

from atoll.errors import AtollError, StartLimitHitError, UnitFailedError, UnknownUnitError
from atoll.run import find_tool, run
from atoll.timeutil import utc_timestamp
from atoll.workloads.control import Health, JobVerbs, UnitState, UnitStatus, error_for
from atoll.workloads.supervise.runtime import inspect_container
from atoll.workloads.unitfiles.quadlet import ContainerOptions, QuadletUnit, load_units
from atoll.workloads.unitfiles.service import container_name

#: What ``systemctl show`` is asked for.
SYSTEMD_PROPERTIES = (
    "Id",
    "ActiveState",
    "SubState",
    "Result",
    "NRestarts",
    "MainPID",
    "ExecMainStatus",
    "StateChangeTimestamp",
)
_SYSTEMD_STATES = {s.value: s for s in UnitState}
# systemd states the supervisor never reports, mapped to the nearest it does.
_SYSTEMD_STATES.update(
    {"reloading": UnitState.ACTIVE, "refreshing": UnitState.ACTIVE, "maintenance": UnitState.FAILED}
)


def parse_systemctl_show(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``systemctl show`` as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            values[key] = value
    return values


def systemd_timestamp(text: str) -> str:
    """``Sun 2026-11-22 03:25:29 UTC`` (``--timestamp=utc``) as ISO-8601 UTC; "" if unset."""
    words = text.split()
    if len(words) >= 3 and words[-1] == "UTC":
        try:
            parsed = datetime.datetime.strptime(f"{words[-3]} {words[-2]}", "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return text
        return utc_timestamp(parsed)
    return text


def _text(value: object) -> str | None:
    """A non-empty string field of ``podman inspect``, or None."""
    return value if isinstance(value, str) and value else None


def status_from_systemd(
    show: Mapping[str, str],
    *,
    unit: str,
    name: str,
    service: str,
    container: str,
    image: str,
    kind: str,
    inspect: Mapping[str, object] | None,
) -> UnitStatus:
    """A UnitStatus from ``systemctl show`` values and ``podman inspect`` of the container."""
    state = _SYSTEMD_STATES.get(show.get("ActiveState", ""), UnitState.INACTIVE)
    main_pid = int(show.get("MainPID") or 0) or None
    exit_status = show.get("ExecMainStatus", "")
    container_id = image_id = None
    health = Health.NONE
    if inspect and state in (UnitState.ACTIVE, UnitState.ACTIVATING, UnitState.DEACTIVATING):
        container_id = _text(inspect.get("Id"))
        image_id = _text(inspect.get("Image"))
        container_state = inspect.get("State")
        if not isinstance(container_state, Mapping):
            container_state = {}
        health_info = container_state.get("Health") or container_state.get("Healthcheck") or {}
        raw_health = health_info.get("Status") if isinstance(health_info, dict) else None
        if raw_health in {h.value for h in Health}:
            health = Health(raw_health)
    return UnitStatus(
        unit=unit,
        name=name,
        service=service,
        state=state,
        result=show.get("Result") or "success",
        container=container,
        container_id=container_id,
        image=image,
        image_id=image_id,
        health=health,
        restarts=int(show.get("NRestarts") or 0),
        since=systemd_timestamp(show.get("StateChangeTimestamp", "")),
        main_pid=main_pid,
        exit_status=int(exit_status) if exit_status.isdigit() else None,
        kind=kind,
    )


class SystemdManager(JobVerbs):
    """Units run by systemd from the services Quadlet generated; a :class:`UnitManager`."""

    def __init__(self, roots: Sequence[Path] | None = None, *, user: bool = False) -> None:
        self.roots = roots
        self.user = user

    def _systemctl(self, *args: str, timeout: float | None = 120.0) -> str:
        argv = [find_tool("systemctl", "systemd"), *(["--user"] if self.user else []), *args]
        return run(argv, timeout=timeout).stdout.decode(errors="replace")

    def units(self) -> list[QuadletUnit]:
        return list(load_units(self.roots, user=self.user).units)

    def _resolve(self, name: str) -> QuadletUnit:
        units = self.units()
        for unit in units:
            if name in (unit.name, unit.stem, unit.service_name):
                return unit
        raise UnknownUnitError(
            f"no workload unit named {name!r}", hint="atoll workload list shows the units"
        )

    def _status_of(self, unit: QuadletUnit) -> UnitStatus:
        show = parse_systemctl_show(
            self._systemctl(
                "show",
                "--timestamp=utc",
                "--property=" + ",".join(SYSTEMD_PROPERTIES),
                unit.service_name,
            )
        )
        container = image = ""
        inspect = None
        if isinstance(unit.options, ContainerOptions):
            service_stem = unit.service_name.removesuffix(".service")
            container = container_name(unit).replace("%N", service_stem)
            image = unit.options.image or ""
            inspect = inspect_container(container)
        return status_from_systemd(
            show,
            unit=unit.name,
            name=unit.stem,
            service=unit.service_name,
            container=container,
            image=image,
            kind=unit.kind.value,
            inspect=inspect,
        )

    def status(self, unit: str) -> UnitStatus:
        return self._status_of(self._resolve(unit))

    def status_all(self, unit: str | None = None) -> list[UnitStatus]:
        if unit is not None:
            return [self.status(unit)]
        return [self._status_of(u) for u in self.units()]

    def reload(self) -> dict[str, list[str]]:
        """``systemctl daemon-reload``: the Quadlet generator runs again.  systemd
        does not say what changed, and restarts nothing."""
        self._systemctl("daemon-reload")
        return {"added": [], "changed": [], "removed": []}

    def _job(self, verb: str, unit: str, timeout: float | None) -> UnitStatus:
        quadlet_unit = self._resolve(unit)
        try:
            self._systemctl(verb, quadlet_unit.service_name, timeout=timeout)
        except AtollError as exc:
            status = self._status_of(quadlet_unit)
            raise error_for(
                StartLimitHitError.exit_code
                if status.result == "start-limit-hit"
                else UnitFailedError.exit_code,
                f"systemctl {verb} {quadlet_unit.service_name} failed: {exc}",
            ) from exc
        status = self._status_of(quadlet_unit)
        if verb != "stop" and status.state is UnitState.FAILED:
            raise error_for(
                UnitFailedError.exit_code,
                f"{quadlet_unit.service_name} failed ({status.result})",
            )
        return status
