"""Run a command with no network but loopback, an apt repository served there.

``unshare --net python tests/helpers/offline.py REPO -- COMMAND...`` runs COMMAND in
the new network namespace, whose only interface is ``lo``: whatever it starts (podman
builds with ``--network host`` included) reaches nothing beyond loopback.  REPO is
served on 127.0.0.1 first; ``{apt_source}`` in COMMAND becomes its sources.list line.
COMMAND's exit code is this script's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from helpers.aptrepo import serve

    repo, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: offline.py REPO -- COMMAND...")
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise SystemExit(f"not in a network namespace of its own: interfaces {interfaces}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with serve(Path(repo)) as served:
        line = served.sources_line.strip()
        argv = [a.replace("{apt_source}", line) for a in command]
        return subprocess.run(argv, check=False).returncode


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(sys.argv[1:]))
