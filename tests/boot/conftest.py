"""Fixtures of the boot tests: two versions of an OS image in an OCI layout."""

from helpers.osimage import images

__all__ = ["images"]
