"""Per-registry settings from containers-registries.conf(5), and TLS files from certs.d.

Which file is read::

    ctx.registries_conf                       (a test or --registries-conf)
    else $CONTAINERS_REGISTRIES_CONF          (from ctx.environ)
    else /etc/containers/registries.conf
    then DIR/registries.conf.d/*.conf         (DIR is the file's directory; name order)

With ``ctx.root`` set (another system's tree, such as a directory sysroot's
deployment), the environment is not consulted: the file is ROOT's
/etc/containers/registries.conf, symlinks resolved inside ROOT.

The v2 format, which atoll reads (the v1 ``[registries.insecure]`` and
``[registries.block]`` lists are read too, as containers/image does)::

    [[registry]]
    prefix = "registry.example.com/team"      # optional; defaults to location
    location = "registry.lan/example-team"    # where the prefix really is
    insecure = true                           # plain HTTP allowed, TLS not verified
    blocked = false                           # refuse to pull from or push to it
    mirror-by-digest-only = false             # true: mirrors default to digest-only

    [[registry.mirror]]                       # tried in order, before the primary
    location = "mirror.example.net/team"      # replaces the prefix in the pulled name
    insecure = false                          # the mirror's own TLS setting
    pull-from-mirror = "all"                  # all | digest-only | tag-only

Mirrors and ``location`` serve reads only (see :meth:`RegistriesConf.pull_sources`,
used by every reader through :mod:`atoll.oci.pullsource`): a name's prefix is
replaced by each mirror's location, then by the entry's own (the primary).  A
``digest-only`` mirror is tried only for references by digest, a ``tag-only``
one only for references by tag.  A wildcard prefix without a location rewrites
nothing.  A blocked entry's mirrors are not used and its names not rewritten.

A prefix matches a reference when the reference starts with it and the next
character ends the name part (end, ``/``, ``:`` or ``@``); ``*.example.com``
matches every subdomain.  The longest matching prefix wins.  A drop-in file
replaces entries with the same prefix and appends the others.

TLS files for a registry ``HOST[:PORT]`` come from ``ctx.cert_dir`` if given,
else from the first of these directories that exists::

    $XDG_CONFIG_HOME/containers/certs.d/HOST[:PORT]/   (default ~/.config)
    /etc/containers/certs.d/HOST[:PORT]/
    /etc/docker/certs.d/HOST[:PORT]/

With ``ctx.root`` set, only ROOT's /etc/containers/certs.d and
/etc/docker/certs.d are searched.  Every ``*.crt`` there is a CA trusted in
addition to the system store; each ``NAME.cert`` with its ``NAME.key`` is a
client certificate.

Parsed files are kept between runs in ``$XDG_CACHE_HOME/atoll/registries-conf.json``
(default ``~/.cache``), so that a command does not load :mod:`tomllib` (with
``datetime`` and ``string``: 3-4 ms, the largest part of the start-up of an image
copy that is left to cut) to read files that have not changed::

    {"version": 1,
     "files": {"/etc/containers/registries.conf":
                 {"key": [st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns],
                  "doc": {...the file's TOML document...}}}}

A file's document is taken from the cache only when its key is the ``fstat`` of
the file just opened: any write changes the ctime, which no one but root can set
back.  A file changed less than :data:`SETTLED_NS` before it was read is not
kept: file times move in clock ticks, and a second write of the same size within
the tick of the first would keep the key (git's "racily clean" entries).  The
cache is read only when it is the user's own and no one else may write it; it
is written (mode 0600, atomically) when a file was parsed, with the
files of this run only.  The checks of the document's entries run on every
read, cached or not.  Anything wrong with the cache (absent, unreadable, not
ours, another version, a document JSON cannot hold) means parsing the file, as
without it.
"""

# No "from __future__ import annotations" here: NamedTuple types each field from
# its annotation, and compiles a string one when the class is made (about 20 µs a
# field, at every start of an image copy; tests/cli/test_imports.py).
import json
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from atoll.errors import InvalidInputError
from atoll.fsutil import resolve_in_root, write_atomic
from atoll.oci.context import SystemContext

DEFAULT_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
DROP_IN_DIR = "registries.conf.d"
SYSTEM_CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


class Mirror(NamedTuple):
    """One ``[[registry.mirror]]`` table."""

    location: str
    insecure: bool = False
    #: ``all``, ``digest-only`` or ``tag-only``.
    pull_from_mirror: str = "all"

    def serves(self, *, by_digest: bool) -> bool:
        wanted = "digest-only" if by_digest else "tag-only"
        return self.pull_from_mirror in ("all", wanted)


