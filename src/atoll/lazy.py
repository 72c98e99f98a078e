"""Imports made on first use: names a package exports (PEP 562) and whole modules."""

from __future__ import annotations

import importlib
import sys

# typing stays unimported: the supervisor's control socket opens through here
# (atoll.workloads) before anything it does not need.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType
    from typing import Any


def lazy_exports(package: str, table: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package* that imports each name of *table*
    (submodule -> names it defines) from its submodule when it is first asked for."""
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__


#: Optional parts of a module that atoll never uses and that cost start-up when
#: present: httpx's command-line client (``httpx._main``) pulls in click, rich
#: and pygments, more than httpx itself; httpcore (which httpx imports when its
#: first client is made) imports trio, for async clients on trio, wherever trio
#: is installed (about 30 ms; atoll's clients are synchronous).  While the
#: module and the modules listed with it are imported, a ``None`` in
#: ``sys.modules`` makes importing the left-out parts fail, and the modules go
#: on without them, as they do where those are not installed; afterwards other
#: code may import them as usual.
_LEAN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (imported with it, left out)
    "httpx": (("httpcore",), ("httpx._main", "trio")),
}


def import_lean(name: str) -> ModuleType:
    """Module *name*, without the optional parts of it that atoll never uses."""
    if name in sys.modules:
        return sys.modules[name]
    companions, left_out = _LEAN.get(name, ((), ()))
    blocked = [part for part in left_out if part not in sys.modules]
    for part in blocked:
        sys.modules[part] = None  # type: ignore[assignment]
    try:
        module = importlib.import_module(name)
        for companion in companions:
            importlib.import_module(companion)
        return module
    finally:
        for part in blocked:
            if part in sys.modules and sys.modules[part] is None:
                del sys.modules[part]


class _LazyModule:
    """Stands for a module and imports it when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(import_lean(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<module {self._lazy_name!r}, imported when first used>"


def lazy_module(name: str) -> ModuleType:
    """Module *name*, imported only when the program first reads one of its attributes.

    For a module that is costly to import and that only some paths need: httpx
    takes about 45 ms, which a run of auto-update whose every HEAD goes over
    :mod:`atoll.oci.wire` never has to pay.  Use it as::

        if TYPE_CHECKING:
            import httpx
        else:
            httpx = lazy_module("httpx")

    so that type checkers see the real module.  Names in ``except`` clauses are
    looked up only when an exception is being matched, so they work too."""
    return _LazyModule(name)  # type: ignore[return-value]
