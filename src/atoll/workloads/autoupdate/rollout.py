"""How ``atoll workload auto-update`` restarts units: in waves, watched together.

The units of one dependency level (see :mod:`atoll.workloads.autoupdate.updater`) are
restarted *parallel* at a time.  A restart is work (podman processes), the
watch window is waiting: every restarted unit is watched in one loop.  A
wave's window starts when the first of its restarts returned (the new image
runs there): its units are watched together until that window ends, each
at least until it is ready, so restarts that take long on a busy machine
are not added to the window.  A unit must be ready within the window from
its own restart (a slow restart does not shorten the time it has to become
ready).  The first wave of
*parallel* units is a canary: nothing else restarts until every unit of it
is ready (active, and healthy or without a health check).  The rest follow
as one wave in which a restart begins as soon as one of the *parallel*
restart slots is free; the units restarted so far are asked every
:data:`POLL_INTERVAL` meanwhile, and a failure among them (or a restart that
failed) stops the restarts not begun yet.  A good image so reaches all units
in about ``canary + watch window``.  A failure stops the rollout: the units
not reached keep their image (and do not take the failed digest later);
every unit the failing image reached is rolled back together (a unit that
fails runs the same image as the others, and that image is what failed).

**Tags and rounds.**  A container unit runs what its ``Image=`` tag names at
the moment of its ``podman run``.  Units sharing one tag must therefore never
be restarted while another of them moves the tag elsewhere.  Every batch of
restarts (a wave, a rollback, a repair) is cut into *rounds* in which each tag
names one image: the round's tags are moved first, then its units restart in
parallel, and the next round starts only after every restart of this one has
returned, when its containers run on an image ID whatever the tag says next.
A restarted container's image ID is compared with the one wanted, and after
the run every unit touched is asked again (:meth:`Rollout.verify`): the report
says what runs then, and a unit a rollback left down is started again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atoll.errors import AtollError
from atoll.faults import crashpoint
from atoll.timeutil import utc_timestamp
from atoll.workloads.autoupdate.localimages import same_image
from atoll.workloads.autoupdate.state import ImageRecord, RolledBack, Trial
from atoll.workloads.autoupdate.units import AutoUpdatePolicy, Workload
from atoll.workloads.control import Health, UnitState, UnitStatus

if TYPE_CHECKING:
    from atoll.workloads.autoupdate.updater import AutoUpdater, UnitReport, _Plan

log = logging.getLogger(__name__)

#: How often watched units' status is asked, in seconds.
POLL_INTERVAL = 0.5


def judge(started: UnitStatus, status: UnitStatus) -> tuple[str | None, bool]:
    """(why a unit restarted as *started* failed by now, or None; whether it is ready)."""
    if status.state in (UnitState.FAILED, UnitState.INACTIVE):
        return f"the unit is {status.state} ({status.result})", False
    if status.health is Health.UNHEALTHY:
        return "the container turned unhealthy", False
    if status.restarts > started.restarts or (
        started.container_id and status.container_id and status.container_id != started.container_id
    ):
        return "the container exited and was started again", False
    ready = status.state is UnitState.ACTIVE and status.health in (Health.HEALTHY, Health.NONE)
    return None, ready


def not_ready(window: float, status: UnitStatus) -> str:
    return (
        f"not ready within the {window:g} s watch window "
        f"(state {status.state}, health {status.health})"
    )


@dataclass(frozen=True)
class Step:
    """Restart one unit onto one image, its tag pointed at it first unless *tagged*
    (a ``local`` unit's new image is what its tag names already)."""

    workload: Workload
    image_id: str | None
    tagged: bool = False

    @property
    def tag(self) -> str | None:
        return None if self.tagged else self.workload.image


@dataclass(frozen=True)
class Restarted:
    """How one :class:`Step` went: the unit's status after the restart, or why it failed."""

    status: UnitStatus | None
    failure: str | None = None
    #: The failure was moving the tag (the unit was not restarted).
    tagging: bool = False
    #: When the restart returned (the updater's monotonic clock): the unit's
    #: watch window starts then.  None: not restarted.
    returned: float | None = None
    #: Not begun: the batch was stopped by a failure first.
    skipped: bool = False


#: Asked while a batch restarts: the restarts finished so far (by step index);
#: True stops the restarts not begun yet.
Between = Callable[[Mapping[int, Restarted]], bool]


@dataclass
class Watch:
    """A unit restarted onto *new* (from *old*): kept once it is ready and its
    wave's window *ends*; failed when it is not ready by *deadline* (the window
    from its own restart)."""

    workload: Workload
    report: UnitReport
    new: ImageRecord
    old: ImageRecord
    started: UnitStatus
    ends: float
    deadline: float
    failure: str | None = None
    ready: bool = False
    done: bool = False


class Rollout:
    """Restarts, watches and rollbacks for one :class:`AutoUpdater` run."""

    def __init__(self, updater: AutoUpdater, pool: ThreadPoolExecutor) -> None:
        self.updater = updater
        self.options = updater.options
        self.pool = pool
        #: Units restarted by this run -> (the step that should hold after it, its
        #: report, whether that step was a rollback).
        self.expected: dict[str, tuple[Step, UnitReport, bool]] = {}
        #: What this run pointed each tag at (no podman tag to move it there again).
        self._tagged: dict[str, str | None] = {}

    # --- restarts ------------------------------------------------------------------

    def restart_all(self, steps: Sequence[Step], between: Between | None = None) -> list[Restarted]:
        """Restart every step, round by round (see the module docstring); with
        *between*, ask it while the restarts run, and once it says stop, begin no
        more of them (those are reported ``skipped``)."""
        results: list[Restarted] = [Restarted(None, "not restarted")] * len(steps)
        stopped = threading.Event()
        for indices in _rounds(steps):
            if stopped.is_set():
                for i in indices:
                    results[i] = Restarted(None, "not restarted", skipped=True)
                continue
            tag_errors: dict[str, str] = {}
            for i in indices:
                tag, image_id = steps[i].tag, steps[i].image_id
                if tag is None or tag in tag_errors:
                    continue
                if self._tagged.get(tag) == image_id:
                    tag_errors[tag] = ""  # this run pointed it there already
                    continue
                tag_errors[tag] = self.updater._tag(image_id, tag) or ""
                self._tagged[tag] = None if tag_errors[tag] else image_id
            crashpoint("autoupdate-tagged")
            todo = []
            for i in indices:
                error = tag_errors.get(steps[i].tag or "")
                if error:
                    results[i] = Restarted(None, error, tagging=True)
                else:
                    todo.append(i)
            halt = stopped if between is not None else None
            futures = {self.pool.submit(self._restart, steps[i], halt): i for i in todo}
            pending: set[Future[Restarted]] = set(futures)
            finished: dict[int, Restarted] = {}
            asked = time.monotonic()
            while pending:
                done, pending = wait(pending, timeout=POLL_INTERVAL, return_when=FIRST_COMPLETED)
                for future in done:
                    finished[futures[future]] = results[futures[future]] = future.result()
                if (
                    between is not None
                    and not stopped.is_set()
                    and time.monotonic() - asked >= POLL_INTERVAL
                ):
                    asked = time.monotonic()
                    if between(finished):
                        stopped.set()
            crashpoint("autoupdate-restarted")
        return results

    def _restart(self, step: Step, halt: threading.Event | None) -> Restarted:
        """Restart *step*'s unit; with *halt*, not once it is set, and set it when
        this restart fails."""
        if halt is not None and halt.is_set():
            return Restarted(None, "not restarted", skipped=True)
        result = self._restart_one(step)
        if halt is not None and result.failure is not None:
            halt.set()
        return result

    def _restart_one(self, step: Step) -> Restarted:
        try:
            started = self.updater.manager.restart(
                step.workload.service, self.options.restart_timeout
            )
        except AtollError as exc:
            return Restarted(
                None, f"the restart failed: {exc.message}", returned=self.updater.monotonic()
            )
        returned = self.updater.monotonic()
        if started.state in (UnitState.FAILED, UnitState.INACTIVE):
            return Restarted(
                started,
                f"the restart failed: the unit is {started.state} ({started.result})",
                returned=returned,
            )
        if started.image_id and step.image_id and not same_image(started.image_id, step.image_id):
            return Restarted(
                started,
                f"the restarted container runs image {_id(started.image_id)}, "
                f"not {_id(step.image_id)}",
                returned=returned,
            )
        return Restarted(started, returned=returned)

    def statuses(self, workloads: Sequence[Workload]) -> dict[str, UnitStatus | str]:
        """Each unit's status (by unit name), or why it could not be asked."""
        found: dict[str, UnitStatus | str] = {}
        status_all: Callable[[], list[UnitStatus]] | None = getattr(
            self.updater.manager, "status_all", None
        )
        if status_all is not None and len(workloads) > 1:
            try:
                by_service = {s.service: s for s in status_all()}
            except AtollError:
                by_service = {}
            for workload in workloads:
                if workload.service in by_service:
                    found[workload.unit] = by_service[workload.service]
        for workload in workloads:
            if workload.unit not in found:
                try:
                    found[workload.unit] = self.updater.manager.status(workload.service)
                except AtollError as exc:
                    found[workload.unit] = f"asking its status failed: {exc.message}"
        return found

    # --- the waves -----------------------------------------------------------------

    def run(self, plans: Sequence[_Plan]) -> None:
        """Update *plans* (one dependency level): the canary wave, then the rest."""
        size = max(1, self.options.parallel)
        queue = list(plans)
        watches: list[Watch] = []
        stop: Watch | None = None
        while queue and stop is None:
            # The canary must be ready (its health checks pass) before the rest
            # begin; the rest only need their restarts to succeed, and the watch
            # goes on meanwhile.
            canary = not watches
            wave, queue = (queue[:size], queue[size:]) if canary else (queue, [])
            pulled = [p for p in wave if self.updater._pull(p)]
            begun, skipped = self._begin(pulled, watching=None if canary else watches)
            watches += begun
            queue = skipped + queue
            stop = self._watch(watches, begun, until_ready=canary)
        if stop is not None:
            self._hold_back(queue, stop)
        self._watch(watches, None)

    def _hold_back(self, plans: Sequence[_Plan], stop: Watch) -> None:
        """The units a stopped rollout did not reach: one that would take the image
        that failed does not take it later either (until the tag moves)."""
        from atoll.workloads.autoupdate.updater import Updated

        why = f"{stop.workload.unit} failed ({stop.failure})"
        for plan in plans:
            report = plan.report
            if plan.target_digest != stop.new.digest or not self.options.rollback:
                report.updated = Updated.PENDING
                report.reason = f"not restarted: the rollout stopped when {why}"
                continue
            report.updated = Updated.FALSE
            report.reason = (
                f"not restarted: {_id(plan.target_digest)} failed on {why}; "
                "not taken until the tag moves"
            )
            entry = RolledBack(stop.new.digest or "", stop.new.image_id, why, utc_timestamp())
            self.updater._remember(
                plan.workload.unit, image=plan.workload.image, rollback=entry, save=False
            )
            with self.updater._lock:
                report.rolled_back_digests = tuple(
                    e.digest for e in self.updater._state_of(plan.workload.unit).rolled_back
                )
        self.updater._save()

    def _begin(
        self, plans: Sequence[_Plan], *, watching: Sequence[Watch] | None = None
    ) -> tuple[list[Watch], list[_Plan]]:
        """Tag and restart a wave; return its watches (with the failure of a restart
        that failed; _watch concludes them) and the plans not begun.  With
        *watching* (the units under watch already), the units are asked while
        the wave restarts, and a failure stops the restarts not begun yet."""
        from atoll.workloads.autoupdate.updater import Updated

        items: list[tuple[_Plan, ImageRecord, ImageRecord]] = []
        for plan in plans:
            old = ImageRecord(plan.report.old_digest, plan.status.image_id, utc_timestamp())
            new = ImageRecord(plan.target_digest, plan.target_image_id, utc_timestamp())
            # Durable before the tag moves: a run stopped from here on is finished by
            # the next one (AutoUpdater._resume), which must not take it unwatched.
            self.updater._remember(plan.workload.unit, trial=Trial(new, old), save=False)
            items.append((plan, new, old))
        self.updater._save()
        steps = [
            Step(p.workload, new.image_id, tagged=p.workload.policy == AutoUpdatePolicy.LOCAL)
            for p, new, _ in items
        ]
        between: Between | None = None
        if watching is not None:
            watched = list(watching)

            def between(finished: Mapping[int, Restarted]) -> bool:
                return self._failing(watched, steps, finished)

        watches: list[Watch] = []
        skipped: list[_Plan] = []
        results = self.restart_all(steps, between)
        returned = [r.returned for r in results if r.returned is not None]
        # The wave's window runs from its first restart that returned.
        ends = min(returned, default=self.updater.monotonic()) + self.options.watch
        for (plan, new, old), step, result in zip(items, steps, results, strict=True):
            workload, report = plan.workload, plan.report
            if result.skipped:
                self.updater._remember(workload.unit, end_trial=True, save=False)
                skipped.append(plan)
                continue
            if result.tagging:
                report.updated = Updated.FAILED
                report.reason = f"tagging the new image as {workload.image}: {result.failure}"
                self.updater._remember(workload.unit, end_trial=True, save=False)
                continue
            self.expected[workload.unit] = (step, report, False)
            started = result.status or plan.status
            if result.status is not None:
                report.container = result.status.container
            since = result.returned if result.returned is not None else self.updater.monotonic()
            watches.append(
                Watch(
                    workload, report, new, old, started, ends, since + self.options.watch,
                    failure=result.failure,
                )
            )  # fmt: skip
        self.updater._save()
        return watches, skipped

    def _failing(
        self,
        watches: Sequence[Watch],
        steps: Sequence[Step],
        finished: Mapping[int, Restarted],
    ) -> bool:
        """Whether a unit under watch or one of a wave's finished restarts failed."""
        if any(r.failure is not None and not r.skipped for r in finished.values()):
            return True
        asked: list[tuple[Workload, UnitStatus]] = [
            (w.workload, w.started) for w in watches if not w.done
        ]
        asked += [(steps[i].workload, r.status) for i, r in finished.items() if r.status]
        if not asked:
            return False
        answers = self.statuses([workload for workload, _ in asked])
        for workload, started in asked:
            answer = answers[workload.unit]
            if isinstance(answer, str) or judge(started, answer)[0] is not None:
                return True
        return False

    def _watch(
        self, watches: list[Watch], wave: list[Watch] | None, *, until_ready: bool = True
    ) -> Watch | None:
        """Watch until every unit of *wave* is ready (not *until_ready*: until the
        watches were asked once more; no *wave*: until every watch is done); return
        the first watch that failed, if one did."""
        monotonic, sleep = self.updater.monotonic, self.updater.sleep
        asked = False
        while True:
            self._settle(watches)
            failed = next((w for w in watches if w.failure is not None), None)
            if wave is not None and failed is not None:
                return failed
            live = [w for w in watches if not w.done]
            if wave is not None and all(w.done or w.ready for w in wave):
                return None
            if wave is not None and not until_ready and asked:
                return None
            asked = True
            if not live:
                return failed
            now = monotonic()
            pause = min([POLL_INTERVAL, *(w.ends - now for w in live if w.ends > now)])
            if pause > 0:
                sleep(pause)
            answers = self.statuses([w.workload for w in live])
            now = monotonic()
            kept: list[Watch] = []
            for watch in live:
                answer = answers[watch.workload.unit]
                if isinstance(answer, str):
                    watch.failure = answer
                else:
                    watch.failure, watch.ready = judge(watch.started, answer)
                    if watch.failure is None and now >= watch.deadline and not watch.ready:
                        watch.failure = not_ready(self.options.watch, answer)
                if watch.failure is None and watch.ready and now >= watch.ends:
                    kept.append(watch)
            if kept:
                self.conclude(kept)

    def _settle(self, watches: Sequence[Watch]) -> None:
        """Conclude every watch that failed, with the others the same image reached."""
        failed = [w for w in watches if w.failure is not None and not w.done]
        if failed:
            self._spread(failed, watches)
            self.conclude([w for w in watches if w.failure is not None and not w.done])

    def _spread(self, failed: Sequence[Watch], watches: Sequence[Watch]) -> None:
        """A failed image fails every unit it reached that still is under watch."""
        for bad in failed:
            for other in watches:
                if (
                    other.failure is None
                    and not other.done
                    and same_image(other.new.image_id, bad.new.image_id)
                ):
                    other.failure = (
                        f"rolled back with {bad.workload.unit}, which failed on the same "
                        f"image: {bad.failure}"
                    )

    def conclude(self, watches: Sequence[Watch]) -> None:
        """Keep the update of the watches without a failure; roll back the others."""
        from atoll.workloads.autoupdate.updater import Updated

        back: list[Watch] = []
        for watch in watches:
            watch.done = True
            unit, report = watch.workload.unit, watch.report
            if watch.failure is None:
                report.updated, report.reason = Updated.TRUE, ""
                self.updater._remember(
                    unit, image=watch.workload.image, current=watch.new, previous=watch.old,
                    end_trial=True, save=False,
                )  # fmt: skip
                continue
            log.warning(
                "%s: the update to %s failed: %s", unit, _id(watch.new.digest), watch.failure
            )
            report.reason = watch.failure
            if not self.options.rollback:
                report.updated = Updated.FAILED
                self.updater._remember(
                    unit, image=watch.workload.image, current=watch.new, previous=watch.old,
                    end_trial=True, save=False,
                )  # fmt: skip
                continue
            back.append(watch)
        self.updater._save()
        if back:
            self.roll_back(back)

    def roll_back(self, watches: Sequence[Watch]) -> None:
        """Restart every unit of *watches* on its previous image; wait until each is ready."""
        from atoll.workloads.autoupdate.updater import Updated

        steps = [Step(w.workload, w.old.image_id) for w in watches]
        results = self.restart_all(steps)
        waiting: list[tuple[Watch, UnitStatus]] = []
        for watch, step, result in zip(watches, steps, results, strict=True):
            self.expected[watch.workload.unit] = (step, watch.report, True)
            if result.failure is not None:
                prefix = (
                    "re-tagging the previous image failed"
                    if result.tagging
                    else ("the previous image did not start again either")
                )
                watch.report.reason = f"{watch.failure}; {prefix}: {result.failure}"
                watch.report.updated = Updated.FAILED
            else:
                assert result.status is not None
                waiting.append((watch, result.status))
        for (watch, _), back in zip(waiting, self._wait_ready(waiting), strict=True):
            if back is not None:
                watch.report.updated = Updated.FAILED
                watch.report.reason = (
                    f"{watch.failure}; the previous image did not start again either: {back}"
                )
            else:
                watch.report.updated = Updated.ROLLED_BACK
        for watch, result in zip(watches, results, strict=True):
            if result.tagging:
                continue
            unit = watch.workload.unit
            entry = RolledBack(
                watch.new.digest or "", watch.new.image_id, watch.failure or "", utc_timestamp()
            )
            self.updater._remember(
                unit, image=watch.workload.image, rollback=entry, end_trial=True, save=False
            )
            with self.updater._lock:
                watch.report.rolled_back_digests = tuple(
                    e.digest for e in self.updater._state_of(unit).rolled_back
                )
        self.updater._save()

    def _wait_ready(self, started: Sequence[tuple[Watch, UnitStatus]]) -> list[str | None]:
        """Watch units restarted on a known image until each is ready (or the window ends)."""
        verdicts: list[str | None] = [None] * len(started)
        ready = [False] * len(started)
        deadline = self.updater.monotonic() + self.options.watch
        while True:
            live = [i for i in range(len(started)) if not ready[i] and verdicts[i] is None]
            if not live:
                return verdicts
            answers = self.statuses([started[i][0].workload for i in live])
            late = self.updater.monotonic() >= deadline
            for i in live:
                answer = answers[started[i][0].workload.unit]
                if isinstance(answer, str):
                    verdicts[i] = answer
                    continue
                verdicts[i], ready[i] = judge(started[i][1], answer)
                if verdicts[i] is None and not ready[i] and late:
                    verdicts[i] = not_ready(self.options.watch, answer)
            if any(not ready[i] and verdicts[i] is None for i in live):
                self.updater.sleep(POLL_INTERVAL)

    # --- after the run ---------------------------------------------------------------

    def verify(self) -> None:
        """Ask every unit this run restarted what it runs now, start again one a
        rollback left down, and make its report say what is true."""
        from atoll.workloads.autoupdate.updater import Updated

        entries = list(self.expected.values())
        if not entries:
            return
        answers = self.statuses([step.workload for step, _, _ in entries])
        down = [
            (step, report)
            for step, report, back in entries
            if back and not _up(answers[step.workload.unit])
        ]
        if down:
            log.warning("starting again %d unit(s) a rollback left down", len(down))
            results = self.restart_all([step for step, _ in down])
            for (step, report), result in zip(down, results, strict=True):
                if result.status is not None:
                    answers[step.workload.unit] = result.status
                    report.reason = _joined(report.reason, "started again after the run")
        for step, report, back in entries:
            answer = answers[step.workload.unit]
            if isinstance(answer, str):
                report.updated = Updated.FAILED
                report.reason = _joined(report.reason, f"after the run, {answer}")
            elif not _up(answer):
                report.updated = Updated.FAILED
                report.reason = _joined(
                    report.reason, f"after the run the unit is {answer.state} ({answer.result})"
                )
            elif (
                answer.image_id and step.image_id and not same_image(answer.image_id, step.image_id)
            ):
                report.updated = Updated.FAILED
                report.reason = _joined(
                    report.reason,
                    f"after the run its container runs image {_id(answer.image_id)}, "
                    f"not {_id(step.image_id)}",
                )
            elif back:
                report.updated = Updated.ROLLED_BACK


def _rounds(steps: Sequence[Step]) -> list[list[int]]:
    """The steps' indices cut into rounds in which each tag names one image."""
    rounds: list[tuple[dict[str, str | None], list[int]]] = []
    for i, step in enumerate(steps):
        tag = step.tag
        for tags, indices in rounds:
            if tag is None or tag not in tags or same_image(tags[tag], step.image_id):
                if tag is not None:
                    tags[tag] = step.image_id
                indices.append(i)
                break
        else:
            rounds.append(({tag: step.image_id} if tag is not None else {}, [i]))
    return [indices for _, indices in rounds]


def _up(answer: UnitStatus | str) -> bool:
    return not isinstance(answer, str) and answer.state in (UnitState.ACTIVE, UnitState.ACTIVATING)


def _joined(first: str, then: str) -> str:
    return f"{first}; {then}" if first else then


def _id(value: str | None) -> str:
    if not value:
        return "-"
    algo, _, rest = value.partition(":")
    return f"{algo}:{rest[:12]}" if rest else value[:12]
