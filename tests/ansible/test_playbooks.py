"""The atoll.edge collection run by ansible-playbook, for real: the collection is
built with ansible-galaxy and installed from its tarball, and the playbooks of
docs/ansible/ (the ones docs/ansible.md shows) run against a directory device
installed from the real registry, connection local with the module's Python
pointed at the sysroot.  Each playbook runs twice; the second run changes nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from atoll.cli.hostdevice import open_device
from atoll.health.assess import assess_boot
from atoll.oci.transports import parse_bootc_name
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.status import host_document
from helpers.ansible import Collection, playbook_run
from helpers.osimage import build_os_image
from helpers.registry import PASSWORD, USERNAME, RegistryView

pytestmark = [pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ansible"


@pytest.fixture
def device(auth_registry: RegistryView, tmp_path: Path) -> dict[str, str]:
    """A directory device installed from v1 in the authenticating registry and booted;
    v2 waits in the registry.  Returns the playbooks' extra variables."""
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    build_os_image(layout, "2", version="2.0", add={"usr/bin/strace": b"strace"})
    repo = auth_registry.new_repo("os")
    for tag in ("1", "2"):
        auth_registry.skopeo(
            "copy",
            "-q",
            *auth_registry.skopeo_args("dest"),
            f"oci:{layout}:{tag}",
            f"docker://{auth_registry.host}/{repo}:{tag}",
        )
    sysroot = tmp_path / "sysroot"
    installer = open_device(sysroot, auth_registry.ctx())
    installer.install(parse_bootc_name(f"{auth_registry.host}/{repo}:1", None))
    installer.boot()
    assert assess_boot(installer, inside=False).green
    return {
        "atoll_sysroot": str(sysroot),
        "os_registry": auth_registry.host,
        "os_registry_user": USERNAME,
        "os_registry_password": PASSWORD,
        "os_image": f"{auth_registry.host}/{repo}:2",
    }


def booted_root(sysroot: str) -> Path:
    state = Device(Path(sysroot)).state()
    return state.path(state.booted or state.current)


def etc_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted((root / "etc").rglob("*")) if p.is_file()}


def test_device_playbook_twice_then_nothing_changes(
    collection: Collection, device: dict[str, str], tmp_path: Path
) -> None:
    sysroot = Path(device["atoll_sysroot"])
    first = playbook_run(collection, DOCS / "device.yml", device, tmp_path)
    assert first.failed == 0, first.output
    # facts x2, registry, workload, updates, switch+boot, rollback, pin
    assert first.changed == 6, first.output

    state = Device(sysroot).state()
    assert state.booted is not None and state.booted.origin.image_version == "2.0"
    assert state.default is not None and state.default.origin.image_version == "1.0"
    assert state.booted.origin.pinned
    assert "booted 2.0, rollback 1.0, health green, workloads web.container" in first.output
    root = booted_root(str(sysroot))
    unit = (root / "etc/containers/systemd/web.container").read_text()
    assert "WantedBy=multi-user.target" in unit
    assert 'policy = "apply"' in (root / "etc/atoll/updates.toml").read_text()
    auth = json.loads((root / "etc/containers/auth.json").read_text())
    assert list(auth["auths"]) == [device["os_registry"]]
    # no_log: the password appears nowhere in Ansible's output
    assert device["os_registry_password"] not in first.output

    second = playbook_run(collection, DOCS / "device.yml", device, tmp_path)
    assert (second.failed, second.changed) == (0, 0), second.output
    assert device["os_registry_password"] not in second.output

    # check mode: a switch back to 1.0 would be staged and booted; nothing is
    before = host_document(Device(sysroot).state())
    back = dict(device, os_image=device["os_image"].removesuffix(":2") + ":1")
    dry = playbook_run(collection, DOCS / "device.yml", back, tmp_path, "--check")
    assert (dry.failed, dry.changed) == (0, 1), dry.output
    assert host_document(Device(sysroot).state()) == before


