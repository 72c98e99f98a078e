"""The grouping rule on synthetic package sets: stable when packages come and go."""

from __future__ import annotations

import pytest

from atoll.build.grouping import (
    STATE,
    Layout,
    group_files,
    plan_layout,
)
from atoll.errors import RechunkError

MiB = 1 << 20


def _tree(
    packages: dict[str, int], unowned: dict[str, int]
) -> tuple[dict[str, int], dict[str, str]]:
    sizes: dict[str, int] = {}
    owners: dict[str, str] = {}
    for name, size in packages.items():
        for i in range(4):
            path = f"usr/share/{name}/f{i}"
            sizes[path] = size // 4
            owners[path] = name
    sizes.update(unowned)
    sizes["var/lib/dpkg/status"] = 50_000
    return sizes, owners


def _packages(n: int) -> dict[str, int]:
    # A few big ones and many small ones, like a distribution.
    return {f"pkg{i:03d}": (8 * MiB if i % 17 == 0 else 40_000 + 1000 * i) for i in range(n)}


def _by_group(groups: list) -> dict[str, tuple[str, ...]]:  # type: ignore[type-arg]
    return {g.name: g.paths for g in groups}


def test_layers_stay_within_the_limit_and_no_group_dominates() -> None:
    packages = _packages(300)
    sizes, owners = _tree(packages, {f"opt/data/{i}": 100_000 for i in range(50)})
    layout = plan_layout(packages, 32)
    groups = group_files(sizes, owners, layout)
    assert len(groups) <= 32
    total = sum(sizes.values())
    assert max(g.size for g in groups) <= 0.25 * total
    assert sorted(p for g in groups for p in g.paths) == sorted(sizes)
    assert any(g.name == STATE for g in groups)


def test_a_new_package_changes_only_its_own_group() -> None:
    packages = _packages(200)
    sizes, owners = _tree(packages, {"etc/hostname": 10})
    first = plan_layout(packages, 64)
    before = _by_group(group_files(sizes, owners, first))

    more = {**packages, "newcomer": 30_000, "bigcomer": 20 * MiB}
    sizes2, owners2 = _tree(more, {"etc/hostname": 10})
    second = plan_layout(more, 64, Layout.from_label(first.to_label(), "v1"))
    after = _by_group(group_files(sizes2, owners2, second))

    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    newcomer = next(n for n, paths in after.items() if "usr/share/newcomer/f0" in paths)
    bigcomer = next(n for n, paths in after.items() if "usr/share/bigcomer/f0" in paths)
    assert changed <= {newcomer, bigcomer}, changed
    assert set(first.alone) <= set(second.alone)


def test_a_removed_big_package_frees_its_layer_only() -> None:
    packages = _packages(100)
    sizes, owners = _tree(packages, {})
    first = plan_layout(packages, 64)
    gone = first.alone[0]
    fewer = {p: s for p, s in packages.items() if p != gone}
    sizes2, owners2 = _tree(fewer, {})
    second = plan_layout(fewer, 64, first)
    before = _by_group(group_files(sizes, owners, first))
    after = _by_group(group_files(sizes2, owners2, second))
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert changed == {f"pkg/{gone}"}


def test_a_hard_link_follows_its_other_name() -> None:
    sizes = {"usr/bin/a": 10, "usr/lib/z/b": 10}
    layout = plan_layout({"p": 20}, 16)
    groups = group_files(sizes, {"usr/bin/a": "p"}, layout, follow={"usr/lib/z/b": "usr/bin/a"})
    assert [g.paths for g in groups] == [("usr/bin/a", "usr/lib/z/b")]


def test_a_huge_unowned_directory_is_split() -> None:
    sizes = {f"opt/blob/{i}": MiB for i in range(100)}
    layout = plan_layout({}, 16)
    groups = group_files(sizes, {}, layout)
    assert len(groups) > 1
    assert max(g.size for g in groups) <= 0.25 * 100 * MiB


def test_the_layout_round_trips_through_its_label() -> None:
    layout = plan_layout({"a": 10 * MiB, "b": MiB, "c": 10}, 64)
    assert Layout.from_label(layout.to_label(), "x") == layout
    with pytest.raises(RechunkError, match="not a rechunk layout"):
        Layout.from_label("{}", "x")
    with pytest.raises(RechunkError, match="newer"):
        Layout.from_label(layout.to_label().replace('"version":1', '"version":99'), "x")


def test_too_few_layers_is_refused() -> None:
    with pytest.raises(RechunkError, match="too few"):
        plan_layout({}, 3)
