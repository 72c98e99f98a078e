from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError
from atoll.oci import registries_conf
from atoll.oci.context import SystemContext
from atoll.oci.registries_conf import (
    find_tls_files,
    load_registries_conf,
    registries_conf_path,
    ssl_context,
)


def _ctx(**kwargs: object) -> SystemContext:
    return SystemContext(environ=dict(os.environ), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def conf_file() -> Path:
    """This test's registries.conf (the hermetic fixture points the environment at it)."""
    return Path(os.environ["CONTAINERS_REGISTRIES_CONF"])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_path_comes_from_context_then_environment(tmp_path: Path, conf_file: Path) -> None:
    explicit = tmp_path / "explicit.conf"
    assert registries_conf_path(_ctx(registries_conf=explicit)) == explicit
    assert registries_conf_path(_ctx()) == conf_file
    no_env = SystemContext(environ={})
    assert registries_conf_path(no_env) == Path("/etc/containers/registries.conf")


def test_insecure_and_blocked_entries(conf_file: Path) -> None:
    _write(
        conf_file,
        """
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
location = "evil.example.com"
blocked = true

[[registry]]
prefix = "quay.io/banned"
location = "quay.io/banned"
blocked = true
""",
    )
    conf = load_registries_conf(_ctx())
    assert conf.is_insecure("127.0.0.1:5000")
    assert not conf.is_insecure("127.0.0.1:5001")
    assert not conf.is_insecure("127.0.0.1")
    assert conf.is_blocked("evil.example.com")
    assert conf.is_blocked("evil.example.com/any/repo")
    assert not conf.is_blocked("evil.example.com.other.org")
    assert conf.is_blocked("quay.io/banned/app")
    assert not conf.is_blocked("quay.io/bannedness")
    assert not conf.is_blocked("quay.io/other")


def test_most_specific_prefix_wins(conf_file: Path) -> None:
    _write(
        conf_file,
        """
[[registry]]
location = "registry.example.com"
insecure = true

[[registry]]
prefix = "registry.example.com/secure"
location = "registry.example.com"
insecure = false

[[registry]]
prefix = "*.example.com"
location = "mirror.example.net"
blocked = true
""",
    )
    conf = load_registries_conf(_ctx())
    assert conf.is_insecure("registry.example.com")
    assert not conf.is_insecure("registry.example.com/secure/app")
    entry = conf.find("registry.example.com/secure/app:1.0")
    assert entry is not None and entry.prefix == "registry.example.com/secure"
    # The wildcard covers other subdomains, but the exact host beats it.
    assert conf.is_blocked("other.example.com")
    assert not conf.is_blocked("registry.example.com")


def test_drop_ins_apply_in_name_order(conf_file: Path) -> None:
    _write(conf_file, '[[registry]]\nlocation = "a.example"\ninsecure = true\n')
    drop_ins = conf_file.parent / "registries.conf.d"
    _write(drop_ins / "20-late.conf", '[[registry]]\nlocation = "b.example"\nblocked = false\n')
    _write(drop_ins / "10-early.conf", '[[registry]]\nlocation = "b.example"\nblocked = true\n')
    _write(drop_ins / "15-a.conf", '[[registry]]\nlocation = "a.example"\ninsecure = false\n')
    _write(drop_ins / "ignored.txt", "this is not TOML [")
    conf = load_registries_conf(_ctx())
    assert not conf.is_blocked("b.example"), "20-late.conf comes last and wins"
    assert not conf.is_insecure("a.example"), "a drop-in overrides the main file"
    assert [p.name for p in conf.sources] == [
        "registries.conf",
        "10-early.conf",
        "15-a.conf",
        "20-late.conf",
    ]


def test_v1_tables_are_read(conf_file: Path) -> None:
    _write(
        conf_file,
        '[registries.insecure]\nregistries = ["old.example:5000"]\n'
        '[registries.block]\nregistries = ["blocked.example"]\n',
    )
    conf = load_registries_conf(_ctx())
    assert conf.is_insecure("old.example:5000")
    assert conf.is_blocked("blocked.example")


def test_missing_file_means_no_entries(tmp_path: Path) -> None:
    conf = load_registries_conf(_ctx(registries_conf=tmp_path / "absent.conf"))
    assert conf.entries == () and conf.sources == ()
    assert not conf.is_insecure("127.0.0.1:5000")


def test_malformed_toml_names_file_and_line(conf_file: Path) -> None:
    path = _write(
        conf_file,
        '[[registry]]\nlocation = "ok.example"\ninsecure = yes please\n',
    )
    with pytest.raises(InvalidInputError) as info:
        load_registries_conf(_ctx())
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)
    assert info.value.exit_code == 4


