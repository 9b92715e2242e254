"""Transitions into reports, pure: the Event texts `kubectl describe pod` lists and the desired
state of the pod condition (docs/protocol.md section 7.5).

Everything here reads a transition and, where the transition does not carry enough, a
`Snapshot` of the state taken after it: never the state itself, so that a report cannot
depend on how the core keeps its records, nor change them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.records import EndCause, Status, Subject, Transition
from sidecar.core.views import Snapshot

NORMAL = "Normal"
WARNING = "Warning"

# The subjects whose reports read the snapshot (the life's number and age, which endpoints
# hold readiness back); the others are told by the transition alone, so the reporter takes a
# snapshot, a copy of every endpoint, only for these.
READS_SNAPSHOT = frozenset({Subject.WORKER, Subject.LIFE})

# The event reason of each end of a life; a cause a file did not keep counts as an exit.
END_REASONS = {
    None: "WorkerExited",
    EndCause.EXITED: "WorkerExited",
    EndCause.HEARTBEAT_MISSED: "HeartbeatMissed",
    EndCause.UNRESPONSIVE: "WorkerUnresponsive",
}


@dataclass(frozen=True)
class EventSpec:
    """An event to record on the pod, before correlation."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class ConditionSpec:
    """The pod condition's desired status, reason and message."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Report:
    """What one transition means for Kubernetes: events, and maybe a new condition."""

    events: tuple[EventSpec, ...] = ()
    condition: ConditionSpec | None = None


def describe(t: Transition, snapshot: Snapshot | None = None) -> Report:
    """The events and condition a transition calls for.

    `snapshot` (of the state that published `t`, taken after it) is read for the subjects in
    `READS_SNAPSHOT` and must be given for them.
    """
    if t.subject is Subject.ENDPOINT:
        return _describe_endpoint(t)
    if t.subject is Subject.DRAIN:
        spec = EventSpec(
            NORMAL,
            "Draining",
            "Sidecar is draining after a stop signal: the pod is not ready from now on, and the "
            "worker stays live until it exits or the drain time ends",
        )
        return Report((spec,), ConditionSpec(False, "Draining", spec.message))
    if t.subject not in READS_SNAPSHOT:
        return Report()  # leases: the pod's readiness does not depend on them
    if snapshot is None:
        raise ValueError(f"a {t.subject.value} transition is described with a snapshot")
    if t.subject is Subject.WORKER:
        return _describe_worker(t, snapshot)
    return _describe_life(t, snapshot)


def current_condition(snapshot: Snapshot) -> ConditionSpec:
    """The condition the state calls for now (at start, and after a restore)."""
    life = snapshot.life
    if snapshot.draining:
        return ConditionSpec(False, "Draining", "Sidecar is draining after a stop signal")
    if not snapshot.alive:
        return ConditionSpec(
            False,
            END_REASONS[life.end_cause],
            f"Worker life {life.number} ended: {life.end_reason}",
        )
    if snapshot.status is Status.READY:
        return ConditionSpec(
            True, "WorkerReady", f"Worker life {life.number} is ready: {_why_ready(snapshot)}"
        )
    return ConditionSpec(
        False,
        "WorkerStarting",
        f"Worker life {life.number} is not ready yet: {_why_not_ready(snapshot)}",
    )


def format_duration(seconds: float) -> str:
    """`41.2s` under a minute, then Go's style: `12m5s`, `2h3m4s`."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def _describe_endpoint(t: Transition) -> Report:
    # Why, when the state machine knows it: a canary, a status server that went silent.
    why = f": {t.reason}" if t.reason else ""
    if t.new == Status.READY.value:
        message = f"Endpoint {t.name} is ready after {format_duration(t.after)}{why}"
        return Report((EventSpec(NORMAL, "EndpointReady", message),))
    duration = format_duration(t.after)
    message = f"Endpoint {t.name} is not ready any more, after {duration} ready{why}"
    return Report((EventSpec(WARNING, "EndpointNotReady", message),))


