"""UnitStatus, the managers behind the UnitManager protocol, and the ``atoll workload`` commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from atoll.cli.main import _open_supervisor_socket
from atoll.cli.workload import STATE_DIR_ENV
from atoll.errors import AtollError, LockedError, SupervisorNotRunningError, UnknownUnitError
from atoll.workloads import SupervisorClient, SystemdManager, UnitManager
from atoll.workloads.control import Health, UnitState, UnitStatus, control_socket
from atoll.workloads.supervise.controlserver import (
    CONTROL_SOCKET,
    ControlServer,
    answer,
    lock_state_dir,
    take_early,
)
from atoll.workloads.supervise.supervisor import Supervisor
from atoll.workloads.systemd import parse_systemctl_show, status_from_systemd
from helpers.cli import run_atoll
from helpers.workloads import WorkloadEnv, http_get, wait_for

STATUS = UnitStatus(
    unit="web.container",
    name="web",
    service="web.service",
    state=UnitState.ACTIVE,
    result="success",
    container="systemd-web",
    container_id="c0ffee",
    image="registry.example/web:1",
    image_id="abc123",
    health=Health.HEALTHY,
    restarts=2,
    since="2026-01-01T00:00:00Z",
    main_pid=1234,
)


def test_unit_status_round_trip() -> None:
    data = STATUS.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["state"] == "active" and data["health"] == "healthy"
    assert UnitStatus.from_json(data) == STATUS
    # Fields a newer supervisor adds are ignored.
    assert UnitStatus.from_json({**data, "future": 1}) == STATUS


def test_managers_implement_the_protocol(tmp_path: Path) -> None:
    assert isinstance(SupervisorClient(tmp_path), UnitManager)
    assert isinstance(SystemdManager([tmp_path]), UnitManager)


def test_the_package_imports_managers_and_auto_update_on_first_use() -> None:
    code = (
        "import sys, atoll.workloads as w\n"
        "loaded = lambda m: f'atoll.workloads.{m}' in sys.modules\n"
        "assert not any(map(loaded, ('control', 'supervise.supervisor', 'autoupdate', 'bound')))\n"
        "assert w.AutoUpdater.__module__ == 'atoll.workloads.autoupdate.updater'\n"
        "assert loaded('control') and not loaded('supervise.supervisor')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_control_protocol_against_a_supervisor_without_units(tmp_path: Path) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="atc-", dir="/tmp"))
    try:
        supervisor = Supervisor([tmp_path], state_dir=state_dir)
        assert answer(supervisor, b"not json")["exit_code"] == 4
        assert answer(supervisor, b'{"op": "fly"}')["error"] == "unknown op 'fly'"
        assert answer(supervisor, b'{"op": "status"}') == {"ok": True, "units": []}
        reply = answer(supervisor, b'{"op": "start", "unit": "web"}')
        assert (reply["ok"], reply["exit_code"], reply["unit"]) == (False, 55, None)
        supervisor.serve_control()
        try:
            client = SupervisorClient(state_dir)
            assert client.is_running()
            assert client.status() == []
            with pytest.raises(UnknownUnitError, match="'web'"):
                client.restart("web", timeout=5)
        finally:
            supervisor.close()
        assert not (state_dir / "control.sock").exists()
    finally:
        shutil.rmtree(state_dir)


def test_the_control_socket_answers_before_the_supervisor_is_attached(tmp_path: Path) -> None:
    """``atoll workload run`` opens the socket before it reads the units: a ping is
    answered at once, a status when the supervisor is attached; a second
    supervisor is refused by the lock, and a supervisor that never starts
    leaves no request waiting."""
    code = (
        "import sys, atoll.workloads.supervise.controlserver\n"
        "assert not any(m in sys.modules for m in ('atoll.workloads.unitfiles.quadlet',"
        " 'atoll.workloads.supervise.supervisor')), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    state_dir = Path(tempfile.mkdtemp(prefix="atc-", dir="/tmp"))
    try:
        lock = lock_state_dir(state_dir)
        with pytest.raises(LockedError):
            lock_state_dir(state_dir)
        server = ControlServer(control_socket(state_dir))
        server.open()
        client = SupervisorClient(state_dir)
        assert client.is_running()
        answers: list[object] = []
        asking = threading.Thread(target=lambda: answers.append(client.status()))
        asking.start()
        asking.join(0.5)
        assert asking.is_alive() and not answers  # waits for the units
        supervisor = Supervisor([tmp_path], state_dir=state_dir)
        supervisor.take_over(server, lock)
        supervisor.serve_control()
        asking.join(10)
        assert answers == [[]]
        supervisor.close()
        assert not (state_dir / "control.sock").exists()

        never = ControlServer(control_socket(state_dir))
        never.open()
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                client.status()
            except AtollError as exc:
                failed.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        asking.join(0.5)
        never.close()
        asking.join(10)
        assert [str(e) for e in failed] == ["the workload supervisor stopped while it started"]
    finally:
        shutil.rmtree(state_dir)


def test_client_without_supervisor(tmp_path: Path) -> None:
    client = SupervisorClient(tmp_path)
    assert not client.is_running()
    with pytest.raises(SupervisorNotRunningError, match=r"control\.sock"):
        client.status("web")
    result = run_atoll("workload", "list", "--manager", "supervisor", "--state-dir", str(tmp_path))
    assert result.returncode == 52, result.stderr


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
@pytest.mark.parametrize("command", [["list"], ["status"], ["auto-update", "--dry-run"]])
def test_auto_manager_without_systemd_or_supervisor_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    from atoll.cli.main import main

    units = tmp_path / "units"
    units.mkdir()
    (units / "web.container").write_text("[Container]\nImage=registry.example/web:1\n")
    state = tmp_path / "state"
    # The variable names the supervisor's state directory, as --state-dir would.
    monkeypatch.setenv("ATOLL_WORKLOAD_STATE_DIR", str(state))
    code = main(["workload", *command, "--root", str(units)])
    captured = capsys.readouterr()
    assert code == 52, captured
    assert f"no workload supervisor listens on {state / 'control.sock'}" in captured.err
    assert "hint: start it with atoll workload run" in captured.err
    assert "no units" not in captured.out


SHOW = """\
Id=web.service
ActiveState=active
SubState=running
Result=success
NRestarts=3
MainPID=4242
ExecMainStatus=0
StateChangeTimestamp=Sun 2026-11-22 03:25:29 UTC
"""


def _from_systemd(show: str) -> UnitStatus:
    """web.container's status from *show* and a healthy container."""
    return status_from_systemd(
        parse_systemctl_show(show),
        unit="web.container",
        name="web",
        service="web.service",
        container="systemd-web",
        image="registry.example/web:1",
        kind="container",
        inspect={"Id": "c0ffee", "Image": "abc123", "State": {"Health": {"Status": "healthy"}}},
    )


