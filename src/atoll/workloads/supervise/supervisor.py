"""``atoll workload run``: run Quadlet workloads through podman with systemd's semantics.

For hosts and containers without systemd, and for tests.  One thread per
running unit keeps its lifecycle; the control socket
(:mod:`atoll.workloads.supervise.controlserver`) answers :mod:`atoll.workloads.control`
requests; :mod:`atoll.workloads.unitfiles.socketact` listeners start units on demand.

The state directory (default ``/run/atoll/workloads``)::

    STATE_DIR/
    ├── lock             flock()ed by the running supervisor (one per directory)
    ├── control.sock     the control socket (JSON lines, see control.py)
    ├── state.json       {"version": 1, "pid": N, "units": {NAME: UnitStatus}},
    │                    replaced atomically on every state change
    ├── notify/NAME.sock NOTIFY_SOCKET of each container unit (notify.py)
    └── run/             what systemd's %t is for the generated commands:
                         NAME.cid, NAME-pod.pod-id, ...

A container unit's run, ``podman run -d`` watched until it ends, is
:mod:`atoll.workloads.supervise.containerrun`'s; other units run their commands and stay
active (a .build, Type=oneshot, ends when they succeed).  Containers carry the
label ``io.atoll.workload.unit=NAME.container``: a supervisor started again adopts a
running container, and a .kube's running service container, instead of starting
another.

Lock order: the supervisor's one lock (``self.cond``) is never held while a
podman command runs, except for writing state.json.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from atoll.errors import (
    AtollError,
    StartLimitHitError,
    UnitFailedError,
    UnknownUnitError,
)
from atoll.fsutil import write_atomic
from atoll.timeutil import utc_timestamp
from atoll.workloads.control import CONTROL_SOCKET, Health, UnitState, UnitStatus
from atoll.workloads.supervise.containerrun import TICK, ContainerRun, UnitRuntime, notify_path
from atoll.workloads.supervise.controlserver import ControlServer, lock_state_dir
from atoll.workloads.supervise.deaths import ContainerDeaths
from atoll.workloads.supervise.inspections import ContainerInspections
from atoll.workloads.supervise.runtime import (
    RunEnd,
    UnitPlan,
    containers_by_unit,
    kube_service_container,
    plan_unit,
    podman_env,
    run_commands,
)
from atoll.workloads.unitfiles.generate import generate_services
from atoll.workloads.unitfiles.quadlet import ContainerOptions, UnitKind, default_roots, load_units
from atoll.workloads.unitfiles.restart import EndKind, Result
from atoll.workloads.unitfiles.socketact import (
    SocketActivator,
    SocketUnit,
    load_sockets,
    published_target,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"


class Supervisor:
    def __init__(
        self,
        roots: Sequence[Path] | None = None,
        *,
        user: bool = False,
        state_dir: Path,
    ) -> None:
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.cond = threading.Condition(threading.RLock())
        self.shutdown_requested = threading.Event()
        #: How the container runs learn that their container ended.
        self.deaths = ContainerDeaths()
        #: What the container runs ask podman about their containers, asked together.
        self.inspections = ContainerInspections()
        self._lock_fd: int | None = None
        self._server: ControlServer | None = None
        self._activators: list[SocketActivator] = []
        self._roots, self._user = roots, user
        self.units: dict[str, UnitRuntime] = {
            name: UnitRuntime(plan) for name, plan in self._plans().items()
        }
        self.by_service = {rt.plan.service: rt for rt in self.units.values()}
        search = tuple(roots) if roots is not None else default_roots(user=user)
        self.sockets, warnings = load_sockets(search)
        for warning in warnings:
            log.warning("%s", warning)

    def _plans(self) -> dict[str, UnitPlan]:
        loaded = load_units(self._roots, user=self._user)
        services = {s.name: s for s in generate_services(loaded, user=self._user)}
        return {
            unit.name: plan_unit(unit, services[unit.service_name], self.run_dir)
            for unit in loaded.units
        }

    def reload(self) -> dict[str, list[str]]:
        """Read the unit directories again (systemd's daemon-reload): a unit that
        is gone is stopped and forgotten, a unit whose definition changed is
        stopped and takes the new one, a new unit is known; none is started
        (``restart`` does that).  The names added, changed and removed."""
        plans = self._plans()
        with self.cond:
            removed = sorted(set(self.units) - set(plans))
            changed = sorted(n for n in plans if n in self.units and self.units[n].plan != plans[n])
            added = sorted(set(plans) - set(self.units))
        for name in removed + changed:
            self.stop(name)
        with self.cond:
            for name in removed:
                del self.units[name]
            for name in changed + added:
                self.units[name] = UnitRuntime(plans[name])
            self.by_service = {rt.plan.service: rt for rt in self.units.values()}
            self.write_state()
        return {"added": added, "changed": changed, "removed": removed}

    # --- names and status ------------------------------------------------------------

    def resolve(self, name: str) -> UnitRuntime:
        for candidate in (name, *(f"{name}.{k}" for k in ("container", "pod", "kube", "build"))):
            if candidate in self.units:
                return self.units[candidate]
        if name in self.by_service:
            return self.by_service[name]
        raise UnknownUnitError(
            f"no workload unit named {name!r}",
            hint="atoll workload list shows the units (web, web.container or web.service)",
        )

    def status(self, name: str | None = None) -> list[UnitStatus]:
        with self.cond:
            if name is not None:
                return [self.resolve(name).status()]
            return [self.units[k].status() for k in sorted(self.units)]

    def set_state(
        self,
        rt: UnitRuntime,
        state: UnitState,
        result: str | None = None,
        *,
        since: str | None = None,
    ) -> None:
        """Change *rt*'s state; *since*: when it changed, if not now (an adopted
        container has been active since it started)."""
        changed = state != rt.state or (result is not None and result != rt.result)
        rt.state = state
        if result is not None:
            rt.result = result
        if changed:
            rt.since = since or utc_timestamp(microseconds=True)
            log.info("%s: %s (%s)", rt.plan.service, state, rt.result)
        self.write_state()
        self.cond.notify_all()

    def write_state(self) -> None:
        data = {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "units": {name: rt.status().to_json() for name, rt in sorted(self.units.items())},
        }
        try:
            write_atomic(
                self.state_dir / STATE_FILE,
                json.dumps(data, indent=1).encode(),
                durable=False,
            )
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_dir / STATE_FILE, exc)

    def _saved_restarts(self) -> dict[str, int]:
        """The restart counters the previous session wrote, by unit name."""
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return {}
        return {
            name: int(saved.get("restarts") or 0)
            for name, saved in (data.get("units") or {}).items()
            if name in self.units and isinstance(saved, dict)
        }

    # --- dependencies ----------------------------------------------------------------

    def _deps(self, rt: UnitRuntime) -> tuple[list[UnitRuntime], list[UnitRuntime]]:
        """(units to start before *rt*, units it wants started after it)."""
        before: list[UnitRuntime] = []
        after: list[UnitRuntime] = []
        for service in (*rt.plan.requires, *rt.plan.wants):
            dep = self.by_service.get(service)
            if dep is None or dep is rt:
                continue
            first = service in rt.plan.after or rt.plan.service in dep.plan.before
            target = before if first or service in rt.plan.requires else after
            if dep not in target:
                target.append(dep)
        return before, after

    def _dependents(self, rt: UnitRuntime) -> list[UnitRuntime]:
        return [
            other
            for other in self.units.values()
            if rt.plan.service in other.plan.requires and other is not rt
        ]

    def _order(self) -> list[UnitRuntime]:
        """All units, each after the units it requires (for shutdown, reversed)."""
        ordered: list[UnitRuntime] = []
        seen: set[str] = set()

        def visit(rt: UnitRuntime) -> None:
            if rt.plan.name in seen:
                return
            seen.add(rt.plan.name)
            for dep in self._deps(rt)[0]:
                visit(dep)
            ordered.append(rt)

        for name in sorted(self.units):
            visit(self.units[name])
        return ordered

    # --- jobs ------------------------------------------------------------------------

    def start(
        self, name: str, timeout: float | None = None, *, _stack: tuple[str, ...] = ()
    ) -> UnitStatus:
        """Start *name* (its requirements first); return when it is active or failed."""
        rt = self.resolve(name)
        if rt.plan.name in _stack:
            return rt.status()
        stack = (*_stack, rt.plan.name)
        first, later = self._deps(rt)
        self._start_requirements(rt, first, stack)
        status = self._start_one(rt, timeout)
        for dep in later:
            try:
                self.start(dep.plan.name, _stack=stack)
            except AtollError as exc:
                log.warning("%s: wanted unit %s failed: %s", rt.plan.service, dep.plan.service, exc)
        return status

    def _start_requirements(
        self, rt: UnitRuntime, deps: Sequence[UnitRuntime], stack: tuple[str, ...]
    ) -> None:
        """Start *deps*, the units *rt* needs first; a failed requirement (not a
        wanted unit) fails *rt* (UnitFailedError).  A unit that is active stays
        as it is; one that ended (a .build) runs again, as under systemd."""
        for dep in deps:
            try:
                self.start(dep.plan.name, _stack=stack)
            except AtollError as exc:
                if dep.plan.service in rt.plan.requires:
                    with self.cond:
                        rt.error = f"required unit {dep.plan.service} failed: {exc}"
                        self.set_state(rt, UnitState.FAILED, Result.DEPENDENCY)
                    raise UnitFailedError(
                        f"{rt.plan.service} not started: {rt.error}",
                        hint="atoll workload status shows the failed unit",
                    ) from exc

    def _start_one(self, rt: UnitRuntime, timeout: float | None) -> UnitStatus:
        with self.cond:
            while rt.thread is not None and rt.thread.is_alive() and not rt.wanted:
                self.cond.wait(TICK)  # a stop is under way: let it finish, then start afresh
            running = rt.thread is not None and rt.thread.is_alive()
            if running and rt.state is UnitState.ACTIVE and rt.wanted:
                return rt.status()
            if rt.result == Result.START_LIMIT_HIT or not running:
                rt.start_limit.reset()  # a start by hand clears the limit (reset-failed)
            rt.timeout_override = timeout
            rt.wanted = True
            want = rt.attempt if rt.in_attempt else rt.attempt + 1
            if not running:
                rt.thread = threading.Thread(
                    target=self._lifecycle, args=(rt,), name=rt.plan.service, daemon=True
                )
                rt.thread.start()
            else:
                rt.wake.set()  # skip the rest of RestartSec
            return self._settled(rt, want)

    def _settled(self, rt: UnitRuntime, want: int) -> UnitStatus:
        """Wait (holding the lock) until attempt *want* of *rt* settled; its status, or
        the error that says how it failed."""
        with self.cond:
            while rt.settled < want:
                thread = rt.thread
                if thread is None or not thread.is_alive():
                    if rt.settled < want and rt.state is not UnitState.FAILED:
                        raise UnitFailedError(
                            f"{rt.plan.service} was stopped before it became active"
                        )
                    break
                self.cond.wait(TICK)
            # A .build's start succeeds when it has ended (Type=oneshot).
            done = UnitState.INACTIVE if rt.plan.exits else UnitState.ACTIVE
            if rt.settled >= want and rt.settled_ok and rt.state is done:
                return rt.status()
            if rt.result == Result.START_LIMIT_HIT:
                raise StartLimitHitError(
                    f"{rt.plan.service}: start request repeated too quickly (start-limit-hit)",
                    hint="fix the unit, then start it again with atoll workload start",
                )
            detail = f"{rt.result}"
            if rt.exit_status is not None:
                detail += f", status {rt.exit_status}"
            if rt.error:
                detail += f": {rt.error}"
            raise UnitFailedError(
                f"{rt.plan.service} failed to start ({detail})",
                hint=f"see atoll workload status {rt.plan.unit.stem} and atoll workload logs",
            )

    def stop(self, name: str) -> UnitStatus:
        """Stop *name*, and first the units that require it."""
        rt = self.resolve(name)
        for dependent in self._dependents(rt):
            if dependent.state is not UnitState.INACTIVE:
                self.stop(dependent.plan.name)
        return self._stop_one(rt)

    def _stop_one(self, rt: UnitRuntime) -> UnitStatus:
        with self.cond:
            rt.wanted = False
            rt.wake.set()
            if rt.interrupt is not None:
                rt.interrupt()
            self.cond.notify_all()
            thread = rt.thread
        if thread is not None:
            thread.join()  # its end is not announced on the condition: wait for it
        with self.cond:
            return rt.status()

    def restart(self, name: str, timeout: float | None = None) -> UnitStatus:
        rt = self.resolve(name)
        if rt.replaceable:
            with self.cond:
                running = rt.thread is not None and rt.thread.is_alive()
                if running and rt.wanted and rt.state is UnitState.ACTIVE and rt.in_attempt:
                    # In place: the next attempt's podman run stops and removes the
                    # container as the stop would (one podman process, not two).
                    rt.replace = True
                    rt.timeout_override = timeout
                    rt.start_limit.reset()  # a restart by hand, as in _start_one
                    want = rt.attempt + 1
                    rt.wake.set()
                    if rt.interrupt is not None:
                        rt.interrupt()
                    self.cond.notify_all()
                    return self._settled(rt, want)
        self._stop_one(rt)
        return self.start(rt.plan.name, timeout)

    # --- one unit's life -------------------------------------------------------------

    def became_active(self, rt: UnitRuntime, since: str | None) -> None:
        self.set_state(rt, UnitState.ACTIVE, Result.SUCCESS, since=since)
        self.settle(rt, True)

    def stopping(self, rt: UnitRuntime) -> None:
        self.set_state(rt, UnitState.DEACTIVATING)

    def settle(self, rt: UnitRuntime, ok: bool) -> None:
        if rt.settled < rt.attempt:
            rt.settled = rt.attempt
            rt.settled_ok = ok
            self.cond.notify_all()

    def _lifecycle(self, rt: UnitRuntime) -> None:
        try:
            self._lifecycle_loop(rt)
        except Exception as exc:  # a bug must not leave a job waiting forever
            log.exception("%s: supervisor error", rt.plan.service)
            with self.cond:
                rt.error = str(exc)
                rt.wanted = False
                self.set_state(rt, UnitState.FAILED, Result.RESOURCES)
                self.settle(rt, False)
        finally:
            with self.cond:
                rt.in_attempt = False
                if rt.settled < rt.attempt:
                    self.settle(rt, False)
                self.cond.notify_all()

    def _lifecycle_loop(self, rt: UnitRuntime) -> None:
        settings = rt.plan.settings
        restarting = False
        while True:
            with self.cond:
                if not rt.wanted:
                    if rt.state is not UnitState.FAILED:
                        self.set_state(rt, UnitState.INACTIVE)
                    return
                adopting = rt.adopt_id is not None
                if not adopting and not rt.start_limit.allow():
                    rt.wanted = False
                    rt.attempt += 1
                    rt.error = (
                        f"more than {settings.start_limit_burst} starts within "
                        f"{settings.start_limit_interval:g} s"
                    )
                    self.set_state(rt, UnitState.FAILED, Result.START_LIMIT_HIT)
                    self.settle(rt, False)
                    return
                rt.attempt += 1
                rt.in_attempt = True
                rt.replace = False
                rt.error = ""
                rt.exit_status = None
                rt.wake.clear()
                self.set_state(rt, UnitState.ACTIVATING)
            if restarting:
                # systemd's restart job starts the requirements again: a .build
                # (a unit that ends) builds again first.  The units that stay
                # active are left alone.
                builds = [dep for dep in self._deps(rt)[0] if dep.plan.exits]
                try:
                    self._start_requirements(rt, builds, (rt.plan.name,))
                except UnitFailedError:
                    with self.cond:
                        rt.wanted = False
                        self.settle(rt, False)
                    return
            if rt.plan.kind is UnitKind.CONTAINER and rt.plan.service_type == "notify":
                end = ContainerRun(
                    self,
                    rt,
                    run_dir=self.run_dir,
                    notify_socket=notify_path(self.state_dir, rt),
                    deaths=self.deaths,
                    inspections=self.inspections,
                ).run()
            else:
                end = self._run_oneshot(rt)
            if end.replaced:
                with self.cond:
                    rt.replace = False
                    again = rt.wanted
                    if again:
                        rt.in_attempt = False
                        rt.main_pid = rt.container_id = rt.image_id = None
                        rt.health = Health.NONE
                if again:
                    continue  # the next attempt's podman run replaces the container
                # Stopped meanwhile: the container the attempt left is stopped as usual.
                stop_deadline = time.monotonic() + rt.plan.settings.timeout_stop
                env = podman_env(rt.plan.env)
                run_commands(rt.plan.stop, stop_deadline, env, what=rt.plan.service)
                end = RunEnd(Result.SUCCESS, EndKind.CLEAN)
            with self.cond:
                rt.in_attempt = False
                rt.exit_status = end.exit_status
                rt.error = end.error
                rt.main_pid = None
                rt.container_id = None
                rt.image_id = None
                if end.result != Result.UNHEALTHY:
                    rt.health = Health.NONE  # no container, no health; "unhealthy" says why
                if not rt.wanted:
                    self.settle(rt, False)
                    if end.result in (Result.SUCCESS, Result.SIGNAL, Result.EXIT_CODE):
                        self.set_state(rt, UnitState.INACTIVE, Result.SUCCESS)
                    else:
                        self.set_state(rt, UnitState.FAILED, end.result)
                    return
                restart = end.force_restart or (
                    not end.no_restart and settings.should_restart(end.end, end.exit_status)
                )
                self.settle(rt, rt.plan.exits and end.result == Result.SUCCESS)
                if not restart:
                    rt.wanted = False
                    ended = UnitState.FAILED if end.result != Result.SUCCESS else UnitState.INACTIVE
                    self.set_state(rt, ended, end.result)
                    return
                rt.restarts += 1
                rt.result = end.result
                self.set_state(rt, UnitState.ACTIVATING)
                log.info(
                    "%s: %s, restarting in %g s (Restart=%s)",
                    rt.plan.service,
                    end.result,
                    settings.restart_sec,
                    settings.restart,
                )
            restarting = True
            rt.wake.wait(settings.restart_sec)

    def _run_oneshot(self, rt: UnitRuntime) -> RunEnd:
        """Volumes, networks, images, pods: run the commands, then stay active.  A
        build (Type=oneshot without RemainAfterExit=) ends once its commands have
        succeeded: inactive, result success.  A kube unit stays active while the
        service container that ``podman kube play --service-container`` made runs
        (its main process under systemd): when that ends, so does the unit, with
        its exit status; a kube whose service container runs when the supervisor
        starts is adopted (its commands do not run again)."""
        plan = rt.plan
        env = podman_env(plan.env)
        deadline = time.monotonic() + self.start_timeout(rt)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        commands = functools.partial(run_commands, env=env, what=plan.service,
                                     cwd=plan.working_directory)  # fmt: skip
        with self.cond:
            adopt, rt.adopt_id = rt.adopt_id, None
        since = time.time()
        service = kube_service_container(plan.service, env) if adopt is not None else None
        active_since = service.since if service is not None else None
        if service is None:
            failed = commands((*plan.start_pre, *plan.start), deadline)
            if failed is not None:
                commands(plan.stop_post, time.monotonic() + 60)
                return failed
            if plan.kind is UnitKind.KUBE:
                service = kube_service_container(plan.service, env)
        waiter = None
        if service is not None:
            waiter = self.deaths.waiter(service.container_id, service.conmon_pid, env, since)
        ended = RunEnd(Result.SUCCESS, EndKind.CLEAN, 0) if plan.exits else None
        if ended is None:
            with self.cond:
                if service is not None:
                    rt.container_id, rt.main_pid = service.container_id, service.conmon_pid
                self.set_state(rt, UnitState.ACTIVE, Result.SUCCESS, since=active_since)
                self.settle(rt, True)
        while ended is None:
            with self.cond:
                if not rt.wanted:
                    break
                if waiter is None:
                    self.cond.wait(1.0)
                    continue
            if waiter.wait(TICK):
                status = waiter.exit_status()
                result, end = plan.settings.classify(status)
                ended = RunEnd(result, end, status, "the kube's service container ended")
        with self.cond:
            self.set_state(rt, UnitState.DEACTIVATING)
        if waiter is not None:
            waiter.close()
        stop_deadline = time.monotonic() + plan.settings.timeout_stop
        commands(plan.stop, stop_deadline)
        commands(plan.stop_post, stop_deadline)
        return ended or RunEnd(Result.SUCCESS, EndKind.CLEAN)

    def start_timeout(self, rt: UnitRuntime) -> float:
        with self.cond:
            override = rt.timeout_override
            rt.timeout_override = None
        return override if override is not None else rt.plan.settings.timeout_start

    # --- the whole supervisor ----------------------------------------------------------

    def adopt(self) -> list[threading.Thread]:
        """Take over the running containers, and the kubes' service containers, a
        previous supervisor started: one ``podman ps`` for all containers, one per
        kube, then every unit in a thread of its own (the threads are returned,
        started)."""
        # Only a unit whose container lives on keeps its counter, as the same
        # service would under systemd; the others start afresh (a failed session's
        # restarts are not this session's).
        saved = self._saved_restarts()
        found = containers_by_unit()
        threads: list[threading.Thread] = []
        for rt in self.units.values():
            if rt.plan.kind is UnitKind.KUBE:
                service = kube_service_container(rt.plan.service, podman_env(rt.plan.env))
                if service is None:
                    continue
                container_id = service.container_id
            elif rt.plan.kind is UnitKind.CONTAINER:
                running = [c for c in found.get(rt.plan.name, ()) if c.get("State") == "running"]
                if not running:
                    continue
                container_id = str(running[0].get("Id"))
            else:
                continue
            log.info("%s: adopting running container %s", rt.plan.service, container_id[:12])
            with self.cond:
                rt.adopt_id = container_id
                rt.restarts = saved.get(rt.plan.name, 0)
                self.set_state(rt, UnitState.ACTIVATING)
            thread = threading.Thread(
                target=self._adopt_one, args=(rt, container_id), name=f"adopt {rt.plan.service}"
            )
            thread.daemon = True
            thread.start()
            threads.append(thread)
        return threads

    def _adopt_one(self, rt: UnitRuntime, container_id: str) -> None:
        try:
            self._start_one(rt, None)
        except AtollError as exc:
            log.warning("%s: adopting %s failed: %s", rt.plan.service, container_id[:12], exc)

    def _socket_targets(self) -> list[tuple[SocketUnit, UnitRuntime, tuple[str, int]]]:
        found = []
        for sock in self.sockets:
            try:
                rt = self.resolve(sock.service)
            except UnknownUnitError:
                log.warning("%s: no unit %s to activate, ignored", sock.name, sock.service)
                continue
            target = sock.proxy_to
            if target is None and isinstance(rt.plan.unit.options, ContainerOptions):
                target = published_target(rt.plan.unit.options)
            if target is None:
                raise UnitFailedError(
                    f"{sock.path}: no ProxyTo= and {rt.plan.name} publishes no TCP port",
                    hint="add ProxyTo=HOST:PORT to [Socket]",
                )
            found.append((sock, rt, target))
        return found

    def open_sockets(self) -> set[str]:
        """Listen for every socket unit; return the names of the units they activate."""
        activated: set[str] = set()
        for sock, rt, target in self._socket_targets():
            name = rt.plan.name

            def is_active(rt: UnitRuntime = rt) -> bool:
                with self.cond:
                    return rt.state is UnitState.ACTIVE

            activator = SocketActivator(
                sock,
                target,
                start=functools.partial(self.start, name),
                stop=functools.partial(self.stop, name),
                is_active=is_active,
            )
            activator.open()
            self._activators.append(activator)
            activated.add(name)
        return activated

    def serve_control(self) -> None:
        """Answer on the control socket (opened here unless :meth:`take_over` gave it)."""
        if self._server is None:
            self._server = ControlServer(self.state_dir / CONTROL_SOCKET, self)
            self._server.open()
        else:
            self._server.attach(self)

    def lock(self) -> None:
        self._lock_fd = lock_state_dir(self.state_dir)

    def take_over(self, server: ControlServer, lock_fd: int) -> None:
        """Use a control socket already open and the state directory's lock already
        held (``atoll workload run`` opens both before it reads the units)."""
        self._server, self._lock_fd = server, lock_fd

    def run(self, names: Sequence[str] = ()) -> None:
        """Start the units and serve until SIGTERM/SIGINT; then stop everything."""
        for name in names:
            self.resolve(name)
        if self._lock_fd is None:
            self.lock()
        try:
            activated = self.open_sockets()
            # The control socket answers at once, with the units' states as they
            # become known (adopted containers go active as each is looked at);
            # the socket units listen before it, so that whoever waits for the
            # supervisor can connect to them at once.
            self.serve_control()
            self.adopt()
            if names:
                chosen = [self.resolve(n) for n in names]
            else:
                chosen = [
                    rt
                    for rt in self.units.values()
                    if rt.plan.kind in (UnitKind.CONTAINER, UnitKind.POD, UnitKind.KUBE)
                    and rt.plan.name not in activated
                    and not rt.plan.unit.stem.endswith("@")  # a template runs as an instance
                ]
            starters = [
                threading.Thread(target=self._start_quietly, args=(rt.plan.name,), daemon=True)
                for rt in chosen
            ]
            for thread in starters:
                thread.start()
            self.shutdown_requested.wait()
        finally:
            self.close()

    def _stop_all(self) -> None:
        """Stop every unit, all at once but each after the units that were started
        after it because they need it (systemd's order at shutdown, reversed start
        order, in parallel wherever the order allows)."""
        order = self._order()
        position = {rt.plan.name: i for i, rt in enumerate(order)}
        stopped = {rt.plan.name: threading.Event() for rt in order}

        def stop(rt: UnitRuntime) -> None:
            try:
                # Only units later in the order are waited for: a cycle cannot deadlock.
                for later in order[position[rt.plan.name] + 1 :]:
                    if rt in self._deps(later)[0]:
                        stopped[later.plan.name].wait()
                self._stop_one(rt)
            finally:
                stopped[rt.plan.name].set()

        threads = [
            threading.Thread(target=stop, args=(rt,), name=f"stop {rt.plan.service}", daemon=True)
            for rt in order
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _start_quietly(self, name: str) -> None:
        try:
            self.start(name)
        except AtollError as exc:
            log.warning("%s", exc)

    def request_shutdown(self, *_: object) -> None:
        self.shutdown_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_shutdown)
        signal.signal(signal.SIGINT, self.request_shutdown)

    def close(self) -> None:
        """Stop listening, then stop every unit, dependents first."""
        self.shutdown_requested.set()
        for activator in self._activators:
            activator.close()
        self._stop_all()
        if self._server is not None:
            self._server.close()
        self.deaths.close()
        with self.cond:
            self.write_state()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
