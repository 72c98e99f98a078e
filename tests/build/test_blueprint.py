"""Blueprint files: what is read, and errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.build.blueprint import (
    Blueprint,
    File,
    load_blueprint,
    parse_blueprint,
    parse_blueprint_dict,
)
from atoll.configfile import KeyLines
from atoll.errors import BlueprintError

FULL = """\
name = "edge"
description = "Edge devices"
version = "1.4.0"

[[packages]]
name = "strace"
version = "*"

[[packages]]
name = "curl"
version = "7.88.1-10+deb12u5"

[[modules]]
name = "jq"

[customizations]
hostname = "edge-1"

[customizations.kernel]
append = "console=ttyS0 quiet"

[[customizations.user]]
name = "admin"
description = "Administrator"
password = "$6$salt$0123456789abcdef"
key = "ssh-ed25519 AAAAC3Nza admin@example"
home = "/home/admin"
shell = "/bin/bash"
groups = ["sudo", "app"]
uid = 1000
gid = 1000

[[customizations.sshkey]]
user = "root"
key = "ssh-ed25519 AAAAC3Nza root@example"

[[customizations.group]]
name = "app"
gid = 1100

[customizations.services]
enabled = ["ssh.service"]
disabled = ["apt-daily.timer"]
masked = ["getty@tty1.service"]

[customizations.firewall]
ports = ["22:tcp", "8000-8010:udp", "imap:tcp"]

[customizations.firewall.services]
enabled = ["ssh"]
disabled = ["dhcpv6-client"]

[[customizations.files]]
path = "/etc/app.conf"
data = '''
x = 1
'''
mode = "0600"
user = "admin"
group = 1100

[[customizations.directories]]
path = "/etc/app.d"
mode = "0750"
ensure_parents = true

[customizations.timezone]
timezone = "Europe/Berlin"
ntpservers = ["0.pool.ntp.org"]

