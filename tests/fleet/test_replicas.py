"""Two API processes on one PostgreSQL database: no state in a process, and a
rollout's batch is released once however many reports arrive at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from atoll.agent import wire
from atoll.agent.client import AgentClient
from atoll.agent.run import enroll
from atoll.agent.state import AgentState
from helpers.fleet import FleetServer, serving, wait_for

OLD = "reg/os@sha256:" + "a" * 64
NEW = "reg/os@sha256:" + "b" * 64


@pytest.mark.parametrize("fleet_db", ["postgresql"], indirect=True)
def test_two_replicas_share_one_database(fleet_server: FleetServer, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {fleet_server.token}"}
    with serving(fleet_server.db) as second:
        a = httpx.Client(base_url=f"{fleet_server.url}/api/v1", headers=headers, timeout=30)
        b = httpx.Client(base_url=f"{second}/api/v1", headers=headers, timeout=30)
        template = {"os": {"image": OLD}}
        assert a.put("fleets/edge", json={"selector": "", "template": template}).is_success
        token = b.post("enrollmenttokens", json={"oneTime": False}).json()["token"]
        devices = []
        for i in range(8):
            name = f"d{i}"
            state = AgentState(tmp_path / name)
            enroll(state, fleet_server.url if i % 2 else second, token, name, {})
            assert (a if i % 2 else b).post(f"enrollmentrequests/{name}/approve").is_success
            key = wire.load_private_key(state.key_path.read_bytes())
            devices.append(AgentClient(fleet_server.url if i % 2 else second, name, key))
        body = {"fleet": "edge", "os": {"image": NEW}, "batches": [{"count": 4}, {"count": 4}]}
        assert a.put("rollouts/r1", json=body).status_code == 201

        def report(device: AgentClient) -> int:
            status = {"bootedDigest": NEW.rpartition("@")[2], "health": "green"}
            return device.request("PUT", "/api/v1/agent/status", body=status).status_code

        # Every device of batch 0 reports at once, through both replicas.
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(report, devices[:4])) == [204] * 4
        rollout = wait_for(b, lambda rollout: rollout["currentBatch"] == 1)
        assert rollout["state"] == "running"
        assert [d["state"] for d in rollout["batches"][1]["devices"]] == ["updating"] * 4
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(report, devices[4:])) == [204] * 4
        wait_for(a, lambda rollout: rollout["state"] == "done")
        assert b.get("fleets/edge").json()["spec"]["template"]["os"] == {"image": NEW}
        starts = [e for e in a.get("events").json() if e["kind"] == "Rollout"]
        assert len(starts) == 1
        for client in (a, b, *devices):
            client.close()
