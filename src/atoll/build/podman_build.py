"""Running a build: podman does the steps, atoll moves the images and checks the result.

The order of work, for both kinds of build::

    1. a work directory with podman's own configuration and store
       (atoll.podman.isolated_environment: runc, vfs, nothing of the caller's store)
    2. blueprint builds: copy the base into an OCI layout, read its os-release
       (the family), load it into the work store, write the build context
    3. podman build (the Containerfile plus the atoll step, see atoll.build.containerfile),
       its "STEP i/n" lines reported as progress
    4. copy the result out of the work store into an OCI layout, and rechunk it
       there (atoll.build.rechunk) unless asked not to
    5. lint it (atoll.build.lint); a fatal finding stops here: nothing is pushed
    6. copy it to the target (any atoll image name: docker://, oci:, …) and
       remove the work directory (unless it was given: then it is a cache)

The work directory, by default a fresh one under ``--tmpdir`` (else /var/tmp)::

    WORK/
    ├── podman/             containers.conf, storage.conf, registries.conf, graph/, run/
    ├── context/            a blueprint build's context (Containerfile, files/)
    ├── containerfile/      a Containerfile build's Containerfile with the atoll step added
    ├── additions/          the atoll step's build context (atoll.build.containerfile)
    └── layout/             OCI layout: the base ("base"), the result ("result")
                            and the result rechunked ("rechunked")
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.build.blueprint import Blueprint
from atoll.build.containerfile import (
    ADDITIONS_CONTEXT,
    ATOLL_STEP,
    BuildContext,
    Family,
    blueprint_context,
    family_of,
    parse_os_release,
    write_additions,
    write_context,
)
from atoll.build.lint import LintReport, lint_tree
from atoll.build.rechunk import RechunkOptions, RechunkResult, rechunk_image
from atoll.errors import (
    BaseImageError,
    BuildError,
    LintFailedError,
    ToolMissingError,
    UsageError,
    from_oserror,
)
from atoll.fsutil import remove_tree
from atoll.oci.context import SystemContext
from atoll.oci.imagecopy import copy_image
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.podman import isolated_environment
from atoll.progress import NullProgress, ProgressSink
from atoll.run import PIPE, STDOUT, base_environment, find_tool, run, spawn

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^\[?\d*\]?\s*STEP (\d+)/(\d+): (.*)$")
_ADDED_PREFIX = "atoll-additions: "
_TAIL = 30


@dataclass(frozen=True)
class BuildSettings:
    """How to build, for both kinds of build."""

    #: ``podman build --network``: host lets RUN steps reach the machine's loopback.
    network: str | None = None
    #: Keep podman's store here between builds (a cache); None: a fresh one, removed after.
    workdir: Path | None = None
    build_args: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    #: Add atoll, its units and its early-boot hook where the image lacks them.
    add_atoll: bool = True
    lint: bool = True
    fatal_warnings: bool = False
    #: ``podman build --isolation`` (oci, chroot, rootless); None: podman's default.
    isolation: str | None = None
    #: How to write the result as layers grouped for updates; None: as podman wrote it.
    rechunk: RechunkOptions | None = field(default_factory=RechunkOptions)


@dataclass
class BuildResult:
    image: str
    digest: str
    containerfile: str
    family: Family | None = None
    #: What the atoll step added, e.g. ``atoll``, ``atoll-healthcheck.service``.
    added: list[str] = field(default_factory=list)
    #: Warnings printed by the atoll step.
    notes: list[str] = field(default_factory=list)
    steps: int = 0
    lint: LintReport | None = None
    rechunk: RechunkResult | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "family": self.family.value if self.family else None,
            "steps": self.steps,
            "added": list(self.added),
            "notes": list(self.notes),
            "lint": self.lint.to_json() if self.lint else None,
            "layers": len(self.rechunk.layers) if self.rechunk else None,
            "seconds": round(self.seconds, 3),
        }


OutputCallback = Callable[[str], None]


class _Work:
    """The work directory and podman's environment in it."""

    def __init__(self, root: Path, ctx: SystemContext) -> None:
        self.root = root
        registries = ctx.registries_conf
        if registries is None and ctx.environ.get("CONTAINERS_REGISTRIES_CONF"):
            registries = Path(ctx.environ["CONTAINERS_REGISTRIES_CONF"])
        if registries is not None and not registries.exists():
            registries = None
        self.podman_vars = isolated_environment(root / "podman", registries_conf=registries)
        self.env = base_environment(self.podman_vars)
        if ctx.authfile is not None:
            self.env["REGISTRY_AUTH_FILE"] = str(ctx.authfile)
        elif ctx.environ.get("REGISTRY_AUTH_FILE"):
            self.env["REGISTRY_AUTH_FILE"] = ctx.environ["REGISTRY_AUTH_FILE"]
        # The work store's context: containers-storage: names reach podman in WORK/podman.
        self.ctx = ctx._replace(environ={**ctx.environ, **self.podman_vars})
        self.layout = root / "layout"
        self.token = secrets.token_hex(6)

    def local_name(self, what: str) -> str:
        return f"localhost/atoll-build/{what}:{self.token}"


