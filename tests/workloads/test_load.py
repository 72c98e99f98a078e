"""Twenty units on one image tag under ``atoll workload run``: updated, rolled back,
adopted after the supervisor is killed, and stopped, with real podman and a real
registry.  Times are measured by bench/autoupdate, not here: this test checks
what runs after each step, against podman itself."""

from __future__ import annotations

import datetime
import json
import signal
from typing import Any

import pytest

from atoll.workloads.control import Health, UnitState, UnitStatus
from helpers.cli import run_atoll
from helpers.workloads import (
    EXITS_AT_ONCE,
    SupervisorProcess,
    WorkloadEnv,
    release_workload_image,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNITS = 20
#: Short, so that the test stays short (the first health checks of a wave need a few
#: seconds on a busy machine); the waves and rounds do not depend on it.
WATCH = "15s"


def _units(env: WorkloadEnv, image: str) -> list[str]:
    names = [f"web{i:02d}" for i in range(UNITS)]
    for name in names:
        env.unit(
            f"{name}.container",
            f"[Container]\nImage={image}\nAutoUpdate=registry\nHealthCmd=test -e /tmp/ok\n"
            "HealthInterval=5s\nHealthRetries=2\nHealthOnFailure=kill\nStopTimeout=2\n"
            "[Service]\nRestart=always\n",
        )
    return names


def _all(sup: SupervisorProcess) -> dict[str, UnitStatus]:
    return {s.name: s for s in sup.client.status_all()}


def _all_healthy(sup: SupervisorProcess) -> dict[str, UnitStatus] | None:
    units = _all(sup)
    healthy = all(
        s.state is UnitState.ACTIVE and s.health is Health.HEALTHY for s in units.values()
    )
    return units if healthy and len(units) == UNITS else None


def _running(env: WorkloadEnv) -> dict[str, tuple[str, str]]:
    """podman's own view: container name -> (container ID, image ID), running ones only."""
    out = env.podman("ps", "--no-trunc", "--format", "{{.Names}} {{.ID}} {{.ImageID}}")
    found = {}
    for line in out.splitlines():
        name, container_id, image_id = line.split()
        found[name.removeprefix("systemd-")] = (container_id, image_id.removeprefix("sha256:"))
    return found


def _auto_update(env: WorkloadEnv, sup: SupervisorProcess) -> tuple[int, Any]:
    proc = run_atoll(
        "workload", "auto-update", "--root", str(env.units), "--state-dir", str(sup.state_dir),
        "--update-state-dir", str(env.root / "updates"), "--format", "json", "--watch", WATCH,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _reasons(doc: Any) -> list[tuple[str, str, str]]:
    return [(u["unit"], u["updated"], u["reason"]) for u in doc["units"]]


def test_twenty_units_on_one_tag_update_roll_back_adopt_and_stop(
    workload_env: WorkloadEnv,
) -> None:
    env = workload_env
    repo = env.registry.new_repo("load/web")
    release_workload_image(env.registry, repo, "v1", "prod")
    names = _units(env, f"{env.registry.server.host}/{repo}:prod")
    sup = env.start_supervisor()
    wait_for(lambda: _all_healthy(sup), "20 healthy units", timeout=300)

    # A good image reaches all twenty.
    v2 = release_workload_image(env.registry, repo, "v2", "prod")
    code, doc = _auto_update(env, sup)
    assert code == 0, _reasons(doc)
    assert {u["unit"]: u["updated"] for u in doc["units"]} == {
        f"{n}.container": "true" for n in names
    }
    assert {u["digest"]["new"] for u in doc["units"]} == {v2}
    running = _running(env)
    host = env.registry.server.host
    v2_image = env.podman("image", "inspect", "--format", "{{.Id}}", f"{host}/{repo}@{v2}").strip()
    assert {n: image for n, (_, image) in running.items()} == dict.fromkeys(names, v2_image)

    # A bad image (it exits at once): the wave it reached is rolled back, the
    # rollout stops there, nothing is left down, and the report says what runs.
    v3 = release_workload_image(env.registry, repo, "v3", "prod", EXITS_AT_ONCE)
    code, doc = _auto_update(env, sup)
    assert code == 56, _reasons(doc)
    outcome = {u["unit"]: u for u in doc["units"]}
    rolled_back = [u for u, r in outcome.items() if r["updated"] == "rolled back"]
    assert rolled_back, doc
    for report in outcome.values():
        assert report["digest"]["new"] == v3, report
        if report["updated"] != "rolled back":
            assert report["updated"] == "false", report
            assert report["reason"].startswith("not restarted"), report
        assert report["rolledBackDigests"] == [v3], report
    assert sorted(doc["rolledBack"]) == sorted(rolled_back)
    units = wait_for(lambda: _all_healthy(sup), "20 healthy units after the rollback", timeout=120)
    assert isinstance(units, dict)
    running = _running(env)
    assert {n: image for n, (_, image) in running.items()} == dict.fromkeys(names, v2_image)
    assert {n: s.image_id for n, s in units.items()} == dict.fromkeys(names, v2_image)
    # The next run does not take v3 again on any unit.
    code, doc = _auto_update(env, sup)
    assert code == 0, _reasons(doc)
    assert {u["updated"] for u in doc["units"]} == {"false"}, doc

    # The supervisor is killed; another adopts all twenty without a restart.
    before = _all(sup)
    sup.stop(signal.SIGKILL)
    restarted_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    second = env.start_supervisor(state_dir=sup.state_dir)
    adopted = wait_for(lambda: _all_healthy(second), "the 20 units to be adopted", timeout=120)
    assert isinstance(adopted, dict)
    assert _running(env) == running
    for name, status in adopted.items():
        assert status.container_id == before[name].container_id
        assert status.restarts == before[name].restarts
        # Active since its container started, not since the adoption.
        assert status.since < restarted_at, (status.since, restarted_at)

    # SIGTERM stops all twenty and leaves nothing behind.
    assert second.stop() == 0
    assert env.podman("ps", "-a", "--format", "{{.Names}}").split() == []
    assert list((second.state_dir / "run").glob("*.cid")) == []
