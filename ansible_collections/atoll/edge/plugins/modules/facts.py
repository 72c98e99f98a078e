#!/usr/bin/python
# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: facts
short_description: Facts about an atoll device, images, health and workloads
description:
  - Sets C(ansible_facts.atoll) from atoll's Python API on the managed host,
    the booted, staged and rollback images, the last health check's outcome and
    reason, the automatic-update policy, and the Quadlet workloads with their state.
version_added: 0.1.0
author: atoll developers (@atoll)
options:
  root:
    description:
      - The running system's root directory. Default C(/) on a machine booted from
        O(sysroot)=C(/sysroot), else the booted (or default) deployment of O(sysroot).
    type: path
attributes:
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
extends_documentation_fragment:
  - atoll.edge.edge.sysroot
  - atoll.edge.edge.manager
"""

EXAMPLES = r"""
- name: Gather atoll facts
  atoll.edge.facts:

- name: Show the booted image
  ansible.builtin.debug:
    msg: "{{ ansible_facts.atoll.booted.image }} {{ ansible_facts.atoll.booted.version }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts under C(atoll).
  returned: always
  type: dict
  contains:
    atoll:
      description: >-
        C(root) (the running system's root), C(sysroot), C(booted), C(staged), C(rollback)
        (each C(image), C(digest), C(version), C(deployment), C(pinned), or null),
        C(rollback_queued), C(health) (C(outcome) and C(reason) of the last run of the checks),
        C(updates) (the policy), C(workloads) (C(unit), C(service), C(state), C(health)),
        and C(status) (the full C(atoll status) document).
      type: dict
      returned: always
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.atoll.edge.plugins.module_utils.edge import inside, manager_for, run_module

UNIT_DIRS = ("/run/containers/systemd", "/etc/containers/systemd", "/usr/share/containers/systemd")


def image_facts(state, deployment):
    if deployment is None:
        return None
    origin = deployment.origin
    return {
        "image": origin.image,
        "digest": origin.manifest_digest,
        "version": origin.image_version,
        "deployment": deployment.id,
        "pinned": origin.pinned,
        "path": str(state.path(deployment)),
    }


def health_facts(sysroot):
    from atoll.health.records import read_last_report

    report = read_last_report(sysroot)
    if report is None:
        return {"outcome": None, "reason": None, "deployment": None}
    return {
        "outcome": report.outcome.value,
        "reason": report.reason.summary() if report.reason else None,
        "deployment": report.deployment,
    }


def workload_facts(module, root):
    from pathlib import Path

    from atoll.errors import AtollError
    from atoll.workloads import load_units

    units = load_units([Path(inside(str(root), d)) for d in UNIT_DIRS]).units
    manager = None
    if module.params["manager"] != "none":
        manager = manager_for(module.params, str(root))
    found = []
    for unit in units:
        entry = {"unit": unit.name, "service": unit.service_name, "state": None, "health": None}
        if manager is not None:
            try:
                status = manager.status(unit.name)
            except AtollError:
                status = None
            if status is not None:
                entry.update(state=str(status.state), health=str(status.health), result=status.result)
        found.append(entry)
    return found


def main_body(module):
    from pathlib import Path

    from atoll.cli.hostdevice import host_status, open_device
    from atoll.updates import load_config, running_root

    device = open_device(Path(module.params["sysroot"]))
    state = device.state()
    root = running_root(device, module.params["root"])
    facts = {
        "sysroot": str(device.sysroot.root),
        "root": str(root),
        "booted": image_facts(state, state.booted or state.default),
        "staged": image_facts(state, state.staged),
        "rollback": image_facts(state, state.rollback),
        "rollback_queued": state.rollback_queued,
        "health": health_facts(device.sysroot.root),
        "updates": load_config(root).to_json(),
        "workloads": workload_facts(module, root),
        "status": host_status(state),
    }
    return {"changed": False, "ansible_facts": {"atoll": facts}}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysroot=dict(type="path", default="/sysroot"),
            root=dict(type="path"),
            manager=dict(type="str", choices=["auto", "systemd", "supervisor", "none"], default="auto"),
            state_dir=dict(type="path", default="/run/atoll/workloads"),
        ),
        supports_check_mode=True,
    )
    run_module(module, main_body)


if __name__ == "__main__":
    main()