def test_status_from_systemctl_show() -> None:
    """The parsing, on ``systemctl show`` output (tests/workloads/test_systemd_host.py
    runs the same against systemd itself)."""
    status = _from_systemd(SHOW)
    assert status.state is UnitState.ACTIVE
    assert status.restarts == 3 and status.main_pid == 4242
    assert status.since == "2026-11-22T03:25:29Z"
    assert (status.container_id, status.image_id, status.health) == ("c0ffee", "abc123", "healthy")
    failed = _from_systemd(
        "ActiveState=failed\nResult=start-limit-hit\nMainPID=0\nExecMainStatus=3\n"
    )
    assert (failed.state, failed.result, failed.main_pid) == ("failed", "start-limit-hit", None)
    assert failed.container_id is None and failed.health is Health.NONE
    assert failed.exit_status == 3


def test_systemd_manager_unknown_unit(tmp_path: Path) -> None:
    (tmp_path / "web.container").write_text("[Container]\nImage=x\n")
    with pytest.raises(UnknownUnitError):
        SystemdManager([tmp_path]).status("db")


@pytest.mark.integration
@pytest.mark.slow
def test_workload_commands(workload_env: WorkloadEnv) -> None:
    _, port = workload_env.web_unit("cli", "Restart=always\n", page="cli\n")
    sup = workload_env.start_supervisor()
    state = ["--state-dir", str(sup.state_dir)]
    wait_for(lambda: sup.status("web").state == "active", "web to be active")

    listed = run_atoll("workload", "list", *state, "--json")
    assert listed.returncode == 0, listed.stderr
    (unit,) = json.loads(listed.stdout)["units"]
    assert (unit["unit"], unit["state"], unit["container"]) == (
        "web.container",
        "active",
        "systemd-web",
    )

    first_id = unit["containerId"]
    restarted = run_atoll("workload", "restart", "web", *state, "--json")
    assert restarted.returncode == 0, restarted.stderr
    after = json.loads(restarted.stdout)["unit"]
    assert after["state"] == "active" and after["containerId"] != first_id
    assert after["restarts"] == 0  # a restart by hand is not an automatic restart
    assert http_get(port) == "cli\n"
    # In place (podman run --replace stopped the old container): only the new one is left.
    assert workload_env.podman("ps", "-a", "--no-trunc", "--format", "{{.ID}}").split() == [
        after["containerId"]
    ]

    client_view = SupervisorClient(sup.state_dir).restart("web.service", timeout=60)
    assert client_view.state is UnitState.ACTIVE

    status = run_atoll("workload", "status", "web.service", *state)
    assert status.returncode == 0 and "active (success)" in status.stdout

    logs = run_atoll("workload", "logs", "web", "-n", "5", *state)
    assert logs.returncode == 0, logs.stderr
    assert "serving /www on port 8080" in logs.stdout

    stopped = run_atoll("workload", "stop", "web", *state, "--json")
    assert json.loads(stopped.stdout)["unit"]["state"] == "inactive"
    unknown = run_atoll("workload", "start", "nope", *state)
    assert unknown.returncode == 55 and "nope" in unknown.stderr
    assert sup.stop(signal.SIGTERM) == 0


