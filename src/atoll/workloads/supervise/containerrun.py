"""One run of a container unit under ``atoll workload run`` (see supervisor.py).

A container runs as ``podman run -d`` (the generated command, see runtime.py)
with NOTIFY_SOCKET set; its end and exit status (128+N: killed by signal N)
come from the supervisor's ``podman events`` stream (see deaths.py).  While
it runs, the run turns the unit active when it is ready (at once, on
``READY=1``, or when healthy, after ``Notify=``), keeps the watchdog
(``WatchdogSec=``), runs the health checks (healthcheck.py), and stops the
container when the unit is no longer wanted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from atoll.errors import ToolMissingError
from atoll.run import PIPE, TimeoutExpired, spawn
from atoll.timeutil import utc_timestamp
from atoll.workloads.control import Health, UnitState, UnitStatus
from atoll.workloads.supervise.deaths import ContainerDeaths
from atoll.workloads.supervise.healthcheck import (
    HealthTracker,
    OnFailure,
    run_check,
    run_startup_check,
)
from atoll.workloads.supervise.inspections import ContainerInspections
from atoll.workloads.supervise.notify import NotifySocket, NotifyState
from atoll.workloads.supervise.runtime import (
    Command,
    NotifyMode,
    RunEnd,
    UnitPlan,
    fit_to_podman,
    podman,
    podman_env,
    replaces_in_place,
    run_commands,
    started_at,
)
from atoll.workloads.unitfiles.restart import EndKind, Result, StartLimit

log = logging.getLogger(__name__)

#: How often a waiting supervisor thread looks again (seconds).
TICK = 0.2
#: After the watchdog's SIGABRT, how long before SIGKILL (systemd's TimeoutAbortSec).
ABORT_GRACE = 5.0


def notify_path(state_dir: Path, rt: UnitRuntime) -> Path:
    """The NOTIFY_SOCKET of *rt*'s container: ``STATE_DIR/notify/NAME.sock``."""
    return state_dir / "notify" / f"{rt.plan.unit.stem}.sock"


class UnitRuntime:
    """The live state of one unit; every field is guarded by the supervisor's lock."""

    def __init__(self, plan: UnitPlan) -> None:
        self.plan = plan
        self.state = UnitState.INACTIVE
        self.result: str = Result.SUCCESS
        self.restarts = 0
        self.since = utc_timestamp(microseconds=True)
        self.container_id: str | None = None
        self.image_id: str | None = None
        self.main_pid: int | None = None
        self.exit_status: int | None = None
        self.health = Health.NONE
        self.wanted = False
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        #: Ends the running attempt's wait for news at once (set while it waits).
        self.interrupt: Callable[[], None] | None = None
        s = plan.settings
        self.start_limit = StartLimit(s.start_limit_interval, s.start_limit_burst)
        self.attempt = 0
        self.in_attempt = False
        self.settled = 0
        self.settled_ok = False
        self.error = ""
        self.timeout_override: float | None = None
        self.adopt_id: str | None = None
        #: A restart in place was asked for: the running attempt ends without
        #: stopping its container, which the next ``podman run --replace`` replaces.
        self.replace = False
        self.replaceable = replaces_in_place(plan)

    def status(self) -> UnitStatus:
        plan = self.plan
        return UnitStatus(
            unit=plan.name,
            name=plan.unit.stem,
            service=plan.service,
            state=self.state,
            result=str(self.result),
            container=plan.container,
            container_id=self.container_id,
            image=plan.image,
            image_id=self.image_id,
            health=self.health,
            restarts=self.restarts,
            since=self.since,
            main_pid=self.main_pid,
            exit_status=self.exit_status,
            kind=plan.kind.value,
        )