class PullSource(NamedTuple):
    """Where one attempt at a pull goes: ``registry`` and ``repository``."""

    registry: str
    repository: str
    #: A mirror's own ``insecure``; None for the primary (registries.conf decides).
    insecure: bool | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


class RegistryEntry(NamedTuple):
    """One ``[[registry]]`` table."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    #: The file that declared it, for messages.
    source: Path | None = None

    def matches(self, name: str) -> bool:
        """Does this entry apply to *name* (a host or ``host/repo[:tag]``)?"""
        if self.prefix.startswith("*."):
            host = name.split("/", 1)[0].split(":", 1)[0]
            return host.endswith(self.prefix[1:])
        if not name.startswith(self.prefix):
            return False
        rest = name[len(self.prefix) :]
        return not rest or rest[0] in "/:@"


class RegistriesConf(NamedTuple):
    """The registries.conf entries in effect, and the files they came from."""

    entries: tuple[RegistryEntry, ...] = ()
    #: Files read, in order (the main file first, then drop-ins).
    sources: tuple[Path, ...] = ()

    def find(self, name: str) -> RegistryEntry | None:
        """The entry with the longest prefix matching *name*, if any."""
        best: RegistryEntry | None = None
        for entry in self.entries:
            if entry.matches(name) and (best is None or _specificity(entry) > _specificity(best)):
                best = entry
        return best

    def is_insecure(self, registry: str) -> bool:
        entry = self.find(registry)
        return entry is not None and entry.insecure

    def is_blocked(self, name: str) -> bool:
        """True if *name* (a registry host or ``host/repository``) is blocked."""
        entry = self.find(name)
        return entry is not None and entry.blocked

    def pull_sources(self, registry: str, repository: str, *, by_digest: bool) -> list[PullSource]:
        """Where a pull of ``registry/repository`` goes, in order: the mirrors that
        serve this kind of reference (by digest or by tag), then the primary at
        the entry's ``location``.  A blocked entry's name is left as it is (the
        client refuses it)."""
        name = f"{registry}/{repository}"
        entry = self.find(name)
        if entry is None or entry.blocked:
            return [PullSource(registry, repository)]
        # The prefix (for a wildcard, the host) is replaced by each location; a
        # location that is the prefix (a wildcard's default) rewrites nothing.
        rest = name[len(registry if entry.prefix.startswith("*.") else entry.prefix) :]
        sources = []
        for mirror in entry.mirrors:
            host, _, path = (mirror.location + rest).partition("/")
            if mirror.serves(by_digest=by_digest) and path:
                sources.append(PullSource(host, path, mirror.insecure))
        primary = PullSource(registry, repository)
        if entry.location != entry.prefix:
            host, _, path = (entry.location + rest).partition("/")
            if not path:
                raise InvalidInputError(
                    f"{entry.source}: location {entry.location!r} of prefix {entry.prefix!r} "
                    f"leaves no repository for {name}"
                )
            primary = PullSource(host, path, entry.insecure)
        return [*sources, primary]


def _specificity(entry: RegistryEntry) -> int:
    # A wildcard loses against an exact host of the same length.
    return len(entry.prefix) * 2 - (1 if entry.prefix.startswith("*.") else 0)


def registries_conf_path(ctx: SystemContext) -> Path:
    if ctx.registries_conf is not None:
        return ctx.registries_conf
    if ctx.root is not None:
        return _in_root(ctx.root, DEFAULT_REGISTRIES_CONF)
    from_env = ctx.environ.get("CONTAINERS_REGISTRIES_CONF")
    if from_env:
        return Path(from_env)
    return DEFAULT_REGISTRIES_CONF


def _in_root(root: Path, path: Path) -> Path:
    try:
        return resolve_in_root(root, str(path))
    except OSError as exc:
        raise InvalidInputError(f"{root / str(path).lstrip('/')}: {exc.strerror}") from None


def load_registries_conf(ctx: SystemContext) -> RegistriesConf:
    """Read the registries.conf *ctx* names and its drop-ins; missing files are empty."""
    main = registries_conf_path(ctx)
    files = [main] if main.is_file() else []
    drop_ins = main.parent / DROP_IN_DIR
    if ctx.registries_conf is None and ctx.root is not None:
        drop_ins = _in_root(ctx.root, DEFAULT_REGISTRIES_CONF.parent / DROP_IN_DIR)
    if drop_ins.is_dir():
        files.extend(sorted(p for p in drop_ins.glob("*.conf") if p.is_file()))
    by_prefix: dict[str, RegistryEntry] = {}
    cache = _ParsedFiles(_cache_file(ctx)) if files else None
    for path in files:
        assert cache is not None
        for entry in _entries(cache.document(path), path):
            # Replacing a key keeps its first position, so order stays stable.
            by_prefix[entry.prefix] = entry
    if cache is not None:
        cache.save()
    return RegistriesConf(tuple(by_prefix.values()), tuple(files))


def parse_registries_conf(text: str, path: Path) -> list[RegistryEntry]:
    """Entries declared in one file's *text*; *path* is used in messages."""
    return _entries(_parse_toml(text, path), path)


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    # Imported when there is a file to parse (tomllib loads datetime and string).
    import tomllib

    from atoll import stricttoml

    try:
        return stricttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line N, column M)".
        raise InvalidInputError(
            f"{path}: invalid TOML: {exc}",
            hint="see containers-registries.conf(5) for the format",
        ) from None


