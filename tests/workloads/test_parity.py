"""atoll's generator against podman 5.4's own quadlet, unit by unit.

Exec lines are compared as multisets of words, plus the podman subcommand and
the final word in order: podman's quadlet walks Go maps for some groups of
flags (--tz/--entrypoint/--workdir, --env/--label/--annotation, ...), so the
order between those groups changes from run to run of the real generator.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from atoll.workloads import generate_services, load_units

pytest_plugins = ["helpers.quadlet"]

CORPUS = Path(__file__).resolve().parent / "corpus"
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStop", "ExecStopPost")


def _parse_dryrun(text: str) -> dict[str, dict[str, list[tuple[str, str]]]]:
    services: dict[str, dict[str, list[tuple[str, str]]]] = {}
    current: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("---") and line.endswith("---"):
            current = services.setdefault(line.strip("-"), {})
        elif line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, _, value = line.partition("=")
            current.setdefault(section, []).append((key, value))
    return services


def _words_key(line: str) -> tuple[list[str], Counter[str], str]:
    words = shlex.split(line.lstrip("-"))
    prefix = []
    for word in words:
        if word.startswith("-"):
            break
        prefix.append(word)
    return prefix, Counter(words), words[-1]


def test_corpus_matches_podman_quadlet(podman_quadlet: Path) -> None:
    env = {"PATH": os.environ["PATH"], "QUADLET_UNIT_DIRS": str(CORPUS)}
    proc = subprocess.run(
        [podman_quadlet, "-dryrun", "-no-kmsg-log"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = _parse_dryrun(proc.stdout)
    loaded = load_units([CORPUS])
    ours = {s.name: s for s in generate_services(loaded)}
    assert set(ours) == set(theirs), proc.stderr
    assert len(ours) >= 12
    for name, service in ours.items():
        for section in ("Unit", "Service", "Install"):
            mine = [(k, v) for s, pairs in service.sections if s == section for k, v in pairs]
            real = theirs[name].get(section, [])
            other = Counter(p for p in mine if p[0] not in EXEC_KEYS)
            assert other == Counter(p for p in real if p[0] not in EXEC_KEYS), (name, section)
            for key in EXEC_KEYS:
                mine_lines = [_words_key(v) for k, v in mine if k == key]
                real_lines = [_words_key(v) for k, v in real if k == key]
                assert mine_lines == real_lines, (name, key)


@pytest.mark.parametrize("unit", sorted(p.name for p in CORPUS.glob("*.*") if p.is_file()))
def test_corpus_unit_loads_without_warnings(unit: str) -> None:
    loaded = load_units([CORPUS])
    assert unit in loaded.by_name()
    assert loaded.warnings == ()