def _describe_worker(t: Transition, snapshot: Snapshot) -> Report:
    life = snapshot.life
    if t.new == Status.READY.value:
        since = format_duration(t.at - life.began_at)
        message = (
            f"Worker life {life.number} is ready {since} after it began: {_why_ready(snapshot)}"
        )
        spec = EventSpec(NORMAL, "WorkerReady", message)
        return Report((spec,), ConditionSpec(True, "WorkerReady", message))
    if not snapshot.alive:
        # The life's end has its own event; the condition says why the worker is not ready.
        message = f"Worker life {life.number} ended: {life.end_reason}"
        return Report((), ConditionSpec(False, END_REASONS[life.end_cause], message))
    message = (
        f"Worker life {life.number} is not ready any more, after {format_duration(t.after)} "
        f"ready: {_why_not_ready(snapshot)}"
    )
    spec = EventSpec(WARNING, "WorkerNotReady", message)
    return Report((spec,), ConditionSpec(False, "WorkerNotReady", message))


def _describe_life(t: Transition, snapshot: Snapshot) -> Report:
    name = t.name[:1].upper() + t.name[1:]  # "Worker life 2"
    if t.old == "saved":
        if t.new == "alive":
            message = f"Sidecar restarted and continues {t.name} from its state file"
        else:
            message = (
                f"Sidecar restarted; its state file says {t.name} had ended "
                f"({snapshot.life.end_reason}); the next signal from the worker begins a new life"
            )
        return Report((EventSpec(NORMAL, "StateRestored", message),), current_condition(snapshot))
    if t.new == "ended":
        reason = END_REASONS[t.cause]
        message = (
            f"{name} ended after {format_duration(t.after)}: {t.reason}; the live path fails "
            "until a new life begins"
        )
        spec = EventSpec(WARNING, reason, message)
        return Report((spec,), ConditionSpec(False, reason, f"{name} ended: {t.reason}"))
    # A new life began: the worker came back (or a new process replaced it).
    message = f"{name} began {format_duration(t.after)} after the previous life ended"
    spec = EventSpec(NORMAL, "WorkerRestarted", message)
    condition = None
    if snapshot.status is not Status.READY:
        condition = ConditionSpec(
            False, "WorkerStarting", f"{name} began; not ready yet: {_why_not_ready(snapshot)}"
        )
    return Report((spec,), condition)


def _why_ready(snapshot: Snapshot) -> str:
    required = snapshot.required
    if required:
        return f"required {_endpoints(required)} ready"
    if snapshot.endpoints:
        ready = [name for name, view in snapshot.endpoints.items() if view.status is Status.READY]
        return f"every endpoint it announced is ready ({join_names(ready)})"
    if snapshot.life.declared is Status.READY:
        return "it declared itself ready (sd_notify READY=1)"
    return "the starting status is ready"


def _why_not_ready(snapshot: Snapshot) -> str:
    endpoints = snapshot.endpoints
    if snapshot.required:
        waiting = [
            name
            for name in snapshot.required
            if (view := endpoints.get(name)) is None or view.status is not Status.READY
        ]
        return f"required {_endpoints(waiting)} not ready"
    waiting = [name for name, view in endpoints.items() if view.status is not Status.READY]
    if waiting:
        return f"{_endpoints(waiting)} not ready"
    if snapshot.life.declared is Status.NOTREADY:
        return "it declared itself stopping (sd_notify STOPPING=1)"
    return "it has announced no endpoint yet"


def _endpoints(names: Iterable[str]) -> str:
    """`endpoint a is`, `endpoints a and b are`: the subject of a sentence about them."""
    items = list(names)
    if len(items) == 1:
        return f"endpoint {join_names(items)} is"
    return f"endpoints {join_names(items)} are"


def join_names(names: Iterable[str], limit: int = 5) -> str:
    """`a`, `a and b`, `a, b and c`, `a, b, c, d, e and 3 more`."""
    items = list(names)
    if len(items) > limit:
        return f"{', '.join(items[:limit])} and {len(items) - limit} more"
    if len(items) <= 1:
        return "".join(items) or "none"
    return f"{', '.join(items[:-1])} and {items[-1]}"
