"""What the sidecar knows about its worker, and the only place where health is decided.

This module does no I/O and reads no clock: every call that can change something takes
`now` (seconds on a monotonic clock) from its caller, and every change is reported as a
`Transition` to the subscribers. The probe server reads the state; the worker's socket
writes it; everything else subscribes.

A worker's *life* (docs/protocol.md section 6) begins when the sidecar starts and, after a life
has ended, with the worker's next signal. Ending a life makes every endpoint `notready`,
drops the instances registered without a lease and fails the live path until the next life
begins. An instance registered with a *lease* belongs to whoever holds the lease (a session,
or a registrant that renews it, as Dynamo's discovery records are renewed) and leaves the
moment the session closes or the lease expires (docs/protocol.md section 4.7).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.core.records import (
    LEASE_TTL,
    MAX_ENDPOINTS,
    MAX_INSTANCE_BYTES,
    MAX_INSTANCES,
    MAX_LEASES,
    CapacityError,
    EndCause,
    EndpointRecord,
    Instance,
    Lease,
    Life,
    Liveness,
    SavedState,
    Status,
    Subject,
    Subscriber,
    Transition,
    UnknownLease,
)
from sidecar.core.views import EndpointView, LeaseView, LifeView, Snapshot


@dataclass
class HealthState:
    """Endpoints, instances and the worker's current life; decides every answer."""

    required: tuple[str, ...]
    starting: Status
    started_at: float
    liveness: Liveness = Liveness.STARTED
    heartbeat_timeout: float | None = None
    # A frontend's state: its registrants are its workers, one among many, so a session holds
    # only its lease, and it is live while its life runs, with no model to wait for
    # (docs/protocol.md sections 3.6 and 4.7).
    frontend: bool = False
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    instances: dict[tuple[str, str, str, int], Instance] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    draining: bool = False
    version: int = 0
    life: Life = field(init=False)
    _status: Status = field(init=False)
    _status_since: float = field(init=False)
    _subscribers: list[Subscriber] = field(default_factory=list, init=False, repr=False)
    _life_sessions: set[int] = field(default_factory=set, init=False, repr=False)
    _last_session: int = field(default=0, init=False, repr=False)
    _instance_bytes: int = field(default=0, init=False, repr=False)
    _change_listeners: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.life = Life(number=1, began_at=self.started_at)
        self._seed_required(self.started_at)
        self._status = self._decide_status()
        self._status_since = self.started_at
        self.life.ever_ready = self._status is Status.READY

    # -- reading -------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        """The worker's overall status, before draining is taken into account."""
        return self._status

    @property
    def alive(self) -> bool:
        """Whether the worker's current life is running."""
        return self.life.ended_at is None

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
        life = self.life
        return LifeView(
            number=life.number,
            began_at=life.began_at,
            ended_at=life.ended_at,
            end_reason=life.end_reason,
            end_cause=life.end_cause,
            ever_ready=life.ever_ready,
            pid=life.pid,
            status_text=life.status_text,
            sessions=len(life.sessions),
            declared=life.declared,
            last_activity=life.last_activity,
        )

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
        """Each lease, sorted by id, with the instances it owns: one pass over the instances."""
        owned: dict[str, list[int]] = {lease_id: [] for lease_id in self.leases}
        for instance in self.instances.values():
            if instance.lease is not None:
                owned[instance.lease].append(instance.instance_id)
        return [
            LeaseView(
                lease.lease_id, lease.holder(), lease.ttl, lease.expires_at, tuple(sorted(ids))
            )
            for lease_id, ids in sorted(owned.items())
            for lease in (self.leases[lease_id],)
        ]

    def holds_lease(self, lease_id: str) -> bool:
        return lease_id in self.leases

    @property
    def instance_count(self) -> int:
        return len(self.instances)

    def sorted_instances(self) -> list[Instance]:
        return [self.instances[key] for key in sorted(self.instances)]

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
        for lease_id in [k for k, v in self.leases.items() if v.expires_at is not None]:
            expires_at = self.leases[lease_id].expires_at
            if expires_at is not None and now >= expires_at:
                lease = self.leases[lease_id]
                self._drop_lease(lease_id, now, f"not renewed for {lease.ttl:g}s")
        self.check_heartbeat(now)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Hear of every transition, for logs and events."""
        self._subscribers.append(subscriber)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Hear of every visible change, transitions and instances alike (the state file)."""
        self._change_listeners.append(listener)

    def save(self) -> SavedState:
        """The part of the state that must outlive the sidecar's process."""
        life = self.life
        return SavedState(
            life=life.number,
            alive=self.alive,
            ever_ready=life.ever_ready,
            pid=life.pid,
            end_reason=life.end_reason,
            end_cause=life.end_cause,
            heartbeats=life.last_heartbeat is not None,
            declared=life.declared,
            status_text=life.status_text,
            endpoints={name: record.status for name, record in self.endpoints.items()},
            instances=tuple(self.instances.values()),
            leases={lease_id: lease.ttl for lease_id, lease in self.leases.items()},
        )

    def restore(self, saved: SavedState, now: float) -> None:
        """Continue a saved life: a sidecar restart must not make a ready worker look dead.

        Time spent in the old process is not known to this clock, so every duration
        restarts at `now`; a restored heartbeat deadline gives the worker a full timeout.
        """
        self.life = Life(
            number=saved.life,
            began_at=now,
            ever_ready=saved.ever_ready,
            pid=saved.pid,
            declared=saved.declared,
            status_text=saved.status_text,
            last_signal=now,
            last_heartbeat=now if saved.heartbeats else None,
        )
        if not saved.alive:
            self.life.ended_at = now
            self.life.end_reason = saved.end_reason
            self.life.end_cause = saved.end_cause
        self.endpoints = {
            name: EndpointRecord(status, now, said=status)
            for name, status in saved.endpoints.items()
        }
        for name in self.required:
            self.endpoints.setdefault(name, EndpointRecord(self.starting, now, said=self.starting))
        self.leases = {
            lease_id: Lease(lease_id, ttl, now + ttl, now) for lease_id, ttl in saved.leases.items()
        }
        # An ended life's own instances were dropped with it; a lease's stay with the lease.
        self.instances = {
            i.key: i
            for i in saved.instances
            if (saved.alive if i.lease is None else i.lease in self.leases)
        }
        self._instance_bytes = sum(len(i.record) for i in self.instances.values())
        self._status = self._decide_status()
        self._status_since = now
        self._touch()
        self._publish(
            Transition(
                Subject.LIFE,
                f"worker life {saved.life}",
                "saved",
                "alive" if saved.alive else "ended",
                now,
                0.0,
                "restored from the state file",
            )
        )

    # -- writing: the worker's signals -----------------------------------------------------

    def set_endpoint(self, name: str, status: Status, now: float) -> EndpointRecord:
        """The worker serves (or stops serving) an endpoint."""
        if self.alive and name not in self.endpoints and len(self.endpoints) >= MAX_ENDPOINTS:
            # Refused before it counts as a signal: a refused request changes nothing.
            raise CapacityError(f"the sidecar keeps at most {MAX_ENDPOINTS} endpoints")
        self._signal(now)
        return self._say(name, status, now)

    def _say(self, name: str, status: Status, now: float) -> EndpointRecord:
        record = self.endpoints.get(name)
        if record is None:
            if len(self.endpoints) >= MAX_ENDPOINTS:
                raise CapacityError(f"the sidecar keeps at most {MAX_ENDPOINTS} endpoints")
            # An endpoint the worker never mentioned counts as not ready since its life began,
            # so the first "ready" reports how long the model took to load.
            record = EndpointRecord(Status.NOTREADY, self.life.began_at)
            self.endpoints[name] = record
            self._touch()
        record.said = status
        self._settle(name, record, now)
        self._reconsider(now)
        return record

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
        self._drop_instances(lambda instance: instance.lease is None)
        self._reconsider(now)

    def mirror_frontend(self, instances: Sequence[Instance], now: float) -> None:
        """What a Dynamo frontend's health path lists, copied as the worker's own word: its
        instances replace those registered without a lease (leased ones have owners of their
        own). Raises CapacityError, changing nothing, past the limits."""
        kept = {k: i for k, i in self.instances.items() if i.lease is not None}
        copied = {i.key: i for i in instances if i.key not in kept}
        total = {**kept, **copied}
        if len(total) > MAX_INSTANCES:
            raise CapacityError(f"the sidecar keeps at most {MAX_INSTANCES} instances")
        size = sum(len(i.record) for i in total.values())
        if size > MAX_INSTANCE_BYTES:
            raise CapacityError(
                f"the instances would take {size} bytes in the state file; the sidecar keeps "
                f"at most {MAX_INSTANCE_BYTES}"
            )
        self._signal(now, activity=False)
        if total != self.instances:
            self.instances, self._instance_bytes = total, size
            self._touch()

    def register_instance(self, instance: Instance, now: float) -> bool:
        """Add (or replace) an instance; returns whether it was new. A replaced instance
        takes the new one's lease: its owner is whoever registered it last."""
        if instance.lease is not None and instance.lease not in self.leases:
            raise UnknownLease(instance.lease)
        old = self.instances.get(instance.key)
        if old is None and len(self.instances) >= MAX_INSTANCES:
            raise CapacityError(f"the sidecar keeps at most {MAX_INSTANCES} instances")
        size = self._instance_bytes + len(instance.record) - (0 if old is None else len(old.record))
        if size > MAX_INSTANCE_BYTES:
            raise CapacityError(
                f"the instances would take {size} bytes in the state file; the sidecar keeps "
                f"at most {MAX_INSTANCE_BYTES}"
            )
        self._signal(now)
        self.instances[instance.key] = instance
        self._instance_bytes = size
        self._touch()
        return old is None

    def remove_instances(self, instance_id: int, now: float) -> int:
        """Remove every instance with this id; returns how many there were."""
        self._signal(now)
        return self._drop_instances(lambda instance: instance.instance_id == instance_id)

    def grant_lease(self, lease_id: str, ttl: float, now: float) -> Lease:
        """A registrant that renews: its instances leave `ttl` seconds after its last word.
        The caller picks an unused, unguessable id (this module draws no randomness)."""
        if lease_id in self.leases:
            raise ValueError(f"lease {lease_id} exists")
        if len(self.leases) >= MAX_LEASES:
            raise CapacityError(f"the sidecar keeps at most {MAX_LEASES} leases")
        self._signal(now, activity=False)
        lease = Lease(lease_id, ttl, now + ttl, now)
        self.leases[lease_id] = lease
        self._touch()
        self._publish_lease(lease, "none", "renewed", now)
        return lease

    def renew_lease(self, lease_id: str, now: float) -> Lease:
        """The registrant is still there: its lease runs a full TTL from now."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise UnknownLease(lease_id)
        self._signal(now, activity=False)
        if lease.session is None:
            lease.expires_at = now + lease.ttl
        return lease

    def revoke_lease(self, lease_id: str, now: float) -> int:
        """The registrant is leaving: its instances go now; returns how many there were."""
        if lease_id not in self.leases:
            raise UnknownLease(lease_id)
        self._signal(now)
        return self._drop_lease(lease_id, now, "revoked")

    def heartbeat(self, now: float, pid: int | None = None) -> None:
        """The worker says it is alive; the first heartbeat of a life arms the deadline."""
        self._signal(now, pid, activity=False)
        first = self.life.last_heartbeat is None
        self.life.last_heartbeat = now
        if first:
            self._touch()  # the state file keeps whether the worker sends heartbeats

    def heartbeat_deadline(self) -> float | None:
        """When the worker's silence ends its life, or None when nothing is armed."""
        life = self.life
        if self.heartbeat_timeout is None or not self.alive or life.last_heartbeat is None:
            return None
        assert life.last_signal is not None
        return life.last_signal + self.heartbeat_timeout

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
        lease = None if lease_id is None else self.leases.get(lease_id)
        if lease_id is not None and lease is None and len(self.leases) >= MAX_LEASES:
            raise CapacityError(f"the sidecar keeps at most {MAX_LEASES} leases")
        self._signal(now, pid)
        self._last_session += 1
        token = self._last_session
        if lease_id is not None:
            old = "none" if lease is None else lease.holder()
            if lease is None:
                lease = Lease(lease_id, LEASE_TTL, None, now)
                self.leases[lease_id] = lease
            lease.session, lease.expires_at = token, None
            self._touch()
            self._publish_lease(lease, old, f"held by session {token}", now)
        if not self.frontend:
            self._life_sessions.add(token)
            self.life.sessions.add(token)
        return token

    def close_session(self, token: int, now: float) -> None:
        """A held connection closed: its lease's instances leave at once, and the last
        session of the current life ends that life."""
        self._life_sessions.discard(token)
        for lease_id in [k for k, v in self.leases.items() if v.session == token]:
            self._drop_lease(lease_id, now, "its session connection closed")
        if token not in self.life.sessions or not self.alive:
            return
        self.life.sessions.discard(token)
        if not self.life.sessions:
            self.end_life("its session connection closed", EndCause.EXITED, now)

    # -- writing: faults and shutdown ------------------------------------------------------

    def end_life(self, reason: str, cause: EndCause, now: float) -> None:
        """The worker died or hung: nothing it served is ready any more."""
        if not self.alive:
            return
        for name, record in self.endpoints.items():
            record.said, record.held = Status.NOTREADY, ""
            self._settle(name, record, now)
        # The instances of leases stay: their owners, not this life, decide when they go.
        self._drop_instances(lambda instance: instance.lease is None)
        self.life.ended_at = now
        self.life.end_reason = reason
        self.life.end_cause = cause
        self._touch()
        self._publish(
            Transition(
                Subject.LIFE,
                f"worker life {self.life.number}",
                "alive",
                "ended",
                now,
                now - self.life.began_at,
                reason,
                cause,
            )
        )
        self._reconsider(now)

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

    def _signal(self, now: float, pid: int | None = None, activity: bool = True) -> None:
        """Any word from the worker after its life ended begins a new life."""
        if not self.alive:
            self._begin_life(now)
        self.life.last_signal = now
        if activity:
            self.life.last_activity = now
        if pid is not None and pid != self.life.pid:
            self.life.pid = pid
            self._touch()  # the state file keeps the pid

    def _begin_life(self, now: float) -> None:
        previous = self.life
        # A session still open belongs to a worker that is still there: it watches the new
        # life too (a worker that was silent past its heartbeat deadline, then spoke again).
        self.life = Life(
            number=previous.number + 1, began_at=now, sessions=set(self._life_sessions)
        )
        self.endpoints.clear()
        self._seed_required(now)
        self._touch()
        self._publish(
            Transition(
                Subject.LIFE,
                f"worker life {self.life.number}",
                "ended",
                "alive",
                now,
                now - (previous.ended_at or now),
            )
        )
        self._reconsider(now)

    def _seed_required(self, now: float) -> None:
        # Required endpoints start each life at the starting status, as Dynamo seeds them.
        for name in self.required:
            self.endpoints[name] = EndpointRecord(self.starting, now, said=self.starting)

    def _decide_status(self) -> Status:
        if self.required:
            ready = all(self.endpoints[name].status is Status.READY for name in self.required)
        elif self.endpoints:
            ready = all(record.status is Status.READY for record in self.endpoints.values())
        else:
            ready = (self.life.declared or self.starting) is Status.READY and self.alive
        return Status.READY if ready else Status.NOTREADY

    def _reconsider(self, now: float) -> None:
        status = self._decide_status()
        if status is Status.READY:
            self.life.ever_ready = True
        if status is self._status:
            return
        old, self._status = self._status, status
        after, self._status_since = now - self._status_since, now
        self._touch()
        self._publish(Transition(Subject.WORKER, "worker", old.value, status.value, now, after))

    def _set_all(self, status: Status, now: float) -> None:
        for name in self.required:
            self.set_endpoint(name, status, now)
        for name, record in self.endpoints.items():
            record.said = status
            self._settle(name, record, now)
        self._reconsider(now)

    def _settle(self, name: str, record: EndpointRecord, now: float, reason: str = "") -> None:
        """Make what readers see follow what the worker said and what the canary found."""
        status = record.effective()
        if record.status is status:
            return
        old, after = record.status, now - record.since
        record.status, record.since = status, now
        record.transitions += 1
        self._touch()
        self._publish(
            Transition(Subject.ENDPOINT, name, old.value, status.value, now, after, reason)
        )

    def _drop_lease(self, lease_id: str, now: float, reason: str) -> int:
        lease = self.leases.pop(lease_id)
        self._touch()
        removed = self._drop_instances(lambda instance: instance.lease == lease_id)
        self._publish_lease(lease, lease.holder(), "gone", now, f"{reason}; {removed} removed")
        return removed

    def _publish_lease(self, lease: Lease, old: str, new: str, now: float, why: str = "") -> None:
        after, lease.since = now - lease.since, now
        self._publish(
            Transition(Subject.LEASE, f"lease {lease.lease_id}", old, new, now, after, why)
        )

    def _drop_instances(self, doomed: Callable[[Instance], bool]) -> int:
        keys = [key for key, instance in self.instances.items() if doomed(instance)]
        for key in keys:
            self._instance_bytes -= len(self.instances.pop(key).record)
        if keys:
            self._touch()
        return len(keys)

    def _touch(self) -> None:
        """Something a reader can see changed: a new version, and word to the listeners."""
        self.version += 1
        for listener in self._change_listeners:
            listener()

    def _publish(self, transition: Transition) -> None:
        for subscriber in self._subscribers:
            subscriber(transition)
