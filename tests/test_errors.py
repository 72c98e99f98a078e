from __future__ import annotations

import re
from pathlib import Path

from atoll.errors import EXIT_CODES, AtollError, NoSpaceError, from_oserror

DOC = Path(__file__).resolve().parents[1] / "docs" / "exit-codes.md"


def test_exit_codes_are_unique_and_documented() -> None:
    rows = re.findall(r"^\| +(\d+) \| `([\w-]+)` \| (.+) \|$", DOC.read_text(), re.MULTILINE)
    documented = {(int(code), name, summary) for code, name, summary in rows}
    actual = {(c.code, c.name, c.summary) for c in EXIT_CODES}
    assert documented == actual, "docs/exit-codes.md is out of date"
    assert len({c.code for c in EXIT_CODES}) == len(EXIT_CODES)


def test_every_error_class_has_its_own_code() -> None:
    classes: list[type[AtollError]] = [AtollError]
    seen = set()
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        assert cls.exit_code not in seen, cls
        seen.add(cls.exit_code)


def test_full_disk_is_reported_as_such() -> None:
    err = from_oserror(OSError(28, "No space left on device"), "/x/blob")
    assert isinstance(err, NoSpaceError)
    assert err.exit_code == 30
    assert "/x/blob" in err.message
