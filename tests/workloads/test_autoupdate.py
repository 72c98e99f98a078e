"""Auto-update: registry checks, pulls, rollback, state, windows, order, pruning.

The registry, skopeo and podman are real (podman with a store of the test's
own).  The service manager is :class:`FakeManager`, which stands in for the
service manager only: no container runs; a restart "runs" whatever image the
unit's ``Image=`` tag names in podman's store, as ``podman run IMAGE`` would,
and behaves as the image's ``test.behaviour`` label says (``exit``: the
restart fails; ``unhealthy``: healthy, then unhealthy 5 s after the restart;
``slow``: starting for 4 s after the restart, then healthy).
Time is a fake clock, so a 60 s watch window costs nothing.  The same flows run
against the real supervisor and real containers in test_autoupdate_e2e.py.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from atoll.errors import StartLimitHitError, UnitFailedError, WorkloadUpdateStateError
from atoll.podman import isolated_environment
from atoll.workloads.autoupdate.localimages import Podman
from atoll.workloads.autoupdate.state import STATE_FILE
from atoll.workloads.autoupdate.units import workloads_from
from atoll.workloads.autoupdate.updater import (
    AutoUpdateOptions,
    AutoUpdater,
    AutoUpdateResult,
    Updated,
)
from atoll.workloads.control import Health, UnitState, UnitStatus
from atoll.workloads.unitfiles.quadlet import load_units
from helpers.cli import run_atoll
from helpers.images import build_image, build_multiarch
from helpers.parts import require_tool
from helpers.registry import RegistryView
from helpers.workloads import (
    EXITS_AT_ONCE,
    GOOD,
    UNHEALTHY_AFTER_5S,
    SupervisorProcess,
    WorkloadEnv,
    free_port,
    http_get,
    release_workload_image,
    wait_for,
)

NOON = datetime.datetime(2026, 1, 5, 12, 0, tzinfo=datetime.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class RecordingPodman(Podman):
    """Real podman; remembers what it was asked to pull."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.pulled: list[str] = []
        self.pull_calls: list[list[str]] = []

    def pull(self, refs: Iterable[str], *, arch: str | None = None) -> list[str]:
        wanted = list(refs)
        self.pulled.extend(wanted)
        self.pull_calls.append(wanted)
        return super().pull(wanted, arch=arch)

    def preload(self, *refs: str) -> None:
        """Pull as the test's setup (not recorded)."""
        super().pull(refs)

    def podman(self, *args: str) -> str:
        proc = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def image_id(self, ref: str) -> str:
        info = self.inspect([ref])[ref]
        assert info is not None, f"no image {ref}"
        return info.id


class FakeManager:
    """Stands in for the service manager (see the module docstring)."""

    def __init__(self, podman: RecordingPodman, clock: FakeClock, images: dict[str, str]) -> None:
        self.podman = podman
        self.clock = clock
        self.images = images  # service -> Image=
        self.running = {svc: podman.image_id(image) for svc, image in images.items()}
        self.started_at = dict.fromkeys(images, clock.now)
        self.behaviour: dict[str, str] = {}
        self.restarted: list[str] = []
        self.container_ids: dict[str, str] = {}

    def _status(self, unit: str, state: UnitState = UnitState.ACTIVE) -> UnitStatus:
        image_id = self.running[unit]
        health = Health.HEALTHY
        if (
            self.behaviour.get(image_id) == "unhealthy"
            and self.clock.now - self.started_at[unit] > 5
        ):
            health = Health.UNHEALTHY
        if self.behaviour.get(image_id) == "slow" and self.clock.now - self.started_at[unit] < 4:
            health = Health.STARTING
        return UnitStatus(
            unit=unit.replace(".service", ".container"),
            name=unit.removesuffix(".service"),
            service=unit,
            state=state,
            result="success" if state is UnitState.ACTIVE else "exit-code",
            container=f"systemd-{unit.removesuffix('.service')}",
            container_id=self.container_ids.get(unit, f"c-{image_id[:12]}"),
            image=self.images[unit],
            image_id=image_id,
            health=health,
            restarts=0,
            since="2026-01-01T00:00:00Z",
            main_pid=1,
        )

    def status(self, unit: str) -> UnitStatus:
        return self._status(unit)

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        self.restarted.append(unit)
        # Each restart makes a new container (of this unit only: others are watched meanwhile).
        self.container_ids[unit] = f"c-{unit}-{len(self.restarted)}"
        image_id = self.podman.image_id(self.images[unit])
        self.running[unit] = image_id
        self.started_at[unit] = self.clock.now
        if image_id not in self.behaviour:
            label = self.podman.podman(
                "image", "inspect", "--format", '{{index .Labels "test.behaviour"}}', image_id
            )
            self.behaviour[image_id] = "" if label == "<no value>" else label
        if self.behaviour[image_id] == "exit":
            raise UnitFailedError(f"{unit} failed: the container exited with status 1")
        return self._status(unit)


