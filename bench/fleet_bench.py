"""Benchmark: the fleet server under simulated agents, on PostgreSQL.

N simulated devices (asyncio on loopback, one small pool of keep-alive HTTP/1.1
connections per API process, so ephemeral ports are not used up) each poll
their rendered spec and report their status once per interval (flightctl's
defaults: 60 s and 60 s), at a random offset, every request signed as a real
agent signs it.  The first ``--api-enroll`` devices enroll through the API (an
auto-approving fleet); the rest are written straight into the devices table
with certificates from the server's CA and their first spec rendered, as if
they had enrolled and polled once, so that a 10,000-device run starts in
seconds.

The runs: 2,000, 5,000 and 10,000 devices (the sizes up to ``--devices``, or
``--sizes``), each with one API process and then with up to ``--replicas``,
``--duration`` seconds each, on one database.  Then a rollout of one batch of
``--batch`` devices starts, and those devices poll at once: the time until all
of them hold the new spec is the batch's render time.

``--long-poll SECONDS``: the devices do what ``atoll agent run`` does instead,
each on a connection of its own: a spec poll that waits up to SECONDS for a
change (``wait``), then a status report, then the next poll at once.  A poll's
latency is then how long past its wait it was answered; the batch's devices
are waiting in their long polls when the rollout starts, and its time is how
long until the server's answers to those polls brought all of them the new
spec.

``--baseline-src DIR``: every run is made twice in turn, with API processes
of the atoll in DIR (``/work/main/src``, say) and with this one's, on the same
database and simulated devices (the row's ``code`` column: ``base``, ``this``).

Printed, one row a run: requests/s, p50/p99 of polls and reports, errors, the
CPU share of the server processes (and their CPU time per request answered)
and of the simulator, the load average at the end of the run (other work on
the machine shows there); then the database's size and the batch.  The
reference is flightctl's (10,000 devices on one instance, about 333
requests/s); the issue's target is p99 under 100 ms, no errors, and a
1,000-device batch rendered in under 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx

from atoll.agent import wire
from atoll.fleet.models import Role
from atoll.fleet.serve import create_token, upgrade_database
from helpers.fleet import start_postgres
from helpers.workloads import free_port

OLD = "registry.example/os@sha256:" + "a" * 64
NEW = "registry.example/os@sha256:" + "b" * 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Device:
    def __init__(self, number: int) -> None:
        self.number = number
        self.name = f"d{number:05d}"
        self.key = wire.generate_key()
        self.version = 0
        self.last_ms = 0
        self.moved = asyncio.Event()

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        self.last_ms = max(time.time_ns() // 1_000_000, self.last_ms + 1)
        return wire.signed_headers(self.key, self.name, method, target, body, self.last_ms)


class Pool:
    """Keep-alive HTTP/1.1 connections to one server: just enough of a client
    for these requests, so the simulator costs the shared cores little."""

    def __init__(self, url: str, size: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.size = host, int(port), size
        #: Idle connections, and None for a connection closed (one may be opened).
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            asyncio.Queue()
        )
        self.opened = 0

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection, and whether it served a request before.  A request
        that finds every connection busy waits in the queue (not in a loop
        that looks again: under load that loop took the CPU the server needed)."""
        while True:
            if not self.idle.empty() or self.opened >= self.size:
                found = await self.idle.get()
                if found is None:
                    continue  # a connection was closed: open one if there is room
                return (*found, True)
            self.opened += 1
            try:
                return (*await asyncio.open_connection(self.host, self.port), False)
            except OSError:
                self._closed()
                raise

    def _closed(self) -> None:
        self.opened -= 1
        self.idle.put_nowait(None)

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        message = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        while True:
            reader, writer, reused = await self._take()
            try:
                writer.write(message)
                try:
                    first = await reader.readline()
                except ConnectionResetError:
                    first = b""
                if not first and reused:
                    # The server closed a connection idle too long: as any client, try anew.
                    writer.close()
                    self._closed()
                    continue
                status = int(first.split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                data = await reader.readexactly(length) if length else b""
            except BaseException:
                writer.close()
                self._closed()
                raise
            self.idle.put_nowait((reader, writer))
            return status, data

    async def close(self) -> None:
        while not self.idle.empty():
            found = self.idle.get_nowait()
            if found is not None:
                found[1].close()


class Simulator:
    def __init__(self, urls: list[str], connections: int, long_poll: float = 0.0) -> None:
        self.urls = urls
        self.pools = [Pool(u, connections) for u in urls]
        self.replicas = len(urls)
        #: Long polls: each device's own connection, to each server.
        self.long_poll = long_poll
        self.own: dict[tuple[int, int], Pool] = {}
        self.reset()

    def reset(self) -> None:
        self.latency: dict[str, list[float]] = {"poll": [], "status": []}
        self.errors: dict[str, int] = {}
        self.answered = 0

    def pool(self, device: Device) -> Pool:
        index = device.number % self.replicas
        if not self.long_poll:
            return self.pools[index]
        key = (device.number, index)
        if key not in self.own:
            self.own[key] = Pool(self.urls[index], 1)
        return self.own[key]

    async def send(
        self,
        kind: str,
        device: Device,
        method: str,
        target: str,
        body: bytes = b"",
        waits: float = 0.0,
    ) -> tuple[int, bytes] | None:
        headers = device.headers(method, target, body)
        if body:
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        try:
            answer = await asyncio.wait_for(
                self.pool(device).request(method, target, headers, body), 60 + waits
            )
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._error(f"{kind}: {type(exc).__name__}")
            return None
        took = time.perf_counter() - start
        # A long poll that ends unchanged: how long past its wait it was answered.
        self.latency[kind].append(max(0.0, took - waits) if answer[0] == 204 else took)
        self.answered += 1
        return answer

    async def poll(self, device: Device, wait: float = 0.0) -> bool:
        target = f"/api/v1/agent/spec?knownVersion={device.version}"
        if wait:
            target += f"&wait={wait:g}"
        answer = await self.send("poll", device, "GET", target, waits=wait)
        if answer is None:
            return False
        if answer[0] == 200:
            device.version = self._version(json.loads(answer[1]))
            device.moved.set()
            return True
        if answer[0] != 204:
            self._error(f"poll: HTTP {answer[0]}")
        return False

    @staticmethod
    def _version(envelope: dict[str, Any]) -> int:
        return int(json.loads(base64.b64decode(envelope["payload"]))["version"])

    async def report(self, device: Device) -> None:
        body = (
            b'{"bootedDigest": "' + OLD.rpartition("@")[2].encode() + b'", "health": "green",'
            b' "appliedVersion": ' + str(device.version).encode() + b"}"
        )
        answer = await self.send("status", device, "PUT", "/api/v1/agent/status", body)
        if answer is not None and answer[0] != 204:
            self._error(f"status: HTTP {answer[0]}")

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def close(self) -> None:
        for pool in [*self.pools, *self.own.values()]:
            await pool.close()


async def enroll_through_api(sim: Simulator, devices: list[Device], token: str) -> None:
    gate = asyncio.Semaphore(16)

    async def one(device: Device) -> None:
        body = json.dumps(
            {
                "name": device.name,
                "publicKey": wire.public_key_pem(device.key.public_key()),
                "labels": {"site": "bench"},
                "token": token,
            }
        ).encode()
        async with gate:
            status, answer = await sim.pool(device).request(
                "POST", "/api/v1/enrollmentrequests", {"Content-Type": "application/json"}, body
            )
        if status != 201 or json.loads(answer)["state"] != "approved":
            raise SystemExit(f"enrollment of {device.name} failed: {answer!r}")
        if not await sim.poll(device):
            raise SystemExit(f"the first poll of {device.name} failed")

    await asyncio.gather(*(one(d) for d in devices))


def enroll_in_database(db: str, devices: list[Device]) -> None:
    """Devices written straight into the database: certified by the server's
    CA, in the bench fleet, their first spec rendered (version 1)."""
    from sqlalchemy import insert, select

    from atoll.fleet import keys, render
    from atoll.fleet.db import Device as Row
    from atoll.fleet.db import Fleet, open_engine, session_factory, transaction, utcnow

    engine = open_engine(db)
    try:
        with transaction(session_factory(engine)) as session:
            found = keys.load_keys(session)
            assert found is not None
            fleet = session.scalars(select(Fleet).where(Fleet.name == "bench")).one()
            spec_hash = render.spec_hash(render.spec_of("bench", fleet.spec, OLD), found)
            rows = []
            for device in devices:
                certificate, not_after = keys.issue_certificate(
                    found, device.name, device.key.public_key()
                )
                rows.append(
                    {
                        "name": device.name,
                        "labels": {"site": "bench"},
                        "fleet": "bench",
                        "state": "enrolled",
                        "public_key": wire.public_key_pem(device.key.public_key()),
                        "certificate": certificate,
                        "cert_not_after": not_after,
                        "spec_version": 1,
                        "spec_hash": spec_hash,
                        "status": {},
                        "last_request_ms": 0,
                        "key_rotation": False,
                        "created_at": utcnow(),
                    }
                )
                device.version = 1
            session.execute(insert(Row), rows)
    finally:
        engine.dispose()


async def steady(sim: Simulator, devices: list[Device], interval: float, duration: float) -> None:
    end = time.monotonic() + duration

    async def life(device: Device) -> None:
        offset = random.uniform(0, interval)
        if offset >= duration:
            return  # its first poll would fall after the run
        await asyncio.sleep(offset)
        while time.monotonic() < end:
            started = time.monotonic()
            await sim.poll(device)
            await sim.report(device)
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(interval - (now - started), end - now)))

    await asyncio.gather(*(life(d) for d in devices))


