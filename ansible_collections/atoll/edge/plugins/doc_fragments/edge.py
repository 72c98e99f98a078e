# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Modules that write files in the managed system's root.
    ROOT = r"""
options:
  root:
    description:
      - The managed system's root directory; every path is taken as seen from it.
      - On a directory sysroot, the booted deployment (C(ansible_facts.atoll.root)).
    type: path
    default: /
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
"""

    # Modules that work on the device's sysroot.
    SYSROOT = r"""
options:
  sysroot:
    description: The device's sysroot.
    type: path
    default: /sysroot
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
"""

    # Modules that ask the manager of the workloads.
    MANAGER = r"""
options:
  manager:
    description:
      - Who runs the workloads. V(auto) chooses atoll's supervisor when its control
        socket exists, else systemd when it runs; V(none) never asks a manager.
    type: str
    choices: [auto, systemd, supervisor, none]
    default: auto
  state_dir:
    description: The supervisor's state directory.
    type: path
    default: /run/atoll/workloads
"""
