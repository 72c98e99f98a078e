"""``atoll status``: the host document, shaped like bootc's ``BootcHost``.

Stable JSON (``atoll status --format json``), documented in docs/status.md::

    {"apiVersion": "org.containers.bootc/v1", "kind": "BootcHost",
     "metadata": {"name": "host"},
     "spec": {"image": {"image": "…", "transport": "registry"}, "bootOrder": "default"},
     "status": {"staged": ENTRY | null, "booted": ENTRY | null, "rollback": ENTRY | null,
                "rollbackQueued": false, "type": "bootcHost",
                "atoll": {"sysroot": "…", "lastBoot": {...} | null,
                          "lastRollback": {...} | null, "droppedUpdate": {...} | null,
                          "lastTransfer": {...} | null,
                          "rolledBackImages": [{...}, …]}}}   (atoll.sysroot.rolledback)

    ENTRY = {"image": {"image": {"image": "…", "transport": "registry"},
                       "version": "1.4" | null, "timestamp": "…" | null,
                       "imageDigest": "sha256:…"},
             "cachedUpdate": null, "incompatible": false,
             "pinned": false, "downloadOnly": false,
             "atoll": {"stateroot": "default", "commit": "…", "deploySerial": 0,
                       "bootEntry": "atoll-default-…", "bootState": "good",
                       "triesLeft": null, "etcMerge": {...} | null}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from atoll.errors import AtollError
from atoll.oci.transports import parse_bootc_name
from atoll.sysroot.dropped import read_dropped
from atoll.sysroot.origin import Deployment
from atoll.sysroot.rolledback import read_rolled_back
from atoll.sysroot.state import SysrootState

API_VERSION = "org.containers.bootc/v1"


def _entry(state: SysrootState, deployment: Deployment | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    origin = deployment.origin
    entry = state.entry_for(deployment)
    return {
        "image": {
            "image": {"image": origin.image, "transport": origin.transport.value},
            "version": origin.image_version,
            "timestamp": origin.timestamp,
            "imageDigest": origin.manifest_digest,
        },
        "cachedUpdate": None,
        "incompatible": False,
        "pinned": origin.pinned,
        "downloadOnly": origin.download_only,
        "atoll": {
            "stateroot": deployment.stateroot,
            "commit": deployment.commit,
            "deploySerial": deployment.serial,
            "bootEntry": entry.id if entry else None,
            "bootState": entry.state.value if entry else None,
            "triesLeft": entry.tries_left if entry else None,
            "etcMerge": origin.etc_merge,
        },
    }


def _last_transfer(state: SysrootState) -> dict[str, Any] | None:
    """What the last import moved, by path (written by atoll.sysroot.lifecycle)."""
    try:
        data = json.loads(state.sysroot.transfer_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def host_document(
    state: SysrootState, *, last_rollback: Mapping[str, object] | None = None
) -> dict[str, Any]:
    """*last_rollback*: the newest automatic rollback the health checks recorded
    (``atoll.health.records``), as its JSON; the caller reads it."""
    booted = state.booted
    spec_source = state.staged or booted or state.default
    spec_image = (
        {"image": spec_source.origin.image, "transport": spec_source.origin.transport.value}
        if spec_source
        else None
    )
    record = state.booted_record
    dropped = read_dropped(state.sysroot)
    return {
        "apiVersion": API_VERSION,
        "kind": "BootcHost",
        "metadata": {"name": "host"},
        "spec": {
            "image": spec_image,
            "bootOrder": "rollback" if state.rollback_queued else "default",
        },
        "status": {
            "staged": _entry(state, state.staged),
            "booted": _entry(state, booted),
            "rollback": _entry(state, state.rollback),
            "rollbackQueued": state.rollback_queued,
            "type": "bootcHost",
            "atoll": {
                "sysroot": str(state.sysroot.root),
                "lastBoot": record.to_json() if record else None,
                "lastRollback": last_rollback,
                "droppedUpdate": dropped.to_json() if dropped else None,
                "lastTransfer": _last_transfer(state),
                "rolledBackImages": [r.to_json() for r in read_rolled_back(state.sysroot)],
            },
        },
    }


def tries_left(count: int) -> str:
    """``1 try left``, ``2 tries left``: a boot counter in words."""
    return f"{count} {'try' if count == 1 else 'tries'} left"


def _image_name(image: dict[str, Any]) -> str:
    """bootc's {transport, image} in the one form atoll prints names in
    (``docker://REF`` for a registry, as ``install`` and ``image`` commands print)."""
    try:
        return str(parse_bootc_name(image["image"], image["transport"]))
    except AtollError:
        return f"{image['transport']}:{image['image']}"


def describe(doc: dict[str, Any], *, booted_only: bool = False) -> str:
    """The human form of the host document."""
    status = doc["status"]
    lines: list[str] = []
    slots = ("booted",) if booted_only else ("staged", "booted", "rollback")
    for slot in slots:
        entry = status[slot]
        if entry is None:
            if slot == "booted" and not booted_only:
                lines.append("No booted deployment (run atoll boot on a directory device).")
            continue
        image = entry["image"]
        atoll = entry["atoll"]
        marker = {"staged": "Staged", "booted": "Booted", "rollback": "Rollback"}[slot]
        flags = [
            f
            for f, on in (("pinned", entry["pinned"]), ("download-only", entry["downloadOnly"]))
            if on
        ]
        lines.append(
            f"{marker} image: {_image_name(image['image'])}"
            + (f" ({', '.join(flags)})" if flags else "")
        )
        lines.append(f"        Version: {image['version'] or '-'} ({image['timestamp'] or '-'})")
        lines.append(f"         Digest: {image['imageDigest']}")
        lines.append(
            f"     Deployment: {atoll['stateroot']}/{atoll['commit'][:12]}.{atoll['deploySerial']}"
        )
        if atoll["bootState"] and atoll["bootState"] != "good":
            left = tries_left(atoll["triesLeft"])
            lines.append(f"     Boot state: {atoll['bootState']} ({left})")
        conflicts = (atoll.get("etcMerge") or {}).get("conflicts") or []
        if conflicts:
            lines.append(f"  /etc conflicts: {len(conflicts)} (see --format json)")
            lines.extend(f"                 {c.get('path')}" for c in conflicts[:5])
        lines.append("")
    rollback = status["atoll"].get("lastRollback")
    if rollback:
        reason = rollback.get("reason") or {}
        why = (
            f"required check {reason.get('name')} failed (exit code {reason.get('exitCode')})"
            if reason
            else "its boots never reached the health checks"
        )
        lines.append(
            f"Rolled back on {rollback['time']} from {rollback['from'][:12]} after "
            f"{rollback['attemptsUsed']} attempts: {why}"
        )
    dropped = status["atoll"].get("droppedUpdate")
    if dropped:
        lines.append(
            f"Update {dropped['image']}"
            + (f" {dropped['version']}" if dropped["version"] else "")
            + f" ({dropped['deployment'][:12]}) "
            f"could not be finalized on {dropped['time']} and was dropped: {dropped['error']}"
        )
    transfer = status["atoll"].get("lastTransfer")
    if transfer:
        paths = transfer.get("paths", {})
        parts = [
            f"{name} {row['bytes']} B/{row['requests']} req"
            for name, row in paths.items()
            # The delta path has files but no layers of its own when ranges share them.
            if row.get("layers") or row.get("files")
        ]
        lines.append(
            f"Last update ({transfer.get('time', '-')}): moved {transfer.get('bytesMoved', 0)} B"
            + (f" — {', '.join(parts)}" if parts else "")
        )
    for image in status["atoll"].get("rolledBackImages") or []:
        version = f" {image['version']}" if image["version"] else ""
        lines.append(
            f"Updates skip {image['image']}{version} ({image['imageDigest'][:19]}): "
            f"rolled back on {image['time']}; atoll updates forget "
            f"{image['imageDigest'][7:19]} lets them take it again"
        )
    if status["rollbackQueued"]:
        lines.append("A rollback is queued: the next boot starts the rollback deployment.")
    return "\n".join(lines).rstrip() + "\n"
