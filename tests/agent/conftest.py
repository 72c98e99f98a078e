"""The ``workload_env`` fixture for the agent's workload tests (helpers/workloads.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.registry import RegistryView
from helpers.workloads import WorkloadEnv, workload_environment


@pytest.fixture
def workload_env(registry: RegistryView, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkloadEnv]:
    yield from workload_environment(registry, monkeypatch)
