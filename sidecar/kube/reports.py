"""Transitions into reports, pure: the Event texts `kubectl describe pod` lists and the desired
state of the pod condition."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Status, Subject, Transition

logger = logging.getLogger("dynamo_health_sidecar")

NORMAL = "Normal"
WARNING = "Warning"


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


def describe(t: Transition, state: HealthState | None = None) -> Report:
    """The events and condition a transition calls for. Pure: reads `state`, changes nothing.

    `state` (the one that published `t`) adds what a transition does not carry: the required
    endpoints, which of them hold readiness back, how long the life has lasted.
    """
    if t.subject is Subject.ENDPOINT:
        return _describe_endpoint(t)
    if t.subject is Subject.WORKER:
        return _describe_worker(t, state)
    if t.subject is Subject.LIFE:
        return _describe_life(t, state)
    if t.subject is Subject.DRAIN:
        spec = EventSpec(
            NORMAL,
            "Draining",
            "Sidecar is draining after a stop signal: the pod is not ready from now on, and the "
            "worker stays live until it exits or the drain time ends",
        )
        return Report((spec,), ConditionSpec(False, "Draining", spec.message))
    return Report()


def current_condition(state: HealthState) -> ConditionSpec:
    """The condition the state calls for now (at start, and after a restore)."""
    life = state.life
    if state.draining:
        return ConditionSpec(False, "Draining", "Sidecar is draining after a stop signal")
    if not state.alive:
        return ConditionSpec(
            False,
            END_REASONS[life.end_cause],
            f"Worker life {life.number} ended: {life.end_reason}",
        )
    if state.status is Status.READY:
        return ConditionSpec(
            True, "WorkerReady", f"Worker life {life.number} is ready: {_why_ready(state)}"
        )
    return ConditionSpec(
        False,
        "WorkerStarting",
        f"Worker life {life.number} is not ready yet: {_why_not_ready(state)}",
    )


# The event reason of each end of a life; a cause a file did not keep counts as an exit.
END_REASONS = {
    None: "WorkerExited",
    EndCause.EXITED: "WorkerExited",
    EndCause.HEARTBEAT_MISSED: "HeartbeatMissed",
    EndCause.UNRESPONSIVE: "WorkerUnresponsive",
}


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


def _describe_worker(t: Transition, state: HealthState | None) -> Report:
    life = f"Worker life {state.life.number}" if state is not None else "Worker"
    if t.new == Status.READY.value:
        if state is not None:
            since = t.at - state.life.began_at
            message = (
                f"{life} is ready {format_duration(since)} after it began: {_why_ready(state)}"
            )
        else:
            message = f"Worker is ready after {format_duration(t.after)}"
        spec = EventSpec(NORMAL, "WorkerReady", message)
        return Report((spec,), ConditionSpec(True, "WorkerReady", message))
    if state is not None and not state.alive:
        # The life's end has its own event; the condition says why the worker is not ready.
        ended = state.life
        message = f"Worker life {ended.number} ended: {ended.end_reason}"
        return Report((), ConditionSpec(False, END_REASONS[ended.end_cause], message))
    message = f"{life} is not ready any more, after {format_duration(t.after)} ready"
    if state is not None:
        message = f"{message}: {_why_not_ready(state)}"
    spec = EventSpec(WARNING, "WorkerNotReady", message)
    return Report((spec,), ConditionSpec(False, "WorkerNotReady", message))


def _describe_life(t: Transition, state: HealthState | None) -> Report:
    name = t.name[:1].upper() + t.name[1:]  # "Worker life 2"
    if t.old == "saved":
        if t.new == "alive":
            message = f"Sidecar restarted and continues {t.name} from its state file"
        else:
            ended = f" ({state.life.end_reason})" if state is not None else ""
            message = (
                f"Sidecar restarted; its state file says {t.name} had ended{ended}; the next "
                "signal from the worker begins a new life"
            )
        condition = current_condition(state) if state is not None else None
        return Report((EventSpec(NORMAL, "StateRestored", message),), condition)
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
    if state is not None and state.status is not Status.READY:
        condition = ConditionSpec(
            False, "WorkerStarting", f"{name} began; not ready yet: {_why_not_ready(state)}"
        )
    return Report((spec,), condition)


def _why_ready(state: HealthState) -> str:
    required = state.required
    if required:
        noun = "endpoint" if len(required) == 1 else "endpoints"
        verb = "is" if len(required) == 1 else "are"
        return f"required {noun} {join_names(required)} {verb} ready"
    if state.endpoints:
        ready = [name for name, record in state.endpoints.items() if record.status is Status.READY]
        return f"every endpoint it announced is ready ({join_names(ready)})"
    if state.life.declared is Status.READY:
        return "it declared itself ready (sd_notify READY=1)"
    return "the starting status is ready"


def _why_not_ready(state: HealthState) -> str:
    required = state.required
    if required:
        waiting = [
            name
            for name in required
            if (record := state.endpoints.get(name)) is None or record.status is not Status.READY
        ]
        noun = "endpoint" if len(waiting) == 1 else "endpoints"
        verb = "is" if len(waiting) == 1 else "are"
        return f"required {noun} {join_names(waiting)} {verb} not ready"
    waiting = [n for n, record in state.endpoints.items() if record.status is not Status.READY]
    if waiting:
        noun = "endpoint" if len(waiting) == 1 else "endpoints"
        verb = "is" if len(waiting) == 1 else "are"
        return f"{noun} {join_names(waiting)} {verb} not ready"
    if state.life.declared is Status.NOTREADY:
        return "it declared itself stopping (sd_notify STOPPING=1)"
    return "it has announced no endpoint yet"


def join_names(names: Iterable[str], limit: int = 5) -> str:
    """`a`, `a and b`, `a, b and c`, `a, b, c, d, e and 3 more`."""
    items = list(names)
    if len(items) > limit:
        return f"{', '.join(items[:limit])} and {len(items) - limit} more"
    if len(items) <= 1:
        return "".join(items) or "none"
    return f"{', '.join(items[:-1])} and {items[-1]}"
