"""Lifecycle of a device: install, stage, finalize, roll back, pin, clean up, boot.

bootc's verbs and semantics.  Every operation holds the sysroot lock and is
built so that a crash (SIGKILL, power loss) at any point leaves a sysroot that
boots a complete deployment, old or new:

* **stage** (upgrade, switch): import the image into the store; check the
  deployment out under a hidden name; rename it into place; write its origin;
  write ``staged.json``.  The booted deployment and the boot entries are not
  touched.  Until ``staged.json`` exists the new directory is an orphan that
  ``cleanup`` removes.  Each deployment has a ref in the store from before its
  checkout until after its directory is gone (:mod:`atoll.sysroot.roots`), and
  staging checks first that the image can be finalized
  (:mod:`atoll.sysroot.shape`).
* **finalize** (what shutdown runs): merge /etc into the staged deployment
  (always rebuilt from the store and the booted /etc, so a re-run after a
  crash gives the same result); install its kernel; write the new set of boot
  entries (new first, with a boot counter; then the booted one; then pinned
  ones) — the atomic loader swap is the commit point; remove ``staged.json``;
  prune deployments and kernels no entry needs.  A crash before the swap
  leaves the old entries (and ``staged.json``, so the next boot finalizes
  again); after it, the new ones.  A finalize that *fails* before the swap
  drops the staged deployment and records why (:mod:`atoll.sysroot.dropped`):
  the old entries boot, as ostree does.
* **rollback**: a new set of entries with the first two swapped (one swap).
* **boot** (directory device): finalize a pending staged deployment first (the
  previous "shutdown" did not), then choose an entry as firmware would,
  counting the attempt, and record what booted.

Crash points (``ATOLL_CRASH_AT=NAME``, see :mod:`atoll.faults`) sit between the
steps; tests kill the process at each of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.errors import AtollError, DeploymentError, NoKernelError
from atoll.faults import crashpoint
from atoll.fsutil import fsync_dir, remove_tree, replace_dir, write_atomic
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.transports import ImageName, ImageSource
from atoll.phases import CHECKOUT
from atoll.progress import NullProgress, ProgressSink
from atoll.store import Store
from atoll.store.importer import ImportStats
from atoll.store.partial import import_image
from atoll.store.transferreport import TransferReport
from atoll.sysroot.bootentries import sync_bootloader, write_boot_entries
from atoll.sysroot.bootloader import entries as bootloader
from atoll.sysroot.bootloader.backend import Bootloader
from atoll.sysroot.dropped import clear_dropped, record_dropped
from atoll.sysroot.etcmerge import EtcMergeStrategy, merge_etc
from atoll.sysroot.fetch import RemoteImage, open_image
from atoll.sysroot.layout import DEFAULT_STATEROOT, Sysroot
from atoll.sysroot.origin import Deployment, origin_for, write_origin
from atoll.sysroot.rolledback import RolledBackImage, find_rolled_back
from atoll.sysroot.roots import IMPORTING_REF, deployment_ref, sync_refs
from atoll.sysroot.shape import check_complete, check_deployable
from atoll.sysroot.state import ORIGIN_SUFFIX, BootRecord, SysrootState, select_deployment
from atoll.timeutil import utc_timestamp

log = logging.getLogger(__name__)

#: Boot attempts a new deployment gets before the bootloader falls back.
DEFAULT_BOOT_TRIES = 3
#: Where hidden work directories live inside a stateroot's deploy directory.
_STAGING_PREFIX = ".staging-"
_SPARE_PREFIX = ".spare-"

#: Decides whether an image may be deployed (the trust policy); raises to refuse.
#: Called after the manifest and config are read and before anything is imported.
Admission = Callable[[ImageName, RemoteImage], None]
#: Opens an image for staging: :func:`atoll.sysroot.fetch.open_image`, or a
#: bundle's reader (``atoll bundle apply``).
ImageOpener = Callable[
    [ImageName, SystemContext], AbstractContextManager[tuple[ImageSource, RemoteImage]]
]
#: The boot attempts a newly finalized deployment gets, given its root directory
#: (the health checks read GREENBOOT_MAX_BOOT_ATTEMPTS there).
BootTries = Callable[[Path], int]
#: Pulls the images a new deployment binds (its root, the progress sink, an OCI
#: layout to take them from or None) before it is staged; raises to refuse it.
BoundImagesPull = Callable[[Path, ProgressSink | None, Path | None], None]


@dataclass
class StageResult:
    deployment: Deployment | None
    image: RemoteImage
    changed: bool
    files_total: int = 0
    files_new: int = 0
    bytes_fetched: int = 0
    message: str = ""
    #: What the import moved, by path (atoll.store.partial); None: nothing imported.
    transfer: TransferReport | None = None
    #: Set when the image was not staged because this device rolled back from it.
    rolled_back: RolledBackImage | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "deployment": self.deployment.to_json() if self.deployment else None,
            "image": str(self.image.name),
            "imageDigest": str(self.image.digest),
            "version": self.image.version,
            "filesTotal": self.files_total,
            "filesNew": self.files_new,
            "bytesFetched": self.bytes_fetched,
            "message": self.message,
            "transfer": self.transfer.to_json() if self.transfer else None,
            "rolledBack": self.rolled_back.to_json() if self.rolled_back else None,
        }


@dataclass
class FinalizeResult:
    deployment: Deployment
    etc_merge: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


class Device:
    """One sysroot and the operations on it."""

    def __init__(
        self,
        root: Path,
        ctx: SystemContext | None = None,
        *,
        progress: ProgressSink | None = None,
        boot_tries: int | BootTries = DEFAULT_BOOT_TRIES,
        admit: Admission | None = None,
        opener: ImageOpener | None = None,
        pull_bound: BoundImagesPull | None = None,
        bootloader: Bootloader | None = None,
    ) -> None:
        """*boot_tries*, *pull_bound* and the status of the layers above come from
        the caller (the sysroot knows nothing of health checks or workloads);
        *bootloader* None: chosen by what ``boot/`` holds at each write, since
        ``atoll install to-disk`` adds GRUB to a sysroot after installing it."""
        self.sysroot = Sysroot(root)
        self.ctx = ctx or SystemContext()
        self.progress = progress
        self.boot_tries = boot_tries
        self.admit = admit
        self.opener: ImageOpener = opener or open_image
        self.pull_bound = pull_bound
        self.bootloader = bootloader
        #: An OCI layout holding bound images (``atoll bundle apply``): staging
        #: takes them from there instead of their registries.
        self.bound_images_layout: Path | None = None
        #: What the last import of this object moved (atoll.store.partial).
        self.last_transfer: TransferReport | None = None
        #: When and what the last import fetched (the head of last-transfer.json).
        self._transfer_head: dict[str, str] = {}
        #: Images without a kernel are accepted by every stage (a container-boot
        #: device's ``atoll updates run --allow-no-kernel``).
        self.kernel_optional = False

    # --- helpers ----------------------------------------------------------------------

    def state(self) -> SysrootState:
        return SysrootState.load(self.sysroot)

    def store(self) -> Store:
        return Store.open(self.sysroot.store_path)

    def _deploy_path(self, deployment: Deployment) -> Path:
        return deployment.path(self.sysroot.deploy_dir(deployment.stateroot))

    def _origin_path(self, deployment: Deployment) -> Path:
        return self.sysroot.deploy_dir(deployment.stateroot) / f"{deployment.id}{ORIGIN_SUFFIX}"

    def _next_serial(self, stateroot: str, commit: str) -> int:
        deploy_dir = self.sysroot.deploy_dir(stateroot)
        taken = {
            int(p.name.rsplit(".", 1)[1])
            for p in deploy_dir.glob(f"{commit}.*")
            if p.name.rsplit(".", 1)[1].isdigit()
        }
        taken |= {
            int(p.name.removesuffix(ORIGIN_SUFFIX).rsplit(".", 1)[1])
            for p in deploy_dir.glob(f"{commit}.*{ORIGIN_SUFFIX}")
        }
        return max(taken, default=-1) + 1

    def _import(
        self,
        store: Store,
        source: ImageSource,
        image: RemoteImage,
        allow_no_kernel: bool,
        delta_from: str | None = None,
    ) -> tuple[str, ImportStats]:
        # One hold of the store lock from the import to the ref naming its
        # commit: a gc waiting for the lock finds the commit referenced.
        with store.lock():
            result, self.last_transfer = import_image(
                store,
                source,
                image.manifest,
                image.config_raw,
                image=str(image.name),
                manifest_digest=image.digest,
                progress=self.progress or NullProgress(),
                delta_from=Digest.parse(delta_from) if delta_from else None,
            )
            self._transfer_head = {
                "time": utc_timestamp(), "image": str(image.name), "imageDigest": str(image.digest)
            }  # fmt: skip
            self._write_transfer()
            crashpoint("stage-imported")
            kernel_optional = allow_no_kernel or self.kernel_optional
            if not kernel_optional and store.kernel(result.commit_id) is None:
                raise NoKernelError(
                    f"{image.name}: no kernel: the image has no usr/lib/modules/*/vmlinuz",
                    hint="a bootable image needs one; pass --allow-no-kernel to deploy it anyway",
                )
            check_deployable(store, result.commit_id, str(image.name))
            store.set_ref(IMPORTING_REF, result.commit_id)
        return result.commit_id, result.stats

    def _write_transfer(self) -> None:
        assert self.last_transfer is not None
        data = {**self._transfer_head, **self.last_transfer.to_json()}
        write_atomic(self.sysroot.transfer_file, json.dumps(data, indent=2).encode())

    def _checkout(self, store: Store, commit: str, stateroot: str) -> tuple[str, str, int]:
        """Check *commit* out as a new deployment directory (not yet staged)."""
        deploy_dir = self.sysroot.deploy_dir(stateroot)
        deploy_dir.mkdir(parents=True, exist_ok=True)
        serial = self._next_serial(stateroot, commit)
        ident = f"{commit}.{serial}"
        work = deploy_dir / f"{_STAGING_PREFIX}{ident}"
        remove_tree(work)
        store.set_ref(deployment_ref(stateroot, ident), commit)
        store.set_ref(IMPORTING_REF, None)
        spare = self._take_spare(deploy_dir)
        started = time.monotonic()
        if spare is not None:
            spare_dir, spare_commit = spare
            store.checkout(commit, work, reuse=(spare_dir, spare_commit))
        else:
            store.checkout(commit, work)
        if self.last_transfer is not None:
            seconds = self.last_transfer.seconds
            seconds[CHECKOUT] = round(time.monotonic() - started, 6)
            seconds["elapsed"] = round(seconds.get("elapsed", 0.0) + seconds[CHECKOUT], 6)
            self._write_transfer()
        crashpoint("stage-checked-out")
        work.rename(deploy_dir / ident)
        fsync_dir(deploy_dir)
        return stateroot, commit, serial

    def _take_spare(self, deploy_dir: Path) -> tuple[Path, str] | None:
        """A retired deployment kept for an incremental checkout, if there is one."""
        for path in sorted(deploy_dir.glob(f"{_SPARE_PREFIX}*")):
            commit = path.name.removeprefix(_SPARE_PREFIX).split(".", 1)[0]
            if path.is_dir() and len(commit) == 64:
                return path, commit
            remove_tree(path)
        return None

    # --- install ----------------------------------------------------------------------

    def install(
        self,
        name: ImageName,
        *,
        stateroot: str = DEFAULT_STATEROOT,
        kargs: Sequence[str] = (),
        allow_no_kernel: bool = False,
        target: ImageName | None = None,
    ) -> StageResult:
        """``atoll install to-filesystem``: the first deployment of an empty sysroot.
        With *target*, the origin names it instead of *name*: the device installed from
        a local copy (an ``oci-archive:`` on a stick) follows *target* when it upgrades."""
        self.sysroot.create()
        with self.sysroot.lock():
            state = self.state()
            if state.deployments:
                raise DeploymentError(
                    f"{self.sysroot.root}: already has deployments",
                    hint="use atoll switch to change the image, or install into an empty root",
                )
            store = Store.create(self.sysroot.store_path)
            with self.opener(name, self.ctx) as (source, image):
                if self.admit is not None:
                    self.admit(name, image)
                commit, stats = self._import(store, source, image, allow_no_kernel)
            deployment = self._record_origin(
                self._checkout(store, commit, stateroot), target or name, image
            )
            var = self.sysroot.var(stateroot)
            if not var.exists():
                # /var comes from the image once, at install; updates never touch it.
                if store.lookup(commit, "var") is not None:
                    store.checkout_subtree(commit, "var", var)
                else:
                    var.mkdir(parents=True)
            self._entries([deployment], {}, extra_options=list(kargs))
            return self._stage_result(deployment, image, stats, "installed")

    def _record_origin(
        self, where: tuple[str, str, int], name: ImageName, image: RemoteImage, **extra: bool | str
    ) -> Deployment:
        origin = origin_for(
            name,
            str(image.digest),
            image_version=image.version,
            timestamp=image.config.created,
            deployed_at=utc_timestamp(),
            **extra,
        )
        deployment = Deployment(*where, origin)
        write_origin(self._origin_path(deployment), origin)
        crashpoint("stage-origin-written")
        return deployment

    def _stage_result(
        self,
        deployment: Deployment | None,
        image: RemoteImage,
        stats: ImportStats | None,
        message: str,
    ) -> StageResult:
        return StageResult(
            deployment,
            image,
            changed=deployment is not None,
            files_total=stats.files_total if stats else 0,
            files_new=stats.files_new if stats else 0,
            bytes_fetched=stats.bytes_fetched if stats else 0,
            message=message,
            transfer=self.last_transfer if stats else None,
        )

    # --- upgrade and switch -----------------------------------------------------------

    def check(self, name: ImageName | None = None) -> tuple[Deployment, RemoteImage, bool]:
        """Read manifest and config only; True when they differ from what is deployed."""
        state = self.state()
        current = state.staged or state.current
        target = name or current.origin.image_name
        with open_image(target, self.ctx) as (_, image):
            return current, image, str(image.digest) != current.origin.manifest_digest

    def stage(
        self,
        name: ImageName | None = None,
        *,
        download_only: bool = False,
        allow_no_kernel: bool = False,
        etc_strategy: EtcMergeStrategy = EtcMergeStrategy.KEEP_LOCAL,
        allow_rolled_back: bool = False,
    ) -> StageResult:
        """``atoll upgrade`` (name None: the current origin) or ``atoll switch NAME``;
        an image this device rolled back from is skipped unless *allow_rolled_back*."""
        with self.sysroot.lock():
            state = self.state()
            current = state.current
            target = name or (state.staged or current).origin.image_name
            store = self.store()
            sync_refs(store, state)
            with self.opener(target, self.ctx) as (source, image):
                digest = str(image.digest)
                staged = state.staged
                if (
                    staged is not None
                    and staged.origin.manifest_digest == digest
                    and (staged.origin.image_name == target)
                ):
                    if staged.origin.download_only and not download_only:
                        return self._unlock_staged(staged, image)
                    return self._stage_result(None, image, None, "already staged")
                if current.origin.manifest_digest == digest and current.origin.image_name == target:
                    if staged is not None:
                        self._discard_staged(staged)
                    if self._lacks_objects(store, current.commit):
                        return self._restore(store, source, image)
                    return self._stage_result(None, image, None, "no changes")
                skipped = None if allow_rolled_back else find_rolled_back(self.sysroot, digest)
                if skipped is not None:
                    message = f"not staged: {skipped.describe()}"
                    return StageResult(None, image, False, message=message, rolled_back=skipped)
                if self.admit is not None:
                    self.admit(target, image)
                commit, stats = self._import(
                    store, source, image, allow_no_kernel, current.origin.manifest_digest
                )
            # Finalizing merges /etc from this one's pristine /etc (after the
            # import, which restores it when the image is the same).
            check_complete(store, current.commit, "etc", f"deployment {current.id}")
            deployment = self._record_origin(
                self._checkout(store, commit, current.stateroot),
                target,
                image,
                download_only=download_only,
                etc_strategy=etc_strategy.value,
            )
            self._pull_bound_images(deployment)
            write_atomic(
                self.sysroot.staged_file, json.dumps(deployment.to_json(), indent=2).encode()
            )
            crashpoint("stage-staged")
            if staged is not None and staged != deployment:
                self._remove_deployment(staged)
            return self._stage_result(deployment, image, stats, "staged")

    @staticmethod
    def _lacks_objects(store: Store, commit: str) -> bool:
        """True when a repair marked *commit* partial, or it is gone."""
        return store.is_partial(commit) or not store.has_commit(commit)

    def _restore(self, store: Store, source: ImageSource, image: RemoteImage) -> StageResult:
        """Import the booted deployment's image again: that writes back what a
        store repair removed (the commit is the same; nothing is staged)."""
        with store.lock():
            _, stats = self._import(store, source, image, allow_no_kernel=True)
            store.set_ref(IMPORTING_REF, None)
        return self._stage_result(None, image, stats, "restored the booted image's objects")

    def _pull_bound_images(self, deployment: Deployment) -> None:
        """Pull the images the new deployment binds (bootc's bound-images.d) with
        the caller's *pull_bound*, so its workloads start without network.  A
        failed pull removes the new deployment: nothing is staged."""
        if self.pull_bound is None:
            return
        try:
            self.pull_bound(self._deploy_path(deployment), self.progress, self.bound_images_layout)
        except BaseException:
            self._remove_deployment(deployment)
            raise

    def _unlock_staged(self, staged: Deployment, image: RemoteImage) -> StageResult:
        unlocked = staged.with_origin(download_only=False)
        write_origin(self._origin_path(unlocked), unlocked.origin)
        write_atomic(self.sysroot.staged_file, json.dumps(unlocked.to_json(), indent=2).encode())
        return self._stage_result(unlocked, image, None, "staged (was download-only)")

    def unlock_downloaded(self) -> Deployment:
        """``atoll upgrade --from-downloaded``: let a download-only deployment apply."""
        with self.sysroot.lock():
            staged = self.state().staged
            if staged is None:
                raise DeploymentError("nothing has been downloaded: no staged deployment")
            unlocked = staged.with_origin(download_only=False)
            write_origin(self._origin_path(unlocked), unlocked.origin)
            write_atomic(
                self.sysroot.staged_file, json.dumps(unlocked.to_json(), indent=2).encode()
            )
            return unlocked

    def _discard_staged(self, staged: Deployment) -> None:
        self.sysroot.staged_file.unlink(missing_ok=True)
        fsync_dir(self.sysroot.meta)
        self._remove_deployment(staged)

    def _remove_deployment(self, deployment: Deployment, *, keep_spare: bool = False) -> None:
        """Origin first (the deployment stops existing), then the directory."""
        self._origin_path(deployment).unlink(missing_ok=True)
        path = self._deploy_path(deployment)
        if keep_spare and path.is_dir():
            deploy_dir = path.parent
            for old in deploy_dir.glob(f"{_SPARE_PREFIX}*"):
                remove_tree(old)
            path.rename(deploy_dir / f"{_SPARE_PREFIX}{deployment.id}")
        else:
            remove_tree(path)
        fsync_dir(path.parent)
        self.store().set_ref(deployment_ref(deployment.stateroot, deployment.id), None)

    # --- finalize ---------------------------------------------------------------------

    def finalize(self, *, etc_merge: EtcMergeStrategy | None = None) -> FinalizeResult | None:
        """What shutdown runs; *etc_merge* overrides the strategy chosen at staging."""
        with self.sysroot.lock():
            return self._finalize_or_drop(etc_merge, reraise=True)

    def _finalize_or_drop(
        self, override: EtcMergeStrategy | None, *, reraise: bool
    ) -> FinalizeResult | None:
        """Finalize; when that fails before the new boot entries are written,
        drop the staged deployment (the previous entries stay and boot, as
        ostree does) and record why for ``atoll status``."""
        try:
            result = self._finalize(override)
        except (AtollError, OSError) as exc:
            self._drop_staged(exc)
            if reraise:
                raise
            log.warning("the staged deployment could not be finalized and was dropped: %s", exc)
            return None
        if result is not None:
            clear_dropped(self.sysroot)
        return result

    def _drop_staged(self, exc: BaseException) -> None:
        try:
            state = self.state()
        except AtollError:
            # staged.json itself is unreadable: nothing to finalize, ever.
            self.sysroot.staged_file.unlink(missing_ok=True)
            return
        staged = state.staged
        if staged is None:
            return
        if state.entry_for(staged) is not None:
            # The entries were swapped: the update is in place; only the
            # clean-up after the commit point failed.
            self.sysroot.staged_file.unlink(missing_ok=True)
            return
        record_dropped(self.sysroot, staged, exc, utc_timestamp())
        self._discard_staged(staged)

    def _finalize(self, override: EtcMergeStrategy | None) -> FinalizeResult | None:
        state = self.state()
        staged = state.staged
        if staged is None or staged.origin.download_only:
            return None
        strategy = override or EtcMergeStrategy(staged.origin.etc_strategy)
        base = state.current
        store = self.store()
        crashpoint("finalize-begin")
        merge = self._merge_etc(store, base, staged, strategy)
        staged = staged.with_origin(etc_merge=merge)
        write_origin(self._origin_path(staged), staged.origin)
        crashpoint("finalize-etc-merged")
        order = [staged] + [d for d in state.boot_order() if d == base or d.origin.pinned]
        if base not in order:
            order.append(base)
        self._entries(order, {staged.id: self._boot_tries(staged)}, state=state, inherit=base)
        crashpoint("finalize-entries-written")
        self.sysroot.staged_file.unlink(missing_ok=True)
        fsync_dir(self.sysroot.meta)
        crashpoint("finalize-unstaged")
        removed = self._prune(order, state)
        return FinalizeResult(staged, merge, removed)

    def _merge_etc(
        self, store: Store, base: Deployment, staged: Deployment, strategy: EtcMergeStrategy
    ) -> dict[str, Any]:
        target = self._deploy_path(staged)
        with self.workdir() as work:
            old_etc, new_etc, merged = work / "old", work / "new", work / "merged"
            self.checkout_etc(store, base.commit, old_etc)
            self.checkout_etc(store, staged.commit, new_etc)
            local = self._deploy_path(base) / "etc"
            if not local.is_dir():
                local = old_etc
            result = merge_etc(old_etc, local, new_etc, merged, strategy=strategy)
            replace_dir(merged, target / "etc")
        data: dict[str, Any] = result.to_json()
        return data

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        tmp = self.sysroot.meta / "tmp"
        tmp.mkdir(exist_ok=True)
        work = tmp / f"work-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            yield work
        finally:
            remove_tree(work)

    def _boot_tries(self, deployment: Deployment) -> int:
        if isinstance(self.boot_tries, int):
            return max(1, self.boot_tries)
        return max(1, self.boot_tries(self._deploy_path(deployment)))

    @staticmethod
    def checkout_etc(store: Store, commit: str, dest: Path) -> None:
        """The pristine /etc of *commit* (copies, never links into the store)."""
        if store.lookup(commit, "etc") is not None:
            store.checkout_subtree(commit, "etc", dest)
        else:
            dest.mkdir(parents=True)

    def _prune(self, keep: Sequence[Deployment], state: SysrootState) -> list[str]:
        """Remove deployments no entry needs (the last one stays as a spare for an
        incremental checkout) and kernels no entry uses."""
        removed = []
        spare_kept = False
        for deployment in state.deployments.values():
            if deployment in keep or deployment.origin.pinned or deployment == state.booted:
                continue
            if state.staged is not None and deployment == state.staged:
                continue
            self._remove_deployment(deployment, keep_spare=not spare_kept)
            spare_kept = True
            removed.append(deployment.id)
        bootloader.prune_kernels(self.sysroot.boot)
        return removed

    # --- boot entries -----------------------------------------------------------------

    def _entries(self, order: Sequence[Deployment], counting: dict[str, int], **how: Any) -> None:
        """Write the boot entries of *order* (atoll.sysroot.bootentries)."""
        write_boot_entries(self.sysroot, self.store(), self.bootloader, order, counting, **how)

    def _sync_bootloader(self, *, boot_success: bool | None = None) -> None:
        sync_bootloader(self.sysroot, self.bootloader, boot_success=boot_success)

    # --- rollback, pin, cleanup -------------------------------------------------------

    def rollback(self) -> Deployment:
        with self.sysroot.lock():
            state = self.state()
            order = state.boot_order()
            if len(order) < 2:
                raise DeploymentError(
                    f"{self.sysroot.root}: no rollback deployment",
                    hint="a rollback needs a previous deployment; see atoll status",
                )
            if state.staged is not None:
                self._discard_staged(state.staged)
            crashpoint("rollback-unstaged")
            new_order = [order[1], order[0], *order[2:]]
            self._entries(new_order, {}, state=state)
            crashpoint("rollback-entries-written")
            # The chosen deployment was booted before: it starts without a counter.
            target = state.entry_for(order[1])
            if target is not None and target.tries_left is not None:
                bootloader.mark_good(self.sysroot.boot, target.id)
                self._sync_bootloader()
            return order[1]

    def set_pinned(self, selector: str | None, pinned: bool) -> Deployment:
        with self.sysroot.lock():
            state = self.state()
            deployment = select_deployment(state, selector)
            updated = deployment.with_origin(pinned=pinned)
            write_origin(self._origin_path(updated), updated.origin)
            return updated

    def cleanup(self) -> dict[str, Any]:
        """Remove what nothing needs: spares, leftovers of interrupted work, the
        staged deployment's orphans, unused kernels, and unreachable store objects."""
        with self.sysroot.lock():
            state = self.state()
            removed: list[str] = []
            for stateroot in self.sysroot.stateroots():
                deploy_dir = self.sysroot.deploy_dir(stateroot)
                for path in deploy_dir.iterdir() if deploy_dir.is_dir() else ():
                    if path.name.startswith((_STAGING_PREFIX, _SPARE_PREFIX)) or (
                        path.is_dir() and (stateroot, path.name) not in state.deployments
                    ):
                        remove_tree(path)
                        removed.append(str(path.relative_to(self.sysroot.root)))
            remove_tree(self.sysroot.meta / "tmp")
            crashpoint("cleanup-dirs-removed")
            kernels = bootloader.prune_kernels(self.sysroot.boot)
            keep = {d.commit for d in state.deployments.values()}
            store = self.store()
            sync_refs(store, state)
            report = store.gc(keep)
            crashpoint("cleanup-gc-done")
            return {"removed": removed, "kernels": kernels, "store": report.to_json()}

    # --- boot (the directory device) --------------------------------------------------

    def boot(self) -> BootRecord:
        """Play firmware and bootloader: finalize what the last shutdown did not,
        choose an entry (counting the attempt), record what booted."""
        with self.sysroot.lock():
            if self.state().staged is not None:
                self._finalize_or_drop(None, reraise=False)
            boot_dir = self.sysroot.boot
            state = self.state()
            intended = state.intended_entries()
            first = intended[0] if intended else None
            tried: set[str] = set()
            while True:
                entry = bootloader.choose_entry(boot_dir)
                deployment = self.state().deployment_of(entry)
                if deployment is not None and self._deploy_path(deployment).is_dir():
                    break
                if entry.id in tried:
                    raise DeploymentError(
                        f"{self.sysroot.root}: no boot entry names a complete deployment",
                        hint="reinstall, or repair the sysroot from a rescue system",
                    )
                tried.add(entry.id)
                # What firmware meets as an unbootable entry counts as a failed try.
                log.warning("boot entry %s names no complete deployment", entry.id)
                bootloader.mark_bad(boot_dir, entry.id)
            record = BootRecord(
                stateroot=deployment.stateroot,
                deployment=deployment.id,
                entry=entry.id,
                tries_left=entry.tries_left,
                fallback=first is not None and entry.id != first.id,
                boot_id=secrets.token_hex(16),
                time=utc_timestamp(),
            )
            self.sysroot.booted_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.sysroot.booted_file, json.dumps(record.to_json()).encode())
            return record

    def settle_fallback(self) -> tuple[Deployment, int] | None:
        """After the bootloader fell back from a deployment whose attempts were
        used up, make the booted deployment the default for good; the failed one
        stays behind it, marked bad.  Returns (failed deployment, attempts it
        used), or None when this boot was not a fallback (or is settled already)."""
        with self.sysroot.lock():
            state = self.state()
            record, booted = state.booted_record, state.booted
            if record is None or booted is None or not record.fallback:
                return None
            intended = state.intended_order()
            if not intended or intended[0] == booted:
                return None
            failed = intended[0]
            entry = state.entry_for(failed)
            attempts = entry.tries_done if entry is not None else 0
            self._entries([booted, *(d for d in intended if d != booted)], {}, state=state)
            crashpoint("fallback-settled")
            return failed, attempts

    def mark_boot_good(self) -> None:
        """A healthy boot: the booted entry keeps no counter (systemd-bless-boot good)."""
        with self.sysroot.lock():
            state = self.state()
            record = state.booted_record
            if record is None:
                raise DeploymentError("nothing has booted yet: run atoll boot")
            for entry in state.entries:
                if entry.id == record.entry and entry.tries_left is not None:
                    bootloader.mark_good(self.sysroot.boot, entry.id)
            # greenboot's GRUB protocol: boot_success=1, boot_counter unset.
            self._sync_bootloader(boot_success=True)
