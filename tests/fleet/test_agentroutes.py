"""The agents' routes answered before FastAPI (atoll.fleet.agentroutes) answer
as FastAPI's routes do: two API processes on one database, one with the fast
path and one without, are sent the same requests."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent import wire
from atoll.agent.client import AgentClient
from atoll.fleet.agentpath import KeyCache, moved
from atoll.fleet.agentroutes import SpecNotifier
from atoll.fleet.db import open_engine
from atoll.fleet.models import Role
from atoll.fleet.serve import create_token, upgrade_database
from helpers.fleet import FleetServer, enrolled, open_spec, operator, serving

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
SPEC = "/api/v1/agent/spec"
STATUS = "/api/v1/agent/status"


@pytest.fixture
def servers(fleet_db: str) -> Iterator[tuple[FleetServer, str]]:
    """The server with the fast path, and the URL of one without it."""
    upgrade_database(fleet_db)
    token = create_token(fleet_db, "admin", Role.ADMIN)
    with serving(fleet_db) as fast, serving(fleet_db, agent_fast_path=False) as general:
        yield FleetServer(fast, fleet_db, token), general


def ask(
    url: str,
    device: AgentClient,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    name: str | None = None,
    key: Any = None,
    stamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A request signed as *device* signs (or as *name*, with *key*, at *stamp*)."""
    signed = wire.signed_headers(
        key or device._key,
        name or device.device,
        method,
        target,
        body,
        device._stamp() if stamp is None else stamp,
    )
    if body:
        signed["Content-Type"] = "application/json"
    return httpx.request(
        method, url + target, content=body, headers={**signed, **(headers or {})}, timeout=60
    )


def answer_of(response: httpx.Response) -> tuple[Any, ...]:
    body = response.json() if response.content else None
    if response.status_code == 200 and isinstance(body, dict) and "payload" in body:
        payload = json.loads(base64.b64decode(body["payload"]))
        for moving in ("issuedAt", "expiresAt"):
            payload.pop(moving)  # the clock's
        body = {"format": body["format"], "keyId": body["keyId"], "payload": payload}
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get(wire.HEADER_ROTATION),
        body,
    )


def on_a_channel(server: FleetServer, tmp_path: Path) -> AgentClient:
    """The channel stable at DIGEST_A, the fleet edge following it for
    site=berlin, and dev1 enrolled in it."""
    with operator(server) as api:
        api.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_A})
        api.put(
            "fleets/edge",
            json={"selector": "site=berlin", "template": {"os": {"channel": "stable"}}},
        )
    return enrolled(server, tmp_path, "dev1", site="berlin")


