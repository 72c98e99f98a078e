"""Settings shared by every transport: credentials, TLS, platform, parallelism.

One :class:`SystemContext` is built by the command line (or a test) and
passed down; nothing in ``atoll.oci`` reads the environment on import.
"""

# No "from __future__ import annotations" here: NamedTuple types each field from
# its annotation, and compiles a string one when the class is made (about 20 µs a
# field, at every start of an image copy; tests/cli/test_imports.py).
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from atoll.oci.manifest import Platform


class SystemContext(NamedTuple):
    """Where a command finds credentials, TLS files and settings (skopeo's global options)."""

    #: Explicit auth.json (``--authfile``); otherwise the standard search path.
    authfile: Path | None = None
    #: ``user:password`` given on the command line (``--creds``).
    credentials: str | None = None
    #: ``False`` disables TLS verification and allows plain HTTP for every
    #: registry (``--tls-verify=false``); ``None`` follows registries.conf.
    tls_verify: bool | None = None
    #: Directory with ``*.crt`` CA files (``--cert-dir``); otherwise certs.d.
    cert_dir: Path | None = None
    #: registries.conf to read; otherwise ``$CONTAINERS_REGISTRIES_CONF`` or /etc.
    registries_conf: Path | None = None
    #: The root of the system whose configuration applies (a directory sysroot's
    #: deployment): registries.conf and certs.d are read inside it, symlinks followed
    #: as a chroot would, and neither the environment nor the user's ~/.config is
    #: consulted for them.  None: the running system's own paths.
    root: Path | None = None
    #: Platform wanted from an index; None means the host's.
    platform: Platform | None = None
    #: How many blobs move at once.
    parallel: int = 6
    #: Attempts for one request before giving up (429, 5xx, broken connection).
    retries: int = 5
    #: First backoff between attempts, in seconds; doubles each time.
    retry_delay: float = 0.5
    #: Seconds to wait for a server to answer.
    timeout: float = 60.0
    #: Cap on blob downloads from a registry, in bytes per second, shared by the
    #: parallel downloads of one registry client (None: no cap).
    rate_limit: int | None = None
    #: Where an ``oci-archive:`` or ``containers-storage:`` transport stages files.
    tmpdir: Path | None = None
    user_agent: str = "atoll"
    #: The environment: the process's own (read when asked) unless one is given.
    environ: Mapping[str, str] = os.environ

    def wanted_platform(self) -> Platform:
        return self.platform or Platform.host()
