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

The runs: 2,000, 5,000 and 10,000 devices (the sizes up to ``--devices``),
each with one API process and then with up to ``--replicas``, ``--duration``
seconds each, on one database.  Then a rollout of one batch of ``--batch``
devices starts, and those devices poll at once: the time until all of them
hold the new spec is the batch's render time.

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

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        self.last_ms = max(time.time_ns() // 1_000_000, self.last_ms + 1)
        return wire.signed_headers(self.key, self.name, method, target, body, self.last_ms)


class Pool:
    """Keep-alive HTTP/1.1 connections to one server: just enough of a client
    for these requests, so the simulator costs the shared cores little."""

    def __init__(self, url: str, size: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.size = host, int(port), size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened = 0

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection, and whether it served a request before."""
        while self.idle.empty() and self.opened >= self.size:
            await asyncio.sleep(0.001)  # every connection is busy
        if not self.idle.empty():
            return (*self.idle.get_nowait(), True)
        self.opened += 1
        try:
            return (*await asyncio.open_connection(self.host, self.port), False)
        except OSError:
            self.opened -= 1
            raise

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
                    self.opened -= 1
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
                self.opened -= 1
                raise
            self.idle.put_nowait((reader, writer))
            return status, data

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


class Simulator:
    def __init__(self, urls: list[str], connections: int) -> None:
        self.pools = [Pool(u, connections) for u in urls]
        self.replicas = len(urls)
        self.reset()

    def reset(self) -> None:
        self.latency: dict[str, list[float]] = {"poll": [], "status": []}
        self.errors: dict[str, int] = {}

    def pool(self, device: Device) -> Pool:
        return self.pools[device.number % self.replicas]

    async def send(
        self, kind: str, device: Device, method: str, target: str, body: bytes = b""
    ) -> tuple[int, bytes] | None:
        headers = device.headers(method, target, body)
        if body:
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        try:
            answer = await asyncio.wait_for(
                self.pool(device).request(method, target, headers, body), 60
            )
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._error(f"{kind}: {type(exc).__name__}")
            return None
        self.latency[kind].append(time.perf_counter() - start)
        return answer

    async def poll(self, device: Device) -> bool:
        answer = await self.send(
            "poll", device, "GET", f"/api/v1/agent/spec?knownVersion={device.version}"
        )
        if answer is None:
            return False
        if answer[0] == 200:
            device.version = self._version(json.loads(answer[1]))
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
        for pool in self.pools:
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="the largest run's devices")
    parser.add_argument("--interval", type=float, default=60.0, help="poll and report period, s")
    parser.add_argument("--duration", type=float, default=30.0, help="each run's length, s")
    parser.add_argument("--replicas", type=int, default=2, help="API processes, at most")
    parser.add_argument("--batch", type=int, default=1000, help="devices in the rollout batch")
    parser.add_argument("--connections", type=int, default=16, help="connections per process")
    parser.add_argument("--api-enroll", type=int, default=50, help="devices enrolled by the API")
    args = parser.parse_args()
    # Stopped from outside: still stop the servers and PostgreSQL (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("runuser") is None or not Path("/usr/lib/postgresql/15/bin").exists():
        print("skipped: PostgreSQL 15 is not installed (apt-get install postgresql)")
        return 0
    postgres = start_postgres(fsync=True)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        db = postgres.create_database()
        upgrade_database(db)
        token = create_token(db, "bench", Role.ADMIN)
        urls = []
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        for _ in range(args.replicas):
            port = free_port()
            servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "atoll",
                        "fleet",
                        "serve",
                        "--db",
                        db,
                        "--listen",
                        f"127.0.0.1:{port}",
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            for _ in range(600):
                try:
                    httpx.get(f"{url}/readyz").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
        return asyncio.run(run(args, urls, token, servers, db))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
        postgres.ctl("stop")
        shutil.rmtree(postgres.directory, ignore_errors=True)


async def run(
    args: argparse.Namespace,
    urls: list[str],
    token: str,
    servers: list[subprocess.Popen[bytes]],
    db: str,
) -> int:
    admin = httpx.Client(
        base_url=f"{urls[0]}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=600
    )
    admin.put(
        "fleets/bench",
        json={"selector": "site=bench", "template": {"os": {"image": OLD}}, "autoApprove": True},
    ).raise_for_status()
    enrollment = admin.post("enrollmenttokens", json={"oneTime": False}).json()["token"]
    started = time.perf_counter()
    devices = [Device(i) for i in range(args.devices)]
    through_api = min(args.api_enroll, args.devices)
    sim = Simulator(urls, args.connections)
    await enroll_through_api(sim, devices[:through_api], enrollment)
    enroll_in_database(db, devices[through_api:])
    print(
        f"enrolled {args.devices} devices in {time.perf_counter() - started:.1f} s "
        f"({through_api} through the API)"
    )
    cores = os.cpu_count() or 1
    sizes = sorted({n for n in (2000, 5000) if n < args.devices} | {args.devices})
    print(
        f"interval {args.interval:.0f} s, {args.duration:.0f} s a run, "
        f"PostgreSQL 15 (fsync on), {cores} cores shared with the simulator"
    )
    print(
        f"{'devices':>7} {'API':>3} {'req/s':>6} {'poll p50/p99 ms':>16} "
        f"{'report p50/p99 ms':>18} {'errors':>6} {'CPU srv':>7} {'ms/req':>6} {'CPU sim':>7} "
        f"{'load':>5}"
    )
    failed = False
    for size in sizes:
        for replicas in range(1, args.replicas + 1):
            sim.replicas = replicas
            sim.reset()
            cpu_before = sum(cpu_seconds(s.pid) for s in servers)
            self_before = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.perf_counter()
            await steady(sim, devices[:size], args.interval, args.duration)
            wall = time.perf_counter() - wall
            self_after = resource.getrusage(resource.RUSAGE_SELF)
            server_cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
            sim_cpu = (self_after.ru_utime + self_after.ru_stime) - (
                self_before.ru_utime + self_before.ru_stime
            )
            requests = len(sim.latency["poll"]) + len(sim.latency["status"])
            cells = []
            for kind in ("poll", "status"):
                ms = [v * 1000 for v in sim.latency[kind]]
                cells.append(
                    f"{statistics.median(ms):.1f} / {percentile(ms, 0.99):.1f}" if ms else "-"
                )
            errors = sum(sim.errors.values())
            failed = failed or errors > 0
            print(
                f"{size:>7} {replicas:>3} {requests / wall:>6.1f} {cells[0]:>16} {cells[1]:>18} "
                f"{errors:>6} {server_cpu / wall / cores:>7.1%} "
                f"{server_cpu / max(requests, 1) * 1000:>6.2f} {sim_cpu / wall / cores:>7.1%} "
                f"{os.getloadavg()[0]:>5.1f}",
                flush=True,
            )
            if sim.errors:
                print(f"        errors: {sim.errors}")

    sim.replicas = args.replicas
    start = time.perf_counter()
    rollout = {"fleet": "bench", "os": {"image": NEW}, "batches": [{"count": args.batch}]}
    admin.put("rollouts/bench", json=rollout).raise_for_status()
    started_in = time.perf_counter() - start
    batch = devices[: args.batch]
    fetched = await asyncio.gather(*(sim.poll(d) for d in batch))
    rendered_in = time.perf_counter() - start
    await sim.close()
    import psycopg

    with psycopg.connect(db) as connection:
        size = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"database size {size[0] / 2**20 if size else 0:.1f} MiB")
    print(
        f"batch of {args.batch} ({args.replicas} API): rollout started in {started_in:.2f} s, "
        f"every device held the new spec {rendered_in:.2f} s after the start "
        f"({sum(fetched)} fetched; target < 5 s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
