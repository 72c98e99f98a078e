from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from atoll.cli import workload
from atoll.cli.common import Output
from atoll.errors import AtollError, QuadletUnitError
from atoll.workloads import load_units
from atoll.workloads.unitfiles.quadlet import ContainerOptions, dropin_dirs


def main(argv: list[str]) -> int:
    # cli/main.py does not register `workload` yet; drive the subcommand directly.
    parser = argparse.ArgumentParser()
    workload.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args, Output(quiet=True))
    except AtollError as exc:
        return exc.exit_code
    return code


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_continuation_comments_repeats_dropins_and_reset(tmp_path: Path) -> None:
    _write(
        tmp_path / "a/w.container",
        "[Container]\nImage=x\n# c\nExec=/bin/sh -c \\\n  'echo hi'\n"
        "Label=a=1\nLabel=b=2\nUser=1\n",
    )
    _write(tmp_path / "a/w.container.d/20.conf", "[Container]\nLabel=\nLabel=c=3\n")
    _write(tmp_path / "a/w.container.d/10.conf", "[Container]\nUser=2\n")
    loaded = load_units([tmp_path / "a"])
    opts = loaded.units[0].options
    assert isinstance(opts, ContainerOptions)
    # podman joins a continued line as written: the blank before the backslash stays.
    assert opts.exec_ == "/bin/sh -c 'echo hi'"
    assert opts.label == ("c=3",)
    assert opts.user == "2"
    assert loaded.warnings == ()


def test_an_unknown_key_is_refused_with_its_line(tmp_path: Path) -> None:
    _write(tmp_path / "a/w.container", "[Container]\nImage=x\n\nBogus=1\n")
    with pytest.raises(QuadletUnitError, match=r"w.container:4: unsupported key Bogus"):
        load_units([tmp_path / "a"])
    assert [e.message for e in load_units([tmp_path / "a"], strict=False).errors] == [
        f"{tmp_path}/a/w.container:4: unsupported key Bogus in [Container]"
    ]


def test_earlier_root_wins(tmp_path: Path) -> None:
    _write(tmp_path / "etc/w.container", "[Container]\nImage=first\n")
    _write(tmp_path / "usr/w.container", "[Container]\nImage=second\n")
    loaded = load_units([tmp_path / "etc", tmp_path / "usr"])
    assert [u.options.image for u in loaded.units] == ["first"]  # type: ignore[union-attr]


def test_cli_generate_writes_services(tmp_path: Path) -> None:
    _write(tmp_path / "u/w.container", "[Container]\nImage=x\nNetwork=n.network\n")
    _write(tmp_path / "u/n.network", "[Network]\n")
    assert main(["workload", "generate", str(tmp_path / "out"), "--root", str(tmp_path / "u")]) == 0
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["n-network.service", "w.service"]
    text = (tmp_path / "out/w.service").read_text()
    assert "Requires=n-network.service" in text
    assert "--network systemd-n" in text


def test_missing_network_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "u/w.container", "[Container]\nImage=x\nNetwork=gone.network\n")
    assert main(["workload", "generate", str(tmp_path / "o"), "--root", str(tmp_path / "u")]) == 51


def test_a_nul_byte_is_a_clean_refusal(tmp_path: Path) -> None:
    # Found by fuzzing: Volume=./a<NUL>b made generate fail with a ValueError (exit 1).
    _write(tmp_path / "u/w.container", "[Container]\nImage=x\n")
    _write(tmp_path / "u/w.container.d/10.conf", "[Container]\nVolume=./a\0b:/data\n")
    code = main(["workload", "generate", str(tmp_path / "out"), "--root", str(tmp_path / "u")])
    assert code == QuadletUnitError.exit_code
    with pytest.raises(QuadletUnitError, match=r"10.conf:2: a NUL byte"):
        load_units([tmp_path / "u"])


def test_dropin_directories_most_specific_first() -> None:
    assert dropin_dirs("my-web-app@blue.container") == [
        "my-web-app@blue.container.d",
        "my-web-app@.container.d",
        "my-web-@.container.d",
        "my-web-.container.d",
        "my-@.container.d",
        "my-.container.d",
        "container.d",
    ]
    assert dropin_dirs("db.volume") == ["db.volume.d", "volume.d"]


def test_a_template_instance_takes_the_templates_dropins(tmp_path: Path) -> None:
    _write(tmp_path / "u/web@blue.container", "[Container]\nImage=x\n")
    _write(tmp_path / "u/web@.container.d/10.conf", "[Container]\nLabel=t=1\n")
    _write(tmp_path / "u/container.d/20.conf", "[Container]\nLabel=all=1\n")
    _write(tmp_path / "u/container.d/10.conf", "[Container]\nLabel=shadowed=1\n")
    (unit,) = load_units([tmp_path / "u"]).units
    assert unit.options.label == ("t=1", "all=1")  # type: ignore[union-attr]
    assert unit.template_parts == ("web", "blue", True)
