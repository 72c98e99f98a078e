"""The ``atoll`` command: parsing, logging, output and exit codes.

Only this module turns :class:`atoll.errors.AtollError` into an exit code and a
message on stderr (``atoll: error: …`` and, when there is one, ``hint: …``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from atoll import __version__
from atoll.cli import device, health, host, image, login, sign, store, updates, workload
from atoll.cli.common import Output, add_global_options
from atoll.errors import AtollError, InterruptedError_, UsageError

log = logging.getLogger("atoll")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="atoll",
        description="Image mode for Linux: the OS and its workloads as OCI images.",
    )
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    image.register(commands)
    login.register(commands)
    host.register(commands)
    store.register(commands)
    device.register(commands)
    health.register(commands)
    updates.register(commands)
    workload.register(commands)
    sign.register(commands)
    demo = commands.add_parser("demo", help="run the demonstration scenario")
    add_global_options(demo)
    demo.add_argument("--keep", action="store_true", help="leave the setup running afterwards")
    demo.add_argument("--workdir", help="where the demo keeps its files (default: a temp dir)")
    demo.set_defaults(func=_run_demo)
    version = commands.add_parser("version", help="print the version")
    add_global_options(version)
    version.set_defaults(func=_run_version)
    return parser


def _run_version(args: argparse.Namespace, out: Output) -> int:
    out.result({"version": __version__}, f"atoll {__version__}")
    return 0


def _run_demo(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.demo import run_demo

    return run_demo(args, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
    except Exception as exc:
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
