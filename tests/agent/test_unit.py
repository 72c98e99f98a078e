"""The agent's systemd unit: installs, enables, and runs a command atoll parses."""

from __future__ import annotations

import shlex
from pathlib import Path

from atoll.cli.parser import build_parser
from atoll.units import AGENT_SERVICE, UNITS, install_units, unit_text


def test_the_agent_unit_is_shipped_but_opt_in(tmp_path: Path) -> None:
    assert AGENT_SERVICE not in UNITS
    install_units(tmp_path, [AGENT_SERVICE])
    link = tmp_path / "etc/systemd/system/multi-user.target.wants" / AGENT_SERVICE
    assert str(link.readlink()) == f"/usr/lib/systemd/system/{AGENT_SERVICE}"
    exec_start = next(
        line.split("=", 1)[1]
        for line in unit_text(AGENT_SERVICE).splitlines()
        if line.startswith("ExecStart=")
    )
    argv = shlex.split(exec_start)[1:]
    args = build_parser(argv).parse_args(argv)
    assert (args.state, args.sysroot, args.once) == ("/var/lib/atoll/agent", "/sysroot", False)
