"""Building images: Containerfile and blueprint builds with podman, the
bootable-image lint, and disk images.

The modules are imported where they are used (``atoll.build.blueprint``,
``atoll.build.containerfile``, ``atoll.build.podman_build``,
``atoll.build.lint``, …); this package imports none of them.
"""
