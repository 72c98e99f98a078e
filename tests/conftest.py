from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["helpers.registry", "helpers.debian", "helpers.fleet", "helpers.ansible"]

_TOOLS = ("docker-registry", "skopeo", "podman", "htpasswd", "openssl")
#: The longest module (a QEMU boot and upgrade, several minutes): it runs first.
_FIRST = "tests/device/test_vm.py"


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = {t: shutil.which(t) is not None for t in _TOOLS}
    have = ", ".join(t for t, ok in found.items() if ok) or "none"
    lacking = ", ".join(t for t, ok in found.items() if not ok) or "none"
    ci = os.environ.get("CI", "") or "unset"
    return [f"atoll real parts: found {have}; missing {lacking}; CI={ci}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests for ``pytest -n N --dist loadfile --no-loadscope-reorder``
    (the Makefile's; docs/development.md): the VM module first, then the other
    modules with ``vm`` tests, then the modules of unit tests alone, then those
    with ``integration`` tests, then those with ``slow`` ones, whole modules in
    collection order.  xdist hands out the modules in this order, so one worker
    starts with the VM module while the other starts with the rest of the
    ``vm`` set, which then ends with the VM module, and goes on with the unit
    tests: their processes yield to the machines' (tests/device/test_vm.py,
    NICE), where containers' would not (docs/performance.md, VM tests).  A
    serial run makes each module's fixtures once too."""

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    def having(marker: str) -> set[str]:
        return {module(item) for item in items if item.get_closest_marker(marker)}

    vm, slow, integration = having("vm"), having("slow"), having("integration")

    def rank(item: pytest.Item) -> int:
        name = module(item)
        if name == _FIRST:
            return 0
        if name in vm:
            return 1
        if name in slow:
            return 4
        return 3 if name in integration else 2

    items.sort(key=rank)  # stable: collection order within each rank


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point every state, cache and config directory at tmp_path and clear ATOLL_*."""
    for key in list(os.environ):
        if key.startswith("ATOLL_") or key in ("REGISTRY_AUTH_FILE", "CONTAINERS_REGISTRIES_CONF"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    registries_conf = home / ".config" / "containers" / "registries.conf"
    registries_conf.parent.mkdir(parents=True)
    registries_conf.write_text("# per-test registries.conf; fixtures add entries\n")
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(registries_conf))
    yield