def test_the_fast_path_answers_as_fastapi_does(
    servers: tuple[FleetServer, str], tmp_path: Path
) -> None:
    server, general = servers
    device = on_a_channel(server, tmp_path)
    other = enrolled(server, tmp_path, "dev2", site="berlin")
    gone = enrolled(server, tmp_path, "dev3", site="berlin")
    with operator(server) as api:
        assert api.post("devices/dev3/revoke").json()["state"] == "revoked"
    report = json.dumps({"bootedDigest": DIGEST_A, "health": "green"}).encode()
    cases: dict[str, Any] = {
        "changed": lambda url: ask(url, device, "GET", f"{SPEC}?knownVersion=0"),
        "unchanged": lambda url: ask(url, device, "GET", f"{SPEC}?knownVersion=1&wait=0"),
        "another key": lambda url: ask(url, device, "GET", SPEC, key=other._key),
        "garbled signature": lambda url: httpx.get(
            url + SPEC,
            headers={
                **wire.signed_headers(device._key, "dev1", "GET", SPEC, b"", device._stamp()),
                wire.HEADER_SIGNATURE: "not base64!",
            },
        ),
        "unsigned": lambda url: httpx.get(url + SPEC),
        "unknown device": lambda url: ask(url, device, "GET", SPEC, name="ghost"),
        "revoked": lambda url: ask(url, gone, "GET", SPEC),
        "clock off": lambda url: ask(url, device, "GET", SPEC, stamp=device._stamp() - 600_000),
        "not a number": lambda url: ask(url, device, "GET", f"{SPEC}?knownVersion=x"),
        "too long a wait": lambda url: ask(url, device, "GET", f"{SPEC}?wait=61"),
        "report": lambda url: ask(url, device, "PUT", STATUS, report),
        "report of another key": lambda url: ask(
            url, device, "PUT", STATUS, report, key=other._key
        ),
        "report of a revoked device": lambda url: ask(url, gone, "PUT", STATUS, report),
        "oversized": lambda url: ask(url, device, "PUT", STATUS, b"{" + b" " * (1 << 20) + b"}"),
        "malformed JSON": lambda url: ask(url, device, "PUT", STATUS, b"{not json"),
        "wrong types": lambda url: ask(url, device, "PUT", STATUS, b'{"health": 5}'),
        "unknown fields": lambda url: ask(url, device, "PUT", STATUS, b'{"nope": 1}'),
        "negative version": lambda url: ask(url, device, "PUT", STATUS, b'{"appliedVersion": -1}'),
        "no body": lambda url: ask(url, device, "PUT", STATUS),
    }
    for case, send in cases.items():
        fast, slow = answer_of(send(server.url)), answer_of(send(general))
        assert fast == slow, case
    assert answer_of(cases["changed"](server.url))[0] == 200
    assert answer_of(cases["unchanged"](server.url))[0] == 204
    for case in ("another key", "unsigned", "unknown device", "revoked", "clock off"):
        assert answer_of(cases[case](server.url))[0] == 401, case
    assert answer_of(cases["oversized"](server.url))[0] == 413
    for case in ("malformed JSON", "wrong types", "unknown fields", "not a number"):
        assert answer_of(cases[case](server.url))[0] == 422, case
    assert "nope: Extra inputs are not permitted" in cases["unknown fields"](server.url).text

    # A replayed report, and a key rotation asked for, on each path.
    for url in (server.url, general):
        stamp = device._stamp()
        assert ask(url, device, "PUT", STATUS, report, stamp=stamp).status_code == 204
        replayed = ask(url, device, "PUT", STATUS, report, stamp=stamp)
        assert (replayed.status_code, replayed.json()["error"]) == (
            401,
            "device 'dev1': a replayed request (its time is not newer)",
        )
    with operator(server) as api:
        api.post("devices/dev1/rotatekey")
    fast, slow = answer_of(cases["report"](server.url)), answer_of(cases["report"](general))
    assert fast == slow == (204, None, "requested", None)

    # The spec itself: signed, and the same on both.
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    opened = open_spec(cases["changed"](server.url).json(), "dev1", keys)
    assert (opened.version, opened.spec["os"]) == (1, {"image": f"reg/os@{DIGEST_A}"})


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_the_agents_routes_are_measured_with_their_templates(
    servers: tuple[FleetServer, str], tmp_path: Path
) -> None:
    server, _ = servers
    with operator(server) as api:
        api.put("fleets/edge", json={"selector": "", "template": {}})
    device = enrolled(server, tmp_path, "d1")
    assert ask(server.url, device, "GET", SPEC).status_code == 200
    assert ask(server.url, device, "GET", f"{SPEC}?knownVersion=1").status_code == 204
    assert ask(server.url, device, "PUT", STATUS, b"{}").status_code == 204
    assert ask(server.url, device, "PUT", STATUS, b"[").status_code == 422
    lines = set(httpx.get(f"{server.url}/metrics").text.splitlines())
    spec, status = f'route="{SPEC}"', f'route="{STATUS}"'
    assert f'atoll_fleet_requests_total{{method="GET",{spec},status="200"}} 1' in lines
    assert f'atoll_fleet_requests_total{{method="GET",{spec},status="204"}} 1' in lines
    assert f'atoll_fleet_requests_total{{method="PUT",{status},status="204"}} 1' in lines
    assert f'atoll_fleet_requests_total{{method="PUT",{status},status="422"}} 1' in lines
    assert f"atoll_fleet_request_duration_seconds_count{{{spec}}} 2" in lines


