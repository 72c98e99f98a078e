"""atoll's generator against podman 5.4's own quadlet, service by service.

The real generator runs once per corpus (tests/workloads/corpus*), writing into
a directory as systemd runs it (services and [Install] links); atoll writes
the same corpus with :func:`write_services`. Every section but podman's X-*
copies of the unit is compared line by line, and each Exec line argument by
argument. podman walks a Go map for a few groups of flags (below), so their
order changes from run to run of the real generator: within each such run of
flags the pairs are compared sorted, everything else in order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.errors import AtollError
from atoll.workloads import generate_services, load_units, write_services
from atoll.workloads.unitfiles.keys import KEYS, QUADLET_KEYS, UnitKind
from atoll.workloads.unitfiles.quadlet import kind_of, read_quadlet_sections, split_words

pytest_plugins = ["helpers.quadlet"]

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REFUSED = HERE / "corpus-refused"
UNPARSABLE = HERE / "corpus-unparsable"
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStop", "ExecStopPost")

# podman's Go-map groups (pkg/systemd/quadlet/quadlet.go): flags taking a value, and booleans.
_VALUE_GROUPS = [
    "--tz --pids-limit --shm-size --entrypoint --workdir --ip --ip6 --hostname --stop-signal"
    " --stop-timeout --pull",
    "--network-alias --ulimit --dns --dns-option --dns-search --group-add --add-host --tmpfs",
    "--driver --ipam-driver",
    "--arch --authfile --cert-dir --creds --decryption-key --os --variant --target",
    "--dns --dns-option --dns-search --group-add --tag",
    "--ip --ip6 --shm-size",
    "--network-alias --dns --dns-option --dns-search --add-host",
]
_BOOL_GROUPS = [
    "--init --env-host --read-only-tmpfs",
    "--disable-dns --internal --ipv6",
    "--all-tags --tls-verify",
    "--tls-verify --force-rm",
]
GROUPS = [(frozenset(g.split()), True) for g in _VALUE_GROUPS] + [
    (frozenset(g.split()), False) for g in _BOOL_GROUPS
]


def _run(argv: list[str], i: int, flags: frozenset[str], takes_value: bool) -> list[list[str]]:
    """The (flag[, value]) items from *argv[i]* on whose flags are all in *flags*."""
    items = []
    while i < len(argv) and argv[i].split("=", 1)[0] in flags:
        width = 2 if takes_value and "=" not in argv[i] else 1
        items.append(argv[i : i + width])
        i += width
    return items


def canonical_argv(argv: list[str]) -> list[str]:
    """*argv* with each run of one Go-map group's flags sorted (stable, by flag);
    where groups share a flag (--dns), the group that covers the longest run."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        runs = [_run(argv, i, flags, value) for flags, value in GROUPS]
        items = max(runs, key=len)
        if not items or (i > 0 and argv[i - 1] in ("--network", "--label")):
            out.append(argv[i])
            i += 1
            continue
        i += sum(len(item) for item in items)
        items.sort(key=lambda item: item[0].split("=", 1)[0])
        out += [a for item in items for a in item]
    return out