[customizations.locale]
languages = ["en_US.UTF-8", "de_DE.UTF-8"]
keyboard = "de"
"""


def test_every_supported_key_is_read() -> None:
    bp = parse_blueprint(FULL, "edge.toml")
    c = bp.customizations
    assert (bp.name, bp.description, bp.version) == ("edge", "Edge devices", "1.4.0")
    assert [(p.name, p.version) for p in bp.packages] == [
        ("strace", "*"),
        ("curl", "7.88.1-10+deb12u5"),
        ("jq", "*"),
    ]
    assert c.hostname == "edge-1"
    assert c.kernel is not None and c.kernel.append == "console=ttyS0 quiet"
    (admin,) = c.users
    assert admin.password_is_hashed and admin.groups == ("sudo", "app") and admin.uid == 1000
    assert c.sshkeys[0].user == "root"
    assert c.groups[0].gid == 1100
    assert c.services is not None and c.services.masked == ("getty@tty1.service",)
    assert c.firewall is not None
    assert c.firewall.ports == ("22:tcp", "8000-8010:udp", "imap:tcp")
    assert c.firewall.services_disabled == ("dhcpv6-client",)
    assert c.files == (File("/etc/app.conf", "x = 1\n", 0o600, "admin", 1100),)
    assert c.directories[0].mode == 0o750 and c.directories[0].ensure_parents
    assert c.timezone is not None and c.timezone.timezone == "Europe/Berlin"
    assert c.locale is not None and c.locale.keyboard == "de"
    assert bp.warnings == ()


def test_round_trip_through_the_file_structure() -> None:
    bp = parse_blueprint(FULL)
    again = parse_blueprint_dict(bp.to_dict())
    assert again == bp
    assert isinstance(again, Blueprint)


def test_clear_text_password_is_accepted_with_a_warning_naming_the_line() -> None:
    text = 'name = "x"\n\n[[customizations.user]]\nname = "admin"\npassword = "hunter2"\n'
    bp = parse_blueprint(text, "x.toml")
    assert not bp.customizations.users[0].password_is_hashed
    (warning,) = bp.warnings
    assert warning.startswith("x.toml: line 5: customizations.user[0].password:")
    assert "clear-text" in warning


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\nsize = 3\n', "x.toml: line 2: size: unknown key"),
        (
            'name = "x"\n[customizations]\nhostname = "h"\nfirewal = {}\n',
            "x.toml: line 4: customizations.firewal: unknown key",
        ),
        (
            'name = "x"\n[[customizations.user]]\nname = "a"\n\n[[customizations.user]]\n'
            'name = "b"\nuid = "1000"\n',
            "x.toml: line 7: customizations.user[1].uid: must be an integer, not a string",
        ),
        (
            'name = "x"\n[[customizations.files]]\npath = "/etc/a"\nmode = 644\n',
            'x.toml: line 4: customizations.files[0].mode: must be an octal string such as "0644"',
        ),
        (
            'name = "x"\n[[packages]]\nname = "a b"\n',
            "x.toml: line 3: packages[0].name: 'a b' is not a valid package name",
        ),
        (
            'name = "x"\n[customizations.services]\nenabled = "ssh"\n',
            "x.toml: line 3: customizations.services.enabled: must be an array of strings",
        ),
        (
            'name = "x"\n[[customizations.files]]\npath = "etc/relative"\n',
            "x.toml: line 3: customizations.files[0].path: 'etc/relative' must be a normalized",
        ),
        (
            'name = "x"\n[[customizations.directories]]\npath = "/usr/etc/x"\n',
            "x.toml: line 3: customizations.directories[0].path: /usr/etc is not part",
        ),
        (
            'name = "x"\n[customizations.firewall]\nports = ["22/tcp"]\n',
            "x.toml: line 3: customizations.firewall.ports: '22/tcp' is not a valid port",
        ),
        (
            'name = "x"\n[customizations.kernel]\nappend = "a"\nextra = 1\n',
            "x.toml: line 4: customizations.kernel.extra: unknown key",
        ),
        (
            'description = "no name"\n',
            "x.toml: 'name' is required",
        ),
        (
            'name = "x"\n[[customizations.group]]\nname = "a"\n[[customizations.group]]\n'
            'name = "a"\n',
            "x.toml: line 4: customizations.group[1]: 'a' is listed twice",
        ),
        ('name = "x"\nversion = [1]\n', "x.toml: line 2: version: must be a string"),
        ('name = "x"\n[customizations\n', "x.toml: line 2: not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_line(text: str, expected: str) -> None:
    with pytest.raises(BlueprintError) as info:
        parse_blueprint(text, "x.toml")
    assert str(info.value).startswith(expected), str(info.value)
    assert info.value.exit_code == 67


def test_unknown_key_hint_lists_the_allowed_keys() -> None:
    with pytest.raises(BlueprintError) as info:
        parse_blueprint('name = "x"\n[[customizations.user]]\nname = "a"\npasswd = "x"\n')
    assert info.value.hint is not None and "password" in info.value.hint


def test_key_lines_follow_arrays_of_tables_and_subtables() -> None:
    text = (
        "[[customizations.user]]\n"  # 1
        'name = "a"\n'  # 2
        "[[customizations.user]]\n"  # 3
        'name = "b"\n'  # 4
        "[customizations.firewall.services]\n"  # 5
        'enabled = ["ssh"]\n'  # 6
        "[[customizations.files]]\n"  # 7
        'data = """\n'  # 8
        "name = 'not a key'\n"  # 9: inside a multi-line string
        '"""\n'  # 10
        'path = "/x"\n'  # 11
    )
    lines = KeyLines(text)
    assert lines.line_of(("customizations", "user", 1, "name")) == 4
    assert lines.line_of(("customizations", "firewall", "services", "enabled")) == 6
    assert lines.line_of(("customizations", "files", 0, "path")) == 11
    assert lines.line_of(("customizations", "files", 0, "name")) == 7
    assert lines.line_of(("customizations", "user", 0, "uid")) == 1


def test_load_blueprint_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bp.toml"
    path.write_text('name = "x"\nversion = "2.0"\n')
    assert load_blueprint(path).version == "2.0"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(BlueprintError, match="not UTF-8"):
        load_blueprint(path)


@pytest.mark.parametrize(
    "text",
    [
        'name = "x"\nversion = ' + "[" * 5000 + "]" * 5000 + "\n",
        'name = "x"\n[' + ".".join(["customizations"] * 5000) + "]\n",
    ],
)
def test_deep_nesting_is_refused(text: str) -> None:
    with pytest.raises(BlueprintError, match=r"x\.toml: not valid TOML: exceeded max depth"):
        parse_blueprint(text, "x.toml")
