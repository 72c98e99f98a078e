"""The fleet API against a real server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent import wire
from atoll.agent.client import AgentClient
from atoll.agent.run import enroll
from atoll.agent.state import AgentState
from atoll.errors import FleetDatabaseError
from atoll.fleet.db import EnrollmentToken, open_engine, session_factory, transaction
from atoll.fleet.serve import ready_engine, upgrade_database
from helpers.fleet import FleetServer, Postgres, enrolled, open_spec, operator, report

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
FLEET = {
    "selector": "site=berlin",
    "template": {
        "os": {"channel": "stable"},
        "units": {"web.container": "[Container]\nImage=registry.example/web@" + DIGEST_A + "\n"},
        "files": [{"path": "/etc/motd", "content": "hello\n"}],
    },
}


def test_resources_and_their_audit_trail(fleet_server: FleetServer) -> None:
    with operator(fleet_server) as api:
        assert api.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_A}).is_success
        made = api.put("fleets/edge", json=FLEET)
        assert made.status_code == 200, made.text
        assert made.json()["generation"] == 1
        again = api.put("fleets/edge", json=FLEET).json()
        assert again["generation"] == 1  # the same spec: no change, no event
        changed = {**FLEET, "selector": "site=berlin,tier!=canary"}
        assert api.put("fleets/edge", json=changed).json()["generation"] == 2
        assert [f["name"] for f in api.get("fleets").json()] == ["edge"]
        assert api.get("fleets/edge").json()["spec"]["selector"] == "site=berlin,tier!=canary"
        assert api.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_B}).is_success
        assert api.delete("fleets/edge").status_code == 204
        assert api.get("fleets/edge").status_code == 404
        events = [(e["action"], e["kind"], e["name"]) for e in api.get("events").json()]
        assert events == [
            ("delete", "Fleet", "edge"),
            ("promote", "Channel", "stable"),
            ("update", "Fleet", "edge"),
            ("create", "Fleet", "edge"),
            ("create", "Channel", "stable"),
        ]
        assert {e["actor"] for e in api.get("events").json()} == {"operator:admin"}


BAD_FLEETS: list[tuple[dict[str, Any], str]] = [
    ({**FLEET, "selectr": "x"}, "selectr: Extra inputs are not permitted"),
    ({**FLEET, "selector": 5}, "selector: Input should be a valid string"),
    ({**FLEET, "selector": "site in (a,b)"}, "selector term 'site in (a' does not parse"),
    (
        {**FLEET, "template": {"os": {"image": "reg/os:latest"}}},
        "is not pinned: write REPO@sha256",
    ),
    (
        {**FLEET, "template": {"files": [{"path": "/etc/../root/x", "content": ""}]}},
        "is not a normalized absolute path under /etc/",
    ),
    (
        {**FLEET, "template": {"updatePolicy": {"download": {"window": "* 99 * * *"}}}},
        "template.updatePolicy.download",
    ),
]


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_bad_input_is_a_422_naming_the_field(fleet_server: FleetServer) -> None:
    """Validation happens before the database: one backend is enough."""
    with operator(fleet_server) as api:
        for body, message in BAD_FLEETS:
            answer = api.put("fleets/edge", json=body)
            assert answer.status_code == 422, body
            assert message in answer.json()["error"]
        assert api.get("fleets").json() == []
        assert api.get("events").json() == []


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_bodies_and_credentials_refused(fleet_server: FleetServer) -> None:
    with operator(fleet_server) as api:
        big = api.put(
            "fleets/edge",
            content=b"{" + b" " * (1 << 20) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        broken = api.put(
            "fleets/edge", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 422
        viewer = api.post("tokens", json={"name": "watcher", "role": "viewer"}).json()["token"]
    with operator(fleet_server, viewer) as api:
        assert api.get("fleets").status_code == 200
        refused = api.put("fleets/edge", json=FLEET)
        assert refused.status_code == 403
        assert "is a viewer; this needs operator" in refused.json()["error"]
    with operator(fleet_server, "atf_nobody") as api:
        assert api.get("fleets").status_code == 401
    assert httpx.get(f"{fleet_server.url}/api/v1/fleets").status_code == 401
    assert httpx.get(f"{fleet_server.url}/api/v1/nothing").json() == {"error": "Not Found"}
    assert httpx.get(f"{fleet_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{fleet_server.url}/readyz").json() == {"status": "ready"}


def test_enrollment_identity_and_revocation(fleet_server: FleetServer, tmp_path: Path) -> None:
    device = enrolled(fleet_server, tmp_path, "dev1", site="berlin")
    other = enrolled(fleet_server, tmp_path, "dev2", site="berlin")
    answer = device.request("GET", "/api/v1/agent/enrollment")
    assert answer.json()["state"] == "approved"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(answer.json()["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer.json()["caCertificate"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=dev1"
    assert device.request("GET", "/api/v1/agent/spec").status_code == 200
    # dev2's key signing as dev1: refused.
    impostor = AgentClient(fleet_server.url, "dev1", other._key)
    refused = impostor.request("GET", "/api/v1/agent/spec")
    assert refused.status_code == 401
    assert "is not device 'dev1'" in refused.json()["error"]
    # A replayed report: the same signed request again.
    target, body = "/api/v1/agent/status", b'{"health": "green"}'
    request = device._http.build_request("PUT", target, content=body)
    request.headers.update(
        wire.signed_headers(device._key, "dev1", "PUT", target, body, device._stamp())
    )
    assert device._http.send(request).status_code == 204
    replayed = device._http.send(request)
    assert replayed.status_code == 401
    assert "replayed" in replayed.json()["error"]
    # A request from a clock ten minutes off.
    late = device._http.build_request("GET", "/api/v1/agent/spec")
    stamp = device._stamp() - 600_000
    late.headers.update(
        wire.signed_headers(device._key, "dev1", "GET", "/api/v1/agent/spec", b"", stamp)
    )
    skewed = device._http.send(late)
    assert skewed.status_code == 401
    assert "check the device's clock" in skewed.json()["error"]
    with operator(fleet_server) as api:
        assert api.post("devices/dev1/revoke").json()["state"] == "revoked"
    gone = device.request("GET", "/api/v1/agent/spec")
    assert gone.status_code == 401
    assert "revoked" in gone.json()["error"]
    assert other.request("GET", "/api/v1/agent/spec").status_code == 200


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_enrollment_tokens_expire_and_are_used_once(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    with operator(fleet_server) as api:
        token = api.post("enrollmenttokens", json={}).json()["token"]
        reusable = api.post("enrollmenttokens", json={"oneTime": False}).json()["token"]
    enroll(AgentState(tmp_path / "a"), fleet_server.url, token, "a", {})
    with pytest.raises(Exception, match="used already"):
        enroll(AgentState(tmp_path / "b"), fleet_server.url, token, "b", {})
    with pytest.raises(Exception, match="name 'a' is taken"):
        enroll(AgentState(tmp_path / "a2"), fleet_server.url, reusable, "a", {})
    engine = open_engine(fleet_server.db)
    with transaction(session_factory(engine)) as session:
        for row in session.query(EnrollmentToken):
            row.expires_at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    engine.dispose()
    with pytest.raises(Exception, match="has expired"):
        enroll(AgentState(tmp_path / "c"), fleet_server.url, reusable, "c", {})


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_auto_approve_by_fleet_labels(fleet_server: FleetServer, tmp_path: Path) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/lab", json={"selector": "site=lab", "template": {}, "autoApprove": True})
        token = api.post("enrollmenttokens", json={"oneTime": False}).json()["token"]
    assert (
        enroll(AgentState(tmp_path / "x"), fleet_server.url, token, "x", {"site": "lab"})["state"]
        == "approved"
    )
    assert (
        enroll(AgentState(tmp_path / "y"), fleet_server.url, token, "y", {"site": "hq"})["state"]
        == "pending"
    )


def test_spec_long_poll_versions_and_channels(fleet_server: FleetServer, tmp_path: Path) -> None:
    with operator(fleet_server) as api:
        api.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_A})
        api.put("fleets/edge", json=FLEET)
    device = enrolled(fleet_server, tmp_path, "dev1", site="berlin")
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    first = open_spec(device.request("GET", "/api/v1/agent/spec").json(), "dev1", keys)
    assert first.version == 1
    assert first.spec["os"] == {"image": f"reg/os@{DIGEST_A}"}
    assert first.spec["files"] == [{"path": "/etc/motd", "content": "hello\n", "mode": 0o644}]
    unchanged = device.request(
        "GET", "/api/v1/agent/spec", params={"knownVersion": "1", "wait": "0.6"}
    )
    assert unchanged.status_code == 204
    with operator(fleet_server) as api:
        api.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_B})
    moved = device.request("GET", "/api/v1/agent/spec", params={"knownVersion": "1", "wait": "5"})
    second = open_spec(moved.json(), "dev1", keys)
    assert (second.version, second.spec["os"]["image"]) == (2, f"reg/os@{DIGEST_B}")
    with operator(fleet_server) as api:
        shown = api.get("devices/dev1").json()
    assert (shown["fleet"], shown["specVersion"]) == ("edge", 2)


def test_rollout_in_batches_pauses_on_errors(fleet_server: FleetServer, tmp_path: Path) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/edge", json={**FLEET, "template": {"os": {"image": f"reg/os@{DIGEST_A}"}}})
    devices = {
        n: enrolled(fleet_server, tmp_path, n, site="berlin") for n in ("d1", "d2", "d3", "d4")
    }
    target = f"reg/os@{DIGEST_B}"

    def image_of(name: str) -> str:
        keys = devices[name].request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
        envelope = devices[name].request("GET", "/api/v1/agent/spec").json()
        return str(open_spec(envelope, name, keys).spec["os"]["image"])

    with operator(fleet_server) as api:
        body = {
            "fleet": "edge",
            "os": {"image": target},
            "batches": [{"count": 1}, {"percent": 50}],
        }
        started = api.put("rollouts/r1", json=body)
        assert started.status_code == 201, started.text
        assert [len(b["devices"]) for b in started.json()["batches"]] == [1, 2, 1]
        assert api.put("rollouts/r2", json=body).status_code == 409  # one at a time per fleet
        assert image_of("d1") == target
        assert image_of("d2") == f"reg/os@{DIGEST_A}"
        report(devices["d1"], DIGEST_B)
        status = api.get("rollouts/r1").json()
        assert (status["state"], status["currentBatch"]) == ("running", 1)
        assert image_of("d2") == target
        report(devices["d2"], DIGEST_A, health="red", failed="the boot was red: rolled back")
        paused = api.get("rollouts/r1").json()
        assert paused["state"] == "paused"
        assert "batch 1: error threshold: 1 of 2 devices failed" in paused["reason"]
        assert "d2: the boot was red: rolled back" in paused["reason"]
        report(devices["d3"], DIGEST_B)
        assert api.get("rollouts/r1").json()["state"] == "paused"
        resumed = api.post("rollouts/r1/resume").json()
        assert (resumed["state"], resumed["currentBatch"]) == ("running", 2)
        assert image_of("d4") == target
        report(devices["d4"], DIGEST_B)
        done = api.get("rollouts/r1").json()
        assert done["state"] == "done"
        assert api.get("fleets/edge").json()["spec"]["template"]["os"] == {"image": target}
        assert api.post("rollouts/r1/resume").status_code == 409
        actions = [e["action"] for e in api.get("events").json() if e["kind"] == "Rollout"]
        assert actions == ["resume", "start"]


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_abort_returns_devices_to_the_template(fleet_server: FleetServer, tmp_path: Path) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/edge", json={**FLEET, "template": {"os": {"image": f"reg/os@{DIGEST_A}"}}})
        device = enrolled(fleet_server, tmp_path, "d1", site="berlin")
        api.put(
            "rollouts/r1",
            json={
                "fleet": "edge",
                "os": {"image": f"reg/os@{DIGEST_B}"},
                "batches": [{"count": 1}],
            },
        )
        assert (
            api.post("rollouts/r1/pause", params={"reason": "looks odd"}).json()["reason"]
            == "looks odd"
        )
        assert device.request("GET", "/api/v1/agent/spec").json()
        aborted = api.post("rollouts/r1/abort").json()
        assert aborted["state"] == "aborted"
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    spec = open_spec(device.request("GET", "/api/v1/agent/spec").json(), "d1", keys)
    assert spec.spec["os"]["image"] == f"reg/os@{DIGEST_A}"


def test_a_failed_request_leaves_nothing_behind(fleet_server: FleetServer) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/edge", json=FLEET)
        refused = api.put(
            "rollouts/r1",
            json={"fleet": "edge", "os": {"channel": "nope"}, "batches": [{"count": 1}]},
        )
        assert refused.status_code == 404
        assert "channel 'nope' does not exist" in refused.json()["error"]
        assert api.get("rollouts").json() == []
        assert [e["kind"] for e in api.get("events").json()] == ["Fleet"]


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_the_ca_key_kept_in_a_file(fleet_db: str, tmp_path: Path) -> None:
    from cryptography import x509

    from atoll.errors import FleetKeyError
    from atoll.fleet.db import ServerKey
    from atoll.fleet.keys import CA
    from atoll.fleet.models import Role
    from atoll.fleet.serve import create_token
    from helpers.fleet import serving

    def ca_row() -> tuple[str, str]:
        engine = open_engine(fleet_db)
        with transaction(session_factory(engine)) as session:
            row = session.query(ServerKey).filter_by(purpose=CA, active=True).one()
            found = (row.private_pem, row.certificate)
        engine.dispose()
        return found

    # Made in the database first, then moved out to the file.
    upgrade_database(fleet_db)
    inside, certificate = ca_row()
    assert inside.startswith("-----BEGIN")
    ca_key = tmp_path / "keys" / "ca.pem"
    upgrade_database(fleet_db, ca_key)
    assert ca_row() == ("", certificate)
    assert ca_key.read_text() == inside and (ca_key.stat().st_mode & 0o777) == 0o600

    with pytest.raises(FleetKeyError, match="start the server with --ca-key FILE"):
        ready_engine(fleet_db)
    ca_key.chmod(0o640)
    with pytest.raises(
        FleetKeyError, match=r"ca.pem: the CA key may be read by others \(mode 0640"
    ):
        ready_engine(fleet_db, ca_key)
    ca_key.chmod(0o600)
    other = tmp_path / "other.pem"
    other.write_bytes(wire.private_key_pem(wire.generate_key()))
    other.chmod(0o600)
    with pytest.raises(FleetKeyError, match="not the key of this database's CA"):
        ready_engine(fleet_db, other)
    with pytest.raises(FleetKeyError, match="not the key of this database's CA"):
        upgrade_database(fleet_db, other)
    assert ca_row() == ("", certificate)
    # A new server's CA key goes straight to the file.
    fresh, fresh_key = f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "fresh" / "ca.pem"
    assert upgrade_database(fresh, fresh_key)["keysCreated"] is True
    assert (fresh_key.stat().st_mode & 0o777) == 0o600
    ready_engine(fresh, fresh_key).dispose()

    # Served with the file, the CA certifies a device.
    token = create_token(fleet_db, "admin", Role.ADMIN)
    with serving(fleet_db, ca_key) as url:
        device = enrolled(FleetServer(url, fleet_db, token), tmp_path, "d1")
        try:
            answer = device.request("GET", "/api/v1/agent/enrollment").json()
        finally:
            device.close()
    issued = x509.load_pem_x509_certificate(answer["certificate"].encode())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(certificate.encode()))


def test_migrations_are_required_and_repeatable(fleet_db: str) -> None:
    with pytest.raises(FleetDatabaseError, match="at schema none, this atoll needs 0003"):
        ready_engine(fleet_db).dispose()
    assert upgrade_database(fleet_db) == {"from": None, "to": "0003", "keysCreated": True}
    assert upgrade_database(fleet_db) == {"from": "0003", "to": "0003", "keysCreated": False}
    ready_engine(fleet_db).dispose()


@pytest.mark.parametrize("fleet_db", ["postgresql"], indirect=True)
def test_database_down_is_503_and_recovers(fleet_server: FleetServer, postgres: Postgres) -> None:
    with operator(fleet_server) as api:
        assert api.get("fleets").status_code == 200
        postgres.ctl("stop")
        try:
            down = api.get("fleets")
            assert down.status_code == 503
            assert down.json()["error"] == "the fleet database is unavailable; try again later"
            assert httpx.get(f"{fleet_server.url}/readyz").status_code == 503
        finally:
            postgres.ctl("start")
        assert api.get("fleets").status_code == 200


def age_releases(db: str, rollout: str) -> None:
    """Move the release of every device of *rollout* eleven minutes back."""
    from atoll.fleet.db import RolloutDevice

    engine = open_engine(db)
    with transaction(session_factory(engine)) as session:
        for member in session.query(RolloutDevice).filter_by(rollout=rollout):
            if member.released_at is not None:
                member.released_at -= datetime.timedelta(minutes=11)
    engine.dispose()


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_a_batch_waits_for_the_window_and_silent_devices_time_out(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    closed_hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    with operator(fleet_server) as api:
        api.put("fleets/edge", json={**FLEET, "template": {"os": {"image": f"reg/os@{DIGEST_A}"}}})
        devices = [enrolled(fleet_server, tmp_path, n, site="berlin") for n in ("d1", "d2")]
        body = {
            "fleet": "edge",
            "os": {"image": f"reg/os@{DIGEST_B}"},
            "batches": [{"count": 1}],
            "deviceTimeout": 600,
            "window": {"window": f"* {closed_hour} * * *", "timezone": "Europe/Berlin"},
        }
        assert api.put("rollouts/r1", json=body).status_code == 201
        report(devices[0], DIGEST_B)
        waiting = api.get("rollouts/r1").json()
        assert (waiting["state"], waiting["currentBatch"]) == ("running", 0)
        assert waiting["reason"].startswith(f"batch 1 waits for the window * {closed_hour} * * *")
        api.post("rollouts/r1/abort")
        assert api.put("rollouts/r2", json={**body, "window": None}).status_code == 201
        age_releases(fleet_server.db, "r2")  # d1 reported the target since: it succeeds
        assert api.get("rollouts/r2").json()["currentBatch"] == 1
        age_releases(fleet_server.db, "r2")  # d2 never reported
        timed_out = api.get("rollouts/r2").json()
    assert timed_out["state"] == "paused"
    assert "d2: no green boot of the target within 600 s" in timed_out["reason"]


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_labels_and_fleets_decide_a_devices_fleet(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/berlin", json={"selector": "site=berlin", "template": {}})
        device = enrolled(fleet_server, tmp_path, "d1", site="berlin")
        assert api.get("devices/d1").json()["fleet"] == "berlin"
        api.put("fleets/all", json={"selector": "", "template": {}})  # "all" < "berlin"
        assert api.get("devices/d1").json()["fleet"] == "all"
        api.delete("fleets/all")
        assert api.get("fleets/berlin").json()["devices"] == 1
        relabeled = api.put("devices/d1/labels", json={"labels": {"site": "lab"}}).json()
        assert relabeled["fleet"] is None
        assert api.get("fleets/berlin").json()["devices"] == 0
        assert api.put("devices/d1/labels", json={"labels": {"site": "x y"}}).status_code == 422
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    assert (
        open_spec(device.request("GET", "/api/v1/agent/spec").json(), "d1", keys).spec["fleet"]
        is None
    )


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_metrics(fleet_server: FleetServer, tmp_path: Path) -> None:
    with operator(fleet_server) as api:
        api.put("fleets/edge", json={"selector": "", "template": {}})
        enrolled(fleet_server, tmp_path, "d1")
        for _ in range(3):
            api.get("fleets/edge")
        api.get("fleets/nope")
    text = httpx.get(f"{fleet_server.url}/metrics").text
    lines = set(text.splitlines())
    route = 'route="/api/v1/fleets/{name}"'
    assert f'atoll_fleet_requests_total{{method="GET",{route},status="200"}} 3' in lines
    assert f'atoll_fleet_requests_total{{method="GET",{route},status="404"}} 1' in lines
    assert f'atoll_fleet_requests_total{{method="PUT",{route},status="200"}} 1' in lines
    assert f"atoll_fleet_request_duration_seconds_count{{{route}}} 5" in lines
    assert f'atoll_fleet_request_duration_seconds_bucket{{{route},le="+Inf"}} 5' in lines
    assert 'atoll_fleet_devices{state="enrolled"} 1' in lines


def test_the_reconciler_moves_rollouts_between_requests(
    fleet_server: FleetServer, tmp_path: Path
) -> None:
    import time

    with operator(fleet_server) as api:
        api.put("fleets/edge", json={**FLEET, "template": {"os": {"image": f"reg/os@{DIGEST_A}"}}})
        enrolled(fleet_server, tmp_path, "d1", site="berlin")
        body = {
            "fleet": "edge",
            "os": {"image": f"reg/os@{DIGEST_B}"},
            "batches": [{"count": 1}],
            "deviceTimeout": 600,
        }
        assert api.put("rollouts/r1", json=body).status_code == 201
        age_releases(fleet_server.db, "r1")  # d1 never reports
        deadline = time.monotonic() + 30
        # The list does not reconcile: only the server's own reconciler can pause it.
        while (listed := api.get("rollouts").json()[0])["state"] == "running":
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)
    assert listed["state"] == "paused"
    assert "d1: no green boot of the target within 600 s" in listed["reason"]
