"""Finding the checks (no script runs here)."""

from __future__ import annotations

from pathlib import Path

from atoll.health import CheckKind, HealthConfig, discover, resolve_in_root
from helpers.busybox_root import ETC_REQUIRED, ETC_WANTED, GREEN, RED, REQUIRED, WANTED


def put(root: Path, directory: str, name: str, mode: int = 0o755) -> Path:
    path = root / directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_both_trees_merge_in_name_order_and_etc_replaces_usr(tmp_path: Path) -> None:
    put(tmp_path, REQUIRED, "30-c.sh")
    put(tmp_path, REQUIRED, "10-a.sh")
    put(tmp_path, ETC_REQUIRED, "20-b.sh")
    put(tmp_path, ETC_REQUIRED, "30-c.sh")
    put(tmp_path, ETC_REQUIRED, "Z-upper.sh")  # byte order: upper case before lower
    put(tmp_path, ETC_REQUIRED, "a-lower.sh")
    plan = discover(tmp_path, HealthConfig())
    assert [(c.name, c.path) for c in plan.required] == [
        ("10-a.sh", "/usr/lib/greenboot/check/required.d/10-a.sh"),
        ("20-b.sh", "/etc/greenboot/check/required.d/20-b.sh"),
        ("30-c.sh", "/etc/greenboot/check/required.d/30-c.sh"),
        ("Z-upper.sh", "/etc/greenboot/check/required.d/Z-upper.sh"),
        ("a-lower.sh", "/etc/greenboot/check/required.d/a-lower.sh"),
    ]
    assert plan.required[2].overrides == "/usr/lib/greenboot/check/required.d/30-c.sh"
    assert plan.required[0].overrides is None
    assert all(c.runnable and c.kind is CheckKind.REQUIRED for c in plan.required)
    assert plan.warnings == ()


def test_each_kind_has_its_directories(tmp_path: Path) -> None:
    put(tmp_path, WANTED, "w.sh")
    put(tmp_path, GREEN, "g.sh")
    put(tmp_path, RED, "r.sh")
    put(tmp_path, "etc/greenboot/green.d", "g2.sh")
    plan = discover(tmp_path, HealthConfig())
    assert [c.name for c in plan.wanted] == ["w.sh"]
    assert [c.name for c in plan.green] == ["g.sh", "g2.sh"]
    assert [(c.name, c.kind) for c in plan.red] == [("r.sh", CheckKind.RED)]
    assert plan.required == ()


def test_disabled_checks_are_listed_as_skipped(tmp_path: Path) -> None:
    put(tmp_path, REQUIRED, "01_repository_dns_check.sh")
    put(tmp_path, ETC_WANTED, "02-slow.sh", mode=0o644)  # disabled wins over "not executable"
    put(tmp_path, REQUIRED, "03-kept.sh")
    config = HealthConfig(
        disabled=frozenset(
            {"01_repository_dns_check.sh", "02-slow.sh", "02_watchdog.sh", "typo.sh"}
        )
    )
    plan = discover(tmp_path, config)
    assert [(c.name, c.disabled) for c in plan.skipped] == [
        ("01_repository_dns_check.sh", True),
        ("02-slow.sh", True),
    ]
    assert [c.name for c in plan.required if c.runnable] == ["03-kept.sh"]
    # greenboot's watchdog script name disables atoll's built-in: not a typo.
    assert plan.warnings == (
        "DISABLED_HEALTHCHECKS names 'typo.sh', but no check has that name (misspelled?)",
    )


def test_non_executable_files_are_problems(tmp_path: Path) -> None:
    put(tmp_path, REQUIRED, "10-req.sh", mode=0o644)
    put(tmp_path, WANTED, "20-want.sh", mode=0o600)
    put(tmp_path, GREEN, "30-green.sh", mode=0o700)
    plan = discover(tmp_path, HealthConfig())
    (required,) = plan.required
    assert not required.runnable
    assert required.problem == (
        "not executable (chmod +x /usr/lib/greenboot/check/required.d/10-req.sh)"
    )
    assert plan.wanted[0].problem is not None
    assert plan.green[0].runnable
    # A required one fails the boot later; the others are warnings now.
    assert plan.warnings == (
        "/usr/lib/greenboot/check/wanted.d/20-want.sh: not executable "
        "(chmod +x /usr/lib/greenboot/check/wanted.d/20-want.sh): it does not run",
    )


def test_masks_leftovers_and_odd_files(tmp_path: Path) -> None:
    put(tmp_path, REQUIRED, "10-shipped.sh")
    (tmp_path / ETC_REQUIRED).mkdir(parents=True)
    (tmp_path / ETC_REQUIRED / "10-shipped.sh").symlink_to("/dev/null")
    for leftover in (".hidden.sh", "20-x.sh.rpmnew", "20-x.sh.dpkg-old", "20-x.sh~"):
        put(tmp_path, REQUIRED, leftover)
    (tmp_path / REQUIRED / "40-dir").mkdir()
    (tmp_path / REQUIRED / "50-dangling.sh").symlink_to("/nowhere")
    plan = discover(tmp_path, HealthConfig())
    assert [c.name for c in plan.required] == ["10-shipped.sh"]
    assert plan.required[0].skip_reason == (
        "masked: /etc/greenboot/check/required.d/10-shipped.sh is a symlink to /dev/null"
    )
    assert not plan.required[0].disabled
    assert sorted(plan.warnings) == [
        "/usr/lib/greenboot/check/required.d/40-dir: not a regular file; ignored",
        "/usr/lib/greenboot/check/required.d/50-dangling.sh: No such file or directory; ignored",
    ]


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    # An absolute link means the root's /usr/libexec, not the host's.
    target = put(tmp_path, "usr/libexec/checks", "real.sh")
    (tmp_path / REQUIRED).mkdir(parents=True)
    (tmp_path / REQUIRED / "10-link.sh").symlink_to("/usr/libexec/checks/real.sh")
    (tmp_path / "etc/greenboot/check").mkdir(parents=True)
    (tmp_path / "etc/greenboot/check/wanted.d").symlink_to("../../../usr/libexec/checks")
    plan = discover(tmp_path, HealthConfig())
    assert [c.name for c in plan.required] == ["10-link.sh"]
    assert plan.required[0].runnable
    assert [c.path for c in plan.wanted] == ["/etc/greenboot/check/wanted.d/real.sh"]
    assert resolve_in_root(tmp_path, "/usr/lib/greenboot/check/required.d/10-link.sh") == target
    # ".." and absolute links stop at the root.
    (tmp_path / "up").symlink_to("../../../../..")
    assert resolve_in_root(tmp_path, "/up/usr/libexec/checks/real.sh") == target
    target.chmod(0o644)
    assert not discover(tmp_path, HealthConfig()).required[0].runnable
