"""The reporter: events on the pod and a readiness-gate condition, sent beside the event loop.

Every transition of the health state becomes zero or more *reports*: an Event on the pod
(core/v1, what `kubectl describe pod` lists under Events) and the desired state of one pod
condition (patched on `pods/status`, so `spec.readinessGates` can wait for it). The probe path
never waits for the API: `KubeReporter.on_transition` runs on the event loop, does a few
microseconds of work (describe, correlate, append to a bounded queue) and returns; one daemon
thread sends the reports with per-call timeouts, retries with exponential backoff and full
jitter, and drops the oldest report when the queue is full. A slow, unreachable or forbidding
API server costs the loop nothing and the process a fixed amount of memory.

Events are core/v1 (`create_namespaced_event`, `patch_namespaced_event`), as the kubelet's
own recorder writes them: `kubectl describe pod` lists them beside the kubelet's ("Liveness
probe failed ... 503") with the same `count`, `firstTimestamp` and `lastTimestamp` that make
its "3m (x4 over 20m)"; events.k8s.io/v1 would store the same objects but count in
`series`, need `eventTime`, and an RBAC rule on another API group.

Repeated events are correlated as client-go's `EventCorrelator` does for the kubelet
(`tools/record/events_cache.go`): an identical event raises `count` and `lastTimestamp` of
the Event already there (a strategic merge patch) instead of creating another; from the 10th
distinct message of one reason and type within 10 minutes of each other, they go into one
"(combined from similar events): ..." Event; and one pod gets a burst of 25 events, then one
every 5 minutes (a token bucket). Like the kubelet's, the counts go on rising while the spam
filter holds events back, so the next one that is sent carries the true count.

The `kubernetes` package is imported only by `official_api`, that is only when reporting is
on: importing this module costs nothing more than the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.core.health import HealthState
from sidecar.core.records import Subject, Transition
from sidecar.kube.api import COMPONENT, KubeApi, KubeApiError
from sidecar.kube.correlator import CorrelatedEvent, EventCorrelator
from sidecar.kube.discovery import DEFAULT_CONDITION, PodRef
from sidecar.kube.reports import ConditionSpec, EventSpec, current_condition, describe

logger = logging.getLogger("dynamo_health_sidecar")

# Reports waiting for the API; the oldest is dropped past this.
DEFAULT_QUEUE_SIZE = 128
# Seconds one API call may take (connect and each read), and the connect part of it.
CALL_TIMEOUT = 5.0
# An event is sent at most this many times when the API keeps failing; the condition is
# retried until it is sent or replaced by a newer one.
EVENT_ATTEMPTS = 5
# Messages are cut here (events.k8s.io's limit for a note; core/v1 has none but etcd's).
MAX_MESSAGE = 1024


# -- retries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly
    random time in [0, min(cap, base * 2**(n-1))), or what the server asked (Retry-After)."""

    base: float = 0.5
    cap: float = 30.0

    def ceiling(self, failures: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), 62))

    def delay(
        self, failures: int, rand: Callable[[], float] = random.random, asked: float | None = None
    ) -> float:
        wait = rand() * self.ceiling(failures)
        if asked is not None:
            wait = max(wait, min(asked, self.cap))
        return wait


# -- the reporter ------------------------------------------------------------------------------


@dataclass
class _EventWork:
    name: str
    body: dict[str, Any]
    repeat: bool
    attempts: int = 0


@dataclass
class _ConditionWork:
    spec: ConditionSpec
    changed_at: float
    attempts: int = 0


@dataclass
class _Known:
    """The pod's condition as last read or written: keeps lastTransitionTime across patches."""

    status: bool
    last_transition: str


