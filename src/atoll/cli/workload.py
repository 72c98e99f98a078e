"""``atoll workload …``: container workloads described by Quadlet units."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.cli.common import Output, add_global_options, duration

if TYPE_CHECKING:
    from atoll.workloads.control import SupervisorClient, UnitStatus
    from atoll.workloads.supervise.supervisor import Supervisor
    from atoll.workloads.systemd import SystemdManager

DEFAULT_STATE_DIR = "/run/atoll/workloads"
#: Sets the supervisor's state directory when --state-dir is not given.
STATE_DIR_ENV = "ATOLL_WORKLOAD_STATE_DIR"
#: Exists when systemd is the init system (sd_booted(3)).
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    workload = commands.add_parser("workload", help="container workloads (Quadlet units)")
    sub = workload.add_subparsers(dest="workload_command", metavar="COMMAND")
    sub.required = True
    from atoll.cli.workload_update import register as register_auto_update

    register_auto_update(sub)
    _register_generate(sub)
    _register_run(sub)
    _register_manage(sub)


def add_unit_source(parser: argparse.ArgumentParser) -> None:
    """--root and --user: where the Quadlet units are read from."""
    parser.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="read units from DIR instead of podman's directories (repeatable; first wins)",
    )
    parser.add_argument("--user", action="store_true", help="use the rootless unit directories")


def add_manager_options(parser: argparse.ArgumentParser) -> None:
    """The unit source, --state-dir and --manager: who runs the units (see manager_for)."""
    add_unit_source(parser)
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help=f"the supervisor's state directory "
        f"(default ${STATE_DIR_ENV}, else {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--manager",
        choices=("auto", "supervisor", "systemd"),
        default="auto",
        help="who runs the units: the supervisor when its control socket exists (auto), "
        "or the one named",
    )


def _register_generate(sub: argparse._SubParsersAction[Any]) -> None:
    generate = sub.add_parser(
        "generate",
        help="write the systemd services for Quadlet units, as podman's quadlet does",
    )
    add_global_options(generate)
    generate.add_argument("outdir", metavar="OUTDIR", help="directory to write .service files to")
    generate.add_argument(
        "generator_dirs",
        nargs="*",
        metavar="DIR",
        help="the early and late directories systemd passes a generator (unused); "
        "given, refused units are skipped as with --keep-going",
    )
    generate.add_argument(
        "--keep-going",
        action="store_true",
        help="write every unit that converts, report each refused one, exit 50 or 51 at the end",
    )
    add_unit_source(generate)
    generate.set_defaults(func=_generate)


def _register_run(sub: argparse._SubParsersAction[Any]) -> None:
    run = sub.add_parser(
        "run",
        help="run the units through podman without systemd (in the foreground)",
    )
    add_global_options(run)
    add_unit_source(run)
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help=f"state directory and control socket "
        f"(default ${STATE_DIR_ENV}, else {DEFAULT_STATE_DIR})",
    )
    run.add_argument(
        "units", nargs="*", metavar="UNIT", help="units to start (default: every container and pod)"
    )
    run.set_defaults(func=_run)


def _register_manage(sub: argparse._SubParsersAction[Any]) -> None:
    listing = sub.add_parser("list", help="list the units and their states")
    add_global_options(listing)
    add_manager_options(listing)
    listing.set_defaults(func=_list)

    status = sub.add_parser("status", help="show the state of units")
    add_global_options(status)
    add_manager_options(status)
    status.add_argument("names", nargs="*", metavar="NAME", help="units (default: all)")
    status.set_defaults(func=_status)

    for verb, text in (
        ("start", "start a unit and wait until it is active"),
        ("stop", "stop a unit (and the units that require it)"),
        ("restart", "stop a unit, start it again and wait until it is active"),
    ):
        parser = sub.add_parser(verb, help=text)
        add_global_options(parser)
        add_manager_options(parser)
        parser.add_argument(
            "name", metavar="NAME", help="the unit: web, web.container or web.service"
        )
        parser.add_argument(
            "--timeout",
            type=duration,
            metavar="DURATION",
            help="give up waiting after this long (default: the unit's TimeoutStartSec)",
        )
        parser.set_defaults(func=_job, verb=verb)

    reload = sub.add_parser(
        "reload",
        help="read the unit files again: systemd's daemon-reload, or the supervisor's "
        "(it stops units that are gone or changed; restart starts them)",
    )
    add_global_options(reload)
    add_manager_options(reload)
    reload.set_defaults(func=_reload)

    logs = sub.add_parser("logs", help="show the output of a unit's container (podman logs)")
    add_global_options(logs)
    add_manager_options(logs)
    logs.add_argument("name", metavar="NAME", help="the unit")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N lines")
    logs.set_defaults(func=_logs)


def unit_roots(args: argparse.Namespace) -> list[Path] | None:
    return [Path(r) for r in args.root] if args.root else None


def _generate(args: argparse.Namespace, out: Output) -> int:
    from atoll.errors import AtollError
    from atoll.workloads import generate_services, load_units, write_services

    keep_going = args.keep_going or bool(args.generator_dirs)
    # A generator named *user* (user-generators/) reads the rootless directories, as podman's.
    user = args.user or "user" in Path(sys.argv[0]).name
    loaded = load_units(unit_roots(args), user=user, strict=not keep_going)
    errors: list[AtollError] = list(loaded.errors)
    services = generate_services(loaded, user=user, errors=errors if keep_going else None)
    written = write_services(services, Path(args.outdir))
    data = {
        "written": [str(p) for p in written],
        "warnings": [str(w) for w in loaded.warnings],
        "refused": [str(e) for e in errors],
    }
    out.result(data, "\n".join(f"wrote {p}" for p in written))
    for error in errors:
        out.error(error)
    return errors[0].exit_code if errors else 0


def _run(args: argparse.Namespace, out: Output) -> int:
    from atoll.workloads.control import control_socket
    from atoll.workloads.supervise.controlserver import ControlServer, lock_state_dir, take_early

    state_dir = supervisor_state_dir(args)
    # The lock and the control socket come first, before the supervisor's modules
    # and the unit files: the socket answers at once, and a request about the
    # units waits until they are read (see controlserver.py).  atoll.cli.main
    # opened them before the parser loaded, where the command line allowed.
    early = take_early(state_dir)
    if early is not None:
        server, lock_fd = early
    else:
        lock_fd = lock_state_dir(state_dir)
        server = ControlServer(control_socket(state_dir))
    try:
        if early is None:
            server.open()
        supervisor = _supervisor(args, out, state_dir)
    except BaseException:
        server.close()
        os.close(lock_fd)
        raise
    supervisor.take_over(server, lock_fd)
    supervisor.install_signal_handlers()
    out.info(f"supervising {len(supervisor.units)} units; control socket in {state_dir}")
    supervisor.run(args.units)
    return 0


def _supervisor(args: argparse.Namespace, out: Output, state_dir: Path) -> Supervisor:
    from atoll.podman import host_containers_conf
    from atoll.workloads.supervise.supervisor import Supervisor

    # Starts, exits, restarts and health changes are what a supervisor's log is for.
    supervisor_log = logging.getLogger("atoll.workloads")
    if not out.quiet and supervisor_log.getEffectiveLevel() > logging.INFO:
        supervisor_log.setLevel(logging.INFO)
    conf = host_containers_conf(state_dir / "containers.conf")
    if conf is not None:
        # podman reads only the file CONTAINERS_CONF names; every podman this
        # process starts (the supervisor's) is to read it, for as long as it runs.
        os.environ["CONTAINERS_CONF"] = str(conf)
        out.info(f"no systemd here: podman reads {conf} (the host's settings, cgroupfs, ulimits)")
    return Supervisor(unit_roots(args), user=args.user, state_dir=state_dir)


def supervisor_state_dir(args: argparse.Namespace) -> Path:
    """--state-dir, else $ATOLL_WORKLOAD_STATE_DIR, else /run/atoll/workloads."""
    return Path(args.state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def manager_for(args: argparse.Namespace) -> SupervisorClient | SystemdManager:
    """The supervisor when asked for, or when its control socket exists; else systemd
    when it runs.  With neither, the supervisor: asking it says none listens, and how
    to start one, rather than reporting the units systemd would run as inactive."""
    from atoll.workloads.control import SupervisorClient, control_socket
    from atoll.workloads.systemd import SystemdManager

    state_dir = supervisor_state_dir(args)
    choice = args.manager
    if choice == "auto":
        if control_socket(state_dir).exists() or not SYSTEMD_RUNTIME_DIR.is_dir():
            client = SupervisorClient(state_dir)
            # Fail now, with the hint, rather than in the middle of the command.
            client.request({"op": "ping"}, timeout=5.0)
            return client
        choice = "systemd"
    if choice == "supervisor":
        return SupervisorClient(state_dir)
    return SystemdManager(unit_roots(args), user=args.user)


def _line(status: UnitStatus) -> str:
    parts = [f"{status.unit:<24}", f"{status.state:<12}", f"{status.result:<16}"]
    if status.health != "none":
        parts.append(f"health={status.health}")
    parts.append(f"restarts={status.restarts}")
    if status.container_id:
        parts.append(f"container={status.container_id[:12]}")
    return " ".join(parts).rstrip()


def _detail(status: UnitStatus) -> str:
    rows = [
        ("unit", status.unit),
        ("service", status.service),
        ("state", f"{status.state} ({status.result}) since {status.since}"),
        ("health", str(status.health)),
        ("restarts", str(status.restarts)),
    ]
    if status.kind == "container":
        rows += [
            ("image", status.image),
            ("container", f"{status.container} {status.container_id or '-'}"),
            ("image id", status.image_id or "-"),
            ("main pid", str(status.main_pid or "-")),
        ]
    if status.exit_status is not None:
        rows.append(("exit status", str(status.exit_status)))
    return "\n".join(f"{key:>12}: {value}" for key, value in rows)


def _list(args: argparse.Namespace, out: Output) -> int:
    units = manager_for(args).status_all()
    data = {"units": [u.to_json() for u in units]}
    out.result(data, "\n".join(_line(u) for u in units) or "no units")
    return 0


def _status(args: argparse.Namespace, out: Output) -> int:
    manager = manager_for(args)
    if args.names:
        units = [u for name in args.names for u in manager.status_all(name)]
    else:
        units = manager.status_all()
    data = {"units": [u.to_json() for u in units]}
    out.result(data, "\n\n".join(_detail(u) for u in units) or "no units")
    return 0


def _job(args: argparse.Namespace, out: Output) -> int:
    manager = manager_for(args)
    verb = args.verb
    if verb == "start":
        status = manager.start(args.name, args.timeout)
    elif verb == "stop":
        status = manager.stop(args.name, args.timeout)
    else:
        status = manager.restart(args.name, args.timeout)
    out.result({"unit": status.to_json()}, _line(status))
    return 0


def _reload(args: argparse.Namespace, out: Output) -> int:
    manager = manager_for(args)
    changes = manager.reload()
    text = "; ".join(f"{key}: {', '.join(names)}" for key, names in changes.items() if names)
    out.result(changes, text or "unit files read again")
    return 0


def _logs(args: argparse.Namespace, out: Output) -> int:
    from atoll.errors import UnsupportedError
    from atoll.run import run
    from atoll.workloads.supervise.runtime import logs_argv, podman_env

    statuses = manager_for(args).status_all(args.name)
    status = statuses[0]
    if status.kind != "container":
        raise UnsupportedError(f"{status.unit} is a {status.kind}: only containers have logs")
    argv = logs_argv(status.container_id or status.container, follow=args.follow, lines=args.lines)
    try:
        return run(argv, env=podman_env(), check=False, capture=False).returncode
    except KeyboardInterrupt:
        return 0
