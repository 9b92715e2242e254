"""The instances the worker registered and the leases that own them (docs/protocol.md section
4.7): their limits, what they take in the state file, and which instances each lease owns.

The registry keeps records and refuses what does not fit; it decides nothing about health and
publishes no transition: the health state owns it, calls it, and tells the subscribers. It
reports every change it makes through `touch`, because the state's version must count each one:
the state file's group commit and the cached answers follow the version.

The checks are apart from the changes: the state refuses a request before it counts as the
worker's signal (a refused request changes nothing), and applies it after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sidecar.core.records import (
    LEASE_TTL,
    MAX_INSTANCE_BYTES,
    MAX_INSTANCES,
    MAX_LEASES,
    CapacityError,
    Instance,
    Lease,
    SavedState,
    UnknownLease,
)
from sidecar.core.views import LeaseView

InstanceKey = tuple[str, str, str, int]


class Registry:
    """The instances, each with its owner, and the leases; `touch` hears of every change."""

    def __init__(self, touch: Callable[[], None]) -> None:
        self.instances: dict[InstanceKey, Instance] = {}
        self.leases: dict[str, Lease] = {}
        # The bytes the instances' records take, kept as they come and go: checking the limit
        # must not sum 65,536 records on every registration.
        self._instance_bytes = 0
        self._touch = touch

    # -- reading ---------------------------------------------------------------------------

    def sorted_instances(self) -> list[Instance]:
        return [self.instances[key] for key in sorted(self.instances)]

    def timed_leases(self) -> list[str]:
        """The leases that expire unless renewed (a session's does not while it is open)."""
        return [lease_id for lease_id, lease in self.leases.items() if lease.expires_at is not None]

    def held_by(self, token: int) -> list[str]:
        """The leases a session holds."""
        return [lease_id for lease_id, lease in self.leases.items() if lease.session == token]

    def lease(self, lease_id: str) -> Lease:
        """The lease with this id; raises UnknownLease when there is none."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise UnknownLease(lease_id)
        return lease

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

    # -- instances -------------------------------------------------------------------------

    def admit(self, instance: Instance) -> None:
        """Raise UnknownLease or CapacityError when `register` could not take this instance."""
        if instance.lease is not None and instance.lease not in self.leases:
            raise UnknownLease(instance.lease)
        old = self.instances.get(instance.key)
        if old is None and len(self.instances) >= MAX_INSTANCES:
            raise CapacityError(f"the sidecar keeps at most {MAX_INSTANCES} instances")
        _check_bytes(self._instance_bytes + len(instance.record) - _size(old))

    def register(self, instance: Instance) -> bool:
        """Add (or replace) an instance `admit` let in; returns whether it was new."""
        old = self.instances.get(instance.key)
        self.instances[instance.key] = instance
        self._instance_bytes += len(instance.record) - _size(old)
        self._touch()
        return old is None

    def with_unleased(
        self, instances: Iterable[Instance]
    ) -> tuple[dict[InstanceKey, Instance], int]:
        """The instances there would be, and their bytes, were those registered without a
        lease replaced by these: leased ones have owners of their own, and keep their keys.
        Raises CapacityError past the limits."""
        kept = {k: i for k, i in self.instances.items() if i.lease is not None}
        copied = {i.key: i for i in instances if i.key not in kept}
        total = {**kept, **copied}
        if len(total) > MAX_INSTANCES:
            raise CapacityError(f"the sidecar keeps at most {MAX_INSTANCES} instances")
        size = sum(len(i.record) for i in total.values())
        _check_bytes(size)
        return total, size

    def replace(self, instances: dict[InstanceKey, Instance], size: int) -> None:
        """Take what `with_unleased` gave as the instances; a change only when they differ."""
        if instances != self.instances:
            self.instances, self._instance_bytes = instances, size
            self._touch()

    def drop(self, doomed: Callable[[Instance], bool]) -> int:
        """Remove the instances `doomed` picks; returns how many there were."""
        keys = [key for key, instance in self.instances.items() if doomed(instance)]
        for key in keys:
            self._instance_bytes -= len(self.instances.pop(key).record)
        if keys:
            self._touch()
        return len(keys)

    # -- leases ----------------------------------------------------------------------------

    def admit_grant(self, lease_id: str) -> None:
        """Raise ValueError or CapacityError when `grant` could not take this lease."""
        if lease_id in self.leases:
            raise ValueError(f"lease {lease_id} exists")
        self._check_room()

    def grant(self, lease_id: str, ttl: float, now: float) -> Lease:
        """A lease `admit_grant` let in, renewed by its registrant: it expires `ttl` from now."""
        lease = Lease(lease_id, ttl, now + ttl, now)
        self.leases[lease_id] = lease
        self._touch()
        return lease

    def renew(self, lease: Lease, now: float) -> None:
        """The registrant is still there: a renewed lease runs a full TTL from now (a session's
        runs as long as the session)."""
        if lease.session is None:
            lease.expires_at = now + lease.ttl

    def admit_hold(self, lease_id: str) -> None:
        """Raise CapacityError when `hold` would grant a lease and none can be granted."""
        if lease_id not in self.leases:
            self._check_room()

    def hold(self, lease_id: str, token: int, now: float) -> tuple[Lease, str]:
        """A session holds the lease, which does not expire while the session is open: a kept
        one (a restored one, after a sidecar restart) again, any other id granted with the
        session TTL. Returns it and who kept it before (`none` for a new one)."""
        lease = self.leases.get(lease_id)
        old = "none" if lease is None else lease.holder()
        if lease is None:
            lease = Lease(lease_id, LEASE_TTL, None, now)
            self.leases[lease_id] = lease
        lease.session, lease.expires_at = token, None
        self._touch()
        return lease, old

    def drop_lease(self, lease_id: str) -> tuple[Lease, int]:
        """The lease leaves with its instances; returns it and how many instances it owned."""
        lease = self.leases.pop(lease_id)
        self._touch()
        return lease, self.drop(lambda instance: instance.lease == lease_id)

    # -- the state file --------------------------------------------------------------------

    def saved_leases(self) -> dict[str, float]:
        return {lease_id: lease.ttl for lease_id, lease in self.leases.items()}

    def restore(self, saved: SavedState, now: float) -> None:
        """Take the saved leases, each for a full TTL from `now`, and the saved instances that
        still have an owner; the state reports the change once, with the rest it restores."""
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

    def _check_room(self) -> None:
        if len(self.leases) >= MAX_LEASES:
            raise CapacityError(f"the sidecar keeps at most {MAX_LEASES} leases")


def _size(instance: Instance | None) -> int:
    return 0 if instance is None else len(instance.record)


def _check_bytes(size: int) -> None:
    if size > MAX_INSTANCE_BYTES:
        raise CapacityError(
            f"the instances would take {size} bytes in the state file; the sidecar keeps "
            f"at most {MAX_INSTANCE_BYTES}"
        )
