"""The sender: the one thread that talks to the Kubernetes API, and the one owner of time in
Kubernetes reporting (docs/protocol.md section 7.5).

It takes the reports from the outbox one at a time, the condition first; it correlates an
event when it takes it, so that the spam filter and the 10-minute aggregation measure time on
its clock, as client-go's recorder correlates in the goroutine that writes to the API; it
makes each call with a bounded timeout and, when the API fails in a way that may pass, puts
the report back and waits an exponential backoff with full jitter. When the sidecar stops it
flushes until a deadline of its own. Every interval (backoff, spam filter, flush deadline) is
read on the injected clock; the wall times an Event carries were stamped on the event loop,
when the transition happened.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.kube.api import KubeApi, KubeApiError
from sidecar.kube.correlator import EventCorrelator
from sidecar.kube.discovery import PodRef
from sidecar.kube.outbox import ConditionWork, EventWork, Outbox, StopRequest, Work
from sidecar.kube.wire import (
    Known,
    condition_patch,
    event_body,
    known_condition,
    repeat_patch,
    rfc3339,
)

logger = logging.getLogger("dynamo_health_sidecar")

# Seconds one API call may take (connect and each read; the connect part is the API's).
CALL_TIMEOUT = 5.0
# An event is sent at most this many times when the API keeps failing; the condition is
# retried until it is sent or replaced by a newer one.
EVENT_ATTEMPTS = 5


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


# Up to half a second after a first failure, doubling to 30 s: with the jitter, a recovering
# API server is not met by every sidecar of a deployment at once.
DEFAULT_BACKOFF = Backoff()


class Sender:
    """Sends the outbox's reports to the API; `run` is the thread, `step` one report of it.

    Counters are plain attributes, written by this thread only and read at scrape time.
    """

    def __init__(
        self,
        outbox: Outbox,
        pod: PodRef,
        api: KubeApi,
        condition_type: str,
        clock: Callable[[], float],
        *,
        call_timeout: float = CALL_TIMEOUT,
        backoff: Backoff = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
        correlator: EventCorrelator | None = None,
    ) -> None:
        self._outbox = outbox
        self._pod = pod
        self._api = api
        self._condition_type = condition_type
        self._clock = clock
        self._call_timeout = call_timeout
        self._backoff = backoff
        self._rand = rand
        self._correlator = correlator or EventCorrelator(pod.name)
        self.events_created = 0
        self.events_updated = 0
        self.condition_patches = 0
        self.failures = 0
        self.filtered = 0
        self.abandoned = 0
        # When the next call may be made, after consecutive failures.
        self._retry_at = 0.0
        self._failures_in_row = 0
        # The pod's condition, read once (a sidecar restarted beside a running worker must
        # not move its lastTransitionTime), then as last written.
        self._known: Known | None = None
        self._pod_read = False
        # Kinds of call that are failing: warn once, then count quietly until one works.
        self._failing: dict[str, bool] = {}

    def run(self) -> None:
        """The thread: send until asked to stop, then flush until nothing waits or the
        deadline, which is counted from the moment this thread hears of the stop."""
        stop = self._send_until_stopped()
        deadline = self._clock() + stop.seconds
        while self._clock() < deadline:
            delay = self.step()
            if delay is None:
                break  # flushed
            if delay > 0.0:
                self._outbox.pause(max(min(delay, deadline - self._clock()), 0.0), stopping=True)
        stop.tell()

    def _send_until_stopped(self) -> StopRequest:
        while (stop := self._outbox.stop_request()) is None:
            delay = self.step()
            if delay != 0.0:
                self._outbox.pause(delay, stopping=False)
        return stop

    def step(self) -> float | None:
        """Send the next report that is due, if any. Returns 0 when more may be due now, the
        seconds until the next retry, or None when nothing waits."""
        now = self._clock()
        if now < self._retry_at and self._outbox.waiting():
            return self._retry_at - now
        work = self._outbox.take()
        if work is None:
            return None
        failure = None
        sent = False
        try:
            sent = self._send(work, now)
        except KubeApiError as exc:
            failure = exc
        except Exception as exc:  # a bug, not the API: never retried, never fatal
            failure = KubeApiError(-1, f"{type(exc).__name__}: {exc}")
        retry = failure is not None and self._retry(work, failure)
        kept = self._outbox.finished(work, retry)
        if failure is not None:
            self._warn_failure(work, failure, kept)
        elif sent:
            self._succeeded(work)
        return 0.0

    def _send(self, work: Work, now: float) -> bool:
        """One report to the API; False when the spam filter held back every occurrence."""
        if isinstance(work, ConditionWork):
            self._send_condition(work)
            return True
        if not self._correlate(work, now):
            return False
        self._send_event(work)
        return True

    def _correlate(self, work: EventWork, now: float) -> bool:
        """Correlate the occurrences the loop counted; whether there is an Event to send. Only
        the first and the last occurrence's times are kept: the sent Event shows the first as
        its firstTimestamp when it is new, and the last as its lastTimestamp."""
        for n in range(work.occurrences):
            wall = work.first_wall if n == 0 else work.last_wall
            event = self._correlator.correlate(work.spec, now, wall)
            if event is None:
                self.filtered += 1
                continue
            body = event_body(self._pod, event)
            if work.body is None or work.body["metadata"]["name"] != event.name:
                work.repeat = event.is_repeat
            work.body = body
        work.occurrences = 0
        return work.body is not None

    def _send_event(self, work: EventWork) -> None:
        assert work.body is not None
        body, namespace = work.body, self._pod.namespace
        if work.repeat:
            name = body["metadata"]["name"]
            try:
                self._api.patch_event(namespace, name, repeat_patch(body), self._call_timeout)
                self.events_updated += 1
                return
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                # The Event is gone (expired, or its creation was dropped): create it whole.
        try:
            self._api.create_event(namespace, body, self._call_timeout)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            # Already there: a retry of a creation whose answer was lost.
        self.events_created += 1

    def _send_condition(self, work: ConditionWork) -> None:
        pod = self._pod
        if not self._pod_read:
            self._known = self._read_condition()
            self._pod_read = True
        known, spec = self._known, work.spec
        if known is not None and known.status == spec.status:
            last_transition = known.last_transition
        else:
            last_transition = rfc3339(work.changed_at)
        patch = condition_patch(self._condition_type, spec, last_transition)
        self._api.patch_pod_status(pod.namespace, pod.name, patch, self._call_timeout)
        self._known = Known(spec.status, last_transition)
        self.condition_patches += 1

    def _read_condition(self) -> Known | None:
        """The condition as the pod has it. Unreadable (forbidden, say): None, patch anyway."""
        try:
            pod = self._api.read_pod_status(self._pod.namespace, self._pod.name, self._call_timeout)
        except KubeApiError as exc:
            if exc.retryable:
                raise
            self._warn_once("read", f"cannot read the pod's status: {exc}; patching anyway")
            return None
        return known_condition(pod, self._condition_type)

    def _retry(self, work: Work, exc: KubeApiError) -> bool:
        """Count a failure; whether to try `work` again, after the backoff it sets."""
        self.failures += 1
        if not exc.retryable:
            return False
        self._failures_in_row += 1
        delay = self._backoff.delay(self._failures_in_row, self._rand, exc.retry_after)
        self._retry_at = self._clock() + delay
        if isinstance(work, ConditionWork):
            return True
        work.attempts += 1
        if work.attempts >= EVENT_ATTEMPTS:
            self.abandoned += 1
            return False
        return True

    def _succeeded(self, work: Work) -> None:
        self._failures_in_row = 0
        self._retry_at = 0.0
        kind = "events" if isinstance(work, EventWork) else "condition"
        if self._failing.get(kind):
            self._failing[kind] = False
            what = "Events" if kind == "events" else f"The pod condition {self._condition_type}"
            logger.info("%s reach the Kubernetes API again", what)

    def _warn_failure(self, work: Work, exc: KubeApiError, kept: bool) -> None:
        pod = f"{self._pod.namespace}/{self._pod.name}"
        if isinstance(work, EventWork):
            kind, what = "events", f"cannot record the event {work.spec.reason} on pod {pod}"
        else:
            kind, what = (
                "condition",
                f"cannot set the condition {self._condition_type} of pod {pod}",
            )
        then = "retrying with backoff" if kept else "not retrying it"
        self._warn_once(
            kind,
            f"{what}: {exc}; {then}; further failures are only counted "
            "(dynamo_sidecar_kube_failures_total)",
        )

    def _warn_once(self, kind: str, message: str) -> None:
        if not self._failing.get(kind):
            logger.warning(message)
        else:
            logger.debug(message)
        self._failing[kind] = True