def test_malformed_drop_in_is_reported(conf_file: Path) -> None:
    bad = _write(conf_file.parent / "registries.conf.d" / "50-bad.conf", "[[registry]\n")
    with pytest.raises(InvalidInputError, match=str(bad)):
        load_registries_conf(_ctx())


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[[registry]]\nlocation = "x.example"\ninsecure = "yes"\n', "'insecure' must be true"),
        ("[[registry]]\nlocation = 5\n", "'location' must be a string"),
        ("[[registry]]\ninsecure = true\n", "needs a 'location' or a 'prefix'"),
        ('registry = "x"\n', "array of tables"),
    ],
)
def test_wrong_types_are_rejected(conf_file: Path, text: str, complaint: str) -> None:
    _write(conf_file, text)
    with pytest.raises(InvalidInputError, match=complaint):
        load_registries_conf(_ctx())


# --- certs.d ------------------------------------------------------------------------


def test_user_certs_d_is_searched_before_system(tmp_path: Path) -> None:
    user_dir = tmp_path / "home" / ".config" / "containers" / "certs.d" / "reg.example:5000"
    _write(user_dir / "ca.crt", "x")
    _write(user_dir / "extra.crt", "x")
    _write(user_dir / "client.cert", "x")
    _write(user_dir / "client.key", "x")
    files = find_tls_files("reg.example:5000", _ctx())
    assert files.directory == user_dir
    assert [p.name for p in files.ca_files] == ["ca.crt", "extra.crt"]
    assert files.client_pairs == ((user_dir / "client.cert", user_dir / "client.key"),)


def test_cert_dir_from_context_replaces_the_search(tmp_path: Path) -> None:
    user_dir = tmp_path / "home" / ".config" / "containers" / "certs.d" / "reg.example"
    _write(user_dir / "ca.crt", "x")
    mine = tmp_path / "mine"
    _write(mine / "mine.crt", "x")
    files = find_tls_files("reg.example", _ctx(cert_dir=mine))
    assert files.ca_files == (mine / "mine.crt",)


def test_no_cert_dir_means_system_store_only() -> None:
    files = find_tls_files("nowhere.invalid:1", _ctx())
    assert files.directory is None and files.ca_files == ()


