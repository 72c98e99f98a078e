"""How ``atoll workload auto-update`` restarts units: in waves, watched together.

The units of one dependency level (see :mod:`atoll.workloads.autoupdate.updater`) are
restarted in **waves** of *parallel* units.  A restart is work (podman
processes), the watch window is waiting: every restarted unit is watched in
one loop, each until its own restart time + the watch window.  The first wave
is a canary: the next starts once every unit of it is ready (active, and
healthy or without a health check); each later wave starts as soon as the
restarts of the one before succeeded and its units were asked once more.  A
good image so reaches all units in about ``restarts + watch window``.  A
failure stops the waves: the units not reached keep their image (and do not
take the failed digest later); every unit the failing image reached is rolled
back together (a unit that fails runs the same image as the others, and that
image is what failed).

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


@dataclass
class Watch:
    """A unit restarted onto *new* (from *old*), watched until *deadline*."""

    workload: Workload
    report: UnitReport
    new: ImageRecord
    old: ImageRecord
    started: UnitStatus
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

    def restart_all(self, steps: Sequence[Step]) -> list[Restarted]:
        """Restart every step, round by round (see the module docstring)."""
        results: list[Restarted] = [Restarted(None, "not restarted")] * len(steps)
        for indices in _rounds(steps):
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
            done = list(self.pool.map(lambda i: self._restart(steps[i]), todo))
            for i, result in zip(todo, done, strict=True):
                results[i] = result
            crashpoint("autoupdate-restarted")
        return results

    def _restart(self, step: Step) -> Restarted:
        try:
            started = self.updater.manager.restart(
                step.workload.service, self.options.restart_timeout
            )
        except AtollError as exc:
            return Restarted(None, f"the restart failed: {exc.message}")
        if started.state in (UnitState.FAILED, UnitState.INACTIVE):
            return Restarted(
                started, f"the restart failed: the unit is {started.state} ({started.result})"
            )
        if started.image_id and step.image_id and not same_image(started.image_id, step.image_id):
            return Restarted(
                started,
                f"the restarted container runs image {_id(started.image_id)}, "
                f"not {_id(step.image_id)}",
            )
        return Restarted(started)

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
        """Update *plans* (one dependency level) wave by wave."""

        size = max(1, self.options.parallel)
        queue = list(plans)
        watches: list[Watch] = []
        stop: Watch | None = None
        first = True
        while queue and stop is None:
            wave, queue = queue[:size], queue[size:]
            begun = self._begin([p for p in wave if self.updater._pull(p)])
            watches += begun
            # The first wave must be ready (its health checks pass) before another
            # starts; later waves only need their restarts to have succeeded, and
            # the watch goes on meanwhile.
            stop = self._watch(watches, begun, until_ready=first)
            first = first and not begun
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
            self.updater._remember(plan.workload.unit, image=plan.workload.image, rollback=entry)
            with self.updater._lock:
                report.rolled_back_digests = tuple(
                    e.digest for e in self.updater._state_of(plan.workload.unit).rolled_back
                )

    def _begin(self, plans: Sequence[_Plan]) -> list[Watch]:
        """Tag and restart a wave; return its watches (with the failure of a restart
        that failed; _watch concludes them)."""
        from atoll.workloads.autoupdate.updater import Updated

        items: list[tuple[_Plan, ImageRecord, ImageRecord]] = []
        for plan in plans:
            old = ImageRecord(plan.report.old_digest, plan.status.image_id, utc_timestamp())
            new = ImageRecord(plan.target_digest, plan.target_image_id, utc_timestamp())
            # Durable before the tag moves: a run stopped from here on is finished by
            # the next one (AutoUpdater._resume), which must not take it unwatched.
            self.updater._remember(plan.workload.unit, trial=Trial(new, old))
            items.append((plan, new, old))
        steps = [
            Step(p.workload, new.image_id, tagged=p.workload.policy == AutoUpdatePolicy.LOCAL)
            for p, new, _ in items
        ]
        watches: list[Watch] = []
        deadline = self.updater.monotonic() + self.options.watch
        for (plan, new, old), step, result in zip(
            items, steps, self.restart_all(steps), strict=True
        ):
            workload, report = plan.workload, plan.report
            if result.tagging:
                report.updated = Updated.FAILED
                report.reason = f"tagging the new image as {workload.image}: {result.failure}"
                self.updater._remember(workload.unit, end_trial=True)
                continue
            self.expected[workload.unit] = (step, report, False)
            started = result.status or plan.status
            if result.status is not None:
                report.container = result.status.container
            watches.append(
                Watch(workload, report, new, old, started, deadline, failure=result.failure)
            )
        return watches

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
            pause = min([POLL_INTERVAL, *(w.deadline - now for w in live)])
            if pause > 0:
                sleep(pause)
            answers = self.statuses([w.workload for w in live])
            now = monotonic()
            for watch in live:
                answer = answers[watch.workload.unit]
                if isinstance(answer, str):
                    watch.failure = answer
                else:
                    watch.failure, watch.ready = judge(watch.started, answer)
                    if watch.failure is None and now >= watch.deadline and not watch.ready:
                        watch.failure = not_ready(self.options.watch, answer)
                if watch.failure is None and now >= watch.deadline:
                    self.conclude([watch])

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
                    end_trial=True,
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
                    end_trial=True,
                )  # fmt: skip
                continue
            back.append(watch)
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
            self.updater._remember(unit, image=watch.workload.image, rollback=entry, end_trial=True)
            with self.updater._lock:
                watch.report.rolled_back_digests = tuple(
                    e.digest for e in self.updater._state_of(unit).rolled_back
                )

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
