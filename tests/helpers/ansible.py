"""pytest plugin: the atoll.edge collection built and installed the way a user
does it, and ansible-playbook runs against a directory device.

``collection`` (session): ``ansible-galaxy collection build`` of
``ansible_collections/atoll/edge`` and ``ansible-galaxy collection install`` of the
tarball into a directory of its own, so the tests run what the tarball holds.
:func:`playbook_run` runs one playbook with connection local and the test's own
Python as the module's interpreter (atoll is importable there) and reads the
play recap."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.parts import missing

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "ansible_collections" / "atoll" / "edge"
_RECAP = re.compile(
    r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+"
    r"skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)"
)


@dataclass(frozen=True)
class Collection:
    tarball: Path
    #: The directory that holds ansible_collections/atoll/edge as installed.
    path: Path
    bin: Path

    @property
    def installed(self) -> Path:
        return self.path / "ansible_collections" / "atoll" / "edge"


@dataclass(frozen=True)
class PlaybookResult:
    output: str
    ok: int
    changed: int
    failed: int
    ignored: int


def ansible_tool(name: str) -> Path:
    """An ansible command of the Python that runs the tests (ansible-core from the dev extra)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            missing(f"{name} is not installed (pip install ansible-core, the dev extra)")
        path = Path(str(found))
    return path


def ansible_env(home: Path) -> dict[str, str]:
    """The environment of an ansible command: its state under *home*, atoll's source
    importable by the modules, no colours or cows."""
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_NOCOWS="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    return env


def run_command(
    argv: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run_tool(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Run an ansible command; fail the test with its output if it fails."""
    proc = run_command(argv, env, cwd)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    galaxy = ansible_tool("ansible-galaxy")
    work = tmp_path_factory.mktemp("collection")
    env = ansible_env(work / "home")
    run_tool([str(galaxy), "collection", "build", str(SOURCE), "--output-path", str(work)], env)
    [tarball] = work.glob("atoll-edge-*.tar.gz")
    installed = work / "installed"
    run_tool(
        [str(galaxy), "collection", "install", "--offline", str(tarball), "-p", str(installed)],
        env,
    )
    yield Collection(tarball, installed, galaxy.parent)


def playbook_run(
    collection: Collection,
    playbook: Path,
    extra_vars: dict[str, str],
    tmp_path: Path,
    *options: str,
    inventory: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
) -> PlaybookResult:
    """Run *playbook* against *inventory*, by default the host ``dev`` (group
    ``devices``, connection local, the test's Python); *env* is added to Ansible's."""
    hosts = tmp_path / "inventory.json"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts.write_text(json.dumps(inventory or {"devices": {"hosts": {"dev": local}}}))
    environment = ansible_env(tmp_path / "ansible-home")
    environment["ANSIBLE_COLLECTIONS_PATH"] = str(collection.path)
    environment.update(env or {})
    proc = run_command(
        [
            str(collection.bin / "ansible-playbook"),
            "-i",
            str(hosts),
            "-e",
            json.dumps(extra_vars),
            *options,
            str(playbook),
        ],
        environment,
    )
    output = proc.stdout + proc.stderr
    found = _RECAP.search(proc.stdout)
    if found is None:
        pytest.fail(f"no play recap from ansible-playbook ({proc.returncode}):\n{output}")
    ok, changed, unreachable, failed, _, _, ignored = (int(g) for g in found.groups())
    assert unreachable == 0, output
    return PlaybookResult(output, ok, changed, failed, ignored)


# --- ansible-test sanity, offline ---------------------------------------------------

#: The sanity tests that run here.  Left out: pylint (minutes on two cores; ruff's
#: rules do not reach the collection, pep8 and validate-modules do), pslint and
#: shellcheck (no PowerShell or shell in the collection), changelog
#: (antsibull-changelog, and no changelogs/ yet).
SANITY_TESTS = (
    "action-plugin-docs",
    "ansible-doc",
    "compile",
    "empty-init",
    "ignores",
    "import",
    "line-endings",
    "no-assert",
    "no-get-exception",
    "no-illegal-filenames",
    "no-smart-quotes",
    "pep8",
    "replace-urlopen",
    "runtime-metadata",
    "shebang",
    "symlinks",
    "use-argspec-type-path",
    "use-compat-six",
    "validate-modules",
    "yamllint",
)
_VENV = re.compile(r"-m venv --without-pip (\S+)")
#: What the import test's environment may hold: PyYAML only, as ansible-test gives it.
_IMPORT_ONLY = ("yaml", "_yaml")


def prime_sanity_venvs(collection_dir: Path, env: dict[str, str]) -> None:
    """Make the virtual environments ansible-test sanity would create and fill from
    PyPI, from the packages already installed here (the dev extra), so the tests run
    offline.  ``--explain`` names each environment; ansible-test reuses one whose
    ``marker.txt`` exists."""
    import site

    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    for _ in range(10):
        tests = [f"--test={t}" for t in SANITY_TESTS]
        proc = _ansible_test(collection_dir, env, "sanity", "--explain", "-v", *tests)
        fresh = [
            Path(p)
            for p in dict.fromkeys(_VENV.findall(proc.stdout + proc.stderr))
            if not (Path(p) / "marker.txt").exists()
        ]
        if not fresh:
            return
        for venv in fresh:
            _make_venv(venv, parents)
    pytest.fail(f"ansible-test keeps asking for new environments:\n{proc.stdout}{proc.stderr}")


def _make_venv(venv: Path, parents: list[str]) -> None:
    import venv as venvlib

    venvlib.EnvBuilder(with_pip=False, symlinks=True).create(venv)
    [packages] = venv.glob("lib/python*/site-packages")
    if venv.parent.parent.name == "sanity.import":
        for name in _IMPORT_ONLY:
            for parent in parents:
                if (Path(parent) / name).exists():
                    (packages / name).symlink_to(Path(parent) / name)
                    break
    else:
        (packages / "atoll-tests-parent.pth").write_text("\n".join(parents) + "\n")
    (venv / "meta.install.json").write_text("[]")
    (venv / "meta.yaml.json").write_text("true")
    (venv / "marker.txt").touch()


def _ansible_test(
    collection_dir: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``ansible-test ARGS --local --python X.Y`` in *collection_dir*."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    argv = [str(ansible_tool("ansible-test")), *args, "--local", "--python", version]
    return run_command(argv, env, collection_dir)


def _test_env(home: Path) -> dict[str, str]:
    env = ansible_env(home)
    env["HOME"] = str(home)  # ansible-test keeps its environments under ~/.ansible
    return env


def sanity_run(collection: Collection, home: Path) -> str:
    """``ansible-test sanity`` of the installed collection; its output."""
    env = _test_env(home)
    env.pop("PYTHONPATH")  # the modules must not see atoll's source in the import test
    prime_sanity_venvs(collection.installed, env)
    tests = [f"--test={t}" for t in SANITY_TESTS]
    proc = _ansible_test(collection.installed, env, "sanity", "--color=no", *tests)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def units_run(collection: Collection, home: Path) -> str:
    """``ansible-test units`` of the installed collection (its tests/unit); its output."""
    proc = _ansible_test(collection.installed, _test_env(home), "units", "--color=no")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output
