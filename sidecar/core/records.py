"""The records of the health state: statuses, transitions, instances, leases, lives and what
the state file keeps, with the limits of each. Data only; the decisions are in `health.py` and
its base, `machine.py`."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_ENDPOINTS = 4096
MAX_INSTANCES = 65536
# What the instances may take in the state file: it and its temporary copy must fit the
# chart's 16 MiB socket volume beside the endpoints (at most about 0.6 MiB of them).
MAX_INSTANCE_BYTES = 6 * 1024 * 1024
MAX_LEASES = 4096
# How long a session's lease outlives a sidecar restart, for the worker's session to come back
# and hold it again: the TTL of Dynamo's discovery records.
LEASE_TTL = 10.0
MIN_LEASE_TTL = 0.1
MAX_LEASE_TTL = 3600.0
# Lease ids are drawn by the sidecar (64 random bits): a registrant cannot guess another's.
LEASE_ID_PATTERN = re.compile(r"[0-9a-f]{16}")


class Status(enum.Enum):
    """An endpoint's status, and the worker's overall status, as Dynamo spells them."""

    READY = "ready"
    NOTREADY = "notready"


class Liveness(enum.Enum):
    """What the live path's status code means (`DYN_SIDECAR_LIVENESS`)."""

    STARTED = "started"
    HEALTH = "health"


class Subject(enum.Enum):
    """What a transition is about."""

    ENDPOINT = "endpoint"
    WORKER = "worker"
    LIFE = "life"
    LEASE = "lease"
    DRAIN = "drain"


class EndCause(enum.Enum):
    """Why a life ended, as a value, so that a reporter names it without reading the words."""

    EXITED = "exited"  # its process exited or was replaced, or its session closed
    HEARTBEAT_MISSED = "heartbeat-missed"
    UNRESPONSIVE = "unresponsive"  # its status server stopped answering


@dataclass(frozen=True)
class Transition:
    """One change of state, with how long the old state had lasted."""

    subject: Subject
    name: str
    old: str
    new: str
    at: float
    after: float
    reason: str = ""
    # Set on the end of a life only.
    cause: EndCause | None = None

    def describe(self) -> str:
        """The log line a person reads, e.g. `generate: notready -> ready after 41.2s`."""
        line = f"{self.name}: {self.old} -> {self.new} after {self.after:.1f}s"
        return f"{line} ({self.reason})" if self.reason else line


@dataclass(frozen=True)
class Instance:
    """A Dynamo instance registered by the worker, shown on the frontend health path.

    `extra` holds the fields the sidecar does not know, in the order given: Dynamo adds
    fields from release to release (1.6.1: `device_type`, `request_plane_codec`), and a
    registry of instances serves back what it was given. `lease` is its owner, or None when
    it belongs to the worker's life.
    """

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    transport: Mapping[str, object]
    model: bool
    extra: Mapping[str, object] = field(default_factory=dict)
    lease: str | None = None
    # The instance as the state file keeps it, encoded once: a write joins these, so saving
    # the state after each change does not re-encode every instance.
    record: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = {
            "component": self.component,
            "endpoint": self.endpoint,
            "extra": self.extra,
            "instance_id": self.instance_id,
            "lease": self.lease,
            "model": self.model,
            "namespace": self.namespace,
            "transport": self.transport,
        }
        # Not sorted: what the worker nested is kept in its order, so it is served as given.
        encoded = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
        object.__setattr__(self, "record", encoded)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.namespace, self.component, self.endpoint, self.instance_id)

    @property
    def url(self) -> str:
        return f"dyn://{self.namespace}.{self.component}.{self.endpoint}"


@dataclass
class Lease:
    """An owner of instances: held by a session (no expiry while it is open) or renewed."""

    lease_id: str
    ttl: float
    expires_at: float | None
    since: float
    session: int | None = None

    def holder(self) -> str:
        """What keeps it, as logs and `status` say it."""
        return "renewed" if self.session is None else f"held by session {self.session}"


@dataclass
class EndpointRecord:
    """An endpoint's status, since when, and how often it has changed.

    `said` is what the worker last said; `held` is why a failing canary overrides it with
    `notready` (empty when nothing does). `status`, what every reader sees, follows both.
    """

    status: Status
    since: float
    transitions: int = 0
    said: Status = Status.NOTREADY
    held: str = ""

    def effective(self) -> Status:
        return Status.NOTREADY if self.held else self.said


@dataclass
class Life:
    """One run of the worker, from its first signal to its death."""

    number: int
    began_at: float
    ever_ready: bool = False
    ended_at: float | None = None
    end_reason: str = ""
    end_cause: EndCause | None = None
    sessions: set[int] = field(default_factory=set)
    last_signal: float | None = None
    # The last word that says what the worker serves: not heartbeats, not a mirror's copy.
    last_activity: float | None = None
    last_heartbeat: float | None = None
    pid: int | None = None
    watched_pid: int | None = None
    # What sd_notify's READY=1 or STOPPING=1 last said; it decides when nothing else does.
    declared: Status | None = None
    status_text: str = ""


@dataclass(frozen=True)
class SavedState:
    """What survives a sidecar restart: the worker's current life, as the state file keeps it."""

    life: int
    alive: bool
    ever_ready: bool
    pid: int | None
    end_reason: str
    heartbeats: bool
    declared: Status | None
    status_text: str
    endpoints: Mapping[str, Status]
    instances: tuple[Instance, ...]
    # Each lease with its TTL: a restored lease is held by nobody until a session or a
    # renewal claims it, and expires a full TTL after the restore otherwise.
    leases: Mapping[str, float] = field(default_factory=dict)
    # None in files written before the cause was kept; a reporter then calls it an exit.
    end_cause: EndCause | None = None


class CapacityError(Exception):
    """The worker asked for more endpoints, instances or leases than the sidecar keeps."""


class UnknownLease(Exception):
    """A lease that is not held: it expired, was revoked, or was never granted."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(f"no lease {lease_id}: it expired, was revoked or was never granted")
        self.lease_id = lease_id


Subscriber = Callable[[Transition], None]
