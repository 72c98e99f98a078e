"""The election as a state machine, driven by a clock the test sets: the timers
are checked to the exact deadline, without waiting for real time."""

from __future__ import annotations

import pytest

from atoll.failover import (
    Action,
    Advert,
    Election,
    ElectionSettings,
    Role,
    master_down_interval,
    skew_time,
)

ADDRESS = "127.0.0.1:8080"


def election(name: str, priority: int, *, interval: float = 1.0, preempt: bool = False) -> Election:
    return Election(ElectionSettings(name, 1, priority, interval, ADDRESS, preempt))


def advert(name: str, priority: int, *, interval_cs: int = 100, address: str = ADDRESS) -> Advert:
    return Advert(1, priority, interval_cs, name, address)


def test_timers_follow_vrrp_version_3() -> None:
    assert skew_time(100, 1.0) == pytest.approx(156 / 256)
    assert master_down_interval(100, 1.0) == pytest.approx(3 + 156 / 256)
    assert master_down_interval(254, 0.5) == pytest.approx(1.5 + 2 * 0.5 / 256)


def test_a_backup_takes_over_exactly_when_the_master_down_interval_has_passed() -> None:
    e = election("dev2", 100)
    assert e.start(0.0) == []
    assert e.role is Role.BACKUP
    e.receive(advert("dev1", 150), 10.0)
    assert e.master == "dev1"
    down = 3 * 1.0 + 156 / 256
    assert e.deadline == pytest.approx(10.0 + down)
    assert e.tick(10.0 + down - 0.001) == []
    assert e.role is Role.BACKUP
    assert e.tick(10.0 + down) == [Action.SEND, Action.TAKE]
    assert e.role is Role.MASTER
    assert e.master == "dev2"
    assert "no advert from a master" in e.reason
    # As master it advertises once per interval.
    assert e.deadline == pytest.approx(10.0 + down + 1.0)
    assert e.tick(e.deadline) == [Action.SEND]


def test_each_advert_restarts_the_backups_timer() -> None:
    e = election("dev2", 100)
    e.start(0.0)
    for t in range(1, 20):
        e.receive(advert("dev1", 150), float(t))
        assert e.tick(float(t) + 0.999) == []
    assert e.role is Role.BACKUP


def test_the_backup_learns_the_masters_interval() -> None:
    e = election("dev2", 128, interval=1.0)
    e.start(0.0)
    e.receive(advert("dev1", 150, interval_cs=20), 5.0)
    assert e.deadline == pytest.approx(5.0 + 3 * 0.2 + 128 * 0.2 / 256)


def test_the_backup_with_the_highest_priority_times_out_first() -> None:
    high, low = election("a", 200), election("b", 50)
    high.start(0.0)
    low.start(0.0)
    assert high.deadline < low.deadline
    assert high.tick(high.deadline) == [Action.SEND, Action.TAKE]
    # Its first advert reaches the other backup before that one's timer runs out.
    low.receive(advert("a", 200), high.deadline)
    assert low.tick(low.deadline - 1e-9) == []
    assert low.role is Role.BACKUP


def test_a_resigning_master_is_replaced_after_the_skew_time_only() -> None:
    e = election("dev2", 100)
    e.start(0.0)
    e.receive(advert("dev1", 150), 1.0)
    e.receive(advert("dev1", 0), 1.5)
    assert e.deadline == pytest.approx(1.5 + 156 / 256)
    assert e.tick(e.deadline) == [Action.SEND, Action.TAKE]
    assert e.reason == "the master gave the address up"


def test_stopping_a_master_resigns_and_releases() -> None:
    e = election("dev1", 150)
    e.start(0.0)
    e.tick(e.deadline)
    assert e.stop(9.0) == [Action.SEND_RESIGN, Action.RELEASE]
    assert e.role is Role.STOPPED
    assert election("x", 1).stop(0.0) == []


def test_without_preemption_a_backup_accepts_a_master_of_lower_priority() -> None:
    e = election("dev1", 200)
    e.start(0.0)
    e.receive(advert("dev2", 100), 0.5)
    assert e.tick(0.5 + 3.0) == []  # 3 s < 3 s + skew
    assert e.role is Role.BACKUP
    assert e.master == "dev2"


def test_with_preemption_a_backup_ignores_a_lower_master_and_takes_over() -> None:
    e = election("dev1", 200, preempt=True)
    e.start(0.0)
    e.receive(advert("dev2", 100), 0.5)
    assert e.master is None
    assert e.tick(e.deadline) == [Action.SEND, Action.TAKE]


def test_two_masters_the_lower_steps_down_and_the_higher_answers() -> None:
    low = election("dev2", 100)
    low.start(0.0)
    low.tick(low.deadline)
    high = election("dev1", 150)
    high.start(0.0)
    high.tick(high.deadline)
    assert low.receive(advert("dev1", 150), 5.0) == [Action.RELEASE]
    assert low.role is Role.BACKUP
    assert "stepping down" in low.reason
    assert high.receive(advert("dev2", 100), 5.0) == [Action.SEND]
    assert high.role is Role.MASTER


def test_equal_priorities_are_broken_by_name() -> None:
    a, b = election("dev-a", 100), election("dev-b", 100)
    for e in (a, b):
        e.start(0.0)
        e.tick(e.deadline)
    assert a.receive(advert("dev-b", 100), 4.0) == [Action.RELEASE]
    assert b.receive(advert("dev-a", 100), 4.0) == [Action.SEND]
    assert (a.role, b.role) == (Role.BACKUP, Role.MASTER)


def test_adverts_for_another_address_or_with_our_name_are_ignored() -> None:
    e = election("dev2", 100)
    e.start(0.0)
    e.receive(advert("dev1", 150, address="127.0.0.1:9090"), 1.0)
    e.receive(advert("dev2", 150), 1.0)
    assert e.ignored == 2
    assert e.master is None
    assert e.tick(e.deadline) == [Action.SEND, Action.TAKE]
