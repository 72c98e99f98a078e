"""``atoll updates status``: the configuration, what would happen now and next, the
history and the inhibitors holding, as one JSON document (and text for people).

The document (stable; ``--json``)::

    {
      "config": {"path": …, "policy": …, "download": {"window", "timezone",
                 "randomDelaySeconds", "rateLimit"}, "apply": {"window", "timezone"},
                 "inhibitors": {"files": […], "commands": [[argv…], …]},
                 "trust": {"maxSignatureAgeSeconds", "allowDowngrade"}},
      "decision": {"action", "reason", "now", "nextOpportunity", "delaySeconds",
                   "downloadWindowOpen", "applyWindowOpen", "stageFirst", "inhibitors"},
      "staged": {"deployment", "digest", "version", "downloadOnly"} | null,
      "inhibitors": [{"kind": "file" | "command", "what", "detail"}, …],   # holding now
      "rolledBack": [{"imageDigest", "image", "version", "deployment", "time",
                      "attemptsUsed", "reason"}, …],   # never staged again by updates
      "state": the content of atoll/updates/state.json (see atoll.updates.state)
    }
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from atoll.sysroot.rolledback import read_rolled_back
from atoll.timeutil import human_time
from atoll.updates.clock import Clock
from atoll.updates.config import format_duration, format_rate, load_config
from atoll.updates.inhibitors import CommandRunner, run_inhibitor_command
from atoll.updates.policy import decide
from atoll.updates.runner import UpdatableDevice, gather_facts
from atoll.updates.state import UpdateState, state_path

#: Values start in one column whichever rows there are.
_LABEL_WIDTH = len("Next opportunity:")


def status_document(
    device: UpdatableDevice,
    root: Path,
    clock: Clock,
    *,
    run_command: CommandRunner = run_inhibitor_command,
) -> dict[str, Any]:
    config = load_config(root)
    state = UpdateState.load(state_path(device.sysroot.root))
    facts = gather_facts(device, root, config, inhibitors=True, run_command=run_command)
    decision = decide(config, clock, state, facts)
    return {
        "config": config.to_json(),
        "decision": decision.to_json(),
        "staged": facts.staged.to_json() if facts.staged else None,
        "inhibitors": [i.to_json() for i in facts.inhibitors],
        "rolledBack": [r.to_json() for r in read_rolled_back(device.sysroot)],
        "state": state.to_json(),
    }


def describe(doc: dict[str, Any]) -> str:
    """The status document as text."""
    config, decision, state = doc["config"], doc["decision"], doc["state"]
    zone = config["download"]["timezone"]
    rows: list[tuple[str, str]] = []
    source = config["path"] or "no /etc/atoll/updates.toml: defaults"
    rows.append(("Policy", f"{config['policy']} ({source})"))

    download = _window(config["download"])
    delay = datetime.timedelta(seconds=decision["delaySeconds"])
    if delay:
        download += f", opening {format_duration(delay)} later on this device"
    download += ": open" if decision["downloadWindowOpen"] else ": closed"
    rows.append(("Download window", download))
    apply = _window(config["apply"]) + (": open" if decision["applyWindowOpen"] else ": closed")
    rows.append(("Apply window", apply))
    rate = config["download"]["rateLimit"]
    rows.append(("Rate limit", format_rate(rate) if rate else "none"))

    files = config["inhibitors"]["files"]
    commands = [" ".join(c) for c in config["inhibitors"]["commands"]]
    held = doc["inhibitors"]
    inhibitors = ", ".join([*files, *commands]) or "none"
    if files or commands:
        holding = "; ".join(f"{i['what']} ({i['detail']})" for i in held) or "none"
        inhibitors += f"; holding now: {holding}"
    rows.append(("Inhibitors", inhibitors))

    nxt = decision["nextOpportunity"]
    now_line = f"{decision['action']}: {decision['reason']}"
    rows.append(("Now", now_line))
    if nxt is not None and nxt != decision["now"]:
        rows.append(("Next opportunity", _when(nxt, zone)))

    last_run = state["lastRun"]
    rows.append(
        ("Last run", f"{_when(last_run, zone)}: {state['lastAction']}" if last_run else "never")
    )
    check = state["lastCheck"]
    if check is None:
        rows.append(("Last check", "never"))
    elif check["available"]:
        found = f"{check['version'] or '-'} ({(check['digest'] or '')[:19]})"
        rows.append(("Last check", f"{_when(check['time'], zone)}: update available: {found}"))
    else:
        rows.append(("Last check", f"{_when(check['time'], zone)}: up to date"))
    error = state["lastError"]
    if error is not None:
        rows.append(
            (
                "Last error",
                f"{_when(error['time'], zone)}: {error['message']} "
                f"(exit code {error['exitCode']}, {state['failures']} in a row)",
            )
        )
    staged = doc["staged"]
    if staged is not None:
        text = f"{staged['version'] or '-'} ({staged['digest'][:19]}), {staged['deployment'][:12]}"
        if staged["downloadOnly"]:
            text += " (download only)"
        if state["stagedAt"] and state["stagedDigest"] == staged["digest"]:
            text += f", since {_when(state['stagedAt'], zone)}"
        rows.append(("Staged", text))
    else:
        rows.append(("Staged", "nothing"))
    for image in doc["rolledBack"]:
        version = f" {image['version']}" if image["version"] else ""
        rows.append(
            (
                "Rolled back",
                f"{image['image']}{version} ({image['imageDigest'][:19]}) on "
                f"{_when(image['time'], zone)}: {image['reason']}; not taken again "
                f"(atoll updates forget {image['imageDigest'][7:19]} to allow it)",
            )
        )
    return "\n".join(f"{label + ':':<{_LABEL_WIDTH}} {value}" for label, value in rows)


def _window(section: dict[str, Any]) -> str:
    if section["window"] is None:
        return "anytime"
    return f"{section['window']} ({section['timezone']})"


def _when(text: str, zone: str) -> str:
    return human_time(datetime.datetime.fromisoformat(text), zone)
