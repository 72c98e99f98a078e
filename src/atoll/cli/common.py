"""What every command shares: global flags, output modes, registry options."""

from __future__ import annotations

import argparse
import sys

from atoll.errors import AtollError, UsageError

# Every command imports this module: what only some commands use is imported
# where it is used (tests/cli/test_imports.py holds the import sets).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from atoll.oci.context import SystemContext
    from atoll.progress import ProgressSink

#: bootc's transport names (atoll.oci.transports.ImageTransport), spelled out so
#: that registering ``--transport`` does not import the transports.
TRANSPORTS = ("registry", "oci", "oci-archive", "dir", "containers-storage")


def add_global_options(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """Flags accepted before or after the command name (*progress*: whether the
    command reports progress, so that ``--progress-fd`` means something)."""
    # SUPPRESS keeps a subcommand's unset flag from overwriting the global one.
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log what is being done",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log everything, including HTTP requests and commands run",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print nothing but errors and requested data",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print machine-readable JSON (stable; see docs/cli.md)",
    )
    if not progress:
        return
    group.add_argument(
        "--progress-fd",
        type=int,
        metavar="FD",
        default=argparse.SUPPRESS,
        help="write progress as JSON lines to file descriptor FD",
    )


def duration(text: str) -> float:
    """An option's duration, ``60``, ``8s``, ``500ms``, ``2m``, ``1h``, as seconds
    (one spelling for every ``--timeout``, ``--interval`` and ``--watch``)."""
    from atoll.timeutil import parse_timespan

    try:
        return parse_timespan(text, infinity=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 60s, 500ms or 2m"
        ) from None


