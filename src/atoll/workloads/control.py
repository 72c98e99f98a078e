"""Asking a workload manager what runs and telling it to start, stop or restart.

Two managers answer the same questions (:class:`UnitManager`):

* :class:`SupervisorClient` talks to ``atoll workload run`` over its control
  socket, ``STATE_DIR/control.sock`` (default state dir ``/run/atoll/workloads``);
* :class:`~atoll.workloads.systemd.SystemdManager` asks systemd (``systemctl
  show/start/stop/restart``) and podman (``podman inspect``) on hosts whose
  services systemd runs.

This module is the vocabulary both share (:class:`UnitStatus`, :class:`UnitState`,
:class:`Health`) and the client of the control protocol; it imports nothing
else of the workloads, so every room may use it.

The control protocol is JSON lines over a unix stream socket: the client
writes one request object and a newline, the supervisor answers with one
object and a newline, and either side may then send the next line::

    {"op": "ping"}                        -> {"ok": true, "pid": N}   (at once, see
                                             supervise/controlserver.py)
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

``UnitStatus`` (version 2, camelCase as every atoll document, docs/cli.md;
version 1 wrote ``container_id``, ``image_id``, ``main_pid`` and
``exit_status``, which :meth:`UnitStatus.from_json` still reads)::

    {"unit": "web.container", "name": "web", "service": "web.service",
     "state": "active"|"activating"|"deactivating"|"inactive"|"failed",
     "result": "success"|"exit-code"|"signal"|"timeout"|"watchdog"|
               "start-limit-hit"|"unhealthy"|"resources"|"dependency",
     "container": "systemd-web", "containerId": str|null, "image": "IMAGE",
     "imageId": str|null, "health": "healthy"|"unhealthy"|"starting"|"none",
     "restarts": 0, "since": "2026-01-01T00:00:00Z", "mainPid": int|null,
     "exitStatus": int|null, "kind": "container"}
"""

from __future__ import annotations

import abc
import json
import socket
from collections.abc import Mapping
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
        data = {_CAMEL.get(k, k): v for k, v in asdict(self).items()}
        data["state"] = str(self.state)
        data["health"] = str(self.health)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitStatus:
        known = {f.name for f in fields(cls)}
        # camelCase (version 2), or the snake_case of a supervisor still on version 1
        values = {_SNAKE.get(k, k): v for k, v in data.items() if _SNAKE.get(k, k) in known}
        try:
            values["state"] = UnitState(values["state"])
            values["health"] = Health(values.get("health", "none"))
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise AtollError(f"malformed unit status {dict(data)!r}: {exc}") from exc


#: UnitStatus's fields whose JSON keys differ from their Python names.
_CAMEL = {
    "container_id": "containerId",
    "image_id": "imageId",
    "main_pid": "mainPid",
    "exit_status": "exitStatus",
}
_SNAKE = {camel: snake for snake, camel in _CAMEL.items()}


@runtime_checkable
class UnitManager(Protocol):
    """Something that runs workload units: the supervisor or systemd."""

    def status(self, unit: str) -> UnitStatus: ...

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus: ...


def control_socket(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET


def error_for(code: int, message: str) -> AtollError:
    if code == StartLimitHitError.exit_code:
        return StartLimitHitError(
            message, hint="fix the unit, then run atoll workload start to reset the start limit"
        )
    if code == UnknownUnitError.exit_code:
        return UnknownUnitError(message, hint="atoll workload list shows the units")
    if code == UnitFailedError.exit_code:
        return UnitFailedError(message, hint="atoll workload status and logs show why")
    return AtollError(message)


class JobVerbs(abc.ABC):
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


class SupervisorClient(JobVerbs):
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
            raise error_for(
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

    def reload(self) -> dict[str, list[str]]:
        """The supervisor reads its unit directories again: the units added,
        changed (stopped, to be started again) and removed (stopped)."""
        answer = self._call({"op": "reload"}, timeout=None)
        return {key: list(answer.get(key, [])) for key in ("added", "changed", "removed")}

    def _job(self, op: str, unit: str, timeout: float | None) -> UnitStatus:
        message: dict[str, Any] = {"op": op, "unit": unit}
        if timeout is not None:
            message["timeout"] = timeout
        # The supervisor answers when the job is done; with a timeout it gives up by then.
        answer = self._call(message, timeout=None if timeout is None else timeout + 30.0)
        return UnitStatus.from_json(answer["unit"])