def waiting_poll(url: str, device: AgentClient, known: int) -> dict[str, Any]:
    """A long poll of 30 s in a thread: its answer lands in the returned dict."""
    answer: dict[str, Any] = {}

    def poll() -> None:
        answer["response"] = ask(url, device, "GET", f"{SPEC}?knownVersion={known}&wait=30")

    answer["thread"] = threading.Thread(target=poll)
    answer["thread"].start()
    return answer


def test_long_polls_wake_for_changes_through_either_process(
    servers: tuple[FleetServer, str], tmp_path: Path
) -> None:
    """A waiting poll looks again when a change is made through its own process
    and through another one on the same database; it would end unchanged (204)
    after its 30 s otherwise: it takes no look at the end of its wait."""
    server, other = servers
    device = on_a_channel(server, tmp_path)
    keys = device.request("GET", "/api/v1/agent/enrollment").json()["specKeys"]
    assert ask(server.url, device, "GET", SPEC).status_code == 200  # version 1
    for version, (through, digest) in enumerate(
        [(server.url, DIGEST_B), (other, DIGEST_A)], start=2
    ):
        poll = waiting_poll(server.url, device, version - 1)
        # The poll is waiting (its first look answered nothing yet) when the channel moves.
        poll["thread"].join(timeout=1.0)
        assert poll["thread"].is_alive()
        with httpx.Client(
            base_url=f"{through}/api/v1", headers={"Authorization": f"Bearer {server.token}"}
        ) as api:
            assert api.put("channels/stable", json={"image": "reg/os", "digest": digest}).is_success
        poll["thread"].join(timeout=60)
        response = poll["response"]
        assert response.status_code == 200, response.text
        opened = open_spec(response.json(), "dev1", keys)
        assert (opened.version, opened.spec["os"]) == (version, {"image": f"reg/os@{digest}"})
    # A device revoked while its poll waits is refused then, as by the general path.
    poll = waiting_poll(server.url, device, 3)
    poll["thread"].join(timeout=1.0)
    with operator(server) as api:
        assert api.post("devices/dev1/revoke").json()["state"] == "revoked"
    poll["thread"].join(timeout=60)
    assert poll["response"].status_code == 401
    assert poll["response"].json()["error"] == "device 'dev1' is revoked: refused"


def test_a_change_wakes_only_the_polls_whose_spec_it_moves(
    servers: tuple[FleetServer, str], tmp_path: Path
) -> None:
    """Two fleets on two channels: agentpath.moved says which waiting polls'
    specs moved; the notifier wakes the poll of the fleet whose channel moved
    and not the other (which would look again for nothing: at 10,000 waiting
    devices, every rollout step woke them all); a waiting poll then gets its
    new spec when its own channel moves."""
    server, _ = servers
    berlin = on_a_channel(server, tmp_path)
    with operator(server) as api:
        api.put("channels/beta", json={"image": "reg/os", "digest": DIGEST_A})
        api.put(
            "fleets/lab",
            json={"selector": "site=paris", "template": {"os": {"channel": "beta"}}},
        )
    paris = enrolled(server, tmp_path, "dev2", site="paris")
    for device in (berlin, paris):
        assert ask(server.url, device, "GET", SPEC).status_code == 200  # version 1
    engine = open_engine(server.db, agents=True)

    def move(channel: str) -> None:
        with operator(server) as api:
            api.put(f"channels/{channel}", json={"image": "reg/os", "digest": DIGEST_B})

    async def woken_by(channel: str) -> set[str]:
        notifier = SpecNotifier(engine, KeyCache(), every=0.1)
        futures = {name: notifier.watch(name, 1) for name in ("dev1", "dev2")}
        task = asyncio.create_task(notifier.run())
        await asyncio.sleep(0.5)  # its first readings: nothing moved yet
        assert not any(future.done() for future in futures.values())
        await asyncio.to_thread(move, channel)
        await asyncio.wait(futures.values(), timeout=10, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.5)  # time for a wrong wake too
        task.cancel()
        return {name for name, future in futures.items() if future.done()}

    try:
        waiting = {("dev1", 1), ("dev2", 1), ("dev2", 7), ("nobody", 1)}
        assert moved(engine, KeyCache(), waiting) == {("dev2", 7), ("nobody", 1)}
        assert asyncio.run(woken_by("beta")) == {"dev2"}
        assert moved(engine, KeyCache(), waiting) == {("dev2", 1), ("dev2", 7), ("nobody", 1)}
    finally:
        engine.dispose()
    poll = waiting_poll(server.url, berlin, 1)
    poll["thread"].join(timeout=1.0)
    assert poll["thread"].is_alive()
    move("stable")
    poll["thread"].join(timeout=60)
    assert poll["response"].status_code == 200


