"""Who serves the address: VRRP version 3's election (RFC 5798, section 6.4) for one group.

A pure state machine: it is given the time and the adverts that arrived, and it
answers with what to do (send an advert, take or release the address). The
agent (atoll.failover.agent) does the I/O; tests drive this with a fake clock.

::

              start                          master down timer fires
     INIT ------------> BACKUP ----------------------------------------> MASTER
                          ^  advert with priority >= ours (always, without     |
                          |  preemption) restarts the master down timer        |
                          |                                                    |
                          +----------------------------------------------------+
                             advert with a higher priority, or an equal one
                             from a name that sorts higher

Timers, for our *priority* and the master's advert *interval* (seconds)::

    skew                  = (256 - priority) / 256 * interval
    master down interval  = 3 * interval + skew

- A backup that hears nothing for the master down interval takes over; the
  skew makes the backup with the highest priority time out first, so two
  backups do not both take over. It learns the interval from the master's
  adverts (VRRPv3's Master_Adver_Interval).
- Without preemption (the default here, unlike VRRP's) a backup accepts any
  master, whatever its priority: a device that comes back does not take the
  address from the one serving it, which would break connections for nothing.
  With preemption a backup ignores a master of lower priority, times out, and
  the master steps down when it hears the backup's first advert.
- A master that stops sends an advert with priority 0; backups then wait only
  their skew time.
- Two masters (they did not hear each other, or both timed out at once):
  each hears the other's advert; the one with the lower priority, or the
  lower name at equal priorities, steps down. A master that hears a lower one
  answers at once with its own advert, so the other steps down quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from atoll.failover.protocol import PRIORITY_RESIGN, Advert


class Role(StrEnum):
    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    STOPPED = "stopped"


class Action(StrEnum):
    #: Send an advert with our priority to every peer.
    SEND = "send"
    #: Send an advert with priority 0 to every peer: we are giving the address up.
    SEND_RESIGN = "send-resign"
    #: Start serving the address (bind and listen).
    TAKE = "take"
    #: Stop serving the address (close the listening socket).
    RELEASE = "release"


def skew_time(priority: int, interval: float) -> float:
    return (256 - priority) * interval / 256


def master_down_interval(priority: int, interval: float) -> float:
    return 3 * interval + skew_time(priority, interval)


@dataclass(frozen=True)
class ElectionSettings:
    name: str
    group: int
    priority: int
    #: Our advert interval in seconds (sent as centiseconds).
    interval: float
    address: str
    preempt: bool = False

    @property
    def interval_cs(self) -> int:
        return max(1, round(self.interval * 100))


@dataclass
class Election:
    settings: ElectionSettings
    role: Role = Role.INIT
    #: Why the role is what it is, in words.
    reason: str = "not started"
    #: The time at which :meth:`tick` must be called next (monotonic seconds).
    deadline: float = float("inf")
    #: The master's advert interval as last heard (ours while we are master).
    master_interval: float = 0.0
    #: The name of the master we last heard from, or ours.
    master: str | None = None
    #: Adverts received that this group dropped (other address, our own name).
    ignored: int = 0
    changes: int = 0
    _last_seen: float = field(default=0.0, repr=False)
    _resigned: bool = field(default=False, repr=False)

    # --- derived timers -------------------------------------------------------------

    @property
    def down_interval(self) -> float:
        return master_down_interval(self.settings.priority, self.master_interval)

    @property
    def skew(self) -> float:
        return skew_time(self.settings.priority, self.master_interval)

    # --- events ---------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.master_interval = self.settings.interval
        self._last_seen = now
        self._become(Role.BACKUP, "started; waiting to hear a master")
        self.deadline = now + self.down_interval
        return []

    def receive(self, advert: Advert, now: float) -> list[Action]:
        if self.role in (Role.INIT, Role.STOPPED):
            return []
        if advert.name == self.settings.name or advert.address != self.settings.address:
            self.ignored += 1
            return []
        if self.role is Role.BACKUP:
            return self._backup_receives(advert, now)
        return self._master_receives(advert, now)

    def tick(self, now: float) -> list[Action]:
        """The timer: call when *now* has reached :attr:`deadline`."""
        if now < self.deadline:
            return []
        if self.role is Role.BACKUP:
            if self._resigned:
                reason = "the master gave the address up"
            else:
                reason = f"no advert from a master for {now - self._last_seen:.2f} s"
            self._resigned = False
            self.master = self.settings.name
            self.master_interval = self.settings.interval
            self._become(Role.MASTER, reason)
            self.deadline = now + self.settings.interval
            return [Action.SEND, Action.TAKE]
        if self.role is Role.MASTER:
            self.deadline = now + self.settings.interval
            return [Action.SEND]
        return []

    def stop(self, now: float) -> list[Action]:
        was_master = self.role is Role.MASTER
        self._become(Role.STOPPED, "stopped")
        self.deadline = float("inf")
        return [Action.SEND_RESIGN, Action.RELEASE] if was_master else []

    # --- the rules ------------------------------------------------------------------

    def _backup_receives(self, advert: Advert, now: float) -> list[Action]:
        if advert.priority == PRIORITY_RESIGN:
            # The master is leaving: wait only the skew, so the best backup goes first.
            self.master = None
            self._resigned = True
            self.deadline = now + self.skew
            self.reason = f"{advert.name} gave the address up"
            return []
        if self.settings.preempt and advert.priority < self.settings.priority:
            self.ignored += 1  # let the master down timer run out: we preempt it
            return []
        self._resigned = False
        if self.master != advert.name:
            self.reason = f"{advert.name} (priority {advert.priority}) is master"
            self.changes += 1
        self.master = advert.name
        self.master_interval = advert.interval
        self._last_seen = now
        self.deadline = now + self.down_interval
        return []

    def _master_receives(self, advert: Advert, now: float) -> list[Action]:
        if advert.priority == PRIORITY_RESIGN:
            self.deadline = now + self.settings.interval
            return [Action.SEND]
        ours = (self.settings.priority, self.settings.name)
        theirs = (advert.priority, advert.name)
        if theirs > ours:
            self.master = advert.name
            self.master_interval = advert.interval
            self._last_seen = now
            self._become(
                Role.BACKUP,
                f"{advert.name} is master too, with priority {advert.priority} "
                f"(ours {self.settings.priority}): stepping down",
            )
            self.deadline = now + self.down_interval
            return [Action.RELEASE]
        # A lower master: answer now so that it steps down without waiting a full interval.
        self.deadline = now + self.settings.interval
        return [Action.SEND]

    def _become(self, role: Role, reason: str) -> None:
        self.role = role
        self.reason = reason
        self.changes += 1
