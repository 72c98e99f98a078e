"""The ``atoll`` command: parsing, logging, output and exit codes.

Only this module turns :class:`atoll.errors.AtollError` into an exit code and a
message on stderr (``atoll: error: …`` and, when there is one, ``hint: …``).
It imports nothing at start: ``atoll version`` answers before the parser and
the error classes load, and every other command loads the parser
(:mod:`atoll.cli.parser`) and then only its own module.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from atoll.cli.common import Output

#: Command lines that only ask for the version, and whether they want JSON.
_VERSION_ONLY: dict[tuple[str, ...], bool] = {
    ("version",): False,
    ("--version",): False,
    ("version", "--json"): True,
    ("--json", "version"): True,
}


def _print_version(as_json: bool) -> int:
    from atoll import __version__

    if as_json:
        sys.stdout.write(f'{{\n  "version": "{__version__}"\n}}\n')
    else:
        sys.stdout.write(f"atoll {__version__}\n")
    sys.stdout.flush()
    return 0


def _open_supervisor_socket(args: Sequence[str]) -> None:
    """``atoll workload run``: lock the state directory and open the control socket
    before the parser and the supervisor load, so that the socket answers a ping
    within a fraction of a second of the start (see
    :mod:`atoll.workloads.supervise.controlserver`).  Only for a command line
    whose state directory is plain to see: ``--state-dir DIR``, ``--state-dir=DIR``
    or none (``$ATOLL_WORKLOAD_STATE_DIR``, else the default); anything the
    parser might read otherwise (an abbreviation, ``--help``) is left to it."""
    import os

    state_dir: str | None = None
    for i, arg in enumerate(args):
        option = arg.split("=", 1)[0]
        if arg in ("-h", "--help") or (
            len(option) > 2 and option != "--state-dir" and "--state-dir".startswith(option)
        ):
            return
        if option == "--state-dir":
            if arg == option and i + 1 >= len(args):
                return
            state_dir = args[i + 1] if arg == option else arg.split("=", 1)[1]
    from atoll.workloads.supervise.controlserver import open_early

    open_early(state_dir or os.environ.get("ATOLL_WORKLOAD_STATE_DIR") or "/run/atoll/workloads")


def _start_up_without_collections() -> None:
    """Start-up (the parser, and the modules of the command) makes some ten thousand
    objects that live as long as the process.  The cyclic garbage collector would
    look at them again and again as they come (every 700 allocations) and once
    more at exit, for nothing: 5-10 ms, a tenth of an image copy that only mounts
    blobs.  It pauses while they are made, and :func:`_keep_start_up` moves them
    out of its sight; what the command makes afterwards is collected as usual."""
    import gc

    gc.disable()


def _keep_start_up() -> None:
    import gc

    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command *argv* (``sys.argv[1:]`` when None: the command is the whole
    process, as from the ``atoll`` script or ``python -m atoll``, which then ends
    here: :func:`_end_process`)."""
    code = _run(argv)
    if argv is None:
        _end_process(code)
    return code


def _end_process(code: int) -> None:
    """End the process with *code* without the interpreter's teardown, which
    frees every object of every module one by one: about 6 ms of CPU, most of
    what is left between an image copy that only mounts blobs and skopeo's.
    What the teardown does that matters is done first, in its order: threads
    that are not daemons are waited for (or, while one runs, the interpreter
    is left to wait for it as usual), the exit handlers run (``atexit``:
    logging's flush, finalizers of temporary directories), stdout and stderr
    are flushed (a failure there is left to the interpreter to report).
    atoll's writes are closed where they are made (atomic writes), so no
    open file waits for the teardown to be flushed."""
    import atexit
    import os

    threading = sys.modules.get("threading")
    if threading is not None and any(
        thread.is_alive() and not thread.daemon and thread is not threading.main_thread()
        for thread in threading.enumerate()
    ):
        return
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _run(argv: Sequence[str] | None) -> int:
    whole_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _VERSION_ONLY.get(tuple(argv))
    if as_json is not None:
        try:
            return _print_version(as_json)
        except BrokenPipeError:
            return 0
    if argv[:2] == ["workload", "run"]:
        _open_supervisor_socket(argv[2:])
    if whole_process:
        _start_up_without_collections()
    try:
        from atoll.cli.common import Output
        from atoll.cli.parser import build_parser, hoist_options
        from atoll.errors import AtollError, InterruptedError_

        argv = hoist_options(argv)
        parser = build_parser(argv)
    finally:
        if whole_process:
            _keep_start_up()
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
    from atoll.errors import AtollError
    from atoll.logs import Logger

    # A bug: say so in one line, and show the traceback with --debug.
    Logger("atoll").debug("internal error", exc_info=True)
    out.error(
        AtollError(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="run with --debug for the traceback and report it",
        )
    )
    return AtollError.exit_code


if __name__ == "__main__":
    sys.exit(main())
