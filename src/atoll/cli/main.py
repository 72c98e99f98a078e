"""The ``atoll`` command: parsing, logging, output and exit codes.

Only this module turns :class:`atoll.errors.AtollError` into an exit code and a
message on stderr (``atoll: error: …`` and, when there is one, ``hint: …``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from atoll import __version__
from atoll.cli.common import Output, add_global_options
from atoll.errors import AtollError, InterruptedError_, UsageError

log = logging.getLogger("atoll")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


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
    "base": "base",
    "promote": "pipeline",
    "mirror": "pipeline",
    "bundle": "pipeline",
    "failover": "failover",
    "demo": "demo",
}
#: Commands defined in this module.
_BUILTIN = frozenset({"version"})
#: Global options that take a value (skipped when looking for the command).
_VALUE_OPTIONS = frozenset({"--progress-fd"})


def command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line, if any (the first positional word)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


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
        importlib.import_module(f"atoll.cli.{module}").register(commands)
    version = commands.add_parser("version", help="print the version")
    add_global_options(version)
    version.set_defaults(func=_run_version)
    return parser


def _run_version(args: argparse.Namespace, out: Output) -> int:
    out.result({"version": __version__}, f"atoll {__version__}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    out = Output()
    try:
        args = parser.parse_args(argv)
        out = Output.from_args(args)
        out.setup_logging()
        code: int = args.func(args, out)
        return code
    except AtollError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error(InterruptedError_("interrupted"))
        return InterruptedError_.exit_code
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as exc:
        # On a device atoll runs with the distribution's packages: name the one to install.
        from atoll.requires import missing_package

        missing = missing_package(exc)
        if missing is None:
            return _internal_error(out, exc)
        out.error(missing)
        return missing.exit_code
    except Exception as exc:
        return _internal_error(out, exc)


def _internal_error(out: Output, exc: Exception) -> int:
    # A bug: say so in one line, and show the traceback with --debug.
    log.debug("internal error", exc_info=True)
    out.error(
        AtollError(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="run with --debug for the traceback and report it",
        )
    )
    return AtollError.exit_code


if __name__ == "__main__":
    sys.exit(main())
