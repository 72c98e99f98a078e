#!/usr/bin/python
# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: updates
short_description: The automatic OS update policy of an atoll device (/etc/atoll/updates.toml)
description:
  - Writes C(/etc/atoll/updates.toml), the file the device's update timer follows,
    after atoll's own parser has accepted it; a value atoll would refuse fails the
    task with atoll's message and leaves the file as it was.
  - See docs/updates.md in atoll for what each setting does.
version_added: 0.1.0
author: atoll developers (@atoll)
options:
  state:
    description: V(absent) removes the file (the device then does nothing on its own).
    type: str
    choices: [present, absent]
    default: present
  policy:
    description: What the device does on its own.
    type: str
    choices: [none, check, stage, apply]
    default: none
  download_window:
    description: Cron expression, when checks and downloads may run (default any time).
    type: str
  download_timezone:
    description: IANA time zone of O(download_window).
    type: str
  random_delay:
    description: This device opens its download window up to this much later, for example C(30m).
    type: str
  rate_limit:
    description: Cap on the download rate, for example C(2MiB/s).
    type: str
  apply_window:
    description: Cron expression, when a staged update may be applied (a reboot).
    type: str
  apply_timezone:
    description: IANA time zone of O(apply_window).
    type: str
  inhibitor_files:
    description: Absolute paths; a reboot waits while one exists.
    type: list
    elements: str
  inhibitor_commands:
    description: Commands; a reboot waits while one exits non-zero.
    type: list
    elements: str
  max_signature_age:
    description: Refuse an image whose newest valid signature is older than this, for example C(7d).
    type: str
  allow_downgrade:
    description: Let an upgrade follow the tag to an older version.
    type: bool
extends_documentation_fragment:
  - atoll.edge.edge.root
"""

EXAMPLES = r"""
- name: Stage updates at night, reboot into them on Sunday
  atoll.edge.updates:
    policy: apply
    download_window: "* 2-4 * * *"
    download_timezone: Europe/Berlin
    random_delay: 30m
    apply_window: "* 3 * * sun"
    inhibitor_files: [/run/atoll/inhibit-reboot]
"""

RETURN = r"""
path:
  description: The file's path on the managed host.
  returned: always
  type: str
config:
  description: The policy as atoll reads it (the C(config) of C(atoll updates status --json)).
  returned: always
  type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.atoll.edge.plugins.module_utils.edge import (
    ensure_file,
    inside,
    new_diff,
    render_diff,
    run_module,
)

CONFIG_PATH = "/etc/atoll/updates.toml"

#: (section, key in the file, module option), in the file's order.
SETTINGS = (
    (None, "policy", "policy"),
    ("download", "window", "download_window"),
    ("download", "timezone", "download_timezone"),
    ("download", "random_delay", "random_delay"),
    ("download", "rate_limit", "rate_limit"),
    ("apply", "window", "apply_window"),
    ("apply", "timezone", "apply_timezone"),
    ("inhibitors", "files", "inhibitor_files"),
    ("inhibitors", "commands", "inhibitor_commands"),
    ("trust", "max_signature_age", "max_signature_age"),
    ("trust", "allow_downgrade", "allow_downgrade"),
)


def toml_value(value):
    # JSON strings, lists of strings and booleans are valid TOML as written.
    return json.dumps(value, ensure_ascii=True)


def render(params):
    lines = ["# Written by atoll.edge.updates; see docs/updates.md"]
    section = None
    for table, key, option in SETTINGS:
        value = params[option]
        if value is None:
            continue
        if table != section:
            lines += ["", "[%s]" % table]
            section = table
        lines.append("%s = %s" % (key, toml_value(value)))
    return "\n".join(lines) + "\n"


def main_body(module):
    from pathlib import Path

    from atoll.updates import UpdatesConfig, parse_config

    path = inside(module.params["root"], CONFIG_PATH)
    diff = new_diff()
    if module.params["state"] == "absent":
        text = None
        config = UpdatesConfig()
    else:
        text = render(module.params)
        config = parse_config(text, Path(path))  # atoll's error names the file and the key
    changed = ensure_file(module, path, text, diff=diff)
    data = config.to_json()
    data["path"] = path if text is not None else None
    return {"changed": changed, "path": path, "config": data, "diff": render_diff(diff)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            policy=dict(type="str", choices=["none", "check", "stage", "apply"], default="none"),
            download_window=dict(type="str"),
            download_timezone=dict(type="str"),
            random_delay=dict(type="str"),
            rate_limit=dict(type="str"),
            apply_window=dict(type="str"),
            apply_timezone=dict(type="str"),
            inhibitor_files=dict(type="list", elements="str"),
            inhibitor_commands=dict(type="list", elements="str"),
            max_signature_age=dict(type="str"),
            allow_downgrade=dict(type="bool"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    run_module(module, main_body)


if __name__ == "__main__":
    main()