async def agents(sim: Simulator, devices: list[Device], wait: float) -> None:
    """Each device as ``atoll agent run`` does it: a long poll, a report, again;
    the first polls spread over one wait.  Runs until cancelled."""

    async def life(device: Device) -> None:
        await asyncio.sleep(random.uniform(0, wait))
        while True:
            failed = sum(sim.errors.values())
            await sim.poll(device, wait)
            if sum(sim.errors.values()) > failed:
                await asyncio.sleep(1.0)  # as the agent backs off
            await sim.report(device)

    await asyncio.gather(*(life(d) for d in devices))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="the largest run's devices")
    parser.add_argument("--sizes", default="", help="the runs' devices (default 2000,5000,N)")
    parser.add_argument("--interval", type=float, default=60.0, help="poll and report period, s")
    parser.add_argument("--duration", type=float, default=30.0, help="each run's length, s")
    parser.add_argument("--replicas", type=int, default=2, help="API processes, at most")
    parser.add_argument("--batch", type=int, default=1000, help="devices in the rollout batch")
    parser.add_argument("--connections", type=int, default=16, help="connections per process")
    parser.add_argument("--api-enroll", type=int, default=50, help="devices enrolled by the API")
    parser.add_argument(
        "--long-poll", type=float, default=0.0, metavar="SECONDS", help="agents' long polls"
    )
    parser.add_argument(
        "--baseline-src", type=Path, help="also run API processes of the atoll in this src/"
    )
    args = parser.parse_args()
    # Stopped from outside: still stop the servers and PostgreSQL (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("runuser") is None or not Path("/usr/lib/postgresql/15/bin").exists():
        print("skipped: PostgreSQL 15 is not installed (apt-get install postgresql)")
        return 0
    # A long poll holds a connection per device, in the simulator and in a server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    postgres = start_postgres(fsync=True)
    servers: dict[str, list[subprocess.Popen[bytes]]] = {}
    try:
        db = postgres.create_database()
        upgrade_database(db)
        token = create_token(db, "bench", Role.ADMIN)
        sources = {"this": Path(__file__).resolve().parents[1] / "src"}
        if args.baseline_src is not None:
            sources = {"base": args.baseline_src.resolve(), **sources}
        urls: dict[str, list[str]] = {}
        for code, source in sources.items():
            servers[code], urls[code] = [], []
            for _ in range(args.replicas):
                port = free_port()
                servers[code].append(
                    subprocess.Popen(
                        [sys.executable, "-m", "atoll", "fleet", "serve", "--db", db,
                         "--listen", f"127.0.0.1:{port}"],
                        env={**os.environ, "PYTHONPATH": str(source)},
                        stdin=subprocess.DEVNULL,
                    )
                )  # fmt: skip
                urls[code].append(f"http://127.0.0.1:{port}")
        for url in [u for found in urls.values() for u in found]:
            for _ in range(600):
                try:
                    httpx.get(f"{url}/readyz").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
        return asyncio.run(run(args, urls, token, servers, db))
    finally:
        running = [s for found in servers.values() for s in found]
        for server in running:
            server.terminate()
        for server in running:
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()  # it did not stop: it must not outlive the bench
                server.wait()
        postgres.ctl("stop")
        shutil.rmtree(postgres.directory, ignore_errors=True)


