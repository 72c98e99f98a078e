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

``host_containers_conf(dest)`` is for podman on the machine's own store (``atoll
workload run``): on a host whose PID 1 is not systemd it writes the host's
containers.conf files merged, with :data:`SYSTEMD_LESS` for what they leave
unset, since podman reads only one file when ``CONTAINERS_CONF`` names it.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atoll.errors import InvalidInputError, ToolMissingError
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

STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "{root}/graph"
runroot = "{root}/run"
"""


#: Settings a podman without systemd needs (no systemd cgroup manager, no journald)
#: and the ulimits of a host with a low open-file limit: the parts of
#: CONTAINERS_CONF that are not about where the store is.
SYSTEMD_LESS: dict[str, dict[str, Any]] = {
    "containers": {"default_ulimits": ["nofile=1024:1024", "nproc=1024:1024"]},
    "engine": {"cgroup_manager": "cgroupfs", "events_logger": "file"},
}
#: podman's own files, read in this order, later ones overriding (containers.conf(5)).
HOST_CONF_FILES = (
    Path("/usr/share/containers/containers.conf"),
    Path("/etc/containers/containers.conf"),
)
HOST_CONF_DIRS = (
    Path("/usr/share/containers/containers.conf.d"),
    Path("/etc/containers/containers.conf.d"),
)


def host_containers_conf(
    dest: Path,
    environ: Mapping[str, str] | None = None,
    *,
    systemd: Path = Path("/run/systemd/system"),
    files: Sequence[Path] | None = None,
) -> Path | None:
    """Write *dest*: the host's containers.conf files merged, plus
    :data:`SYSTEMD_LESS` where they say nothing, when the host's PID 1 is not
    systemd (no *systemd* directory) and *environ* names no CONTAINERS_CONF.
    Returns *dest*, or None when podman's own configuration is used as it is.
    *files*: the host's files in podman's order (default: podman's places)."""
    environ = os.environ if environ is None else environ
    if environ.get("CONTAINERS_CONF") or systemd.is_dir():
        return None
    if files is None:
        files = [*HOST_CONF_FILES]
        for folder in HOST_CONF_DIRS:
            if folder.is_dir():
                files += sorted(folder.glob("*.conf"))
    merged: dict[str, Any] = {}
    for path in files:
        try:
            _merge(merged, tomllib.loads(path.read_text()))
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(f"{path}: {exc}", hint="podman cannot read it either") from None
    for table, values in SYSTEMD_LESS.items():
        section = merged.setdefault(table, {})
        for key, value in values.items():
            section.setdefault(key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(toml_text(merged))
    tmp.replace(dest)
    return dest


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def toml_text(data: Mapping[str, Any], prefix: str = "") -> str:
    """*data* (tables of strings, numbers, booleans and arrays of them) as TOML."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)
    ]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}{_toml_key(key)}"
            text += f"\n[{name}]\n" + toml_text(value, name + ".")
    return text


def _toml_key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidInputError(f"containers.conf: cannot write {value!r} back as TOML")


#: containers.conf of an isolated podman (a format string: ``{root}``): runc and
#: a temporary directory of its own besides the settings of a host without systemd.
CONTAINERS_CONF = toml_text(
    {
        "containers": dict(SYSTEMD_LESS["containers"]),
        "engine": {"runtime": "runc", **SYSTEMD_LESS["engine"], "tmp_dir": "{root}/engine-tmp"},
    }
).lstrip("\n")


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
