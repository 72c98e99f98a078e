#!/usr/bin/python
# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry
short_description: Registry access for atoll and podman, credentials, TLS and registries.conf
description:
  - Stores credentials for a registry (or one of its namespaces) in the auth file
    atoll and podman read, writes its TLS material in the C(certs.d) layout, and
    a C(registries.conf.d) drop-in marking it insecure or blocked, naming mirrors,
    or naming the location it is really served from.
  - The files are read back and checked with atoll's own parsers; a file atoll
    would refuse is never left behind.
  - Secrets (O(password), O(client_key)) are never printed, logged or returned; in diff
    mode a private file reads C((secret)) and the auth file's diff names the entry only.
version_added: 0.1.0
author: atoll developers (@atoll)
options:
  registry:
    description:
      - C(HOST[:PORT]), or C(HOST[:PORT]/NAMESPACE) for credentials that apply to
        part of the registry only (TLS files and registries.conf use the host).
    type: str
    required: true
  state:
    description: V(absent) removes what this module manages for the registry.
    type: str
    choices: [present, absent]
    default: present
  username:
    description: User name stored in the auth file (with O(password)).
    type: str
  password:
    description: Password or token stored in the auth file.
    type: str
  auth_file:
    description:
      - The auth file, as seen from O(root).
      - The default is in /etc, so the /etc merge carries it into every new deployment;
        M(atoll.edge.os) and the automatic-update timer read it.
    type: path
    default: /etc/containers/auth.json
  ca_cert:
    description: PEM text of a CA to trust for this registry (C(certs.d/HOST/ca.crt)).
    type: str
  client_cert:
    description: PEM text of a client certificate (C(certs.d/HOST/client.cert)); needs O(client_key).
    type: str
  client_key:
    description: PEM text of the client certificate's key (C(certs.d/HOST/client.key), mode 0600).
    type: str
  certs_dir:
    description: The C(certs.d) directory, as seen from O(root).
    type: path
    default: /etc/containers/certs.d
  insecure:
    description: Allow plain HTTP and unverified TLS for this registry (registries.conf).
    type: bool
  blocked:
    description: Refuse to pull from or push to this registry (registries.conf).
    type: bool
  mirrors:
    description: Mirror locations (C([[registry.mirror]])) that podman and atoll pull from first, in order, before the registry.
    type: list
    elements: str
  location:
    description:
      - Where O(registry) really is (C(HOST[:PORT][/NAMESPACE])), the C(location) of a
        registries.conf entry whose C(prefix) is O(registry) as given. Podman and atoll
        pull C(REGISTRY/NAME) from C(LOCATION/NAME); pushes still go to O(registry).
      - With it, O(insecure), O(blocked) and O(mirrors) apply to that prefix, in a drop-in
        of its own; without it, to the whole host.
    type: str
  registries_conf_dir:
    description: The C(registries.conf.d) directory, as seen from O(root).
    type: path
    default: /etc/containers/registries.conf.d
extends_documentation_fragment:
  - atoll.edge.edge.root
"""

EXAMPLES = r"""
- name: Credentials and the CA for the site registry
  atoll.edge.registry:
    registry: registry.example.com:5000
    username: device
    password: "{{ vault_registry_password }}"
    ca_cert: "{{ lookup('file', 'site-ca.pem') }}"
"""

RETURN = r"""
auth_file:
  description: The auth file's path on the managed host.
  returned: always
  type: str
certs_dir:
  description: The registry's certificate directory on the managed host.
  returned: always
  type: str
registries_conf:
  description: The registries.conf drop-in's path on the managed host.
  returned: always
  type: str
