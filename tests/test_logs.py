"""atoll.logs: records below WARNING cost nothing until logging is imported; every
other record reaches logging, configured as the command line asked."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from atoll import logs

_WITHOUT_LOGGING = """
import sys
from atoll import logs

def setup():
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    print("configured", file=sys.stderr)

logs.configure(setup)
log = logs.Logger("atoll.example")
log.debug("dropped %s", 1)
log.info("dropped too")
print("logging" in sys.modules)
log.warning("kept %s", "this")
print("logging" in sys.modules)
"""


def test_records_below_warning_do_not_import_logging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LOGGING],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    assert done.stdout.split() == ["False", "True"]
    # The pending configuration went in place before the first record was handled.
    assert done.stderr.splitlines() == ["configured", "WARNING atoll.example: kept this"]


def test_once_logging_is_imported_every_record_reaches_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="atoll.example")
    log = logs.Logger("atoll.example")
    log.debug("a %s", "debug record")
    log.info("an info record")
    log.error("an error")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "a debug record"),
        (logging.INFO, "an info record"),
        (logging.ERROR, "an error"),
    ]
    # The record names the line that logged it, not atoll.logs.
    assert {r.filename for r in caplog.records} == {"test_logs.py"}


_LIBRARY_FIRST = """
import sys
from atoll import logs

def setup():
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")

logs.configure(setup)
import logging  # as a library would, before any atoll record
logging.getLogger("somelib").warning("from a library")
logging.getLogger("somelib").info("below the level")
print(logging.__spec__.origin.endswith("logging/__init__.py"))
"""


def test_whoever_imports_logging_finds_the_configuration_in_place() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LIBRARY_FIRST],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    assert done.stderr.splitlines() == ["WARNING somelib: from a library"]
    assert done.stdout.split() == ["True"]


def test_configure_runs_at_once_when_logging_is_imported() -> None:
    calls: list[str] = []
    logs.configure(lambda: calls.append("now"))
    assert calls == ["now"]
