#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer, coverage-guided).

    tests/fuzz/run.py TARGET [--seconds N | --runs N] [--seed N] [--work DIR]
    tests/fuzz/run.py --list

Reads the kept corpus tests/fuzz/corpus/TARGET/ and the work corpus
DIR/corpus/TARGET/ (default DIR: .fuzz in the source tree); new inputs that
reach new code go to the work corpus, crashes and hangs to DIR/crashes/TARGET/
(libFuzzer's crash-*, timeout-*, oom-* files).  An input that takes longer than
--timeout seconds is a hang.  The last line printed is the count:
``TARGET: N inputs in S s (R/s)``.  Exit status 0: no finding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(TREE / "src"))


#: The libFuzzer dictionary (tests/fuzz/dicts/NAME.dict) of each target that reads a text format.
DICTS = {
    "manifest": "json",
    "policy": "json",
    "auth": "json",
    "bundle": "json",
    "blueprint": "toml",
    "updates": "toml",
    "registries": "toml",
    "quadlet": "quadlet",
}


def _targets() -> list[str]:
    from fuzz.targets import TARGETS

    return list(TARGETS)


def _child(name: str, libfuzzer_args: list[str]) -> None:
    """In the child: instrument atoll, then hand over to libFuzzer (which exits)."""
    import atheris

    with atheris.instrument_imports(include=["atoll"]):
        import atoll  # noqa: F401
        from fuzz import targets

        # The targets import their parsers lazily: import this one's now, instrumented.
        for seed in (b"", b"\0" * 600):
            with contextlib.suppress(Exception):
                targets.TARGETS[name](seed)
    atheris.Setup([sys.argv[0], *libfuzzer_args], targets.TARGETS[name])
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?")
    parser.add_argument("--list", action="store_true", help="print the target names")
    parser.add_argument("--seconds", type=int, help="run for this long")
    parser.add_argument("--runs", type=int, help="run this many inputs")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's seed (0: random)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--work", type=Path, default=TREE / ".fuzz")
    parser.add_argument("--no-save", action="store_true", help="keep no new corpus entries")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        # Before anything imports atoll: it is imported instrumented there.
        _child(args.target, rest)
        return 0
    if args.list:
        print("\n".join(_targets()))
        return 0
    if args.target not in _targets():
        parser.error(f"unknown target {args.target!r}; --list names them")

    crashes = args.work / "crashes" / args.target
    crashes.mkdir(parents=True, exist_ok=True)
    dirs = [str(HERE / "corpus" / args.target)]
    if not args.no_save:
        work = args.work / "corpus" / args.target
        work.mkdir(parents=True, exist_ok=True)
        dirs.insert(0, str(work))  # libFuzzer writes new entries into the first
    flags = [
        f"-timeout={args.timeout}",
        "-rss_limit_mb=2048",
        "-max_len=65536",
        f"-seed={args.seed}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        "-reload=0",
    ]
    if args.target in DICTS:
        flags.append(f"-dict={HERE / 'dicts' / DICTS[args.target]}.dict")
    if args.seconds is not None:
        flags.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    if args.no_save:
        # libFuzzer still writes into its first corpus dir: give it a scratch one.
        scratch = args.work / "scratch" / args.target
        scratch.mkdir(parents=True, exist_ok=True)
        dirs.insert(0, str(scratch))
    shm = Path("/dev/shm")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(
        prefix="atoll-fuzz-", dir=shm if shm.is_dir() else None
    ) as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, args.target, "--child", *flags, *dirs],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
            env={**os.environ, "ATOLL_FUZZ_SCRATCH": tmp},
        )
    elapsed = time.monotonic() - start
    sys.stdout.write(proc.stdout)
    found = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stdout)
    runs = int(found[-1]) if found else 0
    rate = runs / elapsed if elapsed else 0.0
    print(f"{args.target}: {runs} inputs in {elapsed:.0f} s ({rate:.0f}/s)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
