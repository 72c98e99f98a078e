#!/usr/bin/python
# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: os
short_description: The OS image of an atoll device, switch, upgrade, rollback and pin
description:
  - V(staged) fetches the newest image of the booted image's tag (C(atoll upgrade)),
    or O(image) when given (C(atoll switch)), and stages it; the booted system is not
    touched. Nothing changes when that image is already booted or staged.
  - V(rolled_back) makes the previous deployment boot next (C(atoll rollback)),
    unless the next boot already goes to another deployment than the booted one.
  - V(pinned) and V(unpinned) pin a deployment so it is never removed.
  - V(status) changes nothing and returns the status document.
  - With O(apply), a real machine reports RV(reboot_required) for a handler that uses
    M(ansible.builtin.reboot) (the staged deployment is finalized at shutdown);
    a directory sysroot is finalized and booted at once, as C(atoll upgrade --apply) does.
  - In check mode V(staged) reads only the manifest and says what would be staged.
  - The device's trust policy and C([trust]) settings are enforced as by the command line.
  - C(registries.conf), its drop-ins and C(certs.d) are those of the running system, so on a
    directory sysroot those in the booted deployment's C(/etc/containers), not the managed host's.
version_added: 0.1.0
author: atoll developers (@atoll)
options:
  state:
    description: What to do.
    type: str
    choices: [staged, rolled_back, pinned, unpinned, status]
    default: staged
  image:
    description: The image to switch to, C(REF) (a registry) or C(TRANSPORT:DETAILS). Omitted, the booted image's tag is followed.
    type: str
  apply:
    description: Boot into what was staged (see the description).
    type: bool
    default: false
  download_only:
    description: Stage but do not apply at the next shutdown.
    type: bool
    default: false
  allow_downgrade:
    description: Let an upgrade follow the tag to an older version.
    type: bool
    default: false
  allow_rolled_back:
    description: Take the image even if this device rolled back from it before.
    type: bool
    default: false
  allow_no_kernel:
    description: Deploy an image without C(usr/lib/modules/*/vmlinuz) (container-boot devices).
    type: bool
    default: false
  etc_merge:
    description: What to do when local /etc and the image disagree on a file's type.
    type: str
    choices: [keep-local, keep-new, fail]
    default: keep-local
  deployment:
    description: For V(pinned) and V(unpinned), the index in boot order or an id prefix; default the booted one.
    type: str
  auth_file:
    description:
      - The auth file to read credentials from, as seen from the running system.
      - Default C(/etc/containers/auth.json) when it exists, else atoll's usual search.
    type: path
  policy:
    description: A trust policy (containers-policy.json) to enforce instead of the booted deployment's.
    type: path
attributes:
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
extends_documentation_fragment:
  - atoll.edge.edge.sysroot
"""

EXAMPLES = r"""
- name: Stage the newest image of the booted tag
  atoll.edge.os:
  notify: Reboot into the new image

- name: Switch to another image and reboot into it
  atoll.edge.os:
    image: registry.example.com/os/edge:2
    apply: true
  register: switched
  notify: Reboot into the new image
"""

RETURN = r"""
status:
  description: The host status document (C(atoll status --format json)), after the change.
  returned: always
  type: dict
stage:
  description: What staging did (C(atoll upgrade --json)); in check mode, the image that would be staged.
  returned: with state=staged
  type: dict
next:
  description: The deployment that boots next after a rollback.
  returned: with state=rolled_back
  type: dict
reboot_required:
  description: True when something is staged and O(apply) asks to boot into it on a real machine.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.atoll.edge.plugins.module_utils.edge import inside, run_module

DEFAULT_AUTH_FILE = "/etc/containers/auth.json"


def open_device(params):
    from pathlib import Path

    from atoll.cli.hostdevice import open_device as open_sysroot
    from atoll.oci.context import SystemContext
    from atoll.updates import running_root

    device = open_sysroot(Path(params["sysroot"]))
    root = running_root(device)
    auth_file = params["auth_file"]
    if auth_file is None and os.path.exists(inside(str(root), DEFAULT_AUTH_FILE)):
        auth_file = DEFAULT_AUTH_FILE
    # registries.conf and certs.d are the managed system's, inside its root.
    device.ctx = SystemContext(
        authfile=None if auth_file is None else Path(inside(str(root), auth_file)),
        root=None if str(root) == "/" else Path(root),
    )
    device.kernel_optional = params["allow_no_kernel"]
    return device, root


def image_name(params):
    from atoll.oci.transports import parse_bootc_name

    return parse_bootc_name(params["image"], None) if params["image"] else None


def status(device):
    from atoll.cli.hostdevice import host_status

    return host_status(device.state())


def check_stage(module, device, name):
    """Check mode: what staging would take, from the manifest and config only."""
    from atoll.sysroot.rolledback import find_rolled_back

    current, image, changed = device.check(name)
    if name is not None and str(name) != str(current.origin.image_name):
        changed = True
    skipped = None
    if changed and not module.params["allow_rolled_back"]:
        skipped = find_rolled_back(device.sysroot, str(image.digest))
    changed = changed and skipped is None
    return changed, {
        "changed": changed,
        "image": str(image.name),
        "imageDigest": str(image.digest),
        "version": image.version,
        "rolledBack": skipped.to_json() if skipped else None,
    }


def stage(module, device, root, name):
    from pathlib import Path

    from atoll.cli.host import guard_staging
    from atoll.sysroot.etcmerge import EtcMergeStrategy

    params = module.params
    policy = params["policy"]
    guard_staging(
        device,
        root,
        policy=None if policy is None else Path(policy),
        follow_tag=name is None,
        allow_downgrade=params["allow_downgrade"],
    )
    result = device.stage(
        name,
        download_only=params["download_only"],
        allow_no_kernel=params["allow_no_kernel"],
        etc_strategy=EtcMergeStrategy(params["etc_merge"]),
        allow_rolled_back=params["allow_rolled_back"],
    )
    return result.changed, result.to_json()


def running_inside(device):
    from atoll.cli.host import running_inside as inside_booted

    return inside_booted(device)


def apply_directory(device):
    """A directory sysroot: finalize and boot it, with its health checks, as the CLI does."""
    from atoll.health.assess import assess_boot, check_assessable

    check_assessable(device)
    device.finalize()
    device.boot()
    return assess_boot(device, inside=False).report.outcome.value


def main_body(module):
    params = module.params
    device, root = open_device(params)
    state = params["state"]
    result = {"changed": False, "reboot_required": False}
    if state == "staged":
        name = image_name(params)
        if module.check_mode:
            changed, data = check_stage(module, device, name)
        else:
            changed, data = stage(module, device, root, name)
        result["changed"] = changed
        result["stage"] = data
        staged = device.state().staged
        if params["apply"] and (staged is not None or (module.check_mode and changed)):
            if running_inside(device) or module.check_mode:
                result["reboot_required"] = True
            else:
                result["boot"] = apply_directory(device)
                result["changed"] = True
    elif state == "rolled_back":
        current = device.state()
        if current.staged is None and current.rollback_queued:
            result["next"] = current.default.to_json()
        else:
            result["changed"] = True
            if not module.check_mode:
                result["next"] = device.rollback().to_json()
    elif state in ("pinned", "unpinned"):
        from atoll.sysroot.state import select_deployment

        wanted = state == "pinned"
        chosen = select_deployment(device.state(), params["deployment"])
        if chosen.origin.pinned != wanted:
            result["changed"] = True
            if not module.check_mode:
                chosen = device.set_pinned(params["deployment"], wanted)
        result["deployment"] = chosen.to_json()
    result["status"] = status(device)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(
                type="str",
                choices=["staged", "rolled_back", "pinned", "unpinned", "status"],
                default="staged",
            ),
            image=dict(type="str"),
            apply=dict(type="bool", default=False),
            download_only=dict(type="bool", default=False),
            allow_downgrade=dict(type="bool", default=False),
            allow_rolled_back=dict(type="bool", default=False),
            allow_no_kernel=dict(type="bool", default=False),
            etc_merge=dict(type="str", choices=["keep-local", "keep-new", "fail"], default="keep-local"),
            deployment=dict(type="str"),
            auth_file=dict(type="path"),
            policy=dict(type="path"),
            sysroot=dict(type="path", default="/sysroot"),
        ),
        mutually_exclusive=[("apply", "download_only")],
        supports_check_mode=True,
    )
    run_module(module, main_body)


if __name__ == "__main__":
    main()
