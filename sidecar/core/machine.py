"""The base of `HealthState` (health.py): the state's records, and the rules every change
goes through. `HealthState` says what each signal means; what it means is done here.

Here the worker's status is decided from its endpoints, and a life begins (at the first word
after one ended) and ends. Here every change bumps the version, and every transition goes to
the subscribers as soon as its record has changed, one by one, so that a subscriber that
reads the state (the Kubernetes reporter does) sees the state the transition describes.

The records are kept in two helpers, each with one job and no say in health: the instances
and leases in a `Registry` (registry.py), the life's bookkeeping in `Lives` (lives.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sidecar.core.lives import Lives
from sidecar.core.records import (
    MAX_ENDPOINTS,
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
)
from sidecar.core.registry import InstanceKey, Registry


@dataclass
class HealthMachine:
    """Endpoints, instances and the worker's current life, and the rules that change them.

    Only `HealthState` is built: this half holds what its signals have in common, so that
    neither half is too long to read.
    """

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
    draining: bool = False
    version: int = 0
    _registry: Registry = field(init=False, repr=False)
    _lives: Lives = field(init=False, repr=False)
    _status: Status = field(init=False)
    _status_since: float = field(init=False)
    _subscribers: list[Subscriber] = field(default_factory=list, init=False, repr=False)
    _change_listeners: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self._registry = Registry(self._touch)
        self._lives = Lives(self.started_at)
        self._seed_required(self.started_at)
        self._status = self._decide_status()
        self._status_since = self.started_at
        self.life.ever_ready = self._status is Status.READY

    # -- reading ---------------------------------------------------------------------------

    @property
    def life(self) -> Life:
        """The current life, the core's own record; readers outside the core take
        `current_life`."""
        return self._lives.current

    @property
    def instances(self) -> Mapping[InstanceKey, Instance]:
        """Every instance by its key; only the registry changes them."""
        return self._registry.instances

    @property
    def leases(self) -> Mapping[str, Lease]:
        """Every lease by its id; only the registry changes them."""
        return self._registry.leases

    @property
    def status(self) -> Status:
        """The worker's overall status, before draining is taken into account."""
        return self._status

    @property
    def alive(self) -> bool:
        """Whether the worker's current life is running."""
        return self._lives.alive

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
            leases=self._registry.saved_leases(),
        )

    def restore(self, saved: SavedState, now: float) -> None:
        """Continue a saved life: a sidecar restart must not make a ready worker look dead.

        Time spent in the old process is not known to this clock, so every duration
        restarts at `now`; a restored heartbeat deadline gives the worker a full timeout.
        """
        self._lives.restore(saved, now)
        self.endpoints = {
            name: EndpointRecord(status, now, said=status)
            for name, status in saved.endpoints.items()
        }
        for name in self.required:
            self.endpoints.setdefault(name, EndpointRecord(self.starting, now, said=self.starting))
        self._registry.restore(saved, now)
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

    # -- the rules every change goes through -----------------------------------------------

    def end_life(self, reason: str, cause: EndCause, now: float) -> None:
        """The worker died or hung: nothing it served is ready any more."""
        if not self.alive:
            return
        for name, record in self.endpoints.items():
            record.said, record.held = Status.NOTREADY, ""
            self._settle(name, record, now)
        # The instances of leases stay: their owners, not this life, decide when they go.
        self._registry.drop(lambda instance: instance.lease is None)
        self._lives.end(reason, cause, now)
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

    def _signal(self, now: float, pid: int | None = None, activity: bool = True) -> None:
        """Any word from the worker after its life ended begins a new life."""
        if not self.alive:
            self._begin_life(now)
        if self._lives.signal(now, pid, activity):
            self._touch()  # the state file keeps the pid

    def _begin_life(self, now: float) -> None:
        previous = self._lives.begin(now)
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

    def _say(self, name: str, status: Status, now: float) -> EndpointRecord:
        """The worker's word on one endpoint, its own or a mirror's copy of it."""
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
        lease, removed = self._registry.drop_lease(lease_id)
        self._publish_lease(lease, lease.holder(), "gone", now, f"{reason}; {removed} removed")
        return removed

    def _publish_lease(self, lease: Lease, old: str, new: str, now: float, why: str = "") -> None:
        after, lease.since = now - lease.since, now
        self._publish(
            Transition(Subject.LEASE, f"lease {lease.lease_id}", old, new, now, after, why)
        )

    def _touch(self) -> None:
        """Something a reader can see changed: a new version, and word to the listeners."""
        self.version += 1
        for listener in self._change_listeners:
            listener()

    def _publish(self, transition: Transition) -> None:
        for subscriber in self._subscribers:
            subscriber(transition)
