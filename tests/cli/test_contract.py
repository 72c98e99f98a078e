"""The output contract of docs/cli.md, checked over every command of the parser."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.cli.common import duration
from atoll.cli.main import main
from atoll.cli.parser import build_parser
from atoll.oci.transports import ImageName, Transport
from atoll.sysroot.status import describe
from helpers.device import installed_device
from helpers.images import build_image
from helpers.registry import RegistryView

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


#: Every command and subcommand, as the words that name it.
COMMANDS = {path: parser for path, parser in _walk(build_parser(), ()) if path}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_contract_is_written_down() -> None:
    text = DOCS.read_text()
    for topic in ("stdout", "stderr", "--json", "--format", "-q", "camelCase", "docker://"):
        assert topic in text, topic


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_of_every_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0
    assert captured.out.startswith("usage: atoll " + " ".join(path))
    assert captured.err == ""


#: Each command with an output --format, and a format of it other than json
#: (image inspect's --format is a Go template, as skopeo's is: docs/cli.md).
FORMATS = {
    path: next(c for c in action.choices if c != "json")
    for path, parser in COMMANDS.items()
    for action in parser._actions
    if "--format" in action.option_strings and action.choices
}


def test_commands_with_formats() -> None:
    assert {("status",), ("workload", "auto-update")} <= set(FORMATS)


@pytest.mark.parametrize("path", sorted(FORMATS), ids=" ".join)
def test_json_and_a_conflicting_format_is_a_usage_error(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    other = FORMATS[path]
    code, out, err = _run(capsys, *path, "--json", "--format", other)
    assert code == 2, err
    assert out == ""
    assert "conflict" in err


def test_status_json_with_format_human_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "null" and exited 0."""
    code, out, err = _run(
        capsys, "status", "--sysroot", str(tmp_path), "--json", "--format", "human"
    )
    assert (code, out) == (2, "")
    assert err.startswith("atoll: error: --json and --format human conflict")


@pytest.mark.parametrize(
    ("path", "absent"),
    [
        (("login",), ("--override-arch", "--retry-times", "--tmpdir")),
        (("logout",), ("--override-arch", "--retry-times", "--tmpdir")),
        (("image", "delete"), ("--override-arch", "--retry-times", "--tmpdir")),
        (("sign",), ("--override-arch", "--retry-times", "--tmpdir")),
        (("version",), ("--progress-fd",)),
    ],
)
def test_options_only_where_they_mean_something(
    path: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    assert not set(absent) & _options(COMMANDS[path])


def _actions(option: str) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    for path, parser in COMMANDS.items():
        for action in parser._actions:
            if option in action.option_strings:
                yield path, action


def test_durations_are_spelled_one_way() -> None:
    """`device boot --timeout 5m` and `failover run --interval 500ms` were floats only."""
    seen = [(path, a) for o in ("--timeout", "--interval", "--watch") for path, a in _actions(o)]
    assert {("device", "boot"), ("failover", "run"), ("workload", "start")} <= {p for p, _ in seen}
    for path, action in seen:
        assert action.type is duration, path


def test_output_files_are_dash_o() -> None:
    for path, action in _actions("--output"):
        assert "-o" in action.option_strings, path


def test_sysroot_defaults_to_slash_sysroot() -> None:
    """`device boot` required --sysroot; `store` took only --store."""
    paths = {path for path, _ in _actions("--sysroot")}
    assert {("device", "boot"), ("store", "ls"), ("store", "fsck"), ("store", "gc")} <= paths
    for path, action in _actions("--sysroot"):
        if path == ("health", "run") or path[0] == "store":
            continue  # a root (health run) or --store (store) come first; see docs/cli.md
        assert action.default == "/sysroot", path


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "version", "--json")
    assert code == 0 and err == ""
    assert set(json.loads(out)) == {"version"}


def test_global_options_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`atoll --sysroot X status` said "atoll: error: atoll: unrecognized arguments"."""
    code, _, err = _run(capsys, "--no-such-option")
    assert code == 2
    assert "atoll: error: atoll" not in err
    assert err.startswith("atoll: error: ")


def test_device_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On one installed directory device: `boot` prints its result on stdout, and a
    command's options work before the command name as after it."""
    _, sysroot = installed_device(tmp_path)
    capsys.readouterr()
    code, out, err = _run(capsys, "boot", "--sysroot", str(sysroot))
    assert code == 0, err
    assert out.startswith("boot 1: ") and err == ""
    code, out, err = _run(capsys, "boot", "--sysroot", str(sysroot), "--json")
    assert code == 0, err
    assert json.loads(out)["boot"] == 1 and err == ""
    code, before, err = _run(capsys, "--json", "--sysroot", str(sysroot), "status")
    assert code == 0, err
    code, after, err = _run(capsys, "status", "--sysroot", str(sysroot), "--json")
    assert code == 0, err
    assert json.loads(before) == json.loads(after)
    code, as_format, err = _run(capsys, "status", "--sysroot", str(sysroot), "--format", "json")
    assert code == 0, err
    assert json.loads(as_format) == json.loads(after)
    code, out, err = _run(capsys, "-q", "--sysroot", str(sysroot), "status", "--booted")
    assert code == 0 and err == ""
    assert out.startswith("Booted image: oci:")
    # Names are printed back in one form: a registry's as docker://, not registry:.
    doc = json.loads(after)
    doc["status"]["booted"]["image"]["image"] = {
        "image": "127.0.0.1:5055/os/edge:1.4",
        "transport": "registry",
    }
    assert describe(doc, booted_only=True).startswith(
        "Booted image: docker://127.0.0.1:5055/os/edge:1.4\n"
    )
    # Singular and plural: "1 try left", not "1 tries left".
    doc["status"]["booted"]["atoll"].update(bootState="assessing", triesLeft=1)
    assert "     Boot state: assessing (1 try left)" in describe(doc).splitlines()


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("127.0.0.1:5055/os/edge:1.4", "docker://127.0.0.1:5055/os/edge:1.4"),
        ("localhost/os/edge", "docker://localhost/os/edge:latest"),
        ("quay.io/os/edge:1", "docker://quay.io/os/edge:1"),
    ],
)
def test_a_bare_registry_name_is_docker(text: str, printed: str) -> None:
    name = ImageName.parse(text)
    assert name.transport is Transport.DOCKER
    assert str(name) == printed


@pytest.mark.parametrize("text", ["./os/edge", "../os/edge", "edge", "os/edge"])
def test_paths_and_short_names_are_not_registry_names(text: str) -> None:
    with pytest.raises(Exception, match="no transport"):
        ImageName.parse(text)


@pytest.mark.integration
def test_image_copy_to_a_bare_registry_name(
    tmp_path: Path, registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    """`image copy … 127.0.0.1:5055/os/edge:1.4` failed: "unknown transport '127.0.0.1'"."""
    repo = f"{registry.host}/{registry.new_repo('bare')}"
    img = build_image(tmp_path / "src", "v1", layers=1)
    code, out, err = _run(capsys, "image", "copy", "-q", f"oci:{img.layout}:v1", f"{repo}:1.4")
    assert code == 0, err
    code, out, err = _run(capsys, "image", "tags", "--json", repo)
    assert code == 0, err
    assert "1.4" in out