def read_service(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            if key in EXEC_KEYS:
                ignore = value.startswith("-")
                value = ("-" if ignore else "") + " ".join(
                    canonical_argv(split_words(value.removeprefix("-")))
                )
            current.append((key, value))
    return {k: v for k, v in sections.items() if not k.startswith("X-")}


def tree(outdir: Path) -> dict[str, str]:
    """Every file (its name) and link (its target) under *outdir*."""
    found = {}
    for path in sorted(outdir.rglob("*")):
        name = str(path.relative_to(outdir))
        if path.is_symlink():
            found[name] = f"-> {path.readlink()}"
        elif path.is_file():
            found[name] = "file"
    return found


def run_podman(
    quadlet: Path, corpus: Path, outdir: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "QUADLET_UNIT_DIRS": str(corpus)}
    return subprocess.run(
        [quadlet, "-no-kmsg-log", *flags, str(outdir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture(scope="module")
def generated(podman_quadlet: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("parity")
    proc = run_podman(podman_quadlet, CORPUS, base / "podman")
    assert proc.returncode == 0, proc.stderr
    write_services(generate_services(load_units([CORPUS])), base / "atoll")
    return base / "podman", base / "atoll"


CORPUS_UNITS = sorted(p.name for p in CORPUS.glob("*") if kind_of(p.name) and p.is_file())


def test_same_services_and_install_links(generated: tuple[Path, Path]) -> None:
    podman, atoll = generated
    assert tree(atoll) == tree(podman)


@pytest.mark.parametrize("unit", CORPUS_UNITS)
def test_unit_gives_podmans_service(generated: tuple[Path, Path], unit: str) -> None:
    podman, atoll = generated
    service = load_units([CORPUS]).by_name()[unit].service_name
    assert read_service(atoll / service) == read_service(podman / service)


def test_user_units_match_too(podman_quadlet: Path, tmp_path: Path) -> None:
    proc = run_podman(podman_quadlet, CORPUS, tmp_path / "podman", "-user")
    assert proc.returncode == 0, proc.stderr
    write_services(generate_services(load_units([CORPUS]), user=True), tmp_path / "atoll")
    assert tree(tmp_path / "atoll") == tree(tmp_path / "podman")
    for name in tree(tmp_path / "podman"):
        if name.endswith(".service") and "/" not in name:
            mine, theirs = (read_service(tmp_path / d / name) for d in ("atoll", "podman"))
            assert mine == theirs, name
    assert "podman-user-wait-network-online.service" in (tmp_path / "atoll/web.service").read_text()


def test_refused_units_are_refused_by_both(podman_quadlet: Path, tmp_path: Path) -> None:
    proc = run_podman(podman_quadlet, REFUSED, tmp_path / "podman")
    assert proc.returncode != 0
    theirs = {p.name for p in (tmp_path / "podman").glob("*.service")}
    assert theirs == {"ok.service", "ok-network.service"}
    loaded = load_units([REFUSED], strict=False)
    errors: list[AtollError] = []
    ours = {s.name for s in generate_services(loaded, errors=errors)}
    assert ours == theirs
    refused = {e.message.split(":", 1)[0].rsplit("/", 1)[-1] for e in [*loaded.errors, *errors]}
    bad = {p.name for p in REFUSED.iterdir() if p.name.startswith("bad-")}
    assert refused == bad
    assert len(bad) >= 35


def test_unparsable_units_are_refused_with_their_line(podman_quadlet: Path, tmp_path: Path) -> None:
    proc = run_podman(podman_quadlet, UNPARSABLE, tmp_path / "podman")
    assert proc.returncode != 0
    assert not list((tmp_path / "podman").glob("*.service"))
    loaded = load_units([UNPARSABLE], strict=False)
    assert loaded.units == ()
    lines = sorted(str(e.message).split(":")[1] for e in loaded.errors)
    assert len(lines) == len(list(UNPARSABLE.iterdir())) and lines == sorted(["1", "3", "3", "3"])


def test_corpus_uses_every_key_of_every_kind() -> None:
    used: dict[str, set[str]] = {}
    for corpus in (CORPUS, REFUSED):
        for path in corpus.rglob("*"):
            kind = kind_of(path.name) if path.suffix != ".conf" else None
            if kind is None or not path.is_file():
                continue
            for section, entry in read_quadlet_sections(path):
                used.setdefault(section, set()).add(entry.key)
    for kind in UnitKind:
        assert {s.key for s in KEYS[kind]} <= used[kind.section], kind
    assert {s.key for s in QUADLET_KEYS} <= used["Quadlet"]


def test_atoll_runs_as_a_systemd_generator(generated: tuple[Path, Path], tmp_path: Path) -> None:
    # What /usr/lib/systemd/system-generators/atoll-quadlet-generator holds (docs/workloads.md).
    script = tmp_path / "atoll-quadlet-generator"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m atoll workload generate "$@"\n')
    script.chmod(0o755)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": src, "QUADLET_UNIT_DIRS": str(CORPUS)}
    dirs = [tmp_path / d for d in ("normal", "early", "late")]
    subprocess.run([script, *dirs], env=env, check=True, capture_output=True, timeout=60)
    assert tree(dirs[0]) == tree(generated[0])
    env["QUADLET_UNIT_DIRS"] = str(REFUSED)
    proc = subprocess.run(
        [script, *dirs], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 50
    assert "bad-memory.container:3: unsupported key Memory" in proc.stderr
    assert (dirs[0] / "ok.service").is_file()
