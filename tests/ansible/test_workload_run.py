"""``run: started/stopped/restarted`` of atoll.edge.workload against atoll's
supervisor running real podman (the unit directory and podman store are the
test's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.ansible import Collection, playbook_run
from helpers.registry import RegistryView
from helpers.workloads import WorkloadEnv, http_get, wait_for, workload_environment

pytestmark = [pytest.mark.integration]

PLAYBOOK = Path(__file__).with_name("workload_run.yml")


@pytest.fixture
def workload_env(registry: RegistryView, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkloadEnv]:
    yield from workload_environment(registry, monkeypatch)


def test_run_states_through_the_supervisor(
    collection: Collection, workload_env: WorkloadEnv, tmp_path: Path
) -> None:
    _, port = workload_env.web_unit("ansible", page="from ansible\n")
    unit = (workload_env.units / "web.container").read_text()
    supervisor = workload_env.start_supervisor()
    wait_for(lambda: supervisor.status("web").state == "active", "web to be active")
    extra = {
        "unit": unit,
        "unit_dir": str(workload_env.units),
        "state_dir": str(supervisor.state_dir),
    }
    result = playbook_run(collection, PLAYBOOK, extra, tmp_path)
    assert (result.failed, result.changed) == (0, 3), result.output
    assert supervisor.status("web").state == "active"
    assert http_get(port) == "from ansible\n"
    assert (workload_env.units / "web.container").read_text() == unit + "# changed\n"
