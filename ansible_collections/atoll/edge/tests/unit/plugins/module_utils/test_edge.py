# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os

from ansible_collections.atoll.edge.plugins.module_utils.edge import (
    ensure_file,
    inside,
    new_diff,
    render_diff,
)


class Task:
    """What ensure_file reads of an AnsibleModule."""

    def __init__(self, check_mode):
        self.check_mode = check_mode


def test_check_mode_reports_a_change_and_writes_nothing(tmp_path):
    path = str(tmp_path / "etc" / "a.conf")
    assert ensure_file(Task(True), path, "x = 1\n")
    assert not os.path.exists(path)
    assert ensure_file(Task(False), path, "x = 1\n")
    assert not ensure_file(Task(False), path, "x = 1\n")


def test_a_mode_change_is_a_change(tmp_path):
    path = str(tmp_path / "key")
    ensure_file(Task(False), path, "k\n", 0o644)
    assert ensure_file(Task(False), path, "k\n", 0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_secret_never_shows_in_the_diff(tmp_path):
    path = str(tmp_path / "client.key")
    diff = new_diff()
    ensure_file(Task(False), path, "PRIVATE KEY 1\n", 0o600, diff, secret=True)
    ensure_file(Task(False), path, "PRIVATE KEY 2\n", 0o600, diff, secret=True)
    shown = render_diff(diff)
    assert "PRIVATE" not in shown["before"] + shown["after"]
    assert "(secret)" in shown["after"]


def test_absent_removes_the_file(tmp_path):
    path = tmp_path / "a.conf"
    path.write_text("x")
    os.chmod(path, 0o644)
    assert ensure_file(Task(False), str(path), None)
    assert not path.exists()
    assert not ensure_file(Task(False), str(path), None)


def test_a_symlink_in_the_root_does_not_lead_out_of_it(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # /etc/containers -> /elsewhere: absolute, as the system at root sees it
    os.symlink("/elsewhere", str(root / "etc" / "containers"))
    assert inside(str(root), "/etc/containers/auth.json") == str(root / "elsewhere" / "auth.json")
    assert inside("/", "/etc/containers/auth.json") == "/etc/containers/auth.json"
