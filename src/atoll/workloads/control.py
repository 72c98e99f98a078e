"""Asking a workload manager what runs and telling it to start, stop or restart.

Two managers answer the same questions (:class:`UnitManager`):

* :class:`SupervisorClient` talks to ``atoll workload run`` over its control
  socket, ``STATE_DIR/control.sock`` (default state dir ``/run/atoll/workloads``);
* :class:`SystemdManager` asks systemd (``systemctl show/start/stop/restart``)
  and podman (``podman inspect``) on hosts whose services systemd runs.

The control protocol is JSON lines over a unix stream socket: the client
writes one request object and a newline, the supervisor answers with one
object and a newline, and either side may then send the next line::

    {"op": "status"}                      -> {"ok": true, "units": [UnitStatus, ...]}
    {"op": "status", "unit": "web"}       -> {"ok": true, "units": [UnitStatus]}
    {"op": "start"|"stop"|"restart",
     "unit": "web", "timeout": 30.0}      -> {"ok": true, "unit": UnitStatus}
                                          or {"ok": false, "error": "...",
                                              "exit_code": 53, "unit": UnitStatus|null}

A start, stop or restart answers when its job has finished: the unit is ready
(active), stopped, or has failed (including ``TimeoutStartSec``).  ``timeout``
is optional and overrides the unit's ``TimeoutStartSec`` for that job.  Units are
named as ``web``, ``web.container`` or ``web.service``.

``UnitStatus`` (version 1, stable; new fields may be added)::

    {"unit": "web.container", "name": "web", "service": "web.service",
     "state": "active"|"activating"|"deactivating"|"inactive"|"failed",
     "result": "success"|"exit-code"|"signal"|"timeout"|"watchdog"|
               "start-limit-hit"|"unhealthy"|"resources"|"dependency",
     "container": "systemd-web", "container_id": str|null, "image": "IMAGE",
     "image_id": str|null, "health": "healthy"|"unhealthy"|"starting"|"none",
     "restarts": 0, "since": "2026-01-01T00:00:00Z", "main_pid": int|null,
     "exit_status": int|null, "kind": "container"}
"""

from __future__ import annotations

import abc
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

from atoll.errors import (
    AtollError,
    StartLimitHitError,
    SupervisorNotRunningError,
    UnitFailedError,
    UnknownUnitError,
)

#: Version of the UnitStatus document and of the control protocol.
STATUS_VERSION = 1

DEFAULT_STATE_DIR = Path("/run/atoll/workloads")
CONTROL_SOCKET = "control.sock"


class UnitState(StrEnum):
    """systemd's ActiveState values that a workload unit can be in."""

    ACTIVE = "active"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    INACTIVE = "inactive"
    FAILED = "failed"


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STARTING = "starting"
    NONE = "none"


@dataclass(frozen=True)
class UnitStatus:
    """What one unit is doing now; the same fields whichever manager runs it."""

    unit: str
    name: str
    service: str
    state: UnitState
    result: str
    container: str
    container_id: str | None
    image: str
    image_id: str | None
    health: Health
    restarts: int
    since: str
    main_pid: int | None
    #: The exit status of the last run (128+N when killed by signal N), if it ended.
    exit_status: int | None = None
    #: The unit's kind: container, pod, volume, network or image.
    kind: str = "container"

    @property
    def active(self) -> bool:
        return self.state is UnitState.ACTIVE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        data["health"] = str(self.health)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitStatus:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["state"] = UnitState(values["state"])
            values["health"] = Health(values.get("health", "none"))
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise AtollError(f"malformed unit status {dict(data)!r}: {exc}") from exc


@runtime_checkable
class UnitManager(Protocol):
    """Something that runs workload units: the supervisor or systemd."""

    def status(self, unit: str) -> UnitStatus: ...

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus: ...


