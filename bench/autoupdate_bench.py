"""Benchmark: workload auto-update, checks and updates, against a local registry.

1. Checking N = 1, 10, 30 workloads (every image up to date):
   * the registry checks alone, in process (``check_references``), and the
     requests they make (one HEAD per image, one ``/v2/`` ping per registry);
   * the same behind a loopback proxy that delays every request and answer
     (a round trip of RTT per request; connection set-up is not delayed);
   * the whole ``atoll workload auto-update --dry-run`` command, with a stand-in
     for the supervisor's control socket that answers status from memory.
3. 20 workloads on one tag (autoupdate_load.py): a good and a bad update at the
   default settings, adoption after SIGKILL, SIGTERM, the at-rest cost.
2. Applying an update to 10 workloads run by the real ``atoll workload run``
   and podman: every tag moves, then ``auto-update --watch 0`` (podman
   auto-update has no watch window) with 10, 4 and 1 restarts at a time.

podman auto-update's figures are printed beside atoll's: podman 5.4.2 under
systemd measured in this run, in a Debian trixie container (tests/helpers/podman5.py;
``--no-podman5`` skips it), and the issue's reference figures for the same
podman on this kind of machine.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The images are written with the tests' helpers (tests/helpers), as the tests write theirs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


import atoll
from atoll.demo.registry import LocalRegistry
from atoll.oci.context import SystemContext
from atoll.oci.manifest import ACCEPT_MANIFEST
from atoll.oci.reference import ImageReference
from atoll.podman import isolated_environment
from atoll.workloads.autoupdate.checks import DEFAULT_CONCURRENCY, check_references
from atoll.workloads.autoupdate.units import workloads_from
from atoll.workloads.autoupdate.updater import AutoUpdateOptions, AutoUpdater
from atoll.workloads.control import Health, UnitState, UnitStatus
from atoll.workloads.unitfiles.quadlet import load_units
from helpers.podman5 import SystemdHost, ensure_tree, unavailable
from helpers.treeimage import Layer, Node, build_tree_image, symlink

POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}'
ATOLL = [sys.executable, "-m", "atoll"]
#: podman 5.4.2 auto-update under systemd, measured on this kind of machine.
REFERENCE_DRY_RUN = {1: 0.062, 10: 0.123, 30: 0.260}
REFERENCE_APPLY_10 = 14.0
#: podman 5's units: the host's network (the container cannot set the sysctls a
#: network of podman's own needs).
PODMAN5_UNIT = "[Container]\nImage={}\nAutoUpdate=registry\nNetwork=host\n"
BUSYBOX = Path("/bin/busybox")
SERVE = '#!/bin/sh\nhttpd -f -p "${PORT:-8080}" -h /www &\npid=$!\n' + (
    "trap 'kill $pid; wait $pid; exit 0' TERM INT\nwait $pid\n"
)


# --- images ---------------------------------------------------------------------------


def write_image(layout: Path, layers: list[Layer], cmd: list[str]) -> None:
    """An OCI image of *layers* at *layout* under the name ``latest``."""
    build_tree_image(layout, layers, run={"Cmd": cmd, "Env": ["PATH=/usr/bin:/bin"]})


def base_layer() -> Layer:
    """busybox, a web server script and a user: the layer every image here shares,
    as the images of one vendor share their base; an update changes the layer on top."""
    files: Layer = {
        "usr/bin/busybox": Node(content=BUSYBOX.read_bytes(), mode=0o755),
        "usr/bin/serve": Node(content=SERVE.encode(), mode=0o755),
        "bin": symlink("usr/bin"),
        "etc/passwd": "root:x:0:0:root:/:/bin/sh\n",
    }
    for applet in ("sh", "httpd", "kill", "sleep"):
        files[f"usr/bin/{applet}"] = symlink("busybox")
    return files


def web(page: str) -> tuple[list[Layer], list[str]]:
    """A web server (busybox httpd on $PORT) serving *page*, stopping on SIGTERM."""
    return [base_layer(), {"www/index.html": page}], ["/usr/bin/serve"]


def sleeper(name: str, version: int = 1) -> tuple[list[Layer], list[str]]:
    """A small image that runs until it is stopped (a shell that sleeps and exits on
    SIGTERM), with a file of its own on the shared base."""
    own: Layer = {f"data/{name}": f"{name} v{version}\n"}
    return [base_layer(), own], ["/usr/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]


class Bench:
    def __init__(self, work: Path, skopeo: str) -> None:
        self.work = work
        self.skopeo = skopeo
        self.policy = work / "policy.json"
        self.policy.write_text(POLICY)
        self.registries_conf = work / "registries.conf"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf)
        self._layouts = 0

    def trust(self, host: str) -> None:
        with self.registries_conf.open("a") as fh:
            fh.write(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')

    def push(self, layers: list[Layer], cmd: list[str], dest: str) -> str:
        self._layouts += 1
        layout = self.work / f"layout-{self._layouts}"
        write_image(layout, layers, cmd)
        subprocess.run(
            [self.skopeo, "--policy", str(self.policy), "copy", "--quiet",
             "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{dest}"],
            check=True, stdin=subprocess.DEVNULL, env=self.env,
        )  # fmt: skip
        shutil.rmtree(layout)
        return dest


# --- a network with a round-trip time -------------------------------------------------


class DelayProxy:
    """A TCP proxy on loopback that delays every chunk by half the round trip,
    each way, keeping the order of the bytes."""

    def __init__(self, upstream: str, rtt: float) -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.delay = rtt / 2
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(chunk)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        sender = self.loop.create_task(send())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((self.loop.time() + self.delay, chunk))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        await sender


# --- 1. checking ----------------------------------------------------------------------


class RequestCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.requests: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " -> " in message:
            self.requests.append(message.split(" -> ")[0])


@contextlib.contextmanager
def counting() -> Iterator[RequestCounter]:
    counter = RequestCounter()
    logger = logging.getLogger("atoll.oci.client")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old)


def time_checks(
    refs: list[ImageReference], ctx: SystemContext, runs: int, *, remembered: bool = True
) -> float:
    """Median seconds of a check; *remembered*: as auto-update's later runs do, with
    the registry's ``/v2/`` URL known from an earlier run (no ping)."""
    times = []
    for _ in range(runs):
        bases: dict[str, str] = {}
        if remembered:
            check_references(refs[:1], ctx, bases=bases)
        started = time.perf_counter()
        results = check_references(refs, ctx, bases=bases)
        times.append(time.perf_counter() - started)
        failed = [r for r in results.values() if r.error]
        if failed:
            raise SystemExit(f"check failed: {failed[0].error}")
    return statistics.median(times)


