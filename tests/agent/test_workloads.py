"""The agent reloads a directory device's workloads when its spec changes the
Quadlet units: a real supervisor (``atoll workload run``) on the device's
/etc/containers/systemd, real podman, images from the real registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.agent.run import Agent, enroll
from atoll.agent.state import AgentState
from atoll.errors import UnknownUnitError
from helpers.fleet import FleetServer, operator
from helpers.workloads import WorkloadEnv, free_port, http_get, push_workload_image, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SQLITE = pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)


@SQLITE
def test_changed_units_are_reloaded_and_restarted(
    fleet_server: FleetServer, workload_env: WorkloadEnv, tmp_path: Path
) -> None:
    root = workload_env.root / "device"
    workload_env.units = root / "etc/containers/systemd"
    workload_env.units.mkdir(parents=True)
    supervisor = workload_env.start_supervisor()
    repo = workload_env.registry.new_repo("web")
    v1 = push_workload_image(workload_env.registry, repo, "v1", page="hello from v1\n")
    v2 = push_workload_image(workload_env.registry, repo, "v2", page="hello from v2\n")
    port = free_port()

    def fleet(units: dict[str, str]) -> None:
        with operator(fleet_server) as api:
            body = {"selector": "", "autoApprove": True, "template": {"units": units}}
            assert api.put("fleets/edge", json=body).is_success

    def web(image: str) -> dict[str, str]:
        return {"web.container": f"[Container]\nImage={image}\nPublishPort=127.0.0.1:{port}:8080\n"}

    fleet(web(v1))
    state = AgentState(tmp_path / "agent")
    with operator(fleet_server) as api:
        token = api.post("enrollmenttokens", json={}).json()["token"]
    enroll(state, fleet_server.url, token, "dev1", {})
    agent = Agent(
        state,
        root=root,
        workload_manager="supervisor",
        workload_state_dir=supervisor.state_dir,
    )
    try:
        first = agent.step()
        assert (first.update, first.applied_version) == ("applied", 1)
        assert agent.workloads == {"web.container": "restarted"}
        assert supervisor.status("web").state == "active"
        assert http_get(port) == "hello from v1\n"

        fleet(web(v2))
        second = agent.step(wait=5)
        assert (second.update, second.applied_version) == ("applied", 2)
        assert agent.workloads == {"web.container": "restarted"}
        assert http_get(port) == "hello from v2\n"
        assert supervisor.status("web").image == v2
        with operator(fleet_server) as api:
            reported = api.get("devices/dev1").json()["status"]["workloads"]
        assert reported == {"web.container": "restarted"}

        fleet({})
        third = agent.step(wait=5)
        assert (third.update, third.applied_version) == ("applied", 3)
        assert agent.workloads == {"web.container": "stopped"}
        with pytest.raises(UnknownUnitError):
            supervisor.status("web")
        gone = wait_for(
            lambda: workload_env.podman("ps", "--format", "{{.Names}}").split() == [],
            "the web container to be removed",
        )
        assert gone
    finally:
        agent.close()
