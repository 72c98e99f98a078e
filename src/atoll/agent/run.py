"""The agent's loop: enroll, poll the rendered spec, put it in place, report.

One round (:meth:`Agent.step`):

1. Until the server approved the enrollment, ask whether it has (``pending``).
2. Long-poll ``GET /api/v1/agent/spec?knownVersion=N&wait=S``: 204 when the
   spec is unchanged, else a signed envelope, opened by :func:`wire.open_spec`
   (bad signature, another device's or older spec: refused; expired: frozen,
   nothing done).  A newer spec is kept as ``pending.json``.
3. Put the pending spec in place: config files, Quadlet units and the update
   policy at once (units it drops are stopped first; when units changed, the
   device's workload manager reads them again, ``atoll workload reload``, and
   the changed containers and pods restart); the OS image through the device's own command line
   (``atoll switch``, which enforces the device's signature policy), only
   while the download window of the device's updates.toml is open (and, when
   another atoll operation holds the sysroot, in a later round: the update is
   reported ``waiting``, not failed).  When the spec's update policy is
   ``apply``, the staged image is applied as the update timer applies it
   (``atoll updates run``: the apply window, the reboot inhibitors, the
   device's reboot).  The
   spec becomes *applied* only when the booted image is the spec's and its
   boot is green; an image the device rolled back from is reported failed.
4. Report the engine's view (booted/staged/rollback digests, health, applied
   version, the update's state) with ``PUT /api/v1/agent/status``.

:meth:`Agent.run` repeats rounds, the first without waiting (so a device
reports what it booted as soon as the agent starts); a server that cannot be reached is retried
with jittered exponential backoff, and nothing is lost meanwhile: the state
directory holds what was applied and what is pending.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import atoll
from atoll import errors
from atoll.agent import wire
from atoll.agent.apply import apply_config, unit_changes
from atoll.agent.client import AgentClient, refusal
from atoll.agent.state import STATE_FORMAT, AgentState
from atoll.run import base_environment, run
from atoll.timeutil import human_time

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
#: The agent replaces its key (and so gets a new certificate) when its
#: certificate has less than this left.
RENEW_BEFORE = datetime.timedelta(days=120)
BACKOFF_MAX = 300.0
#: The update's progress while another atoll operation holds the sysroot.
SYSROOT_BUSY = "sysroot busy: another atoll operation holds it; the next round tries again"


@dataclass(frozen=True)
class Round:
    """What one round did, as the agent reports it to its caller."""

    enrollment: str
    spec_version: int
    applied_version: int
    update: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "enrollment": self.enrollment,
            "specVersion": self.spec_version,
            "appliedVersion": self.applied_version,
            "update": self.update,
            "reason": self.reason,
        }


def enroll(
    state: AgentState, server: str, token: str, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    """Make the device's key (once) and ask *server* to enroll it as *name*."""
    if state.key_path.exists():
        key = wire.load_private_key(state.key_path.read_bytes())
    else:
        from atoll.fsutil import write_atomic

        key = wire.generate_key()
        state.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(state.key_path, wire.private_key_pem(key), 0o600)
    state.write("identity.json", {"format": STATE_FORMAT, "server": server, "device": name})
    client = AgentClient(server, name, key)
    try:
        body = {
            "name": name,
            "publicKey": wire.public_key_pem(key.public_key()),
            "labels": labels,
            "token": token,
        }
        response = client.request("POST", "/api/v1/enrollmentrequests", body=body, signed=False)
    finally:
        client.close()
    if response.status_code != 201:
        raise errors.EnrollmentError(f"enrollment refused: {refusal(response)}")
    data: dict[str, Any] = response.json()
    return data