class KubeReporter:
    """Sends transitions to Kubernetes beside the event loop: events and one pod condition.

    `on_transition` (and `attach`) run on the loop; `start` runs the sender thread; `aclose`
    lets it flush for a bounded time. Counters are plain attributes for /metrics.
    """

    def __init__(
        self,
        pod: PodRef,
        api: KubeApi,
        condition_type: str = DEFAULT_CONDITION,
        clock: Callable[[], float] = time.time,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        call_timeout: float = CALL_TIMEOUT,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
        correlator: EventCorrelator | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.pod = pod
        self.api = api
        self.condition_type = condition_type
        self.clock = clock
        self.monotonic = monotonic
        self.queue_size = queue_size
        self.call_timeout = call_timeout
        self.backoff = backoff
        self.rand = rand
        self.correlator = correlator or EventCorrelator(pod.name)
        # Counters, read at scrape time.
        self.events_created = 0
        self.events_updated = 0
        self.condition_patches = 0
        self.failures = 0
        self.dropped = 0
        self.filtered = 0
        self.abandoned = 0
        # The loop's side: what the condition should be, and the state described.
        self._state: HealthState | None = None
        self._desired: ConditionSpec | None = None
        self._desired_since = 0.0
        self._draining = False
        self._broken = False
        # Shared with the sender thread, under the lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._events: collections.deque[_EventWork] = collections.deque()
        self._queued: dict[str, _EventWork] = {}
        self._condition: _ConditionWork | None = None
        self._in_flight = False
        self._dirty = False
        self._idle_waiting = False
        self._retry_at = 0.0
        self._failures_in_row = 0
        self._closing = False
        self._close_deadline = 0.0
        # The sender's side.
        self._known: _Known | None = None
        self._pod_read = False
        # Kinds of call that are failing: warn once, then count quietly until one works.
        self._failing: dict[str, bool] = {}
        self._thread: threading.Thread | None = None

    # -- the loop's side -------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Reports waiting to be sent: events, and the condition when it has changed."""
        return len(self._events) + (self._condition is not None)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is being sent."""
        with self._lock:
            return self._idle_locked()

    def attach(self, state: HealthState) -> None:
        """Hear every transition of `state`, and report the condition it calls for now."""
        self._state = state
        state.subscribe(self.on_transition)
        self._want(current_condition(state))

    def on_transition(self, transition: Transition) -> None:
        """Turn a transition into reports and queue them: a few dictionary operations and one
        uncontended lock (the sender holds it only between calls, never during one); never
        waits for the API, never raises."""
        try:
            if transition.subject is Subject.DRAIN:
                self._draining = True
            report = describe(transition, self._state)
            for spec in report.events:
                self._record(spec)
            if report.condition is not None:
                self._want(report.condition)
        except Exception:
            if not self._broken:
                logger.exception("cannot turn a transition into Kubernetes reports")
            self._broken = True

    def _record(self, spec: EventSpec) -> None:
        wall = self.clock()
        event = self.correlator.correlate(spec, self.monotonic(), wall)
        if event is None:
            self.filtered += 1
            return
        body = self._event_body(event)
        with self._lock:
            queued = self._queued.get(event.name)
            if queued is not None:
                # Not sent yet: send the newest count and message instead, in the same place.
                queued.body = body
            else:
                if len(self._events) >= self.queue_size:
                    oldest = self._events.popleft()
                    if self._queued.get(oldest.name) is oldest:
                        del self._queued[oldest.name]
                    self.dropped += 1
                work = _EventWork(event.name, body, event.is_repeat)
                self._events.append(work)
                self._queued[event.name] = work
            self._nudge()

    def _want(self, spec: ConditionSpec) -> None:
        if spec.status and (self._draining or (self._state is not None and self._state.draining)):
            return  # a draining pod stays not ready
        if spec == self._desired:
            return
        if self._desired is None or spec.status != self._desired.status:
            self._desired_since = self.clock()
        self._desired = spec
        with self._lock:
            # Only the newest condition matters: it replaces one not sent yet.
            self._condition = _ConditionWork(spec, self._desired_since)
            self._nudge()

    def _nudge(self) -> None:
        """Tell the sender there is work (under the lock). It is woken only when it waits for
        work: one that is sending or waiting out a backoff sees the work when it is done, and
        waking it for nothing would make it compete with the loop for the GIL."""
        self._dirty = True
        if self._idle_waiting:
            self._wake.notify()

    def _event_body(self, event: CorrelatedEvent) -> dict[str, Any]:
        pod = self.pod
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event.name, "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": event.reason,
            "message": event.message[:MAX_MESSAGE],
            "type": event.type,
            "source": {"component": COMPONENT},
            "count": event.count,
            "firstTimestamp": rfc3339(event.first_timestamp),
            "lastTimestamp": rfc3339(event.last_timestamp),
            "reportingComponent": COMPONENT,
            "reportingInstance": pod.name[:128],
        }

    # -- the sender's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (a daemon: it never holds the process at exit)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kube-reporter", daemon=True)
            self._thread.start()

    def step(self) -> float | None:
        """Send the next report that is due, if any. Returns 0 when more may be due now, the
        seconds until the next retry, or None when nothing waits. The sender thread loops on
        it; tests call it directly."""
        with self._lock:
            self._dirty = False
            now = self.monotonic()
            if now < self._retry_at and (self._condition is not None or self._events):
                return self._retry_at - now
            work: _EventWork | _ConditionWork
            if self._condition is not None:
                work, self._condition = self._condition, None
            elif self._events:
                work = self._events.popleft()
                if self._queued.get(work.name) is work:
                    del self._queued[work.name]
            else:
                return None
            self._in_flight = True
        try:
            if isinstance(work, _EventWork):
                self._send_event(work)
            else:
                self._send_condition(work)
        except KubeApiError as exc:
            self._failed(work, exc)
        except Exception as exc:  # a bug, not the API: never retried, never fatal
            self._failed(work, KubeApiError(-1, f"{type(exc).__name__}: {exc}"))
        else:
            self._succeeded(work)
        finally:
            with self._lock:
                self._in_flight = False
        return 0.0

    def _send_event(self, work: _EventWork) -> None:
        # The loop replaces a queued body, never changes one: this one is ours to read.
        body, namespace = work.body, self.pod.namespace
        if work.repeat:
            patch = {k: body[k] for k in ("count", "lastTimestamp", "message")}
            try:
                self.api.patch_event(namespace, work.name, patch, self.call_timeout)
                self.events_updated += 1
                return
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                # The Event is gone (expired, or its creation was dropped): create it whole.
        try:
            self.api.create_event(namespace, body, self.call_timeout)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            # Already there: a retry of a creation whose answer was lost.
        self.events_created += 1

    def _send_condition(self, work: _ConditionWork) -> None:
        pod = self.pod
        if not self._pod_read:
            self._known = self._read_condition()
            self._pod_read = True
        known = self._known
        spec = work.spec
        if known is not None and known.status == spec.status:
            last_transition = known.last_transition
        else:
            last_transition = rfc3339(work.changed_at)
        condition = {
            "type": self.condition_type,
            "status": "True" if spec.status else "False",
            "reason": spec.reason,
            "message": spec.message[:MAX_MESSAGE],
            "lastTransitionTime": last_transition,
            "lastProbeTime": None,
        }
        patch = {"status": {"conditions": [condition]}}
        self.api.patch_pod_status(pod.namespace, pod.name, patch, self.call_timeout)
        self._known = _Known(spec.status, last_transition)
        self.condition_patches += 1

    def _read_condition(self) -> _Known | None:
        """The condition as the pod has it (a sidecar restarted beside a running worker must
        not move its lastTransitionTime). Unreadable (forbidden, say): None, and patch anyway."""
        try:
            pod = self.api.read_pod_status(self.pod.namespace, self.pod.name, self.call_timeout)
        except KubeApiError as exc:
            if exc.retryable:
                raise
            self._warn_once("read", f"cannot read the pod's status: {exc}; patching anyway")
            return None
        status = pod.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        for condition in conditions if isinstance(conditions, list) else []:
            if isinstance(condition, dict) and condition.get("type") == self.condition_type:
                when = condition.get("lastTransitionTime")
                value = condition.get("status")
                if isinstance(when, str) and value in ("True", "False"):
                    return _Known(value == "True", when)
        return None

    def _succeeded(self, work: _EventWork | _ConditionWork) -> None:
        kind = "events" if isinstance(work, _EventWork) else "condition"
        with self._lock:
            self._failures_in_row = 0
            self._retry_at = 0.0
        if self._failing.get(kind):
            self._failing[kind] = False
            what = "Events" if kind == "events" else f"The pod condition {self.condition_type}"
            logger.info("%s reach the Kubernetes API again", what)

    def _failed(self, work: _EventWork | _ConditionWork, exc: KubeApiError) -> None:
        self.failures += 1
        kind = "events" if isinstance(work, _EventWork) else "condition"
        retry = exc.retryable
        with self._lock:
            if retry:
                work.attempts += 1
                self._failures_in_row += 1
                delay = self.backoff.delay(self._failures_in_row, self.rand, exc.retry_after)
                self._retry_at = self.monotonic() + delay
                retry = self._put_back(work)
        if isinstance(work, _EventWork):
            what = f"cannot record the event {work.body['reason']} on pod {self._pod_name()}"
        else:
            what = f"cannot set the condition {self.condition_type} of pod {self._pod_name()}"
        then = "retrying with backoff" if retry else "not retrying it"
        self._warn_once(
            kind,
            f"{what}: {exc}; {then}; further failures are only counted "
            "(dynamo_sidecar_kube_failures_total)",
        )

    def _put_back(self, work: _EventWork | _ConditionWork) -> bool:
        """Put a report that may work later back in front; False when it is given up."""
        if isinstance(work, _ConditionWork):
            if self._condition is None:  # else a newer condition replaced it
                self._condition = work
            return True
        if work.attempts >= EVENT_ATTEMPTS:
            self.abandoned += 1
            return False
        if work.name in self._queued:
            return True  # a newer count of the same Event waits: it carries this one
        if len(self._events) >= self.queue_size:
            self.dropped += 1  # the queue filled meanwhile: this is its oldest report
            return False
        self._events.appendleft(work)
        self._queued[work.name] = work
        return True

    def _warn_once(self, kind: str, message: str) -> None:
        if not self._failing.get(kind):
            logger.warning(message)
        else:
            logger.debug(message)
        self._failing[kind] = True

    def _pod_name(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name}"

    def _run(self) -> None:
        while True:
            delay = self.step()
            with self._lock:
                now = self.monotonic()
                if self._closing and (now >= self._close_deadline or self._idle_locked()):
                    return
                if delay == 0.0 or self._dirty:
                    continue
                if self._closing:
                    limit = self._close_deadline - now
                    delay = limit if delay is None else min(delay, limit)
                self._idle_waiting = delay is None
                self._wake.wait(delay)
                self._idle_waiting = False

    def _idle_locked(self) -> bool:
        return not self._events and self._condition is None and not self._in_flight

    # -- stopping ----------------------------------------------------------------------------

    def close(self, timeout: float) -> bool:
        """Let the sender send what waits for at most `timeout` seconds, then stop it.
        Returns whether everything was sent. Blocks: use `aclose` on the event loop."""
        self._begin_close(timeout)
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0))
        return self._finish_close()

    async def aclose(self, timeout: float) -> bool:
        """`close` for the event loop: waits without blocking it (a 10 ms poll)."""
        self._begin_close(timeout)
        deadline = time.monotonic() + max(timeout, 0.0)
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._finish_close()

    def _begin_close(self, timeout: float) -> None:
        with self._lock:
            self._closing = True
            self._close_deadline = self.monotonic() + max(timeout, 0.0)
            self._wake.notify()

    def _finish_close(self) -> bool:
        with self._lock:
            left = len(self._events) + (self._condition is not None) + self._in_flight
        if left:
            logger.warning("%d report(s) to the Kubernetes API were not sent before exit", left)
        return not left


def rfc3339(seconds: float) -> str:
    """A Kubernetes `Time`: UTC, whole seconds, `Z`."""
    moment = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