def test_client_certificate_without_key_is_an_error(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    _write(mine / "client.cert", "x")
    with pytest.raises(InvalidInputError, match=r"without its key client\.key"):
        find_tls_files("reg.example", _ctx(cert_dir=mine))


def test_unusable_ca_file_is_named(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    bad = _write(mine / "ca.crt", "not a certificate")
    with pytest.raises(InvalidInputError, match=str(bad)):
        ssl_context("reg.example", _ctx(cert_dir=mine), verify=True)


def test_ssl_context_trusts_the_ca_in_cert_dir(tmp_path: Path) -> None:
    openssl = "/usr/bin/openssl"
    if not Path(openssl).exists():
        pytest.skip("openssl is not installed")
    mine = tmp_path / "mine"
    mine.mkdir()
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=unit CA"],
        cwd=mine, check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    (mine / "ca.key").unlink()
    verified = ssl_context("reg.example", _ctx(cert_dir=mine), verify=True)
    subjects = [c["subject"] for c in verified.get_ca_certs()]
    assert ((("commonName", "unit CA"),),) in subjects
    assert verified.verify_mode == ssl.CERT_REQUIRED
    unverified = ssl_context("reg.example", _ctx(cert_dir=mine), verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "[" + ".".join(["a"] * 5000) + "]\n",
    ],
)
def test_deep_nesting_is_refused(conf_file: Path, text: str) -> None:
    path = _write(conf_file, text)
    with pytest.raises(InvalidInputError, match="exceeded max depth") as info:
        load_registries_conf(_ctx())
    assert str(path) in str(info.value)


def test_root_is_read_instead_of_the_running_system(tmp_path: Path, conf_file: Path) -> None:
    """A context pointed at another system's root reads that system's registries.conf,
    drop-ins and certs.d, with absolute symlinks resolved inside the root; the
    environment's file and the user's certs.d are not consulted."""
    _write(conf_file, '[[registry]]\nlocation = "host.example"\nblocked = true\n')
    user_certs = Path(os.environ["XDG_CONFIG_HOME"]) / "containers/certs.d/tls.example:5000"
    _write(user_certs / "user.crt", "host user's CA")
    root = tmp_path / "deploy"
    real = root / "usr/etc/containers"
    _write(real / "registries.conf", '[[registry]]\nlocation = "root.example"\nblocked = true\n')
    _write(
        real / "registries.conf.d/10.conf",
        '[[registry]]\nlocation = "d.example"\ninsecure = true\n',
    )
    _write(real / "certs.d/tls.example:5000/ca.crt", "root's CA")
    (root / "etc").mkdir()
    (root / "etc/containers").symlink_to("/usr/etc/containers")
    ctx = _ctx(root=root)
    conf = load_registries_conf(ctx)
    assert conf.is_blocked("root.example") and conf.is_insecure("d.example")
    assert not conf.is_blocked("host.example")
    assert conf.sources == (real / "registries.conf", real / "registries.conf.d/10.conf")
    files = find_tls_files("tls.example:5000", ctx)
    assert files.ca_files == (real / "certs.d/tls.example:5000/ca.crt",)
    assert find_tls_files("tls.example:5000", _ctx()).ca_files == (user_certs / "user.crt",)


def test_mirrors_are_listed_before_the_primary(conf_file: Path) -> None:
    _write(
        conf_file,
        """
[[registry]]
prefix = "quay.io/team"
location = "quay.io/team"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m1.example/cache"
[[registry.mirror]]
location = "m2.example:5000"
insecure = true
pull-from-mirror = "tag-only"

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "local.example/corp"
""",
    )
    conf = load_registries_conf(_ctx())
    by_tag = conf.pull_sources("quay.io", "team/app", by_digest=False)
    assert [(str(s), s.insecure) for s in by_tag] == [
        ("m2.example:5000/app", True),
        ("quay.io/team/app", None),
    ]
    by_digest = conf.pull_sources("quay.io", "team/app", by_digest=True)
    assert [str(s) for s in by_digest] == ["m1.example/cache/app", "quay.io/team/app"]
    assert [str(s) for s in conf.pull_sources("quay.io", "other/app", by_digest=True)] == [
        "quay.io/other/app"
    ]
    wildcard = conf.pull_sources("r.corp.example", "x/y", by_digest=False)
    assert [str(s) for s in wildcard] == ["local.example/corp/x/y", "r.corp.example/x/y"]


def test_location_replaces_the_prefix_of_the_primary(conf_file: Path) -> None:
    _write(
        conf_file,
        """
[[registry]]
prefix = "example.com/foo"
location = "internal.example:5000/bar"
insecure = true
[[registry.mirror]]
location = "cache.example/foo"

[[registry]]
prefix = "*.corp.example"

[[registry]]
prefix = "*.lab.example"
location = "lab-cache.example"

[[registry]]
prefix = "blocked.example/team"
location = "elsewhere.example/team"
blocked = true

[[registry]]
prefix = "example.org/one/image"
location = "example.net"
""",
    )
    conf = load_registries_conf(_ctx())
    rewritten = conf.pull_sources("example.com", "foo/app", by_digest=False)
    assert [(str(s), s.insecure) for s in rewritten] == [
        ("cache.example/foo/app", False),
        ("internal.example:5000/bar/app", True),
    ]
    # A name the prefix does not cover (foobar is not foo/...) goes as written.
    assert [str(s) for s in conf.pull_sources("example.com", "foobar/app", by_digest=False)] == [
        "example.com/foobar/app"
    ]
    # A wildcard without a location rewrites nothing; with one, the host is replaced.
    assert [str(s) for s in conf.pull_sources("r.corp.example", "x/y", by_digest=True)] == [
        "r.corp.example/x/y"
    ]
    assert [str(s) for s in conf.pull_sources("a.lab.example", "x/y", by_digest=True)] == [
        "lab-cache.example/x/y"
    ]
    # Blocked: the name stays as written, so the client refuses it.
    assert [str(s) for s in conf.pull_sources("blocked.example", "team/a", by_digest=False)] == [
        "blocked.example/team/a"
    ]
    with pytest.raises(InvalidInputError, match=r"leaves no repository for example\.org/one/image"):
        conf.pull_sources("example.org", "one/image", by_digest=False)


@pytest.mark.parametrize(
    ("mirror", "complaint"),
    [
        ('pull-from-mirror = "sometimes"\nlocation = "m"', "'pull-from-mirror' must be one of"),
        ('insecure = 1\nlocation = "m"', "'insecure' must be true or false"),
        ("insecure = true", "needs a 'location' string"),
    ],
)
def test_bad_mirrors_are_rejected(conf_file: Path, mirror: str, complaint: str) -> None:
    _write(conf_file, f'[[registry]]\nlocation = "r.example"\n[[registry.mirror]]\n{mirror}\n')
    with pytest.raises(InvalidInputError, match=complaint):
        load_registries_conf(_ctx())


# --- parsed files kept between runs ------------------------------------------------


_INSECURE = '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n'


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' files are a moment old: keep them all the same."""
    monkeypatch.setattr(registries_conf, "SETTLED_NS", -(10**18))


def _cache() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "atoll" / "registries-conf.json"


def _tamper(cache: Path) -> None:
    """Change the cached document (not its key): what a load then says shows
    whether it read the cache or the file."""
    data = json.loads(cache.read_text())
    (entry,) = data["files"].values()
    entry["doc"]["registry"][0]["insecure"] = False
    cache.write_text(json.dumps(data))


def test_an_unchanged_file_is_read_from_the_cache(conf_file: Path) -> None:
    _write(conf_file, _INSECURE)
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")
    _tamper(_cache())
    assert not load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")
    # Any write changes the file's key: it is parsed again.
    _write(conf_file, _INSECURE)
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")


def test_a_cache_others_may_write_is_not_read(conf_file: Path) -> None:
    _write(conf_file, _INSECURE)
    load_registries_conf(_ctx())
    _tamper(_cache())
    _cache().chmod(0o666)
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")
    assert _cache().stat().st_mode & 0o777 == 0o600  # written again, as it should be


def test_a_cached_file_is_read_without_tomllib(conf_file: Path) -> None:
    _write(conf_file, _INSECURE)
    script = (
        "import sys\n"
        "from atoll.oci.context import SystemContext\n"
        "from atoll.oci import registries_conf\n"
        "registries_conf.SETTLED_NS = -(10**18)\n"
        "conf = registries_conf.load_registries_conf(SystemContext())\n"
        "print(conf.is_insecure('127.0.0.1:5000'), 'tomllib' in sys.modules)\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True,
            env=dict(os.environ),
        ).stdout.split()
        for _ in range(2)
    ]  # fmt: skip
    assert runs == [["True", "True"], ["True", "False"]]


def test_documents_json_cannot_hold_and_unwritable_caches_are_no_error(
    conf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(conf_file, "checked = 1979-05-27T07:32:00Z\n" + _INSECURE)
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")
    assert not _cache().exists()
    _write(conf_file, _INSECURE)
    blocker = _write(tmp_path / "not-a-directory", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")


def test_a_file_changed_a_moment_ago_is_parsed_every_time(
    conf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registries_conf, "SETTLED_NS", 2_000_000_000)
    _write(conf_file, _INSECURE)
    assert load_registries_conf(_ctx()).is_insecure("127.0.0.1:5000")
    # Another write of the same size could fall in the same clock tick: not kept.
    assert not _cache().exists()
