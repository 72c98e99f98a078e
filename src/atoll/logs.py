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
- The command line's configuration (:func:`configure`) is applied as soon as
  :mod:`logging` is imported when it already is, else before the first record
  that goes there, and by :func:`ready`, which code calls after importing a
  library that logs (see :mod:`atoll.lazy`).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: :mod:`logging`'s levels, spelled out so that checking one imports nothing.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


class _Setup:
    #: The command line's configuration, waiting for logging to be imported.
    pending: Callable[[], None] | None = None


def configure(setup: Callable[[], None]) -> None:
    """Run *setup* (which imports and configures :mod:`logging`) now if logging is
    imported already, else before the first record that goes to it."""
    if "logging" in sys.modules:
        _Setup.pending = None
        setup()
    else:
        _Setup.pending = setup


def ready() -> None:
    """Apply the configuration :func:`configure` left pending, if logging is now
    imported (a library that logs was just loaded)."""
    setup = _Setup.pending
    if setup is not None and "logging" in sys.modules:
        _Setup.pending = None
        setup()


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

        ready()
        # stacklevel: the record names the caller of debug() and the rest, not this module.
        kwargs.setdefault("stacklevel", 3)
        logging.getLogger(self.name).log(level, msg, *args, **kwargs)
