"""Registry checks remember where each registry answered (``bases``), so a later
run goes straight to the manifests: no ``/v2/`` ping, and for an insecure
registry no HTTPS attempt before plain HTTP. Real registry (plain HTTP, marked
insecure in the test's registries.conf)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.workloads.autoupdate.checks import check_references
from atoll.workloads.autoupdate.state import STATE_FILE, WorkloadUpdateState
from helpers.registry import RegistryView


def _requests(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the client sent and got an answer to, in order ("HEAD URL")."""
    found = [r.getMessage().split(" -> ")[0] for r in caplog.records if " -> " in r.getMessage()]
    caplog.clear()
    return found


@pytest.mark.integration
def test_a_remembered_base_skips_the_ping(
    registry: RegistryView, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="atoll.oci.client")
    repo = registry.new_repo("check")
    registry.push_test_image(repo, "stable")
    ref = ImageReference.parse(f"{registry.host}/{repo}:stable")
    plain = f"http://{registry.host}/v2/"
    bases: dict[str, str] = {}

    first = check_references([ref], registry.ctx(), bases=bases)[ref]
    assert first.error is None and first.digest
    assert _requests(caplog) == [f"GET {plain}", f"HEAD {plain}{repo}/manifests/stable"]
    assert bases == {registry.host: plain}

    again = check_references([ref], registry.ctx(), bases=bases)[ref]
    assert again.digest == first.digest
    assert _requests(caplog) == [f"HEAD {plain}{repo}/manifests/stable"]

    # A base that no longer answers (here: HTTPS, which this registry does not
    # speak) costs one failed try, then a ping finds the right one again.
    bases[registry.host] = f"https://{registry.host}/v2/"
    moved = check_references([ref], registry.ctx(), bases=bases)[ref]
    assert moved.error is None and moved.digest == first.digest
    assert bases == {registry.host: plain}


def test_only_this_registrys_bases_are_assumed() -> None:
    secure = RegistryClient("registry.example.com", SystemContext())
    insecure = RegistryClient("registry.example.com", SystemContext(tls_verify=False))
    try:
        assert not secure.assume_base("http://registry.example.com/v2/")
        assert not secure.assume_base("https://other.example.com/v2/")
        assert not secure.assume_base("https://registry.example.com/v1/")
        assert secure.assume_base("https://registry.example.com/v2/")
        assert secure.base == "https://registry.example.com/v2/"
        assert insecure.assume_base("http://registry.example.com/v2/")
    finally:
        secure.close()
        insecure.close()


def test_assumed_bases_compare_ports_and_refuse_what_does_not_parse() -> None:
    with RegistryClient("registry.example.com:5000", SystemContext()) as client:
        assert not client.assume_base("https://registry.example.com/v2/")
        assert not client.assume_base("https://registry.example.com:abc/v2/")
        assert client.assume_base("https://REGISTRY.example.com:5000/v2/")
    with RegistryClient("registry.example.com", SystemContext()) as client:
        assert client.assume_base("https://registry.example.com:443/v2/")  # the default port


def test_state_file_keeps_the_bases_and_reads_older_files(tmp_path: Path) -> None:
    state = WorkloadUpdateState.load(tmp_path)
    state.registries["r.example:5000"] = "http://r.example:5000/v2/"
    state.save()
    assert WorkloadUpdateState.load(tmp_path).registries == {
        "r.example:5000": "http://r.example:5000/v2/"
    }
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 1, "units": {}}))
    assert WorkloadUpdateState.load(tmp_path).registries == {}