class Setup:
    def __init__(self, tmp_path: Path, registry: RegistryView) -> None:
        require_tool("podman")
        require_tool("skopeo")
        self.tmp = tmp_path
        self.registry = registry
        conf = Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
        env = {**os.environ, **isolated_environment(tmp_path / "podman", registries_conf=conf)}
        self.podman = RecordingPodman(env)
        self.clock = FakeClock()
        self.units = tmp_path / "units"
        self.units.mkdir()
        self.state_dir = tmp_path / "state"
        self.repo = registry.new_repo("autoupdate")
        self.pushed = 0

    def image(self, tag: str = "stable", repo: str | None = None) -> str:
        return f"{self.registry.host}/{repo or self.repo}:{tag}"

    def push(self, tag: str = "stable", *, seed: str, behaviour: str = "", repo: str = "") -> str:
        """Push a new image under TAG; return its manifest digest."""
        self.pushed += 1
        layout = self.tmp / f"layout-{self.pushed}"
        labels = {"test.behaviour": behaviour} if behaviour else {}
        built = build_image(layout, tag, layers=1, layer_size=512, seed=seed, labels=labels)
        self.registry.skopeo(
            "copy",
            "--quiet",
            *self.registry.skopeo_args("dest"),
            f"oci:{layout}:{tag}",
            f"docker://{self.image(tag, repo or None)}",
        )
        return built.manifest_digest

    def unit(self, name: str, image: str, extra: str = "", policy: str = "registry") -> None:
        (self.units / f"{name}.container").write_text(
            f"[Container]\nImage={image}\nAutoUpdate={policy}\n{extra}"
        )

    def manager(self, images: dict[str, str]) -> FakeManager:
        return FakeManager(self.podman, self.clock, images)

    def web_v1(self, extra: str = "") -> tuple[str, str, FakeManager]:
        """Push v1 as ``stable`` and run it as ``web.container`` (with *extra* unit
        lines); return (v1's digest, the image, the manager running it)."""
        v1 = self.push(seed="v1")
        image = self.image()
        self.podman.preload(image)
        self.unit("web", image, extra)
        return v1, image, self.manager({"web.service": image})

    def run(self, manager: FakeManager, **options: object) -> AutoUpdateResult:
        updater = AutoUpdater(
            manager,
            ctx=self.registry.ctx(),
            podman=self.podman,
            state_dir=self.state_dir,
            options=AutoUpdateOptions(**options),  # type: ignore[arg-type]
            now=lambda: NOON,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
        )
        return updater.run(workloads_from(load_units([self.units])))

    def state(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.state_dir / STATE_FILE).read_text())
        return data


@pytest.fixture
def setup(tmp_path: Path, registry: RegistryView) -> Setup:
    return Setup(tmp_path, registry)


def only(result: AutoUpdateResult) -> dict[str, object]:
    assert len(result.reports) == 1
    return result.reports[0].to_json()


@pytest.mark.integration
def test_tag_move_update_rollback_and_no_second_pull(setup: Setup) -> None:
    v1, image, manager = setup.web_v1()
    v1_id = manager.running["web.service"]

    v2 = setup.push(seed="v2")
    report = only(setup.run(manager))
    assert report["updated"] == "true", report
    assert report["digest"] == {"old": v1, "new": v2}
    v2_id = setup.podman.image_id(image)
    assert v2_id != v1_id and manager.running["web.service"] == v2_id
    assert setup.podman.pulled == [f"{image.rsplit(':', 1)[0]}@{v2}"]
    units = setup.state()["units"]
    assert isinstance(units, dict)
    assert units["web.container"]["current"]["digest"] == v2
    assert units["web.container"]["previous"]["digest"] == v1

    # Nothing moved: nothing pulled, nothing restarted.
    report = only(setup.run(manager))
    assert (report["updated"], report["reason"]) == ("false", "up to date")
    assert len(setup.podman.pulled) == 1 and manager.restarted == ["web.service"]

    v3 = setup.push(seed="v3", behaviour="exit")
    result = setup.run(manager)
    report = only(result)
    assert report["updated"] == "rolled back", report
    assert "restart failed" in str(report["reason"]) and "exited" in str(report["reason"])
    assert report["rolledBackDigests"] == [v3]
    assert not result.ok and result.to_json()["rolledBack"] == ["web.container"]
    assert setup.podman.image_id(image) == v2_id, "the tag points at the previous image again"
    assert manager.running["web.service"] == v2_id

    # The rolled-back digest is not pulled again while the tag stays on it.
    pulls = len(setup.podman.pulled)
    result = setup.run(manager)
    report = only(result)
    assert report["updated"] == "false" and "rolled back" in str(report["reason"])
    assert len(setup.podman.pulled) == pulls and result.ok

    # The tag moves on: the new digest is taken; v1 (older than previous) and the
    # rolled-back v3 are pruned, the previous v2 is kept for a rollback.
    v3_id = setup.podman.image_id(f"{image.rsplit(':', 1)[0]}@{v3}")
    v4 = setup.push(seed="v4")
    report = only(setup.run(manager))
    assert report["updated"] == "true" and report["digest"] == {"old": v2, "new": v4}
    assert report["rolledBackDigests"] == [v3]
    assert setup.podman.exists(v2_id)
    assert not setup.podman.exists(v1_id)
    assert not setup.podman.exists(v3_id)