@contextmanager
def _workdir(settings: BuildSettings, ctx: SystemContext) -> Iterator[_Work]:
    if settings.workdir is not None:
        settings.workdir.mkdir(parents=True, exist_ok=True)
        yield _Work(settings.workdir.resolve(), ctx)
        return
    parent = ctx.tmpdir or Path("/var/tmp")
    try:
        root = Path(tempfile.mkdtemp(prefix="atoll-build-", dir=parent))
    except OSError as exc:
        raise from_oserror(exc, f"a work directory in {parent}") from exc
    try:
        yield _Work(root, ctx)
    finally:
        remove_tree(root)


def _podman() -> str:
    return find_tool("podman", "podman runc", why="atoll build runs the build steps with it")


def _run_podman_build(
    argv: list[str],
    work: _Work,
    progress: ProgressSink,
    on_output: OutputCallback | None,
    result: BuildResult,
) -> None:
    tail: deque[str] = deque(maxlen=_TAIL)
    current: str | None = None
    progress.begin("build", f"Building {result.image}", result.image, 0)
    ok = False
    try:
        proc = spawn(argv, stdout=PIPE, stderr=STDOUT, env=work.env, cwd=work.root)
    except ToolMissingError:
        progress.end(False)
        raise
    except OSError as exc:
        progress.end(False)
        raise from_oserror(exc, argv[0]) from exc
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            if on_output is not None:
                on_output(line)
            step = _STEP_RE.match(line)
            if step is not None:
                if current is not None:
                    progress.done(current)
                current = f"step-{result.steps}"
                result.steps += 1
                progress.subtask(current, "step", line.strip()[:100], 0)
            elif line.startswith(_ADDED_PREFIX):
                what = line[len(_ADDED_PREFIX) :]
                if what.startswith("added "):
                    result.added.append(what.removeprefix("added "))
                else:
                    result.notes.append(what.removeprefix("warning: "))
        code = proc.wait()
        if current is not None:
            progress.done(current)
        ok = code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        progress.end(ok)
    if not ok:
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise BuildError(
            f"podman build of {result.image} failed (exit code {proc.returncode}): {last}",
            hint="run with --verbose to see every line of the build; the last lines were:\n"
            + "\n".join(tail),
        )