def time_plain_heads(refs: list[ImageReference], runs: int) -> float:
    """Median seconds of the same HEADs sent with nothing but ``http.client``, all
    at once, each on a connection of its own: the floor the registry, the loopback
    and (with a delay) the proxy set, without atoll's own work."""
    import http.client

    def head(ref: ImageReference) -> None:
        conn = http.client.HTTPConnection(ref.registry, timeout=30)
        try:
            path = f"/v2/{ref.repository}/manifests/{ref.tag}"
            conn.request("HEAD", path, headers={"Accept": ACCEPT_MANIFEST})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"plain HEAD {ref}: {response.status}")
        finally:
            conn.close()

    times = []
    for _ in range(runs):
        threads = [threading.Thread(target=head, args=(ref,)) for ref in refs]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class StatusServer:
    """Answers the control protocol's status requests from memory (a stand-in for
    ``atoll workload run``, so the dry run's cost is atoll's, not the containers')."""

    def __init__(self, path: Path, statuses: dict[str, UnitStatus]) -> None:
        self.path = path
        self.statuses = statuses
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    request = json.loads(line)
                    unit = str(request.get("unit", ""))
                    status = self.statuses.get(unit) or self.statuses.get(
                        unit.replace(".service", ".container")
                    )
                    answer: dict[str, Any] = {"ok": True}
                    if request.get("op") == "status" and status is not None:
                        answer["units"] = [status.to_json()]
                    stream.write(json.dumps(answer).encode() + b"\n")
                    stream.flush()

    def close(self) -> None:
        self.sock.close()


def status_of(unit: str, image: str, image_id: str) -> UnitStatus:
    name = unit.removesuffix(".container")
    return UnitStatus(
        unit=unit, name=name, service=f"{name}.service", state=UnitState.ACTIVE,
        result="success", container=f"systemd-{name}", container_id=f"c{image_id}",
        image=image, image_id=image_id, health=Health.NONE, restarts=0, since="", main_pid=1,
    )  # fmt: skip


