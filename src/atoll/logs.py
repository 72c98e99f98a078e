"""Loggers that import :mod:`logging` only for a record someone may want.

``import logging`` loads ``traceback``, ``linecache``, ``tokenize``, ``string``
and ``weakref`` with it: several milliseconds, a tenth of the CPU of an image
copy that only mounts blobs, which at the default level writes no record at
all.  The rules that keep a :class:`Logger` here equal to
``logging.getLogger(name)``:

- While :mod:`logging` is not imported, nothing can have configured a handler
  or a level that wants a record below WARNING (the root logger's default), so
  such a record is dropped without importing it.
- Any other record, and every record once :mod:`logging` is imported (by
  anyone: a test, a library, the command line), goes to
  ``logging.getLogger(name)`` as usual.
- The command line's configuration (:func:`configure`) is applied at once when
  :mod:`logging` is imported already, else right after it is, whoever imports
  it (a finder on ``sys.meta_path`` hands the import to the usual finders and
  runs the configuration when the module has loaded): a record of any logger,
  atoll's or a library's, finds the configuration in place.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

#: :mod:`logging`'s levels, spelled out so that checking one imports nothing.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


class _Setup:
    #: The command line's configuration, waiting for logging to be imported.
    pending: Callable[[], None] | None = None


def configure(setup: Callable[[], None]) -> None:
    """Run *setup* (which configures :mod:`logging`) now if logging is imported
    already, else right after it is imported."""
    if "logging" in sys.modules:
        _Setup.pending = None
        setup()
        return
    _Setup.pending = setup
    if not any(isinstance(finder, _ConfigureOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ConfigureOnImport())


def _run_pending() -> None:
    setup, _Setup.pending = _Setup.pending, None
    if setup is not None:
        setup()


class _ConfigureOnImport:
    """Finds nothing itself: for ``logging`` it asks the finders after it and wraps
    the loader they give, so that the pending configuration runs once the module
    has loaded.  It stays on ``sys.meta_path`` (taking it off while another thread
    walks the list could make that thread skip a finder)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "logging" or _Setup.pending is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenConfigure(spec.loader)  # type: ignore[assignment]
                return spec
        return None


class _ThenConfigure:
    """A loader that runs the pending configuration after the module it loads."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run_pending()


class Logger:
    """The subset of :class:`logging.Logger` that atoll's start-up path uses."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, msg: str, *args: object, **kwargs: Any) -> None:
        self._log(DEBUG, msg, args, kwargs)

    def info(self, msg: str, *args: object, **kwargs: Any) -> None:
        self._log(INFO, msg, args, kwargs)

    def warning(self, msg: str, *args: object, **kwargs: Any) -> None:
        self._log(WARNING, msg, args, kwargs)

    def error(self, msg: str, *args: object, **kwargs: Any) -> None:
        self._log(ERROR, msg, args, kwargs)

    def _log(self, level: int, msg: str, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
        if level < WARNING and "logging" not in sys.modules:
            return
        import logging

        # stacklevel: the record names the caller of debug() and the rest, not this module.
        kwargs.setdefault("stacklevel", 3)
        logging.getLogger(self.name).log(level, msg, *args, **kwargs)
