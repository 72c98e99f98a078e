"""``atoll fleet``: run the fleet server and drive it (docs/fleet.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options, duration, labels_of
from atoll.errors import FleetSpecError, UsageError

ENV_SERVER = "ATOLL_FLEET_SERVER"
ENV_TOKEN = "ATOLL_FLEET_TOKEN"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    fleet = commands.add_parser(
        "fleet",
        help="run the fleet server and manage fleets, devices and rollouts",
        description="The fleet server (atoll fleet serve) and its operator commands; "
        "see docs/fleet.md.",
    )
    verbs = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    verbs.required = True

    serve = verbs.add_parser("serve", help="run the fleet server's HTTP API")
    add_global_options(serve, progress=False)
    _db_option(serve)
    serve.add_argument(
        "--listen",
        default="127.0.0.1:8470",
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8470)",
    )
    serve.add_argument(
        "--spec-lifetime",
        type=duration,
        default=7 * 86400.0,
        metavar="DURATION",
        help="how long a signed spec stays valid (default 7d; a device keeps what it runs past it)",
    )
    serve.add_argument(
        "--log-json",
        action="store_true",
        help="log to stderr as JSON lines, one per request included",
    )
    _ca_key_option(serve)
    serve.set_defaults(func=_serve)

    database = verbs.add_parser("db", help="the server's database")
    db_verbs = database.add_subparsers(dest="db_command", metavar="COMMAND")
    db_verbs.required = True
    upgrade = db_verbs.add_parser(
        "upgrade", help="create or migrate the database to this atoll's schema, make its keys"
    )
    add_global_options(upgrade, progress=False)
    _db_option(upgrade)
    _ca_key_option(upgrade)
    upgrade.set_defaults(func=_db_upgrade)

    server_keys = verbs.add_parser("keys", help="the server's signing keys")
    keys_verbs = server_keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    keys_verbs.required = True
    rotate = keys_verbs.add_parser(
        "rotate",
        help="rotate the spec-signing key, one step per run",
        description="The first run makes the next key and announces it in every device's "
        "signed spec; the second, once devices have polled, makes it sign and retires the "
        "old one.",
    )
    add_global_options(rotate, progress=False)
    _db_option(rotate)
    rotate.set_defaults(func=_keys_rotate)

    token = verbs.add_parser("token", help="operator tokens")
    token_verbs = token.add_subparsers(dest="token_command", metavar="COMMAND")
    token_verbs.required = True
    create = token_verbs.add_parser(
        "create",
        help="make an operator token (with --db: straight in the database, for the first admin)",
    )
    add_global_options(create, progress=False)
    _server_options(create)
    create.add_argument("name", help="the token's name (who holds it)")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.add_argument("--db", metavar="URL", help="write to this database instead of the API")
    create.set_defaults(func=_token_create)

    listing = verbs.add_parser("list", help="list resources of a kind")
    add_global_options(listing, progress=False)
    _server_options(listing)
    listing.add_argument(
        "kind", help="fleets, channels, devices, rollouts, enrollmentrequests or events"
    )
    listing.add_argument("-l", "--selector", default="", help="devices only: a label selector")
    listing.set_defaults(func=_list)

    get = verbs.add_parser("get", help="show one resource")
    add_global_options(get, progress=False)
    _server_options(get)
    get.add_argument("kind", help="fleet, channel, device or rollout")
    get.add_argument("name")
    get.set_defaults(func=_get)

    apply = verbs.add_parser(
        "apply",
        help="create or update the resources of a YAML file",
        description="Each YAML document is {kind: Fleet|Channel|Device, name: NAME, spec: "
        "{...}} (a Device's spec is {labels: {...}}). The server checks every field.",
    )
    add_global_options(apply, progress=False)
    _server_options(apply)
    apply.add_argument("-f", "--filename", required=True, metavar="FILE", help="the YAML file")
    apply.set_defaults(func=_apply)

    delete = verbs.add_parser("delete", help="delete a fleet or channel, decommission a device")
    add_global_options(delete, progress=False)
    _server_options(delete)
    delete.add_argument("kind", help="fleet, channel or device")
    delete.add_argument("name")
    delete.set_defaults(func=_delete)

    _device_verb(verbs, "revoke", _revoke, "revoke a device: its requests are refused")
    _device_verb(
        verbs,
        "rotate-key",
        _rotate_key,
        "ask a device to replace its key (at its next status report)",
        "The device makes a new key, the server certifies it and from then on refuses the "
        "old one; keyRotation stays true until the device has done it.",
    )

    _register_enrollment(verbs)
    _register_rollout(verbs)


def _register_enrollment(verbs: argparse._SubParsersAction[Any]) -> None:
    enrollment = verbs.add_parser("enrollment", help="enrollment tokens and requests")
    sub = enrollment.add_subparsers(dest="enrollment_command", metavar="COMMAND")
    sub.required = True
    token = sub.add_parser("token", help="make an enrollment token for devices")
    add_global_options(token, progress=False)
    _server_options(token)
    token.add_argument(
        "--reusable", action="store_true", help="many devices may use it (default: one)"
    )
    token.add_argument(
        "--expires", type=duration, default=86400.0, metavar="DURATION", help="default 1d"
    )
    token.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="labels it gives"
    )
    token.set_defaults(func=_enrollment_token)
    for verb, text in (("approve", "approve a pending request"), ("deny", "deny one")):
        decide = sub.add_parser(verb, help=text)
        add_global_options(decide, progress=False)
        _server_options(decide)
        decide.add_argument("name", help="the device")
        decide.set_defaults(func=_enrollment_decide, decision=verb)


def _register_rollout(verbs: argparse._SubParsersAction[Any]) -> None:
    rollout = verbs.add_parser("rollout", help="staged rollouts of an OS image to a fleet")
    sub = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND")
    sub.required = True
    start = sub.add_parser("start", help="start rolling a fleet out to an image, in batches")
    add_global_options(start, progress=False)
    _server_options(start)
    start.add_argument("name", help="the rollout's name")
    start.add_argument("--fleet", required=True)
    target = start.add_mutually_exclusive_group(required=True)
    target.add_argument("--image", metavar="REPO@DIGEST", help="the pinned image")
    target.add_argument("--channel", help="a channel, resolved to its digest now")
    start.add_argument(
        "--batch",
        action="append",
        required=True,
        metavar="N|P%",
        help="a batch of N devices or P%% of the fleet (repeat; the rest forms a last batch)",
    )
    start.add_argument("--success-threshold", type=int, default=90, metavar="PERCENT")
    start.add_argument("--error-threshold", type=int, default=10, metavar="PERCENT")
    start.add_argument(
        "--device-timeout",
        type=duration,
        metavar="DURATION",
        help="a device not booted green on the target by then has failed",
    )
    start.add_argument(
        "--window", metavar="CRON", help="release batches after the first only in this window"
    )
    start.add_argument(
        "--timezone", default="UTC", metavar="ZONE", help="IANA time zone of --window"
    )
    start.add_argument(
        "--max-unavailable",
        type=int,
        metavar="N",
        help="at most N devices of each --group-by group updating at once",
    )
    start.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="LABEL",
        help="label key whose values form the --max-unavailable groups (repeat)",
    )
    start.add_argument(
        "--retries", type=int, metavar="N", help="retry a failed device up to N times"
    )
    start.add_argument(
        "--retry-backoff",
        type=duration,
        metavar="DURATION",
        help="wait before the first retry, doubled for each later one (default 60s)",
    )
    start.set_defaults(func=_rollout_start)
    for verb, text in (
        ("status", "show a rollout, its batches and why it paused"),
        ("pause", "hold the rollout: no new batch is released"),
        ("resume", "go on; the current batch's failures are accepted"),
        ("abort", "stop; the fleet's devices return to its template"),
    ):
        act = sub.add_parser(verb, help=text)
        add_global_options(act, progress=False)
        _server_options(act)
        act.add_argument("name")
        if verb in ("pause", "abort"):
            act.add_argument("--reason", default="", help="recorded with the rollout")
        act.set_defaults(func=_rollout_act, action=verb)


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER@HOST/NAME",
    )


def _device_verb(
    verbs: argparse._SubParsersAction[Any],
    name: str,
    func: Any,
    summary: str,
    description: str | None = None,
) -> None:
    """A command that acts on one device, named by its only argument."""
    parser = verbs.add_parser(name, help=summary, description=description)
    add_global_options(parser, progress=False)
    _server_options(parser)
    parser.add_argument("name", help="the device")
    parser.set_defaults(func=func)


def _ca_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-key",
        metavar="FILE",
        type=Path,
        help="keep the CA's private key in this file (mode 0600), not in the database; "
        "db upgrade writes or moves it there, serve reads it",
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        help=f"the fleet server (default ${ENV_SERVER}, else http://127.0.0.1:8470)",
    )
    parser.add_argument("--token", metavar="TOKEN", help=f"operator token (default ${ENV_TOKEN})")


def _client(args: argparse.Namespace) -> Any:
    from atoll.fleet.client import DEFAULT_SERVER, FleetClient

    server = args.server or os.environ.get(ENV_SERVER) or DEFAULT_SERVER
    return FleetClient(server, args.token or os.environ.get(ENV_TOKEN))


def _serve(args: argparse.Namespace, out: Output) -> int:
    import datetime

    from atoll.fleet.serve import serve

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen {args.listen!r} is not HOST:PORT")
    if not args.log_json:
        out.info(f"fleet server on http://{host}:{port}")
    serve(
        args.db,
        host,
        int(port),
        spec_lifetime=datetime.timedelta(seconds=args.spec_lifetime),
        log_level="debug" if out.debug else "info" if out.verbose else "warning",
        json_logs=args.log_json,
        ca_key=args.ca_key,
    )
    return 0


def _db_upgrade(args: argparse.Namespace, out: Output) -> int:
    from atoll.fleet.serve import upgrade_database

    result = upgrade_database(args.db, args.ca_key)
    out.result(result, f"database at schema {result['to']} (was {result['from'] or 'empty'})")
    return 0


def _keys_rotate(args: argparse.Namespace, out: Output) -> int:
    from atoll.fleet.serve import rotate_keys

    done = rotate_keys(args.db)
    out.result({"rotation": done}, done)
    return 0


def _token_create(args: argparse.Namespace, out: Output) -> int:
    from atoll.fleet.models import Role

    if args.db:
        from atoll.fleet.serve import create_token

        secret = create_token(args.db, args.name, Role(args.role))
    else:
        with _client(args) as client:
            secret = client.call("POST", "tokens", body={"name": args.name, "role": args.role})[
                "token"
            ]
    out.result({"name": args.name, "role": args.role, "token": secret}, secret)
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _human_list(collection: str, items: list[dict[str, Any]]) -> str:
    if collection == "devices":
        return _table(
            [
                [
                    d["name"],
                    d["state"],
                    d["fleet"] or "-",
                    str(d["specVersion"]),
                    (d["status"].get("bootedDigest") or "-")[:19],
                    d["status"].get("health", "-"),
                    ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items())),
                ]
                for d in items
            ],
            ["NAME", "STATE", "FLEET", "SPEC", "BOOTED", "HEALTH", "LABELS"],
        )
    if collection == "fleets":
        return _table(
            [
                [f["name"], f["spec"]["selector"], str(f["devices"]), str(f["generation"])]
                for f in items
            ],
            ["NAME", "SELECTOR", "DEVICES", "GENERATION"],
        )
    if collection == "channels":
        return _table(
            [[c["name"], f"{c['image']}@{c['digest']}"] for c in items], ["NAME", "IMAGE"]
        )
    if collection == "rollouts":
        return _table(
            [
                [r["name"], r["spec"]["fleet"], r["state"], str(r["currentBatch"]), r["reason"]]
                for r in items
            ],
            ["NAME", "FLEET", "STATE", "BATCH", "REASON"],
        )
    if collection == "enrollmentrequests":
        return _table(
            [[r["name"], r["state"], r["createdAt"]] for r in items], ["NAME", "STATE", "CREATED"]
        )
    return _table(
        [[e["at"], e["actor"], e["action"], f"{e['kind']}/{e['name']}"] for e in items],
        ["AT", "ACTOR", "ACTION", "RESOURCE"],
    )


def _list(args: argparse.Namespace, out: Output) -> int:
    from atoll.fleet.client import kind_of

    with _client(args) as client:
        items = client.list(args.kind, args.selector)
    out.result(items, _human_list(kind_of(args.kind), items))
    return 0


def _get(args: argparse.Namespace, out: Output) -> int:
    import yaml

    with _client(args) as client:
        item = client.get(args.kind, args.name)
    out.result(item, yaml.safe_dump(item, sort_keys=False).rstrip())
    return 0


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The resources of a YAML file, each checked for kind, name and spec."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetSpecError(f"{path}: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise FleetSpecError(f"{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    if not documents:
        raise FleetSpecError(f"{path}: no resources in the file")
    for number, document in enumerate(documents, 1):
        where = f"{path}: document {number}"
        if not isinstance(document, dict) or set(document) != {"kind", "name", "spec"}:
            raise FleetSpecError(f"{where}: write exactly the keys kind, name and spec")
        if document["kind"] not in ("Fleet", "Channel", "Device"):
            raise FleetSpecError(
                f"{where}: kind {document['kind']!r} is not Fleet, Channel or Device"
            )
        if not isinstance(document["name"], str) or not isinstance(document["spec"], dict):
            raise FleetSpecError(f"{where}: name must be a string and spec a mapping")
    return documents


def _apply(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.filename)
    documents = load_documents(path)
    applied = []
    with _client(args) as client:
        for number, document in enumerate(documents, 1):
            try:
                client.put(document["kind"], document["name"], document["spec"])
            except FleetSpecError as exc:
                raise FleetSpecError(
                    f"{path}: document {number} ({document['kind']} {document['name']}): "
                    f"{exc.message.removeprefix('fleet server: ')}"
                ) from None
            applied.append({"kind": document["kind"], "name": document["name"]})
            out.info(f"{document['kind']} {document['name']} applied")
    out.result({"applied": applied}, None)
    return 0


def _delete(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        client.delete(args.kind, args.name)
    out.result(
        {"deleted": {"kind": args.kind, "name": args.name}}, f"{args.kind} {args.name} deleted"
    )
    return 0


def _rotate_key(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        device = client.call("POST", f"devices/{args.name}/rotatekey")
    out.result(device, f"device {args.name}: key rotation requested")
    return 0


def _revoke(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        device = client.call("POST", f"devices/{args.name}/revoke")
    out.result(device, f"device {args.name} revoked")
    return 0


def _enrollment_token(args: argparse.Namespace, out: Output) -> int:
    body = {
        "oneTime": not args.reusable,
        "expiresIn": int(args.expires),
        "labels": labels_of(args.label),
    }
    with _client(args) as client:
        token = client.call("POST", "enrollmenttokens", body=body)
    out.result(token, token["token"])
    return 0


def _enrollment_decide(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        request = client.call("POST", f"enrollmentrequests/{args.name}/{args.decision}")
    out.result(request, f"device {args.name}: {request['state']}")
    return 0


def _batch(word: str) -> dict[str, int]:
    number = word.removesuffix("%")
    if not number.isdigit():
        raise UsageError(f"--batch {word!r} is not a count (10) or a percentage (25%)")
    return {"percent": int(number)} if word.endswith("%") else {"count": int(number)}


def _human_rollout(rollout: dict[str, Any]) -> str:
    lines = [
        f"rollout {rollout['name']}: {rollout['state']}, fleet {rollout['spec']['fleet']}, "
        f"batch {rollout['currentBatch']} of {len(rollout['batches'])}",
        f"target: {rollout['target']}",
    ]
    if rollout["reason"]:
        lines.append(f"reason: {rollout['reason']}")
    for batch in rollout["batches"]:
        states = ", ".join(f"{d['name']} {d['state']}" for d in batch["devices"])
        lines.append(f"  batch {batch['index']}: {states or '(no devices)'}")
    return "\n".join(lines)


def _rollout_start(args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {
        "fleet": args.fleet,
        "os": {"image": args.image} if args.image else {"channel": args.channel},
        "batches": [_batch(b) for b in args.batch],
        "successThreshold": args.success_threshold,
        "errorThreshold": args.error_threshold,
    }
    if args.device_timeout is not None:
        body["deviceTimeout"] = int(args.device_timeout)
    if args.window:
        body["window"] = {"window": args.window, "timezone": args.timezone}
    if args.max_unavailable is not None:
        body["disruptionBudget"] = {
            "groupBy": args.group_by,
            "maxUnavailable": args.max_unavailable,
        }
    if args.retries is not None:
        body["retries"] = {"limit": args.retries}
        if args.retry_backoff is not None:
            body["retries"]["backoff"] = int(args.retry_backoff)
    with _client(args) as client:
        rollout = client.call("PUT", f"rollouts/{args.name}", body=body)
    out.result(rollout, _human_rollout(rollout))
    return 0


def _rollout_act(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        if args.action == "status":
            rollout = client.call("GET", f"rollouts/{args.name}")
        else:
            reason = getattr(args, "reason", "")
            rollout = client.call(
                "POST",
                f"rollouts/{args.name}/{args.action}",
                params={"reason": reason} if reason else None,
            )
    out.result(rollout, _human_rollout(rollout))
    return 0