def bench_checks(
    bench: Bench,
    registry: LocalRegistry,
    sizes: list[int],
    runs: int,
    podman5: SystemdHost | None,
) -> None:
    count = max(sizes)
    refs = []
    for i in range(count):
        dest = f"{registry.host}/bench/app{i}:stable"
        bench.push(*sleeper(f"app{i}"), dest)
        refs.append(ImageReference.parse(dest))
    ctx = SystemContext(registries_conf=bench.registries_conf, environ=bench.env)
    checks = check_references(refs, ctx)
    digests = {ref: checks[ref].digest for ref in refs}

    print(f"registry checks, in process, median of {runs} (concurrency {DEFAULT_CONCURRENCY});")
    print("first: no earlier run; later: the registry's /v2/ URL known from one (no ping);")
    print("plain: the same HEADs with only http.client, all at once (the floor):")
    print(
        f"{'N':>4} {'first s':>8} {'later s':>8} {'plain s':>8} {'later/plain':>12} "
        f"{'requests, first':>22} {'later':>12}"
    )
    for n in sizes:
        counts = []
        for bases in ({}, {registry.host: f"http://{registry.host}/v2/"}):
            with counting() as counter:
                check_references(refs[:n], ctx, bases=bases)
            heads = sum(r.startswith("HEAD") for r in counter.requests)
            pings = sum(r.endswith("/v2/") for r in counter.requests)
            counts.append(f"{heads} HEAD {pings} ping")
        first = time_checks(refs[:n], ctx, runs, remembered=False)
        later = time_checks(refs[:n], ctx, runs)
        plain = time_plain_heads(refs[:n], runs)
        print(
            f"{n:>4} {first:8.3f} {later:8.3f} {plain:8.3f} {later / plain:12.2f} "
            f"{counts[0]:>22} {counts[1]:>12}"
        )

    for rtt in (0.010, 0.025, 0.050):
        # In a process of its own: the proxy must not compete for this one's GIL.
        proxy = subprocess.Popen(
            [sys.executable, __file__, "--proxy", registry.host, str(rtt)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proxy.stdout is not None
        proxy_host = proxy.stdout.readline().strip()
        bench.trust(proxy_host)
        delayed = [ImageReference.parse(f"{proxy_host}/{r.repository}:stable") for r in refs]
        dctx = SystemContext(registries_conf=bench.registries_conf, environ=bench.env)
        print(f"\nwith a round trip of {rtt * 1000:.0f} ms added to every request:")
        print(
            f"{'N':>4} {'first s':>8} {'later s':>8} {'plain s':>8} {'later/plain':>12} "
            f"{'target s':>9} {'round trips':>12}"
        )
        for n in sizes:
            first = time_checks(delayed[:n], dctx, runs, remembered=False)
            later = time_checks(delayed[:n], dctx, runs)
            plain = time_plain_heads(delayed[:n], runs)
            target = rtt * math.ceil(n / DEFAULT_CONCURRENCY) + 0.050
            print(
                f"{n:>4} {first:8.3f} {later:8.3f} {plain:8.3f} {later / plain:12.2f} "
                f"{target:9.3f} {later / rtt:12.1f}"
            )
        proxy.terminate()
        proxy.wait()

    # The whole command, a dry run, as a user runs it: with atoll's modules compiled,
    # as an installed package has them (with PYTHONDONTWRITEBYTECODE set, every start
    # would otherwise compile them again).
    compileall.compile_dir(str(Path(atoll.__file__).parent), quiet=1)
    print("\nthe whole command: atoll workload auto-update --dry-run (process included),")
    print(f"median of {runs}; podman auto-update --dry-run beside it: podman 5.4.2 under")
    print("systemd in this run (see tests/helpers/podman5.py), and the reference figure:")
    print(f"{'N':>4} {'atoll s':>8} {'in-process s':>13} {'podman 5 s':>11} {'reference s':>12}")
    running = 0
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"dry{n}-", dir=bench.work))
        units, state_dir = work / "units", work / "state"
        units.mkdir()
        statuses: dict[str, UnitStatus] = {}
        state_units = {}
        for i, ref in enumerate(refs[:n]):
            unit = f"app{i}.container"
            (units / unit).write_text(f"[Container]\nImage={ref}\nAutoUpdate=registry\n")
            image_id = hashlib.sha256(str(ref).encode()).hexdigest()
            statuses[unit] = status_of(unit, str(ref), image_id)
            state_units[unit] = {
                "image": str(ref),
                "current": {"digest": digests[ref], "image_id": image_id, "since": ""},
            }
        state_dir.mkdir()
        state = {
            "version": 1,
            "units": state_units,
            "registries": {registry.host: f"http://{registry.host}/v2/"},
        }
        (state_dir / "autoupdate.json").write_text(json.dumps(state))
        server = StatusServer(work / "control.sock", statuses)
        argv = [*ATOLL, "workload", "auto-update", "--dry-run", "--root", str(units),
                "--state-dir", str(work), "--manager", "supervisor",
                "--update-state-dir", str(state_dir), "--format", "json"]  # fmt: skip
        whole = []
        for _ in range(runs):
            started = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, env=bench.env, check=False)
            whole.append(time.perf_counter() - started)
            doc = json.loads(proc.stdout)
            if proc.returncode != 0 or any(u["updated"] != "false" for u in doc["units"]):
                raise SystemExit(f"dry run failed: {proc.stderr.decode()[-500:]}")
        inproc = []
        from atoll.workloads.control import SupervisorClient

        for _ in range(runs):
            started = time.perf_counter()
            updater = AutoUpdater(
                SupervisorClient(work),
                ctx=SystemContext(registries_conf=bench.registries_conf, environ=bench.env),
                state_dir=state_dir,
                options=AutoUpdateOptions(dry_run=True),
            )
            updater.run(workloads_from(load_units([units])))
            inproc.append(time.perf_counter() - started)
        server.close()
        podman = f"{'-':>11}"
        if podman5 is not None:
            podman5.start_units(
                {
                    f"app{i}.container": PODMAN5_UNIT.format(ref)
                    for i, ref in enumerate(refs[running:n], start=running)
                }
            )
            running = n
            podman5.timed("podman", "auto-update", "--dry-run")  # warm, as atoll's are
            seconds = [podman5.timed("podman", "auto-update", "--dry-run") for _ in range(runs)]
            podman = f"{statistics.median(seconds):11.3f}"
        ref_s = REFERENCE_DRY_RUN.get(n)
        reference = f"{ref_s:12.3f}" if ref_s else f"{'-':>12}"
        print(
            f"{n:>4} {statistics.median(whole):8.3f} {statistics.median(inproc):13.3f} "
            f"{podman} {reference}"
        )
    if podman5 is not None and running:
        podman5.stop_units([f"app{i}.container" for i in range(running)])
    startup = statistics.median(_timed([*ATOLL, "version"], bench.env) for _ in range(runs))
    print(f"(atoll start-up alone, atoll version: {startup:.3f} s)")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, env=env, check=True)
    return time.perf_counter() - started


