"""The ``atoll`` command line's parser: which module defines each command, and
options written before the command.

Only the module of the command being run is imported: a command pays the
start-up time of what it uses, not of every part of atoll.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from atoll import __version__
from atoll.cli.common import Output, add_global_options
from atoll.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` answers ($COLUMNS, else the
    terminal on stdout, else 80), without importing shutil and the compression
    modules it loads."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, asking the terminal for its width once per run
    rather than at every add_argument (which formats each option to check it:
    a third of the time it takes to build a command's parser)."""

    _terminal_width: int | None = None

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            if _Formatter._terminal_width is None:
                _Formatter._terminal_width = _terminal_columns() - 2
            width = _Formatter._terminal_width
        super().__init__(prog, indent_increment, max_help_position, width)


def _untranslated(message: str) -> str:
    return message


# argparse looks its own messages up in a gettext catalog each time it makes a
# parser or an option (the locale from the environment, its aliases, a stat for each
# candidate file): two thirds of the time it takes to build a command's parser.
# Python ships no catalog for argparse's domain, so every lookup answers the
# English text; answer it without looking.
argparse._ = _untranslated  # type: ignore[attr-defined]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # The error line already starts with "atoll: error:": name only the subcommand.
        where = self.prog.removeprefix("atoll").strip()
        raise UsageError(
            f"{where}: {message}" if where else message, hint=f"see '{self.prog} --help'"
        )


#: The module under atoll.cli that defines each command, in the order of --help.
#: Only the module of the command being run is imported: a command pays the
#: start-up time of what it uses, not of every part of atoll.
COMMAND_MODULES: dict[str, str] = {
    "image": "image",
    "login": "login",
    "logout": "login",
    "install": "host",
    "status": "host",
    "upgrade": "host",
    "switch": "host",
    "rollback": "host",
    "pin": "host",
    "unpin": "host",
    "cleanup": "host",
    "finalize": "host",
    "config-diff": "host",
    "boot": "host",
    "disk-image": "disk",
    "iso": "disk",
    "store": "store",
    "device": "device",
    "health": "health",
    "updates": "updates",
    "workload": "workload",
    "key": "sign",
    "sign": "sign",
    "verify": "sign",
    "build": "build",
    "lint": "build",
    "rechunk": "rechunk",
    "base": "base",
    "promote": "pipeline",
    "mirror": "pipeline",
    "bundle": "pipeline",
    "failover": "failover",
    "fleet": "fleet",
    "agent": "agent",
    "demo": "demo",
}
#: Commands whose module registers only the subcommand named on the command line
#: when it knows it (``register(commands, only=NAME)``): ``image copy`` is the
#: command most often run in scripts, and its siblings' options take twice its time.
_SELECTIVE = frozenset({"image"})
#: Commands defined in this module.
_BUILTIN = frozenset({"version"})
#: Global options that take a value (skipped when looking for the command).
_VALUE_OPTIONS = frozenset({"--progress-fd"})
#: Options the top-level parser knows; others before the command are the command's.
_TOP_OPTIONS = frozenset(
    {"-h", "--help", "--version", "-v", "--verbose", "--debug", "-q", "--quiet", "--json"}
)


def _leading_options(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """*argv* split into the top-level options before the command, the command's
    own options written before it (``atoll --sysroot X status``) and the rest."""
    top: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        word = argv[i]
        takes_value = "=" not in word and i + 1 < len(argv)
        if word in _VALUE_OPTIONS and takes_value:
            top += argv[i : i + 2]
            i += 2
        elif word in _TOP_OPTIONS or word.split("=", 1)[0] in _VALUE_OPTIONS:
            top.append(word)
            i += 1
        elif takes_value and not argv[i + 1].startswith("-") and not _is_command(argv[i + 1]):
            # A value that is not a command name: the option's argument.
            moved += argv[i : i + 2]
            i += 2
        else:
            moved.append(word)
            i += 1
    return top, moved, list(argv[i:])


def _is_command(word: str) -> bool:
    return word in COMMAND_MODULES or word in _BUILTIN


def command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line, if any (the first positional word)."""
    rest = _leading_options(argv)[2]
    return rest[0] if rest and rest[0] != "--" else None


def subcommand_of(argv: Sequence[str]) -> str | None:
    """The word after the command (``copy`` in ``atoll -q image copy A B``), if any."""
    rest = _leading_options(argv)[2]
    return rest[1] if len(rest) > 1 else None


def hoist_options(argv: Sequence[str]) -> list[str]:
    """*argv* with a command's options written before the command moved after it,
    so that every option works before the command as it does after it (argparse
    lets options and positionals of the last subcommand mix, but not before "--")."""
    top, moved, rest = _leading_options(argv)
    if not moved or not rest:
        return list(argv)
    end = rest.index("--") if "--" in rest else len(rest)
    return [*top, *rest[:end], *moved, *rest[end:]]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with *argv*, only the module of the command it names is loaded
    (all of them for ``--help``, no command or an unknown one)."""
    parser = _Parser(
        prog="atoll",
        description="Image mode for Linux: the OS and its workloads as OCI images.",
    )
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    named = command_of(argv) if argv is not None else None
    if named in _BUILTIN:
        modules: list[str] = []
    elif named in COMMAND_MODULES:
        modules = [COMMAND_MODULES[named]]
    else:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    for module in modules:
        register = importlib.import_module(f"atoll.cli.{module}").register
        if named in _SELECTIVE and argv is not None:
            register(commands, only=subcommand_of(argv))
        else:
            register(commands)
    version = commands.add_parser("version", help="print the version")
    add_global_options(version, progress=False)
    version.set_defaults(func=run_version)
    return parser


def run_version(args: argparse.Namespace, out: Output) -> int:
    out.result({"version": __version__}, f"atoll {__version__}")
    return 0
