"""podman settings that work on any host, including those whose PID 1 is not
systemd and whose open-file limit is low: runc, cgroupfs, a file event log and
lowered default ulimits, with the image store in a directory of the caller's.

``isolated_environment(root)`` writes the files and returns the ``CONTAINERS_*``
variables that point podman at them, so nothing touches the machine's own store.
"""

from __future__ import annotations

from pathlib import Path

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
