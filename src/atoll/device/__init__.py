"""The device in its second setting: a deployment booted as a container (see DESIGN.md)."""

from atoll.device.nspawn import (
    EXIT_REBOOT,
    ContainerBoot,
    DeviceBootOutcome,
    boot_container,
    nspawn_command,
    outcome_of,
)

__all__ = [
    "EXIT_REBOOT",
    "ContainerBoot",
    "DeviceBootOutcome",
    "boot_container",
    "nspawn_command",
    "outcome_of",
]
