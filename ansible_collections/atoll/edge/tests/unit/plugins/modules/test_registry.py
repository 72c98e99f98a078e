# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from pathlib import Path

from atoll.oci.registries_conf import parse_registries_conf
from ansible_collections.atoll.edge.plugins.modules.registry import (
    drop_in_name,
    main_body,
    registries_conf_text,
)


def test_the_drop_in_reads_back_as_written():
    text = registries_conf_text(
        "registry.lab:5000", {"insecure": True, "blocked": False, "mirrors": ["mirror.lab/x"]}
    )
    [entry] = parse_registries_conf(text, Path("50.conf"))
    assert (entry.location, entry.insecure, entry.blocked) == ("registry.lab:5000", True, False)
    assert '[[registry.mirror]]\nlocation = "mirror.lab/x"' in text


def test_no_setting_no_drop_in():
    assert registries_conf_text("r.lab", {"insecure": None, "blocked": None, "mirrors": None}) is None


def test_a_quote_in_the_name_stays_in_its_string():
    text = registries_conf_text('r.lab"\nblocked = true', {"insecure": True, "blocked": None, "mirrors": []})
    [entry] = parse_registries_conf(text, Path("50.conf"))
    assert entry.location == 'r.lab"\nblocked = true' and not entry.blocked
    assert drop_in_name("r.lab:5000/../x") == "50-atoll-edge-r.lab_5000_.._x.conf"


def test_a_location_is_the_prefix_s_own_entry(tmp_path):
    given = dict(registry="example.com/foo", location="internal.lab:5000/bar", insecure=True)
    result = main_body(Task(params_for(tmp_path, **given)))
    path = Path(result["registries_conf"])
    assert path.name == "50-atoll-edge-example.com_foo.conf"
    [entry] = parse_registries_conf(path.read_text(), path)
    assert (entry.prefix, entry.location, entry.insecure) == ("example.com/foo", "internal.lab:5000/bar", True)
    assert not main_body(Task(params_for(tmp_path, **given)))["changed"]


class Task:
    """What main_body reads of an AnsibleModule."""

    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode


def params_for(root, **given):
    params = {
        "registry": "registry.lab:5000",
        "state": "present",
        "username": None,
        "password": None,
        "auth_file": "/etc/containers/auth.json",
        "ca_cert": None,
        "client_cert": None,
        "client_key": None,
        "certs_dir": "/etc/containers/certs.d",
        "insecure": None,
        "blocked": None,
        "mirrors": None,
        "location": None,
        "registries_conf_dir": "/etc/containers/registries.conf.d",
        "root": str(root),
    }
    params.update(given)
    return params


def test_tls_files_in_the_certs_d_layout(tmp_path):
    pems = dict(ca_cert="CA PEM", client_cert="CERT PEM", client_key="KEY PEM")
    result = main_body(Task(params_for(tmp_path, **pems)))
    directory = tmp_path / "etc/containers/certs.d/registry.lab:5000"
    assert result["certs_dir"] == str(directory)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"ca.crt": 0o644, "client.cert": 0o644, "client.key": 0o600}
    assert (directory / "client.key").read_text() == "KEY PEM\n"
    assert "KEY PEM" not in result["diff"]["after"]
    assert not main_body(Task(params_for(tmp_path, **pems)))["changed"]
    gone = main_body(Task(params_for(tmp_path, state="absent")))
    assert gone["changed"] and not directory.exists()
