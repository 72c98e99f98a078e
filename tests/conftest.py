from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["helpers.registry", "helpers.debian", "helpers.fleet", "helpers.ansible"]

_TOOLS = ("docker-registry", "skopeo", "podman", "htpasswd", "openssl")


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = {t: shutil.which(t) is not None for t in _TOOLS}
    have = ", ".join(t for t, ok in found.items() if ok) or "none"
    lacking = ", ".join(t for t, ok in found.items() if not ok) or "none"
    ci = os.environ.get("CI", "") or "unset"
    return [f"atoll real parts: found {have}; missing {lacking}; CI={ci}"]


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
