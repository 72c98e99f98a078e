"""What a sysroot holds right now: deployments, boot entries, booted and staged.

The boot entries are the source of truth for what boots and in which order;
deployment directories with their origin files say what each deployment is;
``staged.json`` names a deployment waiting for finalization; ``run/booted.json``
names the deployment the current boot runs.  Nothing here writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import DeploymentError, InvalidInputError
from atoll.sysroot.bootloader.entries import BootEntry, read_entries
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment, parse_deployment_id, read_origin

ORIGIN_SUFFIX = ".origin"


@dataclass(frozen=True)
class BootRecord:
    """``run/booted.json``: what ``atoll boot`` (or early boot) chose this time."""

    stateroot: str
    deployment: str
    entry: str
    #: Tries left on the entry once this boot was counted (None: no counter).
    tries_left: int | None
    #: True when the chosen entry was not the first in boot order (a fallback).
    fallback: bool
    boot_id: str
    time: str

    def to_json(self) -> dict[str, Any]:
        return {
            "stateroot": self.stateroot,
            "deployment": self.deployment,
            "entry": self.entry,
            "triesLeft": self.tries_left,
            "fallback": self.fallback,
            "bootId": self.boot_id,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: Any) -> BootRecord:
        return cls(
            str(data["stateroot"]),
            str(data["deployment"]),
            str(data["entry"]),
            data.get("triesLeft"),
            bool(data.get("fallback", False)),
            str(data.get("bootId", "")),
            str(data.get("time", "")),
        )


def deployment_key(path: str) -> tuple[str, str] | None:
    """(stateroot, deployment id) from an ``atoll=`` kernel argument value."""
    parts = path.strip("/").split("/")
    if len(parts) == 5 and parts[0] == "atoll" and parts[1] == "deploy" and parts[3] == "deploy":
        return parts[2], parts[4]
    return None


@dataclass(frozen=True)
class SysrootState:
    sysroot: Sysroot
    deployments: dict[tuple[str, str], Deployment]
    entries: list[BootEntry]
    staged: Deployment | None
    booted_record: BootRecord | None

    @classmethod
    def load(cls, sysroot: Sysroot) -> SysrootState:
        sysroot.check_version()
        deployments: dict[tuple[str, str], Deployment] = {}
        for stateroot in sysroot.stateroots():
            deploy_dir = sysroot.deploy_dir(stateroot)
            if not deploy_dir.is_dir():
                continue
            for origin_path in sorted(deploy_dir.glob(f"*{ORIGIN_SUFFIX}")):
                ident = origin_path.name.removesuffix(ORIGIN_SUFFIX)
                parsed = parse_deployment_id(ident)
                if parsed is None or not (deploy_dir / ident).is_dir():
                    continue
                commit, serial = parsed
                deployments[(stateroot, ident)] = Deployment(
                    stateroot, commit, serial, read_origin(origin_path)
                )
        entries = read_entries(sysroot.boot) if sysroot.boot.exists() else []
        return cls(sysroot, deployments, entries, _read_staged(sysroot), _read_booted(sysroot))

    # --- views ------------------------------------------------------------------------

    def deployment_of(self, entry: BootEntry) -> Deployment | None:
        key = deployment_key(entry.deployment_path or "")
        return self.deployments.get(key) if key else None

    def intended_entries(self) -> list[BootEntry]:
        """Entries in the order atoll wrote them (first: the default), whatever
        boot counting has done since: the bootloader sorts bad entries last."""
        return sorted(self.entries, key=lambda e: -int(e.version) if e.version.isdigit() else 0)

    def intended_order(self) -> list[Deployment]:
        return self._deployments_of(self.intended_entries())

    def boot_order(self) -> list[Deployment]:
        """Deployments in bootloader order, first = what boots next."""
        return self._deployments_of(self.entries)

    def _deployments_of(self, entries: list[BootEntry]) -> list[Deployment]:
        out = []
        for entry in entries:
            deployment = self.deployment_of(entry)
            if deployment is not None and deployment not in out:
                out.append(deployment)
        return out

    def entry_for(self, deployment: Deployment) -> BootEntry | None:
        for entry in self.entries:
            if self.deployment_of(entry) == deployment:
                return entry
        return None

    @property
    def booted(self) -> Deployment | None:
        record = self.booted_record
        if record is None:
            return None
        return self.deployments.get((record.stateroot, record.deployment))

    @property
    def default(self) -> Deployment | None:
        order = self.boot_order()
        return order[0] if order else None

    @property
    def current(self) -> Deployment:
        """The deployment an update starts from: the booted one, else the default."""
        found = self.booted or self.default
        if found is None:
            raise DeploymentError(
                f"{self.sysroot.root}: no deployment to start from",
                hint="install one with: atoll install to-filesystem ROOT --source IMAGE",
            )
        return found

    @property
    def rollback(self) -> Deployment | None:
        """The other deployment: the first in boot order that is not the booted one."""
        order = self.boot_order()
        booted = self.booted or (order[0] if order else None)
        others = [d for d in order if d != booted]
        return others[0] if others else None

    @property
    def rollback_queued(self) -> bool:
        """True when the next boot goes to another deployment than the booted one."""
        booted, default = self.booted, self.default
        return booted is not None and default is not None and booted != default

    def path(self, deployment: Deployment) -> Path:
        return deployment.path(self.sysroot.deploy_dir(deployment.stateroot))


def _read_staged(sysroot: Sysroot) -> Deployment | None:
    path = sysroot.staged_file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: unreadable ({exc})") from None
    deployment = Deployment.from_json(data, str(path))
    deploy_dir = sysroot.deploy_dir(deployment.stateroot)
    if not (deploy_dir / deployment.id).is_dir():
        return None  # staging was interrupted before the directory was complete
    return deployment


def _read_booted(sysroot: Sysroot) -> BootRecord | None:
    try:
        return BootRecord.from_json(json.loads(sysroot.booted_file.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"{sysroot.booted_file}: unreadable ({exc})") from None


def select_deployment(state: SysrootState, selector: str | None) -> Deployment:
    """A deployment by boot-order index, id prefix, or the booted one."""
    if selector is None:
        return state.current
    order = state.boot_order()
    if selector.isdigit() and int(selector) < len(order):
        return order[int(selector)]
    matches = [d for d in state.deployments.values() if d.id.startswith(selector)]
    if len(matches) != 1:
        raise DeploymentError(
            f"no single deployment matches {selector!r}",
            hint="name one by its index in atoll status or a unique prefix of its id",
        )
    return matches[0]
