"""``podman container inspect`` asked together (atoll.workloads.supervise.inspections),
with real podman."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from atoll.workloads.supervise.inspections import ContainerInspections
from atoll.workloads.supervise.runtime import environment_key
from helpers.workloads import WorkloadEnv, push_workload_image, wait_for

pytestmark = pytest.mark.integration


def test_requests_that_come_while_one_runs_go_together(workload_env: WorkloadEnv) -> None:
    image = push_workload_image(workload_env.registry, workload_env.registry.new_repo("inspect"))
    workload_env.podman("pull", "--quiet", image)
    containers = [
        workload_env.podman("run", "-d", "--rm", image, "sleep", "600").strip() for _ in range(3)
    ]
    env = {**os.environ, **workload_env.podman_env}
    inspections = ContainerInspections()
    # Hold the group as if a podman process were running, so that every request waits.
    key = environment_key(env)
    inspections._running.add(key)
    asked = [*containers, containers[0][:12], "no-such-container"]
    answers: dict[str, dict[str, Any] | None] = {}

    def ask(container: str) -> None:
        answers[container] = inspections.inspect(container, env)

    threads = [threading.Thread(target=ask, args=(c,)) for c in asked]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(inspections._waiting.get(key, ())) == len(asked), "the requests")
    with inspections._cond:
        inspections._running.discard(key)
        inspections._cond.notify_all()
    for thread in threads:
        thread.join(120)
    assert inspections.processes == 1
    for container in containers:
        found = answers[container]
        assert found is not None and found["Id"] == container
        assert found["State"]["Running"]
    assert answers[containers[0][:12]] == answers[containers[0]]
    assert answers["no-such-container"] is None

    # Alone, a request is one process of its own, and a container that is gone is None.
    workload_env.podman("rm", "--force", "--time", "0", containers[1])
    assert inspections.inspect(containers[1], env) is None
    assert inspections.processes == 2
