"""The systemd units an atoll image carries, and how they get into an image.

``install_units(root)`` writes them under ``ROOT/usr/lib/systemd/system`` and
enables them as their ``[Install]`` sections say, the way ``systemctl enable``
would inside the image (for a Containerfile: ``COPY`` the files from
``atoll/units/files`` and run ``systemctl enable``; see docs/health.md).
``install_atoll(root)`` copies atoll itself (standard library only at run time)
with a ``/usr/bin/atoll`` launcher, so the units can call it.
"""

from __future__ import annotations

import configparser
import shutil
from importlib import resources
from pathlib import Path

UNIT_DIR = "usr/lib/systemd/system"
#: The units every bootable atoll image needs, in install order.
UNITS = (
    "atoll-healthcheck.service",
    "atoll-finalize-staged.service",
    "atoll-finalize-staged.path",
    "atoll-fetch-apply-updates.service",
    "atoll-fetch-apply-updates.timer",
)
#: The timer that runs automatic updates (see atoll.updates) and its service.
UPDATE_TIMER = "atoll-fetch-apply-updates.timer"
UPDATE_SERVICE = "atoll-fetch-apply-updates.service"
#: The service that finalizes a staged deployment at shutdown, and the path unit
#: that starts it when one is staged.
FINALIZE_SERVICE = "atoll-finalize-staged.service"
FINALIZE_PATH = "atoll-finalize-staged.path"
#: The fleet agent (docs/fleet.md): shipped, not in :data:`UNITS`; an image that
#: joins a fleet installs it with ``install_units(root, [AGENT_SERVICE])``.
AGENT_SERVICE = "atoll-agent.service"
#: Written into images that ask for failover (``failover`` in the blueprint), beside
#: keepalived's own unit: it renders keepalived.conf before keepalived starts.
FAILOVER_UNITS = ("atoll-failover-config.service",)
#: Units another unit starts (so they are not enabled themselves).
TRIGGERED = {UPDATE_SERVICE: UPDATE_TIMER, FINALIZE_SERVICE: FINALIZE_PATH}


def unit_text(name: str) -> str:
    if name not in available_units():
        raise KeyError(name)
    return resources.files(__package__).joinpath("files", name).read_text()


def available_units() -> list[str]:
    folder = resources.files(__package__).joinpath("files")
    kinds = (".service", ".timer", ".path")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(kinds))


def install_units(root: Path, names: tuple[str, ...] | list[str] = UNITS) -> list[Path]:
    """Write units into an image root and enable them; return the files written."""
    unit_dir = root / UNIT_DIR
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        text = unit_text(name)
        path = unit_dir / name
        path.write_text(text)
        written.append(path)
        for target, kind in _install_targets(text):
            link_dir = root / "etc/systemd/system" / f"{target}.{kind}"
            link_dir.mkdir(parents=True, exist_ok=True)
            link = link_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(f"/{UNIT_DIR}/{name}")
    return written


def _install_targets(text: str) -> list[tuple[str, str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    if not parser.has_section("Install"):
        return []
    out = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for target in parser.get("Install", key, fallback="").split():
            out.append((target, kind))
    return out


#: Where install_atoll puts atoll's modules, below the image's root.
ATOLL_PACKAGE = "usr/lib/python3/dist-packages/atoll"


def install_atoll(root: Path, python: str = "/usr/bin/python3") -> Path:
    """Copy this atoll into *root* (dist-packages) with a ``/usr/bin/atoll`` launcher."""
    package = Path(__file__).resolve().parent.parent
    dest = root / ATOLL_PACKAGE
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(package, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    launcher = root / "usr/bin/atoll"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(
        f"#!{python}\nimport sys\n\nfrom atoll.cli.main import main\n\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    return launcher
