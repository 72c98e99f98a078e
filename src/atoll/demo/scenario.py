"""The demo: a real registry, a real image, every transport, on one machine.

Each step runs the ``atoll`` command a user would type (shown with ``$``), so
what the demo proves is the command line itself, not library shortcuts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from atoll.demo.registry import LocalRegistry
from atoll.errors import AtollError, CommandError
from atoll.podman import isolated_environment
from atoll.run import base_environment, find_tool, run

_CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
COPY app/ /usr/share/demo/
LABEL org.opencontainers.image.version="1.0" org.opencontainers.image.title="atoll demo"
CMD ["/bin/sh"]
"""


@dataclass
class Step:
    what: str
    name: str
    digest: str
    seconds: float
    note: str = ""


class Demo:
    def __init__(self, workdir: Path, console: Console) -> None:
        self.workdir = workdir
        self.console = console
        self.steps: list[Step] = []
        self.env = base_environment(
            {
                "CONTAINERS_CONF": str(workdir / "podman" / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(workdir / "podman" / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
                "REGISTRY_AUTH_FILE": str(workdir / "auth.json"),
            }
        )

    def section(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    def atoll(self, *args: str) -> str:
        argv = [sys.executable, "-m", "atoll", *args]
        self.console.print(f"[cyan]$ atoll {' '.join(args)}")
        proc = subprocess.run(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            check=False,
        )
        output = proc.stdout.decode()
        if proc.returncode != 0:
            raise CommandError(
                f"atoll {' '.join(args)} failed with exit code {proc.returncode}",
                argv=argv,
                returncode=proc.returncode,
            )
        return output

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        registries = self.workdir / "registries.conf"
        registries.write_text("")
        isolated_environment(self.workdir / "podman", registries_conf=registries)

    def build_image(self) -> str:
        """A small OS-like image with podman: busybox as /bin/sh, an os-release, an app."""
        podman = find_tool("podman")
        ctx = self.workdir / "build"
        rootfs = ctx / "root"
        for sub in ("bin", "etc", "usr/lib"):
            (rootfs / sub).mkdir(parents=True, exist_ok=True)
        busybox = shutil.which("busybox")
        if busybox:
            shutil.copy2(busybox, rootfs / "bin" / "busybox")
            (rootfs / "bin" / "sh").symlink_to("busybox")
        (rootfs / "usr/lib/os-release").write_text('NAME="atoll demo"\nVERSION_ID="1.0"\n')
        (rootfs / "etc/os-release").symlink_to("../usr/lib/os-release")
        run(["tar", "-C", rootfs, "-cf", ctx / "rootfs.tar", "."])
        app = ctx / "app"
        app.mkdir(exist_ok=True)
        (app / "index.html").write_text("<h1>hello from atoll</h1>\n")
        (app / "data.bin").write_bytes(os.urandom(4 << 20))
        (ctx / "Containerfile").write_text(_CONTAINERFILE)
        self.console.print("[cyan]$ podman build -t localhost/demo/app:1.0 .")
        run([podman, "build", "-q", "-t", "localhost/demo/app:1.0", ctx], env=self.env)
        return "containers-storage:localhost/demo/app:1.0"

    def copy(self, what: str, src: str, dst: str, *extra: str) -> str:
        start = time.monotonic()
        out = json.loads(self.atoll("image", "copy", "--json", *extra, src, dst))
        seconds = time.monotonic() - start
        note = f"{out['blobsCopied']} copied, {out['blobsSkipped']} present"
        if out["blobsMounted"]:
            note += f", {out['blobsMounted']} mounted"
        self.steps.append(Step(what, dst, out["digest"], seconds, note))
        self.console.print(f"  digest {out['digest']}  ({note}, {seconds:.2f} s)")
        return str(out["digest"])

    def summary(self) -> Table:
        table = Table(title="What happened")
        for column in ("step", "destination", "digest", "time", "blobs"):
            table.add_column(column)
        for s in self.steps:
            name = s.name.replace(str(self.workdir), "$DEMO")
            table.add_row(s.what, name, s.digest[:19] + "…", f"{s.seconds:.2f} s", s.note)
        return table


def run_demo(workdir: Path | None, keep: bool, console: Console | None = None) -> int:
    # Off a terminal (CI logs, pipes) use a wide page so commands stay on one line.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    own_dir = workdir is None
    base = workdir or Path(tempfile.mkdtemp(prefix="atoll-demo-"))
    demo = Demo(base, console)
    registry = LocalRegistry(base / "registry")
    try:
        demo.prepare()
        demo.section("1. A local registry (CNCF Distribution) on loopback")
        registry.start()
        (base / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        )
        console.print(f"  listening on http://{registry.host}, marked insecure in registries.conf")

        demo.section("2. An image built with podman, pushed by atoll")
        storage_ref = demo.build_image()
        reg = f"docker://{registry.host}/demo/app"
        pushed = demo.copy("containers-storage → registry", storage_ref, f"{reg}:1.0")

        demo.section("3. Through every transport, digests preserved")
        layout = base / "layout"
        archive = base / "app.tar"
        plain = base / "plain"
        digests = {
            "oci": demo.copy("registry → oci", f"{reg}:1.0", f"oci:{layout}:1.0"),
            "oci-archive": demo.copy(
                "oci → oci-archive", f"oci:{layout}:1.0", f"oci-archive:{archive}:1.0"
            ),
            "dir": demo.copy("oci-archive → dir", f"oci-archive:{archive}:1.0", f"dir:{plain}"),
            "registry": demo.copy("dir → registry", f"dir:{plain}", f"{reg}:1.0-roundtrip"),
            "mount": demo.copy(
                "registry → registry (other repo)",
                f"{reg}:1.0",
                f"docker://{registry.host}/prod/app:1.0",
            ),
        }
        same = all(d == pushed for d in digests.values())
        console.print(
            f"  every copy has digest {pushed[:19]}…: [bold]{'yes' if same else 'NO'}[/bold]"
        )
        if not same:
            raise AtollError("a copy changed the image digest")
        demo.copy(
            "registry → oci, zstd",
            f"{reg}:1.0",
            f"oci:{layout}:1.0-zstd",
            "--dest-compress-format",
            "zstd",
        )

        demo.section("4. Inspect and list")
        console.print(demo.atoll("image", "inspect", f"{reg}:1.0").rstrip())
        console.print(demo.atoll("image", "tags", reg).rstrip())

        demo.section("Summary")
        console.print(demo.summary())
        console.print(f"$DEMO is {base}" + ("" if keep else " (removed when the demo ends)"))
        if keep:
            console.print(
                f"\nThe registry keeps running at http://{registry.host} (pid file: none; "
                f"stop it with Ctrl-C). Files are in {base}.\nTry:\n"
                f"  CONTAINERS_REGISTRIES_CONF={base / 'registries.conf'} "
                f"atoll image inspect {reg}:1.0"
            )
            _wait_forever()
        return 0
    finally:
        registry.stop()
        if own_dir and not keep:
            _cleanup(base, demo.env)


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


def _cleanup(base: Path, env: dict[str, str]) -> None:
    podman = shutil.which("podman")
    if podman:
        # vfs layers may be owned by other uids; let podman remove its own store.
        subprocess.run(
            [podman, "system", "reset", "--force"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    shutil.rmtree(base, ignore_errors=True)
