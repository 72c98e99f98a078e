"""``atoll login`` and ``atoll logout``: credentials in containers auth.json."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from atoll.cli.common import Output, add_global_options, add_platform_options, system_context
from atoll.errors import AuthenticationError, UsageError
from atoll.oci.auth import find_credentials, login_file, remove_login, write_login
from atoll.oci.reference import ImageReference


def register(commands: argparse._SubParsersAction[Any]) -> None:
    login = commands.add_parser(
        "login",
        help="check credentials for a registry and store them in auth.json",
        description="Store credentials for REGISTRY (HOST[:PORT], or HOST/NAMESPACE for "
        "credentials that apply to part of a registry) after checking them with the registry.",
    )
    add_global_options(login)
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username", help="user name (asked for when not given)")
    login.add_argument("-p", "--password", help="password (visible to other users: prefer stdin)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument(
        "--get-login",
        action="store_true",
        help="print the user name stored for REGISTRY and do nothing else",
    )
    _add_auth_options(login)
    login.set_defaults(func=_login)

    logout = commands.add_parser("logout", help="remove stored credentials for a registry")
    add_global_options(logout)
    logout.add_argument("registry", metavar="REGISTRY")
    _add_auth_options(logout)
    logout.set_defaults(func=_logout)


def _add_auth_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--authfile", metavar="FILE", help="auth.json to read and write")
    parser.add_argument(
        "--tls-verify",
        dest="tls_verify",
        metavar="BOOL",
        default=None,
        type=lambda t: t.lower() in ("1", "true", "yes", "on"),
        nargs="?",
        const=True,
        help="require HTTPS and verify certificates",
    )
    parser.add_argument("--cert-dir", metavar="DIR", help="CA and client certificates")
    add_platform_options(parser, transfers=False)


def _split(target: str) -> tuple[str, str | None]:
    text = target.removeprefix("docker://").removeprefix("https://").removeprefix("http://")
    host, _, rest = text.rstrip("/").partition("/")
    if not host:
        raise UsageError(f"no registry in {target!r}")
    if rest:
        # Validate the namespace the way a reference would be.
        ImageReference.parse(f"{host}/{rest}")
    return host, f"{host}/{rest}" if rest else None


def _login(args: argparse.Namespace, out: Output) -> int:
    host, key = _split(args.registry)
    ctx = system_context(args)
    if args.get_login:
        creds = find_credentials(host, key.split("/", 1)[1] if key else None, ctx)
        if creds is None:
            raise UsageError(f"not logged in to {args.registry}")
        out.result({"registry": args.registry, "username": creds.username}, creds.username)
        return 0
    if args.password is not None and args.password_stdin:
        raise UsageError("give --password or --password-stdin, not both")
    username = args.username
    if username is None:
        if not sys.stdin.isatty():
            raise UsageError("no user name: pass --username")
        username = input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password: pass --password-stdin and write it to stdin")
    from atoll.oci.client import RegistryClient

    check_ctx = ctx._replace(credentials=f"{username}:{password}")
    try:
        with RegistryClient(host, check_ctx) as client:
            client.check_login()
    except AuthenticationError as exc:
        # The check sends the password as --creds would; say what the user gave instead.
        raise AuthenticationError(
            f"{args.registry}: the registry refused user {username!r} with the password given",
            hint="check the user name (-u) and the password, then run atoll login again",
        ) from exc
    path = write_login(host, username, password, ctx, key=key)
    out.result(
        {"registry": args.registry, "username": username, "authfile": str(path)},
        f"Login succeeded: credentials for {args.registry} stored in {path}",
    )
    return 0


def _logout(args: argparse.Namespace, out: Output) -> int:
    host, key = _split(args.registry)
    ctx = system_context(args)
    removed = remove_login(host, ctx, key=key)
    path = login_file(ctx)
    if not removed:
        raise UsageError(f"not logged in to {args.registry} (no entry in {path})")
    out.result(
        {"registry": args.registry, "authfile": str(path)},
        f"Removed credentials for {args.registry} from {path}",
    )
    return 0