def _entries(data: Mapping[str, Any], path: Path) -> list[RegistryEntry]:
    entries = [_v2_entry(table, path, i) for i, table in enumerate(_tables(data, path))]
    entries.extend(_v1_entries(data, path))
    return entries


# --- parsed files kept between runs (see the module's docstring) -------------

#: The cache's format; a cache of another version is not read.
CACHE_VERSION = 1
CACHE_NAME = "atoll/registries-conf.json"
#: How long ago a file must have changed for its document to be kept, in ns.
SETTLED_NS = 2_000_000_000


def _cache_file(ctx: SystemContext) -> Path | None:
    base = ctx.environ.get("XDG_CACHE_HOME", "")
    if base.startswith("/"):  # a relative one is to be ignored (XDG base directories)
        return Path(base) / CACHE_NAME
    home = ctx.environ.get("HOME", "")
    return Path(home) / ".cache" / CACHE_NAME if home.startswith("/") else None


class _ParsedFiles:
    """The documents of one load's files: from the cache when unchanged, else parsed."""

    def __init__(self, location: Path | None) -> None:
        self.location = location
        self._cached = _read_cache(location) if location is not None else {}
        self._now: dict[str, dict[str, Any]] = {}
        self._parsed = False

    def document(self, path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                cached = self._cached.get(str(path))
                if cached is not None and cached.get("key") == key:
                    doc = cached.get("doc")
                    if isinstance(doc, dict):
                        self._now[str(path)] = cached
                        return doc
                text = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}: cannot read registries.conf: {exc}") from None
        doc = _parse_toml(text, path)
        if max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - SETTLED_NS:
            self._now[str(path)] = {"key": key, "doc": doc}
            self._parsed = True
        return doc

    def save(self) -> None:
        """Keep this load's documents, if one was parsed (best effort: a cache that
        cannot be written is no error)."""
        if not self._parsed or self.location is None:
            return
        try:
            data = json.dumps({"version": CACHE_VERSION, "files": self._now}, sort_keys=True)
        except (TypeError, ValueError):
            return  # a document with dates or times: parsed every time
        try:
            self.location.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.location, data.encode(), 0o600, durable=False)
        except OSError:
            pass


def _read_cache(location: Path) -> dict[str, dict[str, Any]]:
    try:
        with location.open("rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return {}
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict)}


def _tables(data: Mapping[str, Any], path: Path) -> list[Mapping[str, Any]]:
    tables = data.get("registry", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidInputError(
            f"{path}: 'registry' must be an array of tables, written [[registry]]"
        )
    return tables


def _v2_entry(table: Mapping[str, Any], path: Path, index: int) -> RegistryEntry:
    where = f"{path}: [[registry]] number {index + 1}"
    location = table.get("location", "")
    prefix = table.get("prefix", "")
    for key, value in (("location", location), ("prefix", prefix)):
        if not isinstance(value, str):
            raise InvalidInputError(f"{where}: {key!r} must be a string")
    for key in ("insecure", "blocked", "mirror-by-digest-only"):
        if not isinstance(table.get(key, False), bool):
            raise InvalidInputError(f"{where}: {key!r} must be true or false")
    if not location and not prefix:
        raise InvalidInputError(f"{where}: needs a 'location' or a 'prefix'")
    location = location.removeprefix("https://").removeprefix("http://").rstrip("/")
    prefix = (prefix or location).removeprefix("https://").removeprefix("http://").rstrip("/")
    return RegistryEntry(
        prefix=prefix,
        location=location or prefix,
        insecure=bool(table.get("insecure", False)),
        blocked=bool(table.get("blocked", False)),
        mirrors=_mirrors(table, where),
        source=path,
    )


def _mirrors(table: Mapping[str, Any], where: str) -> tuple[Mirror, ...]:
    mirrors = table.get("mirror", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, dict) for m in mirrors):
        raise InvalidInputError(
            f"{where}: 'mirror' must be an array of tables, [[registry.mirror]]"
        )
    default = "digest-only" if table.get("mirror-by-digest-only", False) else "all"
    found = []
    for i, mirror in enumerate(mirrors):
        at = f"{where}, mirror number {i + 1}"
        location = mirror.get("location")
        if not isinstance(location, str) or not location.strip("/"):
            raise InvalidInputError(f"{at}: needs a 'location' string")
        if not isinstance(mirror.get("insecure", False), bool):
            raise InvalidInputError(f"{at}: 'insecure' must be true or false")
        pull = mirror.get("pull-from-mirror", default)
        if pull not in PULL_FROM_MIRROR:
            raise InvalidInputError(
                f"{at}: 'pull-from-mirror' must be one of {', '.join(PULL_FROM_MIRROR)}"
            )
        location = location.removeprefix("https://").removeprefix("http://").rstrip("/")
        found.append(Mirror(location, bool(mirror.get("insecure", False)), pull))
    return tuple(found)


