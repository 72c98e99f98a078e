"""The container-boot device: a Debian tree booted by systemd-nspawn with real systemd."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from atoll.device import (
    ContainerBoot,
    DeviceBootOutcome,
    boot_container,
    nspawn_command,
    outcome_of,
)
from atoll.device.cgroup import own_cgroup, unified_mount
from atoll.device.nspawn import BASE_CMDLINE, _Console
from atoll.errors import ContainerBootError, InvalidInputError, ToolMissingError
from helpers.debian import add_unit, make_deployment, mounts_under

BOOT_TIMEOUT = 60.0

# --- without a container ---------------------------------------------------------------


def fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, var = tmp_path / "root", tmp_path / "var"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_text("")
    var.mkdir()
    return root, var


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, DeviceBootOutcome.POWEROFF),
        (133, DeviceBootOutcome.REBOOT),
        (1, DeviceBootOutcome.FAILED),
        (7, DeviceBootOutcome.FAILED),
        (-9, DeviceBootOutcome.FAILED),
    ],
)
def test_exit_status_tells_how_the_boot_ended(code: int, outcome: DeviceBootOutcome) -> None:
    assert outcome_of(code) is outcome


def test_command_binds_var_and_makes_usr_read_only(tmp_path: Path) -> None:
    root, var = fake_tree(tmp_path)
    argv = nspawn_command(
        root,
        var=var,
        machine="dev-1",
        binds=[(tmp_path / "data", "/srv/data")],
        kernel_cmdline="systemd.unit=rescue.target 'quoted arg'",
    )
    options, _, init_args = " ".join(argv).partition(" -- ")
    assert argv[0] == "systemd-nspawn"
    for option in (
        "--boot",
        f"--directory={root}",
        "--keep-unit",
        "--register=no",
        "--machine=dev-1",
        "--private-network",
        f"--bind={var}:/var",
        f"--bind-ro={root}/usr:/usr",
        f"--bind={tmp_path}/data:/srv/data",
    ):
        assert option in options.split(), option
    assert argv[argv.index("--") + 1 :] == [
        *BASE_CMDLINE,
        "systemd.unit=rescue.target",
        "quoted arg",
    ]
    assert init_args.startswith("systemd.journald.forward_to_console=1")
    writable = nspawn_command(root, var=var, machine="dev-1", readonly_usr=False)
    assert not any(a.startswith("--bind-ro=") for a in writable)
    # The host's network: the device reaches a registry on the host's loopback.
    shared = nspawn_command(root, var=var, machine="dev-1", network="host")
    assert "--private-network" not in shared


@pytest.mark.parametrize(
    ("machine", "binds", "cmdline"),
    [
        ("-leading-dash", [], ""),
        ("has space", [], ""),
        ("x" * 65, [], ""),
        ("ok", [(Path("/tmp/a:b"), "/x")], ""),
        ("ok", [(Path("/tmp"), "relative")], ""),
        ("ok", [], "unbalanced 'quote"),
    ],
)
def test_bad_options_are_refused_in_one_line(
    tmp_path: Path, machine: str, binds: list[tuple[Path, str]], cmdline: str
) -> None:
    root, var = fake_tree(tmp_path)
    with pytest.raises(InvalidInputError) as err:
        nspawn_command(root, var=var, machine=machine, binds=binds, kernel_cmdline=cmdline)
    assert "\n" not in str(err.value)


def test_tree_without_systemd_is_refused(tmp_path: Path) -> None:
    root, var = fake_tree(tmp_path)
    (root / "usr/lib/systemd/systemd").unlink()
    with pytest.raises(ContainerBootError, match="no usr/lib/systemd/systemd") as err:
        boot_container(root, var=var, machine="m", timeout=5)
    assert err.value.exit_code == 45
    (root / "usr/lib/systemd/systemd").write_text("")
    with pytest.raises(ContainerBootError, match="as /var"):
        boot_container(tmp_path / "root", var=tmp_path / "nope", machine="m", timeout=5)
    with pytest.raises(ContainerBootError, match="no such directory to boot"):
        boot_container(tmp_path / "nope", var=var, machine="m", timeout=5)


def test_missing_nspawn_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, var = fake_tree(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissingError) as err:
        boot_container(root, var=var, machine="m", timeout=5)
    assert "systemd-nspawn" in str(err.value)
    assert "systemd-container" in (err.value.hint or "")


def test_console_turns_pty_line_ends_into_lines(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    log = tmp_path / "console.log"
    with log.open("wb") as sink, os.fdopen(read_end, "rb") as stream:
        console = _Console(stream, sink)
        # CR CR LF from systemd, a CR split from its LF, a status line redrawn with CR.
        for chunk in (b"one\r\r\n", b"two\r", b"\nthree 1s\rthree 2s\r\n", b"last"):
            os.write(write_end, chunk)
            time.sleep(0.01)
        os.close(write_end)
        console.close()
    assert log.read_bytes() == b"one\ntwo\nthree 1s\nthree 2s\nlast"
    assert console.tail() == "one\ntwo\nthree 1s\nthree 2s\nlast"


# --- booting the Debian tree -----------------------------------------------------------


def oneshot(script: str, *, success: str = "poweroff") -> str:
    """A unit that runs *script* once the system is up; a failure exits the container
    with status 9, so a broken probe fails its test at once instead of timing out."""
    action = f"SuccessAction={success}\n" if success else ""
    script = script.replace("%", "%%").replace("$", "$$")  # systemd's specifiers and variables
    return (
        "[Unit]\nAfter=multi-user.target\n"
        f"{action}FailureAction=exit\nFailureActionExitStatus=9\n"
        "[Service]\nType=oneshot\n"
        f"ExecStart=/bin/sh -ec '{script}'\n"
    )


@pytest.fixture
def deployment(debian_rootfs: Path, tmp_path: Path) -> tuple[Path, Path]:
    return make_deployment(debian_rootfs, tmp_path / "deploy")


def machine_name() -> str:
    return f"atoll-test-{secrets.token_hex(4)}"


def report(what: str, boot: ContainerBoot) -> None:
    print(f"\n{what}: {boot.outcome} (exit {boot.exit_code}) in {boot.duration:.2f} s")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run builds the cached tree
def test_poweroff_keeps_what_the_boot_wrote_to_var(
    deployment: tuple[Path, Path], tmp_path: Path
) -> None:
    root, var = deployment
    token = secrets.token_hex(4)
    add_unit(
        root,
        "atoll-marker.service",
        oneshot(
            f"echo booted-{token} > /var/marker; "
            'tr "\\\\0" " " < /proc/1/cmdline > /var/cmdline; '
            f"echo ATOLL-CONSOLE-{token}"
        ),
    )
    log = tmp_path / "console.log"
    boot = boot_container(
        root,
        var=var,
        machine=machine_name(),
        timeout=BOOT_TIMEOUT,
        kernel_cmdline=f"atoll.probe={token}",
        console_log=log,
    )
    report("boot to poweroff", boot)
    assert boot.outcome is DeviceBootOutcome.POWEROFF, boot.console_tail
    assert boot.exit_code == 0
    assert (var / "marker").read_text() == f"booted-{token}\n"
    assert f"atoll.probe={token}" in (var / "cmdline").read_text()
    # The journal reaches the console, the console reaches the log, the tail is its end.
    assert f"ATOLL-CONSOLE-{token}" in log.read_text()
    assert "has been shut down" in boot.console_tail
    assert boot.duration < 30, "a boot of the prepared tree takes about a second"


@pytest.mark.integration
@pytest.mark.slow
def test_reboot_is_told_apart_from_poweroff(deployment: tuple[Path, Path]) -> None:
    root, var = deployment
    add_unit(root, "atoll-reboot.service", oneshot("systemctl reboot", success=""))
    boot = boot_container(root, var=var, machine=machine_name(), timeout=BOOT_TIMEOUT)
    report("boot to reboot", boot)
    assert boot.outcome is DeviceBootOutcome.REBOOT, boot.console_tail
    assert boot.exit_code == 133


@pytest.mark.integration
@pytest.mark.slow
def test_a_failed_unit_with_failure_action_exit_fails_the_boot(
    deployment: tuple[Path, Path],
) -> None:
    root, var = deployment
    add_unit(
        root,
        "atoll-broken.service",
        "[Unit]\nFailureAction=exit\nFailureActionExitStatus=3\n"
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    )
    boot = boot_container(root, var=var, machine=machine_name(), timeout=BOOT_TIMEOUT)
    assert boot.outcome is DeviceBootOutcome.FAILED, boot.console_tail
    assert boot.exit_code == 3


@pytest.mark.integration
@pytest.mark.slow
def test_usr_is_read_only_and_etc_writable(deployment: tuple[Path, Path]) -> None:
    root, var = deployment
    add_unit(root, "atoll-probe.service", oneshot(PROBE))
    boot = boot_container(root, var=var, machine=machine_name(), timeout=BOOT_TIMEOUT)
    assert boot.outcome is DeviceBootOutcome.POWEROFF, boot.console_tail
    assert (var / "usr-status").read_text().strip() != "0"
    assert "Read-only file system" in (var / "usr-error").read_text()
    assert not (root / "usr/atoll-probe").exists()
    assert (root / "etc/atoll-probe").read_text() == "etc\n"


PROBE = (
    "rc=0; touch /usr/atoll-probe 2>/var/usr-error || rc=$?; echo $rc > /var/usr-status; "
    "echo etc > /etc/atoll-probe"
)


@pytest.mark.integration
@pytest.mark.slow
def test_usr_is_writable_when_asked(debian_rootfs: Path, tmp_path: Path) -> None:
    # A copy, not hard links: a write to /usr here must not reach the cached tree.
    root, var = make_deployment(debian_rootfs, tmp_path / "deploy", link_usr=False)
    add_unit(root, "atoll-probe.service", oneshot(PROBE))
    boot = boot_container(
        root, var=var, machine=machine_name(), timeout=BOOT_TIMEOUT, readonly_usr=False
    )
    assert boot.outcome is DeviceBootOutcome.POWEROFF, boot.console_tail
    assert (var / "usr-status").read_text().strip() == "0"
    assert (root / "usr/atoll-probe").exists()
    assert not (debian_rootfs / "usr/atoll-probe").exists()


def pgrep(pattern: str) -> list[int]:
    proc = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, check=False)
    return [int(pid) for pid in proc.stdout.split()]


@pytest.mark.integration
@pytest.mark.slow
def test_a_hung_boot_times_out_and_leaves_nothing_behind(
    deployment: tuple[Path, Path],
) -> None:
    root, var = deployment
    machine = machine_name()
    hang = f"atoll-hang-{secrets.token_hex(4)}"
    # Never powers off. The loop carries a name of its own, so the host can see it.
    add_unit(
        root,
        "atoll-hang.service",
        "[Service]\nType=simple\n"
        "ExecStart=/bin/sh -c 'touch /var/hang-started; "
        f'exec /bin/sh -c "while :; do sleep 1; done" {hang}\'\n',
    )
    timeout = 6.0
    result: list[ContainerBoot] = []
    runner = threading.Thread(
        target=lambda: result.append(
            boot_container(root, var=var, machine=machine, timeout=timeout)
        )
    )
    runner.start()
    # While it runs, the checks below do find the container: they can fail.
    deadline = time.monotonic() + timeout
    seen_nspawn: list[int] = []
    seen_hang: list[int] = []
    while time.monotonic() < deadline and not (seen_nspawn and seen_hang):
        seen_nspawn, seen_hang = pgrep(f"--machine={machine}"), pgrep(hang)
        time.sleep(0.2)
    runner.join(timeout + 30)
    assert seen_nspawn, "systemd-nspawn was never seen running"
    assert seen_hang, "the hanging unit never ran"
    boot = result[0]
    report("hung boot", boot)
    assert boot.outcome is DeviceBootOutcome.TIMEOUT
    assert timeout <= boot.duration < timeout + 10
    assert (var / "hang-started").exists()
    # Nothing left: no nspawn, no process of the container, no process group, no mounts.
    assert pgrep(f"--machine={machine}") == []
    assert pgrep(hang) == []
    for pid in seen_nspawn:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert mounts_under(root) == []
    assert not Path("/run/systemd/nspawn/propagate", machine).exists()


@pytest.mark.integration
@pytest.mark.slow
def test_two_devices_at_once_each_have_a_cgroup_tree_of_their_own(
    debian_rootfs: Path, tmp_path: Path
) -> None:
    first_root, first_var = make_deployment(debian_rootfs, tmp_path / "first")
    second_root, second_var = make_deployment(debian_rootfs, tmp_path / "second")
    # The first device holds a unit running until the second has listed its own units'
    # cgroups: sharing one tree, the second would see the first's unit among its own.
    add_unit(
        first_root,
        "atoll-hold.service",
        oneshot(
            "touch /var/holding; "
            "for i in $(seq 1200); do [ -e /var/go ] && exit 0; sleep 0.1; done; exit 1"
        ),
    )
    add_unit(
        second_root, "atoll-look.service", oneshot("ls /sys/fs/cgroup/system.slice > /var/units")
    )
    first_machine = machine_name()
    boots: dict[str, ContainerBoot] = {}
    # What a boot whose harness was killed (a power cut) left: the next boot removes it.
    mount, own = unified_mount(), own_cgroup()
    assert mount is not None and own is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = mount / own.lstrip("/") / f"atoll-{machine_name()}-{dead.pid}"
    (stale / "payload").mkdir(parents=True)

    def boot_first() -> None:
        boots["first"] = boot_container(
            first_root, var=first_var, machine=first_machine, timeout=180, containers=True
        )

    thread = threading.Thread(target=boot_first)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (first_var / "holding").exists() and thread.is_alive():
            assert time.monotonic() < deadline, "the first device did not start its unit"
            time.sleep(0.1)
        second = boot_container(
            second_root, var=second_var, machine=machine_name(), timeout=120, containers=True
        )
    finally:
        (first_var / "go").touch()
        thread.join()
    assert second.outcome is DeviceBootOutcome.POWEROFF, second.console_tail
    assert boots["first"].outcome is DeviceBootOutcome.POWEROFF, boots["first"].console_tail
    units = (second_var / "units").read_text().split()
    assert "atoll-look.service" in units
    assert "atoll-hold.service" not in units
    # Each boot's cgroup is removed when it ends, and a stale one when the next starts.
    assert list((mount / own.lstrip("/")).glob(f"atoll-{first_machine}-*")) == []
    assert not stale.exists()
