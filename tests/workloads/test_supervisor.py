"""``atoll workload run`` with real podman and images from the real registry."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest

from atoll.errors import UnitFailedError
from atoll.workloads.control import Health, UnitState, UnitStatus
from atoll.workloads.supervise.runtime import UNIT_LABEL
from helpers.workloads import (
    SupervisorProcess,
    WorkloadEnv,
    http_get,
    push_workload_image,
    sdnotify_binary,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _state(sup: SupervisorProcess, unit: str, state: str, **fields: object) -> UnitStatus | None:
    status = sup.status(unit)
    if status.state != state:
        return None
    if any(getattr(status, k) != v for k, v in fields.items()):
        return None
    return status


def _sick_image(workload_env: WorkloadEnv, repo: str, *, healthy_for: int) -> str:
    """An image whose /tmp/ok (the health check's) goes after *healthy_for* seconds."""
    script = f"touch /tmp/ok; (sleep {healthy_for}; rm /tmp/ok) & exec /usr/bin/serve"
    return push_workload_image(
        workload_env.registry, workload_env.registry.new_repo(repo), cmd=("/bin/sh", "-c", script)
    )


def test_web_workload_runs_and_is_restarted_after_kill(workload_env: WorkloadEnv) -> None:
    image, port = workload_env.web_unit("web", "Restart=on-failure\nRestartSec=0.5\n")
    sup = workload_env.start_supervisor()
    first = wait_for(lambda: _state(sup, "web", "active"), "web to be active")
    assert isinstance(first, UnitStatus)
    assert http_get(port) == "hello from v1\n"
    assert first.container == "systemd-web"
    assert first.image == image
    assert first.restarts == 0
    labelled = workload_env.podman(
        "ps", "--filter", f"label={UNIT_LABEL}=web.container", "--format", "{{.ID}}", "--no-trunc"
    ).split()
    assert labelled == [first.container_id]
    image_id = workload_env.podman("image", "inspect", image, "--format", "{{.Id}}").strip()
    assert first.image_id == image_id

    pid = int(workload_env.podman("inspect", "systemd-web", "--format", "{{.State.Pid}}"))
    os.kill(pid, signal.SIGKILL)
    again = wait_for(lambda: _state(sup, "web", "active", restarts=1), "web to be restarted")
    assert isinstance(again, UnitStatus)
    assert again.container_id != first.container_id
    assert http_get(port) == "hello from v1\n"

    assert sup.stop(signal.SIGTERM) == 0
    assert "web.service: inactive" in sup.output()
    assert workload_env.podman("ps", "-a", "--format", "{{.Names}}").split() == []


def test_exit_codes_and_restart_policies(workload_env: WorkloadEnv) -> None:
    # A broken image: its command exits with status 3 at once.
    image = push_workload_image(
        workload_env.registry,
        workload_env.registry.new_repo("crash"),
        cmd=("/bin/sh", "-c", "sleep 0.5; exit 3"),
    )
    workload_env.unit(
        "crash.container",
        f"[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=60\n[Container]\nImage={image}\n"
        "[Service]\nRestart=on-failure\nRestartSec=0.1\n",
    )
    workload_env.unit("once.container", f"[Container]\nImage={image}\n[Service]\nRestart=no\n")
    workload_env.unit(
        "clean.container",
        f"[Container]\nImage={image}\nExec=sh -c 'sleep 0.5; exit 0'\n"
        "[Service]\nRestart=on-failure\n",
    )
    workload_env.unit(
        "abort.container",
        f"[Container]\nImage={image}\nExec=sh -c 'sleep 0.5; exit 3'\n"
        "[Service]\nRestart=on-abort\n",
    )
    sup = workload_env.start_supervisor()
    hit = wait_for(
        lambda: _state(sup, "crash", "failed", result="start-limit-hit"), "start-limit-hit", 120
    )
    assert isinstance(hit, UnitStatus)
    assert hit.restarts == 3  # three restarts, the fourth start hit the limit
    assert hit.exit_status == 3
    once = wait_for(lambda: _state(sup, "once", "failed"), "once to fail")
    assert isinstance(once, UnitStatus)
    assert (once.result, once.exit_status, once.restarts) == ("exit-code", 3, 0)
    clean = wait_for(lambda: _state(sup, "clean", "inactive", result="success"), "clean to end")
    assert isinstance(clean, UnitStatus) and clean.restarts == 0 and clean.exit_status == 0
    abort = wait_for(lambda: _state(sup, "abort", "failed"), "on-abort not to restart an exit")
    assert isinstance(abort, UnitStatus) and abort.restarts == 0

    # A start by hand clears the start limit: it runs (and fails) again.
    with contextlib.suppress(UnitFailedError):
        sup.client.start("crash")
    wait_for(lambda: sup.status("crash").restarts > 3, "crash to be started again")
    assert sup.stop() == 0


def test_health_checks_and_on_failure_actions(workload_env: WorkloadEnv) -> None:
    image = _sick_image(workload_env, "sick", healthy_for=5)
    sick = (
        f"[Container]\nImage={image}\n"
        "HealthCmd=test -e /tmp/ok\nHealthInterval=1s\nHealthRetries=2\n"
    )
    workload_env.unit(
        "killed.container",
        sick + "HealthOnFailure=kill\n[Service]\nRestart=on-failure\nRestartSec=0.2\n",
    )
    workload_env.unit("stopped.container", sick + "HealthOnFailure=stop\n")
    workload_env.unit("watched.container", sick + "HealthOnFailure=none\n")
    workload_env.unit(
        "ready.container",
        f"[Container]\nImage={image}\nNotify=healthy\n"
        "Exec=sh -c '(sleep 2; touch /tmp/ok) & exec /usr/bin/serve'\n"
        "HealthCmd=test -e /tmp/ok\nHealthInterval=1s\n",
    )
    sup = workload_env.start_supervisor("killed", "stopped", "watched")
    assert wait_for(lambda: _state(sup, "watched", "active", health=Health.HEALTHY), "healthy")

    ready = sup.client.start("ready")
    assert ready.state is UnitState.ACTIVE
    assert ready.health is Health.HEALTHY  # Notify=healthy: active only once healthy

    wait_for(lambda: sup.status("killed").restarts >= 1, "kill on unhealthy, then restart", 90)
    stopped = wait_for(lambda: _state(sup, "stopped", "failed"), "stop on unhealthy", 90)
    assert isinstance(stopped, UnitStatus)
    assert (stopped.result, stopped.health, stopped.restarts) == ("unhealthy", "unhealthy", 0)
    watched = wait_for(
        lambda: _state(sup, "watched", "active", health=Health.UNHEALTHY), "unhealthy", 90
    )
    assert isinstance(watched, UnitStatus) and watched.restarts == 0
    assert sup.stop() == 0


def test_default_log_and_a_new_session_counts_restarts_afresh(workload_env: WorkloadEnv) -> None:
    image = _sick_image(workload_env, "flaky", healthy_for=3)
    workload_env.unit(
        "flaky.container",
        f"[Container]\nImage={image}\nHealthCmd=test -e /tmp/ok\nHealthInterval=1s\n"
        "HealthRetries=2\nHealthOnFailure=kill\n[Service]\nRestart=on-failure\nRestartSec=0.2\n",
    )
    state_dir = workload_env.root / "flaky-state"
    # No -v: what a supervisor does is in its log at the default level.
    sup = workload_env.start_supervisor("flaky", state_dir=state_dir, verbose=False)
    wait_for(lambda: sup.status("flaky").restarts >= 1, "kill on unhealthy, then restart", 90)
    assert sup.stop() == 0
    log = sup.output()
    for event in ("flaky.service: active", "health starting -> healthy", "healthy -> unhealthy"):
        assert event in log, event
    assert "restarting in 0.2 s" in log and "flaky.service: inactive" in log

    # The next session starts the unit afresh: the failed session's restarts are not its own.
    again = workload_env.start_supervisor("flaky", state_dir=state_dir, verbose=False)
    first = wait_for(lambda: _state(again, "flaky", "active"), "flaky to be active again")
    assert isinstance(first, UnitStatus) and first.restarts == 0
    assert again.stop() == 0


def test_notify_ready_and_start_timeout(workload_env: WorkloadEnv) -> None:
    sdnotify_binary()
    image = push_workload_image(
        workload_env.registry, workload_env.registry.new_repo("notify"), notify=True
    )
    workload_env.unit(
        "tells.container",
        f"[Container]\nImage={image}\nNotify=true\n"
        "Exec=sh -c 'sleep 1; sdnotify READY=1; exec /usr/bin/serve'\n",
    )
    workload_env.unit(
        "silent.container",
        f"[Container]\nImage={image}\nNotify=true\n[Service]\nTimeoutStartSec=3\n",
    )
    workload_env.unit(
        "dog.container",
        f"[Container]\nImage={image}\nNotify=true\n"
        "Exec=sh -c 'sdnotify READY=1; sdnotify WATCHDOG=1; exec /usr/bin/serve'\n"
        "[Service]\nWatchdogSec=2\nRestart=on-watchdog\nRestartSec=0.2\n",
    )
    sup = workload_env.start_supervisor("tells.container", "dog")
    tells = sup.client.start("tells")
    assert tells.state is UnitState.ACTIVE and tells.main_pid
    with pytest.raises(UnitFailedError, match="timeout"):
        sup.client.start("silent")
    silent = sup.status("silent")
    assert (silent.state, silent.result) == ("failed", "timeout")
    # dog pings once, then never again: the watchdog ends it and on-watchdog restarts it.
    wait_for(lambda: sup.status("dog").restarts >= 1, "the watchdog to restart dog", 90)
    assert "dog.service: watchdog" in sup.output()
    assert "systemd-tells" in workload_env.podman("ps", "--format", "{{.Names}}").split()
    assert sup.stop() == 0


def test_restarted_supervisor_adopts_the_running_container(workload_env: WorkloadEnv) -> None:
    _, port = workload_env.web_unit("adopt", "Restart=always\n")
    first = workload_env.start_supervisor()
    before = wait_for(lambda: _state(first, "web", "active"), "web to be active")
    assert isinstance(before, UnitStatus)
    first.stop(signal.SIGKILL)  # the supervisor dies; the container lives on
    assert http_get(port) == "hello from v1\n"
    saved = json.loads((first.state_dir / "state.json").read_text())
    assert saved["units"]["web.container"]["containerId"] == before.container_id

    second = workload_env.start_supervisor(state_dir=first.state_dir)
    after = wait_for(lambda: _state(second, "web", "active"), "web to be adopted")
    assert isinstance(after, UnitStatus)
    assert after.container_id == before.container_id
    names = workload_env.podman("ps", "-a", "--format", "{{.Names}}").split()
    assert names == ["systemd-web"]
    assert second.stop() == 0
    assert workload_env.podman("ps", "-a", "--format", "{{.Names}}").split() == []


def test_dependencies_start_first_and_failures_propagate(workload_env: WorkloadEnv) -> None:
    registry = workload_env.registry
    image = push_workload_image(registry, registry.new_repo("deps"))
    workload_env.unit("data.volume", "[Volume]\n")
    workload_env.unit("app.pod", "[Pod]\n")
    workload_env.unit(
        "member.container",
        f"[Container]\nImage={image}\nPod=app.pod\nVolume=data.volume:/data\n",
    )
    missing_image = f"{registry.server.host}/{registry.new_repo('absent')}:v1"
    workload_env.unit("broken.container", f"[Container]\nImage={missing_image}\n")
    workload_env.unit(
        "needy.container",
        f"[Unit]\nRequires=broken.service\nAfter=broken.service\n[Container]\nImage={image}\n",
    )
    sup = workload_env.start_supervisor("member")
    wait_for(lambda: _state(sup, "member", "active"), "member to be active")
    assert sup.status("data.volume").state is UnitState.ACTIVE
    assert sup.status("app.pod").state is UnitState.ACTIVE
    assert "systemd-data" in workload_env.podman("volume", "ls", "--format", "{{.Name}}").split()
    assert "systemd-app" in workload_env.podman("pod", "ps", "--format", "{{.Name}}").split()

    stopped = sup.client.stop("app.pod")  # stops the member first
    assert stopped.state is UnitState.INACTIVE
    assert sup.status("member").state is UnitState.INACTIVE

    with pytest.raises(UnitFailedError, match=r"broken\.service"):
        sup.client.start("needy")
    assert (sup.status("needy").state, sup.status("needy").result) == ("failed", "dependency")
    broken = sup.status("broken")
    assert (broken.state, broken.result) == ("failed", "exit-code")
    assert sup.stop() == 0