def _v1_entries(data: Mapping[str, Any], path: Path) -> Iterable[RegistryEntry]:
    section = data.get("registries")
    if not isinstance(section, dict):
        return []
    flags: dict[str, dict[str, bool]] = {}
    for kind, attribute in (("insecure", "insecure"), ("block", "blocked")):
        table = section.get(kind, {})
        hosts = table.get("registries", []) if isinstance(table, dict) else None
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise InvalidInputError(
                f"{path}: [registries.{kind}] registries must be a list of strings"
            )
        for host in hosts:
            flags.setdefault(host, {})[attribute] = True
    return [
        RegistryEntry(
            prefix=host,
            location=host,
            insecure=f.get("insecure", False),
            blocked=f.get("blocked", False),
            source=path,
        )
        for host, f in flags.items()
    ]


# --- TLS --------------------------------------------------------------------


class TLSFiles(NamedTuple):
    """CA certificates and client certificate pairs found for one registry."""

    directory: Path | None
    ca_files: tuple[Path, ...] = ()
    client_pairs: tuple[tuple[Path, Path], ...] = ()


def cert_dir_candidates(registry: str, ctx: SystemContext) -> list[Path]:
    if ctx.cert_dir is not None:
        return [ctx.cert_dir]
    if ctx.root is not None:
        return [_in_root(ctx.root, base / registry) for base in SYSTEM_CERT_DIRS]
    config_home = ctx.environ.get("XDG_CONFIG_HOME") or str(
        Path(ctx.environ.get("HOME") or Path.home()) / ".config"
    )
    user = Path(config_home) / "containers" / "certs.d"
    return [base / registry for base in (user, *SYSTEM_CERT_DIRS)]


def find_tls_files(registry: str, ctx: SystemContext) -> TLSFiles:
    """The TLS files for *registry* (``HOST[:PORT]``), from the first directory that exists."""
    for directory in cert_dir_candidates(registry, ctx):
        if directory.is_dir():
            return _scan_cert_dir(directory)
    return TLSFiles(None)


def _scan_cert_dir(directory: Path) -> TLSFiles:
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError as exc:
        raise InvalidInputError(f"{directory}: cannot list certificate directory: {exc}") from None
    cas = tuple(directory / n for n in names if n.endswith(".crt"))
    pairs: list[tuple[Path, Path]] = []
    for name in names:
        if name.endswith(".cert"):
            key = directory / (name.removesuffix(".cert") + ".key")
            if not key.is_file():
                raise InvalidInputError(
                    f"{directory / name}: client certificate without its key {key.name}"
                )
            pairs.append((directory / name, key))
        elif name.endswith(".key") and name.removesuffix(".key") + ".cert" not in names:
            raise InvalidInputError(
                f"{directory / name}: client key without its certificate "
                f"{name.removesuffix('.key')}.cert"
            )
    return TLSFiles(directory, cas, tuple(pairs))


def ssl_context(registry: str, ctx: SystemContext, *, verify: bool) -> ssl.SSLContext:
    """An SSL context for *registry*: the system CAs plus certs.d, and client certificates.

    With *verify* False the server's certificate is not checked (``insecure``),
    but client certificates are still presented.
    """
    files = find_tls_files(registry, ctx)
    if not verify:
        # Loading the system CA store costs ~50 ms and is useless when nothing is verified.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
        for ca in files.ca_files:
            try:
                context.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInputError(f"{ca}: not a usable CA certificate: {exc}") from None
    for cert, key in files.client_pairs:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInputError(f"{cert}: not a usable client certificate: {exc}") from None
    return context
