"""Python modules atoll imports beyond the standard library, and the packages that
provide them on a device.

On a device atoll runs with the image's own python3 and the distribution's
packages: the commands a device runs (``atoll upgrade``, ``switch``, ``updates
run``, ``health``, ``finalize``, ``status``) start with the standard library
alone and import a third-party module only on the path that needs it.  When it
is missing, :func:`missing_package` turns the ``ModuleNotFoundError`` into a
:class:`~atoll.errors.MissingPackageError` that names the package to install,
instead of an internal error.

The Debian and Fedora families use the same package names for these modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from atoll.errors import MissingPackageError


@dataclass(frozen=True)
class Requirement:
    """A module atoll may import, the distribution package with it, and what needs it."""

    module: str
    package: str
    needed_for: str


#: What device commands import, by the top-level module name.  ``atoll build``
#: installs these packages into an image that lacks them and ``atoll lint`` checks
#: that each module imports inside the image.
DEVICE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("httpx", "python3-httpx", "registry access"),
    Requirement("zstandard", "python3-zstandard", "zstd-compressed layers"),
    Requirement("cryptography", "python3-cryptography", "signature checks of the trust policy"),
)
#: Modules only commands that do not run on a device import (builds, the pipeline's
#: signing, the fleet server, the demo); named here so a missing one is still clean.
OTHER_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("yaml", "python3-yaml", "YAML input and output"),
    Requirement("rich", "python3-rich", "progress bars and tables on a terminal"),
)
_BY_MODULE: Mapping[str, Requirement] = {
    r.module: r for r in (*DEVICE_REQUIREMENTS, *OTHER_REQUIREMENTS)
}
#: The distribution packages a device image needs, in install order.
DEVICE_PACKAGES: tuple[str, ...] = tuple(r.package for r in DEVICE_REQUIREMENTS)


def missing_package(exc: ModuleNotFoundError) -> MissingPackageError | None:
    """The clean error for *exc* when it is one of atoll's known requirements,
    else None (a module atoll does not know of is a bug, not a missing package)."""
    top = (exc.name or "").partition(".")[0]
    wanted = _BY_MODULE.get(top)
    if wanted is None:
        return None
    return MissingPackageError(
        f"the Python module {wanted.module!r} (needed for {wanted.needed_for}) is not installed: "
        f"this needs the package {wanted.package}",
        hint=f"install it (apt-get install {wanted.package} or dnf install {wanted.package}); "
        "images made by atoll build carry it",
    )
