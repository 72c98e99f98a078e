from __future__ import annotations

import re
from pathlib import Path

import pytest

from atoll.health import SETTINGS, HealthConfig, load_config
from atoll.health.config import default_of, parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "health.md"


def write_conf(root: Path, text: str) -> Path:
    path = root / "etc/greenboot/greenboot.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_missing_file_gives_the_defaults(tmp_path: Path) -> None:
    config, warnings = load_config(tmp_path)
    assert config == HealthConfig()
    assert (config.max_boot_attempts, config.watchdog_grace_hours) == (3, 24)
    assert config.watchdog_enabled is True
    assert config.check_timeout == 300
    assert config.disabled == frozenset()
    assert warnings == []


def test_greenboots_own_file_reads_as_greenboot_means_it(tmp_path: Path) -> None:
    # The file greenboot ships, with its commented-out multi-line array filled in.
    write_conf(
        tmp_path,
        """# Greenboot configuration file

## Generic
GREENBOOT_MAX_BOOT_ATTEMPTS=5

## Watchdog
GREENBOOT_WATCHDOG_CHECK_ENABLED=False
GREENBOOT_WATCHDOG_GRACE_PERIOD=12

### NOTE: Script names must be spelled EXACTLY.
DISABLED_HEALTHCHECKS=(
\t"01_repository_dns_check.sh" # not on this network
\t'02_watchdog.sh'
)
export ATOLL_HEALTHCHECK_TIMEOUT=90
""",
    )
    config, warnings = load_config(tmp_path)
    assert warnings == []
    assert config == HealthConfig(
        max_boot_attempts=5,
        disabled=frozenset({"01_repository_dns_check.sh", "02_watchdog.sh"}),
        watchdog_enabled=False,
        watchdog_grace_hours=12,
        check_timeout=90.0,
    )


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ('DISABLED_HEALTHCHECKS=("a.sh" "b c.sh")', {"a.sh", "b c.sh"}),
        ("DISABLED_HEALTHCHECKS=(a.sh b.sh)  # two", {"a.sh", "b.sh"}),
        ("DISABLED_HEALTHCHECKS=()", set()),
        ('DISABLED_HEALTHCHECKS="a.sh  b.sh"', {"a.sh", "b.sh"}),
        ("DISABLED_HEALTHCHECKS=a.sh", {"a.sh"}),
        ('DISABLED_HEALTHCHECKS=(a.sh)\nDISABLED_HEALTHCHECKS+=("b.sh")', {"a.sh", "b.sh"}),
        ('DISABLED_HEALTHCHECKS=(a.sh)\nDISABLED_HEALTHCHECKS=("b.sh")', {"b.sh"}),
        ('DISABLED_HEALTHCHECKS=(\n  "a)b.sh"\n  c.sh\n)', {"a)b.sh", "c.sh"}),
    ],
)
def test_disabled_healthchecks_as_bash_array_or_string(line: str, names: set[str]) -> None:
    config, warnings = parse_config(line + "\n", "greenboot.conf")
    assert warnings == []
    assert config.disabled == names


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=zero", 1, "GREENBOOT_MAX_BOOT_ATTEMPTS: expected a whole"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=0", 1, "using the default (3)"),
        ("\nGREENBOOT_WATCHDOG_CHECK_ENABLED=maybe", 2, "expected true or false, got 'maybe'"),
        ("GREENBOOT_WATCHDOG_GRACE_PERIOD=-1", 1, "using the default (24)"),
        ("ATOLL_HEALTHCHECK_TIMEOUT=soon", 1, "using the default (300)"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=$N", 1, "shell expansion"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=(3)", 1, "not an array"),
        ("# ok\nsource /etc/other.conf", 2, "not a KEY=VALUE line"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=3 4", 1, "more than one word"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS='3", 1, "No closing quotation"),
        ('DISABLED_HEALTHCHECKS=("a.sh"\n"b.sh"', 1, "no closing ')'"),
        ("DISABLED_HEALTHCHECKS=(a.sh) b", 1, "unexpected text after ')'"),
        ("DISABLED_HEALTHCHECKS=(dir/a.sh)", 1, "not a check name"),
        ("GREENBOOT_MAX_BOOT_ATEMPTS=4", 1, "unknown setting GREENBOOT_MAX_BOOT_ATEMPTS"),
    ],
)
def test_a_malformed_line_warns_with_file_and_line_and_keeps_the_default(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write_conf(tmp_path, text + "\n")
    config, warnings = load_config(tmp_path)
    assert config == HealthConfig()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{path}: line {line}: ")
    assert message in warnings[0]


def test_a_bad_line_does_not_spoil_the_others() -> None:
    config, warnings = parse_config(
        "GREENBOOT_MAX_BOOT_ATTEMPTS=2\nGREENBOOT_WATCHDOG_GRACE_PERIOD=soon\n"
        "OTHER_TOOL_SETTING=kept quietly\nDISABLED_HEALTHCHECKS=(x.sh)\n",
        "f",
    )
    assert config == HealthConfig(max_boot_attempts=2, disabled=frozenset({"x.sh"}))
    assert [w.split(": ")[1] for w in warnings] == ["line 2", "line 3"]


def test_every_setting_is_documented_with_its_default() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \| (\w+) \|", DOC.read_text(), re.MULTILINE)
    documented = {key: (default, origin) for key, default, origin in rows}
    expected = {}
    for setting in SETTINGS:
        default = default_of(setting)
        if isinstance(default, frozenset):
            shown = "()"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, float):
            shown = f"{default:g}"
        else:
            shown = str(default)
        expected[setting.key] = (shown, setting.origin)
    assert documented == expected