def control_socket(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET


def _error_for(code: int, message: str) -> AtollError:
    if code == StartLimitHitError.exit_code:
        return StartLimitHitError(
            message, hint="fix the unit, then run atoll workload start to reset the start limit"
        )
    if code == UnknownUnitError.exit_code:
        return UnknownUnitError(message, hint="atoll workload list shows the units")
    if code == UnitFailedError.exit_code:
        return UnitFailedError(message, hint="atoll workload status and logs show why")
    return AtollError(message)


class _Jobs(abc.ABC):
    """start, stop and restart, each one job of the manager's ``_job``."""

    @abc.abstractmethod
    def _job(self, verb: str, unit: str, timeout: float | None) -> UnitStatus:
        """Run *verb* on *unit* and wait for it to finish; the unit's status after."""

    def start(self, unit: str, timeout: float | None = None) -> UnitStatus:
        return self._job("start", unit, timeout)

    def stop(self, unit: str, timeout: float | None = None) -> UnitStatus:
        return self._job("stop", unit, timeout)

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        return self._job("restart", unit, timeout)


class SupervisorClient(_Jobs):
    """Client of ``atoll workload run``'s control socket; a :class:`UnitManager`."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = state_dir
        self.socket_path = control_socket(state_dir)

    def is_running(self) -> bool:
        try:
            self.request({"op": "ping"}, timeout=5.0)
        except SupervisorNotRunningError:
            return False
        except AtollError:
            return True
        return True

    def request(self, message: Mapping[str, Any], *, timeout: float | None) -> dict[str, Any]:
        """Send one request line; return the decoded answer (``ok`` may be false)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise SupervisorNotRunningError(
                    f"no workload supervisor listens on {self.socket_path}",
                    hint="start it with atoll workload run, or use --manager systemd",
                ) from exc
            except OSError as exc:
                raise SupervisorNotRunningError(
                    f"cannot connect to {self.socket_path}: {exc.strerror or exc}"
                ) from exc
            try:
                sock.sendall(json.dumps(dict(message)).encode() + b"\n")
                reader = sock.makefile("rb")
                line = reader.readline()
            except TimeoutError as exc:
                raise UnitFailedError(
                    f"the supervisor did not answer {message.get('op')!r} within {timeout} s"
                ) from exc
            except OSError as exc:
                raise SupervisorNotRunningError(
                    f"the supervisor at {self.socket_path} closed the connection: {exc}"
                ) from exc
        finally:
            sock.close()
        if not line:
            raise SupervisorNotRunningError(
                f"the supervisor at {self.socket_path} closed the connection without answering"
            )
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise AtollError(f"the supervisor sent a malformed answer: {line[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise AtollError(f"the supervisor sent a malformed answer: {line[:200]!r}")
        return answer

    def _call(self, message: Mapping[str, Any], *, timeout: float | None) -> dict[str, Any]:
        answer = self.request(message, timeout=timeout)
        if not answer.get("ok"):
            raise _error_for(
                int(answer.get("exit_code", UnitFailedError.exit_code)),
                str(answer.get("error", "the supervisor reported a failure")),
            )
        return answer

    def status_all(self, unit: str | None = None) -> list[UnitStatus]:
        message: dict[str, Any] = {"op": "status"}
        if unit is not None:
            message["unit"] = unit
        answer = self._call(message, timeout=30.0)
        return [UnitStatus.from_json(u) for u in answer.get("units", [])]

    @overload
    def status(self, unit: None = None) -> list[UnitStatus]: ...

    @overload
    def status(self, unit: str) -> UnitStatus: ...

    def status(self, unit: str | None = None) -> list[UnitStatus] | UnitStatus:
        """Every unit's status (no *unit*), or the one named unit's (the UnitManager call).

        :meth:`status_all` always answers with a list.
        """
        units = self.status_all(unit)
        if unit is None:
            return units
        if len(units) != 1:
            raise UnknownUnitError(f"the supervisor knows no unit {unit!r}")
        return units[0]

    def _job(self, op: str, unit: str, timeout: float | None) -> UnitStatus:
        message: dict[str, Any] = {"op": op, "unit": unit}
        if timeout is not None:
            message["timeout"] = timeout
        # The supervisor answers when the job is done; with a timeout it gives up by then.
        answer = self._call(message, timeout=None if timeout is None else timeout + 30.0)
        return UnitStatus.from_json(answer["unit"])


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
    import datetime

    words = text.split()
    if len(words) >= 3 and words[-1] == "UTC":
        try:
            parsed = datetime.datetime.strptime(f"{words[-3]} {words[-2]}", "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return text
        return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")
    return text


def status_from_systemd(
    show: Mapping[str, str],
    *,
    unit: str,
    name: str,
    service: str,
    container: str,
    image: str,
    kind: str,
    inspect: Mapping[str, Any] | None,
) -> UnitStatus:
    """A UnitStatus from ``systemctl show`` values and ``podman inspect`` of the container."""
    state = _SYSTEMD_STATES.get(show.get("ActiveState", ""), UnitState.INACTIVE)
    main_pid = int(show.get("MainPID") or 0) or None
    exit_status = show.get("ExecMainStatus", "")
    container_id = image_id = None
    health = Health.NONE
    if inspect and state in (UnitState.ACTIVE, UnitState.ACTIVATING, UnitState.DEACTIVATING):
        container_id = inspect.get("Id") or None
        image_id = inspect.get("Image") or None
        container_state = inspect.get("State") or {}
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


class SystemdManager(_Jobs):
    """Units run by systemd from the services Quadlet generated; a :class:`UnitManager`."""

    def __init__(self, roots: Sequence[Path] | None = None, *, user: bool = False) -> None:
        self.roots = roots
        self.user = user

    def _systemctl(self, *args: str, timeout: float | None = 120.0) -> str:
        from atoll.run import find_tool, run

        argv = [find_tool("systemctl", "systemd"), *(["--user"] if self.user else []), *args]
        return run(argv, timeout=timeout).stdout.decode(errors="replace")

    def units(self) -> list[Any]:
        from atoll.workloads.unitfiles.quadlet import load_units

        return list(load_units(self.roots, user=self.user).units)

    def _resolve(self, name: str) -> Any:
        units = self.units()
        for unit in units:
            if name in (unit.name, unit.stem, unit.service_name):
                return unit
        raise UnknownUnitError(
            f"no workload unit named {name!r}", hint="atoll workload list shows the units"
        )

    def _status_of(self, unit: Any) -> UnitStatus:
        from atoll.workloads.supervise.runtime import inspect_container
        from atoll.workloads.unitfiles.quadlet import ContainerOptions

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
            container = (unit.options.container_name or "systemd-%N").replace("%N", unit.stem)
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

    def _job(self, verb: str, unit: str, timeout: float | None) -> UnitStatus:
        quadlet_unit = self._resolve(unit)
        try:
            self._systemctl(verb, quadlet_unit.service_name, timeout=timeout)
        except AtollError as exc:
            status = self._status_of(quadlet_unit)
            raise _error_for(
                StartLimitHitError.exit_code
                if status.result == "start-limit-hit"
                else UnitFailedError.exit_code,
                f"systemctl {verb} {quadlet_unit.service_name} failed: {exc}",
            ) from exc
        status = self._status_of(quadlet_unit)
        if verb != "stop" and status.state is UnitState.FAILED:
            raise _error_for(
                UnitFailedError.exit_code,
                f"{quadlet_unit.service_name} failed ({status.result})",
            )
        return status
