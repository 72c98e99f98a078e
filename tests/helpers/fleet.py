"""The fleet server for tests: its database on SQLite or on a PostgreSQL
started here (initdb + pg_ctl in a temporary directory, as the ``postgres``
user when run as root), and the server itself on a free loopback port."""

from __future__ import annotations

import datetime
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent import wire
from atoll.agent.client import AgentClient
from atoll.agent.run import enroll
from atoll.agent.state import AgentState
from helpers.parts import missing
from helpers.workloads import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    directory: Path
    port: int
    user: str
    #: Tests run without fsync; a benchmark may want the real cost.
    fsync: bool = False

    def url(self, database: str) -> str:
        return f"postgresql://atoll@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if os.geteuid() == 0 else argv

    def ctl(self, action: str) -> None:
        argv = [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-w",
            "-l",
            str(self.directory / "log"),
            action,
        ]
        if action == "start":
            argv += [
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200",
            ]
        subprocess.run(self._as_owner(argv), check=True, capture_output=True, timeout=60)

    def create_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres(*, fsync: bool = False) -> Postgres:
    """A PostgreSQL cluster in a new temporary directory, started on a free
    loopback port (stop it with ``ctl("stop")`` and remove ``directory``)."""
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    directory = Path(tempfile.mkdtemp(prefix="atoll-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, user)
    server = Postgres(directory, free_port(), user, fsync)
    subprocess.run(
        server._as_owner(
            [str(PG_BIN / "initdb"), "-D", str(directory / "data"), "-U", "atoll",
             "-A", "trust", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    server.ctl("start")
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    server = start_postgres()
    try:
        yield server
    finally:
        server.ctl("stop")
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, empty: one SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database()


@dataclass
class FleetServer:
    url: str
    db: str
    token: str


class _Server(threading.Thread):
    def __init__(
        self, db: str, port: int, ca_key: Path | None = None, *, agent_fast_path: bool = True
    ) -> None:
        super().__init__(daemon=True)
        import uvicorn

        from atoll.fleet.app import create_app
        from atoll.fleet.db import session_factory
        from atoll.fleet.serve import ready_engine

        self.engine = ready_engine(db, ca_key)
        app = create_app(
            session_factory(self.engine),
            reconcile_every=0.2,
            ca_key=ca_key,
            agent_fast_path=agent_fast_path,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )

    def run(self) -> None:
        self.server.run()


@contextmanager
def serving(db: str, ca_key: Path | None = None, *, agent_fast_path: bool = True) -> Iterator[str]:
    """One API process on *db* (uvicorn in a thread of this one): its URL;
    *agent_fast_path* off: the agents' routes answered by FastAPI's routes."""
    port = free_port()
    thread = _Server(db, port, ca_key, agent_fast_path=agent_fast_path)
    thread.start()
    deadline = time.monotonic() + 30
    while not thread.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the fleet server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        thread.server.should_exit = True
        thread.join(timeout=30)
        thread.engine.dispose()


@pytest.fixture
def fleet_server(fleet_db: str) -> Iterator[FleetServer]:
    """``atoll fleet db upgrade`` on the database, an admin token, and the server
    serving it on loopback."""
    from atoll.fleet.models import Role
    from atoll.fleet.serve import create_token, upgrade_database

    upgrade_database(fleet_db)
    token = create_token(fleet_db, "admin", Role.ADMIN)
    with serving(fleet_db) as url:
        yield FleetServer(url, fleet_db, token)


# -- talking to a server as an operator and as devices ---------------------------


def operator(server: FleetServer, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api/v1",
        headers={"Authorization": f"Bearer {token or server.token}"},
        timeout=30,
    )


def enrolled(server: FleetServer, tmp_path: Path, name: str, **labels: str) -> AgentClient:
    """A device enrolled and approved: its signing client."""
    with operator(server) as api:
        token = api.post("enrollmenttokens", json={}).json()["token"]
        state = AgentState(tmp_path / name)
        assert enroll(state, server.url, token, name, labels)["state"] == "pending"
        assert api.post(f"enrollmentrequests/{name}/approve").json()["state"] == "approved"
    return AgentClient(server.url, name, wire.load_private_key(state.key_path.read_bytes()))


def open_spec(envelope: dict[str, Any], name: str, keys: list[str]) -> wire.OpenedSpec:
    public = [wire.load_public_key(k) for k in keys]
    return wire.open_spec(
        envelope,
        {wire.key_id(k): k for k in public},
        device=name,
        applied_version=0,
        now=datetime.datetime.now(datetime.UTC),
    )


def report(device: AgentClient, digest: str, health: str = "green", failed: str = "") -> None:
    body = {
        "bootedDigest": digest,
        "health": health,
        "update": {"state": "failed", "reason": failed} if failed else {"state": "applied"},
    }
    answer = device.request("PUT", "/api/v1/agent/status", body=body)
    assert answer.status_code == 204, answer.text


def wait_for(
    api: httpx.Client, check: Callable[[dict[str, Any]], bool], rollout: str = "r1"
) -> dict[str, Any]:
    """The rollout once *check* holds.  A report moves its rollout in its own
    transaction unless another one holds the rollout's row (the reconciler, or
    a report beside it); then the server's reconciler moves it soon after
    (atoll.fleet.reconciler), so what a report changes is waited for."""
    deadline = time.monotonic() + 60
    while True:
        found: dict[str, Any] = api.get(f"rollouts/{rollout}").json()
        if check(found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"the rollout never got there: {found}")
        time.sleep(0.1)