"""

import json
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.atoll.edge.plugins.module_utils.edge import (
    ensure_file,
    inside,
    new_diff,
    render_diff,
    run_module,
)


def drop_in_name(host):
    return "50-atoll-edge-" + re.sub(r"[^A-Za-z0-9.-]", "_", host) + ".conf"


def toml_string(value):
    # JSON string syntax (with \uXXXX escapes) is valid TOML basic-string syntax.
    return json.dumps(value, ensure_ascii=True)


def registries_conf_text(host, params, key=None):
    """The drop-in for *host* (for the prefix *key* when a location is given), or
    None when no registries.conf setting is asked for."""
    location = params.get("location")
    if params["insecure"] is None and params["blocked"] is None and not params["mirrors"] and not location:
        return None
    lines = ["# Written by atoll.edge.registry", "[[registry]]"]
    if location:
        lines += ["prefix = " + toml_string(key or host), "location = " + toml_string(location)]
    else:
        lines.append("location = " + toml_string(host))
    for key in ("insecure", "blocked"):
        if params[key] is not None:
            lines.append("%s = %s" % (key, "true" if params[key] else "false"))
    for mirror in params["mirrors"] or []:
        lines += ["", "[[registry.mirror]]", "location = " + toml_string(mirror)]
    return "\n".join(lines) + "\n"


def check_registries_conf(path, text):
    """atoll's parser reads the drop-in back; it raises atoll's error when it would refuse it."""
    from pathlib import Path

    from atoll.oci.registries_conf import parse_registries_conf

    parse_registries_conf(text, Path(path))


def ensure_credentials(module, path, key, diff):
    """Make the auth file hold USERNAME:PASSWORD for *key* (None: no entry)."""
    from pathlib import Path

    from atoll.oci.auth import read_auth_entries, normalize_key, remove_login, write_login
    from atoll.oci.context import SystemContext

    params = module.params
    wanted = None
    if params["state"] == "present" and params["username"] is not None:
        wanted = (params["username"], params["password"])
    entries = read_auth_entries(Path(path))
    found = entries.get(normalize_key(key))
    now = (found.username, found.password) if found is not None else None
    if now == wanted:
        return False
    if diff is not None:
        diff["before"].append("%s: %s\n" % (path, "entry for %s (secret)" % key if now else "no entry for %s" % key))
        diff["after"].append("%s: %s\n" % (path, "entry for %s (secret)" % key if wanted else "no entry for %s" % key))
    if module.check_mode:
        return True
    ctx = SystemContext(authfile=Path(path))
    if wanted is None:
        remove_login(key, ctx)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_login(key, wanted[0], wanted[1], ctx)
    return True


def ensure_tls(module, directory, diff):
    params = module.params
    present = params["state"] == "present"
    changed = False
    files = (("ca.crt", "ca_cert", 0o644, False), ("client.cert", "client_cert", 0o644, False),
             ("client.key", "client_key", 0o600, True))
    for name, option, mode, secret in files:
        content = params[option] if present else None
        if present and content is None:
            continue  # not managed in this task
        if content is not None and not content.endswith("\n"):
            content += "\n"
        changed |= ensure_file(module, os.path.join(directory, name), content, mode, diff, secret)
    if not module.check_mode and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
    if present and not module.check_mode and os.path.isdir(directory):
        # atoll refuses a certificate without its key and the reverse: fail now, not at the next pull.
        from pathlib import Path

        from atoll.oci.registries_conf import find_tls_files
        from atoll.oci.context import SystemContext

        find_tls_files(Path(directory).name, SystemContext(cert_dir=Path(directory)))
    return changed


def main_body(module):
    params = module.params
    root = params["root"]
    key = params["registry"].rstrip("/")
    host = key.split("/", 1)[0]
    auth_file = inside(root, params["auth_file"])
    certs_dir = inside(root, os.path.join(params["certs_dir"], host))
    # An entry with a location is the prefix's own; the others are the host's.
    conf_name = drop_in_name(key if params["location"] else host)
    conf_path = inside(root, os.path.join(params["registries_conf_dir"], conf_name))
    diff = new_diff()

    changed = ensure_credentials(module, auth_file, key, diff)
    changed |= ensure_tls(module, certs_dir, diff)
    conf = registries_conf_text(host, params, key) if params["state"] == "present" else None
    if conf is not None:
        check_registries_conf(conf_path, conf)
    if conf is not None or params["state"] == "absent":
        changed |= ensure_file(module, conf_path, conf, diff=diff)
    return {
        "changed": changed,
        "auth_file": auth_file,
        "certs_dir": certs_dir,
        "registries_conf": conf_path,
        "diff": render_diff(diff),
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            registry=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            auth_file=dict(type="path", default="/etc/containers/auth.json"),
            ca_cert=dict(type="str"),
            client_cert=dict(type="str"),
            client_key=dict(type="str", no_log=True),
            certs_dir=dict(type="path", default="/etc/containers/certs.d"),
            insecure=dict(type="bool"),
            blocked=dict(type="bool"),
            mirrors=dict(type="list", elements="str"),
            location=dict(type="str"),
            registries_conf_dir=dict(type="path", default="/etc/containers/registries.conf.d"),
            root=dict(type="path", default="/"),
        ),
        required_together=[("username", "password"), ("client_cert", "client_key")],
        supports_check_mode=True,
    )
    run_module(module, main_body)


if __name__ == "__main__":
    main()