@dataclass
class Agent:
    state: AgentState
    root: Path = Path("/")
    sysroot: Path | None = None
    #: How the agent runs the device's own atoll (for status and switch).
    atoll: Sequence[str] = field(default_factory=lambda: (sys.executable, "-m", "atoll"))
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    renew_before: datetime.timedelta = RENEW_BEFORE
    #: Who runs the device's workloads (``atoll workload --manager``: auto,
    #: supervisor, systemd), or "none": units are written, nothing reloads them.
    workload_manager: str = "none"
    #: The workload supervisor's state directory (``atoll workload --state-dir``).
    workload_state_dir: Path | None = None
    #: Stage images without a kernel (a container-boot device's ``--allow-no-kernel``).
    allow_no_kernel: bool = False

    def __post_init__(self) -> None:
        server, device = self.state.identity()
        self.device = device
        key = wire.load_private_key(self.state.key_path.read_bytes())
        self.client = AgentClient(server, device, key)
        #: What the last change of units did to each (reported as ``workloads``).
        self.workloads: dict[str, str] = {}
        #: The server asked for a new key (in its answer to a status report).
        self.rotation_requested = False

    def close(self) -> None:
        self.client.close()

    # -- enrollment -------------------------------------------------------------

    def enrollment(self) -> str:
        """The enrollment's state; once approved, its certificate and keys are
        saved, and the device's key is replaced when the certificate nears its
        end or the server asked for it."""
        if self.state.next_key_path.exists():
            self._resume_rotation()
        saved = self.state.read("enrollment.json")
        if saved is not None:
            ending = self._certificate_ends(saved) - self.now() < self.renew_before
            if ending or self.rotation_requested:
                self.rotate_key()
            return "approved"
        response = self.client.request("GET", "/api/v1/agent/enrollment")
        data = self._save_enrollment(response)
        if data.get("state") == "denied":
            raise errors.EnrollmentError(f"device {self.device}: the enrollment was denied")
        return str(data.get("state"))

    def rotate_key(self) -> None:
        """Replace the device's key: a new one is made, the server certifies it
        (the request signed with the old key, the body signed with the new one)
        and from then on refuses the old one.  The new key is written before it
        is sent, so a rotation cut short is finished or dropped next time."""
        from atoll.fsutil import write_atomic

        key = wire.generate_key()
        write_atomic(self.state.next_key_path, wire.private_key_pem(key), 0o600)
        public = wire.public_key_pem(key.public_key())
        proof = wire.sign(key, wire.rotation_message(self.device, public))
        response = self.client.request(
            "POST", "/api/v1/agent/key", body={"publicKey": public, "proof": proof}
        )
        if response.status_code != 200:
            self.state.next_key_path.unlink(missing_ok=True)
            raise errors.EnrollmentError(
                f"device {self.device}: key rotation refused: {refusal(response)}"
            )
        self._save_enrollment(response)
        self._adopt(key)
        log.info("device %s: key rotated", self.device)

    def _adopt(self, key: Any) -> None:
        self.state.next_key_path.replace(self.state.key_path)
        self.client.use_key(key)
        self.rotation_requested = False

    def _resume_rotation(self) -> None:
        """A rotation was cut short: keep the new key if the server has it."""
        key = wire.load_private_key(self.state.next_key_path.read_bytes())
        probe = AgentClient(self.client.server, self.device, key)
        try:
            response = probe.request("GET", "/api/v1/agent/enrollment")
        finally:
            probe.close()
        if response.status_code == 200 and response.json().get("state") == "approved":
            self._save_enrollment(response)
            self._adopt(key)
        else:
            self.state.next_key_path.unlink()

    def _save_enrollment(self, response: Any) -> dict[str, Any]:
        if response.status_code != 200:
            raise errors.EnrollmentError(f"device {self.device}: {refusal(response)}")
        data: dict[str, Any] = response.json()
        if data.get("state") == "approved":
            self.state.write(
                "enrollment.json",
                {k: data[k] for k in ("certificate", "caCertificate", "specKeys")},
            )
        return data

    @staticmethod
    def _certificate_ends(saved: dict[str, Any]) -> datetime.datetime:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(str(saved["certificate"]).encode())
        return cert.not_valid_after_utc

    def _learn_keys(self, announced: Any) -> None:
        """Trust the spec keys a trusted spec lists (the server's rotation)."""
        if not isinstance(announced, list) or not announced:
            return
        keys = [wire.load_public_key(pem) for pem in announced if isinstance(pem, str)]
        saved = self.state.read("enrollment.json") or {}
        if keys and saved.get("specKeys") != announced:
            self.state.write("enrollment.json", {**saved, "specKeys": announced})

    def _spec_keys(self) -> dict[str, Any]:
        saved = self.state.read("enrollment.json") or {}
        keys = [wire.load_public_key(pem) for pem in saved.get("specKeys", [])]
        return {wire.key_id(k): k for k in keys}

    # -- the engine -------------------------------------------------------------

    def engine_status(self) -> dict[str, Any]:
        """Booted, staged and rollback digests and the boot's health, from
        ``atoll status --json`` of the sysroot (nothing without one)."""
        empty: dict[str, Any] = {"booted": None, "staged": None, "rollback": None}
        if self.sysroot is None:
            return {**empty, "health": "unknown", "healthReason": "", "rolledBack": []}
        done = self._atoll("status", "--json", "--sysroot", str(self.sysroot))
        status = json.loads(done.stdout)["status"]

        def digest(entry: dict[str, Any] | None) -> str | None:
            return None if entry is None else entry["image"]["imageDigest"]

        booted = status.get("booted")
        boot_state = (booted or {}).get("atoll", {}).get("bootState")
        health = {"good": "green", "bad": "red"}.get(boot_state or "", "unknown")
        rollback = status["atoll"].get("lastRollback") or {}
        return {
            "booted": digest(booted),
            "staged": digest(status.get("staged")),
            "rollback": digest(status.get("rollback")),
            "health": health,
            "healthReason": json.dumps(rollback.get("reason")) if rollback.get("reason") else "",
            "rolledBack": status["atoll"].get("rolledBackImages") or [],
        }

    def _download_closed(self) -> str:
        """Why the OS image may not be downloaded now ("" when it may): the
        download window of the device's updates.toml, shifted by its delay."""
        from atoll.updates.config import load_config
        from atoll.updates.policy import device_delay

        download = load_config(self.root).download
        delay = device_delay(self.device, download.random_delay)
        now = self.now()
        if download.window.is_open(now, delay):
            return ""
        opens = download.window.next_open(now, delay)
        opens_at = human_time(opens, download.window.timezone)
        return f"the download window is closed; it opens at {opens_at}"

    def _stage(self, image: str) -> None:
        assert self.sysroot is not None
        kernel = ["--allow-no-kernel"] if self.allow_no_kernel else []
        self._atoll("-q", "switch", "--sysroot", str(self.sysroot), *kernel, image)

    def _apply_staged(self) -> str:
        """The spec's policy is ``apply``: ``atoll updates run``, as the update
        timer runs it, finalizes the staged image and reboots into it when the
        apply window of updates.toml is open and no inhibitor holds; what it said."""
        assert self.sysroot is not None
        kernel = ["--allow-no-kernel"] if self.allow_no_kernel else []
        where = ["--sysroot", str(self.sysroot), "--root", str(self.root)]
        try:
            done = self._atoll("updates", "run", "--json", *where, *kernel)
        except errors.AtollError as exc:
            return f"the staged image was not applied: {exc.message}"
        return str(json.loads(done.stdout).get("message", ""))

    def _atoll(self, *args: str) -> Any:
        # The device's own command line, from the same atoll as this agent.
        home = str(Path(atoll.__file__).resolve().parents[1])
        return run([*self.atoll, *args], env=base_environment({"PYTHONPATH": home}))

    # -- one round --------------------------------------------------------------

    def poll(self, wait: float) -> dict[str, Any] | None:
        pending = self.state.read("pending.json") or {}
        known = max(self.state.applied_version(), int(pending.get("version", 0)))
        response = self.client.request(
            "GET",
            "/api/v1/agent/spec",
            params={"knownVersion": str(known), "wait": str(wait)},
        )
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise errors.EnrollmentError(f"device {self.device}: {refusal(response)}")
        envelope: dict[str, Any] = response.json()
        return envelope

    def step(self, wait: float = 0.0) -> Round:
        enrollment = self.enrollment()
        if enrollment != "approved":
            return Round(enrollment, 0, self.state.applied_version(), "idle")
        update, reason = "idle", ""
        envelope = self.poll(wait)
        if envelope is not None:
            try:
                opened = wire.open_spec(
                    envelope,
                    self._spec_keys(),
                    device=self.device,
                    applied_version=self.state.applied_version(),
                    now=self.now(),
                )
            except errors.SpecExpiredError as exc:
                update, reason = "frozen", exc.message
            except errors.SpecTrustError as exc:
                update, reason = "failed", exc.message
            else:
                self._learn_keys(opened.payload.get("specKeys"))
                if opened.version > self.state.applied_version():
                    self.state.write(
                        "pending.json",
                        {"format": STATE_FORMAT, "version": opened.version, "spec": opened.spec},
                    )
        engine = self.engine_status()
        if update == "idle":
            update, reason, engine = self._apply_pending(engine)
        self._report(engine, update, reason)
        pending = self.state.read("pending.json") or {}
        return Round(
            "approved",
            int(pending.get("version", self.state.applied_version())),
            self.state.applied_version(),
            update,
            reason,
        )

    def _apply_pending(self, engine: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        pending = self.state.read("pending.json")
        if pending is None:
            return "idle", "", engine
        spec, version = pending["spec"], int(pending["version"])
        applied = self.state.read("applied.json") or {}
        changed, removed = unit_changes(self.root, spec, applied)
        for name in removed if self.workload_manager != "none" else []:
            self._workload("stop", name)
        owned = apply_config(self.root, spec, applied)
        if (changed or removed) and self.workload_manager != "none":
            self._reload_workloads(changed, removed)
        image = (spec.get("os") or {}).get("image")
        if image is not None:
            digest = image.rpartition("@")[2]
            if engine["booted"] != digest:
                if any(r.get("imageDigest") == digest for r in engine["rolledBack"]):
                    return "failed", f"the device rolled back from {digest[:19]}", engine
                if engine["staged"] != digest:
                    closed = self._download_closed()
                    if closed:
                        return "waiting", closed, engine
                    if self.sysroot is None:
                        return (
                            "failed",
                            "the spec names an OS image and there is no --sysroot",
                            engine,
                        )
                    try:
                        self._stage(image)
                    except errors.CommandError as exc:
                        if exc.returncode == errors.LockedError.exit_code:
                            # Another atoll operation holds the sysroot: not a failed
                            # update; the spec stays pending for the next round.
                            return "waiting", SYSROOT_BUSY, engine
                        return "failed", exc.message, engine
                    except errors.AtollError as exc:
                        return "failed", exc.message, engine
                    engine = self.engine_status()
                if (spec.get("updatePolicy") or {}).get("policy") != "apply":
                    return "staged", f"{digest[:19]} boots next", engine
                message = self._apply_staged()
                engine = self.engine_status()
                if engine["booted"] != digest:
                    return "staged", message, engine
            if engine["health"] != "green":
                return "staged", "waiting for a green boot", engine
        self.state.write(
            "applied.json", {"format": STATE_FORMAT, "version": version, "spec": spec, **owned}
        )
        self.state.remove("pending.json")
        return "applied", "", engine

    def _workload(self, *args: str) -> str:
        """``atoll workload ARGS`` for the device's manager: "" or why it failed."""
        where = ["--manager", self.workload_manager]
        if self.workload_state_dir is not None:
            where += ["--state-dir", str(self.workload_state_dir)]
        try:
            self._atoll("-q", "workload", *args, *where)
        except errors.AtollError as exc:
            log.warning("atoll workload %s: %s", " ".join(args), exc.message)
            return exc.message
        return ""

    def _reload_workloads(self, changed: list[str], removed: list[str]) -> None:
        """After the units changed: the manager reads them again (daemon-reload,
        or the supervisor's reload), then the changed containers and pods restart."""
        self.workloads = dict.fromkeys(removed, "stopped")
        failed = self._workload("reload")
        for name in changed:
            if failed:
                self.workloads[name] = f"not reloaded: {failed}"
            elif name.endswith((".container", ".pod")):
                problem = self._workload("restart", name)
                self.workloads[name] = f"restart failed: {problem}" if problem else "restarted"
            else:
                self.workloads[name] = "reloaded"

    def _report(self, engine: dict[str, Any], update: str, reason: str) -> None:
        body = {
            "bootedDigest": engine["booted"],
            "stagedDigest": engine["staged"],
            "rollbackDigest": engine["rollback"],
            "health": engine["health"],
            "healthReason": engine["healthReason"],
            "appliedVersion": self.state.applied_version(),
            "update": {"state": update, "reason": reason[:2048]},
            "workloads": {name: state[:256] for name, state in self.workloads.items()},
        }
        response = self.client.request("PUT", "/api/v1/agent/status", body=body)
        if response.status_code != 204:
            raise errors.EnrollmentError(f"device {self.device}: {refusal(response)}")
        if response.headers.get(wire.HEADER_ROTATION) == "requested":
            self.rotation_requested = True

    def run(
        self,
        *,
        wait: float = 30.0,
        rounds: int | None = None,
        on_round: Callable[[Round], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Rounds until *rounds* are done (forever without); unreachable servers
        are retried with jittered exponential backoff.  The first round does not
        wait on the server: what the device booted (after a reboot, say) is
        reported at once, and only later rounds long-poll."""
        backoff = BACKOFF_START
        done = 0
        while rounds is None or done < rounds:
            try:
                result = self.step(wait if done else 0.0)
            except errors.FleetUnavailableError as exc:
                delay = random.uniform(backoff / 2, backoff)
                log.warning("%s; retrying in %.1f s", exc.message, delay)
                sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_START
            done += 1
            if on_round is not None:
                on_round(result)
            if result.enrollment != "approved":
                sleep(min(wait, 10.0) or 1.0)
