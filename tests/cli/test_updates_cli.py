"""``atoll updates status`` and ``atoll updates run`` on a directory device, and the
systemd units that run them."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from atoll.cli import main as main_module
from atoll.cli import updates
from atoll.cli.common import Output
from atoll.cli.parser import build_parser
from atoll.health import assess as health_assess
from atoll.sysroot.lifecycle import Device
from atoll.units import UPDATE_SERVICE as SERVICE
from atoll.units import UPDATE_TIMER as TIMER
from atoll.units import unit_text
from helpers.osimage import build_os_image
from helpers.updates import write_config

UNITS = (SERVICE, TIMER)


def atoll(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> Any:
    result = main_module.main(list(args))
    captured = capsys.readouterr()
    assert result == code, captured.err
    if code != 0:
        return captured.err
    return json.loads(captured.out) if "--json" in args else captured.out


@pytest.fixture
def device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """(images, sysroot, root of the booted deployment) of a device running 1.0."""
    images = tmp_path / "images"
    build_os_image(images, "stable", version="1.0")
    sysroot = tmp_path / "sysroot"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:stable")
    atoll(capsys, "boot", "--sysroot", str(sysroot))
    doc = atoll(capsys, "status", "--sysroot", str(sysroot), "--json")
    commit = doc["status"]["booted"]["atoll"]["commit"]
    root = sysroot / "atoll/deploy/default/deploy" / f"{commit}.0"
    return images, sysroot, root


CONFIG = """\
policy = "stage"
[download]
window = "* * * * *"
rate_limit = "2MiB/s"
[inhibitors]
files = ["/run/atoll/inhibit-reboot"]
commands = ["/bin/true"]
"""


def test_status_without_config(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sysroot, _ = device
    text = atoll(capsys, "updates", "status", "--sysroot", str(sysroot))
    assert "Policy:" in text and "none (no /etc/atoll/updates.toml: defaults)" in text
    assert 'idle: automatic updates are off (policy = "none")' in text
    assert "Last check:       never" in text


def test_status_run_status(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot, root = device
    path = write_config(root, CONFIG)
    (root / "run/atoll").mkdir(parents=True)
    (root / "run/atoll/inhibit-reboot").touch()
    s = ["--sysroot", str(sysroot)]

    doc = atoll(capsys, "updates", "status", *s, "--json")
    assert doc["config"]["path"] == str(path)
    assert doc["config"]["policy"] == "stage"
    assert doc["config"]["download"]["rateLimit"] == 2097152
    assert doc["decision"]["action"] == "stage"
    assert doc["decision"]["downloadWindowOpen"] is True
    assert doc["inhibitors"] == [
        {"kind": "file", "what": "/run/atoll/inhibit-reboot", "detail": "exists"}
    ]
    assert doc["state"]["lastRun"] is None and doc["staged"] is None

    text = atoll(capsys, "updates", "status", *s)
    assert "Rate limit:       2 MiB/s" in text
    assert (
        "Inhibitors:       /run/atoll/inhibit-reboot, /bin/true; "
        "holding now: /run/atoll/inhibit-reboot (exists)"
    ) in text

    build_os_image(images, "stable", version="2.0")
    result = atoll(capsys, "updates", "run", *s, "--json")
    assert result["outcome"] == "staged"
    assert result["version"] == "2.0"
    assert result["rebooted"] is False

    doc = atoll(capsys, "updates", "status", *s, "--json")
    assert doc["staged"]["version"] == "2.0"
    assert doc["state"]["lastAction"] == "staged"
    assert doc["state"]["lastCheck"]["available"] is True
    text = atoll(capsys, "updates", "status", *s)
    assert "update available: 2.0 (sha256:" in text
    assert "Staged:           2.0 (sha256:" in text


def test_run_force_applies_through_an_inhibitor(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot, root = device
    write_config(
        root,
        'policy = "apply"\n[apply]\nwindow = "* * * * *"\n'
        '[inhibitors]\ncommands = ["/bin/false"]\n',
    )
    build_os_image(images, "stable", version="2.0")
    s = ["--sysroot", str(sysroot)]
    out = atoll(capsys, "updates", "run", *s)
    assert out.startswith("staged: ")
    assert "inhibited by /bin/false (exited with 1)" in atoll(capsys, "updates", "status", *s)
    out = atoll(capsys, "updates", "run", *s)
    assert out.startswith("inhibited: ")
    result = atoll(capsys, "updates", "run", *s, "--force", "--json")
    assert result["outcome"] == "applied" and result["rebooted"] is True
    doc = atoll(capsys, "status", *s, "--json")
    assert doc["status"]["booted"]["image"]["version"] == "2.0"


def test_bad_config_exits_4_naming_file_and_key(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sysroot, root = device
    path = write_config(root, '[download]\ntimezone = "Europe/Atlantis"\n')
    for command in ("status", "run"):
        err = atoll(capsys, "updates", command, "--sysroot", str(sysroot), code=4)
        assert err.splitlines() == [
            f"atoll: error: {path}: line 2: download.timezone: unknown time zone 'Europe/Atlantis'",
            'hint: use an IANA name such as "UTC" or "Europe/Berlin" '
            "(the tzdata package provides them)",
        ]


def test_explicit_root(
    device: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sysroot, _ = device
    other = tmp_path / "other-root"
    write_config(other, 'policy = "check"\n')
    doc = atoll(
        capsys, "updates", "status", "--sysroot", str(sysroot), "--root", str(other), "--json"
    )
    assert doc["config"]["policy"] == "check"


def test_bad_max_wait_is_a_usage_error(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sysroot, _ = device
    err = atoll(capsys, "updates", "run", "--sysroot", str(sysroot), "--max-wait", "soon", code=2)
    assert "--max-wait: 'soon' is not a duration" in err


# --- units ------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit_text(name))
    return parser


def test_service_runs_a_valid_command() -> None:
    service = unit(SERVICE)
    assert service["Service"]["Type"] == "oneshot"
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[0] == "/usr/bin/atoll"
    args = build_parser().parse_args(argv[1:])
    assert args.func is updates._run
    assert args.sysroot == "/sysroot"
    assert args.max_wait == "90m"
    assert "network-online.target" in service["Unit"]["After"]


def test_timer_is_hourly_spread_and_persistent() -> None:
    timer = unit(TIMER)["Timer"]
    assert timer["OnCalendar"] == "hourly"
    assert timer["RandomizedDelaySec"] == "15min"
    assert timer["Persistent"] == "true"
    assert unit(TIMER)["Install"]["WantedBy"] == "timers.target"
    assert UNITS == (SERVICE, TIMER)


def test_only_a_system_booted_from_the_sysroot_reboots_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[list[str]] = []
    did: list[str] = []
    device = Device(tmp_path / "sysroot")
    monkeypatch.setattr(updates, "run", lambda argv, **kw: called.append(list(argv)))
    monkeypatch.setattr(updates, "find_tool", lambda name, package=None: f"/usr/bin/{name}")
    monkeypatch.setattr(
        device,
        "boot",
        lambda: did.append("boot") or SimpleNamespace(deployment="d" * 64, entry="atoll-default-d"),
    )
    monkeypatch.setattr(
        health_assess,
        "assess_boot",
        lambda dev, inside: (
            did.append(f"assess inside={inside}")
            or SimpleNamespace(report=SimpleNamespace(outcome=SimpleNamespace(value="green")))
        ),
    )
    monkeypatch.setattr(updates, "running_inside", lambda device: False)
    updates.reboot_action(device, Output())()
    assert did == ["boot", "assess inside=False"] and called == []
    monkeypatch.setattr(updates, "running_inside", lambda device: True)
    updates.reboot_action(device, Output())()
    assert called == [["/usr/bin/systemctl", "reboot"]]
    assert did == ["boot", "assess inside=False"]


def test_run_enforces_the_devices_trust_policy(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The timer's update obeys the booted system's /etc/containers/policy.json, as
    `atoll upgrade` does: a rejected image is not staged."""
    images, sysroot, root = device
    write_config(root, 'policy = "stage"\n')
    policy = root / "etc/containers/policy.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps({"default": [{"type": "reject"}]}))
    build_os_image(images, "stable", version="2.0")
    err = atoll(capsys, "updates", "run", "--sysroot", str(sysroot), code=64)
    assert "reject" in err
    doc = atoll(capsys, "status", "--sysroot", str(sysroot), "--json")
    assert doc["status"]["staged"] is None
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    # --force: past the backoff that follows a failed run.
    ran = atoll(capsys, "updates", "run", "--sysroot", str(sysroot), "--force", "--json")
    assert ran["outcome"] == "staged"


def test_run_allow_no_kernel_for_container_devices(
    device: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A device booted as a container follows images without a kernel."""
    images, sysroot, root = device
    write_config(root, 'policy = "stage"\n')
    build_os_image(images, "stable", version="2.0", kernel=False)
    atoll(capsys, "updates", "run", "--sysroot", str(sysroot), code=41)
    s = ["--sysroot", str(sysroot), "--force", "--json"]
    ran = atoll(capsys, "updates", "run", *s, "--allow-no-kernel")
    assert ran["outcome"] == "staged" and ran["version"] == "2.0"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "exceeded max depth"),
        (
            '[download]\nwindow = "* 2-4 * * *"\nrandom_delay = "99999999999999999999d"\n',
            "too long a duration",
        ),
    ],
)
def test_hostile_config_is_a_clean_refusal(
    device: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    text: str, complaint: str,
) -> None:  # fmt: skip
    _, sysroot, _ = device
    other = tmp_path / "hostile-root"
    write_config(other, text)
    err = atoll(
        capsys, "updates", "status", "--sysroot", str(sysroot), "--root", str(other), code=4
    )
    assert complaint in err
