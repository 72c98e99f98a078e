# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every atoll.edge module shares: importing atoll on the managed host,
turning atoll's errors into a module failure with atoll's one-line message,
paths inside the managed system's root, and idempotent file writes that
honour check mode and diff mode."""

from __future__ import annotations

import os
import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    from atoll.errors import AtollError
    from atoll.fsutil import write_atomic
    from atoll.health.checks import resolve_in_root
except ImportError:
    ATOLL_IMPORT_ERROR = traceback.format_exc()
    AtollError = Exception
else:
    ATOLL_IMPORT_ERROR = None


def require_atoll(module):
    """Fail the task when atoll cannot be imported by the module's Python."""
    if ATOLL_IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib(
                "atoll", url="install atoll into the Python that runs the module"
            ),
            exception=ATOLL_IMPORT_ERROR,
        )


def fail_with(module, exc, **result):
    """The task fails with atoll's own message, its exit code and its hint."""
    module.fail_json(
        msg=str(exc),
        atoll_exit_code=getattr(exc, "exit_code", 1),
        hint=getattr(exc, "hint", None),
        **result
    )


def run_module(module, body):
    """Run ``body(module)`` (it returns the result dict) and exit with it; an
    atoll error fails the task with atoll's one-line message."""
    require_atoll(module)
    try:
        result = body(module)
    except AtollError as exc:
        fail_with(module, exc)
    module.exit_json(**result)


def system_root(module):
    """The managed system's root: the ``root`` option, else ``/``."""
    return module.params.get("root") or "/"


def inside(root, path):
    """The host path of *path* as seen from the system at *root*: symlinks are
    followed as a chroot would, so nothing is written outside *root*."""
    if root in ("", "/"):
        return path
    from pathlib import Path

    return str(resolve_in_root(Path(root), path))


SYSTEMD_RUNTIME_DIR = "/run/systemd/system"


def manager_for(params, root):
    """Who runs the workloads of the system at *root*: the supervisor when its control
    socket exists, else systemd when it runs there, else None (``manager`` option)."""
    from pathlib import Path

    from atoll.workloads.control import SupervisorClient, control_socket
    from atoll.workloads.systemd import SystemdManager

    choice = params["manager"]
    state_dir = Path(params["state_dir"])
    if choice == "none":
        return None
    if choice == "auto":
        if control_socket(state_dir).exists():
            return SupervisorClient(state_dir)
        if root in ("", "/") and os.path.isdir(SYSTEMD_RUNTIME_DIR):
            return SystemdManager()
        return None
    if choice == "supervisor":
        return SupervisorClient(state_dir)
    return SystemdManager()


def read_text(path):
    """The file's text, or None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8")
    except FileNotFoundError:
        return None


def ensure_file(module, path, content, mode=0o644, diff=None, secret=False):
    """Make *path* hold *content* (None: make it absent).  Returns True when it
    changed or would change; nothing is written in check mode.  *diff* (a dict
    with ``before`` and ``after`` lists) gets this file's diff unless *secret*."""
    from pathlib import Path

    before = read_text(path)
    mode_now = None
    if before is not None:
        mode_now = os.stat(path).st_mode & 0o7777
    if content is None:
        changed = before is not None
    else:
        changed = before != content or mode_now != mode
    if diff is not None and changed:
        shown_before = "(secret)\n" if secret and before is not None else before or ""
        shown_after = "(secret)\n" if secret and content is not None else content or ""
        diff["before"].append(path + ":\n" + shown_before)
        diff["after"].append(path + ":\n" + shown_after)
    if changed and not module.check_mode:
        if content is None:
            os.unlink(path)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # A private file is private from its first byte, not from the chmod.
            umask = os.umask(0o077) if not mode & 0o077 else None
            try:
                write_atomic(Path(path), content.encode("utf-8"), mode)
            finally:
                if umask is not None:
                    os.umask(umask)
    return changed


def new_diff():
    return {"before": [], "after": []}


def render_diff(diff):
    """A collected diff as Ansible's ``diff`` return value."""
    return {"before": "".join(diff["before"]), "after": "".join(diff["after"])}
