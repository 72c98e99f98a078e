"""``atoll demo``: run the demonstration scenario (see atoll.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atoll.cli.common import Output


def run_demo(args: argparse.Namespace, out: Output) -> int:
    from atoll.demo.scenario import run_demo as scenario

    return scenario(Path(args.workdir) if args.workdir else None, keep=args.keep)
