"""``podman container inspect`` for many units at once, in as few podman processes
as the requests allow.

Every container run asks podman about its new container once (its image ID,
conmon's PID, when it started), and adopting asks about every running one.
On a small machine a podman process costs more than the answer: twenty units
restarted four at a time, or twenty adopted at once, are twenty processes.
Requests are therefore committed in groups: the first asks at once; those
that come while it runs wait and go together in the next process (one per
podman environment, see :func:`~atoll.workloads.supervise.runtime.environment_key`).
A container podman does not know is answered None, as
:func:`~atoll.workloads.supervise.runtime.inspect_container` answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from atoll.workloads.supervise.runtime import environment_key, podman

EnvKey = tuple[tuple[str, str], ...]


class _Request:
    def __init__(self, container: str) -> None:
        self.container = container
        self.answer: dict[str, Any] | None = None
        self.done = False


class ContainerInspections:
    """Group commit of ``podman container inspect`` (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[EnvKey, list[_Request]] = {}
        self._running: set[EnvKey] = set()
        #: podman processes run, for the supervisor's log and the tests.
        self.processes = 0

    def inspect(self, container: str, env: Mapping[str, str]) -> dict[str, Any] | None:
        """*container*'s inspect document, or None when podman does not know it."""
        key = environment_key(env)
        request = _Request(container)
        with self._cond:
            self._waiting.setdefault(key, []).append(request)
            while not request.done and key in self._running:
                self._cond.wait()
            if request.done:
                return request.answer
            batch = self._waiting.pop(key)
            self._running.add(key)
            self.processes += 1
        answers: dict[str, dict[str, Any]] = {}
        try:
            answers = inspect_many([r.container for r in batch], env)
        finally:
            with self._cond:
                for item in batch:
                    item.answer = _find(answers, item.container)
                    item.done = True
                self._running.discard(key)
                self._cond.notify_all()
        return request.answer


def inspect_many(containers: Sequence[str], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """One ``podman container inspect`` of *containers*: the documents podman gave,
    by container ID (a container it does not know is left out)."""
    wanted = list(dict.fromkeys(containers))
    proc = podman("container", "inspect", *wanted, env=env, timeout=60.0)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if not isinstance(data, list):
        if len(wanted) == 1:
            return {}
        # No document at all (podman failed): each container on its own.
        found: dict[str, dict[str, Any]] = {}
        for container in wanted:
            found.update(inspect_many([container], env))
        return found
    # podman prints the containers it knows and names the others on stderr.
    return {str(item["Id"]): item for item in data if isinstance(item, dict) and item.get("Id")}


def _find(answers: Mapping[str, dict[str, Any]], container: str) -> dict[str, Any] | None:
    """The document of *container*, named by its ID, a prefix of it, or its name."""
    if container in answers:
        return answers[container]
    for container_id, item in answers.items():
        if container_id.startswith(container) or str(item.get("Name", "")) == container:
            return item
    return None
