"""Read-only views of the health state, for every reader outside the core.

The state's records are the core's to change; a reader (the socket API's answers, metrics,
Kubernetes reports, the active checks) gets frozen copies of what it may see, so that no
adapter can change health behind the state machine's back, and none depends on how the
state keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.core.records import EndCause, Status


@dataclass(frozen=True)
class LifeView:
    """The worker's current life."""

    number: int
    began_at: float
    ended_at: float | None
    end_reason: str
    end_cause: EndCause | None
    ever_ready: bool
    pid: int | None
    status_text: str
    sessions: int
    # What sd_notify's READY=1 or STOPPING=1 last said.
    declared: Status | None
    # The last word that says what the worker serves: not heartbeats, not a mirror's copy.
    last_activity: float | None


@dataclass(frozen=True)
class EndpointView:
    status: Status
    since: float
    transitions: int


@dataclass(frozen=True)
class LeaseView:
    """A lease, who keeps it, and the ids of the instances it owns (sorted)."""

    lease_id: str
    held_by: str
    ttl: float
    expires_at: float | None
    instance_ids: tuple[int, ...]


@dataclass(frozen=True)
class Snapshot:
    """The state as one reader sees it at one moment."""

    life: LifeView
    alive: bool
    draining: bool
    status: Status
    required: tuple[str, ...]
    endpoints: Mapping[str, EndpointView]
    instances: int
    live: tuple[bool, str]
    heartbeat_deadline: float | None
