"""atoll: image mode for Linux."""

__version__ = "0.1.0"