async def run(
    args: argparse.Namespace,
    urls: dict[str, list[str]],
    token: str,
    servers: dict[str, list[subprocess.Popen[bytes]]],
    db: str,
) -> int:
    first = next(iter(urls.values()))[0]
    admin = httpx.Client(
        base_url=f"{first}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=600
    )
    admin.put(
        "fleets/bench",
        json={"selector": "site=bench", "template": {"os": {"image": OLD}}, "autoApprove": True},
    ).raise_for_status()
    enrollment = admin.post("enrollmenttokens", json={"oneTime": False}).json()["token"]
    started = time.perf_counter()
    devices = [Device(i) for i in range(args.devices)]
    through_api = min(args.api_enroll, args.devices)
    sims = {
        code: Simulator(found, args.connections, args.long_poll) for code, found in urls.items()
    }
    await enroll_through_api(sims["this"], devices[:through_api], enrollment)
    enroll_in_database(db, devices[through_api:])
    print(
        f"enrolled {args.devices} devices in {time.perf_counter() - started:.1f} s "
        f"({through_api} through the API)"
    )
    cores = os.cpu_count() or 1
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
    else:
        sizes = sorted({n for n in (2000, 5000) if n < args.devices} | {args.devices})
    mode = (
        f"long polls of {args.long_poll:g} s, each followed by a report"
        if args.long_poll
        else f"interval {args.interval:.0f} s"
    )
    print(
        f"{mode}, {args.duration:.0f} s a run, "
        f"PostgreSQL 15 (fsync on), {cores} cores shared with the simulator"
    )
    poll_title = "poll past wait ms" if args.long_poll else "poll p50/p99 ms"
    print(
        f"{'devices':>7} {'API':>3} {'code':>4} {'req/s':>6} {poll_title:>17} "
        f"{'report p50/p99 ms':>18} {'errors':>6} {'CPU srv':>7} {'ms/req':>6} {'CPU sim':>7} "
        f"{'load':>5}"
    )
    failed = False
    for size in sizes:
        for replicas in range(1, args.replicas + 1):
            for code, sim in sims.items():
                errors = await measure(
                    args, sim, devices[:size], servers[code], size, replicas, code
                )
                failed = failed or errors > 0

    code = "this"
    sim = sims[code]
    sim.replicas = args.replicas
    batch = devices[: args.batch]
    if args.long_poll:
        # Every device waits in its long poll when the rollout starts.
        life = asyncio.ensure_future(agents(sim, devices, args.long_poll))
        await asyncio.sleep(args.long_poll + 5)
    for device in batch:
        device.moved.clear()
    start = time.perf_counter()
    rollout = {"fleet": "bench", "os": {"image": NEW}, "batches": [{"count": args.batch}]}
    admin.put("rollouts/bench", json=rollout).raise_for_status()
    started_in = time.perf_counter() - start
    if args.long_poll:
        moved = [d.moved.wait() for d in batch]
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(m) for m in moved], timeout=args.long_poll + 60
        )
        fetched = len(done)
        rendered_in = time.perf_counter() - start
        life.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await life
    else:
        fetched = sum(await asyncio.gather(*(sim.poll(d) for d in batch)))
        rendered_in = time.perf_counter() - start
    for each in sims.values():
        await each.close()
    import psycopg

    with psycopg.connect(db) as connection:
        found = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"database size {found[0] / 2**20 if found else 0:.1f} MiB")
    how = "through their long polls" if args.long_poll else "polling at once"
    print(
        f"batch of {args.batch} ({args.replicas} API, {how}): rollout started in "
        f"{started_in:.2f} s, every device held the new spec {rendered_in:.2f} s after the start "
        f"({fetched} fetched; target < 5 s)"
    )
    return 1 if failed else 0