def labels_of(words: list[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` options (repeated) as a mapping."""
    labels = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise UsageError(f"--label {word!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_registry_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Credentials and TLS flags; *prefix* is ``src-`` or ``dest-`` for copy."""
    dest = prefix.replace("-", "_")
    who = {"src-": "the source ", "dest-": "the destination "}.get(prefix, "")
    parser.add_argument(
        f"--{prefix}authfile",
        dest=f"{dest}authfile",
        metavar="FILE",
        help=f"auth.json with credentials for {who}registry",
    )
    parser.add_argument(
        f"--{prefix}creds",
        dest=f"{dest}creds",
        metavar="USER:PASSWORD",
        help=f"credentials for {who}registry",
    )
    parser.add_argument(
        f"--{prefix}tls-verify",
        dest=f"{dest}tls_verify",
        metavar="BOOL",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        help=f"require HTTPS and verify certificates of {who}registry "
        "(default: as registries.conf says)",
    )
    parser.add_argument(
        f"--{prefix}cert-dir",
        dest=f"{dest}cert_dir",
        metavar="DIR",
        help=f"directory with CA (*.crt) and client certificates for {who}registry",
    )


def add_platform_options(parser: argparse.ArgumentParser, *, transfers: bool = True) -> None:
    """Registry configuration and, for a command that moves images (*transfers*),
    the platform to pick, retries and the staging directory."""
    parser.add_argument(
        "--registries-conf", metavar="FILE", help="registries.conf to use instead of the system one"
    )
    if not transfers:
        # login, logout, delete and sign pick no platform and stage nothing.
        return
    parser.add_argument("--override-os", metavar="OS", help="use OS instead of the host's")
    parser.add_argument("--override-arch", metavar="ARCH", help="use ARCH instead of the host's")
    parser.add_argument(
        "--override-variant", metavar="VARIANT", help="use VARIANT instead of the host's"
    )
    parser.add_argument(
        "--retry-times",
        type=int,
        default=5,
        metavar="N",
        help="attempts for a request that fails with 429, 5xx or a broken connection (default 5)",
    )
    parser.add_argument("--tmpdir", metavar="DIR", help="where to stage temporary files")


def system_context(args: argparse.Namespace, prefix: str = "") -> SystemContext:
    from pathlib import Path

    from atoll.oci.context import SystemContext
    from atoll.oci.manifest import Platform

    dest = prefix.replace("-", "_")

    def opt(name: str) -> Any:
        specific = getattr(args, f"{dest}{name}", None)
        if specific is not None:
            return specific
        return getattr(args, name, None)

    platform = None
    override_os = getattr(args, "override_os", None)
    override_arch = getattr(args, "override_arch", None)
    override_variant = getattr(args, "override_variant", None)
    if override_os or override_arch or override_variant:
        host = Platform.host()
        arch = override_arch or host.architecture
        variant = override_variant or (host.variant if arch == host.architecture else None)
        platform = Platform(override_os or host.os, arch, variant)
    retry_times: int = getattr(args, "retry_times", 5)
    if retry_times < 1:
        raise UsageError("--retry-times must be at least 1")
    tmpdir = getattr(args, "tmpdir", None)
    authfile = opt("authfile")
    cert_dir = opt("cert_dir")
    return SystemContext(
        authfile=Path(authfile) if authfile else None,
        credentials=opt("creds"),
        tls_verify=opt("tls_verify"),
        cert_dir=Path(cert_dir) if cert_dir else None,
        registries_conf=Path(args.registries_conf) if args.registries_conf else None,
        platform=platform,
        retries=retry_times,
        tmpdir=Path(tmpdir) if tmpdir else None,
        parallel=getattr(args, "parallel", 6),
    )


class Output:
    """Where results, messages, progress and errors go for one invocation."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        quiet: bool = False,
        verbose: bool = False,
        debug: bool = False,
        progress_fd: int | None = None,
    ) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.debug = debug
        self.progress_fd = progress_fd
        self._progress_stream: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Output:
        fmt = getattr(args, "format", None)
        if getattr(args, "json", False) and fmt not in (None, "json"):
            # --json is --format json: asking for both one way and another is a mistake.
            raise UsageError(
                f"--json and --format {fmt} conflict", hint="give one of them (see docs/cli.md)"
            )
        return cls(
            json_mode=getattr(args, "json", False) or fmt == "json",
            quiet=getattr(args, "quiet", False),
            verbose=getattr(args, "verbose", False),
            debug=getattr(args, "debug", False),
            progress_fd=getattr(args, "progress_fd", None),
        )

    def setup_logging(self) -> None:
        """Log to stderr at the level the flags ask for.  At the default level (WARNING)
        :mod:`logging` is configured when it is first imported or written to, so that
        a command that logs nothing does not load it (see :mod:`atoll.logs`)."""
        from atoll import logs

        if self.debug or self.verbose:
            self._configure_logging()
        else:
            logs.configure(self._configure_logging)

    def _configure_logging(self) -> None:
        import logging

        level = logging.DEBUG if self.debug else logging.INFO if self.verbose else logging.WARNING
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
        if not self.debug:
            # httpx logs every request at INFO; that is debug detail for atoll users.
            logging.getLogger("httpx").setLevel(logging.WARNING)
            logging.getLogger("httpcore").setLevel(logging.WARNING)

    def progress(self) -> ProgressSink:
        import os

        from atoll.progress import FanOut, JsonLinesProgress, NullProgress

        sinks: list[ProgressSink] = []
        if self.progress_fd is not None:
            if self._progress_stream is None:
                try:
                    self._progress_stream = os.fdopen(self.progress_fd, "w", closefd=False)
                except OSError as exc:
                    raise UsageError(f"--progress-fd {self.progress_fd}: {exc.strerror}") from None
            sinks.append(JsonLinesProgress(self._progress_stream))
        if not self.quiet and not self.json and sys.stderr.isatty():
            try:
                from atoll.cli.progress_view import RichProgressView
            except ModuleNotFoundError as exc:
                # A device image need not carry python3-rich: no bar, the work goes on.
                if exc.name != "rich" and not (exc.name or "").startswith("rich."):
                    raise
            else:
                sinks.append(RichProgressView())
        if not sinks:
            return NullProgress()
        return sinks[0] if len(sinks) == 1 else FanOut(*sinks)

    def result(self, data: Any, human: str | None = None) -> None:
        """Print a command's result: JSON with --json, else the human text."""
        if self.json:
            import json

            sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        elif human is not None:
            sys.stdout.write(human if human.endswith("\n") or not human else human + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """A progress message for people; silent with --quiet or --json."""
        if not self.quiet and not self.json:
            sys.stderr.write(message + "\n")

    def error(self, exc: AtollError) -> None:
        sys.stderr.write(f"atoll: error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
