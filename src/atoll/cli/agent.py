"""``atoll agent``: the fleet agent on a device (docs/fleet.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options, duration, labels_of


def register(commands: argparse._SubParsersAction[Any]) -> None:
    agent = commands.add_parser("agent", help="the fleet agent that runs on a device")
    sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND")
    sub.required = True

    enroll = sub.add_parser(
        "enroll",
        help="make this device's key and ask a fleet server to enroll it",
        description="The key (ECDSA P-256) is made on the device and never leaves it; the "
        "server's CA certifies it once an operator (or an auto-approving fleet) approves.",
    )
    add_global_options(enroll, progress=False)
    _state_option(enroll)
    enroll.add_argument("--server", required=True, metavar="URL", help="the fleet server")
    enroll.add_argument("--token", required=True, help="an enrollment token")
    enroll.add_argument("--name", required=True, help="this device's name")
    enroll.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeat)"
    )
    enroll.set_defaults(func=_enroll)

    run = sub.add_parser(
        "run",
        help="poll the fleet server, apply its signed spec, report status",
        description="Long-polls the device's rendered spec, checks its signature, version "
        "and expiry, writes its files, units and update policy under --root, stages its OS "
        "image with atoll switch on --sysroot, and reports what the device runs.",
    )
    add_global_options(run, progress=False)
    _state_option(run)
    run.add_argument("--root", default="/", metavar="DIR", help="where /etc is (default /)")
    run.add_argument(
        "--sysroot",
        default="/sysroot",
        metavar="DIR",
        help="the device's sysroot (default /sysroot; 'none': no OS updates)",
    )
    run.add_argument(
        "--wait",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="how long one poll waits for a change (default 30s)",
    )
    run.add_argument(
        "--workload-manager",
        choices=("auto", "supervisor", "systemd", "none"),
        default="auto",
        help="who reloads and restarts the Quadlet units the spec changes (as atoll "
        "workload --manager; default auto); none: only write them",
    )
    run.add_argument(
        "--workload-state-dir",
        metavar="DIR",
        help="the workload supervisor's state directory (as atoll workload --state-dir)",
    )
    run.add_argument(
        "--allow-no-kernel",
        action="store_true",
        help="stage OS images without a kernel (as atoll switch --allow-no-kernel; "
        "container-boot devices)",
    )
    run.add_argument("--once", action="store_true", help="one round, then exit")
    run.set_defaults(func=_run)


def _state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        default="/var/lib/atoll/agent",
        metavar="DIR",
        help="the agent's state directory (default /var/lib/atoll/agent)",
    )


def _enroll(args: argparse.Namespace, out: Output) -> int:
    from atoll.agent.run import enroll
    from atoll.agent.state import AgentState

    labels = labels_of(args.label)
    request = enroll(AgentState(Path(args.state)), args.server, args.token, args.name, labels)
    out.result(request, f"device {args.name}: enrollment {request['state']}")
    return 0


def _run(args: argparse.Namespace, out: Output) -> int:
    from atoll.agent.run import Agent, Round
    from atoll.agent.state import AgentState

    sysroot = None if args.sysroot == "none" else Path(args.sysroot)
    agent = Agent(
        AgentState(Path(args.state)),
        root=Path(args.root),
        sysroot=sysroot,
        workload_manager=args.workload_manager,
        workload_state_dir=Path(args.workload_state_dir) if args.workload_state_dir else None,
        allow_no_kernel=args.allow_no_kernel,
    )
    last: list[Round] = []

    def report(round_: Round) -> None:
        last[:] = [round_]
        text = f"spec {round_.spec_version}, applied {round_.applied_version}: {round_.update}"
        out.info(text + (f" ({round_.reason})" if round_.reason else ""))

    try:
        agent.run(
            wait=0.0 if args.once else args.wait, rounds=1 if args.once else None, on_round=report
        )
    finally:
        agent.close()
    if last:
        out.result(last[0].to_json(), None)
    return 0