def test_role_twice_then_nothing_changes(
    collection: Collection, device: dict[str, str], tmp_path: Path
) -> None:
    first = playbook_run(collection, DOCS / "role.yml", device, tmp_path)
    assert first.failed == 0, first.output
    root = booted_root(device["atoll_sysroot"])
    assert (root / "etc/containers/systemd/db.container").is_file()
    blocked = root / "etc/containers/registries.conf.d/50-atoll-edge-quay.io.conf"
    assert "blocked = true" in blocked.read_text()
    assert 'rate_limit = "2MiB/s"' in (root / "etc/atoll/updates.toml").read_text()
    assert first.changed == 3, first.output  # registries, workloads, the policy (tasks)
    second = playbook_run(collection, DOCS / "role.yml", device, tmp_path)
    assert (second.failed, second.changed) == (0, 0), second.output
    assert device["os_registry_password"] not in first.output + second.output

    # check mode reports what would change and changes nothing; with -vvv and --diff
    # the rotated password still appears nowhere
    device = dict(device, os_registry_password="rotated-password")
    before = etc_files(root)
    dry = playbook_run(collection, DOCS / "role.yml", device, tmp_path, "--check", "--diff", "-vvv")
    assert (dry.failed, dry.changed) == (0, 1), dry.output
    assert etc_files(root) == before
    assert "rotated-password" not in dry.output
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in dry.output  # -vvv shows the arguments


def test_tls_playbook_trusts_the_ca_inside_the_root(
    collection: Collection, device: dict[str, str], tls_registry: RegistryView, tmp_path: Path
) -> None:
    """The playbook writes the CA into the booted deployment's certs.d and the os
    module pulls with it: the managed host's user trusts nothing (the fixture's CA
    under $XDG_CONFIG_HOME is removed), so only the CA inside the root can serve."""
    shutil.rmtree(Path(os.environ["XDG_CONFIG_HOME"]) / "containers" / "certs.d")
    repo = tls_registry.new_repo("os")
    tls_registry.skopeo(
        "copy",
        "-q",
        *tls_registry.skopeo_args("dest"),
        f"oci:{tmp_path / 'images'}:2",
        f"docker://{tls_registry.host}/{repo}:2",
    )
    assert tls_registry.ca_path is not None
    extra = dict(
        device,
        tls_registry=tls_registry.host,
        tls_registry_ca_file=str(tls_registry.ca_path),
        tls_image=f"{tls_registry.host}/{repo}:2",
    )
    first = playbook_run(collection, DOCS / "tls.yml", extra, tmp_path)
    assert (first.failed, first.changed) == (0, 2), first.output  # the CA, the staging
    root = booted_root(device["atoll_sysroot"])
    ca = root / "etc/containers/certs.d" / tls_registry.host / "ca.crt"
    assert ca.read_bytes() == tls_registry.ca_path.read_bytes()
    staged = Device(Path(device["atoll_sysroot"])).state().staged
    assert staged is not None and staged.origin.image_version == "2.0"
    assert str(staged.origin.image_name).endswith(extra["tls_image"])
    second = playbook_run(collection, DOCS / "tls.yml", extra, tmp_path)
    assert (second.failed, second.changed) == (0, 0), second.output


def test_wrong_values_fail_with_atolls_message(
    collection: Collection, device: dict[str, str], tmp_path: Path
) -> None:
    result = playbook_run(collection, DOCS / "wrong.yml", device, tmp_path)
    assert result.failed == 0 and result.ignored == 2, result.output
    messages = re.findall(r'"msg": "([^"]*)"', result.output)
    root = booted_root(device["atoll_sysroot"])
    assert any(
        re.match(rf"{root}/etc/atoll/updates.toml: line \d+: download.window", m) for m in messages
    ), messages
    assert any(
        "etc/containers/auth.json were refused (authentication required) (HTTP 401)" in m
        for m in messages
    ), messages
    assert not (root / "etc/atoll/updates.toml").exists()
    assert "not-the-password" not in result.output


def test_the_docs_show_the_playbooks_the_tests_run() -> None:
    doc = (DOCS.parent / "ansible.md").read_text()
    playbooks = sorted(DOCS.glob("*.yml"))
    assert [p.name for p in playbooks] == [
        "booted.yml",
        "device.yml",
        "role.yml",
        "tls.yml",
        "wrong.yml",
    ]
    for playbook in playbooks:
        shown = f"```yaml\n# docs/ansible/{playbook.name}\n{playbook.read_text()}```\n"
        assert shown in doc, f"docs/ansible.md does not show {playbook.name} as it is"