# --- 2. applying ----------------------------------------------------------------------


def bench_apply_podman5(
    bench: Bench, registry: LocalRegistry, count: int, podman5: SystemdHost
) -> None:
    """podman's own auto-update of *count* units under systemd, restarts one after
    another: the same web servers as atoll's, updated the same way."""
    names = [f"pod{i}" for i in range(count)]
    images = {name: f"{registry.host}/bench/{name}:stable" for name in names}
    for name, image in images.items():
        bench.push(*web(f"{name} v1\n"), image)
    podman5.start_units(
        {
            f"{name}.container": PODMAN5_UNIT.format(image) + f"Environment=PORT={_free_port()}\n"
            for name, image in images.items()
        }
    )
    for name, image in images.items():
        bench.push(*web(f"{name} v2\n"), image)
    started = time.perf_counter()
    proc = podman5.run("podman", "auto-update", check=False)
    seconds = time.perf_counter() - started
    updated = sum(line.split()[-1:] == ["true"] for line in proc.stdout.splitlines())
    if proc.returncode != 0 or updated != count:
        raise SystemExit(f"podman auto-update failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")
    print(f"{'podman 5.4.2':>16} {seconds:8.3f} {REFERENCE_APPLY_10 if count == 10 else '-':>12}")
    podman5.stop_units([f"{n}.container" for n in names])


