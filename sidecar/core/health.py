"""What the sidecar knows about its worker: `HealthState`, which with its base (machine.py)
is the only place where health is decided.

The core does no I/O and reads no clock: every call that can change something takes `now`
(seconds on a monotonic clock) from its caller, and every change is reported as a
`Transition` to the subscribers. The probe server reads the state; the worker's socket
writes it; everything else subscribes.

A worker's *life* (docs/protocol.md section 6) begins when the sidecar starts and, after a life
has ended, with the worker's next signal. Ending a life makes every endpoint `notready`,
drops the instances registered without a lease and fails the live path until the next life
begins. An instance registered with a *lease* belongs to whoever holds the lease (a session,
or a registrant that renews it, as Dynamo's discovery records are renewed) and leaves the
moment the session closes or the lease expires (docs/protocol.md section 4.7).

This module says what each signal means and what readers see, the live path's verdict
included; the records and the rules every change goes through (how the status is decided,
how a life begins and ends, how a change is published) are its base's, in machine.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from sidecar.core.machine import HealthMachine
from sidecar.core.records import (
    MAX_ENDPOINTS,
    CapacityError,
    EndCause,
    EndpointRecord,
    Instance,
    Lease,
    Liveness,
    Status,
    Subject,
    Transition,
)
from sidecar.core.views import EndpointView, LeaseView, LifeView, Snapshot


class HealthState(HealthMachine):
    """Endpoints, instances and the worker's current life; decides every answer.

    Built with the settings that shape its rules: `required`, `starting`, `started_at`,
    `liveness`, `heartbeat_timeout` and `frontend` (see `HealthMachine`).
    """

    # -- reading ---------------------------------------------------------------------------

    def live(self) -> tuple[bool, str]:
        """The live path's verdict and, when it fails, why (docs/protocol.md section 3)."""
        if not self.alive:
            return False, f"worker life {self.life.number} ended: {self.life.end_reason}"
        if self.frontend:
            return True, ""
        if self.liveness is Liveness.HEALTH:
            if self._status is Status.READY:
                return True, ""
            return False, "the worker is not ready"
        if not self.life.ever_ready:
            return False, "the worker has not been ready yet in this life"
        return True, ""

    def current_life(self) -> LifeView:
        """The current life, for readers outside the core: cheap, so a signal's answer can say
        which life it belongs to."""
        return self._lives.view()

    def snapshot(self) -> Snapshot:
        """Everything a reader outside the core may see, frozen; it costs a copy of the
        endpoints, so readers on a hot path take `current_life` instead."""
        endpoints = {
            name: EndpointView(record.status, record.since, record.transitions)
            for name, record in self.endpoints.items()
        }
        return Snapshot(
            life=self.current_life(),
            alive=self.alive,
            draining=self.draining,
            status=self._status,
            required=self.required,
            endpoints=MappingProxyType(endpoints),
            instances=len(self.instances),
            live=self.live(),
            heartbeat_deadline=self.heartbeat_deadline(),
        )

    def lease_views(self) -> list[LeaseView]:
        """Each lease, sorted by id, with the instances it owns."""
        return self._registry.lease_views()

    def holds_lease(self, lease_id: str) -> bool:
        return lease_id in self.leases

    @property
    def instance_count(self) -> int:
        return len(self.instances)

    def sorted_instances(self) -> list[Instance]:
        return self._registry.sorted_instances()

    def next_deadline(self) -> float | None:
        """The earliest moment at which time alone changes something: a heartbeat deadline
        or a lease's expiry; None when nothing is armed."""
        deadlines = [lease.expires_at for lease in self.leases.values()]
        deadlines.append(self.heartbeat_deadline())
        armed = [deadline for deadline in deadlines if deadline is not None]
        return min(armed) if armed else None

    def check_deadlines(self, now: float) -> None:
        """Let time do what it does: expired leases take their instances, a silent worker's
        life ends."""
        for lease_id in self._registry.timed_leases():
            lease = self.leases[lease_id]
            if lease.expires_at is not None and now >= lease.expires_at:
                self._drop_lease(lease_id, now, f"not renewed for {lease.ttl:g}s")
        self.check_heartbeat(now)

    # -- writing: the worker's signals -----------------------------------------------------

    def set_endpoint(self, name: str, status: Status, now: float) -> EndpointRecord:
        """The worker serves (or stops serving) an endpoint."""
        if self.alive and name not in self.endpoints and len(self.endpoints) >= MAX_ENDPOINTS:
            # Refused before it counts as a signal: a refused request changes nothing.
            raise CapacityError(f"the sidecar keeps at most {MAX_ENDPOINTS} endpoints")
        self._signal(now)
        return self._say(name, status, now)

    def canary_failed(self, name: str, reason: str, now: float) -> None:
        """Canaries to an endpoint the worker says is ready keep failing: hold it notready."""
        record = self.endpoints.get(name)
        if record is None or record.said is not Status.READY or record.held == reason:
            return
        record.held = reason
        self._settle(name, record, now, f"canary failed: {reason}")
        self._reconsider(now)

    def canary_passed(self, name: str, now: float) -> None:
        """A canary succeeded: the endpoint is again what the worker last said."""
        record = self.endpoints.get(name)
        if record is None or not record.held:
            return
        record.held = ""
        self._settle(name, record, now, "canary passed")
        self._reconsider(now)

    def mirror(self, endpoints: Mapping[str, Status], status: Status, now: float) -> None:
        """What a Dynamo status server says, copied as the worker's own word.

        Its endpoint map replaces ours (required endpoints stay listed); its overall status
        decides, as sd_notify's READY does, only when no endpoint is known.
        """
        self._signal(now, activity=False)
        self.life.declared = status
        for name in [n for n in self.endpoints if n not in endpoints and n not in self.required]:
            del self.endpoints[name]
            self._touch()
        for name in self.required:
            if name not in endpoints:
                self._say(name, Status.NOTREADY, now)
        for name, endpoint_status in endpoints.items():
            self._say(name, endpoint_status, now)
        self._reconsider(now)

    def mirror_lost(self, reason: str, now: float) -> None:
        """The status server did not answer: nothing it said can be trusted any more, the
        instances a frontend listed included."""
        if not self.alive:
            return
        self.life.declared = Status.NOTREADY
        for name, record in self.endpoints.items():
            record.said = Status.NOTREADY
            self._settle(name, record, now, reason)
        self._registry.drop(lambda instance: instance.lease is None)
        self._reconsider(now)

    def mirror_frontend(self, instances: Sequence[Instance], now: float) -> None:
        """What a Dynamo frontend's health path lists, copied as the worker's own word: its
        instances replace those registered without a lease (leased ones have owners of their
        own). Raises CapacityError, changing nothing, past the limits."""
        total, size = self._registry.with_unleased(instances)
        self._signal(now, activity=False)
        self._registry.replace(total, size)

    def register_instance(self, instance: Instance, now: float) -> bool:
        """Add (or replace) an instance; returns whether it was new. A replaced instance
        takes the new one's lease: its owner is whoever registered it last."""
        self._registry.admit(instance)
        self._signal(now)
        return self._registry.register(instance)

    def remove_instances(self, instance_id: int, now: float) -> int:
        """Remove every instance with this id; returns how many there were."""
        self._signal(now)
        return self._registry.drop(lambda instance: instance.instance_id == instance_id)

    def grant_lease(self, lease_id: str, ttl: float, now: float) -> Lease:
        """A registrant that renews: its instances leave `ttl` seconds after its last word.
        The caller picks an unused, unguessable id (this module draws no randomness)."""
        self._registry.admit_grant(lease_id)
        self._signal(now, activity=False)
        lease = self._registry.grant(lease_id, ttl, now)
        self._publish_lease(lease, "none", "renewed", now)
        return lease

    def renew_lease(self, lease_id: str, now: float) -> Lease:
        """The registrant is still there: its lease runs a full TTL from now."""
        lease = self._registry.lease(lease_id)
        self._signal(now, activity=False)
        self._registry.renew(lease, now)
        return lease

    def revoke_lease(self, lease_id: str, now: float) -> int:
        """The registrant is leaving: its instances go now; returns how many there were."""
        self._registry.lease(lease_id)  # raises UnknownLease before it counts as a signal
        self._signal(now)
        return self._drop_lease(lease_id, now, "revoked")

    def heartbeat(self, now: float, pid: int | None = None) -> None:
        """The worker says it is alive; the first heartbeat of a life arms the deadline."""
        self._signal(now, pid, activity=False)
        if self._lives.heartbeat(now):
            self._touch()  # the state file keeps whether the worker sends heartbeats

    def heartbeat_deadline(self) -> float | None:
        """When the worker's silence ends its life, or None when nothing is armed."""
        return self._lives.heartbeat_deadline(self.heartbeat_timeout)

    def check_heartbeat(self, now: float) -> None:
        """End the life of a worker that has been silent past its deadline (hung)."""
        deadline = self.heartbeat_deadline()
        if deadline is not None and now >= deadline:
            assert self.heartbeat_timeout is not None
            self.end_life(
                f"no heartbeat for {self.heartbeat_timeout:g}s", EndCause.HEARTBEAT_MISSED, now
            )

    def notify_ready(self, now: float, pid: int | None = None) -> None:
        """sd_notify `READY=1`: every required and announced endpoint is ready."""
        self._signal(now, pid)
        self.life.declared = Status.READY
        self._set_all(Status.READY, now)

    def notify_stopping(self, now: float, pid: int | None = None) -> None:
        """sd_notify `STOPPING=1`: nothing is ready any more, though the worker lives."""
        self._signal(now, pid)
        self.life.declared = Status.NOTREADY
        self._set_all(Status.NOTREADY, now)

    def notify_status(self, text: str, now: float, pid: int | None = None) -> None:
        """sd_notify `STATUS=...`: free text shown by `status` and in events."""
        self._signal(now, pid)
        self.life.status_text = text
        self._touch()

    def process_started(self, pid: int, now: float) -> None:
        """The process watch found the worker's process: a new one begins a new life.

        Only the watch's own pid is compared: the pid a worker reports may be a child's.
        """
        watched = self.life.watched_pid
        if self.alive and watched not in (None, pid):
            self.end_life(f"its process {watched} was replaced by {pid}", EndCause.EXITED, now)
        self._signal(now, pid)
        self.life.watched_pid = pid

    def process_exited(self, pid: int, now: float) -> None:
        """The watched process is gone: its life ends at once."""
        self.end_life(f"its process {pid} exited", EndCause.EXITED, now)

    def open_session(self, now: float, pid: int | None = None, lease_id: str | None = None) -> int:
        """The worker holds a connection open, and with it its life and a lease; returns the
        session's token. An existing lease (a restored one, after a sidecar restart) is held again;
        any other id is granted with the session TTL. Raises CapacityError before anything
        changes when no lease can be granted."""
        if lease_id is not None:
            self._registry.admit_hold(lease_id)
        self._signal(now, pid)
        token = self._lives.new_session()
        if lease_id is not None:
            lease, old = self._registry.hold(lease_id, token, now)
            self._publish_lease(lease, old, f"held by session {token}", now)
        if not self.frontend:
            self._lives.hold(token)
        return token

    def close_session(self, token: int, now: float) -> None:
        """A held connection closed: its lease's instances leave at once, and the last
        session of the current life ends that life."""
        self._lives.session_closed(token)
        for lease_id in self._registry.held_by(token):
            self._drop_lease(lease_id, now, "its session connection closed")
        if self._lives.leave(token):
            self.end_life("its session connection closed", EndCause.EXITED, now)

    # -- writing: shutdown -----------------------------------------------------------------

    def drain(self, now: float) -> None:
        """The sidecar is shutting down: readiness fails at once, liveness is untouched."""
        if self.draining:
            return
        self.draining = True
        self._touch()
        self._publish(
            Transition(Subject.DRAIN, "sidecar", "serving", "draining", now, now - self.started_at)
        )

    # -- internals -------------------------------------------------------------------------

    def _set_all(self, status: Status, now: float) -> None:
        for name in self.required:
            self.set_endpoint(name, status, now)
        for name, record in self.endpoints.items():
            record.said = status
            self._settle(name, record, now)
        self._reconsider(now)
