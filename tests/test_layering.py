"""Dependencies point down (docs/architecture.md): a package imports only the
packages this table allows it, and the root helper modules; a root helper
module imports only other root helper modules.  Every import counts, those
inside functions included (they hide a cycle, they do not break it)."""

from __future__ import annotations

import ast
from pathlib import Path

import atoll

SRC = Path(atoll.__file__).parent

#: package -> the packages it may import.  A new package gets a row here.
ALLOWED: dict[str, frozenset[str]] = {
    "oci": frozenset(),
    "store": frozenset({"oci"}),
    "sysroot": frozenset({"oci", "store"}),
    "boot": frozenset({"sysroot"}),
    "health": frozenset({"boot", "sysroot"}),
    "updates": frozenset({"oci", "sysroot"}),
    "workloads": frozenset({"oci", "updates"}),
    "units": frozenset(),
    "device": frozenset({"sysroot"}),
    "build": frozenset({"boot", "oci", "store", "sysroot", "units"}),
    "pipeline": frozenset({"oci", "store", "sysroot"}),
    # Unattended installs: an install config drives the disk code and the trust policy.
    "install": frozenset({"build", "oci", "pipeline", "sysroot"}),
    "failover": frozenset(),
    # The fleet agent runs on a device; it drives the OS through the device's own
    # command line, and reads the device's update windows.
    "agent": frozenset({"updates"}),
    "fleet": frozenset({"agent", "updates"}),
    # A client of the CLI: it runs the atoll command, it does not call into it.
    "demo": frozenset(),
    "cli": frozenset(
        {
            "agent",
            "boot",
            "build",
            "demo",
            "device",
            "failover",
            "fleet",
            "health",
            "install",
            "oci",
            "pipeline",
            "store",
            "sysroot",
            "units",
            "updates",
            "workloads",
        }
    ),
}
#: The root modules (atoll/*.py) above the helpers: they may import any package.
ENTRY_POINTS = frozenset({"__main__"})


def _packages() -> set[str]:
    return {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every ``atoll.…`` import in *path*, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module == "atoll":
                found += [(node.lineno, f"atoll.{alias.name}") for alias in node.names]
            elif node.module:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("atoll.")]


def violations(src: Path = SRC) -> list[str]:
    packages = {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    wrong = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).parts
        home = parts[0] if len(parts) > 1 else None
        for line, name in _imports(path):
            target = name.split(".")[1]
            if target not in packages or target == home:
                continue  # a root helper module, or the package itself
            if home is None and path.stem in ENTRY_POINTS:
                continue
            allowed = ALLOWED.get(home, frozenset()) if home else frozenset()
            if target not in allowed:
                where = home or f"root module {path.name}"
                wrong.append(f"{path.relative_to(src)}:{line}: {where} imports {name}")
    return wrong


def test_every_package_has_a_place_in_the_table() -> None:
    assert _packages() == set(ALLOWED)


def test_dependencies_point_down() -> None:
    assert violations() == []


def test_an_import_inside_a_function_that_points_up_is_found(tmp_path: Path) -> None:
    for package in ("sysroot", "health"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "sysroot" / "status.py").write_text(
        "def rollbacks():\n    from atoll.health.records import read_rollbacks\n"
    )
    (tmp_path / "fsutil.py").write_text("from atoll import sysroot\n")
    assert violations(tmp_path) == [
        "fsutil.py:1: root module fsutil.py imports atoll.sysroot",
        "sysroot/status.py:2: sysroot imports atoll.health.records",
    ]


#: The rooms of ``workloads`` (its sub-packages and room-sized modules) -> the
#: rooms each may import.  ``control`` is the unit-status vocabulary they share.
WORKLOAD_ROOMS: dict[str, frozenset[str]] = {
    "control": frozenset(),
    "unitfiles": frozenset(),
    "supervise": frozenset({"control", "unitfiles"}),
    "autoupdate": frozenset({"control", "unitfiles"}),
    "bound": frozenset({"autoupdate", "unitfiles"}),
    "systemd": frozenset({"control", "supervise", "unitfiles"}),
}


def room_violations(src: Path = SRC) -> list[str]:
    wrong = []
    base = src / "workloads"
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        home = parts[0]
        if home == "__init__":
            continue  # the package's lazy exports name every room
        for line, name in _imports(path):
            words = name.split(".")
            if words[:2] != ["atoll", "workloads"] or len(words) < 3 or words[2] == home:
                continue
            if words[2] not in WORKLOAD_ROOMS.get(home, frozenset()):
                wrong.append(f"workloads/{path.relative_to(base)}:{line}: {home} imports {name}")
    return wrong


def test_every_workload_room_has_a_place_in_the_table() -> None:
    base = SRC / "workloads"
    rooms = {p.stem for p in base.glob("*.py") if p.stem != "__init__"}
    rooms |= {p.name for p in base.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(WORKLOAD_ROOMS)


def test_workload_rooms_point_down() -> None:
    assert room_violations() == []