@pytest.mark.integration
@pytest.mark.parametrize("parallel", [3, 1])
def test_a_shared_image_is_pulled_once_and_a_failed_pull_costs_only_its_unit(
    setup: Setup, parallel: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to one podman pull per CPU (four here) and per restart at a time: with
    one restart at a time the two new images share one pull, which fails for
    both; each is then pulled alone, so that each unit gets its own answer."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    other_repo = setup.registry.new_repo("other")
    shared, other = setup.image(), setup.image(repo=other_repo)
    setup.push(seed="v1")
    setup.push(seed="o1", repo=other_repo)
    setup.podman.preload(shared, other)
    for name, image in (("a", shared), ("b", shared), ("c", other)):
        setup.unit(name, image)
    manager = setup.manager({"a.service": shared, "b.service": shared, "c.service": other})
    v2 = setup.push(seed="v2")
    setup.push(seed="o2", repo=other_repo)
    # o2's layer is gone from the registry's storage: pulling it fails for real.
    raw = setup.registry.skopeo(
        "inspect", "--raw", *setup.registry.skopeo_args(), f"docker://{other}"
    )
    layer = json.loads(raw.stdout)["layers"][0]["digest"].removeprefix("sha256:")
    (blob,) = setup.registry.server.workdir.rglob(f"blobs/sha256/{layer[:2]}/{layer}/data")
    blob.unlink()

    reports = {r.unit: r.to_json() for r in setup.run(manager, parallel=parallel).reports}
    assert reports["a.container"]["updated"] == reports["b.container"]["updated"] == "true"
    new_shared = f"{shared.rsplit(':', 1)[0]}@{v2}"
    if parallel == 1:
        together, *alone = setup.podman.pull_calls
        assert together[0] == new_shared and len(together) == 2
        assert alone == [[ref] for ref in together]
    else:
        assert setup.podman.pulled.count(new_shared) == 1
    assert reports["c.container"]["updated"] == "failed"
    assert str(reports["c.container"]["reason"]).startswith(f"pulling {other.rsplit(':', 1)[0]}@")
    assert sorted(manager.restarted) == ["a.service", "b.service"]


class LeftDownOnce(FakeManager):
    """The first restart of *unit* onto *image_id* leaves it failed (start-limit-hit),
    as a unit that crashed too often before its rollback is left; the next restart
    starts it."""

    def __init__(self, *args: Any, unit: str, image_id: str) -> None:
        super().__init__(*args)
        self.trap = (unit, image_id)
        self.down: set[str] = set()

    def status(self, unit: str) -> UnitStatus:
        if unit in self.down:
            return replace(self._status(unit, UnitState.FAILED), result="start-limit-hit")
        return super().status(unit)

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        self.down.discard(unit)
        status = super().restart(unit, timeout)
        if (unit, self.running[unit]) == self.trap:
            self.trap = ("", "")
            self.down.add(unit)
            raise StartLimitHitError(f"{unit}: start request repeated too quickly")
        return status


@pytest.mark.integration
def test_units_on_one_tag_roll_back_each_onto_its_own_image_and_none_is_left_down(
    setup: Setup,
) -> None:
    """Four units share one tag but ran two different images before a bad one:
    each restart runs the image meant for its unit (the tag is never moved while
    another unit's restart may read it), and a unit the rollback left failed is
    started again, its report saying what runs after the run."""
    v1 = setup.push(seed="v1")
    image = setup.image()
    repo = image.rsplit(":", 1)[0]
    setup.podman.preload(image)
    v1_id = setup.podman.image_id(image)
    other = setup.push("other", seed="v1b")
    setup.podman.preload(f"{repo}@{other}")
    other_id = setup.podman.image_id(f"{repo}@{other}")
    names = ["a", "b", "c", "d"]
    for name in names:
        setup.unit(name, image)
    manager = LeftDownOnce(
        setup.podman,
        setup.clock,
        {f"{n}.service": image for n in names},
        unit="d.service",
        image_id=other_id,
    )
    before = {"a.service": v1_id, "b.service": other_id, "c.service": v1_id, "d.service": other_id}
    manager.running.update(before)
    setup.push(seed="v2", behaviour="exit")

    result = setup.run(manager, parallel=4)
    reports = {r.unit: r for r in result.reports}
    assert {u: r.updated for u, r in reports.items()} == dict.fromkeys(
        [f"{n}.container" for n in names], Updated.ROLLED_BACK
    ), result.to_json()
    assert manager.running == before
    assert manager.down == set()
    assert "started again after the run" in reports["d.container"].reason
    assert {r.old_digest for r in result.reports} == {v1, other}


class OneUnitFails(FakeManager):
    """Restarting *unit* on any image but its first fails (as a unit whose own
    configuration does not suit the new image would)."""

    def __init__(self, *args: Any, unit: str) -> None:
        super().__init__(*args)
        self.unit, self.first = unit, self.running[unit]

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        status = super().restart(unit, timeout)
        if unit == self.unit and self.running[unit] != self.first:
            raise UnitFailedError(f"{unit} failed: the container exited with status 1")
        return status


@pytest.mark.integration
def test_a_failure_in_a_wave_rolls_back_the_wave_and_stops_the_next(setup: Setup) -> None:
    setup.push(seed="v1")
    image = setup.image()
    setup.podman.preload(image)
    v1_id = setup.podman.image_id(image)
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        setup.unit(name, image)
    manager = OneUnitFails(
        setup.podman, setup.clock, {f"{n}.service": image for n in names}, unit="b.service"
    )
    v2 = setup.push(seed="v2")

    result = setup.run(manager, parallel=2)
    reports = {r.unit.removesuffix(".container"): r for r in result.reports}
    assert {n: r.updated for n, r in reports.items()} == {
        "a": Updated.ROLLED_BACK,
        "b": Updated.ROLLED_BACK,
        "c": Updated.FALSE,
        "d": Updated.FALSE,
        "e": Updated.FALSE,
    }, result.to_json()
    assert reports["a"].reason.startswith("rolled back with b.container"), reports["a"].reason
    assert reports["c"].reason.startswith("not restarted"), reports["c"].reason
    assert sorted(set(manager.restarted)) == ["a.service", "b.service"]
    assert manager.running == dict.fromkeys(manager.running, v1_id)
    # The units not reached do not take the failed digest on the next run either.
    again = {r.unit: r.updated for r in setup.run(manager, parallel=2).reports}
    assert set(again.values()) == {Updated.FALSE}, again
    assert all(r.rolled_back_digests == (v2,) for r in result.reports)


@pytest.mark.integration
def test_a_failure_after_the_canary_stops_the_restarts_not_begun(setup: Setup) -> None:
    """After the canary (a), the rest restart one slot at a time here: c fails, so
    d and e are never restarted, and a, b and c, which the image reached, roll back."""
    setup.push(seed="v1")
    image = setup.image()
    setup.podman.preload(image)
    v1_id = setup.podman.image_id(image)
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        setup.unit(name, image)
    manager = OneUnitFails(
        setup.podman, setup.clock, {f"{n}.service": image for n in names}, unit="c.service"
    )
    setup.push(seed="v2")

    result = setup.run(manager, parallel=1)
    reports = {r.unit.removesuffix(".container"): r for r in result.reports}
    assert {n: r.updated for n, r in reports.items()} == {
        "a": Updated.ROLLED_BACK,
        "b": Updated.ROLLED_BACK,
        "c": Updated.ROLLED_BACK,
        "d": Updated.FALSE,
        "e": Updated.FALSE,
    }, result.to_json()
    assert reports["d"].reason.startswith("not restarted"), reports["d"].reason
    assert sorted(set(manager.restarted)) == ["a.service", "b.service", "c.service"]
    assert manager.running == dict.fromkeys(manager.running, v1_id)


@pytest.mark.integration
def test_a_fault_in_a_pull_reaches_the_caller_instead_of_hanging(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a pull that failed but a fault (a bug, an interrupt): the run ends with
    it, and the unit that waited for the image is not left waiting."""
    _, _, manager = setup.web_v1()
    setup.push(seed="v2")

    def broken(refs: Iterable[str], *, arch: str | None = None) -> list[str]:
        raise RuntimeError("a fault in the pull")

    monkeypatch.setattr(setup.podman, "pull", broken)
    with pytest.raises(RuntimeError, match="a fault in the pull"):
        setup.run(manager)
    assert manager.restarted == []


class Killed(BaseException):
    """The auto-update process dies here (SIGKILL, a power cut): nothing after
    this point of the run happens; what it wrote before stays."""


def _dies_at_restart(manager: FakeManager, *, after: bool) -> None:
    """The next restart kills the run: before it restarts the unit, or after."""

    def restart(unit: str, timeout: float | None = None) -> UnitStatus:
        del manager.restart  # type: ignore[method-assign]
        if after:
            FakeManager.restart(manager, unit, timeout)
        raise Killed

    manager.restart = restart  # type: ignore[method-assign]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("behaviour", "updated", "reason"),
    [
        ("", "true", "it stayed healthy for the watch window"),
        ("unhealthy", "rolled back", "the container turned unhealthy"),
    ],
)
def test_an_update_a_killed_run_left_is_watched_before_it_is_kept(
    setup: Setup, behaviour: str, updated: str, reason: str
) -> None:
    v1, image, manager = setup.web_v1()
    v1_id = manager.running["web.service"]
    v2 = setup.push(seed="v2", behaviour=behaviour)
    _dies_at_restart(manager, after=True)
    with pytest.raises(Killed):
        setup.run(manager, watch=8.0)
    # Killed while watching: the unit runs v2, which nobody has seen stay healthy.
    unit = setup.state()["units"]["web.container"]  # type: ignore[index]
    assert unit["trial"]["new"]["digest"] == v2 and unit["trial"]["old"]["digest"] == v1
    assert manager.running["web.service"] != v1_id

    report = only(setup.run(manager, watch=8.0))
    assert report["updated"] == updated, report
    assert report["reason"] == f"a stopped run left this update unproven; {reason}"
    unit = setup.state()["units"]["web.container"]  # type: ignore[index]
    assert unit["trial"] is None
    if updated == "true":
        assert unit["current"]["digest"] == v2 and unit["previous"]["digest"] == v1
    else:
        assert manager.running["web.service"] == setup.podman.image_id(image) == v1_id
        assert report["rolledBackDigests"] == [v2]
    # Settled: the next run has nothing left over.
    again = only(setup.run(manager, watch=8.0))
    assert again["updated"] == "false", again


@pytest.mark.integration
def test_a_run_killed_before_the_restart_puts_the_tag_back_and_starts_over(setup: Setup) -> None:
    _, image, manager = setup.web_v1()
    v1_id = manager.running["web.service"]
    v2 = setup.push(seed="v2")
    _dies_at_restart(manager, after=False)
    with pytest.raises(Killed):
        setup.run(manager)
    # The tag moved but the unit was not restarted: it runs v1 still.
    assert manager.running["web.service"] == v1_id != setup.podman.image_id(image)

    report = only(setup.run(manager, dry_run=True))
    assert report["updated"] == "pending" and "unproven" in str(report["reason"])
    report = only(setup.run(manager))
    assert report["updated"] == "true" and report["digest"]["new"] == v2  # type: ignore[index]
    assert manager.restarted == ["web.service"]
    assert setup.state()["units"]["web.container"]["trial"] is None  # type: ignore[index]


@pytest.mark.integration
def test_unhealthy_after_start_rolls_back_or_fails_without_rollback(setup: Setup) -> None:
    _, image, manager = setup.web_v1()
    v1_id = manager.running["web.service"]
    v2 = setup.push(seed="v2", behaviour="unhealthy")

    report = only(setup.run(manager, watch=8.0))
    assert report["updated"] == "rolled back", report
    assert report["reason"] == "the container turned unhealthy"
    assert setup.podman.image_id(image) == v1_id
    # A 5 s watch ends before the container turns: that update is kept.
    v3 = setup.push(seed="v3", behaviour="unhealthy")
    report = only(setup.run(manager, watch=4.0, rollback=False))
    assert report["updated"] == "true" and report["digest"]["new"] == v3  # type: ignore[index]
    v4 = setup.push(seed="v4", behaviour="exit")
    report = only(setup.run(manager, rollback=False))
    assert report["updated"] == "failed" and report["digest"]["new"] == v4  # type: ignore[index]
    assert report["rolledBackDigests"] == [v2], "v4 failed but was not rolled back"
    assert manager.running["web.service"] == setup.podman.image_id(image) != v1_id


class SlowRestart(FakeManager):
    """Each restart takes *seconds* of the clock before the new container starts."""

    def __init__(self, *args: Any, seconds: float) -> None:
        super().__init__(*args)
        self.seconds = seconds

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        self.clock.now += self.seconds
        return super().restart(unit, timeout)


@pytest.mark.integration
def test_the_watch_window_starts_when_the_restart_returns(setup: Setup) -> None:
    """A restart that takes 6 s does not eat into an 8 s window: the image that
    turns unhealthy 5 s after its container starts is caught and rolled back."""
    setup.push(seed="v1")
    image = setup.image()
    setup.podman.preload(image)
    v1_id = setup.podman.image_id(image)
    setup.unit("web", image)
    manager = SlowRestart(setup.podman, setup.clock, {"web.service": image}, seconds=6.0)
    setup.push(seed="v2", behaviour="unhealthy")

    report = only(setup.run(manager, watch=8.0))
    assert report["updated"] == "rolled back", report
    assert report["reason"] == "the container turned unhealthy"
    assert manager.running["web.service"] == v1_id


@pytest.mark.integration
def test_a_wave_is_watched_together_from_its_first_restart(setup: Setup) -> None:
    """One restart at a time, each taking 6 s, of an image that is ready 4 s after
    it starts: the canary a, then b and c as one wave.  That wave's 8 s window
    starts when b's restart returned (t = 16 s); c, restarted at 22 s, is not
    ready when it ends (24 s) and is kept once it is (26 s), not after a window
    of its own (30 s)."""
    setup.push(seed="v1")
    image = setup.image()
    setup.podman.preload(image)
    names = ["a", "b", "c"]
    for name in names:
        setup.unit(name, image)
    services = {f"{n}.service": image for n in names}
    manager = SlowRestart(setup.podman, setup.clock, services, seconds=6.0)
    setup.push(seed="v2", behaviour="slow")
    started = setup.clock.now

    result = setup.run(manager, watch=8.0, parallel=1)
    assert {r.unit: r.updated for r in result.reports} == {
        f"{n}.container": Updated.TRUE for n in names
    }, result.to_json()
    assert manager.restarted == ["a.service", "b.service", "c.service"]
    assert 26.0 <= setup.clock.now - started < 27.0


@pytest.mark.integration
def test_dry_run_and_update_window_leave_the_unit_pending(setup: Setup) -> None:
    _, _, manager = setup.web_v1('Label="io.atoll.autoupdate.window=* 2-4 * * *"\n')
    v2 = setup.push(seed="v2")

    report = only(setup.run(manager, dry_run=True))
    assert report["updated"] == "pending" and report["digest"]["new"] == v2  # type: ignore[index]
    assert setup.podman.pulled == [] and not (setup.state_dir / STATE_FILE).exists()

    report = only(setup.run(manager))
    assert report["updated"] == "pending"
    assert "outside the update window * 2-4 * * * (UTC)" in str(report["reason"])
    assert "it opens at 2026-01-06 02:00 UTC" in str(report["reason"])
    assert setup.podman.pulled == [] and manager.restarted == []

    report = only(setup.run(manager, ignore_windows=True))
    assert report["updated"] == "true"


@pytest.mark.integration
def test_version_pin_takes_patches_and_reports_newer_minor(setup: Setup) -> None:
    setup.push("1.2.0", seed="1.2.0")
    setup.push("1.2", seed="1.2.0")
    image = setup.image("1.2")
    setup.podman.preload(image)
    setup.unit("web", image)
    manager = setup.manager({"web.service": image})
    patch = setup.push("1.2.3", seed="1.2.3")
    setup.push("1.3.0", seed="1.3.0")
    setup.push("2.0", seed="2.0")

    report = only(setup.run(manager))
    assert report["updated"] == "true", report
    assert report["checkedTag"] == "1.2.3"
    assert report["digest"]["new"] == patch  # type: ignore[index]
    assert report["newerAvailable"] == ["2.0", "1.3.0"]
    pulled = f"{image.rsplit(':', 1)[0]}@{patch}"
    assert setup.podman.pulled == [pulled]
    assert setup.podman.image_id(image) == setup.podman.image_id(pulled)


@pytest.mark.integration
def test_multi_platform_index_compared_by_its_digest(setup: Setup) -> None:
    _, image, manager = setup.web_v1()
    layout = setup.tmp / "multi"
    index_digest, images = build_multiarch(layout, "stable")
    setup.registry.skopeo(
        "copy",
        "--all",
        "--quiet",
        *setup.registry.skopeo_args("dest"),
        f"oci:{layout}:stable",
        f"docker://{image}",
    )
    report = only(setup.run(manager))
    assert report["updated"] == "true" and report["digest"]["new"] == index_digest  # type: ignore[index]
    # podman pulled the host's image out of the index.
    arch = setup.podman.podman("image", "inspect", "--format", "{{.Architecture}}", image)
    assert arch in images
    # A fresh state knows the running image by the index digest podman recorded.
    (setup.state_dir / STATE_FILE).unlink()
    report = only(setup.run(manager))
    assert (report["updated"], report["reason"]) == ("false", "up to date")


@pytest.mark.integration
def test_local_policy_and_dependency_order(setup: Setup) -> None:
    setup.push("db", seed="db1")
    setup.push("web", seed="web1")
    setup.push("cache", seed="cache1")
    db, web, cache = setup.image("db"), setup.image("web"), setup.image("cache")
    setup.podman.preload(db, web, cache)
    setup.unit("db", db, policy="local")
    setup.unit("web", web, "[Unit]\nAfter=db.service\nRequires=db.service\n")
    setup.unit("cache", cache)
    manager = setup.manager({"db.service": db, "web.service": web, "cache.service": cache})
    # local: a new image under the same name in the local store.
    setup.push("db2", seed="db2")
    setup.podman.preload(setup.image("db2"))
    setup.podman.tag(setup.image("db2"), db)
    setup.push("web", seed="web2")
    setup.push("cache", seed="cache2")

    result = setup.run(manager)
    assert [r.updated for r in result.reports] == [Updated.TRUE] * 3, result.to_json()
    assert manager.restarted.index("db.service") < manager.restarted.index("web.service")
    assert len(setup.podman.pulled) == 2, "web and cache pulled; local pulls nothing"

    # A dependency that is rolled back holds back the units that need it.
    setup.push("db3", behaviour="exit", seed="db3")
    setup.podman.preload(setup.image("db3"))
    setup.podman.tag(setup.image("db3"), db)
    setup.push("web", seed="web3")
    result = setup.run(manager)
    by_unit = {r.unit: r for r in result.reports}
    assert by_unit["db.container"].updated is Updated.ROLLED_BACK
    assert by_unit["web.container"].updated is Updated.PENDING
    assert "depends on db.container" in by_unit["web.container"].reason
    assert by_unit["cache.container"].updated is Updated.FALSE
    assert setup.podman.image_id(db) == manager.running["db.service"]


def test_units_read_windows_images_and_dependencies(tmp_path: Path) -> None:
    (tmp_path / "base.image").write_text("[Image]\nImage=reg.example/base:1\n")
    (tmp_path / "a.container").write_text(
        "[Unit]\nAfter=b.service network-online.target\n[Container]\nImage=base.image\n"
        "AutoUpdate=registry\n"
        'Label="io.atoll.autoupdate.window=30 3 * * sun"\n'
        "Label=io.atoll.autoupdate.timezone=Europe/Berlin\n"
    )
    (tmp_path / "b.container").write_text("[Container]\nImage=x/y\nAutoUpdate=sometimes\n")
    (tmp_path / "c.container").write_text("[Container]\nImage=reg.example/c:1\n")
    (tmp_path / "d.container").write_text(
        "[Container]\nImage=reg.example/d:1\nAutoUpdate=local\n"
        "Label=io.atoll.autoupdate.window=61\n"
    )
    found = {w.unit: w for w in workloads_from(load_units([tmp_path]))}
    assert sorted(found) == ["a.container", "b.container", "d.container"]
    a = found["a.container"]
    assert (a.image, a.after, a.problem) == ("reg.example/base:1", ("b.container",), None)
    assert a.window.describe() == "30 3 * * sun (Europe/Berlin)"
    assert found["b.container"].problem == "AutoUpdate=sometimes is not registry or local"
    assert "io.atoll.autoupdate.window" in str(found["d.container"].problem)


class StatusScript:
    """A manager whose status answers come from a list (stands in for the service manager)."""

    def __init__(self, answers: list[UnitStatus]) -> None:
        self.answers = answers

    def status(self, unit: str) -> UnitStatus:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def restart(self, unit: str, timeout: float | None = None) -> UnitStatus:
        raise AssertionError("not used")


def _status(**changes: object) -> UnitStatus:
    base = {
        "unit": "w.container",
        "name": "w",
        "service": "w.service",
        "state": UnitState.ACTIVE,
        "result": "success",
        "container": "systemd-w",
        "container_id": "c1",
        "image": "x",
        "image_id": "i1",
        "health": Health.STARTING,
        "restarts": 0,
        "since": "",
        "main_pid": 1,
    }
    base.update(changes)
    return UnitStatus(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("later", "why"),
    [
        ([_status(health=Health.HEALTHY)], None),
        ([_status(health=Health.NONE)], None),
        ([_status()], "not ready within the 10 s watch window (state active, health starting)"),
        ([_status(health=Health.HEALTHY), _status(restarts=1)], "exited and was started again"),
        ([_status(container_id="c2")], "exited and was started again"),
        ([_status(state=UnitState.FAILED, result="exit-code")], "the unit is failed (exit-code)"),
        ([_status(health=Health.HEALTHY), _status(health=Health.UNHEALTHY)], "turned unhealthy"),
    ],
)
def test_watch_window_judges_the_restarted_unit(
    tmp_path: Path, later: list[UnitStatus], why: str | None
) -> None:
    clock = FakeClock()
    updater = AutoUpdater(
        StatusScript(later),
        state_dir=tmp_path,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )
    verdict = updater.watch("w.service", _status(), 10.0)
    assert verdict == why or (why is not None and verdict is not None and why in verdict)


def test_malformed_state_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    updater = AutoUpdater(StatusScript([_status()]), state_dir=tmp_path)
    with pytest.raises(WorkloadUpdateStateError, match="malformed JSON"):
        updater.run([])
    (tmp_path / STATE_FILE).write_text('{"version": 9, "units": {}}')
    with pytest.raises(WorkloadUpdateStateError, match="newer atoll"):
        updater.run([])


def test_registry_policy_needs_a_fully_qualified_name(tmp_path: Path) -> None:
    (tmp_path / "u").mkdir()
    (tmp_path / "u/w.container").write_text("[Container]\nImage=busybox\nAutoUpdate=registry\n")
    updater = AutoUpdater(StatusScript([_status()]), state_dir=tmp_path / "s")
    result = updater.run(workloads_from(load_units([tmp_path / "u"])))
    assert result.reports[0].updated is Updated.FAILED
    assert "not fully qualified" in result.reports[0].reason
    assert not result.ok


# --- end to end: atoll workload run, real containers, the auto-update command ----------


def _auto_update(
    env: WorkloadEnv, sup: SupervisorProcess, *args: str, crash_at: str | None = None
) -> tuple[int, Any]:
    proc = run_atoll(
        "workload", "auto-update", "--root", str(env.units), "--state-dir", str(sup.state_dir),
        "--update-state-dir", str(env.root / "updates"), "--format", "json", *args,
        crash_at=crash_at,
    )  # fmt: skip
    if crash_at:
        assert proc.returncode == -9, (proc.returncode, proc.stderr)
        return proc.returncode, None
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.integration
@pytest.mark.slow
def test_web_workload_updates_rolls_back_and_keeps_serving(workload_env: WorkloadEnv) -> None:
    env = workload_env
    repo = env.registry.new_repo("web")
    host = env.registry.server.host

    def release(version: str, cmd: tuple[str, ...] = GOOD) -> str:
        return release_workload_image(env.registry, repo, version, "stable", cmd)

    release("v1")
    image = f"{host}/{repo}:stable"
    port = free_port()
    env.unit(
        "web.container",
        f"[Container]\nImage={image}\nAutoUpdate=registry\nPublishPort=127.0.0.1:{port}:8080\n"
        "HealthCmd=test -e /tmp/ok\nHealthInterval=1s\nHealthRetries=2\n",
    )
    sup = env.start_supervisor()
    wait_for(lambda: sup.status("web").health is Health.HEALTHY, "web to be healthy")
    assert http_get(port) == "hello from v1\n"

    # The tag moves v1 -> v2: updated, the new version serves.
    v2 = release("v2")
    code, doc = _auto_update(env, sup, "--watch", "5s")
    assert code == 0, doc
    (unit,) = doc["units"]
    assert (unit["unit"], unit["container"], unit["policy"]) == (
        "web.container",
        "systemd-web",
        "registry",
    )
    assert unit["updated"] == "true" and unit["digest"]["new"] == v2
    assert http_get(port) == "hello from v2\n"

    # v3 exits at once: rolled back, v2 keeps serving, the exit status says so.
    v3 = release("v3", EXITS_AT_ONCE)
    code, doc = _auto_update(env, sup, "--watch", "5s")
    assert code == 56, doc
    (unit,) = doc["units"]
    assert unit["updated"] == "rolled back", unit["reason"]
    assert doc["rolledBack"] == ["web.container"]
    assert unit["digest"] == {"old": v2, "new": v3}
    assert unit["rolledBackDigests"] == [v3]
    assert "failed" in unit["reason"] or "exited" in unit["reason"], unit["reason"]
    assert http_get(port) == "hello from v2\n"
    assert sup.status("web").state is UnitState.ACTIVE

    # The next run does not pull v3 again (it is gone from the store, and stays gone).
    env.podman("rmi", f"{host}/{repo}@{v3}")
    code, doc = _auto_update(env, sup, "--watch", "5s")
    assert code == 0, doc
    assert doc["units"][0]["updated"] == "false"
    assert "rolled back" in doc["units"][0]["reason"]
    proc = subprocess.run(
        ["podman", "image", "exists", f"{host}/{repo}@{v3}"],
        env={**os.environ, **env.podman_env},
        check=False,
    )
    assert proc.returncode == 1, "v3 was pulled again"

    # v4 starts, then turns unhealthy after 5 s: caught by a 15 s watch, rolled back.
    v4 = release("v4", UNHEALTHY_AFTER_5S)
    code, doc = _auto_update(env, sup, "--watch", "15s")
    assert code == 56, doc
    (unit,) = doc["units"]
    assert (unit["updated"], unit["digest"]["new"]) == ("rolled back", v4)
    assert unit["reason"] == "the container turned unhealthy"
    assert http_get(port) == "hello from v2\n"
    wait_for(lambda: sup.status("web").health is Health.HEALTHY, "v2 to be healthy again")

    # Killed (SIGKILL) after the restart, while watching v5, which turns unhealthy:
    # v5 serves unproven; the next run watches it and rolls it back.
    v5 = release("v5", UNHEALTHY_AFTER_5S)
    _auto_update(env, sup, "--watch", "15s", crash_at="autoupdate-restarted")
    assert http_get(port) == "hello from v5\n"
    code, doc = _auto_update(env, sup, "--watch", "15s")
    assert code == 56, doc
    (unit,) = doc["units"]
    assert (unit["updated"], unit["digest"]) == ("rolled back", {"old": v2, "new": v5})
    assert unit["reason"] == (
        "a stopped run left this update unproven; the container turned unhealthy"
    )
    assert http_get(port) == "hello from v2\n"

    # Killed after the tag moved to a good v6, before the restart: v2 still serves;
    # the next run puts the tag back, then takes v6 properly.
    v6 = release("v6")
    _auto_update(env, sup, "--watch", "3s", crash_at="autoupdate-tagged")
    assert http_get(port) == "hello from v2\n"
    code, doc = _auto_update(env, sup, "--watch", "3s")
    assert code == 0, json.dumps(doc["units"])
    assert (doc["units"][0]["updated"], doc["units"][0]["digest"]["new"]) == ("true", v6)
    assert http_get(port) == "hello from v6\n"
    assert sup.stop() == 0
