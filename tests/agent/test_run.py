"""The agent against a real fleet server on loopback (SQLite)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent.run import Agent, enroll
from atoll.agent.state import AgentState
from atoll.errors import EnrollmentError, FleetUnavailableError
from helpers.fleet import FleetServer

SQLITE = pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)

DIGEST = "sha256:" + "c" * 64
TEMPLATE = {
    "units": {"web.container": "[Container]\nImage=reg/web@" + DIGEST + "\n"},
    "files": [
        {"path": "/etc/motd", "content": "hello\n"},
        {"path": "/etc/app/app.conf", "content": "level=1\n", "mode": 0o600},
    ],
    "updatePolicy": {"policy": "stage", "download": {"window": "* 2-4 * * *"}},
}


def api(server: FleetServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api/v1",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    )


def auto_enrolled(
    server: FleetServer, client: httpx.Client, tmp_path: Path, name: str, template: Any
) -> AgentState:
    """A device enrolled through a fleet that approves every device at once."""
    client.put("fleets/edge", json={"selector": "", "template": template, "autoApprove": True})
    state = AgentState(tmp_path / "agent")
    enroll(state, server.url, client.post("enrollmenttokens", json={}).json()["token"], name, {})
    return state


@SQLITE
def test_enroll_apply_and_report(fleet_server: FleetServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/atoll").mkdir(parents=True)
    (root / "etc/atoll/updates.toml").write_text(
        'policy = "none"\n[trust]\nmax_signature_age = "7d"\n'
    )
    state = AgentState(tmp_path / "agent")
    with api(fleet_server) as client:
        client.put("fleets/edge", json={"selector": "site=berlin", "template": TEMPLATE})
        token = client.post("enrollmenttokens", json={}).json()["token"]
    assert enroll(state, fleet_server.url, token, "dev1", {"site": "berlin"})["state"] == "pending"
    assert (state.key_path.stat().st_mode & 0o777) == 0o600
    agent = Agent(state, root=root)
    try:
        assert agent.step().enrollment == "pending"
        with api(fleet_server) as client:
            client.post("enrollmentrequests/dev1/approve")
        first = agent.step()
        assert (first.enrollment, first.update, first.applied_version) == ("approved", "applied", 1)
        assert (root / "etc/motd").read_text() == "hello\n"
        assert (root / "etc/app/app.conf").stat().st_mode & 0o777 == 0o600
        assert "Image=reg/web@" in (root / "etc/containers/systemd/web.container").read_text()
        updates = tomllib.loads((root / "etc/atoll/updates.toml").read_text())
        assert updates["policy"] == "stage"
        assert updates["download"]["window"] == "* 2-4 * * *"
        assert updates["trust"] == {"max_signature_age": "7d"}  # the device's own, kept
        again = agent.step(wait=0.5)  # nothing changed: the poll answers 204
        assert (again.update, again.applied_version) == ("idle", 1)
        with api(fleet_server) as client:
            seen = client.get("devices/dev1").json()
            assert seen["status"]["appliedVersion"] == 1
            assert seen["status"]["update"] == {"state": "idle", "reason": ""}
            smaller = {**TEMPLATE, "files": TEMPLATE["files"][:1], "units": {}}
            client.put("fleets/edge", json={"selector": "site=berlin", "template": smaller})
        second = agent.step(wait=5)
        assert (second.update, second.applied_version) == ("applied", 2)
        assert (root / "etc/motd").exists()
        assert not (root / "etc/app/app.conf").exists()
        assert not (root / "etc/containers/systemd/web.container").exists()
    finally:
        agent.close()


@SQLITE
def test_an_os_image_the_device_cannot_stage_fails_the_rollout(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    """No sysroot: the spec's OS image cannot be staged; the device says so and is
    never reported up to date, and the rollout pauses on it."""
    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "dev1", {})
        agent = Agent(state, root=tmp_path / "root")
        try:
            assert agent.step().applied_version == 1
            client.put(
                "rollouts/r1",
                json={
                    "fleet": "edge",
                    "os": {"image": f"reg/os@{DIGEST}"},
                    "batches": [{"count": 1}],
                },
            )
            result = agent.step(wait=5)
            assert (result.update, result.applied_version) == ("failed", 1)
            assert "no --sysroot" in result.reason
        finally:
            agent.close()
        rollout = client.get("rollouts/r1").json()
    assert rollout["state"] == "paused"
    assert "dev1: the spec names an OS image and there is no --sysroot" in rollout["reason"]


@SQLITE
def test_the_first_round_after_a_start_reports_without_waiting(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    """After a reboot the agent starts again: what the device booted is reported
    at once, not after a long poll of the whole --wait."""
    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "d", {})
    rounds: list[Any] = []
    for start in range(2):  # the first start applies version 1; the second finds it unchanged
        agent = Agent(state, root=tmp_path / "root")
        waits: list[float] = []
        poll = agent.poll

        def recorded(wait: float, poll: Any = poll, waits: list[float] = waits) -> Any:
            waits.append(wait)
            return poll(wait)

        agent.poll = recorded  # type: ignore[method-assign]
        try:
            agent.run(wait=0.5, rounds=2, on_round=rounds.append)
        finally:
            agent.close()
        assert waits == [0.0, 0.5], f"start {start}"
    assert [r.update for r in rounds] == ["applied", "idle", "idle", "idle"]
    assert [r.applied_version for r in rounds] == [1, 1, 1, 1]


@SQLITE
def test_a_revoked_device_is_refused(fleet_server: FleetServer, tmp_path: Path) -> None:
    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "d", {})
        agent = Agent(state, root=tmp_path / "root")
        try:
            agent.step()
            client.post("devices/d/revoke")
            with pytest.raises(EnrollmentError, match="device 'd' is revoked: refused"):
                agent.step()
        finally:
            agent.close()


def test_an_unreachable_server_is_retried_with_growing_jittered_delays(tmp_path: Path) -> None:
    from helpers.workloads import free_port

    state = AgentState(tmp_path / "agent")
    with pytest.raises(EnrollmentError, match="has not enrolled"):
        Agent(state)
    state.root.mkdir()
    from atoll.agent import wire

    state.key_path.write_bytes(wire.private_key_pem(wire.generate_key()))
    state.write(
        "identity.json", {"format": 1, "server": f"http://127.0.0.1:{free_port()}", "device": "d"}
    )
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 5:
            raise FleetUnavailableError("enough")

    agent = Agent(state)
    with pytest.raises(FleetUnavailableError, match="enough"):
        agent.run(rounds=1, sleep=sleep)
    agent.close()
    assert all(2**i / 2 <= d <= 2**i for i, d in enumerate(delays))


@SQLITE
def test_the_os_image_waits_for_the_download_window(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    import datetime

    closed_hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    policy = {"policy": "stage", "download": {"window": f"* {closed_hour} * * *"}}
    template = {"os": {"image": f"reg/os@{DIGEST}"}, "updatePolicy": policy}
    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "d", template)
        agent = Agent(state, root=tmp_path / "root")
        try:
            result = agent.step()
        finally:
            agent.close()
        reported = client.get("devices/d").json()["status"]["update"]
    assert (result.update, result.applied_version) == ("waiting", 0)
    assert result.reason.startswith("the download window is closed; it opens at ")
    assert reported["state"] == "waiting"


@SQLITE
def test_the_device_key_rotates_before_the_certificate_ends_and_when_asked(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    import datetime

    from atoll.agent import wire
    from atoll.agent.client import AgentClient

    def refused(pem: bytes) -> str:
        old = AgentClient(fleet_server.url, "d", wire.load_private_key(pem))
        try:
            answer = old.request("GET", "/api/v1/agent/spec", params={"knownVersion": "0"})
        finally:
            old.close()
        assert answer.status_code == 401
        return str(answer.json()["error"])

    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "d", {})
        agent = Agent(state, root=tmp_path / "root")
        try:
            agent.step()
            first_key, first_cert = state.key_path.read_bytes(), state.read("enrollment.json")
            agent.step()  # a year left, nothing asked: kept
            assert state.key_path.read_bytes() == first_key
            assert state.read("enrollment.json") == first_cert

            # Before the certificate ends: a new key, certified; the old one refused.
            agent.renew_before = datetime.timedelta(days=400)
            assert agent.step().enrollment == "approved"
            second_key = state.key_path.read_bytes()
            assert second_key != first_key and (state.key_path.stat().st_mode & 0o777) == 0o600
            assert (state.read("enrollment.json") or {})["certificate"] != first_cert
            assert not state.next_key_path.exists()
            assert refused(first_key) == "the signature is not device 'd''s"
            assert client.get("events").json()[0]["action"] == "rotate-key"
            agent.renew_before = datetime.timedelta(days=120)

            # An operator asks: the device hears it in the answer to its report.
            assert client.post("devices/d/rotatekey").json()["keyRotation"] is True
            assert client.post("devices/nobody/rotatekey").status_code == 404
            agent.step()
            assert agent.rotation_requested and state.key_path.read_bytes() == second_key
            agent.step()
            third_key = state.key_path.read_bytes()
            assert third_key != second_key and not agent.rotation_requested
            assert client.get("devices/d").json()["keyRotation"] is False
            refused(second_key)
            actions = [e["action"] for e in client.get("events").json()[:2]]
            assert actions == ["rotate-key", "request-key-rotation"]

            # The new key must be proven and new.
            other = wire.generate_key()
            public = wire.public_key_pem(wire.generate_key().public_key())
            bad = {
                "publicKey": public,
                "proof": wire.sign(other, wire.rotation_message("d", public)),
            }
            answer = agent.client.request("POST", "/api/v1/agent/key", body=bad)
            assert (answer.status_code, answer.json()["error"]) == (
                422, "proof: not the new key's signature"
            )  # fmt: skip
            same = wire.public_key_pem(wire.load_private_key(third_key).public_key())
            again = {"publicKey": same,
                     "proof": wire.sign(wire.load_private_key(third_key),
                                        wire.rotation_message("d", same))}  # fmt: skip
            assert agent.client.request("POST", "/api/v1/agent/key", body=again).status_code == 409

            # A rotation cut short after the server took the key: finished next round.
            fourth = wire.generate_key()
            public = wire.public_key_pem(fourth.public_key())
            body = {
                "publicKey": public,
                "proof": wire.sign(fourth, wire.rotation_message("d", public)),
            }
            assert agent.client.request("POST", "/api/v1/agent/key", body=body).status_code == 200
            state.next_key_path.write_bytes(wire.private_key_pem(fourth))
            assert agent.step().enrollment == "approved"
            assert state.key_path.read_bytes() == wire.private_key_pem(fourth)
            # ... and one the server never saw is dropped.
            state.next_key_path.write_bytes(wire.private_key_pem(wire.generate_key()))
            assert agent.step().enrollment == "approved"
            assert not state.next_key_path.exists()
            assert state.key_path.read_bytes() == wire.private_key_pem(fourth)
        finally:
            agent.close()


@SQLITE
def test_a_rotated_spec_key_is_learned_from_signed_specs(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    import datetime

    from atoll.agent import wire
    from atoll.errors import SpecTrustError
    from atoll.fleet.db import open_engine, session_factory, transaction
    from atoll.fleet.keys import load_keys
    from atoll.fleet.serve import rotate_keys

    def signing_key() -> Any:
        engine = open_engine(fleet_server.db)
        with transaction(session_factory(engine)) as session:
            found = load_keys(session)
        engine.dispose()
        assert found is not None
        return found.spec_key

    with api(fleet_server) as client:
        state = auto_enrolled(fleet_server, client, tmp_path, "d", {})
    agent = Agent(state, root=tmp_path / "root")
    try:
        assert agent.step().applied_version == 1
        old = signing_key()
        assert rotate_keys(fleet_server.db).startswith("announced spec key ")
        assert (agent.step(wait=5).update, len(agent._spec_keys())) == ("applied", 2)
        assert rotate_keys(fleet_server.db).endswith("now signs; the old one is retired")
        result = agent.step(wait=5)
        assert (result.update, result.applied_version) == ("applied", 3)
        assert list(agent._spec_keys()) == [wire.key_id(signing_key().public_key())]
        now = datetime.datetime.now(datetime.UTC)
        forged = wire.seal_spec(
            old,
            {"device": "d", "version": 9, "issuedAt": now.isoformat(),
             "expiresAt": (now + datetime.timedelta(days=1)).isoformat(), "spec": {}},
        )  # fmt: skip
        with pytest.raises(SpecTrustError, match="which the server did not give this device"):
            wire.open_spec(forged, agent._spec_keys(), device="d", applied_version=3, now=now)
    finally:
        agent.close()


@SQLITE
def test_a_denied_enrollment_stops_the_agent(fleet_server: FleetServer, tmp_path: Path) -> None:
    state = AgentState(tmp_path / "agent")
    with api(fleet_server) as client:
        token = client.post("enrollmenttokens", json={}).json()["token"]
        enroll(state, fleet_server.url, token, "d", {})
        agent = Agent(state, root=tmp_path / "root")
        try:
            assert agent.step().enrollment == "pending"
            assert client.post("enrollmentrequests/d/deny").json()["state"] == "denied"
            assert client.post("enrollmentrequests/d/approve").status_code == 409
            with pytest.raises(EnrollmentError, match="the enrollment was denied"):
                agent.step()
        finally:
            agent.close()