def test_reports_at_once_are_each_recorded_and_a_replay_refused(
    servers: tuple[FleetServer, str], tmp_path: Path
) -> None:
    """Reports that arrive together through the fast path: each device's own
    is recorded, and the same report sent twice at once is taken once."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = servers
    with operator(server) as api:
        api.put("fleets/edge", json={"selector": "", "template": {}})
    devices = [enrolled(server, tmp_path, f"d{i}") for i in range(8)]
    bodies = {
        d.device: json.dumps({"health": "green", "healthReason": d.device}).encode()
        for d in devices
    }
    twice = devices[0]
    stamp = twice._stamp()
    sends = [
        lambda d=d: ask(server.url, d, "PUT", STATUS, bodies[d.device]) for d in devices[1:]
    ] + [lambda: ask(server.url, twice, "PUT", STATUS, bodies["d0"], stamp=stamp)] * 2
    with ThreadPoolExecutor(len(sends)) as pool:
        answers = [f.result() for f in [pool.submit(send) for send in sends]]
    assert [a.status_code for a in answers[:-2]] == [204] * 7
    assert sorted(a.status_code for a in answers[-2:]) == [204, 401]
    with operator(server) as api:
        for device in devices:
            status = api.get(f"devices/{device.device}").json()["status"]
            assert status["healthReason"] == device.device


@pytest.mark.parametrize("fleet_db", ["postgresql"], indirect=True)
def test_the_fast_path_answers_503_while_the_database_is_down(
    servers: tuple[FleetServer, str], tmp_path: Path, postgres: Any
) -> None:
    server, _ = servers
    device = on_a_channel(server, tmp_path)
    assert ask(server.url, device, "GET", SPEC).status_code == 200
    assert ask(server.url, device, "PUT", STATUS, b"{}").status_code == 204
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:  # several connections, idle when the database stops
        target = f"{SPEC}?knownVersion=1"
        polls = [pool.submit(ask, server.url, device, "GET", target) for _ in range(6)]
        assert {p.result().status_code for p in polls} == {204}
    postgres.ctl("stop")
    try:
        for answer in (
            ask(server.url, device, "GET", f"{SPEC}?knownVersion=1"),
            ask(server.url, device, "PUT", STATUS, b"{}"),
        ):
            assert answer.status_code == 503
            assert answer.json() == {"error": "the fleet database is unavailable; try again later"}
    finally:
        postgres.ctl("start")
    # The broken connections went with the first failure: the first request after is answered.
    assert ask(server.url, device, "GET", f"{SPEC}?knownVersion=1").status_code == 204
    assert ask(server.url, device, "PUT", STATUS, b"{}").status_code == 204