def _build_argv(
    containerfile: Path,
    context: Path,
    settings: BuildSettings,
    additions: Path | None,
    tag: str,
    ctx: SystemContext,
) -> list[str]:
    argv = [_podman(), "build", "--layers=false", "-f", str(containerfile), "-t", tag]
    argv += ["--label", "containers.bootc=1"]
    if settings.network is not None:
        argv += ["--network", settings.network]
    if settings.isolation is not None:
        argv += ["--isolation", settings.isolation]
    if ctx.tls_verify is False:
        argv.append("--tls-verify=false")
    for arg in settings.build_args:
        argv += ["--build-arg", arg]
    for label in settings.labels:
        argv += ["--label", label]
    if additions is not None:
        argv += ["--build-context", f"{ADDITIONS_CONTEXT}={additions}"]
    argv.append(str(context))
    return argv


def _build(
    work: _Work,
    containerfile: Path,
    context: Path,
    target: ImageName,
    ctx: SystemContext,
    settings: BuildSettings,
    progress: ProgressSink,
    on_output: OutputCallback | None,
    result: BuildResult,
) -> None:
    """Steps 3 to 6; the work store's result is untagged afterwards when the store is kept."""
    additions = _additions(work, settings)
    tag = work.local_name("result")
    argv = _build_argv(containerfile, context, settings, additions, tag, ctx)
    try:
        _run_podman_build(argv, work, progress, on_output, result)
        _finish(work, tag, target, ctx, settings, progress, result)
    finally:
        _remove_local(work, [tag], settings.workdir is not None)


def _finish(
    work: _Work,
    tag: str,
    target: ImageName,
    ctx: SystemContext,
    settings: BuildSettings,
    progress: ProgressSink,
    result: BuildResult,
) -> BuildResult:
    """Steps 4 to 6: out of podman's store, lint, to the target."""
    from atoll.build.imagetree import read_image_tree
    from atoll.build.lint import WANTED, wants_head

    built = ImageName(Transport.OCI, path=work.layout, ref_name="result")
    copy_image(
        ImageName(Transport.CONTAINERS_STORAGE, reference=_ref(tag)),
        built,
        src_ctx=work.ctx,
        dst_ctx=work.ctx,
        progress=progress,
    )
    if settings.rechunk is not None:
        chunked = ImageName(Transport.OCI, path=work.layout, ref_name="rechunked")
        result.rechunk = rechunk_image(
            built, chunked, work.ctx, settings.rechunk, progress=progress
        )
        built = chunked
    if settings.lint:
        tree = read_image_tree(built, work.ctx, want=WANTED, heads=wants_head, progress=progress)
        tree.name = result.image
        report = lint_tree(tree, fatal_warnings=settings.fatal_warnings)
        result.lint = report
        if not report.ok:
            raise LintFailedError(
                f"{result.image}: the built image fails the lint ({report.fatal} fatal, "
                f"{report.warnings} warning(s)); it was not written to {target}",
                report=report,
                hint="see the findings above; atoll lint IMAGE checks an image on its own, "
                "--no-lint builds without the check",
            )
    copied = copy_image(built, target, src_ctx=work.ctx, dst_ctx=ctx, progress=progress)
    result.digest = str(copied.digest)
    return result


def _ref(tag: str) -> ImageReference:
    return ImageReference.parse(tag)


def _additions(work: _Work, settings: BuildSettings) -> Path | None:
    """The atoll step's build context, written afresh; None without the atoll step."""
    if not settings.add_atoll:
        return None
    additions = work.root / "additions"
    remove_tree(additions)
    write_additions(additions)
    return additions


def _remove_local(work: _Work, tags: list[str], keep: bool) -> None:
    """Untag the work store's images when the store is kept (a cache)."""
    if not keep:
        return
    for tag in tags:
        run([_podman(), "rmi", "--force", tag], env=work.env, check=False)