def bench_apply(
    bench: Bench, registry: LocalRegistry, count: int, podman5: SystemdHost | None
) -> None:
    if not BUSYBOX.is_file() or shutil.which("podman") is None:
        print("\napplying updates: skipped (needs podman and /bin/busybox from busybox-static)")
        return
    root = Path(tempfile.mkdtemp(prefix="atb-", dir="/tmp"))  # short: socket paths
    env = dict(bench.env)
    env.update(isolated_environment(root / "podman", registries_conf=bench.registries_conf))
    units = root / "units"
    units.mkdir()
    images = []
    for i in range(count):
        image = f"{registry.host}/bench/web{i}:stable"
        bench.push(*web(f"web {i} v1\n"), image)
        images.append(image)
        port = _free_port()
        (units / f"web{i}.container").write_text(
            f"[Container]\nImage={image}\nAutoUpdate=registry\nNetwork=host\n"
            f"Environment=PORT={port}\n"
        )
    state = root / "sup"
    log = (root / "supervisor.log").open("ab")
    supervisor = subprocess.Popen(
        [*ATOLL, "workload", "run", "--root", str(units), "--state-dir", str(state)],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_active(state, count, env, supervisor)
        print(f"\napplying an update to {count} workloads (atoll workload run, podman 4.3):")
        print(f"{'restarts at once':>16} {'atoll s':>8} {'reference s':>12}")
        for version, parallel in ((2, count), (3, 4), (4, 1)):
            for i, image in enumerate(images):
                bench.push(*web(f"web {i} v{version}\n"), image)
            argv = [*ATOLL, "workload", "auto-update", "--root", str(units),
                    "--state-dir", str(state), "--update-state-dir", str(root / "updates"),
                    "--watch", "0", "--parallel", str(parallel), "--format", "json"]  # fmt: skip
            started = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, env=env, check=False)
            seconds = time.perf_counter() - started
            doc = json.loads(proc.stdout or "{}")
            updated = sum(u["updated"] == "true" for u in doc.get("units", []))
            if proc.returncode != 0 or updated != count:
                raise SystemExit(f"update failed: {proc.stdout[-800:]!r} {proc.stderr[-800:]!r}")
            reference = f"{REFERENCE_APPLY_10:12.1f}" if count == 10 else f"{'-':>12}"
            print(f"{parallel:>16} {seconds:8.3f} {reference}")
        if podman5 is not None:
            bench_apply_podman5(bench, registry, count, podman5)
    finally:
        supervisor.terminate()
        try:
            supervisor.wait(120)
        except subprocess.TimeoutExpired:
            supervisor.kill()
        subprocess.run(["podman", "rm", "--all", "--force", "--time", "0"], env=env,
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_active(
    state: Path, count: int, env: dict[str, str], proc: subprocess.Popen[bytes]
) -> None:
    from atoll.workloads.control import SupervisorClient

    deadline = time.monotonic() + 300
    client = SupervisorClient(state)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("atoll workload run exited")
        with contextlib.suppress(Exception):
            statuses = client.status()
            if len([s for s in statuses if s.state is UnitState.ACTIVE]) == count:
                return
        time.sleep(0.5)
    raise SystemExit("the workloads did not all start within 300 s")


def run_proxy(upstream: str, rtt: float) -> int:
    """The delaying proxy alone (the benchmark runs it in a child process)."""
    proxy = DelayProxy(upstream, rtt)
    proxy.start()
    print(proxy.host, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--proxy"]:
        return run_proxy(sys.argv[2], float(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--sizes", default="1,10,30", help="workloads to check (empty: skip)")
    parser.add_argument("--apply", type=int, default=10, help="workloads to update (0: skip)")
    parser.add_argument("--load", type=int, default=20, help="units on one tag (0: skip)")
    parser.add_argument(
        "--load-watch", type=float, default=60.0, help="watch window of that part (default 60)"
    )
    parser.add_argument(
        "--load-baseline",
        type=Path,
        metavar="SRC",
        help="run that part with the atoll of SRC (a src directory) too, as the baseline",
    )
    parser.add_argument(
        "--podman5",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure podman 5 beside atoll, in a Debian trixie container (default: yes)",
    )
    args = parser.parse_args()
    skopeo = shutil.which("skopeo")
    if skopeo is None or shutil.which("docker-registry") is None:
        print("needs skopeo and docker-registry (make deps)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp_text:
        tmp = Path(tmp_text)
        bench = Bench(tmp, skopeo)
        registry = LocalRegistry(tmp / "registry")
        registry.start()
        bench.trust(registry.host)
        podman5 = None
        why = unavailable() if args.podman5 else "--no-podman5"
        if why is None:
            podman5 = SystemdHost(ensure_tree(), tmp / "podman5", (registry.host,))
            podman5.start()
        else:
            print(f"(podman 5 not measured: {why})")
        try:
            if sizes:
                bench_checks(bench, registry, sizes, args.runs, podman5)
            if args.apply:
                bench_apply(bench, registry, args.apply, podman5)
            if args.load:
                from autoupdate_load import bench_load

                bench_load(bench, registry, args.load, args.load_watch, podman5, args.load_baseline)
        finally:
            if podman5 is not None:
                podman5.stop()
            registry.stop()
    print(
        "\nreference figures are podman 5.4.2 auto-update under systemd on this kind of "
        "machine (dry run: two full GETs per unit; applying: restarts one after another), "
        "not measured in this run; the podman 5 figures are"
        + (" from this run" if podman5 is not None else " not measured in this run")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
