"""Workloads for supervisor tests: tiny busybox images in the real registry, a podman
store of the test's own, and ``atoll workload run`` started as a user would.

An image holds Debian's busybox-static with an applet symlink per command the
tests use, ``/www/index.html``, and ``/usr/bin/serve``: busybox httpd on
``$PORT`` (default 8080) behind a shell that exits 0 on SIGTERM and with the
server's status when the server dies.  ``sdnotify`` (a static C program built
once with gcc into the test cache) sends its argument to ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atoll.errors import SupervisorNotRunningError
from atoll.podman import isolated_environment
from atoll.workloads.control import SupervisorClient, UnitStatus
from helpers.parts import missing, require_tool
from helpers.registry import RegistryView
from helpers.treeimage import Layer, Node, build_tree_image, symlink

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "httpd", "sleep", "touch", "rm", "test", "cat", "echo", "kill", "true", "wget")
SERVE = """#!/bin/sh
echo "serving /www on port ${PORT:-8080}"
httpd -f -p "${PORT:-8080}" -h /www &
pid=$!
trap 'kill $pid; wait $pid; exit 0' TERM INT
wait $pid
exit $?
"""
#: Commands of web images for update tests (with ``HealthCmd=test -e /tmp/ok``).
GOOD = ("sh", "-c", "touch /tmp/ok; exec /usr/bin/serve")
EXITS_AT_ONCE = ("sh", "-c", "echo broken >&2; exit 1")
UNHEALTHY_AFTER_5S = ("sh", "-c", "touch /tmp/ok; (sleep 5; rm /tmp/ok) & exec /usr/bin/serve")
SDNOTIFY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    const char *msg = argc > 1 ? argv[1] : "READY=1";
    struct sockaddr_un addr;
    int fd;
    if (path == NULL) { fputs("NOTIFY_SOCKET is not set\n", stderr); return 2; }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;
    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0 || sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("sdnotify");
        return 1;
    }
    return 0;
}
"""


def _cache() -> Path:
    return Path(os.environ.get("ATOLL_TEST_CACHE", "/var/cache/atoll-tests"))


