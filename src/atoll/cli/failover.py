"""``atoll failover config|status|run``: active/standby devices for one service address.

``config`` writes keepalived.conf from atoll's failover settings and ``status``
reads keepalived's state (atoll.failover.keepalived); ``run`` and ``status
--status-file`` are atoll's own agent for devices that share one network
namespace (atoll.failover.agent; see docs/failover.md).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options, duration
from atoll.failover.keepalived import (
    DEFAULT_CONFIG,
    DEFAULT_JSON_FILE,
    DEFAULT_PID_FILE,
    DEFAULT_SETTINGS,
)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    failover = commands.add_parser(
        "failover", help="active/standby devices: one of them serves the service address"
    )
    sub = failover.add_subparsers(dest="failover_command", metavar="COMMAND")
    sub.required = True
    config = sub.add_parser(
        "config",
        help="write keepalived.conf from the failover settings",
        description="Read the [failover] table of the settings file, check every value and "
        "write keepalived's configuration: one VRRPv3 instance, nopreempt unless preempt = "
        "true, the workload check as its track_script.",
    )
    add_global_options(config)
    config.add_argument(
        "--settings",
        default=str(DEFAULT_SETTINGS),
        metavar="FILE",
        help=f"the failover settings (default {DEFAULT_SETTINGS})",
    )
    config.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=f"write the configuration here (e.g. {DEFAULT_CONFIG}); default: standard output",
    )
    config.add_argument(
        "--check", action="store_true", help="also have keepalived test it (keepalived -t)"
    )
    config.set_defaults(func=_config)
    run = sub.add_parser(
        "run",
        help="run this device's failover agent until stopped (SIGTERM or Ctrl-C)",
        description="Exchange adverts with the peers (VRRP's election over unicast UDP); "
        "while this agent is master it listens on --address and forwards connections to "
        "--backend. Options override the --config file.",
    )
    add_global_options(run)
    run.add_argument("--config", metavar="FILE", help="TOML file with a [failover] table")
    run.add_argument("--name", help="this agent's name, unique in the group")
    run.add_argument("--listen", metavar="HOST:PORT", help="where adverts arrive (UDP)")
    run.add_argument(
        "--peer",
        dest="peers",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another agent's listen address (repeat for more)",
    )
    run.add_argument("--priority", type=int, metavar="N", help="1-254 (default 100)")
    run.add_argument("--group", type=int, metavar="N", help="1-255 (default 1)")
    run.add_argument(
        "--interval", type=duration, metavar="DURATION", help="between adverts (default 1s)"
    )
    run.add_argument(
        "--preempt",
        action="store_true",
        default=None,
        help="take the address from a master of lower priority (default: never)",
    )
    run.add_argument("--address", metavar="HOST:PORT", help="the service address")
    run.add_argument("--backend", metavar="HOST:PORT", help="where the master forwards connections")
    run.add_argument("--status-file", metavar="FILE", help="default /run/atoll/failover/NAME.json")
    run.add_argument("--key-file", metavar="FILE", help="HMAC key that adverts must carry")
    run.add_argument(
        "--notify",
        metavar="COMMAND",
        help="run COMMAND ROLE (master, backup, stopped) at each change of role",
    )
    run.set_defaults(func=_run)

    status = sub.add_parser(
        "status",
        help="show this device's failover role: keepalived's, or an atoll agent's",
        description="Without options: ask the running keepalived for its state (its JSON "
        "dump). With --status-file or --name: read the status of an atoll failover run agent.",
    )
    add_global_options(status)
    which = status.add_mutually_exclusive_group()
    which.add_argument("--status-file", metavar="FILE", help="an atoll failover run agent's")
    which.add_argument("--name", help="read /run/atoll/failover/NAME.json")
    status.add_argument(
        "--pid-file",
        default=str(DEFAULT_PID_FILE),
        metavar="FILE",
        help=f"keepalived's (default {DEFAULT_PID_FILE})",
    )
    status.add_argument(
        "--json-file",
        default=str(DEFAULT_JSON_FILE),
        metavar="FILE",
        help=f"where keepalived writes its state (default {DEFAULT_JSON_FILE})",
    )
    status.set_defaults(func=_status)


def _run(args: argparse.Namespace, out: Output) -> int:
    import shlex

    from atoll.failover import FailoverAgent, load_config, master_down_interval

    config = load_config(
        Path(args.config) if args.config else None,
        {
            "name": args.name,
            "listen": args.listen,
            "peers": args.peers,
            "priority": args.priority,
            "group": args.group,
            "interval": args.interval,
            "preempt": args.preempt,
            "address": args.address,
            "backend": args.backend,
            "status_file": args.status_file,
            "key_file": args.key_file,
            "notify": shlex.split(args.notify) if args.notify else None,
        },
    )

    def changed(doc: dict[str, Any]) -> None:
        held = "serving" if doc["addressHeld"] else "not serving"
        out.info(f"{doc['name']}: {doc['role']}, {held} {doc['address']} ({doc['reason']})")

    agent = FailoverAgent(config, on_change=changed)
    out.info(
        f"{config.name}: adverts on {config.listen} to "
        f"{', '.join(str(p) for p in config.peers)}; priority {config.priority}, "
        f"master down after {master_down_interval(config.priority, config.interval):.3f} s; "
        f"status in {config.status_path}"
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.run()

    asyncio.run(main())
    out.result(agent.status(), None)
    return 0


def _config(args: argparse.Namespace, out: Output) -> int:
    from atoll.failover.keepalived import check_config, load_settings, render_config
    from atoll.fsutil import write_atomic

    settings_path = Path(args.settings)
    text = render_config(load_settings(settings_path), str(settings_path))
    if args.output:
        output = Path(args.output)
        write_atomic(output, text.encode())
        if args.check:
            check_config(output)
        out.info(f"wrote {output}")
        out.result({"output": str(output), "checked": args.check}, None)
        return 0
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            candidate = Path(tmp, "keepalived.conf")
            candidate.write_text(text)
            check_config(candidate)
    out.result({"config": text, "checked": args.check}, text.rstrip("\n"))
    return 0


def _keepalived_status(args: argparse.Namespace, out: Output) -> int:
    from atoll.failover.keepalived import read_state

    instances = read_state(Path(args.pid_file), Path(args.json_file))
    lines = []
    for i in instances:
        held = "holds" if i.holds_addresses else "does not hold"
        lines.append(
            f"{i.instance}: {i.state} since {i.since}; priority {i.priority} "
            f"(configured {i.base_priority}); {held} {', '.join(i.addresses) or '-'} "
            f"on {i.interface}\n"
            f"  router id {i.router_id}, advert interval {i.interval:g} s; adverts sent "
            f"{i.adverts_sent}, received {i.adverts_received}; became master "
            f"{i.became_master} times"
        )
    out.result({"instances": [i.to_json() for i in instances]}, "\n".join(lines))
    return 0


def _status(args: argparse.Namespace, out: Output) -> int:
    if not args.status_file and not args.name:
        return _keepalived_status(args, out)
    from atoll.failover import read_status
    from atoll.failover.config import DEFAULT_STATUS_DIR

    path = Path(args.status_file) if args.status_file else DEFAULT_STATUS_DIR / f"{args.name}.json"
    doc = read_status(path)
    state = doc["role"] if doc["running"] else f"not running (last: {doc['role']})"
    held = "serving" if doc.get("addressHeld") else "not serving"
    text = (
        f"{doc['name']}: {state}; {held} {doc['address']} -> {doc['backend']}\n"
        f"  reason: {doc['reason']} (since {doc['since']})\n"
        f"  master: {doc.get('master') or '-'}; priority {doc['priority']}, "
        f"interval {doc['interval']} s, master down after {doc['masterDownInterval']} s\n"
        f"  adverts sent {doc['counters']['advertsSent']}, "
        f"received {doc['counters']['advertsReceived']}, "
        f"dropped {doc['counters']['advertsDropped']}; "
        f"connections {doc['counters']['connections']}"
    )
    out.result(doc, text)
    return 0
