"""``atoll.semver``: one version type for image labels (promotion) and tags (auto-update)."""

from __future__ import annotations

from atoll.semver import Version


def test_tags_have_no_pre_release_unless_asked() -> None:
    assert Version.parse("1.0.0-rc.1") is None
    full = Version.parse("v1.0.0-rc.1+build.5", full=True)
    assert full is not None and full.pre == ("rc", "1") and full.prefix == "v"


def test_ordering_is_semvers_then_the_longer_tag() -> None:
    texts = ["1.0.0", "1.0.0-rc.10", "1.0.0-alpha", "1.0.0-rc.2", "0.9", "1.0", "1.0.1"]
    versions = [Version.parse(t, full=True) for t in texts]
    ordered = sorted(v for v in versions if v is not None)
    assert [v.tag for v in ordered] == [
        "0.9",
        "1.0.0-alpha",
        "1.0.0-rc.2",
        "1.0.0-rc.10",
        "1.0",
        "1.0.0",
        "1.0.1",
    ]
    one, one_zero = Version.parse("1.0"), Version.parse("1.0.0")
    assert one is not None and one_zero is not None
    assert one.compare(one_zero) == 0 and one < one_zero


def test_a_pin_follows_its_line() -> None:
    pin, inside, outside = Version.parse("3.4"), Version.parse("3.4.7"), Version.parse("3.5.0")
    assert pin is not None and inside is not None and outside is not None
    assert pin.follows(inside) and not pin.follows(outside)
