"""/etc/atoll/updates.toml: the full example, defaults, and every way to get it wrong."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError
from atoll.updates.config import (
    SETTINGS,
    TrustSettings,
    UpdatePolicy,
    format_duration,
    format_rate,
    load_config,
    parse_duration,
    parse_rate,
)
from helpers.updates import write_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "updates.md"

EXAMPLE = """\
policy = "stage"

[download]
window = "* 2-4 * * *"
timezone = "Europe/Berlin"
random_delay = "30m"
rate_limit = "2MiB/s"

[apply]
window = "* 3 * * sun"
timezone = "UTC"

[inhibitors]
files = ["/run/atoll/inhibit-reboot", "/var/lib/app/busy.lock"]
commands = ["/usr/bin/app-ready-for-reboot", ["/usr/bin/check", "--quiet", "a b"]]
"""


def test_full_example(tmp_path: Path) -> None:
    path = write_config(tmp_path, EXAMPLE)
    config = load_config(tmp_path)
    assert config.path == path
    assert config.policy is UpdatePolicy.STAGE
    download = config.download
    assert download.window.expression is not None
    assert download.window.expression.hours == {2, 3, 4}
    assert download.window.timezone == "Europe/Berlin"
    assert str(download.window.expression.tz) == "Europe/Berlin"
    assert download.random_delay == datetime.timedelta(minutes=30)
    assert download.rate_limit == 2 * 1024 * 1024
    assert config.apply.window.expression is not None
    assert config.apply.window.expression.weekdays == {0}
    assert config.inhibitors.files == ("/run/atoll/inhibit-reboot", "/var/lib/app/busy.lock")
    assert config.inhibitors.commands == (
        ("/usr/bin/app-ready-for-reboot",),
        ("/usr/bin/check", "--quiet", "a b"),
    )
    doc = config.to_json()
    assert doc["download"] == {
        "window": "* 2-4 * * *",
        "timezone": "Europe/Berlin",
        "randomDelaySeconds": 1800,
        "rateLimit": 2097152,
    }


def test_no_file_means_policy_none(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.policy is UpdatePolicy.NONE
    assert config.path is None
    assert config.download.window.anytime and config.apply.window.anytime
    assert config.download.rate_limit is None
    assert config.inhibitors.files == () and config.inhibitors.commands == ()


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "")
    assert load_config(tmp_path).policy is UpdatePolicy.NONE


def test_trust_settings(tmp_path: Path) -> None:
    assert load_config(tmp_path).trust == TrustSettings(None, False)
    write_config(tmp_path, '[trust]\nmax_signature_age = "7d"\nallow_downgrade = true\n')
    config = load_config(tmp_path)
    assert config.trust == TrustSettings(datetime.timedelta(days=7), True)
    assert config.to_json()["trust"] == {"maxSignatureAgeSeconds": 604800, "allowDowngrade": True}


def test_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    write_config(tmp_path, "[inhibitors]\ncommands = [\"/bin/app 'two words' --x\"]\n")
    assert load_config(tmp_path).inhibitors.commands == (("/bin/app", "two words", "--x"),)


@pytest.mark.parametrize(
    ("text", "key", "problem", "fix"),
    [
        (
            'policy = "sometimes"\n',
            "policy",
            "unknown policy 'sometimes'",
            "none, check, stage, apply",
        ),
        ("policy = 3\n", "policy", "unknown policy 3", "none, check, stage, apply"),
        ("policy = []\n", "policy", "unknown policy []", "none, check, stage, apply"),
        ("[policy]\n", "policy", "unknown policy {}", "none, check, stage, apply"),
        ('polcy = "stage"\n', "polcy", "unknown key", "apply, download, inhibitors, policy"),
        ('[download]\nwindw = "* * * * *"\n', "download.windw", "unknown key", "random_delay"),
        ('[apply]\nrate_limit = "1MiB/s"\n', "apply.rate_limit", "unknown key", "timezone, window"),
        ('[reboot]\nwindow = "* * * * *"\n', "reboot", "unknown key", "apply, download"),
        ('download = "anytime"\n', "download", "expected a table, got a string", "[download]"),
        (
            '[download]\ntimezone = "Mars/Olympus"\n',
            "download.timezone",
            "unknown time zone 'Mars/Olympus'",
            "Europe/Berlin",
        ),
        (
            '[apply]\ntimezone = "../../etc/passwd"\n',
            "apply.timezone",
            "unknown time zone",
            "IANA",
        ),
        ("[download]\ntimezone = 1\n", "download.timezone", "expected a string", "quotes"),
        (
            '[download]\nwindow = "* 25 * * *"\n',
            "download.window",
            "cron expression '* 25 * * *': hour: 25 is outside 0-23",
            "five fields",
        ),
        ("[apply]\nwindow = 3\n", "apply.window", "expected a string, got an integer", "quotes"),
        (
            '[download]\nwindow = "* 2 * * *"\nrandom_delay = "soon"\n',
            "download.random_delay",
            "'soon' is not a duration",
            "30m",
        ),
        (
            '[download]\nwindow = "* 2 * * *"\nrandom_delay = "30"\nrandom_delay2 = 1\n',
            "download.random_delay2",
            "unknown key",
            "rate_limit",
        ),
        (
            '[download]\nwindow = "* 2 * * *"\nrandom_delay = "8d"\n',
            "download.random_delay",
            "8d is longer than 7 days",
            "30m",
        ),
        (
            '[download]\nrandom_delay = "30m"\n',
            "download.random_delay",
            "needs download.window",
            'window = "* 2-4 * * *"',
        ),
        (
            '[download]\nrate_limit = "fast"\n',
            "download.rate_limit",
            "'fast' is not a rate",
            "MiB/s",
        ),
        ('[download]\nrate_limit = "2TiB/s"\n', "download.rate_limit", "is not a rate", "MiB/s"),
        (
            "[download]\nrate_limit = 0\n",
            "download.rate_limit",
            "0 is not a positive rate",
            "MiB/s",
        ),
        ("[download]\nrate_limit = 2\n", "download.rate_limit", "below the minimum", "bytes per"),
        ("[download]\nrate_limit = true\n", "download.rate_limit", "expected a rate", "MiB/s"),
        (
            '[inhibitors]\nfiles = ["run/inhibit"]\n',
            "inhibitors.files[0]",
            "'run/inhibit' is not an absolute path",
            "/run/atoll/inhibit-reboot",
        ),
        (
            '[inhibitors]\nfiles = "/run/x"\n',
            "inhibitors.files",
            "expected a list of strings, got a string",
            "files = [",
        ),
        (
            "[inhibitors]\ncommands = [1]\n",
            "inhibitors.commands[0]",
            "expected a string, got an integer",
            "argv list",
        ),
        ('[inhibitors]\ncommands = [""]\n', "inhibitors.commands[0]", "empty command", "argv"),
        (
            '[inhibitors]\ncommands = ["/bin/x \'open"]\n',
            "inhibitors.commands[0]",
            "cannot split",
            "argv",
        ),
        (
            '[inhibitors]\ncommands = "/bin/ready"\n',
            "inhibitors.commands",
            "expected a list",
            "commands = [",
        ),
        ('[trust]\nmax_signature_age = "a week"\n', "trust.max_signature_age", "not a", "1d"),
        ("[trust]\nmax_signature_age = 0\n", "trust.max_signature_age", "refuses every", "7d"),
        ('[trust]\nallow_downgrade = "yes"\n', "trust.allow_downgrade", "a boolean", "true"),
        ("[trust]\nmax_age = 1\n", "trust.max_age", "unknown key", "max_signature_age"),
    ],
)
def test_invalid_config_names_file_key_and_fix(
    tmp_path: Path, text: str, key: str, problem: str, fix: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(InvalidInputError) as info:
        load_config(tmp_path)
    message = info.value.message
    assert re.match(rf"{re.escape(str(path))}: line \d+: {re.escape(key)}: ", message), message
    assert problem in message
    assert "\n" not in message
    assert info.value.hint is not None and fix in info.value.hint, info.value.hint


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'policy = "stage"\n[download\n')
    with pytest.raises(InvalidInputError) as info:
        load_config(tmp_path)
    assert info.value.message.startswith(f"{path}: line 2: not valid TOML: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    path.write_bytes(b'policy = "\xff"\n')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0),
        (90, 90),
        ("0", 0),
        ("45", 45),
        ("90s", 90),
        ("30m", 1800),
        ("30min", 1800),
        ("1h30m", 5400),
        ("1h 30m 15s", 5415),
        ("2d", 172800),
    ],
)
def test_parse_duration(text: int | str, seconds: int) -> None:
    assert parse_duration(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "m", "30x", "1h-5m", "abc", "30m30", "-5", "1.5h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(datetime.timedelta(0)) == "0s"
    assert format_duration(datetime.timedelta(seconds=1032)) == "17m12s"
    assert format_duration(datetime.timedelta(hours=25)) == "1d1h"


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("2MiB/s", 2 * 1024 * 1024),
        ("2 MiB/s", 2 * 1024 * 1024),
        ("1.5MiB/s", 1572864),
        ("500KiB/s", 512000),
        ("500 kB/s", 500000),
        ("1MB/s", 1000000),
        ("1GiB", 1024**3),
        ("10Mbit/s", 1250000),
        ("800kbit/s", 100000),
        ("2MiBps", 2 * 1024 * 1024),
    ],
)
def test_parse_rate(text: int | str, rate: int) -> None:
    assert parse_rate(text) == rate


def test_format_rate() -> None:
    assert format_rate(2 * 1024 * 1024) == "2 MiB/s"
    assert format_rate(1572864) == "1.5 MiB/s"
    assert format_rate(512) == "512 B/s"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Automatic updates") :]
    for key in SETTINGS:
        assert re.search(rf"`{re.escape(key)}`", section), f"{key} missing from docs/updates.md"


# Nesting past the recursion limit: arrays and inline tables recurse in the
# parser, a long dotted table name builds tables nested as deep as it is long.
DEEP_TOML = {
    "arrays": "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "inline-tables": "x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n",
    "dotted-table": "[" + ".".join(["a"] * 5000) + "]\n",
}


@pytest.mark.parametrize("case", sorted(DEEP_TOML))
def test_deep_nesting_is_refused(tmp_path: Path, case: str) -> None:
    path = write_config(tmp_path, DEEP_TOML[case])
    with pytest.raises(InvalidInputError) as info:
        load_config(tmp_path)
    assert info.value.message.startswith(f"{path}: not valid TOML: exceeded max depth")


@pytest.mark.parametrize("text", ["99999999999999999999d", "99999999999999999999", 10**20])
def test_a_duration_too_long_for_a_timedelta_is_refused(tmp_path: Path, text: int | str) -> None:
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration(text)
    value = f'"{text}"' if isinstance(text, str) else str(text)
    write_config(tmp_path, f'[download]\nwindow = "* 2-4 * * *"\nrandom_delay = {value}\n')
    with pytest.raises(InvalidInputError, match=r"download\.random_delay: .*too long"):
        load_config(tmp_path)