class RunHost(Protocol):
    """What a container run asks of the supervisor that started it."""

    #: The supervisor's one lock; it guards every field of every UnitRuntime.
    @property
    def cond(self) -> threading.Condition: ...

    def start_timeout(self, rt: UnitRuntime) -> float:
        """The start timeout of this attempt (a job may override the unit's)."""

    def became_active(self, rt: UnitRuntime, since: str | None) -> None:
        """*rt*'s container is ready: the unit is active (since *since*, if not
        now) and the job that started it has its answer."""

    def stopping(self, rt: UnitRuntime) -> None:
        """*rt*'s container is being stopped: the unit is deactivating."""

    def write_state(self) -> None:
        """Record every unit's status (after a field changed in place)."""


class ContainerRun:
    """One attempt of one container unit, from ``podman run -d`` to its end."""

    def __init__(
        self,
        host: RunHost,
        rt: UnitRuntime,
        *,
        run_dir: Path,
        notify_socket: Path,
        deaths: ContainerDeaths,
        inspections: ContainerInspections,
    ) -> None:
        self.host = host
        self.cond = host.cond
        self.rt = rt
        self.plan = rt.plan
        self.run_dir = run_dir
        self.notify_socket = notify_socket
        self.deaths = deaths
        self.inspections = inspections

    def run(self) -> RunEnd:
        notify = NotifySocket(self.notify_socket)
        with self.cond:
            self.rt.interrupt = notify.wake  # a stop is seen at once, not at the next tick
        try:
            return self._run_with(notify)
        finally:
            with self.cond:
                self.rt.interrupt = None
            notify.close()

    def _commands(
        self, commands: Sequence[Command], deadline: float, env: dict[str, str]
    ) -> RunEnd | None:
        return run_commands(commands, deadline, env, what=self.plan.service)

    def _launch(self, env: dict[str, str], deadline: float) -> str | RunEnd:
        """``podman run -d``: the container id, or how the start failed."""
        plan, rt = self.plan, self.rt
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        # A cidfile left by a run that was not cleaned up makes podman refuse to start.
        self._cidfile().unlink(missing_ok=True)
        failed = self._commands(plan.start_pre, deadline, env)
        if failed is not None:
            return failed
        argv = fit_to_podman(plan.start[0].argv, what=plan.service)
        log.debug("%s: run %s", plan.service, " ".join(argv))
        try:
            proc = spawn(argv, stdout=PIPE, stderr=PIPE, env=env)
        except (OSError, ToolMissingError) as exc:
            return RunEnd(Result.EXIT_CODE, EndKind.UNCLEAN_CODE, 203, str(exc))
        while True:
            remaining = deadline - time.monotonic()
            try:
                out, err = proc.communicate(timeout=min(max(remaining, 0.01), 1.0))
                break
            except TimeoutExpired:
                with self.cond:
                    stopping = not rt.wanted
                if remaining <= 0 or stopping:
                    proc.kill()
                    proc.communicate()
                    self._remove(env)
                    if stopping:
                        return RunEnd(Result.SUCCESS, EndKind.CLEAN, error="stopped while starting")
                    return RunEnd(
                        Result.TIMEOUT, EndKind.TIMEOUT, error="podman run did not finish in time"
                    )
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            return RunEnd(
                Result.EXIT_CODE, EndKind.UNCLEAN_CODE, proc.returncode, lines[-1] if lines else ""
            )
        lines = out.decode().strip().splitlines()
        if not lines:
            return RunEnd(Result.EXIT_CODE, EndKind.UNCLEAN_CODE, 0, "podman run gave no id")
        return lines[-1]

    def _run_with(self, notify: NotifySocket) -> RunEnd:
        plan, rt, host = self.plan, self.rt, self.host
        env = podman_env({**plan.env, "NOTIFY_SOCKET": str(notify.path)})
        started = time.monotonic()
        deadline = started + host.start_timeout(rt)
        state = NotifyState()
        with self.cond:
            adopt = rt.adopt_id
            rt.adopt_id = None
        since = time.time()
        if adopt is None:
            launched = self._launch(env, deadline)
            if isinstance(launched, RunEnd):
                return launched
            container_id = launched
        else:
            container_id = adopt
            state.ready = plan.notify is not NotifyMode.HEALTHY
        info = self.inspections.inspect(container_id, env) or {}
        # An adopted container has been active since it started, not since now.
        active_since = started_at(info) if adopt is not None else None
        conmon = (info.get("State") or {}).get("ConmonPid")
        with self.cond:
            rt.container_id = container_id
            rt.image_id = info.get("Image") or None
            rt.main_pid = int(conmon) if conmon else None
            rt.health = Health.STARTING if plan.health else Health.NONE
        started = time.monotonic()
        waiter = self.deaths.waiter(container_id, rt.main_pid, env, since)
        tracker = HealthTracker(plan.health, started) if plan.health else None
        active = False
        replaced = False
        forced: RunEnd | None = None
        stop_sent = False
        kill_at: float | None = None
        last_ping = time.monotonic()
        try:
            while True:
                if stop_sent:
                    # Stopping: what is awaited is the container's end.
                    waiter.wait(TICK)
                for message in notify.receive(0.0 if stop_sent else TICK):
                    state.apply(message)
                    if message.get("WATCHDOG") == "1":
                        last_ping = time.monotonic()
                now = time.monotonic()
                # READY=1 that came with the exit still counts: the start succeeded.
                ready = state.ready
                if plan.notify is NotifyMode.HEALTHY:
                    ready = tracker is not None and tracker.status is Health.HEALTHY
                if ready and not active and not stop_sent:
                    active = True
                    last_ping = now
                    with self.cond:
                        host.became_active(rt, active_since)
                if waiter.done():
                    break
                with self.cond:
                    stopping = not rt.wanted
                    replaced = rt.replace and rt.wanted and active and not stop_sent
                    if state.main_pid:
                        rt.main_pid = state.main_pid
                if replaced:
                    break
                if stopping and not stop_sent:
                    stop_sent = True
                    with self.cond:
                        host.stopping(rt)
                    self._stop(env)
                    continue
                if stop_sent:
                    if kill_at is not None and now > kill_at:
                        kill_at = None  # the signal did not end it: SIGKILL, as systemd does
                        podman("kill", container_id, env=env)
                    continue
                if not active and now > deadline:
                    forced = RunEnd(Result.TIMEOUT, EndKind.TIMEOUT, error="not ready in time")
                    self._remove(env)
                    stop_sent = True
                    continue
                watchdog = plan.settings.watchdog
                if active and watchdog > 0 and now - last_ping > watchdog:
                    forced = RunEnd(Result.WATCHDOG, EndKind.WATCHDOG, error="no WATCHDOG=1")
                    podman("kill", "--signal", "ABRT", container_id, env=env)
                    stop_sent = True
                    kill_at = now + ABORT_GRACE
                    continue
                # The check at once waits until the unit is active (the job that
                # started it has its answer first), unless being healthy is how
                # it becomes active.
                if (
                    tracker is not None
                    and tracker.due(now)
                    and (active or not tracker.early or plan.notify is NotifyMode.HEALTHY)
                ):
                    forced = self._check_health(tracker, container_id, env)
                    if forced is not None:
                        stop_sent = True
            exit_status = None if replaced else waiter.exit_status()
        finally:
            waiter.close()
        if replaced:
            return RunEnd(Result.SUCCESS, EndKind.CLEAN, replaced=True)
        if forced is not None:
            forced.exit_status = exit_status
            return forced
        result, end = plan.settings.classify(exit_status)
        if not active and result == Result.SUCCESS:
            # Ended before it was ready: a failed start even with a clean status.
            result, end = Result.EXIT_CODE, EndKind.UNCLEAN_CODE
        return RunEnd(result, end, exit_status)

    def _check_health(
        self, tracker: HealthTracker, container_id: str, env: dict[str, str]
    ) -> RunEnd | None:
        rt, spec = self.rt, tracker.spec
        if tracker.startup is not None:
            return self._check_startup(tracker, container_id, env)
        before = tracker.status
        passed, output = run_check("podman", container_id, env, spec.timeout)
        status = tracker.record(passed, time.monotonic())
        with self.cond:
            if status != rt.health:
                log.info("%s: health %s -> %s", self.plan.service, rt.health, status)
                rt.health = status
                self.host.write_state()
                self.cond.notify_all()
        if status is not Health.UNHEALTHY or before is Health.UNHEALTHY:
            return None
        log.warning(
            "%s: unhealthy (%s), HealthOnFailure=%s", self.plan.service, output, spec.on_failure
        )
        if spec.on_failure is OnFailure.NONE:
            return None
        error = f"health check failed {spec.retries} times: {output}"
        if spec.on_failure is OnFailure.KILL:
            podman("kill", container_id, env=env)
            return RunEnd(Result.UNHEALTHY, EndKind.UNCLEAN_SIGNAL, error=error)
        self._stop(env)
        if spec.on_failure is OnFailure.STOP:
            return RunEnd(Result.UNHEALTHY, EndKind.UNCLEAN_SIGNAL, error=error, no_restart=True)
        return RunEnd(Result.UNHEALTHY, EndKind.UNCLEAN_SIGNAL, error=error, force_restart=True)

    def _check_startup(
        self, tracker: HealthTracker, container_id: str, env: dict[str, str]
    ) -> RunEnd | None:
        """One start-up check (HealthStartupCmd=); after HealthStartupRetries=
        failures the container is stopped, as podman restarts it, and Restart=
        decides whether it starts again."""
        startup = tracker.startup
        assert startup is not None
        passed, output = run_startup_check("podman", container_id, startup, env)
        outcome = tracker.record_startup(passed, time.monotonic())
        if outcome is None:
            return None
        if outcome:
            log.info("%s: start-up check passed, regular health checks begin", self.plan.service)
            return None
        error = f"start-up check failed {startup.retries} times: {output}"
        log.warning("%s: %s", self.plan.service, error)
        with self.cond:
            self.rt.health = Health.UNHEALTHY
            self.host.write_state()
        self._stop(env)
        return RunEnd(Result.UNHEALTHY, EndKind.UNCLEAN_SIGNAL, error=error)

    def _stop(self, env: dict[str, str]) -> None:
        """ExecStop= (or remove the container after its StopTimeout), then ExecStopPost=.

        Quadlet writes the same ``podman rm --cidfile`` as both; once it has
        succeeded as ExecStop=, running it again as ExecStopPost= would only
        start another podman to find nothing to remove, so it is skipped."""
        deadline = time.monotonic() + self.plan.settings.timeout_stop
        stopped = False
        if self.plan.stop:
            stopped = self._commands(self.plan.stop, deadline, env) is None
        else:
            self._remove(env, graceful=True)
        post = self.plan.stop_post
        if not stopped or [c.argv for c in post] != [c.argv for c in self.plan.stop]:
            self._commands(post, deadline, env)
        # The container is gone: its ID file would only be left behind (podman rm
        # --cidfile reads it but does not remove it).
        self._cidfile().unlink(missing_ok=True)

    def _cidfile(self) -> Path:
        """``%t/%N.cid``, where the generated ``podman run`` writes the container's ID."""
        return self.run_dir / f"{self.plan.service.rsplit('.', 1)[0]}.cid"

    def _remove(self, env: dict[str, str], *, graceful: bool = False) -> None:
        """Remove the container at once (SIGKILL); *graceful*, after its StopTimeout."""
        with self.cond:
            container = self.rt.container_id or self.plan.container
        wait = [] if graceful else ["--time", "0"]
        podman("rm", "-v", "-f", "-i", *wait, container, env=env)
