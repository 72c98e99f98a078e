"""``atoll fleet`` and ``atoll agent`` as a user runs them: results on stdout,
errors as one line and their exit codes (docs/cli.md, docs/exit-codes.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.cli.main import main
from helpers.fleet import FleetServer, enrolled
from helpers.workloads import free_port

SQLITE = pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
DIGEST = "sha256:" + "d" * 64
RESOURCES = f"""\
kind: Channel
name: stable
spec:
  image: reg/os
  digest: {DIGEST}
---
kind: Fleet
name: edge
spec:
  selector: site=berlin
  template:
    os:
      channel: stable
    files:
      - path: /etc/motd
        content: "hello\\n"
"""


def atoll(
    capsys: pytest.CaptureFixture[str], server: FleetServer | None, *args: str
) -> tuple[int, Any, str]:
    """(exit code, stdout as JSON or text, stderr) of one in-process run."""
    where = ["--server", server.url, "--token", server.token] if server else []
    code = main([*args, *where])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


@SQLITE
def test_apply_list_get_delete(
    fleet_server: FleetServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(RESOURCES)
    code, out, _ = atoll(capsys, fleet_server, "fleet", "apply", "-f", str(spec), "--json")
    assert (code, out) == (
        0,
        {"applied": [{"kind": "Channel", "name": "stable"}, {"kind": "Fleet", "name": "edge"}]},
    )
    code, out, _ = atoll(capsys, fleet_server, "fleet", "list", "fleets", "--json")
    assert [f["name"] for f in out] == ["edge"]
    code, out, _ = atoll(capsys, fleet_server, "fleet", "list", "fleets")
    assert out.splitlines()[0].split() == ["NAME", "SELECTOR", "DEVICES", "GENERATION"]
    code, out, _ = atoll(capsys, fleet_server, "fleet", "get", "channel", "stable", "--json")
    assert out["digest"] == DIGEST
    code, out, err = atoll(capsys, fleet_server, "fleet", "delete", "fleet", "edge")
    assert (code, out) == (0, "fleet edge deleted\n")
    code, out, err = atoll(capsys, fleet_server, "fleet", "get", "fleet", "edge")
    assert code == 103
    assert err == "atoll: error: fleet server: fleet 'edge' does not exist\n"
    code, out, _ = atoll(capsys, fleet_server, "fleet", "list", "events", "--json")
    assert [e["action"] for e in out] == ["delete", "create", "create"]


@SQLITE
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Fleet\nname: edge\nspec: {selector: '', template: {}, colour: red}\n",
            "document 1 (Fleet edge): colour: Extra inputs are not permitted",
        ),
        ("kind: Fleet\nname: edge\nspec: [1\n", ":4: not YAML"),
        ("kind: Rollout\nname: r\nspec: {}\n", "kind 'Rollout' is not Fleet, Channel or Device"),
        ("kind: Fleet\nspec: {}\n", "write exactly the keys kind, name and spec"),
    ],
)
def test_apply_refuses_bad_files(
    fleet_server: FleetServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    code, _, err = atoll(capsys, fleet_server, "fleet", "apply", "-f", str(spec))
    assert code == 100
    assert message in err
    assert len(err.splitlines()) == 1


@SQLITE
def test_enrollment_and_rollout_commands(
    fleet_server: FleetServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(RESOURCES)
    atoll(capsys, fleet_server, "fleet", "apply", "-f", str(spec))
    code, token, _ = atoll(capsys, fleet_server, "fleet", "enrollment", "token", "-q")
    assert code == 0
    state = tmp_path / "agent"
    code, out, _ = atoll(
        capsys,
        None,
        "agent",
        "enroll",
        "--server",
        fleet_server.url,
        "--token",
        token.strip(),
        "--name",
        "dev1",
        "--label",
        "site=berlin",
        "--state",
        str(state),
        "--json",
    )
    assert (code, out["state"]) == (0, "pending")
    code, out, _ = atoll(capsys, fleet_server, "fleet", "enrollment", "approve", "dev1")
    assert (code, out) == (0, "device dev1: approved\n")
    code, out, _ = atoll(
        capsys,
        None,
        "agent",
        "run",
        "--once",
        "--state",
        str(state),
        "--root",
        str(tmp_path / "root"),
        "--sysroot",
        "none",
        "--json",
    )
    assert code == 0
    assert (out["appliedVersion"], out["update"]) == (0, "failed")  # the OS image needs a sysroot
    assert (tmp_path / "root/etc/motd").read_text() == "hello\n"
    code, out, _ = atoll(
        capsys, fleet_server, "fleet", "list", "devices", "-l", "site=berlin", "--json"
    )
    assert [d["name"] for d in out] == ["dev1"]
    code, out, _ = atoll(
        capsys,
        fleet_server,
        "fleet",
        "rollout",
        "start",
        "r1",
        "--fleet",
        "edge",
        "--image",
        f"reg/os@sha256:{'e' * 64}",
        "--batch",
        "1",
        "--max-unavailable",
        "2",
        "--group-by",
        "site",
        "--retries",
        "3",
        "--retry-backoff",
        "5m",
        "--json",
    )
    assert (code, out["state"]) == (0, "running")
    assert out["spec"]["disruptionBudget"] == {"groupBy": ["site"], "maxUnavailable": 2}
    assert out["spec"]["retries"] == {"limit": 3, "backoff": 300}
    code, out, _ = atoll(
        capsys, fleet_server, "fleet", "rollout", "pause", "r1", "--reason", "lunch"
    )
    assert "reason: lunch" in out
    code, _, err = atoll(capsys, fleet_server, "fleet", "rollout", "pause", "r1")
    assert (code, err) == (104, "atoll: error: fleet server: rollout 'r1' is paused, not running\n")
    code, out, _ = atoll(capsys, fleet_server, "fleet", "rollout", "abort", "r1", "--json")
    assert out["state"] == "aborted"
    code, out, _ = atoll(capsys, fleet_server, "fleet", "rotate-key", "dev1")
    assert (code, out) == (0, "device dev1: key rotation requested\n")
    code, out, _ = atoll(capsys, fleet_server, "fleet", "revoke", "dev1", "--json")
    assert out["state"] == "revoked"
    code, _, err = atoll(capsys, fleet_server, "fleet", "rotate-key", "dev1")
    assert (code, err) == (104, "atoll: error: fleet server: device 'dev1' is revoked\n")
    code, _, err = atoll(
        capsys, None, "agent", "run", "--once", "--state", str(state), "--sysroot", "none"
    )
    assert code == 106
    assert "device 'dev1' is revoked: refused" in err


@SQLITE
def test_credentials_and_an_absent_server(
    fleet_server: FleetServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = atoll(capsys, None, "fleet", "list", "fleets", "--server", fleet_server.url)
    assert (code, err.splitlines()[0]) == (
        102,
        "atoll: error: fleet server: no operator token: send Authorization: Bearer TOKEN",
    )
    code, viewer, _ = atoll(
        capsys, fleet_server, "fleet", "token", "create", "v", "--role", "viewer"
    )
    assert code == 0
    code, _, err = atoll(
        capsys,
        None,
        "fleet",
        "rollout",
        "abort",
        "r1",
        "--server",
        fleet_server.url,
        "--token",
        viewer.strip(),
    )
    assert (code, "is a viewer; this needs operator" in err) == (109, True)
    code, _, err = atoll(
        capsys, None, "fleet", "list", "fleets", "--server", f"http://127.0.0.1:{free_port()}"
    )
    assert code == 101


def test_serve_answers_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    code, _, err = atoll(capsys, None, "fleet", "serve", "--db", db, "--listen", "127.0.0.1:1")
    assert code == 105
    assert "run atoll fleet db upgrade" in err
    code, out, _ = atoll(capsys, None, "fleet", "db", "upgrade", "--db", db, "--json")
    assert (code, out) == (0, {"from": None, "to": "0003", "keysCreated": True})
    code, token, _ = atoll(
        capsys, None, "fleet", "token", "create", "root", "--role", "admin", "--db", db
    )
    assert token.startswith("atf_")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atoll",
            "fleet",
            "serve",
            "--db",
            db,
            "--listen",
            f"127.0.0.1:{port}",
            "--log-json",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert ready.json() == {"status": "ready"}
        openapi = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
        assert "FleetSpec" in openapi["components"]["schemas"]
        # A device's long poll waits when the server is told to stop: it is
        # answered then (unchanged), not at the end of its 30 s.
        url = f"http://127.0.0.1:{port}"
        device = enrolled(FleetServer(url, db, token.strip()), tmp_path, "dev1")
        assert device.request("GET", "/api/v1/agent/spec").status_code == 200  # version 1
        answers: list[tuple[int, float]] = []

        def poll() -> None:
            params = {"knownVersion": "1", "wait": "30"}
            started = time.monotonic()
            status = device.request("GET", "/api/v1/agent/spec", params=params).status_code
            answers.append((status, time.monotonic() - started))

        waiting = threading.Thread(target=poll)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    waiting.join(timeout=30)
    ((status, seconds),) = answers
    assert status == 204 and seconds < 25, answers
    # uvicorn finishes the requests under way, then dies of the signal it caught.
    assert server.returncode in (0, -signal.SIGTERM), stderr
    logs = [json.loads(line) for line in stderr.decode().splitlines()]
    assert {"route": "/readyz", "status": 200} in [
        {"route": e.get("route"), "status": e.get("status")} for e in logs
    ]
    assert any(e["message"] == f"Finished server process [{server.pid}]" for e in logs), logs