def build_containerfile(
    containerfile: Path,
    context: Path,
    target: ImageName,
    ctx: SystemContext,
    settings: BuildSettings | None = None,
    *,
    progress: ProgressSink | None = None,
    on_output: OutputCallback | None = None,
) -> BuildResult:
    """``atoll build -f CONTAINERFILE -t TARGET CONTEXT``."""
    settings = settings or BuildSettings()
    progress = progress or NullProgress()
    started = time.monotonic()
    try:
        text = containerfile.read_text()
    except OSError as exc:
        raise from_oserror(exc, f"Containerfile {containerfile}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"{containerfile}: not a text file") from None
    if not context.is_dir():
        raise UsageError(f"build context {context} is not a directory")
    with _workdir(settings, ctx) as work:
        final = containerfile.resolve()
        if settings.add_atoll:
            (work.root / "containerfile").mkdir(exist_ok=True)
            final = work.root / "containerfile" / "Containerfile"
            text = text.rstrip("\n") + "\n\n# Added by atoll build\n" + ATOLL_STEP + "\n"
            final.write_text(text)
        result = BuildResult(str(target), "", text)
        _build(work, final, context.resolve(), target, ctx, settings, progress, on_output, result)
    result.seconds = time.monotonic() - started
    return result


def _hash_password(password: str) -> str:
    openssl = find_tool(
        "openssl",
        why="it hashes the blueprint's clear-text passwords",
        hint="install it with: apt-get install openssl, or put hashes in the blueprint",
    )
    proc = run([openssl, "passwd", "-6", "-stdin"], input=password.encode() + b"\n")
    return proc.stdout.decode().strip()


def read_base_family(base: ImageName, work_ctx: SystemContext, layout_ref: ImageName) -> Family:
    """Copy *base* into the work layout and tell its family from its os-release."""
    from atoll.build.imagetree import read_image_tree

    tree = read_image_tree(layout_ref, work_ctx, want=("etc/os-release", "usr/lib/os-release"))
    raw = tree.read("etc/os-release") or tree.read("usr/lib/os-release")
    if raw is None:
        raise BaseImageError(
            f"{base}: the base image has no /etc/os-release or /usr/lib/os-release",
            hint="a blueprint build needs a Debian- or Fedora-family base image",
        )
    return family_of(parse_os_release(raw.decode(errors="replace")), str(base))


def build_blueprint(
    blueprint: Blueprint,
    base: ImageName,
    target: ImageName | None,
    ctx: SystemContext,
    settings: BuildSettings | None = None,
    *,
    progress: ProgressSink | None = None,
    on_output: OutputCallback | None = None,
    plan_only: bool = False,
) -> BuildResult:
    """``atoll build --blueprint FILE --base BASE -t TARGET``; with *plan_only*,
    only read the base and return the Containerfile that would be built (then
    *target* may be None)."""
    if target is None and not plan_only:
        raise UsageError("a blueprint build needs a target image name")
    settings = settings or BuildSettings()
    progress = progress or NullProgress()
    started = time.monotonic()
    with _workdir(settings, ctx) as work:
        base_layout = ImageName(Transport.OCI, path=work.layout, ref_name="base")
        copied = copy_image(base, base_layout, src_ctx=ctx, dst_ctx=work.ctx, progress=progress)
        family = read_base_family(base, work.ctx, base_layout)
        # Named by digest: a kept work directory loads each base into podman once.
        base_tag = f"localhost/atoll-build/base:{copied.digest.hex[:32]}"
        plan: BuildContext = blueprint_context(
            blueprint,
            base_tag,
            family,
            hash_password=_hash_password,
            add_atoll=settings.add_atoll,
        )
        result = BuildResult(str(target), "", plan.containerfile, family)
        if plan_only or target is None:
            return result
        context = work.root / "context"
        remove_tree(context)
        context.mkdir()
        containerfile = write_context(plan, context)
        exists = run([_podman(), "image", "exists", base_tag], env=work.env, check=False)
        if exists.returncode != 0:
            copy_image(
                base_layout,
                ImageName(Transport.CONTAINERS_STORAGE, reference=_ref(base_tag)),
                src_ctx=work.ctx,
                progress=progress,
            )
        _build(work, containerfile, context, target, ctx, settings, progress, on_output, result)
    result.seconds = time.monotonic() - started
    return result
