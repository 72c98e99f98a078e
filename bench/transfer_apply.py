"""bench/transfer's apply times: each update applied through a link of 1, 10 or 50 Mbit/s.

For each path a device holding A is copied afresh, then B is applied through
:class:`rateproxy.RateProxy` (both directions held to the rate) and checked out:

    partial, delta   a store holding A imports B from the registry through the proxy
                     (atoll.sysroot.fetch.import_remote, as `atoll upgrade` does), then
                     checks B out (Store.checkout, as a new deployment is written).
                     The split is the transfer report's seconds by phase (atoll.phases):
                     fetch, decompress (with delta patches), verify, checkout
    ostree objects,  a bare-user repo holding A runs `ostree pull` from the archive repo's
    ostree delta     HTTP server through the proxy, then `ostree checkout -U`; ostree
                     reports no phases, so the split is pull (fetch, decompress, verify
                     and write, at once) and checkout

A cell whose bytes alone would take longer than --max-seconds at its rate is
skipped and printed as such, with the time its bytes would take.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rateproxy import RateProxy

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.transports import ImageName
from atoll.phases import CHECKOUT, DECOMPRESS, FETCH, VERIFY
from atoll.store import Store
from atoll.sysroot.fetch import import_remote

PATHS = ("partial", "delta", "ostree", "ostree_delta")
LABELS = {
    "partial": "partial",
    "delta": "delta",
    "ostree": "ostree objects",
    "ostree_delta": "ostree delta",
}


@dataclass(frozen=True)
class Applied:
    """One update applied through the link: wall-clock seconds from the first
    request to the checked-out tree, its split, and the bytes the proxy carried."""

    seconds: float
    split: dict[str, float]
    down: int
    up: int
    #: The machine's 1-minute load average when the cell ended (other work slows it).
    load: float = field(default_factory=lambda: os.getloadavg()[0])


@dataclass
class ApplyTimes:
    rates: tuple[float, ...]
    #: (path, Mbit/s) -> the measurement, or why there is none.
    cells: dict[tuple[str, float], Applied | str] = field(default_factory=dict)


def skip_reason(moved: int | None, rate: float, max_seconds: float) -> str | None:
    """Why a cell is not measured: its bytes alone take longer than *max_seconds*."""
    if moved is None:
        return "not measured (its bytes were not measured)"
    need = moved * 8 / (rate * 1e6)
    if need > max_seconds:
        return f"skipped: its {moved / (1 << 20):.1f} MiB take {need:.0f} s at {rate:g} Mbit/s"
    return None


def _upstream(host: str) -> tuple[str, int]:
    addr, port = host.rsplit(":", 1)
    return addr, int(port)


def _fresh_copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def atoll_apply(
    times: ApplyTimes,
    registry_host: str,
    old: ImageName,
    new_repo_path: str,
    delta_from: Digest | None,
    ctx: SystemContext,
    work: Path,
    moved: dict[str, int | None],
    max_seconds: float,
) -> None:
    """Partial and delta pulls of B onto a copy of a store holding A, through the proxy."""
    base = work / "apply-store-a"
    import_remote(Store.create(base), old, ctx, partial=True)
    store_path, tree = work / "apply-store", work / "apply-tree"
    for rate in times.rates:
        for path, delta in (("partial", None), ("delta", delta_from)):
            reason = skip_reason(moved.get(path), rate, max_seconds)
            if reason is not None:
                times.cells[(path, rate)] = reason
                continue
            _fresh_copy(base, store_path)
            shutil.rmtree(tree, ignore_errors=True)
            store = Store.open(store_path)
            with RateProxy(_upstream(registry_host), rate * 1e6) as proxy:
                conf = work / "apply-registries.conf"
                conf.write_text(f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
                env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
                link = SystemContext(tmpdir=work, environ=env)
                name = ImageName.parse(f"docker://{proxy.host}/{new_repo_path}")
                started = time.monotonic()
                result, report = import_remote(store, name, link, partial=True, delta_from=delta)
                fetched = time.monotonic()
                store.checkout(result.commit_id, tree)
                done = time.monotonic()
                split = {k: report.seconds.get(k, 0.0) for k in (FETCH, DECOMPRESS, VERIFY)}
                split[CHECKOUT] = done - fetched
                times.cells[(path, rate)] = Applied(
                    done - started, split, proxy.bytes_down, proxy.bytes_up
                )
    shutil.rmtree(store_path, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)


def ostree_apply(
    times: ApplyTimes,
    server_url: str,
    base_client: Path,
    work: Path,
    moved: dict[str, int | None],
    max_seconds: float,
    ostree: Callable[..., str],
) -> None:
    """`ostree pull` of B (objects, then static delta) onto a copy of a repo holding A."""
    client, tree = work / "apply-ostree", work / "apply-ostree-tree"
    for rate in times.rates:
        for path, flag in (
            ("ostree", "--disable-static-deltas"),
            ("ostree_delta", "--require-static-deltas"),
        ):
            reason = skip_reason(moved.get(path), rate, max_seconds)
            if reason is not None:
                times.cells[(path, rate)] = reason
                continue
            _fresh_copy(base_client, client)
            shutil.rmtree(tree, ignore_errors=True)
            with RateProxy(_upstream(server_url.split("//")[1].rstrip("/")), rate * 1e6) as proxy:
                url = f"http://{proxy.host}/"
                ostree("remote", "add", f"--repo={client}", "--no-gpg-verify", "link", url)
                started = time.monotonic()
                ostree("pull", f"--repo={client}", flag, "link", "os")
                pulled = time.monotonic()
                ostree("checkout", f"--repo={client}", "-U", "link:os", str(tree))
                done = time.monotonic()
                times.cells[(path, rate)] = Applied(
                    done - started,
                    {"pull": pulled - started, CHECKOUT: done - pulled},
                    proxy.bytes_down,
                    proxy.bytes_up,
                )
    shutil.rmtree(client, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)


def _cell(value: Applied | str | None) -> str:
    if value is None:
        return "not measured (option)"
    if isinstance(value, str):
        return value
    split = ", ".join(f"{k} {v:.1f}" for k, v in value.split.items())
    down = value.down / (1 << 20)
    return f"{value.seconds:7.1f} s  ({split}; {down:.2f} MiB down; load {value.load:.1f})"


def best(times: ApplyTimes, paths: tuple[str, ...], rate: float) -> tuple[str, float] | None:
    found = [
        (path, cell.seconds)
        for path in paths
        if isinstance(cell := times.cells.get((path, rate)), Applied)
    ]
    return min(found, key=lambda x: x[1]) if found else None


def print_apply(name: str, times: ApplyTimes) -> None:
    print(f"\n{name}: apply time (first request to checked-out tree; split in seconds)")
    for rate in times.rates:
        print(f"  at {rate:g} Mbit/s")
        for path in PATHS:
            print(f"    {LABELS[path]:<15} {_cell(times.cells.get((path, rate)))}")
    ours = best(times, ("partial", "delta"), 10)
    theirs = best(times, ("ostree", "ostree_delta"), 10)
    if ours and theirs:
        print(
            f"  target: atoll best / ostree best at 10 Mbit/s = {ours[1] / theirs[1]:.2f} "
            f"(<= 1: {LABELS[ours[0]]} {ours[1]:.1f} s vs {LABELS[theirs[0]]} {theirs[1]:.1f} s)"
        )
    else:
        print("  target: atoll best / ostree best at 10 Mbit/s = n/a (10 Mbit/s not measured)")