async def measure(
    args: argparse.Namespace,
    sim: Simulator,
    devices: list[Device],
    servers: list[subprocess.Popen[bytes]],
    size: int,
    replicas: int,
    code: str,
) -> int:
    """One row of the table: its errors."""
    cores = os.cpu_count() or 1
    sim.replicas = replicas
    sim.reset()
    if args.long_poll:
        # Each device's first long poll is not measured: they start spread over one wait.
        life = asyncio.ensure_future(agents(sim, devices, args.long_poll))
        await asyncio.sleep(args.long_poll)
        sim.reset()
    cpu_before = sum(cpu_seconds(s.pid) for s in servers)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    if args.long_poll:
        await asyncio.sleep(args.duration)
        answered = sim.answered
    else:
        await steady(sim, devices, args.interval, args.duration)
    wall = time.perf_counter() - wall
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
    sim_cpu = (self_after.ru_utime + self_after.ru_stime) - (
        self_before.ru_utime + self_before.ru_stime
    )
    latency = {kind: list(values) for kind, values in sim.latency.items()}
    errors = sum(sim.errors.values())
    described = dict(sim.errors)
    if args.long_poll:
        life.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await life
        for pool in sim.own.values():
            await pool.close()
        sim.own.clear()
    else:
        answered = sim.answered
    cells = []
    for kind in ("poll", "status"):
        ms = [v * 1000 for v in latency[kind]]
        cells.append(f"{statistics.median(ms):.1f} / {percentile(ms, 0.99):.1f}" if ms else "-")
    print(
        f"{size:>7} {replicas:>3} {code:>4} {answered / wall:>6.1f} {cells[0]:>17} "
        f"{cells[1]:>18} {errors:>6} {server_cpu / wall / cores:>7.1%} "
        f"{server_cpu / max(answered, 1) * 1000:>6.2f} {sim_cpu / wall / cores:>7.1%} "
        f"{os.getloadavg()[0]:>5.1f}",
        flush=True,
    )
    if described:
        print(f"        errors: {described}")
    return errors


if __name__ == "__main__":
    sys.exit(main())