def sdnotify_binary() -> Path:
    """A static sd_notify sender, compiled once and cached (skips without gcc/libc.a)."""
    digest = hashlib.sha256(SDNOTIFY_C.encode()).hexdigest()[:16]
    target = _cache() / f"sdnotify-{digest}" / "sdnotify"
    if target.exists():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is needed to build the sd_notify test program (apt-get install gcc)")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".build-") as tmp:
        source = Path(tmp) / "sdnotify.c"
        source.write_text(SDNOTIFY_C)
        out = Path(tmp) / "out"
        out.mkdir()
        proc = subprocess.run(
            [str(gcc), "-static", "-Os", "-s", "-o", str(out / "sdnotify"), str(source)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            missing(f"cannot build a static program: {proc.stderr.decode()[-300:]} (libc6-dev)")
        try:
            out.rename(target.parent)
        except OSError:
            if not target.exists():
                raise
    return target


def push_workload_image(
    registry: RegistryView,
    repo: str,
    tag: str = "v1",
    *,
    cmd: tuple[str, ...] = ("/usr/bin/serve",),
    page: str = "hello from v1\n",
    notify: bool = False,
) -> str:
    """Build the busybox image, push it to REPO:TAG; return the reference podman uses."""
    layout = registry.tmp_path / f"workload-{repo.replace('/', '-')}-{tag}"
    build_workload_image(layout, tag, cmd=cmd, page=page, notify=notify)
    registry.skopeo(
        "copy",
        "--quiet",
        *registry.skopeo_args("dest"),
        f"oci:{layout}:{tag}",
        f"docker://{registry.server.host}/{repo}:{tag}",
    )
    return f"{registry.server.host}/{repo}:{tag}"


def build_workload_image(
    layout: Path,
    tag: str,
    *,
    cmd: tuple[str, ...] = ("/usr/bin/serve",),
    page: str = "hello from v1\n",
    notify: bool = False,
) -> Path:
    """The busybox web image as an OCI layout at *layout* (podman runs ``oci:LAYOUT:TAG``)."""
    if not BUSYBOX.is_file():
        missing("needs /bin/busybox (apt-get install busybox-static)")
    files: Layer = {
        "usr/bin/busybox": Node(content=BUSYBOX.read_bytes(), mode=0o755),
        "usr/bin/serve": Node(content=SERVE.encode(), mode=0o755),
        "bin": symlink("usr/bin"),
        "www/index.html": page,
        "tmp/.keep": b"",
        "etc/passwd": "root:x:0:0:root:/:/bin/sh\n",
    }
    for applet in APPLETS:
        files[f"usr/bin/{applet}"] = symlink("busybox")
    if notify:
        files["usr/bin/sdnotify"] = Node(content=sdnotify_binary().read_bytes(), mode=0o755)
    run = {"Cmd": list(cmd), "Env": ["PATH=/usr/bin:/bin"]}
    build_tree_image(layout, [files], ref=tag, run=run)
    return layout


def release_workload_image(
    registry: RegistryView, repo: str, version: str, tag: str, cmd: tuple[str, ...] = GOOD
) -> str:
    """Push VERSION (serving "hello from VERSION") and move TAG to it; return its digest."""
    push_workload_image(registry, repo, version, cmd=cmd, page=f"hello from {version}\n")
    host = registry.server.host
    registry.skopeo(
        "copy", "--quiet", *registry.skopeo_args("src"), *registry.skopeo_args("dest"),
        f"docker://{host}/{repo}:{version}", f"docker://{host}/{repo}:{tag}",
    )  # fmt: skip
    return registry.skopeo(
        "inspect", *registry.skopeo_args(), "--format", "{{.Digest}}",
        f"docker://{host}/{repo}:{version}",
    ).stdout.strip()  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as response:
        return str(response.read().decode())


def wait_for(
    predicate: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.2
) -> object:
    """Poll *predicate* until it is truthy; fail the test naming *what* at the deadline
    (the deadline guards against hangs: it is not what the test checks)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(interval)


@dataclass
class SupervisorProcess:
    """``python -m atoll workload run`` in the background, and a client for it."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    client: SupervisorClient

    def status(self, unit: str) -> UnitStatus:
        return self.client.status(unit)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class WorkloadEnv:
    """A podman store, a units directory and a state directory of the test's own."""

    root: Path
    units: Path
    podman_env: dict[str, str]
    registry: RegistryView
    supervisors: list[SupervisorProcess] = field(default_factory=list)
    _states: int = 0

    def unit(self, name: str, text: str) -> Path:
        path = self.units / name
        path.write_text(text)
        return path

    def web_unit(
        self, repo: str, service: str = "", *, page: str = "hello from v1\n"
    ) -> tuple[str, int]:
        """Push the busybox image to a new repository named after *repo* and write
        ``web.container`` publishing it on a free port of 127.0.0.1, with *service*
        as its ``[Service]`` section if given; return (image, port)."""
        image = push_workload_image(self.registry, self.registry.new_repo(repo), page=page)
        port = free_port()
        text = f"[Container]\nImage={image}\nPublishPort=127.0.0.1:{port}:8080\n"
        self.unit("web.container", text + (f"[Service]\n{service}" if service else ""))
        return image, port

    def podman(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["podman", *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.podman_env},
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed: {proc.stderr.decode()[-500:]}")
        return proc.stdout.decode()

    def start_supervisor(
        self, *units: str, state_dir: Path | None = None, verbose: bool = True
    ) -> SupervisorProcess:
        """*verbose*: with ``-v`` (without, the supervisor logs at its default level)."""
        if state_dir is None:
            self._states += 1
            state_dir = self.root / f"s{self._states}"
        log = self.root / f"supervisor-{len(self.supervisors)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "atoll", *(["-v"] if verbose else []), "workload", "run",
             "--root", str(self.units),
             "--state-dir", str(state_dir), *units],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        supervisor = SupervisorProcess(process, state_dir, log, SupervisorClient(state_dir))
        self.supervisors.append(supervisor)

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"atoll workload run exited: {supervisor.output()[-2000:]}")
            # A ping is answered before the units are read; a status once they are
            # and the socket units listen.
            try:
                supervisor.client.status_all()
            except SupervisorNotRunningError:
                return False
            return True

        wait_for(up, "the supervisor's control socket")
        return supervisor


def workload_environment(
    registry: RegistryView, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkloadEnv]:
    """For the ``workload_env`` fixture (tests/workloads/conftest.py): real
    podman with a store in a short directory of this test's (socket paths are
    limited to 107 bytes), pointed at the test's registries.conf.  The
    supervisors' logs are printed at the end (pytest shows them on failure)."""
    require_tool("podman")
    require_tool("skopeo")
    root = Path(tempfile.mkdtemp(prefix="atw-", dir="/tmp"))
    registries = Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    variables = isolated_environment(root / "podman", registries_conf=registries)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    units = root / "units"
    units.mkdir()
    env = WorkloadEnv(root, units, variables, registry)
    try:
        yield env
    finally:
        for supervisor in env.supervisors:
            supervisor.stop(signal.SIGKILL)
            print(f"--- {supervisor.log.name}\n{supervisor.output()[-4000:]}")
        env.podman("rm", "--all", "--force", "--time", "0", check=False)
        env.podman("pod", "rm", "--all", "--force", check=False)
        shutil.rmtree(root, ignore_errors=True)


# --- units of the newer Quadlet features, run by the supervisor and by systemd ---

#: Where the start-up and regular checks of STARTUP_UNIT write, one word a run.
HEALTH_LOG = "/tmp/h.log"
#: A start-up check that fails until /tmp/go exists (2 s after the start) and must
#: pass twice; the regular check only writes.
STARTUP_UNIT = f"""[Container]
Image={{image}}
Exec=sh -c "(sleep 2; touch /tmp/go) & exec /usr/bin/serve"
Notify=healthy
HealthCmd=echo regular >> {HEALTH_LOG}
HealthInterval=1s
HealthStartupCmd=if test -e /tmp/go; then echo start-pass >> {HEALTH_LOG}; \\
  else echo start-fail >> {HEALTH_LOG}; exit 1; fi
HealthStartupInterval=1s
HealthStartupSuccess=2
HealthLogDestination=/tmp
HealthMaxLogCount=5
{{extra}}"""
KUBE_YAML = """apiVersion: v1
kind: Pod
metadata:
  name: kapp
spec:{host_network}
  containers:
  - name: web
    image: {image}
    env:
    - name: PORT
      value: "{port}"
    - name: GREETING
      valueFrom:
        configMapKeyRef:
          name: kcm
          key: greeting
"""
CONFIG_MAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: kcm
data:
  greeting: from-the-configmap
"""
PAGE = "built by the .build unit\n"


def write_newer_units(directory: Path, image: str, *, host_network: bool = False) -> list[str]:
    """Write into *directory* a container with a start-up check (``starty``), a
    .kube playing a pod ``kapp`` whose container takes an environment variable
    from a ConfigMap= (``kapp``), and a .build (``img``, from scratch with
    busybox: no registry) whose image the container ``built`` runs; return the
    names of the units to start (``img.build`` is started as ``built``'s requirement).
    *host_network*: every one on the host's network, each serving on a free port."""
    if not BUSYBOX.is_file():
        missing("needs /bin/busybox (apt-get install busybox-static)")
    network = "Network=host\n" if host_network else ""
    ports = [free_port() for _ in range(3)] if host_network else [8080] * 3
    extra = f"{network}Environment=PORT={ports[0]}\n"
    (directory / "starty.container").write_text(STARTUP_UNIT.format(image=image, extra=extra))
    spec = "\n  hostNetwork: true" if host_network else ""
    yaml = KUBE_YAML.format(image=image, host_network=spec, port=ports[1])
    (directory / "app.yaml").write_text(yaml)
    (directory / "cm.yaml").write_text(CONFIG_MAP)
    kube = "[Kube]\nYaml=app.yaml\nConfigMap=cm.yaml\nExitCodePropagation=any\n"
    (directory / "kapp.kube").write_text(kube)
    shutil.copy(BUSYBOX, directory / "busybox")
    (directory / "page.html").write_text(PAGE)
    (directory / "Containerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY page.html /www/index.html\n"
        f'CMD ["/bin/busybox", "httpd", "-f", "-p", "{ports[2]}", "-h", "/www"]\n'
    )
    (directory / "img.build").write_text(
        "[Build]\nImageTag=localhost/built:1\nFile=Containerfile\nSetWorkingDirectory=unit\n"
        "Label=made=by-quadlet\n"
    )
    (directory / "built.container").write_text(f"[Container]\nImage=img.build\n{network}")
    return ["starty.container", "kapp.kube", "built.container"]


def newer_units_results(podman: Callable[..., str]) -> dict[str, object]:
    """What the units of :func:`write_newer_units` did, once ``starty``'s regular
    check has run twice; *podman* runs podman with its arguments, returns stdout."""

    def health_log() -> list[str]:
        return podman("exec", "systemd-starty", "cat", HEALTH_LOG).split()

    wait_for(lambda: health_log().count("regular") >= 2, "two regular checks")
    seen = health_log()
    first = seen.index("regular")
    (kube,) = json.loads(podman("inspect", "kapp-web"))
    (built,) = json.loads(podman("inspect", "systemd-built"))
    (image,) = json.loads(podman("image", "inspect", "localhost/built:1"))
    return {
        # Failures, then HealthStartupSuccess=2 passes, then only the regular check.
        "startup": (
            set(seen[: first - 2]) <= {"start-fail"},
            seen[first - 2 : first],
            set(seen[first:]),
        ),
        "greeting": "GREETING=from-the-configmap" in kube["Config"]["Env"],
        "kube running": kube["State"]["Running"],
        "built image": (built["ImageName"], image["Config"]["Labels"].get("made")),
        "page": podman("exec", "systemd-built", "/bin/busybox", "cat", "/www/index.html"),
    }


#: What :func:`newer_units_results` gives when every unit did its part.
NEWER_UNITS_RESULTS = {
    "startup": (True, ["start-pass", "start-pass"], {"regular"}),
    "greeting": True,
    "kube running": True,
    "built image": ("localhost/built:1", "by-quadlet"),
    "page": PAGE,
}
