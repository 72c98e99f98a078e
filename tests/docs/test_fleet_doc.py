"""docs/fleet.md's walk from an empty server to a finished rollout, run as written.

Every ``$`` line of the section's console blocks runs (``atoll fleet serve … &``
as a process of its own), and so does every ``devN$`` line, on two directory
devices installed from a real registry: there atoll plays the bootloader, so
``systemctl reboot`` is ``atoll boot --sysroot`` and the agent's service is
``atoll agent run --once`` before each operator command (the service runs all
the time on a real device).  What a block shows under a command is what the
command printed, ``…`` standing for what differs from run to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.cli.main import main
from docs.docblocks import ROOT
from helpers.busybox_root import busybox_files
from helpers.cli import run_atoll
from helpers.osimage import build_os_image
from helpers.registry import RegistryView
from helpers.workloads import free_port

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "fleet.md"
SECTION = "## From an empty server to a finished rollout"
#: The first command of each of the section's blocks, all of which run here.
FIRSTS = (
    "atoll fleet db upgrade --db sqlite:////var/lib/atoll-fleet/fleet.db --ca-key /etc/atoll-fleet/ca.pem",  # noqa: E501
    "atoll fleet apply -f berlin.yaml",
    "atoll fleet enrollment token --reusable",
    "atoll fleet rollout start r1 --fleet berlin --image registry.example/os/edge@sha256:2222… --batch 1",  # noqa: E501
)


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.index("\n### ", start + len(SECTION))
    return text[start:end]


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def steps(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """(who, command, lines shown under it): who is "" for the operator, or a device."""
    for block in fenced(text, "console"):
        current: tuple[str, str, list[str]] | None = None
        for line in block.splitlines():
            prompt = re.match(r"^(dev\d+)?\$ (.*)$", line)
            if prompt:
                if current is not None:
                    yield current
                current = (prompt[1] or "", prompt[2], [])
            elif current is not None:
                current[2].append(line)
        if current is not None:
            yield current


def matches(shown: list[str], printed: list[str]) -> bool:
    if len(shown) != len(printed):
        return False
    return all(
        re.fullmatch(".*".join(re.escape(part) for part in want.split("…")), got.rstrip())
        for want, got in zip(shown, printed, strict=True)
    )


@pytest.mark.slow
def test_the_walk_from_an_empty_server_to_a_finished_rollout(
    tmp_path: Path,
    registry: RegistryView,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = section()
    firsts = [b.splitlines()[0].removeprefix("$ ") for b in fenced(text, "console")]
    assert tuple(firsts) == FIRSTS
    images = tmp_path / "images"
    repo = f"{registry.host}/{registry.new_repo('os/edge')}"
    digests = []
    for version in ("1", "2"):
        build_os_image(images, version, version=f"{version}.0", add=busybox_files({}))  # type: ignore[arg-type]
        assert main(["image", "copy", f"oci:{images}:{version}", f"docker://{repo}:{version}"]) == 0
        capsys.readouterr()
        proc = run_atoll("--json", "image", "inspect", f"docker://{repo}:{version}")
        digests.append(json.loads(proc.stdout)["Digest"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # What the page writes, and what stands for it here (and back, in the output).
    names = {
        "/var/lib/atoll-fleet": str(tmp_path / "server"),
        "/etc/atoll-fleet": str(tmp_path / "secrets"),
        "http://fleet.lan:8470": url,
        "127.0.0.1:8470": f"127.0.0.1:{port}",
        "registry.example/os/edge": repo,
        "sha256:1111…": digests[0],
        "sha256:2222…": digests[1],
        # The short form tables print.
        "sha256:111111111111": digests[0][:19],
        "sha256:222222222222": digests[1][:19],
    }

    def ours(value: str) -> str:
        for doc, real in names.items():
            value = value.replace(doc, real)
        return value

    def theirs(value: str) -> str:
        for doc, real in names.items():
            value = value.replace(real, doc)
        return value

    for path in ("server", "secrets"):
        (tmp_path / path).mkdir()
    monkeypatch.chdir(tmp_path)
    # The default address the operator commands use, where the test's server is.
    monkeypatch.setenv("ATOLL_FLEET_SERVER", url)
    (yaml,) = fenced(text, "yaml")
    Path("berlin.yaml").write_text(ours(yaml))

    devices: dict[str, Path] = {}
    running: list[str] = []

    def device(name: str) -> Path:
        if name not in devices:
            sysroot = tmp_path / name / "sysroot"
            source = f"docker://{repo}@{digests[0]}"
            assert main(["install", "to-filesystem", str(sysroot), "--source", source]) == 0
            assert main(["boot", "--sysroot", str(sysroot)]) == 0
            capsys.readouterr()
            devices[name] = tmp_path / name
        return devices[name]

    def agent_round(name: str) -> None:
        home = devices[name]
        argv = ["agent", "run", "--once", "--state", str(home / "agent"), "--root",
                str(home / "root"), "--sysroot", str(home / "sysroot"),
                "--workload-manager", "none"]  # fmt: skip
        assert main(argv) == 0

    def on_device(name: str, command: str) -> str:
        home = device(name)
        if command == "systemctl enable --now atoll-agent.service":
            running.append(name)
            agent_round(name)
            return ""
        if command == "systemctl reboot":
            agent_round(name)  # the service staged the image meanwhile
            assert main(["boot", "--sysroot", str(home / "sysroot")]) == 0
            capsys.readouterr()
            agent_round(name)
            return ""
        argv = shlex.split(ours(command))
        assert argv[:3] == ["atoll", "agent", "enroll"], command
        assert main([*argv[1:], "--state", str(home / "agent")]) == 0
        return "".join(capsys.readouterr())

    serving: subprocess.Popen[bytes] | None = None
    secret = ""
    try:
        for who, command, shown in steps(text):
            if who:
                printed = on_device(who, command.replace("atf_…", secret))
            elif command.startswith("export ATOLL_FLEET_TOKEN="):
                monkeypatch.setenv("ATOLL_FLEET_TOKEN", secret)
                printed = ""
            elif command.endswith(" &"):
                argv = shlex.split(ours(command.removesuffix(" &")))
                assert argv[:3] == ["atoll", "fleet", "serve"], command
                env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
                serving = subprocess.Popen([sys.executable, "-m", *argv], env=env)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert serving.poll() is None, "atoll fleet serve stopped"
                    time.sleep(0.2)
                printed = ""
            else:
                for name in running:
                    agent_round(name)
                capsys.readouterr()
                argv = shlex.split(ours(command))
                assert argv[0] == "atoll", command
                code = main(argv[1:])
                out, err = capsys.readouterr()
                assert code == 0, f"{command}: exit {code}: {err}"
                printed = out + err  # as a terminal shows them
            secret = next((x for x in printed.split() if x.startswith("atf_")), secret)
            lines = [theirs(x) for x in printed.splitlines()]
            assert matches(shown, lines), (
                f"$ {command}\nshown:\n" + "\n".join(shown) + "\nprinted:\n" + "\n".join(lines)
            )
    finally:
        if serving is not None:
            serving.terminate()
            serving.wait(timeout=30)