def test_workloads_doc_gives_the_podman_settings_build_and_demo_use() -> None:
    """The settings docs/workloads.md shows for `workload run` are those atoll
    adds on a host without systemd, and those its build and demo podman uses."""
    import tomllib

    from atoll.podman import CONTAINERS_CONF, SYSTEMD_LESS

    doc = (Path(__file__).parents[2] / "docs" / "workloads.md").read_text()
    shown = doc[doc.index("`workload run` gives podman the settings") :]
    shown = shown[shown.index("```toml\n") + 8 :]
    assert tomllib.loads(shown[: shown.index("```")]) == SYSTEMD_LESS
    isolated = tomllib.loads(CONTAINERS_CONF.format(root="/x"))
    for table, values in SYSTEMD_LESS.items():
        assert values.items() <= isolated[table].items()


def test_unit_status_json_is_camel_case_and_reads_version_1() -> None:
    """`workload status --json` wrote container_id, main_pid, … while every other
    atoll document is camelCase (docs/cli.md)."""
    status = UnitStatus(
        "web.container",
        "web",
        "web.service",
        UnitState.ACTIVE,
        "success",
        "systemd-web",
        "c1",
        "img",
        "i1",
        Health.HEALTHY,
        2,
        "2026-01-01T00:00:00Z",
        42,
        exit_status=None,
    )
    data = status.to_json()
    assert {"containerId", "imageId", "mainPid", "exitStatus"} <= set(data)
    assert not [k for k in data if "_" in k]
    assert UnitStatus.from_json(json.loads(json.dumps(data))) == status
    # A supervisor started by an older atoll still answers in snake_case.
    old = {
        "container_id" if k == "containerId" else "main_pid" if k == "mainPid" else k: v
        for k, v in data.items()
    }
    assert UnitStatus.from_json(old) == status


def test_workload_run_opens_the_socket_before_the_parser_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``atoll workload run`` locks the state directory and listens before the
    command-line parser, pathlib or JSON load; a ping is answered then, and the
    supervisor takes the socket and the lock over.  A command line whose state
    directory the parser might read otherwise is left to the parser."""
    state_dir = Path(tempfile.mkdtemp(prefix="atc-", dir="/tmp"))
    code = (
        "import sys\n"
        "from atoll.cli.main import _open_supervisor_socket\n"
        "_open_supervisor_socket(sys.argv[1:])\n"
        "loaded = [m for m in ('argparse', 'atoll.cli.parser', 'pathlib', 'json', 'typing',"
        " 'atoll.errors', 'atoll.workloads.control') if m in sys.modules]\n"
        "print(loaded, flush=True)\n"
        "sys.stdin.read()\n"
        "from pathlib import Path\n"
        "from atoll.workloads.supervise.controlserver import take_early\n"
        "print(take_early(Path(sys.argv[-1])) is not None, flush=True)\n"
    )
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "--root", str(tmp_path), "--state-dir", str(state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "[]"
        assert SupervisorClient(state_dir).is_running()
        with pytest.raises(LockedError):
            lock_state_dir(state_dir)
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "True"
        assert proc.wait(30) == 0
        (state_dir / "control.sock").unlink()  # that process did not close it

        for args in (["--state", str(state_dir)], ["--state-dir"], ["--help"]):
            _open_supervisor_socket(args)
            assert not (state_dir / "control.sock").exists()
        for args, env in (([f"--state-dir={state_dir}"], None), (["--root", "x"], state_dir)):
            if env is not None:
                monkeypatch.setenv(STATE_DIR_ENV, str(env))
            _open_supervisor_socket(args)
            taken = take_early(state_dir)
            assert taken is not None
            server, lock = taken
            assert SupervisorClient(state_dir).is_running()
            server.close()
            os.close(lock)
        assert control_socket(state_dir).name == CONTROL_SOCKET
    finally:
        shutil.rmtree(state_dir)
