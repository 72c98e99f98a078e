from __future__ import annotations

import pytest

from atoll.workloads.autoupdate.versionpins import Version, VersionChoice, choose, is_pin

TAGS = [
    "latest",
    "3.3.9",
    "3.4",
    "3.4.0",
    "3.4.2",
    "3.4.10",
    "3.4.11-rc1",
    "3.4-alpine",
    "v3.4.12",
    "3.5",
    "3.5.0",
    "4",
    "4.0",
    "4.0.1",
]


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        # Numeric order, not string order (3.4.10 > 3.4.2); pre-releases, suffixed
        # tags and another prefix are not on the line.
        ("3.4", VersionChoice("3.4.10", ("4.0.1", "4.0", "3.5.0"))),
        ("3", VersionChoice("3.5.0", ("4.0.1", "4.0"))),
        ("v3.4", VersionChoice("v3.4.12", ())),
        ("3.4.2", VersionChoice("3.4.2", ("4.0.1", "4.0", "3.5.0", "3.4.10"))),
        # Nothing on the line yet: the pin itself is checked.
        ("3.6", VersionChoice("3.6", ("4.0.1", "4.0"))),
        ("latest", VersionChoice("latest", ())),
    ],
)
def test_choose_follows_the_pins_line_and_reports_newer(pin: str, expected: VersionChoice) -> None:
    assert choose(pin, TAGS) == expected


def test_versions_parse_and_pins() -> None:
    assert Version.parse("v1.2.3") == Version((1, 2, 3), 3, "v", "v1.2.3")
    assert Version.parse("01.2") is None  # leading zeros are not versions
    assert Version.parse("1.2.3.4") is None
    assert Version.parse("1.2-rc1") is None
    assert [is_pin(t) for t in ("1", "1.2", "1.2.3", "latest", "v2")] == [
        True,
        True,
        False,
        False,
        True,
    ]


def test_a_floating_tag_alone_is_followed() -> None:
    assert choose("2.1", ["2.1", "latest"]) == VersionChoice("2.1", ())
    # The explicit 2.1.0 is preferred over the floating 2.1 at the same version.
    assert choose("2.1", ["2.1", "2.1.0"]).tag == "2.1.0"
