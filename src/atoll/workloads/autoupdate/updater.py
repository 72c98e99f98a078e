"""``atoll workload auto-update``: new images for running workloads, kept only when healthy.

For each ``.container`` unit with ``AutoUpdate=registry`` or ``AutoUpdate=local``
whose container runs:

1. **Check** (all units at once, see :mod:`atoll.workloads.autoupdate.checks`).
   ``registry``: the digest the registry has for the unit's tag (for a version
   pin, the highest tag on its line) against the digests of the image the
   container runs (podman's RepoDigests, and what this file recorded when it
   pulled).  ``local``: the image the unit's ``Image=`` names in the local
   store against the one the container runs.  A digest that was rolled back
   before is not taken again; a tag that moves to another digest is.
2. **Window.**  A unit labelled ``io.atoll.autoupdate.window=CRON`` (and
   optionally ``io.atoll.autoupdate.timezone=ZONE``, default UTC) is updated
   only while the cron expression matches; otherwise it is ``pending``.
3. **Apply**, units that depend on each other (``After=``/``Requires=``/
   ``Wants=``/``BindsTo=`` naming another updated unit) in order, the others in
   waves of *parallel* (:mod:`atoll.workloads.autoupdate.rollout`).  The new images are
   pulled as ``REPO@DIGEST``, once per digest, shared out over a few podman
   processes (one per CPU at most); then each wave: tag the image as the
   units' ``Image=`` (in rounds, so that no restart reads a tag another one
   moves), restart the units, then **watch** them together for the watch
   window: each must become active with health ``healthy`` (or no health
   check) and must not fail, turn unhealthy or be restarted by its manager
   meanwhile.  A failure stops the waves.
4. **Roll back** every unit the failing image reached: tag the previous image
   as ``Image=`` again, restart, and remember the digest and why
   (:mod:`atoll.workloads.autoupdate.state`).  After the run every unit restarted
   is asked what it runs; the report says that.
5. **Prune** after a success: images the unit used before the previous one,
   unless a container uses them.  The previous image stays for a rollback.

Results use podman auto-update's columns: UNIT CONTAINER IMAGE POLICY UPDATED,
UPDATED being ``true``, ``false``, ``failed``, ``pending`` or ``rolled back``.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import AtollError
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.timeutil import human_time, utc_timestamp
from atoll.workloads.autoupdate.checks import DEFAULT_CONCURRENCY, RemoteCheck, check_references
from atoll.workloads.autoupdate.localimages import LocalImage, Podman, same_image
from atoll.workloads.autoupdate.rollout import POLL_INTERVAL, Rollout, Watch, judge, not_ready
from atoll.workloads.autoupdate.state import (
    ImageRecord,
    RolledBack,
    Trial,
    UnitUpdateState,
    WorkloadUpdateState,
    state_lock,
)
from atoll.workloads.autoupdate.units import (
    AutoUpdatePolicy,
    Workload,
    workloads_from,
)
from atoll.workloads.control import Health, UnitManager, UnitState, UnitStatus
from atoll.workloads.unitfiles.quadlet import LoadResult

log = logging.getLogger(__name__)

DEFAULT_WATCH = 60.0
DEFAULT_PARALLEL = 4


class Updated(StrEnum):
    TRUE = "true"
    FALSE = "false"
    FAILED = "failed"
    PENDING = "pending"
    ROLLED_BACK = "rolled back"


@dataclass
class UnitReport:
    unit: str
    container: str
    image: str
    policy: str
    updated: Updated
    reason: str = ""
    old_digest: str | None = None
    new_digest: str | None = None
    #: The tag checked, when it is not the unit's own (a version pin).
    checked_tag: str | None = None
    newer: tuple[str, ...] = ()
    rolled_back_digests: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "container": self.container,
            "image": self.image,
            "policy": self.policy,
            "updated": str(self.updated),
            "reason": self.reason,
            "digest": {"old": self.old_digest, "new": self.new_digest},
            "checkedTag": self.checked_tag,
            "newerAvailable": list(self.newer),
            "rolledBackDigests": list(self.rolled_back_digests),
        }


@dataclass(frozen=True)
class AutoUpdateResult:
    reports: tuple[UnitReport, ...]
    dry_run: bool

    @property
    def failed(self) -> list[UnitReport]:
        return [r for r in self.reports if r.updated in (Updated.FAILED, Updated.ROLLED_BACK)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "ok": self.ok,
            "units": [r.to_json() for r in self.reports],
            "failed": [r.unit for r in self.reports if r.updated is Updated.FAILED],
            "rolledBack": [r.unit for r in self.reports if r.updated is Updated.ROLLED_BACK],
        }


@dataclass(frozen=True)
class AutoUpdateOptions:
    dry_run: bool = False
    rollback: bool = True
    #: Seconds a restarted unit must stay healthy.
    watch: float = DEFAULT_WATCH
    #: Restart timeout passed to the manager (None: the unit's own).
    restart_timeout: float | None = None
    #: Units restarted at once (those that do not depend on each other).
    parallel: int = DEFAULT_PARALLEL
    #: Registry requests in flight at once.
    concurrency: int = DEFAULT_CONCURRENCY
    #: Update outside the units' windows too.
    ignore_windows: bool = False
    #: Only these units (names like ``web.container``); empty: all.
    only: tuple[str, ...] = ()


@dataclass
class _Plan:
    """One running workload during a run: what it runs and what it should run."""

    workload: Workload
    status: UnitStatus
    state: UnitUpdateState
    report: UnitReport
    running: LocalImage | None = None
    #: Digests (or, for ``local``, image IDs) the running image is known by.
    known: set[str] = field(default_factory=set)
    target_digest: str | None = None
    target_ref: str | None = None
    target_image_id: str | None = None


# --- the run --------------------------------------------------------------------------


class AutoUpdater:
    """One run over a set of workloads; see the module docstring."""

    def __init__(
        self,
        manager: UnitManager,
        *,
        ctx: SystemContext | None = None,
        podman: Podman | None = None,
        state_dir: Path,
        options: AutoUpdateOptions | None = None,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.manager = manager
        self.ctx = ctx or SystemContext()
        self.podman = podman or Podman()
        self.state_dir = state_dir
        self.options = options or AutoUpdateOptions()
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
        self._lock = threading.Lock()
        self._state: WorkloadUpdateState | None = None
        #: Pulls by reference, started for a level of units at once (_start_pulls).
        self._pulls: dict[str, Future[str]] = {}
        self._restarts = ThreadPoolExecutor(
            max(1, self.options.parallel), thread_name_prefix="atoll-restart"
        )
        self._rollout = Rollout(self, self._restarts)

    def run(self, workloads: Sequence[Workload]) -> AutoUpdateResult:
        try:
            return self._run(workloads)
        finally:
            self._restarts.shutdown()

    def _run(self, workloads: Sequence[Workload]) -> AutoUpdateResult:
        with state_lock(self.state_dir):
            self._state = WorkloadUpdateState.load(self.state_dir)
            chosen = [w for w in workloads if not self.options.only or w.unit in self.options.only]
            reports: dict[str, UnitReport] = {}
            resumed = self._resume(chosen, reports)
            plans = self._plan([w for w in chosen if w.unit not in resumed], reports)
            # What runs (podman) and what the registries have are asked at once.
            with ThreadPoolExecutor(1, thread_name_prefix="atoll-running") as pool:
                running = pool.submit(self._read_running, plans)
                self._check(plans)
                running.result()
            to_apply = [p for p in plans if self._decide(p)]
            if to_apply:
                self._apply(to_apply)
            for unit in [*resumed, *(p.workload.unit for p in plans)]:
                self._remember(unit, last_result=str(reports[unit].updated))
            self._save()
            ordered = [reports[w.unit] for w in chosen if w.unit in reports]
            return AutoUpdateResult(tuple(ordered), self.options.dry_run)

    # --- an update a stopped run left ---------------------------------------------

    def _resume(self, workloads: Sequence[Workload], reports: dict[str, UnitReport]) -> set[str]:
        """Finish the updates a run that was stopped (killed, a power cut) left
        half-done, before anything else; return the units finished so."""
        finished: set[str] = set()
        for workload in workloads:
            trial = self._state_of(workload.unit).trial
            report = self._resume_one(workload, trial) if trial is not None else None
            if report is not None:
                reports[workload.unit] = report
                finished.add(workload.unit)
        return finished

    def _resume_one(self, workload: Workload, trial: Trial) -> UnitReport | None:
        """The report of the update *trial* left, or None when it never restarted
        the unit (then this run starts that update over)."""
        report = UnitReport(
            workload.unit, "", workload.image, workload.policy, Updated.FALSE,
            old_digest=trial.old.digest, new_digest=trial.new.digest,
        )  # fmt: skip
        if self.options.dry_run:
            report.updated = Updated.PENDING
            report.reason = (
                f"a stopped run left the update to {_short(trial.new.digest)} unproven; "
                "the next run watches it and keeps it or rolls it back"
            )
            return report
        try:
            status = self.manager.status(workload.service)
        except AtollError as exc:
            report.updated, report.reason = Updated.FAILED, exc.message
            return report
        if not same_image(status.image_id, trial.new.image_id):
            # Stopped before the restart: the unit still runs the old image. Point
            # the tag back at it (a restart must not start the unproven one).
            log.info("%s: a stopped run's update never restarted it", workload.unit)
            if workload.policy == AutoUpdatePolicy.REGISTRY:
                self._tag(trial.old.image_id, workload.image)
            self._remember(workload.unit, end_trial=True)
            return None
        log.info("%s: watching the update a stopped run left unproven", workload.unit)
        report.container = status.container
        failure = self.watch(workload.service, status, self.options.watch)
        self._conclude(workload, report, trial.new, trial.old, failure)
        prefix = "a stopped run left this update unproven; "
        report.reason = prefix + (report.reason or "it stayed healthy for the watch window")
        return report

    # --- planning -----------------------------------------------------------------

    def _plan(self, workloads: Sequence[Workload], reports: dict[str, UnitReport]) -> list[_Plan]:
        plans: list[_Plan] = []
        asked = [w for w in workloads if not w.problem]
        statuses = self._rollout.statuses(asked) if asked else {}
        for workload in workloads:
            report = UnitReport(workload.unit, "", workload.image, workload.policy, Updated.FALSE)
            reports[workload.unit] = report
            if workload.problem:
                report.updated, report.reason = Updated.FAILED, workload.problem
                continue
            if workload.policy == AutoUpdatePolicy.REGISTRY and not _fully_qualified(
                workload.image
            ):
                report.updated = Updated.FAILED
                report.reason = (
                    f"Image={workload.image} is not fully qualified: the registry policy "
                    "needs REGISTRY/REPOSITORY:TAG"
                )
                continue
            status = statuses[workload.unit]
            if isinstance(status, str):
                report.updated, report.reason = Updated.FAILED, status
                continue
            report.container = status.container
            if status.state is not UnitState.ACTIVE or not status.image_id:
                report.reason = f"not running ({status.state})"
                continue
            plans.append(_Plan(workload, status, self._state_of(workload.unit), report))
        return plans

    def _read_running(self, plans: Sequence[_Plan]) -> None:
        """What each container runs, from the state file when it knows, else from podman."""
        unknown: list[_Plan] = []
        for plan in plans:
            current = plan.state.current
            if (
                current is not None
                and plan.state.image == plan.workload.image
                and same_image(current.image_id, plan.status.image_id)
                and current.digest
            ):
                plan.known.add(current.digest)
                plan.report.old_digest = current.digest
            else:
                unknown.append(plan)
        if not unknown:
            return
        images = self.podman.inspect([p.status.image_id or "" for p in unknown])
        for plan in unknown:
            image = images.get(plan.status.image_id or "")
            plan.running = image
            if image is None:
                continue
            if plan.workload.policy == AutoUpdatePolicy.LOCAL:
                plan.known.add(image.id)
                plan.report.old_digest = image.id
                continue
            digests = image.digests_for(ImageReference.parse(plan.workload.image).name)
            plan.known |= digests
            if digests:
                plan.report.old_digest = sorted(digests)[0]

    def _check(self, plans: Sequence[_Plan]) -> None:
        registry = [p for p in plans if p.workload.policy == AutoUpdatePolicy.REGISTRY]
        local = [p for p in plans if p.workload.policy == AutoUpdatePolicy.LOCAL]
        refs = {p.workload.unit: ImageReference.parse(p.workload.image) for p in registry}
        checks: dict[ImageReference, RemoteCheck] = {}
        if refs:
            assert self._state is not None
            checks = check_references(
                list(refs.values()),
                self.ctx,
                concurrency=self.options.concurrency,
                bases=self._state.registries,
            )
        for plan in registry:
            check = checks[refs[plan.workload.unit]]
            plan.report.newer = check.newer
            if check.tag != (check.reference.tag or "latest"):
                plan.report.checked_tag = check.tag
            if check.error is not None:
                plan.report.updated, plan.report.reason = Updated.FAILED, check.error
                continue
            plan.target_digest = check.digest
            plan.target_ref = f"{check.reference.name}@{check.digest}"
        if local:
            tags = self.podman.inspect([p.workload.image for p in local])
            for plan in local:
                image = tags.get(plan.workload.image)
                if image is None:
                    plan.report.updated = Updated.FAILED
                    plan.report.reason = f"no local image {plan.workload.image}"
                    continue
                plan.target_digest = plan.target_image_id = image.id

    def _decide(self, plan: _Plan) -> bool:
        """Fill in the report; True when the unit is to be updated now."""
        report = plan.report
        target = plan.target_digest
        if report.updated is Updated.FAILED or target is None:
            return False
        report.rolled_back_digests = tuple(e.digest for e in plan.state.rolled_back)
        if target in plan.known or (
            plan.workload.policy == AutoUpdatePolicy.LOCAL
            and same_image(target, plan.status.image_id)
        ):
            report.updated, report.reason = Updated.FALSE, "up to date"
            report.old_digest = report.old_digest or target
            self._note_current(plan, target)
            return False
        report.new_digest = target
        earlier = plan.state.rolled_back_entry(target)
        if earlier is not None:
            report.updated = Updated.FALSE
            report.reason = (
                f"{_short(target)} was rolled back at {earlier.time} ({earlier.reason}); "
                "not taken again until the tag moves"
            )
            return False
        if self.options.dry_run:
            report.updated, report.reason = Updated.PENDING, "an update is available (dry run)"
            return False
        window = plan.workload.window
        now = self.now()
        if not self.options.ignore_windows and not window.is_open(now):
            opens = window.next_open(now)
            report.updated = Updated.PENDING
            report.reason = (
                f"outside the update window {window.describe()}; "
                f"it opens at {human_time(opens, window.timezone)}"
            )
            return False
        return True

    def _note_current(self, plan: _Plan, digest: str) -> None:
        """Record what an up-to-date unit runs, so the next check needs no podman."""
        current = plan.state.current
        if (
            current
            and current.digest == digest
            and same_image(current.image_id, plan.status.image_id)
        ):
            return
        self._remember(
            plan.workload.unit,
            image=plan.workload.image,
            current=ImageRecord(digest, plan.status.image_id, utc_timestamp()),
        )

    # --- applying -----------------------------------------------------------------

    def _apply(self, plans: Sequence[_Plan]) -> None:
        by_unit = {p.workload.unit: p for p in plans}
        for level in _levels(plans):
            runnable: list[_Plan] = []
            for plan in level:
                blocked = [
                    d
                    for d in plan.workload.after
                    if d in by_unit and by_unit[d].report.updated is not Updated.TRUE
                ]
                if blocked:
                    dep = by_unit[blocked[0]]
                    plan.report.updated = Updated.PENDING
                    plan.report.reason = (
                        f"not restarted: it depends on {dep.workload.unit}, "
                        f"whose update ended {dep.report.updated}"
                    )
                else:
                    runnable.append(plan)
            # Waves of restarts, watched together (see rollout.py); the pulls run
            # beside them in pool threads of their own.
            workers = max(1, min(self.options.parallel, len(runnable) or 1))
            with ThreadPoolExecutor(workers, thread_name_prefix="atoll-pull") as pulls:
                self._start_pulls(runnable, pulls)
                self._rollout.run(runnable)
        self._rollout.verify()
        self._prune([p for p in plans if p.report.updated is Updated.TRUE])

    def _start_pulls(self, plans: Sequence[_Plan], pool: ThreadPoolExecutor) -> None:
        """Pull the new images of *plans* in a few podman processes, each taking a
        share of them, at most one per CPU and *parallel*: a podman costs about as
        much CPU to start as to pull a small image, so ten at once are slower than
        two, and they only wait for each other's lock on the image store."""
        refs = [
            ref
            for ref in dict.fromkeys(
                p.target_ref for p in plans if p.workload.policy == AutoUpdatePolicy.REGISTRY
            )
            if ref and ref not in self._pulls
        ]
        groups = min(len(refs), max(1, self.options.parallel), os.cpu_count() or 1)
        for first in range(groups):
            futures: dict[str, Future[str]] = {ref: Future() for ref in refs[first::groups]}
            self._pulls.update(futures)
            pool.submit(self._pull_group, futures)

    def _pull_group(self, futures: dict[str, Future[str]]) -> None:
        try:
            self._pull_refs(futures)
        except BaseException as exc:
            # Not a pull that failed but a fault: the units waiting must not wait forever.
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
            raise

    def _pull_refs(self, futures: dict[str, Future[str]]) -> None:
        refs = list(futures)
        try:
            ids = self.podman.pull(refs)
        except AtollError as exc:
            if len(refs) == 1:
                futures[refs[0]].set_exception(exc)
                return
            # podman pulls what it can and names only the first failure: each
            # image again on its own, so that every unit gets its own answer.
            for ref in refs:
                self._pull_refs({ref: futures[ref]})
            return
        for ref, image_id in zip(refs, ids, strict=True):
            futures[ref].set_result(image_id)

    def _pull(self, plan: _Plan) -> bool:
        """Wait for the plan's new image (see _start_pulls); False when its pull failed."""
        ref = plan.target_ref
        if plan.workload.policy != AutoUpdatePolicy.REGISTRY or not ref:
            return True
        try:
            image_id = self._pulls[ref].result()
        except AtollError as exc:
            plan.report.updated = Updated.FAILED
            plan.report.reason = f"pulling {ref}: {exc.message}"
            return False
        if not image_id:
            plan.report.updated = Updated.FAILED
            plan.report.reason = f"pulling {ref}: podman named no image"
            return False
        plan.target_image_id = image_id
        # Saved with the trial that follows (Rollout._begin), before the tag moves.
        self._remember(
            plan.workload.unit, images_add=image_id, image=plan.workload.image, save=False
        )
        return True

    def _conclude(
        self,
        workload: Workload,
        report: UnitReport,
        new: ImageRecord,
        old: ImageRecord,
        failure: str | None,
    ) -> None:
        """Keep the update the unit was watched running, or roll it back."""
        started = UnitStatus(
            unit=workload.unit, name="", service=workload.service, state=UnitState.ACTIVE,
            result="", container=report.container, container_id=None, image=workload.image,
            image_id=new.image_id, health=Health.NONE, restarts=0, since="", main_pid=None,
        )  # fmt: skip
        now = self.monotonic()
        watch = Watch(workload, report, new, old, started, now, now, failure=failure)
        self._rollout.conclude([watch])

    def _tag(self, image_id: str | None, name: str) -> str | None:
        """Point the tag *name* at *image_id*; None, or why podman could not."""
        try:
            self.podman.tag(image_id or "", name)
        except AtollError as exc:
            return exc.message
        return None

    def watch(
        self, service: str, started: UnitStatus, window: float, *, until_ready: bool = False
    ) -> str | None:
        """Watch a freshly restarted unit for *window* seconds; None if it stayed healthy
        (with *until_ready*, as soon as it is ready: a rollback to a known image)."""
        deadline = self.monotonic() + window
        status = started
        while True:
            failure, ready = judge(started, status)
            if failure is not None:
                return failure
            remaining = deadline - self.monotonic()
            if remaining <= 0 or (until_ready and ready):
                break
            self.sleep(min(POLL_INTERVAL, remaining))
            try:
                status = self.manager.status(service)
            except AtollError as exc:
                return f"asking its status failed: {exc.message}"
        return None if ready else not_ready(window, status)

    def _prune(self, plans: Sequence[_Plan]) -> None:
        """Remove the images updated units used before their previous one (one
        ``podman ps`` for all; an image some container uses is never removed)."""
        candidates: dict[str, set[str]] = {}
        for plan in plans:
            state = self._state_of(plan.workload.unit)
            keep = [r.image_id for r in (state.current, state.previous) if r and r.image_id]
            old = set(state.images)
            if plan.state.previous and plan.state.previous.image_id:
                old.add(plan.state.previous.image_id)
            unused = {i for i in old if not any(same_image(i, k) for k in keep)}
            if unused:
                candidates[plan.workload.unit] = unused
        if not candidates:
            return
        try:
            in_use = self.podman.images_in_use()
        except AtollError as exc:
            log.info("not pruning images: %s", exc.message)
            return
        for unit, images in candidates.items():
            removed = {
                image
                for image in sorted(images)
                if not any(same_image(image, used) for used in in_use) and self.podman.remove(image)
            }
            if removed:
                self._remember(unit, images_remove=removed)

    # --- state --------------------------------------------------------------------

    def _state_of(self, unit: str) -> UnitUpdateState:
        assert self._state is not None
        return self._state.get(unit)

    def _remember(
        self,
        unit: str,
        *,
        image: str | None = None,
        current: ImageRecord | None = None,
        previous: ImageRecord | None = None,
        rollback: RolledBack | None = None,
        images_add: str | None = None,
        images_remove: Iterable[str] = (),
        last_result: str | None = None,
        trial: Trial | None = None,
        end_trial: bool = False,
        save: bool = True,
    ) -> None:
        """Change *unit*'s entry; with *save* (and not a dry run, nor *last_result*,
        which the end of the run saves), write the state file now.  Callers that
        change many units at once save once, with :meth:`_save`."""
        assert self._state is not None
        with self._lock:
            entry = self._state.get(unit)
            if trial is not None or end_trial:
                entry = replace(entry, trial=trial)
            if image is not None:
                entry = replace(entry, image=image)
            if current is not None:
                entry = replace(entry, current=current)
            if previous is not None:
                entry = replace(entry, previous=previous)
            if rollback is not None:
                entry = entry.with_rollback(rollback)
            entry = entry.with_image(images_add)
            gone = set(images_remove)
            if gone:
                entry = replace(entry, images=tuple(i for i in entry.images if i not in gone))
            if last_result is not None:
                entry = replace(entry, last_check=utc_timestamp(), last_result=last_result)
            self._state.units[unit] = entry
            if save and not self.options.dry_run and last_result is None:
                self._state.save()

    def _save(self) -> None:
        assert self._state is not None
        if not self.options.dry_run:
            with self._lock:
                self._state.save()


def _levels(plans: Sequence[_Plan]) -> list[list[_Plan]]:
    """Plans grouped so that a unit comes after the units it depends on (a cycle
    is broken by taking its members one by one, in name order)."""
    pending = {p.workload.unit: p for p in plans}
    done: set[str] = set()
    levels: list[list[_Plan]] = []
    while pending:
        level = [
            p
            for name, p in sorted(pending.items())
            if all(d in done or d not in pending for d in p.workload.after)
        ]
        if not level:
            level = [pending[min(pending)]]
        for plan in level:
            del pending[plan.workload.unit]
            done.add(plan.workload.unit)
        levels.append(level)
    return levels


def _fully_qualified(image: str) -> bool:
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _short(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest[:12]


def run_auto_update(
    loaded: LoadResult,
    manager: UnitManager,
    *,
    state_dir: Path,
    ctx: SystemContext | None = None,
    podman: Podman | None = None,
    options: AutoUpdateOptions | None = None,
) -> AutoUpdateResult:
    """Check and update every auto-update unit of *loaded*."""
    updater = AutoUpdater(manager, ctx=ctx, podman=podman, state_dir=state_dir, options=options)
    return updater.run(workloads_from(loaded))
