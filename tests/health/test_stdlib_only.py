"""atoll.health runs inside booted images that have python3 and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: atoll modules the health package may use besides its own.
ALLOWED = {
    "atoll",
    "atoll.errors",
    "atoll.fsutil",
    "atoll.run",
    "atoll.timeutil",
    "atoll.configfile",
}

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import atoll.health
from atoll.health import load_config, discover, run_boot_checks, record_report
from pathlib import Path
config, warnings = load_config(Path(sys.argv[2]))
new = sorted(set(sys.modules) - before)
print(json.dumps({"path": sys.path, "modules": new, "stdlib": sorted(sys.stdlib_module_names)}))
"""


def test_health_imports_only_the_standard_library(tmp_path: Path) -> None:
    # -I: no environment, no user site; -S: no site-packages at all; -B: no
    # __pycache__ in src/ (-I ignores PYTHONDONTWRITEBYTECODE).
    proc = subprocess.run(
        [sys.executable, "-B", "-I", "-S", "-c", PROBE, str(SRC), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={},
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["path"][0] == str(SRC)
    assert not [p for p in found["path"] if "site-packages" in p or "dist-packages" in p]
    stdlib = set(found["stdlib"])
    foreign = [
        name
        for name in found["modules"]
        if name.split(".")[0] not in stdlib
        and not name.startswith("atoll.health")
        and name not in ALLOWED
    ]
    assert foreign == []
    assert "atoll.health.runner" in found["modules"]
