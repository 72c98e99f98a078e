"""The install config (atoll.install.config): what it accepts, and each refusal
naming the file, the line and the key, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import InstallConfigError
from atoll.install.config import EMBEDDED, DiskRules, User, load_config, parse_config

FULL = """\
version = 1
hostname = "edge-01"

[image]
source = "embedded"
track = "registry.example.com/os/edge:stable"

[disk]
model = "QEMU*"
min-size = "8G"
max-size = 68719476736
boot = "hybrid"
secure-boot = true

[kernel]
args = ["console=ttyS0,115200", "quiet"]

[[user]]
name = "root"
ssh-authorized-keys = ["ssh-ed25519 AAAAC3Nza root@example"]

[[user]]
name = "ops"
ssh-authorized-keys = ["ssh-ed25519 AAAAC3Nzb ops@example"]

[signature]
policy = '''{"default": [{"type": "insecureAcceptAnything"}]}'''
"""


def test_a_full_config_reads_into_its_settings() -> None:
    config = parse_config(FULL, "install.toml")
    assert config.source == EMBEDDED and config.embedded
    assert config.track == "registry.example.com/os/edge:stable"
    assert config.disk == DiskRules(model="QEMU*", min_size=8 << 30, max_size=64 << 30)
    assert (config.boot, config.secure_boot) == ("hybrid", True)
    assert config.kargs == ("console=ttyS0,115200", "quiet")
    assert config.hostname == "edge-01"
    assert config.users == (
        User("root", ("ssh-ed25519 AAAAC3Nza root@example",)),
        User("ops", ("ssh-ed25519 AAAAC3Nzb ops@example",)),
    )
    assert config.policy is not None and "insecureAcceptAnything" in config.policy


def test_the_least_config_installs_an_image_from_a_registry_on_uefi() -> None:
    config = parse_config('version = 1\n[image]\nsource = "example.com/os:1"\n', "c.toml")
    assert (config.source, config.embedded, config.boot) == ("example.com/os:1", False, "uefi")
    assert config.disk == DiskRules() and config.users == () and config.policy is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version = 1\n[image\n", "c.toml: not TOML"),
        ('[image]\nsource = "embedded"\n', "version: expected 1, found None"),
        ('version = 1\n[image]\nsorce = "embedded"\n', "line 3: image.sorce: unknown key"),
        ("version = 1\n[image]\n", "image.source: missing"),
        ('version = 1\n[image]\nsource = "not a ref!"\n', "line 3: image.source: "),
        ('version = 1\nimage = "embedded"\n', "line 2: image: expected a table, found a string"),
        (
            'version = 1\n[image]\nsource = "embedded"\n[disk]\nmin-size = "lots"\n',
            "line 5: disk.min-size: 'lots' is not a size",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[disk]\npath = "vda"\n',
            "disk.path: 'vda' is not a device path under /dev/",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[disk]\nmin-size = "8G"\nmax-size = "4G"\n',
            "disk.max-size: smaller than min-size",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[disk]\nboot = "bios"\n'
            "secure-boot = true\n",
            'disk.secure-boot: needs boot = "uefi" or "hybrid"',
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[disk]\nboot = "efi"\n',
            "disk.boot: 'efi' is not one of uefi, bios, hybrid",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[kernel]\nargs = ["root=/dev/sda1"]\n',
            "kernel.args[0]: 'root=/dev/sda1': one argument without spaces",
        ),
        (
            'version = 1\nhostname = "edge_01!"\n[image]\nsource = "embedded"\n',
            "line 2: hostname: 'edge_01!' is not a host name",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[[user]]\nname = "Root"\n',
            "line 5: user[0].name: 'Root' is not a user name",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[[user]]\nname = "a"\n'
            'ssh-authorized-keys = ["justakey"]\n',
            "user[0].ssh-authorized-keys[0]: not an authorized_keys line",
        ),
        (
            'version = 1\n[image]\nsource = "embedded"\n[signature]\npolicy = \'{"x": 1}\'\n',
            "line 5: signature.policy: policy: ",
        ),
    ],
)
def test_a_bad_config_is_refused_naming_where(text: str, expected: str) -> None:
    with pytest.raises(InstallConfigError) as caught:
        parse_config(text, "c.toml")
    assert caught.value.exit_code == 111
    assert expected in caught.value.message, caught.value.message


def test_an_unreadable_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallConfigError, match="cannot read the install config"):
        load_config(tmp_path / "missing.toml")
