"""The one place that finds podman, builds its environment and runs it.

:func:`podman_environment` is atoll.run's base environment plus the variables
podman itself reads (taken from the process, or from a system context); never
the whole environment of the caller.  :func:`find_podman` looks podman up on
the PATH it will run with; :func:`podman` runs one podman command.

podman settings that work on any host, including those whose PID 1 is not
systemd and whose open-file limit is low: runc, cgroupfs, a file event log and
lowered default ulimits, with the image store in a directory of the caller's.
``isolated_environment(root)`` writes the files and returns the ``CONTAINERS_*``
variables that point podman at them, so nothing touches the machine's own store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from atoll.errors import ToolMissingError
from atoll.run import Completed, base_environment, run

#: The variables podman's environment takes from its source: they choose its store.
PODMAN_ENV = (
    "PATH",
    "HOME",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "REGISTRY_AUTH_FILE",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "STORAGE_DRIVER",
    "STORAGE_OPTS",
    "DBUS_SESSION_BUS_ADDRESS",
)

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024","nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/engine-tmp"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "{root}/graph"
runroot = "{root}/run"
"""


def isolated_environment(root: Path, *, registries_conf: Path | None = None) -> dict[str, str]:
    """Write containers.conf and storage.conf under *root*; return the variables."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "containers.conf").write_text(CONTAINERS_CONF.format(root=root))
    (root / "storage.conf").write_text(STORAGE_CONF.format(root=root))
    if registries_conf is None:
        # podman refuses to start when the registries.conf it is pointed at is missing.
        registries_conf = root / "registries.conf"
        if not registries_conf.exists():
            registries_conf.write_text("unqualified-search-registries = []\n")
    return {
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
    }


def podman_environment(
    source: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment podman runs with: the base environment, podman's own
    variables from *source* (default: this process's), then *extra*."""
    source = os.environ if source is None else source
    env = base_environment({k: source[k] for k in PODMAN_ENV if k in source})
    if extra:
        env.update(extra)
    return env


def find_podman(env: Mapping[str, str] | None = None, *, why: str = "") -> str:
    """podman's path on the PATH it will run with (*env*'s, else the base one)."""
    path = (env or base_environment()).get("PATH") or base_environment()["PATH"]
    found = shutil.which("podman", path=path)
    if found is None:
        raise ToolMissingError(
            "podman is not installed" + (f"; {why}" if why else ""),
            argv=["podman"],
            hint="install it with: apt-get install podman",
        )
    return found


def podman(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    why: str = "",
) -> Completed:
    """Run ``podman ARGS`` with *env* (default: :func:`podman_environment`)."""
    env = podman_environment() if env is None else env
    return run(
        [find_podman(env, why=why), *args], env=env, check=check, capture=capture, timeout=timeout
    )
