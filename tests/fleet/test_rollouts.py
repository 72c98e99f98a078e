"""Rollouts' disruption budget and automatic retries, through the API of a
real server on SQLite and PostgreSQL, with devices reporting as the agent does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from atoll.agent.client import AgentClient
from atoll.fleet.db import open_engine
from atoll.fleet.models import Role
from atoll.fleet.serve import create_token, upgrade_database
from helpers.fleet import (
    FleetServer,
    Postgres,
    enrolled,
    open_spec,
    operator,
    report,
    serving,
    wait_for,
)

OLD = "reg/os@sha256:" + "a" * 64
NEW = "reg/os@sha256:" + "b" * 64
NEW_DIGEST = NEW.rpartition("@")[2]
OLD_DIGEST = OLD.rpartition("@")[2]


def fleet_of(server: FleetServer, tmp_path: Path, **sites: str) -> dict[str, AgentClient]:
    """Fleet edge on OLD and devices enrolled in it: name -> its site label."""
    with operator(server) as api:
        fleet = {"selector": "fleet=edge", "template": {"os": {"image": OLD}}}
        assert api.put("fleets/edge", json=fleet).is_success
    return {
        name: enrolled(server, tmp_path, name, fleet="edge", site=site)
        for name, site in sites.items()
    }


def image_of(device: AgentClient) -> str:
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    envelope = device.request("GET", "/api/v1/agent/spec").json()
    return str(open_spec(envelope, device.device, keys).spec["os"]["image"])


def states(rollout: dict[str, Any]) -> dict[str, str]:
    return {d["name"]: d["state"] for b in rollout["batches"] for d in b["devices"]}


def test_the_disruption_budget_holds_devices_per_label_group(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    devices = fleet_of(fleet_server, tmp_path, a1="a", a2="a", a3="a", b1="b")
    with operator(fleet_server) as api:
        body: dict[str, Any] = {
            "fleet": "edge",
            "os": {"image": NEW},
            "batches": [{"percent": 100}],
            "disruptionBudget": {"groupBy": ["site"], "maxUnavailable": 1},
        }
        for bad, message in [
            ({"groupBy": ["site"], "maxUnavailable": 0}, "greater than or equal to 1"),
            ({"groupBy": ["no good"], "maxUnavailable": 1}, "'no good' is not a label key"),
            ({"groupBy": ["site"]}, "maxUnavailable: Field required"),
        ]:
            refused = api.put("rollouts/r1", json={**body, "disruptionBudget": bad})
            assert refused.status_code == 422
            assert message in refused.json()["error"]
        started = api.put("rollouts/r1", json=body).json()
        assert states(started) == {
            "a1": "updating",
            "a2": "waiting",
            "a3": "waiting",
            "b1": "updating",
        }
        held = started["batches"][0]["devices"][1]
        assert (
            held["reason"] == "held by the disruption budget (1 unavailable at most in its group)"
        )
        assert (image_of(devices["a1"]), image_of(devices["a2"])) == (NEW, OLD)

        report(devices["a1"], NEW_DIGEST)
        moved = wait_for(api, lambda rollout: states(rollout)["a2"] == "updating")
        assert image_of(devices["a2"]) == NEW
        assert states(moved)["a3"] == "waiting"
        report(devices["b1"], NEW_DIGEST)  # another group: frees nothing for site a
        moved = wait_for(api, lambda rollout: states(rollout)["b1"] == "succeeded")
        assert states(moved)["a3"] == "waiting"
        report(devices["a2"], NEW_DIGEST)
        report(devices["a3"], NEW_DIGEST)
        done = wait_for(api, lambda rollout: rollout["state"] == "done")
    assert done["state"] == "done"
    assert set(states(done).values()) == {"succeeded"}


def test_failed_devices_are_retried_with_backoff(fleet_server: FleetServer, tmp_path: Path) -> None:
    devices = fleet_of(fleet_server, tmp_path, d1="a", d2="a")
    with operator(fleet_server) as api:
        started = api.put(
            "rollouts/r1",
            json={
                "fleet": "edge",
                "os": {"image": NEW},
                "batches": [{"count": 1}],
                "retries": {"limit": 1, "backoff": 1},
            },
        )
        assert started.status_code == 201, started.text

        report(devices["d1"], OLD_DIGEST, failed="registry.example: connection refused")
        retrying = api.get("rollouts/r1").json()
        d1 = retrying["batches"][0]["devices"][0]
        assert (retrying["state"], d1["state"], d1["attempts"]) == ("running", "retrying", 1)
        assert d1["reason"].startswith(
            "attempt 1 of 2 failed (registry.example: connection refused); retried at "
        )
        assert image_of(devices["d1"]) == NEW  # it keeps the target while it waits
        # After the backoff the device is updating again; the failure before does not count.
        wait_for(api, lambda r: states(r)["d1"] == "updating")
        report(devices["d1"], NEW_DIGEST)
        moved = api.get("rollouts/r1").json()
        assert (moved["currentBatch"], states(moved)) == (1, {"d1": "succeeded", "d2": "updating"})

        report(devices["d2"], OLD_DIGEST, health="red", failed="the boot was red: rolled back")
        assert states(api.get("rollouts/r1").json())["d2"] == "retrying"
        wait_for(api, lambda r: states(r)["d2"] == "updating")
        report(devices["d2"], OLD_DIGEST, health="red", failed="the boot was red: rolled back")
        paused = api.get("rollouts/r1").json()
    assert paused["state"] == "paused"
    assert paused["reason"] == (
        "batch 1: error threshold: 1 of 1 devices failed (d2: the boot was red: rolled back)"
    )
    assert paused["batches"][1]["devices"][0]["attempts"] == 1


def test_a_report_does_not_wait_for_a_rollout_another_transaction_holds(
    postgres: Postgres, tmp_path: Path
) -> None:
    """While another transaction holds the rollout's row (another report
    reconciling it, say), a device's report is recorded without waiting for
    the row, and the rollout takes it in once the row is free (a thousand
    devices of a batch reporting at once used to wait in line for it)."""
    db = postgres.create_database()
    upgrade_database(db)
    server = FleetServer("", db, create_token(db, "admin", Role.ADMIN))
    with serving(db) as server.url:
        device = fleet_of(server, tmp_path, d1="a")["d1"]
        with operator(server) as api:
            body = {"fleet": "edge", "os": {"image": NEW}, "batches": [{"percent": 100}]}
            assert api.put("rollouts/r1", json=body).is_success
            assert image_of(device) == NEW
            engine = open_engine(db)
            try:
                with engine.connect() as holder:
                    holder.execute(text("SELECT 1 FROM rollouts WHERE name = 'r1' FOR UPDATE"))
                    report(device, NEW_DIGEST)  # answered while the row is held
                    with engine.connect() as reader:
                        status = "SELECT status->>'bootedDigest' FROM devices WHERE name = 'd1'"
                        member = "SELECT state FROM rollout_devices WHERE device = 'd1'"
                        assert reader.execute(text(status)).scalar() == NEW_DIGEST
                        assert reader.execute(text(member)).scalar() == "updating"
                    holder.rollback()
            finally:
                engine.dispose()
            wait_for(api, lambda rollout: states(rollout) == {"d1": "succeeded"})
