"""Start-up: what a command imports is what it pays for before it does anything.

Each command runs in a fresh interpreter and reports ``sys.modules``; the atoll
modules it may load are listed here, so that a new import on one of these
paths is a decision (add it to the list) rather than an accident.  The timings
these lists keep low are measured by bench/copy (``atoll version`` against
``python -c pass``, a mount-only copy against skopeo).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ForwardRef

from atoll.cli.common import TRANSPORTS
from atoll.cli.host import STRATEGIES
from atoll.cli.image import SUBCOMMANDS, ZSTD_CHUNKED
from atoll.cli.parser import build_parser
from atoll.oci.chunked import ZSTD_CHUNKED as CHUNKED_NAME
from atoll.oci.transports import ImageTransport
from atoll.sysroot.etcmerge import EtcMergeStrategy
from helpers.device import installed_device
from helpers.registry import RegistryView

_REPORT = (
    "import json, sys\n"
    "from atoll.cli.main import main\n"
    "code = main(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as fh:\n"
    "    json.dump({'code': code, 'modules': sorted(sys.modules)}, fh)\n"
)

#: Modules no command here may load: the httpx command-line client's
#: dependencies, and what only builds, conversions and the device's writers use.
NEVER = {"click", "rich", "pygments", "atoll.oci.chunked", "atoll.store", "yaml"}

VERSION = {"atoll", "atoll.cli", "atoll.cli.main"}

PARSER = {
    "atoll",
    "atoll.cli",
    "atoll.cli.common",
    "atoll.cli.main",
    "atoll.cli.parser",
    "atoll.errors",
    "atoll.logs",
}

STATUS = PARSER | {
    "atoll.cli.disk",
    "atoll.cli.host",
    "atoll.cli.hostdevice",
    "atoll.fsutil",
    "atoll.health",
    "atoll.closing",
    "atoll.configfile",
    "atoll.faults",
    "atoll.health.checks",
    "atoll.health.config",
    "atoll.health.execute",
    "atoll.health.records",
    "atoll.health.report",
    "atoll.health.runner",
    "atoll.health.watchdog",
    "atoll.lazy",
    "atoll.oci",
    "atoll.oci.context",
    "atoll.oci.digest",
    "atoll.oci.manifest",
    "atoll.oci.reference",
    "atoll.oci.transports",
    "atoll.oci.transports.base",
    "atoll.run",
    "atoll.strictjson",
    "atoll.sysroot",
    "atoll.sysroot.bootloader",
    "atoll.sysroot.bootloader.bls",
    "atoll.sysroot.bootloader.entries",
    "atoll.sysroot.dropped",
    "atoll.sysroot.layout",
    "atoll.sysroot.origin",
    "atoll.sysroot.rolledback",
    "atoll.sysroot.state",
    "atoll.sysroot.status",
    "atoll.timeutil",
}

IMAGE_COPY = PARSER | {
    "atoll.cli.image",
    "atoll.closing",
    "atoll.fsutil",
    "atoll.oci",
    "atoll.oci.api",
    "atoll.oci.auth",
    "atoll.oci.client",
    "atoll.oci.context",
    "atoll.oci.digest",
    "atoll.oci.httputil",
    "atoll.oci.imagecopy",
    "atoll.oci.manifest",
    "atoll.oci.plainhttp",
    "atoll.oci.pullsource",
    "atoll.oci.reference",
    "atoll.oci.registries_conf",
    "atoll.oci.registryauth",
    "atoll.oci.transports",
    "atoll.oci.transports.base",
    "atoll.oci.transports.docker",
    "atoll.oci.upload",
    "atoll.oci.wire",
    "atoll.progress",
    "atoll.strictjson",
    "atoll.stricttoml",
}


def imported(tmp_path: Path, *argv: str) -> set[str]:
    """The modules ``atoll ARGV`` has loaded when it exits (it must succeed)."""
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _REPORT, str(report), *argv],
        check=True,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
    )
    data = json.loads(report.read_text())
    assert data["code"] == 0, argv
    modules: set[str] = set(data["modules"])
    return modules


def _atoll(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "atoll" or m.startswith("atoll.")}


def _never(modules: set[str]) -> set[str]:
    return {
        m
        for m in modules
        if m.split(".")[0] in NEVER or m in NEVER or m.startswith(tuple(f"{n}." for n in NEVER))
    }


def test_version_loads_neither_the_parser_nor_the_errors(tmp_path: Path) -> None:
    for argv in (["version"], ["--version"], ["version", "--json"]):
        modules = imported(tmp_path, *argv)
        assert _atoll(modules) == VERSION, argv
        assert "argparse" not in modules


def test_version_fast_path_prints_what_the_parser_would(tmp_path: Path) -> None:
    def out(*argv: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "atoll", *argv], check=True, capture_output=True, text=True
        ).stdout

    assert out("version") == out("--version") == out("-v", "version")
    assert json.loads(out("version", "--json")) == json.loads(out("--debug", "version", "--json"))


def test_status_loads_no_staging_code(tmp_path: Path) -> None:
    _, sysroot = installed_device(tmp_path)
    modules = imported(tmp_path, "status", "--sysroot", str(sysroot))
    assert _atoll(modules) - STATUS == set()
    assert _never(modules) == set()
    assert "atoll.sysroot.lifecycle" not in modules
    assert "httpx" not in modules


def test_image_copy_between_registries_loads_only_the_copy(
    tmp_path: Path, registry: RegistryView
) -> None:
    repo = registry.new_repo()
    registry.push_test_image(repo, "1")
    modules = imported(
        tmp_path,
        "-q",
        "image",
        "copy",
        f"docker://{registry.host}/{repo}:1",
        f"docker://{registry.host}/{repo}-copy:1",
    )
    assert _atoll(modules) - IMAGE_COPY == set()
    assert _never(modules) == set()
    # Every blob was mounted: nothing was streamed, so httpx was never imported; the
    # requests went over atoll.oci.wire, without http.client and its email package;
    # the copy's records are NamedTuples and plain classes, not dataclasses (which
    # load inspect and ast, and cost several times as much to define).
    tops = {m.split(".")[0] for m in modules}
    assert tops & {"httpx", "httpcore", "h11", "anyio", "email", "http"} == set()
    assert {"dataclasses", "inspect", "ast"} & modules == set()
    # Nothing logged: no logging (nor concurrent.futures, which imports it); host
    # names go to the resolver as bytes (no idna codec); a blob neither read nor
    # paced loads neither the blob stream nor the rate limiter.
    assert {"logging", "concurrent.futures", "traceback", "encodings.idna"} & modules == set()


def test_spelled_out_choices_match_their_sources() -> None:
    assert tuple(s.value for s in EtcMergeStrategy) == STRATEGIES
    assert tuple(t.value for t in ImageTransport) == TRANSPORTS
    assert ZSTD_CHUNKED == CHUNKED_NAME


def test_image_copy_builds_no_other_image_subcommand() -> None:
    def image_subcommands(*argv: str) -> set[str]:
        parser: Any = build_parser(argv)
        image: Any = parser._subparsers._group_actions[0].choices["image"]
        return set(image._subparsers._group_actions[0].choices)

    assert image_subcommands("-q", "image", "copy", "a", "b") == {"copy"}
    assert image_subcommands("image", "sync", "--help") == {"sync"}
    # Anything else (help, a typo) gets every subcommand, for the list and the error.
    assert image_subcommands("image", "--help") == set(SUBCOMMANDS)
    assert image_subcommands("image", "cpy") == set(SUBCOMMANDS)


#: The command as the whole process (as the ``atoll`` script runs it), with an exit
#: handler that reports on the collector: main() ends the process itself.
_WHOLE_PROCESS = (
    "import atexit, gc, json, sys\n"
    "from atoll.cli.main import main\n"
    "report, sys.argv = sys.argv[1], ['atoll', *sys.argv[2:]]\n"
    "def save():\n"
    "    with open(report, 'w') as fh:\n"
    "        json.dump({'enabled': gc.isenabled(), 'frozen': gc.get_freeze_count()}, fh)\n"
    "atexit.register(save)\n"
    "main()\n"
    "print('not reached: main() ends the process')\n"
)


def test_start_up_is_kept_out_of_the_collector_which_goes_on(tmp_path: Path) -> None:
    report = tmp_path / "gc.json"
    ended = subprocess.run(
        [sys.executable, "-c", _WHOLE_PROCESS, str(report), "image", "copy", "oci:/nowhere"],
        check=False, capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    # A usage error (DST missing) comes after start-up: the collector runs again.
    assert (ended.returncode, ended.stdout) == (2, "")
    assert "required: DST" in ended.stderr  # flushed before the process ended
    data = json.loads(report.read_text())  # the exit handler ran
    assert data == {"enabled": True, "frozen": data["frozen"]}
    assert data["frozen"] > 5000


def test_the_process_waits_for_a_thread_that_is_not_a_daemon(tmp_path: Path) -> None:
    """A command that leaves a thread running ends as Python ends: after it."""
    done = tmp_path / "done"
    script = (
        "import sys, threading, time\n"
        "from atoll.cli.main import main\n"
        "def late():\n"
        "    time.sleep(0.5)\n"
        f"    open({str(done)!r}, 'w').close()\n"
        "threading.Thread(target=late).start()\n"
        "sys.argv = ['atoll', 'version']\n"
        "sys.exit(main())\n"
    )
    ended = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert ended.returncode == 0 and ended.stdout.startswith(b"atoll ")
    assert done.exists()


#: Modules of the copy path whose NamedTuples are typed by evaluated annotations
#: (a string annotation is compiled into a ForwardRef when the class is made).
EVALUATED = (
    "atoll.oci.api",
    "atoll.oci.context",
    "atoll.oci.imagecopy",
    "atoll.oci.manifest",
    "atoll.oci.registries_conf",
)


def test_records_of_the_copy_path_are_typed_without_compiling() -> None:
    for name in EVALUATED:
        module = importlib.import_module(name)
        records = [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, tuple) and value.__module__ == name
        ]
        assert records, name
        for record in records:
            compiled = [f for f, t in record.__annotations__.items() if isinstance(t, ForwardRef)]
            assert compiled == [], f"{name}.{record.__name__}"
