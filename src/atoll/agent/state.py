"""The agent's state directory (default ``/var/lib/atoll/agent``)::

    agent/
      identity.json    {"format": 1, "server": URL, "device": NAME}
      key.pem          the device's ECDSA P-256 key (mode 0600, made on the device)
      key.next.pem     a new key while a rotation is under way: it replaces key.pem
                       once the server has certified it, and is dropped if the
                       server never took it
      enrollment.json  {"certificate": PEM, "caCertificate": PEM, "specKeys": [PEM, ...]}
      applied.json     {"format": 1, "version": N, "spec": {...}, "files": [...], "units": [...]}
      pending.json     the newest trusted spec not yet applied (waiting for a green boot)

Every file is written atomically.  ``applied.json`` moves only after a spec is
fully in place (for an OS image: booted and green), so its version is the one
a replayed, older spec is checked against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import EnrollmentError, InvalidInputError
from atoll.fsutil import write_atomic

STATE_FORMAT = 1
DEFAULT_STATE_DIR = Path("/var/lib/atoll/agent")


@dataclass(frozen=True)
class AgentState:
    root: Path

    @property
    def key_path(self) -> Path:
        return self.root / "key.pem"

    @property
    def next_key_path(self) -> Path:
        return self.root / "key.next.pem"

    def read(self, name: str) -> dict[str, Any] | None:
        path = self.root / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: cannot be read as JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInputError(f"{path}: not a JSON object")
        return data

    def write(self, name: str, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.root / name, (json.dumps(data, indent=2) + "\n").encode(), 0o600)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def identity(self) -> tuple[str, str]:
        """(server URL, device name), or an error saying to enroll first."""
        data = self.read("identity.json")
        if data is None or not self.key_path.exists():
            raise EnrollmentError(
                f"{self.root}: this device has not enrolled",
                hint="run atoll agent enroll --server URL --token TOKEN --name NAME",
            )
        return str(data["server"]), str(data["device"])

    def applied_version(self) -> int:
        applied = self.read("applied.json") or {}
        version = applied.get("version", 0)
        return version if isinstance(version, int) else 0
